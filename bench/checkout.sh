#!/usr/bin/env bash
# Checkout benchmark: starts the all-in-one release binary on a fresh data directory (1,000
# seeded demo products) with the mock provider in automatic mode, gives a few SKUs ample stock,
# and drives checkouts with the load generator: each worker is a customer who adds one unit and
# checks out, again and again. Afterwards it waits for the automatic payments and prints how
# many orders were paid and the inventory check.
#
#   bash bench/checkout.sh [checkouts] [concurrency]
set -euo pipefail
checkouts=${1:-20000}
concurrency=${2:-32}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p mercato -p loadtest --manifest-path "$root/Cargo.toml" >/dev/null
data=$(mktemp -d /tmp/mercato-checkout-bench.XXXXXX)
port=18082
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$data"' EXIT

export MERCATO_RATE_LIMIT__PER_IP_PER_MINUTE=1000000000
export MERCATO_RATE_LIMIT__PER_USER_PER_MINUTE=1000000000
export MERCATO_PAYMENTS_MOCK_AUTO=true
export MERCATO_ADMIN_EMAIL=bench-admin@example.com MERCATO_ADMIN_PASSWORD="bench admin password"
export MERCATO_LOG_FORMAT=json RUST_LOG=warn
"$target/release/mercato" --data-dir "$data" --port $port > "$data/server.log" 2>&1 &
server=$!
base="http://127.0.0.1:$port"
for _ in $(seq 1 600); do
  curl -fs "$base/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
admin=$(curl -fs -X POST "$base/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email": "bench-admin@example.com", "password": "bench admin password"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
mapfile -t skus < <(python3 - "$data" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}/inventory.db?mode=ro", uri=True)
for (sku,) in db.execute("select sku from stock where discontinued_at is null order by sku limit 20"):
    print(sku)
PY
)
args=()
for sku in "${skus[@]}"; do
  curl -fs -o /dev/null -X PUT "$base/api/v1/admin/inventory/$sku" -H "authorization: Bearer $admin" \
    -H 'content-type: application/json' -d '{"on_hand": 100000000}'
  args+=(--sku "$sku")
done
echo "== checkouts (${#skus[@]} SKUs, card, automatic approval, $concurrency workers)"
"$target/release/loadtest" --url "$base" --concurrency "$concurrency" --requests "$checkouts" \
  --max-seconds 60 checkout "${args[@]}"
echo "RSS (kB): $(grep VmRSS /proc/$server/status 2>/dev/null | awk '{print $2}')"
for _ in $(seq 1 120); do
  pending=$(python3 - "$data" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}/orders.db?mode=ro", uri=True)
print(db.execute("select count(*) from orders where status = 'pending'").fetchone()[0])
PY
)
  [ "$pending" = 0 ] && break
  sleep 0.5
done
python3 - "$data" <<'PY'
import sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}/orders.db?mode=ro", uri=True)
print("orders by status:", dict(db.execute("select status, count(*) from orders group by status").fetchall()))
PY
kill $server 2>/dev/null || true
wait $server 2>/dev/null || true
"$target/release/mercato" --data-dir "$data" inventory check
