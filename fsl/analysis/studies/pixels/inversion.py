"""Inversion of geometry targets to images: closest flip points, hull projections and ball
perimeters (Yousefzadeh, arXiv 2202.04052, Figures 3, 5, 7), measured honestly: ``success`` comes
from :mod:`fsl.inversion`, which measures the residual again on the returned images, and a sample
without a target counts as a miss."""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from fsl.analysis.base import register_analysis
from fsl.analysis.studies.pixels.base import PixelStudy, model_device, pixel_options
from fsl.analysis.studies.pixels.inversion_metrics import INVERSION_METRIC_DOCS
from fsl.analysis.report import fmt as _fmt


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def invert_kw(o: dict) -> dict:
    """Keyword arguments of :func:`fsl.inversion.invert_to_features` (``tol``, ``method``, ``options``)
    from the ``pixels`` settings ``o``: ``max_iter``, ``al_iter``, ``al_inner_steps`` (None or 0: the
    solver's default, as the settings file says)."""
    method = o["method"]
    max_iter, al_iter, inner = o.get("max_iter"), o.get("al_iter"), o.get("al_inner_steps")
    opts: dict = {}
    if method == "lm":
        if max_iter:
            opts["max_iter"] = int(max_iter)
        fallback = {}
        if al_iter:
            fallback["al_iter"] = int(al_iter)
        if inner is not None:
            fallback["inner_steps"] = int(inner)
        if fallback:
            opts["fallback"] = fallback
    elif method == "al+sqp":
        if max_iter:
            opts["max_iter"] = int(max_iter)
        if al_iter is not None:
            opts["al_iter"] = int(al_iter)
        if inner is not None:
            opts["inner_steps"] = int(inner)
    elif method == "sqp":
        if max_iter:
            opts["max_iter"] = int(max_iter)
    else:  # "al"
        if al_iter is not None:
            opts["max_iter"] = int(al_iter)
        elif max_iter:
            opts["max_iter"] = int(max_iter)
        if inner is not None:
            opts["inner_steps"] = int(inner)
    return {"tol": float(o["tol"]), "method": method, "options": opts}


def _cat_results(results) -> SimpleNamespace:
    """Concatenate InversionResults (or namespaces with the same fields) along the batch."""
    keys = ("images", "features", "feature_residual", "feature_error", "distance", "success", "target_in_domain")
    return SimpleNamespace(**{k: torch.cat([getattr(r, k).cpu() for r in results]) for k in keys})


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


def _explain_misses(prefix: str, model, parts, targets, refs, o) -> dict[str, float]:
    """Counts of :func:`fsl.inversion.diagnose` over the batches (``unreachable``: proven by interval
    bounds; ``stationary`` / ``not_converged``: solver misses) and, with ``o['probe_steps'] > 0``, the
    misses split by :func:`fsl.inversion.probe_reachability` from the sample and ``probe_random``
    random starts (``probe_reachable``: a probe image hits, the target is reachable; ``probe_near``:
    within 10 tol; ``probe_floor``: the probe stayed above 10 tol too)."""
    from fsl.inversion import diagnose, probe_reachability, split_misses

    counts = {"unreachable": 0, "stationary": 0, "not_converged": 0}
    steps = int(o.get("probe_steps") or 0)
    split = {"probe_reachable": 0, "probe_near": 0, "probe_floor": 0}
    tol = float(o["tol"])
    for rows, r in parts:
        dg = diagnose(model, r, targets[rows])
        got = dg.counts()
        for k in counts:
            counts[k] += got[k]
        if steps > 0 and not bool(r.success.all()):
            miss = (~r.success.cpu()).nonzero().squeeze(1)
            pr = probe_reachability(model, targets[rows][miss], refs[rows][miss].to(r.images.device),
                                    n_random=int(o.get("probe_random") or 0), steps=steps, tol=tol,
                                    generator=torch.Generator().manual_seed(int(o.get("seed") or 0)))
            for k, v in split_misses([dg.category[i] for i in miss.tolist()], pr.residual, tol).items():
                split[f"probe_{k}"] += v
    out = {f"{prefix}/{k}": float(v) for k, v in counts.items()}
    if steps > 0:
        out.update({f"{prefix}/{k}": float(v) for k, v in split.items()})
    return out


def _invert_batched(model, targets, references, o, radius=None, mode="point"):
    """Invert the rows with finite targets in batches of ``o['batch_size']``; returns the list of
    (indices, InversionResult) and the seconds of each batch."""
    from fsl.inversion import invert_to_features

    dev = model_device(model)
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
                               radius=None if radius is None else radius[rows], mode=mode, **invert_kw(o))
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

    dev = model_device(model)
    shown_refs, results, labels = [], [], []
    for kind in refs_kinds:
        refs = make_references(kind, images)
        if kind == "sample" and reuse is not None:
            r = reuse
        else:
            r = invert_to_features(model, targets, refs.to(dev), radius=radius, mode=mode, **invert_kw(o))
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

    o = pixel_options("inversion", cfg)
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
        mm.update(_explain_misses(f"inversion/{key}", model, parts, targets, refs, o))
        if key == "hull":
            inside = hull_d <= 1e-9 * (1 + features.double().cpu().norm(dim=1))
            mm["inversion/hull/frac_inside_hull"] = float(inside.double().mean()) if n else float("nan")
            if parts and labels is not None:
                rows = torch.cat([rw for rw, _ in parts])
                feats = torch.cat([r.features for _, r in parts]).to(model_device(model))
                with torch.no_grad():
                    pred = model.forward_head(feats).argmax(1).cpu()
                mm["inversion/hull/acc_on_inversions"] = float((pred == labels[rows].cpu()).double().mean())
        outm[key] = MeasuredInversion(targets, valid, parts, secs, mm)
    return outm


@register_analysis("inversion")
class InversionStudy(PixelStudy):
    """Images of the closest flip points (paper Fig. 3), hull projections (Fig. 5) and ball
    perimeters (Fig. 7); success rate, residuals and seconds per batch on ``n_measure`` samples."""
    metric_docs = INVERSION_METRIC_DOCS

    def compute(self, ctx):
        run = self.begin(ctx)
        o, model, out, metrics, lines = run.o, run.model, run.out, run.metrics, run.lines
        n = min(int(o["n_measure"]), run.test_images.shape[0])
        nf = min(int(o["n_figure"]), run.test_images.shape[0])
        imgs = run.test_images[:max(n, nf)]
        feats = run.test_features[:max(n, nf)]
        kinds = list(o["references"])

        measured = measure_inversions(model, imgs[:n], feats[:n], run.train_features, o, run.flip_result,
                                      run.hull_result, run.test_labels[:n])
        flip_all, margin, flip_ok = flip_targets(model, feats, run.flip_result)
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
                targets, _, valid = hull_targets(feats, run.train_features, run.hull_result, **dict(o["hull"] or {}))
            # figure: the first nf samples that have a target
            fig_rows = valid.nonzero().squeeze(1)[:nf]
            if fig_rows.numel():
                reuse = _subset_result(mi.parts, fig_rows) if "sample" in kinds else None
                r_refs, r_res, labels = _figure_inversions(model, key, targets[fig_rows], imgs[fig_rows], kinds, o,
                                                           reuse=reuse)
                run.figures.append(_save_inversion_figure(out, fig_name, r_refs, r_res, labels, fig_rows.numel(), title))
            else:
                lines.append(f"- {title}: no sample with a target among the first {max(n, nf)}; no figure.")

        # perimeter of B(x): ||N(x') - N(x)|| = d_min(x)
        fig_rows = (torch.isfinite(margin) & (margin > 0))[:nf].nonzero().squeeze(1)
        if fig_rows.numel():
            centres = feats[fig_rows].double()
            rad = margin[fig_rows]
            r_refs, r_res, labels = _figure_inversions(model, "perimeter", centres, imgs[fig_rows], kinds, o,
                                                       radius=rad, mode="sphere")
            run.figures.append(_save_inversion_figure(out, "pixels_perimeter", r_refs, r_res, labels, fig_rows.numel(),
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
                  "| target | n | success | proven unreachable | miss: stationary | miss: not converged | mean residual "
                  "| median residual | max residual | mean ‖x − x_r‖ | s / batch |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, mm in table:
            p = f"inversion/{key}"
            lines.append(f"| {'closest flip point' if key == 'flip' else 'hull projection'} | {int(mm[p + '/n'])} | "
                         f"{_fmt(mm[p + '/success_rate'], '.1%')} | {int(mm[p + '/unreachable'])} | "
                         f"{int(mm[p + '/stationary'])} | {int(mm[p + '/not_converged'])} | "
                         f"{_fmt(mm[p + '/residual_mean'], '.2e')} | "
                         f"{_fmt(mm[p + '/residual_median'], '.2e')} | {_fmt(mm[p + '/residual_max'], '.2e')} | "
                         f"{_fmt(mm[p + '/distance_mean'], '.3g')} | {_fmt(mm[p + '/seconds_per_batch'], '.2f')} |")
        if "inversion/perimeter/success_rate" in metrics:
            lines.append(f"| perimeter of B(x) (figure samples, all references) | {int(metrics['inversion/perimeter/n'])} | "
                         f"{_fmt(metrics['inversion/perimeter/success_rate'], '.1%')} | | | | "
                         f"{_fmt(metrics['inversion/perimeter/residual_mean'], '.2e')} | | | "
                         f"{_fmt(metrics['inversion/perimeter/distance_mean'], '.3g')} | |")
        lines += ["", "Misses: *proven unreachable* = a certified interval-bound lower bound on the residual over the "
                  "whole box is above the tolerance; *stationary* = the box-constrained Gauss-Newton model at the "
                  "returned image cannot remove 10% of the residual (a local obstruction); *not converged* = it still "
                  "predicts progress (docs/inversion.md, \"Why a miss missed\")."]
        for key, mm in table:
            p = f"inversion/{key}"
            if p + "/probe_floor" in mm:
                lines.append(f"- {key} misses, multi-start probe ({int(o['probe_steps'])} projected-Adam steps from the "
                             f"sample + {int(o.get('probe_random') or 0)} random images): {int(mm[p + '/probe_reachable'])} "
                             f"reached by the probe (reachable: a solver miss), {int(mm[p + '/probe_near'])} within 10x "
                             f"the tolerance, {int(mm[p + '/probe_floor'])} above it (a residual floor shared by both "
                             f"solvers: evidence, not proof, that the target lies outside the image of the box).")
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
        return self.finish(run)
