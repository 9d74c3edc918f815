"""A user's model or data module named in a config: ``"<module>:<callable>"`` targets, and weights
from a ``state_dict`` file or a Lightning checkpoint of another project (``analyze.py model.target=...``)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from fsl.errors import ConfigError

__all__ = ["import_target", "build_user_model", "load_weights"]


def import_target(target: str, what: str = "target"):
    """The object ``"<module>:<name>"`` names (``"pkg.mod:factory"``, ``"pkg.mod:Class"``; dots after the
    colon walk attributes). ConfigError naming the part that is missing."""
    if not isinstance(target, str) or ":" not in target:
        raise ConfigError(f"{what}={target!r}: expected '<module>:<callable>', e.g. 'mypkg.models:build_net'")
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what}={target!r}: cannot import module {module_name!r} ({exc}); is it installed or on "
                          f"PYTHONPATH?") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            from fsl.registry import closest

            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"{what}={target!r}: {module_name!r} has no attribute {part!r}{closest(part, names)}")
        obj = getattr(obj, part)
    return obj


def load_weights(model: nn.Module, path: str | Path, map_location="cpu") -> nn.Module:
    """Load ``path`` into ``model``: a ``state_dict`` file, or a checkpoint dict holding one under
    ``"state_dict"`` (Lightning) or ``"model"``/``"model_state_dict"``. Keys are matched as they are,
    or after dropping a prefix every key shares (``model.``, ``net.``, ``module.``: a LightningModule's
    attribute, DataParallel). Loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.weights={str(path)!r}: no such file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling error: say which file and why
        raise ConfigError(f"model.weights={str(path)!r}: not a weights file torch.load(weights_only=True) can read "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.weights={str(path)!r}: holds no state_dict (a dict of tensors, or one under "
                          f"'state_dict')")
    want = set(model.state_dict())
    candidates = [state]
    prefixes = {k.split(".", 1)[0] for k in state if "." in k}
    for p in sorted(prefixes):
        sub = {k[len(p) + 1:]: v for k, v in state.items() if k.startswith(p + ".")}
        if sub:
            candidates.append(sub)
    best = max(candidates, key=lambda c: len(want & set(c)))
    missing, unexpected = sorted(want - set(best)), sorted(set(best) - want)
    if missing:
        raise ConfigError(f"model.weights={str(path)!r}: {len(missing)} of the model's {len(want)} weights are not in "
                          f"the file (first: {missing[:3]}; the file has e.g. {sorted(state)[:3]}): is model.target "
                          f"the architecture these weights were trained for?")
    try:
        model.load_state_dict({k: v for k, v in best.items() if k in want}, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"model.weights={str(path)!r} does not fit the model: {str(exc).splitlines()[0]}") from None
    if unexpected:
        import logging

        logging.getLogger(__name__).warning("model.weights: %d entries of %s are not in the model (ignored), e.g. %s",
                                            len(unexpected), path, unexpected[:3])
    return model


def build_user_model(target: str, kwargs: dict | None = None, weights: str | None = None,
                     map_location="cpu") -> nn.Module:
    """``import_target(target)(**kwargs)`` with ``weights`` loaded (:func:`load_weights`), in eval
    mode. ``weights="random"`` keeps the initial weights (an untrained model, said explicitly)."""
    factory = import_target(target, "model.target")
    try:
        model = factory(**dict(kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"model.target={target!r} with model.kwargs={dict(kwargs or {})}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.target={target!r} returned a {type(model).__name__}, not an nn.Module")
    if weights is None:
        raise ConfigError("model.weights is not set: pass model.weights=<state_dict .pt/.pth or Lightning .ckpt>, "
                          "or model.weights=random to analyse the untrained model")
    if str(weights) != "random":
        load_weights(model, weights, map_location)
    return model.to(map_location).eval()
