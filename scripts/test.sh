#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian / Raspberry Pi OS machine, then run them.
#   apt packages (only when root and only the missing ones), a venv in .venv (pip upgraded
#   when too old for an editable install), the package with its test extras (which include
#   both compiled audio back ends, alsa and simpleaudio, so their tests run); extra arguments
#   go to pytest (e.g. scripts/test.sh -k cache).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh

# openssl: the broker's TLS certificates; systemd: systemd-analyze checks the unit (and
# procps its ExecReload's /bin/kill).
apt_install mosquitto mosquitto-clients alsa-utils libasound2-dev gcc python3-dev python3-venv espeak-ng openssl \
  systemd procps
for tool in mosquitto aplay; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
done

make_venv
pip_install ".[test]"
exec .venv/bin/python -m pytest "$@"
