"""The study command: one call trains, analyzes, runs sub-studies and writes a whole folder whose
README is rendered from the metrics it wrote; re-runs never touch files fsl did not write."""
import json
from pathlib import Path

import pytest

from fsl.analysis.results import ResultsFolderError, read_manifest
from fsl.publish.render import render
from fsl.publish.study import StudyError, load_study_config, run_study
from tests.helpers import synthetic_overrides

TEMPLATE = """# tiny
test accuracy {{ manifest.train_metrics.classifier["test/acc"]|f4 }}; median margin {{ m["analysis/margin/median"]|g3 }}
{% for a in attacks(m) %}
- {{ a }}: {{ m["adv/" ~ a ~ "/success_rate"]|pct }}
{% endfor %}
flip hits {{ sub.inversion["pixels/inversion/flip/success_rate"]|pct }}; margin model {{ sub.margin_training["analysis/margin/median"]|g3 }}
"""


def _study(tmp_path: Path) -> Path:
    cfg_dir = tmp_path / "configs"
    (cfg_dir / "study").mkdir(parents=True)
    train = [o for o in synthetic_overrides(tmp_path, epochs=1) if not o.startswith("paths.output_dir")]
    (cfg_dir / "study" / "tiny.yaml").write_text(json.dumps({
        "title": "tiny", "output_dir": str(tmp_path / "results" / "tiny"),
        "train": train,
        "analyze": ["analysis=[geometry,adversarial]", "n_eval=60", "analysis.adversarial.n_samples=20",
                    "analysis.adversarial.n_boot=20", "+analysis.adversarial.only=[deepfool,pgd_01]",
                    f"paths.data_dir={tmp_path / 'data'}", f"wandb.dir={tmp_path}"],
        "inversion": {"analyze": ["analysis=[inversion]", "n_eval=60", "pixels.n_measure=4", "pixels.n_figure=2",
                                  f"paths.data_dir={tmp_path / 'data'}", f"wandb.dir={tmp_path}"]},
        "margin_training": {"train": [*train, "loss.margin.weight=0.2", "loss.margin.target=5"], "fine_tune": True,
                            "analyze": ["analysis=[geometry,adversarial]", "n_eval=60",
                                        "analysis.adversarial.n_samples=20", "analysis.adversarial.n_boot=20",
                                        "+analysis.adversarial.only=[deepfool,pgd_01]",
                                        f"paths.data_dir={tmp_path / 'data'}", f"wandb.dir={tmp_path}"]},
    }))
    (cfg_dir / "study" / "tiny.md").write_text(TEMPLATE)
    return cfg_dir


@pytest.mark.slow
def test_study_writes_the_whole_folder_and_keeps_foreign_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_dir = _study(tmp_path)
    out = tmp_path / "results" / "tiny"
    res = run_study("tiny", config_dir=cfg_dir)
    manifest = read_manifest(out)
    # provenance: commit, versions, hardware, seconds per stage, checkpoint digests, every stage's config
    assert {"train", "analyze", "inversion", "margin_training"} <= set(manifest["seconds"])
    assert len(manifest["checkpoints"]["classifier"]["sha256"]) == 64 and "margin" in manifest["checkpoints"]
    assert manifest["versions"]["torch"] and manifest["hardware"]["cpu_cores"] >= 1 and "commit" in manifest["git"]
    assert manifest["configs"]["classifier"]["seed"] == 0 and manifest["configs"]["analyze"]["output_dir"] == str(out)
    # the README is the template rendered from the metrics written here
    m = json.loads((out / "metrics.json").read_text())
    readme = (out / "README.md").read_text()
    assert readme == render(cfg_dir / "study" / "tiny.md", out)
    assert f"median margin {m['analysis/margin/median']:.3g}" in readme
    assert "README.md" in manifest["files"] and "metrics.json" in manifest["files"]
    for sub in ("inversion", "margin_training"):
        assert read_manifest(out / sub) is not None and (out / sub / "metrics.json").is_file()
    # a re-run of one stage keeps the others' results and times, the user's files and the sub-studies
    (out / "thesis.tex").write_text("mine")
    (out / "figures" / "my_plot.png").write_bytes(b"x")
    t_inv = manifest["seconds"]["inversion"]
    run_study("tiny", config_dir=cfg_dir, only=["analyze"], ckpt_path=res.checkpoints["classifier"]["path"])
    assert (out / "thesis.tex").read_text() == "mine" and (out / "figures" / "my_plot.png").read_bytes() == b"x"
    assert (out / "inversion" / "metrics.json").is_file()
    again = read_manifest(out)
    assert again["seconds"]["inversion"] == t_inv and "thesis.tex" not in again["files"]
    assert (out / "README.md").read_text() == render(cfg_dir / "study" / "tiny.md", out)


def test_study_refuses_a_folder_fsl_did_not_write(tmp_path):
    cfg_dir = _study(tmp_path)
    out = tmp_path / "results" / "tiny"
    out.mkdir(parents=True)
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(ResultsFolderError, match="fsl did not write it"):
        run_study("tiny", config_dir=cfg_dir)
    assert (out / "thesis.tex").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_study_config_errors(tmp_path):
    with pytest.raises(StudyError, match="valid names: .*selu_mlp_mnist5k"):
        load_study_config("selu_mlp_mnst5k")
    cfg_dir = _study(tmp_path)
    with pytest.raises(StudyError, match="unknown stages"):
        run_study("tiny", config_dir=cfg_dir, only=["trian"])
    (cfg_dir / "study" / "bad.yaml").write_text("title: x\ntrainn: []\n")
    with pytest.raises(StudyError, match="unknown keys"):
        load_study_config("bad", cfg_dir)


@pytest.mark.parametrize("name", sorted(p.stem for p in Path("configs/study").glob("*.yaml")))
def test_committed_study_configs_load(name):
    cfg = load_study_config(name)
    assert cfg.train and Path(cfg.output_dir).parts[:2] == ("docs", "results")
    assert (Path("configs/study") / f"{name}.md").is_file()
