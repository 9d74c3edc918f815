"""Adversarial attacks and their detection in feature space (DESIGN section B); plain tensor functions.

See docs/adversarial.md. No Lightning import here: callbacks and analyze.py call these functions.
"""
from fsl.adversarial.attacks import (ATTACKS, DEFAULT_PARAMS, AttackResult, attack_context, perturbation_norms,
                                     run_attack, select_correct)
from fsl.adversarial.detection import (SCORES, Mahalanobis, ambiguity_score, clean_threshold, detection_metrics,
                                       detection_table, feature_space_summary, fit_mahalanobis, mahalanobis_score,
                                       margin_score, msp_score, roc_curve, train_margin_rule)
from fsl.adversarial.evaluate import AttackEvaluation, DistanceFunctions, evaluate_attack, summarize_attack

__all__ = ["ATTACKS", "DEFAULT_PARAMS", "AttackResult", "attack_context", "perturbation_norms", "run_attack",
           "select_correct", "SCORES", "Mahalanobis", "ambiguity_score", "clean_threshold", "detection_metrics",
           "detection_table", "feature_space_summary", "fit_mahalanobis", "mahalanobis_score", "margin_score",
           "msp_score", "roc_curve", "train_margin_rule", "AttackEvaluation", "DistanceFunctions", "evaluate_attack", "summarize_attack"]
