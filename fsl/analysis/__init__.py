"""The analysis framework: the :class:`Analysis` interface and its registry (base), the
:class:`Context` an analysis runs in (context, features, distributed), the drivers (run:
:func:`run_analyses`, :func:`analyze`) and what they write (results, report). The analyses
themselves are modules of :mod:`fsl.analysis.studies` (see docs/architecture.md)."""
from fsl.analysis.base import (ANALYSES, Analysis, Figure, Result, Table, analysis_defaults, build_analyses,
                               create_analysis, default_analyses, register_analysis)
from fsl.analysis.context import Context
from fsl.analysis.features import FeatureSet, extract_features
from fsl.analysis.run import analyze, flat_metrics, run_analyses

__all__ = ["Analysis", "Result", "Figure", "Table", "Context", "ANALYSES", "register_analysis", "create_analysis",
           "build_analyses", "analysis_defaults", "default_analyses", "run_analyses", "flat_metrics", "analyze",
           "FeatureSet", "extract_features"]
