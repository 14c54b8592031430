#!/usr/bin/env bash
# Install coze-speaker into .venv and run the daemon with ./config.yaml (or $COZE_SPEAKER_CONFIG).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
if [ -z "${COZE_SPEAKER_CONFIG:-}" ] && [ ! -f config.yaml ]; then
  echo "no config.yaml: copy config.example.yaml to config.yaml and set coze.token and coze.voice_id" >&2
  exit 1
fi
exec .venv/bin/coze-speaker run "$@"
