"""Adversarial-example detectors, one file each, registered with ``@register_detector``.

Import order is the registration order, which is the order of the report's columns; a new file
in this folder is registered on import, after the built-ins (docs/extending.md).
"""
from fsl.adversarial.detectors.registry import (DETECTORS, Detector, DetectorSpec, FitData, build_detector,
                                                detector_names, register_detector)
from fsl.adversarial.detectors.margin import MarginDetector, margin_score
from fsl.adversarial.detectors.ambiguity import AmbiguityDetector, ambiguity_score
from fsl.adversarial.detectors.msp import MSPDetector, msp_score
from fsl.adversarial.detectors.energy import EnergyDetector, energy_score
from fsl.adversarial.detectors.mahalanobis import Mahalanobis, MahalanobisDetector, fit_mahalanobis, mahalanobis_score
from fsl.adversarial.detectors.knn import KNN, KNNDetector, knn_score
from fsl.adversarial.detectors.fdbd import FDBDDetector, fdbd_score, fit_fdbd

from fsl.plugins import import_modules  # noqa: E402

import_modules(__name__, first=("registry", "margin", "ambiguity", "msp", "energy", "mahalanobis", "knn", "fdbd"))

__all__ = ["DETECTORS", "Detector", "DetectorSpec", "FitData", "build_detector", "detector_names", "register_detector",
           "MarginDetector", "margin_score", "AmbiguityDetector", "ambiguity_score", "MSPDetector", "msp_score",
           "EnergyDetector", "energy_score", "Mahalanobis", "MahalanobisDetector", "fit_mahalanobis",
           "mahalanobis_score", "KNN", "KNNDetector", "knn_score", "FDBDDetector", "fdbd_score", "fit_fdbd"]
