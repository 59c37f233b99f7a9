"""DESIGN §3's import rule, enforced: ``appliance → engines``, ``calibration → engines``, and ``engines``
is the bottom layer.

Every module under ``engines/`` and ``calibration/`` is parsed with :mod:`ast` (not imported), so an
import counts wherever it is written: at the top, inside a function, under ``if TYPE_CHECKING:``, in
a ``try``; relative imports are resolved against the module's package, and ``importlib.import_module``
or ``__import__`` with a literal name count too. A failure names each file and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

from tests.conftest import REPO_ROOT

#: Package → the top-level packages it must never import.
FORBIDDEN: Dict[str, Sequence[str]] = {
    "engines": ("appliance", "calibration"),
    "calibration": ("appliance",),
}


@dataclass(frozen=True)
class Imported:
    """One module named by an import statement: where, and its absolute dotted name."""

    path: Path
    line: int
    module: str

    def describe(self, root: Path) -> str:
        return f"{self.path.relative_to(root).as_posix()}:{self.line}: imports {self.module}"


def _package_of(path: Path, root: Path) -> List[str]:
    """The dotted package a module file belongs to (a package's ``__init__`` is its own package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1]


def _resolve(module: Optional[str], level: int, package: List[str]) -> str:
    """The absolute name of ``from <level dots><module> import …`` in ``package``.

    A relative import that climbs above the top-level package keeps what is left (``from ..appliance
    import x`` in ``calibration`` resolves to ``appliance``), so it is still caught.
    """
    if level == 0:
        return module or ""
    base = package[: max(0, len(package) - (level - 1))]
    return ".".join([*base, *([module] if module else [])])


def _dynamic_name(node: ast.Call) -> Optional[str]:
    """The literal module name of ``importlib.import_module("…")`` or ``__import__("…")``."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imports_of(path: Path, root: Path) -> Iterator[Imported]:
    """Every module ``path`` imports, wherever the statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path, root)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Imported(path, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            if base:
                yield Imported(path, node.lineno, base)
            for alias in node.names:  # ``from . import appliance`` names a module
                if alias.name != "*":
                    yield Imported(path, node.lineno, f"{base}.{alias.name}" if base else alias.name)
        elif isinstance(node, ast.Call):
            name = _dynamic_name(node)
            if name:
                yield Imported(path, node.lineno, name)


def violations(root: Path, package: str, forbidden: Sequence[str]) -> List[Imported]:
    """The imports of ``forbidden`` top-level packages by any module under ``root/package``, one per
    statement (the module it names, not each name it takes from it)."""
    found: List[Imported] = []
    seen = set()
    for path in sorted((root / package).rglob("*.py")):
        for item in imports_of(path, root):
            if item.module.split(".")[0] in forbidden and (path, item.line) not in seen:
                seen.add((path, item.line))
                found.append(item)
    return found


def _report(found: Sequence[Imported], rule: str) -> str:
    lines = "\n".join(item.describe(REPO_ROOT) for item in found)
    return f"DESIGN §3 ({rule}) is broken by:\n{lines}"


def test_engines_and_calibration_never_import_the_appliance() -> None:
    found = [
        item
        for package in ("engines", "calibration")
        for item in violations(REPO_ROOT, package, ["appliance"])
    ]
    assert not found, _report(found, "engines and calibration never import appliance")


def test_engines_never_imports_calibration() -> None:
    found = violations(REPO_ROOT, "engines", ["calibration"])
    assert not found, _report(found, "engines is the bottom layer: it never imports calibration")


def test_every_module_of_both_packages_is_checked() -> None:
    for package in FORBIDDEN:
        modules = sorted((REPO_ROOT / package).rglob("*.py"))
        assert (REPO_ROOT / package / "__init__.py") in modules
        for path in modules:  # each parses, so none is skipped silently
            list(imports_of(path, REPO_ROOT))
    nested = {p.parent.name for p in (REPO_ROOT / "engines").rglob("*.py")}
    assert {"backends", "tensorrt"} <= nested  # sub-packages are walked too


def test_the_check_sees_imports_wherever_they_are_written(tmp_path: Path) -> None:
    package = tmp_path / "calibration" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "calibration" / "__init__.py").write_text('"""Mentions appliance: not an import."""\n')
    (package / "__init__.py").write_text("")
    (package / "module.py").write_text(
        "from __future__ import annotations\n"  # 1
        "import importlib\n"  # 2
        "from typing import TYPE_CHECKING\n"  # 3
        "import numpy as np\n"  # 4
        "from engines.registry import get_model\n"  # 5
        "from .. import errors\n"  # 6
        "if TYPE_CHECKING:\n"  # 7
        "    from appliance.config import ApplianceConfig\n"  # 8
        "def late():\n"  # 9
        "    import appliance.vision.image\n"  # 10
        "    from ...appliance import camera\n"  # 11
        "    return importlib.import_module('appliance.evaluation')\n"  # 12
        "try:\n"  # 13
        "    from appliance import errors as fallback\n"  # 14
        "except ImportError:\n"  # 15
        "    pass\n"  # 16
    )
    found = violations(tmp_path, "calibration", ["appliance"])
    described = {item.describe(tmp_path) for item in found}
    module = "calibration/sub/module.py"
    assert {f"{module}:{line}" for line in (8, 10, 11, 12, 14)} == {d.split(": ")[0] for d in described}
    assert f"{module}:8: imports appliance.config" in described
    assert f"{module}:11: imports appliance" in described
    assert len(found) == 5  # one per statement
    assert f"{module}:12: imports appliance.evaluation" in described
    imported = {item.module for item in imports_of(package / "module.py", tmp_path)}
    assert {"calibration.errors", "engines.registry", "numpy"} <= imported
    assert not violations(tmp_path, "calibration", ["engines_not_here"])
