//! The read cache of the distributed mode: each catalog replica's in-process cache (the first
//! level) in front of one Redis cache all replicas share (the second level).
//!
//! A change on any replica drops the changed product pages and every list and search answer
//! from Redis at once, in one script that also moves a generation counter kept in Redis. An
//! answer computed from the database is stored only if that counter did not move since the
//! read began (checked and stored in one script), so no replica puts back what another one's
//! change invalidated. The other replicas' first levels are dropped when the product event
//! reaches their search indexer, and a short first-level lifetime bounds them meanwhile.
//!
//! Redis going away does not take the catalog down: every call has a short timeout, and without
//! Redis the cache works as the first level alone (its own generation guarding inserts) until
//! Redis answers again.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::cache::{Cache, MemoryCache};

/// Marks a generation read from the first level because Redis did not answer: such an answer
/// goes into the first level only.
const LOCAL_ONLY: u64 = 1 << 63;

/// KEYS: the generation, the set of query keys. ARGV: product keys to drop.
const INVALIDATE: &str = r"
redis.call('INCR', KEYS[1])
for _, key in ipairs(ARGV) do redis.call('DEL', key) end
local queries = redis.call('SMEMBERS', KEYS[2])
for _, key in ipairs(queries) do redis.call('DEL', key) end
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: the generation, the entry, the set of query keys (or the entry again for a product
/// page). ARGV: the generation the read began at, the value, the lifetime in ms, 1 when the
/// entry is a query answer.
const INSERT: &str = r"
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if now ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[3], KEYS[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return 1
";

/// The two-level cache.
pub struct TieredCache {
    local: MemoryCache,
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    invalidate: Script,
    insert: Script,
}

impl TieredCache {
    /// Connects to Redis at `url`; keys start with `prefix` (e.g. `mercato:`). Entries live
    /// `ttl` in Redis and `local_ttl` in this replica's memory.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        local_ttl: Duration,
        max_entries: u64,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(250))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            local: MemoryCache::new(local_ttl.min(ttl), max_entries),
            conn,
            prefix: prefix.to_owned(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            invalidate: Script::new(INVALIDATE),
            insert: Script::new(INSERT),
        })
    }

    fn generation_key(&self) -> String {
        format!("{}catalog:cache:generation", self.prefix)
    }

    fn queries_key(&self) -> String {
        format!("{}catalog:cache:queries", self.prefix)
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}catalog:cache:{key}", self.prefix)
    }

    fn unavailable(err: &redis::RedisError) {
        metrics::counter!("mercato_cache_redis_errors_total").increment(1);
        tracing::debug!(error = %err, "the Redis cache did not answer; using this replica's cache alone");
    }

    async fn drop_remote(&self, keys: &[String]) {
        let mut conn = self.conn.clone();
        let mut call = self.invalidate.prepare_invoke();
        call.key(self.generation_key()).key(self.queries_key());
        for key in keys {
            call.arg(self.entry_key(key));
        }
        if let Err(err) = call.invoke_async::<i64>(&mut conn).await {
            // The entries expire by themselves; until then a replica may serve them.
            metrics::counter!("mercato_cache_redis_errors_total").increment(1);
            tracing::warn!(error = %err, "cannot invalidate the Redis cache; its entries expire by themselves");
        }
    }
}

#[async_trait]
impl Cache for TieredCache {
    async fn generation(&self) -> u64 {
        let mut conn = self.conn.clone();
        match redis::cmd("GET")
            .arg(self.generation_key())
            .query_async::<Option<u64>>(&mut conn)
            .await
        {
            Ok(generation) => generation.unwrap_or(0) & !LOCAL_ONLY,
            Err(err) => {
                Self::unavailable(&err);
                LOCAL_ONLY | self.local.generation().await
            }
        }
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        if let Some(found) = self.local.get(key).await {
            return Some(found);
        }
        let seen = self.local.generation().await;
        let mut conn = self.conn.clone();
        match redis::cmd("GET")
            .arg(self.entry_key(key))
            .query_async::<Option<Vec<u8>>>(&mut conn)
            .await
        {
            Ok(Some(found)) => {
                let found = Bytes::from(found);
                metrics::counter!("mercato_cache_redis_hits_total").increment(1);
                self.local.insert(key.to_owned(), found.clone(), seen).await;
                Some(found)
            }
            Ok(None) => None,
            Err(err) => {
                Self::unavailable(&err);
                None
            }
        }
    }

    async fn insert(&self, key: String, value: Bytes, generation: u64) {
        if generation & LOCAL_ONLY != 0 {
            self.local.insert(key, value, generation & !LOCAL_ONLY).await;
            return;
        }
        // Read before the check: a change on this replica after the check is seen by the first
        // level's own guard.
        let local = self.local.generation().await;
        let query = !key.starts_with("product:");
        let mut conn = self.conn.clone();
        let stored = self
            .insert
            .key(self.generation_key())
            .key(self.entry_key(&key))
            .key(self.queries_key())
            .arg(generation)
            .arg(value.as_ref())
            .arg(self.ttl_ms)
            .arg(if query { 1 } else { 0 })
            .invoke_async::<i64>(&mut conn)
            .await;
        match stored {
            Ok(1) => self.local.insert(key, value, local).await,
            // A change came in between: the answer may be stale, keep it nowhere.
            Ok(_) => {}
            Err(err) => Self::unavailable(&err),
        }
    }

    async fn invalidate(&self, keys: &[String]) {
        self.drop_remote(keys).await;
        self.local.invalidate(keys).await;
    }

    async fn invalidate_all(&self) {
        // The generation and every query answer, then every product page (found by a scan:
        // pages are not indexed, and a change to everything is rare).
        self.drop_remote(&[]).await;
        let mut conn = self.conn.clone();
        let pattern = format!("{}catalog:cache:product:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let scanned: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await;
            match scanned {
                Ok((next, keys)) => {
                    if !keys.is_empty() {
                        if let Err(err) = redis::cmd("DEL").arg(&keys).query_async::<i64>(&mut conn).await {
                            Self::unavailable(&err);
                            break;
                        }
                    }
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                Err(err) => {
                    Self::unavailable(&err);
                    break;
                }
            }
        }
        self.local.invalidate_all().await;
    }

    fn hit_ratios(&self) -> Vec<(&'static str, f64)> {
        self.local.hit_ratios()
    }
}
