"""Benchmark fsl.geometry against reference solvers on the same problems, in the same run.

    python benchmarks/geometry.py            # paper sizes: 60,000 x 64, 10 classes; hull 10,000 vs 50,000
    python benchmarks/geometry.py --quick    # small sizes
    python benchmarks/geometry.py --features feats.pt   # real features: dict with train_features,
        # train_labels, test_features, test_labels, weight, bias, lower (optional upper)
    python benchmarks/geometry.py --checkpoint runs/x/checkpoints/last.ckpt --save-features feats.pt
        # real features of a trained model (all of its train and test split), saved for --features

References (on a random subset, per-QP time extrapolated to the full size and labelled so):
cvxpy + Clarabel for the margins and the hull, cvxpylayers for the margins, scipy NNLS with the
augmented-row trick for the hull (min ||[D^T; rho 1^T] a - [q; rho]||, a >= 0, rho = 1e3 * scale).
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from fsl.analysis.results import claim_new_file, save_new

from fsl.geometry import ball_counts, flip_margins, hull_distances, reference, region_labels, union_coverage


def synthetic(n_train, n_test, f, n, seed=0):
    """Nonnegative clustered (ReLU-like) features and a nearest-mean-like head with noise."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.relu(torch.randn(n, f, generator=g) + 0.3) * 2
    N = n_train + n_test
    y = torch.randint(0, n, (N,), generator=g)
    X = torch.relu(centers[y] + 2.0 * torch.randn(N, f, generator=g) - 0.5)
    W = (centers - centers.mean(0)) * 0.5 + 0.1 * torch.randn(n, f, generator=g)
    b = -0.125 * (centers ** 2).sum(1) + 0.1 * torch.randn(n, generator=g)
    return dict(train_features=X[:n_train], train_labels=y[:n_train], test_features=X[n_train:],
                test_labels=y[n_train:], weight=W, bias=b, lower=0.0, upper=None)


def interleave_classes(data, seed=0):
    """``data`` with its train and test rows reordered so that every prefix (``--n-train`` etc. take
    the first rows) is stratified by class: real features come in the data set's stored order,
    which may be sorted by class."""
    from fsl.data.subsets import stratified_subset

    out = dict(data)
    for split in ("train", "test"):
        order = stratified_subset(torch.as_tensor(data[f"{split}_labels"]), None, seed)
        for key in (f"{split}_features", f"{split}_labels"):
            out[key] = data[key][order]
    return out


def features_from_checkpoint(path, batch_size=1000):
    """The dict ``--features`` reads, from a checkpoint: every train and test image through the model."""
    from fsl.analysis.features import extract_features
    from fsl.data import create_datamodule
    from fsl.training.checkpoint import load_model

    model, hp = load_model(path)
    dm = create_datamodule(**hp["data"])
    dm.setup()
    out = {}
    for split in ("train", "test"):
        x, y = dm.tensors(split)
        fs = extract_features(model, x, y, batch_size=batch_size, progress=True, desc=f"{split} features")
        out[f"{split}_features"], out[f"{split}_labels"] = fs.features, fs.labels
    dom = model.feature_domain
    out.update(weight=model.head.weight.detach().clone(), bias=model.head.bias.detach().clone(),
               lower=dom.lower, upper=dom.upper, source=f"{hp['model']['name']} on {hp['data']['name']} ({path})")
    return out


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


cvxpy_flip = reference.flip_distance


def cvxpylayers_flip(X, W, b, pred, lo):
    """Margins through one cvxpylayer per (i, j) class pair, batched over the samples of class i."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer
    n, f = W.shape
    out = {}
    t_total = 0.0
    for i in sorted(set(pred.tolist())):
        rows = [s for s in range(X.shape[0]) if pred[s] == i]
        xs = torch.as_tensor(X[rows])
        for j in range(n):
            if j == i:
                continue
            xp = cp.Parameter(f)
            y = cp.Variable(f)
            cons = [(W[i] - W[j]) @ y + (b[i] - b[j]) == 0]
            cons += [(W[i] - W[k]) @ y + (b[i] - b[k]) >= 0 for k in range(n) if k not in (i, j)]
            if lo is not None:
                cons.append(y >= lo)
            pr = cp.Problem(cp.Minimize(cp.sum_squares(y - xp)), cons)
            layer = CvxpyLayer(pr, parameters=[xp], variables=[y])
            t = time.perf_counter()
            try:
                (ys,) = layer(xs)
                d = (ys - xs).norm(dim=1)
            except Exception:  # infeasible pair: the layer cannot solve it
                d = torch.full((len(rows),), float("nan"), dtype=xs.dtype)
            t_total += time.perf_counter() - t
            for r_, s in enumerate(rows):
                out[(s, j)] = float(d[r_])
    return out, t_total


def cvxpy_hull(q, D):
    return math.sqrt(reference.hull_distance_squared(q, D, tol=1e-10))


def nnls_hull(q, D, rho):
    from scipy.optimize import nnls
    A = np.vstack([D.T, rho * np.ones((1, D.shape[0]))])
    a, _ = nnls(A, np.concatenate([q, [rho]]), maxiter=50 * D.shape[0])
    a = a / a.sum()
    return float(np.linalg.norm(q - D.T @ a))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    ap.add_argument("--features", help="torch.save'd dict of real features (see module doc)")
    ap.add_argument("--checkpoint", help="extract real features from this checkpoint (train and test split)")
    ap.add_argument("--save-features", help="with --checkpoint: also torch.save the features here")
    ap.add_argument("--n-margin", type=int, default=60000, help="samples for the margins")
    ap.add_argument("--n-train", type=int, default=50000, help="training points for the hull")
    ap.add_argument("--n-query", type=int, default=10000, help="hull queries")
    ap.add_argument("--n-ball", type=int, default=60000, help="points for ball counts")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ref-margin", type=int, default=30, help="samples for the cvxpy margin reference")
    ap.add_argument("--ref-layers", type=int, default=60, help="samples for the cvxpylayers reference")
    ap.add_argument("--ref-hull", type=int, default=4, help="queries for the cvxpy hull reference")
    ap.add_argument("--ref-nnls", type=int, default=4, help="queries for the NNLS hull reference")
    ap.add_argument("--ref-ball", type=int, default=2000, help="centers checked by brute force")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: margin,hull,ball")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.save_features:
        claim_new_file(args.save_features)  # refused before the work: fsl never overwrites a file
    if args.quick:
        args.n_margin, args.n_train, args.n_query, args.n_ball = 3000, 3000, 200, 3000
        args.ref_margin, args.ref_layers, args.ref_hull, args.ref_nnls, args.ref_ball = 10, 20, 2, 2, 300
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    if args.checkpoint:
        data = features_from_checkpoint(args.checkpoint)
        if args.save_features:
            save_new(data, args.save_features)
        src = f"real features of {data['source']}"
        data = interleave_classes(data)
    elif args.features:
        data = interleave_classes(torch.load(args.features, map_location="cpu"))
        src = f"real features {data.get('source', args.features)}"
    else:
        n_tr = max(args.n_train, args.n_margin, args.n_ball)
        data = synthetic(n_tr, args.n_query, args.dim, args.classes)
        src = f"synthetic ReLU features f={args.dim}, n={args.classes}"
    Xtr = data["train_features"].double()
    Xte = data["test_features"].double()
    W, b = data["weight"].double(), data["bias"].double()
    lo, hi = data.get("lower"), data.get("upper")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {src}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    rows = []

    def add(row):  # print each row as soon as it is measured
        rows.append(row)
        name, tf, refname, tr, e, c = row
        print(f"# row: {name}: fsl {tf:.2f} s | {refname} | ratio {tr / tf:.0f}x | err {e:.1e} | certified {c}",
              flush=True)

    if "margin" not in skip:
        Xm = Xtr[:args.n_margin]
        flip_margins(Xm[:500], W, b, lo, hi)  # warm-up
        res, t_fsl = timed(lambda: flip_margins(Xm, W, b, lo, hi))
        nq = Xm.shape[0] * (W.shape[0] - 1)
        print(f"# margins: {nq} QPs, stages {res.stats}")
        # cvxpy + Clarabel on a subset
        k = min(args.ref_margin, Xm.shape[0])
        Wn, bn = W.numpy(), b.numpy()
        lo_n = None if lo is None else (np.asarray(lo) if not torch.is_tensor(lo) else lo.numpy())
        hi_n = None if hi is None else (np.asarray(hi) if not torch.is_tensor(hi) else hi.numpy())
        err = 0.0
        t = time.perf_counter()
        nref = 0
        for s in range(k):
            i = int(res.pred[s])
            for j in range(W.shape[0]):
                if j == i:
                    continue
                ref = cvxpy_flip(Xm[s].numpy(), Wn, bn, i, j, lo_n, hi_n)
                ours = float(res.distances[s, j])
                nref += 1
                if math.isinf(ref) or math.isinf(ours):
                    err = max(err, 0.0 if (math.isinf(ref) and math.isinf(ours)) else math.inf)
                else:
                    err = max(err, abs(ref - ours))
        t_ref = (time.perf_counter() - t) / nref * nq
        add((f"margins {Xm.shape[0]}x{W.shape[1]}, {W.shape[0]} cls ({nq} QPs)", t_fsl,
                     f"cvxpy+Clarabel {t_ref:.0f} s (extrapolated from {nref} QPs)", t_ref, err,
                     bool(res.certified.all())))
        if hi is None:
            k = min(args.ref_layers, Xm.shape[0])
            try:
                out, tl = cvxpylayers_flip(Xm[:k].numpy(), Wn, bn, res.pred[:k].numpy(), lo)
                errl = 0.0
                for (s, j), d in out.items():
                    ours = float(res.distances[s, j])
                    if math.isnan(d):
                        continue  # infeasible pair, the layer cannot represent it
                    errl = max(errl, abs(d - ours))
                t_refl = tl / max(len(out), 1) * nq
                add(("margins (same)", t_fsl,
                             f"cvxpylayers {t_refl:.0f} s (extrapolated from {len(out)} QPs)", t_refl,
                             errl, bool(res.certified.all())))
            except Exception as e:  # pragma: no cover
                print(f"# cvxpylayers failed: {e!r}")

    if "hull" not in skip:
        D = Xtr[:args.n_train]
        Q = Xte[:args.n_query]
        hull_distances(Q[:20], D)  # warm-up
        hr, t_fsl = timed(lambda: hull_distances(Q, D))
        print(f"# hull: {hr.stats}; support size mean "
              f"{float((hr.support_index >= 0).sum(1).float().mean()):.1f}, max relative gap "
              f"{float(hr.relative_gap.max()):.2e}")
        k = min(args.ref_hull, Q.shape[0])
        Dn = D.numpy()
        t = time.perf_counter()
        err = max(abs(cvxpy_hull(Q[s].numpy(), Dn) - float(hr.distance[s])) for s in range(k))
        t_ref = (time.perf_counter() - t) / k * Q.shape[0]
        add((f"hull {Q.shape[0]} q vs {D.shape[0]}x{D.shape[1]}", t_fsl,
                     f"cvxpy+Clarabel {t_ref / 3600:.1f} h (extrapolated from {k} QPs)", t_ref, err,
                     bool(hr.certified.all())))
        k = min(args.ref_nnls, Q.shape[0])
        rho = 1e3 * float(D.abs().max())
        t = time.perf_counter()
        err = max(abs(nnls_hull(Q[s].numpy(), Dn, rho) - float(hr.distance[s])) for s in range(k))
        t_ref = (time.perf_counter() - t) / k * Q.shape[0]
        add(("hull (same)", t_fsl, f"scipy NNLS {t_ref / 60:.1f} min (extrapolated from {k})",
                     t_ref, err, bool(hr.certified.all())))

    if "ball" not in skip:
        P = Xtr[:args.n_ball]
        fr = flip_margins(P, W, b, lo, hi)
        r = fr.margin
        reg = region_labels(P, W, b, lo, hi)
        Xq = Xte[:args.n_query]
        regq = region_labels(Xq, W, b, lo, hi)
        cnt, t_fsl = timed(lambda: ball_counts(P, r, P, center_regions=reg, point_regions=reg))
        cnt_all, t_all = timed(lambda: ball_counts(P, r, P))
        cov, t_cov = timed(lambda: union_coverage(Xq, P, r, regq, reg))
        # brute force: direct float64 differences over all pairs, on a subset of centres
        k = min(args.ref_ball, P.shape[0])
        t = time.perf_counter()
        miss = miss_all = 0
        for s0 in range(0, k, 32):  # (32, N, f) float64 differences at a time
            C = P[s0:min(k, s0 + 32)]
            d2 = ((C[:, None, :] - P[None, :, :]) ** 2).sum(2)
            ins = d2 < (r[s0:s0 + C.shape[0]] ** 2)[:, None]
            ins[torch.arange(C.shape[0]), torch.arange(s0, s0 + C.shape[0])] = False
            miss += int((ins.sum(1) != cnt[s0:s0 + C.shape[0]]).sum())
            miss_all += int((ins.sum(1) != cnt_all[s0:s0 + C.shape[0]]).sum())
        t_ref = (time.perf_counter() - t) / k * P.shape[0]
        t = time.perf_counter()
        kq = min(args.ref_ball, Xq.shape[0])
        d2 = torch.cat([((Xq[s0:min(kq, s0 + 32), None, :] - P[None]) ** 2).sum(2).lt(r[None] ** 2).any(1)
                        for s0 in range(0, kq, 32)])
        t_refu = (time.perf_counter() - t) / kq * Xq.shape[0]
        miss_u = int((d2 != cov[:kq]).sum())
        print(f"# balls: mean count {float(cnt.float().mean()):.1f}, max {int(cnt.max())}, "
              f"frac with other {float((cnt > 0).float().mean()):.3f}, union coverage "
              f"{float(cov.float().mean()):.3f}; region-pruned == all pairs: {bool(torch.equal(cnt, cnt_all))}; "
              f"near-tie points (region -1): {int((reg < 0).sum())}")
        add((f"ball counts {P.shape[0]} pts, pruned by region", t_fsl,
             f"brute force f64 {t_ref:.0f} s (extrapolated from {k} centres)", t_ref, float(miss), True))
        add((f"ball counts {P.shape[0]} pts, all pairs (no pruning)", t_all,
             f"brute force f64 {t_ref:.0f} s (same)", t_ref, float(miss_all), True))
        add((f"union coverage {Xq.shape[0]} q vs {P.shape[0]} balls", t_cov,
             f"brute force f64 {t_refu:.0f} s (extrapolated from {kq})", t_refu, float(miss_u), True))

    print()
    print(f"| problem | fsl time (s) | reference | ratio | max abs error | all certified |")
    print(f"|---|---|---|---|---|---|")
    for name, tf, refname, tr, e, c in rows:
        em = "miscounts %d" % e if name.startswith(("ball", "union")) else f"{e:.1e}"
        print(f"| {name} | {tf:.2f} | {refname} | {tr / tf:.0f}x | {em} | {c} |")


if __name__ == "__main__":
    main()
