"""CIFAR ResNet of He et al. 2016 (section 4.2): ResNet-20 = 3 stages x 3 basic blocks, 16/32/64.

Shortcuts are option A (parameter-free: stride-2 subsampling and zero-padded channels), as in the
paper, which gives the 0.27M parameters quoted there. Features = global average pool of the last
stage's ReLU output (64-d, >= 0).
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fsl.models.base import FeatureClassifier, FeatureDomain, Normalize, unknown_layer
from fsl.models.registry import register_model


class _ShortcutA(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            half = self.pad // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.pad - half))
        return x


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_shortcut = stride != 1 or in_planes != planes
        self.shortcut = _ShortcutA(in_planes, planes, stride) if needs_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(FeatureClassifier):
    """``depth = 6k + 2``; ResNet-20 has k = 3 blocks per stage."""

    def __init__(self, depth: int = 20, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64),
                 mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
                 std: Sequence[float] = (0.2470, 0.2435, 0.2616)):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CifarResNet: depth must be 6k+2 (20, 32, 44, 56, 110), got {depth}")
        blocks = (depth - 2) // 6
        self.input_shape = tuple(int(s) for s in input_shape)
        in_channels = self.input_shape[0]
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"CifarResNet: mean/std need {in_channels} entries (one per input channel), "
                             f"got {len(mean)}/{len(std)}")
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)
        self.feature_domain = FeatureDomain(0.0, None)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        self.stage_ends = [blocks * (i + 1) - 1 for i in range(len(widths))]  # last block of each stage

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.blocks(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``stage1``, ``stage2``, ``stage3`` (outputs of each stage: 16x28x28, 32x14x14, 64x7x7 on
        28x28 inputs; 16x32x32, 32x16x16, 64x8x8 on CIFAR-10) and ``pooled`` (= ``forward_features``)."""
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        maps = {}
        for i, block in enumerate(self.blocks):
            out = block(out)
            if i in self.stage_ends:
                maps[f"stage{self.stage_ends.index(i) + 1}"] = out
        maps["pooled"] = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return maps

    def forward_from(self, layer: str, representation: torch.Tensor) -> torch.Tensor:
        """Logits from the output of ``stage<k>`` (the blocks after it, pooling, head) or of
        ``pooled`` (the head)."""
        names = [f"stage{i + 1}" for i in range(len(self.stage_ends))]
        if layer == "pooled":
            return self.forward_head(representation)
        if layer not in names:
            raise unknown_layer(self, layer, [*names, "pooled"])
        out = representation
        for block in self.blocks[self.stage_ends[names.index(layer)] + 1:]:
            out = block(out)
        return self.forward_head(F.adaptive_avg_pool2d(out, 1).flatten(1))


@register_model("resnet20")
def resnet20(**kwargs) -> CifarResNet:
    """ResNet-20 (He et al., arXiv 1512.03385, section 4.2): 3 stages x 3 basic blocks."""
    return CifarResNet(depth=20, **kwargs)


# its keywords are CifarResNet's but ``depth``, so that create_model checks them and fills in the defaults
_SIG = inspect.signature(CifarResNet)
resnet20.__signature__ = _SIG.replace(parameters=[p.replace(kind=p.KEYWORD_ONLY) for n, p in _SIG.parameters.items()
                                                  if n != "depth"], return_annotation=CifarResNet)
