"""The analysis interface: one :class:`Analysis` per study, run per epoch by
``callbacks.analysis.AnalysisCallback`` and once on a checkpoint by :func:`fsl.analysis.run.analyze`.

An analysis is a small class with a ``name`` (its config file ``configs/analysis/<name>.yaml`` and
registry key), a ``prefix`` (its W&B / ``metrics.json`` namespace), the analyses it ``requires``
(run first, error if absent) or ``uses`` (run first when present), what its metric keys mean
(``metric_docs``, rendered into docs/metrics.md) and one method::

    @register_analysis("my_study")
    class MyStudy(Analysis):
        prefix = "my"
        metric_docs = (MetricDoc("margin/median", "median margin `d_min`", "feature-space L2 distance"),)
        def compute(self, ctx: Context) -> Result: ...

The options of ``configs/analysis/<name>.yaml`` are its keyword arguments (that file is the only
copy of the defaults; :func:`create_analysis` reads it). ``enabled``, ``every_n_epochs`` and
``default`` (part of ``analyze.py``'s default list) are read by the drivers. See
``docs/extending.md``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import torch

from fsl.errors import ConfigError, FslError
from fsl.registry import Registry

if TYPE_CHECKING:
    from fsl.analysis.context import Context
    from fsl.analysis.metric_docs import MetricDoc

Tensor = torch.Tensor

#: options of every analysis yaml that the drivers read (not passed to the analysis)
DRIVER_KEYS = ("enabled", "every_n_epochs", "default")


@dataclass
class Figure:
    """A matplotlib figure and the file stem it is saved under (``figures/<file>.png``)."""

    file: str
    fig: Any


@dataclass
class Table:
    """A small table for W&B (``wandb.Table``); cells may be images ``(C, H, W)`` tensors in [0, 1]."""

    columns: list[str]
    rows: list[list]


@dataclass
class Result:
    """What an analysis returns. Keys of ``metrics``, ``figures``, ``histograms`` and ``tables`` are
    relative to the analysis' prefix (``margin/median`` -> ``analysis/margin/median``).

    Attributes:
        metrics: plain floats.
        per_sample: columns of length N (the context's evaluation samples, ``per_sample.csv``);
            tensors, or lists of str.
        figures: ``{key: Figure}``; W&B key ``<prefix>/<key>``, file ``figures/<Figure.file>.png``.
        report: markdown lines of the analysis' section of ``report.md``.
        histograms: ``{key: 1-d tensor}`` logged as W&B histograms.
        tables: ``{key: Table}`` logged as W&B tables.
        data: anything dependent analyses read from ``ctx.results[name].data``.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)
    histograms: dict[str, Tensor] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    data: Any = None
    seconds: float = 0.0


class Analysis:
    """Base class. Subclasses set ``prefix``, optionally ``requires``/``uses``, and implement
    :meth:`compute`; ``options`` (a dict) holds the keyword arguments they were built with."""

    name: ClassVar[str] = ""
    prefix: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    uses: ClassVar[tuple[str, ...]] = ()
    #: report section several analyses share (its header comes from :meth:`section_intro` of the
    #: first of them); "" = the analysis writes its own headers
    section: ClassVar[str] = ""
    #: options counting samples: a positive integer or null (the whole split)
    sizes: ClassVar[tuple[str, ...]] = ("n_train", "n_eval")
    #: integer options with their smallest valid value (not null)
    minimums: ClassVar[dict[str, int]] = {"every_n_epochs": 0}
    #: every key of ``Result.metrics`` (patterns relative to ``prefix``): meaning and unit, rendered
    #: into docs/metrics.md (the wall time ``seconds_key`` is added there)
    metric_docs: ClassVar[tuple["MetricDoc", ...]] = ()

    def __init__(self, **options):
        self.options = dict(options)

    def __getattr__(self, key: str):
        options = self.__dict__.get("options", {})
        if key in options:
            return options[key]
        raise AttributeError(f"{type(self).__name__} has no option or attribute {key!r}")

    @property
    def seconds_key(self) -> str:
        """Metric key of the analysis' wall time."""
        return f"{self.prefix}/seconds"

    def compute(self, ctx: "Context") -> Result:  # pragma: no cover - interface
        raise NotImplementedError

    def section_intro(self, ctx: "Context") -> list[str]:
        """Markdown lines opening :attr:`section` in ``report.md`` (written once per section)."""
        return [f"## {self.section}", ""] if self.section else []

    @classmethod
    def config_problems(cls, key: str, options: dict, data_name: str | None) -> list[str]:
        """Problems of this analysis' ``options`` (config node ``key``) before any work, each naming the
        key and the fix; the sizes and minimums above are checked by the caller. Override to check
        more (e.g. names that refer to another registry)."""
        return []

    def run(self, ctx: "Context") -> Result:
        """:meth:`compute` timed (``Result.seconds``), the model's mode restored."""
        model = ctx.model
        was = model.training
        model.eval()
        t0 = time.perf_counter()
        try:
            result = self.compute(ctx)
        finally:
            model.train(was)
        result.seconds = time.perf_counter() - t0
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"


def analysis_defaults(name: str) -> dict:
    """The options of ``configs/analysis/<name>.yaml`` (the only copy of an analysis' defaults, read
    on every call); ``{}`` when the analysis has no config file (e.g. one registered in a notebook)."""
    from omegaconf import OmegaConf

    from fsl.configfiles import CONFIG_DIR

    path = CONFIG_DIR / "analysis" / f"{name}.yaml"
    if not path.is_file():
        return {}
    node = OmegaConf.load(path)
    d = dict(OmegaConf.to_container(node.get(name, {}), resolve=False) or {})
    # an interpolation (``attacks: ${attacks}``) is the run's value; outside a run it is unset
    return {k: None if isinstance(v, str) and v.startswith("${") else v for k, v in d.items()}


#: every analysis by name, built-ins first (fsl/analysis/studies/); defaults: its yaml file
ANALYSES = Registry("analysis", load="fsl.analysis.studies", base=Analysis, defaults=analysis_defaults,
                    where="configs/analysis/")


def register_analysis(name: str) -> Callable[[type[Analysis]], type[Analysis]]:
    """Class decorator registering ``cls`` as ``name`` (its options: ``configs/analysis/<name>.yaml``)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"register_analysis: name must be an identifier, got {name!r}")

    def deco(cls: type[Analysis]) -> type[Analysis]:
        if isinstance(cls, type) and issubclass(cls, Analysis) and not cls.prefix:
            raise ConfigError(f"register_analysis({name!r}): set the class attribute prefix (its W&B namespace)")
        ANALYSES.register(name, cls)
        cls.name = name
        return cls

    return deco


def default_analyses() -> list[str]:
    """What ``analyze.py`` runs without ``analysis=[...]``: every registered analysis whose yaml says
    ``default: true``, in registration order (built-ins first; dependencies are ordered later)."""
    return [n for n in ANALYSES.names() if analysis_defaults(n).get("default", False)]


def create_analysis(name: str, **overrides) -> Analysis:
    """An analysis with the defaults of its config file, updated by ``overrides``."""
    defaults = ANALYSES.defaults(name)
    if defaults:  # an analysis without a config file takes any option
        ANALYSES.check_params(name, overrides, extra=DRIVER_KEYS)
    opts = {k: v for k, v in {**defaults, **overrides}.items() if k not in DRIVER_KEYS}
    return ANALYSES.get(name)(**opts)


def build_analyses(spec: Mapping[str, Mapping] | None, shared: Mapping | None = None) -> list[Analysis]:
    """The enabled analyses of ``spec`` (``{name: options}``, e.g. the config's ``analysis:`` node),
    in dependency order (``requires``/``uses`` first, otherwise in ``spec``'s order).

    ``shared``: options given to every analysis that has a key of that name in its defaults left at
    null (the top-level ``pixels`` sample and solver settings of the pixel-space studies). Raises :class:`FslError` for
    an unknown name or a missing required analysis.
    """
    from fsl.configfiles import to_plain

    spec = to_plain(spec) if spec is not None else {}
    shared = to_plain(shared) if shared is not None else {}
    chosen: dict[str, Analysis] = {}
    for name, opts in spec.items():
        opts = dict(opts or {})
        if not opts.get("enabled", True):
            continue
        extra = {k: v for k, v in shared.items() if k in analysis_defaults(name) and opts.get(k) is None}
        chosen[name] = create_analysis(name, **{**opts, **extra})
    for name, a in chosen.items():
        missing = [r for r in a.requires if r not in chosen]
        if missing:
            raise ConfigError(f"analysis {name!r} needs {missing}: enable analysis.{missing[0]} or disable "
                           f"analysis.{name}")
    order: list[str] = []

    def visit(n: str, stack: tuple = ()) -> None:
        if n in order:
            return
        if n in stack:
            raise FslError(f"analyses depend on each other in a cycle: {' -> '.join((*stack, n))}")
        for dep in (*chosen[n].requires, *chosen[n].uses):
            if dep in chosen:
                visit(dep, (*stack, n))
        order.append(n)

    for n in chosen:
        visit(n)
    return [chosen[n] for n in order]


__all__ = ["Analysis", "Result", "Figure", "Table", "ANALYSES", "register_analysis", "create_analysis",
           "build_analyses", "analysis_defaults", "default_analyses", "DRIVER_KEYS"]
