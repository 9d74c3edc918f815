"""FeatMap (fsl.featmap): exact cases of the closed-form maps, spectra and weight-vs-bias, the SGD
trainer against the closed form, seeded manipulations in [0, 1], clear errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsl.featmap import (MANIPULATIONS, AffineMap, apply_manipulation, effective_rank, featmap_study, fit_global_linear,
                         fit_procrustes, fit_shared_linear, fit_sgd, grid_move, spectrum_metrics, weight_bias_metrics)
from fsl.featmap.evaluate import class_metrics, masked_cosine, region_cells


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


class OneConv(nn.Module):
    """Layer ``conv`` = one 3x3 convolution (``relu=False``: exactly affine in the input), then global
    average pooling and a linear head. ``symmetric``: kernels invariant under rotations and flips of
    the grid, so that with zero padding the layer commutes with rot90s and flips (equivariant)."""

    def __init__(self, c_in=3, c_out=6, size=12, padding=0, symmetric=False, relu=False, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=padding, dtype=dtype)
        if symmetric:
            with torch.no_grad():
                k = self.conv.weight
                rots = [torch.rot90(k, r, (2, 3)) for r in range(4)]
                self.conv.weight.copy_(sum(rots + [t.flip(3) for t in rots]) / 8)
        self.relu = relu
        self.head = nn.Linear(c_out, 4, dtype=dtype)
        self.input_shape = (c_in, size, size)

    def feature_maps(self, x):
        f = self.conv(x.to(self.conv.weight.dtype))
        f = F.relu(f) if self.relu else f
        return {"conv": f, "features": f.mean((2, 3))}

    def forward_from(self, layer, h):
        return self.head(h.mean((2, 3)) if layer == "conv" else h)

    def forward_head(self, f):
        return self.head(f)

    def forward(self, x):
        return self.forward_head(self.feature_maps(x)["features"])


# -- closed-form maps: exact cases ----------------------------------------------------------------

def test_affine_photometric_change_is_mapped_exactly_by_the_shared_linear_map():
    """conv(a x) = a conv(x) + (1 - a) b_conv and conv(c (x - m) + m) = c conv(x) + (1 - c)(b_conv + m K 1):
    brightness and contrast about a fixed level are affine per position, so least squares must
    recover W = a I (c I) and that bias, and the held-out cosine is 1."""
    model = OneConv(dtype=torch.float64).eval()
    g = _gen(1)
    tr, ev = torch.rand(40, 3, 12, 12, generator=g, dtype=torch.float64), torch.rand(20, 3, 12, 12, generator=g,
                                                                                       dtype=torch.float64)
    b_conv, k_sum = model.conv.bias.detach(), model.conv.weight.detach().sum((1, 2, 3))
    with torch.no_grad():
        f_tr = model.feature_maps(tr)["conv"]
        for name, params, a, bias in [
                ("brightness", {"factor": 0.6}, 0.6, 0.4 * b_conv),
                ("contrast", {"factor": 0.5, "centre": 0.5}, 0.5, 0.5 * (b_conv + 0.5 * k_sum))]:
            man, _ = apply_manipulation(name, tr, params=params)
            m = fit_shared_linear(f_tr, model.feature_maps(man)["conv"], ridge=0.0)
            torch.testing.assert_close(m.weight, a * torch.eye(6, dtype=torch.float64), atol=1e-8, rtol=0)
            torch.testing.assert_close(m.bias, bias, atol=1e-8, rtol=0)
    res = featmap_study(model, tr.float(), ev.float(), layers=["conv"], manipulations=["brightness", "contrast"],
                        mappings=["identity", "linear"], params={"brightness": {"factor": 0.6},
                                                                 "contrast": {"factor": 0.5, "centre": 0.5}}, ridge=0.0)
    rows = {(r["manipulation"], r["mapping"]): r for r in res.rows}
    for name in ("brightness", "contrast"):
        assert rows[(name, "linear")]["cosine"] == pytest.approx(1.0, abs=1e-6)
        assert rows[(name, "linear")]["rel_error"] < 1e-5 and rows[(name, "linear")]["top1_manip"] == 1.0
        assert rows[(name, "identity")]["cosine"] < 0.999  # the change is real
        assert rows[(name, "linear")]["erank"] == pytest.approx(6.0, abs=1e-4)  # a multiple of I
        assert rows[(name, "linear")]["near_isometry"] == 1.0


@pytest.mark.parametrize("name", ["rot90", "rot180", "rot270", "hflip", "vflip"])
def test_grid_move_is_exact_for_an_equivariant_layer(name):
    """A D4-symmetric 3x3 convolution (zero padding) + ReLU commutes with the grid moves: the
    permutation baseline (move the original feature grid) is exact, the identity is not."""
    model = OneConv(padding=1, symmetric=True, relu=True).eval()
    g = _gen(2)
    tr, ev = torch.rand(8, 3, 12, 12, generator=g), torch.rand(10, 3, 12, 12, generator=g)
    with torch.no_grad():
        f = model.feature_maps(ev)["conv"]
        torch.testing.assert_close(model.feature_maps(apply_manipulation(name, ev)[0])["conv"], grid_move(name)(f))
    decode = lambda z: torch.sigmoid(20 * z[:, :1])  # noqa: E731  (a stand-in FeatInv decoder: maps -> (N, 1, 12, 12))
    res = featmap_study(model, tr, ev, layers=["conv"], manipulations=[name], mappings=["identity", "permutation"],
                        decoders={"conv": decode}, n_decode=6, figure_mapping="permutation", n_figure=2)
    rows = {r["mapping"]: r for r in res.rows}
    assert rows["permutation"]["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rows["permutation"]["top1_manip"] == 1.0 and rows["permutation"]["js"] < 1e-10
    assert rows["identity"]["cosine"] < 0.99
    # decoded mapped vs decoded true: identical decodings for the exact map
    assert rows["permutation"]["ssim_decoded"] == pytest.approx(1.0, abs=1e-5) and rows["permutation"]["mse_decoded"] < 1e-12
    assert rows["identity"]["ssim_decoded"] < 0.999 and rows["identity"]["mse_decoded"] > 1e-6
    ex = res.examples[("conv", name)]
    assert ex["decoded_mapped"].shape == (2, 1, 12, 12) and ex["original"].shape == (2, 3, 12, 12)
    torch.testing.assert_close(ex["decoded_mapped"], ex["decoded_true"])
    torch.testing.assert_close(ex["manipulated"], apply_manipulation(name, ev[:2])[0])


def test_procrustes_recovers_an_orthogonal_map_and_global_dual_matches_primal():
    g = _gen(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    b = torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(30, 5, 3, 3, generator=g, dtype=torch.float64)
    y = torch.einsum("oc,nchw->nohw", q, x) + b.view(1, 5, 1, 1)
    m = fit_procrustes(x, y)
    torch.testing.assert_close(m.weight, q, atol=1e-10, rtol=0)
    torch.testing.assert_close(m.bias, b, atol=1e-10, rtol=0)
    # the global map in dual form equals the primal ridge solution W = Yc^T (Xc Xc^T + lam I)^-1 Xc
    y2 = y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    gm = fit_global_linear(x, y2, ridge=0.05)
    X, Y = x.flatten(1), y2.flatten(1)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    W = Yc.T @ torch.linalg.solve(Xc @ Xc.T + gm.lam * torch.eye(30, dtype=torch.float64), Xc)
    xt = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    ref = (xt.flatten(1) - X.mean(0)) @ W.T + Y.mean(0)
    torch.testing.assert_close(gm(xt).flatten(1).double(), ref, atol=1e-4, rtol=1e-4)  # N x D products in float32
    torch.testing.assert_close(gm.singular_values()[:10], torch.linalg.svdvals(W)[:10], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gm.wx(xt)[:, 0].double(), xt.flatten(1) @ W.T, atol=1e-4, rtol=1e-4)


def test_effective_rank_and_spectrum():
    assert effective_rank(torch.eye(7)) == pytest.approx(7.0)
    u, v = torch.randn(6, 1, generator=_gen(4)), torch.randn(1, 6, generator=_gen(5))
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)
    s = spectrum_metrics(torch.eye(12) * 3)
    assert s["erank"] == pytest.approx(12) and s["rank"] == 12 and s["near_isometry"] == 1.0
    assert s["spectral_norm"] == pytest.approx(3) and s["frobenius_norm"] == pytest.approx(3 * math.sqrt(12))
    assert s["energy_top1"] == pytest.approx(1 / 12) and s["energy_top10"] == pytest.approx(10 / 12)
    r1 = spectrum_metrics(u @ v)
    assert r1["rank"] == 1 and r1["energy_top1"] == pytest.approx(1.0)
    # p_i = s_i^2 / sum s^2 and exp(entropy), by hand
    sv = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    p = sv ** 2 / (sv ** 2).sum()
    assert effective_rank(sv) == pytest.approx(float(torch.exp(-(p * p.log()).sum())))


def test_weight_vs_bias_uses_wx_without_bias():
    g = _gen(6)
    W = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64)
    zero = AffineMap(W, torch.zeros(4, dtype=torch.float64))
    s, _ = weight_bias_metrics(zero.wx(x), zero.bias)
    assert s["wx_share"] == pytest.approx(1.0) and s["bias_share"] == 0 and s["cos_wx_full"] == pytest.approx(1.0)
    assert s["relative_bias_shift"] == pytest.approx(0.0, abs=1e-12)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    m = AffineMap(W, b)
    wx = m.wx(x)  # F.linear(x, W): no bias in it
    torch.testing.assert_close(wx, F.linear(x.flatten(2).transpose(1, 2), W))
    s, ps = weight_bias_metrics(wx, b)
    full = (wx + b).norm(dim=-1).median(1).values
    torch.testing.assert_close(ps["wx_share"], wx.norm(dim=-1).median(1).values / full)
    torch.testing.assert_close(ps["bias_share"], b.norm() / full)


def test_closed_form_ridge_matches_sgd():
    """Adam on the MSE of a 1x1 convolution converges to the closed-form least-squares solution."""
    g = _gen(7)
    x = torch.randn(64, 4, 3, 3, generator=g)
    W0, b0 = torch.randn(4, 4, generator=g), torch.randn(4, generator=g)
    y = torch.einsum("oc,nchw->nohw", W0, x) + b0.view(1, 4, 1, 1) + 0.3 * torch.randn(64, 4, 3, 3, generator=g)
    closed = fit_shared_linear(x, y, ridge=1e-9)
    torch.manual_seed(0)
    net = nn.Conv2d(4, 4, 1)
    log = fit_sgd(net, x, y, lr=0.05, weight_decay=0.0, batch_size=16, max_epochs=40, patience=40, val_fraction=0,
                  mse_weight=1.0, cos_weight=0.0, plateau_patience=2, plateau_factor=0.5)
    assert log.train_loss[-1] < log.train_loss[0] / 5
    assert (closed.weight - W0.double()).abs().max() > 2e-2  # the noise moves the least-squares solution off W0
    torch.testing.assert_close(net.weight.detach()[:, :, 0, 0].double(), closed.weight, atol=5e-3, rtol=0)
    torch.testing.assert_close(net.bias.detach().double(), closed.bias, atol=5e-3, rtol=0)


# -- manipulations --------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_manipulations_stay_in_range_and_are_seeded(channels):
    x = torch.rand(3, channels, 20, 20, generator=_gen(8))
    for name, m in MANIPULATIONS.items():
        if m.colour_only and channels == 1:
            with pytest.raises(ValueError, match="needs colour images"):
                apply_manipulation(name, x)
            continue
        a, region = apply_manipulation(name, x, seed=5)
        b, _ = apply_manipulation(name, x, seed=5)
        assert a.shape == x.shape and a.dtype == x.dtype, name
        assert float(a.min()) >= 0 and float(a.max()) <= 1, name
        assert torch.equal(a, b), name
        assert (a - x).abs().max() > 1e-3, name  # it does something
        if name in ("noise", "perspective", "occlusion"):
            assert not torch.equal(a, apply_manipulation(name, x, seed=6)[0]), name
        if m.kind == "mask":
            assert region is not None and torch.equal((a != x).any(1, keepdim=True) & region, (a != x).any(1, keepdim=True))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        apply_manipulation("rot90", x + 1)


def test_masked_cosine_uses_the_cells_a_mask_touches():
    x = torch.rand(2, 1, 16, 16, generator=_gen(9))
    _, region = apply_manipulation("mask_tl", x)
    cells = region_cells(region, (4, 4))
    assert cells[0, 0, 0] and not cells[0, 3, 3]
    a = torch.randn(2, 3, 4, 4, generator=_gen(10))
    b = a.clone()
    b[:, :, 2:, 2:] = -a[:, :, 2:, 2:]  # cells outside the mask disagree
    assert masked_cosine(a, b, cells).tolist() == pytest.approx([1.0, 1.0])
    m = class_metrics(torch.tensor([[2.0, 0.0]]), torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert m["top1_manip"].item() == 1 and m["top1_orig"].item() == 0 and m["js"].item() == pytest.approx(0, abs=1e-12)


# -- errors ---------------------------------------------------------------------------------------

def test_bad_input_is_named_with_the_fix():
    model = OneConv().eval()
    x = torch.rand(6, 3, 12, 12, generator=_gen(11))
    f = torch.randn(6, 4, 3, 3)
    bad = f.clone()
    bad[2, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf features .* fix the checkpoint or the data"):
        fit_shared_linear(bad, f)
    with pytest.raises(ValueError, match="unknown manipulation 'rot9'; did you mean 'rot90'"):
        apply_manipulation("rot9", x)
    with pytest.raises(ValueError, match="unknown mapping 'lineer'; did you mean 'linear'"):
        featmap_study(model, x, x, mappings=["lineer"])
    with pytest.raises(ValueError, match="has no layer 'stage9'.*its layers, keys of feature_maps: \\['conv', 'features'\\]"):
        featmap_study(model, x, x, layers=["stage9"], mappings=["linear"])
    with pytest.raises(ValueError, match="has no parameter 'sigmaa'; did you mean 'sigma'"):
        apply_manipulation("noise", x, params={"sigmaa": 0.1})
    with pytest.raises(ValueError, match="featmap sgd has no option 'epochs'"):
        featmap_study(model, x, x, mappings=["mlp"], sgd={"epochs": 3})
    with pytest.raises(ValueError, match="same shape"):
        fit_shared_linear(f, f[:, :3])


@pytest.mark.parametrize("name,kwargs", [("resnet20", dict(input_shape=(1, 28, 28), mean=[0.5], std=[0.25])),
                                         ("selu_mlp", dict()), ("fcnn1", dict())])
def test_forward_from_every_layer_is_the_rest_of_the_network(name, kwargs):
    from fsl.models import create_model

    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.rand(3, *model.input_shape, generator=_gen(12))
    with torch.no_grad():
        logits, maps = model(x), model.feature_maps(x)
        for layer, h in maps.items():
            torch.testing.assert_close(model.forward_from(layer, h), logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="has no layer 'nope'"):
        model.forward_from("nope", x)
