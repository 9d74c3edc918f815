"""analyze.py on a model fsl did not train: ``model.target=<module>:<callable>`` with weights from a
state_dict file or another project's Lightning checkpoint, data from an fsl data set or a user's
LightningDataModule; the same numbers as ``fsl.analyze`` on the same model and data."""
from __future__ import annotations

import textwrap

import pytest
import torch

from fsl.config import compose_config
from fsl.errors import ConfigError

USER_CODE = textwrap.dedent('''
    import torch
    from torch import nn

    def build_net(num_classes=10, width=16):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU(), nn.Linear(width, num_classes))

    class DigitsLike:
        """A LightningDataModule-like object: setup and the train / test dataloaders."""

        def __init__(self, n=120):
            self.n = n

        def setup(self, stage=None):
            g = torch.Generator().manual_seed(1)
            y = torch.arange(self.n) % 10
            x = (0.3 * torch.rand(self.n, 1, 28, 28, generator=g) + 0.06 * y.view(-1, 1, 1, 1)).clamp(0, 1)
            self.train, self.test = (x[:80], y[:80]), (x[80:], y[80:])

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*self.train), batch_size=32)

        def test_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*self.test), batch_size=32)
''')


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    (tmp_path / "user_pkg_fsl_test.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mod = importlib.import_module("user_pkg_fsl_test")
    net = mod.build_net()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    # another project's Lightning checkpoint: the weights under "state_dict", prefixed by its attribute
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3},
               tmp_path / "other.ckpt")
    return mod, net, tmp_path


def _cfg(tmp_path, *over):
    return compose_config("analyze", ["analysis=[geometry]", "analysis.geometry.figures=[]", "wandb.enabled=false",
                                      f"paths.data_dir={tmp_path}", *over])


def test_user_model_and_datamodule_match_fsl_analyze(user_pkg):
    from fsl.analysis.run import analyze

    mod, net, tmp = user_pkg
    results = []
    for weights in ("weights.pt", "other.ckpt"):
        cfg = _cfg(tmp, "model.target=user_pkg_fsl_test:build_net", f"model.weights={tmp / weights}",
                   "data.target=user_pkg_fsl_test:DigitsLike", f"output_dir={tmp / ('out_' + weights)}")
        results.append(analyze(cfg).metrics)
    dm = mod.DigitsLike()
    dm.setup()
    import fsl

    direct = fsl.analyze(net, dm.train, dm.test, analyses=["geometry"], progress=False, geometry={"figures": []})
    strip = lambda m: {k: v for k, v in m.items() if "seconds" not in k}  # noqa: E731
    assert strip(results[0]) == strip(results[1]) == pytest.approx(strip(direct.metrics), nan_ok=True)
    assert results[0]["analysis/acc"] == pytest.approx(direct.metrics["analysis/acc"])


def test_user_model_on_an_fsl_data_set(user_pkg):
    from fsl.analysis.run import analyze

    _, _, tmp = user_pkg
    cfg = _cfg(tmp, "model.target=user_pkg_fsl_test:build_net", f"model.weights={tmp / 'weights.pt'}",
               "data.name=synthetic", "n_train=100", "n_eval=40", f"output_dir={tmp / 'out'}")
    m = analyze(cfg).metrics
    assert 0.0 <= m["analysis/acc"] <= 1.0 and m["analysis/margin/median"] >= 0
    assert (tmp / "out" / "metrics.json").is_file()


def test_missing_pieces_are_named(user_pkg):
    from fsl.models.user import build_user_model
    from fsl.validate import validate_analyze_config

    _, _, tmp = user_pkg
    with pytest.raises(ConfigError, match="model.target needs data"):
        validate_analyze_config(_cfg(tmp, "model.target=user_pkg_fsl_test:build_net", "model.weights=random"))
    with pytest.raises(ConfigError, match="model.weights is not set"):
        validate_analyze_config(_cfg(tmp, "model.target=user_pkg_fsl_test:build_net", "data.name=synthetic"))
    with pytest.raises(ConfigError, match="ckpt_path is not set"):
        validate_analyze_config(_cfg(tmp))
    with pytest.raises(ConfigError, match="has no attribute 'buildnet'; did you mean 'build_net'"):
        build_user_model("user_pkg_fsl_test:buildnet", weights="random")
    with pytest.raises(ConfigError, match="cannot import module"):
        build_user_model("no_such_pkg_xyz:net", weights="random")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp / "wrong.pt")
    with pytest.raises(ConfigError, match="not in the file"):
        build_user_model("user_pkg_fsl_test:build_net", weights=str(tmp / "wrong.pt"))
