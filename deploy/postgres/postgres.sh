#!/usr/bin/env bash
# A private PostgreSQL server for development, tests and CI: its own data dir,
# port and socket dir under .cache, never the system's cluster.
#
#   postgres.sh install|start|stop|restart-immediate|status|reset|createdb NAME...
#
# restart-immediate crashes the running server on purpose (pg_ctl -m immediate:
# every backend gone at once, no checkpoint, WAL replayed at the next start)
# and starts it again: what the fault suite (tests/faults) does to PostgreSQL.
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 not running (status).
# Environment: OMS_PG_PORT (5432), OMS_PG_STATE (<repo>/.cache/postgres-<port>),
#   OMS_PG_DATABASES ("oms_order oms_routing oms_inventory oms_notifications"),
#   OMS_PG_OPTIONS (more server options, e.g. "-c shared_preload_libraries=pg_stat_statements" to profile).
# Superuser oms, password oms; TCP on 127.0.0.1 only.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PORT="${OMS_PG_PORT:-5432}"
DATABASES="${OMS_PG_DATABASES:-oms_order oms_routing oms_inventory oms_notifications}"
PG_USER=oms
PG_PASSWORD=oms
SERVICE_USER=postgres   # who owns the data dir when we run as root

log() { echo "postgres[$PORT]: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }
# shellcheck source=../apt.sh
source "$REPO/deploy/apt.sh"

# postgres refuses to run as root, and the service user must be able to reach
# the state dir. If the checkout sits under a dir it cannot enter (e.g. /root),
# fall back to a state dir under /var/tmp rather than fail.
if [[ -n "${OMS_PG_STATE:-}" ]]; then
  STATE="$OMS_PG_STATE"
else
  STATE="$REPO/.cache/postgres-$PORT"
  if is_root && id "$SERVICE_USER" >/dev/null 2>&1 \
      && ! runuser -u "$SERVICE_USER" -- test -x "$REPO" 2>/dev/null; then
    STATE="/var/tmp/oms-postgres-$PORT"
  fi
fi
DATA="$STATE/data"
LOG="$STATE/postgres.log"

find_bin() {
  local d
  # The version that made an existing data dir first: another major cannot open it.
  for d in "/usr/lib/postgresql/$(cat "$DATA/PG_VERSION" 2>/dev/null)/bin" \
           "$(dirname "$(readlink -f "$(command -v pg_ctl 2>/dev/null || echo /nonexistent)")")" \
           $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV); do
    if [[ -x "$d/pg_ctl" && -x "$d/initdb" ]]; then BIN="$d"; return 0; fi
  done
  return 1
}

tool() {  # a client program: from the server's bin dir, else from PATH
  if [[ -n "${BIN:-}" && -x "$BIN/$1" ]]; then echo "$BIN/$1"; else command -v "$1"; fi
}

as_pg() {  # run a server command as the user that owns the data dir
  if is_root; then
    id "$SERVICE_USER" >/dev/null 2>&1 || die "running as root but there is no '$SERVICE_USER' user to run postgres"
    (cd / && runuser -u "$SERVICE_USER" -- "$@")
  else
    "$@"
  fi
}

install() {
  find_bin && return 0
  apt_prepare PostgreSQL postgresql 15
  # The package would create and start a system cluster on 5432, which would
  # take the port from ours: switch that off before the server is installed.
  "${APT[@]}" install --no-install-recommends postgresql-common >&2
  "${SUDO[@]}" sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
  "${APT[@]}" install --no-install-recommends postgresql postgresql-client >&2
  find_bin || die "postgresql installed but no pg_ctl/initdb found"
}

answers() {
  local isready; isready="$(tool pg_isready 2>/dev/null)" || return 1
  "$isready" -q -h 127.0.0.1 -p "$PORT" -t 3
}

psql_oms() {
  PGPASSWORD="$PG_PASSWORD" "$(tool psql)" -X -q -v ON_ERROR_STOP=1 \
    -h 127.0.0.1 -p "$PORT" -U "$PG_USER" "$@"
}

db_exists() {
  [[ "$(psql_oms -d postgres -tAc "select 1 from pg_database where datname = '$1'")" == 1 ]]
}

createdbs() {
  local db
  psql_oms -d postgres -c 'select 1' >/dev/null \
    || die "cannot log in as $PG_USER on 127.0.0.1:$PORT (another PostgreSQL on this port?)"
  for db in "$@"; do
    [[ "$db" =~ ^[a-z_][a-z0-9_]*$ ]] || die "bad database name '$db' (want [a-z_][a-z0-9_]*)"
    db_exists "$db" && continue
    # A concurrent caller may create it between the check and here; that is fine.
    psql_oms -d postgres -c "create database \"$db\"" 2>/dev/null || db_exists "$db" \
      || die "could not create database $db"
    log "created database $db"
  done
}

# start/stop/reset of one instance run one at a time (they share the data dir).
lock() {
  mkdir -p "$STATE"
  exec 9>>"$STATE/.lock"
  flock -w 180 9 || die "another postgres.sh holds $STATE/.lock"
}

init_data() {
  # The server writes its log and socket into the state dir.
  is_root && chown "$SERVICE_USER": "$STATE"
  [[ -f "$DATA/PG_VERSION" ]] && return 0
  local pwfile="$STATE/.pwfile" locale=(--no-locale)
  echo "$PG_PASSWORD" >"$pwfile"
  is_root && chown "$SERVICE_USER": "$pwfile"
  chmod 600 "$pwfile"
  locale -a 2>/dev/null | grep -qix 'c\.utf-\?8' && locale=(--locale=C.UTF-8)
  log "initdb into $DATA"
  rm -rf "$DATA"   # a half-made data dir from an interrupted initdb
  if ! as_pg "$BIN/initdb" -D "$DATA" --username="$PG_USER" --pwfile="$pwfile" \
      --auth-host=scram-sha-256 --auth-local=trust -E UTF8 "${locale[@]}" >"$STATE/initdb.log" 2>&1; then
    rm -f "$pwfile"
    cat "$STATE/initdb.log" >&2
    die "initdb failed"
  fi
  rm -f "$pwfile"
}

# Settings go on the command line so that an existing data dir picks up changes
# made here. Full durability (fsync, synchronous_commit) is a requirement; 300
# connections for many services with pools on one box.
server_opts() {
  local opts="-p $PORT -k '$STATE' -c listen_addresses=127.0.0.1"
  opts+=" -c max_connections=300 -c shared_buffers=256MB"
  opts+=" -c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  echo "$opts ${OMS_PG_OPTIONS:-}"
}

start() {
  if answers; then
    log "already running on 127.0.0.1:$PORT (pg_isready answers); not starting another"
  else
    install
    lock
    if ! answers; then
      init_data
      log "starting PostgreSQL from $BIN (data $DATA, log $LOG)"
      # 9>&-: the server must not inherit (and so hold) our lock.
      as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 -o "$(server_opts)" start >&2 9>&- \
        || { tail -n 40 "$LOG" >&2 2>/dev/null; die "pg_ctl start failed"; }
    fi
  fi
  # shellcheck disable=SC2086  # a space-separated list by design
  createdbs $DATABASES
  log "running on 127.0.0.1:$PORT"
}

stop() {
  if [[ ! -f "$DATA/PG_VERSION" ]]; then log "not running (no data dir)"; return 0; fi
  find_bin || { log "not running (PostgreSQL not installed)"; return 0; }
  if ! as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "not running"
    return 0
  fi
  log "stopping"
  as_pg "$BIN/pg_ctl" -D "$DATA" stop -m fast -w -t 60 >&2 9>&- || die "pg_ctl stop failed"
}

# A crash and a start: no shutdown checkpoint, connections cut without goodbye,
# crash recovery from the WAL before the server accepts connections again.
restart_immediate() {
  [[ -f "$DATA/PG_VERSION" ]] || die "no data dir at $DATA"
  find_bin || die "PostgreSQL is not installed"
  as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1 || die "not running (pg_ctl status)"
  log "restarting in immediate mode (a crash, then crash recovery)"
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 120 -m immediate -o "$(server_opts)" restart >&2 9>&- \
    || { tail -n 40 "$LOG" >&2 2>/dev/null; die "pg_ctl restart failed"; }
  log "running on 127.0.0.1:$PORT again"
}

find_bin || true
case "${1:-}" in
  install)  install; log "PostgreSQL binaries in $BIN" ;;
  start)    start ;;
  createdb) shift; [[ $# -gt 0 ]] || die "createdb needs database names"
            answers || die "not running on 127.0.0.1:$PORT"; createdbs "$@" ;;
  stop)     if [[ -d "$STATE" ]]; then lock; fi; stop ;;
  restart-immediate) lock; restart_immediate ;;
  status)   if answers; then echo running; else echo stopped; exit 3; fi ;;
  reset)    if [[ -d "$STATE" ]]; then lock; fi; stop; rm -rf "$STATE"; log "state $STATE deleted" ;;
  *)        echo "usage: $0 install|start|stop|restart-immediate|status|reset|createdb NAME..." >&2; exit 2 ;;
esac
