"""Hydra/OmegaConf glue: custom resolvers and config composition for code and tests."""
from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from fsl.configfiles import CONFIG_DIR, to_plain

__all__ = ["CONFIG_DIR", "to_plain", "compose_config", "register_resolvers", "wandb_mode", "checkpoint_run_name",
           "with_default_analyses"]


def wandb_mode() -> str:
    """``WANDB_MODE`` if set; else ``online`` when W&B credentials exist (API key or netrc); else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        rc = netrc.netrc()
        if any("wandb" in host for host in rc.hosts):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        pass
    return "offline"


def checkpoint_run_name(ckpt_path: str | None, target: str | None = None) -> str:
    """A results-folder name for a checkpoint: ``<run folder>-<checkpoint stem>``; without one, for a
    user model ``model.target``: ``<module>-<callable>``."""
    if ckpt_path in (None, "", "None") and target:
        return str(target).replace(":", "-").replace("/", "_")
    p = Path(str(ckpt_path))
    run = p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name
    return f"{run}-{p.stem}" if run else p.stem


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("fsl_wandb_mode"):
        OmegaConf.register_new_resolver("fsl_wandb_mode", wandb_mode)
    if not OmegaConf.has_resolver("fsl_ckpt_name"):
        OmegaConf.register_new_resolver("fsl_ckpt_name", checkpoint_run_name)
    if not OmegaConf.has_resolver("fsl_run_id"):
        from fsl.tracking.rundir import resolve_run_dir, resolve_run_id

        # cached per composed config: one id and one folder per run
        OmegaConf.register_new_resolver("fsl_run_id", resolve_run_id, use_cache=True)
        OmegaConf.register_new_resolver("fsl_run_dir", resolve_run_dir, use_cache=True)


def compose_config(name: str = "train", overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with Hydra overrides, outside of ``@hydra.main`` (tests, notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    overrides = with_default_analyses(name, overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def with_default_analyses(config_name: str, overrides: Sequence[str]) -> list[str]:
    """``overrides`` for ``configs/<config_name>.yaml``; for ``analyze`` without an ``analysis=[...]``
    choice, ``analysis=[...]`` is prepended with every analysis whose yaml says ``default: true``
    (:func:`fsl.analysis.base.default_analyses`), so a new analysis joins by its own file alone."""
    overrides = list(overrides)
    if config_name != "analyze" or any(o.split("=", 1)[0].lstrip("+~") == "analysis" for o in overrides):
        return overrides
    from fsl.analysis.base import default_analyses

    return [f"analysis=[{','.join(default_analyses())}]", *overrides]


register_resolvers()
