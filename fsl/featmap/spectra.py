"""What a fitted linear map does (FeatMap: Krey, Neukirch, Strodthoff, arXiv 2605.11203): the
spectrum of its weight ``W`` (effective rank, numerical rank, norms, energy shares, how close to an
isometry) and whether its output is carried by the weight term ``W x`` or by the bias ``b``."""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def effective_rank(s: Tensor) -> float:
    """``exp(-sum p_i log p_i)`` with ``p_i = s_i^2 / sum_j s_j^2`` (``s``: singular values, or a
    matrix whose singular values are taken). Identity of size C: C; rank one: 1; zero map: 0."""
    s = torch.linalg.svdvals(s.double()) if s.dim() == 2 else s.double()
    e = s ** 2
    total = e.sum()
    if total <= 0:
        return 0.0
    p = e[e > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def spectrum_metrics(s: Tensor, rtol: float = 1e-5) -> dict[str, float]:
    """Metrics of singular values ``s`` (1-d, or a matrix: its singular values).

    Returns ``erank`` (:func:`effective_rank`), ``rank`` (number of ``s_i > rtol * s_max``),
    ``spectral_norm`` (``s_max``), ``frobenius_norm``, ``energy_top1/5/10`` (share of ``sum s^2`` in
    the largest 1, 5, 10) and ``near_isometry`` (fraction of ``s_i / mean(s)`` within 0.1 of 1: 1 for
    a scaled orthogonal map).
    """
    s = torch.linalg.svdvals(s.double()) if s.dim() == 2 else s.double().sort(descending=True).values
    if s.numel() == 0:
        raise ValueError("spectrum_metrics: no singular values")
    e = s ** 2
    total = float(e.sum())
    out = {"erank": effective_rank(s), "rank": float((s > float(rtol) * float(s[0])).sum()) if s[0] > 0 else 0.0,
           "spectral_norm": float(s[0]), "frobenius_norm": total ** 0.5}
    for k in (1, 5, 10):
        out[f"energy_top{k}"] = float(e[:k].sum()) / total if total > 0 else float("nan")
    mean = float(s.mean())
    out["near_isometry"] = float(((s / mean - 1).abs() <= 0.1).double().mean()) if mean > 0 else 0.0
    return out


def weight_bias_metrics(wx: Tensor, bias: Tensor, eps: float = 1e-12) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Weight vs bias of ``y = W x + b`` on the positions of each sample.

    Args:
        wx: ``(N, P, C)`` the weight term ``W x_p`` (computed WITHOUT the bias, ``F.linear(x, W)``) at
            the P positions of N samples. bias: ``(C,)``.

    Per sample, with medians over its positions: ``wx_share = med ||W x_p|| / med ||W x_p + b||``,
    ``bias_share = ||b|| / med ||W x_p + b||``, ``cos_wx_full = med cos(W x_p, W x_p + b)`` and
    ``relative_bias_shift = (med ||W x_p + b|| - med ||W x_p||) / med ||W x_p||``. Returns
    ``(summary, per_sample)``: the medians over samples, and the ``(N,)`` values (plus the norms
    ``wx_norm``, ``full_norm``, ``bias_norm``).
    """
    if wx.dim() != 3 or bias.shape != wx.shape[-1:]:
        raise ValueError(f"weight_bias_metrics: wx must be (N, P, C) and bias (C,), got {tuple(wx.shape)} and "
                         f"{tuple(bias.shape)}")
    wx = wx.double()
    full = wx + bias.double()
    wn, fn = wx.norm(dim=-1), full.norm(dim=-1)
    w_med, f_med = wn.median(1).values, fn.median(1).values
    bn = bias.double().norm().expand(len(wx))
    cos = (wx * full).sum(-1) / (wn * fn).clamp_min(eps)
    ps = {"wx_share": w_med / f_med.clamp_min(eps), "bias_share": bn / f_med.clamp_min(eps),
          "cos_wx_full": cos.median(1).values, "relative_bias_shift": (f_med - w_med) / w_med.clamp_min(eps),
          "wx_norm": w_med, "full_norm": f_med, "bias_norm": bn}
    summary = {k: float(ps[k].median()) for k in ("wx_share", "bias_share", "cos_wx_full", "relative_bias_shift")}
    return summary, ps
