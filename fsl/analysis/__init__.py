"""Analyses over a trained model: feature extraction, the geometry study, the full checkpoint study."""
from fsl.analysis.features import FeatureSet, extract_features, fixed_subset
from fsl.analysis.geometry_study import GeometryStudy, feature_geometry_study

__all__ = ["FeatureSet", "extract_features", "fixed_subset", "GeometryStudy", "feature_geometry_study"]
