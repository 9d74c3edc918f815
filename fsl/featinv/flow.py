"""The probabilistic FeatInv decoder: a conditional U-Net trained with flow matching.

FeatInv (Neukirch, Vielhaben, Strodthoff, arXiv 2505.21032) conditions a diffusion model on the
classifier's feature map, bilinearly upsampled to the image size and passed through a shallow
hint encoder; the condition is dropped with probability 0.15 during training, so one network is
both the conditional and the unconditional model, and sampling uses classifier-free guidance
(Ho, Salimans, arXiv 2207.12598) ``v = v_uncond + s (v_cond - v_uncond)``.

Here the generator is trained from scratch with (rectified) flow matching (Lipman et al.,
arXiv 2210.02747; Liu, Gong, Liu, arXiv 2209.03003) in the convention of diffusers'
``FlowMatchEulerDiscreteScheduler``: ``x_s = s * noise + (1 - s) * x`` for ``s`` in [0, 1], the
network predicts the velocity ``noise - x`` and sampling integrates from ``s = 1`` (noise) to
``s = 0`` with Euler steps. The hint (``hint_channels`` maps at image resolution) is concatenated
with the noisy image as the U-Net's input (as in SR3/Palette image-conditional diffusion); the
U-Net is diffusers' ``UNet2DModel``. Images are scaled to [-1, 1] inside."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsl.checks import check_finite

Tensor = torch.Tensor


class HintEncoder(nn.Module):
    """Feature map ``(B, C, h, w)`` or vector ``(B, f)`` -> hint ``(B, hint_channels, H, W)``.

    Maps are upsampled bilinearly to ``H x W``; vectors are first mapped linearly to
    ``width x ceil(H/4) x ceil(W/4)``. Two 3x3 conv + SiLU layers follow and a zero-initialised 1x1
    convolution (ControlNet's zero convolution: at initialisation the hint is 0, the null condition).
    """

    def __init__(self, in_shape: Sequence[int], out_hw: Sequence[int], hint_channels: int = 16, width: int = 32):
        super().__init__()
        self.in_shape, self.out_hw = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_hw)
        if len(self.in_shape) == 1:
            self.s = (max(1, math.ceil(self.out_hw[0] / 4)), max(1, math.ceil(self.out_hw[1] / 4)))
            self.stem = nn.Linear(self.in_shape[0], width * self.s[0] * self.s[1])
            c = width
        elif len(self.in_shape) == 3:
            self.stem = None
            c = self.in_shape[0]
        else:
            raise ValueError(f"HintEncoder: in_shape must be (C, h, w) or (f,), got {self.in_shape}")
        self.width = width
        self.body = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        self.zero = nn.Conv2d(width, hint_channels, 1)
        nn.init.zeros_(self.zero.weight)
        nn.init.zeros_(self.zero.bias)

    def forward(self, z: Tensor) -> Tensor:
        if tuple(z.shape[1:]) != self.in_shape:
            raise ValueError(f"HintEncoder expects (B, {', '.join(map(str, self.in_shape))}), got {tuple(z.shape)}")
        if self.stem is not None:
            z = self.stem(z).view(len(z), self.width, *self.s)
        z = F.interpolate(z, size=self.out_hw, mode="bilinear", align_corners=False)
        return self.zero(self.body(z))


def _levels(h: int, w: int, want: int) -> int:
    n = 1
    while n < want and h % (2 ** n) == 0 and w % (2 ** n) == 0:
        n += 1
    return n


class FlowDecoder(nn.Module):
    """Conditional flow-matching generator of images from one layer's representation.

    Args:
        in_shape: ``(C, h, w)`` of a feature map or ``(f,)`` of a feature vector.
        out_shape: ``(C_img, H, W)`` of the images.
        channels: U-Net channels per resolution (at most as many levels as ``H, W`` halve evenly;
            28x28: 28, 14, 7); self-attention at the lowest resolution.
        hint_channels: channels of the condition concatenated with the noisy image.
        cond_dropout: probability of training a sample with the null condition.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], channels: Sequence[int] = (32, 64, 64),
                 hint_channels: int = 16, cond_dropout: float = 0.15, layers_per_block: int = 1):
        super().__init__()
        from diffusers import UNet2DModel

        self.in_shape, self.out_shape = tuple(int(s) for s in in_shape), tuple(int(s) for s in out_shape)
        if len(self.out_shape) != 3:
            raise ValueError(f"FlowDecoder: out_shape must be (C, H, W), got {self.out_shape}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"FlowDecoder: cond_dropout must be in [0, 1), got {cond_dropout}")
        c_img, H, W = self.out_shape
        channels = tuple(int(c) for c in channels)[:_levels(H, W, len(channels))]
        self.cond_dropout = float(cond_dropout)
        self.hint = HintEncoder(self.in_shape, (H, W), hint_channels)
        n = len(channels)
        self.unet = UNet2DModel(
            sample_size=(H, W), in_channels=c_img + hint_channels, out_channels=c_img,
            block_out_channels=channels, layers_per_block=layers_per_block, norm_num_groups=8,
            down_block_types=tuple(["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D"]),
            up_block_types=tuple(["AttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)),
        )

    def velocity(self, x_s: Tensor, s: Tensor, hint: Tensor) -> Tensor:
        """Predicted ``noise - x`` at noise level ``s`` (B,) for the noisy images ``x_s`` in the
        [-1, 1] scale, given the hint (zeros = unconditional)."""
        return self.unet(torch.cat([x_s, hint], dim=1), s * 1000.0).sample

    def loss(self, images: Tensor, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Flow-matching loss ``E ||v(x_s, s, hint) - (noise - x)||^2`` (scalar) for ``images``
        (B, C, H, W) in [0, 1] with features ``z``; ``s ~ U(0, 1)``, noise and the condition
        dropout are drawn from ``generator`` (on the CPU, so seeded draws match on any device)."""
        x = images * 2 - 1
        B = len(x)
        noise = torch.randn(x.shape, generator=generator).to(x)
        s = torch.rand(B, generator=generator).to(x)
        keep = (torch.rand(B, generator=generator) >= self.cond_dropout).to(x)
        hint = self.hint(z) * keep.view(B, 1, 1, 1)
        x_s = s.view(B, 1, 1, 1) * noise + (1 - s.view(B, 1, 1, 1)) * x
        return F.mse_loss(self.velocity(x_s, s, hint), noise - x)

    @torch.no_grad()
    def sample(self, z: Tensor | None, n_samples: int = 1, steps: int = 25, guidance: float = 1.75,
               seed: int = 0, noise: Tensor | None = None, batch: int | None = None) -> Tensor:
        """``(B, n_samples, C, H, W)`` images in [0, 1] for the features ``z`` (B, ...).

        ``z=None`` samples the unconditional model (then ``noise`` or ``batch`` gives B). Guidance
        ``s``: ``v = v_u + s (v_c - v_u)`` (0: unconditional, 1: conditional, >1: guided), both
        terms from separate forward passes. The initial noise is drawn on the CPU from ``seed``
        for all ``B * n_samples`` at once (or given as ``noise`` of that shape), so the result does
        not depend on how the caller chunks its batches or on the device's random generator.
        Euler integration in ``steps`` uniform steps of the noise level from 1 to 0.
        """
        if steps < 1:
            raise ValueError(f"sample: steps must be >= 1, got {steps}")
        c_img, H, W = self.out_shape
        dev = next(self.parameters()).device
        B = len(z) if z is not None else (len(noise) if noise is not None else int(batch or 1))
        if noise is None:
            g = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(B, n_samples, c_img, H, W, generator=g)
        if tuple(noise.shape) != (B, n_samples, c_img, H, W):
            raise ValueError(f"sample: noise must have shape {(B, n_samples, c_img, H, W)}, got {tuple(noise.shape)}")
        x = noise.to(dev).reshape(B * n_samples, c_img, H, W)
        null = torch.zeros(B * n_samples, self.hint.zero.out_channels, H, W, device=dev, dtype=x.dtype)
        if z is not None:
            check_finite("sample features", z, hint="the features to decode must be finite (check the model and "
                         "its inputs)", unit="sample")
            hint = self.hint(z.to(dev)).repeat_interleave(n_samples, dim=0)
        levels = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        for i in range(steps):
            s = torch.full((len(x),), float(levels[i]), device=dev, dtype=x.dtype)
            v = self.velocity(x, s, null)
            if z is not None:
                v = v + float(guidance) * (self.velocity(x, s, hint) - v)
            x = x + float(levels[i + 1] - levels[i]) * v
        return ((x.clamp(-1, 1) + 1) / 2).reshape(B, n_samples, c_img, H, W)


def sample_diversity(samples: Tensor) -> tuple[Tensor, Tensor]:
    """For ``samples`` (B, K, C, H, W): the per-pixel standard deviation over the K samples
    ``(B, C, H, W)`` (population std) and its mean per feature map ``(B,)``."""
    if samples.dim() != 5 or samples.shape[1] < 2:
        raise ValueError(f"sample_diversity: expected (B, K >= 2, C, H, W) samples, got {tuple(samples.shape)}")
    std = samples.std(dim=1, unbiased=False)
    return std, std.flatten(1).mean(1)
