#!/usr/bin/env bash
# `make run`: the whole OMS on this machine, without Docker. Starts Kafka and PostgreSQL when they are not
# running, applies every service's migrations, creates the topics, starts the four services, a mail catcher and
# the demo sources (a WMS/3PL simulator), loads the demo network and stock, and stays in the foreground with the
# services' logs. It supervises what it started: a process that exits is restarted with backoff (and says so),
# while the others, Kafka and PostgreSQL keep running. Only Ctrl-C or `make stop` stops everything it started.
#
#   run.sh start | stop
#
# Environment (the defaults are the local demo): OMS_RUN_DIR (.cache/run); OMS_KAFKA_PORT and OMS_PG_PORT (also
# read by deploy/kafka and deploy/postgres); OMS_<SERVICE>_HTTP_PORT (8081-8084); OMS_DEMO (1: load the demo
# network and stock); OMS_DEMO_SOURCES (1: run the demo sources); OMS_RESTART_MAX_DELAY (30 seconds); OMS_OBSERVE
# (0; 1: Prometheus too, deploy/prometheus/prometheus.sh, on OMS_PROMETHEUS_PORT, 9090, scraping the four services);
# OMS_MAIL_CATCHER (aiosmtpd.handlers.Debugging: every mail written to mail.log; another aiosmtpd handler, or
# smtp-sink: deploy/mail/smtp-sink.sh, Postfix's C server that accepts mails and keeps nothing, which the bench takes).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
RUN="${OMS_RUN_DIR:-$REPO/.cache/run}"
UV="${UV:-$(command -v uv 2>/dev/null || echo "$HOME/.local/bin/uv")}"  # as the Makefile finds it
SERVICES=(order routing inventory notifications)
declare -A PORT=(
  [order]="${OMS_ORDER_HTTP_PORT:-8081}"
  [routing]="${OMS_ROUTING_HTTP_PORT:-8082}"
  [inventory]="${OMS_INVENTORY_HTTP_PORT:-8083}"
  [notifications]="${OMS_NOTIFICATIONS_HTTP_PORT:-8084}"
)
TOKEN="demo-cs-token"
MAX_DELAY="${OMS_RESTART_MAX_DELAY:-30}"
# A process that ran this long before it exited starts its backoff afresh: one crash is news, not a crash loop.
STABLE_AFTER=60

# Local demo configuration only: the token below is documented in README.md and must never be used elsewhere.
export OMS_KAFKA_BOOTSTRAP="${OMS_KAFKA_BOOTSTRAP:-127.0.0.1:${OMS_KAFKA_PORT:-9092}}"
export OMS_API_TOKENS="${OMS_API_TOKENS:-{\"$TOKEN\": \"cs-demo\"\}}"
export OMS_NOTIFICATIONS_SMTP_HOST="${OMS_NOTIFICATIONS_SMTP_HOST:-127.0.0.1}"
export OMS_NOTIFICATIONS_SMTP_PORT="${OMS_NOTIFICATIONS_SMTP_PORT:-1025}"
export OMS_TRACE_FILE="${OMS_TRACE_FILE:-$RUN/traces.jsonl}"
# Also local demo only: the key that signs and checks the backorder notice's wait-or-cancel link, where operator
# alerts go (the mail catcher), and the token the order service's customer page asks inventory with.
export OMS_CUSTOMER_LINK_KEY="${OMS_CUSTOMER_LINK_KEY:-demo-customer-link-key-local-use-only}"
export OMS_NOTIFICATIONS_OPS_EMAIL="${OMS_NOTIFICATIONS_OPS_EMAIL:-ops@example.com}"
export OMS_ORDER_INVENTORY_TOKEN="${OMS_ORDER_INVENTORY_TOKEN:-$TOKEN}"
export OMS_ROUTING_URL="http://127.0.0.1:${PORT[routing]}" OMS_INVENTORY_URL="http://127.0.0.1:${PORT[inventory]}"
export OMS_NOTIFICATIONS_ORDER_PUBLIC_URL="${OMS_NOTIFICATIONS_ORDER_PUBLIC_URL:-http://127.0.0.1:${PORT[order]}}"
# Each service's database on the PostgreSQL this script starts (or finds), unless a URL is given.
for service in "${SERVICES[@]}"; do
  var="OMS_${service^^}_DATABASE_URL"
  export "$var=${!var:-postgresql+asyncpg://oms:oms@127.0.0.1:${OMS_PG_PORT:-5432}/oms_$service}"
done

say() { echo "oms: $*" >&2; }

declare -A STARTED_AT=() FAILURES=() RETRY_AT=()
SUPERVISED=()

spawn() { # name command...: a background process in a session of its own, appending to its log
  local name=$1; shift
  setsid nohup "$@" >>"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  STARTED_AT[$name]=$SECONDS
}

# The environment's own interpreter (make run syncs it first), not `uv run`: the pid file then names the process
# itself, so its exit is the service's exit.
PYTHON="$REPO/.venv/bin/python"

launch() { # name: start one of the processes this script supervises
  case $1 in
    mail)
      if [[ "${OMS_MAIL_CATCHER:-}" == smtp-sink ]]; then
        spawn mail "$REPO/deploy/mail/smtp-sink.sh" run "$OMS_NOTIFICATIONS_SMTP_HOST:$OMS_NOTIFICATIONS_SMTP_PORT"
      else
        spawn mail "$PYTHON" -m aiosmtpd -n -c "${OMS_MAIL_CATCHER:-aiosmtpd.handlers.Debugging}" \
          -l "$OMS_NOTIFICATIONS_SMTP_HOST:$OMS_NOTIFICATIONS_SMTP_PORT"
      fi ;;
    sources) spawn sources "$REPO/.venv/bin/oms" demo ship ;;
    *) spawn "$1" "$PYTHON" -m "oms_$1" ;;
  esac
}

alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

supervise() { # restart what exited after 1 s, then 2, 4 ... MAX_DELAY seconds while it keeps crashing
  local name pid status delay
  for name in "${SUPERVISED[@]}"; do
    alive "$name" && continue
    if [[ -n "${RETRY_AT[$name]:-}" ]]; then
      if ((SECONDS >= RETRY_AT[$name])); then
        unset "RETRY_AT[$name]"
        say "restarting $name"
        launch "$name"
      fi
      continue
    fi
    pid=$(cat "$RUN/$name.pid" 2>/dev/null || echo 0)
    status=0
    wait "$pid" 2>/dev/null || status=$?
    if ((SECONDS - STARTED_AT[$name] >= STABLE_AFTER)); then FAILURES[$name]=0; fi
    delay=$((1 << ${FAILURES[$name]:-0}))
    if ((delay > MAX_DELAY)); then delay=$MAX_DELAY; fi
    FAILURES[$name]=$((${FAILURES[$name]:-0} + 1))
    RETRY_AT[$name]=$((SECONDS + delay))
    say "$name exited (status $status); restarting in ${delay} s (restart ${FAILURES[$name]}); log: $RUN/$name.log"
  done
}

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
  SUPERVISED=()
  for name in sources "${SERVICES[@]}" mail; do stop_process "$name"; done
  rm -f "$RUN/run.pid"
  # Only what this script started: a broker or database that was already running stays up.
  if [[ -f "$RUN/started-kafka" ]]; then "$REPO/deploy/kafka/kafka.sh" stop; rm -f "$RUN/started-kafka"; fi
  if [[ -f "$RUN/started-postgres" ]]; then "$REPO/deploy/postgres/postgres.sh" stop; rm -f "$RUN/started-postgres"; fi
  if [[ -f "$RUN/started-prometheus" ]]; then "$REPO/deploy/prometheus/prometheus.sh" stop; rm -f "$RUN/started-prometheus"; fi
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

  for name in mail "${SERVICES[@]}" sources; do : >"$RUN/$name.log"; done
  for name in mail "${SERVICES[@]}"; do launch "$name"; done
  for service in "${SERVICES[@]}"; do
    wait_ready "$service" "http://127.0.0.1:${PORT[$service]}/readyz" || { stop; exit 1; }
    say "$service ready on http://127.0.0.1:${PORT[$service]}"
  done
  SUPERVISED=(mail "${SERVICES[@]}")
  local observing=""
  if [[ "${OMS_OBSERVE:-0}" == 1 ]]; then
    local targets=""
    for service in "${SERVICES[@]}"; do targets+="$service=127.0.0.1:${PORT[$service]} "; done
    if ! "$REPO/deploy/prometheus/prometheus.sh" status >/dev/null 2>&1; then
      OMS_PROMETHEUS_TARGETS="$targets" "$REPO/deploy/prometheus/prometheus.sh" start && touch "$RUN/started-prometheus"
    else
      OMS_PROMETHEUS_TARGETS="$targets" "$REPO/deploy/prometheus/prometheus.sh" start
    fi
    observing="  Prometheus: http://127.0.0.1:${OMS_PROMETHEUS_PORT:-9090} (alerts at /alerts); each service's own metrics at /metrics.
"
  fi

  if [[ "${OMS_DEMO:-1}" == 1 ]]; then
    "$UV" run --frozen oms demo network --token "$TOKEN"
    "$UV" run --frozen oms demo stock
  fi
  if [[ "${OMS_DEMO_SOURCES:-1}" == 1 ]]; then
    launch sources
    SUPERVISED+=(sources)
  fi

  # Printed as they work in a fresh shell in this folder: .venv/bin/oms needs nothing on PATH.
  cat >&2 <<EOF

  The OMS is running: order :${PORT[order]}, routing :${PORT[routing]}, inventory :${PORT[inventory]}, notifications :${PORT[notifications]} (OpenAPI at /docs).
  A process that exits is restarted (with backoff); Kafka, PostgreSQL and the others keep running.
  Demo sources ship every fulfillment request (OMS_DEMO_SOURCES=0 to play them yourself: .venv/bin/oms demo ship).
  Mail goes to a local catcher: $RUN/mail.log. Traces: $OMS_TRACE_FILE (one order's: .venv/bin/oms trace <order_id>).
$observing
  Submit and pay a demo order:
      .venv/bin/oms demo order --sku TENT-2P:1 --sku LAMP-HEAD:2
  Read it back (local demo token; never use it elsewhere):
      curl -s -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:${PORT[order]}/orders/<order_id>
      curl -s -H 'Authorization: Bearer $TOKEN' http://127.0.0.1:${PORT[order]}/orders/<order_id>/timeline
  Or publish as a channel would, with kcat:
      python3 -m json.tool --compact deploy/demo/order.json | kcat -P -b $OMS_KAFKA_BOOTSTRAP -t oms.channel.orders.v1 -k 'web-eu:1001'

  Ctrl-C (or make stop) stops everything this started.

EOF
  local logs=()
  for service in "${SERVICES[@]}"; do logs+=("$RUN/$service.log"); done
  tail -n 0 -F "${logs[@]}" --pid=$$ 2>/dev/null | sed -u 's/^/  /' &
  while true; do
    supervise
    sleep 1 & wait $!
  done
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
