#!/usr/bin/env bash
# One entry point for a fresh Debian machine with Python 3.11:
#   ./dev.sh demo    the main job end to end on the embedded default model
#   ./dev.sh test    the test suite (what .ci/run runs)
#   ./dev.sh setup   only install system packages and the virtual environment
# It installs what it needs itself: Debian packages (when run as root) and ./.venv.
set -euo pipefail
cd "$(dirname "$0")"

# System packages the tests and the demo use. Keep this the only list.
APT_PACKAGES=(openssl iproute2 util-linux debootstrap openssh-client nftables age restic zstd)
PYTHON=${PYTHON:-python3}
VENV=.venv
EXTRAS=${PAI_EXTRAS:-dev,build,control}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

setup_apt() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    log "missing system packages: ${missing[*]} (install them as root)"; return 0
  fi
  log "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_venv() {
  local stamp=$VENV/.pai-installed
  local want
  want="$(cat pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "creating $VENV with pai[$EXTRAS]"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
}

setup() { setup_apt; setup_venv; }

case "${1:-}" in
  setup) setup ;;
  demo) setup; shift; exec "$VENV/bin/python" scripts/demo.py "$@" ;;
  test) setup; shift; exec "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: ./dev.sh demo|test|setup" >&2; exit 2 ;;
esac
