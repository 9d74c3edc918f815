"""fsl.spaces: four fundamental subspaces, signal/residual images, SELU inversion, ideal inputs."""
from __future__ import annotations

import math

import pytest
import torch

from fsl.models import SELU_LOWER, create_model
from fsl.spaces import (class_residuals, first_layer_signal_images, fundamental_subspaces, ideal_inputs,
                        layer_matrices, layer_spectra, selu64, selu_invert, selu_inverse)


def _check_complements(sp, W, r_expected):
    m, n = W.shape
    I_n = torch.eye(n, dtype=torch.float64)
    I_m = torch.eye(m, dtype=torch.float64)
    assert sp.rank == r_expected
    assert sp.row.shape == (n, r_expected) and sp.null.shape == (n, n - r_expected)
    assert sp.column.shape == (m, r_expected) and sp.left_null.shape == (m, m - r_expected)
    Qn = torch.cat([sp.row, sp.null], 1)
    Qm = torch.cat([sp.column, sp.left_null], 1)
    # together each pair is an orthonormal basis of the whole space: orthogonal complements
    torch.testing.assert_close(Qn.T @ Qn, I_n, atol=1e-12, rtol=0)
    torch.testing.assert_close(Qm.T @ Qm, I_m, atol=1e-12, rtol=0)
    scale = float(sp.singular_values[0])
    if sp.null.numel():
        assert float((W @ sp.null).abs().max()) < 1e-12 * scale
    if sp.left_null.numel():
        assert float((W.T @ sp.left_null).abs().max()) < 1e-12 * scale
    # W maps the row space onto the column space: W = U_r S_r V_r^T
    Wr = sp.column @ torch.diag(sp.singular_values[:r_expected]) @ sp.row.T
    torch.testing.assert_close(Wr, W, atol=1e-10 * scale, rtol=0)


@pytest.mark.parametrize("m,n,r", [(10, 30, 10), (30, 10, 10), (20, 20, 20), (12, 40, 5), (40, 12, 7)])
def test_four_subspaces_are_orthogonal_complements(m, n, r):
    g = torch.Generator().manual_seed(m * 100 + n + r)
    W = torch.randn(m, r, generator=g, dtype=torch.float64) @ torch.randn(r, n, generator=g, dtype=torch.float64)
    sp = fundamental_subspaces(W, source_dtype=torch.float64)
    _check_complements(sp, W, r)
    S = sp.singular_values
    assert math.isclose(sp.condition, float(S[0] / S[r - 1]))
    if r < min(m, n):
        assert sp.condition_full == float("inf") or sp.condition_full > 1e10
    # residual energy = 1 - ||P x||^2 / ||x||^2, in [0, 1]
    x = torch.randn(7, n, generator=g, dtype=torch.float64)
    e = sp.residual_energy(x)
    torch.testing.assert_close(e, 1 - sp.project_row(x).pow(2).sum(1) / x.pow(2).sum(1))
    assert bool(((e >= -1e-12) & (e <= 1 + 1e-12)).all())
    assert bool((sp.residual_energy(x @ sp.row @ sp.row.T) < 1e-20).all())


def test_layer_matrices_cover_linear_and_conv_layers():
    model = create_model("resnet20", input_shape=(1, 28, 28), mean=(0.5,), std=(0.5,))
    mats = layer_matrices(model)
    assert len(mats) == 19 + 1  # 19 convolutions + the head
    conv1 = mats[0]
    assert conv1.name == "conv1" and conv1.kind == "conv" and conv1.weight.shape == (16, 9)
    assert conv1.input_shape == (1, 3, 3)
    kinds = [mm.kind for mm in mats]
    assert kinds.count("linear") == 1 and kinds[-1] == "linear"
    shapes = {tuple(mm.weight.shape) for mm in mats}
    assert (32, 16 * 9) in shapes and (64, 64 * 9) in shapes
    spectra = layer_spectra(model)
    assert [s.name for s in spectra] == [mm.name for mm in mats]
    for s, mm in zip(spectra, mats):
        _check_complements(fundamental_subspaces(mm.weight, source_dtype=torch.float32), mm.weight, s.rank)
        assert s.condition >= 1.0


def test_signal_images_and_class_residuals():
    torch.manual_seed(0)
    model = create_model("fcnn1")  # 784 -> 10, wide: rank 10
    si = first_layer_signal_images(model)
    assert si.images.shape == (10, 1, 28, 28)
    norms = si.images.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, si.singular_values)  # ||sigma_i v_i|| = sigma_i
    g = torch.Generator().manual_seed(0)
    images = torch.rand(60, 1, 28, 28, generator=g)
    labels = torch.arange(60) % 10
    cr = class_residuals(model, images, labels)
    assert cr.residual_images.shape == (10, 1, 28, 28)
    u = cr.inputs.flatten(1)
    res = cr.residual_images.flatten(1)
    W = model.head.weight.detach().double()
    assert float((res @ W.T).abs().max()) < 1e-10 * float(u.norm(dim=1).max())  # residual is in the null space
    torch.testing.assert_close(cr.residual_energy, res.pow(2).sum(1) / u.pow(2).sum(1))
    assert bool((cr.residual_energy > 0.9).all())  # a 10-d row space keeps little of a 784-d image
    conv = first_layer_signal_images(create_model("resnet20"))
    assert conv.images.shape[1:] == (3, 3, 3) and conv.images.shape[0] == conv.subspaces.rank


def _double_selu(input_shape, hidden, seed=0):
    torch.manual_seed(seed)
    return create_model("selu_mlp", input_shape=input_shape, hidden=hidden).double().eval()


def test_selu_inversion_is_exact_on_square_invertible_net():
    model = _double_selu((1, 4, 4), (16, 16, 16))
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = model.forward_features(x)
    inv = selu_invert(model, f, x_true=x)
    assert int(inv.clamped.sum()) == 0 and not bool(inv.flagged.any())
    torch.testing.assert_close(inv.images, x, atol=1e-9, rtol=0)
    assert float(inv.image_error.max()) < 1e-10
    assert float(inv.chained_error.max()) < 1e-10 and float(inv.local_error.max()) < 1e-10


def test_selu_inversion_gives_row_space_component_on_wide_net():
    model = _double_selu((1, 6, 6), (16, 16))  # 36 -> 16 (wide) -> 16 (square)
    x = torch.rand(5, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f = model.forward_features(x)
    inv = selu_invert(model, f, x_true=x)
    W1 = model.layers[0].weight.detach()
    u = model.normalize(x).flatten(1)
    P = torch.linalg.pinv(W1) @ W1
    torch.testing.assert_close(inv.layer_input, u @ P.T, atol=1e-9, rtol=0)
    assert float(inv.image_error.max()) < 1e-10
    # and it is NOT the input itself: the null-space part is lost
    assert float((inv.layer_input - u).norm(dim=1).min()) > 1e-2


def test_selu_inversion_fcnn1_with_selu_output():
    torch.manual_seed(0)
    model = create_model("fcnn1", selu_output=True).double().eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    inv = selu_invert(model, out, x_true=x)
    assert float(inv.image_error.max()) < 1e-9


def test_selu_out_of_range_is_clamped_and_flagged_never_nan():
    z = torch.linspace(-30, 30, 201, dtype=torch.float64)
    back, bad = selu_inverse(selu64(z))
    ok = z > -15  # further down, selu(z) + lambda*alpha nears the float64 resolution of -lambda*alpha
    torch.testing.assert_close(back[ok], z[ok], atol=1e-8, rtol=1e-10)
    h = torch.tensor([SELU_LOWER, SELU_LOWER - 1.0, -1e9, float("nan"), float("-inf"), 0.0, 2.0],
                     dtype=torch.float64)
    zz, bad = selu_inverse(h)
    assert bool(torch.isfinite(zz).all())
    assert bad.tolist() == [True, True, True, True, True, False, False]
    model = _double_selu((1, 4, 4), (16, 16))
    feats = torch.full((3, 16), SELU_LOWER - 0.5, dtype=torch.float64)
    feats[0] = 0.3  # sample 0 in range
    inv = selu_invert(model, feats)
    assert bool(torch.isfinite(inv.layer_input).all()) and bool(torch.isfinite(inv.images).all())
    assert inv.flagged.tolist()[1:] == [True, True] and int(inv.clamped[-1]) == 32


def test_ideal_inputs_refinement_never_worse():
    torch.manual_seed(0)
    model = create_model("selu_mlp", input_shape=(1, 8, 8), hidden=(32, 16))
    g = torch.Generator().manual_seed(0)
    images = torch.rand(200, 1, 8, 8, generator=g)
    labels = torch.arange(200) % 10
    ii = ideal_inputs(model, images, labels, steps=40, lr=0.02)
    n = 10
    assert ii.ideal.shape == (n, n)
    with torch.no_grad():
        out = model(images).double()
    torch.testing.assert_close(ii.ideal.diagonal(), out.max(0).values)
    dist_all = torch.cdist(out, ii.ideal)
    torch.testing.assert_close(ii.distance_before["min-img"], dist_all.min(0).values, rtol=1e-5, atol=1e-6)
    for k in ii.distance_before:
        assert bool((ii.distance_after[k] <= ii.distance_before[k] + 1e-9).all())
        assert float(ii.distance_after[k].mean()) < float(ii.distance_before[k].mean())
        assert float(ii.refined[k].min()) >= 0 and float(ii.refined[k].max()) <= 1
    torch.testing.assert_close(ii.initial["avg-img"][3], images[labels == 3].mean(0))
