#!/usr/bin/env bash
# Set up this checkout on a fresh Debian/Ubuntu machine: system packages, a virtualenv in .venv and
# the project installed (editable) with the given extras. Safe to run again; it only adds what is
# missing. Usage: scripts/bootstrap.sh EXTRAS [APT_PACKAGE...]
set -euo pipefail
cd "$(dirname "$0")/.."

extras=${1:-cpu}
shift || true
apt_packages=("$@")
python=${PYTHON:-python3}
venv=${VENV:-.venv}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "bootstrap: need root to run: $*" >&2; return 1; fi
}

# python3-venv is a separate package on Debian/Ubuntu; check by creating a throw-away venv.
if ! "$python" -m venv --without-pip /tmp/.face-appliance-venv-probe >/dev/null 2>&1; then
    apt_packages+=(python3-venv python3-pip)
fi
rm -rf /tmp/.face-appliance-venv-probe

# systemd-python (the systemd and dev extras) is a C extension that pip builds: libsystemd's headers,
# pkg-config, a compiler, and the interpreter's headers (python3.X-dev for Debian's own Python; a
# pyenv Python has its own).
case ",$extras," in
*,systemd,* | *,dev,*)
    apt_packages+=(libsystemd-dev pkg-config gcc)
    if ! "$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null; then
        apt_packages+=("python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev")
    fi
    ;;
esac

missing=()
for package in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing system packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv with $("$python" --version)"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
echo "bootstrap: installing face-appliance[$extras]"
"$venv/bin/python" -m pip install --quiet --editable ".[$extras]"
