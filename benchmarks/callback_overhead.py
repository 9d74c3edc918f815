"""How much the per-epoch analysis callbacks add to an epoch's wall time (target: < 15%).

    python benchmarks/callback_overhead.py experiment=selu_mlp_mnist5k
    python benchmarks/callback_overhead.py experiment=resnet20_fashion_mnist --limit-train 6000

Runs ``epochs`` epochs with ``callbacks=analysis`` (the defaults of the experiment) and reads the
times the run logged: ``time/train_epoch_s`` + ``time/val_epoch_s`` (the epoch without analysis)
and every analysis' own time (``analysis/seconds``, ``adv/seconds``, ``spaces/seconds``, ...: the
``seconds_key`` of each analysis the run has, so a new analysis is counted without editing this). The analyses
run every ``every_n_epochs`` epochs, so their cost is amortised over that many epochs. With
``--limit-train`` the training part is measured on a subset and scaled to the full training set
(printed as "extrapolated").
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fsl.analysis import build_analyses  # noqa: E402
from fsl.config import compose_config  # noqa: E402
from fsl.tracking import find_offline_runs, read_offline_run  # noqa: E402
from fsl.training import train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=resnet20_fashion_mnist")
    ap.add_argument("--epochs", type=int, default=None, help="epochs to run (default: one analysis period)")
    ap.add_argument("--limit-train", type=int, default=None, help="train on this many images, scale to the full set")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = compose_config("train", [*args.overrides, "callbacks=analysis"])
        every = max([int(o.get("every_n_epochs") or 0) for o in base.analysis.values()] or [1]) or 1
        analyses = build_analyses(base.analysis, shared={"pixels": base.get("pixels")})
        epochs = args.epochs or every
        extra = [f"paths.output_dir={tmp}/out", f"paths.wandb_dir={tmp}", "trainer.enable_progress_bar=false",
                 f"trainer.max_epochs={epochs}", "test_after_fit=false"]
        if args.limit_train:
            extra.append(f"data.limit_train={args.limit_train}")
        cfg = compose_config("train", [*args.overrides, "callbacks=analysis", *extra])
        t0 = time.perf_counter()
        train(cfg)
        wall = time.perf_counter() - t0
        run = read_offline_run(find_offline_runs(tmp)[0])
    from fsl.data import create_datamodule

    n_full = None
    if args.limit_train:
        dm = create_datamodule(**{k: v for k, v in dict(cfg.data).items() if k != "_target_" and k != "limit_train"})
        dm.setup()
        n_full = len(dm.train_set)
    train_s = sum(run.series("time/train_epoch_s"))
    scale = (n_full / args.limit_train) if n_full else 1.0
    epoch_s = train_s * scale + sum(run.series("time/val_epoch_s"))
    per = {a.name: run.series(a.seconds_key) for a in analyses}
    analysis_s = sum(sum(v) for v in per.values())
    print(f"experiment: {cfg.data.name} / {cfg.model.name}, {epochs} epochs, wall {wall:.1f} s")
    print(f"epochs without analysis: {epoch_s:.1f} s{' (training part extrapolated x%.2f)' % scale if n_full else ''}")
    print("; ".join(f"{name}: {sum(v):.2f} s in {len(v)} runs" for name, v in per.items()))
    print(f"overhead: {100 * analysis_s / epoch_s:.1f}% of epoch wall time (target < 15%)")


if __name__ == "__main__":
    main()
