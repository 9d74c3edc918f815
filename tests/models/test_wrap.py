"""fsl.wrap, fsl.analyze and the analysis callback on classifiers fsl did not define: a
torchvision-style ResNet (conv1/bn1/relu/maxpool/layer1..4/avgpool/fc), a timm-style transformer
head (LayerNorm before ``head``), ``classifier[-1]`` heads, and a plain LightningModule."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fsl
from fsl.errors import ConfigError
from fsl.models.base import SELU_LOWER, FeatureClassifier


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class TorchvisionStyleResNet(nn.Module):
    """torchvision.models.resnet's layout (functional flatten before ``fc``), small."""

    def __init__(self, num_classes: int = 3, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        self.layer1, self.layer2, self.layer3, self.layer4 = (Block(width) for _ in range(4))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TimmStyleHead(nn.Module):
    """Patch embedding, GELU MLP, LayerNorm, then ``head`` (timm's naming)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.mlp(tokens).mean(1)))


def _data(n=60, seed=0, classes=3, size=16):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = (0.2 * torch.rand(n, 3, size, size, generator=g) + 0.3 * y.view(-1, 1, 1, 1).float()).clamp(0, 1)
    return x, y


def _fit(model, x, y, steps=40, lr=1e-2):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    x, y = _data()
    return _fit(TorchvisionStyleResNet(), x, y), x, y


def test_torchvision_style_resnet(resnet):
    model, x, _ = resnet
    net = fsl.wrap(model, data=x)
    assert isinstance(net, FeatureClassifier) and net.head is model.fc and net.head_name == "fc"
    assert net.feature_domain.lower == 0.0 and net.feature_domain.upper is None  # ReLU, then average pooling
    assert net.feature_layers == ["layer1", "layer2", "layer3", "layer4"]
    with torch.no_grad():
        f = net.forward_features(x)
        assert f.shape == (len(x), 8) and bool((f >= 0).all())
        assert torch.equal(net.forward_head(f), model(x))  # exactly the input of fc
        assert torch.equal(net(x), model(x))
        maps = net.feature_maps(x)
        assert list(maps) == ["layer1", "layer2", "layer3", "layer4", "features"]
        for k in ("layer2", "layer4"):
            assert torch.allclose(net.forward_from(k, maps[k]), model(x), atol=1e-5)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in model.parameters())  # shared
    assert not net.training and not model.training  # the model's mode, kept
    model.train()
    assert fsl.wrap(model, data=x).training and model.training
    model.eval()


def test_features_carry_gradients(resnet):
    model, x, _ = resnet
    net = fsl.wrap(model, data=x)
    xr = x[:4].clone().requires_grad_(True)
    net.forward_features(xr).sum().backward()
    assert xr.grad is not None and float(xr.grad.abs().sum()) > 0


def test_heads_and_domains_are_found():
    torch.manual_seed(0)
    timm_like = TimmStyleHead().eval()
    net = fsl.wrap(timm_like, input_shape=(3, 16, 16))
    assert net.head_name == "head" and net.feature_domain.lower is None and net.feature_domain.upper is None
    vgg_like = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.SELU(), nn.Dropout(0.5), nn.Linear(16, 3))
    classifier = nn.Module()
    classifier.features, classifier.classifier = nn.Identity(), vgg_like
    classifier.forward = lambda x: classifier.classifier(classifier.features(x))
    net = fsl.wrap(classifier, input_shape=(3, 4, 4))
    assert net.head_name == "classifier.4" and net.feature_domain.lower == SELU_LOWER
    gelu = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.GELU(), nn.Linear(16, 3))
    lo = fsl.wrap(gelu, input_shape=(3, 4, 4)).feature_domain.lower
    t = torch.linspace(-3, 0, 300001, dtype=torch.float64)
    assert lo <= float(nn.functional.gelu(t).min()) <= lo + 1e-5  # a bound, within 1e-5 of GELU's minimum
    relu6 = nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.ReLU6(), nn.Linear(16, 3))
    dom = fsl.wrap(relu6, input_shape=(3, 4, 4)).feature_domain
    assert (dom.lower, dom.upper) == (0.0, 6.0)


def test_normalisation_inside(resnet):
    model, x, _ = resnet
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    net = fsl.wrap(model, data=x, mean=mean, std=std)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(net(x), model((x - m) / s))


def test_bad_wraps_are_refused(resnet):
    model, x, _ = resnet
    with pytest.raises(ConfigError, match="outside the feature domain"):
        fsl.wrap(model, data=x, domain=(0.5, None))  # a wrong override, never a silent wrong margin
    with pytest.raises(ConfigError, match="did you mean 'fc'"):
        fsl.wrap(model, head="fcc", data=x)
    with pytest.raises(ConfigError, match="not an nn.Linear"):
        fsl.wrap(model, head="layer1", data=x)
    with pytest.raises(ConfigError, match="not the output of its head"):
        fsl.wrap(nn.Sequential(nn.Flatten(), nn.Linear(48, 3), nn.Softmax(1)), input_shape=(3, 4, 4))
    with pytest.raises(ConfigError, match="no nn.Linear"):
        fsl.wrap(nn.Sequential(nn.Conv2d(3, 3, 4), nn.Flatten()), domain=(None, None))
    with pytest.raises(ConfigError, match="cannot be restarted from layer"):
        fsl.wrap(model, data=x, feature_layers=["layer1.conv1"])  # the residual path bypasses it
    with pytest.raises(ConfigError, match="both mean and std"):
        fsl.wrap(model, data=x, mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        fsl.wrap(model, data=x * 255)


def test_analyze_any_classifier(resnet, tmp_path):
    """fsl.analyze on the wrapped ResNet: accuracy and margins against an independent computation
    (fsl.geometry.flip_margins on the wrapped features), and the folder equals what it returns."""
    import json

    from fsl.geometry import flip_margins

    model, x, y = resnet
    rep = fsl.analyze(model, (x[:45], y[:45]), (x[45:], y[45:]), analyses=["geometry"], output_dir=tmp_path / "out",
                      progress=False, geometry={"figures": ["distance_histograms"]})
    net = fsl.wrap(model, data=x)
    with torch.no_grad():
        f = net.forward_features(x[45:]).double()
        acc = float((net.forward_head(f.float()).argmax(1) == y[45:]).double().mean())
    fr = flip_margins(f, net.head.weight.detach().double(), net.head.bias.detach().double(), lower=0.0)
    assert rep.metrics["analysis/acc"] == pytest.approx(acc)
    assert rep.metrics["analysis/margin/median"] == pytest.approx(float(fr.margin.median()), rel=1e-6)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == pytest.approx(rep.metrics) and set(written) == set(rep.metrics)
    assert (tmp_path / "out" / "figures" / "distance_histograms.png").is_file()
    assert len(rep.per_sample["margin"]) == 15 and rep.report.startswith("# fsl analysis: TorchvisionStyleResNet")
    with pytest.raises(ConfigError, match="not among the analyses run"):
        fsl.analyze(model, (x, y), (x, y), analyses=["geometry"], adversarial={"n_samples": 3})


def test_analyze_takes_dataloaders(resnet):
    model, x, y = resnet
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    a = fsl.analyze(model, loader, (x[45:], y[45:]), analyses=["geometry"], progress=False, geometry={"figures": []})
    b = fsl.analyze(model, (x, y), (x[45:], y[45:]), analyses=["geometry"], progress=False, geometry={"figures": []})
    assert {k: v for k, v in a.metrics.items() if "seconds" not in k} == \
        pytest.approx({k: v for k, v in b.metrics.items() if "seconds" not in k}, nan_ok=True)


def test_callback_in_a_plain_lightning_module(tmp_path):
    """AnalysisCallback in a LightningModule and Trainer fsl did not write: the model is wrapped,
    the data comes from the trainer's dataloaders, the scalars go to its CSV logger."""
    import csv

    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    from callbacks.analysis import AnalysisCallback

    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
            self.classifier = nn.Linear(16, 3)

        def forward(self, x):
            return self.classifier(self.body(x))

        def training_step(self, batch, _):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, _):
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), 1e-2)

    torch.manual_seed(0)
    x, y = _data(60, size=8)
    dl = lambda a, b: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b), batch_size=20)  # noqa: E731
    cb = AnalysisCallback(["geometry"], n_train=None, n_eval=None)
    trainer = pl.Trainer(max_epochs=2, logger=CSVLogger(tmp_path), callbacks=[cb], enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    module = Plain()
    trainer.fit(module, dl(x[:45], y[:45]), dl(x[45:], y[45:]))
    assert cb.model.head is module.classifier and cb.model.feature_domain.lower == 0.0
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [float(r["analysis/margin/median"]) for r in rows if r.get("analysis/margin/median")]
    assert logged and all(v > 0 for v in logged)
    assert cb.last["geometry"].metrics["acc"] == pytest.approx(
        float((module(x[45:]).argmax(1) == y[45:]).double().mean()))
