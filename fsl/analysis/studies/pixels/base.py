"""What the pixel-space studies share: the ``pixels`` settings (which test samples, the inversion
solver), one selection of samples per context, the report section they write into, and the
:class:`PixelStudy` base class.

The samples are a seeded draw stratified by class whose every prefix is stratified too
(:func:`select_samples`); studies on fewer samples take the first ones. Misses are never reported
as hits (``success`` comes from :mod:`fsl.inversion`, which measures the residual again on the
returned images).
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

from fsl.analysis.base import DRIVER_KEYS, Analysis, Figure, Result, analysis_defaults

SECTION = "From feature space back to pixels"
#: solver settings whose null means "the library's default" (kept as None, not replaced by the yaml)
NULLABLE = ("max_iter", "al_iter", "al_inner_steps", "seed")


def shared_defaults() -> dict:
    """The ``pixels`` settings every pixel study shares: ``configs/pixels/default.yaml`` (the only copy)."""
    from omegaconf import OmegaConf

    from fsl.configfiles import CONFIG_DIR

    return dict(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "pixels" / "default.yaml"), resolve=False))


def pixel_options(study: str, cfg=None) -> dict:
    """The options of pixel study ``study``: the shared ``pixels`` defaults, the study's own defaults
    (``configs/analysis/<study>.yaml``), then ``cfg`` (a flat dict or DictConfig; a null value keeps
    the default, except for :data:`NULLABLE` solver settings). ``seed`` None -> 0."""
    from fsl.configfiles import to_plain

    c = {} if cfg is None else to_plain(cfg)
    own = {k: v for k, v in analysis_defaults(study).items() if k not in (*DRIVER_KEYS, "pixels")}
    o = {**shared_defaults(), **own, **{k: v for k, v in c.items() if v is not None or k in NULLABLE}}
    if o.get("seed") is None:
        o["seed"] = 0
    check_sample_order(o)
    return o


def check_sample_order(o: dict) -> None:
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

    check_sample_order(o)
    n_use = min(len(labels), max(int(o["n_measure"]), int(o["n_figure"])))
    if n_use <= 0:
        return torch.empty(0, dtype=torch.long)
    return stratified_subset(labels, n_use, int(o["seed"]))


def train_rows(run, n: int) -> torch.Tensor:
    """Positions of ``n`` of the selected training images (all when ``n`` is larger or <= 0), a
    seeded draw stratified by class."""
    from fsl.data.subsets import stratified_subset

    return stratified_subset(run.train_labels, int(n), int(run.o["seed"]))


def model_device(model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


class Figures:
    """Collects a study's ``out.save_figure(name, fig)`` calls as :class:`Figure` s."""

    def __init__(self):
        self.figures: dict[str, Figure] = {}

    def save_figure(self, name: str, fig) -> None:
        self.figures[name.removeprefix("pixels_")] = Figure(name, fig)


def selection(ctx, o: dict) -> SimpleNamespace:
    """The shared inputs of the pixel studies, selected once per context."""
    key = ("pixel_selection", o["n_train"], o["n_eval"], o["n_measure"], o["n_figure"], o["seed"])
    if key not in ctx.cache:
        train, test = ctx.train_features(o["n_train"]), ctx.eval_features(o["n_eval"])
        order = select_samples(test.labels, o)
        test_images = ctx.eval_images(o["n_eval"])
        ctx.cache[key] = SimpleNamespace(
            model=ctx.model, order=order, train_images=ctx.images("train", o["n_train"]), train_labels=train.labels,
            test_images=test_images[order], test_labels=test.labels[order], train_features=train.features,
            test_features=test.features[order], flip_result=None, hull_result=None, class_names=ctx.class_names,
            n_total=len(test))
    return ctx.cache[key]


class PixelStudy(Analysis):
    """Base of the pixel-space analyses: ``pixels`` (the shared sample and solver settings, None:
    the run's top-level ``pixels``), ``n_train``/``n_eval`` (subsets, None: the context's), and
    the study's own options. Metrics are ``pixels/<study>/...``; all of them write one report
    section, whose header names the samples they share.

    A subclass implements :meth:`compute` with :meth:`begin` (the settings and selected samples as
    one namespace ``run``: ``run.o``, ``run.model``, ``run.test_images``, ..., and collectors
    ``run.metrics``, ``run.lines``, ``run.out.save_figure(name, fig)``) and :meth:`finish`.
    """

    prefix = "pixels"
    section = SECTION

    @property
    def seconds_key(self) -> str:
        return f"pixels/studies/{self.name}/seconds"

    def settings(self, ctx) -> dict:
        """The shared ``pixels`` settings merged with the study's own (seed None: the run's seed)."""
        own = {k: v for k, v in self.options.items() if k != "pixels"}
        merged = {**(self.options.get("pixels") or {}), **own}
        if merged.get("seed") is None:
            merged["seed"] = ctx.seed
        o = pixel_options(self.name, merged)
        o.setdefault("n_train", None)
        o.setdefault("n_eval", None)
        return o

    def section_intro(self, ctx) -> list[str]:
        """The section header: which test samples the studies use."""
        o = self.settings(ctx)
        sel = selection(ctx, o)
        n_use, N = len(sel.order), sel.n_total
        return [f"## {SECTION}", "",
                f"Test samples used: {n_use} of {N} (a seeded random selection, stratified by class, seed "
                f"{int(o['seed'])}); figures show the first {min(int(o['n_figure']), n_use)} of them.", ""]

    def skipped(self, reason: str) -> Result:
        """The result of a study that does not apply to the model (``studies/<name>/skipped`` = 1)."""
        return Result(metrics={f"studies/{self.name}/skipped": 1.0}, report=[reason])

    def begin(self, ctx) -> SimpleNamespace:
        """The study's settings and the context's selected samples, with empty collectors."""
        o = self.settings(ctx)
        return SimpleNamespace(**vars(selection(ctx, o)), o=o, out=Figures(), metrics={}, lines=[], figures=[])

    @staticmethod
    def finish(run) -> Result:
        return Result(metrics=run.metrics, report=run.lines, figures=run.out.figures)


def selu_skip(ctx, what: str) -> str | None:
    """Why a study needing an invertible SELU net does not apply to ``ctx.model`` (None: it does)."""
    if getattr(ctx.model, "invertible_selu", False):
        return None
    return (f"- {what}: skipped, `{type(ctx.model).__name__}` is not a SELU net (the layer-wise inversion needs an "
            "invertible SELU after every linear layer; Pattichis & Pattichis, SSIAI 2024 studies SELU MLPs only).")
