//! Rate limits and failure throttles behind traits, so the distributed mode can keep them in a
//! shared store; the in-memory implementations here serve one process.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::SharedClock;

pub mod redis_limiter;

/// The answer to "may this key make one more request?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; the next request would be allowed after this long.
    Deny {
        retry_after: Duration,
    },
}

/// A limit of `limit` requests per `window`, smoothly refilled (a token bucket).
#[async_trait]
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision;
}

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

/// In-memory token buckets, sharded to keep lock contention low.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    clock: SharedClock,
}

impl MemoryRateLimiter {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            clock,
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Bucket>> {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check(&self, key: &str, limit: u32, window: Duration) -> Decision {
        let now = self.clock.now_ms();
        let capacity = f64::from(limit.max(1));
        let refill_per_ms = capacity / (window.as_millis().max(1) as f64);
        // A panic while holding the lock cannot leave a bucket half-written: keep using it.
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if shard.len() > 100_000 {
            // Drop buckets that have refilled completely: they carry no state.
            shard.retain(|_, b| b.tokens + (now - b.updated_ms) as f64 * refill_per_ms < capacity);
        }
        let bucket = shard.entry(key.to_owned()).or_insert(Bucket {
            tokens: capacity,
            updated_ms: now,
        });
        let elapsed = (now - bucket.updated_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed * refill_per_ms).min(capacity);
        bucket.updated_ms = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision::Allow
        } else {
            let wait_ms = ((1.0 - bucket.tokens) / refill_per_ms).ceil() as u64;
            Decision::Deny {
                retry_after: Duration::from_millis(wait_ms.max(1)),
            }
        }
    }
}

/// Counts login attempts per key (an account, an IP) and blocks the key for a growing time
/// once `max_failures` attempts in a row did not succeed: 1×, 2×, 4×… `base_lockout`, capped
/// at 15 minutes. A key left alone for 15 minutes starts from zero again.
///
/// Two ways to count, for two kinds of key:
/// - [`FailureThrottle::attempt`] counts an attempt when it starts, before its outcome is known,
///   so a burst of concurrent guesses at one account cannot all pass the check before the first
///   failure is recorded; a success resets the key.
/// - [`FailureThrottle::blocked_for`] and [`FailureThrottle::record_failure`] count failures
///   only, for keys many honest users share (an office's IP), whose concurrent successful
///   logins must not add up to a lockout.
#[async_trait]
pub trait FailureThrottle: Send + Sync + std::fmt::Debug {
    /// Counts one attempt, unless `key` is blocked: then answers for how long.
    async fn attempt(&self, key: &str) -> Option<Duration>;
    /// How long `key` is blocked, if it is (counts nothing).
    async fn blocked_for(&self, key: &str) -> Option<Duration>;
    /// Counts one failure of `key`.
    async fn record_failure(&self, key: &str);
    /// Forgets the key.
    async fn reset(&self, key: &str);
}

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub max_failures: u32,
    pub base_lockout: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct Attempts {
    count: u32,
    blocked_until_ms: i64,
    last_attempt_ms: i64,
}

/// A key left alone this long (and not blocked) starts counting from zero again, so old
/// failures do not lock a shared IP out at the first new mistake.
const FORGET_AFTER_MS: i64 = 15 * 60 * 1000;

#[derive(Debug)]
pub struct MemoryFailureThrottle {
    policy: ThrottlePolicy,
    clock: SharedClock,
    state: Mutex<HashMap<String, Attempts>>,
}

impl MemoryFailureThrottle {
    pub fn new(policy: ThrottlePolicy, clock: SharedClock) -> Self {
        Self {
            policy,
            clock,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HashMap<String, Attempts>> {
        // A panic while holding the lock cannot leave an entry half-written: keep using it.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one attempt or failure of `key` at `now`, blocking it at the limit; answers how
    /// long it was already blocked instead, if it was.
    fn count(&self, key: &str, now: i64) -> Option<Duration> {
        let mut state = self.state();
        if state.len() > 100_000 {
            state.retain(|_, a| a.blocked_until_ms > now || now - a.last_attempt_ms <= FORGET_AFTER_MS);
        }
        let attempts = state.entry(key.to_owned()).or_default();
        let quiet = now - attempts.last_attempt_ms > FORGET_AFTER_MS;
        // Refused attempts count as activity too: a persistent guesser never earns a reset.
        attempts.last_attempt_ms = now;
        if attempts.blocked_until_ms > now {
            return Some(Duration::from_millis((attempts.blocked_until_ms - now) as u64));
        }
        if quiet {
            attempts.count = 0;
        }
        attempts.count += 1;
        if attempts.count >= self.policy.max_failures {
            let exponent = (attempts.count - self.policy.max_failures).min(10);
            let lockout = (self.policy.base_lockout * 2u32.pow(exponent)).min(Duration::from_secs(15 * 60));
            attempts.blocked_until_ms = now + lockout.as_millis() as i64;
        }
        None
    }
}

#[async_trait]
impl FailureThrottle for MemoryFailureThrottle {
    async fn attempt(&self, key: &str) -> Option<Duration> {
        self.count(key, self.clock.now_ms())
    }

    async fn blocked_for(&self, key: &str) -> Option<Duration> {
        let now = self.clock.now_ms();
        let state = self.state();
        let attempts = state.get(key)?;
        (attempts.blocked_until_ms > now).then(|| Duration::from_millis((attempts.blocked_until_ms - now) as u64))
    }

    async fn record_failure(&self, key: &str) {
        self.count(key, self.clock.now_ms());
    }

    async fn reset(&self, key: &str) {
        self.state().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::OffsetClock;

    /// A throttle blocking after 3 counted attempts for 10 s, on a clock the test moves.
    fn fixture() -> (Arc<OffsetClock>, MemoryFailureThrottle) {
        let clock = Arc::new(OffsetClock::default());
        let policy = ThrottlePolicy {
            max_failures: 3,
            base_lockout: Duration::from_secs(10),
        };
        (clock.clone(), MemoryFailureThrottle::new(policy, clock))
    }

    #[tokio::test]
    async fn bucket_allows_the_limit_then_denies_with_a_retry_time() {
        let clock = Arc::new(OffsetClock::default());
        let limiter = MemoryRateLimiter::new(clock.clone());
        let window = Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(limiter.check("k", 3, window).await, Decision::Allow);
        }
        let Decision::Deny { retry_after } = limiter.check("k", 3, window).await else {
            panic!("fourth must be denied")
        };
        assert!(
            retry_after <= Duration::from_secs(20) && retry_after > Duration::from_secs(15),
            "{retry_after:?}"
        );
        assert_eq!(
            limiter.check("other", 3, window).await,
            Decision::Allow,
            "keys are independent"
        );
        clock.advance(Duration::from_secs(21));
        assert_eq!(limiter.check("k", 3, window).await, Decision::Allow, "a token refilled");
    }

    #[tokio::test]
    async fn throttle_blocks_after_max_attempts_and_doubles() {
        let (clock, throttle) = fixture();
        for _ in 0..3 {
            assert!(throttle.attempt("a").await.is_none(), "three attempts are allowed");
        }
        let first = throttle.attempt("a").await.expect("the fourth is blocked");
        assert!(first <= Duration::from_secs(10));
        assert!(throttle.attempt("b").await.is_none(), "keys are independent");
        clock.advance(Duration::from_secs(11));
        assert!(throttle.attempt("a").await.is_none(), "the lockout ended");
        let second = throttle.attempt("a").await.expect("blocked again at once");
        assert!(second > Duration::from_secs(10), "lockout doubles: {second:?}");
        throttle.reset("a").await;
        assert!(throttle.attempt("a").await.is_none());
    }

    #[tokio::test]
    async fn failures_are_forgotten_after_a_quiet_period() {
        let (clock, throttle) = fixture();
        for _ in 0..3 {
            assert!(throttle.attempt("ip").await.is_none());
        }
        assert!(throttle.attempt("ip").await.is_some());
        clock.advance(Duration::from_secs(16 * 60));
        for _ in 0..3 {
            assert!(
                throttle.attempt("ip").await.is_none(),
                "a fresh start after a quiet quarter hour"
            );
        }
        assert!(throttle.attempt("ip").await.is_some());
    }

    #[tokio::test]
    async fn concurrent_attempts_count_before_their_outcome() {
        let (_, throttle) = fixture();
        // Three attempts in flight at once, none finished: a fourth is refused already.
        for _ in 0..3 {
            assert!(throttle.attempt("account").await.is_none());
        }
        assert!(throttle.attempt("account").await.is_some());
    }

    #[tokio::test]
    async fn shared_keys_count_failures_only() {
        let (_, throttle) = fixture();
        for _ in 0..10 {
            assert!(
                throttle.blocked_for("office").await.is_none(),
                "checking counts nothing"
            );
        }
        for _ in 0..2 {
            throttle.record_failure("office").await;
        }
        assert!(throttle.blocked_for("office").await.is_none());
        throttle.record_failure("office").await;
        assert!(throttle.blocked_for("office").await.is_some());
    }
}
