"""One folder per training run, never shared: ``outputs/<task>/<date>_<time>_<run id>/``.

* The run id is 8 random lowercase letters and digits (W&B's own id format) and is also the W&B run
  id, so a folder, its checkpoints and its W&B run carry the same name.
* The folder holds ``.fsl_run.json`` (run id, pid, host, start time), created exclusively, and is
  locked (``flock``) while a process trains in it: a second run aimed at the same folder -- an
  explicit ``paths.output_dir`` given twice, or the same run resumed twice at once -- stops with
  :class:`RunDirError` before it writes anything. The lock dies with its process (also on SIGKILL).
* Resuming from ``<run folder>/checkpoints/last.ckpt`` continues in that folder under the same id.
* A run that fails before it wrote a checkpoint removes its folder (it holds nothing worth
  keeping); a run that fails later keeps it and writes ``FAILED`` with the error.

The config resolvers ``${fsl_run_id:${ckpt_path}}`` and ``${fsl_run_dir:<root>,<run_id>,<ckpt_path>}``
compute the id and folder once per composed config (OmegaConf caches resolver results per config),
so Hydra's run dir, ``paths.output_dir`` and the W&B id agree.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import secrets
import shutil
import socket
import string
import sys
from pathlib import Path

from fsl.errors import FslError

RUN_MARKER = ".fsl_run.json"
FAILED_MARKER = "FAILED"
_ALPHABET = string.ascii_lowercase + string.digits
_LOCKS: dict[str, int] = {}  # folder -> fd of its locked marker, held by this process
_CREATED: dict[str, list[Path]] = {}  # folder -> the folders its first claim created (innermost first)


class RunDirError(FslError, RuntimeError):
    """The run folder belongs to another run, or is in use by another process."""


def new_run_id() -> str:
    """8 random characters from ``[a-z0-9]`` (36^8 = 2.8e12 ids)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(8))


def read_marker(folder: str | Path) -> dict | None:
    """The ``.fsl_run.json`` of a run folder, or None when it has none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None


def checkpoint_run_folder(ckpt_path: str | Path | None) -> Path | None:
    """The run folder of ``<run folder>/checkpoints/<name>.ckpt`` when it is an fsl run folder."""
    if not ckpt_path:
        return None
    p = Path(str(ckpt_path))
    folder = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return folder if read_marker(folder) is not None else None


def resolve_run_id(ckpt_path=None) -> str:
    """Resolver ``fsl_run_id``: the id of the run that ``ckpt_path`` belongs to, else a new one."""
    folder = checkpoint_run_folder(ckpt_path)
    return str(read_marker(folder)["run_id"]) if folder is not None else new_run_id()


def resolve_run_dir(root, run_id, ckpt_path=None) -> str:
    """Resolver ``fsl_run_dir``: the checkpoint's run folder when resuming one, else
    ``<root>/<YYYY-mm-dd_HH-MM-SS>_<run_id>``."""
    folder = checkpoint_run_folder(ckpt_path)
    if folder is not None and str(read_marker(folder).get("run_id")) == str(run_id):
        return str(folder)
    return f"{root}/{_dt.datetime.now():%Y-%m-%d_%H-%M-%S}_{run_id}"


def claim_run_dir(folder: str | Path, run_id: str) -> Path:
    """Create ``folder`` (if needed), make it run ``run_id``'s and lock it for this process.

    The marker is created with ``O_EXCL``: of two processes racing for one folder exactly one wins.
    Raises :class:`RunDirError` when the folder belongs to another run or another process holds its
    lock. Claiming a folder this process already holds is a no-op.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _LOCKS:
        return folder
    _CREATED.setdefault(key, [p for p in [folder, *folder.parents] if not p.exists()])
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / RUN_MARKER
    info = {"run_id": str(run_id), "pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(timespec="seconds")}
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        os.write(fd, json.dumps(info).encode())
    except FileExistsError:
        owner = read_marker(folder) or {}
        if str(owner.get("run_id")) != str(run_id):
            raise RunDirError(f"run folder {folder} belongs to run {owner.get('run_id')!r} (started "
                              f"{owner.get('started')}); pick another paths.output_dir, or resume that run "
                              f"with ckpt_path={folder}/checkpoints/last.ckpt") from None
        fd = os.open(marker, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        owner = read_marker(folder) or {}
        raise RunDirError(f"run folder {folder} is in use by another process (run {owner.get('run_id')!r}); "
                          f"wait for it to finish or pick another paths.output_dir") from None
    _LOCKS[key] = fd
    return folder


def release_run_dir(folder: str | Path) -> None:
    """Drop this process's lock on ``folder`` (no-op when it holds none)."""
    fd = _LOCKS.pop(str(Path(folder).resolve()), None)
    if fd is not None:
        os.close(fd)


def has_checkpoints(folder: str | Path) -> bool:
    ckpts = Path(folder) / "checkpoints"
    return ckpts.is_dir() and any(ckpts.glob("*.ckpt"))


def fail_run_dir(folder: str | Path, error: BaseException) -> str:
    """After a failed run: remove ``folder`` when it holds no checkpoint, else mark it ``FAILED``.
    Returns ``"removed"`` or ``"marked"``."""
    folder = Path(folder)
    release_run_dir(folder)
    if not folder.exists():
        return "removed"
    if not has_checkpoints(folder):
        shutil.rmtree(folder, ignore_errors=True)
        for parent in _CREATED.pop(str(folder.resolve()), [])[1:]:  # e.g. outputs/train/, if now empty
            try:
                parent.rmdir()
            except OSError:
                break
        return "removed"
    (folder / FAILED_MARKER).write_text(f"{_dt.datetime.now().isoformat(timespec='seconds')} "
                                        f"{type(error).__name__}: {error}\n")
    return "marked"


try:  # Hydra's callback API: claim the folder before Hydra writes .hydra/ and the log into it
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object


class ClaimRunDir(_HydraCallback):
    """Hydra callback (``hydra.callbacks`` in train.yaml): :func:`claim_run_dir` on ``hydra.run.dir``
    at ``on_run_start``, so that a folder owned by another run is never written to."""

    def on_run_start(self, config, **kwargs) -> None:
        if process_rank() > 0:  # DDP ranks > 0 are launched into rank 0's folder
            return
        try:
            claim_run_dir(config.hydra.run.dir, config.run_id)
        except RunDirError as exc:
            # Hydra turns a callback's Exception into a warning and runs on; SystemExit stops it
            # before it writes .hydra/ and the log into the other run's folder
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1) from None


def process_rank() -> int:
    """The global rank from the launcher's environment (0 outside DDP): torchrun's ``RANK``, SLURM's
    ``SLURM_PROCID`` (``srun`` sets no ``RANK``), else ``LOCAL_RANK``."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 0
