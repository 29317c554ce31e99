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
//! Redis going away does not take the catalog down: calls fail within a second
//! ([`platform::redis_link`]), after a failure the replica leaves Redis alone for a second, and
//! meanwhile the cache works as the first level alone (its own generation guarding inserts). An
//! invalidation that could not reach Redis is made up for before Redis is used again: every
//! entry there is dropped, since the ones that changed are not known any more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use platform::redis_link::Link;
use redis::aio::ConnectionManager;
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
    link: Link,
    prefix: String,
    ttl_ms: u64,
    invalidate: Script,
    insert: Script,
    /// An invalidation did not reach Redis: everything there must go before it is used again.
    owed: AtomicBool,
}

impl TieredCache {
    /// Connects to Redis at `url`; keys start with `prefix` (e.g. `mercato:`). Entries live
    /// `ttl` in Redis and `local_ttl` in this replica's memory.
    pub async fn connect(
        url: &str,
        prefix: &str,
        ttl: Duration,
        local_ttl: Duration,
        local_max_bytes: u64,
    ) -> anyhow::Result<Self> {
        let link = Link::connect(url).await?;
        Ok(Self {
            local: MemoryCache::new(local_ttl.min(ttl), local_max_bytes),
            link,
            prefix: prefix.to_owned(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            invalidate: Script::new(INVALIDATE),
            insert: Script::new(INSERT),
            owed: AtomicBool::new(false),
        })
    }

    /// The connection, when Redis may be called now: not paused after a failure, and with an
    /// owed invalidation made up for first.
    async fn connection(&self) -> Option<ConnectionManager> {
        let mut conn = self.link.get()?;
        if self.owed.load(Ordering::SeqCst) {
            if let Err(err) = self.drop_everything(&mut conn).await {
                self.failed(&err);
                return None;
            }
            self.owed.store(false, Ordering::SeqCst);
        }
        Some(conn)
    }

    fn failed(&self, err: &redis::RedisError) {
        self.link.failed();
        metrics::counter!("mercato_cache_redis_errors_total").increment(1);
        tracing::debug!(error = %err, "the Redis cache did not answer; using this replica's cache alone");
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

    /// Moves the generation and drops `keys` and every query answer, in one script.
    async fn drop_remote(&self, conn: &mut ConnectionManager, keys: &[String]) -> redis::RedisResult<()> {
        let mut call = self.invalidate.prepare_invoke();
        call.key(self.generation_key()).key(self.queries_key());
        for key in keys {
            call.arg(self.entry_key(key));
        }
        call.invoke_async::<i64>(conn).await.map(|_| ())
    }

    /// Moves the generation and drops every entry: query answers, then product pages (found by
    /// a scan, as pages are not indexed; this is rare).
    async fn drop_everything(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        self.drop_remote(conn, &[]).await?;
        let pattern = format!("{}catalog:cache:product:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(&keys).query_async::<i64>(conn).await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Runs an invalidation in Redis, or notes it as owed when Redis is paused or does not
    /// take it.
    async fn invalidate_remote(&self, keys: Option<&[String]>) {
        let Some(mut conn) = self.link.get() else {
            self.owed.store(true, Ordering::SeqCst);
            return;
        };
        let result = match keys {
            Some(keys) => self.drop_remote(&mut conn, keys).await,
            None => self.drop_everything(&mut conn).await,
        };
        if let Err(err) = result {
            self.owed.store(true, Ordering::SeqCst);
            self.failed(&err);
            tracing::warn!(error = %err, "cannot invalidate the Redis cache; it is cleared before it is used again");
        }
    }
}

#[async_trait]
impl Cache for TieredCache {
    async fn generation(&self) -> u64 {
        let Some(mut conn) = self.connection().await else {
            return LOCAL_ONLY | self.local.generation().await;
        };
        match redis::cmd("GET")
            .arg(self.generation_key())
            .query_async::<Option<u64>>(&mut conn)
            .await
        {
            Ok(generation) => generation.unwrap_or(0) & !LOCAL_ONLY,
            Err(err) => {
                self.failed(&err);
                LOCAL_ONLY | self.local.generation().await
            }
        }
    }

    async fn get(&self, key: &str) -> Option<Bytes> {
        if let Some(found) = self.local.get(key).await {
            return Some(found);
        }
        let mut conn = self.connection().await?;
        let seen = self.local.generation().await;
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
                self.failed(&err);
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
        let Some(mut conn) = self.link.get() else {
            return;
        };
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
            Err(err) => self.failed(&err),
        }
    }

    async fn invalidate(&self, keys: &[String]) {
        self.invalidate_remote(Some(keys)).await;
        self.local.invalidate(keys).await;
    }

    async fn invalidate_all(&self) {
        self.invalidate_remote(None).await;
        self.local.invalidate_all().await;
    }

    fn hit_ratios(&self) -> Vec<(&'static str, f64)> {
        self.local.hit_ratios()
    }
}
