"""How fsl's exact geometry scales in classes n, feature dim f and samples N, with the reference in
the same run (docs/geometry.md, "Scaling").

    python benchmarks/scaling.py                     # the CPU table of docs/geometry.md (~15 min, 2 cores)
    python benchmarks/scaling.py --quick             # small rows only
    python benchmarks/scaling.py --only margins --rows 1000x2048
    python benchmarks/scaling.py --before 291959c    # also the solvers of an earlier commit, same rows
    python benchmarks/scaling.py --device cuda       # on a GPU (the card's name is printed)

Rows (synthetic ReLU features from class means in the positive orthant and a linear head, as in
benchmarks/geometry.py):

* ``margins``: ``flip_margins(..., lower=0, margin_only=True)`` of N samples; reference on a subset:
  cvxpy + Clarabel (``fsl.geometry.reference.margin``: the smallest distance to the ``i|j`` half-space
  inside the box over the classes, pruned by the hyperplane bound) and the full flip QP (all n - 1
  class constraints) at the closest pair;
* ``distances``: all n - 1 flip distances per sample (no pruning), reference: the full flip QP;
* ``hull``: ``hull_distances`` of Q queries to N training points (float32 storage; the largest row
  memory-mapped from a .npy file); reference: the Frank-Wolfe certificate recomputed independently
  in float64 numpy over all N points, and cvxpy + Clarabel where N x f is small;
* ``balls``: ``ball_counts`` of Q centres (radius: the centre's margin) over N points; reference: a
  float64 brute-force count.

Each row runs in a fresh process (forked), so its peak memory (VmHWM above the process' RSS after
the data is built; on CUDA ``max_memory_allocated``) is its own. ``rate`` is samples (margins,
distances), queries (hull) or centres (balls) per second; ``err`` the largest relative error against
the reference, ``cert`` the certified fraction. With ``--before REV`` the same row is also timed
with fsl/geometry of commit REV (loaded from git into a temporary package) in the same process,
with a time limit (``--before-limit``) and skipped where it would not fit in memory.
"""
from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsl.geometry import ball_counts, flip_margins, hull_distances, reference  # noqa: E402

# (kind, n, f, N, Q): N samples (margins) or training points (hull, balls), Q queries / centres
ROWS = [
    ("distances", 10, 64, 60000, 0),
    ("margins", 10, 64, 60000, 0),
    ("margins", 100, 64, 20000, 0),
    ("margins", 100, 512, 10000, 0),
    ("margins", 1000, 512, 2000, 0),
    ("margins", 1000, 2048, 1000, 0),
    ("distances", 100, 512, 1000, 0),
    ("hull", 10, 64, 60000, 2000),
    ("hull", 10, 2048, 50000, 500),
    ("hull", 1000, 512, 1281167, 100),
    ("balls", 10, 64, 60000, 10000),
    ("balls", 1000, 512, 1281167, 500),
]
QUICK = [("distances", 10, 64, 3000, 0), ("margins", 10, 64, 3000, 0), ("margins", 100, 512, 500, 0),
         ("margins", 1000, 512, 100, 0), ("hull", 10, 64, 5000, 100), ("balls", 10, 64, 5000, 500)]


def head(n, f, seed=0, dtype=torch.float64):
    """Class means in the positive orthant (sparse, ReLU-like) and a nearest-mean-like linear head."""
    g = torch.Generator().manual_seed(seed)
    means = torch.relu(torch.randn(n, f, generator=g, dtype=dtype) + 0.3) * 2
    W = (means - means.mean(0)) * 0.5 + 0.1 * torch.randn(n, f, generator=g, dtype=dtype)
    b = -0.125 * (means ** 2).sum(1) + 0.1 * torch.randn(n, generator=g, dtype=dtype)
    return means, W, b


def _draw(means, m, g):
    y = torch.randint(0, means.shape[0], (m,), generator=g)
    return torch.relu(means[y] + 2.0 * torch.randn(m, means.shape[1], generator=g, dtype=means.dtype) - 0.5)


def samples(means, N, seed=1, dtype=torch.float64, chunk=65536, out=None):
    """``N`` ReLU features around random class means, generated in chunks (``(N, f)`` of ``dtype``,
    or written into ``out``, e.g. a memory-mapped array)."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty((N, means.shape[1]), dtype=dtype) if out is None else out
    for s in range(0, N, chunk):
        m = min(chunk, N - s)
        blk = _draw(means, m, g)
        out[s:s + m] = blk.to(dtype) if torch.is_tensor(out) else blk.float().numpy()
    return out


def memmapped(means, N, seed, folder):
    """The same samples as float32 in a .npy file, opened memory-mapped (a training set of a million)."""
    path = Path(folder) / f"points_{N}x{means.shape[1]}.npy"
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(N, means.shape[1]))
    samples(means, N, seed, out=arr)
    arr.flush()
    del arr
    return torch.from_numpy(np.load(path, mmap_mode="r"))


def rss_mib(field="VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_mib(base: float, device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return rss_mib("VmHWM") - base


def best_time(fn, repeat):
    """The fastest of ``repeat`` runs (``repeat`` >= 1) and the last result."""
    best, out = math.inf, None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return out, best


def load_before(rev: str, folder: str):
    """fsl/geometry of commit ``rev`` as a temporary package (its absolute ``fsl.`` imports resolve
    to today's fsl, its relative ones to the old modules)."""
    pkg = Path(folder) / "fsl_before"
    pkg.mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "fsl/geometry/"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in names:
        if name.endswith(".py"):
            src = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, check=True, capture_output=True,
                                 text=True).stdout
            (pkg / Path(name).name).write_text(src)
    sys.path.insert(0, folder)
    return importlib.import_module("fsl_before")


def margin_reference(X, W, b, res, k, full_pair=True):
    """Largest relative margin error on ``k`` samples against cvxpy + Clarabel (and the full QP at the
    reference's closest pair), with the reference's wall time per sample."""
    Xn, Wn, bn = X[:k].double().cpu().numpy(), W.cpu().numpy(), b.cpu().numpy()
    err, t = 0.0, time.perf_counter()
    for s in range(k):
        m, j, _ = reference.margin(Xn[s], Wn, bn, lo=0.0)
        got = float(res.margin[s])
        if full_pair and j >= 0:  # the margin's pair also satisfies every other class constraint
            i = int(np.argmax(Wn @ Xn[s] + bn))
            dfull = reference.flip_distance(Xn[s], Wn, bn, i, j, lo=0.0)
            err = max(err, abs(dfull - m) / max(m, 1e-12))
        err = max(err, abs(got - m) / max(m, 1e-12) if math.isfinite(m) else float(got != m))
    return err, (time.perf_counter() - t) / max(k, 1)


def distances_reference(X, W, b, res, k):
    Xn, Wn, bn = X[:k].double().cpu().numpy(), W.cpu().numpy(), b.cpu().numpy()
    err, t, nq = 0.0, time.perf_counter(), 0
    for s in range(k):
        i = int(res.pred[s])
        for j in range(Wn.shape[0]):
            if j == i:
                continue
            d = reference.flip_distance(Xn[s], Wn, bn, i, j, lo=0.0)
            got = float(res.distances[s, j])
            err = max(err, abs(got - d) / max(d, 1e-12) if math.isfinite(d) else float(got != d))
            nq += 1
    return err, (time.perf_counter() - t) / max(k, 1)


def hull_certificate(Q, P, res, k, chunk=65536):
    """Recompute each query's Frank-Wolfe gap in float64 numpy over all points: the relative
    distance error it certifies, ``(d - sqrt(d^2 - gap)) / d`` (inside the hull: gap / R^2)."""
    worst = 0.0
    for s in range(k):
        q = Q[s].double().cpu().numpy()
        idx, w = res.support_index[s].cpu().numpy(), res.support_weight[s].cpu().numpy()
        keep = idx >= 0
        pts = np.asarray(P[torch.as_tensor(idx[keep])].double().cpu().numpy())
        p = w[keep] @ pts  # the projection from the returned support (independent of res.projection)
        u = q - p
        vmax = -np.inf
        for c0 in range(0, P.shape[0], chunk):
            blk = np.asarray(P[c0:c0 + chunk].double().cpu().numpy())
            vmax = max(vmax, float((blk @ u).max()))
        gap = max(2.0 * (vmax - u @ p), 0.0)
        d2 = float(u @ u)
        R2 = float(res.stats.get("R", 1.0)) ** 2
        worst = max(worst, (math.sqrt(d2) - math.sqrt(max(d2 - gap, 0.0))) / math.sqrt(d2) if d2 > 1e-6 * R2
                    else gap / R2)
    return worst


def run_row(row, args, queue):
    kind, n, f, N, Q = row
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    out = dict(kind=kind, n=n, f=f, N=N, Q=Q)
    with tempfile.TemporaryDirectory() as tmp:
        means, W, b = head(n, f)
        W, b = W.to(dev), b.to(dev)
        before = load_before(args.before, tmp) if args.before else None
        if kind in ("margins", "distances"):
            X = samples(means, N).to(dev)
            margin_only = kind == "margins"
            flip_margins(X[:50], W, b, lower=0.0, margin_only=margin_only)  # warm-up
            base = rss_mib()
            reset_peak()
            res, t = best_time(lambda: flip_margins(X, W, b, lower=0.0, margin_only=margin_only), args.repeat)
            out.update(time=t, rate=N / t, peak=peak_mib(base, dev), cert=float(res.certified.all(1).float().mean()),
                       stats={k_: res.stats[k_] for k_ in ("solved", "skipped", "newton", "working_set")})
            k = args.ref if n <= 100 else max(1, args.ref // 5)
            if kind == "distances":
                k = max(1, min(k, 500 // n))
                out["err"], out["ref_s"] = distances_reference(X, W, b, res, k)
            else:
                out["err"], out["ref_s"] = margin_reference(X, W, b, res, k)
            out["ref_n"] = k
            if before is not None:
                big = n * n * f * 8 > args.before_mem * 2 ** 30  # the old dual held an (f, n^2) matrix
                if big:
                    out["before"] = f"not run: needs an (f, n^2) = {n * n * f * 8 / 2 ** 30:.0f} GiB matrix"
                else:
                    m = min(N, 10)  # a probe, then as many samples as fit the time limit
                    t0 = time.perf_counter()
                    rb = before.flip_margins(X[:m], W, b, lower=0.0, margin_only=margin_only)
                    tb = time.perf_counter() - t0
                    m2 = min(N, max(m, int(m / tb * args.before_limit)))
                    if m2 > m:
                        m = m2
                        rb, tb = best_time(lambda: before.flip_margins(X[:m], W, b, lower=0.0, margin_only=margin_only),
                                           args.repeat if tb * m2 / 10 < 5.0 else 1)
                    out["before"] = dict(time=tb, rate=m / tb, samples=m,
                                         same=bool(torch.equal(rb.margin, res.margin[:m])),
                                         diff=float((rb.margin - res.margin[:m]).abs().max()))
        elif kind == "hull":
            P = memmapped(means, N, 1, tmp) if N > 200000 else samples(means, N).float()
            P = P.to(dev) if dev.type == "cuda" else P
            Qx = samples(means, Q, seed=2).float().to(dev)
            hull_distances(Qx[:4], P)  # warm-up
            base = rss_mib()
            reset_peak()
            res, t = best_time(lambda: hull_distances(Qx, P), 1)
            out.update(time=t, rate=Q / t, peak=peak_mib(base, dev), cert=float(res.certified.float().mean()),
                       data_mib=N * f * 4 / 2 ** 20)
            k = min(Q, args.ref)
            out["err"] = hull_certificate(Qx, P, res, k)
            out["ref_n"] = k
            if N * f <= 4e6:  # Clarabel on the full problem
                Pn = np.asarray(P.double().cpu().numpy())
                cv = max(abs(float(res.distance[s]) - math.sqrt(reference.hull_distance_squared(
                    Qx[s].double().cpu().numpy(), Pn, tol=1e-10))) / max(float(res.distance[s]), 1e-9)
                    for s in range(min(2, Q)))
                out["clarabel_err"] = cv
            if before is not None:
                if N > 200000:
                    out["before"] = "not run: holds float64 copies of the points"
                else:
                    m = min(Q, 100)
                    t0 = time.perf_counter()
                    before.hull_distances(Qx[:m], P)
                    tb = time.perf_counter() - t0
                    out["before"] = dict(time=tb, rate=m / tb, samples=m)
        else:  # balls
            P = memmapped(means, N, 1, tmp) if N > 200000 else samples(means, N).float()
            P = P.to(dev) if dev.type == "cuda" else P
            C = samples(means, Q, seed=3).to(dev)
            radii = flip_margins(C, W, b, lower=0.0, margin_only=True).margin
            radii = torch.where(torch.isfinite(radii), radii, torch.zeros_like(radii))
            base = rss_mib()
            reset_peak()
            cnt, t = best_time(lambda: ball_counts(C, radii, P, exclude_self=False), 1)
            out.update(time=t, rate=Q / t, peak=peak_mib(base, dev), cert=1.0, data_mib=N * f * 4 / 2 ** 20)
            k = min(Q, args.ref * 10 if N <= 200000 else args.ref)
            wrong = 0
            for s in range(k):  # brute force in float64
                c = C[s].double().cpu().numpy()
                r2 = float(radii[s]) ** 2
                tot = 0
                for c0 in range(0, N, 65536):
                    blk = np.asarray(P[c0:c0 + 65536].double().cpu().numpy())
                    tot += int((((blk - c) ** 2).sum(1) < r2).sum())
                wrong += int(tot != int(cnt[s]))
            out["err"] = wrong
            out["ref_n"] = k
            if before is not None and N <= 200000:
                t0 = time.perf_counter()
                before.ball_counts(C, radii, P, exclude_self=False)
                tb = time.perf_counter() - t0
                out["before"] = dict(time=tb, rate=Q / tb, samples=Q)
    queue.put(out)


def fmt_row(o):
    size = f"{o['Q']:,} x {o['N']:,} x {o['f']:,}" if o["kind"] in ("hull", "balls") else f"{o['N']:,} x {o['n']:,} x {o['f']:,}"
    err = (f"{o['err']} wrong of {o['ref_n']}" if o["kind"] == "balls" else f"{o['err']:.1e} ({o['ref_n']})")
    if "clarabel_err" in o:
        err += f"; Clarabel {o['clarabel_err']:.1e}"
    bef = o.get("before")
    if isinstance(bef, dict):
        same = "" if "same" not in bef else (", same margins" if bef["same"] else f", margins differ by {bef['diff']:.1e}")
        bef = f"{bef['rate']:,.2f}/s ({bef['samples']:,} timed{same})"
    return (f"| {o['kind']} | {size} | {o['time']:.2f} | {o['rate']:,.1f} | {o['peak']:,.0f} | "
            f"{o['cert']:.3f} | {err} |" + (f" {bef} |" if bef is not None else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small rows only (a smoke run)")
    ap.add_argument("--only", default="", help="comma list of kinds: margins,distances,hull,balls")
    ap.add_argument("--rows", default="", help="comma list of nxf (e.g. 1000x2048) to keep")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=2, help="margins: the fastest of this many runs")
    ap.add_argument("--ref", type=int, default=10, help="samples checked against the reference (fewer at n=1000)")
    ap.add_argument("--before", default="", help="also time fsl/geometry of this git commit")
    ap.add_argument("--before-limit", type=float, default=60.0, help="seconds per 'before' row (fewer samples)")
    ap.add_argument("--before-mem", type=float, default=4.0, help="GiB: skip 'before' rows needing more")
    ap.add_argument("--out", default="", help="also write the table as markdown here (e.g. docs/scaling.md); "
                                              "only a file this script wrote is replaced")
    args = ap.parse_args()
    if args.out:
        _check_out(args.out)
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    rows = QUICK if args.quick else ROWS
    if args.only:
        rows = [r for r in rows if r[0] in args.only.split(",")]
    if args.rows:
        rows = [r for r in rows if f"{r[1]}x{r[2]}" in args.rows.split(",")]
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    emit(f"# fsl scaling benchmark on {name}; torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}")
    emit("")
    emit("| kind | size (N x n x f; hull/balls: Q x N x f) | time s | per second | peak MiB | certified | "
         "max rel. error vs reference (samples) |" + (f" before ({args.before}) |" if args.before else ""))
    emit("|---|---|---|---|---|---|---|" + ("---|" if args.before else ""))
    ctx = mp.get_context("fork")
    results = []
    for row in rows:
        q = ctx.Queue()
        p = ctx.Process(target=run_row, args=(row, args, q))
        p.start()
        o = q.get()
        p.join()
        results.append(o)
        emit(fmt_row(o))
    law = growth(results)
    if law:
        emit("")
        emit(law)
    if args.out:
        cmd = "python benchmarks/scaling.py " + " ".join(sys.argv[1:])
        Path(args.out).write_text(f"{MARKER}\n\nWritten by `{cmd}` on {time.strftime('%Y-%m-%d')}; "
                                  "columns and references: the docstring of benchmarks/scaling.py.\n\n"
                                  + "\n".join(lines) + "\n")


def growth(results):
    """Least-squares fit of time per margin ~ n^a f^b over the margin rows."""
    pts = [(math.log(o["n"]), math.log(o["f"]), math.log(o["time"] / o["N"])) for o in results if o["kind"] == "margins"]
    if len(pts) >= 3:
        A = np.array([[1.0, p[0], p[1]] for p in pts])
        y = np.array([p[2] for p in pts])
        c, *_ = np.linalg.lstsq(A, y, rcond=None)
        return f"# time per margin ~ n^{c[1]:.2f} f^{c[2]:.2f} (least squares over {len(pts)} margin rows)"
    return ""


MARKER = "<!-- generated by benchmarks/scaling.py: re-run it, do not edit -->"


def _check_out(path):
    p = Path(path)
    if p.exists() and not p.read_text().startswith(MARKER):
        raise SystemExit(f"benchmarks/scaling.py: {path} exists and was not written by this script; pick another --out")


if __name__ == "__main__":
    main()
