"""The rules of docs/architecture.md, read from the code's imports: the core imports no Slicer, Qt or training code,
and no method plug-in imports another (they share methods/base, common, runtime, registry and networks/)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "MedicalAnomalyDetection" / "MedicalAnomalyDetectionLib"
METHODS = CORE / "methods"
SHARED_IN_METHODS = {"__init__", "base", "common", "runtime", "registry"}
FORBIDDEN_IN_CORE = ("slicer", "qt", "ctk", "PythonQt", "training", "MedicalAnomalyDetectionSlicer")


def imported_modules(path: Path) -> set[tuple[int, str]]:
    """(level, module) of every import in ``path``: level 0 for absolute imports, the number of dots otherwise; an
    ``from . import x`` gives (1, "x")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {(0, alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.module is None:
                found |= {(node.level, alias.name) for alias in node.names}
            else:
                found.add((node.level, node.module))
    return found


def plugin_imports_of_other_plugins(methods: Path) -> dict[str, set[str]]:
    plugins = {p.stem for p in methods.glob("*.py")} - SHARED_IN_METHODS
    offending = {}
    for path in methods.glob("*.py"):
        siblings = {module.split(".")[0] for level, module in imported_modules(path) if level == 1}
        absolute = {module.split(".")[-1] for level, module in imported_modules(path)
                    if level == 0 and module.startswith("MedicalAnomalyDetectionLib.methods.")}
        others = ((siblings | absolute) & plugins) - {path.stem}
        if path.stem in plugins and others:
            offending[path.stem] = others
    return offending


def test_no_method_plugin_imports_another():
    assert plugin_imports_of_other_plugins(METHODS) == {}


def test_the_check_finds_a_plugin_that_imports_another(tmp_path):
    for name in ("base", "registry", "alpha", "beta"):
        (tmp_path / f"{name}.py").write_text("from .base import AnomalyMethod\n")
    (tmp_path / "beta.py").write_text("from .alpha import thing\nfrom .registry import register\n")
    assert plugin_imports_of_other_plugins(tmp_path) == {"beta": {"alpha"}}


def test_the_core_imports_no_slicer_qt_or_training_code():
    for path in CORE.rglob("*.py"):
        absolute = {module for level, module in imported_modules(path) if level == 0}
        bad = {module for module in absolute if module.split(".")[0] in FORBIDDEN_IN_CORE}
        assert not bad, f"{path.relative_to(CORE)} imports {sorted(bad)}"
