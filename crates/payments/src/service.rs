//! The payments use cases: a payment per order (an intent at the provider, or cash on
//! delivery), webhooks applied once each through the state machine, refunds that can never
//! exceed the capture, and the reactions to order events. Each change runs in one transaction
//! with its outbox events; provider calls never run inside a transaction.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use platform::auth::CurrentUser;
use platform::clock::{rfc3339, SharedClock};
use platform::error::ApiError;
use platform::events::Event;
use platform::http_client::CircuitBreaker;
use platform::money::Currency;
use platform::outbox::{self, Outbox};
use platform::page::{Page, PageRequest};
use platform::store::{is_unique_violation, Db, Tx};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, Method, Outcome, PaymentStatus, RefundStatus, Transition};
use crate::mock::{self, AutoSettings, MockProvider, WebhookSink};
use crate::provider::{
    Guard, IntentRequest, Provider, WebhookData, WebhookEvent, CHARGE_REFUNDED, INTENT_FAILED, INTENT_SUCCEEDED,
};
use crate::store::{self, PaymentFilter, PaymentRow, RefundRow};

pub const SERVICE: &str = "payments";

/// `{payment_id, order_id, user_id, method, amount_minor, currency, reference}`
pub const SUCCEEDED: &str = "payment.succeeded";
/// `{payment_id, order_id, user_id, method, reason}`
pub const FAILED: &str = "payment.failed";
/// `{refund_id, payment_id, order_id, user_id, amount_minor, currency, refunded_total_minor,
/// captured_minor, fully_refunded}`
pub const REFUND_SUCCEEDED: &str = "refund.succeeded";

/// Why money captured for a cancelled order goes back.
const ORDER_CANCELLED: &str = "order cancelled";
/// Why money captured by a second payment of an order goes back.
const DUPLICATE_PAYMENT: &str = "another payment of the order was captured first";
/// Who the refunds the service makes by itself are recorded as made by.
const SYSTEM_ACTOR: &str = "system";

#[derive(Debug, Clone)]
pub struct Settings {
    /// The public base URL of the shop (the hosted page and return URLs are built on it).
    pub public_url: String,
    /// Where the hosted page sends the buyer back to, below `public_url`; `{order_id}` is
    /// replaced by the order's id.
    pub return_path: String,
    /// Webhook signing secrets: the first signs (the mock provider), every one verifies (so
    /// a secret can be rotated). Must not be empty: with no secret every webhook is refused.
    pub webhook_secrets: Vec<String>,
    /// How far a webhook signature's timestamp may be from now, either way.
    pub tolerance_secs: i64,
    /// How long a provider call may take before it counts as failed.
    pub provider_timeout: Duration,
    /// Consecutive provider failures that open the circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit refuses calls before letting one trial through.
    pub breaker_open_for: Duration,
    /// The mock provider decides intents by itself (`MERCATO_PAYMENTS_MOCK_AUTO=true`).
    pub mock_auto: Option<AutoSettings>,
    /// How often the sweeper retries owed refunds and tidies unfinished work.
    pub sweep_interval: Duration,
    /// How often the mock provider looks for decisions it still owes (automatic mode) and
    /// webhooks the merchant has not accepted. Short: after a crash, checkouts wait on it.
    pub mock_catch_up_interval: Duration,
}

impl Default for Settings {
    /// Development defaults. The webhook secret is random per process: the mock provider
    /// lives in the same process, so it still verifies, and no secret is baked into the code.
    fn default() -> Self {
        Self {
            public_url: "http://localhost:8080".to_owned(),
            return_path: "/orders/{order_id}".to_owned(),
            webhook_secrets: vec![domain::random_secret()],
            tolerance_secs: domain::DEFAULT_TOLERANCE_SECS,
            provider_timeout: Duration::from_secs(5),
            breaker_threshold: 5,
            breaker_open_for: Duration::from_secs(30),
            mock_auto: None,
            sweep_interval: Duration::from_secs(30),
            mock_catch_up_interval: Duration::from_secs(1),
        }
    }
}

/// What the orders service asks for at checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePayment {
    pub order_id: Uuid,
    /// The order's human number, e.g. `ORD-2026-000123`.
    pub order_number: String,
    pub user_id: Uuid,
    pub method: Method,
    pub amount_minor: i64,
    pub currency: String,
    pub correlation_id: Option<String>,
}

/// A refund to make. `amount_minor: None` refunds everything that remains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    pub amount_minor: Option<i64>,
    pub reason: Option<String>,
    /// 1–255 visible ASCII characters. The same key answers the first refund made with it.
    pub idempotency_key: String,
    /// Who asked (an admin's id), for the record.
    pub actor: Option<String>,
    pub correlation_id: Option<String>,
}

/// Proof of a captured payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Receipt {
    /// `PAY-XXXXXXXX`
    pub reference: String,
    pub method: Method,
    /// What was captured.
    pub amount_minor: i64,
    pub currency: String,
    /// RFC 3339.
    pub captured_at: String,
}

/// A payment as its owner and admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: Uuid,
    pub order_id: Uuid,
    pub order_number: String,
    pub user_id: Uuid,
    pub method: Method,
    pub status: PaymentStatus,
    pub amount_minor: i64,
    pub currency: String,
    /// `mock` or `cod`.
    pub provider: String,
    /// `PAY-XXXXXXXX`, for the buyer and support.
    pub reference: String,
    /// The provider's hosted page, while the buyer still has to pay there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    pub captured_minor: i64,
    /// Refunded and confirmed by the provider.
    pub refunded_minor: i64,
    /// Refunds asked of the provider and not yet confirmed.
    pub refund_pending_minor: i64,
    /// What may still be refunded.
    pub refundable_minor: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Present once the payment was captured for its order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
    pub version: i64,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
}

impl PaymentView {
    fn from_row(row: PaymentRow) -> Result<Self, ApiError> {
        let method = Method::parse(&row.method).ok_or_else(|| anyhow::anyhow!("unknown method {:?}", row.method))?;
        let status =
            PaymentStatus::parse(&row.status).ok_or_else(|| anyhow::anyhow!("unknown status {:?}", row.status))?;
        let receipt = row.captured_at.map(|at| Receipt {
            reference: row.reference.clone(),
            method,
            amount_minor: row.captured_minor,
            currency: row.currency.clone(),
            captured_at: rfc3339(at),
        });
        Ok(Self {
            id: parse_stored_id(&row.id)?,
            order_id: parse_stored_id(&row.order_id)?,
            user_id: parse_stored_id(&row.user_id)?,
            refunded_minor: row.settled_refunds(),
            refund_pending_minor: row.refund_pending_minor,
            refundable_minor: row.refundable(),
            redirect_url: row.redirect_url.filter(|_| status == PaymentStatus::RequiresAction),
            order_number: row.order_number,
            method,
            status,
            amount_minor: row.amount_minor,
            currency: row.currency,
            provider: row.provider,
            reference: row.reference,
            intent_id: row.intent_id,
            captured_minor: row.captured_minor,
            failure_reason: row.failure_reason,
            receipt,
            version: row.version,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
        })
    }
}

/// A refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RefundView {
    pub id: Uuid,
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub status: RefundStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_refund_id: Option<String>,
    /// An admin's id, `system` for automatic refunds; absent for refunds made at the provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

impl RefundView {
    fn from_row(row: RefundRow, currency: &str) -> Result<Self, ApiError> {
        let status = RefundStatus::parse(&row.status)
            .ok_or_else(|| anyhow::anyhow!("unknown refund status {:?}", row.status))?;
        Ok(Self {
            id: parse_stored_id(&row.id)?,
            payment_id: parse_stored_id(&row.payment_id)?,
            order_id: parse_stored_id(&row.order_id)?,
            amount_minor: row.amount_minor,
            currency: currency.to_owned(),
            status,
            reason: row.reason,
            provider_refund_id: row.provider_refund_id,
            actor: row.actor,
            created_at: rfc3339(row.created_at),
        })
    }
}

fn parse_stored_id(raw: &str) -> Result<Uuid, ApiError> {
    platform::id::parse_id(raw).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("stored id {raw:?} is not a UUID")))
}

/// What a webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookOutcome {
    /// It changed the payment.
    Applied,
    /// Valid, but the payment already reflects it (a failure after a success, a refund
    /// already recorded).
    NoChange,
    /// This event id was received before; it had no second effect.
    Duplicate,
    /// It concerns no payment of ours, or is of a type we do not handle; kept, not retried.
    Ignored,
}

impl WebhookOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::NoChange => "no_change",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }

    /// Combines two steps of one event: any change makes it applied.
    fn and(self, other: Self) -> Self {
        if self == Self::Applied || other == Self::Applied {
            Self::Applied
        } else {
            other
        }
    }
}

/// Which payments an admin list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    pub status: Option<PaymentStatus>,
    pub order_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

pub struct Payments {
    db: Db,
    outbox: Outbox,
    clock: SharedClock,
    settings: Settings,
    provider: Arc<dyn Provider>,
    /// The same object as `provider` when the mock is in use, for its switch and its pages.
    mock: Option<Arc<MockProvider>>,
    guard: Guard,
}

impl Payments {
    /// The service with the mock provider, which delivers its webhooks to this service in
    /// process (through [`Payments::receive_webhook`], signature checks included). Returns an
    /// `Arc` because the provider holds a weak reference back to the service.
    pub fn new(db: Db, clock: SharedClock, settings: Settings) -> Arc<Self> {
        if settings.webhook_secrets.is_empty() {
            tracing::warn!("payments: no webhook secret is configured; every webhook will be refused");
        }
        Arc::new_cyclic(|me: &Weak<Payments>| {
            let sink: Weak<dyn WebhookSink> = me.clone();
            let secret = settings.webhook_secrets.first().cloned().unwrap_or_default();
            let mock = Arc::new(MockProvider::new(
                db.clone(),
                clock.clone(),
                &settings.public_url,
                &secret,
                settings.mock_auto.clone(),
                sink,
            ));
            Self::assemble(db, clock, settings, mock.clone(), Some(mock))
        })
    }

    /// The service with another provider.
    pub fn with_provider(db: Db, clock: SharedClock, settings: Settings, provider: Arc<dyn Provider>) -> Arc<Self> {
        Arc::new(Self::assemble(db, clock, settings, provider, None))
    }

    fn assemble(
        db: Db,
        clock: SharedClock,
        settings: Settings,
        provider: Arc<dyn Provider>,
        mock: Option<Arc<MockProvider>>,
    ) -> Self {
        Self {
            outbox: Outbox::new(db.clone()),
            guard: Guard::new(
                settings.provider_timeout,
                settings.breaker_threshold,
                settings.breaker_open_for,
            ),
            db,
            clock,
            settings,
            provider,
            mock,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The mock provider, when it is the one in use.
    pub fn mock(&self) -> Option<&MockProvider> {
        self.mock.as_deref()
    }

    /// Switches the mock provider off (`false`: every call fails) or on; no effect on another provider.
    pub fn set_provider_available(&self, available: bool) {
        if let Some(mock) = &self.mock {
            mock.set_available(available);
        }
    }

    /// The circuit breaker around provider calls (for health and tests).
    pub fn provider_breaker(&self) -> &CircuitBreaker {
        self.guard.breaker()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn emit(
        tx: &mut Tx,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
        correlation_id: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        outbox::enqueue(tx, &Event::new(SERVICE, kind, subject, data, correlation_id)).await
    }

    fn return_url(&self, order_id: Uuid) -> String {
        format!(
            "{}{}",
            self.settings.public_url.trim_end_matches('/'),
            self.settings.return_path.replace("{order_id}", &order_id.to_string())
        )
    }

    // ----- creating payments ----------------------------------------------------------------

    /// Starts paying for an order: an intent at the provider (the view's `redirect_url` is its
    /// hosted page) or, for cash on delivery, a payment awaiting delivery. Idempotent per
    /// order: while the order has a payment that neither failed nor was cancelled, that one is
    /// answered as it is. When the provider is down: 503 with `Retry-After`, and no payment is
    /// left behind.
    pub async fn create_for_order(&self, request: CreatePayment) -> Result<PaymentView, ApiError> {
        let mut errors = Vec::new();
        if !(1..=domain::MAX_AMOUNT_MINOR).contains(&request.amount_minor) {
            errors.push(platform::FieldError::new(
                "amount_minor",
                format!("must be between 1 and {}", domain::MAX_AMOUNT_MINOR),
            ));
        }
        if Currency::parse(&request.currency).is_err() {
            errors.push(platform::FieldError::new("currency", "must be an ISO 4217 code"));
        }
        let order_number = request.order_number.trim();
        if order_number.is_empty() || order_number.chars().count() > 64 {
            errors.push(platform::FieldError::new("order_number", "must be 1–64 characters"));
        }
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        let order_id = request.order_id.to_string();
        if let Some(existing) = store::live_for_order(self.db.reader(), &order_id).await? {
            return PaymentView::from_row(existing);
        }
        let now = self.now();
        let online = request.method.is_online();
        let row = PaymentRow {
            id: platform::id::new_id().to_string(),
            order_id: order_id.clone(),
            order_number: order_number.to_owned(),
            user_id: request.user_id.to_string(),
            method: request.method.as_str().to_owned(),
            status: if online {
                PaymentStatus::RequiresAction
            } else {
                PaymentStatus::AwaitingDelivery
            }
            .as_str()
            .to_owned(),
            amount_minor: request.amount_minor,
            currency: request.currency.clone(),
            provider: if online { self.provider.name() } else { "cod" }.to_owned(),
            intent_id: None,
            redirect_url: None,
            reference: domain::reference(rand::random()),
            captured_minor: 0,
            refunded_minor: 0,
            refund_pending_minor: 0,
            captured_at: None,
            failure_reason: None,
            auto_refund_reason: None,
            correlation_id: request.correlation_id.clone(),
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let mut tx = self.db.begin().await?;
        if let Err(err) = store::insert_payment(&mut tx, &row).await {
            tx.rollback().await?;
            if !is_unique_violation(&err) {
                return Err(err.into());
            }
            // A concurrent request for the same order won.
            return match store::live_for_order(self.db.reader(), &order_id).await? {
                Some(existing) => PaymentView::from_row(existing),
                None => Err(ApiError::Conflict(
                    "a payment for this order is being created; try again".to_owned(),
                )),
            };
        }
        tx.commit().await?;
        if !online {
            return PaymentView::from_row(row);
        }
        let intent_request = IntentRequest {
            payment_id: row.id.clone(),
            order_ref: row.order_number.clone(),
            amount_minor: row.amount_minor,
            currency: row.currency.clone(),
            method: request.method,
            return_url: self.return_url(request.order_id),
        };
        match self
            .guard
            .call("create_intent", self.provider.create_intent(intent_request))
            .await
        {
            Ok(intent) => {
                let mut tx = self.db.begin().await?;
                let written = store::set_intent(&mut tx, &row.id, &intent.id, &intent.redirect_url, self.now()).await?;
                tx.commit().await?;
                if let Some(written) = written {
                    return PaymentView::from_row(written);
                }
            }
            Err(err) => {
                // Nothing may stay waiting for a page the buyer never got. A webhook that
                // overtook this answer (the intent was made after all) keeps the payment.
                if store::delete_unstarted(self.db.writer(), &row.id).await? {
                    return Err(err.into());
                }
            }
        }
        self.payment_row(&row.id).await.and_then(PaymentView::from_row)
    }

    async fn payment_row(&self, id: &str) -> Result<PaymentRow, ApiError> {
        store::payment(self.db.reader(), id)
            .await?
            .ok_or_else(|| ApiError::not_found("payment"))
    }

    // ----- webhooks -------------------------------------------------------------------------

    /// Applies a provider's webhook: verifies the signature (400 when missing or malformed,
    /// 401 when it does not match or is stale; nothing is stored), then in one transaction
    /// records the receipt (a known event id has no second effect), applies the outcome to
    /// the payment and writes the events. An event for an unknown intent is kept and answered
    /// `ignored`, so the provider stops retrying.
    pub async fn receive_webhook(
        &self,
        provider: &str,
        raw_body: &[u8],
        signature_header: Option<&str>,
    ) -> Result<WebhookOutcome, ApiError> {
        let result = self.apply_webhook(provider, raw_body, signature_header).await;
        let outcome = match &result {
            Ok(outcome) => outcome.as_str(),
            Err(_) => "rejected",
        };
        metrics::counter!("mercato_webhooks_total", "outcome" => outcome).increment(1);
        result
    }

    async fn apply_webhook(
        &self,
        provider: &str,
        raw_body: &[u8],
        signature_header: Option<&str>,
    ) -> Result<WebhookOutcome, ApiError> {
        if provider != self.provider.name() {
            return Err(ApiError::NotFound(format!("no payment provider named `{provider}`")));
        }
        domain::verify(
            signature_header,
            raw_body,
            &self.settings.webhook_secrets,
            self.now() / 1000,
            self.settings.tolerance_secs,
        )?;
        let event: WebhookEvent = serde_json::from_slice(raw_body)
            .map_err(|err| ApiError::BadRequest(format!("the event is not a webhook event: {err}")))?;
        if event.id.is_empty() || event.id.len() > 255 {
            return Err(ApiError::BadRequest("the event id must be 1–255 characters".to_owned()));
        }
        let payload = String::from_utf8_lossy(raw_body);
        let now = self.now();
        let mut tx = self.db.begin().await?;
        if !store::insert_receipt(&mut tx, &event.id, provider, &event.kind, &payload, now).await? {
            tx.rollback().await?;
            tracing::info!(event_id = %event.id, "duplicate webhook ignored");
            return Ok(WebhookOutcome::Duplicate);
        }
        let Some(payment) = Self::find_payment(&mut tx, &event.data).await? else {
            store::finish_receipt(&mut tx, &event.id, WebhookOutcome::Ignored.as_str(), None, now).await?;
            tx.commit().await?;
            tracing::warn!(event_id = %event.id, intent = %event.data.intent_id, "webhook for an unknown intent ignored");
            return Ok(WebhookOutcome::Ignored);
        };
        let payment_id = payment.id.clone();
        let (outcome, after) = match event.kind.as_str() {
            INTENT_SUCCEEDED => Self::apply_success(&mut tx, payment, event.data.amount_minor, now).await?,
            INTENT_FAILED => {
                let reason = event
                    .data
                    .failure_reason
                    .as_deref()
                    .unwrap_or("declined by the provider");
                Self::apply_failure(&mut tx, payment, reason, now).await?
            }
            CHARGE_REFUNDED => Self::apply_provider_refunds(&mut tx, payment, &event.data, now).await?,
            _ => (WebhookOutcome::Ignored, payment),
        };
        store::finish_receipt(&mut tx, &event.id, outcome.as_str(), Some(&payment_id), now).await?;
        tx.commit().await?;
        self.outbox.wake();
        if after.auto_refund_reason.is_some() && after.refundable() > 0 {
            // Money came in for an order that no longer wants it: give it back now. If that
            // fails, the sweeper tries again; the webhook itself was applied.
            if let Err(err) = self.settle_owed(&payment_id).await {
                tracing::warn!(payment_id, error = %err, "automatic refund failed; the sweeper will retry");
            }
        }
        Ok(outcome)
    }

    /// The payment an event is about, locked: by intent id, or by the payment id the intent
    /// carries as metadata (a webhook can overtake the recording of a new intent).
    async fn find_payment(tx: &mut Tx, data: &WebhookData) -> Result<Option<PaymentRow>, ApiError> {
        if let Some(payment) = store::lock_by_intent(tx, &data.intent_id).await? {
            return Ok(Some(payment));
        }
        let Some(payment_id) = data.metadata.payment_id.as_deref() else {
            return Ok(None);
        };
        match store::lock_payment(tx, payment_id).await? {
            Some(payment) if payment.intent_id.is_none() && payment.provider != "cod" => {
                store::attach_intent(tx, &payment.id, &data.intent_id).await?;
                Ok(Some(payment))
            }
            // The intent was recorded while this webhook waited for the row's lock (the
            // lookup by intent ran before that commit).
            Some(payment) if payment.intent_id.as_deref() == Some(data.intent_id.as_str()) => Ok(Some(payment)),
            _ => Ok(None),
        }
    }

    /// Money was captured (the provider's success, or cash collected on delivery).
    async fn apply_success(
        tx: &mut Tx,
        payment: PaymentRow,
        amount_minor: i64,
        now: i64,
    ) -> Result<(WebhookOutcome, PaymentRow), ApiError> {
        let status = stored_status(&payment)?;
        let transition = domain::on_outcome(status, Outcome::Succeeded);
        if !matches!(transition, Transition::Capture | Transition::CaptureAndRefund) {
            return Ok((WebhookOutcome::NoChange, payment));
        }
        let amount = if amount_minor > 0 {
            amount_minor
        } else {
            payment.amount_minor
        };
        if amount != payment.amount_minor {
            tracing::warn!(payment_id = %payment.id, expected = payment.amount_minor, captured = amount,
                "the provider captured another amount than the payment's");
        }
        // One captured payment per order: a second one is recorded as money that must go back.
        let duplicate = store::other_capture(tx, &payment.order_id, &payment.id).await?;
        let owed = if duplicate {
            Some(DUPLICATE_PAYMENT)
        } else if transition == Transition::CaptureAndRefund {
            Some(ORDER_CANCELLED)
        } else {
            None
        };
        let captured_at = (!duplicate).then_some(now);
        let after = store::capture(tx, &payment.id, amount, captured_at, owed, now).await?;
        if after.auto_refund_reason.is_none() {
            let data = json!({
                "payment_id": after.id, "order_id": after.order_id, "order_number": after.order_number,
                "user_id": after.user_id,
                "method": after.method, "amount_minor": after.captured_minor, "currency": after.currency,
                "reference": after.reference,
            });
            Self::emit(tx, SUCCEEDED, &after.order_id, data, after.correlation_id.as_deref()).await?;
        }
        Ok((WebhookOutcome::Applied, after))
    }

    async fn apply_failure(
        tx: &mut Tx,
        payment: PaymentRow,
        reason: &str,
        now: i64,
    ) -> Result<(WebhookOutcome, PaymentRow), ApiError> {
        let status = stored_status(&payment)?;
        if domain::on_outcome(status, Outcome::Failed) != Transition::Fail {
            return Ok((WebhookOutcome::NoChange, payment));
        }
        let reason: String = reason.chars().take(500).collect();
        let after = store::set_status(tx, &payment.id, PaymentStatus::Failed.as_str(), Some(&reason), now).await?;
        let data = json!({
            "payment_id": after.id, "order_id": after.order_id, "order_number": after.order_number,
                "user_id": after.user_id,
            "method": after.method, "reason": reason,
        });
        Self::emit(tx, FAILED, &after.order_id, data, after.correlation_id.as_deref()).await?;
        Ok((WebhookOutcome::Applied, after))
    }

    /// `charge.refunded`: brings the recorded refunds up to the provider's cumulative total.
    /// Refunds the service asks for are counted before the provider is called, so only money
    /// refunded at the provider by other means is added here. A refund implies a capture: a
    /// payment not yet captured is captured first.
    async fn apply_provider_refunds(
        tx: &mut Tx,
        payment: PaymentRow,
        data: &WebhookData,
        now: i64,
    ) -> Result<(WebhookOutcome, PaymentRow), ApiError> {
        let (mut outcome, payment) = if stored_status(&payment)?.is_captured() {
            (WebhookOutcome::NoChange, payment)
        } else {
            Self::apply_success(tx, payment, data.amount_minor, now).await?
        };
        let total = data.amount_refunded_minor.unwrap_or(0);
        let missing = (total - payment.refunded_minor).min(payment.refundable());
        if missing <= 0 || payment.captured_minor == 0 {
            return Ok((outcome, payment));
        }
        let Some(after) = store::add_settled_refund(tx, &payment.id, missing, now).await? else {
            return Ok((outcome, payment));
        };
        let provider_refund_id = match data.refund_id.as_deref() {
            Some(id) if store::refund_by_provider_id(tx, id).await?.is_none() => Some(id.to_owned()),
            _ => None,
        };
        let refund = RefundRow {
            id: platform::id::new_id().to_string(),
            payment_id: payment.id.clone(),
            order_id: payment.order_id.clone(),
            amount_minor: missing,
            status: RefundStatus::Succeeded.as_str().to_owned(),
            reason: Some("refunded at the provider".to_owned()),
            idempotency_key: None,
            provider_refund_id,
            actor: None,
            created_at: now,
            updated_at: now,
        };
        store::insert_refund(tx, &refund).await?;
        let after = Self::refund_settled(tx, &after, &refund, now).await?;
        outcome = outcome.and(WebhookOutcome::Applied);
        Ok((outcome, after))
    }

    /// After a refund settled on `payment`: the status follows the amounts, and the order
    /// hears of it (unless the payment never counted for the order).
    async fn refund_settled(
        tx: &mut Tx,
        payment: &PaymentRow,
        refund: &RefundRow,
        now: i64,
    ) -> Result<PaymentRow, ApiError> {
        let settled = payment.settled_refunds();
        let status = domain::status_after_refunds(payment.captured_minor, settled);
        let after = store::set_status(tx, &payment.id, status.as_str(), None, now).await?;
        if after.captured_at.is_some() {
            let data = json!({
                "refund_id": refund.id, "payment_id": after.id, "order_id": after.order_id,
                "order_number": after.order_number,
                "user_id": after.user_id, "amount_minor": refund.amount_minor, "currency": after.currency,
                "refunded_total_minor": settled, "captured_minor": after.captured_minor,
                "fully_refunded": settled >= after.captured_minor,
            });
            Self::emit(
                tx,
                REFUND_SUCCEEDED,
                &after.order_id,
                data,
                after.correlation_id.as_deref(),
            )
            .await?;
        }
        Ok(after)
    }

    // ----- refunds --------------------------------------------------------------------------

    /// Refunds part or all of a captured payment. The amount is reserved by one conditional
    /// update (so concurrent refunds never exceed the capture), the provider is called outside
    /// any transaction, and the result recorded; if the provider fails the reservation is
    /// undone and the answer is 503. The same idempotency key answers the first refund (422
    /// when it was used for another payment or amount).
    pub async fn refund(&self, payment_id: Uuid, request: RefundRequest) -> Result<RefundView, ApiError> {
        let key = domain::parse_idempotency_key(&request.idempotency_key)?;
        let reason = domain::parse_reason(request.reason.as_deref())?;
        if let Some(amount) = request.amount_minor {
            domain::check_refund_amount(amount, i64::MAX)?;
        }
        let id = payment_id.to_string();
        if let Some(existing) = store::refund_by_key(self.db.reader(), &key).await? {
            return self.replay(existing, &id, request.amount_minor).await;
        }
        for _ in 0..5 {
            let payment = self.payment_row(&id).await?;
            if payment.captured_minor == 0 {
                return Err(ApiError::Conflict(format!(
                    "the payment is {} and has captured nothing to refund",
                    payment.status
                )));
            }
            let amount = match request.amount_minor {
                Some(amount) => amount,
                None if payment.refundable() > 0 => payment.refundable(),
                None => return Err(ApiError::Unprocessable("nothing is left to refund".to_owned())),
            };
            domain::check_refund_amount(amount, payment.refundable())?;
            let now = self.now();
            let mut tx = self.db.begin().await?;
            let Some(reserved) = store::reserve_refund(&mut tx, &id, amount, now).await? else {
                // Another refund took some of it meanwhile: read again and judge again.
                tx.rollback().await?;
                continue;
            };
            let refund = RefundRow {
                id: platform::id::new_id().to_string(),
                payment_id: id.clone(),
                order_id: reserved.order_id.clone(),
                amount_minor: amount,
                status: RefundStatus::Pending.as_str().to_owned(),
                reason: reason.clone(),
                idempotency_key: Some(key.clone()),
                provider_refund_id: None,
                actor: request.actor.clone(),
                created_at: now,
                updated_at: now,
            };
            if let Err(err) = store::insert_refund(&mut tx, &refund).await {
                tx.rollback().await?;
                if !is_unique_violation(&err) {
                    return Err(err.into());
                }
                // The same key at the same moment: answer the first.
                let existing = store::refund_by_key(self.db.reader(), &key)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("refund key {key:?} collided but is not stored"))?;
                return self.replay(existing, &id, request.amount_minor).await;
            }
            tx.commit().await?;
            return self.complete_refund(reserved, refund).await;
        }
        Err(ApiError::Conflict(
            "the payment keeps changing; try the refund again".to_owned(),
        ))
    }

    async fn replay(&self, existing: RefundRow, payment_id: &str, amount: Option<i64>) -> Result<RefundView, ApiError> {
        if existing.payment_id != payment_id || amount.is_some_and(|a| a != existing.amount_minor) {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was used for another refund".to_owned(),
            ));
        }
        let payment = self.payment_row(payment_id).await?;
        RefundView::from_row(existing, &payment.currency)
    }

    /// Asks the provider for a reserved refund and records the answer.
    async fn complete_refund(&self, payment: PaymentRow, refund: RefundRow) -> Result<RefundView, ApiError> {
        let key = refund.idempotency_key.clone().unwrap_or_else(|| refund.id.clone());
        let result = match &payment.intent_id {
            Some(intent) => self
                .guard
                .call("refund", self.provider.refund(intent, refund.amount_minor, &key))
                .await
                .map(|made| Some(made.id)),
            // Cash on delivery: the money goes back outside any provider (cash, bank transfer).
            None => Ok(None),
        };
        let now = self.now();
        let mut tx = self.db.begin().await?;
        store::lock_payment(&mut tx, &payment.id).await?;
        let provider_refund_id = match result {
            Ok(id) => id,
            Err(err) => {
                if store::delete_pending_refund(&mut tx, &refund.id).await? {
                    store::release_refund(&mut tx, &payment.id, refund.amount_minor, now).await?;
                }
                tx.commit().await?;
                return Err(err.into());
            }
        };
        if let Some(recorded) = match provider_refund_id.as_deref() {
            Some(id) => store::refund_by_provider_id(&mut tx, id).await?,
            None => None,
        } {
            // A webhook recorded this very provider refund already (the first attempt timed
            // out but went through): keep that record, drop this reservation.
            if store::delete_pending_refund(&mut tx, &refund.id).await? {
                store::release_refund(&mut tx, &payment.id, refund.amount_minor, now).await?;
            }
            tx.commit().await?;
            return RefundView::from_row(recorded, &payment.currency);
        }
        let Some(done) = store::succeed_refund(&mut tx, &refund.id, provider_refund_id.as_deref(), now).await? else {
            // Completed (or undone) by someone else meanwhile, e.g. the sweeper.
            tx.rollback().await?;
            let current = store::refund(self.db.reader(), &refund.id)
                .await?
                .ok_or_else(|| ApiError::Unavailable {
                    message: "the refund did not go through; try again".to_owned(),
                    retry_after_secs: 1,
                })?;
            return RefundView::from_row(current, &payment.currency);
        };
        let settled = store::settle_refund(&mut tx, &payment.id, refund.amount_minor, now).await?;
        Self::refund_settled(&mut tx, &settled, &done, now).await?;
        tx.commit().await?;
        self.outbox.wake();
        RefundView::from_row(done, &payment.currency)
    }

    /// Refunds the order's captured payment: `amount_minor: None` refunds all that remains.
    /// For the orders service (returns, cancellations after payment).
    pub async fn refund_order(&self, order_id: Uuid, request: RefundRequest) -> Result<RefundView, ApiError> {
        let payment = store::current_for_order(self.db.reader(), &order_id.to_string())
            .await?
            .filter(|p| p.captured_at.is_some())
            .ok_or_else(|| ApiError::Conflict("the order has no captured payment to refund".to_owned()))?;
        self.refund(parse_stored_id(&payment.id)?, request).await
    }

    /// A payment's refunds, oldest first (admin).
    pub async fn refunds(&self, payment_id: Uuid) -> Result<Vec<RefundView>, ApiError> {
        let payment = self.payment_row(&payment_id.to_string()).await?;
        store::refunds_of(self.db.reader(), &payment.id)
            .await?
            .into_iter()
            .map(|row| RefundView::from_row(row, &payment.currency))
            .collect()
    }

    /// Gives back whatever a payment owes back in full (its order was cancelled, or another
    /// payment of the order was captured first). Idempotent: keyed per order or payment.
    async fn settle_owed(&self, payment_id: &str) -> Result<(), ApiError> {
        let payment = self.payment_row(payment_id).await?;
        let Some(reason) = payment.auto_refund_reason.clone() else {
            return Ok(());
        };
        if payment.refundable() <= 0 {
            return Ok(());
        }
        let key = if payment.captured_at.is_some() {
            format!("cancel:{}", payment.order_id)
        } else {
            format!("duplicate:{}", payment.id)
        };
        let request = RefundRequest {
            amount_minor: None,
            reason: Some(reason),
            idempotency_key: key,
            actor: Some(SYSTEM_ACTOR.to_owned()),
            correlation_id: payment.correlation_id.clone(),
        };
        match self.refund(parse_stored_id(&payment.id)?, request).await {
            Ok(_) => Ok(()),
            // Refunded meanwhile by someone else.
            Err(ApiError::Unprocessable(_)) if self.payment_row(payment_id).await?.refundable() == 0 => Ok(()),
            Err(err) => Err(err),
        }
    }

    // ----- order events ---------------------------------------------------------------------

    /// order.cancelled: an open payment is cancelled (its intent too, best effort), a captured
    /// one is refunded in full, and any capture arriving later is refunded at once.
    /// Idempotent, so it can run again on a redelivery.
    pub async fn cancel_for_order(&self, order_id: &str) -> Result<(), ApiError> {
        let now = self.now();
        let mut tx = self.db.begin().await?;
        store::mark_auto_refund(&mut tx, order_id, ORDER_CANCELLED, now).await?;
        let mut intents = Vec::new();
        let mut owed = Vec::new();
        for payment in store::lock_order_payments(&mut tx, order_id).await? {
            let status = stored_status(&payment)?;
            if status.is_open() {
                store::set_status(&mut tx, &payment.id, PaymentStatus::Cancelled.as_str(), None, now).await?;
                intents.extend(payment.intent_id.clone());
            } else if payment.refundable() > 0 {
                owed.push(payment.id.clone());
            }
        }
        tx.commit().await?;
        for intent in intents {
            if let Err(err) = self
                .guard
                .call("cancel_intent", self.provider.cancel_intent(&intent))
                .await
            {
                // Best effort: if the buyer pays anyway, the capture is refunded when it arrives.
                tracing::info!(intent, ?err, "the intent of a cancelled order could not be cancelled");
            }
        }
        for payment_id in owed {
            self.settle_owed(&payment_id).await?;
        }
        Ok(())
    }

    /// order.delivered: cash on delivery was collected; the payment is captured and
    /// payment.succeeded announced, in the caller's transaction. Idempotent.
    pub async fn collect_on_delivery(&self, tx: &mut Tx, order_id: &str) -> Result<(), ApiError> {
        let now = self.now();
        for payment in store::lock_order_payments(tx, order_id).await? {
            if payment.provider == "cod" && stored_status(&payment)? == PaymentStatus::AwaitingDelivery {
                let amount = payment.amount_minor;
                Self::apply_success(tx, payment, amount, now).await?;
            }
        }
        self.outbox.wake();
        Ok(())
    }

    // ----- reads ----------------------------------------------------------------------------

    /// The payment that stands for an order (the captured one, else the newest). Its owner
    /// or an admin may see it; anyone else gets 404, as if it did not exist.
    pub async fn payment_for_order(&self, order_id: Uuid, caller: &CurrentUser) -> Result<PaymentView, ApiError> {
        let row = store::current_for_order(self.db.reader(), &order_id.to_string())
            .await?
            .filter(|p| caller.is_admin() || p.user_id == caller.id.to_string())
            .ok_or_else(|| ApiError::not_found("payment"))?;
        PaymentView::from_row(row)
    }

    /// Any payment by id (admin).
    pub async fn payment(&self, id: Uuid) -> Result<PaymentView, ApiError> {
        PaymentView::from_row(self.payment_row(&id.to_string()).await?)
    }

    /// Payments, newest first (admin).
    pub async fn list(&self, filter: &ListFilter, page: &PageRequest) -> Result<Page<PaymentView>, ApiError> {
        let filter = PaymentFilter {
            status: filter.status.map(|s| s.as_str().to_owned()),
            order_id: filter.order_id.map(|id| id.to_string()),
            user_id: filter.user_id.map(|id| id.to_string()),
        };
        let rows = store::list_payments(self.db.reader(), &filter, page.after.as_deref(), page.fetch_limit()).await?;
        let views = rows
            .into_iter()
            .map(PaymentView::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(views, page, |p: &PaymentView| p.id.to_string()))
    }

    // ----- the sweeper ----------------------------------------------------------------------

    /// One pass of the sweeper: refunds owed money that is not yet refunded, finishes refunds
    /// whose result was never recorded (the provider answers a repeated key with the first
    /// refund), and removes payments whose intent creation never finished. Answers how many
    /// items it handled.
    pub async fn sweep(&self) -> Result<usize, ApiError> {
        let mut handled = 0;
        for payment_id in store::owed_refunds(self.db.reader(), 100).await? {
            match self.settle_owed(&payment_id).await {
                Ok(()) => handled += 1,
                Err(err) => tracing::warn!(payment_id, error = %err, "owed refund still not made"),
            }
        }
        // Well past any provider call's timeout: nothing still in flight is touched.
        let grace = i64::try_from(self.settings.provider_timeout.as_millis()).unwrap_or(i64::MAX / 4) * 2 + 60_000;
        let before = self.now() - grace;
        for refund in store::stale_pending_refunds(self.db.reader(), before, 100).await? {
            let payment = self.payment_row(&refund.payment_id).await?;
            let refund_id = refund.id.clone();
            match self.complete_refund(payment, refund).await {
                Ok(_) => handled += 1,
                Err(err) => tracing::warn!(refund_id, error = %err, "a pending refund could not be finished"),
            }
        }
        for payment_id in store::unstarted_before(self.db.reader(), before, 100).await? {
            if store::delete_unstarted(self.db.writer(), &payment_id).await? {
                handled += 1;
            }
        }
        Ok(handled)
    }

    /// Runs [`Payments::sweep`] every `sweep_interval` until cancelled, and with the mock
    /// provider its catch-up pass ([`MockProvider::catch_up`]) every `mock_catch_up_interval`:
    /// the provider's work lives in this process, so it starts wherever payments runs.
    pub fn spawn_sweeper(self: &Arc<Self>, cancel: CancellationToken) {
        if let Some(mock) = &self.mock {
            mock.spawn_catch_up(self.settings.mock_catch_up_interval, cancel.clone());
        }
        let payments = self.clone();
        platform::periodic::spawn_every("payments sweeper", self.settings.sweep_interval, cancel, move || {
            let payments = payments.clone();
            async move { payments.sweep().await.map_err(|err| anyhow::anyhow!("{err}")) }
        });
    }
}

fn stored_status(payment: &PaymentRow) -> Result<PaymentStatus, ApiError> {
    PaymentStatus::parse(&payment.status)
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unknown payment status {:?}", payment.status)))
}

#[async_trait]
impl WebhookSink for Payments {
    /// The mock provider's deliveries, in process, through the same checks as HTTP ones.
    async fn deliver(&self, raw_body: &[u8], signature: &str) -> Result<(), String> {
        self.receive_webhook(mock::NAME, raw_body, Some(signature))
            .await
            .map(|_| ())
            .map_err(|err| err.to_string())
    }
}
