from pathlib import Path

import pytest
from hydra.utils import instantiate

from fsl.config import CONFIG_DIR, compose_config
from fsl.training.run import build_callbacks, build_datamodule, build_loggers, build_module

GROUPS = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml"))
          for g in ["data", "model", "trainer", "logger", "callbacks", "experiment"]}


def test_groups_exist():
    assert {"mnist5k", "mnist", "fashion_mnist", "cifar10", "synthetic"} <= set(GROUPS["data"])
    assert {"selu_mlp_mnist5k", "fcnn1_mnist5k", "resnet20_fashion_mnist", "resnet20_cifar10",
            "selu_mlp_mnist"} <= set(GROUPS["experiment"])


def test_default_is_selu_mlp_on_mnist5k():
    cfg = compose_config("train")
    assert cfg.data.name == "mnist5k" and cfg.model.name == "selu_mlp"
    assert (cfg.data.val_size, cfg.data.test_size) == (500, 1000)


@pytest.mark.parametrize("experiment", GROUPS["experiment"])
def test_every_experiment_instantiates(experiment, tmp_path):
    cfg = compose_config("train", [f"experiment={experiment}", f"paths.output_dir={tmp_path}"])
    dm = build_datamodule(cfg)  # lazy: no data is read here
    module = build_module(cfg, dm)
    assert module.net.num_classes == 10 and list(module.net.input_shape) == list(dm.input_shape)
    trainer = instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs
    module.trainer = trainer
    assert module.configure_optimizers() is not None


@pytest.mark.parametrize("group", ["data", "model", "trainer", "logger", "callbacks"])
def test_every_config_in_every_group_instantiates(group, tmp_path):
    for option in GROUPS[group]:
        overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}", f"paths.wandb_dir={tmp_path}"]
        if group == "model" and option == "resnet20":
            overrides.append("data=cifar10")
        cfg = compose_config("train", overrides)
        if group == "data":
            assert build_datamodule(cfg).name == option
        elif group == "model":
            assert build_module(cfg, build_datamodule(cfg)).net.__class__.__name__
        elif group == "trainer":
            if "ddp" in option:
                assert cfg.trainer.strategy == "ddp" and cfg.trainer.devices == 2
                continue
            if option == "gpu":
                assert cfg.trainer.accelerator == "gpu"
                continue
            assert instantiate(cfg.trainer, logger=False).max_epochs == cfg.trainer.max_epochs
        elif group == "logger":
            loggers = build_loggers(cfg)
            assert len(loggers) == (0 if option == "none" else 1)
            for lg in loggers:
                if hasattr(lg, "experiment") and lg.__class__.__name__ == "WandbLogger":
                    lg.experiment.finish()
        elif group == "callbacks":
            cbs = build_callbacks(cfg)
            assert len(cbs) == len([k for k, v in (cfg.callbacks or {}).items() if v])


def test_wrong_config_key_is_reported():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config("train", ["experiment=does_not_exist"])
    cfg = compose_config("train", ["+optimizer.betas=0.9"])
    with pytest.raises(ValueError, match="unknown optimizer keys"):
        module = build_module(cfg, build_datamodule(cfg))
        module.configure_optimizers()


def test_init_from_loads_weights_and_rejects_another_model(tmp_path):
    import torch

    from fsl.training.checkpoint import CheckpointError

    cfg = compose_config("train", [f"paths.output_dir={tmp_path}"])
    src = build_module(cfg, build_datamodule(cfg))
    with torch.no_grad():
        for p in src.net.parameters():
            p.add_(1.0)
    ck = tmp_path / "src.ckpt"
    torch.save({"state_dict": src.state_dict(), "hyper_parameters": dict(src.hparams)}, ck)
    tuned = build_module(compose_config("train", [f"paths.output_dir={tmp_path}", f"init_from={ck}"]),
                         build_datamodule(cfg))
    for a, b in zip(tuned.net.parameters(), src.net.parameters()):
        assert torch.equal(a, b)
    other = compose_config("train", ["experiment=fcnn1_mnist5k", f"paths.output_dir={tmp_path}", f"init_from={ck}"])
    with pytest.raises(CheckpointError, match="init_from=.*differs.*name"):
        build_module(other, build_datamodule(other))
