#!/usr/bin/env bash
# The appliance's main job on a sample, on the CPU back-end: set up, fetch the models (from the
# ../shared/models mirror when it is there, else from their upstream URLs), check the installation,
# enrol two people from photos, then run the daemon on a sample video and show each access event as
# it is written to the outbox (and published, when a broker listens on localhost:1883).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh cpu
# .venv is made by bootstrap.sh at run time, not a file of the repository for shellcheck to follow.
# shellcheck source=/dev/null
. .venv/bin/activate

config=config/demo.toml
if [ -d ../shared/models ]; then
    face-appliance models fetch --config "$config" --from ../shared/models
else
    face-appliance models fetch --config "$config"
fi
face-appliance doctor --config "$config" --no-smoke

samples=../shared/data
if [ ! -d "$samples" ]; then
    echo "demo: ../shared/data (photos and the sample video) is not here; stopping after the checks"
    exit 0
fi

echo "== enrolling two people (one photo folder each)"
rm -rf var/demo var/demo-people
mkdir -p "var/demo-people/Lin-Manuel Miranda" "var/demo-people/Alex Lacamoire"
cp "$samples/faces/fr_lin_manuel_miranda/"* "var/demo-people/Lin-Manuel Miranda/"
cp "$samples/faces/fr_alex_lacamoire/"* "var/demo-people/Alex Lacamoire/"
face-appliance --log-level WARNING enroll --config "$config" --from-dir var/demo-people --largest

echo "== the door: face-appliance run on $samples/video/fr_short_hamilton_clip.mp4"
echo "   (one JSON access event per person and passage; Ctrl-C stops)"
face-appliance run --config "$config" --print-events
