import math

import pytest
import torch

from fsl.data.subsets import stratified_subset
from fsl.tracking import find_offline_runs, read_offline_run
from fsl.training import load_model, train
from tests.helpers import CALLBACK_OVERRIDES, synthetic_config


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cb")
    cfg = synthetic_config(tmp, epochs=2, extra=CALLBACK_OVERRIDES)
    result = train(cfg)
    run = read_offline_run(find_offline_runs(tmp)[0])
    return tmp, cfg, result, run


def test_geometry_keys_are_logged_each_epoch(fitted):
    tmp, cfg, result, run = fitted
    for key in ["analysis/margin/median", "analysis/hull/median", "analysis/frac_hull_lt_margin",
                "analysis/ball/union_coverage", "analysis/ball/mean_count", "analysis/hull/support_label_agreement",
                "analysis/ambiguity/median", "analysis/margin/certified_frac"]:
        values = run.series(key)
        assert len(values) == 2, key  # every_n_epochs=1, two epochs
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), key
    assert run.series("analysis/margin/certified_frac")[-1] == 1.0
    assert run.series("analysis/hull/certified_frac")[-1] == 1.0
    for media in ("analysis/samples", "analysis/most_ambiguous", "analysis/least_ambiguous", "analysis/margin_hist"):
        assert any(k.startswith(media + "/") for k in run.keys), media  # W&B media are nested records
    assert any("media/table/analysis/samples" in f for f in run.files)
    # training draws only the figures train.yaml lists (analysis.geometry.figures); analyze.py draws all
    assert not any(k.startswith(("analysis/distance_histograms", "analysis/margin_vs_hull")) for k in run.keys)


def test_adversarial_keys_are_logged(fitted):
    tmp, cfg, result, run = fitted
    from fsl.adversarial import DETECTORS, load_suite

    suite = load_suite("mnist")
    assert set(suite) == {"deepfool", "pgd_01", "pgd_02", "pgd_03", "pgd_l2", "apgd_01", "apgd_l2", "cw",
                          "margin_pgd"}
    for attack in suite:
        keys = ["success_rate", "frac_margin_lt_hull", "frac_hull_shrank", "rule/train_margin_caught", "l2/median",
                "linf/median", "gap/median", "seconds"]
        keys += [f"{m}/{d}" for m in ("auroc", "auroc_lo", "auroc_hi", "tpr5", "fpr95", "aupr_in", "aupr_out")
                 for d in DETECTORS.names()]
        for key in keys:
            assert len(run.series(f"adv/{attack}/{key}")) == 1, (attack, key)  # epoch 2 only
    assert run.summary["adv/deepfool/success_rate"] >= 0.99
    assert run.summary["adv/pgd_03/linf/median"] <= 0.3 + 1e-6
    assert run.summary["adv/cw/gap/median"] >= 10.0 * (1 - 1e-4)  # the suite's kappa
    for d in DETECTORS.names():
        assert run.summary[f"adv/cw/auroc_lo/{d}"] <= run.summary[f"adv/cw/auroc/{d}"] <= \
            run.summary[f"adv/cw/auroc_hi/{d}"], d
    assert any(k.startswith("adv/deepfool/roc/") for k in run.keys)
    assert any(f.startswith("media/images/adv/pgd_03/roc") for f in run.files)


def test_logged_values_equal_direct_geometry_calls(fitted):
    """Recompute the last epoch's numbers from the checkpoint with fsl.geometry directly."""
    from fsl.data import create_datamodule
    from fsl.geometry import flip_margins, hull_distances

    tmp, cfg, result, run = fitted
    model, hp = load_model(result.last_checkpoint)
    dm = create_datamodule(**hp["data"])
    x_tr, y_tr = dm.tensors("train")
    x_va, y_va = dm.tensors("val")
    seed = int(cfg.seed)
    tr = x_tr[stratified_subset(y_tr, 300, seed)]
    va = x_va[stratified_subset(y_va, 120, seed + 1)]
    with torch.no_grad():
        f_tr, f_va = model.forward_features(tr), model.forward_features(va)
    dom = model.feature_domain
    m = flip_margins(f_va, model.head.weight, model.head.bias, dom.lower, dom.upper)
    h = hull_distances(f_va.double(), f_tr.double())
    assert run.series("analysis/margin/median")[-1] == pytest.approx(float(m.margin.median()), rel=1e-5)
    assert run.series("analysis/hull/median")[-1] == pytest.approx(float(h.distance.median()), rel=1e-4, abs=1e-7)
    frac = float((h.distance < m.margin).double().mean())
    assert run.series("analysis/frac_hull_lt_margin")[-1] == pytest.approx(frac, abs=1.5 / 120)


def test_per_epoch_subset_of_the_suite(tmp_path):
    """``only`` runs the named attacks of the suite; a name outside it is refused with the valid ones."""
    cfg = synthetic_config(tmp_path, epochs=1, extra=[*CALLBACK_OVERRIDES[:-1], "analysis.adversarial.n_samples=16",
                                                      "analysis.adversarial.every_n_epochs=1",
                                                      "analysis.adversarial.only=[deepfool,pgd_03]"])
    train(cfg)
    run = read_offline_run(find_offline_runs(tmp_path)[0])
    logged = {k.split("/")[1] for k in run.keys if k.startswith("adv/") and k.endswith("/success_rate")}
    assert logged == {"deepfool", "pgd_03"}
    bad = synthetic_config(tmp_path / "bad", epochs=1, extra=[*CALLBACK_OVERRIDES[:-1], "logger=none",
                                                              "analysis.adversarial.every_n_epochs=1",
                                                              "analysis.adversarial.only=[pgd_8_255]"])
    with pytest.raises(ValueError, match=r"analysis.adversarial.only: unknown name 'pgd_8_255'"):
        train(bad)
