"""The layout of fsl.geometry (and its sibling packages models, featmap, featinv): the public exports,
where the shared input checks come from, no import cycles between a package's modules, and modules
short enough to read."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fsl.geometry

ROOT = Path(fsl.geometry.__file__).resolve().parent.parent

EXPORTS = [
    "FlipResult", "flip_margins", "FlipDistances", "differentiable_flip_distances",
    "HullDistances", "differentiable_hull_distances", "FlipPoints", "differentiable_flip_points",
    "HullProjections", "differentiable_hull_projections", "HullResult", "hull_distances", "ball_counts",
    "union_coverage", "region_labels", "ambiguity", "lipschitz", "FeatureGeometry", "GeometryStudy", "geometry_study",
]


def test_geometry_exports_are_unchanged():
    assert fsl.geometry.__all__ == EXPORTS
    for name in EXPORTS:
        assert getattr(fsl.geometry, name) is not None
    from fsl.geometry.flip import flip_margins
    from fsl.geometry.summary import FeatureGeometry, GeometryStudy, geometry_study

    assert (fsl.geometry.flip_margins, fsl.geometry.geometry_study, fsl.geometry.FeatureGeometry,
            fsl.geometry.GeometryStudy) == (flip_margins, geometry_study, FeatureGeometry, GeometryStudy)


def test_geometry_checks_come_from_fsl_checks():
    import fsl.checks
    import fsl.geometry._common as common
    from fsl.geometry import balls, flip, hull

    assert not hasattr(common, "check_finite")
    assert flip.check_finite is balls.check_finite is hull.check_finite is fsl.checks.check_finite


def _internal_imports(package: str) -> dict[str, set[str]]:
    """``{module: modules of the same package it imports at module level or inside functions}``."""
    folder = ROOT / package
    mods = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    target = (node.module or "").split(".")[0]
                    deps |= {target} if target else {a.name for a in node.names}
                elif node.module and node.module.startswith(f"fsl.{package}."):
                    deps.add(node.module.split(".")[2])
                elif node.module == f"fsl.{package}":
                    deps |= {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith(f"fsl.{package}.")}
        graph[path.stem] = {d for d in deps if d in mods and d != "__init__"} - {path.stem}
    return graph


@pytest.mark.parametrize("package", ["geometry", "models", "featmap", "featinv"])
def test_no_import_cycle_inside_the_package(package):
    graph = _internal_imports(package)
    graph.pop("__init__", None)
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle in fsl.{package}: {' -> '.join([*path, m])}")
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            visit(d, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


@pytest.mark.parametrize("package", ["geometry", "models", "featmap", "featinv"])
def test_modules_are_at_most_400_lines(package):
    long = {p.name: n for p in (ROOT / package).glob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"fsl.{package}: split {long}"
