"""Analyses over a trained model: the :class:`Analysis` interface and its registry, the context they
run in, feature extraction, and the drivers (per epoch: ``callbacks.analysis``; on a checkpoint:
:func:`fsl.analysis.study.analyze`)."""
from fsl.analysis.base import (ANALYSES, Analysis, Context, Figure, Result, Table, analysis_defaults, build_analyses,
                               create_analysis, register_analysis)
from fsl.analysis.features import FeatureSet, extract_features
from fsl.analysis.geometry_study import GeometryStudy, feature_geometry_study
from fsl.analysis.run import flat_metrics, run_analyses

__all__ = ["Analysis", "Result", "Figure", "Table", "Context", "ANALYSES", "register_analysis", "create_analysis",
           "build_analyses", "analysis_defaults", "run_analyses", "flat_metrics", "FeatureSet", "extract_features",
           "GeometryStudy", "feature_geometry_study"]
