"""Check the fake TensorRT module and the project's traced use of it against the real bindings.

Usage (in the project's virtualenv)::

    python -m tests.trt_conformance.check --surface 8.6.1.json --surface 10.3.0.json ... \\
        --fake-version 8.5 --fake-version 10.3 ... [--trace trace.json] [--show all] [--report FILE]

Three checks, each against the real surface *nearest* a fake version (same major.minor, else the same
major's closest minor: fake 8.2/8.5/8.6 → real 8.6):

1. the fake module of each ``--fake-version`` (``tests.fake_tensorrt.tensorrt_module(version)``, or
   the older private ``_tensorrt_module``): every public name exists in the real bindings with the
   same kind; classes' public methods/properties/nested enums too, enum members too, and every fake
   method's or function's parameters are accepted by one real overload;
2. the trace of :mod:`.trace`: each call the project made into the fake resolves in the real surface
   and its argument types convert to one real overload's parameter types
   (:func:`.signatures.converts`); each attribute it read exists, each it wrote is a writable property;
   calls on the fake's private helper classes (``_Engine``) cannot be checked and are warnings, with
   the real classes that have every method the project called on them;
3. the ``trt.X.Y`` chains in the project's TensorRT code (:mod:`.chains`): a chain that resolves in
   none of the surfaces is an error (a warning when only one surface is given: the chain may be on
   another version's code path); the versions it does not resolve in are listed as information.

It prints the findings, then one line per real version, and exits 1 when there is an error.
"""

import argparse
import ast
import enum
import importlib
import inspect
import json
import logging
import re
import sys
import textwrap
import types
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from . import chains as chain_scan
from .signatures import (
    Surface,
    describe_arg,
    fake_params_accepted,
    match_overload,
    parse_signature,
    strip_self,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
FAKE_MODULE = "tests.fake_tensorrt"
FACTORY_NAMES = ("tensorrt_module", "_tensorrt_module")
API_DUNDERS = {"__init__", "__len__", "__getitem__", "__setitem__", "__iter__", "__contains__", "__call__"}
ERROR, WARNING, INFO = "error", "warning", "info"
MAX_HINTS = 4
MISSING, MISMATCH = "missing", "mismatch"


@dataclass
class Finding:
    """One result of the check."""

    level: str  # error, warning, info
    version: str  # the real version it is about ("" for all)
    message: str
    category: str = MISMATCH  # for errors: missing (a name) or mismatch (kind, parameters, arguments)


@dataclass
class Report:
    """Findings and the counts of the summary lines."""

    findings: List[Finding] = field(default_factory=list)
    fake_names: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    traced: Dict[str, int] = field(default_factory=lambda: defaultdict(int))
    chains: Dict[str, Tuple[int, int]] = field(default_factory=dict)
    fakes: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, level: str, version: str, message: str, category: str = MISMATCH) -> None:
        finding = Finding(level, version, message, category)
        if finding not in self.findings:
            self.findings.append(finding)

    def count(self, version: str, level: str, category: Optional[str] = None) -> int:
        return sum(
            1
            for f in self.findings
            if f.version == version and f.level == level and (category is None or f.category == category)
        )


# -- versions ---------------------------------------------------------------------------------------


def version_key(version: str) -> Tuple[int, int]:
    """``(major, minor)`` of a version string; ``(-1, -1)`` when it has none."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:2]]
    if not numbers:
        return -1, -1
    return numbers[0], numbers[1] if len(numbers) > 1 else 0


def nearest(version: str, surfaces: Sequence[Surface]) -> Optional[Surface]:
    """The surface of the same major.minor, else of the same major and closest minor (higher on a tie)."""
    major, minor = version_key(version)
    same_major = [s for s in surfaces if version_key(s.version)[0] == major]
    if not same_major:
        return None
    return min(same_major, key=lambda s: (abs(version_key(s.version)[1] - minor), -version_key(s.version)[1]))


def load_surface(path: Path) -> Surface:
    """Read a surface JSON written by :mod:`.dump_surface`."""
    return Surface(json.loads(path.read_text()))


# -- the fake module --------------------------------------------------------------------------------


def fake_factory() -> Callable[[str], types.ModuleType]:
    """``tests.fake_tensorrt.tensorrt_module`` (or the older ``_tensorrt_module``)."""
    fake = importlib.import_module(FAKE_MODULE)
    for name in FACTORY_NAMES:
        factory = getattr(fake, name, None)
        if callable(factory):
            return factory
    raise AttributeError(f"{FAKE_MODULE} has none of {', '.join(FACTORY_NAMES)}")


def _fake_kind(raw: Any) -> str:
    if isinstance(raw, staticmethod):
        return "staticmethod"
    if isinstance(raw, classmethod):
        return "staticmethod"
    if isinstance(raw, property):
        return "property"
    if inspect.isclass(raw):
        return "enum" if issubclass(raw, enum.Enum) else "class"
    if inspect.isfunction(raw):
        return "method"
    return "value"


def _compatible(fake_kind: str, real_kind: str) -> bool:
    if fake_kind == real_kind:
        return True
    # A class-level constant of the fake may be a (static) property of the bindings, and vice versa.
    return {fake_kind, real_kind} <= {"value", "property"}


def _is_fake_class(klass: type, fake_file: str) -> bool:
    """Defined in the fake's file, or built by it for a version's module (``__module__`` "tensorrt")."""
    if klass.__module__ == "tensorrt":
        return True
    return getattr(sys.modules.get(klass.__module__), "__file__", None) == fake_file


def _fake_members(cls: type, fake_file: str) -> Dict[str, Any]:
    """Public members (and API dunders) the fake class or its fake bases define: name → raw attribute."""
    members: Dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not _is_fake_class(klass, fake_file):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") and name not in API_DUNDERS:
                continue
            members[name] = raw
    return members


def _parameter_names(function: Any, method: bool) -> Optional[List[str]]:
    """Names of the fake function's plain parameters (``self`` dropped for methods); None if *args."""
    params = list(inspect.signature(function).parameters.values())
    if method and params:
        params = params[1:]
    names = []
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.kind == param.KEYWORD_ONLY:
            names.append(param.name)  # checked by name like the others
            continue
        names.append(param.name)
    return names


def _check_signature(
    report: Report, version: str, label: str, function: Any, entry: Mapping[str, Any], method: bool
) -> None:
    names = _parameter_names(function, method)
    if names is None:
        return
    overloads = [parse_signature(text) for text in entry.get("signatures", [])]
    if not overloads:
        report.add(WARNING, version, f"{label}: the real signature is unknown (no pybind11 docstring)")
        return
    reasons = []
    for overload in overloads:
        real = strip_self(overload) if entry.get("kind") == "method" else overload
        ok, reason = fake_params_accepted(names, real)
        if ok:
            return
        reasons.append(reason)
    shown = "; ".join(dict.fromkeys(reasons))
    report.add(ERROR, version, f"{label}({', '.join(names)}): no real overload accepts it: {shown}")


def _instance_attributes(cls: type) -> Set[str]:
    """Public attributes the fake's ``__init__`` assigns on ``self`` (from its source)."""
    init = cls.__dict__.get("__init__")
    if init is None or not inspect.isfunction(init):
        return set()
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
    except (OSError, TypeError, SyntaxError):
        return set()
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and not target.attr.startswith("_")
            ):
                names.add(target.attr)
    return names


def check_fake_class(report: Report, surface: Surface, name: str, cls: type, fake_file: str) -> None:
    """Compare one fake (non-enum) class with the real one."""
    version = surface.version
    real = surface.names[name]
    real_members = real.get("members", {})
    for member, raw in sorted(_fake_members(cls, fake_file).items()):
        label = f"{name}.{member}"
        report.fake_names[version] += 1
        kind = _fake_kind(raw)
        entry = real_members.get(member)
        if member == "__init__":
            if entry is not None:
                _check_signature(report, version, label, raw, entry, method=True)
            continue  # a real class without a constructor: the fake's is internal (the trace checks use)
        if entry is None:
            report.add(ERROR, version, f"{label}: not in the real {name} ({kind})", MISSING)
            continue
        if not _compatible(kind, entry.get("kind", "")):
            report.add(ERROR, version, f"{label}: the fake has a {kind}, the real one a {entry.get('kind')}")
            continue
        if kind in ("method", "staticmethod") and entry.get("kind") in ("method", "staticmethod"):
            function = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
            _check_signature(report, version, label, function, entry, method=kind == "method")
        elif kind == "enum":
            _check_enum(report, surface, label, raw, entry)
    for attribute in sorted(_instance_attributes(cls)):
        if attribute in real_members or attribute in _fake_members(cls, fake_file):
            continue
        report.add(
            WARNING,
            version,
            f"{name}.{attribute}: a public instance attribute of the fake that the real {name} lacks "
            "(name it with a leading underscore, or project code could use it unnoticed)",
        )


def _check_enum(report: Report, surface: Surface, label: str, cls: Any, entry: Mapping[str, Any]) -> None:
    version = surface.version
    if entry.get("kind") != "enum":
        report.add(ERROR, version, f"{label}: the fake has an enum, the real one a {entry.get('kind')}")
        return
    real_members = entry.get("members", {})
    for member in cls.__members__:
        report.fake_names[version] += 1
        if member not in real_members:
            report.add(ERROR, version, f"{label}.{member}: not a member of the real enum", MISSING)
            continue
        value = cls.__members__[member].value
        if isinstance(value, int) and real_members[member] is not None and value != real_members[member]:
            report.add(
                WARNING,
                version,
                f"{label}.{member}: the fake's value {value}, the real one {real_members[member]}",
            )


def check_fake_module(report: Report, module: types.ModuleType, surface: Surface, fake_file: str) -> None:
    """Check every public name of a fake ``tensorrt`` module against ``surface``."""
    version = surface.version
    label_version = str(getattr(module, "__version__", "?"))
    report.fakes[version].append(label_version)
    for name in sorted(n for n in dir(module) if not n.startswith("_") or n == "__version__"):
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            continue
        report.fake_names[version] += 1
        entry = surface.names.get(name)
        kind = _fake_kind(value) if inspect.isclass(value) else "function" if callable(value) else "value"
        if entry is None:
            report.add(
                ERROR,
                version,
                f"fake {label_version}: tensorrt.{name} ({kind}) is not in the bindings",
                MISSING,
            )
            continue
        if entry.get("kind") != kind:
            report.add(
                ERROR,
                version,
                f"fake {label_version}: tensorrt.{name} is a {kind}, really a {entry.get('kind')}",
            )
            continue
        if kind == "enum":
            _check_enum(report, surface, f"tensorrt.{name}", value, entry)
        elif kind == "class":
            check_fake_class(report, surface, name, value, fake_file)
        elif kind == "function":
            _check_signature(report, version, f"tensorrt.{name}", value, entry, method=False)


# -- the trace --------------------------------------------------------------------------------------


def _real_class(surface: Surface, owner: str) -> Optional[Mapping[str, Any]]:
    entry = surface.names.get(owner)
    return entry if entry is not None and entry.get("kind") == "class" else None


def _sites(record: Mapping[str, Any]) -> str:
    return ", ".join(record.get("sites", [])) or "?"


def _check_call_arguments(
    report: Report, surface: Surface, label: str, record: Mapping[str, Any], entry: Mapping[str, Any]
) -> None:
    version = surface.version
    overloads = entry.get("signatures", [])
    if not overloads:
        report.add(WARNING, version, f"{label}: the real signature is unknown; arguments not checked")
        return
    positional = record.get("positional", [])
    keywords = record.get("keywords", {})
    problems: List[str] = []
    for text in overloads:
        params = parse_signature(text)
        if entry.get("kind") == "method":
            params = strip_self(params)
        if not record.get("resolved", True):
            # Unknown call site: every fake parameter was recorded; trailing ones may be fake defaults.
            positional_here = positional[: len([p for p in params if not p.star])]
        else:
            positional_here = positional
        ok, why, notes = match_overload(params, positional_here, keywords, surface)
        if ok:
            for note in notes:
                report.add(WARNING, version, f"{label}: {note} ({_sites(record)})")
            return
        problems.append(f"{text}: {'; '.join(why)}")
    args = [describe_arg(a) for a in positional] + [f"{k}={describe_arg(v)}" for k, v in keywords.items()]
    report.add(
        ERROR,
        version,
        f"{label}({', '.join(args)}) at {_sites(record)} matches no real overload: " + " | ".join(problems),
    )


def check_record(
    report: Report, surface: Surface, record: Mapping[str, Any], private: Dict[str, Set[str]]
) -> None:
    """Check one trace record against ``surface``."""
    version = surface.version
    event, owner, name = record.get("event"), str(record.get("owner", "")), str(record.get("name", ""))
    if record.get("exported") == "pycuda":
        return
    member = name.split(".", 1)[1] if event == "call" and owner else name
    if member.startswith("__") and member not in API_DUNDERS:
        return  # str(), int(), repr() of any object: not part of the bindings' API
    if owner.startswith("_"):
        private[owner].add(member)
        return
    if event == "module":
        if record.get("found") and name not in surface.names:
            report.add(
                ERROR, version, f"tensorrt.{name} read at {_sites(record)} is not in the bindings", MISSING
            )
        return
    if not owner:  # a module-level function
        entry = surface.names.get(name)
        if entry is None:
            report.add(
                ERROR,
                version,
                f"tensorrt.{name}() called at {_sites(record)} is not in the bindings",
                MISSING,
            )
        elif entry.get("kind") != "function":
            report.add(
                ERROR, version, f"tensorrt.{name}() called at {_sites(record)} is a {entry.get('kind')}"
            )
        else:
            _check_call_arguments(report, surface, f"tensorrt.{name}", record, entry)
        return
    real = _real_class(surface, owner)
    if real is None:
        if record.get("exported") == "unexported":
            report.add(
                WARNING,
                version,
                f"{owner}.{member} used at {_sites(record)}: {owner} is a fake helper, not a TensorRT class; not checked",
            )
        else:
            report.add(
                ERROR, version, f"class {owner} (used at {_sites(record)}) is not in the bindings", MISSING
            )
        return
    entry = real.get("members", {}).get(member)
    label = f"{owner}.{member}"
    if event == "call":
        if entry is None:
            what = "has no constructor" if member == "__init__" else "has no such member"
            report.add(
                ERROR, version, f"{label}() called at {_sites(record)}: the real {owner} {what}", MISSING
            )
        elif entry.get("kind") not in ("method", "staticmethod"):
            report.add(ERROR, version, f"{label}() called at {_sites(record)} is a {entry.get('kind')}")
        else:
            _check_call_arguments(report, surface, label, record, entry)
    elif event == "read" and record.get("found"):
        if entry is None:
            report.add(
                ERROR, version, f"{label} read at {_sites(record)} is not in the real {owner}", MISSING
            )
        elif record.get("kind") == "method" and entry.get("kind") not in ("method", "staticmethod"):
            report.add(ERROR, version, f"{label} is a method in the fake, a {entry.get('kind')} really")
        elif record.get("kind") == "value" and entry.get("kind") in ("method", "staticmethod"):
            report.add(
                ERROR, version, f"{label} is an attribute in the fake, a method really ({_sites(record)})"
            )
    elif event == "write":
        if entry is None:
            report.add(
                ERROR, version, f"{label} written at {_sites(record)} is not in the real {owner}", MISSING
            )
        elif entry.get("kind") != "property" or entry.get("readonly"):
            report.add(
                ERROR,
                version,
                f"{label} written at {_sites(record)} is read-only really ({entry.get('kind')})",
            )


def check_trace(report: Report, records: Sequence[Mapping[str, Any]], surfaces: Sequence[Surface]) -> None:
    """Check the trace records, each against the surface nearest its fake version."""
    private: Dict[Tuple[str, str], Dict[str, Set[str]]] = defaultdict(lambda: defaultdict(set))
    for record in records:
        surface = nearest(str(record.get("version", "")), surfaces)
        if surface is None:
            report.add(
                WARNING,
                "",
                f"traced fake version {record.get('version')!r}: no real surface of its major version given; "
                "its records are not checked",
            )
            continue
        if record.get("event") == "call" and record.get("exported") != "pycuda":
            report.traced[surface.version] += 1
        check_record(report, surface, record, private[(surface.version, str(record.get("version")))])
    for (version, fake_version), classes in sorted(private.items()):
        surface = next(s for s in surfaces if s.version == version)
        for owner, used in sorted(classes.items()):
            hint = _counterpart_hint(surface, used)
            report.add(
                WARNING,
                version,
                f"fake {fake_version}: project code uses {owner} ({', '.join(sorted(used))}), a private fake class "
                f"with no real counterpart, so these uses are not checked; {hint} — name the fake class like it",
            )


def _counterpart_hint(surface: Surface, used: Set[str]) -> str:
    """The real classes that have every member in ``used``: base classes of the others first."""
    found = {
        name: entry
        for name, entry in surface.names.items()
        if entry.get("kind") == "class" and used <= set(entry.get("members", {}))
    }
    if not found:
        return "no real class has all of them"
    derived = defaultdict(int)
    for entry in found.values():
        for base in entry.get("mro", []):
            derived[base] += 1
    ranked = sorted(found, key=lambda name: (-derived[name], len(found[name].get("members", {})), name))
    more = f" (+{len(ranked) - MAX_HINTS} more)" if len(ranked) > MAX_HINTS else ""
    return f"real classes with all of them: {', '.join(ranked[:MAX_HINTS])}{more}"


# -- chains -----------------------------------------------------------------------------------------


def check_chains(report: Report, found: Sequence[chain_scan.Chain], surfaces: Sequence[Surface]) -> None:
    """Chains resolving in no surface are errors; per-version non-resolution is information."""
    grouped: Dict[Tuple[Tuple[str, ...], bool], List[str]] = defaultdict(list)
    for chain in found:
        grouped[(chain.parts, chain.probe)].append(chain.site)
    for surface in surfaces:
        report.chains[surface.version] = (len(grouped), 0)
    for (parts, probe), sites in sorted(grouped.items()):
        dotted = "trt." + ".".join(parts)
        where = ", ".join(sites[:3]) + (f" (+{len(sites) - 3})" if len(sites) > 3 else "")
        missing = [s for s in surfaces if not chain_scan.resolves(parts, s)]
        for surface in missing:
            total, unresolved = report.chains[surface.version]
            report.chains[surface.version] = (total, unresolved + 1)
        if len(missing) == len(surfaces):
            # With one version given, the chain may sit on a code path for other versions: a warning.
            level = WARNING if probe or len(surfaces) == 1 else ERROR
            what = "probe for" if probe else "chain"
            for surface in surfaces:
                report.add(
                    level, surface.version, f"{what} {dotted} ({where}) resolves in no version given", MISSING
                )
        elif not probe:
            for surface in missing:
                report.add(INFO, surface.version, f"{dotted} ({where}) does not resolve in {surface.version}")


# -- output -----------------------------------------------------------------------------------------


def summary(report: Report, surface: Surface) -> str:
    """The one-line result for a real version."""
    version = surface.version
    missing = report.count(version, ERROR, MISSING)
    mismatched = report.count(version, ERROR, MISMATCH)
    warnings = report.count(version, WARNING)
    fakes = ", ".join(report.fakes.get(version, [])) or "none"
    chains_total, chains_unresolved = report.chains.get(version, (0, 0))
    verdict = "ok" if missing + mismatched == 0 else "FAILED"
    return (
        f"TensorRT {version}: {len(surface.names)} names, fake {fakes}: {report.fake_names.get(version, 0)} "
        f"names checked, {report.traced.get(version, 0)} traced calls, {chains_total} code chains "
        f"({chains_unresolved} not here), {missing} missing, {mismatched} mismatched, {warnings} warnings — {verdict}"
    )


SHOW_LEVELS = {"errors": (ERROR,), "warnings": (ERROR, WARNING), "all": (ERROR, WARNING, INFO)}


def print_report(report: Report, surfaces: Sequence[Surface], levels: Sequence[str], out: Any = None) -> None:
    """Print the findings of ``levels`` by version, then the summary lines."""
    out = out if out is not None else sys.stdout
    for surface in [*surfaces, Surface({"version": ""})]:
        for level in levels:
            for finding in report.findings:
                if finding.version == surface.version and finding.level == level:
                    out.write(f"[{surface.version or 'all'}] {level}: {finding.message}\n")
    for surface in surfaces:
        out.write(summary(report, surface) + "\n")


def run(
    surfaces: Sequence[Surface],
    fake_versions: Sequence[str],
    trace: Optional[Path],
    chain_root: Optional[Path],
) -> Report:
    """Run the three checks; return the report."""
    report = Report()
    if fake_versions:
        factory = fake_factory()
        fake_file = str(importlib.import_module(FAKE_MODULE).__file__)
        for version in fake_versions:
            surface = nearest(version, surfaces)
            if surface is None:
                report.add(ERROR, "", f"fake version {version!r} has no real surface to check against")
                continue
            try:
                module = factory(version)
            except Exception as err:  # the fake refuses a version it does not model
                report.add(ERROR, surface.version, f"the fake has no module for TensorRT {version}: {err}")
                continue
            check_fake_module(report, module, surface, fake_file)
    if trace is not None:
        records = json.loads(trace.read_text()).get("records", [])
        check_trace(report, records, surfaces)
    if chain_root is not None:
        check_chains(report, chain_scan.scan(chain_root), surfaces)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point; 0 when nothing is missing or mismatched."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--surface", type=Path, action="append", required=True, help="a dump_surface JSON")
    parser.add_argument("--fake-version", action="append", default=[], help="a fake version to check")
    parser.add_argument("--trace", type=Path, help="the trace JSON of the trace plugin")
    parser.add_argument("--no-chains", action="store_true", help="skip the trt.X.Y scan of the code")
    parser.add_argument("--root", type=Path, default=ROOT, help="the project root (for the chain scan)")
    parser.add_argument("--show", choices=sorted(SHOW_LEVELS), default="warnings", help="findings to print")
    parser.add_argument("--report", type=Path, help="also write every finding (all levels) to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    surfaces = sorted((load_surface(path) for path in args.surface), key=lambda s: version_key(s.version))
    report = run(surfaces, args.fake_version, args.trace, None if args.no_chains else args.root)
    print_report(report, surfaces, SHOW_LEVELS[args.show])
    if args.report is not None:
        with args.report.open("w", encoding="utf-8") as handle:
            print_report(report, surfaces, SHOW_LEVELS["all"], handle)
    return 1 if any(f.level == ERROR for f in report.findings) else 0


if __name__ == "__main__":
    sys.exit(main())
