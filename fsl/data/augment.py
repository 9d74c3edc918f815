"""Batched training augmentation in plain torch (torchvision is not importable here)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop back to (H, W) at a random offset per image. (B,C,H,W) -> same."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # (B, W)
    idx_r = rows[:, None, :, None].expand(b, c, h, w + 2 * padding)
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(b, c, h, w)
    return out.gather(3, idx_c)


def random_hflip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)
