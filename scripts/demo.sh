#!/usr/bin/env bash
# The appliance's main job on a sample, on the CPU back-end: set up, fetch the models (from the
# ../shared/models mirror when it is there, else from their upstream URLs), check the installation
# and run every model of the pipeline once.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh cpu
. .venv/bin/activate

config=config/demo.toml
if [ -d ../shared/models ]; then
    face-appliance models fetch --config "$config" --from ../shared/models
else
    face-appliance models fetch --config "$config"
fi
face-appliance doctor --config "$config"
