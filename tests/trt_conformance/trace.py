"""Pytest plugin: record what the project's code does with the fake TensorRT module.

Load it with ``-p tests.trt_conformance.trace`` and name the output with ``--trt-trace=FILE`` (or the
environment variable ``TRT_TRACE_FILE``). While the tests run it records, for code in the project's
packages (:data:`PROJECT_DIRS`) calling into ``tests/fake_tensorrt.py``:

* every call of a function or method defined there (``sys.setprofile``/``threading.setprofile``):
  the qualified name, the positional and keyword arguments' types (keyword names from the call site's
  AST), and the fake ``tensorrt`` module's ``__version__`` at that moment;
* every attribute read of the fake ``tensorrt`` module (its class is swapped for a recording one when
  a fake function returns it), including ``hasattr`` probes that find nothing;
* every attribute read and write on instances of the fake's classes (``__getattribute__`` and
  ``__setattr__`` wrapped for the session).

Each distinct record is written once, with a count and the first few call sites, as JSON:
``{"fake_file": ..., "records": [{"version", "event", "owner", "name", "exported", ...}]}``.
"""

import ast
import enum
import inspect
import json
import logging
import os
import sys
import threading
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PROJECT_DIRS = ("engines", "appliance", "calibration")
FAKE_MODULE = "tests.fake_tensorrt"
#: ``__module__`` of the classes the fake builds per version (and of its pycuda double).
FAKE_MODULE_NAMES = ("tensorrt", "pycuda.driver")
ENV_VAR = "TRT_TRACE_FILE"
MAX_SITES = 3


def is_project_file(filename: str) -> bool:
    """Whether ``filename`` is a source file of the project's packages."""
    try:
        relative = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return False
    return relative.parts[:1] != () and relative.parts[0] in PROJECT_DIRS


class _Locations:
    """Cache of :func:`is_project_file` and of relative paths by file name (called on every traced event)."""

    def __init__(self) -> None:
        self._known: Dict[str, bool] = {}
        self._relative: Dict[str, str] = {}

    def project(self, filename: str) -> bool:
        known = self._known.get(filename)
        if known is None:
            known = self._known[filename] = is_project_file(filename)
        return known

    def relative(self, filename: str) -> str:
        """``filename`` relative to the repository when it is inside it, else as given."""
        relative = self._relative.get(filename)
        if relative is None:
            try:
                relative = str(Path(filename).resolve().relative_to(ROOT))
            except ValueError:
                relative = str(Path(filename))
            self._relative[filename] = relative
        return relative


def describe(value: Any, fake_file: str) -> Dict[str, Any]:
    """A JSON description of an argument's type, as the checker matches it against pybind11 types."""
    if value is None:
        return {"type": "None"}
    if isinstance(value, enum.Enum):
        return {"type": "enum", "class": type(value).__name__, "member": value.name}
    if isinstance(value, bool):
        return {"type": "bool"}
    if isinstance(value, (str, bytes, bytearray, memoryview, float)):
        return {"type": type(value).__name__}
    if isinstance(value, int):
        return {"type": "int"}
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        kind = value.dtype.kind
        return {
            "type": "int" if kind in "iu" else "bool" if kind == "b" else "float",
            "numpy": str(value.dtype),
        }
    if numpy is not None and isinstance(value, numpy.ndarray) and not _defined_in(type(value), fake_file):
        return {"type": "ndarray", "dtype": str(value.dtype)}
    if isinstance(value, (list, tuple)):
        items = sorted({describe(item, fake_file)["type"] for item in value})
        return {"type": type(value).__name__, "items": items}
    cls = type(value)
    fake_mro = [klass.__name__ for klass in cls.__mro__ if _defined_in(klass, fake_file)]
    return {
        "type": "object",
        "class": cls.__name__,
        "fake_mro": fake_mro,
        "fake": _defined_in(cls, fake_file),
    }


def _defined_in(klass: type, fake_file: str) -> bool:
    """Whether ``klass`` is one of the fake's: defined in its file, or built by it for a fake module
    (``__module__`` ``"tensorrt"``: no real TensorRT is imported while the fake is installed)."""
    if klass.__module__ in FAKE_MODULE_NAMES:
        return True
    module = sys.modules.get(klass.__module__)
    return getattr(module, "__file__", None) == fake_file


def _functions_of(raw: Any) -> List[Tuple[Any, str]]:
    """The functions behind a class attribute, with how they are called: call, static, get, set."""
    if isinstance(raw, staticmethod):
        return [(raw.__func__, "static")]
    if isinstance(raw, classmethod):
        return [(raw.__func__, "call")]
    if isinstance(raw, property):
        return [(accessor, kind) for accessor, kind in ((raw.fget, "get"), (raw.fset, "set")) if accessor]
    if inspect.isfunction(raw):
        return [(raw, "call")]
    return []


class CallSites:
    """Keyword names and positional counts of calls in project files, from their AST.

    Each site is looked up once: a traced call into the fake repeats its site on every frame, and a
    walk of the caller's whole tree per call was most of the traced run's time.
    """

    def __init__(self) -> None:
        self._trees: Dict[str, Optional[ast.AST]] = {}
        self._found: Dict[Tuple[str, int, Tuple[str, ...]], Optional[Tuple[int, List[str], bool]]] = {}

    def _tree(self, filename: str) -> Optional[ast.AST]:
        if filename not in self._trees:
            try:
                self._trees[filename] = ast.parse(Path(filename).read_text(encoding="utf-8"))
            except (OSError, SyntaxError, ValueError):
                self._trees[filename] = None
        return self._trees[filename]

    def find(self, filename: str, line: int, names: Tuple[str, ...]) -> Optional[Tuple[int, List[str], bool]]:
        """``(positional count, keyword names, explicit self)`` of the innermost call of ``names`` at ``line``.

        *Explicit self* is a call of ``X.__init__(...)`` other than ``super().__init__(...)``: the
        instance is its first positional argument.
        """
        key = (filename, line, names)
        if key not in self._found:
            self._found[key] = self._search(filename, line, names)
        found = self._found[key]
        return None if found is None else (found[0], list(found[1]), found[2])

    def _search(
        self, filename: str, line: int, names: Tuple[str, ...]
    ) -> Optional[Tuple[int, List[str], bool]]:
        tree = self._tree(filename)
        if tree is None:
            return None
        best: Optional[ast.Call] = None
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            end = getattr(node, "end_lineno", node.lineno)
            if not node.lineno <= line <= end:
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in names:
                continue
            if best is None or (node.lineno, -end) > (best.lineno, -getattr(best, "end_lineno", best.lineno)):
                best = node
        if best is None or any(isinstance(arg, ast.Starred) for arg in best.args):
            return None
        if any(keyword.arg is None for keyword in best.keywords):
            return None
        func = best.func
        explicit_self = (
            isinstance(func, ast.Attribute)
            and func.attr == "__init__"
            and not (isinstance(func.value, ast.Call) and getattr(func.value.func, "id", None) == "super")
        )
        return len(best.args), [str(keyword.arg) for keyword in best.keywords], explicit_self


class Tracer:
    """Records the project's use of the fake TensorRT module (see the module docstring)."""

    def __init__(self) -> None:
        self.fake_file = ""
        self.records: Dict[str, Dict[str, Any]] = {}
        self._codes: Dict[Any, Tuple[str, str, str, Any]] = {}  # code -> (owner, name, kind, function)
        self._locations = _Locations()
        self._sites = CallSites()
        self._patched: List[Tuple[type, str, Any]] = []
        self._lock = threading.Lock()
        self._previous_profile: Optional[Callable[..., Any]] = None

    # -- the fake module ---------------------------------------------------------------------------

    def attach(self) -> bool:
        """Find the fake module, index its code objects and wrap its classes; False when not imported."""
        fake = sys.modules.get(FAKE_MODULE)
        if fake is None or self.fake_file:
            return bool(self.fake_file)
        self.fake_file = str(getattr(fake, "__file__", ""))
        for name, value in vars(fake).items():
            if inspect.isfunction(value) and value.__code__.co_filename == self.fake_file:
                self._codes[value.__code__] = ("", name, "function", value)
            elif inspect.isclass(value) and _defined_in(value, self.fake_file):
                self._index_class(value)
                self._wrap_class(value)
        return True

    def _index_class(self, cls: type) -> None:
        for name, raw in vars(cls).items():
            for function, kind in _functions_of(raw):
                if hasattr(function, "__code__"):
                    self._codes[function.__code__] = (cls.__name__, name, kind, function)

    def _wrap_class(self, cls: type) -> None:
        if issubclass(cls, (enum.Enum, BaseException)) or any(k.__module__ == "numpy" for k in cls.__mro__):
            return
        if any(patched is cls for patched, _, _ in self._patched):
            return
        tracer = self
        get_original = cls.__getattribute__
        set_original = cls.__setattr__

        def __getattribute__(obj: Any, name: str) -> Any:  # noqa: N807 - the slot's name
            caller = sys._getframe(1)
            if name.startswith("__") or not tracer._locations.project(caller.f_code.co_filename):
                return get_original(obj, name)
            try:
                value = get_original(obj, name)
            except AttributeError:
                tracer._attribute(obj, name, "read", False, None, caller)
                raise
            tracer._attribute(obj, name, "read", True, value, caller)
            return value

        def __setattr__(obj: Any, name: str, value: Any) -> None:  # noqa: N807 - the slot's name
            caller = sys._getframe(1)
            set_original(obj, name, value)  # a write the fake refuses raises, as the bindings would
            if not name.startswith("_") and tracer._locations.project(caller.f_code.co_filename):
                tracer._attribute(obj, name, "write", True, value, caller)

        for slot, wrapper in (("__getattribute__", __getattribute__), ("__setattr__", __setattr__)):
            self._patched.append((cls, slot, cls.__dict__.get(slot)))
            setattr(cls, slot, wrapper)

    def detach(self) -> None:
        """Undo the class wrapping."""
        for cls, slot, original in reversed(self._patched):
            if original is None:
                delattr(cls, slot)
            else:
                setattr(cls, slot, original)
        self._patched.clear()

    # -- recording ---------------------------------------------------------------------------------

    def _version(self) -> str:
        module = sys.modules.get("tensorrt")
        try:
            return str(object.__getattribute__(module, "__version__"))
        except AttributeError:
            return ""

    def _exported(self, owner: str) -> str:
        """Which fake module exports ``owner`` (a class or function name) right now."""
        for label, module_name in (("tensorrt", "tensorrt"), ("pycuda", "pycuda.driver")):
            module = sys.modules.get(module_name)
            if module is None:
                continue
            value = module.__dict__.get(owner)
            if value is not None and self._is_fake(value):
                return label
        return "unexported"

    def _is_fake(self, value: Any) -> bool:
        if inspect.isclass(value):
            return _defined_in(value, self.fake_file)
        code = getattr(value, "__code__", None)
        return code is not None and code.co_filename == self.fake_file

    def _add(self, record: Dict[str, Any], site: str) -> None:
        key = json.dumps(record, sort_keys=True)
        with self._lock:
            entry = self.records.get(key)
            if entry is None:
                entry = self.records[key] = dict(record, count=0, sites=[])
            entry["count"] += 1
            if site not in entry["sites"] and len(entry["sites"]) < MAX_SITES:
                entry["sites"].append(site)

    def _site(self, frame: Any) -> str:
        return f"{self._locations.relative(frame.f_code.co_filename)}:{frame.f_lineno}"

    def _owner_of(self, obj: Any, name: str) -> Tuple[str, str]:
        """The fake class a looked-up attribute belongs to, and the class of ``obj`` as the project sees it."""
        cls = type(obj)
        if _defined_in(cls, self.fake_file):
            return cls.__name__, cls.__name__
        for klass in cls.__mro__:
            if name in vars(klass):
                return (klass.__name__ if _defined_in(klass, self.fake_file) else "", cls.__name__)
        return "", cls.__name__

    def _attribute(self, obj: Any, name: str, access: str, found: bool, value: Any, caller: Any) -> None:
        owner, seen_as = self._owner_of(obj, name)
        if not owner:
            return  # the project's own attribute of its subclass of a fake class
        record = {
            "version": self._version(),
            "event": access,
            "owner": owner,
            "name": name,
            "found": found,
            "exported": self._exported(owner),
            "value": describe(value, self.fake_file) if access == "write" else None,
            "kind": _value_kind(value) if access == "read" and found else None,
        }
        if seen_as != owner:
            record["instance"] = seen_as
        self._add(record, self._site(caller))

    def module_read(self, module: types.ModuleType, name: str, found: bool, caller: Any) -> None:
        """Record a read of the fake ``tensorrt`` module's attribute ``name``."""
        record = {
            "version": self._version(),
            "event": "module",
            "owner": "tensorrt",
            "name": name,
            "found": found,
            "exported": "tensorrt",
        }
        self._add(record, self._site(caller))

    def _resolve(self, frame: Any) -> Optional[Tuple[str, str, str, Any]]:
        """``(owner class, member or function name, kind, function)`` of a frame of fake code.

        A method is found on the class of its ``self`` (the fake builds classes per version and may
        install a function under another name), else by its code object, else among the functions of
        the fake ``tensorrt`` module.
        """
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self" and "self" in frame.f_locals:
            for klass in type(frame.f_locals["self"]).__mro__:
                for name, raw in vars(klass).items():
                    for function, kind in _functions_of(raw):
                        if getattr(function, "__code__", None) is code:
                            return klass.__name__, name, kind, function
        entry = self._codes.get(code)
        if entry is not None:
            return entry
        module = sys.modules.get("tensorrt")
        for name, value in (vars(module) if module is not None else {}).items():
            if getattr(value, "__code__", None) is code:
                return "", name, "function", value
        return None

    def _call(self, frame: Any) -> None:
        caller = frame.f_back
        if caller is None or not self._locations.project(caller.f_code.co_filename):
            return
        entry = self._resolve(frame)
        if entry is None:
            return
        owner, name, kind, function = entry
        if kind in ("get", "set"):
            return  # property access is recorded by the __getattribute__/__setattr__ wrappers
        if kind == "function":
            owner_name, qualname = "", name
        else:
            owner_name, qualname = owner, f"{owner}.{name}"
        positional, keywords, resolved = self._arguments(frame, function, caller, kind == "call", name, owner)
        record = {
            "version": self._version(),
            "event": "call",
            "owner": owner_name,
            "name": qualname,
            "exported": self._exported(owner_name or name),
            "positional": positional,
            "keywords": keywords,
            "resolved": resolved,
        }
        first = frame.f_locals.get("self") if kind == "call" else None
        if first is not None and type(first).__name__ != owner:
            record["instance"] = type(first).__name__
        self._add(record, self._site(caller))

    def _arguments(
        self, frame: Any, function: Any, caller: Any, bound: bool, name: str, owner: str
    ) -> Tuple[List[Dict[str, Any]], Dict[str, Dict[str, Any]], bool]:
        """The call's positional and keyword argument types; ``resolved`` when the call site was found."""
        try:
            parameters = list(inspect.signature(function).parameters.values())
        except (TypeError, ValueError):
            return [], {}, False
        if bound and parameters:
            parameters = parameters[1:]
        names = (name, owner) if name == "__init__" else (name,)
        site = self._sites.find(caller.f_code.co_filename, caller.f_lineno, names)
        values = frame.f_locals
        plain = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        positional: List[Dict[str, Any]] = []
        keywords: Dict[str, Dict[str, Any]] = {}
        if site is None:
            # Unknown call site (a call through getattr, a callback): every bound parameter, positionally.
            positional = [describe(values.get(p.name), self.fake_file) for p in plain]
            return positional, keywords, False
        count, keyword_names, explicit_self = site
        if explicit_self and bound:
            count -= 1  # ``Base.__init__(self, ...)``: self is passed explicitly
        positional = [describe(values.get(p.name), self.fake_file) for p in plain[:count]]
        for keyword in keyword_names:
            if keyword in values:
                keywords[keyword] = describe(values[keyword], self.fake_file)
            else:  # swallowed by **kwargs
                extra = next((values[p.name] for p in parameters if p.kind == p.VAR_KEYWORD), {})
                keywords[keyword] = describe(extra.get(keyword), self.fake_file)
        return positional, keywords, True

    # -- profiling ---------------------------------------------------------------------------------

    def profile(self, frame: Any, event: str, arg: Any) -> None:
        """The ``sys.setprofile`` hook."""
        if event == "call":
            if frame.f_code.co_filename == self.fake_file:
                try:
                    self._call(frame)
                except Exception:  # the trace must never break the tests it observes
                    logger.exception("tracing a call into the fake TensorRT module failed")
        elif event == "return" and frame.f_code.co_filename == self.fake_file:
            if isinstance(arg, types.ModuleType) and arg.__name__ == "tensorrt":
                self._instrument_module(arg)

    def _instrument_module(self, module: types.ModuleType) -> None:
        """Record the project's reads of a fake ``tensorrt`` module and of its classes' instances."""
        if isinstance(module, _RecordingModule):
            return
        for value in list(vars(module).values()):
            if inspect.isclass(value) and _defined_in(value, self.fake_file):
                self._wrap_class(value)
        module.__class__ = _RecordingModule
        object.__setattr__(module, "_trt_conformance_tracer", self)

    def start(self) -> None:
        """Install the profile hook on this thread and on threads started from now on."""
        self._previous_profile = sys.getprofile()
        sys.setprofile(self.profile)
        threading.setprofile(self.profile)

    def stop(self) -> None:
        """Remove the profile hooks and the class wrappers (idempotent)."""
        if sys.getprofile() == self.profile:
            sys.setprofile(self._previous_profile)
        threading.setprofile(None)  # type: ignore[arg-type]
        self.detach()

    def write(self, path: Path) -> None:
        """Write the records as JSON."""
        data = {
            "fake_file": self.fake_file,
            "project_dirs": list(PROJECT_DIRS),
            "records": sorted(self.records.values(), key=lambda r: (r["version"], r["event"], r["name"])),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _value_kind(value: Any) -> str:
    if inspect.isclass(value):
        return "enum" if issubclass(value, enum.Enum) else "class"
    if inspect.ismethod(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return "method"
    return "value"


class _RecordingModule(types.ModuleType):
    """The fake ``tensorrt`` module's class while traced: records reads from project code."""

    def __getattribute__(self, name: str) -> Any:
        caller = sys._getframe(1)
        if name.startswith("_") and name != "__version__":
            return super().__getattribute__(name)
        tracer: Tracer = types.ModuleType.__getattribute__(self, "_trt_conformance_tracer")
        if not tracer._locations.project(caller.f_code.co_filename):
            return super().__getattribute__(name)
        try:
            value = super().__getattribute__(name)
        except AttributeError:
            tracer.module_read(self, name, False, caller)
            raise
        tracer.module_read(self, name, True, caller)
        return value


# -- pytest hooks -------------------------------------------------------------------------------------

_TRACER_KEY = "trt_conformance_tracer"


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--trt-trace=FILE``: where to write the trace (default: ``$TRT_TRACE_FILE``)."""
    parser.addoption("--trt-trace", default=None, help="write the fake-TensorRT call trace to this JSON file")


def _output(config: pytest.Config) -> Optional[Path]:
    value = config.getoption("--trt-trace") or os.environ.get(ENV_VAR)
    return Path(value) if value else None


def pytest_configure(config: pytest.Config) -> None:
    """Start tracing when an output file is named."""
    if _output(config) is None:
        return
    tracer = Tracer()
    setattr(config, _TRACER_KEY, tracer)
    tracer.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Attach to the fake module once the tests have imported it."""
    tracer: Optional[Tracer] = getattr(item.config, _TRACER_KEY, None)
    if tracer is not None:
        tracer.attach()
        if sys.getprofile() != tracer.profile:  # something (a debugger, a test) replaced it
            sys.setprofile(tracer.profile)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop tracing and write the file."""
    tracer: Optional[Tracer] = getattr(session.config, _TRACER_KEY, None)
    path = _output(session.config)
    if tracer is None or path is None:
        return
    tracer.stop()
    tracer.write(path)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say where the trace went."""
    tracer: Optional[Tracer] = getattr(config, _TRACER_KEY, None)
    path = _output(config)
    if tracer is not None and path is not None:
        terminalreporter.write_line(f"fake TensorRT trace: {len(tracer.records)} records written to {path}")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Make sure the hooks are gone even when the session did not finish normally."""
    tracer: Optional[Tracer] = getattr(config, _TRACER_KEY, None)
    if tracer is not None:
        tracer.stop()
