"""The direction of dependency (docs/design.md, "Architecture"), read from the source.

``bandit`` is the pure core; ``serving`` and ``experiments`` are siblings over it and
``serving`` imports nothing from ``experiments`` or ``simulator`` (only the command line,
``adbandit/``, wires them together). Every import statement counts, including those inside
functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "serving": {"experiments", "simulator", "adbandit", "ray", "mlflow", "matplotlib", "pyarrow", "tqdm"},
    "bandit": {"serving", "experiments", "simulator", "adbandit", "ray", "mlflow", "fastapi", "matplotlib"},
    "simulator": {"serving", "experiments", "adbandit", "mlflow", "fastapi"},
    "experiments": {"serving", "adbandit", "fastapi"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in ``path``; relative imports are skipped."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def violations(package: str) -> list[str]:
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module in FORBIDDEN[package]
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package):
    assert violations(package) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from experiments.model_registry import x\n    import simulator.demo\n")
    assert imported_modules(source) == [(2, "experiments"), (3, "simulator")]


# ------------------------------------------------------------- declared dependencies
#: Distribution name -> import name, where they differ.
IMPORT_NAME = {"prometheus-client": "prometheus_client", "pydantic-settings": "pydantic_settings",
               "fastapi-offline": "fastapi_offline", "typing-extensions": "typing_extensions"}  # fmt: skip
#: Which requirement groups each package may use (core = the unconditional dependencies).
LAYER_GROUPS = {
    "bandit": ("core",),
    "simulator": ("core", "offline"),
    "experiments": ("core", "offline"),
    "serving": ("core", "serve"),
}


def declared() -> dict[str, set[str]]:
    """Import names of the requirements of pyproject.toml, by group (core, serve, offline)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}

    def name(requirement: str) -> str:
        dist = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].strip().lower()
        return IMPORT_NAME.get(dist, dist.replace("-", "_"))

    return {group: {name(r) for r in reqs} for group, reqs in groups.items()}


def third_party(package: str) -> set[str]:
    """Top-level modules ``package`` imports (or loads package data of) outside the stdlib and the project."""
    ours = {"bandit", "simulator", "experiments", "serving", "adbandit"}
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        found |= {m for _, m in imported_modules(path)}
        found |= set(re.findall(r"""files\(["'](\w+)["']\)""", path.read_text()))
    return {m for m in found if m not in sys.stdlib_module_names and m not in ours}


def test_packages_import_only_declared_dependencies_of_their_layer():
    groups = declared()
    for package, allowed in LAYER_GROUPS.items():
        undeclared = third_party(package) - set().union(*(groups[g] for g in allowed))
        assert sorted(undeclared) == [], package


def test_every_declared_dependency_is_used():
    groups = declared()
    used = set().union(*(third_party(p) for p in LAYER_GROUPS))
    for group in ("core", "serve", "offline"):
        assert sorted(groups[group] - used) == [], group
    assert "adbandit" in " ".join(groups["dev"])  # dev = serve + offline + the tools
