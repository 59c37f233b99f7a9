#!/usr/bin/env bash
# Check the fake TensorRT module (tests/fake_tensorrt.py) and the project's TensorRT calls against the
# REAL TensorRT Python bindings of each supported version, without a GPU or TensorRT:
#   1. installs each bindings wheel from PyPI (pip --no-deps) into its own venv under .trt-conformance/,
#   2. builds stand-in libnvinfer/libnvonnxparser/... libraries so the real bindings import,
#   3. dumps each version's public surface (classes, methods and pybind11 signatures, enums),
#   4. runs the unit tests that use the fake with the trace plugin (what the project calls, with what),
#   5. checks the fake and the trace against the surfaces and prints one line per TensorRT version.
# Exits 1 on a missing name or an argument that does not convert, 2 when it cannot set itself up.
# Everything is cached in .trt-conformance/ (git-ignored); delete it to start again.
# Environment: TRT_CONFORMANCE_PYTHONS="python3.11 /opt/py38/bin/python3" tries those interpreters first;
# TRT_CONFORMANCE_CACHE=DIR puts the cache elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${TRT_CONFORMANCE_CACHE:-.trt-conformance}
# label|pip requirement; the label is the surface file's name and the version the checker maps to.
targets=(
    "8.6.1|tensorrt-bindings==8.6.1"
    "10.3.0|tensorrt-cu12-bindings==10.3.0"
    "10.13.3.9|tensorrt-cu12-bindings==10.13.3.9"
    "11.4.0.106|tensorrt-cu13-bindings==11.4.0.106"
)
fake_versions=(8.2 8.5 8.6 10.3 10.13 11.4)
machine=$(uname -m)
platforms=(--platform "manylinux_2_28_$machine" --platform "manylinux_2_17_$machine" --platform "manylinux2014_$machine")

# What pip logs when it cannot talk to the index (it then also says "No matching distribution").
network_errors="could not fetch url|connection|max retries|name resolution|network is unreachable|timed out|proxyerror|sslerror|name or service not known"

say() { echo "trt-conformance: $*"; }
fail() {
    echo "trt-conformance: $*" >&2
    exit 2
}

# -- the project's virtualenv (pytest, the fake's dependencies) and the build tools ---------------------
tools=()
command -v gcc >/dev/null || tools+=(gcc libc6-dev)
command -v readelf >/dev/null && command -v nm >/dev/null || tools+=(binutils)
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import pytest, numpy, onnx" 2>/dev/null || [ ${#tools[@]} -gt 0 ]; then
    say "setting up .venv (scripts/bootstrap.sh)"
    bash scripts/bootstrap.sh "cpu,dev" "${tools[@]}" ||
        fail "could not set up the project's .venv (is the package index reachable?); see the messages above"
fi
project_python=.venv/bin/python
mkdir -p "$cache/wheels" "$cache/surfaces" "$cache/logs"
cache=$(cd "$cache" && pwd)

# -- interpreters to try for the wheels (their cpXY tags differ per TensorRT release) -------------------
interpreters=()
add_interpreter() {
    local path
    path=$(command -v "$1" 2>/dev/null) || return 0
    "$path" -c 'import sys, venv; sys.exit(not (3, 6) <= sys.version_info[:2])' 2>/dev/null || return 0
    for known in "${interpreters[@]}"; do [ "$known" = "$path" ] && return 0; done
    interpreters+=("$path")
}
for candidate in ${TRT_CONFORMANCE_PYTHONS:-} python3 python3.11 python3.10 python3.9 python3.8 python3.12 python3.13; do
    add_interpreter "$candidate"
done
for candidate in "$HOME"/.pyenv/versions/3.*/bin/python3; do
    [ -x "$candidate" ] && add_interpreter "$candidate"
done
[ ${#interpreters[@]} -gt 0 ] || fail "no Python 3 interpreter with the venv module found"

py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }

# Download the wheel of requirement $1 for Python $2 (X.Y) into the wheel cache; print its path.
# Returns 1 when the index has no wheel for that Python, exits 2 when the index cannot be reached.
fetch_wheel() {
    local requirement=$1 version=$2 dist tag found log
    dist=${requirement%%==*}
    dist=${dist//-/_}
    tag="cp${version/./}"
    found=$(find "$cache/wheels" -name "${dist}-${requirement##*==}-${tag}-*.whl" -print -quit)
    if [ -z "$found" ]; then
        log="$cache/logs/download-${dist}-${tag}.log"
        if ! "$project_python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
            "${platforms[@]}" --timeout 20 --retries 1 -d "$cache/wheels" "$requirement" >"$log" 2>&1; then
            if grep -q -i -E "$network_errors" "$log"; then
                fail "cannot reach the package index to download $requirement (is PyPI reachable from here? a proxy?); pip's log: $log"
            fi
            if grep -q -e "No matching distribution" -e "Could not find a version" "$log"; then
                return 1
            fi
            fail "pip could not download $requirement; its log: $log"
        fi
        found=$(find "$cache/wheels" -name "${dist}-${requirement##*==}-${tag}-*.whl" -print -quit)
    fi
    [ -n "$found" ] && echo "$found"
}

# Make $cache/venv-<label> with the bindings of requirement $2; print its directory.
prepare_venv() {
    local label=$1 requirement=$2 venv="$cache/venv-$1" python version wheel status
    if [ -f "$venv/.ready" ]; then
        echo "$venv"
        return 0
    fi
    rm -rf "$venv"
    for python in "${interpreters[@]}"; do
        version=$(py_version "$python")
        wheel=$(fetch_wheel "$requirement" "$version") || {
            status=$?
            [ "$status" -eq 1 ] && continue
            exit "$status"
        }
        "$python" -m venv --without-pip "$venv" >/dev/null ||
            fail "cannot create a venv with $python (install python$version-venv)"
        "$project_python" -m pip --python "$venv/bin/python" install --quiet --no-deps --no-index "$wheel" ||
            fail "cannot install $wheel into $venv"
        touch "$venv/.ready"
        echo "$venv"
        return 0
    done
    fail "no wheel of $requirement for any Python here (${interpreters[*]}); install another Python 3 and set TRT_CONFORMANCE_PYTHONS"
}

# -- per version: bindings, stand-ins, surface ---------------------------------------------------------
surface_args=()
for target in "${targets[@]}"; do
    label=${target%%|*}
    requirement=${target#*|}
    venv=$(prepare_venv "$label" "$requirement")
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$project_python" -m tests.trt_conformance.standins --site-packages "$site" --out "$cache/standins-$label" \
        --version "$label" >"$cache/logs/standins-$label.log" 2>&1 ||
        fail "building the stand-in libraries for $label failed: $(tail -n 1 "$cache/logs/standins-$label.log")"
    LD_LIBRARY_PATH="$cache/standins-$label${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
        "$venv/bin/python" -m tests.trt_conformance.dump_surface --out "$cache/surfaces/$label.json" \
        >"$cache/logs/surface-$label.log" 2>&1 ||
        fail "importing the real bindings $label failed: $(tail -n 1 "$cache/logs/surface-$label.log")"
    say "$(tail -n 1 "$cache/logs/surface-$label.log") (Python $(py_version "$venv/bin/python"))"
    surface_args+=(--surface "$cache/surfaces/$label.json")
done

# -- the project's calls into the fake, traced while its unit tests run -----------------------------------
mapfile -t fake_tests < <(grep -l -r --include='test_*.py' fake_tensorrt tests/unit | grep -v test_trt_conformance | sort)
[ ${#fake_tests[@]} -gt 0 ] || fail "no unit test uses tests/fake_tensorrt.py"
trace="$cache/trace.json"
rm -f "$trace"
say "tracing ${#fake_tests[@]} test file(s): ${fake_tests[*]}"
pytest_status=0
"$project_python" -m pytest -q -p no:cacheprovider -p tests.trt_conformance.trace --trt-trace "$trace" \
    "${fake_tests[@]}" >"$cache/logs/pytest.log" 2>&1 || pytest_status=$?
say "pytest: $(tail -n 1 "$cache/logs/pytest.log")"
if [ "$pytest_status" -ne 0 ]; then
    say "warning: some traced tests failed or errored (exit $pytest_status): their calls after the failure are not in the trace; see $cache/logs/pytest.log"
fi
[ -f "$trace" ] || fail "the trace plugin wrote no $trace; see $cache/logs/pytest.log"

# -- the check ----------------------------------------------------------------------------------------
fake_args=()
for version in "${fake_versions[@]}"; do fake_args+=(--fake-version "$version"); done
status=0
"$project_python" -m tests.trt_conformance.check "${surface_args[@]}" "${fake_args[@]}" --trace "$trace" \
    --show errors --report "$cache/report.txt" || status=$?
say "full report (warnings and per-version information included): $cache/report.txt"
exit "$status"
