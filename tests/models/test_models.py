import inspect

import pytest
import torch

from fsl.errors import ConfigError
from fsl.models import MODELS, SELU_LOWER, create_model

SPECS = [
    ("resnet20", dict(input_shape=(3, 32, 32))),
    ("resnet20", dict(input_shape=(1, 28, 28), mean=[0.286], std=[0.353])),
    ("fcnn1", dict()),
    ("fcnn1", dict(selu_output=True)),
    ("selu_mlp", dict()),
]


@pytest.mark.parametrize("name,kwargs", SPECS)
def test_shapes_no_nan_and_head_split(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.rand(6, *model.input_shape)
    feats = model.forward_features(x)
    logits = model(x)
    assert feats.shape == (6, model.feature_dim)
    assert logits.shape == (6, 10)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()
    torch.testing.assert_close(model.forward_head(feats), logits, rtol=0, atol=0)
    assert model.head.weight.shape == (10, model.feature_dim)


@pytest.mark.parametrize("name,kwargs", SPECS)
def test_every_parameter_gets_a_gradient(name, kwargs):
    torch.manual_seed(0)
    model = create_model(name, **kwargs).train()
    x = torch.rand(4, *model.input_shape)
    torch.nn.functional.cross_entropy(model(x), torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name,kwargs", SPECS)
def test_features_respect_declared_domain(name, kwargs):
    torch.manual_seed(1)
    model = create_model(name, **kwargs).eval()
    x = torch.rand(64, *model.input_shape)
    x[:8] = 0.0
    x[8:16] = 1.0
    feats = model.forward_features(x)
    dom = model.feature_domain
    if dom.lower is not None:
        assert feats.min() >= dom.lower - 1e-5
    if dom.upper is not None:
        assert feats.max() <= dom.upper + 1e-5
    assert dom.contains(feats)


def test_declared_domains_match_activations():
    assert create_model("resnet20").feature_domain.lower == 0.0
    assert create_model("selu_mlp").feature_domain.lower == pytest.approx(SELU_LOWER)
    assert SELU_LOWER == pytest.approx(-1.7580993408)
    # SELU never goes below its infimum (in float64 it reaches it for very negative inputs)
    assert torch.nn.functional.selu(torch.tensor([-50.0, -5.0], dtype=torch.float64)).min() >= SELU_LOWER


def test_resnet20_matches_he_et_al():
    model = create_model("resnet20")
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < n_params < 0.28e6  # the paper's 0.27M
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == 20  # 19 conv layers + the linear head
    assert model.feature_dim == 64


def test_selu_mlp_layer_sizes():
    model = create_model("selu_mlp")
    sizes = [(l.in_features, l.out_features) for l in [*model.layers, model.head]]
    assert sizes == [(784, 256), (256, 256), (256, 128), (128, 32), (32, 10)]


def test_normalisation_is_inside_the_model():
    model = create_model("selu_mlp", mean=[0.5], std=[0.25]).eval()
    x = torch.rand(3, 1, 28, 28)
    h = ((x - 0.5) / 0.25).flatten(1)
    for layer in model.layers:
        h = torch.nn.functional.selu(layer(h))
    torch.testing.assert_close(model.forward_features(x), h)


def test_unknown_model_names_the_closest_or_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet21'; did you mean 'resnet20'\? "
                                          r"\(see configs/model/\)"):
        create_model("resnet21")
    with pytest.raises(ConfigError) as err:
        create_model("vgg")
    for name in MODELS:
        assert name in str(err.value)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("name, typo, want", [("selu_mlp", "hiden", "hidden"), ("fcnn1", "selu_ouput", "selu_output"),
                                              ("resnet20", "widht", "widths")])
def test_unknown_model_parameter_names_the_closest(name, typo, want):
    with pytest.raises(ConfigError, match=f"model '{name}' has no option '{typo}'; did you mean '{want}'"):
        create_model(name, **{typo: 1})


def test_model_registry_defaults_and_resnet20_signature():
    from fsl.models import CifarResNet, resnet20

    assert MODELS.defaults("selu_mlp")["hidden"] == (256, 256, 128, 32)
    assert "depth" not in MODELS.defaults("resnet20")  # resnet20 fixes it
    want = {k: v for k, v in inspect.signature(CifarResNet).parameters.items() if k != "depth"}
    assert {k: p.default for k, p in inspect.signature(resnet20).parameters.items()} == \
        {k: p.default for k, p in want.items()}
    torch.manual_seed(0)
    a = create_model("resnet20", input_shape=(1, 8, 8), mean=[0.5], std=[0.25])
    torch.manual_seed(0)
    b = CifarResNet(depth=20, input_shape=(1, 8, 8), mean=[0.5], std=[0.25])
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError, match="registered twice"):
        MODELS.register("resnet20", CifarResNet)


def test_bad_resnet_depth_and_channel_stats():
    with pytest.raises(ValueError, match="6k\\+2"):
        from fsl.models import CifarResNet
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="mean/std"):
        create_model("resnet20", input_shape=(1, 28, 28))  # CIFAR stats have 3 channels


@pytest.mark.parametrize("shape, want", [((1, 28, 28), [(16, 28, 28), (32, 14, 14), (64, 7, 7), (64,)]),
                                         ((3, 32, 32), [(16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)])])
def test_resnet20_feature_maps(shape, want):
    model = create_model("resnet20", input_shape=shape, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = model.feature_maps(x)
        feats = model.forward_features(x)
    assert list(maps) == ["stage1", "stage2", "stage3", "pooled"]
    assert [tuple(m.shape[1:]) for m in maps.values()] == want
    assert torch.equal(maps["pooled"], feats) and torch.allclose(maps["stage3"].mean((2, 3)), feats)
    assert all(bool((m >= 0).all()) for m in maps.values())  # every stage ends in a ReLU


def test_selu_mlp_feature_maps():
    model = create_model("selu_mlp").eval()
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = model.feature_maps(x)
    assert {k: tuple(v.shape) for k, v in maps.items()} == {"layers.0": (3, 256), "layers.1": (3, 256),
                                                             "layers.2": (3, 128), "layers.3": (3, 32)}
    assert torch.equal(maps["layers.3"], model.forward_features(x))
