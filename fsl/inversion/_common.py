"""Shared helpers of the pixel-space solvers: frozen evaluation, features, feature Jacobians."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; restore both after.

    Gradients then flow only into the inputs, never into the weights, and BatchNorm uses its
    running statistics (no update of them).
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter or buffer (CPU/float32 if none)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def features_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model.forward_features(x)`` for ``x`` (B, C, H, W) -> (B, f); no graph is kept."""
    with torch.no_grad():
        return model.forward_features(x)


def feature_jacobian(model: nn.Module, x: torch.Tensor, max_rows: int = 4096,
                     fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Jacobian of the feature map per sample, ``J[b] = dN(x_b)/dx_b``.

    Args:
        model: a model with ``forward_features`` (used unless ``fn`` is given), in eval mode.
        x: (B, C, H, W) inputs.
        max_rows: at most this many ``(sample, output)`` backward rows at once (memory bound);
            the batch is processed in chunks of ``max(1, max_rows // f)`` samples.
        fn: optional map of ONE sample ``(C, H, W) -> (f,)`` to differentiate instead.

    Returns:
        (B, f, p) Jacobian in the dtype of the model output, ``p = C*H*W``.
    """
    from torch.func import jacrev, vmap

    if fn is None:
        def fn(xi: torch.Tensor) -> torch.Tensor:
            return model.forward_features(xi.unsqueeze(0)).squeeze(0)

    B = x.shape[0]
    p = x[0].numel()
    with torch.no_grad():
        f = fn(x[0]).numel()
    chunk = max(1, max_rows // max(f, 1))
    out = []
    jac = vmap(jacrev(fn))
    for s in range(0, B, chunk):
        Jc = jac(x[s:s + chunk].detach())
        out.append(Jc.reshape(Jc.shape[0], f, p))
    return torch.cat(out, 0)


def vjp_rows(model: nn.Module, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and the row ``u_b^T dN(x_b)/dx_b`` per sample with ONE backward pass.

    Args:
        x: (B, C, H, W); u: (B, f) weights (treated as constants).

    Returns:
        features (B, f) detached, rows (B, p).
    """
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        feats = model.forward_features(xg)
        (g,) = torch.autograd.grad((feats * u.to(feats.dtype)).sum(), xg)
    return feats.detach(), g.reshape(x.shape[0], -1)
