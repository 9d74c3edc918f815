"""Adversarial attacks and their detection in feature space; plain tensor functions.

See docs/adversarial.md. No Lightning import here: callbacks and analyze.py call these functions.
The attacks (:mod:`fsl.adversarial.methods`) and the detectors (:mod:`fsl.adversarial.detectors`)
are plug-ins of two :class:`fsl.registry.Registry` instances, :data:`ATTACKS` and
:data:`DETECTORS` (``names()``, ``defaults(name)``, ``get(name)``); the ranking metrics that score
a detector are in :mod:`fsl.adversarial.metrics`; every detector with a differentiable score faces
its adaptive attack (:mod:`fsl.adversarial.methods.adaptive_detector`), the supervised ones are
fitted by :mod:`fsl.adversarial.supervised`, and :mod:`fsl.adversarial.robust` gives the robust
accuracy of classifier + detector.
"""
from fsl.adversarial.attacks import AttackResult, attack_context, perturbation_norms, run_attack, select_correct
from fsl.adversarial.detectors import (DETECTORS, Detector, FitData, KNNDetector, Mahalanobis, ambiguity_score,
                                       energy_score, fdbd_score, fit_fdbd, fit_mahalanobis, knn_score,
                                       mahalanobis_score, margin_score, msp_score, register_detector,
                                       train_margin_rule)
from fsl.adversarial.evaluate import (AttackEvaluation, Detectors, DistanceFunctions, evaluate_attack,
                                      feature_space_summary, per_sample_dtypes, summarize_attack)
from fsl.adversarial.methods import ATTACKS, register_attack
from fsl.adversarial.metrics import bootstrap_ci, clean_threshold, detection_metrics, detection_table, roc_curve
from fsl.adversarial.success import GAP_RTOL, gap_tolerance, is_adversarial, logit_gap
from fsl.adversarial.robust import robust_accuracy
from fsl.adversarial.suites import adaptive_suite, load_suite, suite_for_data
from fsl.adversarial.supervised import fit_supervised_detectors

__all__ = ["ATTACKS", "AttackResult", "attack_context", "perturbation_norms", "run_attack", "select_correct",
           "KNNDetector", "Mahalanobis", "ambiguity_score", "bootstrap_ci", "clean_threshold", "detection_metrics",
           "detection_table", "energy_score", "fdbd_score", "feature_space_summary", "fit_fdbd", "fit_mahalanobis",
           "knn_score", "mahalanobis_score", "margin_score", "msp_score", "roc_curve", "train_margin_rule",
           "AttackEvaluation", "Detectors", "DistanceFunctions", "evaluate_attack", "summarize_attack", "GAP_RTOL",
           "gap_tolerance", "is_adversarial", "logit_gap", "load_suite", "suite_for_data", "DETECTORS", "Detector",
           "FitData", "register_detector", "register_attack", "per_sample_dtypes", "robust_accuracy", "adaptive_suite",
           "fit_supervised_detectors"]
