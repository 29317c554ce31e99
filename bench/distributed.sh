#!/usr/bin/env bash
# The catalog and checkout loads of bench/catalog.sh and bench/checkout.sh, against the
# distributed stack on this machine (scripts/stack.sh: every service its own release process,
# two replicas of catalog and of orders, the gateway in front, on the local PostgreSQL, NATS and
# Redis), driven through the gateway. Compare with the all-in-one figures of those scripts.
#
#   bash bench/distributed.sh [products] [requests-per-run] [checkouts] [concurrency]
#
# Needs PostgreSQL (POSTGRES_URL, default postgres://postgres@127.0.0.1:5432), NATS with
# JetStream and Redis (NATS_URL, REDIS_URL: scripts/stack.sh's defaults).
set -euo pipefail
products=${1:-10000}
requests=${2:-50000}
checkouts=${3:-5000}
concurrency=${4:-32}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p mercato -p loadtest --manifest-path "$root/Cargo.toml" >/dev/null
loadtest=$target/release/loadtest
stack="$root/scripts/stack.sh"
pg=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}

export MERCATO_BIN=$target/release/mercato
export STACK_DIR
STACK_DIR=$(mktemp -d /tmp/mercato-distributed-bench.XXXXXX)
export STACK_PORT=${STACK_PORT:-19300} STACK_NAME=bench STACK_FRESH=1
export MERCATO_RATE_LIMIT__PER_IP_PER_MINUTE=1000000000
export MERCATO_RATE_LIMIT__PER_USER_PER_MINUTE=1000000000
export MERCATO_PAYMENTS_MOCK_AUTO=true
export MERCATO_ADMIN_EMAIL=bench-admin@example.com MERCATO_ADMIN_PASSWORD="bench admin password"
export MERCATO_LOG_FORMAT=json RUST_LOG=warn
# Eleven processes share PostgreSQL's 100 connections.
export MERCATO_DATABASE__MAX_CONNECTIONS=${MERCATO_DATABASE__MAX_CONNECTIONS:-6}
trap 'bash "$stack" stop >/dev/null 2>&1 || true; bash "$stack" drop >/dev/null 2>&1 || true; rm -rf "$STACK_DIR"' EXIT

echo "== start the stack"
bash "$stack" start
base="http://127.0.0.1:$STACK_PORT"
sql() { psql "$pg/mercato_bench_$1" -tAc "$2"; }

echo "== seed $products products (and stock their SKUs)"
MERCATO_DATABASE__URLS__CATALOG="$pg/mercato_bench_catalog" \
MERCATO_DATABASE__URLS__INVENTORY="$pg/mercato_bench_inventory" \
  "$MERCATO_BIN" --data-dir "$STACK_DIR/seed" seed --products "$products"
# Each catalog replica indexes the seed's product events itself; wait until both hold the same
# number of documents, the outbox is empty, and the count stays put.
indexed() { curl -fs "http://127.0.0.1:$((STACK_PORT + $1))/metrics" | awk '/^mercato_search_index_documents/ {print int($2)}'; }
drain_start=$(date +%s)
last=""
while true; do
  one=$(indexed 2 || echo 0) two=$(indexed 3 || echo 0)
  now="$one/$two/$(sql catalog 'select count(*) from outbox')"
  if [[ $one -gt 0 && $one == "$two" && $now == "$last" && $now == */0 ]]; then break; fi
  last=$now
  sleep 2
done
echo "both catalog replicas indexed $one documents after $(( $(date +%s) - drain_start )) s"

slug=$(curl -fs "$base/api/v1/products?limit=1" | sed 's/.*"slug":"\([^"]*\)".*/\1/')
queries=$STACK_DIR/queries.txt
for q in headphones "wireles+headphones" "blutooth+speaker" "premium+leather+jacket" "acme" \
         "coffe+maker" "yoga+mat" "stainles" "runing+shoes" "smart+watch" "kettle" "chef+knife"; do
  echo "/api/v1/search?q=$q" >> "$queries"
done
run() { echo "== $1"; shift; "$loadtest" --url "$base" --concurrency 32 --requests "$requests" --max-seconds 30 "$@"; }
run "product list (first page, cached)" get --path "/api/v1/products"
run "product list (filtered, sorted)" get --path "/api/v1/products?sort=price_asc&price_min=1000&price_max=5000&limit=20"
run "product detail" get --path "/api/v1/products/$slug"
run "search, 1-3 words with typos (cached answers)" get --paths-file "$queries"
mapfile -t texts < <(sed 's|.*q=||' "$queries")
: > "$STACK_DIR/fresh.txt"
for i in $(seq 1 6000); do
  echo "/api/v1/search?q=${texts[$((i % ${#texts[@]}))]}&price_max=$((200000 + i))" >> "$STACK_DIR/fresh.txt"
done
echo "== search without the answer cache, with facets"
"$loadtest" --url "$base" --concurrency 16 --requests 6000 --max-seconds 30 get --paths-file "$STACK_DIR/fresh.txt"

echo "== checkouts"
admin=$(curl -fs -X POST "$base/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email": "bench-admin@example.com", "password": "bench admin password"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
mapfile -t skus < <(sql inventory "select sku from stock where discontinued_at is null order by sku limit 20")
args=()
for sku in "${skus[@]}"; do
  curl -fs -o /dev/null -X PUT "$base/api/v1/admin/inventory/$sku" -H "authorization: Bearer $admin" \
    -H 'content-type: application/json' -d '{"on_hand": 100000000}'
  args+=(--sku "$sku")
done
echo "== checkouts (${#skus[@]} SKUs, card, automatic approval, $concurrency workers)"
"$loadtest" --url "$base" --concurrency "$concurrency" --requests "$checkouts" --max-seconds 60 checkout "${args[@]}"
for _ in $(seq 1 240); do
  [[ $(sql orders "select count(*) from orders where status = 'pending'") == 0 ]] && break
  sleep 0.5
done
echo "orders by status: $(sql orders "select string_agg(status || '=' || n, ', ') from (select status, count(*) n from orders group by status) s")"
echo "RSS per process (kB):"
for pidfile in "$STACK_DIR"/*.pid; do
  name=$(basename "$pidfile" .pid)
  printf '  %-16s %s\n' "$name" "$(grep VmRSS "/proc/$(cat "$pidfile")/status" 2>/dev/null | awk '{print $2}')"
done
