#!/usr/bin/env bash
# TensorRT and pycuda for Python 3.8 on a Jetson Nano (JetPack 4.6.x, L4T R32.7, TensorRT 8.2,
# CUDA 10.2), so the appliance's TensorRT back-end runs FP16 engines instead of the CPU fallback.
#
# NOT YET RUN ON A DEVICE. It was written from NVIDIA's instructions and checked with shellcheck and
# its --dry-run only; the first run on a Nano may need fixing. Report what failed, with the log.
#
# JetPack 4.6 ships Python 3.6 and TensorRT's bindings for 3.6 only; the appliance needs Python >= 3.8.
# This script:
#   1. installs python3.8, python3.8-dev and python3.8-venv from Ubuntu 18.04's own archive
#      (universe, bionic-updates) and the build tools (cmake, g++, git);
#   2. creates the appliance's virtualenv with python3.8 -m venv (or reuses one that runs 3.8);
#   3. builds TensorRT's Python bindings for 3.8 from NVIDIA's open-source TensorRT repository, branch
#      release/8.2, folder python/, as its README says for another Python version: pybind11 and the
#      Python 3.8 headers under EXT_PATH, then
#      PYTHON_MAJOR_VERSION=3 PYTHON_MINOR_VERSION=8 TARGET_ARCHITECTURE=aarch64 python/build.sh
#      (NVIDIA/TensorRT release/8.2: python/README.md, python/build.sh, python/CMakeLists.txt).
#      The bindings are compiled against JetPack's own TensorRT headers (/usr/include/aarch64-linux-gnu,
#      copied over the repository's include/ so the wheel carries the installed version) and linked
#      against JetPack's libraries (/usr/lib/aarch64-linux-gnu, through the build/ folder build.sh
#      links from). build.sh's "make -j12" runs out of memory on a 4 GB Nano: a copy of it runs
#      make with --jobs (default 2);
#   4. installs the wheel, numpy and pycuda (built from source for 3.8 against CUDA 10.2) into the
#      virtualenv, and checks that "import tensorrt" and "import pycuda.driver" work there.
#
# Usage: scripts/nano-tensorrt-py38.sh [--dry-run] [--workdir DIR] [--jobs N] [--rebuild] VENV
#   VENV       the appliance's virtualenv, e.g. /opt/face-appliance (created with python3.8 if absent)
#   --dry-run  print every step (and what a check found) without changing anything
#   --workdir  where sources and the build go (default /var/tmp/nano-tensorrt-py38, kept for re-runs)
#   --jobs     parallel compile jobs (default 2; each takes about 1 GB)
#   --rebuild  build the bindings again even if the wheel is there
# Safe to run again: every step checks what is already done. Root is needed for apt-get only (sudo).
set -euo pipefail

readonly TRT_BRANCH=release/8.2
readonly TRT_REPO=https://github.com/NVIDIA/TensorRT.git
readonly PYBIND11_REPO=https://github.com/pybind/pybind11.git
readonly PYBIND11_TAG=v2.6.2
readonly PYCUDA_SPEC=${PYCUDA_SPEC:-pycuda==2022.2.2}
readonly NUMPY_SPEC='numpy>=1.19,<1.25'
readonly TRT_INCLUDE=/usr/include/aarch64-linux-gnu
readonly TRT_LIBDIR=/usr/lib/aarch64-linux-gnu
readonly CUDA_HOME_DEFAULT=/usr/local/cuda
readonly APT_PACKAGES=(python3.8 python3.8-dev python3.8-venv build-essential cmake git)
readonly TRT_DEV_PACKAGES=(libnvinfer-dev libnvinfer-plugin-dev libnvparsers-dev libnvonnxparsers-dev)

dry_run=0
workdir=/var/tmp/nano-tensorrt-py38
jobs=2
rebuild=0
venv=

say() { printf 'nano-tensorrt: %s\n' "$*"; }
die() {
    printf 'nano-tensorrt: error: %s\n' "$*" >&2
    exit 1
}
usage() {
    sed -n 's/^# \{0,1\}//; /^Usage:/,/^Safe to run/p' "$0"
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --workdir) workdir=${2:?--workdir needs a folder}; shift ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift ;;
        --rebuild) rebuild=1 ;;
        -h | --help) usage 0 ;;
        -*) printf 'nano-tensorrt: unknown option %s\n' "$1" >&2; usage 2 ;;
        *)
            [ -z "$venv" ] || die "one virtualenv only (got $venv and $1)"
            venv=$1
            ;;
    esac
    shift
done
[ -n "$venv" ] || usage 2
case "$jobs" in '' | *[!0-9]*) die "--jobs takes a number, not $jobs" ;; esac
venv=$(realpath -m -- "$venv")
workdir=$(realpath -m -- "$workdir")
cuda_home=${CUDA_ROOT:-$CUDA_HOME_DEFAULT}
trt_src=$workdir/TensorRT
ext_path=$workdir/external
py=$venv/bin/python

# run CMD...: run a step, or print it with --dry-run.
# show CMD...: print a step as a shell line (arguments quoted as the shell needs them).
show() {
    printf '+'
    printf ' %q' "$@"
    printf '\n'
}

run() {
    show "$@"
    if [ "$dry_run" -eq 0 ]; then
        "$@"
    fi
}

# run_in DIR CMD...: run a step in DIR (a subshell), or print it.
run_in() {
    local dir=$1
    shift
    show cd "$dir"
    show "$@"
    if [ "$dry_run" -eq 0 ]; then
        (cd "$dir" && "$@")
    fi
}

# run_to FILE CMD...: run a step writing its output to FILE, or print it.
run_to() {
    local file=$1
    shift
    show "$@"
    printf '  (output to %s)\n' "$file"
    if [ "$dry_run" -eq 0 ]; then
        "$@" >"$file"
    fi
}

# fail_check MESSAGE: a precondition; fatal unless --dry-run, where it is reported and skipped.
fail_check() {
    if [ "$dry_run" -eq 1 ]; then
        say "check (would stop here): $*"
    else
        die "$*"
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        run "$@"
    elif command -v sudo >/dev/null 2>&1; then
        run sudo "$@"
    else
        fail_check "root is needed for: $* (no sudo)"
    fi
}

# -- 0. the board ----------------------------------------------------------------------------------
say "step 0: is this a Jetson Nano on JetPack 4.6.x (L4T R32) with TensorRT 8.2?"
release_line=$(head -n 1 /etc/nv_tegra_release 2>/dev/null || true)
case "$release_line" in
    '# R32 '*) say "L4T: ${release_line#\# }" ;;
    '') fail_check "no /etc/nv_tegra_release: not a Jetson (this script is for JetPack 4.6.x on a Nano)" ;;
    *) fail_check "this is not L4T R32 (JetPack 4): ${release_line#\# }; JetPack 5 and later ship Python 3.8+ bindings" ;;
esac
[ "$(uname -m)" = aarch64 ] || fail_check "not an aarch64 machine ($(uname -m))"
if [ ! -e "$TRT_LIBDIR/libnvinfer.so.8" ]; then
    fail_check "$TRT_LIBDIR/libnvinfer.so.8 is missing: install JetPack's TensorRT (sudo apt install nvidia-tensorrt)"
fi
trt_version=
if [ -r "$TRT_INCLUDE/NvInferVersion.h" ]; then
    trt_version=$(awk '/^#define NV_TENSORRT_(MAJOR|MINOR|PATCH|BUILD) / {printf "%s%s", sep, $3; sep="."}' \
        "$TRT_INCLUDE/NvInferVersion.h")
    case "$trt_version" in
        8.2.*) say "TensorRT $trt_version (headers in $TRT_INCLUDE)" ;;
        *) fail_check "TensorRT $trt_version is installed; this script builds the 8.2 bindings (JetPack 4.6.1 and later ship 8.2)" ;;
    esac
else
    say "TensorRT headers not installed yet (step 1 installs ${TRT_DEV_PACKAGES[*]})"
fi
[ -d "$cuda_home/include" ] || fail_check "CUDA not found at $cuda_home (set CUDA_ROOT; JetPack 4.6 has /usr/local/cuda-10.2)"

# -- 1. system packages ------------------------------------------------------------------------------
say "step 1: python3.8 from Ubuntu 18.04's universe, the build tools and TensorRT's headers"
missing=()
for package in "${APT_PACKAGES[@]}" "${TRT_DEV_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing: ${missing[*]}"
    as_root apt-get update
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; then
        die "apt-get could not install ${missing[*]}: python3.8 is in Ubuntu 18.04's universe component (sudo add-apt-repository universe), the TensorRT headers in NVIDIA's L4T repository that JetPack configures"
    fi
else
    say "all installed"
fi

# -- 2. the virtualenv --------------------------------------------------------------------------------
say "step 2: the virtualenv $venv (Python 3.8)"
if [ -x "$py" ]; then
    version=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$version" = 3.8 ] || fail_check "$venv runs Python $version; make it with python3.8 -m venv (or name another folder)"
    say "reusing $venv (Python $version)"
else
    # Not --system-site-packages: JetPack's Python modules (tensorrt, cv2, numpy) are built for 3.6.
    run python3.8 -m venv "$venv"
fi
# Bionic's python3.8-venv seeds pip 9, too old for manylinux2014 wheels (numpy on aarch64).
run "$py" -m pip install --quiet --upgrade pip setuptools wheel
run "$py" -m pip install --quiet "$NUMPY_SPEC"

# -- 3. TensorRT's Python bindings for 3.8 --------------------------------------------------------------
say "step 3: TensorRT $TRT_BRANCH Python bindings for Python 3.8 (python/build.sh)"
run mkdir -p "$workdir" "$ext_path"
if [ -d "$trt_src/.git" ]; then
    run git -C "$trt_src" fetch --depth 1 origin "$TRT_BRANCH"
    run git -C "$trt_src" checkout --force FETCH_HEAD
else
    run git clone --depth 1 --branch "$TRT_BRANCH" "$TRT_REPO" "$trt_src"
fi
if [ ! -f "$ext_path/pybind11/include/pybind11/pybind11.h" ]; then
    run git clone --depth 1 --branch "$PYBIND11_TAG" "$PYBIND11_REPO" "$ext_path/pybind11"
fi
# EXT_PATH/python3.8/include: Python.h, and pyconfig.h under aarch64-linux-gnu/python3.8 (CMakeLists.txt's
# find_path for PY_INCLUDE and PY_CONFIG_INCLUDE); Ubuntu's python3.8-dev has both.
run mkdir -p "$ext_path/python3.8/include/aarch64-linux-gnu/python3.8"
run cp -a /usr/include/python3.8/. "$ext_path/python3.8/include/"
run cp -a /usr/include/aarch64-linux-gnu/python3.8/pyconfig.h "$ext_path/python3.8/include/aarch64-linux-gnu/python3.8/"
# JetPack's headers over the repository's (TENSORRT_ROOT/include and parsers/onnx): the bindings match the
# library they load, and the wheel's version is the installed one.
run cp -a "$TRT_INCLUDE"/NvInfer*.h "$TRT_INCLUDE"/NvUffParser.h "$TRT_INCLUDE"/NvCaffeParser.h "$trt_src/include/"
run mkdir -p "$trt_src/parsers/onnx"
run cp -a "$TRT_INCLUDE"/NvOnnxParser.h "$TRT_INCLUDE"/NvOnnxConfig.h "$trt_src/parsers/onnx/"
# build.sh links from $TRT_OSSPATH/build/: JetPack's libraries there by their link-time names.
run mkdir -p "$trt_src/build"
for lib in nvinfer nvinfer_plugin nvparsers nvonnxparser; do
    run ln -sf "$TRT_LIBDIR/lib$lib.so.8" "$trt_src/build/lib$lib.so"
done
# build.sh as NVIDIA wrote it, but with --jobs instead of -j12 (a Nano has 4 GB).
if [ "$dry_run" -eq 0 ] && ! grep -q '^make -j12$' "$trt_src/python/build.sh"; then
    die "$trt_src/python/build.sh no longer has the 'make -j12' line this script adapts; check it by hand"
fi
say "build.sh runs make -j$jobs here instead of NVIDIA's make -j12 (build-nano.sh)"
run_to "$trt_src/python/build-nano.sh" sed "s/^make -j12\$/make -j$jobs/" "$trt_src/python/build.sh"
wheel=
if [ "$dry_run" -eq 0 ]; then
    wheel=$(find "$trt_src/python/build/dist" -name 'tensorrt-*-cp38-*.whl' 2>/dev/null | head -n 1 || true)
fi
if [ -z "$wheel" ] || [ "$rebuild" -eq 1 ]; then
    # python3 in build.sh's "python3 setup.py bdist_wheel" must be 3.8: the virtualenv first on PATH.
    run_in "$trt_src/python" env PATH="$venv/bin:$cuda_home/bin:$PATH" TRT_OSSPATH="$trt_src" EXT_PATH="$ext_path" \
        CUDA_ROOT="$cuda_home" PYTHON_MAJOR_VERSION=3 PYTHON_MINOR_VERSION=8 TARGET_ARCHITECTURE=aarch64 \
        bash build-nano.sh
    if [ "$dry_run" -eq 0 ]; then
        wheel=$(find "$trt_src/python/build/dist" -name 'tensorrt-*-cp38-*.whl' | head -n 1)
        [ -n "$wheel" ] || die "build.sh made no cp38 wheel in $trt_src/python/build/dist"
    fi
else
    say "the wheel is built already: $wheel (--rebuild builds it again)"
fi
run "$py" -m pip install --force-reinstall --no-deps "${wheel:-$trt_src/python/build/dist/tensorrt-${trt_version:-VERSION}-cp38-none-linux_aarch64.whl}"

# -- 4. pycuda for 3.8 against CUDA 10.2 ----------------------------------------------------------------
say "step 4: pycuda for Python 3.8, built against CUDA at $cuda_home"
if [ "$dry_run" -eq 0 ] && "$py" -c 'import pycuda.driver' >/dev/null 2>&1; then
    say "pycuda is installed: $("$py" -c 'import pycuda; print(pycuda.VERSION_TEXT)')"
else
    run env CUDA_ROOT="$cuda_home" PATH="$cuda_home/bin:$PATH" "$py" -m pip install --no-binary pycuda "$PYCUDA_SPEC"
fi

# -- 5. check ---------------------------------------------------------------------------------------------
say "step 5: check"
run "$py" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)'
run "$py" -c 'import pycuda.driver as cuda; cuda.init(); print("pycuda: CUDA devices:", cuda.Device.count())'
say "done. Install the appliance into $venv (pip install '.[jetson]'), set backend.type = \"tensorrt\" and run face-appliance doctor."
