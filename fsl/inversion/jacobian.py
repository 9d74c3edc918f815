"""Features and feature Jacobians of a model, evaluated with frozen weights (used by every pixel-space solver).

* :func:`frozen_eval` -- eval mode and ``requires_grad=False`` on the weights for a block, both restored.
* :func:`model_device_dtype`, :func:`features_of` -- where the model runs; ``N(x)`` without a graph.
* :func:`feature_jacobian` -- ``dN(x_b)/dx_b`` per sample (``f`` vector-Jacobian products each, torch.func),
  in chunks of at most ``max_rows`` backward rows.
* :func:`vjp_rows` -- one row ``u_b^T dN(x_b)/dx_b`` per sample with a single backward pass.

The input checks live in :mod:`fsl.checks`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from fsl.checks import check_images


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
        (B, f, p) Jacobian in the dtype of the model output, ``p = C*H*W`` (``(0, f, p)`` for an
        empty batch). Non-finite or integer inputs raise (ValueError / TypeError); inputs outside
        [0, 1] are allowed (the Jacobian of the network map on all of ``R^p``).
    """
    from torch.func import jacrev, vmap

    check_images("feature_jacobian x", x, ndim=None, unit_box=False)
    if x.dim() < 2:
        raise ValueError(f"feature_jacobian x: expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if fn is None:
        def fn(xi: torch.Tensor) -> torch.Tensor:
            return model.forward_features(xi.unsqueeze(0)).squeeze(0)

    B = x.shape[0]
    p = x[0].numel() if B else int(torch.tensor(x.shape[1:]).prod())
    with torch.no_grad():
        out0 = fn(x[0] if B else torch.zeros(x.shape[1:], dtype=x.dtype, device=x.device))
    f = out0.numel()
    if B == 0:
        return torch.zeros(0, f, p, dtype=out0.dtype, device=out0.device)
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


__all__ = ["frozen_eval", "model_device_dtype", "features_of", "feature_jacobian", "vjp_rows"]
