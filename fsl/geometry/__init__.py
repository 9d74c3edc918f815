"""Exact, batched, certified feature-space geometry (docs/geometry.md); pure torch, no Lightning.

* :func:`flip_margins` — closest points on every decision boundary of the predicted class (A1);
* :func:`hull_distances` — projection onto the convex hull of a point set (A3);
* :func:`ball_counts`, :func:`union_coverage`, :func:`region_labels`, :func:`lipschitz` — guaranteed
  balls (A2);
* :func:`ambiguity` — ``d_min - d_h`` (A4);
* :func:`differentiable_flip_distances`, :func:`differentiable_hull_distances` — the same exact
  distances with gradients (envelope theorem); :func:`differentiable_flip_points`,
  :func:`differentiable_hull_projections` — the flip points and projections with gradients
  (implicit differentiation on the active set);
* :func:`geometry_study`, :class:`FeatureGeometry` — every statistic of A2-A4 as a plain dict.

See ``docs/geometry.md`` for the math, the algorithms and the certificates.
"""
from .balls import ambiguity, ball_counts, lipschitz, region_labels, union_coverage
from .differentiable import (FlipDistances, FlipPoints, HullDistances, HullProjections, differentiable_flip_distances,
                             differentiable_flip_points, differentiable_hull_distances, differentiable_hull_projections)
from .flip import FlipResult, flip_margins
from .hull import HullResult, hull_distances
from .summary import FeatureGeometry, GeometryStudy, geometry_study

__all__ = [
    "FlipResult", "flip_margins", "FlipDistances", "differentiable_flip_distances",
    "HullDistances", "differentiable_hull_distances", "FlipPoints", "differentiable_flip_points",
    "HullProjections", "differentiable_hull_projections", "HullResult", "hull_distances", "ball_counts",
    "union_coverage", "region_labels", "ambiguity", "lipschitz", "FeatureGeometry", "GeometryStudy", "geometry_study",
]
