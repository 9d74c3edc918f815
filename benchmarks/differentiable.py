"""Forward + backward of the exact feature-space margin: fsl vs cvxpylayers on the same QPs, same run.

    python benchmarks/differentiable.py                 # batch 256 and 60,000 samples, f=64, 10 classes
    python benchmarks/differentiable.py --quick         # batch 256 and 3,000
    python benchmarks/differentiable.py --features feats.pt   # real features (see benchmarks/geometry.py)

fsl: :func:`fsl.geometry.differentiable_flip_distances` (envelope theorem) and
:func:`fsl.geometry.differentiable_flip_points` (implicit differentiation on the active set); the
loss is the sum of all finite pair distances, backward to features, head weight and bias (for
"closest points": the points of each sample's closest pair only, ``closest_only=True``).
cvxpylayers (Agrawal et al., arXiv:1910.12430; diffcp + Clarabel): one layer per class pair
``(i, j)`` with parameters ``x, A, c, a_j, c_j`` (the same QP, box ``y >= lower``), batched over the
samples predicted ``i``; its time on ``--ref`` samples is extrapolated per QP to each size and
labelled so. The gradients of both on those samples are compared (max abs difference).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from geometry import interleave_classes, synthetic  # noqa: E402

from fsl.geometry import differentiable_flip_distances, differentiable_flip_points, flip_margins  # noqa: E402


def fsl_fwd_bwd(X, W, b, lo, points=False, **kw):
    """Seconds for forward + backward, and the gradients (x, W, b) of the summed finite distances."""
    Xr, Wr, br = (t.clone().requires_grad_(True) for t in (X, W, b))
    t = time.perf_counter()
    fn = differentiable_flip_points if points else differentiable_flip_distances
    d = fn(Xr, Wr, br, lower=lo, **kw).distances
    torch.where(torch.isfinite(d), d, torch.zeros_like(d)).sum().backward()
    return time.perf_counter() - t, (Xr.grad, Wr.grad, br.grad)


def cvxpylayers_fwd_bwd(X, W, b, lo):
    """The same loss through cvxpylayers: (seconds, QPs, gradients)."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    n, f = W.shape
    pred = flip_margins(X, W, b, lower=lo).pred
    Xr, Wr, br = (t.clone().requires_grad_(True) for t in (X, W, b))
    total, nqp = 0.0, 0
    for i in sorted(set(pred.tolist())):
        rows = (pred == i).nonzero().flatten()
        for j in range(n):
            if j == i:
                continue
            others = [k for k in range(n) if k not in (i, j)]
            y, x = cp.Variable(f), cp.Parameter(f)
            A, c = cp.Parameter((len(others), f)), cp.Parameter(len(others))
            aj, cj = cp.Parameter(f), cp.Parameter()
            cons = [aj @ y + cj == 0, A @ y + c >= 0] + ([y >= lo] if lo is not None else [])
            layer = CvxpyLayer(cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x)), cons),
                               parameters=[x, A, c, aj, cj], variables=[y],
                               solver_args={"solve_method": "Clarabel", "tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12,
                                            "tol_feas": 1e-12})
            t = time.perf_counter()
            try:
                xs = Xr[rows]
                ys, = layer(xs, Wr[i] - Wr[others], br[i] - br[others], Wr[i] - Wr[j], br[i] - br[j])
                (ys - xs).norm(dim=1).sum().backward()
            except Exception:  # an infeasible pair: the layer cannot represent it (distance +inf)
                pass
            total += time.perf_counter() - t
            nqp += len(rows)
    return total, nqp, (Xr.grad, Wr.grad, br.grad)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--features", help="torch.save'd dict of real features (benchmarks/geometry.py --save-features)")
    ap.add_argument("--sizes", default="256,60000")
    ap.add_argument("--ref", type=int, default=64, help="samples for the cvxpylayers reference")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [256, 3000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.features:
        data = interleave_classes(torch.load(args.features, map_location="cpu"))
        src = f"real features {data.get('source', args.features)}"
    else:
        data = synthetic(max(sizes), 10, args.dim, args.classes)
        src = f"synthetic ReLU features f={args.dim}, n={args.classes}"
    X = data["train_features"].double()
    W, b, lo = data["weight"].double(), data["bias"].double(), data.get("lower")
    load = os.getloadavg()[0]
    print(f"# {src}; torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} "
          f"on {os.cpu_count()} cores")
    n = W.shape[0]
    k = min(args.ref, X.shape[0])
    t_ref, nqp, g_ref = cvxpylayers_fwd_bwd(X[:k], W, b, lo)
    per_qp = t_ref / nqp
    _, g_env = fsl_fwd_bwd(X[:k], W, b, lo)
    _, g_pts = fsl_fwd_bwd(X[:k], W, b, lo, points=True)
    err_env = max(float((a - r).abs().max()) for a, r in zip(g_env, g_ref))
    err_pts = max(float((a - r).abs().max()) for a, r in zip(g_pts, g_ref))
    print(f"# cvxpylayers: {nqp} QPs fwd+bwd in {t_ref:.1f} s ({1e3 * per_qp:.1f} ms/QP); gradient max abs "
          f"difference vs fsl: envelope {err_env:.1e}, active-set points {err_pts:.1e}")
    fsl_fwd_bwd(X[:256], W, b, lo)  # warm-up
    print("| samples | QPs | fsl distances fwd+bwd | fsl points fwd+bwd | fsl closest points fwd+bwd | "
          "cvxpylayers fwd+bwd | ratio (distances) |")
    print("|---|---|---|---|---|---|---|")
    for m in sizes:
        t_env, _ = fsl_fwd_bwd(X[:m], W, b, lo)
        t_pts, _ = fsl_fwd_bwd(X[:m], W, b, lo, points=True)
        t_cl, _ = fsl_fwd_bwd(X[:m], W, b, lo, points=True, closest_only=True)
        q = m * (n - 1)
        ext = per_qp * q
        label = f"{ext:.1f} s" + ("" if m <= k else f" (extrapolated from {nqp} QPs)")
        print(f"| {m} | {q} | {t_env:.3f} s | {t_pts:.3f} s | {t_cl:.3f} s | {label} | {ext / t_env:.0f}x |", flush=True)


if __name__ == "__main__":
    main()
