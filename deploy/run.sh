#!/usr/bin/env bash
# `make run`: the whole OMS on this machine, without Docker. Starts Kafka and PostgreSQL when they are not
# running, applies every service's migrations, creates the topics, starts the four services, a mail catcher and
# the demo sources (a WMS/3PL simulator), loads the demo network and stock, and stays in the foreground with the
# services' logs until Ctrl-C or `make stop`, which stop everything it started.
#
#   run.sh start | stop
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$REPO/.cache/run"
UV="${UV:-uv}"
SERVICES=(order routing inventory notifications)
declare -A PORT=([order]=8081 [routing]=8082 [inventory]=8083 [notifications]=8084)
TOKEN="demo-cs-token"

# Local demo configuration only: the token below is documented in README.md and must never be used elsewhere.
export OMS_KAFKA_BOOTSTRAP="${OMS_KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
export OMS_API_TOKENS="${OMS_API_TOKENS:-{\"$TOKEN\": \"cs-demo\"\}}"
export OMS_NOTIFICATIONS_SMTP_HOST="${OMS_NOTIFICATIONS_SMTP_HOST:-127.0.0.1}"
export OMS_NOTIFICATIONS_SMTP_PORT="${OMS_NOTIFICATIONS_SMTP_PORT:-1025}"
export OMS_TRACE_FILE="${OMS_TRACE_FILE:-$RUN/traces.jsonl}"

say() { echo "oms: $*" >&2; }

spawn() { # name command...: a background process with its log and pid file
  local name=$1; shift
  setsid nohup "$@" >"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
}

alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

stop_process() {
  local name=$1 pid
  [[ -f "$RUN/$name.pid" ]] || return 0
  pid=$(cat "$RUN/$name.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$name.pid"
}

stop() {
  for name in sources "${SERVICES[@]}" mail; do stop_process "$name"; done
  rm -f "$RUN/run.pid"
  # Only what this script started: a broker or database that was already running stays up.
  if [[ -f "$RUN/started-kafka" ]]; then "$REPO/deploy/kafka/kafka.sh" stop; rm -f "$RUN/started-kafka"; fi
  if [[ -f "$RUN/started-postgres" ]]; then "$REPO/deploy/postgres/postgres.sh" stop; rm -f "$RUN/started-postgres"; fi
  say "stopped"
}

wait_ready() {
  local name=$1 url=$2
  for _ in $(seq 1 120); do
    if curl -fsS "$url" >/dev/null 2>&1; then return 0; fi
    alive "$name" || { say "$name exited during start-up:"; tail -n 30 "$RUN/$name.log" >&2; return 1; }
    sleep 0.5
  done
  say "$name not ready at $url after 60 s:"; tail -n 30 "$RUN/$name.log" >&2; return 1
}

start() {
  mkdir -p "$RUN"
  if alive order; then say "already running (make stop first)"; exit 1; fi
  echo $$ >"$RUN/run.pid"
  if ! "$REPO/deploy/kafka/kafka.sh" status >/dev/null 2>&1; then
    "$REPO/deploy/kafka/kafka.sh" start && touch "$RUN/started-kafka"
  fi
  if ! "$REPO/deploy/postgres/postgres.sh" status >/dev/null 2>&1; then
    "$REPO/deploy/postgres/postgres.sh" start && touch "$RUN/started-postgres"
  else
    "$REPO/deploy/postgres/postgres.sh" createdb oms_order oms_routing oms_inventory oms_notifications
  fi
  trap 'stop; exit 130' INT
  trap 'stop; exit 0' TERM

  for service in "${SERVICES[@]}"; do
    say "migrating $service"
    "$UV" run --frozen alembic -c "$REPO/services/$service/alembic.ini" upgrade head
  done
  "$UV" run --frozen oms topics create

  spawn mail "$UV" run --frozen python -m aiosmtpd -n -l "$OMS_NOTIFICATIONS_SMTP_HOST:$OMS_NOTIFICATIONS_SMTP_PORT"
  for service in "${SERVICES[@]}"; do
    spawn "$service" "$UV" run --frozen python -m "oms_$service"
  done
  for service in "${SERVICES[@]}"; do
    wait_ready "$service" "http://127.0.0.1:${PORT[$service]}/readyz" || { stop; exit 1; }
    say "$service ready on http://127.0.0.1:${PORT[$service]}"
  done

  "$UV" run --frozen oms demo network --token "$TOKEN"
  "$UV" run --frozen oms demo stock
  if [[ "${OMS_DEMO_SOURCES:-1}" == 1 ]]; then
    spawn sources "$UV" run --frozen oms demo ship
  fi

  cat >&2 <<EOF

  The OMS is running: order :8081, routing :8082, inventory :8083, notifications :8084 (OpenAPI at /docs).
  Demo sources ship every fulfillment request (OMS_DEMO_SOURCES=0 to play them yourself: uv run oms demo ship).
  Mail goes to a local catcher: $RUN/mail.log. Traces: $OMS_TRACE_FILE.

  Submit and pay a demo order:
      uv run oms demo order --sku TENT-2P:1 --sku LAMP-HEAD:2
  Read it back (local demo token; never use it elsewhere):
      curl -s -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:8081/orders/<order_id>
      curl -s -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:8081/orders/<order_id>/timeline
  Or publish as a channel would, with kcat:
      python3 -m json.tool --compact deploy/demo/order.json | kcat -P -b $OMS_KAFKA_BOOTSTRAP -t oms.channel.orders.v1 -k 'web-eu:1001'

  Ctrl-C (or make stop) stops everything this started.

EOF
  local logs=()
  for service in "${SERVICES[@]}"; do logs+=("$RUN/$service.log"); done
  tail -n 0 -F "${logs[@]}" --pid="$(cat "$RUN/order.pid")" 2>/dev/null | sed -u 's/^/  /' &
  while alive order; do sleep 1 & wait $!; done
  stop
}

# `make stop` from another terminal: let the foreground `make run` stop what it started, and wait for it.
stop_from_outside() {
  local pid
  if [[ -f "$RUN/run.pid" ]] && pid=$(cat "$RUN/run.pid") && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    say "make run (pid $pid) did not stop within 60 s; stopping its processes directly"
  fi
  stop
}

case "${1:-start}" in
  start) start ;;
  stop) stop_from_outside ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
