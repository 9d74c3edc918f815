"""What every logged metric key means, and its unit: :class:`MetricDoc`, declared by each analysis
in its class attribute ``metric_docs`` (patterns relative to its ``prefix``, as the keys of
``Result.metrics``) and here for the keys of training and ``analyze.py``. :func:`render_markdown`
writes ``docs/metrics.md`` from them::

    python -m fsl.analysis.metric_docs > docs/metrics.md

A pattern is a key with placeholders, ``adv/<attack>/auroc/<detector>``: each ``<name>`` is an entry
of :data:`PLACEHOLDERS` (what it matches, what it stands for); :func:`match` finds the one doc of a key.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from functools import cached_property

#: one path segment
SEGMENT = r"[^/]+"

#: units several keys share
FRACTION = "fraction in [0, 1]"
RATIO = "ratio (dimensionless)"
FEATURE_L2 = "feature-space L2 distance"
PIXEL_L2 = "pixel L2"

#: placeholder -> (regular expression of what it matches, what it stands for)
PLACEHOLDERS: dict[str, tuple[str, str]] = {
    "attack": (SEGMENT, "an attack of the run's suite: a key of `configs/attacks/<suite>.yaml` (e.g. `deepfool`, "
                        "`pgd_01`, `cw`)"),
    "detector": (SEGMENT, "a registered detector, `fsl.adversarial.DETECTORS` (e.g. `margin`, `ambiguity`, `msp`, "
                          "`knn`); every one is scored for every attack"),
    "bound": ("lo|hi", "`lo` / `hi`: the lower / upper end of the 95% percentile bootstrap interval (`n_boot` "
                       "replicates, clean and adversarial scores resampled independently)"),
    "pct": (r"\d\d", "a percentile: `05`, `25`, `50`, `75`, `95`"),
    "class": (r"\d+", "a class index, `0` to `n - 1`"),
    "module": (SEGMENT, "a Linear or Conv2d module of the model, by its name in `model.named_modules()` (e.g. "
                        "`layers.0`, `blocks.0.conv1`, `head`)"),
    "layer": (SEGMENT, "a layer of `model.feature_maps` (e.g. `layers.1`, `stage1`, `pooled`)"),
    "decoder": ("conv|flow", "a FeatInv decoder: `conv` (deterministic) or `flow` (probabilistic)"),
    "method": ("conv|flow|inversion", "a way back to the image: a FeatInv decoder (`conv`, `flow`) or fsl's "
                                      "optimisation inversion (`inversion`)"),
    "manipulation": (SEGMENT, "a FeatMap image manipulation, `fsl.featmap.manipulations.MANIPULATIONS`"),
    "map": (SEGMENT, "a FeatMap map, `fsl.featmap.pipeline.MAPPINGS` (e.g. `identity`, `linear`, `procrustes`, "
                     "`global_linear`, `mlp`, `cnn`, `transformer`)"),
    "k": ("1|5|10", "`1`, `5` or `10`: how many of the largest singular values"),
    "target": ("flip|hull", "a geometry target: `flip` (the closest flip point) or `hull` (the projection onto the "
                            "training features' convex hull)"),
    "init": ("avg-img|min-img|avg-min-img", "a start of the ideal-input search (`fsl.spaces.ideal.INITS`)"),
    "stage": ("train|val|test", "a split of the data module: `train`, `val` or `test`"),
    "split": ("val|test", "an evaluation split: `val` or `test`"),
    "optimizer": (SEGMENT, "the optimizer's class name (e.g. `AdamW`)"),
}

_PLACEHOLDER = re.compile(r"<([a-z_]+)>")


@dataclass(frozen=True)
class MetricDoc:
    """One logged key (or a family of keys: ``pattern`` with ``<placeholders>``), what it means and
    its unit. ``in_results=False``: no committed study under ``docs/results/`` logs it (training
    keys, keys of options the studies leave off), so the tests do not look for it there."""

    pattern: str
    meaning: str
    unit: str
    in_results: bool = True

    def __post_init__(self):
        if not (self.pattern and self.meaning and self.unit):
            raise ValueError(f"MetricDoc {self.pattern!r}: pattern, meaning and unit must all be given")
        _ = self.regex  # an unknown placeholder fails here, where the doc is declared

    @cached_property
    def regex(self) -> re.Pattern:
        """The pattern as a regular expression (placeholders from :data:`PLACEHOLDERS`)."""
        parts, pos = [], 0
        for m in _PLACEHOLDER.finditer(self.pattern):
            if m.group(1) not in PLACEHOLDERS:
                raise ValueError(f"MetricDoc {self.pattern!r}: unknown placeholder <{m.group(1)}>; "
                                 f"add it to fsl.analysis.metric_docs.PLACEHOLDERS")
            parts += [re.escape(self.pattern[pos:m.start()]), f"(?:{PLACEHOLDERS[m.group(1)][0]})"]
            pos = m.end()
        parts.append(re.escape(self.pattern[pos:]))
        return re.compile("".join(parts))

    def matches(self, key: str) -> bool:
        return self.regex.fullmatch(key) is not None


@dataclass(frozen=True)
class Section:
    """A part of docs/metrics.md: a title, a paragraph saying what logs the keys, and their docs."""

    title: str
    intro: str
    docs: tuple[MetricDoc, ...]


#: the step axes and the keys of ``fsl.training.module.ClassifierModule`` and
#: ``fsl.featinv.module.FeatInvModule`` (``self.log``), ``callbacks.timing.EpochTimer`` and
#: Lightning's ``LearningRateMonitor`` (configs/callbacks/default.yaml)
TRAINING_DOCS = (
    MetricDoc("train/loss", "loss of one training step (logged per step): the classifier's cross-entropy of the "
              "batch, plus `loss.margin.weight` times `train/margin_loss` when that weight is positive; a FeatInv "
              "decoder's training loss (conv: `featinv.mse_weight` MSE + `cos_weight` (1 - re-encoded cosine) + "
              "`ssim_weight` (1 - SSIM); flow: the flow-matching MSE of the predicted velocity)",
              "loss (cross-entropy in nats; FeatInv: its weighted loss)", in_results=False),
    MetricDoc("train/loss_epoch", "`train/loss` averaged over the epoch's training samples (mean weighted by batch "
              "size)", "as `train/loss`", in_results=False),
    MetricDoc("<split>/loss", "mean over the split's batches (weighted by batch size, synchronised over DDP ranks) "
              "of the loss: the classifier's plain cross-entropy, or the FeatInv decoder's loss (flow: with noise "
              "drawn from a fixed seed per batch)", "as `train/loss`", in_results=False),
    MetricDoc("<stage>/acc", "classifier: fraction of the split's samples classified correctly over the epoch "
              "(torchmetrics `MulticlassAccuracy`, micro average; `train`: on the training batches as the model saw "
              "them, in training mode and with the data module's augmentation); `test/acc` after training: of the "
              "best checkpoint",
              FRACTION, in_results=False),
    MetricDoc("train/margin_median", "classifier with `loss.margin.weight > 0`: the median exact margin `d_min` of "
              "the correctly classified samples of a batch; the epoch's mean over batches, weighted by batch size",
              FEATURE_L2, in_results=False),
    MetricDoc("train/margin_loss", "classifier with `loss.margin.weight > 0`: the margin hinge "
              "`mean_s [pred_s = y_s] relu(loss.margin.target - d_min(s))` of a batch "
              "(`fsl.training.losses.margin_hinge`); the epoch's mean over batches, weighted by batch size",
              FEATURE_L2, in_results=False),
    MetricDoc("<split>/ssim", "FeatInv decoder: SSIM of the reconstructions against the images (torchmetrics, data "
              "range 1) per batch (flow: over the batch's share of the `eval_samples` images it samples); the epoch's "
              "mean over batches, weighted by their size",
              "SSIM in [-1, 1]", in_results=False),
    MetricDoc("<split>/cosine", "FeatInv decoder: re-encoded cosine (the reconstruction's layer features vs the "
              "image's: median over positions of the cosine over channels) per batch (conv: mean over the batch; "
              "flow: median over its sampled images); the epoch's mean over batches, weighted by their size",
              "cosine in [-1, 1]", in_results=False),
    MetricDoc("<split>/top1_agree", "FeatInv decoder: fraction of the reconstructions the classifier assigns the "
              "class it assigns the original image, per batch; the epoch's mean over batches, weighted by their size",
              FRACTION,
              in_results=False),
    MetricDoc("time/train_epoch_s", "`EpochTimer`: wall time of an epoch's training batches", "seconds",
              in_results=False),
    MetricDoc("time/val_epoch_s", "`EpochTimer`: wall time of an epoch's validation batches (before the analyses "
              "that run after validation)", "seconds", in_results=False),
    MetricDoc("lr-<optimizer>", "Lightning's `LearningRateMonitor`: the learning rate, at the start of each training epoch",
              "learning rate", in_results=False),
    MetricDoc("epoch", "Lightning: the current epoch (from 0), added to the rows the module logs", "count",
              in_results=False),
    MetricDoc("trainer/global_step", "the W&B step axis: the optimizer steps so far (Lightning's `WandbLogger`, and "
              "the rows of figures, histograms and tables that the analysis callback logs)", "count",
              in_results=False),
)

#: the keys of the drivers themselves (fsl.analysis.run)
DRIVER_DOCS = (
    MetricDoc("analyze/seconds", "wall time of an `analyze.py` run (loading model and data, every analysis, the "
              "report, up to writing `metrics.json`; not the W&B upload) or of an `fsl.analyze` call", "seconds"),
)


def seconds_doc(cls) -> MetricDoc:
    """The wall-time key every analysis logs (``Analysis.seconds_key``; the property reads class
    attributes only, so it is read off the class)."""
    return MetricDoc(cls.seconds_key.fget(cls), f"wall time of the `{cls.name}` analysis (`Analysis.run`: its "
                     "`compute`, on this process)", "seconds")


def analysis_docs(cls) -> tuple[MetricDoc, ...]:
    """The docs of the analysis class ``cls`` with full keys: ``<prefix>/<pattern>`` of its
    ``metric_docs`` and its wall time."""
    return (*(replace(d, pattern=f"{cls.prefix}/{d.pattern}") for d in cls.metric_docs), seconds_doc(cls))


def purpose(cls) -> str:
    """The first paragraph of the docstring of the analysis' module, as one line of markdown."""
    doc = (sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().split("\n\n")[0]
    doc = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", " ".join(doc.split()))
    return doc.replace("``", "`")


def sections() -> list[Section]:
    """docs/metrics.md's sections: every registered analysis (registry order), then the drivers and
    training."""
    from fsl.analysis.base import ANALYSES

    out = []
    for name in ANALYSES.names():
        cls = ANALYSES.get(name)
        out.append(Section(f"`{name}` (keys `{cls.prefix}/...`)", purpose(cls), analysis_docs(cls)))
    out.append(Section("`analyze.py` and `fsl.analyze`", "The run as a whole (`fsl.analysis.run`), beside the keys "
                       "of the analyses it ran.", DRIVER_DOCS))
    out.append(Section("Training (`train.py`)", "Logged by the Lightning module to every logger (W&B, CSV): "
                       "`fsl.training.module.ClassifierModule` for a classifier, `fsl.featinv.module.FeatInvModule` "
                       "for a FeatInv decoder (`featinv.classifier=...`), and by the callbacks of "
                       "`configs/callbacks/default.yaml`. The analyses that run after validation "
                       "(`callbacks=analysis`) log the keys of the sections above, on the validation split.",
                       TRAINING_DOCS))
    return out


def all_metric_docs() -> list[MetricDoc]:
    """Every documented key pattern: the registered analyses', the drivers' and training's."""
    return [d for s in sections() for d in s.docs]


def match(key: str, docs: list[MetricDoc] | None = None) -> MetricDoc | None:
    """The doc whose pattern matches ``key`` (None: undocumented). ValueError when several do: the
    patterns must not overlap."""
    found = [d for d in (all_metric_docs() if docs is None else docs) if d.matches(key)]
    if len(found) > 1:
        raise ValueError(f"metric key {key!r} matches {len(found)} patterns: {[d.pattern for d in found]}")
    return found[0] if found else None


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown() -> str:
    """docs/metrics.md."""
    lines = ["# Logged metrics", "",
             "<!-- Generated by `python -m fsl.analysis.metric_docs > docs/metrics.md`: edit the `metric_docs` of "
             "the analyses (fsl/analysis/studies/) or fsl/analysis/metric_docs.py, not this file. -->", "",
             "Every scalar fsl logs: in training to every Lightning logger (W&B, CSV) after each epoch, in "
             "`analyze.py` and `fsl.analyze` to `metrics.json` and W&B. An analysis' keys are `<prefix>/<key>` "
             "and identical in both. Figures, histograms and tables (W&B media, `figures/*.png`) are not listed.",
             "",
             "This file is generated from the code: each analysis declares its keys in its class attribute "
             "`metric_docs` (a tuple of `fsl.analysis.metric_docs.MetricDoc`), the keys of training and of "
             "`analyze.py` are declared in `fsl/analysis/metric_docs.py`. Regenerate it with", "",
             "```bash", "python -m fsl.analysis.metric_docs > docs/metrics.md", "```", "",
             "`tests/analysis/test_metric_docs.py` checks that it is current, that every key of the committed "
             "results (`docs/results/**/metrics.json`) matches exactly one pattern below, and that every pattern "
             "matches one of them, except those marked †, which the committed studies do not log.", "",
             "Reading the tables: `<name>` in a key stands for what the placeholder table says. *Feature-space* "
             "distances are Euclidean (L2) distances between the vectors of the layer before the linear head "
             "(`model.forward_features`); *pixel L2* is the Euclidean norm over all C x H x W pixel values of "
             "images in [0, 1]. `d_min` is a sample's margin, the distance to the closest decision boundary inside "
             "the model's feature domain (`fsl.geometry.flip_margins`), `d_h` its distance to the convex hull of the "
             "training features (`fsl.geometry.hull_distances`). Mean, median, quantile and fraction say over which "
             "samples they are taken.", "",
             "## Placeholders", "", "| placeholder | stands for |", "|---|---|"]
    lines += [f"| `<{name}>` | {_cell(what)} |" for name, (_, what) in PLACEHOLDERS.items()]
    all_sections = sections()
    lines += ["", "## Contents", ""]
    lines += [f"- {s.title}: {len(s.docs)} pattern{'s' if len(s.docs) > 1 else ''}" for s in all_sections]
    for s in all_sections:
        lines += ["", f"## {s.title}", "", _cell(s.intro), "", "| key | meaning | unit |", "|---|---|---|"]
        lines += [f"| `{d.pattern}`{'' if d.in_results else ' †'} | {_cell(d.meaning)} | {_cell(d.unit)} |"
                  for d in s.docs]
    lines.append("")
    return "\n".join(lines)


__all__ = ["MetricDoc", "Section", "PLACEHOLDERS", "FRACTION", "RATIO", "FEATURE_L2", "PIXEL_L2", "TRAINING_DOCS",
           "DRIVER_DOCS", "sections", "all_metric_docs", "analysis_docs", "match", "render_markdown"]


def main(argv: list[str] | None = None) -> int:
    """``python -m fsl.analysis.metric_docs``: docs/metrics.md to stdout (UTF-8)."""
    import fsl.analysis.studies  # noqa: F401  (registers the built-in analyses)

    if argv:
        print("usage: python -m fsl.analysis.metric_docs > docs/metrics.md", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stdout.buffer.write(render_markdown().encode("utf-8"))  # UTF-8 whatever the locale
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":  # run the imported module's main, the one the analyses' MetricDocs come from
    from fsl.analysis.metric_docs import main as _main

    raise SystemExit(_main(sys.argv[1:]))

