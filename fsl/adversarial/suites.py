"""Attack suites: which attacks, with which budgets, per data set (``configs/attacks/<suite>.yaml``).

A suite maps a result name (the W&B prefix ``adv/<name>/``) to ``{attack: <name in ATTACKS>, **params}``.
Budgets are a data set's convention: L-inf 0.1-0.3 on MNIST-like data, 8/255 on CIFAR-10.
"""
from __future__ import annotations

from typing import Mapping

from fsl.adversarial.methods.registry import ATTACKS, check_attack_params
from fsl.errors import ConfigError
from fsl.registry import closest

#: the suite of each data set (``fsl.data`` names)
SUITE_OF_DATA = {"mnist5k": "mnist", "mnist": "mnist", "fashion_mnist": "mnist", "synthetic": "mnist",
                 "cifar10": "cifar"}


def suite_for_data(data_name: str) -> str:
    """The suite name of data set ``data_name``; ValueError for an unknown one."""
    if data_name not in SUITE_OF_DATA:
        raise ValueError(f"no attack suite for data set {data_name!r}; known: {sorted(SUITE_OF_DATA)}. Pass "
                         f"adversarial.suite=<{'|'.join(sorted(set(SUITE_OF_DATA.values())))}> or an explicit "
                         f"adversarial.attacks dict")
    return SUITE_OF_DATA[data_name]


def load_suite(name: str) -> dict[str, dict]:
    """``configs/attacks/<name>.yaml`` as a plain, checked dict."""
    from omegaconf import OmegaConf

    from fsl.configfiles import CONFIG_DIR

    path = CONFIG_DIR / "attacks" / f"{name}.yaml"
    if name == "auto":
        raise ValueError("load_suite('auto'): 'auto' stands for the data set's suite; pass "
                         "suite_for_data(<data set name>)")
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ValueError(f"unknown attack suite {name!r}; known: {known} (files in {path.parent})")
    return check_suite(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def check_suite(suite: Mapping) -> dict[str, dict]:
    """A plain copy of ``suite``; ConfigError (a ValueError) naming the entry whose attack or
    parameters are unknown, and the closest valid name."""
    from fsl.configfiles import to_plain

    out = {}
    for name, spec in to_plain(suite).items():
        spec = dict(spec or {})
        attack = spec.get("attack", name)
        if attack not in ATTACKS:
            raise ConfigError(f"attack suite entry {name!r}: unknown attack {attack!r}{closest(attack, ATTACKS)}")
        check_attack_params(f"attack suite entry {name!r} ({attack})", attack, set(spec) - {"attack"})
        out[str(name)] = {**spec, "attack": attack}
    return out


def base_suite(attacks: Mapping | None, data_name: str) -> dict[str, dict]:
    """``attacks`` checked (:func:`check_suite`) or, when empty, the data set's own suite
    (:func:`suite_for_data`, :func:`load_suite`)."""
    return check_suite(attacks) if attacks else load_suite(suite_for_data(data_name))


#: the options of the adaptive attacks (the adversarial analysis' ``adaptive`` node)
ADAPTIVE_OPTIONS = {"enabled": True, "detectors": None, "like": None, "lambdas": [0.1, 1.0, 10.0],
                    "variants": ["sum", "orthogonal", "selective"], "early_stop": True}


def budget_entry(suite: Mapping[str, Mapping], like: str | None = None) -> str:
    """The suite entry whose budget the adaptive attacks take: ``like`` or else the L-inf ``pgd``
    entry with the largest ``eps`` (else the ``pgd_l2`` one); ConfigError when there is none."""
    if like is not None:
        if like not in suite:
            raise ConfigError(f"adaptive.like: {like!r} is not in the attack suite{closest(like, suite)}")
        if suite[like].get("attack") not in ("pgd", "pgd_l2"):
            raise ConfigError(f"adaptive.like: {like!r} is a {suite[like].get('attack')!r} attack; name a 'pgd' or "
                              f"'pgd_l2' entry of the suite (its eps, alpha and steps are the budget)")
        return like
    for attack in ("pgd", "pgd_l2"):
        names = [n for n, s in suite.items() if s.get("attack") == attack]
        if names:
            return max(names, key=lambda n: float(suite[n].get("eps", ATTACKS.defaults(attack)["eps"])))
    raise ConfigError(f"adaptive attacks take the budget of the suite's PGD, and the suite {sorted(suite)} has no "
                      f"'pgd' or 'pgd_l2' entry; add one or set adaptive.like / adaptive.enabled=false")


def adaptive_suite(suite: Mapping[str, Mapping], detectors, options: Mapping | None = None) -> dict[str, dict]:
    """``suite`` plus ``adaptive_<detector>: {attack: adaptive, target: <detector>, ...}`` for each of
    ``detectors`` (``options["detectors"]``, when given, picks among them) with the budget (``eps``,
    ``alpha``, ``steps``, norm) of :func:`budget_entry` and the ``lambdas`` / ``variants`` / ``early_stop`` of
    ``options`` (:data:`ADAPTIVE_OPTIONS`). ConfigError for a detector without a differentiable score
    (:func:`fsl.adversarial.detectors.registry.require_torch_score`) or an unknown option."""
    from fsl.adversarial.detectors.registry import require_torch_score

    opts = {**ADAPTIVE_OPTIONS, **dict(options or {})}
    unknown = sorted(set(opts) - set(ADAPTIVE_OPTIONS))
    if unknown:
        raise ConfigError(f"adaptive: unknown option {unknown[0]!r}{closest(unknown[0], ADAPTIVE_OPTIONS)}")
    out = {k: dict(v) for k, v in suite.items()}
    if not opts["enabled"]:
        return out
    chosen = list(detectors) if opts["detectors"] is None else [str(d) for d in opts["detectors"]]
    missing = [d for d in chosen if d not in detectors]
    if missing:
        raise ConfigError(f"adaptive.detectors: {missing[0]!r} is not a fitted detector{closest(missing[0], detectors)}")
    base = suite[budget_entry(suite, opts["like"])]
    budget = {k: base[k] for k in ("eps", "alpha", "steps") if k in base}
    norm = "Linf" if base["attack"] == "pgd" else "L2"
    for d in chosen:
        require_torch_score(d)
        out[f"adaptive_{d}"] = {"attack": "adaptive", "target": d, **budget, "norm": norm,
                                "lambdas": [float(v) for v in opts["lambdas"]], "variants": list(opts["variants"]),
                                "early_stop": bool(opts["early_stop"])}
    return out
