"""Config checks before any work: every problem at once, each with the key and the fix; a misspelt
name gets the closest valid one. Raises :class:`fsl.errors.ConfigError`."""
from __future__ import annotations

import difflib
from typing import Iterable

from fsl.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "multistep", "onecycle")


def closest(name, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or the list of valid names."""
    valid = sorted(str(v) for v in valid)
    match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else f"; valid: {', '.join(valid)}"


def _get(cfg, key: str):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=None)


def _positive(problems: list, cfg, key: str, minimum: int = 1, allow_none: bool = False, also=()) -> None:
    v = _get(cfg, key)
    if v is None and allow_none:
        return
    if v in also:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        problems.append(f"{key}={v!r}: must be an integer >= {minimum}" + (" or null" if allow_none else ""))


def _raise(problems: list, what: str) -> None:
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the {what} config: " + "; ".join(problems))


def _check_names(problems: list, key: str, names, valid) -> None:
    for n in names or []:
        if n not in valid:
            problems.append(f"{key}: unknown name {n!r}" + closest(n, valid))


def validate_train_config(cfg) -> None:
    """Check the sizes, schedules and names of a composed ``train`` config (ConfigError listing
    every problem)."""
    from fsl.adversarial.suites import load_suite, suite_for_data
    from fsl.data.sources import LOADERS
    from fsl.models import MODELS

    p: list[str] = []
    _positive(p, cfg, "data.batch_size")
    _positive(p, cfg, "data.eval_batch_size")
    _positive(p, cfg, "data.val_size", minimum=0)
    _positive(p, cfg, "data.limit_train", allow_none=True)
    _positive(p, cfg, "trainer.max_epochs", also=(-1,))
    for name, key in (("data", "data.name"), ("model", "model.name")):
        v, valid = _get(cfg, key), (LOADERS if name == "data" else MODELS)
        if v not in valid:
            p.append(f"{key}: unknown {name} {v!r}" + closest(v, valid))
    for key, valid in (("optimizer.name", OPTIMIZERS), ("scheduler.name", SCHEDULERS)):
        v = str(_get(cfg, key) or "").lower()
        if v not in valid:
            p.append(f"{key}: unknown name {v!r}" + closest(v, valid))
    for a in ("geometry", "adversarial", "spaces"):
        if _get(cfg, f"analysis.{a}") is not None:
            _positive(p, cfg, f"analysis.{a}.every_n_epochs")
    for key in ("analysis.geometry.n_train", "analysis.geometry.n_eval", "analysis.adversarial.n_samples",
                "analysis.adversarial.n_train", "analysis.adversarial.knn_k"):
        if _get(cfg, key.rsplit(".", 1)[0]) is not None:
            _positive(p, cfg, key)
    if _get(cfg, "analysis.adversarial") is not None:
        _positive(p, cfg, "analysis.adversarial.n_boot", minimum=0)
        only = _get(cfg, "analysis.adversarial.only")
        if only and _get(cfg, "data.name") in LOADERS:
            from fsl.config import to_plain

            attacks = _get(cfg, "attacks")
            try:
                suite = to_plain(attacks) if attacks else load_suite(suite_for_data(_get(cfg, "data.name")))
            except ValueError as exc:
                p.append(f"attacks: {exc}")
            else:
                _check_names(p, "analysis.adversarial.only", list(only), suite)
    _raise(p, "train")


def validate_analyze_config(cfg) -> None:
    """Check the sizes and names of a composed ``analyze`` config (ConfigError listing every problem)."""
    from fsl.adversarial.attacks import ATTACKS

    p: list[str] = []
    if not _get(cfg, "ckpt_path"):
        p.append("ckpt_path is not set: pass ckpt_path=outputs/train/<run>/checkpoints/last.ckpt")
    _positive(p, cfg, "batch_size")
    for key in ("n_train", "n_eval"):
        _positive(p, cfg, key, allow_none=True)
    if _get(cfg, "adversarial.enabled"):
        _positive(p, cfg, "adversarial.n_samples")
        _positive(p, cfg, "adversarial.batch_size")
        _positive(p, cfg, "adversarial.knn_k")
        _positive(p, cfg, "adversarial.n_boot", minimum=0)
        suite = _get(cfg, "adversarial.suite")
        from fsl.config import CONFIG_DIR

        suites = [f.stem for f in (CONFIG_DIR / "attacks").glob("*.yaml") if f.stem != "auto"] + ["auto"]
        if suite and suite not in suites:
            p.append(f"adversarial.suite: unknown suite {suite!r}" + closest(suite, suites))
        for name, spec in (_get(cfg, "adversarial.attacks") or {}).items():
            attack = (spec or {}).get("attack", name)
            if attack not in ATTACKS:
                p.append(f"adversarial.attacks.{name}: unknown attack {attack!r}" + closest(attack, ATTACKS))
    _raise(p, "analyze")
