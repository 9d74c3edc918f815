"""The study table of docs/results/margin_training/README.md from the runs' files.

    python docs/results/margin_training/make_table.py --runs RUNS_ROOT --wandb WANDB_ROOT

Reads, for each ``<model>_{base,margin}``: the training run's offline W&B record (test accuracy, the
summed ``time/train_epoch_s``; the run is found by its ``paths.output_dir``) and ``analyze.py``'s
``<RUNS_ROOT>/<run>_an/metrics.json`` (exact margins, attacks, detectors). Writes table.md and
table.json next to this file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fsl.tracking.wandb_offline import find_offline_runs, read_offline_run

MODELS = {"selu": "SELU MLP / mnist5k", "resnet": "ResNet-20 / Fashion-MNIST"}


def training_record(wandb_root: Path, run_dir: Path) -> dict:
    for path in find_offline_runs(wandb_root):
        run = read_offline_run(path)
        out = run.config.get("paths/output_dir") or (run.config.get("paths") or {}).get("output_dir")
        if out and Path(out).resolve() == run_dir.resolve():
            return {"test_acc": run.summary.get("test/acc"),
                    "train_seconds": sum(run.series("time/train_epoch_s")),
                    "epochs": len(run.series("time/train_epoch_s"))}
    raise FileNotFoundError(f"no offline W&B run under {wandb_root} has paths.output_dir = {run_dir}")


def row(metrics: dict, train: dict) -> dict:
    attacks = sorted({k.split("/")[1] for k in metrics if k.startswith("adv/") and k.endswith("/success_rate")})
    acc = metrics["analysis/acc"]
    r = {"test_acc": train["test_acc"], "analysis_acc": acc, "train_seconds": train["train_seconds"],
         "margin_median": metrics["analysis/margin/median"], "hull_median": metrics["analysis/hull/median"],
         "deepfool_l2_median": metrics["adv/deepfool/l2/median"], "cw_l2_median": metrics["adv/cw/l2/median"]}
    for a in attacks:
        # robust accuracy on the attacked (correctly classified) samples, scaled by the clean accuracy
        r[f"robust_acc/{a}"] = acc * (1.0 - metrics[f"adv/{a}/success_rate"])
        r[f"auroc_margin/{a}"] = metrics[f"adv/{a}/auroc/margin"]
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True, type=Path)
    ap.add_argument("--wandb", required=True, type=Path)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    table = {}
    for key in MODELS:
        for kind in ("base", "margin", "ce"):
            name = f"{key}_{kind}"
            an = args.runs / f"{name}_an" / "metrics.json"
            if not an.exists():
                continue
            table[name] = row(json.loads(an.read_text()), training_record(args.wandb, args.runs / name))
    (here / "table.json").write_text(json.dumps(table, indent=1))
    names = list(table)
    rows = sorted({c for r in table.values() for c in r}, key=lambda c: (c.count("/"), c.split("/")[-1], c))
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for c in rows:
        vals = [table[n].get(c) for n in names]
        lines.append(f"| {c} | " + " | ".join("" if v is None else f"{v:.4g}" for v in vals) + " |")
    (here / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main()
