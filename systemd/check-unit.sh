#!/usr/bin/env bash
# Check the service unit the way CI does, without a running systemd:
#   1. systemd-analyze verify: unknown sections or keys, bad values, missing Exec binaries;
#   2. systemd-analyze security --offline: the exposure table, failing above a threshold;
#   3. which settings an older systemd (JetPack 4.6: 237, JetPack 5: 245, JetPack 6: 249) ignores.
#
# The unit's ExecStart/ExecStartPre point at /opt/face-appliance/bin/face-appliance, which only
# exists on an installed device; a copy with that path replaced by true(1) is checked instead.
#
# Usage: systemd/check-unit.sh [UNIT_FILE]
#   FACE_APPLIANCE_EXPOSURE_MAX  highest accepted exposure, in tenths (default 35, i.e. 3.5):
#                                systemd-analyze --threshold= compares the exposure times ten.
# Needs systemd-analyze 250 or later (--offline, --threshold, --recursive-errors).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
unit="${1:-$here/face-appliance.service}"
threshold="${FACE_APPLIANCE_EXPOSURE_MAX:-35}"
installed_binary="/opt/face-appliance/bin/face-appliance"

fail() {
    echo "check-unit: $*" >&2
    exit 1
}

command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (apt-get install systemd)"
version="$(systemd-analyze --version | awk 'NR == 1 { print $2 }')"
[[ "$version" =~ ^[0-9]+$ ]] || fail "cannot read the systemd version from: $(systemd-analyze --version | head -n 1)"
((version >= 250)) || fail "systemd-analyze $version is too old: --offline and --threshold need 250 or later"
[[ -f "$unit" ]] || fail "no unit file at $unit"
[[ "$threshold" =~ ^[0-9]+$ ]] || fail "FACE_APPLIANCE_EXPOSURE_MAX must be an integer (tenths), got '$threshold'"
true_binary="$(type -P true)" || fail "no true(1) executable on PATH"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
name="$(basename "$unit")"
copy="$work/$name"
sed -e "s#${installed_binary}#${true_binary}#g" "$unit" >"$copy"
grep -q "$installed_binary" "$copy" && fail "could not substitute $installed_binary in the copy"

echo "== systemd-analyze verify $name (systemd $version)"
# Without --recursive-errors, verify exits 0 even when it prints warnings; "no" makes warnings
# about this unit itself (not its dependencies) fail.
if ! verify_output="$(systemd-analyze verify --man=no --recursive-errors=no "$copy" 2>&1)"; then
    echo "$verify_output"
    fail "verify failed"
fi
if [[ -n "$verify_output" ]]; then
    echo "$verify_output"
    if grep -qF -e "$copy" -e "$name:" <<<"$verify_output"; then
        fail "verify warned about $name"
    fi
fi
echo "ok: no warnings"

echo
echo "== systemd-analyze security --offline=true --threshold=$threshold $name"
set +e
systemd-analyze security --offline=true --threshold="$threshold" --no-pager "$copy"
security_status=$?
set -e
if ((security_status != 0)); then
    fail "exposure above $((threshold / 10)).$((threshold % 10)) (or the analysis failed)"
fi

echo
echo "== settings an older systemd ignores (logged as 'Unknown key name', no effect)"
# First systemd version of each setting, from systemd.exec(5)/systemd.service(5) and NEWS.
declare -A since=(
    [RestrictAddressFamilies]=211 [MemoryDenyWriteExecute]=231 [RestrictRealtime]=231
    [ProtectKernelTunables]=232 [ProtectKernelModules]=232 [ProtectControlGroups]=232
    [RemoveIPC]=232 [RestrictNamespaces]=233 [LockPersonality]=235 [StateDirectory]=235
    [CacheDirectory]=235 [ConfigurationDirectory]=235 [StateDirectoryMode]=235
    [CacheDirectoryMode]=235 [ConfigurationDirectoryMode]=235 [PrivateMounts]=239
    [ProtectHostname]=242 [RestrictSUIDSGID]=242 [ProtectKernelLogs]=244 [ProtectClock]=245
    [LoadCredential]=247 [SetCredential]=247 [ProtectProc]=247 [ProcSubset]=247
    [PrivateIPC]=248 [LoadCredentialEncrypted]=250 [RestrictFileSystems]=250
)
for target in "237 (JetPack 4.6, Nano)" "245 (JetPack 5)" "249 (JetPack 6)"; do
    target_version="${target%% *}"
    ignored=()
    while IFS= read -r key; do
        first="${since[$key]:-}"
        if [[ -n "$first" ]] && ((first > target_version)); then
            ignored+=("$key (v$first)")
        fi
    done < <(sed -n 's/^\([A-Za-z]\+\)=.*/\1/p' "$unit" | sort -u)
    if ((${#ignored[@]})); then
        echo "systemd $target: $(printf '%s, ' "${ignored[@]}" | sed 's/, $//')"
    else
        echo "systemd $target: none"
    fi
done
