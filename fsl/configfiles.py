"""Where fsl's yaml files live and how code reads them without Hydra (the library's defaults are
read from these files on every call: analyses, pixel settings, attack suites)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def to_plain(cfg) -> dict:
    """A DictConfig (resolved) or a mapping as a plain dict."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
