#!/usr/bin/env bash
# Set up (system packages, .venv, the project with its cpu and dev extras) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k fetch; --setup-only sets up and stops there.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: systemd-analyze for the unit's checks, systemd-journald and journalctl for the journal test.
bash scripts/bootstrap.sh "cpu,dev,door,osdp" mosquitto systemd socat python3-libgpiod
# .venv is made by bootstrap.sh at run time, not a file of the repository for shellcheck to follow.
# shellcheck source=/dev/null
. .venv/bin/activate
python -c "import systemd.daemon, systemd.journal" # systemd-python, built by pip from the dev extra
if [ "${1:-}" = --setup-only ]; then exit 0; fi
python -m pytest "$@"
