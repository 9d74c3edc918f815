"""fsl.data.subsets: seeded, class-stratified draws whose every prefix is stratified (that every
registered analysis feeds the model class-proportional samples is tests/analysis/test_subsets.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl.data.subsets import class_quotas, stratified_split, stratified_subset
from tests.helpers import sorted_labels


def _prefix_counts(y: torch.Tensor, idx: torch.Tensor, C: int) -> torch.Tensor:
    """``(k, C)``: row ``L - 1`` = class counts of the first ``L`` drawn samples."""
    return torch.nn.functional.one_hot(y[idx], C).cumsum(0)


# -- the helper ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes, n, want", [
    ([50, 30, 15, 5], 40, [20, 12, 6, 2]),  # exact shares
    ([7, 5, 3], 10, [5, 3, 2]),  # 4.67, 3.33, 2: the one left over goes to the largest remainder
    ([97, 1, 1, 1], 4, [1, 1, 1, 1]),  # n >= number of classes: every class gets one
    ([97, 1, 1, 1], 3, [3, 0, 0, 0]),  # fewer than the classes: plain largest remainder
    ([10] * 10, 30, [3] * 10),
])
def test_per_class_counts_are_the_quotas(sizes, n, want):
    y = sorted_labels(sizes)
    idx = stratified_subset(y, n, seed=3)
    assert len(idx) == n and len(set(idx.tolist())) == n
    assert torch.bincount(y[idx], minlength=len(sizes)).tolist() == want
    assert class_quotas(np.array(sizes), n).tolist() == want


def test_largest_remainder_ties_and_bounds():
    q = class_quotas(np.array([10] * 10), 15, np.random.default_rng(0))
    assert sorted(q.tolist()) == [1] * 5 + [2] * 5  # ties broken by the generator, not the class order
    counts = np.array([40, 25, 20, 10, 5])
    for k in range(0, 101):
        q = class_quotas(counts, k)
        assert q.sum() == k and (q <= counts).all()
        assert (np.abs(q - counts * k / counts.sum()) < 1).all() or k >= len(counts)
        if k >= len(counts):
            assert (q >= 1).all()


@pytest.mark.parametrize("sizes", [[30] * 10, [60, 40, 25, 10, 5, 1], [3, 17, 9]])
@pytest.mark.parametrize("n", [None, 7, 40, 10 ** 6])
def test_every_prefix_is_stratified(sizes, n):
    """The first L drawn samples hold between floor(L q_c / k) and ceil(L q_c / k) of class c (q_c its
    quota, k the draw's size): within 1 of proportional for every L, so in particular for L = k * C."""
    y = sorted_labels(sizes)
    C, N = len(sizes), len(y)
    idx = stratified_subset(y, n, seed=11)
    k = len(idx)
    q = torch.bincount(y[idx], minlength=C).double()
    L = torch.arange(1, k + 1, dtype=torch.float64)[:, None]
    counts = _prefix_counts(y, idx, C).double()
    assert (counts >= torch.floor(L * q / k)).all() and (counts <= torch.ceil(L * q / k)).all()
    if k == N:  # all samples: proportional to the class sizes themselves
        p = torch.as_tensor(sizes, dtype=torch.float64) / N
        assert ((counts - L * p).abs() < 1).all()
    if all(s == sizes[0] for s in sizes):
        for m in range(1, k // C + 1):  # every prefix of m * C samples holds exactly m of each class
            assert (counts[m * C - 1] == m).all()


def test_determinism_and_seeds():
    y = sorted_labels([25, 40, 35])
    a = stratified_subset(y, 30, seed=5)
    torch.manual_seed(123)
    np.random.seed(7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = stratified_subset(y, 30, seed=5)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b) and a.dtype == torch.long  # no global random state, no thread dependence
    assert not torch.equal(a, stratified_subset(y, 30, seed=6))
    assert torch.equal(stratified_subset(y.numpy(), 30, seed=5), a)  # numpy labels: the same draw
    neg = stratified_subset(y, 30, seed=-1)  # negative seeds are valid (modulo 2**64)
    assert torch.equal(neg, stratified_subset(y, 30, seed=-1)) and not torch.equal(neg, a)


@pytest.mark.parametrize("n", [None, 0, -3, 100, 10 ** 6])
def test_all_samples_come_interleaved_never_in_the_stored_order(n):
    y = sorted_labels([10] * 10)
    idx = stratified_subset(y, n, seed=0)
    assert sorted(idx.tolist()) == list(range(100))
    assert not torch.equal(idx, torch.arange(100)) and not torch.equal(y[idx], y)
    assert torch.equal(torch.bincount(y[idx[:10]]), torch.ones(10, dtype=torch.long))  # the first 10: one of each


def test_without_labels_a_uniform_random_subset():
    idx = stratified_subset(None, 30, seed=1, n_total=100)
    assert len(idx) == 30 and len(set(idx.tolist())) == 30 and 0 <= int(idx.min()) and int(idx.max()) < 100
    assert not torch.equal(idx, idx.sort().values)  # not sorted: a prefix of it is a uniform draw too
    assert torch.equal(idx, stratified_subset(None, 30, seed=1, n_total=100))
    assert not torch.equal(idx, stratified_subset(None, 30, seed=2, n_total=100))
    full = stratified_subset(None, None, seed=1, n_total=100)
    assert sorted(full.tolist()) == list(range(100)) and not torch.equal(full, torch.arange(100))
    # every sample is equally likely to be drawn: 2,000 draws of 10 of 20
    hits = torch.bincount(torch.cat([stratified_subset(None, 10, s, n_total=20) for s in range(2000)]), minlength=20)
    assert (hits - 1000).abs().max() < 150  # sd sqrt(2000 * 0.25) ~ 22
    assert len(stratified_subset(None, 5, 0, n_total=0)) == 0 and len(stratified_subset([], 5, 0)) == 0


def test_bad_input_is_refused_clearly():
    y = sorted_labels([5, 5])
    with pytest.raises(ValueError, match=r"labels must be 1-D \(N,\), got shape \(10, 1\)"):
        stratified_subset(y[:, None], 3, 0)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        stratified_subset(torch.nn.functional.one_hot(y), 3, 0)
    with pytest.raises(ValueError, match="integer class indices"):
        stratified_subset(y.float(), 3, 0)
    with pytest.raises(ValueError, match="give labels"):
        stratified_subset(None, 3, 0)
    with pytest.raises(ValueError, match="n_total=11 but labels has 10"):
        stratified_subset(y, 3, 0, n_total=11)
    with pytest.raises(TypeError, match="seed must be an int"):
        stratified_subset(y, 3, 0.5)
    with pytest.raises(TypeError):
        stratified_subset(y, 2.5, 0)
    assert torch.equal(stratified_subset(y, 11, 0), stratified_subset(y, None, 0))  # n > N: all of them


def test_stratified_split():
    y = sorted_labels([30, 20, 10])
    keep, held = stratified_split(y, 12, seed=0)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(60))
    assert torch.bincount(y[held]).tolist() == [6, 4, 2] and torch.bincount(y[keep]).tolist() == [24, 16, 8]
    assert torch.equal(held, stratified_subset(y, 12, 0))
    k2, h2 = stratified_split(y, 12, seed=0)
    assert torch.equal(keep, k2) and torch.equal(held, h2)
    keep, held = stratified_split(y, 0, seed=0)
    assert len(held) == 0 and sorted(keep.tolist()) == list(range(60))
    keep, held = stratified_split(y, 100, seed=0)
    assert len(keep) == 0 and len(held) == 60
    with pytest.raises(ValueError, match="holdout must be >= 0"):
        stratified_split(y, -1, 0)


def test_lightning_free_math_does_not_import_lightning():
    import subprocess
    import sys

    code = ("import sys, fsl.data.subsets, fsl.geometry, fsl.inversion; "
            "print('pytorch_lightning' in sys.modules or 'lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
