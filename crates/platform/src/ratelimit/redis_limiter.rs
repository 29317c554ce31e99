//! Rate limits kept in Redis, shared by every gateway replica: one token bucket per key, taken
//! by one Lua script, so concurrent requests through different replicas never both spend the
//! last token.
//!
//! When Redis cannot be reached the limiter lets requests through (fails open) and counts it in
//! `mercato_rate_limit_store_errors_total`: an outage of the limiter's store must not take the
//! shop down, and the per-process limits of the edge (body size, timeouts) still hold. After a
//! failed call Redis is left alone for a second ([`crate::redis_link::Link`]), so requests do
//! not each wait for it during an outage.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use redis::Script;

use super::{Decision, RateLimiter};
use crate::clock::SharedClock;
use crate::redis_link::Link;

/// Refill, then take one token if there is one. Answers `{allowed, wait_ms}`.
/// KEYS[1]: the bucket. ARGV: capacity, refill per ms, now (ms), expiry (ms).
const TAKE: &str = r"
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1])
local at = tonumber(bucket[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
tokens = math.min(capacity, tokens + math.max(0, now - at) * refill)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / refill)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {allowed, wait}
";

/// Token buckets in Redis under `<prefix>rl:<key>`.
#[derive(Clone)]
pub struct RedisRateLimiter {
    link: std::sync::Arc<Link>,
    prefix: String,
    script: Script,
    clock: SharedClock,
}

impl std::fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisRateLimiter {
    /// Connects (and reconnects by itself after a Redis restart).
    pub async fn connect(url: &str, prefix: &str, clock: SharedClock) -> anyhow::Result<Self> {
        let link = Link::connect(url)
            .await
            .context("cannot connect to Redis for rate limits")?;
        Ok(Self {
            link: std::sync::Arc::new(link),
            prefix: prefix.to_owned(),
            script: Script::new(TAKE),
            clock,
        })
    }

    async fn take(&self, key: &str, limit: u32, window: Duration) -> redis::RedisResult<Decision> {
        let capacity = f64::from(limit.max(1));
        let window_ms = window.as_millis().max(1) as f64;
        let refill_per_ms = capacity / window_ms;
        // A bucket left alone for a window has refilled: nothing to keep after that.
        let expiry_ms = (window_ms.ceil() as u64).max(1_000);
        let Some(mut connection) = self.link.get() else {
            return Ok(Decision::Allow);
        };
        let (allowed, wait_ms): (i64, i64) = self
            .script
            .key(format!("{}rl:{key}", self.prefix))
            .arg(capacity)
            .arg(refill_per_ms)
            .arg(self.clock.now_ms())
            .arg(expiry_ms)
            .invoke_async(&mut connection)
            .await?;
        Ok(if allowed == 1 {
            Decision::Allow
        } else {
            Decision::Deny {
                retry_after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(1).max(1)),
            }
        })
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision {
        match self.take(key, limit, window).await {
            Ok(decision) => decision,
            Err(err) => {
                self.link.failed();
                metrics::counter!("mercato_rate_limit_store_errors_total").increment(1);
                tracing::warn!(error = %err, "the rate-limit store is unreachable; letting the request through");
                Decision::Allow
            }
        }
    }
}

/// Counts one attempt (or failure) of a key, blocking it at the limit; answers how long it was
/// already blocked (0: it was not). The same rules as [`super::MemoryFailureThrottle`].
/// KEYS[1]: the key's counter. ARGV: now (ms), max failures, base lockout (ms), forget after
/// (ms), longest lockout (ms).
const COUNT: &str = r"
local now = tonumber(ARGV[1])
local max_failures = tonumber(ARGV[2])
local base = tonumber(ARGV[3])
local forget = tonumber(ARGV[4])
local longest = tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'count', 'blocked_until', 'last')
local count = tonumber(state[1]) or 0
local blocked_until = tonumber(state[2]) or 0
local last = tonumber(state[3]) or 0
local quiet = now - last > forget
local wait = 0
if blocked_until > now then
  wait = blocked_until - now
else
  if quiet then count = 0 end
  count = count + 1
  if count >= max_failures then
    local lockout = math.floor(math.min(base * 2 ^ math.min(count - max_failures, 10), longest))
    blocked_until = now + lockout
  end
end
redis.call('HSET', KEYS[1], 'count', count, 'blocked_until', blocked_until, 'last', now)
redis.call('PEXPIRE', KEYS[1], math.max(blocked_until - now, 0) + forget)
return wait
";

/// Login throttles in Redis under `<prefix>lt:<key>`, shared by every identity replica.
/// Fails open (counts nothing, blocks nothing) while Redis is unreachable, counted in
/// `mercato_rate_limit_store_errors_total`: password hashing still bounds the guessing rate.
#[derive(Clone)]
pub struct RedisFailureThrottle {
    link: std::sync::Arc<Link>,
    prefix: String,
    policy: super::ThrottlePolicy,
    script: Script,
    clock: SharedClock,
}

impl std::fmt::Debug for RedisFailureThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFailureThrottle")
            .field("prefix", &self.prefix)
            .field("policy", &self.policy)
            .finish()
    }
}

impl RedisFailureThrottle {
    pub async fn connect(
        url: &str,
        prefix: &str,
        policy: super::ThrottlePolicy,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let link = Link::connect(url)
            .await
            .context("cannot connect to Redis for login throttles")?;
        Ok(Self {
            link: std::sync::Arc::new(link),
            prefix: prefix.to_owned(),
            policy,
            script: Script::new(COUNT),
            clock,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}lt:{key}", self.prefix)
    }

    fn unreachable(&self, err: &redis::RedisError) {
        self.link.failed();
        metrics::counter!("mercato_rate_limit_store_errors_total").increment(1);
        tracing::warn!(error = %err, "the login-throttle store is unreachable; not throttling");
    }

    async fn count(&self, key: &str) -> Option<Duration> {
        let mut connection = self.link.get()?;
        let result: redis::RedisResult<i64> = self
            .script
            .key(self.key(key))
            .arg(self.clock.now_ms())
            .arg(self.policy.max_failures.max(1))
            .arg(u64::try_from(self.policy.base_lockout.as_millis()).unwrap_or(u64::MAX))
            .arg(super::FORGET_AFTER_MS)
            .arg(15 * 60 * 1000)
            .invoke_async(&mut connection)
            .await;
        match result {
            Ok(wait) if wait > 0 => Some(Duration::from_millis(wait.unsigned_abs())),
            Ok(_) => None,
            Err(err) => {
                self.unreachable(&err);
                None
            }
        }
    }
}

#[async_trait]
impl super::FailureThrottle for RedisFailureThrottle {
    async fn attempt(&self, key: &str) -> Option<Duration> {
        self.count(key).await
    }

    async fn blocked_for(&self, key: &str) -> Option<Duration> {
        let mut connection = self.link.get()?;
        let result: redis::RedisResult<Option<i64>> = redis::cmd("HGET")
            .arg(self.key(key))
            .arg("blocked_until")
            .query_async(&mut connection)
            .await;
        match result {
            Ok(Some(until)) => {
                let now = self.clock.now_ms();
                (until > now).then(|| Duration::from_millis((until - now).unsigned_abs()))
            }
            Ok(None) => None,
            Err(err) => {
                self.unreachable(&err);
                None
            }
        }
    }

    async fn record_failure(&self, key: &str) {
        self.count(key).await;
    }

    async fn reset(&self, key: &str) {
        let Some(mut connection) = self.link.get() else {
            return;
        };
        let result: redis::RedisResult<()> = redis::cmd("DEL").arg(self.key(key)).query_async(&mut connection).await;
        if let Err(err) = result {
            self.unreachable(&err);
        }
    }
}
