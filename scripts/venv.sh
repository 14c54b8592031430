# Sourced by scripts/test.sh and scripts/run.sh (from the repository's root): the apt
# packages, the virtualenv in .venv and the package, done the same way by both.

# apt_install PKG...: install the missing ones, only as root on a machine with apt.
apt_install() {
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 0
  local missing="" pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  [ -n "$missing" ] || return 0
  echo "installing:$missing"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# make_venv: .venv with a pip that can install this project in editable mode. pip < 21.3
# (Debian 11 / Raspberry Pi OS bullseye ship 20.3.4) cannot: "editable mode currently
# requires a setup.py based build".
make_venv() {
  [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
  if ! .venv/bin/python -c 'import sys, pip; sys.exit(tuple(int(p) for p in pip.__version__.split(".")[:2]) < (21, 3))' 2>/dev/null; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  fi
}

# can_build_alsa: what the alsa extra (pyalsaaudio, built from source) needs is there.
can_build_alsa() {
  command -v gcc >/dev/null 2>&1 && [ -e /usr/include/alsa/asoundlib.h ] &&
    .venv/bin/python -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'
}

# pip_install SPEC: pip install -e SPEC into .venv, quietly.
pip_install() {
  .venv/bin/python -m pip install -q --disable-pip-version-check -e "$1"
}
