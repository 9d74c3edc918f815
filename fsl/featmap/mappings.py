"""Closed-form maps from original to manipulated feature maps (FeatMap: Krey, Neukirch, Strodthoff,
arXiv 2605.11203), pure torch.

Feature maps are ``(N, C, h, w)``; a feature vector ``(N, C)`` is a map with one position. A
*shared* map acts on every position's channel vector ``x_p`` (C,) alike, ``y_p = W x_p + b`` (a
1x1 convolution), and is fitted on the pooled pairs of positions of all training images; the
*global* linear map acts on the flattened map (C h w,). All solves are in float64.

- :func:`fit_shared_linear`: ridge / least squares, exact;
- :func:`fit_procrustes`: the best orthogonal ``W`` (orthogonal Procrustes) plus a bias;
- :func:`fit_global_linear`: ridge on the flattened map in its dual (kernel) form, so that the
  ``(C h w)^2`` matrix is never formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def check_features(f: Tensor, what: str = "features") -> Tensor:
    """``f`` as a 4-d map: ``(N, C, h, w)`` as is, ``(N, C)`` as ``(N, C, 1, 1)``; ValueError for
    another shape or NaN/inf values (naming the fix)."""
    if not isinstance(f, Tensor) or f.dim() not in (2, 4):
        shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{what} must be a feature map (N, C, h, w) or vectors (N, C), got {shape}")
    bad = ~torch.isfinite(f.flatten(1)).all(1)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} of {len(f)} sample(s) have NaN/inf features (e.g. sample "
                         f"{int(bad.nonzero()[0])}); the model diverged or its inputs are not in [0, 1]: fix the "
                         f"checkpoint or the data before fitting maps")
    return f if f.dim() == 4 else f[:, :, None, None]


def check_pair(x: Tensor, y: Tensor, what: str = "") -> tuple[Tensor, Tensor]:
    """Both checked (:func:`check_features`) and of the same shape."""
    x, y = check_features(x, f"{what}source features"), check_features(y, f"{what}target features")
    if x.shape != y.shape:
        raise ValueError(f"{what}source {tuple(x.shape)} and target {tuple(y.shape)} feature maps must have the "
                         f"same shape (the same layer of the same model)")
    if len(x) < 2:
        raise ValueError(f"{what}at least 2 training maps are needed to fit a map, got {len(x)}")
    return x, y


def to_positions(f: Tensor) -> Tensor:
    """``(N, C, h, w)`` -> ``(N, h w, C)``: one channel vector per position."""
    return f.flatten(2).transpose(1, 2)


def from_positions(v: Tensor, shape) -> Tensor:
    """Inverse of :func:`to_positions` for a map of ``shape`` (N, C, h, w)."""
    N, C, h, w = shape
    return v.transpose(1, 2).reshape(N, -1, h, w)


@dataclass
class AffineMap:
    """A map shared over positions, ``y_p = W x_p + b``.

    Attributes:
        weight: ``(C, C)`` float64 ``W``. bias: ``(C,)`` float64 ``b``.
    """

    weight: Tensor
    bias: Tensor

    def wx(self, f: Tensor) -> Tensor:
        """``(N, h w, C)``: ``W x_p`` without the bias, per position (``F.linear(x, W)``)."""
        x = to_positions(check_features(f))
        return F.linear(x.to(self.weight), self.weight)

    def apply_wx(self, wx: Tensor, like: Tensor) -> Tensor:
        """``W x_p + b`` from :meth:`wx`, shaped and typed like the input ``like``."""
        f4 = check_features(like)
        y = from_positions(wx + self.bias, f4.shape).to(like.dtype)
        return y if like.dim() == 4 else y.flatten(1)

    def __call__(self, f: Tensor) -> Tensor:
        return self.apply_wx(self.wx(f), f)

    def singular_values(self) -> Tensor:
        return torch.linalg.svdvals(self.weight)


def _centred_positions(x: Tensor, y: Tensor):
    """Pooled position pairs, centred: ``Xc, Yc (M, C)`` float64 and the means ``(C,)``."""
    X = to_positions(x).reshape(-1, x.shape[1]).double()
    Y = to_positions(y).reshape(-1, y.shape[1]).double()
    xm, ym = X.mean(0), Y.mean(0)
    return X - xm, Y - ym, xm, ym


def fit_shared_linear(x: Tensor, y: Tensor, ridge: float = 0.0) -> AffineMap:
    """Least squares / ridge over all positions of all maps: ``min_{W, b} sum_{n, p} ||W x_np + b
    - y_np||^2 + lam ||W||_F^2`` with ``lam = ridge * trace(Xc^T Xc) / C`` (``ridge`` relative to the
    mean eigenvalue of the centred Gram matrix; b unpenalised). ``ridge = 0``: the minimum-norm
    least-squares solution (pseudo-inverse, exact on rank-deficient features such as dead ReLU
    channels).

    Args:
        x, y: ``(N, C, h, w)`` (or ``(N, C)``) source and target maps.
    """
    x, y = check_pair(x, y, "fit_shared_linear: ")
    Xc, Yc, xm, ym = _centred_positions(x, y)
    G, S = Xc.T @ Xc, Xc.T @ Yc
    if ridge > 0:
        lam = float(ridge) * float(torch.trace(G)) / G.shape[0]
        Wt = torch.linalg.solve(G + lam * torch.eye(len(G), dtype=G.dtype), S)
    else:
        Wt = torch.linalg.pinv(G, hermitian=True) @ S
    W = Wt.T.contiguous()
    return AffineMap(W, ym - W @ xm)


def fit_procrustes(x: Tensor, y: Tensor) -> AffineMap:
    """Orthogonal Procrustes over all positions: the orthogonal ``W`` minimising ``||Yc - Xc W^T||_F``
    on the centred position pairs (``W = V U^T`` for ``Xc^T Yc = U S V^T``), and ``b = y_mean - W
    x_mean``: a rotation/reflection of the channel space plus a shift."""
    x, y = check_pair(x, y, "fit_procrustes: ")
    Xc, Yc, xm, ym = _centred_positions(x, y)
    U, _, Vh = torch.linalg.svd(Xc.T @ Yc)
    W = (U @ Vh).T.contiguous()
    return AffineMap(W, ym - W @ xm)


@dataclass
class GlobalLinearMap:
    """Ridge map on the flattened map, ``y = W x + b`` with ``W = Yc^T (K + lam I)^-1 Xc``,
    ``K = Xc Xc^T`` and ``b = y_mean - W x_mean`` (dual form: ``W`` is ``D x D``, ``D = C h w``, and
    is never formed). The ``N x D`` products run in float32, the ``N x N`` algebra in float64.

    Attributes:
        x_mean, y_mean: ``(D,)``. train: ``Xc`` ``(N, D)``, the centred training maps.
        alpha: ``(K + lam I)^-1 Yc`` ``(N, D)``. shape: ``(C, h, w)`` of one map.
        lam: the ridge. eig: ``(k, V)``, the eigendecomposition of K. target_gram: ``V^T Yc Yc^T V``.
    """

    x_mean: Tensor
    y_mean: Tensor
    train: Tensor
    alpha: Tensor
    shape: tuple
    lam: float
    eig: tuple
    target_gram: Tensor

    def _flat(self, f: Tensor) -> Tensor:
        f4 = check_features(f)
        if tuple(f4.shape[1:]) != self.shape:
            raise ValueError(f"GlobalLinearMap was fitted on maps {self.shape}, got {tuple(f4.shape[1:])}")
        return f4.flatten(1).to(self.train.dtype)

    def wx(self, f: Tensor) -> Tensor:
        """``(N, 1, D)``: ``W x`` without the bias (one "position": the whole map)."""
        return ((self._flat(f) @ self.train.T) @ self.alpha)[:, None]

    @property
    def bias(self) -> Tensor:
        """``b = y_mean - W x_mean`` (D,)."""
        return self.y_mean - (self.x_mean @ self.train.T) @ self.alpha

    def apply_wx(self, wx: Tensor, like: Tensor) -> Tensor:
        """``W x + b`` from :meth:`wx`, shaped and typed like the input ``like``."""
        y = (wx[:, 0] + self.bias).to(like.dtype)
        return y.reshape(len(y), *self.shape) if like.dim() == 4 else y

    def __call__(self, f: Tensor) -> Tensor:
        return self.apply_wx(self.wx(f), f)

    def singular_values(self) -> Tensor:
        """The singular values of ``W`` (at most N nonzero), descending, from N x N matrices: with
        ``K = V diag(k) V^T``, ``W W^T = Yc^T V diag(k / (k + lam)^2) V^T Yc`` has the nonzero
        eigenvalues of ``c c^T * (V^T Yc Yc^T V)``, ``c = sqrt(k) / (k + lam)``."""
        k, _ = self.eig
        c = k.clamp_min(0).sqrt() / (k.clamp_min(0) + self.lam)
        M = c[:, None] * self.target_gram * c[None, :]
        return torch.linalg.eigvalsh((M + M.T) / 2).clamp_min(0).flip(0).sqrt()


def fit_global_linear(x: Tensor, y: Tensor, ridge: float = 0.1) -> GlobalLinearMap:
    """Ridge regression of the flattened target on the flattened source map, ``min ||Yc - Xc W^T||^2
    + lam ||W||_F^2``, ``lam = ridge * trace(K) / N`` (relative to the mean eigenvalue of the Gram
    matrix ``K = Xc Xc^T``), solved in the dual: ``W = Yc^T (K + lam I)^-1 Xc``. ``ridge`` must be
    positive (with N < C h w maps the problem is underdetermined).

    Args:
        x, y: ``(N, C, h, w)`` (or ``(N, C)``) source and target maps.
    """
    x, y = check_pair(x, y, "fit_global_linear: ")
    X, Y = x.flatten(1).double(), y.flatten(1).double()
    xm, ym = X.mean(0), Y.mean(0)
    # float64 throughout: float32 Gram matrices put rounding-level eigenvalues (~1e-7 of the largest)
    # into the N x N spectrum, i.e. spurious singular values of W above the rank threshold
    Xc, Yc = X - xm, Y - ym
    K = Xc @ Xc.T
    lam = float(ridge) * float(torch.trace(K)) / len(K)
    if not lam > 0:
        raise ValueError(f"fit_global_linear: ridge must be > 0 (got {ridge}) and the training maps must differ: "
                         f"the flattened problem has {X.shape[1]} unknowns per output and {len(X)} maps")
    k, V = torch.linalg.eigh((K + K.T) / 2)
    P = V.T @ Yc                                                  # V^T Yc (N, D)
    alpha = V @ (P / (k.clamp_min(0) + lam)[:, None])             # (K + lam I)^-1 Yc
    return GlobalLinearMap(xm, ym, Xc, alpha, tuple(x.shape[1:]), lam, (k, V), P @ P.T)
