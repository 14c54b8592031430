#!/usr/bin/env bash
# A real Home Assistant against the speaker (not part of CI: minutes with a cold cache).
#
# Home Assistant runs in a Debian trixie chroot (it needs Python >= 3.13.2), built once with
# debootstrap and kept, with its virtualenv, under $COZE_HA_CACHE (default
# /var/cache/coze-speaker-ha, outside the repo); later runs reuse it and take well under a
# minute. Each run:
#   1. starts mosquitto on a free loopback port (on this host; the chroot shares its network);
#   2. writes a fresh Home Assistant config dir: http on 127.0.0.1 only, MQTT debug logging,
#      the MQTT config entry in .storage/core.config_entries (no UI flow needed);
#   3. starts Home Assistant with --skip-pip (its integrations' requirements were installed
#      when the chroot was built: the frontend, or it starts in recovery mode without MQTT);
#   4. runs scripts/ha_check.py with this repo's virtualenv: it onboards (a user and a
#      token through the onboarding API), starts the fake Coze and the daemon (a real
#      process, real aplay into an ALSA file sink) and checks through Home Assistant's REST
#      and websocket APIs what a user sees. One line per check; exit 0 when all pass.
#
#   sudo scripts/ha-check.sh                          # newest Home Assistant
#   COZE_HA_VERSION=2026.2.3 sudo scripts/ha-check.sh  # that version (a chroot of its own)
#   COZE_HA_KEEP=1 sudo scripts/ha-check.sh            # keep the run's files (logs, HA config)
#
# Needs root (debootstrap, chroot, mounts); installs debootstrap and mosquitto when missing.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${COZE_HA_CACHE:-/var/cache/coze-speaker-ha}"
MIRROR="${COZE_HA_MIRROR:-http://deb.debian.org/debian}"
SUITE=trixie
HA_VERSION="${COZE_HA_VERSION:-}"
# Integrations whose requirements are installed (with those of their dependencies): the
# ones the check loads. Add one here when a check needs it (pip is skipped at run time).
HA_INTEGRATIONS="frontend mqtt notify event select switch sensor binary_sensor number button wyoming tts"
BASE_PACKAGES="ca-certificates,python3,python3-venv,tzdata"
# Some of Home Assistant's requirements have no wheel for every Python (lru-dict, pymicro-vad): compilers.
BUILD_PACKAGES="gcc g++ python3-dev libc6-dev"
ROOT="$CACHE/$SUITE-${HA_VERSION:-latest}"

die() { echo "ha-check: $*" >&2; exit 2; }
say() { echo "ha-check: $*"; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
case "$CACHE" in "$REPO"|"$REPO"/*) die "COZE_HA_CACHE must be outside the repository";; esac

start_time=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start_time )) s"; }

host_tools() {
  local missing=""
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$missing mosquitto"
  command -v aplay >/dev/null || missing="$missing alsa-utils"
  if [ -n "$missing" ]; then
    say "installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
}

# Everything mounted by this script, unmounted in reverse order whatever happens; every
# process started by it, stopped first.
MOUNTS=()
PIDS=()
cleanup() {
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do  # the last started first: HA before its broker
    kill "${PIDS[$i]}" 2>/dev/null || true
    for _ in $(seq 300); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${PIDS[$i]}" 2>/dev/null || true
  done
  PIDS=()
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
trap cleanup EXIT
trap 'echo "ha-check: stopped by a failure at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM
mnt() {  # mnt TARGET mount-args...
  local target="$1"; shift
  mkdir -p "$target"
  mountpoint -q "$target" && return 0
  mount "$@" "$target"
  MOUNTS+=("$target")
}
mount_all() {
  mnt "$ROOT/proc" -t proc proc
  mnt "$ROOT/sys" -t sysfs sysfs
  mnt "$ROOT/dev" --bind /dev
  mnt "$ROOT/dev/pts" --bind /dev/pts
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"  # pip, while building; nothing else uses it
}

in_chroot() {  # in_chroot COMMAND...: a clean environment, like a fresh login as root
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb TZ=UTC \
    PATH=/srv/ha/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180 "$@"
}

# The chroot: debootstrap once, then Home Assistant in a venv; reused while .complete exists.
build_chroot() {
  [ -f "$ROOT/.complete" ] && return 0
  local tmp="$ROOT.tmp"
  if [ ! -f "$tmp/.base" ]; then
    rm -rf "$tmp"
    say "building the $SUITE chroot (kept in $ROOT for the next runs)"
    debootstrap --variant=minbase --components=main --include="$BASE_PACKAGES" \
      "$SUITE" "$tmp" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 ||
      { tail -n 20 "$CACHE/debootstrap.log"; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    echo "deb $MIRROR $SUITE main" > "$tmp/etc/apt/sources.list"
    # The host's extra CAs (a TLS-inspecting proxy on some machines), for pip.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
      cp /usr/local/share/ca-certificates/*.crt "$tmp/usr/local/share/ca-certificates/"
      chroot "$tmp" /usr/sbin/update-ca-certificates >/dev/null 2>&1
    fi
    [ -s "$tmp/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$tmp/etc/hosts"
    chroot "$tmp" apt-get clean
    touch "$tmp/.base"
  fi
  local final="$ROOT"
  ROOT="$tmp"
  mount_all
  in_chroot apt-get update -qq > "$CACHE/apt.log" 2>&1 &&
    in_chroot env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $BUILD_PACKAGES \
      >> "$CACHE/apt.log" 2>&1 || { tail -n 20 "$CACHE/apt.log"; die "apt-get install failed (log: $CACHE/apt.log)"; }
  say "installing Home Assistant${HA_VERSION:+ $HA_VERSION} into the chroot"
  in_chroot python3 -m venv /srv/ha/venv
  in_chroot pip install -q --upgrade pip wheel > "$CACHE/pip.log" 2>&1 || { tail -n 20 "$CACHE/pip.log"; die "pip failed"; }
  in_chroot pip install -q "homeassistant${HA_VERSION:+==$HA_VERSION}" >> "$CACHE/pip.log" 2>&1 ||
    { tail -n 20 "$CACHE/pip.log"; die "pip install homeassistant failed (log: $CACHE/pip.log)"; }
  # The requirements of the integrations the check loads, and of their dependencies, at the
  # versions this Home Assistant pins in their manifests (Home Assistant itself is run with
  # --skip-pip, so nothing is installed while it starts).
  in_chroot python3 - $HA_INTEGRATIONS > "$ROOT/srv/ha/requirements.txt" <<'EOF'
import json, sys
from pathlib import Path
import homeassistant.components as c
base = Path(c.__file__).parent
seen, todo, reqs = set(), list(sys.argv[1:]), []
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    manifest = base / name / "manifest.json"
    if not manifest.exists():
        continue
    data = json.loads(manifest.read_text())
    reqs += data.get("requirements", [])
    todo += data.get("dependencies", []) + data.get("after_dependencies", [])
print("\n".join(sorted(set(reqs))))
EOF
  in_chroot pip install -q -r /srv/ha/requirements.txt >> "$CACHE/pip.log" 2>&1 ||
    { tail -n 20 "$CACHE/pip.log"; die "installing the integrations' requirements failed (log: $CACHE/pip.log)"; }
  in_chroot pip cache purge >/dev/null 2>&1 || true
  cleanup
  ROOT="$final"
  touch "$tmp/.complete"
  mv "$tmp" "$ROOT"
}

mkdir -p "$CACHE"
host_tools
build_chroot
say "chroot ready ($(elapsed))"

# This repo's virtualenv (as scripts/test.sh makes it): the daemon, the fake Coze, the check.
if [ ! -x "$REPO/.venv/bin/python" ]; then
  python3 -m venv "$REPO/.venv"
fi
"$REPO/.venv/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[test]"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
BROKER_PORT="$(free_port)"
HA_PORT="$(free_port)"
RUN="$ROOT/srv/ha/run"          # this run's files, inside the chroot (HA's config dir is there)
rm -rf "$RUN"
mkdir -p "$RUN/config/.storage" "$RUN/check"
[ -n "${COZE_HA_KEEP:-}" ] || trap 'cleanup; rm -rf "$RUN"' EXIT

# mosquitto on this host's loopback: the chroot shares the host's network.
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
printf '%s\n' "user root" "listener $BROKER_PORT 127.0.0.1" "allow_anonymous true" "persistence false" \
  "log_dest file $RUN/check/mosquitto.log" > "$RUN/check/mosquitto.conf"
"$MOSQUITTO" -c "$RUN/check/mosquitto.conf" >/dev/null 2>&1 &
PIDS+=("$!")

# Home Assistant's config: http on 127.0.0.1 only, MQTT at debug level (the check reads the
# QoS of each message from its log), and the MQTT config entry as the UI flow would store
# it (an old storage version: Home Assistant migrates it, whatever its own version).
cat > "$RUN/config/configuration.yaml" <<YAML
homeassistant:
  name: coze-speaker check
  time_zone: UTC
  unit_system: metric
  latitude: 0
  longitude: 0
  elevation: 0
http:
  server_host: 127.0.0.1
  server_port: $HA_PORT
frontend:
script: !include scripts.yaml
logger:
  default: warning
  logs:
    homeassistant.components.mqtt: debug
YAML
# The script of docs/homeassistant.md, as written there (for this run's device id).
awk '/<!-- ha-check: scripts.yaml -->/ {found = 1; next}
     found == 1 && /^```yaml/ {found = 2; next}
     found == 2 && /^```/ {exit}
     found == 2 {print}' "$REPO/docs/homeassistant.md" | sed 's#coze-speaker/kitchen/#coze-speaker/hacheck/#' \
  > "$RUN/config/scripts.yaml"
[ -s "$RUN/config/scripts.yaml" ] || die "no script block found in docs/homeassistant.md"
cat > "$RUN/config/.storage/core.config_entries" <<JSON
{"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [
  {"entry_id": "cozespeakercheckmqtt", "version": 1, "domain": "mqtt", "title": "127.0.0.1",
   "data": {"broker": "127.0.0.1", "port": $BROKER_PORT, "discovery": true},
   "options": {}, "source": "user", "unique_id": null, "disabled_by": null}]}}
JSON

mount_all
ha_started=$(date +%s)
in_chroot hass --skip-pip -c /srv/ha/run/config > "$RUN/check/hass.out" 2>&1 &
PIDS+=("$!")
say "Home Assistant starting on 127.0.0.1:$HA_PORT, mosquitto on 127.0.0.1:$BROKER_PORT"

set +e
"$REPO/.venv/bin/python" "$REPO/scripts/ha_check.py" --ha "http://127.0.0.1:$HA_PORT" \
  --broker-port "$BROKER_PORT" --ha-log "$RUN/config/home-assistant.log" --work "$RUN/check" \
  --ha-started "$ha_started"
status=$?
set -e
if [ "$status" != 0 ]; then
  say "FAILED; the logs: $RUN/config/home-assistant.log, $RUN/check/daemon.log (kept with COZE_HA_KEEP=1)"
  tail -n 30 "$RUN/config/home-assistant.log" 2>/dev/null || true
fi
say "done in $(elapsed)"
exit "$status"
