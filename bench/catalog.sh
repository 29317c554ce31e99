#!/usr/bin/env bash
# Catalog benchmark: seeds N products (default 100,000) into a fresh data directory, starts the
# all-in-one release binary, and drives product list, product detail and search with the
# repository's load generator on this machine. Prints the seed time, the index build time, the
# RSS after seeding and indexing, and the load generator's throughput and latency percentiles.
#
#   bash bench/catalog.sh [products] [requests-per-run]
set -euo pipefail
products=${1:-100000}
requests=${2:-200000}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p mercato -p loadtest --manifest-path "$root/Cargo.toml" >/dev/null
mercato=$target/release/mercato
loadtest=$target/release/loadtest
data=$(mktemp -d /tmp/mercato-bench.XXXXXX)
port=18080
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$data"' EXIT

echo "== seed $products products"
"$mercato" --data-dir "$data" seed --products "$products"

echo "== start (builds the search index from the database)"
export MERCATO_RATE_LIMIT__PER_IP_PER_MINUTE=1000000000
export MERCATO_RATE_LIMIT__PER_USER_PER_MINUTE=1000000000
export MERCATO_LOG_FORMAT=json RUST_LOG=warn,catalog=info
"$mercato" --data-dir "$data" --port $port > "$data/server.log" 2>&1 &
server=$!
for _ in $(seq 1 600); do
  curl -fs "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
  sleep 0.5
done
grep -o '"elapsed_ms":[0-9]*' "$data/server.log" | head -1 | sed 's/"elapsed_ms":/index build (ms): /'

# The seed's product.created events go through the outbox, the event log and the catalog's
# consumers in the background; measure once that backlog is gone (python3 reads the SQLite files).
backlog() {
  python3 - "$data" <<'PY'
import sqlite3, sys
d = sys.argv[1]
c = sqlite3.connect(f"file:{d}/catalog.db?mode=ro", uri=True)
b = sqlite3.connect(f"file:{d}/bus.db?mode=ro", uri=True)
outbox = c.execute("select count(*) from outbox").fetchone()[0]
end = b.execute("select coalesce(max(seq), 0) from bus_log").fetchone()[0]
behind = sum(end - p for (p,) in b.execute("select position from bus_positions"))
print(outbox + behind)
PY
}
drain_start=$(date +%s)
while [ "$(backlog)" != "0" ]; do sleep 2; done
echo "event backlog drained after $(( $(date +%s) - drain_start )) s"
echo "RSS after seeding, indexing and draining (kB): $(grep VmRSS /proc/$server/status | awk '{print $2}')"

base=http://127.0.0.1:$port
slug=$(curl -fs "$base/api/v1/products?limit=1" | sed 's/.*"slug":"\([^"]*\)".*/\1/')
queries=$data/queries.txt
for q in headphones "wireles+headphones" "blutooth+speaker" "premium+leather+jacket" "acme" \
         "coffe+maker" "yoga+mat" "stainles" "runing+shoes" "smart+watch" "kettle" "chef+knife"; do
  echo "/api/v1/search?q=$q" >> "$queries"
done

run() { echo "== $1"; shift; "$loadtest" --url "$base" --concurrency 32 --requests "$requests" --max-seconds 30 "$@"; }
run "product list (first page, cached)" get --path "/api/v1/products"
run "product list (filtered, sorted)" get --path "/api/v1/products?sort=price_asc&price_min=1000&price_max=5000&limit=20"
run "product detail" get --path "/api/v1/products/$slug"
run "search, 1-3 words with typos (cached answers)" get --paths-file "$queries"
# The same queries, each with a different price bound, so that no answer comes from the cache.
mapfile -t texts < <(sed 's|.*q=||' "$queries")
: > "$data/fresh.txt"; : > "$data/fresh-nofacets.txt"
for i in $(seq 1 6000); do
  q=${texts[$((i % ${#texts[@]}))]}
  echo "/api/v1/search?q=$q&price_max=$((200000 + i))" >> "$data/fresh.txt"
  echo "/api/v1/search?q=$q&facets=false&price_max=$((200000 + i))" >> "$data/fresh-nofacets.txt"
done
echo "== search without the answer cache, with facets"
"$loadtest" --url "$base" --concurrency 16 --requests 6000 --max-seconds 30 get --paths-file "$data/fresh.txt"
echo "== search without the answer cache, without facets"
"$loadtest" --url "$base" --concurrency 16 --requests 6000 --max-seconds 30 get --paths-file "$data/fresh-nofacets.txt"
echo "== search without the answer cache: 20,000 generated queries (1-3 catalog words, half of them with a typo)"
python3 "$root/bench/search_queries.py" 20000 > "$data/generated.txt"
"$loadtest" --url "$base" --concurrency 16 --requests 20000 --max-seconds 30 get --paths-file "$data/generated.txt"
echo "RSS after the runs (kB): $(grep VmRSS /proc/$server/status | awk '{print $2}')"
