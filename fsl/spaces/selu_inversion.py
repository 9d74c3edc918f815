r"""Layer-wise inversion of SELU networks (Pattichis & Pattichis, SSIAI 2024, section 2.4, equation 5).

``h_l = selu(W_l h_{l-1} + b_l)``; SELU is strictly increasing with range ``(-lambda*alpha, inf)``,
so ``z_l = selu^{-1}(h_l)`` and ``h_{l-1} = W_l^+ (z_l - b_l)``. The pseudo-inverse gives the
row-space (signal) component of ``h_{l-1}``: exact for an invertible square ``W_l``, the
projection ``P_row(W_l) h_{l-1}`` for a wide one (and the least-squares solution for a tall
one). Everything is float64; pseudo-inverses are cut at the same numerical rank as
:mod:`fsl.spaces.subspaces`.

Values outside SELU's range (``h <= -lambda*alpha``, e.g. from a target chosen by hand or from
rounding) have no preimage: they are clamped to ``-lambda*alpha * (1 - range_margin)``
(``z = log(range_margin)``), counted per layer in ``clamped`` and flagged per sample; never NaN.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fsl.checks import check_images, check_values
from fsl.models.base import SELU_ALPHA, SELU_LAMBDA
from fsl.spaces.subspaces import rank_tolerance

SELU_LOWER = -SELU_ALPHA * SELU_LAMBDA


def selu64(z: torch.Tensor) -> torch.Tensor:
    """SELU in float64 with the exact constants."""
    z = z.double()
    return SELU_LAMBDA * torch.where(z > 0, z, SELU_ALPHA * torch.expm1(z.clamp_max(0.0)))


def selu_inverse(h: torch.Tensor, range_margin: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of SELU with explicit handling of values outside its range.

    ``z = h / lambda`` for ``h > 0``; ``z = log1p(h / (lambda*alpha))`` for
    ``-lambda*alpha < h <= 0``. Entries with ``h <= -lambda*alpha*(1 - range_margin)`` (or
    non-finite) are clamped to that bound and reported.

    ``range_margin`` must lie in (0, 1): 0 would map the bound itself to ``-inf``.

    Returns:
        z (same shape, float64), out_of_range mask (bool, same shape).
    """
    if not 0.0 < float(range_margin) < 1.0:
        raise ValueError(f"selu_inverse: range_margin must be in (0, 1), got {range_margin} (0 maps "
                         f"-lambda*alpha to z = -inf)")
    h64 = h.double()
    floor = SELU_LOWER * (1.0 - range_margin)
    bad = ~(h64 > floor) | ~torch.isfinite(h64)
    hc = torch.where(bad, torch.full_like(h64, floor), h64)
    hc = torch.where(torch.isposinf(h64), torch.full_like(h64, torch.finfo(torch.float64).max / 4), hc)
    z = torch.where(hc > 0, hc / SELU_LAMBDA, torch.log1p(hc.clamp_max(0.0) / (-SELU_LOWER)))
    return z, bad


@dataclass
class SeluLayer:
    """One ``h_out = act(W h_in + b)`` step; ``selu`` False for a plain linear layer (a head)."""

    name: str
    weight: torch.Tensor  # (m, n) float64
    bias: torch.Tensor  # (m,) float64
    selu: bool


def selu_chain(model: nn.Module, start: str = "features") -> list[SeluLayer]:
    """The invertible chain of a SELU model, input side first.

    The model declares the chain (``invertible_selu`` and ``selu_stack(start)``):

    * ``SeluMLP``: ``start="features"`` -> its hidden layers (each followed by SELU);
      ``start="logits"`` -> plus the head (linear, no activation).
    * ``FCNN1(selu_output=True)``: the head followed by SELU, whatever ``start`` is (its
      features are the normalised pixels, its outputs the SELU logits).
    """
    if not getattr(model, "invertible_selu", False):
        raise TypeError(f"no SELU chain for {type(model).__name__}: it does not declare invertible_selu "
                        f"(see fsl.models.base.FeatureClassifier.selu_stack)")

    def lin(name, mod, act):
        b = mod.bias.detach().double() if mod.bias is not None else torch.zeros(mod.out_features, dtype=torch.float64)
        return SeluLayer(name, mod.weight.detach().double(), b, act)

    return [lin(name, mod, act) for name, mod, act in model.selu_stack(start)]


def _pinv(W: torch.Tensor, rtol: float | None) -> torch.Tensor:
    S = torch.linalg.svdvals(W)
    tol = rank_tolerance(S, tuple(W.shape), torch.float32, rtol)
    return torch.linalg.pinv(W, atol=tol)


def forward_chain(chain: list[SeluLayer], h0: torch.Tensor) -> list[torch.Tensor]:
    """Activations ``[h_0, h_1, ..., h_L]`` (float64) of the chain for inputs ``h0`` (B, n).

    ``h0`` must be finite with ``n`` = the first layer's input width (ValueError otherwise)."""
    h0 = check_values("forward_chain h0", h0, None, unit="row")
    if chain and (h0.dim() == 0 or h0.shape[-1] != chain[0].weight.shape[1]):
        raise ValueError(f"forward_chain h0: expected (B, {chain[0].weight.shape[1]}) inputs of layer "
                         f"{chain[0].name!r}, got shape {tuple(h0.shape)}")
    hs = [h0.double()]
    for layer in chain:
        z = hs[-1] @ layer.weight.T.to(h0.device) + layer.bias.to(h0.device)
        hs.append(selu64(z) if layer.selu else z)
    return hs


@dataclass
class SeluInversion:
    """Result of :func:`selu_invert`.

    Attributes:
        reconstructions: [h_0, ..., h_L] reconstructed (B, n_l) float64; h_L = the given outputs.
        layer_input: (B, n_0) reconstructed first-layer input (normalised pixels, flattened).
        images: (B, C, H, W) ``layer_input`` mapped back to pixels (un-normalised), NOT clipped.
        clamped: (L,) number of out-of-range entries clamped at each layer (input side first).
        flagged: (B,) bool, any clamp for this sample.
        chained_error: (L,) or None, relative error ``||h^_{l-1} - P_row(W_l) h_{l-1}|| /
            ||P_row(W_l) h_{l-1}||`` (mean over the batch) of the chained reconstruction, against
            the row-space component of the TRUE activation (needs ``x_true``).
        local_error: (L,) or None, the same when layer l alone is inverted from the true h_l (the
            per-layer exactness of equation 5; rounding-level for an in-range layer).
        image_error: (B,) or None, ``||h^_0 - P_row(W_1) h_0|| / ||P_row(W_1) h_0||`` per sample.
        row_component: (B, n_0) or None, ``P_row(W_1) h_0`` of the true input.
    """

    reconstructions: list[torch.Tensor]
    layer_input: torch.Tensor
    images: torch.Tensor | None
    clamped: torch.Tensor
    flagged: torch.Tensor
    chained_error: torch.Tensor | None = None
    local_error: torch.Tensor | None = None
    image_error: torch.Tensor | None = None
    row_component: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


def _row_projector(W: torch.Tensor, rtol: float | None) -> torch.Tensor:
    Wp = _pinv(W, rtol)
    return Wp @ W  # (n, n) projector onto the row space


def selu_invert(model: nn.Module, outputs: torch.Tensor, x_true: torch.Tensor | None = None,
                start: str = "features", rtol: float | None = None,
                range_margin: float = 1e-12) -> SeluInversion:
    """Invert a SELU net layer by layer: ``h_{l-1} = W_l^+ (selu^{-1}(h_l) - b_l)``.

    Args:
        model: ``SeluMLP`` (or ``FCNN1(selu_output=True)``).
        outputs: (B, m_L) features (``start="features"``) or logits (``start="logits"``; for FCNN1
            the SELU outputs).
        x_true: optional (B, C, H, W) true inputs, to measure the errors against the row-space
            components of the true activations.

    ``outputs`` must be finite (B, m_L); finite values outside SELU's range are clamped and
    flagged (see :func:`selu_inverse`), NaN/inf raise ValueError (a network never outputs them).
    ``x_true``: finite images in [0, 1], one per output. ``B = 0`` gives empty results.
    """
    chain = selu_chain(model, start)
    m_out = chain[-1].weight.shape[0]
    outputs = check_values("selu_invert outputs", outputs, 2, width=m_out, what=f"(B, {m_out})")
    dev = outputs.device
    h = outputs.detach().double()
    B = h.shape[0]
    if x_true is not None:
        check_images("selu_invert x_true", x_true, ndim=4)
        if x_true.shape[0] != B:
            raise ValueError(f"selu_invert x_true: {x_true.shape[0]} images for {B} outputs")
    recon = [h]
    clamped = torch.zeros(len(chain), dtype=torch.long)
    flagged = torch.zeros(B, dtype=torch.bool, device=dev)
    pinvs = [_pinv(layer.weight, rtol).to(dev) for layer in chain]
    for li in range(len(chain) - 1, -1, -1):
        layer = chain[li]
        if layer.selu:
            z, bad = selu_inverse(h, range_margin)
            clamped[li] = int(bad.sum())
            flagged |= bad.any(dim=1)
        else:
            z = h
        h = (z - layer.bias.to(dev)) @ pinvs[li].T
        recon.insert(0, h)
    h0 = recon[0]
    images = None
    norm = getattr(model, "normalize", None)
    shape = tuple(getattr(model, "input_shape", ()))
    if norm is not None and shape and int(torch.tensor(shape).prod()) == h0.shape[1]:
        mean = norm.mean.detach().double().to(dev).reshape(1, -1, 1, 1)
        std = norm.std.detach().double().to(dev).reshape(1, -1, 1, 1)
        images = h0.reshape(B, *shape) * std + mean
    out = SeluInversion(recon, h0, images, clamped, flagged)
    if x_true is not None:
        with torch.no_grad():
            u0 = model.normalize(x_true.to(norm.mean.device, norm.mean.dtype)).flatten(1).double().to(dev) \
                if norm is not None else x_true.flatten(1).double().to(dev)
        true = forward_chain(chain, u0)
        chained, local = [], []
        for li, layer in enumerate(chain):
            P = _row_projector(layer.weight, rtol).to(dev)
            target = true[li] @ P.T
            den = target.norm(dim=1).clamp_min(1e-300)
            chained.append(((recon[li] - target).norm(dim=1) / den).mean())
            zt, _ = selu_inverse(true[li + 1], range_margin) if layer.selu else (true[li + 1], None)
            loc = (zt - layer.bias.to(dev)) @ pinvs[li].T
            local.append(((loc - target).norm(dim=1) / den).mean())
        P1 = _row_projector(chain[0].weight, rtol).to(dev)
        row0 = u0 @ P1.T
        out.chained_error = torch.stack(chained)
        out.local_error = torch.stack(local)
        out.image_error = (h0 - row0).norm(dim=1) / row0.norm(dim=1).clamp_min(1e-300)
        out.row_component = row0
    return out


__all__ = ["selu64", "selu_inverse", "selu_chain", "selu_invert", "forward_chain", "SeluInversion",
           "SeluLayer", "SELU_LOWER"]
