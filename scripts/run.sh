#!/usr/bin/env bash
# Install coze-speaker into .venv and run the daemon with ./config.yaml (or $COZE_SPEAKER_CONFIG,
# or /etc/coze-speaker/config.yaml).
#
# Without any config file it starts on the built-in defaults (coze_speaker/config/model.py):
# the broker on localhost, and espeak-ng's voice while there is no Coze token; the daemon
# then logs the one mosquitto_pub line that makes it speak. As root it first installs what
# is missing with apt (and on a first run starts mosquitto if no broker answers on
# localhost:1883). The alsa extra (in-process ALSA) is installed when it can be built
# (gcc, python3-dev, libasound2-dev); otherwise the daemon plays through aplay.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

first_run=""
if [ -z "${COZE_SPEAKER_CONFIG:-}" ] && [ ! -f config.yaml ] && [ ! -f /etc/coze-speaker/config.yaml ]; then
  first_run=1
fi

apt_install python3-venv alsa-utils ca-certificates gcc python3-dev libasound2-dev
[ -z "$first_run" ] || apt_install mosquitto mosquitto-clients espeak-ng

make_venv
alsa_log=.venv/alsa-extra.log
if can_build_alsa && pip_install ".[alsa]" >"$alsa_log" 2>&1; then
  rm -f "$alsa_log"
else
  if can_build_alsa; then
    echo "coze-speaker: the alsa extra did not build (see $alsa_log): playing through aplay instead" >&2
  else
    echo "coze-speaker: the alsa extra (in-process ALSA) needs gcc, python3-dev and libasound2-dev" \
         "(sudo apt-get install gcc python3-dev libasound2-dev): playing through aplay instead" >&2
  fi
  pip_install .
fi

broker_answers() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }

if [ -n "$first_run" ]; then
  echo "coze-speaker: no config file (./config.yaml, /etc/coze-speaker/config.yaml): running on the" \
       "built-in defaults; cp config.example.yaml config.yaml to change them" >&2
  if ! broker_answers && [ "$(id -u)" = 0 ] && [ -x /usr/sbin/mosquitto ]; then
    echo "coze-speaker: starting mosquitto, the MQTT broker on localhost" >&2
    if [ -d /run/systemd/system ]; then
      systemctl enable --now mosquitto || true
    else  # no systemd (a container, a chroot): Debian's config wants its pid file's directory
      install -d -o mosquitto -g mosquitto /run/mosquitto 2>/dev/null || mkdir -p /run/mosquitto
      /usr/sbin/mosquitto -d -c /etc/mosquitto/mosquitto.conf || /usr/sbin/mosquitto -d || true
    fi
    for _ in $(seq 50); do broker_answers && break; sleep 0.1; done
  fi
  broker_answers || echo "coze-speaker: no MQTT broker answers on localhost:1883: install one" \
                         "(sudo apt-get install mosquitto) or set mqtt.host in config.yaml; the daemon keeps trying" >&2
fi
exec .venv/bin/coze-speaker run "$@"
