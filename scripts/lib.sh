# Shared by scripts/serve and scripts/test: install what is missing.
set -euo pipefail

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null; then
    echo "missing: $* (no apt-get here: install it with your package manager)" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_redis() {
  command -v redis-server >/dev/null || { echo "installing redis-server..." >&2; apt_install redis-server; }
  # Debian's package starts a system redis on 6379; stampede runs its own, so
  # that one is left alone (it is not used).
}

ensure_cc() {
  command -v cc >/dev/null || { echo "installing a C compiler..." >&2; apt_install build-essential; }
}

ensure_promtool() {
  command -v promtool >/dev/null || { echo "installing promtool (prometheus)..." >&2; apt_install prometheus; }
}

ensure_chromium() {
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null ||
    { echo "installing chromium..." >&2; apt_install chromium; }
}
