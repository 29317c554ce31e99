#!/usr/bin/env bash
# Cart and inventory benchmark: starts the all-in-one release binary on a fresh data directory
# (1,000 seeded, stocked demo products), drives guest carts with the load generator (add one unit,
# read the cart, empty it every 50 operations; 32 workers), then measures reservation + commit
# throughput of the inventory service on SQLite and, when a PostgreSQL URL is given (argument or
# MERCATO_TEST_POSTGRES_URL), on PostgreSQL.
#
#   bash bench/cart.sh [requests] [postgres-url]
set -euo pipefail
requests=${1:-300000}
pg=${2:-${MERCATO_TEST_POSTGRES_URL:-}}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p mercato -p loadtest --manifest-path "$root/Cargo.toml" >/dev/null
cargo build --release -p inventory --example reserve_bench --manifest-path "$root/Cargo.toml" >/dev/null
data=$(mktemp -d /tmp/mercato-cart-bench.XXXXXX)
port=18081
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$data"' EXIT

export MERCATO_RATE_LIMIT__PER_IP_PER_MINUTE=1000000000
export MERCATO_RATE_LIMIT__PER_USER_PER_MINUTE=1000000000
export MERCATO_LOG_FORMAT=json RUST_LOG=warn
"$target/release/mercato" --data-dir "$data" --port $port > "$data/server.log" 2>&1 &
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
mapfile -t skus < <(python3 - "$data" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}/inventory.db?mode=ro", uri=True)
for (sku,) in db.execute("select sku from stock where on_hand >= 100 order by sku limit 50"):
    print(sku)
PY
)
args=()
for sku in "${skus[@]}"; do args+=(--sku "$sku"); done
echo "== cart operations (guest carts, ${#skus[@]} SKUs: add / get / clear)"
"$target/release/loadtest" --url "http://127.0.0.1:$port" --concurrency 32 --requests "$requests" \
  --max-seconds 30 cart "${args[@]}"
echo "RSS (kB): $(grep VmRSS /proc/$!/status 2>/dev/null | awk '{print $2}')"
kill %1 2>/dev/null || true

echo "== reservations + commits, SQLite"
"$target/release/examples/reserve_bench" sqlite 20000 32
if [ -n "$pg" ]; then
  echo "== reservations + commits, PostgreSQL"
  "$target/release/examples/reserve_bench" "$pg" 20000 32
fi
