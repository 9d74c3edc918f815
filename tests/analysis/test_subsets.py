"""Every registered analysis, run on a class-sorted data set, feeds the model class-proportional
samples (fsl.analysis.Context draws its subsets with fsl.data.subsets, tests/data/test_subsets.py)."""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from fsl.data.subsets import stratified_subset
from tests.helpers import sorted_labels


def test_context_subsets_are_stratified_interleaved_and_cached():
    from fsl.analysis import Context
    from fsl.models import create_model

    y = sorted_labels([20] * 10)
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    model = create_model("selu_mlp", input_shape=(1, 8, 8), hidden=(8,), mean=(0.5,), std=(0.25,))
    ctx = Context(model, lambda split: (x, y), n_train=50, n_eval=None)
    tr = ctx.subset("train")
    assert torch.equal(tr, stratified_subset(y, 50, ctx.seed)) and tr is ctx.subset("train", 50)
    assert torch.bincount(y[tr]).tolist() == [5] * 10
    ev = ctx.subset("val")
    assert sorted(ev.tolist()) == list(range(200)) and torch.equal(ev, stratified_subset(y, None, ctx.seed + 1))
    assert torch.equal(ctx.labels("val")[:10].sort().values, torch.arange(10))
    fs = ctx.eval_features()
    assert torch.equal(fs.index, ev) and torch.equal(fs.labels, y[ev])


def test_pixel_sample_order_other_than_random_is_refused():
    from fsl.analysis.studies.pixels.base import pixel_options, select_samples

    with pytest.raises(ValueError, match="sample_order='first' is not supported.*pixels.sample_order=random"):
        pixel_options("inversion", {"sample_order": "first"})
    y = sorted_labels([3] * 10)
    sel = select_samples(y, {**pixel_options("inversion", {"n_measure": 20, "n_figure": 4}), "seed": 0})
    assert torch.bincount(y[sel]).tolist() == [2] * 10 and len(set(y[sel[:10]].tolist())) == 10


# -- every registered analysis on a class-sorted data set ----------------------------------------------

C, SHAPE = 10, (1, 8, 8)
SPEC = {"name": "selu_mlp", "input_shape": list(SHAPE), "hidden": [32, 16], "mean": [0.5], "std": [0.25]}
PIXELS = {"n_figure": 10, "n_measure": 10, "batch_size": 10, "al_iter": 2, "al_inner_steps": 10, "max_iter": 4,
          "references": ["sample"], "probe_steps": 0}
# small, fast options per analysis (an analysis not named here runs with its defaults)
OPTIONS = {
    "geometry": {"table_rows": 0},
    "pixel_hull": {"n_queries": 30},
    "adversarial": {"attacks": {"deepfool": {"attack": "deepfool", "steps": 10, "overshoot": 0.02},
                                "pgd": {"attack": "pgd", "eps": 0.1, "alpha": 0.05, "steps": 3}},
                    "n_samples": 30, "n_boot": 10, "knn_k": 5},
    "morph": {"morph_steps": 2, "path_points": 4},
    "preimage": {"walk_steps": 1, "walk_newton": 3, "step_directions": 1, "step_sizes": [1e-3, 1e-2]},
    "signal": {"n_signal": 60, "signal_k": 3},
    "ideal": {"n_ideal": 60, "ideal_steps": 2},
    "featinv": {"n_compare": 20, "samples": 2, "n_figure": 2, "n_eval": None,
                "inversion": {"enabled": True, "reference": "mean", "tol": 1e-3, "max_iter": 1, "chunk": 20}},
    "featmap": {"layers": ["layers.1"], "manipulations": ["brightness"], "mappings": ["linear", "mlp"],
                "sgd": {"max_epochs": 1, "n_train": 40, "batch_size": 20}, "nets": {"mlp_hidden": 8},
                "n_decode": 20, "n_figure": 1, "n_train": None, "n_eval": None},
}


def _class_sorted(n_per_class: int, seed: int):
    """``(x (N, 1, 8, 8), y (N,))`` sorted by class: a class template plus noise, so that every image is
    unique (an input the model sees can be traced back to its index) and the classes are learnable."""
    templates = torch.rand(C, *SHAPE, generator=torch.Generator().manual_seed(100))
    y = torch.arange(C).repeat_interleave(n_per_class)
    x = 0.6 * templates[y] + 0.4 * torch.rand(len(y), *SHAPE, generator=torch.Generator().manual_seed(seed))
    return x.clamp(0, 1), y


def _trained_model(x, y):
    from fsl.models import create_model

    torch.manual_seed(0)
    model = create_model(**SPEC)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _decoder_checkpoint(model, path: Path) -> Path:
    """An (untrained) FeatInv conv decoder of ``model``'s ``layers.0``, saved as a checkpoint."""
    from fsl.featinv.module import FeatInvModule

    m = FeatInvModule(SPEC, {"layer": "layers.0", "decoder": "conv", "width": 4, "depth": 1}, {},
                      classifier_state=model.state_dict())
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams)}, path)
    return path


class UsageRecorder:
    """Which data-set samples the model is called on, per analysis, split and call site.

    A global forward pre-hook on every :class:`fsl.models.base.Normalize` (every image input of an
    fsl model passes it: ``forward``, ``forward_features``, ``feature_maps``, the first-layer input,
    also in deep copies and in the classifier a FeatInv checkpoint carries) matches each input row
    exactly against the data set. The call site is the innermost frame in ``fsl/analysis``: the line
    of analysis code that fed the samples to the model."""

    def __init__(self, data: dict):
        import fsl.analysis

        self.root = str(Path(fsl.analysis.__file__).parent) + "/"
        self.lookup = {x[i].numpy().tobytes(): (split, i) for split, (x, _) in data.items() for i in range(len(x))}
        self.used = defaultdict(set)  # (analysis, split, site) -> indices
        self.draws = defaultdict(list)  # (analysis, split) -> [Context.subset results]
        self.analysis = None

    def site(self) -> str:
        f = sys._getframe(2)
        while f is not None:
            if f.f_code.co_filename.startswith(self.root):
                return f"{f.f_code.co_filename[len(self.root):]}:{f.f_lineno}"
            f = f.f_back
        return "?"

    def hook(self):
        from fsl.models.base import Normalize

        def pre_hook(module, args):
            x = args[0] if args else None
            if (self.analysis is None or not isinstance(module, Normalize) or not isinstance(x, torch.Tensor)
                    or torch._C._functorch.is_functorch_wrapped_tensor(x) or x.dim() != 4):
                return
            rows = x.detach().to("cpu", torch.float32).contiguous().numpy()
            site = None
            for r in rows:
                hit = self.lookup.get(r.tobytes())
                if hit is not None:
                    site = site or self.site()
                    self.used[(self.analysis, hit[0], site)].add(hit[1])

        return pre_hook


def _check_proportional(what: str, labels: torch.Tensor, idx, failures: list) -> None:
    """Class ``c`` (share ``p_c`` of the split) among ``m`` used samples: ``|count_c - m p_c| <= 1 + 0.02 m``,
    i.e. ``|share_c - p_c| <= 1/m + 0.02``. A stratified draw, or any prefix of one, is within 1 of
    ``m p_c`` (test_every_prefix_is_stratified; here every use is); ``0.02 m`` leaves room for samples an
    analysis drops by the model's outputs (misclassified ones, inversions without a target). A prefix of
    the class-sorted order, or of a sorted subset, is off by far more: its first classes take all of it.
    With ``m >= C`` no class may be missing."""
    idx = torch.as_tensor(sorted(idx) if isinstance(idx, set) else idx, dtype=torch.long)
    m = len(idx)
    p = torch.bincount(labels, minlength=C).double() / len(labels)
    counts = torch.bincount(labels[idx], minlength=C).double()
    bad = (counts - m * p).abs() > 1 + 0.02 * m
    if bad.any() or (m >= C and (counts == 0).any()):
        failures.append(f"{what}: {m} samples, class counts {counts.long().tolist()} (expected ~{m / C:.1f} each)")


def test_every_analysis_uses_class_proportional_samples(tmp_path):
    """Every built-in analysis runs (small options) on a class-sorted data set in one shared context,
    as in a run. The samples each one feeds a model, grouped by the line of analysis code that fed
    them, and each subset it draws through the context hold every class in proportion. An analysis
    that does neither must run without reading any data. With the former prefix draws (the first n of
    a sorted subset) the first classes took whole groups, e.g. FeatInv's compared images."""
    from fsl.analysis import Context
    from fsl.analysis.base import ANALYSES, analysis_defaults, build_analyses

    data = {"train": _class_sorted(40, seed=1), "val": _class_sorted(20, seed=2)}
    model = _trained_model(*data["train"])
    with torch.no_grad():
        for split, (x, y) in data.items():
            acc = torch.bincount(y[model(x).argmax(1) == y], minlength=C) / torch.bincount(y)
            assert (acc == 1).all(), f"the toy model must classify every {split} class (per class {acc.tolist()})"
    ckpt = _decoder_checkpoint(model, tmp_path / "featinv.ckpt")
    rec = UsageRecorder(data)

    class RecordingContext(Context):
        def subset(self, split, n=None):
            idx = super().subset(split, n)
            if rec.analysis is not None:
                rec.draws[(rec.analysis, split)].append(idx)
            return idx

    ctx = RecordingContext(model, lambda split: data[split], eval_split="val", n_train=200, n_eval=100,
                           figures=False, batch_size=64)
    # the built-in analyses (test modules may register their own in this session)
    names = sorted(n for n, cls in ANALYSES.items() if cls.__module__.startswith("fsl."))
    spec = {}
    for n in names:
        spec[n] = {"enabled": True, **OPTIONS.get(n, {})}
        defaults = analysis_defaults(n)
        if "pixels" in defaults:
            spec[n]["pixels"] = dict(PIXELS)
        if "checkpoints" in defaults:  # FeatInv decoders (featinv, featmap)
            spec[n]["checkpoints"] = [str(ckpt)]
    analyses = build_analyses(spec)
    assert sorted(a.name for a in analyses) == names
    ctx.train_features(), ctx.eval_features()  # extracted once for all analyses; checked below as draws
    failures: list[str] = []
    data_free = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(rec.hook())
    try:
        for a in analyses:
            rec.analysis = a.name
            ctx.results[a.name] = a.run(ctx)
            rec.analysis = None
            if not any(k[0] == a.name for k in rec.used) and not any(k[0] == a.name for k in rec.draws):
                data_free.append(a)
    finally:
        handle.remove()
    for (name, split, site), idx in sorted(rec.used.items()):
        _check_proportional(f"{name} [{split}] {site}", data[split][1], idx, failures)
    for (name, split), draws in sorted(rec.draws.items()):
        for idx in draws:
            _check_proportional(f"{name} [{split}] Context.subset", data[split][1], idx, failures)
    for split in ("train", "val"):
        _check_proportional(f"context [{split}] features", data[split][1], ctx.subset(split), failures)
    report = {f"{k[0]} [{k[1]}] {k[2]}": len(v) for k, v in sorted(rec.used.items())}
    assert not failures, "class-skewed samples:\n" + "\n".join(failures) + f"\n(all uses: {report})"

    # an analysis that neither drew nor fed samples must not touch the data at all
    def no_data(split):
        raise AssertionError(f"read the {split} split")

    for a in data_free:
        a.run(Context(model, no_data, eval_split="val", figures=False))
    # the analyses that use samples were all seen using them
    users = {k[0] for k in rec.used} | {k[0] for k in rec.draws}
    assert users | {a.name for a in data_free} == set(names)


