#!/usr/bin/env bash
# Install the face access appliance as a systemd service on a device (Jetson or any Linux box).
#
#   sudo systemd/install.sh                 install or upgrade from this checkout
#   systemd/install.sh --dry-run            print what would be done, change nothing (no root needed)
#   systemd/install.sh --root DIR ...       install under DIR instead of / (an image, or a test):
#                                           no user creation, ownership changes or systemctl
#
# Idempotent: run it again to upgrade. An existing appliance.toml and existing credentials are
# never overwritten; the unit file and the virtualenv are updated.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: install.sh [options]

  --dry-run             print every action without doing it (no root needed)
  --root DIR            install below DIR instead of / (implies: no useradd/usermod, no chown,
                        no systemctl); for building images and for tests
  --source DIR          the checkout to install from (default: the one holding this script)
  --python PATH         interpreter for the virtualenv (default: python3)
  --extra cpu|jetson    which pip extra to install (default: jetson if /etc/nv_tegra_release exists)
  --no-venv             do not create or update the virtualenv in /opt/face-appliance
  --no-enable           install the unit but do not enable it
  --systemd-version N   the target's systemd version (default: from systemctl --version); below
                        247 (JetPack 5) credentials are passed through a drop-in instead
  -h, --help            this text
EOF
}

SERVICE="face-appliance"
SERVICE_USER="face-appliance"
DRY_RUN=0
ROOT=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="python3"
EXTRA=""
WITH_VENV=1
ENABLE=1
SYSTEMD_VERSION=""

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while (($#)); do
    case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --root | --prefix)
        (($# >= 2)) || die "$1 needs a directory"
        ROOT="${2%/}"
        shift
        ;;
    --source)
        (($# >= 2)) || die "$1 needs a directory"
        SOURCE="$2"
        shift
        ;;
    --python)
        (($# >= 2)) || die "$1 needs a path"
        PYTHON="$2"
        shift
        ;;
    --extra)
        (($# >= 2)) || die "$1 needs cpu or jetson"
        EXTRA="$2"
        shift
        ;;
    --no-venv) WITH_VENV=0 ;;
    --no-enable) ENABLE=0 ;;
    --systemd-version)
        (($# >= 2)) || die "$1 needs a number"
        SYSTEMD_VERSION="$2"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        echo "install.sh: unknown option: $1" >&2
        exit 2
        ;;
    esac
    shift
done

# --- where things go ---------------------------------------------------------------------------
ETC_DIR="$ROOT/etc/face-appliance"
CONFIG="$ETC_DIR/appliance.toml"
CRED_DIR="$ETC_DIR/credentials"
STATE_DIR="$ROOT/var/lib/face-appliance"
OPT_DIR="$ROOT/opt/face-appliance"
DOC_DIR="$OPT_DIR/share/doc/face-appliance"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/$SERVICE.service"
DROPIN_DIR="$UNIT_DIR/$SERVICE.service.d"
CRED_DROPIN="$DROPIN_DIR/10-credentials-directory.conf"
# Credentials exist from systemd 247 (LoadCredential=); JetPack 5 ships 245.
CREDENTIALS_SINCE=247

# --- checks ------------------------------------------------------------------------------------
[[ -f "$SOURCE/setup.py" && -f "$SOURCE/config/appliance.toml" && -f "$SOURCE/systemd/$SERVICE.service" ]] ||
    die "$SOURCE is not a face-appliance checkout (setup.py, config/appliance.toml, systemd/$SERVICE.service)"
if [[ -n "$ROOT" && ! -d "$ROOT" ]]; then
    die "--root $ROOT does not exist"
fi
if ((!DRY_RUN)) && [[ -z "$ROOT" ]] && ((EUID != 0)); then
    die "run as root (sudo $0), or try --dry-run"
fi
SYSTEM_ACTIONS=1 # users, ownership, systemctl: only on the live system
[[ -n "$ROOT" ]] && SYSTEM_ACTIONS=0

if [[ -z "$EXTRA" ]]; then
    if [[ -e "$ROOT/etc/nv_tegra_release" ]]; then EXTRA="jetson"; else EXTRA="cpu"; fi
fi
[[ "$EXTRA" == "cpu" || "$EXTRA" == "jetson" ]] || die "--extra must be cpu or jetson, got '$EXTRA'"

if [[ -z "$SYSTEMD_VERSION" ]]; then
    if [[ -z "$ROOT" ]] && command -v systemctl >/dev/null; then
        SYSTEMD_VERSION="$(systemctl --version | awk 'NR == 1 { print $2 }')"
    else
        SYSTEMD_VERSION="$CREDENTIALS_SINCE" # an image or a test: assume credentials work
        echo "note: target systemd version unknown, assuming $SYSTEMD_VERSION or later (--systemd-version N to say)"
    fi
fi
[[ "$SYSTEMD_VERSION" =~ ^[0-9]+$ ]] || die "cannot tell the systemd version ('$SYSTEMD_VERSION'); pass --systemd-version"

# --- helpers -----------------------------------------------------------------------------------
say() { printf '%-8s %s\n' "$1" "$2"; }

# run CMD...: do it, or print it under --dry-run.
run() {
    if ((DRY_RUN)); then
        echo "[dry-run] $(printf '%q ' "$@")"
    else
        "$@"
    fi
}

# make_dir PATH MODE OWNER:GROUP
make_dir() {
    local path="$1" mode="$2" owner="$3"
    if [[ -d "$path" ]]; then say "keep" "$path/"; else say "create" "$path/ ($mode $owner)"; fi
    run mkdir -p "$path"
    run chmod "$mode" "$path"
    if ((SYSTEM_ACTIONS)); then run chown "$owner" "$path"; fi
}

# set_owner PATH MODE OWNER:GROUP
set_owner() {
    run chmod "$2" "$1"
    if ((SYSTEM_ACTIONS)); then run chown "$3" "$1"; fi
}

# write_new_file PATH MODE OWNER:GROUP PRODUCER...: create PATH from PRODUCER's stdout, only if absent.
write_new_file() {
    local path="$1" mode="$2" owner="$3" why="$4"
    shift 4
    if [[ -e "$path" ]]; then
        say "keep" "$path (exists; never overwritten: $why)"
        return 0
    fi
    say "create" "$path ($mode $owner)"
    if ((DRY_RUN)); then
        echo "[dry-run] $* > $path"
        return 0
    fi
    local tmp
    tmp="$(mktemp "$path.XXXXXX")"
    chmod 0600 "$tmp"
    "$@" >"$tmp"
    set_owner "$tmp" "$mode" "$owner"
    mv "$tmp" "$path"
}

random_key_hex() { head -c 32 /dev/urandom | od -An -tx1 -v | tr -d ' \n'; echo; }
empty() { :; }

echo "Installing $SERVICE from $SOURCE into ${ROOT:-/} (extra: $EXTRA, systemd $SYSTEMD_VERSION)$( ((DRY_RUN)) && echo ' [dry run]')"

# --- 1. system user ----------------------------------------------------------------------------
if ((SYSTEM_ACTIONS)); then
    if getent group "$SERVICE_USER" >/dev/null; then
        say "keep" "group $SERVICE_USER"
    else
        say "create" "system group $SERVICE_USER"
        run groupadd --system "$SERVICE_USER"
    fi
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "keep" "user $SERVICE_USER"
    else
        say "create" "system user $SERVICE_USER (no login, no home)"
        run useradd --system --gid "$SERVICE_USER" --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "Face access appliance" "$SERVICE_USER"
    fi
    # video: cameras and the L4T GPU nodes; render: DRM render nodes (JetPack 6); gpio: /dev/gpiochip*
    # (the udev rule of Jetson.GPIO, 99-gpio.rules, makes it); dialout: serial ports (the OSDP bus) —
    # each where it exists.
    for group in video render gpio dialout; do
        if ! getent group "$group" >/dev/null; then
            [[ "$group" == "video" ]] && echo "warning: no group 'video' on this system; camera and GPU access may fail" >&2
            continue
        fi
        if id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
            say "keep" "$SERVICE_USER in group $group"
        else
            say "add" "$SERVICE_USER to group $group"
            run usermod --append --groups "$group" "$SERVICE_USER"
        fi
    done
else
    say "skip" "user/group $SERVICE_USER and groups video/render/gpio/dialout (--root: create them on the target)"
fi

# --- 2. configuration --------------------------------------------------------------------------
make_dir "$ETC_DIR" 0750 "root:$SERVICE_USER"

# A fresh config takes the gallery key from the systemd credential created below, unless a
# gallery already exists in the state directory with its own key (that one must stay in use).
# (The ${CREDENTIALS_DIRECTORY} below is literal text of the TOML file, not a shell expansion.)
# shellcheck disable=SC2016
fresh_config() {
    if [[ -e "$STATE_DIR/gallery.key" || -e "$STATE_DIR/gallery.db" ]]; then
        cat "$SOURCE/config/appliance.toml"
    else
        sed 's|^# key_file = "${CREDENTIALS_DIRECTORY}/gallery_key"$|key_file = "${CREDENTIALS_DIRECTORY}/gallery_key"|' \
            "$SOURCE/config/appliance.toml"
    fi
}
write_new_file "$CONFIG" 0640 "root:$SERVICE_USER" "it holds your settings" fresh_config
# shellcheck disable=SC2016
if ((!DRY_RUN)) && [[ -f "$CONFIG" ]] && ! grep -q '^key_file = "${CREDENTIALS_DIRECTORY}/gallery_key"' "$CONFIG"; then
    echo "note: $CONFIG does not take gallery.key_file from the credential; the gallery keeps its key in $STATE_DIR/gallery.key"
fi

# --- 3. credentials (root only; systemd copies them to the service at start) ----------------------
if ((SYSTEMD_VERSION >= CREDENTIALS_SINCE)); then
    cred_dir_mode=0700 cred_mode=0600 cred_owner="root:root"
else
    # No LoadCredential= before systemd 247: the service reads the directory itself, as its group.
    cred_dir_mode=0750 cred_mode=0640 cred_owner="root:$SERVICE_USER"
fi
make_dir "$CRED_DIR" "$cred_dir_mode" "$cred_owner"
# The gallery key encrypts every template and enrollment crop (AES-256-GCM). A new key would make
# the existing gallery unreadable, i.e. every enrolled person lost: it is created once, never
# replaced. Back it up offline.
write_new_file "$CRED_DIR/gallery_key" "$cred_mode" "$cred_owner" \
    "replacing it makes the enrolled gallery unreadable" random_key_hex
# Placeholders: systemd refuses to start a unit whose LoadCredential= source is missing.
write_new_file "$CRED_DIR/mqtt_password" "$cred_mode" "$cred_owner" "it holds the broker password" empty
write_new_file "$CRED_DIR/package_public_key" "$cred_mode" "$cred_owner" \
    "it decides which model packages are trusted" empty
# The SecurityAccess secret of the UDS server: give the same file to push-model (--secret-file).
write_new_file "$CRED_DIR/uds_secret" "$cred_mode" "$cred_owner" \
    "push-model tools hold the same secret" random_key_hex
# The fleet ([fleet]): the site's key and the enrolment authority's public key, from the authority
# (face-appliance fleet init); the OSDP Secure Channel key ([osdp]), the panel's. Placeholders.
write_new_file "$CRED_DIR/fleet_key" "$cred_mode" "$cred_owner" "every door of the site holds the same key" empty
write_new_file "$CRED_DIR/fleet_key_previous" "$cred_mode" "$cred_owner" \
    "it opens what was sealed before the site's last key rotation" empty
write_new_file "$CRED_DIR/fleet_authority_key" "$cred_mode" "$cred_owner" \
    "it decides whose fleet records are trusted" empty
write_new_file "$CRED_DIR/osdp_scbk" "$cred_mode" "$cred_owner" "the access panel holds the same key" empty
if ((!DRY_RUN)); then
    for cred in gallery_key mqtt_password package_public_key uds_secret fleet_key fleet_key_previous \
        fleet_authority_key osdp_scbk; do
        set_owner "$CRED_DIR/$cred" "$cred_mode" "$cred_owner"
    done
fi

# --- 4. state directory (also made by StateDirectory= at start; models are fetched before) ------
make_dir "$STATE_DIR" 0700 "$SERVICE_USER:$SERVICE_USER"

# --- 5. virtualenv with the appliance -----------------------------------------------------------
if ((WITH_VENV)) && [[ -n "$ROOT" ]]; then
    say "skip" "virtualenv (--root: a virtualenv is not relocatable; run install.sh on the target)"
elif ((WITH_VENV)); then
    if [[ "$EXTRA" == "jetson" ]]; then
        # JetPack's TensorRT and OpenCV (with GStreamer) are apt packages built against NumPy 1.x:
        # the venv sees them through --system-site-packages, pip must not install an OpenCV wheel
        # over them, and NumPy stays below 2. pycuda is compiled here and needs nvcc on PATH.
        packages=("${SOURCE}[jetson,systemd]" "onnxruntime[symbolic]>=1.15,<1.27" "numpy<2")
        pip_env=(env "PATH=/usr/local/cuda/bin:$PATH")
    else
        packages=("${SOURCE}[cpu,systemd]")
        pip_env=()
    fi
    # systemd-python sends READY=1 and the watchdog pings of this Type=notify unit (without it the
    # start times out) and the journal's structured records: apt's python3-systemd, which the venv
    # sees through --system-site-packages, or pip builds it against libsystemd-dev.
    if ((!DRY_RUN)) && ! "$PYTHON" -c 'import systemd.daemon' >/dev/null 2>&1 &&
        ! pkg-config --exists libsystemd >/dev/null 2>&1; then
        die "systemd-python is missing for $PYTHON: apt-get install python3-systemd (or libsystemd-dev pkg-config gcc and the Python headers, to build it)"
    fi
    if [[ -x "$OPT_DIR/bin/python" ]]; then
        say "keep" "virtualenv $OPT_DIR (upgrading the packages)"
    else
        say "create" "virtualenv $OPT_DIR (--system-site-packages, $PYTHON)"
        if ((!DRY_RUN)) && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
            die "$PYTHON cannot create virtualenvs: apt-get install python3-venv"
        fi
        run "$PYTHON" -m venv --system-site-packages "$OPT_DIR"
    fi
    say "install" "${packages[*]}"
    run "$OPT_DIR/bin/python" -m pip install --upgrade pip
    run "${pip_env[@]}" "$OPT_DIR/bin/python" -m pip install --upgrade "${packages[@]}"
    if ((!DRY_RUN)) && [[ "$EXTRA" == "jetson" ]]; then
        cv2_path="$("$OPT_DIR/bin/python" -c 'import cv2; print(cv2.__file__)' 2>/dev/null || true)"
        case "$cv2_path" in
        "") echo "warning: cv2 does not import in $OPT_DIR; install JetPack's OpenCV (apt-get install nvidia-opencv)" >&2 ;;
        "$OPT_DIR"/*) echo "warning: cv2 comes from the virtualenv ($cv2_path), not JetPack: no GStreamer/CSI; pip uninstall opencv-python opencv-python-headless" >&2 ;;
        *) say "ok" "cv2 from $cv2_path" ;;
        esac
    fi
else
    say "skip" "virtualenv $OPT_DIR (--no-venv)"
fi

# --- 6. unit file and docs ----------------------------------------------------------------------
make_dir "$DOC_DIR" 0755 "root:root"
if cmp -s "$SOURCE/systemd/README.md" "$DOC_DIR/systemd.md"; then
    say "keep" "$DOC_DIR/systemd.md"
else
    say "install" "$DOC_DIR/systemd.md"
    run install -m 0644 "$SOURCE/systemd/README.md" "$DOC_DIR/systemd.md"
fi
if [[ ! -d "$UNIT_DIR" ]]; then
    make_dir "$UNIT_DIR" 0755 "root:root"
fi
if cmp -s "$SOURCE/systemd/$SERVICE.service" "$UNIT"; then
    say "keep" "$UNIT (unchanged)"
else
    say "install" "$UNIT (local changes belong in a drop-in: systemctl edit $SERVICE)"
    run install -m 0644 "$SOURCE/systemd/$SERVICE.service" "$UNIT"
fi
if ((SYSTEMD_VERSION < CREDENTIALS_SINCE)); then
    make_dir "$DROPIN_DIR" 0755 "root:root"
    say "install" "$CRED_DROPIN (systemd $SYSTEMD_VERSION has no LoadCredential=)"
    if ((DRY_RUN)); then
        echo "[dry-run] write $CRED_DROPIN"
    else
        cat >"$CRED_DROPIN" <<EOF
# Written by install.sh: systemd $SYSTEMD_VERSION predates LoadCredential= (247), so the service
# reads /etc/face-appliance/credentials directly (group $SERVICE_USER, mode 0750/0640) and
# \${CREDENTIALS_DIRECTORY} in appliance.toml points there.
[Service]
Environment=CREDENTIALS_DIRECTORY=/etc/face-appliance/credentials
EOF
        chmod 0644 "$CRED_DROPIN"
    fi
elif [[ -e "$CRED_DROPIN" ]]; then
    say "remove" "$CRED_DROPIN (systemd $SYSTEMD_VERSION has LoadCredential=)"
    run rm -f "$CRED_DROPIN"
fi

# --- 7. systemd -------------------------------------------------------------------------------------
if ((SYSTEM_ACTIONS)); then
    run systemctl daemon-reload
    if ((ENABLE)); then
        say "enable" "$SERVICE (starts at boot; not started now)"
        run systemctl enable "$SERVICE"
    fi
else
    say "skip" "systemctl daemon-reload / enable (--root: systemctl --root=$ROOT enable $SERVICE)"
fi

cat <<EOF

Next steps:
  1. Models:  sudo -u $SERVICE_USER /opt/face-appliance/bin/face-appliance models fetch --dest /var/lib/face-appliance/models
              (add --from DIR_OR_URL to fetch from a local mirror)
  2. Config:  edit /etc/face-appliance/appliance.toml (device.id, camera.source, mqtt.*, backend.type).
              Broker password: write it to /etc/face-appliance/credentials/mqtt_password, then set
              mqtt.username and mqtt.password_file = "\${CREDENTIALS_DIRECTORY}/mqtt_password".
              Model-package verification key: /etc/face-appliance/credentials/package_public_key.
              Back up /etc/face-appliance/credentials/gallery_key offline: without it the gallery is lost.
  3. Check:   sudo CREDENTIALS_DIRECTORY=/etc/face-appliance/credentials \\
                /opt/face-appliance/bin/face-appliance config check --config /etc/face-appliance/appliance.toml
  4. Start:   sudo systemctl start $SERVICE
  5. Watch:   journalctl -u $SERVICE -f        (state: systemctl status $SERVICE)
EOF
