"""Adversarial-example detectors, one file each, registered with ``@register_detector``
(Yousefzadeh, arXiv 2202.04052, section 7 and appendix B, and the baselines below).

Every score follows one convention: **higher = more likely adversarial**.

=================  ===============================================  ==============================================
score              definition                                       why
=================  ===============================================  ==============================================
``margin``         ``-d_min``                                       adversarials sit next to a boundary
``ambiguity``      ``-(d_min - d_h) = d_h - d_min``                 near a boundary *and* far from the hull
``msp``            ``-max softmax(logits)``                         baseline: low confidence
``energy``         ``-T logsumexp(logits / T)``                     baseline: high free energy (Liu et al. 2020,
                                                                    arXiv 2010.03759)
``mahalanobis``    ``min_c sqrt((y-mu_c)^T S^-1 (y-mu_c))``         baseline: far from every class Gaussian
``knn``            ``||y/|y| - t_(k)||``, ``t_(k)`` the k-th        baseline: far from the training features
                   nearest normalised training feature              (Sun et al. 2022, arXiv 2204.06507)
``fdbd``           ``-mean_{c!=p} |z_p - z_c| / (|w_p - w_c|        baseline: close to the decision boundaries
                   |y - mu|)``, ``p = argmax z``                    (Liu and Qin 2024, arXiv 2312.11536)
``lid``            logistic regression over the LID of every        supervised: adversarial regions have a high
                   layer (k nearest of a clean reference batch)     local dimension (Ma et al., arXiv 1801.02613)
``mahalanobis_ml`` logistic regression over every layer's           supervised: far from the class Gaussians of
                   ``min_c`` squared Mahalanobis distance           every layer (Lee et al., arXiv 1807.03888)
=================  ===============================================  ==============================================

``d_min`` is the feature-space margin (distance to the closest flip point, ``fsl.geometry.flip_margins``),
``d_h`` the distance to the convex hull of the training features (``fsl.geometry.hull_distances``).
The ranking metrics that score them (AUROC, AUPR, FPR@95%TPR, TPR@5%FPR, bootstrap intervals) are
in :mod:`fsl.adversarial.metrics`.

``lid`` and ``mahalanobis_ml`` are ``supervised``: fitted on clean, noisy and adversarial examples
of a fit split (:mod:`fsl.adversarial.supervised`), on the model's feature maps. Every detector
defines ``torch_score``, the differentiable score its adaptive attack ``adaptive_<name>`` follows.

Import order is the registration order (``DETECTORS.names()``), which is the order of the report's
columns; a new file in this folder is registered on import, after the built-ins (docs/extending.md).
"""
from fsl.adversarial.detectors.registry import DETECTORS, Detector, FitData, build_detector, register_detector
from fsl.adversarial.detectors.margin import MarginDetector, margin_score, train_margin_rule
from fsl.adversarial.detectors.ambiguity import AmbiguityDetector, ambiguity_score
from fsl.adversarial.detectors.msp import MSPDetector, msp_score
from fsl.adversarial.detectors.energy import EnergyDetector, energy_score
from fsl.adversarial.detectors.mahalanobis import Mahalanobis, MahalanobisDetector, fit_mahalanobis, mahalanobis_score
from fsl.adversarial.detectors.knn import KNN, KNNDetector, knn_score
from fsl.adversarial.detectors.fdbd import FDBDDetector, fdbd_score, fit_fdbd
from fsl.adversarial.detectors.lid import LIDDetector, lid_mle
from fsl.adversarial.detectors.mahalanobis_ml import MultiLayerMahalanobis

from fsl.plugins import import_modules  # noqa: E402

import_modules(__name__, first=("registry", "margin", "ambiguity", "msp", "energy", "mahalanobis", "knn", "fdbd",
                                  "lid", "mahalanobis_ml"))

__all__ = ["DETECTORS", "Detector", "FitData", "build_detector", "register_detector",
           "MarginDetector", "margin_score", "train_margin_rule", "AmbiguityDetector", "ambiguity_score",
           "MSPDetector", "msp_score", "EnergyDetector", "energy_score", "Mahalanobis", "MahalanobisDetector",
           "fit_mahalanobis", "mahalanobis_score", "KNN", "KNNDetector", "knn_score", "FDBDDetector", "fdbd_score",
           "fit_fdbd", "LIDDetector", "lid_mle", "MultiLayerMahalanobis"]
