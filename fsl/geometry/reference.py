"""Independent reference solvers (cvxpy + Clarabel, tight tolerances) for the geometry problems, one
problem at a time: what the tests and benchmarks check fsl's batched solvers against."""
from __future__ import annotations

import math

import numpy as np

TIGHT = dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, tol_infeas_abs=1e-10, tol_infeas_rel=1e-10,
             max_iter=500)


def flip_distance(x: np.ndarray, W: np.ndarray, b: np.ndarray, i: int, j: int, lo=None, hi=None) -> float:
    """Distance from ``x`` (f,) to the ``i|j`` boundary inside the box (docs/geometry.md); ``inf`` if infeasible."""
    import cvxpy as cp

    n, f = W.shape
    y = cp.Variable(f)
    cons = [(W[i] - W[j]) @ y + (b[i] - b[j]) == 0]
    cons += [(W[i] - W[k]) @ y + (b[i] - b[k]) >= 0 for k in range(n) if k not in (i, j)]
    if lo is not None:
        cons.append(y >= lo)
    if hi is not None:
        cons.append(y <= hi)
    pr = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), cons)
    pr.solve(solver=cp.CLARABEL, **TIGHT)
    if pr.status in ("infeasible", "infeasible_inaccurate"):
        return math.inf
    if pr.status != "optimal":
        raise RuntimeError(f"reference flip QP ended with status {pr.status!r}")
    return math.sqrt(max(pr.value, 0.0))


def hull_distance_squared(q: np.ndarray, D: np.ndarray, tol: float = 1e-12) -> float:
    """Squared distance from ``q`` (f,) to the convex hull of the rows of ``D`` (N, f) (docs/geometry.md)."""
    import cvxpy as cp

    a = cp.Variable(D.shape[0])
    pr = cp.Problem(cp.Minimize(cp.sum_squares(q - D.T @ a)), [a >= 0, cp.sum(a) == 1])
    pr.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    return max(pr.value, 0.0)
