"""Where fsl's yaml files live and how code reads them without Hydra (the library's defaults are
read from these files on every call: analyses, pixel settings, attack suites).

``CONFIG_DIR`` is the packaged ``fsl/configs`` of an installed wheel (setup.py copies the top-level
``configs/`` there at build time), else the ``configs/`` of the checkout this package sits in (a plain
checkout, an editable install). Neither: a FileNotFoundError that names the fix, raised when
``CONFIG_DIR`` is first read."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

_PACKAGE = Path(__file__).resolve().parent
# a candidate counts when it holds the file every run composes
_MARKER = "train.yaml"


def find_config_dir(package: Path = _PACKAGE) -> Path:
    """The packaged ``<package>/configs``, else the checkout's ``<package>/../configs``."""
    candidates = (package / "configs", package.parent / "configs")
    for candidate in candidates:
        if (candidate / _MARKER).is_file():
            return candidate
    raise FileNotFoundError(
        f"fsl's yaml configs are missing: neither {candidates[0]} (an installed package) nor {candidates[1]} "
        f"(a checkout) holds {_MARKER}. Install fsl from its source tree with `pip install .` (the build "
        "copies configs/ into the package), or run from a checkout of the repository.")


def __getattr__(name: str):
    # CONFIG_DIR is found on first use, so a missing folder fails with the fix (and to_plain stays usable)
    if name == "CONFIG_DIR":
        value = find_config_dir()
        globals()["CONFIG_DIR"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def to_plain(cfg) -> dict:
    """A DictConfig (resolved) or a mapping as a plain dict."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
