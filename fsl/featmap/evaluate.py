"""How well a map predicts the manipulated features (FeatMap: Krey, Neukirch, Strodthoff, arXiv
2605.11203): per-position cosine (also on the cells a mask changed), feature error, what the rest of
the network makes of the mapped features (top-1 agreement, Jensen-Shannon divergence, entropy) and,
with a FeatInv decoder, how alike the decoded mapped and decoded true features look (MSE, SSIM)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from fsl.featinv.decoders import reencoding_cosine

Tensor = torch.Tensor


def position_cosine(pred: Tensor, true: Tensor) -> Tensor:
    """``(N,)`` median over positions of the cosine over channels (vectors: the plain cosine)."""
    return reencoding_cosine(pred, true)


def region_cells(region: Tensor, grid: tuple[int, int]) -> Tensor:
    """``(N, h, w)`` bool: the cells of an ``h x w`` feature grid whose pixels overlap ``region``
    ``(N, 1, H, W)`` (adaptive max pooling; a vector layer is one cell)."""
    return F.adaptive_max_pool2d(region.float(), tuple(grid))[:, 0] > 0


def masked_cosine(pred: Tensor, true: Tensor, cells: Tensor) -> Tensor:
    """``(N,)`` median of the per-position cosine over the ``cells`` ``(N, h, w)`` of each map (NaN
    for a map without cells). Maps ``(N, C, h, w)``."""
    cos = F.cosine_similarity(pred, true, dim=1, eps=1e-8)
    return cos.masked_fill(~cells.to(cos.device), float("nan")).flatten(1).nanmedian(1).values


def relative_error(pred: Tensor, true: Tensor) -> Tensor:
    """``(N,)`` ``||pred - true|| / ||true||`` per map."""
    d = (pred - true).flatten(1).double().norm(dim=1)
    return d / true.flatten(1).double().norm(dim=1).clamp_min(1e-12)


def entropy(p: Tensor) -> Tensor:
    """``(N,)`` Shannon entropy (nats) of the rows of ``p``."""
    return -(p * p.clamp_min(1e-30).log()).sum(1)


def js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """``(N,)`` Jensen-Shannon divergence (nats, in [0, ln 2]) between the rows of ``p`` and ``q``."""
    m = 0.5 * (p + q)
    return (entropy(m) - 0.5 * entropy(p) - 0.5 * entropy(q)).clamp_min(0)


def class_metrics(logits_mapped: Tensor, logits_true: Tensor, logits_orig: Tensor) -> dict[str, Tensor]:
    """Per sample ``(N,)``: ``top1_manip`` (mapped features are classified as the manipulated image
    is), ``top1_orig`` (as the original is), ``js`` (JS divergence of the class probabilities,
    mapped vs manipulated), ``entropy`` (of the mapped ones) and ``entropy_true`` (of the manipulated)."""
    p, q = logits_mapped.double().softmax(1), logits_true.double().softmax(1)
    pred = logits_mapped.argmax(1)
    return {"top1_manip": (pred == logits_true.argmax(1)).double(), "top1_orig": (pred == logits_orig.argmax(1)).double(),
            "js": js_divergence(p, q), "entropy": entropy(p), "entropy_true": entropy(q)}


@torch.no_grad()
def decoded_metrics(decode: Callable[[Tensor], Tensor], mapped: Tensor, true: Tensor,
                    batch_size: int = 250) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Decode mapped and true manipulated features with a FeatInv decoder ``decode`` (features ->
    images in [0, 1]) and compare the two decodings. Returns ``({"mse_decoded", "ssim_decoded"}
    per sample (N,), decoded true, decoded mapped)``; SSIM: torchmetrics, data range 1."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    dec_t = torch.cat([decode(true[i:i + batch_size]).cpu() for i in range(0, len(true), batch_size)])
    dec_m = torch.cat([decode(mapped[i:i + batch_size]).cpu() for i in range(0, len(mapped), batch_size)])
    ssim = structural_similarity_index_measure(dec_m.float(), dec_t.float(), data_range=1.0, reduction="none")
    return {"mse_decoded": ((dec_m - dec_t) ** 2).flatten(1).double().mean(1),
            "ssim_decoded": ssim.double()}, dec_t, dec_m
