"""First-layer signal images and per-class residual images (Pattichis & Pattichis, SSIAI 2024, Figures 1-2)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fsl.checks import check_count, check_images, check_labels
from fsl.spaces.subspaces import (FundamentalSubspaces, LayerMatrix, _finite_matrix, fundamental_subspaces,
                                  layer_matrices)


def first_layer(model: nn.Module) -> LayerMatrix:
    """The first Linear/Conv2d of ``model`` in module order (SeluMLP: ``layers.0``, FCNN1: ``head``,
    CifarResNet: ``conv1``)."""
    mats = layer_matrices(model)
    if not mats:
        raise ValueError("model has no Linear or Conv2d layer")
    return mats[0]


@dataclass
class SignalImages:
    """``sigma_i v_i`` of the first layer, reshaped to what one row of ``W`` sees.

    Attributes:
        layer: name of the layer.
        images: (k, C, H, W) float64 (linear: the model's input shape; conv: (in, kh, kw)).
        weights: (k', C, H, W) the first rows of ``W`` themselves, for comparison (Pattichis & Pattichis, SSIAI 2024 Fig. 1
            top row), k' = min(k, m).
        singular_values: (k,); condition: sigma_1 / sigma_r.
        subspaces: the layer's :class:`FundamentalSubspaces`.
    """

    layer: str
    images: torch.Tensor
    weights: torch.Tensor
    singular_values: torch.Tensor
    condition: float
    subspaces: FundamentalSubspaces


def first_layer_signal_images(model: nn.Module, k: int | None = None, rtol: float | None = None) -> SignalImages:
    """Signal images ``sigma_i v_i`` (i < k >= 0, default: the rank, at most 64) of the first layer
    (ValueError for a negative ``k`` or a weight with NaN/inf)."""
    if k is not None and int(k) < 0:
        raise ValueError(f"first_layer_signal_images: k must be >= 0 (or None for the rank), got {k}")
    lm = first_layer(model)
    sp = fundamental_subspaces(_finite_matrix(f"first_layer_signal_images: layer {lm.name!r} weight", lm.weight),
                               rtol, lm.source_dtype)
    if lm.kind == "linear":
        shape = tuple(getattr(model, "input_shape", (lm.weight.shape[1],)))
        if int(torch.tensor(shape).prod()) != lm.weight.shape[1]:
            shape = (1, 1, lm.weight.shape[1])
    else:
        shape = lm.input_shape
    k = min(sp.rank, 64) if k is None else min(k, sp.rank)
    imgs = (sp.row[:, :k] * sp.singular_values[:k]).T.reshape(k, *shape)
    km = min(k if k > 0 else 1, lm.weight.shape[0])
    return SignalImages(lm.name, imgs, lm.weight[:km].reshape(km, *shape), sp.singular_values[:k],
                        sp.condition, sp)


def layer_input(model: nn.Module, images: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """What an MLP's first layer multiplies: ``normalize(x).flatten(1)`` (or the raw pixels).

    ``images``: finite floating-point (B, C, H, W) in [0, 1] (ValueError / TypeError otherwise)."""
    x = check_images("layer_input images", images, ndim=4)
    if normalized and hasattr(model, "normalize"):
        x = model.normalize(x.to(model.normalize.mean.device, model.normalize.mean.dtype))
    return x.flatten(1).double()


@dataclass
class ClassResiduals:
    """Residual (rejected-signal) images of the class-average inputs of a linear first layer.

    Attributes:
        classes: (K,) class labels present.
        inputs: (K, C, H, W) the class-average layer inputs (normalised pixels by default).
        residual_images: (K, C, H, W) ``u - P_row u``.
        residual_energy: (K,) ``||u - P_row u||^2 / ||u||^2`` of the class averages.
        sample_energy_mean: (K,) mean residual energy of the individual samples of each class.
    """

    classes: torch.Tensor
    inputs: torch.Tensor
    residual_images: torch.Tensor
    residual_energy: torch.Tensor
    sample_energy_mean: torch.Tensor


def class_residuals(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    normalized: bool = True, rtol: float | None = None) -> ClassResiduals:
    """Per-class residual images and energies of the first (linear) layer (Pattichis & Pattichis, SSIAI 2024 Fig. 1, row 3).

    Args:
        images: (N, C, H, W) in [0, 1]; labels: (N,).
        normalized: measure in the layer's own input space (the model's normalised pixels,
            default) or in raw pixels.

    At least one image is needed; images must be finite, floating-point and in [0, 1], labels
    integers, one per image (ValueError / TypeError otherwise).
    """
    check_images("class_residuals images", images, ndim=4)
    check_count("class_residuals images", images.shape[0])
    check_labels("class_residuals labels", labels, images.shape[0])
    lm = first_layer(model)
    if lm.kind != "linear":
        raise NotImplementedError("class residual images need a linear first layer (MLP/FCNN); "
                                  "for conv layers use FundamentalSubspaces.residual_energy on patches")
    sp = fundamental_subspaces(lm.weight, rtol, lm.source_dtype)
    with torch.no_grad():
        u = layer_input(model, images, normalized).to("cpu")
    labels = labels.to("cpu")
    classes = torch.unique(labels)
    shape = images.shape[1:]
    avg = torch.stack([u[labels == c].mean(0) for c in classes])
    res = avg - sp.project_row(avg)
    energy = sp.residual_energy(avg)
    per = sp.residual_energy(u)
    per_mean = torch.stack([per[labels == c].mean() for c in classes])
    return ClassResiduals(classes, avg.reshape(-1, *shape), res.reshape(-1, *shape), energy, per_mean)
