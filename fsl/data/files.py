"""Finding, verifying and (where a network exists) downloading data files."""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

from fsl.data.errors import ChecksumError, DatasetNotFoundError


def file_digest(path: str | Path, algorithm: str = "sha256", decompress: bool = False) -> str:
    """Hex digest of a file (of its gunzipped payload when ``decompress``)."""
    h = hashlib.new(algorithm)
    opener = gzip.open if decompress else open
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, *, md5: str | None = None, sha256: str | None = None,
                payload_sha256: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless one of the given checksums matches.

    ``md5``/``sha256`` are of the file as stored; ``payload_sha256`` of its (gunzipped) content,
    which also accepts re-compressed copies such as Debian's.
    """
    checks = []
    if md5:
        checks.append(("md5", md5, lambda: file_digest(path, "md5")))
    if sha256:
        checks.append(("sha256", sha256, lambda: file_digest(path, "sha256")))
    if payload_sha256:
        gz = path.suffix == ".gz"
        checks.append(("payload sha256", payload_sha256, lambda: file_digest(path, "sha256", decompress=gz)))
    if not checks:
        raise ValueError(f"no checksum given for {path}")
    seen = []
    for name, expected, compute in checks:
        got = compute()
        if got == expected:
            return
        seen.append(f"{name} {got} (expected {expected})")
    raise ChecksumError(f"checksum mismatch for {path}: " + "; ".join(seen)
                        + ". The file is corrupt or not the published one: delete it and put the original there.")


def network_allowed() -> bool:
    """Downloads can be switched off with ``FSL_OFFLINE=1``."""
    return os.environ.get("FSL_OFFLINE", "0") not in ("1", "true", "yes")


def download(url: str, dest: Path, timeout: float = 30.0) -> None:
    """Download ``url`` to ``dest`` atomically: a partial file is never left at ``dest``, and the
    folders created for it are removed again when the download fails."""
    created = [p for p in [dest.parent, *dest.parent.parents] if not p.exists()]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    ok = False
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        os.replace(tmp, dest)
        ok = True
    finally:
        tmp.unlink(missing_ok=True)
        if not ok:
            for folder in created:  # innermost first; only folders that are still empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def locate_or_fetch(dataset: str, filenames: Iterable[str], search_dirs: Iterable[Path],
                    download_dir: Path, mirrors: Iterable[str], checksums: dict[str, dict]) -> dict[str, Path]:
    """Find every file in the first directory that has it, else download it into ``download_dir``.

    Every file is verified before use; a downloaded file that fails its checksum is deleted.
    Raises :class:`DatasetNotFoundError` naming the files and the directory when nothing works.
    """
    filenames = list(filenames)
    search_dirs = [Path(d) for d in search_dirs]
    found: dict[str, Path] = {}
    missing = []
    for name in filenames:
        path = next((d / name for d in search_dirs if (d / name).is_file()), None)
        if path is None:
            missing.append(name)
        else:
            verify_file(path, **checksums[name])
            found[name] = path
    if missing and network_allowed():
        errors = []
        for name in list(missing):
            dest = Path(download_dir) / name
            for mirror in mirrors:
                try:
                    download(mirror.rstrip("/") + "/" + name, dest)
                except (urllib.error.URLError, OSError, TimeoutError) as exc:
                    errors.append(f"{mirror}: {exc}")
                    continue
                try:
                    verify_file(dest, **checksums[name])
                except ChecksumError:
                    dest.unlink(missing_ok=True)
                    raise
                found[name] = dest
                missing.remove(name)
                break
    if missing:
        where = ", ".join(str(d) for d in search_dirs)
        raise DatasetNotFoundError(
            f"{dataset}: missing file(s) {', '.join(missing)}. Looked in: {where}; downloading "
            f"{'failed (no network?)' if network_allowed() else 'is off (FSL_OFFLINE=1)'}. "
            f"Put the files into {Path(download_dir)} (or set data.root) and run again.")
    return found
