"""Seeded, class-stratified subsets of a data set, in an order whose every prefix is stratified too.

Data sets are often stored sorted by class, so a prefix of the stored order (or of a sorted
subset) holds a few classes only. :func:`stratified_subset` is the one way samples are drawn in
fsl: a seeded random draw with per-class quotas proportional to the class frequencies, returned
in an interleaved order, so that code taking the first ``m`` of a drawn subset still sees every
class in proportion.
"""
from __future__ import annotations

import heapq
import operator

import numpy as np
import torch

Tensor = torch.Tensor


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    # PCG64 from a SeedSequence: the same stream on every platform and thread count
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(seed) % 2 ** 64)))


def _as_labels(labels, n_total) -> tuple[np.ndarray | None, int]:
    """``(labels as int64 (N,) or None, N)``, checked."""
    if labels is None:
        if n_total is None:
            raise ValueError("stratified_subset: give labels (N,) or n_total (the number of samples)")
        n_total = operator.index(n_total)
        if n_total < 0:
            raise ValueError(f"stratified_subset: n_total must be >= 0, got {n_total}")
        return None, n_total
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"stratified_subset: labels must be 1-D (N,), got shape {tuple(y.shape)}; pass one class "
                         f"index per sample (not one-hot rows or images)")
    if y.size and y.dtype.kind not in "iub":
        raise ValueError(f"stratified_subset: labels must be integer class indices, got dtype {y.dtype}")
    if n_total is not None and operator.index(n_total) != len(y):
        raise ValueError(f"stratified_subset: n_total={n_total} but labels has {len(y)} entries")
    return y.astype(np.int64, copy=False), len(y)


def _size(n, N: int) -> int:
    """How many samples a request ``n`` means: all of them for None, <= 0 or >= N."""
    if n is None:
        return N
    n = operator.index(n)
    return N if n <= 0 or n >= N else n


def class_quotas(counts: np.ndarray, k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Per-class sample counts ``(C,)`` summing to ``k`` for classes of sizes ``counts`` ``(C,)``.

    Largest-remainder (Hamilton) rounding of ``counts * k / N`` (ties broken by ``rng``, else by
    class order); when ``k >= C`` every class gets at least one sample, taken from the classes that
    are most over their proportional share.
    """
    counts = np.asarray(counts, dtype=np.int64)
    N, C = int(counts.sum()), len(counts)
    if not 0 <= k <= N:
        raise ValueError(f"class_quotas: k={k} must be in [0, {N}]")
    if C == 0 or k == 0:
        return np.zeros(C, dtype=np.int64)
    quota, rem = np.divmod(counts * k, N)
    tie = rng.random(C) if rng is not None else np.arange(C, dtype=np.float64)
    extra = k - int(quota.sum())
    quota[np.lexsort((tie, -rem))[:extra]] += 1
    if k >= C:
        for c in np.flatnonzero(quota == 0):
            over = quota * N - counts * k  # how far each class is above its share (times N)
            over[quota <= 1] = np.iinfo(np.int64).min
            donor = int(np.argmax(over))
            quota[donor] -= 1
            quota[c] += 1
    return quota


def interleave(classes: np.ndarray, quota: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positions ``(K,)``, ``K = quota.sum()``: class ``c`` takes ``quota[c]`` slots so that every
    prefix of length ``L`` holds between ``floor(L q_c / K)`` and ``ceil(L q_c / K)`` of them.

    ``classes`` ``(K,)`` is the class of each item, grouped by class in order (``quota[0]`` items of
    class 0 first, ...); the result orders those items. Earliest deadline first on the windows
    ``[floor(j K / q_c), ceil((j + 1) K / q_c) - 1]`` of the ``j``-th item of class ``c``, which are
    always schedulable (Steiner & Yeomans, 1993); equal deadlines are broken by ``rng``.
    """
    K = int(quota.sum())
    starts = np.concatenate([[0], np.cumsum(quota)[:-1]])
    j = np.arange(K) - starts[classes]
    q = quota[classes]
    release = (j * K) // q
    deadline = -((-(j + 1) * K) // q) - 1
    tie = rng.random(K)
    by_release = np.argsort(release, kind="stable")
    heap: list = []
    out = np.empty(K, dtype=np.int64)
    p = 0
    for s in range(K):
        while p < K and release[by_release[p]] <= s:
            i = int(by_release[p])
            heapq.heappush(heap, (int(deadline[i]), float(tie[i]), i))
            p += 1
        d, _, i = heapq.heappop(heap)
        if d < s:  # cannot happen for windows built from exact quotas
            raise AssertionError("interleave: a deadline was missed")
        out[s] = i
    return out


def stratified_subset(labels: Tensor | np.ndarray | None, n: int | None, seed: int,
                      n_total: int | None = None) -> Tensor:
    """Indices ``(k,)`` (int64, CPU) of a seeded random subset of ``N`` samples, stratified by label.

    Args:
        labels: ``(N,)`` integer class of each sample, or None: no classes (a uniform random draw;
            ``n_total`` then gives ``N``).
        n: how many samples; None, ``<= 0`` or ``>= N``: all ``N`` of them (still in the order below,
            never the stored one).
        seed: any int (taken modulo ``2**64``); the draw depends only on the labels, ``n`` and
            ``seed``, not on the platform, thread count or the global random state.
        n_total: ``N`` when ``labels`` is None; when both are given they must agree.

    Returns:
        ``k = min(n, N)`` distinct indices into the ``N`` samples. With labels, class ``c`` (with
        ``N_c`` samples) gets ``q_c`` of them: largest-remainder rounding of ``N_c k / N``, at least
        one per class present when ``k`` >= the number of classes. Which samples of a class are
        taken is uniformly random. The order interleaves the classes: every prefix of length ``L``
        holds between ``floor(L q_c / k)`` and ``ceil(L q_c / k)`` samples of class ``c``, so a
        prefix of the result is itself (within one sample per class) a stratified draw. Without
        labels the result is the first ``k`` of a seeded random permutation.

    Raises:
        ValueError: labels not 1-D or not integers, neither labels nor ``n_total``, or a mismatch.
        TypeError: a seed or ``n`` that is not an integer.
    """
    y, N = _as_labels(labels, n_total)
    k = _size(n, N)
    rng = _rng(seed)
    if y is None:
        return torch.from_numpy(rng.permutation(N)[:k].astype(np.int64))
    if N == 0:
        return torch.empty(0, dtype=torch.long)
    values, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = class_quotas(counts, k, rng)
    members = np.argsort(inverse, kind="stable")  # sample indices grouped by class, in class order
    bounds = np.concatenate([[0], np.cumsum(counts)])
    chosen = np.concatenate([rng.permutation(members[bounds[c]:bounds[c + 1]])[:quota[c]]
                             for c in range(len(values))])
    classes = np.repeat(np.arange(len(values)), quota)
    return torch.from_numpy(chosen[interleave(classes, quota, rng)].astype(np.int64))


def stratified_split(labels: Tensor | np.ndarray, holdout: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held)`` of a seeded split of the ``N`` samples of ``labels`` ``(N,)``:
    ``held`` is :func:`stratified_subset` of ``holdout`` samples (0: none, ``>= N``: all), ``keep``
    the rest; both int64, disjoint, covering ``range(N)``, each in the interleaved order of
    :func:`stratified_subset` (every prefix stratified; sort them for the stored order)."""
    y, N = _as_labels(labels, None)
    holdout = operator.index(holdout)
    if holdout < 0:
        raise ValueError(f"stratified_split: holdout must be >= 0, got {holdout}")
    if holdout == 0:
        held = torch.empty(0, dtype=torch.long)
    else:
        held = stratified_subset(y, min(holdout, N), seed)
    mask = np.ones(N, dtype=bool)
    mask[held.numpy()] = False
    rest = np.flatnonzero(mask)
    keep = torch.from_numpy(rest[stratified_subset(y[rest], None, seed).numpy()]) if len(rest) else \
        torch.empty(0, dtype=torch.long)
    return keep, held


__all__ = ["stratified_subset", "stratified_split", "class_quotas", "interleave"]
