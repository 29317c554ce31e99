//! The mock payment provider: a real component, not a test double. It keeps its intents and
//! refunds in its own tables, serves a hosted page where the buyer approves or declines, and
//! tells the merchant what happened with signed webhooks — optionally on its own (automatic
//! mode), late, or twice, as real providers do.
//!
//! Like them, it survives its own crash: what it decided and what the merchant accepted is in
//! its tables (`decided_at`, `notified_at`), and a periodic catch-up pass
//! ([`MockProvider::catch_up`]) makes the automatic decisions a stopped process never made and
//! delivers again every decision the merchant has not accepted, until it does.
//!
//! It reaches the merchant only through a [`WebhookSink`]: the raw body and the
//! `Mercato-Signature` header, exactly what an HTTP delivery would carry.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use platform::clock::SharedClock;
use platform::money::{Currency, Money};
use platform::store::{is_unique_violation, Db};
use tokio_util::sync::CancellationToken;

use crate::domain;
use crate::provider::{
    Intent, IntentRequest, Metadata, Provider, ProviderError, ProviderRefund, WebhookData, WebhookEvent,
    CHARGE_REFUNDED, INTENT_FAILED, INTENT_SUCCEEDED,
};
use crate::store::{self, IntentRow, MockRefundRow};

/// The provider's name; webhooks go to `/api/v1/payments/webhooks/mock`.
pub const NAME: &str = "mock";

/// Where the merchant receives webhooks.
#[async_trait]
pub trait WebhookSink: Send + Sync {
    /// Hands over one signed delivery. `Err`: the merchant did not accept it; the provider
    /// tries again later.
    async fn deliver(&self, raw_body: &[u8], signature: &str) -> Result<(), String>;
}

/// Automatic mode: the provider decides every intent by itself, without the hosted page.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoSettings {
    /// How long after the intent's creation it is decided.
    pub delay: Duration,
    /// The share of intents approved, 0.0..=1.0 (1.0: all of them).
    pub approve_ratio: f64,
    /// Deliver every webhook twice (same event id), as providers do after a lost acknowledgement.
    pub duplicate_webhooks: bool,
    /// Deliver every webhook this many milliseconds after the decision.
    pub late_ms: u64,
}

impl Default for AutoSettings {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            approve_ratio: 1.0,
            duplicate_webhooks: false,
            late_ms: 0,
        }
    }
}

/// How often one delivery tries a webhook (backing off from [`DELIVERY_BACKOFF`], about 1.5 s
/// in all) before leaving a decision to the catch-up pass, or giving up on a refund's.
const DELIVERY_ATTEMPTS: u32 = 5;
const DELIVERY_BACKOFF: Duration = Duration::from_millis(100);
/// How long past its due time an automatic decision may still be on its way (its task is
/// merely late) before the catch-up pass makes it instead.
const DECISION_GRACE: Duration = Duration::from_secs(2);
/// How long after a decision its first delivery may still be under way (all its attempts, twice
/// with duplicate webhooks) before the catch-up pass delivers it again.
const REDELIVERY_GRACE: Duration = Duration::from_secs(10);
/// How many intents one catch-up pass takes of each kind; the next pass takes the rest.
const CATCH_UP_BATCH: i64 = 100;

/// Builds, signs and delivers webhook events.
#[derive(Clone)]
struct Courier {
    /// Where a decision's accepted delivery is recorded.
    db: Db,
    sink: Weak<dyn WebhookSink>,
    secret: String,
    clock: SharedClock,
    /// Deliveries the merchant accepted (duplicates included).
    delivered: Arc<AtomicU64>,
}

impl Courier {
    fn event(&self, kind: &str, intent: &IntentRow, data: impl FnOnce(&mut WebhookData)) -> Vec<u8> {
        let mut payload = WebhookData {
            intent_id: intent.id.clone(),
            amount_minor: intent.amount_minor,
            currency: intent.currency.clone(),
            refund_id: None,
            amount_refunded_minor: None,
            failure_reason: None,
            metadata: Metadata {
                payment_id: Some(intent.payment_ref.clone()),
            },
        };
        data(&mut payload);
        let event = WebhookEvent {
            id: format!("evt_{}", platform::id::new_id().simple()),
            kind: kind.to_owned(),
            created: self.clock.now_ms() / 1000,
            data: payload,
        };
        serde_json::to_vec(&event).unwrap_or_default()
    }

    /// Delivers `body`, signed at the moment of each attempt, up to `attempts` times with
    /// backoff. `Err`: the merchant's last refusal.
    async fn deliver(&self, body: &[u8], attempts: u32) -> Result<(), String> {
        let mut refusal = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(DELIVERY_BACKOFF * 2u32.pow(attempt - 1)).await;
            }
            let Some(sink) = self.sink.upgrade() else {
                return Err("the merchant is gone (shutting down)".to_owned());
            };
            let signature = domain::sign(&self.secret, self.clock.now_ms() / 1000, body);
            match sink.deliver(body, &signature).await {
                Ok(()) => {
                    self.delivered.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                Err(error) => {
                    tracing::debug!(attempt, error, "mock provider: webhook not accepted");
                    refusal = error;
                }
            }
        }
        Err(refusal)
    }

    /// Delivers `body`, the webhook of `intent`'s decision, and records when the merchant
    /// accepted it. Answers whether it did; if not, the catch-up pass delivers the decision again.
    async fn deliver_decision(&self, intent: &IntentRow, body: &[u8], attempts: u32) -> bool {
        if let Err(error) = self.deliver(body, attempts).await {
            tracing::warn!(intent = %intent.id, attempts, error,
                "mock provider: decision webhook not accepted; it will be delivered again");
            return false;
        }
        if let Err(err) = store::mark_notified(self.db.writer(), &intent.id, self.clock.now_ms()).await {
            // The merchant applies a decision once however often it hears of it.
            tracing::warn!(intent = %intent.id, error = %err,
                "mock provider: an accepted delivery was not recorded; it will be delivered again");
        }
        true
    }

    /// Delivers a refund's webhook in the background, and gives up after [`DELIVERY_ATTEMPTS`]:
    /// unlike a decision, a refund is answered to the merchant's own call, which the merchant
    /// repeats (same idempotency key) until it has recorded the answer, so the webhook only
    /// confirms what it knows.
    fn spawn_refund(&self, body: Vec<u8>) {
        let courier = self.clone();
        tokio::spawn(async move {
            if let Err(error) = courier.deliver(&body, DELIVERY_ATTEMPTS).await {
                tracing::error!(
                    error,
                    "mock provider: refund webhook abandoned after {DELIVERY_ATTEMPTS} attempts"
                );
            }
        });
    }
}

/// The outcome of a buyer's click on the hosted page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Decided now; `delivered` says whether the merchant accepted the webhook.
    Decided { intent: IntentRow, delivered: bool },
    /// It was decided (or cancelled) before; nothing was sent again.
    AlreadyDecided(IntentRow),
}

/// The mock provider.
pub struct MockProvider {
    db: Db,
    clock: SharedClock,
    public_url: String,
    auto: Option<AutoSettings>,
    courier: Courier,
    available: AtomicBool,
    /// Calls that reached the provider (refused ones included): lets tests see that an open
    /// circuit sends nothing.
    calls: AtomicU64,
}

impl MockProvider {
    /// `secret` signs the webhooks; `sink` receives them.
    pub fn new(
        db: Db,
        clock: SharedClock,
        public_url: &str,
        secret: &str,
        auto: Option<AutoSettings>,
        sink: Weak<dyn WebhookSink>,
    ) -> Self {
        Self {
            courier: Courier {
                db: db.clone(),
                sink,
                secret: secret.to_owned(),
                clock: clock.clone(),
                delivered: Arc::default(),
            },
            db,
            clock,
            public_url: public_url.trim_end_matches('/').to_owned(),
            auto,
            available: AtomicBool::new(true),
            calls: AtomicU64::new(0),
        }
    }

    /// Takes the provider down (`false`: every call fails as if it were unreachable) or up.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// How many calls reached the provider.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn enter(&self) -> Result<(), ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.is_available() {
            Ok(())
        } else {
            Err(ProviderError::Unavailable(
                "the mock provider is switched off".to_owned(),
            ))
        }
    }

    /// How many webhook deliveries the merchant accepted (a duplicate delivery counts twice).
    pub fn deliveries(&self) -> u64 {
        self.courier.delivered.load(Ordering::SeqCst)
    }

    pub fn hosted_page_url(&self, intent_id: &str) -> String {
        format!("{}/psp/pay/{intent_id}", self.public_url)
    }

    pub async fn intent(&self, intent_id: &str) -> Result<Option<IntentRow>, sqlx::Error> {
        store::intent(self.db.reader(), intent_id).await
    }

    /// The buyer approves or declines on the hosted page. Decides the intent once and delivers
    /// the webhook before answering; a second click changes and sends nothing.
    pub async fn decide(&self, intent_id: &str, approve: bool) -> Result<Option<Decision>, sqlx::Error> {
        let status = if approve { "succeeded" } else { "failed" };
        match store::decide_intent(self.db.writer(), intent_id, status, self.clock.now_ms()).await? {
            Some(intent) => {
                let body = decision_event(&self.courier, &intent);
                let delivered = self.courier.deliver_decision(&intent, &body, DELIVERY_ATTEMPTS).await;
                Ok(Some(Decision::Decided { intent, delivered }))
            }
            None => Ok(self.intent(intent_id).await?.map(Decision::AlreadyDecided)),
        }
    }

    fn spawn_auto(&self, intent: IntentRow, auto: AutoSettings) {
        let db = self.db.clone();
        let clock = self.clock.clone();
        let courier = self.courier.clone();
        tokio::spawn(async move {
            if !auto.delay.is_zero() {
                tokio::time::sleep(auto.delay).await;
            }
            let status = auto_status(&auto);
            let intent = match store::decide_intent(db.writer(), &intent.id, status, clock.now_ms()).await {
                Ok(Some(intent)) => intent,
                // Cancelled (or decided) meanwhile.
                Ok(None) => return,
                Err(err) => {
                    tracing::error!(intent = %intent.id, error = %err, "mock provider: automatic decision failed; the catch-up pass will make it");
                    return;
                }
            };
            let body = decision_event(&courier, &intent);
            if auto.late_ms > 0 {
                tokio::time::sleep(Duration::from_millis(auto.late_ms)).await;
            }
            let copies = if auto.duplicate_webhooks { 2 } else { 1 };
            for _ in 0..copies {
                courier.deliver_decision(&intent, &body, DELIVERY_ATTEMPTS).await;
            }
        });
    }

    /// Finishes what a stopped process left undone, as a real provider keeps deciding and
    /// delivering through its own restarts:
    ///
    /// - in automatic mode, decides the intents still undecided more than [`DECISION_GRACE`]
    ///   after their due time (the decision is the same conditional update as the automatic
    ///   task's, so a task that is merely late and this pass cannot both decide);
    /// - delivers again, as a new event, each approval or decline the merchant has not accepted
    ///   [`REDELIVERY_GRACE`] (plus the configured lateness) after it was made. The merchant
    ///   applies an outcome once however often it hears of it.
    ///
    /// Each delivery is tried once: the next pass is the retry. Answers how many intents it
    /// decided or had a decision accepted for.
    pub async fn catch_up(&self) -> Result<usize, sqlx::Error> {
        let now = self.clock.now_ms();
        let mut handled = 0;
        if let Some(auto) = &self.auto {
            let overdue = now.saturating_sub(millis(auto.delay.saturating_add(DECISION_GRACE)));
            for id in store::undecided_before(self.db.reader(), overdue, CATCH_UP_BATCH).await? {
                let decided =
                    store::decide_intent(self.db.writer(), &id, auto_status(auto), self.clock.now_ms()).await?;
                // `None`: decided or cancelled meanwhile.
                if let Some(intent) = decided {
                    handled += 1;
                    let body = decision_event(&self.courier, &intent);
                    self.courier.deliver_decision(&intent, &body, 1).await;
                }
            }
        }
        let late = self
            .auto
            .as_ref()
            .map_or(Duration::ZERO, |auto| Duration::from_millis(auto.late_ms));
        let quiet_since = now.saturating_sub(millis(REDELIVERY_GRACE.saturating_add(late)));
        for intent in store::unnotified_before(self.db.reader(), quiet_since, CATCH_UP_BATCH).await? {
            let body = decision_event(&self.courier, &intent);
            if self.courier.deliver_decision(&intent, &body, 1).await {
                handled += 1;
            }
        }
        Ok(handled)
    }

    /// Runs [`MockProvider::catch_up`] at once (a restart is when it matters most) and then
    /// every `interval` until cancelled. Idle, a pass costs two indexed queries.
    pub fn spawn_catch_up(self: &Arc<Self>, interval: Duration, cancel: CancellationToken) {
        let provider = self.clone();
        platform::periodic::spawn_every("mock provider catch-up", interval, cancel, move || {
            let provider = provider.clone();
            async move { provider.catch_up().await.map_err(anyhow::Error::from) }
        });
    }
}

/// An automatic decision: approved with the configured probability.
fn auto_status(auto: &AutoSettings) -> &'static str {
    if rand::random::<f64>() < auto.approve_ratio {
        "succeeded"
    } else {
        "failed"
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn decision_event(courier: &Courier, intent: &IntentRow) -> Vec<u8> {
    if intent.status == "succeeded" {
        courier.event(INTENT_SUCCEEDED, intent, |_| {})
    } else {
        courier.event(INTENT_FAILED, intent, |data| {
            data.failure_reason = Some("declined".to_owned());
        })
    }
}

fn store_failure(err: sqlx::Error) -> ProviderError {
    tracing::error!(error = %err, "mock provider: its database failed");
    ProviderError::Unavailable("the mock provider failed internally".to_owned())
}

#[async_trait]
impl Provider for MockProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create_intent(&self, request: IntentRequest) -> Result<Intent, ProviderError> {
        self.enter()?;
        let intent = IntentRow {
            id: format!("pi_{}", platform::id::new_id().simple()),
            payment_ref: request.payment_id,
            amount_minor: request.amount_minor,
            refunded_minor: 0,
            currency: request.currency,
            method: request.method.as_str().to_owned(),
            status: "requires_action".to_owned(),
            order_ref: request.order_ref,
            return_url: request.return_url,
            created_at: self.clock.now_ms(),
            decided_at: None,
            notified_at: None,
        };
        store::insert_intent(self.db.writer(), &intent)
            .await
            .map_err(store_failure)?;
        let created = Intent {
            redirect_url: self.hosted_page_url(&intent.id),
            id: intent.id.clone(),
        };
        if let Some(auto) = &self.auto {
            self.spawn_auto(intent, auto.clone());
        }
        Ok(created)
    }

    async fn refund(
        &self,
        intent_id: &str,
        amount_minor: i64,
        idempotency_key: &str,
    ) -> Result<ProviderRefund, ProviderError> {
        self.enter()?;
        if amount_minor < 1 {
            return Err(ProviderError::Rejected("the amount must be positive".to_owned()));
        }
        let mut tx = self.db.begin().await.map_err(store_failure)?;
        if let Some(done) = store::mock_refund_by_key(&mut tx, idempotency_key)
            .await
            .map_err(store_failure)?
        {
            tx.rollback().await.map_err(store_failure)?;
            if done.intent_id != intent_id || done.amount_minor != amount_minor {
                return Err(ProviderError::Rejected(
                    "the idempotency key was used for another refund".to_owned(),
                ));
            }
            return Ok(ProviderRefund {
                id: done.id,
                amount_minor: done.amount_minor,
            });
        }
        let Some(intent) = store::refund_intent(&mut tx, intent_id, amount_minor)
            .await
            .map_err(store_failure)?
        else {
            tx.rollback().await.map_err(store_failure)?;
            return Err(match self.intent(intent_id).await.map_err(store_failure)? {
                None => ProviderError::Rejected("no such intent".to_owned()),
                Some(intent) if intent.status != "succeeded" => {
                    ProviderError::Rejected(format!("the intent is {}, not succeeded", intent.status))
                }
                Some(_) => ProviderError::Rejected("the amount exceeds what is left to refund".to_owned()),
            });
        };
        let refund = MockRefundRow {
            id: format!("re_{}", platform::id::new_id().simple()),
            intent_id: intent_id.to_owned(),
            amount_minor,
            idempotency_key: idempotency_key.to_owned(),
            created_at: self.clock.now_ms(),
        };
        if let Err(err) = store::insert_mock_refund(&mut tx, &refund).await {
            tx.rollback().await.map_err(store_failure)?;
            return Err(if is_unique_violation(&err) {
                // The same key at the same moment: the caller retries and gets the first one.
                ProviderError::Unavailable("a refund with this idempotency key is in progress".to_owned())
            } else {
                store_failure(err)
            });
        }
        tx.commit().await.map_err(store_failure)?;
        let body = self.courier.event(CHARGE_REFUNDED, &intent, |data| {
            data.refund_id = Some(refund.id.clone());
            data.amount_refunded_minor = Some(intent.refunded_minor);
        });
        self.courier.spawn_refund(body);
        Ok(ProviderRefund {
            id: refund.id,
            amount_minor,
        })
    }

    async fn cancel_intent(&self, intent_id: &str) -> Result<(), ProviderError> {
        self.enter()?;
        let now = self.clock.now_ms();
        if store::decide_intent(self.db.writer(), intent_id, "cancelled", now)
            .await
            .map_err(store_failure)?
            .is_some()
        {
            return Ok(());
        }
        match self.intent(intent_id).await.map_err(store_failure)? {
            None => Err(ProviderError::Rejected("no such intent".to_owned())),
            Some(intent) if intent.status == "cancelled" => Ok(()),
            Some(intent) => Err(ProviderError::Rejected(format!(
                "the intent is {} already",
                intent.status
            ))),
        }
    }
}

// ----- the hosted page ----------------------------------------------------------------------

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `12.34 EUR`, or the raw minor units when the currency is not one we know.
pub fn format_amount(amount_minor: i64, currency: &str) -> String {
    match Currency::parse(currency) {
        Ok(currency) => Money::new(amount_minor, currency).to_string(),
        Err(_) => format!("{amount_minor} (minor units) {currency}"),
    }
}

fn method_label(raw: &str) -> &'static str {
    domain::Method::parse(raw).map_or("unknown", domain::Method::label)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>{title} · Mercato Pay (test mode)</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;padding:2rem;color:#1d2330}}
main{{max-width:26rem;margin:0 auto;background:#fff;border-radius:12px;padding:1.5rem 2rem;box-shadow:0 2px 12px #0002}}
h1{{font-size:1.25rem}} .amount{{font-size:2rem;font-weight:600;margin:.5rem 0}} dl{{display:grid;grid-template-columns:auto 1fr;gap:.25rem 1rem}}
dt{{color:#667}} form{{display:inline}} button{{font-size:1rem;padding:.6rem 1.4rem;border:0;border-radius:8px;margin:1rem .5rem 0 0;cursor:pointer}}
.approve{{background:#1a7f37;color:#fff}} .decline{{background:#d1242f;color:#fff}} .note{{color:#667;font-size:.85rem}}
</style></head>
<body><main>
<p class=\"note\">Mercato Pay · test mode — no real money moves.</p>
<h1>{title}</h1>
{body}
</main></body></html>
",
        title = escape_html(title),
    )
}

fn summary(intent: &IntentRow) -> String {
    format!(
        "<p class=\"amount\">{amount}</p>
<dl><dt>Order</dt><dd>{order}</dd><dt>Method</dt><dd>{method}</dd><dt>Payment</dt><dd>{id}</dd></dl>",
        amount = escape_html(&format_amount(intent.amount_minor, &intent.currency)),
        order = escape_html(&intent.order_ref),
        method = escape_html(method_label(&intent.method)),
        id = escape_html(&intent.id),
    )
}

fn back_link(intent: &IntentRow) -> String {
    format!(
        "<p><a href=\"{}\">Return to the shop</a></p>",
        escape_html(&intent.return_url)
    )
}

/// The page where the buyer approves or declines an intent (or sees that it was decided).
pub fn render_intent(intent: &IntentRow) -> String {
    if intent.status != "requires_action" {
        return render_decided(intent, false);
    }
    let id = escape_html(&intent.id);
    let body = format!(
        "{summary}
<form method=\"post\" action=\"/psp/pay/{id}/approve\"><button class=\"approve\" type=\"submit\">Approve</button></form>
<form method=\"post\" action=\"/psp/pay/{id}/decline\"><button class=\"decline\" type=\"submit\">Decline</button></form>",
        summary = summary(intent),
    );
    page("Confirm your payment", &body)
}

/// The page after a decision: `now` when this request made it.
pub fn render_decided(intent: &IntentRow, now: bool) -> String {
    let title = match (intent.status.as_str(), now) {
        ("succeeded", true) => "Payment approved",
        ("failed", true) => "Payment declined",
        ("succeeded", false) => "This payment was already approved",
        ("failed", false) => "This payment was already declined",
        ("cancelled", _) => "This payment was cancelled",
        _ => "This payment was already decided",
    };
    page(title, &format!("{}\n{}", summary(intent), back_link(intent)))
}

/// The page for an intent the provider does not know.
pub fn render_not_found() -> String {
    page(
        "Payment not found",
        "<p>This payment link is not valid. Go back to the shop and try again.</p>",
    )
}

/// The page while the provider is switched off.
pub fn render_unavailable() -> String {
    page(
        "Payments are unavailable",
        "<p>The payment provider is unavailable right now. Please try again in a few minutes.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(status: &str) -> IntentRow {
        IntentRow {
            id: "pi_1".into(),
            payment_ref: "p".into(),
            amount_minor: 123_456,
            refunded_minor: 0,
            currency: "EUR".into(),
            method: "net_banking".into(),
            status: status.into(),
            order_ref: "ORD-<script>alert(1)</script>".into(),
            return_url: "https://shop.test/orders/1?a=1&b=\"2\"".into(),
            created_at: 0,
            decided_at: None,
            notified_at: None,
        }
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape_html("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let page = render_intent(&intent("requires_action"));
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("ORD-&lt;script&gt;"));
        assert!(page.contains("1234.56 EUR"));
        assert!(page.contains("net banking"));
        assert!(page.contains("/psp/pay/pi_1/approve") && page.contains("/psp/pay/pi_1/decline"));
        let done = render_decided(&intent("succeeded"), true);
        assert!(done.contains("Payment approved"));
        assert!(done.contains("href=\"https://shop.test/orders/1?a=1&amp;b=&quot;2&quot;\""));
        assert!(!done.contains("approve\""), "no buttons once decided");
    }

    #[test]
    fn a_decided_intent_shows_no_buttons() {
        let page = render_intent(&intent("failed"));
        assert!(page.contains("already declined"));
        assert!(!page.contains("<button"));
        assert_eq!(format_amount(500, "JPY"), "500 JPY");
        assert_eq!(format_amount(5, "??"), "5 (minor units) ??");
    }
}
