"""The rules of docs/architecture.md, read from the code's imports: the core imports no Slicer, Qt or training code,
and no method plug-in imports another (they share methods/base, common, runtime, registry and networks/)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "MedicalAnomalyDetection" / "MedicalAnomalyDetectionLib"
SHARED_IN_METHODS = {"__init__", "base", "common", "runtime", "registry"}
FORBIDDEN_IN_CORE = ("slicer", "qt", "ctk", "PythonQt", "training", "MedicalAnomalyDetectionSlicer")


def imported_modules(path: Path, package: list[str]) -> set[tuple[str, ...]]:
    """Every module ``path`` imports, as dotted parts, relative imports resolved against ``package`` (the parts of
    the package the file belongs to); ``from . import x`` gives the package's ``x``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {tuple(alias.name.split(".")) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            if node.module is None:
                found |= {(*base, alias.name) for alias in node.names}
            else:
                found.add((*base, *node.module.split(".")))
    return found


def plugin_imports_of_other_plugins(methods: Path) -> dict[str, set[str]]:
    """For each plug-in of the ``methods`` folder (a module or a package), the other plug-ins it imports."""
    packages = {p.name for p in methods.iterdir() if (p / "__init__.py").exists()}
    plugins = ({p.stem for p in methods.glob("*.py")} | packages) - SHARED_IN_METHODS
    offending: dict[str, set[str]] = {}
    for path in methods.rglob("*.py"):
        inside = list(path.relative_to(methods).with_suffix("").parts)
        owner = inside[0]
        package = ["pkg", "methods", *inside[:-1]]
        targets = {parts[2] for parts in imported_modules(path, package)
                   if len(parts) > 2 and parts[1] == "methods" and parts[0] in ("pkg", "MedicalAnomalyDetectionLib")}
        others = (targets & plugins) - {owner}
        if owner in plugins and others:
            offending.setdefault(owner, set()).update(others)
    return offending


def test_no_method_plugin_imports_another():
    assert plugin_imports_of_other_plugins(CORE / "methods") == {}


def test_the_check_finds_a_plugin_that_imports_another(tmp_path):
    for name in ("base", "registry", "alpha", "beta"):
        (tmp_path / f"{name}.py").write_text("from .base import AnomalyMethod\n")
    (tmp_path / "beta.py").write_text("from .alpha import thing\nfrom .registry import register\n")
    (tmp_path / "gamma").mkdir()
    (tmp_path / "gamma" / "__init__.py").write_text("from ..base import AnomalyMethod\nfrom .parts import x\n")
    (tmp_path / "gamma" / "parts.py").write_text("from .. import beta\n")
    assert plugin_imports_of_other_plugins(tmp_path) == {"beta": {"alpha"}, "gamma": {"beta"}}


def test_the_core_imports_no_slicer_qt_or_training_code():
    for path in CORE.rglob("*.py"):
        absolute = {parts for parts in imported_modules(path, [])}
        bad = {".".join(parts) for parts in absolute if parts and parts[0] in FORBIDDEN_IN_CORE}
        assert not bad, f"{path.relative_to(CORE)} imports {sorted(bad)}"
