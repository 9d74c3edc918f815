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
