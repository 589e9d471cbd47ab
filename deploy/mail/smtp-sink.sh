#!/usr/bin/env bash
# The bench's mail catcher: Postfix's smtp-sink, a small SMTP server in C that accepts every mail and keeps nothing.
# It stands in for the merchant's mail relay, which runs off the box in production: a Python catcher (aiosmtpd) cost
# the box eight times as much per mail (docs/performance.md, step 44). Taken from Debian's postfix package without
# installing it (no MTA is installed or started): `apt-get download`, unpacked under .cache.
#
#   smtp-sink.sh fetch          unpack it once; print the binary's path
#   smtp-sink.sh run HOST:PORT  fetch when needed, then become the server (exec: its pid is the server's)
#
# Exit codes: 0 ok, 1 failure (no apt-get, or the package could not be had), 2 usage.
# Environment: OMS_SMTP_SINK_DIR (<repo>/.cache/smtp-sink).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${OMS_SMTP_SINK_DIR:-$REPO/.cache/smtp-sink}"

log() { echo "smtp-sink: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

download() { # into the current directory
  apt-get download postfix >&2 && return 0
  # A fresh machine may have no package lists yet: refresh them (as root, or through sudo) and try once more.
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || return 1
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 && apt-get download postfix >&2
}

fetch() {
  if [[ ! -x "$DIR/bin/smtp-sink" ]]; then
    command -v apt-get >/dev/null || die "no apt-get: Debian's postfix package (its smtp-sink) cannot be had here"
    WORK="$(mktemp -d)"
    trap 'rm -rf "$WORK"' EXIT
    log "fetching Debian's postfix package for its smtp-sink (nothing is installed)"
    (cd "$WORK" && download) || die "apt-get download postfix failed"
    dpkg-deb -x "$WORK"/postfix_*.deb "$WORK/x"
    mkdir -p "$WORK/sink/bin" "$WORK/sink/lib"
    cp "$WORK/x/usr/sbin/smtp-sink" "$WORK/sink/bin/"
    cp "$WORK"/x/usr/lib/postfix/libpostfix-*.so "$WORK/sink/lib/"
    basename "$WORK"/postfix_*.deb >"$WORK/sink/PACKAGE"
    mkdir -p "$(dirname "$DIR")"
    rm -rf "$DIR"
    mv "$WORK/sink" "$DIR"
  fi
  local missing
  missing="$(LD_LIBRARY_PATH="$DIR/lib" ldd "$DIR/bin/smtp-sink" | grep 'not found' || true)"
  [[ -z "$missing" ]] || die "$DIR/bin/smtp-sink misses a library: $missing"
  echo "$DIR/bin/smtp-sink"
}

case "${1:-}" in
  fetch) fetch ;;
  run)
    [[ -n "${2:-}" ]] || { echo "usage: $0 run HOST:PORT" >&2; exit 2; }
    sink="$(fetch)"
    # Run as root it must drop to another user once it listens.
    user=()
    [[ "$(id -u)" == 0 ]] && user=(-u nobody)
    # 256: the listen backlog.
    LD_LIBRARY_PATH="$DIR/lib" exec "$sink" "${user[@]}" "$2" 256
    ;;
  *) echo "usage: $0 fetch | run HOST:PORT" >&2; exit 2 ;;
esac
