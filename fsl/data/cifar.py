"""CIFAR-10, binary version: fixed-size records parsed with numpy (never unpickled)."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np

from fsl.data.errors import ChecksumError, DatasetNotFoundError
from fsl.data.files import download, file_digest, network_allowed, verify_file

ARCHIVE = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
URL = "https://www.cs.toronto.edu/~kriz/" + ARCHIVE
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILES = ["test_batch.bin"]
MANIFEST = "fsl_sha256.json"  # written after a verified extraction
RECORD = 1 + 3 * 32 * 32
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_cifar_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes).

    Returns ``images`` (N, 3, 32, 32) uint8 and ``labels`` (N,) int64.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ValueError(f"{path}: size {raw.size} bytes is not a multiple of the CIFAR-10 record "
                         f"size {RECORD}; the file is truncated or not a CIFAR-10 binary batch")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ValueError(f"{path}: label byte {labels.max()} > 9; not a CIFAR-10 binary batch")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _write_manifest(folder: Path) -> None:
    digests = {name: file_digest(folder / name) for name in TRAIN_FILES + TEST_FILES}
    tmp = folder / (MANIFEST + ".part")
    tmp.write_text(json.dumps(digests, indent=1))
    os.replace(tmp, folder / MANIFEST)


def prepare_cifar10(root: str | Path) -> Path:
    """Return the verified ``cifar-10-batches-bin`` folder under ``root``.

    The archive (md5-checked) is the unit of trust: it is found in ``root`` or downloaded there,
    verified, extracted, and the extracted files' sha256 recorded; later runs check them against
    that record. Raises :class:`DatasetNotFoundError` / :class:`ChecksumError` with the fix.
    """
    root = Path(root)
    folder = root / FOLDER
    manifest = folder / MANIFEST
    if manifest.is_file():
        expected = json.loads(manifest.read_text())
        for name in TRAIN_FILES + TEST_FILES:
            if not (folder / name).is_file():
                raise DatasetNotFoundError(f"cifar10: {folder / name} is missing; delete {folder} and "
                                           f"run again to re-extract {root / ARCHIVE}")
            verify_file(folder / name, sha256=expected[name])
        return folder
    archive = root / ARCHIVE
    if not archive.is_file():
        if not network_allowed():
            raise DatasetNotFoundError(f"cifar10: {archive} not found and downloads are off. Put the "
                                       f"CIFAR-10 binary archive {ARCHIVE} (md5 {ARCHIVE_MD5}, from {URL}) "
                                       f"into {root} (or set data.root) and run again.")
        try:
            download(URL, archive, timeout=60)
        except OSError as exc:
            raise DatasetNotFoundError(f"cifar10: {archive} not found and the download failed ({exc}). "
                                       f"Put {ARCHIVE} (md5 {ARCHIVE_MD5}, from {URL}) into {root} "
                                       f"(or set data.root) and run again.") from exc
    try:
        verify_file(archive, md5=ARCHIVE_MD5)
    except ChecksumError:
        raise
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).parent.name == FOLDER]
        tar.extractall(root, members=members, filter="data")
    _write_manifest(folder)
    return folder


def load_cifar10(root: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}``, images (N, 3, 32, 32) uint8."""
    folder = prepare_cifar10(root)
    out = {}
    for split, names in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        parts = [read_cifar_binary(folder / n) for n in names]
        out[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out
