"""Evaluation of FeatInv decoders against each other and against optimisation inversion on the
same samples and the same layer: image quality (SSIM, PSNR), re-encoded cosine, top-1 agreement,
the relative feature residual ``||N_l(x_hat) - N_l(x)|| / ||N_l(x)||`` of the reconstruction at
that layer, the sample diversity of the probabilistic decoder, and seconds per image."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from fsl.featinv.flow import sample_diversity
from fsl.featinv.metrics import reconstruction_metrics

Tensor = torch.Tensor


class LayerFeatures(nn.Module):
    """``forward_features(x) = model.feature_maps(x)[layer].flatten(1)``: one layer of ``model`` as
    the feature map of :func:`fsl.inversion.invert_to_features` (no feature domain: a target of a
    real image is always reachable)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model, self.layer = model, str(layer)
        self.train(model.training)  # a new Module is in training mode: keep the model's (BatchNorm) mode

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.feature_maps(x)[self.layer].flatten(1)


def relative_residual(encode, reconstructions: Tensor, targets: Tensor) -> Tensor:
    """``(N,)`` float64 ``||encode(x_hat) - t|| / ||t||`` (``t`` as returned by ``encode``)."""
    with torch.no_grad():
        f = encode(reconstructions).flatten(1).double()
    t = targets.flatten(1).double()
    return (f - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)


@dataclass
class MethodResult:
    """One way of reconstructing one layer on a set of images.

    Attributes:
        images: (N, C, H, W) reconstructions (for the flow decoder: its first sample).
        per_sample: ``ssim``, ``psnr``, ``cosine``, ``agree_pred``, ``agree_label``, ``residual`` (N,).
        seconds_per_image: wall time of producing them / N.
        samples: (n, K, C, H, W) flow samples of the first n images (flow only).
        std: (n, C, H, W) per-pixel std over those samples; ``diversity`` their mean per image (n,).
        success: (N,) optimisation inversion only: residual within its tolerance.
    """

    images: Tensor
    per_sample: dict[str, Tensor]
    seconds_per_image: float
    samples: Tensor | None = None
    std: Tensor | None = None
    diversity: Tensor | None = None
    success: Tensor | None = None
    extra: dict = field(default_factory=dict)

    def summary(self, n: int | None = None) -> dict[str, float]:
        """Means over the first ``n`` images (all by default); cosine and residual as medians. The
        first ``n`` are representative only if the images are in such an order (the subsets of
        :class:`fsl.analysis.Context` are: every prefix is stratified by class)."""
        ps = {k: v[:n] for k, v in self.per_sample.items()}
        out = {"ssim": float(ps["ssim"].double().mean()), "psnr": float(ps["psnr"].double().mean()),
               "cosine": float(ps["cosine"].double().median()), "top1_pred": float(ps["agree_pred"].double().mean()),
               "residual_median": float(ps["residual"].double().median()),
               "seconds_per_image": self.seconds_per_image}
        if "agree_label" in ps:
            out["top1_label"] = float(ps["agree_label"].double().mean())
        if self.diversity is not None and (n is None or n >= len(self.diversity)):
            out["diversity"] = float(self.diversity.double().mean())
        if self.success is not None:
            out["success_rate"] = float(self.success[:n].double().mean())
        return out


def _score(model, layer, encode, images, rec, labels, targets) -> dict[str, Tensor]:
    _, ps = reconstruction_metrics(model, layer, images, rec, labels=labels, encode=encode)
    ps["residual"] = relative_residual(encode, rec, targets).cpu()
    return ps


@torch.no_grad()
def evaluate_decoder(module, images: Tensor, labels: Tensor | None = None, *, batch_size: int = 250,
                     n_diverse: int = 0, samples: int = 4, seed: int = 0, progress=None) -> MethodResult:
    """Reconstruct ``images`` (N, C, H, W) in [0, 1] from their features with a
    :class:`fsl.featinv.module.FeatInvModule` and score them. The flow decoder draws one sample per
    image (noise from ``seed``, drawn once for all N so batching does not change it) and, for the
    first ``n_diverse`` images, ``samples`` more (noise from ``seed + 1``) for the diversity (pass
    the images in an order whose prefixes are representative, e.g. a :class:`fsl.analysis.Context`
    subset, stratified by class in every prefix)."""
    dev = next(module.parameters()).device
    x = images.to(dev)
    t0 = time.perf_counter()
    z = torch.cat([module.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    outs = []
    flow = module.kind == "flow"
    if flow:
        noise = torch.randn(len(x), 1, *x.shape[1:], generator=torch.Generator().manual_seed(int(seed)))
    for i in range(0, len(x), batch_size):
        if flow:
            hp = module.hparams.featinv
            outs.append(module.decoder.sample(z[i:i + batch_size], 1, steps=int(hp.get("steps", 25)),
                                              guidance=float(hp.get("guidance", 1.75)),
                                              noise=noise[i:i + batch_size])[:, 0])
        else:
            outs.append(module(z[i:i + batch_size]))
        if progress is not None:
            progress.update(min(batch_size, len(x) - i))
    rec = torch.cat(outs)
    seconds = (time.perf_counter() - t0) / max(len(x), 1)
    ps = _score(module.net, module.layer, module.encode, x, rec, labels, z)
    res = MethodResult(images=rec.cpu(), per_sample=ps, seconds_per_image=seconds)
    if flow and n_diverse > 0 and samples >= 2:
        smp = module.sample(z[:n_diverse], samples, seed=int(seed) + 1)
        res.samples = smp.cpu()
        res.std, res.diversity = (t.cpu() for t in sample_diversity(smp))
    return res


def evaluate_inversion(model, layer: str, images: Tensor, labels: Tensor | None, reference: Tensor, *,
                       tol: float = 1e-3, max_iter: int = 15, chunk: int = 50, seed: int = 0,
                       progress=None) -> MethodResult:
    """fsl's optimisation inversion (:func:`fsl.inversion.invert_to_features`, point mode) of each
    image's ``layer`` features, starting from and closest to ``reference`` (C, H, W). Layers with
    more features than pixels use the gradient-only augmented-Lagrangian solver (their Jacobian
    would not fit: no Gauss-Newton polish either); the others the default AL + SQP. ``max_iter``
    outer iterations of each (AL: 40 projected-Adam steps per outer iteration)."""
    from fsl.inversion import invert_to_features

    dev = next(model.parameters()).device
    wrapped = LayerFeatures(model, layer)
    x = images.to(dev)
    with torch.no_grad():
        targets = torch.cat([wrapped.forward_features(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    method = "al" if targets.shape[1] > x[0].numel() else "al+sqp"
    # "al": max_iter outer iterations, no feasibility polish; "al+sqp": max_iter of each phase
    options = {"max_iter": max_iter, "polish": 0} if method == "al" else {"al_iter": max_iter, "max_iter": max_iter}
    t0 = time.perf_counter()
    recs, success = [], []
    for i in range(0, len(x), chunk):
        r = invert_to_features(wrapped, targets[i:i + chunk], reference.to(dev), tol=tol, method=method,
                               options=options, seed=int(seed) + i)
        recs.append(r.images.clamp(0, 1))
        success.append(r.success.cpu())
        if progress is not None:
            progress.update(len(r.images))
    seconds = (time.perf_counter() - t0) / max(len(x), 1)
    rec = torch.cat(recs)
    encode = lambda v: model.feature_maps(v)[layer]  # noqa: E731
    with torch.no_grad():
        z = torch.cat([encode(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    ps = _score(model, layer, encode, x, rec, labels, z)
    return MethodResult(images=rec.cpu(), per_sample=ps, seconds_per_image=seconds, success=torch.cat(success),
                        extra={"method": method, "tol": tol})
