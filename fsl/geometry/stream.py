"""Point sets read in row chunks, for the geometry solvers that scan large inputs
(:func:`fsl.geometry.hull_distances`, :func:`fsl.geometry.ball_counts`,
:func:`fsl.geometry.union_coverage`): no full float64 copy of an ``(N, f)`` input is ever made.

Accepted inputs (:class:`Rows`), all ``(N, f)`` with a floating dtype:

* a ``torch.Tensor`` on any device, including tensors that share the pages of a memory map, e.g.
  ``torch.from_numpy(np.load(path, mmap_mode="r"))`` or
  ``torch.from_file(path, size=N * f, dtype=torch.float32).view(N, f)``;
* a ``numpy.ndarray``, including ``numpy.memmap`` and ``np.load(path, mmap_mode="r")`` (wrapped
  without a copy, read-only arrays included);
* any other object with ``.shape == (N, f)`` whose ``obj[i0:i1]`` (a slice of rows) returns a numpy
  array or a tensor (e.g. an h5py or zarr dataset). Gathers of arbitrary rows use
  ``obj[sorted_unique_indices]`` when the object supports it, else one slice ``obj[i:i + 1]`` per row.

:class:`Pricer` runs the passes of :func:`fsl.geometry.hull_distances` over such rows (float32
products with a rigorous rounding bound, float64 rescoring of the possible maximisers).

Rows are read by :meth:`Rows.chunk` (a view where possible), converted where they are used, and
gathered by index (:meth:`Rows.take`, float64 by default).  :func:`centered_stats` computes the
centroid in blocks whose size depends on ``f`` only, so that it does not depend on the callers'
chunk sizes.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from fsl.checks import check_finite

Tensor = torch.Tensor

#: rows per block of the statistics passes (fixed, so the centroid is independent of ``chunk_n``)
STATS_BLOCK = 8192


def _torch(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    with warnings.catch_warnings():  # read-only memory maps: torch only warns that it will not write
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(x))


class Rows:
    """``(N, f)`` rows of ``data`` (see the module docstring), served on ``device``.

    Attributes: ``n``, ``f``, ``dtype`` (torch dtype of the stored values), ``device``, ``tensor``
    (the torch view of the data when it is a tensor or a numpy array, else ``None``)."""

    def __init__(self, data, name: str, device):
        self.name, self.device = name, torch.device(device)
        self.obj = data
        self.tensor = None
        if isinstance(data, Tensor):
            self.tensor = data.detach()
        elif isinstance(data, np.ndarray):
            self.tensor = _torch(data)
        shape = tuple(data.shape)
        if len(shape) != 2:
            raise ValueError(f"{name}: expected a 2-D (N, f) array of points, got shape {shape}")
        self.n, self.f = int(shape[0]), int(shape[1])
        if self.tensor is not None:
            self.dtype = self.tensor.dtype
        else:
            probe = _torch(data[0:1]) if self.n else torch.empty(0)
            self.dtype = probe.dtype
        if not self.dtype.is_floating_point:
            raise TypeError(f"{name}: expected floating-point points, got dtype {self.dtype}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.n, self.f

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def chunk(self, n0: int, n1: int, dtype: torch.dtype | None = None) -> Tensor:
        """Rows ``n0:n1`` on the device, in ``dtype`` (default: as stored; a view of the caller's data
        when possible: never modify it in place)."""
        x = self.tensor[n0:n1] if self.tensor is not None else _torch(self.obj[n0:n1])
        return x.to(device=self.device, dtype=dtype or self.dtype)

    def blocks(self, size: int, dtype: torch.dtype | None = None):
        """Yield ``(n0, rows n0:n0+size)`` over all rows (see :meth:`chunk`)."""
        for n0 in range(0, self.n, size):
            yield n0, self.chunk(n0, min(n0 + size, self.n), dtype)

    def take(self, idx: Tensor, dtype: torch.dtype | None = torch.float64) -> Tensor:
        """Rows ``idx`` (any shape of int64 indices, all in range): ``idx.shape + (f,)`` in ``dtype``
        (``None``: as stored)."""
        if self.tensor is not None:
            t = self.tensor
            out = t[idx.to(t.device)] if idx.numel() else t.new_empty(tuple(idx.shape) + (self.f,))
            return out.to(device=self.device, dtype=dtype or self.dtype)
        flat = idx.reshape(-1).cpu()
        uniq, inv = torch.unique(flat, return_inverse=True)
        u = uniq.numpy()
        try:
            rows = _torch(self.obj[u])
        except (TypeError, ValueError, IndexError):
            rows = torch.cat([_torch(self.obj[int(i):int(i) + 1]) for i in u]) if len(u) else torch.empty(0, self.f)
        rows = rows.reshape(len(u), self.f).to(device=self.device, dtype=dtype or self.dtype)
        return rows[inv.to(self.device)].reshape(tuple(idx.shape) + (self.f,))

    def same_as(self, other: "Rows") -> bool:
        """The two sources are the same stored rows (same object, or tensors / arrays of one storage)."""
        if self.obj is other.obj:
            return True
        a, b = self.tensor, other.tensor
        return (a is not None and b is not None and a.shape == b.shape and a.device == b.device
                and a.dtype == b.dtype and a.stride() == b.stride() and a.numel() > 0
                and a.data_ptr() == b.data_ptr())

    def equal(self, other: "Rows", block: int = STATS_BLOCK) -> bool:
        """Every row of ``self`` equals the same row of ``other`` (compared in blocks, in float64)."""
        if self.shape != other.shape:
            return False
        if self.same_as(other):
            return True
        for n0 in range(0, self.n, block):
            n1 = min(n0 + block, self.n)
            if not torch.equal(self.chunk(n0, n1, torch.float64), other.chunk(n0, n1, torch.float64)):
                return False
        return True

    def check_finite(self, fn: str, check=None, block: int = STATS_BLOCK) -> None:
        """``check`` (default :func:`fsl.checks.check_finite`) on one flag per row (NaN where the row
        holds NaN/inf): its ValueError names the rows, as for a whole tensor."""
        flags = None
        for n0, x in self.blocks(block):
            if bool(torch.isfinite(x.sum(1, dtype=torch.float64)).all()):
                continue  # a finite row sum has no NaN/inf
            flags = torch.zeros(self.n) if flags is None else flags
            flags[n0:n0 + x.shape[0]][~torch.isfinite(x).all(1).cpu()] = math.nan
        if flags is not None:
            (check or check_finite)(f"{fn} {self.name}", flags)


def as_rows(data, name: str, device) -> Rows:
    """:class:`Rows` of ``data`` (returned as is when it already is one)."""
    return data if isinstance(data, Rows) else Rows(data, name, device)


def _stats_block(f: int) -> int:
    """Rows per block of :func:`centered_stats`: about 4 MB of float64 (cache-sized temporaries),
    a function of ``f`` only, so the centroid does not depend on the callers' chunk sizes."""
    return max(64, min(STATS_BLOCK, 2 ** 19 // max(f, 1)))


def centered_stats(rows: Rows, fn: str = "", check=None) -> dict:
    """Two streamed passes: the float64 centroid ``cen`` ``(f,)``, the squared distances to it
    ``n2`` ``(N,)`` float64, the largest ``|x_i|`` (``absmax``) and an upper bound on the largest
    ``||x||`` (``norm_max``; ``||x - cen||`` max is ``n2.max()``).  The first pass also checks
    finiteness (:meth:`Rows.check_finite`, message prefix ``fn``, function ``check``)."""
    block = _stats_block(rows.f)
    cen = torch.zeros(rows.f, dtype=torch.float64, device=rows.device)
    absmax = 0.0
    for _, x in rows.blocks(block):
        s = x.sum(0, dtype=torch.float64)
        if not bool(torch.isfinite(s).all()):
            rows.check_finite(fn, check)  # raises, naming the rows (or a float64 overflow of finite rows)
        cen += s
        if x.numel():
            lo, hi = torch.aminmax(x)
            absmax = max(absmax, -float(lo), float(hi))
    cen /= max(rows.n, 1)
    n2 = torch.empty(rows.n, dtype=torch.float64, device=rows.device)
    c2 = float(cen @ cen)
    raw2 = torch.full((), -math.inf, dtype=torch.float64, device=rows.device)
    for n0, x in rows.blocks(block):
        x = x - cen  # float64 (never in place: a chunk can be a view of the caller's data)
        xc = x @ cen
        nb = x.square_().sum(1)
        n2[n0:n0 + nb.shape[0]] = nb
        if nb.numel():
            raw2 = torch.maximum(raw2, (nb + 2.0 * xc).max())  # ||x||^2 - ||c||^2
    raw2 = float(raw2) + c2 if rows.n else 0.0
    slack = 1e-12 * (c2 + (float(n2.max()) if rows.n else 0.0))  # rounding of that identity
    return dict(cen=cen, n2=n2, absmax=absmax, norm_max=math.sqrt(max(raw2, 0.0) + slack) * (1 + 1e-12))


def row_norms(rows: Rows, fn: str = "", check=None) -> tuple[Tensor, float]:
    """One streamed pass: the float64 squared norms ``(x * x).sum(1)`` ``(N,)`` and the largest
    ``|x_i|``; checks finiteness (:meth:`Rows.check_finite`, message prefix ``fn``, function
    ``check``)."""
    sq = torch.empty(rows.n, dtype=torch.float64, device=rows.device)
    absmax = 0.0
    for n0, x in rows.blocks(_stats_block(rows.f)):
        if not x.numel():
            continue
        lo, hi = torch.aminmax(x)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            rows.check_finite(fn, check)
        absmax = max(absmax, -float(lo), float(hi))
        x = x.to(torch.float64)
        sq[n0:n0 + x.shape[0]] = (x * x).sum(1)
    return sq, absmax


def device_of(*xs) -> torch.device:
    """The device of the first tensor among ``xs`` (the CPU for arrays)."""
    return next((x.device for x in xs if isinstance(x, Tensor)), torch.device("cpu"))


def _topk_merge(best, v, i, k):
    if best is None:
        return v, i
    cv, ci = torch.cat([best[0], v], 1), torch.cat([best[1], i], 1)
    vv, j = torch.topk(cv, min(k, cv.shape[1]), dim=1)
    return vv, ci.gather(1, j)


def _topk_rows(s: Tensor, k: int, g: int = 16):
    """``torch.topk(s, k, dim=1)`` (some valid top-k set on ties), faster for wide rows: the top ``k``
    entries lie in the ``k`` groups (here: of ``g`` columns ``G`` apart) with the largest maxima."""
    L, n = s.shape
    k = min(k, n)
    if n < 8 * k * g:
        return torch.topk(s, k, dim=1)
    n1 = n - n % g
    G = n1 // g
    s3 = (s if n1 == n else s[:, :n1].contiguous()).view(L, g, G)  # group j: columns j, j + G, ...
    gi = torch.topk(s3.amax(1), k, dim=1)[1]
    v, j = torch.topk(s3.gather(2, gi[:, None, :].expand(-1, g, -1)).reshape(L, g * k), k, dim=1)
    i = torch.div(j, k, rounding_mode="floor") * G + gi.gather(1, j % k)
    if n1 < n:
        vt, it = torch.topk(s[:, n1:], min(k, n - n1), dim=1)
        return _topk_merge((v, i), vt, it + n1, k)
    return v, i


class Pricer:
    """The passes of :func:`fsl.geometry.hull_distances` over the points: ``u·d`` for every point
    and query direction ``u``, their top ``k``, and the float64 maximum (the certificate).

    Forms of the pass (chunks of ``chunk_n`` rows): float64 on centred rows (``pdtype = dtype``:
    exact), or float32 on the stored float32 rows (*raw*: no conversion or copy at all; ``u·d =
    u·(d - c) + u·c`` ranks like ``u·(d - c)``; used when ``max ||d|| <= 2 max ||d - c||``), or on
    centred rows converted per chunk, ``fl32(fl64(d - c))`` (for float64 inputs converted once and
    kept: half the input's size).  Rounding: with ``n`` the largest ``||d||`` of the form, every
    ``|fl(u·d) - u·d| <= E = 1.01 (f + 4) u_32 ||u|| n``: ``u`` and ``d`` rounded to float32
    (``2 u_32``; the float64 centring adds ``u_64``), the ``f``-term sum in any order
    (``f u_32``), and ``1.01`` for the second-order terms.

    The points of the working set are left out of the float32 pass: their float64 scores come from
    the Gram matrix, ``u·(d_k - c) = u·(q - c) - (G a)_k`` (``u = -sum_j a_j (d_j - q)``).  Among the
    top ``kc`` float32 scores of the other points, every one that may beat the best known float64
    score ``v*`` (``fl(u·d) + E >= max(v*, max fl(u·d) - E)``) is rescored in float64 from gathered
    rows.  A point outside the top ``kc`` has ``u·d <= fl_kc + E``: when that is below ``v*`` the
    maximum is the float64 one.  Otherwise the queries that might be certified (``v*`` at most
    their threshold) are priced again with 4x ``kc`` (float32; beyond ``max_check`` candidates one
    float64 pass), and the others keep ``v*``, a lower bound that already shows they are not
    certified.  So every reported gap is computed from float64 values of ``u·d``.
    """

    def __init__(self, rows: Rows, st: dict, pdtype, dtype, chunk_n: int, gather_mb: int, max_check: int = 4096):
        self.rows, self.cen, self.n2, self.dtype = rows, st["cen"].to(dtype), st["n2"], dtype
        self.pdtype, self.chunk_n, self.max_check = pdtype, chunk_n, max_check
        self.gather_bytes = max(gather_mb, 1) * 2 ** 20
        cnorm = math.sqrt(float(self.n2.max()))
        self.raw = pdtype == torch.float32 and rows.dtype == torch.float32 and st["norm_max"] <= 2 * cnorm
        self.dnorm = st["norm_max"] if self.raw else cnorm
        self.cache = None
        if pdtype != dtype and not self.raw and rows.itemsize >= 8:  # float64 input: half its size
            self.cache = torch.empty((rows.n, rows.f), dtype=pdtype, device=rows.device)
            for n0, x in rows.blocks(chunk_n, torch.float64):
                self.cache[n0:n0 + x.shape[0]] = x - self.cen
        self.passes = self.f64_passes = self.rescored = 0
        self._ws = None  # the workspace of buffer()
        self.unit = float(torch.finfo(pdtype).eps) / 2

    def _chunks(self, dtype):
        if dtype == self.pdtype and self.cache is not None:
            for n0 in range(0, self.rows.n, self.chunk_n):
                yield n0, self.cache[n0:n0 + self.chunk_n]
        elif dtype == self.pdtype and self.raw:
            yield from self.rows.blocks(self.chunk_n)
        else:
            for n0, x in self.rows.blocks(self.chunk_n, self.dtype):
                yield n0, (x - self.cen).to(dtype)

    def topk(self, U: Tensor, k: int, dtype=None, bias: Tensor | None = None, exclude: Tensor | None = None):
        """Top-``k`` of ``U·d (- bias_d)`` over all points in ``dtype`` (default: the pricing dtype),
        leaving out the points ``exclude`` ``(L, K)`` of each row (-1: none)."""
        dtype = dtype or self.pdtype
        Ul, best, k = U.to(dtype), None, min(k, self.rows.n)
        for n0, X in self._chunks(dtype):
            n1 = n0 + X.shape[0]
            s = Ul @ X.T if bias is None else torch.addmm(-bias[n0:n1].to(dtype)[None], Ul, X.T)
            if exclude is not None:
                r, c = ((exclude >= n0) & (exclude < n1)).nonzero(as_tuple=True)
                s[r, exclude[r, c] - n0] = -math.inf
            v, i = _topk_rows(s, k)
            best = _topk_merge(best, v, i + n0, k)
        self.passes += 1
        self.f64_passes += dtype == self.dtype
        return best

    def seed(self, qc: Tensor, k: int) -> Tensor:
        """The ``k`` nearest points: largest ``2 q·d - |d - c|^2`` (ranking of ``-|q - d|^2``)."""
        return self.topk(2.0 * qc, k, bias=self.n2)[1]

    def block_rows(self, per_row: int) -> int:
        return max(1, self.gather_bytes // max(1, per_row * self.rows.f * 8))

    def buffer(self, shape: tuple) -> Tensor:
        """An uninitialised ``dtype`` array of ``shape`` on the centroid's device, in a workspace reused
        across calls (a fresh large allocation is page-faulted in every time), valid until the next call."""
        n = math.prod(shape)
        if self._ws is None or self._ws.numel() < n:
            self._ws = torch.empty(n, dtype=self.dtype, device=self.cen.device)
        return self._ws[:n].view(shape)

    def offsets(self, idx: Tensor, qc: Tensor | None = None, block_mb: float = 2.0) -> Tensor:
        """``(d_k - c) - q_c`` in ``dtype`` (``d_k - c`` without ``qc``) for the points ``idx``
        ``(L, K)`` of each centred query ``qc`` ``(L, f)``: ``(L, K, f)`` in the workspace
        (:meth:`buffer`), gathered, converted and shifted a few rows of ``idx`` at a time so that
        the intermediates stay in cache."""
        out = self.buffer(tuple(idx.shape) + (self.rows.f,))
        step = max(1, int(block_mb * 2 ** 20) // max(1, idx.shape[1] * self.rows.f * 8))
        for l0 in range(0, idx.shape[0], step):
            (o := out[l0:l0 + step]).copy_(self.rows.take(idx[l0:l0 + step], None)).sub_(self.cen)
            if qc is not None:
                o.sub_(qc[l0:l0 + step, None, :])
        return out

    def rescore(self, U: Tensor, idx: Tensor) -> Tensor:
        """float64 ``u·(d - c)`` for the points ``idx`` ``(L, m)`` of each row ``u`` of ``U``."""
        out = torch.empty(idx.shape, dtype=self.dtype, device=U.device)
        step = self.block_rows(idx.shape[1])
        for l0 in range(0, idx.shape[0], step):
            X = self.offsets(idx[l0:l0 + step])
            out[l0:l0 + step] = torch.bmm(X, U[l0:l0 + step, :, None]).squeeze(2)
        self.rescored += idx.numel()
        return out

    def _band_max(self, U, vl, il, E, sS, n_rest: int):
        """The float64 ``max_k u·(d_k - c)`` from the working set's exact scores ``sS`` and the float32
        top ``(vl, il)`` of the other points: those whose score may exceed the best known one by
        the rounding bound ``E`` are rescored.  Returns ``(vmax, scores, unsure)``: ``scores`` of
        ``il`` in centred coordinates (rescored ones exact), ``unsure`` where points beyond the
        top ``vl.shape[1]`` (of ``n_rest``) might still exceed ``vmax``."""
        v = vl.to(self.dtype)
        off = U @ self.cen if self.raw else torch.zeros_like(E)  # raw scores are u·d = u·(d - c) + u·c
        slack = E + 4 * self.unit * v[:, :1].abs().squeeze(1)
        vmax = sS.amax(1)
        ref = torch.maximum(vmax + off, v[:, 0] - slack)
        need = v + slack[:, None] >= ref[:, None]
        ex = v - off[:, None]
        cmax = int(need.sum(1).max()) if need.numel() else 0
        if cmax:
            o = torch.argsort((~need).to(torch.int8), dim=1, stable=True)[:, :cmax]
            sel = need.gather(1, o)
            e = self.rescore(U, il.gather(1, o))
            ex.scatter_(1, o, torch.where(sel, e, ex.gather(1, o)))
            vmax = torch.maximum(vmax, torch.where(sel, e, torch.full_like(e, -math.inf)).amax(1))
        unsure = (v[:, -1] + slack >= vmax + off) if v.shape[1] < n_rest else torch.zeros_like(need[:, 0])
        return vmax, ex, unsure

    def price(self, U: Tensor, k: int, kc: int, vthr: Tensor, S: Tensor, sS: Tensor):
        """``(vmax, vtop, itop, exact)``: ``max_k u·(d_k - c)`` over all points (float64 where
        ``exact``; elsewhere a lower bound above ``vthr``), and the best ``k`` points outside the
        working set ``S`` (``(L, K)``, -1 where invalid; exact scores ``sS``, ``-inf`` where invalid)
        with their scores."""
        N = self.rows.n
        n_rest = N - int((S >= 0).sum(1).min())
        kc = max(min(max(k, kc), n_rest), 1)
        if self.pdtype == self.dtype:
            v, i = self.topk(U, kc, exclude=S)
            return torch.maximum(v[:, 0], sS.amax(1)), v[:, :k], i[:, :k], torch.ones_like(vthr, dtype=torch.bool)
        E = (U.shape[1] + 4) * self.unit * 1.01 * U.norm(dim=1) * self.dnorm
        vl, il = self.topk(U, kc, exclude=S)
        vmax, ex, unsure = self._band_max(U, vl, il, E, sS, n_rest)
        redo = torch.nonzero(unsure & (vmax <= vthr)).squeeze(1)
        kk = kc
        while redo.numel():  # might be certified: find the float64 maximum
            kk = min(4 * kk, n_rest)
            if kk > self.max_check:  # massive ties: a float64 pass
                v2, i2 = self.topk(U[redo], kc, self.dtype, exclude=S[redo])
                ex[redo], il[redo] = v2, i2
                vmax[redo] = torch.maximum(v2[:, 0], vmax[redo])
                unsure[redo] = False
                break
            v2, i2 = self.topk(U[redo], kk, exclude=S[redo])
            vm, e2, still = self._band_max(U[redo], v2, i2, E[redo], sS[redo], n_rest)
            vmax[redo] = vm
            ev, j = torch.topk(e2, kc, dim=1)
            ex[redo], il[redo] = ev, i2.gather(1, j)
            unsure[redo] = still
            redo = redo[still]
        vtop, j = torch.topk(ex, min(k, kc), dim=1)
        return vmax, vtop, il.gather(1, j), ~unsure


__all__ = ["Rows", "as_rows", "centered_stats", "row_norms", "device_of", "Pricer", "STATS_BLOCK"]
