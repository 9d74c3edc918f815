"""The package's shape: no import cycles between fsl's modules (counting imports inside functions),
no module over 400 lines, the geometry and inversion math free of Lightning, one Registry class."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "fsl"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fsl modules ``name`` imports anywhere in its body (module level or inside functions; not
    under ``if TYPE_CHECKING``): ``from a.b import c`` counts as ``a.b.c`` when that is a module, else
    ``a.b``."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for n in ast.walk(node)}
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("fsl"):
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (break them by moving the shared code down a layer): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_400_lines(name):
    n = len(_modules()[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{name} has {n} lines (limit {MAX_LINES}): split it along what it holds"


@pytest.mark.parametrize("package", ["fsl.geometry", "fsl.inversion", "fsl.spaces", "fsl.checks", "fsl.registry"])
def test_math_packages_do_not_import_lightning(package):
    """The math is plain functions on tensors: no Lightning (nor fsl code that needs it)."""
    graph = import_graph()
    seen, todo = set(), [m for m in graph if m == package or m.startswith(package + ".")]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph[m])
    for m in seen:
        src = _modules()[m].read_text()
        assert "lightning" not in src.replace("Lightning-free", ""), f"{package} reaches {m}, which imports Lightning"


def test_one_registry_class():
    """Every registry is a fsl.registry.Registry (one lookup, one error type, close-name suggestions)."""
    from fsl.adversarial import ATTACKS, DETECTORS
    from fsl.analysis import ANALYSES
    from fsl.featmap.manipulations import MANIPULATIONS
    from fsl.models import MODELS
    from fsl.registry import Registry

    for r in (ATTACKS, DETECTORS, ANALYSES, MODELS, MANIPULATIONS):
        assert isinstance(r, Registry), r
        assert len(r.names()) > 0


# -- layers (docs/architecture.md) ------------------------------------------------------------------

#: importable by every package
FOUNDATION = {"fsl.errors", "fsl.registry", "fsl.checks", "fsl.configfiles", "fsl.plugins"}
MATH = {"fsl.geometry", "fsl.inversion", "fsl.spaces", "fsl.adversarial", "fsl.featinv", "fsl.featmap"}
_BELOW_ENTRY = {"fsl.analysis", "fsl.training", "fsl.config", "fsl.validate", "fsl.plots", *MATH, "fsl.models",
                "fsl.data", "fsl.tracking"}

#: package -> the fsl packages it may import besides FOUNDATION (the "may import" column of
#: docs/architecture.md); a package is fsl/<name>/ or fsl/<name>.py, sub-packages included
ALLOWED: dict[str, set[str]] = {
    "fsl": {"fsl.models", "fsl.analysis"},  # fsl.wrap and fsl.analyze, imported on first use
    **{f: set() for f in FOUNDATION},
    "fsl.data": set(),
    "fsl.tracking": set(),
    "fsl.models": {"fsl.data"},
    # the math: plain functions on tensors
    "fsl.geometry": {"fsl.data", "fsl.models"},
    "fsl.inversion": {"fsl.data", "fsl.models", "fsl.geometry"},
    "fsl.spaces": {"fsl.data", "fsl.models", "fsl.geometry", "fsl.inversion"},
    "fsl.adversarial": {"fsl.data", "fsl.models", "fsl.geometry"},
    "fsl.featinv": {"fsl.data", "fsl.models", "fsl.geometry", "fsl.inversion"},
    "fsl.featmap": {"fsl.data", "fsl.models", "fsl.geometry", "fsl.inversion", "fsl.featinv"},
    "fsl.plots": {"fsl.data", "fsl.models", *MATH},
    "fsl.config": {"fsl.tracking"},
    "fsl.validate": {"fsl.data", "fsl.tracking", "fsl.models"},
    "fsl.training": {"fsl.data", "fsl.tracking", "fsl.models", *MATH, "fsl.config", "fsl.validate"},
    "fsl.analysis": {"fsl.data", "fsl.tracking", "fsl.models", *MATH, "fsl.plots", "fsl.config", "fsl.validate",
                     "fsl.training"},
    # entry points: everything below them, not each other
    "fsl.cli": _BELOW_ENTRY,
    "fsl.publish": _BELOW_ENTRY,
    "callbacks": _BELOW_ENTRY,
}

#: imports that break the rules above, each to be moved down a layer (docs/architecture.md, "Known
#: exceptions"); a fixed one must be removed from this list:
#: - FeatInv's Lightning module borrows training's checkpoint reader and its private ``_plain``;
#: - fsl.config (with_default_analyses) and fsl.validate (the analysis options) read the analysis registry.
KNOWN_VIOLATIONS = {
    ("fsl.featinv.module", "fsl.training.module"),
    ("fsl.featinv.module", "fsl.training.checkpoint"),
    ("fsl.config", "fsl.analysis.base"),
    ("fsl.validate", "fsl.analysis.base"),
}


def _package(module: str) -> str:
    """``fsl.a.b.c`` -> ``fsl.a`` (a top-level package or module of fsl); ``callbacks.x`` -> ``callbacks``."""
    parts = module.split(".")
    return parts[0] if parts[0] != "fsl" or len(parts) == 1 else ".".join(parts[:2])


def _callbacks_graph() -> dict[str, set[str]]:
    """The fsl modules each module of callbacks/ imports."""
    modules = _modules()
    return {_module_name(p): _imports(_module_name(p), p, modules) for p in sorted((ROOT / "callbacks").glob("*.py"))}


def _layer_edges() -> dict[tuple[str, str], str]:
    """``{(module, imported module): reason}`` for every import between packages that ALLOWED does not permit."""
    bad = {}
    for m, deps in {**import_graph(), **_callbacks_graph()}.items():
        src = _package(m)
        for d in deps:
            dst = _package(d)
            if dst == src or dst in FOUNDATION:
                continue
            if src not in ALLOWED:
                bad[(m, d)] = f"{src} has no row in ALLOWED (and docs/architecture.md)"
            elif dst not in ALLOWED[src]:
                bad[(m, d)] = f"{src} may not import {dst}"
    return bad


def test_layers():
    """Every import between fsl packages (also inside functions) goes down the layers of
    docs/architecture.md, except the known violations listed above."""
    bad = _layer_edges()
    new = {e: why for e, why in bad.items() if e not in KNOWN_VIOLATIONS}
    assert not new, "imports against the layers of docs/architecture.md (move the shared code down a layer): " + \
        "; ".join(f"{m} -> {d} ({why})" for (m, d), why in sorted(new.items()))
    fixed = KNOWN_VIOLATIONS - set(bad)
    assert not fixed, f"no longer violations, remove them from KNOWN_VIOLATIONS and docs/architecture.md: {sorted(fixed)}"


def test_layer_checker_catches_an_upward_import():
    assert _package("fsl.geometry.hull") == "fsl.geometry" and _package("fsl.errors") == "fsl.errors"
    assert _package("callbacks.analysis") == "callbacks" and _package("fsl") == "fsl"
    assert "fsl.analysis" not in ALLOWED["fsl.geometry"] and "fsl.geometry" in ALLOWED["fsl.analysis"]


def _packages() -> set[str]:
    """Every package of fsl (folders with an __init__.py, sub-packages included), every top-level
    module, and callbacks."""
    pkgs = {_module_name(p.parent / "__init__.py") for p in PKG.rglob("__init__.py")}
    return pkgs | {_module_name(p) for p in PKG.glob("*.py")} | {"callbacks"}


def _doc_allowed() -> dict[str, set[str]]:
    """The "may import" column of docs/architecture.md's package table, as ALLOWED spells it."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Packages", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        m = re.fullmatch(r"`([\w.]+)`", cells[0]) if len(cells) >= 3 else None
        if not m or m.group(1) not in ALLOWED:
            continue
        names = set()
        for n in re.findall(r"`([\w.]+)`", cells[-1]):
            names |= MATH if n == "math" else {n if n == "callbacks" or n.startswith("fsl") else f"fsl.{n}"}
        out[m.group(1)] = names
    return out


def test_architecture_doc_names_every_package():
    """A new package (or top-level module) needs a row in docs/architecture.md and in ALLOWED."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = sorted(p for p in _packages() if f"`{p}`" not in text)
    assert not missing, f"docs/architecture.md does not describe {missing}: add a row to its package table"
    tops = {_package(p) for p in _packages()}
    assert tops <= set(ALLOWED), f"no import rule for {sorted(tops - set(ALLOWED))}: add it to ALLOWED"


def test_architecture_doc_mirrors_allowed():
    doc = _doc_allowed()
    assert set(doc) == set(ALLOWED), f"package rows of docs/architecture.md vs ALLOWED: {sorted(set(doc) ^ set(ALLOWED))}"
    diff = {p: (sorted(doc[p] - ALLOWED[p]), sorted(ALLOWED[p] - doc[p])) for p in ALLOWED if doc[p] != ALLOWED[p]}
    assert not diff, f"'may import' of docs/architecture.md differs from ALLOWED (doc only, ALLOWED only): {diff}"
