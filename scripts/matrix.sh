#!/usr/bin/env bash
# The platform matrix behind docs/platforms.md (not part of CI: ~30 min with a cold cache).
#
# For each platform, a minimal Debian chroot is built once with debootstrap and kept under
# $COZE_MATRIX_CACHE (default /var/cache/coze-speaker-matrix, outside the repo). Each run
# works on a throw-away copy of it (overlayfs when it can, else a copy), so every run starts
# from the same clean system:
#   1. a fresh clone of the branch checked out here (committed work only);
#   2. `pip install .` into a new venv, with the venv's own pip, while the chroot has no
#      compiler and no ALSA headers, then `coze-speaker --help` (the install users get);
#   3. the README's quick start, scripts/run.sh as root with no config file and no token: it
#      installs its apt packages, starts mosquitto and the daemon, which prints the
#      mosquitto_pub line that makes it speak; that line is run and the audio must arrive
#      (at an ALSA file PCM: a chroot has no sound card);
#   4. the README's test command, scripts/test.sh, as root: it installs the apt packages,
#      the venv and the test extras, then runs the whole suite.
# One summary line per platform; the logs stay in $COZE_MATRIX_CACHE/<platform>/.
#
#   sudo scripts/matrix.sh                      # all platforms
#   sudo scripts/matrix.sh bullseye-amd64       # some of them
#   MATRIX_PYTEST_ARGS="-k cache" sudo scripts/matrix.sh trixie-amd64
#
# Platforms: bullseye-amd64 (Python 3.9, Raspberry Pi OS 11's Debian), trixie-amd64
# (Python 3.13), bookworm-arm64 (Raspberry Pi OS 12 64-bit, under qemu-user-static).
# Needs root; debootstrap and qemu-user-static are installed when missing (apt).
{ # the whole script is read before it runs, so editing it meanwhile cannot change a run
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${COZE_MATRIX_CACHE:-/var/cache/coze-speaker-matrix}"
MIRROR="${COZE_MATRIX_MIRROR:-http://deb.debian.org/debian}"
ALL_PLATFORMS="bullseye-amd64 trixie-amd64 bookworm-arm64"
# What the chroot has before the test command runs: enough for `python3 -m venv` and pip.
BASE_PACKAGES="ca-certificates,python3,python3-venv"

die() { echo "matrix: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
case "$CACHE" in "$REPO"|"$REPO"/*) die "COZE_MATRIX_CACHE must be outside the repository";; esac

platforms="${*:-$ALL_PLATFORMS}"
for p in $platforms; do
  case " $ALL_PLATFORMS " in *" $p "*) ;; *) die "unknown platform $p (known: $ALL_PLATFORMS)";; esac
done

branch="$(git -C "$REPO" rev-parse --abbrev-ref HEAD)"
commit="$(git -C "$REPO" rev-parse --short HEAD)"
[ "$branch" != HEAD ] || die "check out a branch first (the chroots clone the branch you are on)"
if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
  echo "matrix: note: uncommitted changes are not tested, only commit $commit of $branch"
fi

host_tools() {
  local missing=""
  command -v debootstrap >/dev/null || missing="$missing debootstrap"
  case " $platforms " in *-arm64*) [ -x /usr/bin/qemu-aarch64-static ] || missing="$missing qemu-user-static";; esac
  if [ -n "$missing" ]; then
    echo "matrix: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
}

# arm64 binaries run through qemu-user-static; the F flag (in Debian's binfmt.d entry) makes
# the kernel open the emulator at registration, so it also works inside a chroot.
register_qemu() {
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && return 0
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "could not register qemu-aarch64 with binfmt_misc"
}

# Everything mounted by this script, unmounted in reverse order whatever happens.
MOUNTS=()
unmount_all() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    umount "${MOUNTS[$i]}" 2>/dev/null || umount -l "${MOUNTS[$i]}" 2>/dev/null || true
  done
  MOUNTS=()
}
trap unmount_all EXIT
trap 'echo "matrix: stopped by a failure at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM
mnt() {  # mnt TARGET mount-args...
  local target="$1"; shift
  mkdir -p "$target"
  mount "$@" "$target"
  MOUNTS+=("$target")
}

# The base chroot of a platform: debootstrap once, then reused.
build_base() {
  local suite="$1" arch="$2" base="$3"
  [ -f "$base/.complete" ] && return 0
  rm -rf "$base.tmp"
  echo "matrix: building the $suite $arch chroot (kept in $base for the next runs)"
  debootstrap --variant=minbase --arch="$arch" --components=main --include="$BASE_PACKAGES" \
    "$suite" "$base.tmp" "$MIRROR" > "$base.debootstrap.log" 2>&1 ||
    { tail -n 20 "$base.debootstrap.log"; die "debootstrap $suite $arch failed (log: $base.debootstrap.log)"; }
  # Only the release's main component: bullseye's security suite answered 404 for espeak-ng.
  echo "deb $MIRROR $suite main" > "$base.tmp/etc/apt/sources.list"
  # The host's extra CAs (a TLS-inspecting proxy on some build machines) for apt and pip.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$base.tmp/usr/local/share/ca-certificates/"
    chroot "$base.tmp" /usr/sbin/update-ca-certificates >/dev/null 2>&1
  fi
  chroot "$base.tmp" apt-get clean
  touch "$base.tmp/.complete"
  mv "$base.tmp" "$base"
}

in_chroot() {  # in_chroot ROOT COMMAND...: a clean environment, like a fresh login as root
  local root="$1"; shift
  chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

# Step 4 in the chroot: the quick start, then the line it prints; prints the bytes played last.
FIRST_RUN='
set -u
cd /src/coze-speaker
rm -f config.yaml
printf "%s\n" "pcm.!default { type file slave.pcm { type null } file \"/tmp/played.raw\" format \"raw\" }" > /tmp/asound.conf
: > /tmp/played.raw
ALSA_CONFIG_PATH=/tmp/asound.conf scripts/run.sh > /tmp/run.log 2>&1 &
daemon=$!
trap "kill $daemon 2>/dev/null; wait $daemon; cat /tmp/run.log" EXIT
for _ in $(seq 1200); do
  grep -q "to make it speak: " /tmp/run.log && break
  kill -0 $daemon 2>/dev/null || { echo "scripts/run.sh stopped"; exit 1; }
  sleep 0.5
done
line="$(grep -o "to make it speak: .*" /tmp/run.log | head -n 1 | sed "s/^to make it speak: //")"
[ -n "$line" ] || { echo "no mosquitto_pub line in 10 min"; exit 1; }
echo "running: $line"
eval "$line"
for _ in $(seq 240); do
  grep -qE "(finished|failed) [0-9a-f]+ " /tmp/run.log && break
  sleep 0.5
done
grep -qE "finished [0-9a-f]+ \(.*offline voice" /tmp/run.log || { echo "not spoken with the offline voice"; exit 1; }
bytes=$(stat -c %s /tmp/played.raw)
[ "$bytes" -gt 0 ] || { echo "nothing reached the sound device"; exit 1; }
trap - EXIT
kill $daemon; wait $daemon || true
cat /tmp/run.log
echo "$bytes bytes of audio"
'

# Whatever still runs inside the chroot (started by the steps above) is ended before unmounting.
stop_chroot_processes() {
  local root pid
  root="$(readlink -f "$1")"
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && kill "$pid" 2>/dev/null || true
  done
}

SUMMARY=()
FAILED=0

run_platform() {
  local name="$1" suite="${1%-*}" arch="${1##*-}"
  local dir="$CACHE/$name" start=$SECONDS
  local base="$dir/base" run="$dir/run" log="$dir/test.log" plain_log="$dir/plain-install.log"
  local first_log="$dir/first-run.log"
  mkdir -p "$dir/apt-archives/partial" "$dir/pip-cache"
  [ "$arch" = amd64 ] || register_qemu
  build_base "$suite" "$arch" "$base"
  local built=$((SECONDS - start))

  rm -rf "$run"
  mkdir -p "$run/upper" "$run/work" "$run/root"
  local root="$run/root"
  if ! mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$root" 2>/dev/null; then
    cp -a "$base/." "$root/"
  else
    MOUNTS+=("$root")
  fi
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  # Every installed Debian has an /etc/hosts that names localhost; not every debootstrap.
  [ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
  mnt "$root/proc" -t proc proc
  mnt "$root/sys" -t sysfs sysfs                          # systemd-analyze (systemd 247) wants
  mnt "$root/sys/fs/cgroup" --bind /sys/fs/cgroup         # to know its cgroup
  mnt "$root/dev" --bind /dev
  mnt "$root/dev/pts" --bind /dev/pts
  mnt "$root/dev/shm" -t tmpfs -o mode=1777 shm
  mnt "$root/var/cache/apt/archives" --bind "$dir/apt-archives"   # downloads reused across runs
  mnt "$root/root/.cache/pip" --bind "$dir/pip-cache"

  git clone -q --no-local --branch "$branch" --single-branch "$REPO" "$root/src/coze-speaker"
  # what this platform tests: the branch moves on while a long matrix runs
  local commit
  commit="$(git -C "$root/src/coze-speaker" rev-parse --short HEAD)"
  local python
  python="$(in_chroot "$root" python3 -c 'import platform; print(platform.python_version())')"

  # 2. The install users get: no compiler, no ALSA headers, the venv's own pip.
  local plain="plain pip install: FAILED (log: $plain_log)" t0=$SECONDS
  if in_chroot "$root" /bin/sh -euc '
      ! command -v gcc >/dev/null || { echo "gcc is installed: not a plain machine"; exit 1; }
      ! [ -e /usr/include/alsa/asoundlib.h ] || { echo "ALSA headers are installed: not a plain machine"; exit 1; }
      cd /src/coze-speaker
      python3 -m venv /tmp/plain
      /tmp/plain/bin/python -m pip --version
      /tmp/plain/bin/python -m pip install .
      /tmp/plain/bin/coze-speaker --help
      /tmp/plain/bin/python -c "import simpleaudio" 2>/dev/null && { echo "simpleaudio came with a plain install"; exit 1; }
      /tmp/plain/bin/python -c "import alsaaudio" 2>/dev/null && { echo "pyalsaaudio came with a plain install"; exit 1; }
      exit 0' > "$plain_log" 2>&1; then
    plain="plain pip install . ok in $((SECONDS - t0)) s ($(grep -o '^pip [0-9.]*' "$plain_log" | head -n 1), no gcc, no ALSA headers)"
  else
    FAILED=1
  fi

  # 3. The README's quick start on this fresh machine: scripts/run.sh with no config file and
  #    no token (as root it installs its apt packages and starts mosquitto), then the
  #    mosquitto_pub line the daemon prints. The sound goes to an ALSA file PCM (no sound
  #    card in a chroot): audio must arrive there.
  t0=$SECONDS
  local first="first run: FAILED (log: $first_log)"
  if in_chroot "$root" /bin/bash -c "$FIRST_RUN" > "$first_log" 2>&1; then
    first="first run (scripts/run.sh, no config, no token): spoke $(tail -n 1 "$first_log") in $((SECONDS - t0)) s"
  else
    FAILED=1
  fi
  stop_chroot_processes "$root"

  # 4. The README's test command, from the clone (MATRIX_SKIP_TESTS=1 leaves it out).
  t0=$SECONDS
  local tests="scripts/test.sh: FAILED"
  if [ -n "${MATRIX_SKIP_TESTS:-}" ]; then
    tests="scripts/test.sh: not run (MATRIX_SKIP_TESTS)"
  else
    # shellcheck disable=SC2086
    if in_chroot "$root" /bin/sh -c "cd /src/coze-speaker && scripts/test.sh ${MATRIX_PYTEST_ARGS:-}" > "$log" 2>&1; then
      tests="scripts/test.sh:"
    else
      FAILED=1
    fi
    local result
    result="$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|errors|skipped).* in [0-9.]+s.*$' "$log" | tail -n 1 |
              sed -E 's/^=+ //; s/ =+$//' || true)"
    tests="$tests ${result:-no pytest summary (log: $log)} ($((SECONDS - t0)) s)"
  fi

  unmount_all
  rm -rf "$run"
  local line="$name: Python $python, commit $commit; $plain; $first; $tests; $((SECONDS - start)) s in all"
  [ "$built" -gt 5 ] && line="$line (chroot built in $built s)"
  echo "$line"
  SUMMARY+=("$line")
}

host_tools
for p in $platforms; do
  run_platform "$p"
done
echo "== matrix =="
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
}
