"""Bad input to every public function of fsl.inversion, fsl.spaces and fsl.adversarial (and the
geometry solvers): NaN/inf, empty batches, wrong dtypes and shapes, images outside [0, 1], f = 1
features and n = 2 classes.

One table. Each row is ``pytest.param(call, expect, before, id="<function>-<case>")``:

* ``call(c)`` runs the function on the tiny fixture ``c`` (a 16-pixel SELU MLP, 5 features, 3 classes);
* ``expect`` is ``Raises(type, message regex)`` or ``Check(assertion)`` (the right answer, from a
  closed form or a brute-force computation where one is cheap);
* ``before`` is what the code did before these checks existed: ``"FAILED: ..."`` marks a row that
  failed then (the exception, or the wrong/silent value returned), ``"PINNED"`` a contract that
  already held and is kept.

Non-finite or out-of-range input raises a ValueError (TypeError for a wrong dtype) that names the
argument, the problem and the fix; never a silent, NaN-filled or obscure answer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import pytest
import torch

from fsl import adversarial as A
from fsl import inversion as I
from fsl import spaces as S
from fsl.adversarial.evaluate import per_sample_dtypes
from fsl.geometry import ball_counts, flip_margins, hull_distances, union_coverage
from fsl.models import create_model

NAN, INF = float("nan"), float("inf")


@dataclass
class Raises:
    type: type
    match: str


@dataclass
class Check:
    assertion: Callable  # (output, c) -> None, asserts


@pytest.fixture(scope="module")
def c():
    torch.manual_seed(0)
    model = create_model("selu_mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8, 5)).eval()
    model2 = create_model("selu_mlp", input_shape=(1, 4, 4), num_classes=2, hidden=(8, 5)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x_train = torch.rand(60, 1, 4, 4, generator=g)
    with torch.no_grad():
        f, z = model.forward_features(x), model(x)
        f_train = model.forward_features(x_train)
        y_train = model(x_train).argmax(1)
        pred = z.argmax(1)
    detectors = A.Detectors.fit(model, f_train, y_train, knn_k=5)
    return SimpleNamespace(model=model, model2=model2, x=x, y=y, f=f, z=z, pred=pred, f_train=f_train,
                           y_train=y_train, detectors=detectors, g=g)


def poke(t: torch.Tensor, index, value) -> torch.Tensor:
    """A copy of ``t`` with ``t[index] = value``."""
    t = t.clone()
    t[index] = value
    return t


def nan_image(c):
    return poke(c.x, (1, 0, 0, 0), NAN)


def out_of_box(c):
    return c.x * 3 - 1  # pixels in [-1, 2]


def inv(c, **kw):
    """invert_to_features on the fixture with a tiny iteration budget (rows here must raise early)."""
    args = dict(targets=c.f, references=c.x, options={"max_iter": 2, "fallback": {"al_iter": 1}})
    args.update(kw)
    return I.invert_to_features(c.model, **args)


# ----------------------------------------------------------------------------- closed-form checks
def _flip_two_classes(out, c):
    W, b = c.model2.head.weight.detach().double(), c.model2.head.bias.detach().double()
    with torch.no_grad():
        f = c.model2.forward_features(c.x).double()
    zz = f @ W.T + b
    ref = (zz[:, 0] - zz[:, 1]).abs() / (W[0] - W[1]).norm()  # no box: distance to the hyperplane
    torch.testing.assert_close(out.margin, ref, rtol=1e-9, atol=1e-12)


def _deepfool_two_classes():
    """FCNN1 with 2 classes is linear in the pixels: DeepFool's answer is a closed form."""
    torch.manual_seed(0)
    m = create_model("fcnn1", input_shape=(1, 2, 2), num_classes=2).eval()
    with torch.no_grad():
        m.head.weight.copy_(torch.tensor([[0.1, -0.2, 0.05, 0.0], [-0.1, 0.1, 0.0, 0.2]]))
        m.head.bias.copy_(torch.tensor([0.4, 0.0]))
    x = torch.full((1, 1, 2, 2), 0.5)
    return m, x


def _check_deepfool_two_classes(out, c):
    m, x = _deepfool_two_classes()
    with torch.no_grad():
        z = m(x)[0].double()
    std = float(m.normalize.std)
    dw = (m.head.weight[1] - m.head.weight[0]).detach().double() / std  # gradient of z_1 - z_0 in pixels
    tol = 1e-4 * max(1.0, float(z.abs().max()))
    # one linear step to z_1 - z_0 = 10 tol (STOP_FACTOR), then the 2% overshoot on the total
    expected = 1.02 * (float(z[0] - z[1]) + 10 * tol) / float(dw.norm())
    assert bool(out.success.all()) and int(out.adv_pred[0]) == 1
    assert float(out.l2[0]) == pytest.approx(expected, rel=1e-4)


def _check_mahalanobis_f1(out, c):
    x = torch.tensor([[0.0], [1.0], [4.0], [6.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    mu = torch.tensor([0.5, 5.0], dtype=torch.float64)
    var = float(((x[:, 0] - mu[y]) ** 2).mean())  # pooled within-class variance, 0.625
    q = torch.tensor([2.0, 5.5], dtype=torch.float64)
    ref = ((q[:, None] - mu[None, :]).abs() / math.sqrt(var * (1 + 1e-6))).amin(1)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)


def _check_fdbd_two_classes(out, c):
    W, b = c.model.head.weight.detach().double()[:2], c.model.head.bias.detach().double()[:2]
    f = c.f.double()
    mu = c.f_train.double().mean(0)
    zz = f @ W.T + b
    ref = -(zz[:, 0] - zz[:, 1]).abs() / ((W[0] - W[1]).norm() * (f - mu).norm(dim=1))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)


def _check_class_residuals_two_classes(out, c):
    W = c.model.layers[0].weight.detach().double()
    u = c.model.normalize(c.x).flatten(1).double()
    lab = c.y % 2
    avg = torch.stack([u[lab == k].mean(0) for k in (0, 1)])
    res = avg - avg @ (torch.linalg.pinv(W) @ W).T
    torch.testing.assert_close(out.residual_energy, res.pow(2).sum(1) / avg.pow(2).sum(1), rtol=1e-8, atol=1e-12)
    assert out.classes.tolist() == [0, 1]


def _check_ideal_two_classes(out, c):
    with torch.no_grad():
        o = c.model2(c.x).double()
    ref = torch.stack([o.min(0).values, o.min(0).values])
    ref[0, 0], ref[1, 1] = o[:, 0].max(), o[:, 1].max()
    torch.testing.assert_close(out, ref)


def _invert_f1():
    torch.manual_seed(0)
    m = create_model("selu_mlp", input_shape=(1, 2, 2), num_classes=2, hidden=(3, 1)).eval()
    g = torch.Generator().manual_seed(1)
    ref, other = torch.rand(2, 1, 1, 2, 2, generator=g)
    with torch.no_grad():
        t = m.forward_features(other)
    return m, t, ref


def _check_invert_f1(out, c):
    m, t, _ = _invert_f1()
    assert out.features.shape == (1, 1) and bool(out.success.all())
    with torch.no_grad():
        got = m.forward_features(out.images).double()
    assert float((got - t.double()).abs().max()) <= 1e-3 * float(t.double().norm())


def _check_empty_attack(out, c):
    assert out.adv_images.shape == (0, 1, 4, 4) and out.success.dtype == torch.bool
    assert out.l2.shape == (0,) and out.adv_pred.dtype == torch.long and out.success_rate != out.success_rate


def _check_no_correct(out, c):
    assert out.metrics["n_attacked"] == 0.0 and out.metrics["n_success"] == 0.0
    assert all(v.shape[0] == 0 for v in out.per_sample.values())


def _close(ref):
    def check(out, c):
        torch.testing.assert_close(torch.as_tensor(out).double(), torch.as_tensor(ref).double(), equal_nan=True)
    return Check(check)


def _shape(*shape, dtype=None):
    def check(out, c):
        assert tuple(out.shape) == shape, out.shape
        assert dtype is None or out.dtype == dtype, out.dtype
    return Check(check)


FINITE = "contain NaN/inf"
BOX = r"outside \[0, 1\]"
INT_IMAGES = "expected floating-point images"
EMPTY = "at least one image is needed"
F1 = torch.tensor([[0.0], [1.0], [3.0], [-1.0]], dtype=torch.float64)

ROWS = [
    # ================================================================ fsl.inversion
    pytest.param(lambda c: inv(c, references=nan_image(c)), Raises(ValueError, f"references: 1 image.*{FINITE}"),
                 "FAILED: silent, feature_residual NaN for the sample", id="invert_to_features-nan-references"),
    pytest.param(lambda c: inv(c, references=poke(c.x, (2, 0, 1, 1), INF)), Raises(ValueError, FINITE),
                 "FAILED: silent, inf clamped to 1 and solved", id="invert_to_features-inf-references"),
    pytest.param(lambda c: inv(c, targets=poke(c.f, (3, 0), NAN)), Raises(ValueError, f"targets: 1 row.*{FINITE}"),
                 "FAILED: silent, success=False after a full solve", id="invert_to_features-nan-targets"),
    pytest.param(lambda c: inv(c, references=out_of_box(c)), Raises(ValueError, f"references: 6 image.*{BOX}"),
                 "FAILED: silent clamp to [0, 1], distances to the clamped image", id="invert_to_features-outside-box"),
    pytest.param(lambda c: inv(c, references=(c.x * 255).long()), Raises(TypeError, INT_IMAGES),
                 "FAILED: silent, int pixels cast and clamped to 1", id="invert_to_features-int64-references"),
    pytest.param(lambda c: inv(c, init=poke(c.x, (0, 0, 0, 0), NAN)), Raises(ValueError, f"init: 1 image.*{FINITE}"),
                 "FAILED: silent, distance NaN", id="invert_to_features-nan-init"),
    pytest.param(lambda c: inv(c, init=c.x[:2]), Raises(ValueError, r"init: shape \(2, 1, 4, 4\) != references"),
                 "FAILED: IndexError: index 2 is out of bounds", id="invert_to_features-init-shape"),
    pytest.param(lambda c: inv(c, targets=c.f[:, :3]), Raises(ValueError, "3 features per target.*gives 5"),
                 "FAILED: RuntimeError: The size of tensor a (5) must match", id="invert_to_features-targets-width"),
    pytest.param(lambda c: inv(c, targets=c.f[0]), Raises(ValueError, r"targets: expected shape \(B, f\)"),
                 "FAILED: ValueError: references: batch 6 != targets batch 5 (misleading)",
                 id="invert_to_features-1d-targets"),
    pytest.param(lambda c: inv(c, mode="ball", radius=torch.ones(4)),
                 Raises(ValueError, r"radius: expected a scalar or one radius per target \(6\), got 4"),
                 "FAILED: RuntimeError: The expanded size of the tensor", id="invert_to_features-radius-length"),
    pytest.param(lambda c: inv(c, mode="ball", radius=NAN), Raises(ValueError, "radius.*finite and > 0"),
                 "PINNED", id="invert_to_features-nan-radius"),
    pytest.param(lambda c: inv(c, targets=c.f[:0], references=c.x[:0]).images, _shape(0, 1, 4, 4),
                 "PINNED (empty batch -> empty result)", id="invert_to_features-empty"),
    pytest.param(lambda c: I.invert_to_features(*_invert_f1(), tol=1e-3), Check(_check_invert_f1),
                 "PINNED", id="invert_to_features-f1-point"),
    pytest.param(lambda c: I.relative_point_residual(poke(c.f, (0, 1), NAN), c.f), Raises(ValueError, FINITE),
                 "FAILED: silent NaN residual", id="relative_point_residual-nan-features"),
    pytest.param(lambda c: I.relative_point_residual(c.f[:2], c.f), Raises(ValueError, r"\(2, 5\).*\(6, 5\) differ"),
                 "FAILED: RuntimeError: The size of tensor a (2) must match", id="relative_point_residual-mismatch"),
    pytest.param(lambda c: I.relative_point_residual(c.f[0], c.f[0]), Raises(ValueError, r"expected shape \(B, f\)"),
                 "FAILED: IndexError: Dimension out of range", id="relative_point_residual-1d"),
    pytest.param(lambda c: I.feature_jacobian(c.model, c.x[:0]), _shape(0, 5, 16),
                 "FAILED: IndexError: index 0 is out of bounds for dimension 0 with size 0",
                 id="feature_jacobian-empty"),
    pytest.param(lambda c: I.feature_jacobian(c.model, nan_image(c)), Raises(ValueError, f"x: 1 image.*{FINITE}"),
                 "FAILED: silent, a finite Jacobian at a NaN image", id="feature_jacobian-nan-images"),
    pytest.param(lambda c: I.make_references("sample", nan_image(c)), Raises(ValueError, FINITE),
                 "FAILED: silent NaN references", id="make_references-nan-samples"),
    pytest.param(lambda c: I.make_references("other", c.x, out_of_box(c)[0]), Raises(ValueError, BOX),
                 "FAILED: silent references outside [0, 1]", id="make_references-outside-box"),
    pytest.param(lambda c: I.black_reference(c.x), Check(lambda out, c: out.eq(0).all() and out.shape == c.x.shape),
                 "PINNED", id="black_reference-shape"),
    pytest.param(lambda c: I.white_reference(c.x[0]), Check(lambda out, c: out.eq(1).all() and out.shape == (1, 4, 4)),
                 "PINNED", id="white_reference-shape"),
    pytest.param(lambda c: I.morph(c.model, nan_image(c)[1], c.x[0], n_steps=3, options={"max_iter": 1, "fallback": {"al_iter": 1}}),
                 Raises(ValueError, f"image_a: 1 image.*{FINITE}"), "FAILED: silent, NaN-driven radii and images",
                 id="morph-nan-image"),
    pytest.param(lambda c: I.morph(c.model, c.x, c.x, n_steps=3), Raises(ValueError, r"shape \(C, H, W\)"),
                 "FAILED: RuntimeError: mat1 and mat2 shapes cannot be multiplied", id="morph-batch-not-image"),
    pytest.param(lambda c: I.morph(c.model, c.x[1], c.x[0], radii=torch.tensor([1.0, -1.0]), options={"max_iter": 1, "fallback": {"al_iter": 1}}),
                 Raises(ValueError, "1 negative radii"), "FAILED: silent, -1 solved as the point problem",
                 id="morph-negative-radius"),
    pytest.param(lambda c: I.morph(c.model, c.x[1], c.x[0], radii=torch.tensor([1.0, NAN]), options={"max_iter": 1, "fallback": {"al_iter": 1}}),
                 Raises(ValueError, f"radii: 1 value.*{FINITE}"),
                 "FAILED: silent, the NaN radius is skipped and its image left uninitialised",
                 id="morph-nan-radius"),
    pytest.param(lambda c: I.morph(c.model, c.x[1], c.x[0], n_steps=0).radii, _shape(0),
                 "PINNED (no radii -> empty result)", id="morph-empty"),
    pytest.param(lambda c: I.pixel_line_feature_path(c.model, c.x[1], c.x[0], n=1),
                 Raises(ValueError, "n >= 2 points"), "FAILED: wrong value, chord_feature 0.0 != ||N(a) - N(b)||",
                 id="pixel_line_feature_path-n1"),
    pytest.param(lambda c: I.pixel_line_feature_path(c.model, c.x[1], c.x[0], n=0), Raises(ValueError, "n >= 2"),
                 "FAILED: ValueError: torch.cat(): expected a non-empty list of Tensors",
                 id="pixel_line_feature_path-empty"),
    pytest.param(lambda c: I.pixel_line_feature_path(c.model, nan_image(c)[1], c.x[0], n=3),
                 Raises(ValueError, FINITE), "FAILED: silent, length_feature NaN", id="pixel_line_feature_path-nan"),
    pytest.param(lambda c: I.pixel_line_feature_path(c.model, c.x[1], c.x[0, :, :2], n=3),
                 Raises(ValueError, r"\(1, 4, 4\) and image_b \(1, 2, 4\) differ"),
                 "FAILED: RuntimeError: The size of tensor a (4) must match", id="pixel_line_feature_path-shape"),
    pytest.param(lambda c: I.feature_path(c.model, nan_image(c)[1], c.f[0]), Raises(ValueError, FINITE), "PINNED",
                 id="feature_path-nan-image"),
    pytest.param(lambda c: I.feature_path(c.model, c.x[1], poke(c.f[0], 0, NAN)), Raises(ValueError, FINITE), "PINNED",
                 id="feature_path-nan-target"),
    pytest.param(lambda c: I.feature_path(c.model, c.x[1], c.f[0], n_points=1), Raises(ValueError, "n_points >= 2"),
                 "PINNED", id="feature_path-n1"),
    pytest.param(lambda c: I.feature_path(c.model, c.x[1], c.f[0, :3]), Raises(ValueError, "5 columns"), "PINNED",
                 id="feature_path-width"),
    pytest.param(lambda c: I.feature_bounds(torch.nn.Linear(16, 5)), Raises(TypeError, "no interval propagation"),
                 "PINNED", id="feature_bounds-unknown-model"),
    pytest.param(lambda c: I.residual_lower_bound(poke(c.f, (0, 0), NAN), c.f[0], c.f[1]), Raises(ValueError, FINITE),
                 "PINNED", id="residual_lower_bound-nan"),
    pytest.param(lambda c: I.residual_lower_bound(c.f[:0], c.f[0], c.f[0]).shape, Check(lambda out, c: out == (0,)),
                 "PINNED", id="residual_lower_bound-empty"),
    pytest.param(lambda c: I.diagnose(c.model, I.invert_to_features(c.model, c.f[:2], c.x[2:4], radius=1.0,
                                                                    mode="sphere", options={"max_iter": 2}), c.f[:2]),
                 Raises(ValueError, "point-mode results only"), "PINNED", id="diagnose-sphere"),
    pytest.param(lambda c: I.probe_reachability(c.model, poke(c.f[:2], (0, 0), NAN), c.x[:2], steps=2),
                 Raises(ValueError, FINITE), "PINNED", id="probe_reachability-nan-targets"),
    pytest.param(lambda c: I.probe_reachability(c.model, c.f[:2], c.x[:2] + 2.0, steps=2),
                 Raises(ValueError, r"\[0, 1\]"), "PINNED", id="probe_reachability-starts-out-of-box"),
    pytest.param(lambda c: I.split_misses(["hit", "not_converged"], torch.tensor([0.5]), 1e-3),
                 Raises(ValueError, "2 categories but 1 probe residuals"), "PINNED", id="split_misses-length"),
    pytest.param(lambda c: I.split_misses(["hit", "not_converged"], torch.tensor([0.5, float("nan")]), 1e-3),
                 Raises(ValueError, r"misses \[1\] have no probe residual"), "PINNED", id="split_misses-unprobed"),
    pytest.param(lambda c: I.two_point_equidistant(poke(c.f, (2, 0), NAN), c.f[0], c.f[1]),
                 Raises(ValueError, f"points: 1 row.*{FINITE}"), "FAILED: silent NaN coordinates",
                 id="two_point_equidistant-nan-points"),
    pytest.param(lambda c: I.two_point_equidistant(c.f[0], c.f[0], c.f[1]), Raises(ValueError, r"expected \(N, f\)"),
                 "FAILED: wrong value, (f,) read as f points of dimension 1 and broadcast",
                 id="two_point_equidistant-1d-points"),
    pytest.param(lambda c: I.two_point_equidistant(c.f[:0], c.f[0], c.f[1]), _shape(0, 2, dtype=torch.float64),
                 "FAILED: RuntimeError: cannot reshape tensor of 0 elements", id="two_point_equidistant-empty"),
    pytest.param(lambda c: I.two_point_equidistant(c.f, c.f[0, :3], c.f[1]), Raises(ValueError, "5 coordinates, a 3"),
                 "FAILED: RuntimeError: The size of tensor a (5) must match", id="two_point_equidistant-mismatch"),
    pytest.param(lambda c: I.two_point_equidistant(F1, torch.tensor([0.0]), torch.tensor([2.0])),
                 _close([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [-1.0, 0.0]]), "PINNED", id="two_point_equidistant-f1"),
    pytest.param(lambda c: I.jacobian_null_space(c.model, c.x[:0]), Raises(ValueError, EMPTY),
                 "FAILED: IndexError: index 0 is out of bounds", id="jacobian_null_space-empty"),
    pytest.param(lambda c: I.jacobian_null_space(c.model, nan_image(c)), Raises(ValueError, FINITE),
                 "FAILED: silent, rank 5 reported at a NaN image", id="jacobian_null_space-nan"),
    pytest.param(lambda c: I.null_space_directions(torch.full((2, 3, 5), NAN), 2),
                 Raises(ValueError, f"jacobian: 2 sample.*{FINITE}"), "FAILED: _LinAlgError: linalg.eigh failed",
                 id="null_space_directions-nan"),
    pytest.param(lambda c: I.null_space_directions(torch.randn(3, 5), 2), Raises(ValueError, r"\(B, f, p\)"),
                 "FAILED: ValueError: not enough values to unpack (obscure)", id="null_space_directions-2d"),
    pytest.param(lambda c: I.null_space_directions(torch.randn(0, 3, 5), 2), _shape(0, 2, 5),
                 "PINNED", id="null_space_directions-empty"),
    pytest.param(lambda c: I.null_space_directions_from(torch.randn(2, 3, 5), torch.full((2, 5), NAN)),
                 Raises(ValueError, FINITE), "FAILED: silent NaN directions", id="null_space_directions_from-nan"),
    pytest.param(lambda c: I.null_space_directions_from(torch.randn(2, 3, 5), torch.randn(2, 4)),
                 Raises(ValueError, r"expected \(2, 5\)"),
                 "FAILED: RuntimeError: Expected size for first two dimensions",
                 id="null_space_directions_from-shape"),
    pytest.param(lambda c: I.null_step_response(c.model, c.x, steps=(0.0, 0.1), k=2),
                 Raises(ValueError, "two distinct step sizes > 0"), "FAILED: silent NaN slopes (log 0)",
                 id="null_step_response-zero-step"),
    pytest.param(lambda c: I.null_step_response(c.model, c.x[:0], k=2), Raises(ValueError, EMPTY),
                 "FAILED: IndexError: index 0 is out of bounds", id="null_step_response-empty"),
    pytest.param(lambda c: I.null_step_response(c.model, nan_image(c), k=2), Raises(ValueError, FINITE),
                 "FAILED: silent NaN slope for the sample", id="null_step_response-nan"),
    pytest.param(lambda c: I.level_set_walk(c.model, out_of_box(c), n_steps=1), Raises(ValueError, BOX),
                 "FAILED: silent, walk from a clipped start", id="level_set_walk-outside-box"),
    pytest.param(lambda c: I.level_set_walk(c.model, c.x, n_steps=1, eps=-1.0), Raises(ValueError, "eps must be"),
                 "FAILED: silent, on_set all False", id="level_set_walk-negative-eps"),
    pytest.param(lambda c: I.level_set_walk(c.model, c.x[:0], n_steps=1), Raises(ValueError, EMPTY),
                 "FAILED: IndexError: index 0 is out of bounds", id="level_set_walk-empty"),
    pytest.param(lambda c: I.level_set_walk(c.model, nan_image(c), n_steps=1), Raises(ValueError, FINITE),
                 "FAILED: silent, on_set False for the sample", id="level_set_walk-nan"),
    # ================================================================ fsl.spaces
    pytest.param(lambda c: S.fundamental_subspaces(poke(torch.randn(3, 4), (0, 1), NAN)),
                 Raises(ValueError, "W: 1 NaN/inf entries in 1 of 3 rows"),
                 "FAILED: _LinAlgError: linalg.svd failed to converge", id="fundamental_subspaces-nan"),
    pytest.param(lambda c: S.fundamental_subspaces(torch.randn(4)), Raises(ValueError, "expected a 2-D matrix"),
                 "FAILED: ValueError: not enough values to unpack (obscure)", id="fundamental_subspaces-1d"),
    pytest.param(lambda c: S.fundamental_subspaces(torch.randn(0, 4)), Check(
                 lambda out, c: out.rank == 0 and out.null.shape == (4, 4) and out.row.shape == (4, 0)),
                 "PINNED", id="fundamental_subspaces-empty"),
    pytest.param(lambda c: S.fundamental_subspaces(torch.tensor([[3.0], [4.0]])), Check(
                 lambda out, c: (out.rank == 1 and out.singular_values.tolist() == [5.0]
                                 and torch.allclose(out.column.abs().flatten(), torch.tensor([0.6, 0.8]).double())
                                 and out.row.abs().tolist() == [[1.0]]
                                 and abs(float(out.left_null.T @ out.column)) < 1e-12)),
                 "PINNED", id="fundamental_subspaces-f1"),
    pytest.param(lambda c: S.rank_tolerance(torch.tensor([2.0, 1.0]), (2, 2), torch.float32, rtol=-1.0),
                 Raises(ValueError, "rtol must be finite and >= 0"), "FAILED: silent negative tolerance -2.0",
                 id="rank_tolerance-negative-rtol"),
    pytest.param(lambda c: S.rank_tolerance(torch.tensor([NAN, 1.0]), (2, 2), torch.float32),
                 Raises(ValueError, "singular_values contain NaN/inf"), "FAILED: silent NaN tolerance",
                 id="rank_tolerance-nan"),
    pytest.param(lambda c: S.layer_spectra(_nan_model()), Raises(ValueError, "layer 'layers.0' weight: 1 NaN/inf"),
                 "FAILED: _LinAlgError: linalg.svd failed", id="layer_spectra-nan-weight"),
    pytest.param(lambda c: S.all_layer_subspaces(_nan_model()), Raises(ValueError, "layer 'layers.0' weight"),
                 "FAILED: _LinAlgError: linalg.svd failed", id="all_layer_subspaces-nan-weight"),
    pytest.param(lambda c: S.first_layer_signal_images(_nan_model()), Raises(ValueError, "layer 'layers.0' weight"),
                 "FAILED: _LinAlgError: linalg.svd failed", id="first_layer_signal_images-nan-weight"),
    pytest.param(lambda c: S.first_layer_signal_images(c.model, k=-2), Raises(ValueError, "k must be >= 0"),
                 "FAILED: RuntimeError: invalid shape dimension -2", id="first_layer_signal_images-negative-k"),
    pytest.param(lambda c: S.layer_matrices(c.model)[0].weight, _shape(8, 16, dtype=torch.float64),
                 "PINNED", id="layer_matrices-shape"),
    pytest.param(lambda c: S.first_layer(torch.nn.ReLU()), Raises(ValueError, "no Linear or Conv2d layer"),
                 "PINNED", id="first_layer-no-layer"),
    pytest.param(lambda c: S.class_residuals(c.model, nan_image(c), c.y), Raises(ValueError, FINITE),
                 "FAILED: silent NaN residual energy for a class", id="class_residuals-nan"),
    pytest.param(lambda c: S.class_residuals(c.model, c.x, c.y[:3]), Raises(ValueError, r"shape \(6,\), got \(3,\)"),
                 "FAILED: IndexError: The shape of the mask [3] does not match", id="class_residuals-mismatch"),
    pytest.param(lambda c: S.class_residuals(c.model, c.x[:0], c.y[:0]), Raises(ValueError, EMPTY),
                 "FAILED: RuntimeError: stack expects a non-empty TensorList", id="class_residuals-empty"),
    pytest.param(lambda c: S.class_residuals(c.model, (c.x * 255).long(), c.y), Raises(TypeError, INT_IMAGES),
                 "FAILED: silent, 0..255 read as pixel values", id="class_residuals-int64"),
    pytest.param(lambda c: S.class_residuals(c.model, c.x, c.y % 2), Check(_check_class_residuals_two_classes),
                 "PINNED", id="class_residuals-two-classes"),
    pytest.param(lambda c: S.layer_input(c.model, (c.x * 255).long()), Raises(TypeError, INT_IMAGES),
                 "FAILED: silent, values up to 824", id="layer_input-int64"),
    pytest.param(lambda c: S.layer_input(c.model, nan_image(c)), Raises(ValueError, FINITE),
                 "FAILED: silent NaN", id="layer_input-nan"),
    pytest.param(lambda c: S.selu_inverse(torch.tensor([-2.0, 1.0]), range_margin=-1.0),
                 Raises(ValueError, r"range_margin must be in \(0, 1\)"), "FAILED: silent NaN z, not flagged",
                 id="selu_inverse-bad-margin"),
    pytest.param(lambda c: S.selu_inverse(torch.tensor([NAN, -INF, 1.0]))[1].tolist(), _close([1.0, 1.0, 0.0]),
                 "PINNED (out-of-range values clamped and flagged)", id="selu_inverse-nan-flagged"),
    pytest.param(lambda c: S.selu_chain(c.model, start="foo"), Raises(ValueError, "start must be"),
                 "PINNED", id="selu_chain-bad-start"),
    pytest.param(lambda c: S.forward_chain(S.selu_chain(c.model), torch.full((2, 16), NAN)),
                 Raises(ValueError, f"h0: 2 row.*{FINITE}"), "FAILED: silent NaN activations", id="forward_chain-nan"),
    pytest.param(lambda c: S.forward_chain(S.selu_chain(c.model), torch.randn(2, 15)),
                 Raises(ValueError, r"expected \(B, 16\) inputs of layer 'layers.0'"),
                 "FAILED: RuntimeError: mat1 and mat2 shapes cannot be multiplied", id="forward_chain-width"),
    pytest.param(lambda c: S.selu_invert(c.model, poke(c.f, (0, 0), NAN)),
                 Raises(ValueError, f"outputs: 1 row.*{FINITE}"),
                 "FAILED: silent, NaN clamped into a flagged image", id="selu_invert-nan"),
    pytest.param(lambda c: S.selu_invert(c.model, c.f[:, :3]), Raises(ValueError, "with 5 columns"),
                 "FAILED: RuntimeError: The size of tensor a (3) must match", id="selu_invert-width"),
    pytest.param(lambda c: S.selu_invert(c.model, c.f, x_true=c.x[:2]), Raises(ValueError, "2 images for 6 outputs"),
                 "FAILED: RuntimeError: The size of tensor a (6) must match", id="selu_invert-x_true-mismatch"),
    pytest.param(lambda c: S.selu_invert(c.model, c.f[:0]).images, _shape(0, 1, 4, 4),
                 "PINNED", id="selu_invert-empty"),
    pytest.param(lambda c: S.selu64(torch.tensor([-INF, 0.0, INF])), _close([S.SELU_LOWER, 0.0, INF]),
                 "PINNED (exact limits)", id="selu64-inf"),
    pytest.param(lambda c: S.ideal_outputs(c.model, c.x[:0]), Raises(ValueError, EMPTY),
                 "FAILED: ValueError: torch.cat(): expected a non-empty list (obscure)", id="ideal_outputs-empty"),
    pytest.param(lambda c: S.ideal_outputs(c.model, nan_image(c)), Raises(ValueError, FINITE),
                 "FAILED: silent, every ideal output NaN", id="ideal_outputs-nan"),
    pytest.param(lambda c: S.ideal_outputs(c.model2, c.x), Check(_check_ideal_two_classes),
                 "PINNED", id="ideal_outputs-two-classes"),
    pytest.param(lambda c: S.ideal_inputs(c.model, c.x, c.y + 3, steps=1), Raises(ValueError, r"in \[0, 3\)"),
                 "FAILED: silent, labels >= n ignored (averages of no members)", id="ideal_inputs-label-range"),
    pytest.param(lambda c: S.ideal_inputs(c.model, c.x, c.y, steps=1, percentile=150),
                 Raises(ValueError, r"percentile must be in \[0, 100\]"), "FAILED: RuntimeError: quantile() q must be",
                 id="ideal_inputs-percentile"),
    pytest.param(lambda c: S.ideal_inputs(c.model, out_of_box(c), c.y, steps=1), Raises(ValueError, BOX),
                 "FAILED: silent, refined from images outside [0, 1]", id="ideal_inputs-outside-box"),
    pytest.param(lambda c: S.refine_to_outputs(c.model, c.x[:0], torch.zeros(0, 3), steps=1), _shape(0, 1, 4, 4),
                 "FAILED: ValueError: torch.cat(): expected a non-empty list", id="refine_to_outputs-empty"),
    pytest.param(lambda c: S.refine_to_outputs(c.model, c.x, torch.full((6, 3), NAN), steps=1),
                 Raises(ValueError, f"goal: 6 row.*{FINITE}"), "FAILED: silent, x0 returned unchanged",
                 id="refine_to_outputs-nan-goal"),
    pytest.param(lambda c: S.refine_to_outputs(c.model, (c.x * 255).long(), torch.zeros(6, 3), steps=1),
                 Raises(TypeError, INT_IMAGES),
                 "FAILED: RuntimeError: only Tensors of floating point dtype can require gradients",
                 id="refine_to_outputs-int64"),
    # ================================================================ fsl.adversarial
    pytest.param(lambda c: A.robust_accuracy(torch.rand(8), torch.rand(5), torch.rand(4), torch.ones(5, dtype=torch.bool)),
                 Raises(ValueError, "robust_accuracy: test_clean"), "PINNED", id="robust_accuracy-length-mismatch"),
    pytest.param(lambda c: A.adaptive_suite({"pgd": {"attack": "pgd", "eps": 0.1}}, ["msp"], {"lambda": [1.0]}),
                 Raises(ValueError, "unknown option 'lambda'"), "PINNED", id="adaptive_suite-unknown-option"),
    pytest.param(lambda c: A.fit_supervised_detectors(None, c.model, nan_image(c), c.y, "pgd", names=["lid"]),
                 Raises(ValueError, FINITE), "PINNED", id="fit_supervised_detectors-nan-images"),
    pytest.param(lambda c: A.run_attack(c.model, c.x[:0], c.y[:0], "deepfool"), Check(_check_empty_attack),
                 "FAILED: IndexError: amax(): Expected reduction dim 1 to have non-zero size", id="run_attack-empty"),
    pytest.param(lambda c: A.run_attack(c.model, (c.x * 255).long(), c.y, "deepfool"), Raises(TypeError, INT_IMAGES),
                 "FAILED: ValueError: images must lie in [0, 1] (wrong diagnosis)", id="run_attack-int64"),
    pytest.param(lambda c: A.run_attack(c.model, c.x.half(), c.y, "deepfool"),
                 Raises(TypeError, r"float16 does not match the model's torch.float32; pass images.to"),
                 "FAILED: RuntimeError: Index put requires the source and destination dtypes match",
                 id="run_attack-float16"),
    pytest.param(lambda c: A.run_attack(c.model, c.x.double(), c.y, "pgd"), Raises(TypeError, "float64 does not match"),
                 "FAILED: RuntimeError: mat1 and mat2 must have the same dtype", id="run_attack-float64"),
    pytest.param(lambda c: A.run_attack(c.model, nan_image(c), c.y), Raises(ValueError, f"1 image.*{FINITE}"),
                 "FAILED (message): ValueError: run_attack: images contain NaN or inf (no image named)",
                 id="run_attack-nan"),
    pytest.param(lambda c: A.run_attack(c.model, out_of_box(c), c.y), Raises(ValueError, BOX),
                 "FAILED (message): ValueError: images must lie in [0, 1] (no image named)",
                 id="run_attack-outside-box"),
    pytest.param(lambda c: A.run_attack(c.model, c.x, poke(c.y, 2, -1), "deepfool", steps=2),
                 Raises(ValueError, r"labels must lie in \[0, n\)"), "FAILED: silent, label -1 read as the last class",
                 id="run_attack-negative-label"),
    pytest.param(lambda c: A.run_attack(c.model, c.x, poke(c.y, 2, 5), "deepfool", steps=2),
                 Raises(ValueError, r"labels must lie in \[0, 3\)"), "FAILED: IndexError: index 5 is out of bounds",
                 id="run_attack-label-range"),
    pytest.param(lambda c: A.run_attack(c.model, c.x, c.y.float() + 0.5, "deepfool", steps=2),
                 Raises(TypeError, "expected integer class labels"), "FAILED: silent, float labels truncated",
                 id="run_attack-float-labels"),
    pytest.param(lambda c: A.run_attack(*_deepfool_two_classes(), torch.tensor([0]), "deepfool"),
                 Check(_check_deepfool_two_classes), "PINNED", id="run_attack-two-classes-closed-form"),
    pytest.param(lambda c: A.evaluate_attack(c.model, c.x, (c.pred + 1) % 3, c.f_train, c.y_train, "deepfool",
                                             c.detectors, n_boot=10, steps=2), Check(_check_no_correct),
                 "FAILED: IndexError: amax() (no correctly classified sample to attack)",
                 id="evaluate_attack-none-correct"),
    pytest.param(lambda c: A.evaluate_attack(c.model, nan_image(c), c.y, c.f_train, c.y_train, "deepfool",
                                             c.detectors, n_boot=10), Raises(ValueError, FINITE),
                 "FAILED: silent, NaN images dropped as misclassified", id="evaluate_attack-nan"),
    pytest.param(lambda c: A.summarize_attack({k: torch.empty(0, dtype=dt) for k, dt in per_sample_dtypes().items()},
                                              torch.ones(3), n_boot=5)[0],
                 Check(lambda out, c: out["n_attacked"] == 0.0 and math.isnan(out["auroc/margin"])
                       and math.isnan(out["rule/train_margin_caught"])), "PINNED (nothing attacked -> NaN metrics)",
                 id="summarize_attack-empty"),
    pytest.param(lambda c: A.select_correct(c.model, (c.x * 255).long(), c.y), Raises(TypeError, INT_IMAGES),
                 "FAILED: silent mask from 0..255 pixels", id="select_correct-int64"),
    pytest.param(lambda c: A.select_correct(c.model, c.x, c.y[:3]), Raises(ValueError, r"shape \(6,\), got \(3,\)"),
                 "FAILED: IndexError: shape mismatch: indexing tensors", id="select_correct-mismatch"),
    pytest.param(lambda c: A.select_correct(c.model2, c.x, c.y % 2),
                 Check(lambda out, c: out.tolist() == (c.model2(c.x).argmax(1) == c.y % 2).tolist()),
                 "PINNED", id="select_correct-two-classes"),
    pytest.param(lambda c: A.perturbation_norms(c.x, c.x[:3]), Raises(ValueError, "must have the same"),
                 "FAILED: RuntimeError: The size of tensor a (6) must match", id="perturbation_norms-mismatch"),
    pytest.param(lambda c: A.perturbation_norms(nan_image(c), c.x), Raises(ValueError, FINITE),
                 "FAILED: silent NaN norms", id="perturbation_norms-nan"),
    pytest.param(lambda c: A.logit_gap(c.z, poke(c.y, 1, -1)), Raises(ValueError, r"in \[0, 3\)"),
                 "FAILED: silent, -1 indexes the last class", id="logit_gap-negative-label"),
    pytest.param(lambda c: A.logit_gap(c.z, c.y[:3]), Raises(ValueError, r"shape \(6,\), got \(3,\)"),
                 "FAILED: IndexError: shape mismatch", id="logit_gap-mismatch"),
    pytest.param(lambda c: A.logit_gap(c.z[0], c.y[:1]), Raises(ValueError, r"expected logits \(B, n\)"),
                 "FAILED: IndexError: too many indices", id="logit_gap-1d"),
    pytest.param(lambda c: A.logit_gap(torch.tensor([[1.0, 3.0], [2.0, -1.0]]), torch.tensor([0, 0])),
                 _close([2.0, -3.0]), "PINNED", id="logit_gap-two-classes"),
    pytest.param(lambda c: A.is_adversarial(torch.tensor([[NAN, 1.0], [0.0, 1.0]]), torch.tensor([0, 0])),
                 Check(lambda out, c: out.tolist() == [False, True]), "PINNED (NaN logits never succeed)",
                 id="is_adversarial-nan-logits"),
    pytest.param(lambda c: A.gap_tolerance(c.z[0]), Raises(ValueError, r"expected logits \(B, n\)"),
                 "FAILED: IndexError: Dimension out of range", id="gap_tolerance-1d"),
    pytest.param(lambda c: A.msp_score(poke(c.z, (0, 0), NAN)), Raises(ValueError, "non-finite"),
                 "FAILED: silent NaN score", id="msp_score-nan"),
    pytest.param(lambda c: A.msp_score(torch.tensor([[0.0, 2.0], [1.0, -1.0]])),
                 _close([-torch.sigmoid(torch.tensor(2.0)), -torch.sigmoid(torch.tensor(2.0))]),
                 "PINNED", id="msp_score-two-classes"),
    pytest.param(lambda c: A.energy_score(c.z[:0]), _shape(0, dtype=torch.float64), "PINNED", id="energy_score-empty"),
    pytest.param(lambda c: A.margin_score(torch.tensor([1.0, NAN, INF])), _close([-1.0, NAN, -INF]),
                 "PINNED (NaN propagates; summarize_attack drops and counts it)", id="margin_score-nan"),
    pytest.param(lambda c: A.ambiguity_score(torch.ones(3), torch.ones(1)), Raises(ValueError, "same shape"),
                 "FAILED: silent broadcast of one hull distance to three margins", id="ambiguity_score-mismatch"),
    pytest.param(lambda c: A.fit_mahalanobis(poke(c.f, (1, 2), NAN), c.y),
                 Raises(ValueError, "train_features.*non-finite"), "FAILED: _LinAlgError: linalg.cholesky",
                 id="fit_mahalanobis-nan"),
    pytest.param(lambda c: A.fit_mahalanobis(c.f, poke(c.y, 2, -1)), Raises(ValueError, r"labels must lie in \[0, n\)"),
                 "FAILED: RuntimeError: bincount only supports 1-d non-negative integral inputs",
                 id="fit_mahalanobis-negative-label"),
    pytest.param(lambda c: A.fit_mahalanobis(c.f, poke(c.y, 2, 5), num_classes=3), Raises(ValueError, r"\[0, 3\)"),
                 "FAILED: RuntimeError: index 5 is out of bounds", id="fit_mahalanobis-label-range"),
    pytest.param(lambda c: A.fit_mahalanobis(c.f, c.y.float() + 0.5), Raises(TypeError, "integer class labels"),
                 "FAILED: silent, labels truncated", id="fit_mahalanobis-float-labels"),
    pytest.param(lambda c: A.mahalanobis_score(torch.tensor([[2.0], [5.5]], dtype=torch.float64), A.fit_mahalanobis(
                 torch.tensor([[0.0], [1.0], [4.0], [6.0]]), torch.tensor([0, 0, 1, 1]))), Check(_check_mahalanobis_f1),
                 "PINNED", id="mahalanobis_score-f1"),
    pytest.param(lambda c: A.mahalanobis_score(poke(c.f, (0, 0), NAN), c.detectors["mahalanobis"].gaussians),
                 Raises(ValueError, "non-finite"), "FAILED: silent NaN score", id="mahalanobis_score-nan"),
    pytest.param(lambda c: A.mahalanobis_score(c.f[:, :3], c.detectors["mahalanobis"].gaussians),
                 Raises(ValueError, "features have 3 dims, the fitted Gaussians 5"),
                 "FAILED: RuntimeError: linalg.solve_triangular: Incompatible shapes", id="mahalanobis_score-width"),
    pytest.param(lambda c: A.knn_score(c.f, c.f[:0], k=1), Raises(ValueError, "no training features"),
                 "FAILED: ValueError: ... pass k <= 0 or more training features (misleading)",
                 id="knn_score-empty-train"),
    pytest.param(lambda c: A.knn_score(torch.tensor([[0.5], [5.0]]), torch.tensor([[0.0], [1.0], [3.0]]), k=2,
                                       normalize=False), _close([0.5, 4.0]), "PINNED", id="knn_score-f1"),
    pytest.param(lambda c: A.fit_fdbd(c.f[:0]), Raises(ValueError, "no training features"), "PINNED",
                 id="fit_fdbd-empty"),
    pytest.param(lambda c: A.fdbd_score(c.f, c.model.head.weight[:2], c.model.head.bias[:2],
                                        c.f_train.double().mean(0)),
                 Check(_check_fdbd_two_classes), "PINNED", id="fdbd_score-two-classes"),
    pytest.param(lambda c: A.detection_metrics(torch.randn(20), torch.randn(10), fpr=NAN),
                 Raises(ValueError, r"fpr .* must lie in \[0, 1\], got nan"),
                 "FAILED: ValueError: cannot convert float NaN to integer (obscure)", id="detection_metrics-nan-fpr"),
    pytest.param(lambda c: A.detection_metrics(torch.randn(20), torch.randn(10), fpr=1.5),
                 Raises(ValueError, r"must lie in \[0, 1\], got 1.5"), "FAILED: silent, tpr 1.0 at threshold -inf",
                 id="detection_metrics-fpr-above-1"),
    pytest.param(lambda c: A.detection_metrics(torch.randn(4, 5), torch.randn(10)),
                 Raises(ValueError, r"scores_clean: expected one score per sample"),
                 "FAILED: silent, a (4, 5) matrix flattened into 20 scores", id="detection_metrics-2d"),
    pytest.param(lambda c: A.detection_metrics(torch.tensor([0.0]), torch.tensor([1.0])),
                 Check(lambda out, c: out["auroc"] == 1.0 and out["aupr_in"] == 1.0 and out["fpr_at_95tpr"] == 0.0),
                 "PINNED", id="detection_metrics-one-each"),
    pytest.param(lambda c: A.detection_metrics(torch.tensor([-INF, 0.0]), torch.tensor([INF])),
                 Check(lambda out, c: out["auroc"] == 1.0), "PINNED (+-inf scores are ordered)",
                 id="detection_metrics-inf-scores"),
    pytest.param(lambda c: A.roc_curve(torch.tensor([1.0, NAN]), torch.tensor([2.0])), Raises(ValueError, "NaN"),
                 "PINNED", id="roc_curve-nan"),
    pytest.param(lambda c: A.clean_threshold(torch.tensor([1.0, NAN, 3.0])), Raises(ValueError, "contain NaN"),
                 "FAILED: silent NaN threshold", id="clean_threshold-nan"),
    pytest.param(lambda c: A.clean_threshold(torch.randn(20), fpr=-1.0), Raises(ValueError, r"\[0, 1\]"),
                 "FAILED: silent, threshold = the largest score", id="clean_threshold-negative-fpr"),
    pytest.param(lambda c: A.bootstrap_ci(torch.randn(20), torch.randn(10), n_boot=5, fpr=-0.5),
                 Raises(ValueError, r"\[0, 1\]"), "FAILED: silent intervals for a negative budget",
                 id="bootstrap_ci-negative-fpr"),
    pytest.param(lambda c: A.bootstrap_ci(torch.empty(0), torch.randn(10), n_boot=5),
                 Check(lambda out, c: all(math.isnan(v) for v in out.values())), "PINNED", id="bootstrap_ci-empty"),
    pytest.param(lambda c: A.detection_table({"m": (torch.tensor([1.0, NAN]), torch.tensor([2.0]))}),
                 Raises(ValueError, "NaN"), "PINNED", id="detection_table-nan"),
    pytest.param(lambda c: A.train_margin_rule(torch.tensor([1.0, 0.1]), torch.tensor([])),
                 Check(lambda out, c: math.isnan(out["caught"]) and math.isnan(out["threshold"])),
                 "FAILED: wrong value, caught 0.0 without any training margin", id="train_margin_rule-empty-train"),
    pytest.param(lambda c: A.train_margin_rule(torch.tensor([1.0, NAN]), torch.tensor([0.5, 2.0])),
                 Raises(ValueError, "NaN values in adv_margin"), "FAILED: silent, NaN counted as not caught",
                 id="train_margin_rule-nan"),
    pytest.param(lambda c: A.feature_space_summary(torch.ones(3), torch.ones(2)), Raises(ValueError, "adv_hull"),
                 "PINNED", id="feature_space_summary-mismatch"),
    pytest.param(lambda c: A.suite_for_data("foo"), Raises(ValueError, "no attack suite"), "PINNED",
                 id="suite_for_data-unknown"),
    pytest.param(lambda c: A.load_suite("foo"), Raises(ValueError, "unknown attack suite"), "PINNED",
                 id="load_suite-unknown"),
    pytest.param(lambda c: A.register_detector("x")(int), Raises(TypeError, "not a fsl.adversarial.detectors.Detector"),
                 "PINNED", id="register_detector-not-a-detector"),
    pytest.param(lambda c: A.register_detector("margin")(type("Other", (A.Detector,), {})),
                 Raises(ValueError, "'margin' is registered twice"), "PINNED", id="register_detector-twice"),
    pytest.param(lambda c: A.register_attack("pgd")(lambda model, images, labels: images),
                 Raises(ValueError, "'pgd' is registered twice"), "PINNED", id="register_attack-twice"),
    # ================================================================ fsl.geometry (audited before)
    pytest.param(lambda c: flip_margins(poke(c.f, (2, 1), NAN), c.model.head.weight, c.model.head.bias),
                 Raises(ValueError, r"flip_margins features: 1 row\(s\) contain NaN/inf \(first: \[2\]\)"),
                 "PINNED", id="flip_margins-nan-features"),
    pytest.param(lambda c: flip_margins(c.f[:0], c.model.head.weight, c.model.head.bias).margin, _shape(0),
                 "PINNED", id="flip_margins-empty"),
    pytest.param(lambda c: flip_margins(torch.tensor([[0.0], [3.0]]), torch.tensor([[1.0], [-1.0]]),
                                        torch.tensor([0.0, 1.0])).margin, _close([0.5, 2.5]), "PINNED",
                 id="flip_margins-f1"),
    pytest.param(lambda c: flip_margins(c.model2.forward_features(c.x).detach(), c.model2.head.weight.detach(),
                                        c.model2.head.bias.detach()), Check(_flip_two_classes), "PINNED",
                 id="flip_margins-two-classes"),
    pytest.param(lambda c: ball_counts(c.f, torch.ones(5), c.f), Raises(ValueError, "radii: expected 6 values"),
                 "PINNED", id="ball_counts-radii-length"),
    pytest.param(lambda c: ball_counts(F1, torch.full((4,), 1.5), F1), _close([2, 1, 0, 1]), "PINNED",
                 id="ball_counts-f1"),
    pytest.param(lambda c: union_coverage(poke(c.f, (0, 0), INF), c.f, torch.ones(6)),
                 Raises(ValueError, "union_coverage queries: 1 row"), "PINNED", id="union_coverage-inf-queries"),
    pytest.param(lambda c: union_coverage(torch.tensor([[0.5], [5.0]]), torch.tensor([[0.0], [1.0]]),
                                          torch.tensor([1.0, 1.0])), _close([1.0, 0.0]), "PINNED",
                 id="union_coverage-f1"),
    pytest.param(lambda c: hull_distances(c.f, c.f[:0]), Raises(ValueError, "no points"), "PINNED",
                 id="hull_distances-empty-points"),
    pytest.param(lambda c: hull_distances(torch.tensor([[0.5], [5.0], [-2.0]]), torch.tensor([[0.0], [1.0]])).distance,
                 _close([0.0, 4.0, 2.0]), "PINNED", id="hull_distances-f1"),
]


def _nan_model():
    m = create_model("selu_mlp", input_shape=(1, 4, 4), num_classes=3, hidden=(8, 5))
    with torch.no_grad():
        m.layers[0].weight[0, 0] = NAN
    return m


@pytest.mark.parametrize("call, expect, before", ROWS)
def test_bad_input(c, call, expect, before):
    if isinstance(expect, Raises):
        with pytest.raises(expect.type, match=expect.match):
            call(c)
    else:
        ok = expect.assertion(call(c), c)
        assert ok is None or bool(ok)


def test_every_public_function_has_a_row():
    """The table covers every public function of the three packages (classes and constants aside)."""
    import inspect

    ids = {p.id.split("-")[0] for p in ROWS}
    missing = []
    for mod in (I, S, A):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj) and name not in ids and name not in _NO_DATA_INPUT:
                missing.append(f"{mod.__name__}.{name}")
    assert not missing, missing


#: public functions without a tensor input to get wrong (context managers)
_NO_DATA_INPUT = {"frozen_eval", "attack_context", "per_sample_dtypes"}
