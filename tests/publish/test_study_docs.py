"""Published numbers cannot go stale: every committed study README is its template rendered from the
committed metrics, and every figure of a study is linked from its report or README."""
import re
from pathlib import Path

import pytest

from fsl.analysis.results import read_manifest
from fsl.publish.render import render
from fsl.publish.study import load_study_config, study_names

ROOT = Path(__file__).resolve().parents[2]  # the repository root
STUDIES = study_names()


def _folder(name: str) -> Path:
    folder = ROOT / load_study_config(name).output_dir
    if not folder.exists():
        pytest.skip(f"{folder} not generated yet: `make study NAME={name}` writes it")
    return folder


@pytest.mark.parametrize("name", STUDIES)
def test_committed_readme_is_rendered_from_committed_metrics(name):
    folder = _folder(name)
    assert read_manifest(folder) is not None, (f"{folder} was not written by the study command; run "
                                               f"`make study NAME={name}` and commit the folder")
    expected = render(ROOT / "configs" / "study" / f"{name}.md", folder)
    actual = (folder / "README.md").read_text()
    assert actual == expected, (f"{folder}/README.md differs from its template rendered from the committed metrics; "
                                f"re-render it with `make study NAME={name} ARGS=only=[readme]` (or re-run the study)")


@pytest.mark.parametrize("name", STUDIES)
def test_every_figure_of_a_study_is_linked_and_every_link_exists(name):
    folder = _folder(name)
    for sub in [folder, *(p for p in folder.iterdir() if p.is_dir() and read_manifest(p) is not None)]:
        manifest = read_manifest(sub)
        listed = set(manifest["files"])
        text = "".join((sub / f).read_text() for f in ("README.md", "report.md") if (sub / f).is_file())
        links = set(re.findall(r"\]\(([^)#\s]+)", text))
        for png in sorted(sub.glob("figures/*.png")):
            rel = png.relative_to(sub).as_posix()
            assert rel in listed, f"{png} is not in {sub}/manifest.json: a stale figure fsl did not write this time"
            assert rel in links, f"{png} is linked from neither {sub}/README.md nor {sub}/report.md"
        for link in links:
            if not re.match(r"[a-z]+://", link):
                assert (sub / link).exists(), f"{sub}: broken link {link}"


def test_renderer_fails_on_a_missing_metric(tmp_path):
    from fsl.analysis.results import ResultsDir
    from fsl.publish.render import RenderError

    res = ResultsDir(tmp_path / "s")
    res.write_json("metrics.json", {"analysis/acc": 0.5, "analysis/margin/median": float("inf")})
    res.commit()
    (tmp_path / "t.md").write_text("acc {{ m['analysis/acc']|pct }} margin {{ m['analysis/margin/median']|g3 }}\n")
    assert render(tmp_path / "t.md", tmp_path / "s") == "acc 50.0% margin inf\n"
    (tmp_path / "bad.md").write_text("{{ m['analysis/acc_typo']|pct }}\n")
    with pytest.raises(RenderError, match="acc_typo"):
        render(tmp_path / "bad.md", tmp_path / "s")


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))])
def test_user_docs_link_to_files_that_exist(doc):
    text = (ROOT / doc).read_text()
    for link in re.findall(r"\]\(([^)#\s]+)", text):
        if re.match(r"[a-z]+:", link):
            continue
        target = (ROOT / doc).parent / link
        assert target.exists(), f"{doc}: broken link {link}"
