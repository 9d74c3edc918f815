"""From feature space back to pixels (docs/inversion.md): pure torch, batched, CPU or CUDA.

* :func:`invert_to_features` -- images closest to a reference that map to a feature point, into
  a ball or onto a sphere around it (``InversionResult`` with honest residuals and success flags);
  one solver per module (:mod:`~fsl.inversion.lm`, :mod:`~fsl.inversion.sqp`, :mod:`~fsl.inversion.al`),
  each with its options dataclass (:class:`LMOptions` with :class:`PoolOptions`, :class:`SQPOptions`,
  :class:`ALOptions`, :class:`ALSQPOptions`; or a dict of their fields).
* :func:`feature_path` -- the continuation path of ``method="lm"``: a morph whose features move
  along the straight segment to a target; :func:`diagnose`, :func:`feature_bounds` -- why a miss
  missed (certified unreachable or a solver miss); :func:`probe_reachability` -- multi-start
  projected Adam: a hit proves a target reachable.
* :func:`morph`, :func:`pixel_line_feature_path`, :func:`two_point_equidistant` -- paper
  Figures 8-9 and appendix A; :func:`make_references` (black, white, sample, other).
* :func:`jacobian_null_space`, :func:`null_space_directions`, :func:`null_step_response`,
  :func:`level_set_walk` -- Jacobian preimages (Jacobian preimages of latent vectors).
"""
from fsl.inversion.invert import METHODS, MODES, InversionResult, invert_to_features, relative_point_residual
from fsl.inversion.jacobian import feature_jacobian, frozen_eval
from fsl.inversion.options import ALOptions, ALSQPOptions, LMOptions, PoolOptions, SQPOptions
from fsl.inversion.paths import (REFERENCE_KINDS, FeaturePath, MorphResult, PixelLinePath, black_reference, feature_path,
                                 make_references, morph, pixel_line_feature_path, two_point_equidistant,
                                 white_reference)
from fsl.inversion.reach import (CATEGORIES, Diagnosis, Probe, diagnose, feature_bounds, probe_reachability,
                                 residual_lower_bound, split_misses)
from fsl.inversion.preimage import (LevelSetWalk, NullSpace, StepResponse, jacobian_null_space,
                                    level_set_walk, null_space_directions, null_space_directions_from,
                                    null_step_response)

__all__ = [
    "invert_to_features", "InversionResult", "MODES", "METHODS", "relative_point_residual",
    "LMOptions", "PoolOptions", "SQPOptions", "ALOptions", "ALSQPOptions",
    "feature_jacobian", "frozen_eval",
    "make_references", "black_reference", "white_reference", "REFERENCE_KINDS",
    "feature_path", "FeaturePath",
    "diagnose", "Diagnosis", "CATEGORIES", "feature_bounds", "residual_lower_bound", "probe_reachability", "Probe", "split_misses",
    "morph", "MorphResult", "pixel_line_feature_path", "PixelLinePath", "two_point_equidistant",
    "jacobian_null_space", "NullSpace", "null_space_directions", "null_space_directions_from",
    "null_step_response", "StepResponse", "level_set_walk", "LevelSetWalk",
]
