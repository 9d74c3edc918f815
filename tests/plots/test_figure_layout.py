"""Layout of every figure of fsl.plots, drawn (Agg) from small synthetic results.

For each figure :func:`layout_problems` checks that
1. no two drawn texts (titles, axis / tick / colour-bar labels, annotations, legend entries) overlap,
2. every drawn text lies inside the figure canvas (nothing clipped at an edge),
3. no text runs into an image (a title into the image above it); only texts placed on an axes on purpose
   (``ax.text``: the values written in heat-map cells) may lie on that axes' image,
4. every value-scaled image (an ``AxesImage`` / ``QuadMesh`` that is not a plain RGB image or a grey image
   on 0..1 of an input) has a colour bar with a label.
A deliberately broken figure of each kind shows that the checks can fail.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from unittest import mock

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.collections import QuadMesh  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from fsl.plots import detection_figures as df  # noqa: E402
from fsl.plots import featinv_figures as fif  # noqa: E402
from fsl.plots import featmap_figures as fmf  # noqa: E402
from fsl.plots import geometry_figures as gf  # noqa: E402
from fsl.plots import pixel_figures as pf  # noqa: E402

TOL = 1.0  # pixels

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MANIPULATIONS = ["rot90", "rot180", "rot270", "hflip", "vflip", "noise", "mask_tl", "mask_br", "mask_centre",
                 "mask_centre_small", "shift", "rotate", "perspective", "brightness", "contrast", "blur", "occlusion"]
LAYERS = ["stage1", "stage2", "stage3", "pooled"]


# ---------------------------------------------------------------------------------------------- the checks
def _drawn_texts(fig):
    """Draw ``fig`` and return ``[(text, window extent)]`` of every text actually drawn with a non-empty
    string (tick labels outside the view limits, texts of invisible parents etc. are not drawn)."""
    drawn = {}
    orig = Text.draw

    def spy(self, renderer):
        orig(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn[id(self)] = self

    with mock.patch.object(Text, "draw", spy):
        fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if id(t) in drawn and t.get_visible() and t.get_text().strip()]
    return [(t, t.get_window_extent(r)) for t in texts]


def _name(t: Text) -> str:
    s = t.get_text().replace("\n", "\\n")
    return repr(s if len(s) <= 40 else s[:37] + "...")


def _colorbars(fig):
    """Every colour bar of ``fig`` (including those in inset axes)."""
    out = []
    for ax in fig.findobj(lambda a: isinstance(a, Axes)):
        cb = getattr(ax, "_colorbar", None)
        if cb is not None:
            out.append(cb)
    return out


def _cbar_label(cb) -> str:
    return (cb.ax.get_ylabel() if cb.orientation == "vertical" else cb.ax.get_xlabel()).strip()


def _is_input_image(im) -> bool:
    """A plain image of an input: RGB(A) pixels, or one grey channel on the fixed 0..1 grey scale."""
    if not isinstance(im, AxesImage):
        return False
    a = im.get_array()
    if a is not None and a.ndim == 3:
        return True
    return im.get_cmap().name == "gray" and tuple(map(float, im.get_clim())) == (0.0, 1.0)


def layout_problems(fig, tol: float = TOL) -> list[str]:
    """Everything wrong with the layout of ``fig`` (empty list: none); draws the figure."""
    items = _drawn_texts(fig)
    problems = []
    fb = fig.bbox
    for t, bb in items:
        if bb.x0 < fb.x0 - tol or bb.y0 < fb.y0 - tol or bb.x1 > fb.x1 + tol or bb.y1 > fb.y1 + tol:
            problems.append(f"text {_name(t)} outside the canvas: extent {np.round(bb.extents, 1).tolist()} "
                            f"vs figure {np.round(fb.extents, 1).tolist()}")
    if items:
        ext = np.array([bb.extents for _, bb in items])  # x0, y0, x1, y1
        ox = np.minimum(ext[:, None, 2], ext[None, :, 2]) - np.maximum(ext[:, None, 0], ext[None, :, 0])
        oy = np.minimum(ext[:, None, 3], ext[None, :, 3]) - np.maximum(ext[:, None, 1], ext[None, :, 1])
        hit = np.triu((ox > tol) & (oy > tol), k=1)
        for i, j in zip(*np.nonzero(hit)):
            problems.append(f"texts overlap: {_name(items[i][0])} and {_name(items[j][0])} "
                            f"({ox[i, j]:.1f} x {oy[i, j]:.1f} px)")
    cbars = _colorbars(fig)
    cb_axes = {id(cb.ax) for cb in cbars}
    r = fig.canvas.get_renderer()
    images = [im for im in fig.findobj(lambda a: isinstance(a, (AxesImage, QuadMesh)))
              if im.axes is not None and id(im.axes) not in cb_axes and im.get_visible() and im.axes.get_visible()]
    for im in images:
        ax = im.axes
        area = ax.bbox if isinstance(im, QuadMesh) else Bbox.intersection(im.get_window_extent(r), ax.bbox)
        if area is None:
            continue
        own = {id(t) for t in ax.texts}
        for t, bb in items:
            if id(t) in own:
                continue
            ox = min(bb.x1, area.x1) - max(bb.x0, area.x0)
            oy = min(bb.y1, area.y1) - max(bb.y0, area.y0)
            if ox > tol and oy > tol:
                where = (ax.get_title() or ax.get_ylabel() or "an axes").replace("\n", " ")
                problems.append(f"text {_name(t)} runs into the image of {where!r} ({ox:.1f} x {oy:.1f} px)")
    for im in images:
        ax = im.axes
        if _is_input_image(im):
            continue
        clim, cmap = tuple(map(float, im.get_clim())), im.get_cmap().name
        own = [cb for cb in cbars if cb.mappable is im]
        shared = [cb for cb in cbars if tuple(map(float, cb.mappable.get_clim())) == clim
                  and cb.mappable.get_cmap().name == cmap]
        cands = own or shared
        where = (ax.get_title() or ax.get_ylabel() or "untitled axes").replace("\n", " ")
        if not cands:
            problems.append(f"value-scaled image ({cmap}, {clim[0]:.3g}..{clim[1]:.3g}) in {where!r} has no colour bar")
        elif not any(_cbar_label(cb) for cb in cands):
            problems.append(f"colour bar of the image in {where!r} has no label")
    return problems


def assert_layout(fig, what: str = ""):
    problems = layout_problems(fig)
    plt.close(fig)
    assert not problems, f"{what}: {len(problems)} layout problem(s):\n  " + "\n  ".join(problems[:25])


# ---------------------------------------------------------------------------------------- synthetic inputs
def _images(n, c=1, h=28, w=28, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _signed(n, c=1, h=28, w=28, seed=1):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 0.3


def _inversion_result(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(feature_residual=torch.rand(n, generator=g) * 1e-2, distance=torch.rand(n, generator=g) * 7,
                           success=torch.rand(n, generator=g) > 0.5)


def _geometry(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    margin = torch.rand(n, generator=g) * 3
    hull = torch.rand(n, generator=g) * 4
    pred = torch.randint(0, 10, (n,), generator=g)
    labels = torch.where(torch.rand(n, generator=g) < 0.8, pred, torch.randint(0, 10, (n,), generator=g))
    closest = (pred + torch.randint(1, 10, (n,), generator=g)) % 10
    return SimpleNamespace(margin=margin, hull=hull, pred=pred, labels=labels, closest=closest,
                           correct=pred == labels, ambiguity=hull - margin, images=_images(n, seed=seed))


def _curves():
    rng = np.random.default_rng(0)
    out = {}
    for name, shift in [("margin", 2.0), ("ambiguity", 1.0), ("msp", 0.3), ("energy", 0.0), ("mahalanobis", -0.5),
                        ("knn", 0.8), ("fdbd", 1.5)]:
        fpr = np.concatenate([[0], np.sort(rng.random(50)), [1]])
        tpr = np.clip(fpr ** np.exp(-shift), 0, 1)
        out[name] = {"fpr": fpr, "tpr": tpr, "auroc": float(np.trapezoid(tpr, fpr))}
    out["perfect"] = {"fpr": np.array([0.0, 0.0, 1.0]), "tpr": np.array([0.0, 1.0, 1.0]), "auroc": 1.0}
    out["inverted"] = {"fpr": np.array([0.0, 1.0, 1.0]), "tpr": np.array([0.0, 0.0, 1.0]), "auroc": 0.0}
    out["missing"] = {"fpr": np.array([]), "tpr": np.array([]), "auroc": float("nan")}
    return out


def _heat_panels(metric, names=("linear", "procrustes", "global_linear"), seed=0):
    rng = np.random.default_rng(seed)
    channels = np.array([16, 32, 64, 800])
    out = {}
    for k, name in enumerate(names):
        if metric == "erank":
            a = rng.random((len(MANIPULATIONS), len(LAYERS))) * channels * (k + 1) / 3
        else:
            a = rng.random((len(MANIPULATIONS), len(LAYERS)))
        a[3, 1] = np.nan
        out[name] = a
    return out


def _featmap_columns(n, c=1):
    return {"original": _images(n, c, seed=1), "manipulated": _images(n, c, seed=2),
            "decoded true": _images(n, c, seed=3), "decoded mapped (linear)": _images(n, c, seed=4)}


def _walk(b=3, t=8):
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(images=torch.rand(t + 1, b, 1, 28, 28, generator=g),
                           residual=torch.rand(t + 1, b, generator=g) * 1e-4,
                           distance=torch.cumsum(torch.rand(t + 1, b, generator=g), 0))


def _signal(c=1, k=10):
    g = torch.Generator().manual_seed(0)
    si = SimpleNamespace(layer="layers.0", weights=torch.randn(k, c, 28, 28, generator=g),
                         images=torch.randn(k, c, 28, 28, generator=g),
                         singular_values=torch.sort(torch.rand(k, generator=g) * 20, descending=True).values,
                         condition=123.4)
    cr = SimpleNamespace(residual_images=torch.randn(k, c, 28, 28, generator=g) * 0.1)
    return si, cr


def _selu(n=4):
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(images=torch.randn(n, 784, generator=g) * 3, row_component=torch.randn(n, 784, generator=g),
                           image_error=torch.rand(n, generator=g) * 300)


def _ideal(n=10):
    from fsl.spaces.ideal import INITS

    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(ideal=torch.randn(n, n, generator=g),
                           initial={k: torch.rand(n, 1, 28, 28, generator=g) for k in INITS},
                           refined={k: torch.rand(n, 1, 28, 28, generator=g) for k in INITS},
                           distance_before={k: torch.rand(n, generator=g) * 30 for k in INITS},
                           distance_after={k: torch.rand(n, generator=g) * 10 for k in INITS})


def _step_response():
    g = torch.Generator().manual_seed(0)
    h = torch.logspace(-4, -1, 6, dtype=torch.float64)
    return SimpleNamespace(steps=h, actual=h ** 2 * (1 + torch.rand(3, 4, 6, generator=g)),
                           random_actual=h * (1 + torch.rand(3, 4, 6, generator=g)),
                           slope=torch.full((3,), 1.98), random_slope=torch.full((3,), 1.01))


def _inversion_as_called(n=12, c=1):
    """fsl.analysis.studies.pixels.inversion._save_inversion_figure: the figure, then a suptitle and tight_layout(rect)."""
    refs, x = _images(n, c), _images(n, c, seed=5)
    fig = pf.inversion_figure(refs, x, _inversion_result(n), targets_label="flip point", max_items=n)
    fig.suptitle("closest flip point (paper Fig. 3); references: sample x4, black x4, white x4", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def _paths():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 1, 9, dtype=torch.float64)[:, None]
    line = a + t * (b - a)
    bent = line + 0.3 * torch.sin(math.pi * t) * torch.randn(16, generator=g, dtype=torch.float64)
    return {"straight pixel line (Fig. 9)": line, "morph, shrinking ball around N(b) (Fig. 12)": bent}, a, b


def _morph(k=9):
    r = torch.linspace(2.0, 0.0, k)
    return SimpleNamespace(radii=r, feature_distance=r + 0.01, success=torch.arange(k) % 3 != 0, images=_images(k))


def _spectra():
    from fsl.analysis.studies.pixels.signal import spectra_figure

    g = torch.Generator().manual_seed(0)
    sp = [SimpleNamespace(name=f"layers.{i}", kind="linear", singular_values=torch.sort(torch.rand(30, generator=g),
                                                                                         descending=True).values,
                          condition=float(10 ** i)) for i in range(5)]
    return spectra_figure(sp)


GEO = _geometry()

FIGURES = {
    # geometry
    "distance_histograms": lambda: gf.distance_histograms(GEO.margin, GEO.hull),
    "margin_vs_hull": lambda: gf.margin_vs_hull(GEO.margin, GEO.hull, GEO.correct),
    "closest_class": lambda: gf.closest_class_bars(GEO.closest, GEO.pred, CLASSES),
    "most_ambiguous": lambda: gf.ambiguity_grid(GEO.images, GEO.ambiguity, GEO.labels, GEO.pred, CLASSES, k=16)[0],
    "least_ambiguous": lambda: gf.ambiguity_grid(GEO.images, GEO.ambiguity, GEO.labels, GEO.pred, CLASSES, k=16,
                                                 most=False)[0],
    "table1_margins": lambda: gf.margin_table_figure(
        torch.where(torch.rand(5, 10, generator=torch.Generator().manual_seed(3)) < 0.1, torch.tensor(float("inf")),
                    1 + 4 * torch.rand(5, 10, generator=torch.Generator().manual_seed(4))),
        CLASSES, [0, 1, 2, 3, 4], torch.tensor([9, 2, 1, 1, 6])),
    # detection
    "roc": lambda: df.roc_figure(_curves(), title="pgd: adversarial vs clean (epoch 12)"),
    "roc_single": lambda: df.roc_figure({"margin": _curves()["perfect"]}),
    "score_histograms": lambda: df.score_histograms(
        {k: (np.random.default_rng(0).normal(size=200), np.r_[np.random.default_rng(1).normal(1, size=80), np.inf])
         for k in ("margin", "ambiguity", "msp", "mahalanobis")}, title="pgd"),
    # featmap / featinv
    "featmap_cosine": lambda: fmf.featmap_heatmap(_heat_panels("cosine"), MANIPULATIONS, LAYERS, "cosine"),
    "featmap_erank": lambda: fmf.featmap_heatmap(_heat_panels("erank"), MANIPULATIONS, LAYERS, "erank"),
    "featmap_erank_channels": lambda: fmf.featmap_heatmap(_heat_panels("erank", names=("linear",)), MANIPULATIONS,
                                                          LAYERS, "erank", channels=[16, 32, 64, 800]),
    "featmap_one_panel": lambda: fmf.featmap_heatmap({"linear": np.random.default_rng(0).random((3, 2))},
                                                     MANIPULATIONS[:3], LAYERS[:2], "top1_manip"),
    "featmap_many_panels": lambda: fmf.featmap_heatmap(
        _heat_panels("js", names=("linear", "procrustes", "global_linear", "conv1x1", "mlp", "trained")),
        MANIPULATIONS, LAYERS, "js"),
    "featmap_images_one": lambda: fif.featinv_grid(_featmap_columns(1), row_labels=["mask_centre_small"],
                                                   title="FeatMap, layer stage3"),
    "featmap_images_many": lambda: fif.featinv_grid(_featmap_columns(8, 3), row_labels=MANIPULATIONS[:8],
                                                    title="FeatMap, layer stage3"),
    "featinv_grid": lambda: fif.featinv_grid(
        {"original": _images(6), "deterministic": _images(6, seed=2), **{f"sample {k}": _images(6, seed=3 + k)
                                                                          for k in range(1, 5)},
         "inversion": _images(6, seed=9)}, std=_images(6, seed=10) * 0.4, std_after="sample 4",
        row_labels=[CLASSES[i] for i in range(6)], title="FeatInv, layer stage3"),
    # pixel studies
    "image_grid_signed": lambda: pf.image_grid(_signed(4), ["a", "b", "c", "d"], symmetric=True),
    "image_grid_signed_rgb": lambda: pf.image_grid(_signed(12, 3), [f"#{i}" for i in range(12)], ncols=5,
                                                   symmetric=True, suptitle="signed RGB"),
    "pixels_flip_points": _inversion_as_called,
    "pixels_flip_points_rgb": lambda: _inversion_as_called(4, 3),
    "inversion_figure": lambda: pf.inversion_figure(_images(3), _images(3, seed=2), _inversion_result(3)),
    "pixels_morph": lambda: pf.morph_strip(_morph()),
    "pixels_paths": lambda: pf.path_plot(*_paths(), labels=("a (#0)", "b (#17)"),
                                         title="feature-space paths, two-point equidistant projection"),
    "pixels_preimage_grid": lambda: pf.preimage_grid(_walk()),
    "pixels_signal_spaces": lambda: pf.signal_figure(*_signal()),
    "pixels_signal_spaces_rgb": lambda: pf.signal_figure(_signal(3, 4)[0], None),
    "pixels_selu_inversion": lambda: pf.selu_inversion_figure(_images(4), _selu(4)),
    "pixels_ideal_inputs": lambda: pf.ideal_inputs_figure(_ideal()),
    "pixels_step_response": lambda: pf.step_response_figure(_step_response()),
    "pixels_layer_spectra": _spectra,
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_layout(name):
    assert_layout(FIGURES[name](), name)


def test_featmap_images_height_follows_rows():
    """One decoded row gets a short figure (no empty band), eight rows a tall one."""
    one = fif.featinv_grid(_featmap_columns(1), row_labels=["rot90"], title="FeatMap, layer stage3")
    eight = fif.featinv_grid(_featmap_columns(8), row_labels=MANIPULATIONS[:8], title="FeatMap, layer stage3")
    h1, h8 = one.get_size_inches()[1], eight.get_size_inches()[1]
    row = eight.axes[4].get_position().height * h8  # an image's height in inches
    assert h1 < 2 * row, (h1, row)
    assert h8 > 7.5 * row
    plt.close(one), plt.close(eight)


def test_roc_curves_off_the_frame():
    """AUROC 0 / 1 curves lie on x = 0 / y = 1: the axes are padded so they stay visible; legend outside."""
    fig = df.roc_figure(_curves())
    ax = fig.axes[0]
    assert ax.get_xlim()[0] < 0 and ax.get_xlim()[1] > 1 and ax.get_ylim()[0] < 0 and ax.get_ylim()[1] > 1
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    leg, frame = ax.get_legend().get_window_extent(r), ax.get_window_extent(r)
    assert leg.y1 <= frame.y0 or leg.x0 >= frame.x1, "the legend covers the curves"
    assert any("AUROC 1.000" in t.get_text() for t in ax.get_legend().get_texts())
    plt.close(fig)


def test_erank_heatmap_is_scaled_per_layer():
    panels = _heat_panels("erank")
    fig = fmf.featmap_heatmap(panels, MANIPULATIONS, LAYERS, "erank")
    ims = [im for ax in fig.axes for im in ax.get_images()]
    assert ims and all(float(np.nanmax(im.get_array())) <= 1.0 + 1e-9 for im in ims)
    labels = [_cbar_label(cb) for cb in _colorbars(fig)]
    assert labels and all("layer" in s for s in labels), labels
    plt.close(fig)
    fig = fmf.featmap_heatmap(panels, MANIPULATIONS, LAYERS, "erank", channels=[16, 32, 64, 800])
    assert any("/ C" in _cbar_label(cb) for cb in _colorbars(fig))
    plt.close(fig)


# ------------------------------------------------------------------------- the checks can fail (bad figures)
def _bad_overlap():
    fig, axes = plt.subplots(2, 1, figsize=(2, 1.5))
    for ax in axes:
        ax.set_title("a long title that hits the axes above it", fontsize=9)
        ax.set_xlabel("an x label under the axes", fontsize=9)
    return fig


def _bad_clipped():
    fig, ax = plt.subplots(figsize=(3, 2))
    fig.subplots_adjust(left=0.0)
    ax.set_ylabel("clipped y label")
    return fig


def _bad_no_colorbar():
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow(np.random.default_rng(0).normal(size=(5, 5)), cmap="RdBu_r", vmin=-2, vmax=2)
    return fig


def _bad_unlabelled_colorbar():
    fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
    fig.colorbar(ax.imshow(np.random.default_rng(0).random((5, 5)), cmap="viridis"), ax=ax)
    return fig


def _bad_title_on_image():
    fig, axes = plt.subplots(2, 2, figsize=(2.5, 2.5))
    fig.subplots_adjust(hspace=0.05)
    for ax in axes.flat:
        ax.imshow(np.random.default_rng(0).random((6, 6)), cmap="gray", vmin=0, vmax=1)
        ax.set_title("two-line\ntitle", fontsize=7)
    return fig


def _bad_legend_on_text():
    fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
    ax.plot([0, 1], label="curve with a label")
    ax.text(0.5, 0.5, "annotation under the legend", transform=ax.transAxes, ha="center", va="center")
    ax.legend(loc="center")
    return fig


@pytest.mark.parametrize("build, expect", [(_bad_overlap, "texts overlap"), (_bad_clipped, "outside the canvas"),
                                           (_bad_no_colorbar, "has no colour bar"),
                                           (_bad_unlabelled_colorbar, "has no label"),
                                           (_bad_legend_on_text, "texts overlap"),
                                           (_bad_title_on_image, "runs into the image")])
def test_checks_detect_bad_figures(build, expect):
    fig = build()
    problems = layout_problems(fig)
    plt.close(fig)
    assert any(expect in p for p in problems), problems


def test_input_images_need_no_colorbar():
    fig, axes = plt.subplots(1, 2, figsize=(3, 2), layout="constrained")
    axes[0].imshow(np.random.default_rng(0).random((4, 4)), cmap="gray", vmin=0, vmax=1)
    axes[1].imshow(np.random.default_rng(0).random((4, 4, 3)))
    assert layout_problems(fig) == []
    plt.close(fig)
