"""The direction of dependency (docs/design.md, "Architecture"), read from the source.

``bandit`` is the pure core; ``serving`` and ``experiments`` are siblings over it and
``serving`` imports nothing from ``experiments`` or ``simulator`` (only the command line,
``adbandit/``, wires them together). Every import statement counts, including those inside
functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
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
