"""Write the public surface of the installed TensorRT Python bindings as JSON.

Runs in an environment that has the real bindings (``tensorrt`` or ``tensorrt_bindings``) and, when
TensorRT itself is absent, the stand-in libraries of :mod:`.standins` on ``LD_LIBRARY_PATH``. Only the
standard library is used, and the code runs on Python 3.6 and later (the 8.6 wheels are for 3.6–3.11).

Output: ``{"version": "10.3.0", "module": "tensorrt_bindings", "names": {NAME: ENTRY}}`` where ENTRY is

* ``{"kind": "class", "bases": [...], "mro": [...], "members": {NAME: ENTRY}, "constructible": bool}``
* ``{"kind": "enum", "members": {"FP16": 0, ...}, "attributes": ["name", "value"]}``
* ``{"kind": "function" | "method" | "staticmethod", "signatures": ["(self: tensorrt.tensorrt.X, ...) -> T"]}``
* ``{"kind": "property", "readonly": bool}``
* ``{"kind": "value", "type": "int"}`` (``"type"`` is the class name: ``DataType`` for ``trt.float32``)

Type names in signatures are normalized to ``tensorrt.tensorrt.X`` whatever the package is called.

Usage: ``python -m tests.trt_conformance.dump_surface --out surface.json``.
"""

import argparse
import importlib
import inspect
import json
import logging
import re
import sys
import types

logger = logging.getLogger(__name__)

MODULE_NAMES = ("tensorrt", "tensorrt_bindings")
# Dunder methods that are part of the usable API (construction, protocols).
API_DUNDERS = (
    "__init__",
    "__len__",
    "__getitem__",
    "__setitem__",
    "__iter__",
    "__contains__",
    "__enter__",
    "__exit__",
    "__call__",
    "__int__",
    "__index__",
    "__buffer__",
)
SKIPPED_BASES = ("object", "pybind11_object")
SLOT_WRAPPERS = ("wrapper_descriptor", "method-wrapper")
MAX_DEPTH = 3


def import_bindings():
    """Import the bindings, whichever name they are installed under."""
    errors = []
    for name in MODULE_NAMES:
        try:
            return importlib.import_module(name)
        except ImportError as error:
            errors.append(f"{name}: {error}")
    raise ImportError("; ".join(errors))


def normalize(text, package):
    """Write the bindings' type names as ``tensorrt.tensorrt.X``."""
    if package != "tensorrt":
        text = re.sub(r"\b" + re.escape(package) + r"\.", "tensorrt.", text)
    return re.sub(r" at 0x[0-9a-fA-F]+>", ">", text)


def signatures(function, name, package):
    """The overload signatures of a pybind11 function (from its docstring) or a Python function."""
    doc = getattr(function, "__doc__", None) or ""
    lines = [line.strip() for line in doc.splitlines()]
    found = []
    overloaded = re.compile(r"^\d+\.\s+" + re.escape(name) + r"(\(.*)$")
    single = re.compile(r"^" + re.escape(name) + r"(\(.*)$")
    if "Overloaded function." in lines:
        found = [m.group(1) for m in (overloaded.match(line) for line in lines) if m]
    elif lines and single.match(lines[0]):
        found = [single.match(lines[0]).group(1)]
    if not found and isinstance(function, types.FunctionType):
        try:
            found = [str(inspect.signature(function))]
        except (TypeError, ValueError):
            found = []
    return [normalize(text, package) for text in found]


def is_enum(cls):
    """pybind11 enums have ``__members__`` (a dict of name to member)."""
    return isinstance(cls, type) and isinstance(getattr(cls, "__members__", None), dict)


def enum_entry(cls):
    members = {}
    for name, member in cls.__members__.items():
        try:
            members[name] = int(member)
        except (TypeError, ValueError):
            members[name] = None
    attributes = sorted(
        name for name in dir(cls) if not name.startswith("_") and name not in members and name != "mro"
    )
    return {"kind": "enum", "members": members, "attributes": attributes}


def owner_attribute(cls, name):
    """The raw attribute and the class that defines it, skipping ``object`` and pybind11's base."""
    for klass in cls.__mro__:
        if klass.__name__ in SKIPPED_BASES:
            continue
        if name in vars(klass):
            return vars(klass)[name], klass
    return None, None


def member_entry(raw, cls, name, package, depth):
    """Describe one class attribute."""
    if isinstance(raw, staticmethod):
        return {"kind": "staticmethod", "signatures": signatures(raw.__func__, name, package)}
    if isinstance(raw, classmethod):
        return {"kind": "staticmethod", "signatures": signatures(raw.__func__, name, package)}
    if isinstance(raw, property):
        return {"kind": "property", "readonly": raw.fset is None}
    if isinstance(raw, type):
        if is_enum(raw):
            return enum_entry(raw)
        if depth < MAX_DEPTH:
            return class_entry(raw, package, depth + 1)
        return {"kind": "class", "members": {}, "bases": [], "mro": []}
    if callable(raw) or type(raw).__name__ in ("instancemethod", "method_descriptor"):
        function = getattr(cls, name, raw)
        return {"kind": "method", "signatures": signatures(function, name, package)}
    # pybind11 static properties (def_property_readonly_static) are data descriptors of their own type.
    if hasattr(type(raw), "__get__") and hasattr(type(raw), "__set__"):
        return {"kind": "property", "readonly": getattr(raw, "fset", None) is None}
    return {"kind": "value", "type": type(raw).__name__}


def class_entry(cls, package, depth=0):
    """Describe a (non-enum) class: its public members, inherited ones included."""
    members = {}
    for name in sorted(dir(cls)):
        if name.startswith("_") and name not in API_DUNDERS:
            continue
        raw, _owner = owner_attribute(cls, name)
        if raw is None or type(raw).__name__ in SLOT_WRAPPERS:
            continue  # C slots Python filled in (pybind11's __init__ without a constructor raises)
        members[name] = member_entry(raw, cls, name, package, depth)
    mro = [klass.__name__ for klass in cls.__mro__[1:] if klass.__name__ not in SKIPPED_BASES]
    bases = [klass.__name__ for klass in cls.__bases__ if klass.__name__ not in SKIPPED_BASES]
    return {
        "kind": "class",
        "bases": bases,
        "mro": mro,
        "constructible": "__init__" in members,
        "members": members,
    }


def describe(value, name, package):
    """Describe one top-level name of the bindings, or None for names that are not API (modules)."""
    if isinstance(value, types.ModuleType):
        return None
    if isinstance(value, type):
        return enum_entry(value) if is_enum(value) else class_entry(value, package)
    if callable(value):
        return {"kind": "function", "signatures": signatures(value, name, package)}
    return {"kind": "value", "type": type(value).__name__}


def surface(module):
    """The whole surface of ``module`` as a JSON-ready dict."""
    package = module.__name__.split(".")[0]
    names = {}
    for name in sorted(dir(module)):
        if name.startswith("_") and name != "__version__":
            continue
        entry = describe(getattr(module, name), name, package)
        if entry is not None:
            names[name] = entry
    return {"version": str(getattr(module, "__version__", "")), "module": package, "names": names}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Dump the TensorRT bindings' public surface as JSON.")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        module = import_bindings()
    except ImportError as error:
        logger.error("cannot import the TensorRT bindings: %s", error)
        return 1
    data = surface(module)
    with open(args.out, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")
    logger.info("TensorRT %s: %d names written to %s", data["version"], len(data["names"]), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
