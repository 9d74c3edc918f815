"""Writing a results folder: every file is written to a temporary name and renamed into place, so an
interrupted or repeated run never leaves a half-written file."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import torch


def _atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _jsonable(v):
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class ResultsDir:
    """A results folder: ``metrics.json``, ``per_sample.csv``, ``figures/*.png``, ``report.md``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.figures: dict[str, Path] = {}

    def write_json(self, name: str, data: dict) -> Path:
        return _atomic_write_text(self.root / name, json.dumps(_jsonable(data), indent=1, sort_keys=True))

    def write_csv(self, name: str, columns: dict[str, torch.Tensor | list]) -> Path:
        keys = list(columns)
        n = len(next(iter(columns.values()))) if columns else 0
        vals = {k: (v.tolist() if isinstance(v, torch.Tensor) else list(v)) for k, v in columns.items()}
        for k in keys:
            if len(vals[k]) != n:
                raise ValueError(f"column {k!r} has {len(vals[k])} rows, expected {n}")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(keys)
        for i in range(n):
            w.writerow([vals[k][i] for k in keys])
        return _atomic_write_text(self.root / name, buf.getvalue())

    def save_figure(self, name: str, fig) -> Path:
        from fsl.plots.common import save_figure

        path = save_figure(fig, self.root / "figures" / f"{name}.png")
        self.figures[name] = path
        return path

    def write_text(self, name: str, text: str) -> Path:
        return _atomic_write_text(self.root / name, text)
