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

from fsl.errors import FslError


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


MANIFEST = "manifest.json"


class ResultsFolderError(FslError, RuntimeError):
    """A results folder fsl may not write into (it holds files fsl did not write)."""


def read_manifest(folder: str | Path) -> dict | None:
    """The ``manifest.json`` of a results folder (None when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ResultsFolderError(f"{path} is not a readable fsl manifest ({e}); move the folder away or choose "
                                 f"another output folder") from e
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ResultsFolderError(f"{path} is not an fsl manifest (no 'files' list); choose another output folder")
    return data


def claim_new_file(path: str | Path) -> Path:
    """A path a single-file writer (``benchmarks/*.py --save``) may create: refused when something is
    already there, since fsl cannot know it wrote it (checked before the work, so no time is lost)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise ResultsFolderError(f"{path} exists; fsl never overwrites a file it may not have written: "
                                 f"choose another path or move that file away")
    if not path.parent.is_dir():
        raise ResultsFolderError(f"{path.parent} does not exist; create it or choose another path")
    return path


def save_new(obj, path: str | Path) -> Path:
    """``torch.save(obj)`` to a new file at ``path`` (:func:`claim_new_file`), written whole."""
    path = claim_new_file(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def _is_fsl_entry(path: Path) -> bool:
    """A staged partial folder of a run, or a sub-study folder with its own manifest."""
    return (path.name.startswith(".") and ".partial-" in path.name) or (path.is_dir() and (path / MANIFEST).is_file())


def check_results_folder(folder: str | Path) -> dict | None:
    """Refuse a non-empty folder that fsl did not write; return its manifest (None for a new folder).

    A folder is fsl's when it holds a ``manifest.json``; a folder whose only entries are sub-study
    folders with their own manifest is fsl's too.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ResultsFolderError(f"output folder {folder} is a file; choose a folder (output_dir=...)")
    manifest = read_manifest(folder)
    if manifest is None and folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not _is_fsl_entry(p))
        if foreign:
            raise ResultsFolderError(
                f"output folder {folder} is not empty and has no {MANIFEST}, so fsl did not write it (it holds "
                f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); fsl never deletes files it did not "
                f"write: choose a new or empty folder (output_dir=...) or move those files away")
    return manifest


class ResultsDir:
    """A results folder: ``metrics.json``, ``per_sample.csv``, ``figures/*.png``, ``report.md``, and
    ``manifest.json`` listing the files fsl wrote there.

    A folder that is not empty and has no manifest is refused (:class:`ResultsFolderError`): fsl
    never deletes a file it did not write. A re-run replaces exactly the files of the previous
    manifest: files that are not in it (a user's notes, sub-study folders with their own manifest)
    stay, and a file of the new run that would overwrite one of them is an error before anything
    is replaced.

    ``staged=True``: files go to a hidden sibling ``.<name>.partial-<pid>`` and :meth:`commit` moves
    them in, one rename per file, after writing a manifest that lists the old and new files (so an
    interrupted commit leaves a folder whose every fsl file is still listed); then it removes the
    previous run's files that this run did not write and writes the final manifest. A run killed
    before :meth:`commit` leaves the previous results untouched; its partial folder is removed by
    the next run. ``root`` points at the folder being written (the partial one until :meth:`commit`).
    Unstaged, files are written in place and the manifest is updated with every file.

    ``meta``: extra manifest entries (provenance: commit, config, versions, ...).
    """

    def __init__(self, root: str | Path, staged: bool = False, meta: dict | None = None):
        self.final = Path(root)
        self.staged = bool(staged)
        self.previous = check_results_folder(self.final) or {"files": []}
        self.meta = dict(meta or {})
        self.written: set[str] = set()
        self.root = self.final
        if self.staged:
            for old in self.final.parent.glob(f".{self.final.name}.partial-*"):
                if not _pid_alive(old.name.rsplit("-", 1)[-1]):
                    shutil.rmtree(old, ignore_errors=True)  # fsl's own, left by a killed run
            self.root = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.figures: dict[str, Path] = {}
        if not self.staged:
            self._write_manifest(sorted(set(self.previous["files"])), state="writing")

    @property
    def files(self) -> list[str]:
        """The files this run wrote, relative to the folder."""
        return sorted(self.written)

    def _record(self, path: Path) -> Path:
        rel = path.relative_to(self.root).as_posix()
        if rel == MANIFEST:
            raise ValueError(f"{MANIFEST} is written by ResultsDir itself")
        final = self.final / rel
        if rel not in self.previous["files"] and rel not in self.written and (final.exists() or final.is_symlink()):
            raise ResultsFolderError(f"{final} exists and fsl did not write it (it is not in {self.final / MANIFEST}); "
                                     f"fsl never overwrites such a file: move it away or choose another output folder")
        self.written.add(rel)
        return path

    def _write_manifest(self, files: list[str], state: str) -> None:
        data = {"written_by": "fsl", "state": state, "files": files, **self.meta}
        _atomic_write_text(self.final / MANIFEST, json.dumps(_jsonable(data), indent=1, sort_keys=True) + "\n")

    def _finish_unstaged(self) -> None:
        self._write_manifest(sorted(set(self.previous["files"]) | self.written), state="complete")

    def commit(self) -> Path:
        """Move the staged files into ``root``, remove the previous run's files this run did not
        write, write the manifest, and return ``root``."""
        if not self.staged or self.root == self.final:
            self._finish_unstaged()
            return self.final
        old = set(self.previous["files"])
        for rel in self.written:  # checked again: a file may have appeared since it was written
            dest = self.final / rel
            if rel not in old and (dest.exists() or dest.is_symlink()):
                raise ResultsFolderError(f"{dest} appeared while the results were written and fsl did not write it; "
                                         f"nothing was replaced (the new results are in {self.root})")
        self.final.mkdir(parents=True, exist_ok=True)
        self._write_manifest(sorted(old | self.written), state="committing")
        for rel in sorted(self.written):
            dest = self.final / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / rel, dest)
        for rel in sorted(old - self.written):
            gone = self.final / rel
            if gone.is_file() or gone.is_symlink():
                gone.unlink()
            _remove_empty_parents(gone.parent, self.final)
        self._write_manifest(sorted(self.written), state="complete")
        shutil.rmtree(self.root, ignore_errors=True)
        self.figures = {k: self.final / p.relative_to(self.root) for k, p in self.figures.items()}
        self.root = self.final
        return self.final

    def final_path(self, path: Path) -> Path:
        """Where a file written under the staged folder lives after :meth:`commit`."""
        path = Path(path)
        staged = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        return self.final / path.relative_to(staged) if path.is_relative_to(staged) else path

    def _write(self, name: str, text: str) -> Path:
        path = self._record(self.root / name)
        _atomic_write_text(path, text)
        if not self.staged:
            self._write_manifest(sorted(set(self.previous["files"]) | self.written), state="writing")
        return path

    def write_json(self, name: str, data: dict) -> Path:
        return self._write(name, json.dumps(_jsonable(data), indent=1, sort_keys=True))

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
        return self._write(name, buf.getvalue())

    def save_figure(self, name: str, fig) -> Path:
        from fsl.plots.common import save_figure

        path = self._record(self.root / "figures" / f"{name}.png")
        save_figure(fig, path)
        self.figures[name] = path
        if not self.staged:
            self._write_manifest(sorted(set(self.previous["files"]) | self.written), state="writing")
        return path

    def copy_file(self, name: str, source: str | Path) -> Path:
        """Copy ``source`` into the folder as ``name`` (recorded in the manifest)."""
        path = self._record(self.root / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        shutil.copyfile(source, tmp)
        os.replace(tmp, path)
        if not self.staged:
            self._write_manifest(sorted(set(self.previous["files"]) | self.written), state="writing")
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self._write(name, text)


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and folder.is_relative_to(stop):
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
