"""Writing a results folder: every file is written to a temporary name and renamed into place, so an
interrupted or repeated run never leaves a half-written file."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path

import torch


def _atomic_write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


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
    """A results folder: ``metrics.json``, ``per_sample.csv``, ``figures/*.png``, ``report.md``.

    ``staged=True``: files go to a hidden sibling ``.<name>.partial-<pid>`` and :meth:`commit` swaps
    it in with renames, so that ``root`` holds the results of one whole run or of none (a run killed
    mid-way leaves the previous results, if any, untouched; its partial folder is removed by the next
    run). ``root`` points at the folder being written (the partial one until :meth:`commit`).
    """

    def __init__(self, root: str | Path, staged: bool = False):
        self.final = Path(root)
        self.staged = bool(staged)
        self.root = self.final
        if self.staged:
            for old in self.final.parent.glob(f".{self.final.name}.partial-*"):
                if not _pid_alive(old.name.rsplit("-", 1)[-1]):
                    shutil.rmtree(old, ignore_errors=True)  # left by a killed run
            self.root = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.figures: dict[str, Path] = {}

    def commit(self) -> Path:
        """Move the staged folder to ``root`` (replacing earlier results) and return ``root``."""
        if not self.staged or self.root == self.final:
            return self.final
        old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.root, self.final)
        shutil.rmtree(old, ignore_errors=True)
        self.figures = {k: self.final / p.relative_to(self.root) for k, p in self.figures.items()}
        self.root = self.final
        return self.final

    def final_path(self, path: Path) -> Path:
        """Where a file written under the staged folder lives after :meth:`commit`."""
        path = Path(path)
        staged = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        return self.final / path.relative_to(staged) if path.is_relative_to(staged) else path

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
