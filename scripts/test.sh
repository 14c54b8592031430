#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian / Raspberry Pi OS machine, then run them.
#   apt packages (only when root and only the missing ones), a venv in .venv, the package
#   with its test extras; extra arguments go to pytest (e.g. scripts/test.sh -k cache).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="mosquitto mosquitto-clients alsa-utils libasound2-dev gcc python3-dev python3-venv espeak-ng"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi
for tool in mosquitto aplay; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin"
done

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
exec .venv/bin/python -m pytest "$@"
