"""Adversarial attacks and their detection in feature space; plain tensor functions.

See docs/adversarial.md. No Lightning import here: callbacks and analyze.py call these functions.
"""
from fsl.adversarial.attacks import (ATTACKS, DEFAULT_PARAMS, AttackResult, AttackSpec, attack_context,
                                     perturbation_norms, run_attack, select_correct)
from fsl.adversarial.detection import (SCORES, KNNDetector, Mahalanobis, ambiguity_score, bootstrap_ci,
                                       clean_threshold, detection_metrics, detection_table, energy_score, fdbd_score,
                                       feature_space_summary, fit_fdbd, fit_mahalanobis, knn_score,
                                       mahalanobis_score, margin_score, msp_score, roc_curve, train_margin_rule)
from fsl.adversarial.detectors import DETECTORS, Detector, FitData, detector_names, register_detector
from fsl.adversarial.evaluate import (AttackEvaluation, Detectors, DistanceFunctions, evaluate_attack,
                                      per_sample_dtypes, summarize_attack)
from fsl.adversarial.registry import register_attack
from fsl.adversarial.success import GAP_RTOL, gap_tolerance, is_adversarial, logit_gap
from fsl.adversarial.suites import load_suite, suite_for_data

__all__ = ["ATTACKS", "DEFAULT_PARAMS", "AttackResult", "AttackSpec", "attack_context", "perturbation_norms",
           "run_attack", "select_correct", "SCORES", "KNNDetector", "Mahalanobis", "ambiguity_score", "bootstrap_ci",
           "clean_threshold", "detection_metrics", "detection_table", "energy_score", "fdbd_score",
           "feature_space_summary", "fit_fdbd", "fit_mahalanobis", "knn_score", "mahalanobis_score", "margin_score",
           "msp_score", "roc_curve", "train_margin_rule", "AttackEvaluation", "Detectors", "DistanceFunctions",
           "evaluate_attack", "summarize_attack", "GAP_RTOL", "gap_tolerance", "is_adversarial", "logit_gap",
           "load_suite", "suite_for_data", "DETECTORS", "Detector", "FitData", "detector_names", "register_detector",
           "register_attack", "per_sample_dtypes"]
