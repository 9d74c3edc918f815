"""The deterministic FeatInv decoder: a feature map ``(B, C, h, w)`` (or a feature vector ``(B, f)``)
to an image ``(B, C_img, H, W)`` in [0, 1], trained on pixel MSE plus the re-encoding loss
``1 - cos`` between the features of the reconstruction and the target features (median over
positions, as FeatMap: Krey, Neukirch, Strodthoff, arXiv 2605.11203)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsl.checks import check_images

Tensor = torch.Tensor


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU())


class ConvDecoder(nn.Module):
    """Decoder from one layer's representation to images.

    Args:
        in_shape: ``(C, h, w)`` of a spatial feature map, or ``(f,)`` of a feature vector.
        out_shape: ``(C_img, H, W)`` of the images.
        width: channels of the hidden convolutions.
        depth: 3x3 conv blocks per resolution.

    A vector is first mapped linearly to ``width x s x s`` with ``s = ceil(H / 4)``; the map is then
    upsampled by 2 (nearest + two conv blocks) until it reaches ``H x W`` (resized to exactly that),
    and a 1x1 convolution and a sigmoid give the image.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], width: int = 64, depth: int = 2):
        super().__init__()
        self.in_shape, self.out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
        if len(self.in_shape) not in (1, 3) or len(self.out_shape) != 3:
            raise ValueError(f"ConvDecoder: in_shape must be (C, h, w) or (f,), out_shape (C, H, W); got "
                             f"{self.in_shape} and {self.out_shape}")
        _, H, W = self.out_shape
        if len(self.in_shape) == 1:
            s = max(1, math.ceil(H / 4))
            self.stem = nn.Sequential(nn.Linear(self.in_shape[0], width * s * s), nn.Unflatten(1, (width, s, s)))
            h = s
        else:
            self.stem = nn.Conv2d(self.in_shape[0], width, 1)
            h = self.in_shape[1]
        layers: list[nn.Module] = [_block(width, width) for _ in range(depth)]
        while h < H:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), *[_block(width, width) for _ in range(depth)]]
            h *= 2
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(width, self.out_shape[0], 1)

    def forward(self, z: Tensor) -> Tensor:
        if tuple(z.shape[1:]) != self.in_shape:
            raise ValueError(f"ConvDecoder expects inputs of shape (B, {', '.join(map(str, self.in_shape))}), "
                             f"got {tuple(z.shape)}")
        y = self.body(self.stem(z))
        if tuple(y.shape[-2:]) != self.out_shape[1:]:
            y = F.interpolate(y, size=self.out_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(y))


def reencoding_cosine(f_rec: Tensor, f_true: Tensor) -> Tensor:
    """``(B,)`` cosine between re-encoded and true features: for maps ``(B, C, h, w)`` the median over
    positions of the per-position cosine over channels; for vectors ``(B, f)`` the plain cosine."""
    if f_rec.shape != f_true.shape:
        raise ValueError(f"reencoding_cosine: shapes differ, {tuple(f_rec.shape)} vs {tuple(f_true.shape)}")
    cos = F.cosine_similarity(f_rec, f_true, dim=1, eps=1e-8)
    return cos.flatten(1).median(dim=1).values if cos.dim() > 1 else cos


def featinv_loss(images_rec: Tensor, images: Tensor, f_rec: Tensor, f_true: Tensor,
                 mse_weight: float = 1.0, cos_weight: float = 1.0, ssim_weight: float = 0.0) -> Tensor:
    """``mse_weight * MSE(pixels) + cos_weight * mean(1 - reencoding_cosine)
    + ssim_weight * (1 - SSIM)`` (scalar). The SSIM term (Gaussian 11x11 window, data range 1,
    torchmetrics) sharpens what MSE alone leaves blurred (Zhao, Gallo, Frosio, Kautz,
    arXiv 1511.08861)."""
    loss = mse_weight * F.mse_loss(images_rec, images) + cos_weight * (1 - reencoding_cosine(f_rec, f_true)).mean()
    if ssim_weight:
        from torchmetrics.functional.image import structural_similarity_index_measure

        loss = loss + ssim_weight * (1 - structural_similarity_index_measure(images_rec, images, data_range=1.0))
    return loss


def fit_decoder(decoder: ConvDecoder, encode: Callable[[Tensor], Tensor], images: Tensor, *, steps: int = 500,
                batch_size: int = 64, lr: float = 2e-3, mse_weight: float = 1.0, cos_weight: float = 1.0,
                ssim_weight: float = 0.0, seed: int = 0) -> list[float]:
    """Train ``decoder`` so that ``decoder(encode(x)) ~ x`` on ``images`` (N, C, H, W) in [0, 1]
    (Adam, cosine-decayed lr, seeded batches); ``encode`` is frozen (no gradient to its
    parameters). Returns the loss per step. For runs with checkpoints and W&B use the Lightning
    module; this loop is the same objective for tests and notebooks."""
    check_images("fit_decoder images", images, ndim=4)
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(steps), 1))
    device = next(decoder.parameters()).device
    losses = []
    decoder.train()
    for _ in range(int(steps)):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=g)
        x = images[idx].to(device)
        with torch.no_grad():
            z = encode(x)
        x_rec = decoder(z)
        loss = featinv_loss(x_rec, x, encode(x_rec), z, mse_weight, cos_weight, ssim_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    decoder.eval()
    return losses
