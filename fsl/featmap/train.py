"""A small trainer for the SGD maps of FeatMap (Krey, Neukirch, Strodthoff, arXiv 2605.11203):
the FeatMap loss ``0.3 MSE + 0.7 (1 - median-over-positions cosine)``, AdamW, ReduceLROnPlateau
on the validation loss, early stopping with the best weights restored. Plain torch (no Lightning):
the maps are small and trained by the hundred inside one analysis."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fsl.featinv.decoders import reencoding_cosine

Tensor = torch.Tensor


def featmap_loss(pred: Tensor, target: Tensor, mse_weight: float = 0.3, cos_weight: float = 0.7) -> Tensor:
    """``mse_weight * MSE + cos_weight * mean_n (1 - median_p cos(pred_np, target_np))`` (scalar);
    maps ``(N, C, h, w)`` (cosine over channels at each position) or vectors ``(N, C)``."""
    loss = mse_weight * F.mse_loss(pred, target)
    if cos_weight:
        loss = loss + cos_weight * (1 - reencoding_cosine(pred, target)).mean()
    return loss


@dataclass
class FitLog:
    """How a fit went: losses per epoch, the epoch whose weights were kept, wall time."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    stopped_early: bool = False


def fit_sgd(net: nn.Module, x: Tensor, y: Tensor, *, lr: float = 1e-4, weight_decay: float = 0.01,
            batch_size: int = 32, max_epochs: int = 10, patience: int = 3, val_fraction: float = 0.1,
            mse_weight: float = 0.3, cos_weight: float = 0.7, plateau_patience: int = 1, plateau_factor: float = 0.5,
            seed: int = 0, device=None, max_seconds: float | None = None) -> FitLog:
    """Train ``net`` so that ``net(x) ~ y`` (maps ``(N, C, h, w)``).

    The last ``val_fraction`` of a seeded permutation of the N pairs is held out; after every epoch
    its loss drives ReduceLROnPlateau (``plateau_factor``, ``plateau_patience``) and early stopping
    (``patience`` epochs without improvement); the best epoch's weights are restored. Loss:
    :func:`featmap_loss` (``cos_weight=0`` gives plain MSE). ``max_seconds`` stops after the epoch
    that exceeds it. Batches are drawn from a generator seeded by ``seed``, dropout from the global
    generator seeded by ``seed`` for the fit (its state outside is left unchanged). ``net`` ends in
    eval mode.
    """
    if x.shape != y.shape or len(x) < 2:
        raise ValueError(f"fit_sgd: x {tuple(x.shape)} and y {tuple(y.shape)} must be equal shapes with >= 2 samples")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(x), generator=g)
    n_val = min(max(1, int(round(float(val_fraction) * len(x)))), len(x) - 1) if val_fraction > 0 else 0
    tr, va = perm[:len(x) - n_val], perm[len(x) - n_val:]
    opt = torch.optim.AdamW(net.parameters(), lr=float(lr), weight_decay=float(weight_decay))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(plateau_factor),
                                                       patience=int(plateau_patience))
    log, best, best_state, bad = FitLog(), float("inf"), None, 0
    t0 = time.perf_counter()

    def loss_of(idx: Tensor) -> Tensor:
        return featmap_loss(net(x[idx].to(device)), y[idx].to(device), mse_weight, cos_weight)

    # dropout draws from the global generator: seed it for the fit (leaving the caller's state as it was),
    # so the same inputs give the same map whatever ran before
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        for epoch in range(int(max_epochs)):
            net.train()
            order = tr[torch.randperm(len(tr), generator=g)]
            total = 0.0
            for s in range(0, len(order), int(batch_size)):
                idx = order[s:s + int(batch_size)]
                loss = loss_of(idx)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"fit_sgd: the loss is {loss.item()} at epoch {epoch}: lower sgd.lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            log.train_loss.append(total / len(tr))
            net.eval()
            with torch.no_grad():
                val = float(sum(float(loss_of(va[s:s + 256])) * len(va[s:s + 256]) for s in range(0, len(va), 256))
                            / len(va)) if len(va) else log.train_loss[-1]
            log.val_loss.append(val)
            sched.step(val)
            if val < best:
                best, bad, log.best_epoch = val, 0, epoch
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
            if bad >= int(patience) or (max_seconds is not None and time.perf_counter() - t0 > max_seconds):
                log.stopped_early = epoch + 1 < int(max_epochs)
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    log.seconds = time.perf_counter() - t0
    return log
