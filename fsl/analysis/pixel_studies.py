"""The bodies of the pixel-space studies (``inversion``: :mod:`fsl.analysis.pixel_inversion`;
``morph``, ``preimage``, ``signal``, ``selu``, ``ideal`` here), each a function of a namespace
holding the selected samples (:func:`select_samples`: a seeded draw stratified by class, ordered
so that every prefix is stratified too; studies on fewer samples take the first ones), the
options ``o`` and collectors for metrics, report lines and figures; :mod:`fsl.analysis.studies.pixels` wraps each in an :class:`fsl.analysis.Analysis`, and
:func:`pixel_space_studies` runs all six on given tensors.

* ``morph`` -- morphing strip a -> b by shrinking a ball around ``N(b)`` (Yousefzadeh, arXiv
  2202.04052, Figure 8) and the feature-space paths of the morph and of the straight pixel line,
  drawn with the two-point equidistant projection (Figures 9, 12).
* ``preimage`` -- level-set walk on ``N(x) = N(x0)`` and the step response along null-space vs
  random directions (first order vs actual, float64 copy of the model).
* ``signal`` -- singular-value spectra of every Linear/Conv2d layer; first-layer signal images and
  class residual images when the first layer is linear (Pattichis & Pattichis, SSIAI 2024, Figures 1-2).
* ``selu`` / ``ideal`` -- layer-wise SELU inversion and ideal-output inputs (Figure 3 there), only
  for models with ``invertible_selu``.
"""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import torch

STUDIES = ("inversion", "morph", "preimage", "signal", "selu", "ideal")


def pixel_defaults() -> dict:
    """The defaults of every pixel-space study: ``configs/pixels/default.yaml`` (samples and solver,
    shared) and ``configs/analysis/<study>.yaml`` (each study's own options), the only copies."""
    from omegaconf import OmegaConf

    from fsl.analysis.base import analysis_defaults
    from fsl.config import CONFIG_DIR

    d = dict(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "pixels" / "default.yaml"), resolve=False))
    for name in STUDIES:
        d.update({k: v for k, v in analysis_defaults(name).items() if k not in ("enabled", "every_n_epochs", "pixels")})
    return d


def _plain(cfg) -> dict:
    from fsl.config import to_plain

    return {} if cfg is None else to_plain(cfg)


def _options(cfg) -> dict:
    c = _plain(cfg)
    nullable = ("max_iter", "al_iter", "al_inner_steps", "seed")
    opts = {**pixel_defaults(), **{k: v for k, v in c.items() if v is not None or k in nullable}}
    if opts.get("seed") is None:
        opts["seed"] = 0
    _check_sample_order(opts)
    en = c.get("enabled")
    if isinstance(en, bool):  # one switch for every study
        opts["enabled"] = {s: en for s in STUDIES}
    else:
        opts["enabled"] = {**{s: True for s in STUDIES}, **_plain(en)}
    return opts


from fsl.analysis.pixel_inversion import (MeasuredInversion, _device, _invert_kw, _inversion_study,  # noqa: E402,F401
                                          flip_targets, hull_targets, measure_inversions)


def _pick_pair(ctx):
    """a = the first test image; b = the first later test image of another label (or the second)."""
    y = ctx.test_labels.cpu()
    others = (y != y[0]).nonzero().squeeze(1)
    j = int(others[0]) if others.numel() else min(1, len(y) - 1)
    return 0, j


def _morph_study(ctx) -> None:
    from fsl.inversion import morph, pixel_line_feature_path
    from fsl.plots import pixel_figures as pf

    o, model, dev = ctx.o, ctx.model, _device(ctx.model)
    if ctx.test_images.shape[0] < 2:
        ctx.lines.append("- morphing: needs two test images; skipped.")
        return
    i, j = _pick_pair(ctx)
    a, b = ctx.test_images[i].to(dev), ctx.test_images[j].to(dev)
    ia, ib = int(ctx.order[i]), int(ctx.order[j])  # positions in the test set given to us
    m = morph(model, a, b, n_steps=int(o["morph_steps"]), **_invert_kw(o))
    ctx.out.save_figure("pixels_morph", pf.morph_strip(m))
    ctx.figures.append("pixels_morph")
    line = pixel_line_feature_path(model, a, b, n=int(o["path_points"]))
    fa, fb = line.features[0].cpu(), line.features[-1].cpu()
    fig = pf.path_plot({"straight pixel line (Fig. 9)": line.features.cpu(),
                        "morph, shrinking ball around N(b) (Fig. 12)": m.features.cpu()},
                       fa, fb, labels=(f"a (#{ia})", f"b (#{ib})"),
                       title="feature-space paths, two-point equidistant projection")
    ctx.out.save_figure("pixels_paths", fig)
    ctx.figures.append("pixels_paths")
    pix_ab = float((a.double() - b.double()).norm())
    mm = {"morph/success_rate": float(m.success.double().mean()),
          "morph/n_steps": float(m.radii.numel()),
          "morph/feature_distance_ab": float(line.chord_feature),
          "morph/pixel_distance_ab": pix_ab,
          "morph/final_pixel_distance_to_a": float(m.pixel_distance_to_a[-1]),
          "morph/final_feature_distance": float(m.feature_distance[-1]),
          "morph/pixel_line_length": float(line.length_feature),
          "morph/pixel_line_length_ratio": float(line.length_feature / max(line.chord_feature, 1e-300))}
    ctx.metrics.update(mm)
    ctx.lines.append(f"- morphing test #{ia} -> #{ib} ({int(m.radii.numel())} radii): {int(m.success.sum())}/"
                     f"{int(m.radii.numel())} inversions within tolerance; the image closest to a with N(x) = N(b) is "
                     f"{mm['morph/final_pixel_distance_to_a']:.2f} from a (‖a − b‖ = {pix_ab:.2f}). The straight pixel "
                     f"line a -> b is {mm['morph/pixel_line_length_ratio']:.2f}x the feature distance "
                     f"{mm['morph/feature_distance_ab']:.3g} long in feature space.")


def _preimage_study(ctx) -> None:
    from fsl.inversion import level_set_walk, null_step_response
    from fsl.plots import pixel_figures as pf

    o, model, dev = ctx.o, ctx.model, _device(ctx.model)
    nf = min(int(o["n_figure"]), ctx.test_images.shape[0])
    x0 = ctx.test_images[:nf].to(dev)
    g = torch.Generator().manual_seed(int(o["seed"]))
    walk = level_set_walk(model, x0, n_steps=int(o["walk_steps"]), step=float(o["walk_step"]), generator=g,
                          max_newton=int(o["walk_newton"]))
    ctx.out.save_figure("pixels_preimage_grid", pf.preimage_grid(walk))
    ctx.figures.append("pixels_preimage_grid")
    with torch.no_grad():
        z0n = model.forward_features(x0).double().norm(dim=1).cpu().clamp_min(1e-12)
    rel = walk.residual[1:].cpu() / z0n
    pre = walk.first_order_residual.cpu() / z0n
    mm = {"preimage/walk_on_set_frac": float(walk.on_set[1:].double().mean()),
          "preimage/walk_residual_max": float(rel.max()) if rel.numel() else float("nan"),
          "preimage/walk_first_order_residual_mean": float(pre.mean()) if pre.numel() else float("nan"),
          "preimage/walk_final_distance_mean": float(walk.distance[-1].mean())}
    # step response on a float64 copy (float32 rounding hides the O(h^2) regime at small steps)
    m64 = copy.deepcopy(model).double()
    sr = null_step_response(m64, x0.double(), steps=tuple(float(h) for h in o["step_sizes"]),
                            k=int(o["step_directions"]), generator=g)
    del m64
    ctx.out.save_figure("pixels_step_response", pf.step_response_figure(sr))
    ctx.figures.append("pixels_step_response")
    h_max = float(sr.steps[-1])
    mm.update({"preimage/null_slope": float(sr.slope.median()),
               "preimage/random_slope": float(sr.random_slope.median()),
               "preimage/null_first_order_at_hmax": float(sr.first_order[..., -1].mean()),
               "preimage/null_actual_at_hmax": float(sr.actual[..., -1].mean()),
               "preimage/random_actual_at_hmax": float(sr.random_actual[..., -1].mean()),
               "preimage/step_max": h_max})
    ctx.metrics.update(mm)
    ctx.lines.append(
        f"- preimages (Jacobian preimages of latent vectors): a level-set walk of {int(o['walk_steps'])} steps of {float(o['walk_step']):g} stays on "
        f"N(x) = N(x0) in {mm['preimage/walk_on_set_frac']:.0%} of the steps (max relative residual "
        f"{mm['preimage/walk_residual_max']:.1e}; {mm['preimage/walk_first_order_residual_mean']:.1e} before projection), "
        f"ending {mm['preimage/walk_final_distance_mean']:.2f} from x0. Step response at h = {h_max:g}: null directions "
        f"first order {mm['preimage/null_first_order_at_hmax']:.1e} vs actual {mm['preimage/null_actual_at_hmax']:.1e} "
        f"(log-log slope {mm['preimage/null_slope']:.2f}), random directions {mm['preimage/random_actual_at_hmax']:.1e} "
        f"(slope {mm['preimage/random_slope']:.2f}).")


def spectra_figure(spectra, title: str = "singular values of every layer (sigma_i / sigma_1)"):
    """Normalised singular-value spectra of every layer (one line each), log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    cmap = plt.get_cmap("viridis")
    n = max(len(spectra), 1)
    for k, sp in enumerate(spectra):
        s = sp.singular_values.double().cpu()
        if s.numel() == 0 or float(s[0]) == 0.0:
            continue
        ax.semilogy(torch.arange(1, s.numel() + 1).numpy(), (s / s[0]).clamp_min(1e-18).numpy(), lw=1,
                    color=cmap(k / max(n - 1, 1)), label=f"{sp.name} ({sp.kind}, cond {sp.condition:.3g})")
    ax.set_xlabel("index i")
    ax.set_ylabel("sigma_i / sigma_1")
    ax.set_title(title, fontsize=9)
    if len(spectra) <= 12:
        ax.legend(fontsize=6)
    else:
        ax.text(0.99, 0.98, f"{len(spectra)} layers; colour = depth (dark = first)", transform=ax.transAxes,
                ha="right", va="top", fontsize=7)
    fig.tight_layout()
    return fig


def _signal_study(ctx) -> None:
    from fsl.plots import pixel_figures as pf
    from fsl.spaces import class_residuals, first_layer, first_layer_signal_images, layer_spectra

    o, model = ctx.o, ctx.model
    spectra = layer_spectra(model)
    ctx.out.save_figure("pixels_layer_spectra", spectra_figure(spectra))
    ctx.figures.append("pixels_layer_spectra")
    mm = {"signal/n_layers": float(len(spectra))}
    conds = [sp.condition for sp in spectra if math.isfinite(sp.condition)]
    mm["signal/max_condition"] = float(max(conds)) if conds else float("nan")
    # per-layer condition numbers and ranks: the spaces analysis (spaces/<layer>/condition|rank)
    lm = first_layer(model)
    if lm.kind == "linear":
        si = first_layer_signal_images(model, k=int(o["signal_k"]))
        rows = _train_rows(ctx, int(o["n_signal"]))
        ns = len(rows)
        cr = class_residuals(model, ctx.train_images[rows], ctx.train_labels[rows])
        ctx.out.save_figure("pixels_signal_spaces", pf.signal_figure(si, cr, max_items=int(o["signal_k"])))
        ctx.figures.append("pixels_signal_spaces")
        mm.update({"signal/first_layer_rank": float(si.subspaces.rank),
                   "signal/first_layer_condition": float(si.condition),
                   "signal/class_residual_energy_mean": float(cr.residual_energy.mean()),
                   "signal/sample_residual_energy_mean": float(cr.sample_energy_mean.mean())})
        ctx.lines.append(
            f"- signal spaces (Pattichis & Pattichis, SSIAI 2024): first layer `{si.layer}` {tuple(lm.weight.shape)} has rank "
            f"{si.subspaces.rank}, condition {si.condition:.3g}; the class-average inputs keep "
            f"{1 - mm['signal/class_residual_energy_mean']:.1%} of their energy in the row space (residual energy "
            f"{mm['signal/class_residual_energy_mean']:.3g}, per sample {mm['signal/sample_residual_energy_mean']:.3g}, "
            f"{ns} training images). Largest condition number over {len(spectra)} layers: {mm['signal/max_condition']:.3g}.")
    else:
        ctx.lines.append(
            f"- signal spaces (Pattichis & Pattichis, SSIAI 2024): the first layer `{lm.name}` is a convolution, so there are no per-class "
            f"residual images (they need a linear first layer); the spectra of all {len(spectra)} Linear/Conv2d layers "
            f"(kernels as out x in*k*k) are shown instead. Largest condition number: {mm['signal/max_condition']:.3g}.")
    ctx.metrics.update(mm)


def _selu_study(ctx) -> None:
    from fsl.plots import pixel_figures as pf
    from fsl.spaces import selu_invert

    o, model, dev = ctx.o, ctx.model, _device(ctx.model)
    n = min(max(int(o["n_measure"]), int(o["n_figure"])), ctx.test_images.shape[0])
    x = ctx.test_images[:n].to(dev)
    with torch.no_grad():
        feats = model.forward_features(x)
    inv = selu_invert(model, feats, x_true=x)
    nf = min(int(o["n_figure"]), n)
    ctx.out.save_figure("pixels_selu_inversion", pf.selu_inversion_figure(x[:nf].cpu(), _cpu_inv(inv), max_items=nf))
    ctx.figures.append("pixels_selu_inversion")
    err = inv.image_error.cpu()
    mm = {"selu/n": float(n), "selu/image_error_mean": float(err.mean()), "selu/image_error_median": float(err.median()),
          "selu/flagged_frac": float(inv.flagged.double().mean()), "selu/clamped_total": float(inv.clamped.sum()),
          "selu/local_error_max": float(inv.local_error.max())}
    ctx.metrics.update(mm)
    ctx.lines.append(
        f"- SELU inversion (Pattichis & Pattichis, SSIAI 2024 §2.4) from the features of {n} test images: relative error of the reconstructed "
        f"input against its row-space component: median {mm['selu/image_error_median']:.3g} (mean "
        f"{mm['selu/image_error_mean']:.3g}); {mm['selu/flagged_frac']:.0%} of the samples needed clamps "
        f"({int(mm['selu/clamped_total'])} values outside SELU's range); single-layer inversion from the true "
        f"activations is exact to {mm['selu/local_error_max']:.1e}.")


def _cpu_inv(inv):
    return SimpleNamespace(images=None if inv.images is None else inv.images.cpu(),
                           row_component=None if inv.row_component is None else inv.row_component.cpu(),
                           image_error=None if inv.image_error is None else inv.image_error.cpu())


def _ideal_study(ctx) -> None:
    from fsl.plots import pixel_figures as pf
    from fsl.spaces import INITS, ideal_inputs

    o, model, dev = ctx.o, ctx.model, _device(ctx.model)
    rows = _train_rows(ctx, int(o["n_ideal"]))
    ii = ideal_inputs(model, ctx.train_images[rows].to(dev), ctx.train_labels[rows].to(dev),
                      steps=int(o["ideal_steps"]))
    ctx.out.save_figure("pixels_ideal_inputs", pf.ideal_inputs_figure(ii))
    ctx.figures.append("pixels_ideal_inputs")
    mm = {}
    for k in INITS:
        mm[f"ideal/{k}/distance_before_mean"] = float(ii.distance_before[k].mean())
        mm[f"ideal/{k}/distance_after_mean"] = float(ii.distance_after[k].mean())
    ctx.metrics.update(mm)
    ctx.lines.append("- ideal-output inputs (Pattichis & Pattichis, SSIAI 2024 Fig. 3), mean distance to the ideal output before -> after "
                     f"{int(o['ideal_steps'])} refinement steps: " + ", ".join(
                         f"{k} {mm[f'ideal/{k}/distance_before_mean']:.2f} -> {mm[f'ideal/{k}/distance_after_mean']:.2f}"
                         for k in INITS) + ".")


RUNNERS = {"inversion": _inversion_study, "morph": _morph_study, "preimage": _preimage_study,
            "signal": _signal_study, "selu": _selu_study, "ideal": _ideal_study}


def _train_rows(ctx, n: int) -> torch.Tensor:
    """Positions of ``n`` of the selected training images (all when ``n`` is larger or <= 0), a
    seeded draw stratified by class."""
    from fsl.data.subsets import stratified_subset

    return stratified_subset(ctx.train_labels, int(n), int(ctx.o["seed"]))


def _check_sample_order(o: dict) -> None:
    order = o.get("sample_order", "random")
    if order != "random":
        raise ValueError(f"pixels.sample_order={order!r} is not supported: the pixel studies always use a seeded "
                         f"random selection, stratified by class; set pixels.sample_order=random (or leave it out). "
                         f"The stored order of a data set is often sorted by class, so its first rows are not "
                         f"representative.")


def select_samples(labels: torch.Tensor, o: dict) -> torch.Tensor:
    """Positions ``(k,)`` of the test samples the pixel studies use: ``k = max(n_measure, n_figure)``
    of the ``labels`` ``(N,)`` (all when larger), a seeded draw stratified by class whose every prefix
    is stratified too (:func:`fsl.data.subsets.stratified_subset`; the figures take the first
    ``n_figure``). ``pixels.sample_order`` may only be ``random`` (the default)."""
    from fsl.data.subsets import stratified_subset

    _check_sample_order(o)
    n_use = min(len(labels), max(int(o["n_measure"]), int(o["n_figure"])))
    if n_use <= 0:
        return torch.empty(0, dtype=torch.long)
    return stratified_subset(labels, n_use, int(o["seed"]))


def pixel_space_studies(model, train_images, train_labels, test_images, test_labels, train_features, test_features,
                        out, class_names, cfg: dict) -> tuple[dict[str, float], list[str]]:
    """Run the six pixel-space analyses (``inversion``, ``morph``, ``preimage``, ``signal``, ``selu``,
    ``ideal``; :mod:`fsl.analysis.studies.pixels`) on given tensors, outside a training run or
    ``analyze.py``, and write their figures into ``out``.

    Args:
        model: fsl model (``forward_features``, ``forward_head``, ``head``, ``feature_domain``), on
            any device; its mode and parameters are left unchanged.
        train_images, test_images: (N, C, H, W) float in [0, 1] (CPU); train_labels, test_labels: (N,).
        train_features, test_features: (N, f) features of the same images (rows aligned).
        out: :class:`fsl.analysis.results.ResultsDir`; figures go to ``figures/pixels_*.png``.
        class_names: class names (used in titles).
        cfg: flat dict (or DictConfig) of options over :func:`pixel_defaults` (the ``pixels`` sample and
            solver settings and every study's own options). ``enabled``: {study: bool} (missing
            studies are on), or one bool for all of them.

    Returns:
        ``(metrics, report_lines)``: metrics keyed without the ``pixels/`` prefix
        (``inversion/flip/success_rate``, ``morph/...``, ``studies/<name>/seconds``) and the markdown
        lines of the "## From feature space back to pixels" section with figure links.
    """
    from fsl.analysis.base import create_analysis
    from fsl.analysis.context import Context
    from fsl.analysis.features import FeatureSet

    o = _options(cfg)
    shared_keys = set(_options({}))
    ctx = Context(model, lambda split: (train_images, torch.as_tensor(train_labels)) if split == "train"
                  else (test_images, torch.as_tensor(test_labels)), eval_split="test", seed=int(o["seed"]),
                  class_names=class_names)
    with torch.no_grad():
        for split, f, y in (("train", train_features, train_labels), ("test", test_features, test_labels)):
            index = ctx.subset(split)  # the given features, in the order of the context's subset
            f = torch.as_tensor(f)[index]
            ctx.cache[("features", split, len(f))] = FeatureSet(
                f.float().cpu(), model.forward_head(f.to(ctx.device)).float().cpu(), torch.as_tensor(y).cpu()[index],
                index)
    metrics: dict[str, float] = {}
    lines: list[str] = []
    figures: list[str] = []
    first = True
    for name in STUDIES:
        if not o["enabled"].get(name, True):
            body = [f"- {name}: disabled in the configuration."]
        else:
            a = create_analysis(name, pixels={k: v for k, v in o.items() if k in shared_keys},
                                **{k: v for k, v in o.items() if k in _own_keys(name)})
            res = a.run(ctx)
            metrics.update(res.metrics)
            if "studies/%s/skipped" % name not in res.metrics:
                metrics[f"studies/{name}/seconds"] = res.seconds
            for fig in res.figures.values():
                out.save_figure(fig.file, fig.fig)
                figures.append(fig.file)
            body = res.report
        if first:
            lines += _intro(ctx, o)
            first = False
        lines += body
    if figures:
        lines += ["", *[f"![{f}](figures/{f}.png)" for f in figures]]
    lines.append("")
    return metrics, lines


def _own_keys(name: str) -> set:
    from fsl.analysis.base import analysis_defaults

    return set(analysis_defaults(name)) - {"enabled", "every_n_epochs", "pixels"}


def _intro(ctx, o) -> list[str]:
    from fsl.analysis.studies.pixels import section_intro

    return section_intro(ctx, o)


__all__ = ["pixel_space_studies", "measure_inversions", "MeasuredInversion", "flip_targets", "hull_targets",
           "spectra_figure", "select_samples", "pixel_defaults", "STUDIES"]
