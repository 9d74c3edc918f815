"""One command per study: train, analyze, run the sub-studies and write ``docs/results/<name>/`` whole.

``python study.py name=<name>`` (``make study NAME=<name>``) reads ``configs/study/<name>.yaml``:

* ``train``: overrides of ``train.py`` for the classifier (skipped with ``ckpt_path=<.ckpt>``);
* ``analyze``: overrides of ``analyze.py`` for the main study (test split) -> ``<output_dir>/``;
* ``inversion``, ``featinv``, ``featmap``, ``margin_training``: sub-studies, each written to
  ``<output_dir>/<sub-study>/`` by ``analyze.py`` (FeatInv first trains its ``decoders`` with
  ``train.py``; FeatMap decodes with them; margin training trains a margin-aware classifier with
  ``train``, optionally fine-tuned from the classifier, and analyzes it with ``analyze``; with
  ``baseline: true`` the classifier too, into ``margin_training_baseline/``, when the main study's
  settings differ);
* ``template``: the README template, rendered from the metrics the stages wrote
  (:mod:`fsl.publish.render`).

Every folder is written through :class:`fsl.analysis.results.ResultsDir` (manifest, never a file
fsl did not write). The study's ``manifest.json`` adds the provenance: git commit and dirty flag,
the study config and every stage's composed config, seeds, package versions, hardware, wall time
per stage and the SHA-256 of every checkpoint. ``only=[stage, ...]`` re-runs some stages and keeps
the others' results and times (their checkpoints are checked against the recorded digests).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fsl.analysis.results import ResultsDir, check_results_folder
from fsl.config import CONFIG_DIR, compose_config, to_plain
from fsl.errors import FslError
from fsl.tracking.provenance import provenance, sha256

log = logging.getLogger(__name__)

STAGES = ("train", "analyze", "inversion", "featinv", "featmap", "margin_training", "readme")
SUBSTUDIES = ("inversion", "featinv", "featmap", "margin_training")


class StudyError(FslError, ValueError):
    """A study config or invocation that cannot run (the message names the fix)."""


@dataclass
class StudyResult:
    output_dir: Path
    seconds: dict
    checkpoints: dict


def study_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / "study").glob("*.yaml"))


def load_study_config(name: str, config_dir: Path = CONFIG_DIR):
    """``configs/study/<name>.yaml`` (a clear error naming the valid studies when unknown)."""
    path = Path(config_dir) / "study" / f"{name}.yaml"
    if not path.is_file():
        from fsl.registry import closest

        names = study_names(config_dir)
        raise StudyError(f"unknown study {name!r}{closest(name, names)}; valid names: {', '.join(names)} "
                         f"(configs/study/<name>.yaml)")
    cfg = OmegaConf.load(path)
    unknown = set(cfg) - {"title", "output_dir", "template", "train", *SUBSTUDIES, "analyze"}
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)}; valid: title, output_dir, template, train, "
                         f"analyze, {', '.join(SUBSTUDIES)}")
    return cfg


def _command(script: str, overrides) -> str:
    return "python " + " ".join([script, *(_quote(o) for o in overrides)])


def _quote(o: str) -> str:
    return f"'{o}'" if any(c in o for c in "[]*?$ ") else o


class _Stage:
    """Prints a progress line per stage and keeps its wall time."""

    def __init__(self, name: str, stages: list[str], seconds: dict, on_done=None):
        self.name, self.stages, self.seconds, self.on_done = name, stages, seconds, on_done

    def __call__(self, stage: str):
        study, stages, seconds, on_done = self.name, self.stages, self.seconds, self.on_done

        class _Ctx:
            def __enter__(self_):
                self_.t0 = time.time()
                print(f"[study {study}] stage {stages.index(stage) + 1}/{len(stages)}: {stage} ...", flush=True)

            def __exit__(self_, exc_type, *_):
                dt = time.time() - self_.t0
                if exc_type is None:
                    seconds[stage] = dt
                    print(f"[study {study}] stage {stage} done in {dt:.0f} s", flush=True)
                    if on_done is not None and stage != "readme":
                        on_done()
                else:
                    print(f"[study {study}] stage {stage} failed after {dt:.0f} s", flush=True)

        return _Ctx()


def run_study(name: str, ckpt_path: str | None = None, only=None, output_dir: str | None = None,
              extra_train=(), extra_analyze=(), config_dir: Path = CONFIG_DIR) -> StudyResult:
    """Run the study ``name`` and write its folder; see the module docstring.

    Args:
        ckpt_path: reuse this classifier checkpoint (skips the ``train`` stage).
        only: stages to run (subset of ``STAGES``); the README is always re-rendered.
        output_dir: override the config's ``output_dir`` (tests).
        extra_train, extra_analyze: overrides appended to every train / analyze stage (tests: tiny sizes).
    """
    from fsl.analysis.run import analyze
    from fsl.training import train

    cfg = load_study_config(name, config_dir)
    out = Path(output_dir or cfg.output_dir)
    previous = check_results_folder(out) or {}  # refuses a folder fsl did not write
    only = list(only) if only else None
    if only:
        bad = [s for s in only if s not in STAGES]
        if bad:
            raise StudyError(f"only: unknown stages {bad}; valid: {', '.join(STAGES)}")
    wanted = [s for s in STAGES if (s == "readme" or (only is None or s in only))
              and (s in ("train", "analyze", "readme") or cfg.get(s) is not None)]
    if ckpt_path:
        wanted = [s for s in wanted if s != "train"]
    seconds = dict(previous.get("seconds", {}))
    ckpts = dict(previous.get("checkpoints", {}))
    commands = dict(previous.get("commands", {}))
    configs = dict(previous.get("configs", {}))
    train_metrics = dict(previous.get("train_metrics", {}))
    computes = [s for s in wanted if s != "readme"]
    # the code that computed the results: taken before the stages; a README-only run keeps the previous
    origin = provenance() if computes or not previous else {k: previous[k] for k in ("git", "versions", "hardware")}

    def meta() -> dict:
        return {"study": name, "study_config": to_plain(cfg), "seconds": seconds, "checkpoints": ckpts,
                "commands": commands, "configs": configs, "train_metrics": train_metrics, **origin}

    def save_meta() -> None:
        """The study's record in its manifest after every stage: a run stopped later can go on with
        ``only=[...]`` from the stages it finished."""
        ResultsDir(out, staged=False, meta=meta()).commit()

    stage = _Stage(name, wanted, seconds, on_done=save_meta)
    extra_train, extra_analyze = list(extra_train), list(extra_analyze)

    def run_train(key: str, overrides: list[str]) -> str:
        tcfg = compose_config("train", [*overrides, *extra_train])
        result = train(tcfg)
        if not result.best_checkpoint:
            raise StudyError(f"stage {key}: training wrote no best checkpoint (is callbacks.model_checkpoint on?)")
        ckpts[key] = {"path": str(result.best_checkpoint), "sha256": sha256(result.best_checkpoint)}
        train_metrics[key] = dict(result.metrics)
        commands[key] = _command("train.py", overrides)
        configs[key] = to_plain(tcfg)
        return str(result.best_checkpoint)

    def run_analyze(key: str, ckpt: str, folder: Path, overrides: list[str]) -> dict:
        over = [*overrides, f"ckpt_path={ckpt}", f"output_dir={folder}", *extra_analyze]
        acfg = compose_config("analyze", over)
        res = analyze(acfg)
        commands[key] = _command("analyze.py", [*overrides, "ckpt_path=<" + _ckpt_name(ckpt, ckpts) + ">",
                                                f"output_dir={folder}"])
        configs[key] = to_plain(acfg)
        return res.metrics

    def checkpoint(key: str) -> str:
        info = ckpts.get(key)
        if not info or not Path(info["path"]).is_file():
            raise StudyError(f"checkpoint {key!r} of an earlier run is missing ({info and info['path']}); "
                             f"run its stage again (drop only=..., or add its stage)")
        if sha256(info["path"]) != info["sha256"]:
            raise StudyError(f"checkpoint {info['path']} changed since the study recorded it (SHA-256 differs); "
                             f"run its stage again")
        return info["path"]

    out.parent.mkdir(parents=True, exist_ok=True)
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise StudyError(f"ckpt_path={ckpt_path}: no such file")
        ckpts["classifier"] = {"path": str(ckpt_path), "sha256": sha256(ckpt_path)}
        commands["classifier"] = f"(given) ckpt_path={ckpt_path}"
    t_all = time.time()
    if "train" in wanted:
        with stage("train"):
            run_train("classifier", list(cfg.train))
    classifier = checkpoint("classifier")
    if "analyze" in wanted:
        with stage("analyze"):
            run_analyze("analyze", classifier, out, list(cfg.get("analyze") or []))
    if "inversion" in wanted:
        with stage("inversion"):
            run_analyze("inversion", classifier, out / "inversion", list(cfg.inversion.analyze))
    if "featinv" in wanted:
        with stage("featinv"):
            for dec, overrides in cfg.featinv.decoders.items():
                run_train(f"decoder/{dec}", [*overrides, f"featinv.classifier={classifier}"])
            paths = [checkpoint(f"decoder/{d}") for d in cfg.featinv.decoders]
            run_analyze("featinv", classifier, out / "featinv",
                        [*cfg.featinv.analyze, f"analysis.featinv.checkpoints=[{','.join(paths)}]"])
    if "featmap" in wanted:
        with stage("featmap"):
            decs = [checkpoint(f"decoder/{d}") for d in (cfg.featmap.get("decoders") or [])]
            run_analyze("featmap", classifier, out / "featmap",
                        [*cfg.featmap.analyze, f"analysis.featmap.checkpoints=[{','.join(decs)}]"])
    if "margin_training" in wanted:
        with stage("margin_training"):
            mt = cfg.margin_training
            init = [f"init_from={classifier}"] if mt.get("fine_tune") else []
            margin_ckpt = run_train("margin", [*mt.train, *init])
            run_analyze("margin_training", margin_ckpt, out / "margin_training", list(mt.analyze))
            if mt.get("baseline"):  # the classifier analyzed with the same settings, when the main study's differ
                run_analyze("margin_training_baseline", classifier, out / "margin_training_baseline",
                            list(mt.analyze))
    if computes:
        seconds["total_this_run"] = time.time() - t_all
    with stage("readme"):
        _write_readme(cfg, name, out, meta(), config_dir)
    return StudyResult(output_dir=out, seconds=seconds, checkpoints=ckpts)


def _ckpt_name(path: str, ckpts: dict) -> str:
    for key, info in ckpts.items():
        if info["path"] == str(path):
            return f"{key} checkpoint"
    return Path(path).name


def _write_readme(cfg, name: str, out: Path, meta: dict, config_dir: Path) -> None:
    from fsl.publish.render import render

    template = Path(cfg.get("template") or Path(config_dir) / "study" / f"{name}.md")
    if not template.is_absolute() and not template.is_file():
        template = Path(config_dir).parent / template
    res = ResultsDir(out, staged=False, meta=meta)  # adds README.md and the provenance to the manifest
    res.commit()  # the manifest with the provenance first: the template reads it
    text = render(template, out)
    res.write_text("README.md", text)
    res.commit()
