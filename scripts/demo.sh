#!/usr/bin/env bash
# The appliance's main job on a sample, on the CPU back-end: set up, fetch the models (from the
# ../shared/models mirror when it is there, else from their upstream URLs), check the installation,
# then find, check (liveness) and describe the faces in sample photos.
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
samples=../shared/data
if [ -d "$samples" ]; then
    face-appliance detect --config "$config" --liveness \
        "$samples/multi_face/fr_two_people.jpg" "$samples/antispoof/image_T1.jpg" "$samples/antispoof/image_F2.jpg"
else
    echo "demo: ../shared/data is not here; skipping the sample photos"
fi
