"""From feature space back to pixels, one analysis per study (Yousefzadeh, arXiv 2202.04052,
sections 4-5; Pattichis & Pattichis, SSIAI 2024: signal spaces, SELU inversion, ideal inputs; Jacobian preimages of latent vectors: preimages;
docs/inversion.md). The math is :mod:`fsl.inversion` and :mod:`fsl.spaces`; the study bodies are in
:mod:`fsl.analysis.pixel_studies`.

All six share the ``pixels`` settings (``configs/pixels/default.yaml``: which test samples, the
inversion solver) and one selection of samples; misses are never reported as hits (``success``
comes from the inversion library, which measures the residual again on the returned images).
"""
from __future__ import annotations

from types import SimpleNamespace

from fsl.analysis import pixel_studies as ps
from fsl.analysis.base import Analysis, Figure, Result, register_analysis

SECTION = "From feature space back to pixels"


class _Figures:
    """Collects the studies' ``out.save_figure(name, fig)`` calls as :class:`Figure` s."""

    def __init__(self):
        self.figures: dict[str, Figure] = {}

    def save_figure(self, name: str, fig) -> None:
        self.figures[name.removeprefix("pixels_")] = Figure(name, fig)


def _selection(ctx, o: dict) -> SimpleNamespace:
    """The shared inputs of the pixel studies, selected once per context."""
    key = ("pixel_selection", o["n_train"], o["n_eval"], o["n_measure"], o["n_figure"], o["seed"])
    if key not in ctx.cache:
        train, test = ctx.train_features(o["n_train"]), ctx.eval_features(o["n_eval"])
        order = ps.select_samples(test.labels, o)
        test_images = ctx.eval_images(o["n_eval"])
        ctx.cache[key] = SimpleNamespace(
            model=ctx.model, order=order, train_images=ctx.images("train", o["n_train"]), train_labels=train.labels,
            test_images=test_images[order], test_labels=test.labels[order], train_features=train.features,
            test_features=test.features[order], flip_result=None, hull_result=None, class_names=ctx.class_names,
            n_total=len(test))
    return ctx.cache[key]


def section_intro(ctx, o: dict) -> list[str]:
    """The section header: which test samples the studies use."""
    sel = _selection(ctx, {"n_train": None, "n_eval": None, **o})
    n_use, N = len(sel.order), sel.n_total
    return [f"## {SECTION}", "",
            f"Test samples used: {n_use} of {N} (a seeded random selection, stratified by class, seed "
            f"{int(o['seed'])}); figures show the first {min(int(o['n_figure']), n_use)} of them.", ""]


class PixelStudy(Analysis):
    """Base of the pixel-space analyses: ``pixels`` (the shared sample and solver settings, None:
    the run's top-level ``pixels``), ``n_train``/``n_eval`` (subsets, None: the context's), and
    the study's own options. Metrics are ``pixels/<study>/...``."""

    prefix = "pixels"
    section = SECTION
    study = ""

    @property
    def seconds_key(self) -> str:
        return f"pixels/studies/{self.name}/seconds"

    def settings(self, ctx) -> dict:
        """The shared ``pixels`` settings merged with the study's own (seed None: the run's seed)."""
        own = {k: v for k, v in self.options.items() if k != "pixels"}
        merged = {**(self.options.get("pixels") or {}), **own}
        if merged.get("seed") is None:
            merged["seed"] = ctx.seed
        o = ps._options(merged)
        o.setdefault("n_train", None)
        o.setdefault("n_eval", None)
        return o

    def section_intro(self, ctx) -> list[str]:
        return section_intro(ctx, self.settings(ctx))

    def skip_reason(self, ctx) -> str | None:
        return None

    def compute(self, ctx) -> Result:
        reason = self.skip_reason(ctx)
        if reason:
            return Result(metrics={f"studies/{self.name}/skipped": 1.0}, report=[reason])
        o = self.settings(ctx)
        figs = _Figures()
        run = SimpleNamespace(**vars(_selection(ctx, o)), o=o, out=figs, metrics={}, lines=[], figures=[])
        ps.RUNNERS[self.name](run)
        return Result(metrics=run.metrics, report=run.lines, figures=figs.figures)


@register_analysis("inversion")
class InversionStudy(PixelStudy):
    """Images of the closest flip points (paper Fig. 3), hull projections (Fig. 5) and ball
    perimeters (Fig. 7); success rate, residuals and seconds per batch on ``n_measure`` samples."""


@register_analysis("morph")
class MorphStudy(PixelStudy):
    """Morphing a -> b by shrinking a ball around N(b) (Fig. 8); feature-space paths of the morph and
    of the straight pixel line (Figs. 9, 12)."""


@register_analysis("preimage")
class PreimageStudy(PixelStudy):
    """Level-set walk on N(x) = N(x0) and the step response along null-space vs random directions
    (Jacobian preimages of latent vectors)."""


@register_analysis("signal")
class SignalStudy(PixelStudy):
    """Singular-value spectra of every layer (figure); first-layer signal images and class residual
    images when the first layer is linear (Pattichis & Pattichis, SSIAI 2024 Figs. 1-2). Per-layer numbers: ``spaces``."""


def _selu_skip(ctx, what: str) -> str | None:
    if getattr(ctx.model, "invertible_selu", False):
        return None
    return (f"- {what}: skipped, `{type(ctx.model).__name__}` is not a SELU net (the layer-wise inversion needs an "
            "invertible SELU after every linear layer; Pattichis & Pattichis, SSIAI 2024 studies SELU MLPs only).")


@register_analysis("selu")
class SeluStudy(PixelStudy):
    """Layer-wise SELU inversion from the features (Pattichis & Pattichis, SSIAI 2024 section 2.4); needs a model with
    ``invertible_selu = True``."""

    def skip_reason(self, ctx):
        return _selu_skip(ctx, "SELU inversion")


@register_analysis("ideal")
class IdealStudy(PixelStudy):
    """Ideal-output inputs (Pattichis & Pattichis, SSIAI 2024 Fig. 3); needs a model with ``invertible_selu = True``."""

    def skip_reason(self, ctx):
        return _selu_skip(ctx, "ideal-output inputs")
