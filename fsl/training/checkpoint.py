"""Loading checkpoints safely (``weights_only=True``) and rebuilding the model from them alone."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from fsl.errors import FslError
from fsl.models import FeatureClassifier, create_model


# the W&B run id a checkpoint was written by (callbacks.wandb_resume), so resuming continues that run
CHECKPOINT_KEY = "fsl_wandb_run_id"


class CheckpointError(FslError, RuntimeError):
    """The file is not a usable fsl checkpoint."""


def _why(exc: Exception) -> str:
    """The informative part of torch.load's error: the unsupported global, or the first sentence."""
    text = str(exc)
    for line in text.splitlines():
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.strip().split(". ")[0]
    return text.strip().splitlines()[0].split(". ")[0][:160] if text.strip() else type(exc).__name__


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt_path=<path to a .ckpt from train.py>")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:4] != b"PK\x03\x04" and head[:1] != b"\x80":  # torch.save: a zip archive (legacy: a pickle)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with bytes {head!r}, not a zip "
                              f"archive written by torch.save); pass a .ckpt written by fsl's train.py")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object: not a plain fsl checkpoint
        raise CheckpointError(f"{path} holds Python objects that torch.load(weights_only=True) refuses to "
                              f"load ({_why(exc)}); fsl checkpoints hold only tensors and plain "
                              f"hyperparameters: pass a .ckpt written by fsl's train.py") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means the file is unusable
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or truncated "
                              f"({_why(exc)}); copy it again or "
                              f"pass another .ckpt written by fsl's train.py") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path} is not an fsl checkpoint (no state_dict/hyper_parameters); "
                              f"use a .ckpt written by fsl's train.py")
    hp = ckpt["hyper_parameters"]
    if "model" not in hp or "name" not in hp.get("model", {}):
        raise CheckpointError(f"{path}: hyper_parameters have no model spec; it was not written by fsl's train.py")
    return ckpt


def load_model(path: str | Path, expected_model: str | None = None, map_location="cpu") -> tuple[FeatureClassifier, dict]:
    """Rebuild the model of a checkpoint and load its weights. Returns ``(model in eval mode, hyper_parameters)``.

    ``expected_model``: raise :class:`CheckpointError` when the checkpoint holds another architecture.
    """
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    spec = dict(hp["model"])
    if expected_model is not None and spec["name"] != expected_model:
        raise CheckpointError(f"{path} holds a {spec['name']!r} model, not {expected_model!r}; "
                              f"pass a checkpoint of {expected_model!r} or drop the model override")
    model = create_model(**spec)
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit a {spec['name']!r} model built from its own "
                              f"hyperparameters ({exc})") from exc
    return model.to(map_location).eval(), hp
