"""How good a reconstruction from features is (FeatInv: Neukirch, Vielhaben, Strodthoff, arXiv
2505.21032): image similarity, re-encoded feature similarity and agreement of the re-classified
reconstruction, per sample and summarised."""
from __future__ import annotations

from typing import Callable

import torch

from fsl.checks import check_images
from fsl.featinv.decoders import reencoding_cosine

Tensor = torch.Tensor


@torch.no_grad()
def reconstruction_metrics(model, layer: str, images: Tensor, reconstructions: Tensor,
                           labels: Tensor | None = None, encode: Callable[[Tensor], Tensor] | None = None
                           ) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Compare ``reconstructions`` with ``images`` (both ``(N, C, H, W)`` in [0, 1]).

    Returns ``(summary, per_sample)``: per sample ``ssim``, ``psnr`` (torchmetrics, data range 1),
    ``cosine`` (re-encoded ``layer`` features vs the originals', median over positions),
    ``agree_pred`` (the reconstruction is classified as the original is) and, with ``labels``,
    ``agree_label``; the summary has their means (``ssim``, ``psnr``, ``top1_pred``, ``top1_label``)
    and the median cosine (``cosine_median``).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    if images.shape != reconstructions.shape or images.dim() != 4:
        raise ValueError(f"reconstruction_metrics: images {tuple(images.shape)} and reconstructions "
                         f"{tuple(reconstructions.shape)} must be equal (N, C, H, W) shapes")
    for name, t in (("images", images), ("reconstructions", reconstructions)):
        check_images(f"reconstruction_metrics {name}", t, ndim=4)
    if encode is None:
        maps = model.feature_maps(images)
        if layer not in maps:
            raise ValueError(f"reconstruction_metrics: {type(model).__name__} has no layer {layer!r}; "
                             f"its layers: {list(maps)}")
        encode = lambda x: model.feature_maps(x)[layer]  # noqa: E731
    x, r = images.float(), reconstructions.float()
    ssim = structural_similarity_index_measure(r, x, data_range=1.0, reduction="none")
    psnr = peak_signal_noise_ratio(r, x, data_range=1.0, reduction="none", dim=(1, 2, 3))
    cos = reencoding_cosine(encode(r), encode(x))
    pred, pred_rec = model(x).argmax(1), model(r).argmax(1)
    ps = {"ssim": ssim.cpu(), "psnr": psnr.cpu(), "cosine": cos.cpu(), "agree_pred": (pred_rec == pred).cpu()}
    if labels is not None:
        ps["agree_label"] = (pred_rec.cpu() == torch.as_tensor(labels).cpu())
    summary = {"ssim": float(ps["ssim"].mean()), "psnr": float(ps["psnr"].mean()),
               "cosine_median": float(ps["cosine"].median()), "top1_pred": float(ps["agree_pred"].double().mean())}
    if labels is not None:
        summary["top1_label"] = float(ps["agree_label"].double().mean())
    return summary, ps
