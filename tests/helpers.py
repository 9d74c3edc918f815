"""Shared helpers for tests that run train.py's code path on small data."""
from __future__ import annotations

from pathlib import Path

from fsl.config import compose_config


def synthetic_overrides(tmp_path: Path, epochs: int = 2, extra=()) -> list[str]:
    return [
        "experiment=selu_mlp_mnist5k", "data=synthetic", f"trainer.max_epochs={epochs}",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
        f"paths.output_dir={tmp_path / 'out'}", f"paths.wandb_dir={tmp_path}", f"paths.data_dir={tmp_path / 'data'}",
        *([] if any(e.startswith("callbacks=") for e in extra) else ["callbacks=default"]),
        *extra,
    ]


def synthetic_config(tmp_path: Path, epochs: int = 2, extra=()):
    return compose_config("train", synthetic_overrides(tmp_path, epochs, extra))
