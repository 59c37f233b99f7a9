"""The ``trt.X.Y`` attribute chains in the project's TensorRT code, and where they resolve.

A module that imports ``tensorrt`` (``import tensorrt as trt``, ``import tensorrt``, or ``from tensorrt
import X``) anywhere is scanned for the longest attribute chains rooted at that name:
``trt.ILogger.Severity.ERROR`` → ``("ILogger", "Severity", "ERROR")``. ``hasattr(trt.X, "Y")`` and
``getattr(trt.X, "Y", default)`` add the *probe* ``X.Y`` (code that works without it);
``getattr(trt.X, "Y")`` adds the plain chain ``X.Y``.

A chain resolves in a surface when each part is a module name, a class member (nested classes and
enums included) or an enum member; beyond a function, property, value or enum member the rest is not
checked (``trt.__version__.split``, ``trt.DataType.HALF.name``).
"""

import ast
import logging
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Set, Tuple

from .signatures import Surface

logger = logging.getLogger(__name__)

DEFAULT_GLOBS = ("engines/tensorrt/*.py", "calibration/*.py")


class Chain(NamedTuple):
    """An attribute chain below the ``tensorrt`` module."""

    parts: Tuple[str, ...]
    probe: bool
    site: str  # "engines/tensorrt/builder.py:74"


def _aliases(tree: ast.AST) -> Tuple[Set[str], Dict[str, str]]:
    """Names bound to the module and names imported from it (local name → TensorRT name)."""
    modules: Set[str] = set()
    members: Dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "tensorrt":
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "tensorrt" and node.level == 0:
            for alias in node.names:
                members[alias.asname or alias.name] = alias.name
    return modules, members


def _chain_of(node: ast.AST, modules: Set[str], members: Dict[str, str]) -> Optional[Tuple[str, ...]]:
    """The parts below the module of an ``Attribute``/``Name`` expression rooted at it, or None."""
    parts: List[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    if node.id in modules:
        return tuple(reversed(parts)) or None
    if node.id in members:
        return (members[node.id], *reversed(parts))
    return None


def scan_source(source: str, label: str) -> List[Chain]:
    """The chains of one module's source (``label`` names it in the sites)."""
    tree = ast.parse(source)
    modules, members = _aliases(tree)
    if not modules and not members:
        return []
    chains: List[Chain] = []
    inner: Set[int] = set()  # attribute nodes that are part of a longer chain
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            inner.add(id(node.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr"):
            chains.extend(_probe(node, modules, members, label))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and id(node) not in inner:
            if isinstance(node, ast.Name) and node.id not in members:
                continue
            parts = _chain_of(node, modules, members)
            if parts:
                chains.append(Chain(parts, False, f"{label}:{node.lineno}"))
    return chains


def _probe(call: ast.Call, modules: Set[str], members: Dict[str, str], label: str) -> List[Chain]:
    if len(call.args) < 2 or not isinstance(call.args[1], ast.Constant):
        return []
    name = call.args[1].value
    if not isinstance(name, str):
        return []
    target = call.args[0]
    base: Optional[Tuple[str, ...]]
    if isinstance(target, ast.Name) and target.id in modules:
        base = ()
    else:
        base = _chain_of(target, modules, members)
    if base is None:
        return []
    probe = getattr(call.func, "id", "") == "hasattr" or len(call.args) > 2
    return [Chain((*base, name), probe, f"{label}:{call.lineno}")]


def scan(root: Path, globs: Iterable[str] = DEFAULT_GLOBS) -> List[Chain]:
    """The chains of every module matching ``globs`` under ``root``."""
    chains: List[Chain] = []
    for pattern in globs:
        for path in sorted(root.glob(pattern)):
            label = path.relative_to(root).as_posix()
            chains.extend(scan_source(path.read_text(encoding="utf-8"), label))
    return chains


def resolves(parts: Tuple[str, ...], surface: Surface) -> bool:
    """Whether the chain names something in ``surface`` (see the module docstring)."""
    entry = surface.names.get(parts[0])
    if entry is None:
        return False
    for index, part in enumerate(parts[1:], start=1):
        kind = entry.get("kind")
        if kind == "class":
            entry = entry.get("members", {}).get(part)
            if entry is None:
                return False
        elif kind == "enum":
            if part in entry.get("attributes", []):
                return True
            if part not in entry.get("members", {}):
                return False
            rest = parts[index + 1 :]
            return not rest or rest[0] in entry.get("attributes", []) or rest[0].startswith("__")
        else:
            return True  # a function, property or value: its attributes are not described
    return True
