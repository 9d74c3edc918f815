"""A results folder lists what fsl wrote (manifest.json); fsl never deletes or overwrites anything else."""
import json
import os

import pytest

from fsl.analysis.results import ResultsDir, ResultsFolderError, check_results_folder, read_manifest


def _run(folder, files: dict, staged=True):
    res = ResultsDir(folder, staged=staged)
    for name, text in files.items():
        res.write_text(name, text)
    return res.commit()


def test_rerun_replaces_exactly_fsl_files_and_keeps_foreign_ones(tmp_path):
    out = tmp_path / "res"
    _run(out, {"metrics.json": "1", "figures/a.png": "a", "figures/old.png": "o"})
    (out / "thesis.tex").write_text("mine")
    (out / "figures" / "mine.png").write_text("mine")
    (out / "featmap").mkdir()
    _run(out / "featmap", {"metrics.json": "sub"})  # a sub-study with its own manifest
    _run(out, {"metrics.json": "2", "figures/a.png": "A"})
    assert (out / "metrics.json").read_text() == "2" and (out / "figures" / "a.png").read_text() == "A"
    assert not (out / "figures" / "old.png").exists()  # fsl's, not written again: removed
    assert (out / "thesis.tex").read_text() == "mine" and (out / "figures" / "mine.png").read_text() == "mine"
    assert (out / "featmap" / "metrics.json").read_text() == "sub"
    manifest = read_manifest(out)
    assert manifest["files"] == ["figures/a.png", "metrics.json"] and manifest["state"] == "complete"
    assert not list(tmp_path.glob(".res.partial-*"))


def test_folder_without_manifest_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    with pytest.raises(ResultsFolderError, match="not empty and has no manifest.json.*thesis.tex.*output_dir"):
        ResultsDir(out, staged=True)
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]
    assert check_results_folder(tmp_path / "new") is None  # a new folder is fine
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_results_folder(empty) is None


def test_a_new_file_never_overwrites_a_foreign_one(tmp_path):
    out = tmp_path / "res"
    _run(out, {"metrics.json": "1"})
    (out / "report.md").write_text("my notes")
    with pytest.raises(ResultsFolderError, match="report.md exists and fsl did not write it"):
        _run(out, {"metrics.json": "2", "report.md": "fsl"})
    assert (out / "report.md").read_text() == "my notes" and (out / "metrics.json").read_text() == "1"


def test_interrupted_commit_keeps_every_fsl_file_listed(tmp_path, monkeypatch):
    out = tmp_path / "res"
    _run(out, {"a.txt": "old", "b.txt": "old"})
    res = ResultsDir(out, staged=True)
    res.write_text("a.txt", "new")
    res.write_text("c.txt", "new")
    real, calls = os.replace, []

    def crash(src, dst):
        calls.append(dst)
        if str(dst).endswith("c.txt"):
            raise KeyboardInterrupt("killed mid-commit")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        res.commit()
    monkeypatch.setattr(os, "replace", real)
    # the journal lists old and new files: a re-run may replace all of them, none is foreign
    assert set(read_manifest(out)["files"]) == {"a.txt", "b.txt", "c.txt"}
    _run(out, {"a.txt": "again"})
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "manifest.json"]


def test_unstaged_writes_keep_the_manifest_current(tmp_path):
    out = tmp_path / "res"
    res = ResultsDir(out)
    res.write_json("metrics.json", {"x": 1.0})
    assert read_manifest(out)["files"] == ["metrics.json"]
    with pytest.raises(ValueError, match="written by ResultsDir itself"):
        res.write_text("manifest.json", "{}")
    (out / "manifest.json").write_text(json.dumps({"no": "files"}))
    with pytest.raises(ResultsFolderError, match="not an fsl manifest"):
        ResultsDir(out)


def test_analyze_refuses_a_foreign_folder_before_loading_anything(tmp_path):
    from fsl.analysis.run import analyze
    from fsl.config import compose_config

    out = tmp_path / "res"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    cfg = compose_config("analyze", [f"ckpt_path={tmp_path / 'missing.ckpt'}", f"output_dir={out}",
                                     f"wandb.dir={tmp_path}"])
    with pytest.raises(ResultsFolderError, match="fsl did not write it"):
        analyze(cfg)  # the folder check comes before the (missing) checkpoint is opened
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_single_file_writers_never_overwrite(tmp_path):
    from fsl.analysis.results import save_new

    target = tmp_path / "feats.pt"
    save_new({"x": 1}, target)
    with pytest.raises(ResultsFolderError, match="exists; fsl never overwrites"):
        save_new({"x": 2}, target)
    import torch

    assert torch.load(target, weights_only=True) == {"x": 1}
    with pytest.raises(ResultsFolderError, match="does not exist"):
        save_new({}, tmp_path / "missing" / "f.pt")
