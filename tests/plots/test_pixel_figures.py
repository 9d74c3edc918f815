"""fsl.plots.pixel_figures: every figure renders for 1- and 3-channel images and writes a PNG."""
from __future__ import annotations

import pytest
import torch

from fsl.inversion import (MorphResult, invert_to_features, level_set_walk, null_step_response,
                           pixel_line_feature_path)
from fsl.models import create_model
from fsl.plots import pixel_figures as pf
from fsl.spaces import class_residuals, first_layer_signal_images, ideal_inputs, selu_invert


@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_figures_render(tmp_path, channels):
    torch.manual_seed(0)
    shape = (channels, 6, 6)
    model = create_model("selu_mlp", input_shape=shape, hidden=(16, 8), mean=(0.5,) * channels,
                         std=(0.25,) * channels).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *shape, generator=g)
    with torch.no_grad():
        t = model.forward_features(x.flip(0))
    res = invert_to_features(model, t, x, options={"max_iter": 5, "fallback": {"al_iter": 3}})
    files = []
    f = pf.inversion_figure(x, res.images, res, path=tmp_path / "inv.png")
    files.append("inv.png")
    assert len(f.axes) == 12
    pf.image_grid(x, ["a", "b", "c", "d"], symmetric=True, path=tmp_path / "grid.png")
    files.append("grid.png")
    m = MorphResult(torch.tensor([2.0, 1.0, 0.0]), x[:3], torch.tensor([2.0, 1.0, 0.01]), torch.zeros(3),
                    torch.zeros(3), torch.tensor([True, True, False]), t[:3], None, None)
    pf.morph_strip(m, path=tmp_path / "morph.png")
    files.append("morph.png")
    p = pixel_line_feature_path(model, x[0], x[1], n=9)
    pf.path_plot({"pixel line": p.features}, p.features[0], p.features[-1], path=tmp_path / "path.png")
    files.append("path.png")
    w = level_set_walk(model, x[:2], n_steps=3, step=0.2, generator=g)
    pf.preimage_grid(w, path=tmp_path / "pre.png")
    files.append("pre.png")
    pf.step_response_figure(null_step_response(model, x[:2], k=2, generator=g), path=tmp_path / "steps.png")
    files.append("steps.png")
    si = first_layer_signal_images(model, k=5)
    cr = class_residuals(model, x, torch.tensor([0, 1, 0, 1]))
    pf.signal_figure(si, cr, path=tmp_path / "signal.png")
    files.append("signal.png")
    with torch.no_grad():
        feats = model.forward_features(x)
    pf.selu_inversion_figure(x, selu_invert(model, feats, x_true=x), path=tmp_path / "selu.png")
    files.append("selu.png")
    ii = ideal_inputs(model, x.repeat(5, 1, 1, 1), torch.arange(20) % 10, steps=2)
    pf.ideal_inputs_figure(ii, path=tmp_path / "ideal.png")
    files.append("ideal.png")
    for name in files:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, name
    pf.plt.close("all")
