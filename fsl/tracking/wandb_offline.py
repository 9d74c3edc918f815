"""Read back what an offline W&B run logged, from its ``run-<id>.wandb`` file.

wandb (0.31) writes no summary JSON offline. The ``.wandb`` file is a 7-byte header
(``:W&B``, magic 0xBEE1, version) followed by a LevelDB log: 32 KiB blocks of records, each
``crc32 (4) | length (2, little endian) | type (1: full, 2: first, 3: middle, 4: last) | data``;
a record never starts in the last < 7 bytes of a block (those are zero padding). Each reassembled
record is a ``wandb.proto.wandb_internal_pb2.Record``.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path) -> Iterator[bytes]:
    """Yield the payload of every record of a W&B ``.wandb`` file."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r})")
    pos, pending = 7, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero padding / unwritten tail
            pos += left_in_block
            continue
        body = data[pos + HEADER: pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""
        else:
            raise ValueError(f"{path}: corrupt record type {kind} at byte {pos}")


def _value(json_str: str) -> Any:
    try:
        return json.loads(json_str)
    except json.JSONDecodeError:
        return json_str


@dataclass
class OfflineRun:
    """What a run logged: ``history`` rows (dicts keyed by metric name), ``summary``, ``config``, files."""

    run_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def series(self, key: str) -> list[Any]:
        """Every logged value of ``key``, in order."""
        return [row[key] for row in self.history if key in row]

    @property
    def keys(self) -> set[str]:
        out = set(self.summary)
        for row in self.history:
            out.update(row)
        return out


def _key(item) -> str:
    return "/".join(item.nested_key) if len(item.nested_key) else item.key


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse an offline run: ``path`` is the ``.wandb`` file or the ``offline-run-*`` folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {path}")
        path = files[0]
    run = OfflineRun()
    for payload in iter_records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.run_id = rec.run.run_id
            for item in rec.run.config.update:
                run.config[_key(item)] = _value(item.value_json)
        elif kind == "history":
            run.history.append({_key(item): _value(item.value_json) for item in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                run.summary[_key(item)] = _value(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                run.config[_key(item)] = _value(item.value_json)
        elif kind == "files":
            run.files.extend(f.path for f in rec.files.files)
    # the summary is each key's last history value unless set explicitly
    last = {}
    for row in run.history:
        last.update(row)
    run.summary = {**last, **run.summary}
    return run


def find_offline_runs(wandb_root: str | Path) -> list[Path]:
    """``offline-run-*`` folders under ``<wandb_root>/wandb`` (or ``wandb_root`` itself), oldest first."""
    root = Path(wandb_root)
    if (root / "wandb").is_dir():
        root = root / "wandb"
    return sorted(p for p in root.glob("offline-run-*") if p.is_dir())
