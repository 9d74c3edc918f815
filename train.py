"""Train a classifier and measure its feature space: ``python train.py [experiment=<name>] [key=value ...]``."""
import hydra
from omegaconf import DictConfig

from fsl.config import register_resolvers
from fsl.training import train

register_resolvers()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    result = train(cfg)
    print(f"best checkpoint: {result.best_checkpoint}\nmetrics: "
          + ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.metrics.items())))
    return result.metrics.get("val/acc", float("nan"))


if __name__ == "__main__":
    main()
