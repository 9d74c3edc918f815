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
