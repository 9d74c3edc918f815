"""Train a classifier and measure its feature space: ``python train.py [experiment=<name>] [key=value ...]``."""
from fsl.cli import main
from fsl.training import train


def run(cfg) -> float:
    result = train(cfg)
    print(f"best checkpoint: {result.best_checkpoint}\nmetrics: "
          + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())))
    return result.metrics.get("val/acc", float("nan"))


if __name__ == "__main__":
    main(run, "train")
