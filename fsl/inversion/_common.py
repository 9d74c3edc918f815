"""Shared helpers of the pixel-space solvers: input checks, frozen evaluation, features, feature Jacobians.

The checks (:func:`check_images`, :func:`check_values`, :func:`check_labels`, :func:`check_count`) are
shared with fsl.spaces and fsl.adversarial, so that bad input gets the same clear message everywhere.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from fsl.geometry._common import check_finite, spd_solve

_BOUND_EPS = 1e-6  # a pixel this close to 0 or 1 counts as held at the bound (active set)


def check_images(name: str, x, ndim: int | tuple[int, ...] | None = 4, unit_box: bool = True) -> torch.Tensor:
    """``x`` unchanged after checking that it is a floating-point tensor of ``ndim`` dimensions
    (``(B, C, H, W)`` by default; ``None``: any), without NaN/inf and, with ``unit_box``, inside
    [0, 1]. TypeError for a wrong type or dtype, ValueError (naming ``name``, the offending images
    and the fix) otherwise. Empty tensors pass."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of images, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected floating-point images in [0, 1], got dtype {x.dtype}; convert integer "
                        f"pixels first, e.g. x.float() / 255")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and x.dim() not in dims:
        want = " or ".join({4: "(B, C, H, W)", 3: "(C, H, W)"}.get(d, f"{d}-D") for d in dims)
        raise ValueError(f"{name}: expected images of shape {want}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        return x
    one = x.dim() == 3 or x.dim() <= 1  # (C, H, W): a single image
    flat = x.reshape(1, -1) if one else x.reshape(x.shape[0], -1)
    check_finite(name, flat, hint="images must be finite (check the data pipeline)", unit="image")
    if unit_box:
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            out = ((flat < 0) | (flat > 1)).any(1)
            first = torch.nonzero(out).flatten()[:5].tolist()
            raise ValueError(f"{name}: {int(out.sum())} image(s) have pixels outside [0, 1] (range [{lo:.4g}, "
                             f"{hi:.4g}], first: {first}); models take images in [0, 1] and normalise inside "
                             f"(rescale, e.g. x / 255, or clamp to [0, 1])")
    return x


def check_values(name: str, t, ndim: int | None = 2, width: int | None = None, what: str = "(B, f)",
                 unit: str = "row") -> torch.Tensor:
    """``t`` as a tensor after checking it is real-valued, ``ndim``-D with ``width`` columns (last
    dimension) when given, and finite. ``what`` describes the expected shape in the message."""
    x = torch.as_tensor(t)
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected shape {what}, got shape {tuple(x.shape)}")
    if width is not None and x.shape[-1] != width:
        raise ValueError(f"{name}: expected shape {what} with {width} columns, got shape {tuple(x.shape)}")
    if x.numel():
        check_finite(name, x.detach(), hint="the values must be finite (check how they were computed)", unit=unit)
    return x


def check_labels(name: str, labels, n: int, num_classes: int | None = None) -> torch.Tensor:
    """``labels`` as a 1-D integer tensor of length ``n`` (values in ``[0, num_classes)`` when given)."""
    y = torch.as_tensor(labels)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"{name}: expected integer class labels, got dtype {y.dtype} (pass labels.long())")
    if y.shape != (n,):
        raise ValueError(f"{name}: expected one label per sample, shape ({n},), got {tuple(y.shape)}")
    if y.numel():
        out = (y < 0) if num_classes is None else ((y < 0) | (y >= num_classes))
        if bool(out.any()):
            first = torch.nonzero(out).flatten()[:5].tolist()
            top = num_classes if num_classes is not None else "n"
            raise ValueError(f"{name}: class labels must lie in [0, {top}), got values in [{int(y.min())}, "
                             f"{int(y.max())}] (first bad: {first})")
    return y


def check_count(name: str, n: int, what: str = "image") -> None:
    """ValueError when ``n == 0``: ``name`` needs at least one ``what``."""
    if int(n) == 0:
        raise ValueError(f"{name}: got 0 {what}s; at least one {what} is needed")


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


def _linearised_step(x, xr, c, J, mu):
    """Solve the linearised subproblem on the free pixels.

    ``min ||x + d - r||^2  s.t.  c + J d = 0,  d_i = 0`` for pixels held at a bound, with
    Levenberg-Marquardt regularisation ``J_F J_F^T + mu * mean(diag) * I``.

    Shapes: x, xr (B, p) float64; c (B, m); J (B, m, p); mu (B,).
    Returns the normal (feasibility) part dn = -J_F^+ c, the tangential part
    dt = -(I - J_F^+ J_F) (x - r)_F, lambda (B, m), the free mask (B, p), and (A, J_F) for
    chord corrections.
    """
    B, p = x.shape
    e = x - xr
    free = torch.ones_like(x, dtype=torch.bool)
    at_lo = x <= _BOUND_EPS
    at_hi = x >= 1.0 - _BOUND_EPS
    eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
    for _ in range(4):
        Jf = J * free.unsqueeze(1)
        ef = e * free
        A = Jf @ Jf.transpose(1, 2)
        scale = A.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-300)
        A = A + (mu * scale).view(B, 1, 1) * eye
        Je = (Jf @ ef.unsqueeze(2)).squeeze(2)
        sol = spd_solve(A, torch.stack([c, Je], dim=2))  # (B, m, 2)
        lam = sol[..., 0] - sol[..., 1]
        dn = -(Jf.transpose(1, 2) @ sol[..., :1]).squeeze(2) * free
        dt = (-ef + (Jf.transpose(1, 2) @ sol[..., 1:]).squeeze(2)) * free
        d = dn + dt
        newly = free & ((at_lo & (d < 0)) | (at_hi & (d > 0)))
        if not newly.any():
            break
        free = free & ~newly
    return dn, dt, lam, free, A, Jf


def _chord(A, Jf, c):
    """Gauss-Newton correction with a frozen Jacobian: ``-J_F^T A^{-1} c`` (B, p)."""
    return -(Jf.transpose(1, 2) @ spd_solve(A, c.unsqueeze(2))).squeeze(2)
