"""Running a model over images to get last-hidden-layer features (no Lightning here)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class FeatureSet:
    """Features of a set of images. ``features`` (N, f), ``logits`` (N, n), ``labels`` (N,), ``index`` (N,)
    positions in the source set."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    @property
    def preds(self) -> torch.Tensor:
        return self.logits.argmax(1)

    def __len__(self) -> int:
        return len(self.labels)

    def check_finite(self, what: str) -> None:
        bad = ~torch.isfinite(self.features).all(1)
        if bad.any():
            idx = self.index[bad][:5].tolist()
            raise FloatingPointError(f"{what}: {int(bad.sum())} sample(s) have NaN/inf features (e.g. indices {idx}); "
                                     f"the model diverged or the inputs are not in [0, 1]. Fix training (lower lr) "
                                     f"or the data before measuring geometry.")


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None,
                     batch_size: int = 1000, device: torch.device | str | None = None, progress: bool = False,
                     desc: str = "features") -> FeatureSet:
    """Features and logits of ``images`` (N, C, H, W) in [0, 1], batched, in eval mode (mode restored).

    Results are returned on the CPU in float32 (the geometry promotes them to float64).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        starts = range(0, len(images), batch_size)
        for s in tqdm(starts, desc=desc, disable=not progress, leave=False):
            x = images[s:s + batch_size].to(device, non_blocking=True)
            f = model.forward_features(x)
            feats.append(f.float().cpu())
            logits.append(model.forward_head(f).float().cpu())
    finally:
        model.train(was_training)
    n = len(images)
    f_dim = model.head.in_features
    return FeatureSet(features=torch.cat(feats) if feats else torch.empty(0, f_dim),
                      logits=torch.cat(logits) if logits else torch.empty(0, model.head.out_features),
                      labels=torch.as_tensor(labels).cpu(),
                      index=torch.arange(n) if index is None else torch.as_tensor(index).cpu())
