"""From feature space back to pixels (issue 5, DESIGN C) on a checkpoint: one entry point,
:func:`pixel_space_studies`, that the analysis driver calls.

Studies (each switchable in ``cfg["enabled"]``):

* ``inversion`` -- images of the closest flip point (paper Figure 3), of the projection onto the
  convex hull of the training features (Figure 5) and of the perimeter of the ball ``B(x)`` of
  radius ``d_min`` (Figure 7), with the sample itself and black/white images as references; the
  measured success rate, residuals, pixel distances and seconds per batch for flip points and hull
  projections on ``n_measure`` test samples (a seeded random selection by default; references =
  the samples).
* ``morph`` -- morphing strip a -> b by shrinking a ball around ``N(b)`` (Figure 8) and the
  feature-space paths of the morph and of the straight pixel line, drawn with the two-point
  equidistant projection (Figures 9, 12).
* ``preimage`` -- level-set walk on ``N(x) = N(x0)`` (seed 002 Figure 2) and the step response
  along null-space vs random directions (first order vs actual, float64 copy of the model).
* ``signal`` -- singular-value spectra of every Linear/Conv2d layer; first-layer signal images
  and class residual images when the first layer is linear (seed 001 Figures 1-2).
* ``selu`` / ``ideal`` -- layer-wise SELU inversion and ideal-output inputs (seed 001 Figure 3),
  only for SELU nets (skipped with a report line otherwise).

Misses are never reported as hits: ``success`` comes from the inversion library, which measures
the residual again on the returned images; a sample without a target (no flip point, or a
non-finite/zero radius) counts as a miss in the success rate.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from tqdm.auto import tqdm

STUDIES = ("inversion", "morph", "preimage", "signal", "selu", "ideal")

DEFAULTS: dict = {
    "n_figure": 4,            # samples shown per figure
    "n_measure": 100,         # first test samples for the measured inversion numbers
    "tol": 1e-3,              # relative residual tolerance of the inversion
    "method": "al+sqp",
    "max_iter": None,         # SQP iterations (library default 60)
    "al_iter": None,          # augmented-Lagrangian outer iterations (library default 15)
    "al_inner_steps": None,   # Adam steps per outer iteration (library default 40)
    "batch_size": 50,         # inversion batch size (seconds_per_batch is per batch of this size)
    "references": ["sample", "black", "white"],  # references of the figures
    "hull": {},               # kwargs of fsl.geometry.hull_distances
    "morph_steps": 8,
    "path_points": 40,
    "walk_steps": 6,
    "walk_step": 0.5,
    "walk_newton": 20,        # Gauss-Newton projections back onto the level set per step
    "step_sizes": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    "step_directions": 4,
    "signal_k": 10,
    "n_signal": 2000,         # training images for the class residuals
    "n_ideal": 2000,          # training images for the ideal outputs and initial images
    "ideal_steps": 100,
    "seed": 0,
    # which test samples: "random" = a seeded permutation (unsorted, so the first n_figure are mixed
    # classes even when the split is sorted by label, as mnist5k's is), "first" = the first rows
    "sample_order": "random",
    "enabled": {s: True for s in STUDIES},
}


def _plain(cfg) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _options(cfg) -> dict:
    c = _plain(cfg)
    opts = {**DEFAULTS, **{k: v for k, v in c.items() if v is not None or k in ("max_iter", "al_iter", "al_inner_steps")}}
    en = c.get("enabled")
    if isinstance(en, bool):  # one switch for every study
        opts["enabled"] = {s: en for s in STUDIES}
    else:
        opts["enabled"] = {**DEFAULTS["enabled"], **_plain(en)}
    return opts


def _device(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _invert_kw(o: dict) -> dict:
    kw = {"tol": float(o["tol"]), "method": o["method"]}
    if o.get("max_iter") is not None:
        kw["max_iter"] = int(o["max_iter"])
    if o.get("al_iter") is not None:
        kw["al_iter"] = int(o["al_iter"])
    if o.get("al_inner_steps") is not None:
        kw["al_inner_steps"] = int(o["al_inner_steps"])
    return kw


def _cat_results(results) -> SimpleNamespace:
    """Concatenate InversionResults (or namespaces with the same fields) along the batch."""
    keys = ("images", "features", "feature_residual", "feature_error", "distance", "success", "target_in_domain")
    return SimpleNamespace(**{k: torch.cat([getattr(r, k).cpu() for r in results]) for k in keys})


def _fmt(v, spec=".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)


# ----------------------------------------------------------------------------------------------
# targets from the geometry core


def flip_targets(model, features: torch.Tensor, flip_result=None):
    """Closest flip point of each row of ``features`` (B, f): (targets (B, f) float64 with NaN rows
    where no boundary exists, margins (B,), valid (B,) bool)."""
    B = features.shape[0]
    fr = flip_result
    if fr is None or getattr(fr, "points", None) is None or fr.points.shape[0] < B:
        from fsl.geometry import flip_margins

        dom = model.feature_domain
        fr = flip_margins(features.detach().cpu(), model.head.weight.detach().cpu(), model.head.bias.detach().cpu(),
                          dom.lower, dom.upper, return_points=True)
    closest = fr.closest[:B].cpu()
    pts = fr.points[:B].cpu().double()
    tg = pts[torch.arange(B), closest.clamp_min(0)]
    margin = fr.margin[:B].cpu().double()
    valid = (closest >= 0) & torch.isfinite(tg).all(1) & torch.isfinite(margin)
    tg[~valid] = float("nan")
    return tg, margin, valid


def hull_targets(test_features: torch.Tensor, train_features: torch.Tensor, hull_result=None, **hull_kw):
    """Projection of each row of ``test_features`` onto the convex hull of ``train_features``:
    (targets (B, f) float64, hull distances (B,), valid (B,) bool)."""
    B = test_features.shape[0]
    hr = hull_result
    if hr is None or getattr(hr, "projection", None) is None or hr.projection.shape[0] < B:
        from fsl.geometry import hull_distances

        hr = hull_distances(test_features.detach().cpu(), train_features.detach().cpu(), **hull_kw)
    tg = hr.projection[:B].cpu().double()
    dist = hr.distance[:B].cpu().double()
    valid = torch.isfinite(tg).all(1)
    return tg, dist, valid


def _invert_batched(model, targets, references, o, radius=None, mode="point"):
    """Invert the rows with finite targets in batches of ``o['batch_size']``; returns the list of
    (indices, InversionResult) and the seconds of each batch."""
    from fsl.inversion import invert_to_features

    dev = _device(model)
    bs = max(1, int(o["batch_size"]))
    idx = torch.isfinite(targets).all(1)
    if radius is not None:
        idx &= torch.isfinite(radius) & (radius > 0)
    idx = idx.nonzero().squeeze(1)
    parts, secs = [], []
    for s in range(0, idx.numel(), bs):
        rows = idx[s:s + bs]
        _sync(dev)
        t0 = time.perf_counter()
        r = invert_to_features(model, targets[rows], references[rows].to(dev),
                               radius=None if radius is None else radius[rows], mode=mode, **_invert_kw(o))
        _sync(dev)
        secs.append(time.perf_counter() - t0)
        parts.append((rows, r))
    return parts, secs


def _summarise(prefix: str, n: int, parts, secs, batch_size: int) -> dict[str, float]:
    """Metrics of an inversion run over ``n`` samples; samples without a target count as misses."""
    m = {f"{prefix}/n": float(n), f"{prefix}/batch_size": float(batch_size)}
    if parts:
        res = torch.cat([r.feature_residual.cpu() for _, r in parts])
        ok = torch.cat([r.success.cpu() for _, r in parts])
        dist = torch.cat([r.distance.cpu() for _, r in parts])
        dom = torch.cat([r.target_in_domain.cpu() for _, r in parts])
    else:
        res = dist = torch.empty(0, dtype=torch.float64)
        ok = dom = torch.empty(0, dtype=torch.bool)
    n_att = int(ok.numel())
    m[f"{prefix}/n_attempted"] = float(n_att)
    m[f"{prefix}/n_no_target"] = float(n - n_att)
    m[f"{prefix}/success_rate"] = float(ok.sum()) / n if n else float("nan")
    finite = res[torch.isfinite(res)]
    m[f"{prefix}/residual_mean"] = float(finite.mean()) if finite.numel() else float("nan")
    m[f"{prefix}/residual_median"] = float(finite.median()) if finite.numel() else float("nan")
    m[f"{prefix}/residual_max"] = float(finite.max()) if finite.numel() else float("nan")
    m[f"{prefix}/residual_nonfinite"] = float(res.numel() - finite.numel())
    m[f"{prefix}/distance_mean"] = float(dist.mean()) if dist.numel() else float("nan")
    m[f"{prefix}/distance_median"] = float(dist.median()) if dist.numel() else float("nan")
    m[f"{prefix}/target_in_domain_frac"] = float(dom.double().mean()) if dom.numel() else float("nan")
    m[f"{prefix}/seconds_per_batch"] = float(sum(secs) / len(secs)) if secs else float("nan")
    m[f"{prefix}/seconds_total"] = float(sum(secs))
    return m


def _figure_inversions(model, kind_label: str, targets, images, refs_kinds, o, radius=None, mode="point",
                       reuse=None):
    """Inversions of the figure samples for every reference kind; ``reuse``: already computed
    results for the "sample" reference (indices, result) to avoid solving twice."""
    from fsl.inversion import invert_to_features, make_references

    dev = _device(model)
    shown_refs, results, labels = [], [], []
    for kind in refs_kinds:
        refs = make_references(kind, images)
        if kind == "sample" and reuse is not None:
            r = reuse
        else:
            r = invert_to_features(model, targets, refs.to(dev), radius=radius, mode=mode, **_invert_kw(o))
        shown_refs.append(refs.cpu())
        results.append(r)
        labels.append(kind)
    return torch.cat(shown_refs), _cat_results(results), labels


_SHORT = {"pixels_flip_points": "flip point", "pixels_hull_projections": "hull proj.",
          "pixels_perimeter": "sphere d_min"}


def _save_inversion_figure(out, name, refs, res, labels, n_per, title):
    from fsl.plots import pixel_figures as pf

    fig = pf.inversion_figure(refs, res.images, res, targets_label=_SHORT.get(name, "target"), max_items=refs.shape[0])
    fig.suptitle(f"{title}; references: " + ", ".join(f"{k} x{n_per}" for k in labels), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.save_figure(name, fig)
    return name


def _subset_result(parts, want: torch.Tensor):
    """The results of the rows ``want`` (in that order) out of batched ``parts``; None if any is missing."""
    pos = {}
    for rows, r in parts:
        for j, i in enumerate(rows.tolist()):
            pos[i] = (r, j)
    if not all(int(i) in pos for i in want):
        return None
    picks = [pos[int(i)] for i in want]
    keys = ("images", "features", "feature_residual", "feature_error", "distance", "success", "target_in_domain")
    return SimpleNamespace(**{k: torch.stack([getattr(r, k)[j].cpu() for r, j in picks]) for k in keys})


# ----------------------------------------------------------------------------------------------
# the studies


@dataclass
class MeasuredInversion:
    """Inversions of one kind of target for the first ``n`` test samples (reference = the sample).

    Attributes:
        targets: (n, f) float64 targets, NaN rows where a sample has no target.
        valid: (n,) bool, sample has a target.
        parts: [(rows (b,), InversionResult)] per batch, rows index the n samples.
        seconds: seconds of each batch.
        metrics: summary (keys ``inversion/<kind>/...``).
    """

    targets: torch.Tensor
    valid: torch.Tensor
    parts: list
    seconds: list
    metrics: dict

    def rows_and(self, field_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, values) of one InversionResult field over all batches (CPU)."""
        if not self.parts:
            return torch.empty(0, dtype=torch.long), torch.empty(0)
        return (torch.cat([r for r, _ in self.parts]),
                torch.cat([getattr(res, field_name).cpu() for _, res in self.parts]))


def measure_inversions(model, images: torch.Tensor, features: torch.Tensor, train_features: torch.Tensor,
                       cfg=None, flip_result=None, hull_result=None, labels: torch.Tensor | None = None,
                       kinds=("flip", "hull")) -> dict[str, MeasuredInversion]:
    """Invert the closest flip points and the hull projections of ``features`` (n, f) with the
    samples ``images`` (n, C, H, W) as references, in batches of ``cfg['batch_size']``; a sample
    without a target is a miss. Returns {kind: MeasuredInversion}."""
    from fsl.inversion import make_references

    o = _options(cfg)
    n = images.shape[0]
    refs = make_references("sample", images)
    outm = {}
    for key in kinds:
        if key == "flip":
            targets, _, valid = flip_targets(model, features, flip_result)
        elif key == "hull":
            targets, hull_d, valid = hull_targets(features, train_features, hull_result, **dict(o["hull"] or {}))
        else:
            raise ValueError(f"unknown target kind {key!r}")
        parts, secs = _invert_batched(model, targets, refs, o)
        mm = _summarise(f"inversion/{key}", n, parts, secs, int(o["batch_size"]))
        if key == "hull":
            inside = hull_d <= 1e-9 * (1 + features.double().cpu().norm(dim=1))
            mm["inversion/hull/frac_inside_hull"] = float(inside.double().mean()) if n else float("nan")
            if parts and labels is not None:
                rows = torch.cat([rw for rw, _ in parts])
                feats = torch.cat([r.features for _, r in parts]).to(_device(model))
                with torch.no_grad():
                    pred = model.forward_head(feats).argmax(1).cpu()
                mm["inversion/hull/acc_on_inversions"] = float((pred == labels[rows].cpu()).double().mean())
        outm[key] = MeasuredInversion(targets, valid, parts, secs, mm)
    return outm


def _inversion_study(ctx) -> None:
    o, model, out, metrics, lines = ctx.o, ctx.model, ctx.out, ctx.metrics, ctx.lines
    n = min(int(o["n_measure"]), ctx.test_images.shape[0])
    nf = min(int(o["n_figure"]), ctx.test_images.shape[0])
    imgs = ctx.test_images[:max(n, nf)]
    feats = ctx.test_features[:max(n, nf)]
    kinds = list(o["references"])

    measured = measure_inversions(model, imgs[:n], feats[:n], ctx.train_features, o, ctx.flip_result,
                                  ctx.hull_result, ctx.test_labels[:n])
    flip_all, margin, flip_ok = flip_targets(model, feats, ctx.flip_result)
    table = []
    for key, fig_name, title in (("flip", "pixels_flip_points", "closest flip point (paper Fig. 3)"),
                                 ("hull", "pixels_hull_projections", "hull projection (paper Fig. 5)")):
        mi = measured[key]
        metrics.update(mi.metrics)
        table.append((key, mi.metrics))
        if nf <= n:
            targets, valid = mi.targets, mi.valid
        elif key == "flip":
            targets, valid = flip_all, flip_ok
        else:
            targets, _, valid = hull_targets(feats, ctx.train_features, ctx.hull_result, **dict(o["hull"] or {}))
        # figure: the first nf samples that have a target
        fig_rows = valid.nonzero().squeeze(1)[:nf]
        if fig_rows.numel():
            reuse = _subset_result(mi.parts, fig_rows) if "sample" in kinds else None
            r_refs, r_res, labels = _figure_inversions(model, key, targets[fig_rows], imgs[fig_rows], kinds, o,
                                                       reuse=reuse)
            ctx.figures.append(_save_inversion_figure(out, fig_name, r_refs, r_res, labels, fig_rows.numel(), title))
        else:
            lines.append(f"- {title}: no sample with a target among the first {max(n, nf)}; no figure.")

    # perimeter of B(x): ||N(x') - N(x)|| = d_min(x)
    fig_rows = (torch.isfinite(margin) & (margin > 0))[:nf].nonzero().squeeze(1)
    if fig_rows.numel():
        centres = feats[fig_rows].double()
        rad = margin[fig_rows]
        r_refs, r_res, labels = _figure_inversions(model, "perimeter", centres, imgs[fig_rows], kinds, o,
                                                   radius=rad, mode="sphere")
        ctx.figures.append(_save_inversion_figure(out, "pixels_perimeter", r_refs, r_res, labels, fig_rows.numel(),
                                                  "perimeter of B(x), radius d_min (paper Fig. 7)"))
        pm = {"inversion/perimeter/n": float(r_res.success.numel()),
              "inversion/perimeter/success_rate": float(r_res.success.double().mean()),
              "inversion/perimeter/residual_mean": float(r_res.feature_residual[torch.isfinite(r_res.feature_residual)].mean()),
              "inversion/perimeter/distance_mean": float(r_res.distance.mean())}
        metrics.update(pm)
    else:
        lines.append("- perimeter of B(x): no figure sample has a finite, positive margin; skipped.")

    lines += ["", f"Inversion of geometry targets, reference = the sample itself, {n} test samples "
              f"(method {o['method']}, relative tolerance {o['tol']:g}, batches of {int(o['batch_size'])}; "
              "a sample without a target counts as a miss):", "",
              "| target | n | success | mean residual | median residual | max residual | mean ‖x − x_r‖ | s / batch |",
              "|---|---|---|---|---|---|---|---|"]
    for key, mm in table:
        p = f"inversion/{key}"
        lines.append(f"| {'closest flip point' if key == 'flip' else 'hull projection'} | {int(mm[p + '/n'])} | "
                     f"{_fmt(mm[p + '/success_rate'], '.1%')} | {_fmt(mm[p + '/residual_mean'], '.2e')} | "
                     f"{_fmt(mm[p + '/residual_median'], '.2e')} | {_fmt(mm[p + '/residual_max'], '.2e')} | "
                     f"{_fmt(mm[p + '/distance_mean'])} | {_fmt(mm[p + '/seconds_per_batch'], '.2f')} |")
    if "inversion/perimeter/success_rate" in metrics:
        lines.append(f"| perimeter of B(x) (figure samples, all references) | {int(metrics['inversion/perimeter/n'])} | "
                     f"{_fmt(metrics['inversion/perimeter/success_rate'], '.1%')} | "
                     f"{_fmt(metrics['inversion/perimeter/residual_mean'], '.2e')} | | | "
                     f"{_fmt(metrics['inversion/perimeter/distance_mean'])} | |")
    extra = []
    if metrics.get("inversion/flip/n_no_target"):
        extra.append(f"{int(metrics['inversion/flip/n_no_target'])} sample(s) have no flip point")
    if "inversion/hull/frac_inside_hull" in metrics:
        extra.append(f"{_fmt(metrics['inversion/hull/frac_inside_hull'], '.1%')} of the samples lie inside the hull "
                     "(their projection is the sample's own feature vector)")
    if "inversion/hull/acc_on_inversions" in metrics:
        extra.append(f"model accuracy on the hull-projection images: {_fmt(metrics['inversion/hull/acc_on_inversions'], '.3f')}")
    if extra:
        lines += ["", "- " + "; ".join(extra) + "."]


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
        f"- preimages (seed 002): a level-set walk of {int(o['walk_steps'])} steps of {float(o['walk_step']):g} stays on "
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
    for sp in spectra:
        mm[f"signal/condition/{sp.name}"] = float(sp.condition)
        mm[f"signal/rank/{sp.name}"] = float(sp.rank)
    lm = first_layer(model)
    if lm.kind == "linear":
        si = first_layer_signal_images(model, k=int(o["signal_k"]))
        ns = min(int(o["n_signal"]), ctx.train_images.shape[0])
        cr = class_residuals(model, ctx.train_images[:ns], ctx.train_labels[:ns])
        ctx.out.save_figure("pixels_signal_spaces", pf.signal_figure(si, cr, max_items=int(o["signal_k"])))
        ctx.figures.append("pixels_signal_spaces")
        mm.update({"signal/first_layer_rank": float(si.subspaces.rank),
                   "signal/first_layer_condition": float(si.condition),
                   "signal/class_residual_energy_mean": float(cr.residual_energy.mean()),
                   "signal/sample_residual_energy_mean": float(cr.sample_energy_mean.mean())})
        ctx.lines.append(
            f"- signal spaces (seed 001): first layer `{si.layer}` {tuple(lm.weight.shape)} has rank "
            f"{si.subspaces.rank}, condition {si.condition:.3g}; the class-average inputs keep "
            f"{1 - mm['signal/class_residual_energy_mean']:.1%} of their energy in the row space (residual energy "
            f"{mm['signal/class_residual_energy_mean']:.3g}, per sample {mm['signal/sample_residual_energy_mean']:.3g}, "
            f"{ns} training images). Largest condition number over {len(spectra)} layers: {mm['signal/max_condition']:.3g}.")
    else:
        ctx.lines.append(
            f"- signal spaces (seed 001): the first layer `{lm.name}` is a convolution, so there are no per-class "
            f"residual images (they need a linear first layer); the spectra of all {len(spectra)} Linear/Conv2d layers "
            f"(kernels as out x in*k*k) are shown instead. Largest condition number: {mm['signal/max_condition']:.3g}.")
    ctx.metrics.update(mm)


def is_selu_net(model) -> bool:
    from fsl.models.mlp import FCNN1, SeluMLP

    return isinstance(model, SeluMLP) or (isinstance(model, FCNN1) and bool(getattr(model, "selu_output", False)))


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
        f"- SELU inversion (seed 001 §2.4) from the features of {n} test images: relative error of the reconstructed "
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
    n = min(int(o["n_ideal"]), ctx.train_images.shape[0])
    ii = ideal_inputs(model, ctx.train_images[:n].to(dev), ctx.train_labels[:n].to(dev), steps=int(o["ideal_steps"]))
    ctx.out.save_figure("pixels_ideal_inputs", pf.ideal_inputs_figure(ii))
    ctx.figures.append("pixels_ideal_inputs")
    mm = {}
    for k in INITS:
        mm[f"ideal/{k}/distance_before_mean"] = float(ii.distance_before[k].mean())
        mm[f"ideal/{k}/distance_after_mean"] = float(ii.distance_after[k].mean())
    ctx.metrics.update(mm)
    ctx.lines.append("- ideal-output inputs (seed 001 Fig. 3), mean distance to the ideal output before -> after "
                     f"{int(o['ideal_steps'])} refinement steps: " + ", ".join(
                         f"{k} {mm[f'ideal/{k}/distance_before_mean']:.2f} -> {mm[f'ideal/{k}/distance_after_mean']:.2f}"
                         for k in INITS) + ".")


_RUNNERS = {"inversion": _inversion_study, "morph": _morph_study, "preimage": _preimage_study,
            "signal": _signal_study, "selu": _selu_study, "ideal": _ideal_study}


def _rows(result, order: torch.Tensor, n_total: int, fields):
    """The rows ``order`` of a FlipResult/HullResult aligned with the test set (None if absent or
    not covering the whole test set, so the targets are recomputed)."""
    if result is None:
        return None
    vals = {}
    for f in fields:
        v = getattr(result, f, None)
        if v is None or v.shape[0] != n_total:
            return None
        vals[f] = v[order.to(v.device)]
    return SimpleNamespace(**vals)


def pixel_space_studies(model, train_images, train_labels, test_images, test_labels, train_features, test_features,
                        out, class_names, cfg: dict, flip_result=None, hull_result=None
                        ) -> tuple[dict[str, float], list[str]]:
    """Run the pixel-space studies of issue 5 on a trained model.

    Args:
        model: fsl model in eval mode (``forward_features``, ``forward_head``, ``head``,
            ``feature_domain``), on any device; its mode and parameters are left unchanged.
        train_images, test_images: (N, C, H, W) float in [0, 1] (CPU); train_labels, test_labels: (N,).
        train_features, test_features: (N, f) features of the same images (rows aligned).
        out: :class:`fsl.analysis.results.ResultsDir`; figures go to ``figures/pixels_*.png``.
            The studies use ``max(n_measure, n_figure)`` test samples, a seeded random selection
            (``sample_order="random"``, default) or the first rows (``"first"``).
        class_names: class names (used in titles).
        cfg: plain dict (or DictConfig) of options, see :data:`DEFAULTS`; missing keys take the defaults.
            ``enabled``: {study: bool} for ``inversion, morph, preimage, signal, selu, ideal``
            (missing studies are on), or one bool for all of them.
        flip_result: optional ``fsl.geometry.FlipResult`` of all of ``test_features`` (rows aligned)
            with ``points`` (``return_points=True``); computed for the selected samples when absent.
        hull_result: optional ``fsl.geometry.HullResult`` of all of ``test_features`` against
            ``train_features`` (rows aligned); computed for the selected samples when absent.

    Returns:
        ``(metrics, report_lines)``: metrics keyed without prefix (``inversion/flip/success_rate``,
        ``inversion/hull/seconds_per_batch``, ``morph/...``, ``preimage/...``, ``signal/...``,
        ``selu/...``, ``ideal/...``, ``studies/<name>/seconds``) and the markdown lines of a
        "## From feature space back to pixels" section (table and figure links).
    """
    o = _options(cfg)
    N = test_images.shape[0]
    n_use = min(N, max(int(o["n_measure"]), int(o["n_figure"])))
    if o["sample_order"] == "random":
        order = torch.randperm(N, generator=torch.Generator().manual_seed(int(o["seed"])))[:n_use]
    elif o["sample_order"] == "first":
        order = torch.arange(n_use)
    else:
        raise ValueError(f"sample_order must be 'random' or 'first', got {o['sample_order']!r}")
    test_images, test_features = test_images[order], test_features[order]
    test_labels = torch.as_tensor(test_labels)[order.to(torch.as_tensor(test_labels).device)]
    flip_result = _rows(flip_result, order, N, ("points", "closest", "margin"))
    hull_result = _rows(hull_result, order, N, ("projection", "distance"))
    ctx = SimpleNamespace(model=model, o=o, order=order, out=out, metrics={}, lines=[], figures=[],
                          train_images=train_images, train_labels=torch.as_tensor(train_labels),
                          test_images=test_images, test_labels=torch.as_tensor(test_labels),
                          train_features=train_features, test_features=test_features,
                          flip_result=flip_result, hull_result=hull_result, class_names=list(class_names))
    lines = ["## From feature space back to pixels", "",
             f"Test samples used: {n_use} of {N} ("
             + ("a seeded random selection" if o["sample_order"] == "random" else "the first rows")
             + f", seed {int(o['seed'])}); figures show the first {min(int(o['n_figure']), n_use)} of them.", ""]
    selu = is_selu_net(model)
    todo = []
    for name in STUDIES:
        if not o["enabled"].get(name, True):
            lines.append(f"- {name}: disabled in the configuration.")
        elif name in ("selu", "ideal") and not selu:
            lines.append(f"- {'SELU inversion' if name == 'selu' else 'ideal-output inputs'}: skipped, "
                         f"`{type(model).__name__}` is not a SELU net (the layer-wise inversion needs an invertible "
                         "SELU after every linear layer; seed 001 studies SELU MLPs only).")
            ctx.metrics[f"studies/{name}/skipped"] = 1.0
        else:
            todo.append(name)
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(todo, desc="pixel studies", leave=False)
        for name in bar:
            bar.set_postfix_str(name)
            t0 = time.perf_counter()
            _RUNNERS[name](ctx)
            ctx.metrics[f"studies/{name}/seconds"] = time.perf_counter() - t0
        bar.close()
    finally:
        model.train(was_training)
    lines += ctx.lines
    if ctx.figures:
        lines += ["", *[f"![{f}](figures/{f}.png)" for f in ctx.figures]]
    lines.append("")
    return ctx.metrics, lines


__all__ = ["pixel_space_studies", "measure_inversions", "MeasuredInversion", "flip_targets", "hull_targets",
           "spectra_figure", "is_selu_net", "DEFAULTS", "STUDIES"]
