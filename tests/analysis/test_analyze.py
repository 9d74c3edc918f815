import json
import math

import pytest
import torch

from fsl.config import compose_config
from fsl.training import CheckpointError, train
from tests.helpers import synthetic_config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("an")
    result = train(synthetic_config(tmp, epochs=2, extra=["logger=none", "test_after_fit=false"]))
    return tmp, result.best_checkpoint


# every analysis but the feature-space geometry switched off
GEOMETRY_ONLY = [f"analysis.{a}.enabled=false" for a in ("pixel_hull", "adversarial", "spaces", "inversion", "morph",
                                                          "preimage", "signal", "selu", "ideal")]


def analyze_cfg(tmp, ckpt, out, extra=()):
    return compose_config("analyze", [f"ckpt_path={ckpt}", f"output_dir={out}", f"paths.wandb_dir={tmp}",
                                      "n_train=256", "n_eval=96", "analysis.pixel_hull.n_queries=24",
                                      "analysis.adversarial.n_samples=48", "device=cpu", "pixels.n_measure=6",
                                      "pixels.n_figure=2", "pixels.batch_size=6", "analysis.signal.n_signal=200",
                                      "analysis.ideal.n_ideal=200", "analysis.ideal.ideal_steps=10", *extra])


def test_analyze_writes_every_file(checkpoint, tmp_path):
    from fsl.analysis.run import analyze
    from fsl.tracking import find_offline_runs, read_offline_run

    tmp, ckpt = checkpoint
    out = tmp_path / "res"
    result = analyze(analyze_cfg(tmp_path, ckpt, out))
    for name in ["metrics.json", "per_sample.csv", "report.md"]:
        assert (out / name).is_file(), name
    figs = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"distance_histograms", "margin_vs_hull", "closest_class", "most_ambiguous", "least_ambiguous",
            "table1_margins", "roc_deepfool", "roc_pgd_03", "roc_cw", "roc_margin_pgd"} <= figs
    assert not list(out.rglob("*.part*"))  # nothing half-written
    assert any(p.startswith("pixels_") for p in figs)  # the pixel-space studies ran and drew
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["analysis/margin/median", "analysis/hull/median", "analysis/hull/projection_acc",
                "pixel/hull/projection_acc", "pixel/hull/support_label_agreement", "adv/deepfool/auroc/margin",
                "adv/pgd_03/success_rate", "adv/cw/auroc_lo/fdbd", "adv/margin_pgd/fpr95/knn", "pixels/inversion/flip/success_rate", "pixels/inversion/hull/success_rate"]:
        assert key in metrics and metrics[key] is not None, key
    assert metrics["analysis/n_eval"] == 96 and metrics["analysis/n_train"] == 256
    assert metrics["analysis/hull/certified_frac"] == 1.0
    rows = (out / "per_sample.csv").read_text().splitlines()
    assert len(rows) == 97 and rows[0].startswith("index,label,pred")
    report = (out / "report.md").read_text()
    assert "Paper (ResNet-20, CIFAR-10) vs measured" in report and "Table 1" in report
    assert "![roc_deepfool](figures/roc_deepfool.png)" in report
    assert "### AUROC (95% bootstrap interval)" in report and "| margin_pgd |" in report
    assert metrics["adv/deepfool/success_rate"] >= 0.99
    assert "From feature space back to pixels" in report
    run = read_offline_run(find_offline_runs(tmp_path)[0])
    assert run.summary["analysis/margin/median"] == pytest.approx(metrics["analysis/margin/median"])
    # re-running into the same folder replaces the files whole
    analyze(analyze_cfg(tmp_path, ckpt, out, GEOMETRY_ONLY))
    assert json.loads((out / "metrics.json").read_text())["analysis/margin/median"] == pytest.approx(
        metrics["analysis/margin/median"])
    assert not list(out.rglob("*.part*"))


def test_wrong_architecture_and_corrupt_checkpoint(checkpoint, tmp_path):
    from fsl.analysis.run import analyze

    tmp, ckpt = checkpoint
    with pytest.raises(CheckpointError, match="holds a 'selu_mlp' model, not 'resnet20'"):
        analyze(analyze_cfg(tmp_path, ckpt, tmp_path / "r1", ["expected_model=resnet20"]))
    bad = tmp_path / "corrupt.ckpt"
    bad.write_bytes(open(ckpt, "rb").read()[:1000])
    with pytest.raises(CheckpointError, match="corrupt"):
        analyze(analyze_cfg(tmp_path, bad, tmp_path / "r2"))
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_analysis_killed_midway_leaves_the_previous_results_whole(checkpoint, tmp_path):
    """SIGKILL while figures are being written: the results folder still holds the previous run's
    files, byte for byte; the next run removes the partial folder and swaps in its own results."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from fsl.analysis.run import analyze

    tmp, ckpt = checkpoint
    out = tmp_path / "res"
    quick = GEOMETRY_ONLY
    analyze(analyze_cfg(tmp_path, ckpt, out, quick))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("metrics.json") in before and Path("report.md") in before
    root = Path(__file__).resolve().parents[2]  # the repository root
    args = [f"ckpt_path={ckpt}", f"output_dir={out}", f"paths.wandb_dir={tmp_path}", "n_train=256", "n_eval=96",
            "device=cpu", "analysis.adversarial.enabled=false", "analysis.pixel_hull.enabled=false",
            "pixels.n_measure=6", "pixels.n_figure=2", "pixels.batch_size=6", "analysis.signal.n_signal=200",
            "analysis.ideal.n_ideal=200", "analysis.ideal.ideal_steps=10"]
    proc = subprocess.Popen([sys.executable, str(root / "analyze.py"), *args], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(root)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # wait until it has written some figures
        if list(tmp_path.glob(".res.partial-*/figures/*.png")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the analysis finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".res.partial-*/figures/*.png"))  # it was killed mid-way ...
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # ... and the results are the previous ones, whole
    analyze(analyze_cfg(tmp_path, ckpt, out, quick))
    assert not list(tmp_path.glob(".res.*"))  # partial folder of the killed run removed, no leftovers
    assert (out / "metrics.json").is_file()
