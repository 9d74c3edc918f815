"""Training-step overhead of the exact margin hinge (margin-aware training), measured side by side.

    python benchmarks/margin_training.py                       # SELU MLP (mnist5k) and ResNet-20 (Fashion-MNIST)
    python benchmarks/margin_training.py --steps 40 --models selu_mlp

One optimizer step (forward, backward, SGD update) on a real batch, with plain cross-entropy and with
cross-entropy + weight * :func:`fsl.training.losses.margin_hinge`, alternated step by step so that
both see the same machine load; prints the median step time of each and their ratio. The models start
from a seeded initialisation and train during the measurement (early-training features: the hardest
margins for the solver); ``--checkpoint`` times a trained model instead.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from fsl.data import create_datamodule, stratified_subset
from fsl.models import create_model
from fsl.training.losses import margin_hinge

SETUPS = {  # model, data, batch size, hinge target (as in configs/experiment/margin_*.yaml)
    "selu_mlp": (dict(name="selu_mlp"), dict(name="mnist5k"), 64, 15.0),
    "resnet20": (dict(name="resnet20"), dict(name="fashion_mnist"), 128, 6.0),
}


def step_times(model, x, y, target, weight, steps):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = {"ce": [], "ce+margin": []}
    for k in range(2 * steps + 4):
        kind = "ce" if k % 2 == 0 else "ce+margin"
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        feats = model.forward_features(x)
        loss = F.cross_entropy(model.forward_head(feats), y)
        if kind == "ce+margin":
            dom = model.feature_domain
            hinge, _ = margin_hinge(feats, y, model.head.weight, model.head.bias, target, dom.lower, dom.upper)
            loss = loss + weight * hinge
        loss.backward()
        opt.step()
        if k >= 4:  # warm-up steps are not counted
            times[kind].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="selu_mlp,resnet20")
    ap.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    ap.add_argument("--weight", type=float, default=0.2)
    ap.add_argument("--checkpoint", help="time this trained model (its own data set) instead")
    args = ap.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print("| model | batch | CE step | CE + margin hinge step | overhead |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        mspec, dspec, bs, target = SETUPS[name]
        torch.manual_seed(0)
        if args.checkpoint:
            from fsl.training.checkpoint import load_model
            model, hp = load_model(args.checkpoint)
            dspec = hp["data"]
        dm = create_datamodule(**dspec)
        dm.setup()
        if not args.checkpoint:
            model = create_model(**{**dm.model_kwargs(), **mspec})
        model.train()
        x, y = dm.tensors("train")
        rows = stratified_subset(y, bs, 0)  # the stored order may be sorted by class
        t = step_times(model, x[rows], y[rows], target, args.weight, args.steps)
        print(f"| {name} | {bs} | {1e3 * t['ce']:.1f} ms | {1e3 * t['ce+margin']:.1f} ms | "
              f"{t['ce+margin'] / t['ce']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
