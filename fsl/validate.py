"""Config checks before any work: every problem at once, each with the key and the fix; a misspelt
name gets the closest valid one. Raises :class:`fsl.errors.ConfigError`."""
from __future__ import annotations


from fsl.errors import ConfigError
from fsl.registry import closest  # noqa: F401  (re-exported for the config checks)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "multistep", "onecycle")


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
    from fsl.data.sources import LOADERS
    from fsl.models import MODELS

    p: list[str] = []
    _positive(p, cfg, "data.batch_size")
    _positive(p, cfg, "data.eval_batch_size")
    _positive(p, cfg, "data.val_size", minimum=1, allow_none=True)
    _positive(p, cfg, "data.test_size", minimum=1, allow_none=True)
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
    _analysis_problems(p, cfg, _get(cfg, "data.name") if _get(cfg, "data.name") in LOADERS else None)
    _raise(p, "train")


def validate_analyze_config(cfg) -> None:
    """Check the sizes and names of a composed ``analyze`` config (ConfigError listing every problem)."""
    p: list[str] = []
    target = _get(cfg, "model.target")
    if not _get(cfg, "ckpt_path") and not target:
        p.append("ckpt_path is not set: pass ckpt_path=outputs/train/<run>/checkpoints/last.ckpt, or a model of "
                 "your own: model.target=<module>:<callable> model.weights=<file> data.name=<data set>")
    if target:
        if _get(cfg, "ckpt_path"):
            p.append("ckpt_path and model.target are both set: an fsl checkpoint or a user model, not both")
        if not _get(cfg, "model.weights"):
            p.append("model.weights is not set: pass model.weights=<state_dict .pt/.pth or Lightning .ckpt> "
                     "(model.weights=random: the untrained model)")
        if not _get(cfg, "data.name") and not _get(cfg, "data.target"):
            p.append("model.target needs data: data.name=<fsl data set> (configs/data/) or "
                     "data.target=<module>:<callable> returning a LightningDataModule")
    _positive(p, cfg, "batch_size")
    for key in ("n_train", "n_eval"):
        _positive(p, cfg, key, allow_none=True)
    _analysis_problems(p, cfg, None)
    from fsl.configfiles import to_plain

    chosen = to_plain(_get(cfg, "analysis") or {})
    if chosen and not any((o or {}).get("enabled", True) for o in chosen.values()):
        p.append(f"every analysis of the run is off ({', '.join(chosen)}): an opt-in one needs "
                 f"analysis.<name>.enabled=true, e.g. analysis.{next(iter(chosen))}.enabled=true")
    _raise(p, "analyze")


def _analysis_problems(p: list, cfg, data_name: str | None) -> None:
    """The ``analysis:`` node: registered names, and each enabled analysis' options by its own rules
    (:attr:`Analysis.sizes`, :attr:`Analysis.minimums`, :meth:`Analysis.config_problems`)."""
    from fsl.analysis.base import ANALYSES
    from fsl.configfiles import to_plain

    for name, opts in (to_plain(_get(cfg, "analysis") or {})).items():
        key = f"analysis.{name}"
        if name not in ANALYSES:
            p.append(f"{key}: unknown analysis {name!r}" + closest(name, ANALYSES.names()))
            continue
        opts = opts or {}
        if not opts.get("enabled", True):
            continue
        cls = ANALYSES.get(name)
        for k, minimum in cls.minimums.items():
            if k in opts:
                _positive(p, cfg, f"{key}.{k}", minimum=minimum)
        for k in cls.sizes:
            if k in opts:
                _positive(p, cfg, f"{key}.{k}", allow_none=True)
        p.extend(cls.config_problems(key, opts, data_name))
    if _get(cfg, "pixels") is not None:
        _positive(p, cfg, "pixels.batch_size")
        for k in ("n_figure", "n_measure"):
            _positive(p, cfg, f"pixels.{k}")
