"""Build stand-in TensorRT libraries so that the real Python bindings import without TensorRT.

The bindings' extension module (``tensorrt.so`` or ``tensorrt.cpython-*.so`` in ``tensorrt_bindings/``
or ``tensorrt/``) needs ``libnvinfer.so.N`` and friends, which live in NVIDIA's ``-libs`` wheels. This
module reads, at run time, which of the extension's needed libraries are missing (``ldd``) and which of
its undefined dynamic symbols no present library defines (``readelf --dyn-syms``, ``nm -D``), then
writes one C file per missing library that defines each such symbol (a function returning 0, or a
zeroed object for data symbols; functions named ``get...Version`` return the bindings' version in
TensorRT's encoding) and builds it with ``gcc -shared -fPIC -Wl,-soname,<SONAME>``. Nothing in these
libraries works: they only let ``import tensorrt`` reach the pybind11 module definitions, which is all
that :mod:`.dump_surface` needs.

Usage: ``python -m tests.trt_conformance.standins --site-packages DIR --out DIR [--version 10.3.0]``.
"""

import argparse
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

logger = logging.getLogger(__name__)

PACKAGE_DIRS = ("tensorrt_bindings", "tensorrt")
# Symbols of the Python C API are resolved from the interpreter at import time.
PYTHON_PREFIXES = ("Py", "_Py")
VERSION_FUNCTION = re.compile(r"^get\w*Version$")
# Which stand-in gets a symbol is cosmetic (every needed library is loaded, so any of them may define
# it); these keywords only keep the files readable: (pattern in the symbol, pattern in the SONAME).
LIBRARY_HINTS = (
    (re.compile(r"onnx", re.IGNORECASE), "onnxparser"),
    (re.compile(r"InferPlugin", re.IGNORECASE), "plugin"),
    (re.compile(r"caffe|uff", re.IGNORECASE), "nvparsers"),
)


class Symbol(NamedTuple):
    """An undefined dynamic symbol of the extension module."""

    name: str
    kind: str  # "FUNC", "OBJECT" or "NOTYPE" as readelf prints it
    size: int


class StandinError(RuntimeError):
    """The extension module or the tools to inspect and build it are not as expected."""


def find_extension(site_packages: Path) -> Path:
    """Return the bindings' extension module under ``site_packages``."""
    for package in PACKAGE_DIRS:
        for candidate in sorted((site_packages / package).glob("tensorrt*.so")):
            return candidate
    raise StandinError(f"no TensorRT bindings extension (tensorrt*.so) under {site_packages}")


def _run(command: Sequence[str], env: Optional[Dict[str, str]] = None) -> str:
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError as error:
        raise StandinError(f"{command[0]} is not installed (binutils and gcc are needed)") from error
    if result.returncode != 0 and command[0] != "ldd":
        raise StandinError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def needed_libraries(extension: Path) -> Dict[str, Optional[str]]:
    """Map each library the extension needs to its resolved path, or None when it is missing."""
    env = {key: value for key, value in os.environ.items() if key != "LD_LIBRARY_PATH"}
    resolved: Dict[str, Optional[str]] = {}
    for line in _run(["ldd", str(extension)], env=env).splitlines():
        match = re.match(r"\s*(\S+)\s+=>\s+(.*?)\s*(\(0x[0-9a-f]+\))?$", line)
        if not match:
            continue
        name, target = match.group(1), match.group(2)
        resolved[name] = None if target == "not found" else target
    if not resolved:
        raise StandinError(f"ldd lists no libraries for {extension}")
    return resolved


def undefined_symbols(extension: Path) -> List[Symbol]:
    """The extension's undefined, unversioned, non-weak dynamic symbols outside the Python C API."""
    symbols: Dict[str, Symbol] = {}
    for line in _run(["readelf", "--dyn-syms", "--wide", str(extension)]).splitlines():
        fields = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(fields) < 8 or fields[6] != "UND" or fields[4] != "GLOBAL":
            continue
        name = fields[7]
        if "@" in name or name.startswith(PYTHON_PREFIXES):
            continue  # versioned symbols come from glibc/libstdc++/libgcc
        size = int(fields[2], 0) if fields[2].isdigit() or fields[2].startswith("0x") else 0
        symbols[name] = Symbol(name, fields[3], size)
    return sorted(symbols.values())


def defined_symbols(libraries: Iterable[str]) -> set:
    """Names of the dynamic symbols the given (present) libraries define."""
    names = set()
    for library in libraries:
        for line in _run(["nm", "-D", "--defined-only", library]).splitlines():
            fields = line.split()
            if fields:
                names.add(fields[-1].split("@")[0])
    return names


def assign(symbols: Sequence[Symbol], sonames: Sequence[str]) -> Dict[str, List[Symbol]]:
    """Distribute the symbols over the missing libraries (every library gets a file, maybe empty)."""
    if not sonames:
        raise StandinError("no missing library to put the stand-in symbols in")
    default = next((s for s in sonames if s.startswith("libnvinfer.so")), sonames[0])
    plan: Dict[str, List[Symbol]] = {soname: [] for soname in sonames}
    for symbol in symbols:
        target = default
        for pattern, library_hint in LIBRARY_HINTS:
            if pattern.search(symbol.name):
                target = next((s for s in sonames if library_hint in s), default)
                break
        plan[target].append(symbol)
    return plan


def encoded_version(version: str) -> int:
    """TensorRT's ``getInferLibVersion`` encoding: 8.6.1 → 8601, 10.3.0 → 100300, 11.4.0 → 110400."""
    parts = [int(part) for part in re.findall(r"\d+", version)[:3]] + [0, 0, 0]
    major, minor, patch = parts[:3]
    if major < 10:
        return major * 1000 + minor * 100 + patch
    return major * 10000 + minor * 100 + patch


def c_source(soname: str, symbols: Sequence[Symbol], version_number: int) -> str:
    """A C file defining every symbol: functions return 0 (versions: ``version_number``)."""
    lines = [
        f"/* Stand-in for {soname}, generated by tests/trt_conformance/standins.py. Does nothing. */",
        "",
    ]
    for index, symbol in enumerate(symbols):
        label = f'__asm__("{symbol.name}")'
        if symbol.kind == "OBJECT":
            size = max(symbol.size, 64)
            lines.append(f"unsigned char standin_data_{index}[{size}] {label};")
            continue
        value = version_number if VERSION_FUNCTION.match(symbol.name) else 0
        lines.append(f"long standin_{index}(void) {label};")
        lines.append(f"long standin_{index}(void) {{ return {value}L; }}")
    return "\n".join(lines) + "\n"


def build(site_packages: Path, out: Path, version: str) -> List[Path]:
    """Write and compile the stand-ins for the bindings under ``site_packages`` into ``out``."""
    extension = find_extension(site_packages)
    needed = needed_libraries(extension)
    missing = [name for name, path in needed.items() if path is None]
    present = [path for path in needed.values() if path and os.path.isfile(path)]
    provided = defined_symbols(present)
    symbols = [s for s in undefined_symbols(extension) if s.name not in provided]
    logger.info("%s needs %s; %d symbols to stand in", extension.name, ", ".join(missing), len(symbols))
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for soname, assigned in assign(symbols, missing).items():
        source = out / f"{soname}.c"
        source.write_text(c_source(soname, assigned, encoded_version(version)))
        target = out / soname
        _run(["gcc", "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o", str(target), str(source)])
        built.append(target)
    return built


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-packages", type=Path, required=True, help="where the bindings are installed")
    parser.add_argument("--out", type=Path, required=True, help="folder for the stand-in libraries")
    parser.add_argument("--version", default="0.0.0", help="bindings version, for get*Version functions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        for path in build(args.site_packages, args.out, args.version):
            logger.info("built %s", path)
    except StandinError as error:
        logger.error("stand-ins: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
