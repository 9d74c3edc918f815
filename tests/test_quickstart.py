"""The examples of docs/quickstart.md, executed as they are written."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


def _example(kind: str) -> str:
    blocks = re.findall(rf"```python example={kind}\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, f"docs/quickstart.md needs one python example={kind} block"
    return blocks[0]


@pytest.mark.parametrize("kind", ["resnet", "lightning"])
def test_quickstart_example_runs(kind, capsys):
    ns: dict = {}
    exec(compile(_example(kind), f"docs/quickstart.md[{kind}]", "exec"), ns)
    out = capsys.readouterr().out.strip().splitlines()
    if kind == "resnet":
        assert ns["net"].head_name == "fc" and ns["net"].feature_domain.lower == 0.0
        margin, hull = (float(v) for v in out[-1].split())
        assert margin > 0 and hull >= 0 and ns["report"].metrics["analysis/margin/median"] == margin
    else:
        assert float(out[-1]) > 0 and ns["callback"].model.head is ns["trainer"].lightning_module.head


def test_quickstart_is_twenty_lines_of_user_code():
    """The ResNet example's fsl part (wrap, analyze, print) is a handful of lines."""
    src = _example("resnet")
    fsl_lines = [ln for ln in src.splitlines() if "fsl." in ln]
    assert 1 <= len(fsl_lines) <= 4 and len(src.splitlines()) <= 40


def test_readme_library_snippet_runs():
    """README's "The library" snippet, with a tiny model and random images for its free names."""
    import torch
    from torch import nn

    readme = (DOC.parents[1] / "README.md").read_text()
    src = re.search(r"### The library.*?```python\n(.*?)```", readme, re.S).group(1)
    torch.manual_seed(0)
    ns = {"model": nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 3)).eval(),
          "train_images": torch.rand(30, 3, 4, 4), "test_images": torch.rand(5, 3, 4, 4)}
    exec(compile(src, "README.md[library]", "exec"), ns)
    assert ns["r"].margin.shape == (5,) and bool((ns["r"].margin > 0).all())
    assert ns["h"].distance.shape == (5,) and ns["n_in"].shape == (30,)
