#!/usr/bin/env bash
# The distributed mode on this machine: every service its own process (two replicas of catalog
# and of orders) and the gateway in front, against the local PostgreSQL, Redis and NATS.
#
#   scripts/stack.sh start          build nothing; start every process, wait until all are ready
#   scripts/stack.sh stop           stop every process of the stack
#   scripts/stack.sh status         which processes run, and the gateway's view of them
#   scripts/stack.sh kill NAME      kill -9 one process (e.g. orders-1; nats or redis with
#                                   STACK_OWN_BROKERS=1), for fault tests
#   scripts/stack.sh revive NAME    start that one process again and wait until it is ready
#   scripts/stack.sh drop           forget the stopped stack: its databases, stream and Redis keys
#
# Settings (environment):
#   MERCATO_BIN        the binary (default: $CARGO_TARGET_DIR/debug/mercato, else target/debug/mercato)
#   STACK_DIR          pids, logs and data directories (default: /tmp/mercato-stack)
#   STACK_PORT         the gateway's port; services take the next ones (default: 19100)
#   STACK_NAME         names the databases (mercato_<name>_<service>), the NATS stream and the
#                      Redis keys, so several stacks and the tests never share state (default: stack)
#   STACK_FRESH=1      drop and recreate the databases, the stream and the Redis keys first
#   POSTGRES_URL       server to create the databases on (default: postgres://postgres@127.0.0.1:5432)
#   NATS_URL, REDIS_URL  (defaults: nats://127.0.0.1:4222, redis://127.0.0.1:6379)
#   STACK_OWN_BROKERS=1  run a NATS JetStream server (port +12) and a Redis server (port +13) of the
#                      stack's own, with their data under STACK_DIR, instead of NATS_URL and
#                      REDIS_URL: fault tests kill and restart them without touching anyone else's
# Any other MERCATO_* variable set by the caller reaches every process (e.g. MERCATO_PAYMENTS_MOCK_AUTO).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STACK_DIR="${STACK_DIR:-/tmp/mercato-stack}"
STACK_PORT="${STACK_PORT:-19100}"
STACK_NAME="${STACK_NAME:-stack}"
POSTGRES_URL="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
NATS_URL="${NATS_URL:-nats://127.0.0.1:4222}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
if [[ ${STACK_OWN_BROKERS:-0} == 1 ]]; then
  NATS_URL="nats://127.0.0.1:$((STACK_PORT + 12))"
  REDIS_URL="redis://127.0.0.1:$((STACK_PORT + 13))"
fi
if [[ -z "${MERCATO_BIN:-}" ]]; then
  MERCATO_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/mercato"
fi

SERVICES=(identity catalog inventory cart orders payments notifications delivery)
# name, service, port offset: two replicas of catalog and orders.
PROCESSES=(
  "identity-1 identity 1"
  "catalog-1 catalog 2"
  "catalog-2 catalog 3"
  "inventory-1 inventory 4"
  "cart-1 cart 5"
  "orders-1 orders 6"
  "orders-2 orders 7"
  "payments-1 payments 8"
  "notifications-1 notifications 9"
  "delivery-1 delivery 10"
  "gateway-1 gateway 0"
)

die() { echo "stack: $*" >&2; exit 1; }

own_broker() { [[ ${STACK_OWN_BROKERS:-0} == 1 && ( $1 == nats || $1 == redis ) ]]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The stack's own brokers: JetStream on disk, Redis with an append-only file synced on every
# write, so that a kill -9 and a restart lose nothing either of them had acknowledged.
launch_broker() {
  local name=$1 port
  mkdir -p "$STACK_DIR/$name"
  case $name in
    nats)
      port=$((STACK_PORT + 12))
      nats-server -a 127.0.0.1 -p "$port" -js -sd "$STACK_DIR/nats" >>"$STACK_DIR/nats.log" 2>&1 &
      ;;
    redis)
      port=$((STACK_PORT + 13))
      redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly yes --appendfsync always \
        --dir "$STACK_DIR/redis" >>"$STACK_DIR/redis.log" 2>&1 &
      ;;
  esac
  echo $! >"$STACK_DIR/$name.pid"
  local deadline=$((SECONDS + 30))
  until port_open "$port"; do
    alive "$name" || die "$name exited at start (log: $STACK_DIR/$name.log)"
    ((SECONDS <= deadline)) || die "$name is not listening on $port after 30 s (log: $STACK_DIR/$name.log)"
    sleep 0.1
  done
}

db_name() { echo "mercato_${STACK_NAME}_$1"; }

port_of() {
  local name=$1
  for p in "${PROCESSES[@]}"; do
    read -r n _ offset <<<"$p"
    if [[ $n == "$name" ]]; then echo $((STACK_PORT + offset)); return; fi
  done
  die "no process named $name"
}

service_of() {
  local name=$1
  for p in "${PROCESSES[@]}"; do
    read -r n service _ <<<"$p"
    if [[ $n == "$name" ]]; then echo "$service"; return; fi
  done
  die "no process named $name"
}

urls_of() {
  local service=$1 urls=()
  for p in "${PROCESSES[@]}"; do
    read -r _ s offset <<<"$p"
    if [[ $s == "$service" ]]; then urls+=("http://127.0.0.1:$((STACK_PORT + offset))"); fi
  done
  local IFS=,
  echo "${urls[*]}"
}

# The environment every process shares.
common_env() {
  export MERCATO_HOST=127.0.0.1
  export MERCATO_LOG_FORMAT="${MERCATO_LOG_FORMAT:-json}"
  export MERCATO_BUS__KIND=nats
  export MERCATO_BUS__NATS_URL="$NATS_URL"
  export MERCATO_BUS__NATS_STREAM="MERCATO_${STACK_NAME^^}"
  export MERCATO_BUS__NATS_SUBJECT_PREFIX="mercato_${STACK_NAME}.events"
  export MERCATO_CART__STORE=redis
  export MERCATO_CART__REDIS_URL="$REDIS_URL"
  export MERCATO_CART__REDIS_PREFIX="mercato:${STACK_NAME}:"
  export MERCATO_CATALOG__CACHE_STORE=redis
  export MERCATO_CATALOG__CACHE_REDIS_URL="$REDIS_URL"
  export MERCATO_CATALOG__CACHE_REDIS_PREFIX="mercato:${STACK_NAME}:"
  export MERCATO_RATE_LIMIT__STORE=redis
  export MERCATO_RATE_LIMIT__REDIS_URL="$REDIS_URL"
  export MERCATO_RATE_LIMIT__REDIS_PREFIX="mercato:${STACK_NAME}:"
  export MERCATO_CLUSTER__SERVICE_TOKEN="${MERCATO_CLUSTER__SERVICE_TOKEN:-$(service_token)}"
  export MERCATO_PUBLIC_URL="http://127.0.0.1:${STACK_PORT}"
  export MERCATO_CATALOG__SEED_PRODUCTS=0
  # Eleven processes on one PostgreSQL (100 connections by default) beside whatever else uses it.
  export MERCATO_DATABASE__MAX_CONNECTIONS="${MERCATO_DATABASE__MAX_CONNECTIONS:-5}"
  for s in "${SERVICES[@]}"; do
    export "MERCATO_DATABASE__URLS__${s^^}=${POSTGRES_URL}/$(db_name "$s")"
    export "MERCATO_CLUSTER__URLS__${s^^}=$(urls_of "$s")"
  done
}

# One token per stack directory, kept so that a revived process matches the others.
service_token() {
  local file="$STACK_DIR/service-token"
  if [[ ! -s $file ]]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$file"
  fi
  cat "$file"
}

ready() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/health/ready" 2>/dev/null; }

wait_ready() {
  local name=$1 port deadline
  port=$(port_of "$name")
  deadline=$((SECONDS + ${STACK_WAIT_SECS:-120}))
  until ready "$port"; do
    if ! alive "$name"; then
      tail -n 30 "$STACK_DIR/$name.log" >&2 || true
      die "$name exited before it was ready (log: $STACK_DIR/$name.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "$STACK_DIR/$name.log" >&2 || true
      die "$name is not ready after ${STACK_WAIT_SECS:-120} s (log: $STACK_DIR/$name.log)"
    fi
    sleep 0.2
  done
}

alive() {
  local pidfile="$STACK_DIR/$1.pid"
  [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

launch() {
  local name=$1 service port
  service=$(service_of "$name")
  port=$(port_of "$name")
  mkdir -p "$STACK_DIR/data/$name"
  (
    export MERCATO_PORT="$port"
    export MERCATO_DATA_DIR="$STACK_DIR/data/$name"
    export MERCATO_CLUSTER__REPLICA="$name"
    exec "$MERCATO_BIN" serve "$service"
  ) >>"$STACK_DIR/$name.log" 2>&1 &
  echo $! >"$STACK_DIR/$name.pid"
}

create_databases() {
  for s in "${SERVICES[@]}"; do
    local db
    db=$(db_name "$s")
    if [[ ${STACK_FRESH:-0} == 1 ]]; then
      psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    fi
    if ! psql "$POSTGRES_URL/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
      psql "$POSTGRES_URL/postgres" -qc "CREATE DATABASE $db" >/dev/null
    fi
  done
}

forget_bus_and_cache() {
  # The stream goes with its consumers; the next start creates it again.
  python3 - "$NATS_URL" "MERCATO_${STACK_NAME^^}" <<'PY'
import socket, sys
from urllib.parse import urlparse
url, stream = urlparse(sys.argv[1]), sys.argv[2]
s = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=5)
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false}\r\nSUB _INBOX.stack 1\r\nPUB $JS.API.STREAM.DELETE.%s _INBOX.stack 0\r\n\r\n' % stream.encode())
data = b""
while b"MSG _INBOX.stack" not in data:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
    if b"PING" in chunk:
        s.sendall(b"PONG\r\n")
PY
  local host port
  host=$(sed -E 's#redis://([^:/]+).*#\1#' <<<"$REDIS_URL")
  port=$(sed -E 's#redis://[^:/]+:?([0-9]*).*#\1#' <<<"$REDIS_URL")
  python3 - "$host" "${port:-6379}" "mercato:${STACK_NAME}:" <<'PY'
import socket, sys
host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=5)
def cmd(*args):
    s.sendall(b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() for x in args)]))
    return s.recv(1 << 20)
cmd("EVAL", "for _, k in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do redis.call('DEL', k) end return 0", "0", prefix)
PY
}

start() {
  [[ -x $MERCATO_BIN ]] || die "no binary at $MERCATO_BIN; run: cargo build -p mercato"
  mkdir -p "$STACK_DIR"
  for p in "${PROCESSES[@]}"; do
    read -r name _ _ <<<"$p"
    if alive "$name"; then die "$name is running already; run: $0 stop"; fi
  done
  common_env
  create_databases
  if [[ ${STACK_OWN_BROKERS:-0} == 1 ]]; then
    if [[ ${STACK_FRESH:-0} == 1 ]]; then rm -rf "$STACK_DIR/nats" "$STACK_DIR/redis"; fi
    for broker in nats redis; do alive "$broker" || launch_broker "$broker"; done
  fi
  if [[ ${STACK_FRESH:-0} == 1 ]]; then
    rm -rf "$STACK_DIR/data"
    forget_bus_and_cache
  fi
  # Migrations once, before two replicas could race for them.
  for s in "${SERVICES[@]}"; do
    "$MERCATO_BIN" migrate --service "$s" >>"$STACK_DIR/migrate.log" 2>&1 || die "migrating $s failed (log: $STACK_DIR/migrate.log)"
  done
  for p in "${PROCESSES[@]}"; do
    read -r name _ _ <<<"$p"
    launch "$name"
  done
  for p in "${PROCESSES[@]}"; do
    read -r name _ _ <<<"$p"
    wait_ready "$name"
  done
  echo "stack ready: gateway at http://127.0.0.1:${STACK_PORT} (logs in $STACK_DIR)"
}

stop_one() {
  local name=$1 pidfile="$STACK_DIR/$1.pid" pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop() {
  for p in "${PROCESSES[@]}"; do
    read -r name _ _ <<<"$p"
    stop_one "$name"
  done
  stop_one nats
  stop_one redis
  echo "stack stopped"
}

status() {
  for p in "${PROCESSES[@]}"; do
    read -r name service offset <<<"$p"
    local port=$((STACK_PORT + offset)) state=down
    if alive "$name"; then state=running; fi
    if ready "$port"; then state=ready; fi
    printf '%-16s %-14s %5d  %s\n' "$name" "$service" "$port" "$state"
  done
  if [[ ${STACK_OWN_BROKERS:-0} == 1 ]]; then
    for broker in nats redis; do
      local state=down port=$((STACK_PORT + 12))
      [[ $broker == redis ]] && port=$((STACK_PORT + 13))
      alive "$broker" && state=running
      printf '%-16s %-14s %5d  %s\n' "$broker" "$broker" "$port" "$state"
    done
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  kill)
    [[ -n ${2:-} ]] || die "kill needs a process name"
    pidfile="$STACK_DIR/$2.pid"
    [[ -s $pidfile ]] || die "$2 is not running"
    pid=$(cat "$pidfile")
    kill -KILL "$pid" 2>/dev/null || true
    # Gone once it no longer runs (a zombie nobody reaps counts as gone): its ports are free.
    for _ in $(seq 1 100); do
      state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
      [[ -z $state || $state == Z* ]] && break
      sleep 0.05
    done
    rm -f "$pidfile"
    ;;
  revive)
    [[ -n ${2:-} ]] || die "revive needs a process name"
    common_env
    alive "$2" && die "$2 is running"
    if own_broker "$2"; then
      launch_broker "$2"
    else
      launch "$2"
      wait_ready "$2"
    fi
    ;;
  drop)
    # Everything the stack kept: its databases, its stream and its Redis keys.
    for p in "${PROCESSES[@]}"; do
      read -r name _ _ <<<"$p"
      alive "$name" && die "$name is running; run: $0 stop"
    done
    if [[ ${STACK_OWN_BROKERS:-0} == 1 ]]; then
      # The brokers' data goes with their directories; nothing to forget on shared servers.
      for s in "${SERVICES[@]}"; do
        psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $(db_name "$s") WITH (FORCE)" >/dev/null
      done
      rm -rf "$STACK_DIR/nats" "$STACK_DIR/redis"
      exit 0
    fi
    for s in "${SERVICES[@]}"; do
      psql "$POSTGRES_URL/postgres" -qc "DROP DATABASE IF EXISTS $(db_name "$s") WITH (FORCE)" >/dev/null
    done
    forget_bus_and_cache
    ;;
  *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
