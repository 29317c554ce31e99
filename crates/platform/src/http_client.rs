//! The client services use to call each other over HTTP: timeouts, retries for idempotent
//! calls only, and a circuit breaker that fails fast while the other side is down.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

#[derive(Debug, Clone)]
pub struct ClientPolicy {
    pub timeout: Duration,
    /// Extra attempts for idempotent methods after a connection error or a 5xx.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before letting one trial through.
    pub open_for: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retries: 2,
            retry_backoff: Duration::from_millis(50),
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("circuit open: the service is failing, not called")]
    CircuitOpen,
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("service answered {0}")]
    Status(StatusCode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial call is in flight; others are refused until it ends, or until `open_for`
    /// passes (a trial whose caller gave up never reports back).
    HalfOpen {
        since: Instant,
    },
}

/// Closed → (threshold failures) → open → (after `open_for`) half-open → one success closes it,
/// one failure opens it again.
#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    open_for: Duration,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            threshold: threshold.max(1),
            open_for,
        }
    }

    /// May a call go out now?
    pub fn acquire(&self) -> bool {
        self.acquire_at(Instant::now())
    }

    fn acquire_at(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                *state = BreakerState::HalfOpen { since: now };
                true
            }
            BreakerState::HalfOpen { since } if now.duration_since(since) >= self.open_for => {
                *state = BreakerState::HalfOpen { since: now };
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => false,
        }
    }

    pub fn record(&self, success: bool) {
        self.record_at(success, Instant::now());
    }

    fn record_at(&self, success: bool, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *state = match (*state, success) {
            (_, true) => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, false) if failures + 1 < self.threshold => {
                BreakerState::Closed { failures: failures + 1 }
            }
            (_, false) => BreakerState::Open {
                until: now + self.open_for,
            },
        };
    }

    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| !matches!(*s, BreakerState::Closed { .. }))
            .unwrap_or(false)
    }
}

/// A client for one upstream service.
#[derive(Debug)]
pub struct ServiceClient {
    base_url: String,
    http: reqwest::Client,
    policy: ClientPolicy,
    breaker: CircuitBreaker,
}

impl ServiceClient {
    pub fn new(base_url: &str, policy: ClientPolicy) -> Self {
        let http = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .unwrap_or_default();
        let breaker = CircuitBreaker::new(policy.failure_threshold, policy.open_for);
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
            policy,
            breaker,
        }
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Sends a request; retries idempotent methods on transport errors and 5xx answers.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, CallError> {
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        let attempts = if idempotent { self.policy.retries + 1 } else { 1 };
        let mut last_error = CallError::CircuitOpen;
        for attempt in 0..attempts {
            if !self.breaker.acquire() {
                return Err(CallError::CircuitOpen);
            }
            if attempt > 0 {
                tokio::time::sleep(self.policy.retry_backoff * 2u32.pow(attempt - 1)).await;
            }
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base_url));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            if crate::traces::exporting() {
                let mut trace = http::HeaderMap::new();
                crate::traces::inject(&mut trace);
                request = request.headers(trace);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) if response.status().is_server_error() => {
                    self.breaker.record(false);
                    last_error = CallError::Status(response.status());
                }
                Ok(response) => {
                    self.breaker.record(true);
                    return Ok(response);
                }
                Err(err) => {
                    self.breaker.record(false);
                    last_error = CallError::Transport(err);
                }
            }
        }
        Err(last_error)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use axum::routing::{get, post};
    use axum::Router;

    use super::*;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn policy() -> ClientPolicy {
        ClientPolicy {
            timeout: Duration::from_millis(500),
            retries: 2,
            retry_backoff: Duration::from_millis(1),
            failure_threshold: 3,
            open_for: Duration::from_secs(60),
        }
    }

    fn flaky_server(hits: Arc<AtomicU32>, fail_first: u32) -> Router {
        let handler = move || {
            let hits = hits.clone();
            async move {
                if hits.fetch_add(1, Ordering::SeqCst) < fail_first {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        };
        Router::new()
            .route("/x", get(handler.clone()))
            .route("/x", post(handler))
    }

    #[tokio::test]
    async fn idempotent_calls_are_retried_after_5xx() {
        let hits = Arc::new(AtomicU32::new(0));
        let url = serve(flaky_server(hits.clone(), 2)).await;
        let client = ServiceClient::new(&url, policy());
        let response = client.call(Method::GET, "/x", None, &[]).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn non_idempotent_calls_are_not_retried() {
        let hits = Arc::new(AtomicU32::new(0));
        let url = serve(flaky_server(hits.clone(), 1)).await;
        let client = ServiceClient::new(&url, policy());
        let result = client.call(Method::POST, "/x", Some(&serde_json::json!({})), &[]).await;
        assert!(matches!(
            result,
            Err(CallError::Status(StatusCode::SERVICE_UNAVAILABLE))
        ));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn breaker_opens_after_threshold_and_fails_fast() {
        let hits = Arc::new(AtomicU32::new(0));
        let url = serve(flaky_server(hits.clone(), u32::MAX)).await;
        let client = ServiceClient::new(&url, policy());
        // Three failed attempts (one call with two retries) open the circuit.
        assert!(client.call(Method::GET, "/x", None, &[]).await.is_err());
        assert!(client.breaker().is_open());
        let before = hits.load(Ordering::SeqCst);
        assert!(matches!(
            client.call(Method::GET, "/x", None, &[]).await,
            Err(CallError::CircuitOpen)
        ));
        assert_eq!(hits.load(Ordering::SeqCst), before, "an open circuit sends nothing");
    }

    #[test]
    fn half_open_lets_one_trial_through_and_closes_on_success() {
        let t0 = Instant::now();
        let later = |secs| t0 + Duration::from_secs(secs);
        let breaker = CircuitBreaker::new(1, Duration::from_secs(10));
        breaker.record_at(false, t0);
        assert!(!breaker.acquire_at(later(5)), "open: calls are refused");
        assert!(breaker.acquire_at(later(10)), "open_for elapsed: one trial");
        assert!(!breaker.acquire_at(later(11)), "only one trial at a time");
        breaker.record_at(true, later(12));
        assert!(!breaker.is_open());
        assert!(breaker.acquire_at(later(12)));
    }

    #[test]
    fn an_abandoned_trial_does_not_keep_the_circuit_half_open() {
        let t0 = Instant::now();
        let breaker = CircuitBreaker::new(1, Duration::from_secs(10));
        breaker.record_at(false, t0);
        assert!(
            breaker.acquire_at(t0 + Duration::from_secs(10)),
            "the trial whose caller then gave up"
        );
        assert!(!breaker.acquire_at(t0 + Duration::from_secs(15)));
        assert!(
            breaker.acquire_at(t0 + Duration::from_secs(20)),
            "another trial once open_for passed again"
        );
    }
}
