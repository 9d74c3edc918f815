"""docs/metrics.md is generated from the analyses' ``metric_docs`` and the training keys of
fsl.analysis.metric_docs, and it describes what was really logged: every key of the committed study
results (docs/results/**/metrics.json) matches exactly one documented pattern, every pattern matches
one of them (or says it does not), every analysis documents its keys, and every key the training
code logs is documented."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import fsl.analysis.studies  # noqa: F401  (registers the built-in analyses)
from fsl.analysis import ANALYSES
from fsl.analysis.metric_docs import MetricDoc, all_metric_docs, main, match, render_markdown

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "metrics.md"
REGENERATE = "python -m fsl.analysis.metric_docs > docs/metrics.md"
#: the modules that log training keys (``self.log``, or a dict handed to the loggers)
TRAINING_SOURCES = ("fsl/training/module.py", "fsl/featinv/module.py", "callbacks/timing.py", "callbacks/analysis.py")


def committed_keys() -> dict[str, str]:
    """Every key of the committed results, with the first file that holds it."""
    files = sorted((ROOT / "docs" / "results").glob("**/metrics.json"))
    assert files, "no committed results under docs/results/"
    out: dict[str, str] = {}
    for f in files:
        for key in json.loads(f.read_text()):
            out.setdefault(key, str(f.relative_to(ROOT)))
    return out


def patterns_of(docs: list[MetricDoc], keys) -> dict[str, list[str]]:
    """``{key: [patterns matching it]}``."""
    return {k: [d.pattern for d in docs if d.matches(k)] for k in keys}


def undocumented(found: dict[str, list[str]]) -> list[str]:
    return sorted(k for k, p in found.items() if not p)


def ambiguous(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k: p for k, p in sorted(found.items()) if len(p) > 1}


def dead(docs: list[MetricDoc], found: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """``(patterns said to be in the results that match no committed key, patterns said not to be
    there that match one)``."""
    hit = {p for ps in found.values() for p in ps}
    return ([d.pattern for d in docs if d.in_results and d.pattern not in hit],
            [d.pattern for d in docs if not d.in_results and d.pattern in hit])


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return committed_keys()


@pytest.fixture(scope="module")
def found(keys) -> dict[str, list[str]]:
    return patterns_of(all_metric_docs(), keys)


def test_docs_metrics_md_is_generated_from_the_code():
    assert DOC.read_text(encoding="utf-8") == render_markdown(), \
        f"docs/metrics.md is out of date; regenerate it: {REGENERATE}"


def test_the_command_prints_the_doc(capsys):
    assert main([]) == 0
    assert capsys.readouterr().out == render_markdown()
    assert main(["--write"]) == 2  # no options: the doc goes to stdout


def test_every_committed_key_matches_exactly_one_pattern(keys, found):
    missing = undocumented(found)
    assert not missing, (f"{len(missing)} logged keys have no MetricDoc (add one to the analysis' metric_docs, then "
                         f"{REGENERATE}); first: " + ", ".join(f"{k} ({keys[k]})" for k in missing[:15]))
    several = ambiguous(found)
    assert not several, f"keys matching several patterns (make them disjoint): {list(several.items())[:10]}"


def test_every_pattern_matches_a_committed_key_or_says_it_does_not(found):
    unused, marked = dead(all_metric_docs(), found)
    assert not unused, (f"documented patterns no committed study logs: {unused}; fix the pattern, or mark it "
                        f"MetricDoc(..., in_results=False) if the committed studies do not produce it")
    assert not marked, f"patterns marked in_results=False that the committed results hold: {marked}"


def analyses_without_docs() -> list[str]:
    return [n for n in ANALYSES.names() if not ANALYSES.get(n).metric_docs]


def test_every_analysis_documents_its_keys():
    names = ANALYSES.names()
    assert len(names) >= 12
    missing = analyses_without_docs()
    assert not missing, f"analyses without metric_docs (the docs of their Result.metrics keys): {missing}"
    for n in names:
        for d in ANALYSES.get(n).metric_docs:
            assert isinstance(d, MetricDoc), (n, d)
            assert not d.pattern.startswith(ANALYSES.get(n).prefix + "/"), \
                f"{n}: metric_docs patterns are relative to the prefix, as Result.metrics keys: {d.pattern}"


def training_keys() -> dict[str, set[str]]:
    """``{key as written in the source: its expansions}`` of every key the training code logs
    (``f"{stage}/..."`` expands to the three splits)."""
    logged = re.compile(r'self\.log\(\s*f?"([^"]+)"|"([a-z_]+/[a-z_0-9]+)"\s*:')
    out = {}
    for path in TRAINING_SOURCES:
        for m in logged.finditer((ROOT / path).read_text()):
            key = m.group(1) or m.group(2)
            out[key] = {key.replace("{stage}", s) for s in ("train", "val", "test")}
    return out


def test_every_training_key_is_documented():
    written = training_keys()
    assert {"train/loss", "{stage}/acc", "time/train_epoch_s"} <= set(written)
    docs = all_metric_docs()
    missing = [k for k, expansions in written.items() if not any(match(e, docs) for e in expansions)]
    assert not missing, f"keys logged in training without a MetricDoc in fsl/analysis/metric_docs.py: {missing}"


def test_meanings_are_plain_markdown():
    """Placeholders in prose stay in code spans (a bare ``<name>`` would be an HTML tag)."""
    for d in all_metric_docs():
        for text in (d.meaning, d.unit):
            prose = re.sub(r"`[^`]*`", "", text)
            assert "<" not in prose and ">" not in prose, f"{d.pattern}: write placeholders as code: {text}"


def test_the_checks_catch_a_missing_a_dead_and_an_overlapping_pattern():
    keys = ["analysis/acc", "analysis/lipschitz", "analysis/07"]
    docs = [MetricDoc("analysis/acc", "x", "count"), MetricDoc("analysis/lipschitz", "x", "count")]
    assert undocumented(patterns_of(docs, keys)) == ["analysis/07"]
    docs += [MetricDoc("analysis/never_logged", "x", "count"),
             MetricDoc("analysis/<pct>", "x", "count", in_results=False)]
    assert dead(docs, patterns_of(docs, keys)) == (["analysis/never_logged"], ["analysis/<pct>"])
    docs.append(MetricDoc("analysis/<class>", "x", "count"))
    assert ambiguous(patterns_of(docs, keys)) == {"analysis/07": ["analysis/<pct>", "analysis/<class>"]}
    with pytest.raises(ValueError, match="matches 2 patterns"):
        match("analysis/07", docs)


def test_a_doc_rejects_unknown_placeholders_and_missing_text():
    with pytest.raises(ValueError, match="unknown placeholder <atack>"):
        MetricDoc("adv/<atack>/auroc", "x", "count")
    with pytest.raises(ValueError, match="must all be given"):
        MetricDoc("adv/x", "", "count")
    d = MetricDoc("adv/<attack>/auroc_<bound>/<detector>", "x", "fraction")
    assert d.matches("adv/pgd_01/auroc_lo/margin") and not d.matches("adv/pgd_01/auroc_mid/margin")
    assert not d.matches("adv/a/b/auroc_lo/margin")  # a placeholder is one path segment
    assert match("adv/deepfool/auroc_hi/msp").pattern == "adv/<attack>/auroc_<bound>/<detector>"
    assert match("no/such/key") is None


def test_a_missing_doc_shows_in_the_rendered_file_and_the_analysis_check(monkeypatch):
    cls = ANALYSES.get("spaces")
    monkeypatch.setattr(cls, "metric_docs", cls.metric_docs[1:])
    assert render_markdown() != DOC.read_text(encoding="utf-8")
    monkeypatch.setattr(cls, "metric_docs", ())
    assert analyses_without_docs() == ["spaces"]
