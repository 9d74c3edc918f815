"""FeatInv decoders: shapes for every layer of every model, a toy encoder learned to SSIM > 0.99."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as ssim

from fsl.featinv import ConvDecoder, fit_decoder, reencoding_cosine
from fsl.models import MODELS, create_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_decoder_shapes_for_every_layer(name, shape):
    model = create_model(name, input_shape=shape, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        maps = model.feature_maps(x)
    for layer, m in maps.items():
        dec = ConvDecoder(m.shape[1:], shape, width=8, depth=1)
        with torch.no_grad():
            out = dec(m)
        assert out.shape == (2, *shape), layer
        assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_reencoding_cosine_is_median_over_positions():
    a = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(1))
    b = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    per_pos = torch.nn.functional.cosine_similarity(a, b, dim=1).flatten(1)
    assert torch.allclose(reencoding_cosine(a, b), per_pos.median(1).values)
    assert torch.allclose(reencoding_cosine(a, a), torch.ones(3))
    with pytest.raises(ValueError, match="shapes differ"):
        reencoding_cosine(a, b[:, :3])


def test_decoder_inverts_an_orthogonal_toy_encoder():
    """A fixed random orthogonal 1x1 conv is invertible: the decoder must learn it (SSIM > 0.99)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    encode = lambda x: torch.einsum("oc,bchw->bohw", q, x)  # noqa: E731
    base = torch.rand(256, 3, 4, 4, generator=g)
    images = torch.nn.functional.interpolate(base, size=(8, 8), mode="bilinear", align_corners=False)
    dec = ConvDecoder((3, 8, 8), (3, 8, 8), width=32, depth=1)
    losses = fit_decoder(dec, encode, images, steps=400, batch_size=64, lr=3e-3, seed=0)
    assert losses[-1] < losses[0] / 10
    test = torch.nn.functional.interpolate(torch.rand(32, 3, 4, 4, generator=g), size=(8, 8), mode="bilinear",
                                           align_corners=False)
    with torch.no_grad():
        rec = dec(encode(test))
    assert float(ssim(rec, test, data_range=1.0)) > 0.99


def test_reconstruction_metrics_against_their_definitions():
    from torchmetrics.functional.image import structural_similarity_index_measure

    from fsl.featinv import reconstruction_metrics

    torch.manual_seed(0)
    model = create_model("selu_mlp", hidden=(32, 16)).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 1, 28, 28, generator=g)
    r = (x + 0.1 * torch.randn(6, 1, 28, 28, generator=g)).clamp(0, 1)
    y = torch.arange(6) % 10
    summary, ps = reconstruction_metrics(model, "layers.0", x, r, labels=y)
    mse = ((r - x) ** 2).mean((1, 2, 3))
    assert torch.allclose(ps["psnr"], 10 * torch.log10(1 / mse), atol=1e-4)
    assert float(ps["ssim"][2]) == pytest.approx(float(structural_similarity_index_measure(r[2:3], x[2:3],
                                                                                           data_range=1.0)), abs=1e-6)
    with torch.no_grad():
        f_r, f_x = model.feature_maps(r)["layers.0"], model.feature_maps(x)["layers.0"]
        agree = model(r).argmax(1) == model(x).argmax(1)
    assert torch.allclose(ps["cosine"], torch.nn.functional.cosine_similarity(f_r, f_x, dim=1))
    assert torch.equal(ps["agree_pred"], agree) and summary["top1_pred"] == pytest.approx(float(agree.double().mean()))
    same, _ = reconstruction_metrics(model, "layers.1", x, x, labels=y)
    assert same["ssim"] == pytest.approx(1.0) and same["cosine_median"] == pytest.approx(1.0) and same["top1_pred"] == 1.0
    with pytest.raises(ValueError, match="no layer 'stage3'"):
        reconstruction_metrics(model, "stage3", x, r)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        reconstruction_metrics(model, "layers.0", x, r + 2)


@pytest.fixture(scope="module")
def featinv_runs(tmp_path_factory):
    """A synthetic SELU MLP classifier and, for its layer layers.0, a conv and a flow decoder
    trained through train(cfg) (the FeatInv entry of train.py)."""
    from fsl.training import train
    from tests.helpers import synthetic_config

    tmp = tmp_path_factory.mktemp("featinv")
    clf = train(synthetic_config(tmp / "clf", epochs=1, extra=["logger=none", "test_after_fit=false"]))
    common = ["logger=csv", f"featinv.classifier={clf.best_checkpoint}", "featinv.layer=layers.0",
              "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"]
    conv = train(synthetic_config(tmp / "conv", epochs=2, extra=common + ["featinv.width=16", "featinv.depth=1"]))
    flow = train(synthetic_config(tmp / "flow", epochs=1, extra=common + [
        "featinv.decoder=flow", "featinv.channels=[8,16]", "featinv.steps=2", "featinv.eval_samples=8"]))
    return clf, conv, flow


def test_featinv_training_entry_and_checkpoint_reload(featinv_runs):
    """train(cfg) with featinv.classifier set trains a decoder through Lightning; its checkpoint
    loads with weights_only=True and reproduces the reconstructions exactly."""
    from fsl.featinv.module import FeatInvModule, load_featinv
    from fsl.training import load_model

    clf, res, _ = featinv_runs
    assert {"val/loss", "val/ssim", "val/cosine", "val/top1_agree", "test/ssim"} <= set(res.metrics)
    assert 0 < res.metrics["test/ssim"] <= 1 and -1 <= res.metrics["test/cosine"] <= 1
    module = load_featinv(res.best_checkpoint)
    assert isinstance(module, FeatInvModule) and module.layer == "layers.0"
    net, _ = load_model(clf.best_checkpoint)  # the classifier inside is the frozen one, unchanged
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), module.net.state_dict().values()))
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = module(module.encode(x))
        b = load_featinv(res.best_checkpoint)(module.encode(x))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="deterministic"):
        module.sample(module.encode(x))
    raw = torch.load(res.best_checkpoint, weights_only=True, map_location="cpu")
    assert raw["hyper_parameters"]["featinv"]["layer"] == "layers.0"
    with pytest.raises(ValueError, match="not a FeatInv checkpoint"):
        load_featinv(clf.best_checkpoint)


# ------------------------------------------------------------------------------------------------
# the probabilistic decoder (conditional U-Net, flow matching, classifier-free guidance)


def _flow(in_shape=(4, 7, 7), seed=0):
    from fsl.featinv.flow import FlowDecoder

    torch.manual_seed(seed)
    dec = FlowDecoder(in_shape, (1, 28, 28), channels=(8, 16), hint_channels=4).eval()
    with torch.no_grad():  # the zero convolution makes a fresh model unconditional: give it a condition
        dec.hint.zero.weight.normal_(0, 0.5)
    return dec


@pytest.mark.parametrize("in_shape", [(4, 7, 7), (10,)])
def test_flow_sampler_is_seeded_and_reproducible(in_shape):
    dec = _flow(in_shape)
    z = torch.randn(3, *in_shape, generator=torch.Generator().manual_seed(5))
    a = dec.sample(z, n_samples=2, steps=4, seed=11)
    b = dec.sample(z, n_samples=2, steps=4, seed=11)
    c = dec.sample(z, n_samples=2, steps=4, seed=12)
    assert a.shape == (3, 2, 1, 28, 28) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    assert (a[:, 0] - a[:, 1]).abs().max() > 1e-3  # two samples per feature map differ
    # the noise of sample k of map b is the (b, k) slice of one seeded draw, whatever the call
    noise = torch.randn(3, 2, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    assert torch.equal(dec.sample(z, n_samples=2, steps=4, noise=noise), a)


def test_flow_guidance_zero_is_the_unconditional_model_and_one_the_conditional():
    dec = _flow()
    z = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 1, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    g0 = dec.sample(z, steps=5, guidance=0.0, noise=noise)
    assert torch.equal(g0, dec.sample(None, steps=5, noise=noise))
    # reference Euler loop of the conditional velocity alone (written here, not via sample())
    x = noise[:, 0] * 1.0
    hint = dec.hint(z)
    with torch.no_grad():
        for i in range(5):
            s_now, s_next = 1 - i / 5, 1 - (i + 1) / 5
            x = x + (s_next - s_now) * dec.velocity(x, torch.full((2,), s_now), hint)
    cond = ((x.clamp(-1, 1) + 1) / 2).unsqueeze(1)
    g1 = dec.sample(z, steps=5, guidance=1.0, noise=noise)
    torch.testing.assert_close(g1, cond, atol=1e-5, rtol=0)
    assert (g1 - g0).abs().max() > 1e-3
    # guidance extrapolates: g(2) - g(1) and g(1) - g(0) point the same way at the first step
    d1 = dec.sample(z, steps=1, guidance=1.0, noise=noise) - dec.sample(z, steps=1, guidance=0.0, noise=noise)
    d2 = dec.sample(z, steps=1, guidance=2.0, noise=noise) - dec.sample(z, steps=1, guidance=1.0, noise=noise)
    assert float((d1 * d2).sum()) > 0


def test_flow_matching_loss_is_its_definition():
    dec = _flow()
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    z = torch.randn(6, 4, 7, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = dec.loss(x, z, torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        noise, s = torch.randn(x.shape, generator=g), torch.rand(6, generator=g)
        keep = (torch.rand(6, generator=g) >= 0.15).float().view(6, 1, 1, 1)
        xs = x * 2 - 1
        x_s = s.view(6, 1, 1, 1) * noise + (1 - s.view(6, 1, 1, 1)) * xs
        want = ((dec.velocity(x_s, s, dec.hint(z) * keep) - (noise - xs)) ** 2).mean()
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="NaN"):
        dec.sample(torch.full((1, 4, 7, 7), float("nan")))


def test_flow_decoder_shapes_for_every_layer():
    from fsl.featinv.flow import FlowDecoder

    for name in MODELS:
        for shape in [(1, 28, 28), (3, 32, 32)]:
            model = create_model(name, input_shape=shape, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
            with torch.no_grad():
                maps = model.feature_maps(torch.rand(1, *shape))
            for layer, m in maps.items():
                dec = FlowDecoder(m.shape[1:], shape, channels=(8, 16, 16), hint_channels=2).eval()
                out = dec.sample(m, n_samples=2, steps=1)
                assert out.shape == (1, 2, *shape), (name, layer)


def test_flow_featinv_training_entry_and_reload(featinv_runs):
    """decoder=flow trains through Lightning like the conv decoder; reloaded, it draws the same samples."""
    from fsl.featinv.module import load_featinv

    _, _, res = featinv_runs
    assert {"val/loss", "val/ssim", "test/ssim", "test/cosine", "test/top1_agree"} <= set(res.metrics)
    module = load_featinv(res.best_checkpoint)
    assert module.kind == "flow"
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = module.encode(x)
        a = module.sample(z, 2, seed=3)
        b = load_featinv(res.best_checkpoint).sample(z, 2, seed=3)
    assert a.shape == (3, 2, 1, 28, 28) and torch.equal(a, b)


def test_featinv_analysis_scores_decoders_and_inversion_on_the_same_samples(featinv_runs, tmp_path):
    from fsl.analysis import Context, create_analysis
    from fsl.errors import FslError
    from fsl.featinv import reconstruction_metrics
    from fsl.featinv.module import load_featinv
    from fsl.training import load_model, train
    from tests.helpers import synthetic_config

    clf, conv, flow = featinv_runs
    model, hp = load_model(clf.best_checkpoint)
    g = torch.Generator().manual_seed(0)
    data = {s: (torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
            for s, n in (("train", 40), ("test", 12))}
    ctx = Context(model, lambda split: data[split], eval_split="test")
    a = create_analysis("featinv", checkpoints=[conv.best_checkpoint, flow.best_checkpoint], n_eval=12, n_compare=5,
                        samples=3, n_figure=4, inversion={"enabled": True, "reference": "mean", "tol": 1e-3,
                                                          "max_iter": 20, "chunk": 5})
    res = a.run(ctx)
    m = res.metrics
    x, y = ctx.eval_images(12), ctx.labels("test", 12)
    # the deterministic decoder's numbers are reconstruction_metrics of module(encode(x)), recomputed here
    dec = load_featinv(conv.best_checkpoint)
    with torch.no_grad():
        want, _ = reconstruction_metrics(model, "layers.0", x, dec(dec.encode(x)), labels=y)
    assert m["layers.0/conv/ssim"] == pytest.approx(want["ssim"], abs=1e-6)
    assert m["layers.0/conv/top1_label"] == pytest.approx(want["top1_label"])
    assert m["layers.0/conv/cosine"] == pytest.approx(want["cosine_median"], abs=1e-6)
    # the comparison uses the first n_compare of the same images for all three
    data_out = res.data["layers.0"]
    assert set(data_out) == {"conv", "flow", "inversion"} and len(data_out["inversion"].images) == 5
    for kind in ("conv", "flow", "inversion"):
        ssim5 = data_out[kind].per_sample["ssim"][:5].double().mean()
        assert m[f"compare/layers.0/{kind}/ssim"] == pytest.approx(float(ssim5))
    # inversion: success exactly where its re-measured residual meets the tolerance; it is a real solve
    inv = data_out["inversion"]
    assert torch.equal(inv.success, inv.per_sample["residual"] <= 1e-3)
    assert m["compare/layers.0/inversion/success_rate"] > 0.5
    assert m["compare/layers.0/inversion/residual_median"] < m["compare/layers.0/conv/residual_median"]
    # flow: diversity is the mean per-pixel population std over the samples
    fl = data_out["flow"]
    assert fl.samples.shape == (5, 3, 1, 28, 28)
    torch.testing.assert_close(fl.std, fl.samples.std(dim=1, unbiased=False))
    assert m["layers.0/flow/diversity"] == pytest.approx(float(fl.std.flatten(1).mean(1).double().mean()))
    assert "layers.0/grid" in res.figures and len(res.figures["layers.0/grid"].fig.axes) == 4 * (1 + 1 + 3 + 1 + 1)
    assert len(res.tables["table"].rows) == 3 and any("optimisation inversion" in line for line in res.report)
    # a decoder of another classifier is refused
    other = train(synthetic_config(tmp_path / "other", epochs=1, extra=["logger=none", "test_after_fit=false",
                                                                        "seed=5"]))
    other_model, _ = load_model(other.best_checkpoint)
    with pytest.raises(FslError, match="another classifier"):
        create_analysis("featinv", checkpoints=[conv.best_checkpoint]).run(
            Context(other_model, lambda split: data[split], eval_split="test"))
    # no checkpoints: nothing computed, the report says how to give them
    empty = create_analysis("featinv").run(ctx)
    assert empty.metrics == {} and "analysis.featinv.checkpoints" in " ".join(empty.report)


def test_layer_inversion_keeps_the_models_batchnorm_mode_and_reports_its_own_residual(seeded_model):
    """fsl.inversion restores the training mode of the module it is given; the layer wrapper must
    carry the model's eval mode (a fresh nn.Module is in training mode, which would leave the
    ResNet's BatchNorm in batch-statistics mode afterwards)."""
    from fsl.featinv.evaluate import evaluate_inversion

    model = seeded_model("resnet20")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    r = evaluate_inversion(model, "pooled", x, None, torch.full((1, 28, 28), 0.5), max_iter=1, chunk=2)
    assert not model.training and not any(m.training for m in model.modules())
    with torch.no_grad():
        f, t = model.feature_maps(r.images)["pooled"].double(), model.feature_maps(x)["pooled"].double()
    torch.testing.assert_close(r.per_sample["residual"], (f - t).norm(dim=1) / t.norm(dim=1))
    assert r.extra["method"] == "al+sqp"  # 64 features < 784 pixels (stage1-3 have more: "al")
