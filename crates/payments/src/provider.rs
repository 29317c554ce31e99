//! The payment provider port: what the service asks of a provider (create an intent, refund,
//! cancel), and the guard every call goes through — a timeout and a circuit breaker, so a
//! provider that is down costs callers a fast 503 instead of a hung checkout.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use platform::error::ApiError;
use platform::http_client::CircuitBreaker;
use serde::{Deserialize, Serialize};

use crate::domain::Method;

/// What the service asks the provider to collect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentRequest {
    /// The merchant's payment id; the provider sends it back in every webhook as metadata,
    /// so a webhook that overtakes the intent's creation still finds its payment.
    pub payment_id: String,
    /// The order's human number, shown to the buyer.
    pub order_ref: String,
    pub amount_minor: i64,
    pub currency: String,
    pub method: Method,
    /// Where the hosted page sends the buyer back to.
    pub return_url: String,
}

/// A created intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// `pi_…`
    pub id: String,
    /// The hosted page where the buyer approves or declines.
    pub redirect_url: String,
}

/// A refund the provider made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    /// `re_…`
    pub id: String,
    pub amount_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or failed; the call may be retried later. Counts
    /// against the circuit breaker.
    #[error("the payment provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered and said no (unknown intent, amount above what is left). The
    /// provider is healthy; retrying the same call will not help.
    #[error("the payment provider refused: {0}")]
    Rejected(String),
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name as webhooks are addressed to it (`/webhooks/{name}`).
    fn name(&self) -> &'static str;

    async fn create_intent(&self, request: IntentRequest) -> Result<Intent, ProviderError>;

    /// Refunds `amount_minor` of a succeeded intent. The same `idempotency_key` answers the
    /// refund made the first time, so a retried call never refunds twice.
    async fn refund(
        &self,
        intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<ProviderRefund, ProviderError>;

    /// Stops an undecided intent from being paid.
    async fn cancel_intent(&self, intent_id: &str) -> Result<(), ProviderError>;
}

/// Why a guarded call did not return the provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardError {
    /// Not called (circuit open), timed out, or the provider was unavailable.
    Unavailable { message: String, retry_after_secs: u64 },
    /// The provider answered no.
    Rejected(String),
}

impl From<GuardError> for ApiError {
    fn from(err: GuardError) -> Self {
        match err {
            GuardError::Unavailable {
                message,
                retry_after_secs,
            } => ApiError::Unavailable {
                message,
                retry_after_secs,
            },
            GuardError::Rejected(message) => {
                ApiError::Unprocessable(format!("the payment provider refused: {message}"))
            }
        }
    }
}

/// The timeout and circuit breaker around every provider call.
#[derive(Debug)]
pub struct Guard {
    timeout: Duration,
    breaker: CircuitBreaker,
    open_for: Duration,
}

/// How long callers are told to wait after a failed call while the circuit is still closed.
const RETRY_AFTER_FAILURE_SECS: u64 = 2;

impl Guard {
    pub fn new(timeout: Duration, threshold: u32, open_for: Duration) -> Self {
        Self {
            timeout,
            breaker: CircuitBreaker::new(threshold, open_for),
            open_for,
        }
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Runs `call` unless the circuit is open, within the timeout, and records the result.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, GuardError> {
        if !self.breaker.acquire() {
            return Err(GuardError::Unavailable {
                message: "the payment provider is unavailable (circuit open); try again shortly".to_owned(),
                retry_after_secs: self.open_for.as_secs().max(1),
            });
        }
        let failure = |reason: String| {
            tracing::warn!(call = what, reason, "payment provider call failed");
            GuardError::Unavailable {
                message: "the payment provider is unavailable; try again shortly".to_owned(),
                retry_after_secs: RETRY_AFTER_FAILURE_SECS,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                self.breaker.record(false);
                Err(failure(format!("timed out after {:?}", self.timeout)))
            }
            Ok(Err(ProviderError::Unavailable(reason))) => {
                self.breaker.record(false);
                Err(failure(reason))
            }
            Ok(Err(ProviderError::Rejected(reason))) => {
                self.breaker.record(true);
                Err(GuardError::Rejected(reason))
            }
            Ok(Ok(value)) => {
                self.breaker.record(true);
                Ok(value)
            }
        }
    }
}

/// The webhook event types a provider sends.
pub const INTENT_SUCCEEDED: &str = "payment_intent.succeeded";
pub const INTENT_FAILED: &str = "payment_intent.payment_failed";
pub const CHARGE_REFUNDED: &str = "charge.refunded";

/// A provider's webhook event, as signed and sent:
/// `{"id":"evt_…","type":"payment_intent.succeeded","created":<unix secs>,"data":{…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event; a redelivery carries the same id.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub created: i64,
    pub data: WebhookData,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookData {
    pub intent_id: String,
    /// The intent's amount.
    pub amount_minor: i64,
    pub currency: String,
    /// `charge.refunded`: the provider's id of the refund that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<String>,
    /// `charge.refunded`: everything refunded on the intent so far (cumulative, so events
    /// that arrive out of order or twice still add up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_refunded_minor: Option<i64>,
    /// `payment_intent.payment_failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// What the merchant attached to the intent.
    #[serde(default)]
    pub metadata: Metadata,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_guard_times_out_and_opens_after_the_threshold() {
        let guard = Guard::new(Duration::from_millis(20), 2, Duration::from_secs(60));
        let hang = || std::future::pending::<Result<(), ProviderError>>();
        assert!(matches!(
            guard.call("hang", hang()).await,
            Err(GuardError::Unavailable { .. })
        ));
        assert!(!guard.breaker().is_open());
        let down = async { Err::<(), _>(ProviderError::Unavailable("down".into())) };
        assert!(matches!(
            guard.call("down", down).await,
            Err(GuardError::Unavailable { .. })
        ));
        assert!(guard.breaker().is_open());
        // Open: the call is not even made.
        let mut called = false;
        let result = guard
            .call("skipped", async {
                called = true;
                Ok(())
            })
            .await;
        assert!(matches!(
            result,
            Err(GuardError::Unavailable {
                retry_after_secs: 60,
                ..
            })
        ));
        assert!(!called);
    }

    #[tokio::test]
    async fn a_refusal_is_an_answer_and_keeps_the_circuit_closed() {
        let guard = Guard::new(Duration::from_secs(1), 1, Duration::from_secs(60));
        let no = async { Err::<(), _>(ProviderError::Rejected("unknown intent".into())) };
        assert_eq!(
            guard.call("no", no).await,
            Err(GuardError::Rejected("unknown intent".into()))
        );
        assert!(!guard.breaker().is_open());
        assert_eq!(guard.call("yes", async { Ok(7) }).await, Ok(7));
    }
}
