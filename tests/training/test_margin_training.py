"""Margin-aware training (loss.margin.weight > 0): a hinge on the exact feature-space margin of the
correctly classified batch samples raises the measured median margin."""
import pytest
import torch

from fsl.data import create_datamodule
from fsl.geometry import flip_margins
from fsl.models.base import LinearHead
from fsl.training import load_model, train
from tests.helpers import synthetic_config


def median_margin(ckpt) -> tuple[float, float]:
    model, hp = load_model(ckpt)
    dm = create_datamodule(**hp["data"])
    dm.setup()
    x, y = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        feats = model.forward_features(x)
    head = LinearHead.from_model(model)
    res = flip_margins(feats, head.weight, head.bias, *head.bounds)
    assert res.all_certified
    ok = res.pred == y
    return float(res.margin[ok].median()), float(ok.double().mean())


def test_margin_loss_raises_the_median_margin(tmp_path):
    common = ["logger=none", "test_after_fit=false"]
    base = train(synthetic_config(tmp_path / "base", epochs=3, extra=common))
    hinge = train(synthetic_config(tmp_path / "margin", epochs=3, extra=common + [
        "loss.margin.weight=1.0", "loss.margin.target=20.0"]))
    m0, acc0 = median_margin(base.best_checkpoint)
    m1, acc1 = median_margin(hinge.best_checkpoint)
    assert m1 > 1.2 * m0, (m0, m1)
    assert acc1 >= acc0 - 0.05
    _, hp = load_model(hinge.best_checkpoint)
    assert hp["loss"] == {"margin": {"weight": 1.0, "target": 20.0}}


def test_margin_loss_config_errors():
    from fsl.training.module import ClassifierModule

    spec = {"name": "selu_mlp", "input_shape": [1, 28, 28], "num_classes": 10, "mean": [0.5], "std": [0.25]}
    with pytest.raises(ValueError, match="unknown loss keys"):
        ClassifierModule(spec, loss={"margin": {"wieght": 1.0}})
    with pytest.raises(ValueError, match="target > 0"):
        ClassifierModule(spec, loss={"margin": {"weight": 1.0, "target": 0.0}})
