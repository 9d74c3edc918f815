"""Shared helpers of the tests: configs that run train.py's code path on small data, a quickly trained
SELU MLP, a crashing callback, class-sorted labels. A plain module (``CrashAtStep`` is named by its import
path in Hydra overrides, ``tests.helpers.CrashAtStep``)."""
from __future__ import annotations

from pathlib import Path

from fsl.config import compose_config

# the analysis callbacks on, small; shared by tests/callbacks/test_callbacks.py and test_ddp.py
CALLBACK_OVERRIDES = [
    "callbacks=analysis",
    "analysis.geometry.every_n_epochs=1", "analysis.geometry.n_train=300",
    "analysis.geometry.n_eval=120",
    "analysis.adversarial.every_n_epochs=2", "analysis.adversarial.n_samples=60",
    "analysis.adversarial.only=null",  # the whole suite (the experiments run a cheap subset per epoch)
]


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


def train_selu_mlp(X, y, hidden, epochs: int, lr: float, X_held, y_held, min_acc: float, batch: int = 100):
    """A ``selu_mlp`` trained with Adam on ``(X, y)`` for a few seconds (fixed seed), in eval mode;
    fails the test when the held-out accuracy stays below ``min_acc``."""
    import torch

    from fsl.models import create_model

    torch.manual_seed(0)
    model = create_model("selu_mlp", hidden=tuple(hidden))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for s in range(0, X.shape[0], batch):
            loss = torch.nn.functional.cross_entropy(model(X[s:s + batch]), y[s:s + batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        acc = (model(X_held).argmax(1) == y_held).float().mean().item()
    assert acc > min_acc, f"fixture model did not train (held-out accuracy {acc:.3f})"
    return model



class CrashAtStep:
    """A Lightning callback that crashes training after optimizer step ``step``: ``how="sigkill"``
    kills its own process (no Python handler runs), ``how="raise"`` raises RuntimeError. Use:
    ``+callbacks.crash._target_=tests.helpers.CrashAtStep +callbacks.crash.step=N``."""

    def __new__(cls, step: int, how: str = "sigkill"):
        import os
        import signal

        import pytorch_lightning as pl

        class _Crash(pl.Callback):
            def on_train_batch_end(self, trainer, *args, **kwargs):
                if trainer.global_step >= step:
                    if how == "sigkill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise RuntimeError(f"crash at step {trainer.global_step} (tests.helpers.CrashAtStep)")

        return _Crash()


def sorted_labels(sizes):
    """Labels sorted by class, ``sizes[c]`` samples of class ``c``."""
    import torch

    return torch.repeat_interleave(torch.arange(len(sizes)), torch.as_tensor(sizes))
