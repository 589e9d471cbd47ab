#!/usr/bin/env bash
# A private Prometheus for `make observe` and the tests: Debian's prometheus package (installed when missing, its
# system service left alone), run with its own config, data dir and port under .cache, scraping the four services.
#
#   prometheus.sh install|start|stop|status|check
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 not running (status).
# Environment: OMS_PROMETHEUS_PORT (9090), OMS_PROMETHEUS_STATE (<repo>/.cache/prometheus-<port>),
#   OMS_PROMETHEUS_TARGETS ("order=127.0.0.1:8081 routing=127.0.0.1:8082 inventory=127.0.0.1:8083
#   notifications=127.0.0.1:8084"), OMS_PROMETHEUS_SCRAPE_INTERVAL (5s), OMS_PROMETHEUS_RETENTION (7d).
# `check` runs promtool on the committed config and rules, and the rules' unit tests (deploy/prometheus/tests).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$REPO/deploy/prometheus"
PORT="${OMS_PROMETHEUS_PORT:-9090}"
STATE="${OMS_PROMETHEUS_STATE:-$REPO/.cache/prometheus-$PORT}"
TARGETS="${OMS_PROMETHEUS_TARGETS:-order=127.0.0.1:8081 routing=127.0.0.1:8082 inventory=127.0.0.1:8083 notifications=127.0.0.1:8084}"
INTERVAL="${OMS_PROMETHEUS_SCRAPE_INTERVAL:-5s}"
RETENTION="${OMS_PROMETHEUS_RETENTION:-7d}"
PID="$STATE/prometheus.pid"
LOG="$STATE/prometheus.log"

log() { echo "prometheus[$PORT]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=../apt.sh
source "$REPO/deploy/apt.sh"

install() {
  command -v prometheus >/dev/null && command -v promtool >/dev/null && return 0
  apt_prepare Prometheus prometheus 2.42
  # The package starts a system Prometheus on 9090, which would take make observe's port: a policy-rc.d that says
  # "no" (101) keeps every service from starting during this install, then goes. One already there is respected.
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    made_policy=1
  fi
  # Not the recommended node exporter: only the server and promtool are needed.
  "${APT[@]}" install --no-install-recommends prometheus >&2 || { ((made_policy)) && "${SUDO[@]}" rm -f "$policy"; die "apt-get install prometheus failed"; }
  ((made_policy)) && "${SUDO[@]}" rm -f "$policy"
  # Nor at the next boot: this script runs the Prometheus the OMS uses, on the port it is told.
  if command -v systemctl >/dev/null && "${SUDO[@]}" systemctl disable prometheus >/dev/null 2>&1; then
    log "the package's system service (prometheus.service) is disabled; this script runs ours"
  fi
  command -v prometheus >/dev/null && command -v promtool >/dev/null || die "prometheus installed but not on PATH"
}

answers() { curl -fsS -m 2 "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1; }

running_pid() { [[ -f "$PID" ]] && kill -0 "$(cat "$PID")" 2>/dev/null && cat "$PID"; }

configure() {
  # The committed config and rules, and the targets of this run, in the state dir: Prometheus reads them there.
  mkdir -p "$STATE/rules" "$STATE/targets" "$STATE/data"
  sed -E "s/^(  scrape_interval:).*/\1 $INTERVAL/; s/^(  evaluation_interval:).*/\1 $INTERVAL/" \
    "$HERE/prometheus.yml" >"$STATE/prometheus.yml"
  rm -f "$STATE/rules/"*.yml
  cp "$HERE/rules/"*.yml "$STATE/rules/"
  local entries=() pair service address
  for pair in $TARGETS; do
    service="${pair%%=*}" address="${pair#*=}"
    [[ "$service" =~ ^[a-z]+$ && "$address" =~ ^[A-Za-z0-9.:-]+$ ]] || die "bad target '$pair' (want service=host:port)"
    entries+=("{\"targets\": [\"$address\"], \"labels\": {\"service\": \"$service\"}}")
  done
  local IFS=,
  echo "[${entries[*]}]" >"$STATE/targets/oms.json.tmp"
  mv "$STATE/targets/oms.json.tmp" "$STATE/targets/oms.json"
}

start() {
  install
  if pid=$(running_pid); then
    configure
    kill -HUP "$pid"  # reload: new targets or rules
    log "already running (pid $pid); configuration reloaded"
    return 0
  fi
  answers && die "something else answers on 127.0.0.1:$PORT"
  configure
  log "starting Prometheus (config $STATE/prometheus.yml, data $STATE/data, log $LOG)"
  nohup prometheus --config.file="$STATE/prometheus.yml" --storage.tsdb.path="$STATE/data" \
    --storage.tsdb.retention.time="$RETENTION" --web.listen-address="127.0.0.1:$PORT" \
    --web.enable-lifecycle >"$LOG" 2>&1 &
  echo $! >"$PID"
  for _ in $(seq 1 120); do
    answers && { log "running on http://127.0.0.1:$PORT (targets: $TARGETS)"; return 0; }
    kill -0 "$(cat "$PID")" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "prometheus exited during start-up"; }
    sleep 0.5
  done
  tail -n 30 "$LOG" >&2
  die "prometheus not ready after 60 s"
}

stop() {
  local pid
  if ! pid=$(running_pid); then log "not running"; rm -f "$PID"; return 0; fi
  log "stopping (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$PID"; return 0; }; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID"
}

check() {
  install
  promtool check config "$HERE/prometheus.yml"
  promtool check rules "$HERE/rules/"*.yml
  promtool test rules "$HERE/tests/"*.yml
}

case "${1:-}" in
  install) install; log "$(prometheus --version 2>&1 | head -n 1)" ;;
  start)   start ;;
  stop)    stop ;;
  status)  if answers; then echo running; else echo stopped; exit 3; fi ;;
  check)   check ;;
  *)       echo "usage: $0 install|start|stop|status|check" >&2; exit 2 ;;
esac
