# Shared by scripts/test and scripts/develop: find Pythons, build venvs under
# .envs/ (gitignored), and enter the Debian sid chroot when no native
# Python >= 3.14.2 exists. Source it; it defines functions only.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ENVS=${SONOFF_OTA_ENVS:-$ROOT/.envs}
CHROOT=$ENVS/sid-chroot
CHROOT_VENV_ROOT=/opt
# Debian packages the tests and the demo start as real peers.
DEB_PEER_PACKAGES=(mosquitto dbus-daemon)
DEB_PEER_BINARIES=(/usr/sbin/mosquitto /usr/bin/dbus-daemon)

log() { printf '\033[1m[%s]\033[0m %s\n' "${LOG_NAME:-sonoff_ota}" "$*" >&2; }

ensure_host_packages() {
  local missing=() i
  for i in "${!DEB_PEER_BINARIES[@]}"; do
    [ -x "${DEB_PEER_BINARIES[$i]}" ] || missing+=("${DEB_PEER_PACKAGES[$i]}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing ${missing[*]}: install them (e.g. sudo apt-get install ${missing[*]})"
  fi
}

py_ok() { # py_ok PYTHON MIN_MINOR MIN_PATCH MAX_MINOR
  "$1" -c "import sys; v=sys.version_info; sys.exit(0 if (v[0]==3 and ($2,$3)<=(v[1],v[2]) and v[1]<=$4) else 1)" 2>/dev/null
}

find_python() { # find_python MIN_MINOR MIN_PATCH MAX_MINOR CANDIDATES...
  local minor=$1 patch=$2 max=$3 c; shift 3
  for c in "$@"; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && py_ok "$(command -v "$c")" "$minor" "$patch" "$max"; then command -v "$c"; return 0; fi
  done
  return 1
}

oldest_python() {
  find_python 13 0 13 "${SONOFF_OTA_PYTHON_OLDEST:-}" python3.13 "$HOME/.pyenv/versions/3.13.0/bin/python3.13" \
    "$HOME"/.pyenv/versions/3.13.*/bin/python3.13 /usr/bin/python3.13
}

newest_python() {
  find_python 14 2 99 "${SONOFF_OTA_PYTHON_NEWEST:-}" python3.14 python3 \
    "$HOME"/.pyenv/versions/3.14.*/bin/python3.14 /usr/bin/python3.14
}

req_stamp() { sha256sum "$1" | cut -c1-16; }

ensure_venv() { # ensure_venv PYTHON VENV REQUIREMENTS_FILE
  local py=$1 venv=$2 req=$3 stamp
  stamp=$(req_stamp "$req")
  if [ -f "$venv/.req-$stamp" ] && [ -x "$venv/bin/python" ]; then return 0; fi
  log "building $venv with $("$py" --version) (a few minutes, once)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  "$venv/bin/pip" install -q -r "$req"
  touch "$venv/.req-$stamp"
}

# Debian packages the chroot needs besides Python: a compiler for the few wheels
# HA's frontend dependencies lack on 3.14, and the peers the tests start.
CHROOT_PACKAGES=(python3.14 python3.14-venv python3.14-dev g++ ca-certificates "${DEB_PEER_PACKAGES[@]}")
CHROOT_BINARIES=(/usr/bin/python3.14 /usr/lib/python3.14/ensurepip /usr/include/python3.14/Python.h /usr/bin/g++ /etc/ssl/certs "${DEB_PEER_BINARIES[@]}")

chroot_prepare() { # create (once) the Debian sid chroot and install what it lacks; needs root
  if [ "$(id -u)" -ne 0 ]; then
    log "no Python >= 3.14.2 found, and the Debian sid fallback needs root."
    log "install Python 3.14 (e.g. pyenv install 3.14) or run as root."
    return 1
  fi
  command -v unshare >/dev/null || { log "unshare (util-linux) is needed for the chroot"; return 1; }
  if [ ! -f "$CHROOT/.ready" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    # apt-get fails, not waits, while another run holds dpkg's lock: stop here, not later.
    command -v debootstrap >/dev/null || { log "debootstrap could not be installed (is apt-get busy? run again)"; return 1; }
    log "creating the Debian sid chroot in $CHROOT (about a minute, once)"
    rm -rf "$CHROOT"
    local include
    include=$(IFS=,; echo "${CHROOT_PACKAGES[*]}")
    debootstrap --variant=minbase --include="$include" sid "$CHROOT" >/dev/null || { log "debootstrap failed"; return 1; }
    touch "$CHROOT/.ready"
  fi
  cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$CHROOT/repo"
  local i missing=()
  for i in "${!CHROOT_BINARIES[@]}"; do
    [ -e "$CHROOT${CHROOT_BINARIES[$i]}" ] || missing+=("${CHROOT_PACKAGES[$i]}")
  done
  if [ ${#missing[@]} -ne 0 ]; then
    log "installing ${missing[*]} in the chroot"
    # sid's Release files can look expired to a machine whose clock runs ahead.
    chroot_run bash -c "apt-get -o Acquire::Check-Valid-Until=false update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]} >/dev/null"
  fi
}

chroot_run() { # chroot_run CMD... : run CMD in the chroot (the repo is /repo)
  # A private mount namespace per run: the mounts vanish with it, and concurrent runs
  # (tests, the demo, the browser check) never see or unmount each other's.
  unshare --mount --propagation private -- bash -c '
    set -e
    c=$1 r=$2; shift 2
    mount --bind "$r" "$c/repo"
    mount -t proc proc "$c/proc"
    mount --rbind /dev "$c/dev"
    mount -t tmpfs tmpfs "$c/tmp"
    exec chroot "$c" "$@"' _ "$CHROOT" "$ROOT" \
    env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 CI="${CI:-}" \
      TERM="${TERM:-dumb}" "$@"
}

chroot_ensure_venv() { # chroot_ensure_venv NAME REQUIREMENTS_FILE(relative to repo) -> prints venv path
  local venv=$CHROOT_VENV_ROOT/$1 req=$2 stamp
  stamp=$(req_stamp "$ROOT/$req")
  if [ ! -f "$CHROOT$venv/.req-$stamp" ]; then
    log "building $venv inside the chroot (a few minutes, once)"
    chroot_run bash -c "rm -rf $venv && python3.14 -m venv $venv && $venv/bin/pip install -q --upgrade pip >/dev/null && $venv/bin/pip install -q -r /repo/$req && touch $venv/.req-$stamp" >&2
  fi
  echo "$venv"
}
