"""A study's README rendered from a template and the metrics its command wrote (no typed numbers).

The template (``configs/study/<name>.md``) is Jinja2 with these names:

* ``m``: the study's ``metrics.json`` (the analyses on the test split, flat W&B keys);
* ``sub``: ``{sub-study: metrics.json}`` of every sub-study folder (``inversion``, ``featinv``,
  ``featmap``, ``margin_training``, ...);
* ``manifest``: the study's ``manifest.json`` (commands, seconds per stage, training metrics,
  checkpoints, versions, hardware);

and the filters ``g3`` (3 significant digits), ``f3``/``f4`` (fixed decimals), ``pct`` (percent,
one decimal), ``int`` (thousands separators), ``secs`` (a wall time). A key that is not in the
metrics is an error naming it, never an empty cell.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from fsl.analysis.results import MANIFEST, read_manifest
from fsl.errors import FslError


class RenderError(FslError, RuntimeError):
    """A template that needs a number the study did not write."""


def _num(x) -> float:
    if isinstance(x, str):  # metrics.json writes inf as "inf"; anything else is not a number
        return float(x) if x in ("inf", "-inf") else float("nan")
    if x is None:
        return float("nan")
    return float(x)


def g3(x) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{v:.3g}"


def fixed(x, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def pct(x, digits: int = 1) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{100 * v:.{digits}f}%"


def integer(x) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{int(round(v)):,}"


def secs(x) -> str:
    v = _num(x)
    if math.isnan(v):
        return "n/a"
    return f"{v:.0f} s" if v < 120 else f"{v:.0f} s ({v / 60:.1f} min)"


def attacks(m: dict) -> list[str]:
    """The attacks with results in ``m`` (``adv/<attack>/success_rate``), sorted."""
    return sorted({k.split("/")[1] for k in m if k.startswith("adv/") and k.endswith("/success_rate")})


def detectors(m: dict) -> list[str]:
    """The detectors scored in ``m`` (``adv/<attack>/auroc/<detector>``), sorted."""
    return sorted({k.split("/")[-1] for k in m if k.startswith("adv/") and "/auroc/" in k})


def ranked_detectors(m: dict, attack: str) -> list[tuple[str, float]]:
    """``[(detector, AUROC)]`` against ``attack``, best first (ties by name)."""
    xs = [(d, _num(m[f"adv/{attack}/auroc/{d}"])) for d in detectors(m) if f"adv/{attack}/auroc/{d}" in m]
    return sorted(xs, key=lambda t: (-t[1] if not math.isnan(t[1]) else math.inf, t[0]))


def adaptive_attacks(m: dict) -> list[str]:
    """The adaptive attacks with results in ``m`` (``adaptive_<detector>``), sorted."""
    return [a for a in attacks(m) if a.startswith("adaptive_")]


def plain_attacks(m: dict) -> list[str]:
    """The attacks of ``m`` that are not ``adaptive_<detector>``, sorted."""
    return [a for a in attacks(m) if not a.startswith("adaptive_")]


def fit_attack(manifest: dict, stage: str = "analyze") -> str:
    """The suite entry the supervised detectors were fitted on, from the stage's composed config
    (:func:`fsl.analysis.studies.adversarial.supervised_fit_attack`)."""
    from fsl.adversarial.suites import base_suite
    from fsl.analysis.studies.adversarial import supervised_fit_attack

    cfg = manifest["configs"][stage]
    adv = cfg["analysis"]["adversarial"]
    data = cfg.get("data", {}).get("name") or manifest["configs"]["classifier"]["data"]["name"]
    return supervised_fit_attack(base_suite(adv.get("attacks") or cfg.get("attacks"), data), adv)


def adaptive_rows(m: dict, budget: str) -> list[dict]:
    """One row per detector with an adaptive attack in ``m``, the most robust first (highest AUROC
    under its own adaptive attack): AUROC and 95% interval under ``adaptive_<d>`` and under the plain
    ``budget`` PGD, the non-adaptive attack with the lowest AUROC, robust accuracy at 5% FPR under
    both, the clean accuracy lost to the 5% rejections, and the adaptive attack's seconds."""
    rows = []
    for a in adaptive_attacks(m):
        d = a[len("adaptive_"):]
        if f"adv/{a}/auroc/{d}" not in m:
            continue
        plain = [(p, _num(m[f"adv/{p}/auroc/{d}"])) for p in plain_attacks(m) if f"adv/{p}/auroc/{d}" in m]
        worst = min(plain, key=lambda t: (math.inf if math.isnan(t[1]) else t[1], t[0])) if plain else ("n/a", math.nan)
        rows.append({
            "detector": d, "auroc": _num(m[f"adv/{a}/auroc/{d}"]), "lo": _num(m[f"adv/{a}/auroc_lo/{d}"]),
            "hi": _num(m[f"adv/{a}/auroc_hi/{d}"]), "plain": _num(m[f"adv/{budget}/auroc/{d}"]),
            "worst_attack": worst[0], "worst": worst[1],
            "robust": _num(m[f"adv/{a}/robust_acc_at_5fpr/{d}"]),
            "robust_plain": _num(m[f"adv/{budget}/robust_acc_at_5fpr/{d}"]),
            "lost": _num(m[f"adv/{a}/clean_acc_lost_at_5fpr/{d}"]), "seconds": _num(m[f"adv/{a}/seconds"]),
        })
    return sorted(rows, key=lambda r: (-(r["auroc"] if not math.isnan(r["auroc"]) else -math.inf), r["detector"]))


def caught_by_others(m: dict) -> list[dict]:
    """For each ``adaptive_<d>`` of ``m``: the best AUROC among the *other* detectors (the attack
    knows only ``d``), weakest first: ``{"attack", "target", "detector", "auroc"}``."""
    out = []
    for a in adaptive_attacks(m):
        d = a[len("adaptive_"):]
        others = [(k, v) for k, v in ranked_detectors(m, a) if k != d and not math.isnan(v)]
        if others:
            out.append({"attack": a, "target": d, "detector": others[0][0], "auroc": others[0][1]})
    return sorted(out, key=lambda r: (r["auroc"], r["attack"]))


def interval(m: dict, attack: str, detector: str, key: str = "auroc") -> str:
    """``"0.912 [0.890, 0.933]"``: ``adv/<attack>/<key>/<detector>`` with its 95% bootstrap interval."""
    v = m.get(f"adv/{attack}/{key}/{detector}")
    if v is None:
        return "n/a"
    lo, hi = m.get(f"adv/{attack}/{key}_lo/{detector}"), m.get(f"adv/{attack}/{key}_hi/{detector}")
    if lo is None or hi is None:
        return fixed(v, 3)
    return f"{fixed(v, 3)} [{fixed(lo, 3)}, {fixed(hi, 3)}]"


def command(manifest: dict, key: str) -> str:
    """The command of stage ``key`` with every recorded checkpoint path shown as ``<name checkpoint>``
    (the paths are machine-specific; manifest.json keeps them and their SHA-256)."""
    text = manifest["commands"][key]
    for name, info in sorted(manifest.get("checkpoints", {}).items(), key=lambda kv: -len(kv[1]["path"])):
        text = text.replace(info["path"], f"<{name} checkpoint>")
    return text


def keys(m: dict, prefix: str, depth: int = 1) -> list[str]:
    """The distinct path components at ``depth`` below ``prefix`` in the keys of ``m``, sorted."""
    n = len(prefix.rstrip("/").split("/"))
    return sorted({k.split("/")[n + depth - 1] for k in m if k.startswith(prefix.rstrip("/") + "/")
                   and len(k.split("/")) > n + depth - 1})


def median_over(m: dict, pattern: str, values) -> float:
    """Median of ``m[pattern.format(v)]`` over ``values`` (the keys that exist; NaN when none)."""
    xs = sorted(_num(m[pattern.format(v)]) for v in values if pattern.format(v) in m)
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan")
    h = len(xs) // 2
    return xs[h] if len(xs) % 2 else 0.5 * (xs[h - 1] + xs[h])


def load_results(folder: str | Path) -> dict:
    """``{"m", "sub", "manifest"}`` of a study folder, read from its committed files."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise RenderError(f"{folder} has no {MANIFEST}: run the study command first")
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
    sub = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir() and (p / MANIFEST).is_file()):
        f = d / "metrics.json"
        sub[d.name] = json.loads(f.read_text()) if f.is_file() else {}
    return {"m": metrics, "sub": sub, "manifest": manifest}


def render(template: str | Path, folder: str | Path) -> str:
    """The README text of the study in ``folder`` from ``template``."""
    import jinja2

    template = Path(template)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(template.parent)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.globals.update(attacks=attacks, detectors=detectors, keys=keys, median_over=median_over,
                       ranked_detectors=ranked_detectors, command=command, adaptive_attacks=adaptive_attacks,
                       plain_attacks=plain_attacks, fit_attack=fit_attack, adaptive_rows=adaptive_rows,
                       interval=interval, caught_by_others=caught_by_others)
    env.filters.update(g3=g3, f3=lambda x: fixed(x, 3), f4=lambda x: fixed(x, 4), f2=lambda x: fixed(x, 2),
                       pct=pct, int=integer, secs=secs)
    try:
        return env.from_string(template.read_text()).render(**load_results(folder))
    except jinja2.UndefinedError as e:
        raise RenderError(f"{template}: {e} — the template asks for a number that {folder} does not hold; "
                          f"re-run the study or fix the key in the template") from e
    except jinja2.TemplateError as e:
        raise RenderError(f"{template}: {type(e).__name__}: {e} (line {getattr(e, 'lineno', '?')}); fix the template "
                          f"and re-render with `make study NAME=<name> ARGS=only=[readme]`") from e
