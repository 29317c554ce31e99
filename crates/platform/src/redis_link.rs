//! One way to connect to Redis for every user of it (carts, rate limits, login throttles, the
//! catalog cache): a connection that reconnects by itself after a Redis restart, and whose calls
//! fail within a second while Redis is away instead of waiting for it.
//!
//! Without a response timeout a call on a connection to a Redis that died can wait for minutes;
//! a rate limit that is meant to fail open would then hold every request instead.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one call may wait for its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connects to `url` (fails when Redis cannot be reached now).
pub async fn connect(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        // Reconnecting: two more tries, 50 then 100 ms apart; the next call tries again.
        .set_number_of_retries(2)
        .set_factor(50)
        .set_max_delay(500);
    ConnectionManager::new_with_config(client, config).await
}

/// How long a [`Link`] leaves Redis alone after a failed call.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A connection for users that can do without Redis (rate limits and login throttles fail
/// open, the catalog cache serves from memory): after a failed call it is not offered for
/// [`PAUSE_AFTER_FAILURE`], so an outage costs one slow call a second, not one per request.
pub struct Link {
    connection: ConnectionManager,
    paused_until_ms: AtomicI64,
}

impl Link {
    pub async fn connect(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            connection: connect(url).await?,
            paused_until_ms: AtomicI64::new(0),
        })
    }

    /// The connection, or `None` while paused after a failure.
    pub fn get(&self) -> Option<ConnectionManager> {
        (crate::clock::now_ms() >= self.paused_until_ms.load(Ordering::Relaxed)).then(|| self.connection.clone())
    }

    /// A call failed: pause.
    pub fn failed(&self) {
        let pause = i64::try_from(PAUSE_AFTER_FAILURE.as_millis()).unwrap_or(i64::MAX);
        self.paused_until_ms
            .store(crate::clock::now_ms().saturating_add(pause), Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}
