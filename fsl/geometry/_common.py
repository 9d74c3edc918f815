"""Small helpers shared by the geometry solvers (pure torch, device-agnostic): the feature box, the
float32 exactness tests of the filters and pricing, linear solves safe in DDP workers, and the
batched simplex-constrained QP of the hull's working sets (:func:`simplex_qp`; the input checks,
e.g. :func:`fsl.checks.check_finite`, are in :mod:`fsl.checks`)."""
from __future__ import annotations

import torch


def as_box(lower, upper, f: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(lo, hi)`` as ``(f,)`` tensors; ``None`` becomes ``-inf`` / ``+inf``."""

    def conv(v, fill):
        if v is None:
            return torch.full((f,), fill, dtype=dtype, device=device)
        t = torch.as_tensor(v, dtype=dtype, device=device)
        if t.ndim == 0:
            t = t.expand(f)
        if t.shape != (f,):
            raise ValueError(f"bound must be a scalar or a ({f},) tensor, got shape {tuple(t.shape)}")
        return t.clone()

    lo = conv(lower, float("-inf"))
    hi = conv(upper, float("inf"))
    if bool((lo > hi).any()):
        raise ValueError("lower bound exceeds upper bound")
    return lo, hi


def float32_matmul_is_exact(device: torch.device) -> bool:
    """True when float32 matrix products on ``device`` are IEEE float32 (no TF32 / bf16), the
    assumption behind the rounding bounds of the float32 filters (balls) and pricing (hull)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


#: the largest ``f * max|x|^2`` for which float32 filters and pricing run: products and squared
#: norms then stay below ~1e30, far from float32's overflow at 3.4e38 (beyond it: float64)
FLOAT32_SAFE_SQ = 1e30


def float32_products_fit(f: int, *tensors) -> bool:
    """True when ``f * max|x|^2`` over ``tensors`` (tensors, or floats already holding ``max|x|``) is
    at most :data:`FLOAT32_SAFE_SQ`: the squared norms and dot products of the float32 filters
    (balls) and pricing (hull) cannot overflow."""
    m = max((float(t.abs().max()) if isinstance(t, torch.Tensor) else float(t)
             for t in tensors if not isinstance(t, torch.Tensor) or t.numel()), default=0.0)
    return max(int(f), 1) * m * m <= FLOAT32_SAFE_SQ


# PyTorch's CPU build with MKL: once ``torch.set_num_threads`` has been called in the process
# (Lightning does so in DDP workers), its batched LU (``torch.linalg.solve``, ``lu_factor`` on a batch)
# of matrices larger than about 150 returns invalid pivots ("Pivots given to lu_solve must all be
# greater or equal to 1"), wrong factors, or hangs. Batched Cholesky and single-matrix LU are not
# affected, and neither are batched LUs of matrices up to this size (checked up to 129):
_BATCHED_LU_MAX = 128


def batched_solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.solve(A, rhs)`` for a batch ``A`` (B, n, n), ``rhs`` (B, n) or (B, n, k): one
    batched call for ``n <= 128`` and on CUDA, else one LU per matrix on the CPU (the same LAPACK
    factorisation per matrix, without the batched path that breaks after ``set_num_threads``)."""
    if A.shape[-1] <= _BATCHED_LU_MAX or A.device.type != "cpu" or A.dim() < 3 or A.shape[0] <= 1:
        return torch.linalg.solve(A, rhs)
    return torch.stack([torch.linalg.solve(A[i], rhs[i]) for i in range(A.shape[0])])


def spd_solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``A^{-1} rhs`` for a batch of symmetric positive definite ``A`` (B, m, m), ``rhs`` (B, m, k),
    by batched Cholesky (the ``J J^T + mu I`` systems of the Gauss-Newton and SQP steps; safe for
    any size, see :func:`batched_solve`). A matrix that Cholesky rejects (not positive definite in
    floating point) is solved on its own by LU."""
    L, info = torch.linalg.cholesky_ex(A)
    out = torch.cholesky_solve(rhs, L)
    for i in (info != 0).nonzero().flatten().tolist():
        out[i] = torch.linalg.solve(A[i], rhs[i])
    return out


def _pd_inverse(G: torch.Tensor, P: torch.Tensor, c: torch.Tensor, reg: torch.Tensor):
    """``H = M_P^{-1}``, ``M_P = G_PP + c 1 1^T + reg I`` on the entries ``P`` of each matrix and the
    identity elsewhere, and ``x = M_P^{-1} 1_P`` by the (backward stable) triangular solves: batched
    Cholesky; one LU per matrix that Cholesky rejects; in closed form where ``|P| <= 1``."""
    Pf = P.to(G.dtype)
    if bool((P.sum(1) <= 1).all()):
        dinv = 1.0 / (torch.diagonal(G, dim1=1, dim2=2) + c[:, None] + reg[:, None])
        h = torch.where(P, dinv, torch.ones_like(dinv))
        return torch.diag_embed(h), h * Pf
    A = (G + c[:, None, None]).mul_(Pf[:, :, None]).mul_(Pf[:, None, :])
    A.diagonal(dim1=1, dim2=2).add_((1.0 - Pf) + Pf * reg[:, None])
    L, info = torch.linalg.cholesky_ex(A)
    H = torch.cholesky_inverse(L)
    x = torch.cholesky_solve(Pf[:, :, None], L).squeeze(2)
    for i in (info != 0).nonzero().flatten().tolist():
        H[i] = torch.linalg.inv(A[i])
        x[i] = torch.linalg.solve(A[i], Pf[i])
    return H, x * Pf


def _spd_solve_small(S: torch.Tensor, B: torch.Tensor):
    """``S^{-1} B`` for a batch of small symmetric ``S`` ``(L, m, m)``, ``B`` ``(L, m, n)``, and the
    Cholesky pivots ``(L, m)`` (a pivot ``<= 0``: not positive definite, that row's solution is
    meaningless).  For ``m <= 8`` the Cholesky factorisation and the two triangular solves are
    unrolled in tensor operations over the batch: batched LAPACK on the CPU calls one routine per
    matrix, each with its own thread synchronisation, which costs milliseconds per matrix on a
    loaded machine."""
    m = S.shape[1]
    if m == 1:
        return B / S, S[:, :, 0]
    if m > 8:
        Lc, info = torch.linalg.cholesky_ex(S)
        piv = torch.diagonal(Lc, dim1=1, dim2=2) ** 2
        piv = torch.where((info != 0)[:, None], torch.full_like(piv, -1.0), piv)
        eye = torch.eye(m, dtype=S.dtype, device=S.device)
        return torch.cholesky_solve(B, torch.where((info != 0)[:, None, None], eye, Lc)), piv
    Lm = [[None] * m for _ in range(m)]
    piv = []
    for j in range(m):
        d = S[:, j, j] - sum((Lm[j][k] ** 2 for k in range(j)), torch.zeros_like(S[:, j, j]))
        piv.append(d)
        Lm[j][j] = d.clamp_min(1e-300).sqrt()
        for i in range(j + 1, m):
            Lm[i][j] = (S[:, i, j] - sum((Lm[i][k] * Lm[j][k] for k in range(j)), torch.zeros_like(d))) / Lm[j][j]
    Y = []
    for i in range(m):
        y = B[:, i, :]
        for k in range(i):
            y = y - Lm[i][k][:, None] * Y[k]
        Y.append(y / Lm[i][i][:, None])
    X = [None] * m
    for i in reversed(range(m)):
        x = Y[i]
        for k in range(i + 1, m):
            x = x - Lm[k][i][:, None] * X[k]
        X[i] = x / Lm[i][i][:, None]
    return torch.stack(X, 1), torch.stack(piv, 1)


def _slots(mask: torch.Tensor):
    """Per row, the positions of the True entries first (padded to the largest count) and whether
    each slot is real."""
    w = int(mask.sum(1).max()) if mask.numel() else 0
    idx = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :w]
    return idx, mask.gather(1, idx)


def _inv_remove(H: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Remove the entries ``R`` from the inverse ``H`` (in place): ``H - V T^{-1} V^T`` with ``V =
    H[:, R]``, ``T = H[R, R]`` (Schur complement), identity on ``R``.  Returns the rows whose ``T``
    was not numerically positive definite (they need a refactorisation)."""
    idx, m = _slots(R)
    if idx.shape[1] == 0:
        return torch.zeros(H.shape[0], dtype=torch.bool, device=H.device)
    K, r, mf = H.shape[1], idx.shape[1], m.to(H.dtype)
    V = H.gather(2, idx[:, None, :].expand(-1, K, -1)) * mf[:, None, :]  # (L, K, r)
    T = V.gather(1, idx[:, :, None].expand(-1, -1, r)) * mf[:, :, None]
    T.diagonal(dim1=1, dim2=2).add_(1.0 - mf)
    Z, piv = _spd_solve_small(T, V.transpose(1, 2))
    H.baddbmm_(V, Z, alpha=-1.0)
    b, i = R.nonzero(as_tuple=True)
    H[b, i, :] = 0.0
    H[b, :, i] = 0.0
    H[b, i, i] = 1.0
    return ~(piv > 0).all(1)


def _inv_add(H: torch.Tensor, G: torch.Tensor, c: torch.Tensor, reg: torch.Tensor, P: torch.Tensor,
             A: torch.Tensor) -> torch.Tensor:
    """Add the entries ``A`` (disjoint from ``P``) to the inverse ``H`` of ``M_P`` (in place), by the
    bordering formula with the Schur complement ``S = M_AA - M_AP H M_PA``.  Returns the rows whose
    ``S`` is not safely positive definite (nearly dependent points): they need a refactorisation."""
    idx, m = _slots(A)
    if idx.shape[1] == 0:
        return torch.zeros(H.shape[0], dtype=torch.bool, device=H.device)
    K, s, dt = H.shape[1], idx.shape[1], H.dtype
    mf = m.to(dt)
    W = G.gather(2, idx[:, None, :].expand(-1, K, -1)) + c[:, None, None]  # M[:, A]
    D = W.gather(1, idx[:, :, None].expand(-1, -1, s)) * (mf[:, :, None] * mf[:, None, :])
    D.diagonal(dim1=1, dim2=2).add_(mf * reg[:, None] + (1.0 - mf))
    W.mul_(P.to(dt)[:, :, None]).mul_(mf[:, None, :])
    HW = torch.bmm(H, W)
    S = D - torch.bmm(W.transpose(1, 2), HW)
    U = HW.scatter_add_(1, idx[:, None, :], -mf[:, None, :])  # [H M_PA; -I] on the A rows
    Z, piv = _spd_solve_small(S, U.transpose(1, 2))
    bad = ((piv < 1e-9 * c[:, None]) & m).any(1)
    b, i = A.nonzero(as_tuple=True)
    H[b, i, i] = 0.0
    H.baddbmm_(U, Z)
    return bad


def simplex_qp(G: torch.Tensor, valid: torch.Tensor, a: torch.Tensor, max_iter: int = 500, add_per_iter: int = 2,
               H: torch.Tensor | None = None, c: torch.Tensor | None = None):
    """Exact ``min a^T G a`` over the simplex ``a >= 0, sum(a) = 1`` on the ``valid`` entries, for a
    batch of Gram matrices ``G = E E^T`` ``(Q, K, K)`` (float64, PSD) from a feasible start ``a``
    ``(Q, K)`` (zero off ``valid``; updated in place): the restricted problem of
    :func:`fsl.geometry.hull_distances`.

    Batched primal active set (Lawson-Hanson for the simplex, as in Wolfe's minimum-norm-point
    method): on the passive set ``P`` the optimum of the equality-constrained problem is ``alpha =
    x / sum(x)`` with ``M_P x = 1``, ``M_P = G_PP + c 1 1^T + r I`` (``c`` the largest diagonal
    entry, ``r = 1e-15 c``): the bordered KKT system ``[G_PP 1; 1^T 0]`` in positive definite form
    (``G_PP + c 1 1^T`` is positive definite exactly when the points of ``P`` are affinely
    independent; ``r`` covers duplicates).  ``H = M_P^{-1}`` (identity off ``P``) is updated by Schur
    complements as indices enter and leave ``P`` (``O(K^2)`` per change, no factorisation), and can
    be passed in from a previous call (``H``, with its ``c``: a changed ``c`` is a rank-one update)
    for the support ``a > 0``; every iteration computes the residual ``M_P x - 1``, refines ``x`` by
    one step of iterative refinement with ``H``, and refactorises the matrices where the residual
    shows ``H`` far off (or a point nearly dependent on ``P``).  Then the ratio test, and up to
    ``add_per_iter`` most violating indices join ``P`` per iteration, with the single-addition
    fallback that guarantees progress.
    Returns ``(a, iterations, H, c)``: ``H`` for the support of the returned ``a``.
    """
    Q, K, _ = G.shape
    dt, dev = G.dtype, G.device
    dg = torch.diagonal(G, dim1=1, dim2=2)
    gscale = dg.masked_fill(~valid, 0).amax(1).clamp_min(1e-300)  # (Q,)
    reg = 1e-15 * gscale
    P = (a > 0) & valid
    if H is None:
        H = _pd_inverse(G, P, gscale, reg)[0]
    else:  # M_P + (c_new - c_old) 1_P 1_P^T: Sherman-Morrison
        dc = (gscale - c)[:, None]
        y = torch.bmm(H, P.to(dt)[:, :, None]).squeeze(2) * P
        H = H - (dc / (1.0 + dc * y.sum(1, keepdim=True)))[:, :, None] * (y[:, :, None] * y[:, None, :])
    Hall = H
    rows = torch.arange(Q, device=dev)  # the unfinished rows; the state below is theirs only
    Gl, vl, al = G, valid, a.clone()
    prio = torch.full((Q,), -1, dtype=torch.long, device=dev)  # most violating index just added
    it = 0
    for it in range(1, max_iter + 1):
        if rows.numel() == 0:
            break
        c, rg = gscale[rows], reg[rows]
        Pf = P.to(dt)
        x = torch.bmm(H, Pf[:, :, None]).squeeze(2) * Pf
        sx = x.sum(1, keepdim=True)
        res = (torch.bmm(Gl, x[:, :, None]).squeeze(2) + c[:, None] * sx + rg[:, None] * x - 1.0) * Pf
        stale = ~(res.abs().amax(1) <= 1e-6 * (1.0 + c * x.abs().sum(1)))  # NaN too
        if bool(stale.any()):  # rounding of the updates, or a nearly singular M_P: factorise again
            s_ = stale.nonzero().squeeze(1)
            H[s_], x[s_] = _pd_inverse(Gl[s_], P[s_], c[s_], rg[s_])
            res[s_] = 0.0
        # one step of iterative refinement with the updated inverse: x to rounding level
        x = x - torch.bmm(H, res[:, :, None]).squeeze(2) * Pf
        sx = x.sum(1, keepdim=True)
        alpha = x / sx
        feasible = ~((alpha <= 0) & P).any(1)
        # infeasible target: ratio test towards alpha, drop the blocking indices
        dlt = alpha - al
        ratio = torch.where(P & (alpha <= 0) & (dlt < 0), al / (-dlt).clamp_min(1e-300),
                            torch.full_like(al, float("inf")))
        theta = ratio.amin(1).clamp(0, 1)
        theta = torch.where(feasible, torch.ones_like(theta), theta)
        anew = torch.where(P, al + theta[:, None] * dlt, torch.zeros_like(al))
        stall = torch.zeros_like(feasible)
        Pn = P.clone()
        if not bool(feasible.all()):
            blocking = (~feasible)[:, None] & P & (ratio <= theta[:, None] * (1 + 1e-12))
            # Lawson-Hanson: the single most violating new index keeps a positive weight in exact
            # arithmetic; keep it (the other new indices may leave), unless it blocks by itself.
            isprio = torch.zeros_like(blocking)
            hasp = prio >= 0
            isprio[hasp.nonzero().squeeze(1), prio[hasp]] = True
            only = (blocking & ~isprio).any(1)
            blocking = torch.where(only[:, None], blocking & ~isprio, blocking)
            stall = (~feasible) & ~only & (theta <= 0)
            # the most violating index blocks: fall back to adding it alone (the other new ones go)
            others = P & (al == 0) & ~isprio
            retry = stall & others.any(1)
            stall = stall & ~retry
            anew = torch.where(blocking & ~retry[:, None], torch.zeros_like(anew), anew)
            Pn &= ~torch.where(retry[:, None], others, blocking)
        anew = anew.clamp_min(0)
        anew = anew / anew.sum(1, keepdim=True)
        # optimality of the feasible ones: lambda_k = (G a)_k - nu >= 0 on the valid entries
        ga = torch.bmm(Gl, anew[:, :, None]).squeeze(2)
        nu = (anew * ga).sum(1, keepdim=True)
        lam = ga - nu
        gs = c[:, None]
        tol = 1e-12 * (nu + gs.sqrt() * nu.clamp_min(0).sqrt()) + 1e-15 * gs
        cand = vl & ~Pn & (lam < -tol)
        done = (feasible & ~cand.any(1)) | stall
        addable = feasible & cand.any(1)
        newprio = torch.full_like(prio, -1)
        bad = _inv_remove(H, P & ~Pn)
        if bool(addable.any()):
            lam_m = torch.where(cand, lam, torch.full_like(lam, float("inf")))
            vals, idx = torch.topk(lam_m, min(add_per_iter, K), dim=1, largest=False)
            addm = torch.zeros_like(Pn)
            addm.scatter_(1, idx, torch.isfinite(vals) & addable[:, None])
            bad |= _inv_add(H, Gl, c, rg, Pn, addm)
            Pn = Pn | addm
            newprio = torch.where(addable, idx[:, 0], newprio)
        if bool(bad.any()):
            b_ = bad.nonzero().squeeze(1)
            H[b_] = _pd_inverse(Gl[b_], Pn[b_], c[b_], rg[b_])[0]
        al, P = anew, Pn
        prio = torch.where(feasible, newprio, prio)
        a[rows] = al
        if bool(done.any()) or it == max_iter:
            fin = done | (it == max_iter)
            _inv_remove(H, P & ~(al > 0) & fin[:, None])  # H of the support (P differs after a stall)
            Hall[rows[fin]] = H[fin]
            keep = ~fin
            rows, Gl, vl, al, P, H, prio = rows[keep], Gl[keep], vl[keep], al[keep], P[keep], H[keep], prio[keep]
    return a, it, Hall, gscale
