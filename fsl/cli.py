"""The command line of train.py and analyze.py: fsl's errors as one line, ``error: <message>``.

A misspelt override (``trainer.max_epoch=5``, ``experiment=selu_mlp_mnst5k``) is caught before Hydra
starts, with the closest valid key or option; an :class:`fsl.errors.FslError` raised by the run is
printed without a traceback (exit status 1; 2 for config errors). ``HYDRA_FULL_ERROR=1`` shows the
full traceback instead.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Callable, Sequence

from fsl.config import CONFIG_DIR, compose_config
from fsl.errors import ConfigError, FslError


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "0") == "1"


def _fail(exc: BaseException, status: int) -> None:
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(status)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _suggest_key(config_name: str, overrides: Sequence[str], bad: str) -> str:
    """`` ; did you mean 'x.y'?`` for an unknown key ``bad``, from the keys of the config composed
    without that override."""
    from omegaconf import DictConfig, OmegaConf

    cfg = compose_config(config_name, [o for o in overrides if _override_key(o) != bad])
    parts = bad.split(".")
    for depth in range(len(parts) - 1, -1, -1):  # the deepest prefix that exists
        node = OmegaConf.select(cfg, ".".join(parts[:depth])) if depth else cfg
        if isinstance(node, DictConfig):
            prefix = ".".join(parts[:depth])
            keys = sorted(str(k) for k in node.keys())
            match = difflib.get_close_matches(parts[depth], keys, n=1, cutoff=0.6)
            if match:
                return f"; did you mean {'.'.join([*parts[:depth], match[0], *parts[depth + 1:]])!r}?"
            return f"; {prefix or 'the top level'} has: {', '.join(keys)}"
    return ""


def _discard_log_only_run_dir() -> None:
    """Remove Hydra's run dir of a failed run when it holds nothing but Hydra's config copy and the log."""
    import shutil
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    folder = Path(HydraConfig.get().runtime.output_dir)
    if folder.is_dir() and all(p.name in (".hydra", ".fsl_run.json") or p.suffix == ".log" for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)
        for parent in (folder.parent, folder.parent.parent):  # outputs/analyze/, outputs/ when now empty
            try:
                parent.rmdir()
            except OSError:
                break


def check_overrides(config_name: str, overrides: Sequence[str]) -> None:
    """Compose ``configs/<config_name>.yaml`` with ``overrides`` and turn Hydra's composition errors
    into a :class:`ConfigError` with the closest valid key or group option."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        compose_config(config_name, overrides)
    except MissingConfigException as exc:
        m = re.search(r"Could not find '([^'/]+)/([^']+)'", str(exc))
        if not m:
            raise ConfigError(str(exc).splitlines()[0]) from None
        group, option = m.groups()
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        match = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
        hint = f"did you mean {group}={match[0]}? " if match else ""
        raise ConfigError(f"unknown {group} {option!r}; {hint}options in configs/{group}/: "
                          f"{', '.join(options)}") from None
    except ConfigCompositionException as exc:
        m = re.search(r"Could not override '([^']+)'", str(exc))
        if not m:
            raise ConfigError(" ".join(str(exc).split())) from None
        bad = m.group(1)
        raise ConfigError(f"unknown config key {bad!r}{_suggest_key(config_name, overrides, bad)} "
                          f"(add a new key with +{bad}=...)") from None


def main(task: Callable, config_name: str) -> None:
    """Run ``task(cfg)`` under Hydra with ``configs/<config_name>.yaml``, fsl errors as one line."""
    import hydra

    from fsl.config import with_default_analyses

    args = with_default_analyses(config_name, sys.argv[1:])
    sys.argv[1:] = args  # Hydra reads sys.argv
    if not _full_error() and not any(a in ("-m", "--multirun") or a.startswith("--") for a in args):
        try:
            check_overrides(config_name, [a for a in args if not a.startswith("-")])
        except ConfigError as exc:
            _fail(exc, 2)

    @hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")
    def _run(cfg):
        try:
            return task(cfg)
        except FslError as exc:
            _discard_log_only_run_dir()
            if _full_error():
                raise
            _fail(exc, 2 if isinstance(exc, ConfigError) else 1)

    _run()
