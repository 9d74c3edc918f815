"""Independent reference solvers (cvxpy + Clarabel, tight tolerances) for the geometry problems, one
problem at a time: what the tests and benchmarks check fsl's batched solvers against."""
from __future__ import annotations

import math

import numpy as np

TIGHT = dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, tol_infeas_abs=1e-10, tol_infeas_rel=1e-10,
             max_iter=500)


def _nearest_in_box(x: np.ndarray, y, cons: list, lo, hi, what: str) -> float:
    """``min ||y - x||`` over ``cons`` and the box, by Clarabel; ``inf`` if infeasible."""
    import cvxpy as cp

    if lo is not None:
        cons.append(y >= lo)
    if hi is not None:
        cons.append(y <= hi)
    pr = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), cons)
    pr.solve(solver=cp.CLARABEL, **TIGHT)
    if pr.status in ("infeasible", "infeasible_inaccurate"):
        return math.inf
    if pr.status != "optimal":
        raise RuntimeError(f"reference {what} QP ended with status {pr.status!r}")
    return math.sqrt(max(pr.value, 0.0))


def flip_distance(x: np.ndarray, W: np.ndarray, b: np.ndarray, i: int, j: int, lo=None, hi=None) -> float:
    """Distance from ``x`` (f,) to the ``i|j`` boundary inside the box (docs/geometry.md); ``inf`` if infeasible."""
    import cvxpy as cp

    n, f = W.shape
    y = cp.Variable(f)
    cons = [(W[i] - W[j]) @ y + (b[i] - b[j]) == 0]
    cons += [(W[i] - W[k]) @ y + (b[i] - b[k]) >= 0 for k in range(n) if k not in (i, j)]
    return _nearest_in_box(x, y, cons, lo, hi, "flip")


def boundary_distance(x: np.ndarray, W: np.ndarray, b: np.ndarray, i: int, j: int, lo=None, hi=None) -> float:
    """Distance from ``x`` (f,) to ``{y in the box: z_i(y) <= z_j(y)}`` (the ``i|j`` half-space, no other
    class constraint); the margin is the smallest of these over ``j`` (docs/geometry.md)."""
    import cvxpy as cp

    y = cp.Variable(W.shape[1])
    return _nearest_in_box(x, y, [(W[i] - W[j]) @ y + (b[i] - b[j]) <= 0], lo, hi, "boundary")


def margin(x: np.ndarray, W: np.ndarray, b: np.ndarray, lo=None, hi=None) -> tuple[float, int, int]:
    """The margin of ``x``: ``min_j`` :func:`boundary_distance` over the classes ``j`` other than the
    prediction, visiting them by increasing hyperplane bound ``r_j(x) / ||w_i - w_j||`` (a lower bound
    of that distance, computed here in numpy) and stopping once the bound exceeds the best distance.
    Returns ``(margin, closest class, QPs solved)``."""
    z = W @ x + b
    i = int(np.argmax(z))
    a = W[i][None, :] - W
    an = np.linalg.norm(a, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lb = np.where(an > 0, (z[i] - z) / an, np.where(z[i] > z, np.inf, 0.0))
    lb[i] = np.inf
    best, arg, solved = math.inf, -1, 0
    for j in np.argsort(lb, kind="stable"):
        if lb[j] >= best * (1 + 1e-9) or not np.isfinite(lb[j]):
            break
        d = boundary_distance(x, W, b, i, int(j), lo, hi)
        solved += 1
        if d < best:
            best, arg = d, int(j)
    return best, arg, solved


def hull_distance_squared(q: np.ndarray, D: np.ndarray, tol: float = 1e-12) -> float:
    """Squared distance from ``q`` (f,) to the convex hull of the rows of ``D`` (N, f) (docs/geometry.md)."""
    import cvxpy as cp

    a = cp.Variable(D.shape[0])
    pr = cp.Problem(cp.Minimize(cp.sum_squares(q - D.T @ a)), [a >= 0, cp.sum(a) == 1])
    pr.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    return max(pr.value, 0.0)
