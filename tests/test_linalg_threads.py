"""Batched LU of PyTorch's MKL CPU build breaks for matrices above ~150 once set_num_threads was
called in the process (invalid pivots, wrong factors or a hang; Lightning calls it in DDP
workers). The solvers' linear systems go through fsl.geometry._common's batched_solve (per-matrix
LU above 128) and spd_solve (Cholesky), which must give the per-matrix solution whatever the
thread setting."""
import pytest
import torch

from fsl.geometry._common import batched_solve, spd_solve


@pytest.fixture
def threads_set():
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the call itself is what breaks the batched LU
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n", [64, 129, 200, 300])
def test_batched_solve_after_set_num_threads(threads_set, n):
    g = torch.Generator().manual_seed(n)
    A = torch.randn(3, n, n, dtype=torch.float64, generator=g) + n ** 0.5 * torch.eye(n, dtype=torch.float64)
    rhs = torch.randn(3, n, dtype=torch.float64, generator=g)
    x = batched_solve(A, rhs)
    for i in range(3):
        torch.testing.assert_close(A[i] @ x[i], rhs[i], rtol=0, atol=1e-9)
        assert torch.equal(x[i], torch.linalg.solve(A[i], rhs[i]))  # the same LAPACK solve per matrix


def test_spd_solve_after_set_num_threads(threads_set):
    g = torch.Generator().manual_seed(0)
    M = torch.randn(4, 256, 300, dtype=torch.float64, generator=g)
    A = M @ M.transpose(1, 2) + 1e-3 * torch.eye(256, dtype=torch.float64)
    A[3] = torch.diag(torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)) + 3e-3  # indefinite: the LU fallback
    rhs = torch.randn(4, 256, 2, dtype=torch.float64, generator=g)
    x = spd_solve(A, rhs)
    for i in range(4):
        torch.testing.assert_close(A[i] @ x[i], rhs[i], rtol=0, atol=1e-8)
