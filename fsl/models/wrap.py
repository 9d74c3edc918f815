"""Any classifier as an fsl model: :func:`wrap` turns an ``nn.Module`` whose logits are a final
``nn.Linear`` on a flat feature vector (a torchvision-style ResNet, a timm ViT, a LightningModule)
into a :class:`~fsl.models.base.FeatureClassifier`, so that every analysis runs on it.

``forward_features(x)`` is exactly the input of that Linear (captured by a forward pre-hook, which
also stops the forward pass there), ``forward_head`` is the Linear itself, so
``forward_head(forward_features(x)) == model(x)``. The feature domain (the box the features live in,
which the exact margins need: Yousefzadeh, arXiv 2202.04052) is read from the modules executed
before the head and checked on data; ``feature_maps`` / ``forward_from`` expose named layers for
FeatMap and FeatInv.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from fsl.errors import ConfigError
from fsl.models.base import SELU_LOWER, FeatureClassifier, FeatureDomain, Normalize, unknown_layer

__all__ = ["wrap", "WrappedClassifier", "infer_domain"]

#: modules that keep a lower/upper bound of their input (pooling averages or picks values; the
#: others reshape or are the identity at evaluation)
_PASS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Flatten, nn.Identity,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _minimum(fn, lo: float = -4.0) -> float:
    """A lower bound of ``fn`` on the reals for activations with one minimum on ``[lo, 0]`` that tend
    to 0 from below beyond it: the grid minimum (float64, step 1e-6) less a margin covering the grid
    error (|f'| <= 2 there, so at most 2e-6 below the grid value)."""
    x = torch.linspace(lo, 0.0, int(-lo * 1e6) + 1, dtype=torch.float64)
    return float(fn(x).min()) - 4e-6


def _activation_domain(m: nn.Module) -> FeatureDomain | None:
    """The range of activation ``m`` as a domain, or None when ``m`` is not a known activation."""
    F = nn.functional
    if isinstance(m, nn.ReLU6):
        return FeatureDomain(0.0, 6.0)
    if isinstance(m, nn.Hardtanh):
        return FeatureDomain(float(m.min_val), float(m.max_val))
    if isinstance(m, (nn.ReLU, nn.Softplus, nn.Sigmoid)):
        return FeatureDomain(0.0, 1.0 if isinstance(m, nn.Sigmoid) else None)
    if isinstance(m, nn.Tanh):
        return FeatureDomain(-1.0, 1.0)
    if isinstance(m, nn.SELU):
        return FeatureDomain(SELU_LOWER, None)
    if isinstance(m, (nn.ELU, nn.CELU)):
        return FeatureDomain(-float(m.alpha), None)
    if isinstance(m, nn.GELU):
        return FeatureDomain(_minimum(lambda t: F.gelu(t, approximate=m.approximate)), None)
    if isinstance(m, nn.SiLU):
        return FeatureDomain(_minimum(F.silu), None)
    if isinstance(m, nn.Mish):
        return FeatureDomain(_minimum(F.mish), None)
    return None


def infer_domain(executed: Sequence[nn.Module]) -> FeatureDomain:
    """The feature domain implied by the leaf modules ``executed`` before the head (in order): the
    range of the last one that is not pooling, dropout, flattening or the identity when it is a
    known activation (ReLU -> [0, inf), ReLU6 -> [0, 6], SELU -> [-lambda alpha, inf), GELU -> [its
    minimum, inf), ...); unbounded otherwise (LayerNorm, BatchNorm, a linear layer, no module)."""
    for m in reversed(list(executed)):
        if isinstance(m, _PASS):
            continue
        return _activation_domain(m) or FeatureDomain()
    return FeatureDomain()


class _Stop(Exception):
    """Raised by the head's pre-hook to end the forward pass with the head's input."""

    def __init__(self, features: torch.Tensor):
        super().__init__("stop at the head")
        self.features = features


class WrappedClassifier(FeatureClassifier):
    """A user's classifier seen as an fsl model (built by :func:`wrap`).

    Attributes:
        model: the wrapped module (its parameters are this model's parameters).
        head: its final ``nn.Linear`` (``head_name`` inside ``model``).
        feature_domain: the box of the features (inferred or given, checked on data).
        feature_layers: names of the modules whose outputs :meth:`feature_maps` returns.
        input_shape: ``(C, H, W)``; inputs are in [0, 1] (``normalize`` maps them to what ``model``
            expects, when given).
    """

    def __init__(self, model: nn.Module, head_name: str, domain: FeatureDomain, feature_layers: Sequence[str],
                 input_shape: Sequence[int] | None, normalize: Normalize | None = None):
        super().__init__()
        self.model = model
        self.head_name = head_name
        self.head = model.get_submodule(head_name)
        self.feature_domain = domain
        self.feature_layers = list(feature_layers)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.normalize = normalize if normalize is not None else nn.Identity()

    def _run(self, x: torch.Tensor, capture: Sequence[str] = (), replace: tuple[str, torch.Tensor] | None = None):
        """Run ``model`` up to the head: ``(features, {layer: output})``; ``replace=(layer, t)``
        substitutes ``t`` for that layer's output."""
        outputs: dict[str, torch.Tensor] = {}
        hooks = []

        def stop(_m, args):
            raise _Stop(args[0])

        hooks.append(self.head.register_forward_pre_hook(stop))
        for name in capture:
            hooks.append(self.model.get_submodule(name).register_forward_hook(
                lambda _m, _a, out, name=name: outputs.__setitem__(name, out)))
        if replace is not None:
            hooks.append(self.model.get_submodule(replace[0]).register_forward_hook(lambda _m, _a, _o: replace[1]))
        try:
            self.model(self.normalize(x))
        except _Stop as s:
            features = s.features
        else:
            raise RuntimeError(f"{type(self.model).__name__}: its head {self.head_name!r} did not run in forward")
        finally:
            for h in hooks:
                h.remove()
        if features.dim() != 2:
            raise ValueError(f"the input of head {self.head_name!r} has shape {tuple(features.shape)}, not (B, f): "
                             f"fsl needs a final nn.Linear on a flat feature vector")
        return features, outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[0]

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features, outputs = self._run(x, capture=self.feature_layers)
        return {**{k: outputs[k] for k in self.feature_layers if k in outputs}, "features": features}

    def forward_from(self, layer: str, representation: torch.Tensor) -> torch.Tensor:
        """Logits from ``layer``'s output: the model is run with that output replaced (the layers
        before it see a zero image and are discarded), so it holds for layers that every path of
        the network goes through (top-level stages); :func:`wrap` checks it for every layer."""
        if layer == "features":
            return self.forward_head(representation)
        if layer not in self.feature_layers:
            raise unknown_layer(self, layer, [*self.feature_layers, "features"])
        if self.input_shape is None:
            raise ConfigError("forward_from needs the input shape: wrap(model, input_shape=(C, H, W)) or data=")
        zeros = representation.new_zeros((representation.shape[0], *self.input_shape))
        return self.forward_head(self._run(zeros, replace=(layer, representation))[0])


def _default_layers(model: nn.Module, head_name: str) -> list[str]:
    names = dict(model.named_children())
    stages = [f"layer{i}" for i in range(1, 5) if f"layer{i}" in names]
    if stages:
        return stages
    head_top = head_name.split(".")[0]
    return [n for n, m in names.items() if n != head_top and any(True for _ in m.parameters())]


def _trace(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The leaf modules of ``model`` in the order ``model(x)`` executes them (one entry per call)."""
    executed: list[nn.Module] = []
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_pre_hook(lambda m, _args: executed.append(m)) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return executed


def wrap(model: nn.Module, head: str | nn.Linear | None = None, domain=None, feature_layers: Sequence[str] | None = None,
         *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
         input_shape: Sequence[int] | None = None, data: torch.Tensor | None = None,
         atol: float = 1e-5) -> WrappedClassifier:
    """``model`` as an fsl :class:`~fsl.models.base.FeatureClassifier`.

    Args:
        model: any ``nn.Module`` mapping images ``(B, C, H, W)`` to logits ``(B, n)`` through a final
            ``nn.Linear`` on a flat feature vector (torchvision's ``fc``, ``classifier[-1]``, timm's
            ``head``, a LightningModule whose ``forward`` gives logits). It is put in eval mode for
            the checks and left as it was.
        head: the head's name in ``model.named_modules()`` or the module; None: the last Linear
            executed on an example input (the last Linear registered when there is no input).
        domain: the features' box, a :class:`~fsl.models.base.FeatureDomain` or ``(lower, upper)``
            (None entries: unbounded); None: inferred from the modules before the head
            (:func:`infer_domain`). Checked on ``data`` (or a random example): features outside it
            raise, never a silently wrong margin.
        feature_layers: modules whose outputs :meth:`~WrappedClassifier.feature_maps` returns (FeatMap,
            FeatInv); None: torchvision-style ``layer1..layer4`` when present, else the top-level
            children before the head.
        mean, std: per-channel normalisation put inside the model when ``model`` expects normalised
            input (fsl's inputs are in [0, 1]).
        input_shape: ``(C, H, W)``; None: from ``data``, else ``model.input_shape`` when it has one.
        data: images ``(B, C, H, W)`` in [0, 1] the checks run on (a few dozen are enough).
        atol: tolerance of ``forward_head(forward_features(x)) == model(x)`` and of the layer checks.

    Returns:
        A :class:`WrappedClassifier` sharing ``model``'s parameters.

    Raises:
        ConfigError: no Linear head, a named head that does not exist or is not a Linear, logits that
            are not the head's output, a domain the data violates, a layer ``forward_from`` cannot
            start from.
    """
    from fsl.checks import check_images

    if not isinstance(model, nn.Module):
        raise ConfigError(f"wrap: expected an nn.Module, got {type(model).__name__}")
    if data is not None:
        check_images("wrap data", data)
        input_shape = tuple(data.shape[1:]) if input_shape is None else input_shape
    if input_shape is None and getattr(model, "input_shape", None) is not None:
        input_shape = tuple(model.input_shape)
    if (mean is None) != (std is None):
        raise ConfigError("wrap: give both mean and std (the normalisation the model expects), or neither")
    normalize = Normalize(mean, std) if mean is not None else None
    p = next(iter(model.parameters()), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    if normalize is not None:
        normalize = normalize.to(device)
    x = None
    if data is not None:
        x = data[:64].to(device, dtype)
    elif input_shape is not None:
        x = torch.rand((8, *input_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)

    names = {m: n for n, m in model.named_modules()}
    was = model.training
    model.eval()
    try:
        executed = _trace(model, normalize(x) if normalize is not None else x) if x is not None else []
        linears = [names[m] for m in executed if isinstance(m, nn.Linear)]
        if isinstance(head, nn.Module):
            if head not in names:
                raise ConfigError("wrap: the head module given is not a submodule of the model")
            head = names[head]
        if head is None:
            if linears:
                head = linears[-1]
            else:
                registered = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
                if not registered:
                    raise ConfigError(f"wrap: {type(model).__name__} has no nn.Linear; fsl needs logits from a final "
                                      f"nn.Linear on a flat feature vector (give head=<name> if it has another name)")
                head = registered[-1]
        try:
            head_mod = model.get_submodule(head)
        except AttributeError:
            raise ConfigError(f"wrap: the model has no module {head!r}{_closest_module(model, head, nn.Linear)}") \
                from None
        if not isinstance(head_mod, nn.Linear):
            raise ConfigError(f"wrap: {head!r} is a {type(head_mod).__name__}, not an nn.Linear")
        if domain is None:
            if x is None:
                raise ConfigError("wrap: the feature domain is inferred by running the model; give input_shape=(C, H, W) "
                                  "or data=, or the domain itself (domain=(lower, upper))")
            before = executed[:executed.index(head_mod)] if head_mod in executed else executed
            domain = infer_domain(before)
        elif not isinstance(domain, FeatureDomain):
            lo, hi = domain
            domain = FeatureDomain(None if lo is None else float(lo), None if hi is None else float(hi))
        layers = list(feature_layers) if feature_layers is not None else _default_layers(model, head)
        for name in layers:
            try:
                model.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"wrap: feature layer {name!r} is not a module of the model"
                                  f"{_closest_module(model, name)}") from None
        net = WrappedClassifier(model, head, domain, layers, input_shape, normalize)
        if x is not None:
            _check(net, x, atol)
    finally:
        model.train(was)
    return net.train(was)  # the wrapper's mode is the model's (so restoring one restores the other)


def _closest_module(model: nn.Module, name: str, kind: type = nn.Module) -> str:
    """The "did you mean" hint for ``name`` among ``model``'s submodules of type ``kind``."""
    from fsl.registry import closest

    return closest(name, [n for n, m in model.named_modules() if n and isinstance(m, kind)])


def _check(net: WrappedClassifier, x: torch.Tensor, atol: float) -> None:
    """The contract on ``x``: logits = head(features), features inside the domain, and
    ``forward_from(k, feature_maps(x)[k]) == forward(x)`` for every layer."""
    with torch.no_grad():
        logits = net.model(net.normalize(x))
        maps = net.feature_maps(x)
        f = maps["features"]
        ours = net.forward_head(f)
        scale = 1.0 + float(logits.abs().max())
        if logits.shape != ours.shape or not torch.allclose(logits, ours, atol=atol * scale, rtol=0):
            raise ConfigError(f"wrap: the model's output is not the output of its head {net.head_name!r} "
                              f"(max difference {float((logits - ours).abs().max()) if logits.shape == ours.shape else 'shape'}); "
                              f"fsl needs logits straight from a final nn.Linear (no softmax or other layer after it)")
        dom = net.feature_domain
        if not dom.contains(f, atol=atol * (1.0 + float(f.abs().max()))):
            raise ConfigError(f"wrap: features outside the feature domain [{dom.lower}, {dom.upper}] (range "
                              f"[{float(f.min()):.4g}, {float(f.max()):.4g}]): the margins would be wrong. Give the "
                              f"right domain=(lower, upper), or domain=(None, None) for unbounded features")
        for k in net.feature_layers:
            if k not in maps:
                raise ConfigError(f"wrap: feature layer {k!r} did not run before the head")
            if not isinstance(maps[k], torch.Tensor):
                raise ConfigError(f"wrap: feature layer {k!r} returns {type(maps[k]).__name__}, not a tensor")
            back = net.forward_from(k, maps[k])
            if not torch.allclose(back, logits, atol=atol * scale, rtol=0):
                raise ConfigError(f"wrap: the network cannot be restarted from layer {k!r} (a path bypasses it); "
                                  f"pick top-level stages as feature_layers=[...]")
        if not all(math.isfinite(float(v)) for v in (f.abs().max(), logits.abs().max())):
            raise ConfigError("wrap: the model gives non-finite features or logits on the check images")
