"""The full study on a checkpoint: ``python analyze.py ckpt_path=outputs/train/<run>/checkpoints/last.ckpt``."""
from fsl.analysis.run import analyze
from fsl.cli import main


def run(cfg) -> None:
    result = analyze(cfg)
    print(f"results: {result.results_dir}")
    for key in sorted(result.metrics):
        if key.startswith(("analysis/margin/median", "analysis/hull/median", "analysis/frac_hull_lt_margin",
                           "analysis/acc", "pixel/hull/projection_acc")) or (
                key.startswith("adv/") and key.endswith(("/success_rate", "/auroc/margin", "/l2/median"))):
            print(f"  {key} = {result.metrics[key]:.4g}")


if __name__ == "__main__":
    main(run, "analyze")
