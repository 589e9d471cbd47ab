#!/usr/bin/env bash
# A single-node KRaft Kafka broker for development, tests and CI, fetched from
# Maven Central (deploy/kafka/pom.xml), so nothing needs installing by hand.
#
#   kafka.sh fetch|start|stop|status|wait|logs|reset
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 not running (status).
# Environment: OMS_KAFKA_PORT (9092), OMS_KAFKA_CONTROLLER_PORT (port+1),
#   OMS_KAFKA_STATE (<repo>/.cache/kafka-<port>),
#   OMS_KAFKA_LIBS (<repo>/.cache/kafka-libs-<version>), KAFKA_VERSION (4.1.1),
#   OMS_KAFKA_HEAP (1g), KAFKA_HOME (use an installed distribution's libs/),
#   OMS_KAFKA_WAIT (seconds to wait for the broker, 90),
#   OMS_KAFKA_SECURITY (plaintext | sasl; plaintext),
#   OMS_KAFKA_ADMIN_USER (admin), OMS_KAFKA_ADMIN_PASSWORD (required for sasl).
#
# With OMS_KAFKA_SECURITY=sasl the client listener is SASL_PLAINTEXT with
# SCRAM-SHA-512, the StandardAuthorizer refuses whatever no ACL allows, and the
# admin user (its SCRAM credential written into the metadata log when the
# storage is formatted) is the only super user. The controller listener
# authenticates the same admin with SASL/PLAIN from the broker's own config:
# SCRAM credentials live in the metadata log, which the controller must serve
# before anyone can read them. Other users and their ACLs: `oms acl` (README).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
PORT="${OMS_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${OMS_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
STATE="${OMS_KAFKA_STATE:-$REPO/.cache/kafka-$PORT}"
HEAP="${OMS_KAFKA_HEAP:-1g}"
WAIT_SECS="${OMS_KAFKA_WAIT:-90}"
if [[ -n "${KAFKA_HOME:-}" ]]; then
  LIBS="$KAFKA_HOME/libs"
else
  LIBS="${OMS_KAFKA_LIBS:-$REPO/.cache/kafka-libs-$KAFKA_VERSION}"
fi
PROPS="$STATE/server.properties"
PIDFILE="$STATE/kafka.pid"
LOG="$STATE/kafka.log"
BOOTSTRAP="127.0.0.1:$PORT"
SECURITY="${OMS_KAFKA_SECURITY:-plaintext}"
ADMIN_USER="${OMS_KAFKA_ADMIN_USER:-admin}"

log() { echo "kafka[$PORT]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# What start, status and wait need to talk to the broker (stop and reset do not).
check_security() {
  case "$SECURITY" in
  plaintext) ;;
  sasl)
    [[ -n "${OMS_KAFKA_ADMIN_PASSWORD:-}" ]] || { log "ERROR: OMS_KAFKA_SECURITY=sasl needs OMS_KAFKA_ADMIN_PASSWORD"; exit 2; }
    # Both end up in JAAS strings (between double quotes) and in a SCRAM spec (name=..,password=..]).
    if [[ ! "$ADMIN_USER" =~ ^[A-Za-z0-9._-]+$ || "$OMS_KAFKA_ADMIN_PASSWORD" =~ [][\"\\\;,=[:space:]] ]]; then
      log "ERROR: OMS_KAFKA_ADMIN_USER is letters, digits, '.', '_' and '-'; the password has no quotes, backslashes, brackets, ';', ',', '=' or spaces"
      exit 2
    fi
    ;;
  *) log "ERROR: OMS_KAFKA_SECURITY is plaintext or sasl, not '$SECURITY'"; exit 2 ;;
  esac
}

# A JAAS line for the admin: `scram` logs in over SCRAM; `plain` is the
# controller listener's PLAIN login, which also lists the users it accepts.
jaas() {
  local password="$OMS_KAFKA_ADMIN_PASSWORD"
  case "$1" in
    scram) echo "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$ADMIN_USER\" password=\"$password\";" ;;
    plain) echo "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"$ADMIN_USER\" password=\"$password\" user_$ADMIN_USER=\"$password\";" ;;
  esac
}

# start/stop/reset of one instance run one at a time: two concurrent starts
# would both format and launch, and the loser would overwrite the pid file.
lock() {
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 300 9 || die "another kafka.sh holds $STATE/.lock"
}

fetch() {
  if [[ -n "${KAFKA_HOME:-}" ]]; then
    compgen -G "$LIBS/kafka_*.jar" >/dev/null || die "KAFKA_HOME=$KAFKA_HOME has no $LIBS/kafka_*.jar"
    return 0
  fi
  local marker="$LIBS/.fetched"
  if [[ -f "$marker" && "$(cat "$marker")" == "$KAFKA_VERSION" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: install Maven (Debian: apt-get install maven) or set KAFKA_HOME"
  command -v java >/dev/null || die "java not found: install a JDK >= 17"
  # Instances on other ports share the libs dir: one fetch at a time, and a
  # dir only becomes visible once complete (the marker is written last).
  mkdir -p "$(dirname "$LIBS")"
  exec 8>"$LIBS.lock"
  flock -w 600 8 || die "another kafka.sh is fetching into $LIBS"
  if [[ -f "$marker" && "$(cat "$marker")" == "$KAFKA_VERSION" ]]; then
    return 0
  fi
  log "fetching Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  local tmp="$LIBS.tmp"
  rm -rf "$tmp"
  # Output kept aside and shown on failure only (Debian's mvn -q still prints
  # stray colour codes).
  if ! mvn -q -B -f "$HERE/pom.xml" -Dkafka.version="$KAFKA_VERSION" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >"$LIBS.fetch.log" 2>&1; then
    cat "$LIBS.fetch.log" >&2
    rm -rf "$tmp"
    die "maven could not fetch Kafka $KAFKA_VERSION (see above)"
  fi
  echo "$KAFKA_VERSION" >"$tmp/.fetched"
  rm -rf "$LIBS"
  mv -T "$tmp" "$LIBS"
}

java_cp() { java -cp "$LIBS/*" "$@"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Kafka answers a real request (ApiVersions to the broker), not just a TCP accept.
answers() {
  port_open "$PORT" || return 1
  [[ -f "$LIBS/.fetched" || -n "${KAFKA_HOME:-}" ]] || return 1
  if [[ -z "${PROBE_CFG:-}" ]]; then
    PROBE_CFG="$(mktemp)"
    trap 'rm -f "$PROBE_CFG"' EXIT
    printf 'request.timeout.ms=3000\ndefault.api.timeout.ms=5000\n' >"$PROBE_CFG"
    if [[ "$SECURITY" == sasl ]]; then
      # mktemp made the file readable by its owner only.
      printf '%s\n' security.protocol=SASL_PLAINTEXT sasl.mechanism=SCRAM-SHA-512 \
        "sasl.jaas.config=$(jaas scram)" >>"$PROBE_CFG"
    fi
  fi
  timeout 20 java -Xmx128m -XX:TieredStopAtLevel=1 -cp "$LIBS/*" \
    org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "$BOOTSTRAP" --command-config "$PROBE_CFG" >/dev/null 2>&1
}

# The pid from the pid file, if that process is still our broker (pids get reused).
live_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $PROPS" || return 1
  echo "$pid"
}

wait_ready() {
  local deadline=$((SECONDS + WAIT_SECS)) missing=0
  until answers; do
    if (( SECONDS >= deadline )); then
      log "broker did not answer on $BOOTSTRAP within ${WAIT_SECS}s"
      if live_pid >/dev/null; then log "last 40 lines of $LOG:"; tail -n 40 "$LOG" >&2; fi
      return 1
    fi
    # Gone at two looks a second apart: while nohup, setsid and java exec one another, just after the start, the
    # process's cmdline can read empty for an instant (a broker that was running was taken for exited).
    if [[ -f "$PIDFILE" ]] && ! live_pid >/dev/null; then
      if (( ++missing >= 2 )); then
        log "broker process exited; last 40 lines of $LOG:"
        tail -n 40 "$LOG" >&2 2>/dev/null || true
        return 1
      fi
    else
      missing=0
    fi
    sleep 1
  done
}

write_props() {
  # In sasl mode the file holds the admin password: readable by its owner only.
  rm -f "$PROPS"
  (umask 077; { listener_props; common_props; } >"$PROPS")
}

# How clients, the broker and the controller reach each other (and log in).
listener_props() {
  cat <<EOF
# Written by deploy/kafka/kafka.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.listener.names=CONTROLLER
# A dynamic single-voter quorum (StorageTool --standalone); controller.quorum.voters
# would conflict with it.
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
EOF
  if [[ "$SECURITY" != sasl ]]; then
    cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
EOF
    return
  fi
  cat <<EOF
listeners=SASL_PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:$PORT
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
# Clients and the broker itself: SCRAM-SHA-512, users from the metadata log.
listener.name.sasl_plaintext.sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$(jaas scram)
# Broker to controller: PLAIN, the admin from this file (SCRAM users are known
# only once the controller has read the metadata log).
listener.name.controller.sasl.enabled.mechanisms=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.plain.sasl.jaas.config=$(jaas plain)
# Whatever no ACL allows is refused; only the admin (the broker itself, the
# controller, operators) bypasses ACLs.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:$ADMIN_USER
EOF
}

common_props() {
  cat <<EOF
log.dirs=$STATE/data
# The project creates its topics explicitly; a typo must not invent a topic.
auto.create.topics.enable=false
num.partitions=6
# One node: internal topics cannot have more than one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
EOF
}

start() {
  local pid
  if answers; then
    log "already running on $BOOTSTRAP"
    return 0
  fi
  if pid="$(live_pid)"; then
    log "broker (pid $pid) is starting; waiting for it"
    wait_ready || exit 1
    log "running on $BOOTSTRAP"
    return 0
  fi
  port_open "$PORT" && die "port $PORT is taken by something that does not answer as Kafka"
  port_open "$CONTROLLER_PORT" && die "controller port $CONTROLLER_PORT is already taken (set OMS_KAFKA_CONTROLLER_PORT)"
  fetch
  mkdir -p "$STATE/data"
  write_props
  [[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.1"
  # A storage formatted for one mode has the other's users (or none): switching
  # takes a reset, not a surprise at the first login.
  local formatted_for
  formatted_for="$(cat "$STATE/security" 2>/dev/null || echo plaintext)"
  if [[ -f "$STATE/data/meta.properties" && "$formatted_for" != "$SECURITY" ]]; then
    die "$STATE holds a broker formatted for security '$formatted_for', not '$SECURITY'; run: OMS_KAFKA_PORT=$PORT $0 reset"
  fi
  if [[ ! -f "$STATE/data/meta.properties" ]]; then
    [[ -s "$STATE/cluster.id" ]] || java_cp kafka.tools.StorageTool random-uuid >"$STATE/cluster.id"
    log "formatting KRaft storage in $STATE/data (cluster id $(cat "$STATE/cluster.id"), security $SECURITY)"
    local scram=()
    if [[ "$SECURITY" == sasl ]]; then
      # The admin's SCRAM credential enters the metadata log with the format.
      scram=(--add-scram "SCRAM-SHA-512=[name=$ADMIN_USER,password=$OMS_KAFKA_ADMIN_PASSWORD]")
    fi
    java_cp kafka.tools.StorageTool format --standalone --ignore-formatted \
      -t "$(cat "$STATE/cluster.id")" -c "$PROPS" "${scram[@]}" >>"$LOG" 2>&1 \
      || { tail -n 20 "$LOG" >&2; die "storage format failed"; }
    echo "$SECURITY" >"$STATE/security"
  fi
  log "starting Kafka $KAFKA_VERSION (state $STATE, log $LOG)"
  # setsid: the broker outlives this shell and ignores its terminal's signals.
  # All std fds redirected, and the lock fds closed: a caller reading our output
  # through a pipe, or the next kafka.sh, must not wait for the broker to exit.
  nohup setsid java -Xms"$HEAP" -Xmx"$HEAP" -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/log4j2.properties" \
    -cp "$LIBS/*" kafka.Kafka "$PROPS" </dev/null >>"$LOG" 2>&1 8>&- 9>&- &
  echo $! >"$PIDFILE"
  local t0=$SECONDS
  wait_ready || exit 1
  log "running on $BOOTSTRAP (ready in $((SECONDS - t0))s)"
}

stop() {
  local pid
  if ! pid="$(live_pid)"; then
    rm -f "$PIDFILE"
    if port_open "$PORT"; then
      log "not started by this script (no live pid in $PIDFILE), but port $PORT is in use; leaving it alone"
    else
      log "not running"
    fi
    return 0
  fi
  log "stopping broker (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if (( SECONDS >= deadline )); then
      log "still alive after 30s; killing"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.5
  done
  rm -f "$PIDFILE"
  log "stopped"
}

case "${1:-}" in
  fetch)  fetch; log "libs ready in $LIBS" ;;
  start)  check_security; lock; start ;;
  stop)   if [[ -d "$STATE" ]]; then lock; fi; stop ;;
  status) check_security; if answers; then echo running; else echo stopped; exit 3; fi ;;
  wait)   check_security; wait_ready || exit 1; log "running on $BOOTSTRAP" ;;
  logs)   [[ -f "$LOG" ]] || die "no log at $LOG"; tail -n "${2:-100}" "$LOG" ;;
  reset)  if [[ -d "$STATE" ]]; then lock; fi; stop; rm -rf "$STATE"; log "state $STATE deleted" ;;
  *)      echo "usage: $0 fetch|start|stop|status|wait|logs [N]|reset" >&2; exit 2 ;;
esac
