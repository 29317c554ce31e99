//! The payments service against a real database: every test runs on SQLite and, when
//! `MERCATO_TEST_POSTGRES_URL` is set, on PostgreSQL. `http` drives the routers.

mod http;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use payments::domain::{self, Method, PaymentStatus, RefundStatus};
use payments::events::OrderPayments;
use payments::mock::{Decision, MockProvider, WebhookSink};
use payments::provider::{Intent, IntentRequest, Provider, ProviderError, ProviderRefund};
use payments::store::{self, PaymentRow};
use payments::{AutoSettings, CreatePayment, PaymentView, Payments, RefundRequest, Settings, WebhookOutcome};
use platform::auth::{CurrentUser, Role};
use platform::clock::{OffsetClock, SharedClock};
use platform::consumer::IdempotentConsumer;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::page::PageParams;
use platform::store::{is_unique_violation, Db};
use platform::testing::tempfile_guard::TempDir;
use serde_json::{json, Value};
use uuid::Uuid;

macro_rules! suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            suite!(@tests $open;
                an_approved_payment_succeeds_once,
                a_declined_payment_fails,
                the_same_webhook_five_times_has_one_effect,
                a_refund_webhook_before_the_success_ends_captured_and_refunded,
                a_failure_after_a_success_is_ignored_and_a_success_after_a_failure_wins,
                concurrent_refunds_never_exceed_the_capture,
                a_refund_key_replays_the_first_refund_and_refuses_another_amount,
                the_database_refuses_a_second_captured_payment_for_an_order,
                a_second_captured_payment_of_an_order_is_refunded_automatically,
                a_provider_that_is_down_answers_503_leaves_nothing_and_opens_the_breaker,
                a_provider_that_hangs_times_out,
                creating_twice_for_an_order_answers_the_same_payment,
                cash_on_delivery_is_captured_when_the_order_is_delivered,
                a_cancelled_order_gets_its_captured_payment_refunded_in_full,
                a_cancelled_order_cancels_an_open_payment_and_its_intent,
                a_success_after_the_order_was_cancelled_is_refunded_automatically,
                automatic_mode_approves_and_duplicate_webhooks_have_one_effect,
                automatic_mode_declines_and_delivers_late,
                an_overdue_automatic_decision_is_made_and_delivered_by_the_catch_up_pass,
                a_refused_decision_webhook_is_delivered_again_until_the_merchant_accepts_it,
                a_redelivered_success_for_a_captured_payment_changes_nothing,
                bad_signatures_store_nothing_and_unknown_intents_are_ignored,
                only_the_owner_or_an_admin_sees_an_orders_payment,
                admin_lists_are_filtered_and_paginated,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                match super::$open(super::settings()).await {
                    Some(fixture) => super::$test(fixture).await,
                    None => eprintln!("skipped: {} is not set", platform::testing::POSTGRES_URL_VAR),
                }
            }
        )+
    };
}

suite!(sqlite, open_sqlite);
suite!(postgres, open_postgres);

pub const SECRET: &str = "whsec_test_secret";

pub struct Fixture {
    pub payments: Arc<Payments>,
    pub clock: Arc<OffsetClock>,
    pub db: Db,
    _dir: Option<TempDir>,
}

pub fn settings() -> Settings {
    Settings {
        public_url: "http://shop.test".to_owned(),
        webhook_secrets: vec![SECRET.to_owned()],
        provider_timeout: Duration::from_secs(5),
        breaker_threshold: 3,
        breaker_open_for: Duration::from_secs(60),
        ..Settings::default()
    }
}

async fn migrated(db: &Db) {
    db.migrate("platform", PLATFORM_MIGRATIONS)
        .await
        .expect("platform migrations");
    db.migrate(payments::SERVICE, payments::store::MIGRATIONS)
        .await
        .expect("payments migrations");
}

async fn fixture(db: Db, dir: Option<TempDir>, settings: Settings) -> Fixture {
    migrated(&db).await;
    let clock = Arc::new(OffsetClock::default());
    let shared: SharedClock = clock.clone();
    Fixture {
        payments: Payments::new(db.clone(), shared, settings),
        clock,
        db,
        _dir: dir,
    }
}

pub async fn open_sqlite(settings: Settings) -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.expect("sqlite");
    Some(fixture(db, Some(dir), settings).await)
}

pub async fn open_postgres(settings: Settings) -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.expect("postgres")?;
    Some(fixture(db, None, settings).await)
}

/// The same backend as `f`, with a fresh database and other settings.
async fn reopen(f: &Fixture, settings: Settings) -> Fixture {
    match f.db.backend() {
        platform::store::Backend::Sqlite => open_sqlite(settings).await,
        platform::store::Backend::Postgres => open_postgres(settings).await,
    }
    .expect("the backend is available")
}

pub fn order(method: Method, amount_minor: i64) -> CreatePayment {
    CreatePayment {
        order_id: Uuid::now_v7(),
        order_number: "ORD-2026-000123".to_owned(),
        user_id: Uuid::now_v7(),
        method,
        amount_minor,
        currency: "EUR".to_owned(),
        correlation_id: Some("corr-1".to_owned()),
    }
}

pub async fn pay(f: &Fixture, method: Method, amount_minor: i64) -> PaymentView {
    f.payments.create_for_order(order(method, amount_minor)).await.unwrap()
}

fn intent_of(payment: &PaymentView) -> String {
    payment.intent_id.clone().expect("an online payment has an intent")
}

/// The buyer clicks on the hosted page.
pub async fn decide(f: &Fixture, payment: &PaymentView, approve: bool) {
    let decision = f
        .payments
        .mock()
        .unwrap()
        .decide(&intent_of(payment), approve)
        .await
        .unwrap();
    assert!(
        matches!(decision, Some(Decision::Decided { delivered: true, .. })),
        "{decision:?}"
    );
}

pub async fn current(f: &Fixture, payment: &PaymentView) -> PaymentView {
    f.payments.payment(payment.id).await.unwrap()
}

/// The events of `kind` in the outbox, oldest first, as their data.
pub async fn events(f: &Fixture, kind: &str) -> Vec<Value> {
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT event_type, payload FROM outbox ORDER BY seq")
        .fetch_all(f.db.reader())
        .await
        .unwrap();
    rows.into_iter()
        .filter(|(t, _)| t == kind)
        .map(|(_, payload)| serde_json::from_str::<Value>(&payload).unwrap()["data"].clone())
        .collect()
}

/// A provider event for `payment`'s intent, signed now.
fn webhook(f: &Fixture, id: &str, kind: &str, payment: &PaymentView, extra: Value) -> (Vec<u8>, String) {
    let mut data = json!({
        "intent_id": intent_of(payment), "amount_minor": payment.amount_minor, "currency": payment.currency,
    });
    for (key, value) in extra.as_object().unwrap() {
        data[key] = value.clone();
    }
    let body = serde_json::to_vec(&json!({
        "id": id, "type": kind, "created": f.clock.now_secs(), "data": data,
    }))
    .unwrap();
    let signature = domain::sign(SECRET, f.clock.now_secs(), &body);
    (body, signature)
}

trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for OffsetClock {
    fn now_secs(&self) -> i64 {
        platform::clock::Clock::now_ms(self) / 1000
    }
}

async fn send(f: &Fixture, (body, signature): &(Vec<u8>, String)) -> Result<WebhookOutcome, ApiError> {
    f.payments.receive_webhook("mock", body, Some(signature)).await
}

fn refund_request(amount: Option<i64>, key: &str) -> RefundRequest {
    RefundRequest {
        amount_minor: amount,
        reason: Some("damaged".to_owned()),
        idempotency_key: key.to_owned(),
        actor: Some("admin-1".to_owned()),
        correlation_id: None,
    }
}

fn order_event(kind: &str, payment: &PaymentView) -> Event {
    let data = json!({"order_id": payment.order_id, "user_id": payment.user_id, "reason": "customer asked"});
    Event::new("orders", kind, payment.order_id, data, None)
}

fn consumer(f: &Fixture) -> IdempotentConsumer {
    let handler = Arc::new(OrderPayments {
        payments: f.payments.clone(),
    });
    IdempotentConsumer::new("payments-orders", f.db.clone(), handler)
}

async fn count(f: &Fixture, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(f.db.reader()).await.unwrap()
}

// ----- the tests ----------------------------------------------------------------------------

async fn an_approved_payment_succeeds_once(f: Fixture) {
    let payment = pay(&f, Method::Card, 12_345).await;
    assert_eq!(payment.status, PaymentStatus::RequiresAction);
    assert_eq!(payment.provider, "mock");
    let url = payment.redirect_url.clone().unwrap();
    assert_eq!(url, format!("http://shop.test/psp/pay/{}", intent_of(&payment)));
    assert!(payment.receipt.is_none());
    assert!(payment.reference.starts_with("PAY-") && payment.reference.len() == 12);

    decide(&f, &payment, true).await;
    let paid = current(&f, &payment).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    assert_eq!(paid.captured_minor, 12_345);
    assert!(paid.redirect_url.is_none(), "nothing left to do at the provider");
    let receipt = paid.receipt.clone().expect("a captured payment has a receipt");
    assert_eq!(
        (receipt.reference.as_str(), receipt.amount_minor),
        (payment.reference.as_str(), 12_345)
    );

    let succeeded = events(&f, payments::SUCCEEDED).await;
    assert_eq!(succeeded.len(), 1);
    assert_eq!(
        succeeded[0],
        json!({
            "payment_id": payment.id, "order_id": payment.order_id, "order_number": payment.order_number,
            "user_id": payment.user_id, "method": "card",
            "amount_minor": 12_345, "currency": "EUR", "reference": payment.reference,
        })
    );
    // Clicking again changes and sends nothing.
    let again = f
        .payments
        .mock()
        .unwrap()
        .decide(&intent_of(&payment), false)
        .await
        .unwrap();
    assert!(matches!(again, Some(Decision::AlreadyDecided(_))));
    assert_eq!(f.payments.mock().unwrap().deliveries(), 1);
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::Succeeded);
    // The event carries the checkout's correlation id.
    let correlation: String = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_type = 'payment.succeeded'")
        .fetch_one(f.db.reader())
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&correlation).unwrap()["correlationid"],
        "corr-1"
    );
}

async fn a_declined_payment_fails(f: Fixture) {
    let payment = pay(&f, Method::Upi, 500).await;
    decide(&f, &payment, false).await;
    let failed = current(&f, &payment).await;
    assert_eq!(failed.status, PaymentStatus::Failed);
    assert_eq!(failed.failure_reason.as_deref(), Some("declined"));
    assert!(failed.receipt.is_none());
    let announced = events(&f, payments::FAILED).await;
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0]["method"], "upi");
    assert_eq!(announced[0]["reason"], "declined");
    assert!(events(&f, payments::SUCCEEDED).await.is_empty());
    // A failed payment is not answered again: paying anew makes a new payment.
    let mut retry = order(Method::Card, 500);
    retry.order_id = payment.order_id;
    let second = f.payments.create_for_order(retry).await.unwrap();
    assert_ne!(second.id, payment.id);
    assert_eq!(second.status, PaymentStatus::RequiresAction);
}

async fn the_same_webhook_five_times_has_one_effect(f: Fixture) {
    let payment = pay(&f, Method::Wallet, 700).await;
    let event = webhook(&f, "evt_same", "payment_intent.succeeded", &payment, json!({}));
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(send(&f, &event).await.unwrap());
    }
    assert_eq!(outcomes[0], WebhookOutcome::Applied);
    assert!(
        outcomes[1..].iter().all(|o| *o == WebhookOutcome::Duplicate),
        "{outcomes:?}"
    );
    // Five more at once.
    let concurrent = futures_join(
        (0..5)
            .map(|i| {
                let payments = f.payments.clone();
                let event = webhook(
                    &f,
                    "evt_burst",
                    "payment_intent.payment_failed",
                    &payment,
                    json!({"n": i}),
                );
                tokio::spawn(async move {
                    payments
                        .receive_webhook("mock", &event.0, Some(&event.1))
                        .await
                        .unwrap()
                })
            })
            .collect(),
    )
    .await;
    assert_eq!(
        concurrent.iter().filter(|o| **o != WebhookOutcome::Duplicate).count(),
        1,
        "{concurrent:?}"
    );
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    assert!(
        events(&f, payments::FAILED).await.is_empty(),
        "the failure lost to the success"
    );
    assert_eq!(count(&f, "SELECT COUNT(*) FROM webhook_receipts").await, 2);
    let receipt = store::receipt(f.db.reader(), "evt_same").await.unwrap().unwrap();
    assert_eq!(receipt.outcome, "applied");
    assert_eq!(receipt.payment_id.as_deref(), Some(payment.id.to_string().as_str()));
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::Succeeded);
}

async fn futures_join<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

async fn a_refund_webhook_before_the_success_ends_captured_and_refunded(f: Fixture) {
    let payment = pay(&f, Method::Card, 900).await;
    let refunded = webhook(
        &f,
        "evt_refund",
        "charge.refunded",
        &payment,
        json!({"refund_id": "re_early", "amount_refunded_minor": 900}),
    );
    assert_eq!(send(&f, &refunded).await.unwrap(), WebhookOutcome::Applied);
    let after = current(&f, &payment).await;
    assert_eq!(after.status, PaymentStatus::Refunded);
    assert_eq!(
        (after.captured_minor, after.refunded_minor, after.refundable_minor),
        (900, 900, 0)
    );
    assert!(after.receipt.is_some(), "a refund implies the capture");

    let late_success = webhook(&f, "evt_success", "payment_intent.succeeded", &payment, json!({}));
    assert_eq!(send(&f, &late_success).await.unwrap(), WebhookOutcome::NoChange);
    let failure = webhook(&f, "evt_failure", "payment_intent.payment_failed", &payment, json!({}));
    assert_eq!(send(&f, &failure).await.unwrap(), WebhookOutcome::NoChange);
    let end = current(&f, &payment).await;
    assert_eq!(end.status, PaymentStatus::Refunded);
    assert_eq!((end.captured_minor, end.refunded_minor), (900, 900));
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    let refunds = events(&f, payments::REFUND_SUCCEEDED).await;
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["fully_refunded"], true);
    assert_eq!(refunds[0]["refunded_total_minor"], 900);
    let recorded = f.payments.refunds(payment.id).await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].provider_refund_id.as_deref(), Some("re_early"));
    // The same refund reported again (cumulative total unchanged) adds nothing.
    let again = webhook(
        &f,
        "evt_refund_again",
        "charge.refunded",
        &payment,
        json!({"refund_id": "re_early", "amount_refunded_minor": 900}),
    );
    assert_eq!(send(&f, &again).await.unwrap(), WebhookOutcome::NoChange);
    assert_eq!(f.payments.refunds(payment.id).await.unwrap().len(), 1);
}

async fn a_failure_after_a_success_is_ignored_and_a_success_after_a_failure_wins(f: Fixture) {
    let first = pay(&f, Method::Card, 300).await;
    let success = webhook(&f, "evt_1", "payment_intent.succeeded", &first, json!({}));
    let failure = webhook(
        &f,
        "evt_2",
        "payment_intent.payment_failed",
        &first,
        json!({"failure_reason": "x"}),
    );
    assert_eq!(send(&f, &success).await.unwrap(), WebhookOutcome::Applied);
    assert_eq!(send(&f, &failure).await.unwrap(), WebhookOutcome::NoChange);
    assert_eq!(current(&f, &first).await.status, PaymentStatus::Succeeded);

    let second = pay(&f, Method::Card, 400).await;
    let failure = webhook(
        &f,
        "evt_3",
        "payment_intent.payment_failed",
        &second,
        json!({"failure_reason": "insufficient funds"}),
    );
    let success = webhook(&f, "evt_4", "payment_intent.succeeded", &second, json!({}));
    assert_eq!(send(&f, &failure).await.unwrap(), WebhookOutcome::Applied);
    assert_eq!(
        current(&f, &second).await.failure_reason.as_deref(),
        Some("insufficient funds")
    );
    assert_eq!(send(&f, &success).await.unwrap(), WebhookOutcome::Applied);
    let won = current(&f, &second).await;
    assert_eq!(won.status, PaymentStatus::Succeeded);
    assert_eq!(won.captured_minor, 400);
    assert!(won.failure_reason.is_none());
    // Both orders were paid; one failure was announced and then overtaken by the success.
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 2);
    assert_eq!(events(&f, payments::FAILED).await.len(), 1);
}

/// 20 concurrent refunds of 30 on a capture of 500: exactly 16 go through, and what is
/// refunded never exceeds the capture, also while they run.
async fn concurrent_refunds_never_exceed_the_capture(f: Fixture) {
    let payment = pay(&f, Method::Card, 500).await;
    decide(&f, &payment, true).await;
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let db = f.db.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut samples = 0;
            while !done.load(Ordering::SeqCst) {
                let over: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM payments WHERE refunded_minor > captured_minor")
                        .fetch_one(db.reader())
                        .await
                        .unwrap();
                assert_eq!(over, 0, "refunded more than captured");
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let tasks = (0..20)
        .map(|i| {
            let payments = f.payments.clone();
            let id = payment.id;
            tokio::spawn(async move {
                payments
                    .refund(id, refund_request(Some(30), &format!("refund-{i}")))
                    .await
            })
        })
        .collect();
    let results = futures_join(tasks).await;
    done.store(true, Ordering::SeqCst);
    assert!(watcher.await.unwrap() > 0);
    let succeeded = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(succeeded, 16, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(refused, ApiError::Unprocessable(_)), "{refused:?}");
    }
    let stored: (i64, i64, String) =
        sqlx::query_as("SELECT refunded_minor, refund_pending_minor, status FROM payments WHERE id = $1")
            .bind(payment.id.to_string())
            .fetch_one(f.db.reader())
            .await
            .unwrap();
    assert_eq!(stored, (480, 0, "partially_refunded".to_owned()));
    assert_eq!(events(&f, payments::REFUND_SUCCEEDED).await.len(), 16);
    // The provider's charge.refunded webhooks for those refunds add nothing.
    let settled = platform::testing::eventually(Duration::from_secs(10), || async {
        let n = count(
            &f,
            "SELECT COUNT(*) FROM webhook_receipts WHERE event_type = 'charge.refunded'",
        )
        .await;
        (n == 16).then_some(())
    })
    .await;
    assert!(settled.is_some(), "the provider reported every refund");
    assert_eq!(
        count(
            &f,
            "SELECT COUNT(*) FROM webhook_receipts WHERE event_type = 'charge.refunded' AND outcome = 'no_change'"
        )
        .await,
        16
    );
    let view = current(&f, &payment).await;
    assert_eq!((view.refunded_minor, view.refundable_minor), (480, 20));
    assert_eq!(f.payments.refunds(payment.id).await.unwrap().len(), 16);
    let intent = f
        .payments
        .mock()
        .unwrap()
        .intent(&intent_of(&payment))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(intent.refunded_minor, 480, "the provider refunded exactly the same");
}

async fn a_refund_key_replays_the_first_refund_and_refuses_another_amount(f: Fixture) {
    let payment = pay(&f, Method::NetBanking, 1_000).await;
    decide(&f, &payment, true).await;
    let first = f
        .payments
        .refund(payment.id, refund_request(Some(100), "key-1"))
        .await
        .unwrap();
    assert_eq!(first.status, RefundStatus::Succeeded);
    assert!(first
        .provider_refund_id
        .as_deref()
        .is_some_and(|id| id.starts_with("re_")));
    let replay = f
        .payments
        .refund(payment.id, refund_request(Some(100), "key-1"))
        .await
        .unwrap();
    assert_eq!(replay, first);
    let other_amount = f.payments.refund(payment.id, refund_request(Some(50), "key-1")).await;
    assert!(
        matches!(other_amount, Err(ApiError::Unprocessable(_))),
        "{other_amount:?}"
    );
    let view = current(&f, &payment).await;
    assert_eq!(
        (view.refunded_minor, view.status),
        (100, PaymentStatus::PartiallyRefunded)
    );
    assert_eq!(events(&f, payments::REFUND_SUCCEEDED).await.len(), 1);

    let other = pay(&f, Method::Card, 1_000).await;
    decide(&f, &other, true).await;
    let other_payment = f.payments.refund(other.id, refund_request(Some(100), "key-1")).await;
    assert!(matches!(other_payment, Err(ApiError::Unprocessable(_))));
    // Bad requests change nothing.
    for (amount, key) in [(Some(0), "k"), (Some(-5), "k"), (Some(1_001), "k2"), (Some(1), "")] {
        assert!(
            f.payments
                .refund(payment.id, refund_request(amount, key))
                .await
                .is_err(),
            "{amount:?} {key:?}"
        );
    }
    assert!(matches!(
        f.payments.refund(Uuid::now_v7(), refund_request(Some(1), "k3")).await,
        Err(ApiError::NotFound(_))
    ));
    // The rest, by leaving the amount out.
    let rest = f
        .payments
        .refund_order(payment.order_id, refund_request(None, "key-rest"))
        .await
        .unwrap();
    assert_eq!(rest.amount_minor, 900);
    let view = current(&f, &payment).await;
    assert_eq!((view.refunded_minor, view.status), (1_000, PaymentStatus::Refunded));
    let fully = events(&f, payments::REFUND_SUCCEEDED).await;
    assert_eq!(fully[1]["fully_refunded"], true);
    assert!(matches!(
        f.payments.refund(payment.id, refund_request(Some(1), "key-more")).await,
        Err(ApiError::Unprocessable(_))
    ));
    // An uncaptured payment has nothing to refund.
    let open = pay(&f, Method::Card, 10).await;
    assert!(matches!(
        f.payments.refund(open.id, refund_request(Some(1), "key-open")).await,
        Err(ApiError::Conflict(_))
    ));
}

fn captured_row(order_id: &str, reference: &str) -> PaymentRow {
    PaymentRow {
        id: Uuid::now_v7().to_string(),
        order_id: order_id.to_owned(),
        order_number: "ORD-1".to_owned(),
        user_id: Uuid::now_v7().to_string(),
        method: "card".to_owned(),
        status: "succeeded".to_owned(),
        amount_minor: 100,
        currency: "EUR".to_owned(),
        provider: "mock".to_owned(),
        intent_id: None,
        redirect_url: None,
        reference: reference.to_owned(),
        captured_minor: 100,
        refunded_minor: 0,
        refund_pending_minor: 0,
        captured_at: Some(1),
        failure_reason: None,
        auto_refund_reason: None,
        correlation_id: None,
        version: 1,
        created_at: 1,
        updated_at: 1,
    }
}

async fn the_database_refuses_a_second_captured_payment_for_an_order(f: Fixture) {
    let order_id = Uuid::now_v7().to_string();
    let mut tx = f.db.begin().await.unwrap();
    store::insert_payment(&mut tx, &captured_row(&order_id, "PAY-AAAAAAAA"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = f.db.begin().await.unwrap();
    let err = store::insert_payment(&mut tx, &captured_row(&order_id, "PAY-BBBBBBBB"))
        .await
        .unwrap_err();
    assert!(is_unique_violation(&err), "{err:?}");
    tx.rollback().await.unwrap();
    // An uncaptured one beside it is fine; so is a captured one of another order.
    let mut uncaptured = captured_row(&order_id, "PAY-CCCCCCCC");
    (uncaptured.captured_at, uncaptured.status) = (None, "failed".to_owned());
    let mut tx = f.db.begin().await.unwrap();
    store::insert_payment(&mut tx, &uncaptured).await.unwrap();
    store::insert_payment(&mut tx, &captured_row(&Uuid::now_v7().to_string(), "PAY-DDDDDDDD"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Refunding more than was captured is refused by the CHECK as well.
    let over = sqlx::query("UPDATE payments SET refunded_minor = captured_minor + 1 WHERE reference = 'PAY-AAAAAAAA'")
        .execute(f.db.writer())
        .await;
    assert!(over.is_err());
}

async fn a_second_captured_payment_of_an_order_is_refunded_automatically(f: Fixture) {
    // The provider first reported the payment failed; the buyer paid again with a second one.
    let first = pay(&f, Method::Card, 250).await;
    let failure = webhook(&f, "evt_fail", "payment_intent.payment_failed", &first, json!({}));
    send(&f, &failure).await.unwrap();
    let mut retry = order(Method::Upi, 250);
    (retry.order_id, retry.user_id) = (first.order_id, first.user_id);
    let second = f.payments.create_for_order(retry).await.unwrap();
    decide(&f, &second, true).await;
    // Then the first one goes through after all: money moved twice for one order.
    decide(&f, &first, true).await;
    let duplicate = current(&f, &first).await;
    assert_eq!(duplicate.status, PaymentStatus::Refunded);
    assert_eq!((duplicate.captured_minor, duplicate.refunded_minor), (250, 250));
    assert!(duplicate.receipt.is_none(), "it does not count for the order");
    let kept = current(&f, &second).await;
    assert_eq!(kept.status, PaymentStatus::Succeeded);
    let caller = CurrentUser {
        id: first.user_id,
        role: Role::Customer,
        session_id: "s".into(),
    };
    assert_eq!(
        f.payments.payment_for_order(first.order_id, &caller).await.unwrap().id,
        second.id
    );
    // The order heard of one payment and no refund.
    let succeeded = events(&f, payments::SUCCEEDED).await;
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0]["payment_id"], json!(second.id));
    assert!(events(&f, payments::REFUND_SUCCEEDED).await.is_empty());
    let refunds = f.payments.refunds(first.id).await.unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].actor.as_deref(), Some("system"));
}

async fn a_provider_that_is_down_answers_503_leaves_nothing_and_opens_the_breaker(f: Fixture) {
    let mock = f.payments.mock().unwrap();
    f.payments.set_provider_available(false);
    for attempt in 1..=3 {
        let err = f.payments.create_for_order(order(Method::Card, 100)).await.unwrap_err();
        let ApiError::Unavailable { retry_after_secs, .. } = err else {
            panic!("expected 503, got {err:?}");
        };
        assert!(retry_after_secs >= 1);
        assert_eq!(mock.calls(), attempt, "the provider was asked");
    }
    assert_eq!(
        count(&f, "SELECT COUNT(*) FROM payments").await,
        0,
        "nothing is left waiting"
    );
    assert!(f.payments.provider_breaker().is_open());
    // Open: failing fast, without asking the provider, even once it is back.
    f.payments.set_provider_available(true);
    let err = f.payments.create_for_order(order(Method::Card, 100)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ApiError::Unavailable {
                retry_after_secs: 60,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(mock.calls(), 3);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM payments").await, 0);
    // Cash on delivery needs no provider.
    let cod = pay(&f, Method::Cod, 100).await;
    assert_eq!(cod.status, PaymentStatus::AwaitingDelivery);
}

/// A provider that never answers.
struct Hanging;

#[async_trait]
impl Provider for Hanging {
    fn name(&self) -> &'static str {
        "mock"
    }
    async fn create_intent(&self, _request: IntentRequest) -> Result<Intent, ProviderError> {
        std::future::pending().await
    }
    async fn refund(&self, _intent: &str, _amount: i64, _key: &str) -> Result<ProviderRefund, ProviderError> {
        std::future::pending().await
    }
    async fn cancel_intent(&self, _intent: &str) -> Result<(), ProviderError> {
        std::future::pending().await
    }
}

async fn a_provider_that_hangs_times_out(f: Fixture) {
    let settings = Settings {
        provider_timeout: Duration::from_millis(100),
        ..settings()
    };
    let payments = Payments::with_provider(f.db.clone(), f.clock.clone(), settings, Arc::new(Hanging));
    let err = payments.create_for_order(order(Method::Card, 100)).await.unwrap_err();
    assert!(matches!(err, ApiError::Unavailable { .. }), "{err:?}");
    assert_eq!(count(&f, "SELECT COUNT(*) FROM payments").await, 0);
    // A refund that times out gives its amount back.
    let mut row = captured_row(&Uuid::now_v7().to_string(), "PAY-HANG0001");
    row.intent_id = Some("pi_hang".to_owned());
    let mut tx = f.db.begin().await.unwrap();
    store::insert_payment(&mut tx, &row).await.unwrap();
    tx.commit().await.unwrap();
    let id = Uuid::parse_str(&row.id).unwrap();
    let err = payments
        .refund(id, refund_request(Some(40), "hang-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unavailable { .. }), "{err:?}");
    let after = payments.payment(id).await.unwrap();
    assert_eq!(
        (after.refunded_minor, after.refund_pending_minor, after.refundable_minor),
        (0, 0, 100)
    );
    assert!(payments.refunds(id).await.unwrap().is_empty());
}

async fn creating_twice_for_an_order_answers_the_same_payment(f: Fixture) {
    let request = order(Method::Card, 800);
    let tasks = (0..5)
        .map(|_| {
            let payments = f.payments.clone();
            let request = request.clone();
            tokio::spawn(async move { payments.create_for_order(request).await })
        })
        .collect();
    let created = futures_join(tasks).await;
    let ids: std::collections::HashSet<Uuid> = created.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids.len(), 1, "one payment per order");
    assert_eq!(count(&f, "SELECT COUNT(*) FROM payments").await, 1);
    let again = f.payments.create_for_order(request.clone()).await.unwrap();
    assert!(ids.contains(&again.id));
    // Bad input is refused.
    let mut bad = request;
    (bad.amount_minor, bad.currency, bad.order_number) = (0, "eur".to_owned(), " ".to_owned());
    let Err(ApiError::Validation(errors)) = f.payments.create_for_order(bad).await else {
        panic!("expected a validation error");
    };
    assert_eq!(errors.len(), 3);
}

async fn cash_on_delivery_is_captured_when_the_order_is_delivered(f: Fixture) {
    let payment = pay(&f, Method::Cod, 4_200).await;
    assert_eq!(payment.status, PaymentStatus::AwaitingDelivery);
    assert_eq!(payment.provider, "cod");
    assert!(payment.redirect_url.is_none() && payment.intent_id.is_none());
    assert_eq!(f.payments.mock().unwrap().calls(), 0, "no provider call");

    let consumer = consumer(&f);
    let delivered = order_event("order.delivered", &payment);
    assert!(consumer.process(&delivered).await.unwrap());
    assert!(!consumer.process(&delivered).await.unwrap(), "a redelivery is skipped");
    // Another delivered event for the same order (a replay from elsewhere) changes nothing.
    consumer
        .process(&order_event("order.delivered", &payment))
        .await
        .unwrap();
    let collected = current(&f, &payment).await;
    assert_eq!(collected.status, PaymentStatus::Succeeded);
    assert_eq!(collected.captured_minor, 4_200);
    assert_eq!(collected.receipt.unwrap().method, Method::Cod);
    let succeeded = events(&f, payments::SUCCEEDED).await;
    assert_eq!(succeeded.len(), 1);
    assert_eq!(succeeded[0]["method"], "cod");
    // Online payments are not touched by a delivery.
    let online = pay(&f, Method::Card, 10).await;
    consumer
        .process(&order_event("order.delivered", &online))
        .await
        .unwrap();
    assert_eq!(current(&f, &online).await.status, PaymentStatus::RequiresAction);
}

async fn a_cancelled_order_gets_its_captured_payment_refunded_in_full(f: Fixture) {
    let payment = pay(&f, Method::Card, 1_000).await;
    decide(&f, &payment, true).await;
    f.payments
        .refund(payment.id, refund_request(Some(300), "partial"))
        .await
        .unwrap();
    let consumer = consumer(&f);
    let cancelled = order_event("order.cancelled", &payment);
    consumer.process(&cancelled).await.unwrap();
    consumer
        .process(&order_event("order.cancelled", &payment))
        .await
        .unwrap();
    let after = current(&f, &payment).await;
    assert_eq!(after.status, PaymentStatus::Refunded);
    assert_eq!((after.refunded_minor, after.refundable_minor), (1_000, 0));
    let refunds = f.payments.refunds(payment.id).await.unwrap();
    assert_eq!(
        refunds.iter().map(|r| r.amount_minor).collect::<Vec<_>>(),
        vec![300, 700]
    );
    assert_eq!(refunds[1].actor.as_deref(), Some("system"));
    let announced = events(&f, payments::REFUND_SUCCEEDED).await;
    assert_eq!(announced.len(), 2);
    assert_eq!(announced[1]["fully_refunded"], true);
    assert_eq!(announced[1]["refunded_total_minor"], 1_000);
    let key: Option<String> = sqlx::query_scalar("SELECT idempotency_key FROM refunds WHERE amount_minor = 700")
        .fetch_one(f.db.reader())
        .await
        .unwrap();
    assert_eq!(key, Some(format!("cancel:{}", payment.order_id)));
}

async fn a_cancelled_order_cancels_an_open_payment_and_its_intent(f: Fixture) {
    let online = pay(&f, Method::Card, 100).await;
    let cod = pay(&f, Method::Cod, 100).await;
    let consumer = consumer(&f);
    consumer
        .process(&order_event("order.cancelled", &online))
        .await
        .unwrap();
    consumer.process(&order_event("order.cancelled", &cod)).await.unwrap();
    assert_eq!(current(&f, &online).await.status, PaymentStatus::Cancelled);
    assert_eq!(current(&f, &cod).await.status, PaymentStatus::Cancelled);
    let mock = f.payments.mock().unwrap();
    assert_eq!(
        mock.intent(&intent_of(&online)).await.unwrap().unwrap().status,
        "cancelled"
    );
    // The buyer can no longer pay on the hosted page.
    let click = mock.decide(&intent_of(&online), true).await.unwrap();
    assert!(matches!(click, Some(Decision::AlreadyDecided(_))));
    assert!(events(&f, payments::SUCCEEDED).await.is_empty());
    // A cancelled order's payment is not answered again.
    assert!(matches!(
        f.payments.refund(online.id, refund_request(None, "nothing")).await,
        Err(ApiError::Conflict(_))
    ));
}

async fn a_success_after_the_order_was_cancelled_is_refunded_automatically(f: Fixture) {
    let payment = pay(&f, Method::Card, 650).await;
    // The buyer approves at the provider; its webhook is still on the way when the order is cancelled.
    let intent = intent_of(&payment);
    store::decide_intent(f.db.writer(), &intent, "succeeded", 1)
        .await
        .unwrap()
        .unwrap();
    consumer(&f)
        .process(&order_event("order.cancelled", &payment))
        .await
        .unwrap();
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::Cancelled);
    let late = webhook(&f, "evt_late", "payment_intent.succeeded", &payment, json!({}));
    assert_eq!(send(&f, &late).await.unwrap(), WebhookOutcome::Applied);
    let after = current(&f, &payment).await;
    assert_eq!(after.status, PaymentStatus::Refunded);
    assert_eq!((after.captured_minor, after.refunded_minor), (650, 650));
    let refunds = f.payments.refunds(payment.id).await.unwrap();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].reason.as_deref(), Some("order cancelled"));
    // The cancelled order is told of the refund, not of a payment.
    assert!(events(&f, payments::SUCCEEDED).await.is_empty());
    let announced = events(&f, payments::REFUND_SUCCEEDED).await;
    assert_eq!(announced.len(), 1);
    assert_eq!(announced[0]["fully_refunded"], true);
    let provider_side = f.payments.mock().unwrap().intent(&intent).await.unwrap().unwrap();
    assert_eq!(provider_side.refunded_minor, 650);
    assert_eq!(f.payments.sweep().await.unwrap(), 0, "nothing is owed any more");
}

async fn automatic_mode_approves_and_duplicate_webhooks_have_one_effect(f: Fixture) {
    let auto = Settings {
        mock_auto: Some(AutoSettings {
            duplicate_webhooks: true,
            ..AutoSettings::default()
        }),
        ..settings()
    };
    let f = reopen(&f, auto).await;
    let payment = pay(&f, Method::Card, 990).await;
    let mock = f.payments.mock().unwrap();
    let both = platform::testing::eventually(Duration::from_secs(10), || async {
        (mock.deliveries() == 2).then_some(())
    })
    .await;
    assert!(both.is_some(), "both copies were delivered");
    let paid = current(&f, &payment).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded);
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    assert_eq!(count(&f, "SELECT COUNT(*) FROM webhook_receipts").await, 1);
}

async fn automatic_mode_declines_and_delivers_late(f: Fixture) {
    let auto = Settings {
        mock_auto: Some(AutoSettings {
            approve_ratio: 0.0,
            late_ms: 50,
            delay: Duration::from_millis(10),
            ..AutoSettings::default()
        }),
        ..settings()
    };
    let f = reopen(&f, auto).await;
    let payment = pay(&f, Method::Wallet, 10).await;
    let failed = platform::testing::eventually(Duration::from_secs(10), || async {
        let status = f.payments.payment(payment.id).await.unwrap().status;
        (status == PaymentStatus::Failed).then_some(())
    })
    .await;
    assert!(failed.is_some(), "the automatic decline arrived");
    assert_eq!(events(&f, payments::FAILED).await.len(), 1);
}

async fn notified_at(f: &Fixture, intent: &str) -> Option<i64> {
    let mock = f.payments.mock().unwrap();
    mock.intent(intent)
        .await
        .unwrap()
        .expect("the intent exists")
        .notified_at
}

/// The merchant behind a switch: while it is closed every delivery is refused, as when the
/// merchant is down.
struct Gate {
    merchant: Arc<Payments>,
    open: AtomicBool,
}

#[async_trait]
impl WebhookSink for Gate {
    async fn deliver(&self, raw_body: &[u8], signature: &str) -> Result<(), String> {
        if !self.open.load(Ordering::SeqCst) {
            return Err("the merchant is unavailable".to_owned());
        }
        WebhookSink::deliver(&*self.merchant, raw_body, signature).await
    }
}

async fn an_overdue_automatic_decision_is_made_and_delivered_by_the_catch_up_pass(f: Fixture) {
    // The decision is due in an hour of the task's own time: as good as lost with a killed
    // process once the (test's) clock has moved past it.
    let auto = Settings {
        mock_auto: Some(AutoSettings {
            delay: Duration::from_secs(3_600),
            ..AutoSettings::default()
        }),
        ..settings()
    };
    let f = reopen(&f, auto).await;
    let payment = pay(&f, Method::Card, 1_200).await;
    let intent = intent_of(&payment);
    let mock = f.payments.mock().unwrap();
    assert_eq!(mock.catch_up().await.unwrap(), 0, "not due yet");
    f.clock.advance(Duration::from_secs(3_600));
    assert_eq!(
        mock.catch_up().await.unwrap(),
        0,
        "just due: its task may merely be late"
    );
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::RequiresAction);
    f.clock.advance(Duration::from_secs(3));
    // Two passes at once (two processes, or a pass and a late task) make one decision.
    let (first, second) = tokio::join!(mock.catch_up(), mock.catch_up());
    assert_eq!(first.unwrap() + second.unwrap(), 1);
    assert_eq!(mock.deliveries(), 1);
    let paid = current(&f, &payment).await;
    assert_eq!((paid.status, paid.captured_minor), (PaymentStatus::Succeeded, 1_200));
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    let decided = mock.intent(&intent).await.unwrap().unwrap();
    assert_eq!(decided.status, "succeeded");
    assert!(decided.notified_at.is_some(), "the accepted delivery is recorded");
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(mock.catch_up().await.unwrap(), 0, "nothing is left to do");
    assert_eq!(mock.deliveries(), 1);
}

async fn a_refused_decision_webhook_is_delivered_again_until_the_merchant_accepts_it(f: Fixture) {
    let payment = pay(&f, Method::Card, 2_500).await;
    let intent = intent_of(&payment);
    // The provider again (its books are in the database), now with the merchant behind a gate.
    let gate = Arc::new(Gate {
        merchant: f.payments.clone(),
        open: AtomicBool::new(false),
    });
    let sink: Arc<dyn WebhookSink> = gate.clone();
    let provider = MockProvider::new(
        f.db.clone(),
        f.clock.clone(),
        "http://shop.test",
        SECRET,
        None,
        Arc::downgrade(&sink),
    );
    let decision = provider.decide(&intent, true).await.unwrap();
    assert!(
        matches!(decision, Some(Decision::Decided { delivered: false, .. })),
        "{decision:?}"
    );
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::RequiresAction);
    assert_eq!(notified_at(&f, &intent).await, None);

    gate.open.store(true, Ordering::SeqCst);
    assert_eq!(
        provider.catch_up().await.unwrap(),
        0,
        "a delivery may still be under way so soon after the decision"
    );
    assert_eq!(provider.deliveries(), 0);
    gate.open.store(false, Ordering::SeqCst);
    f.clock.advance(Duration::from_secs(11));
    assert_eq!(provider.catch_up().await.unwrap(), 0, "the merchant still refuses");
    assert_eq!(notified_at(&f, &intent).await, None);

    gate.open.store(true, Ordering::SeqCst);
    assert_eq!(provider.catch_up().await.unwrap(), 1);
    assert_eq!(provider.deliveries(), 1);
    assert!(notified_at(&f, &intent).await.is_some());
    let paid = current(&f, &payment).await;
    assert_eq!((paid.status, paid.captured_minor), (PaymentStatus::Succeeded, 2_500));
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    f.clock.advance(Duration::from_secs(60));
    assert_eq!(
        provider.catch_up().await.unwrap(),
        0,
        "an accepted decision is not sent again"
    );
    assert_eq!(provider.deliveries(), 1);
}

async fn a_redelivered_success_for_a_captured_payment_changes_nothing(f: Fixture) {
    let payment = pay(&f, Method::Card, 800).await;
    decide(&f, &payment, true).await;
    let intent = intent_of(&payment);
    assert!(
        notified_at(&f, &intent).await.is_some(),
        "the accepted delivery is recorded"
    );
    let captured = current(&f, &payment).await;
    assert_eq!(captured.status, PaymentStatus::Succeeded);
    // Neither an intent the buyer has not decided yet (manual mode) nor a cancelled one is
    // the catch-up pass's business.
    let open = pay(&f, Method::Card, 300).await;
    let cancelled = pay(&f, Method::Card, 400).await;
    let mock = f.payments.mock().unwrap();
    mock.cancel_intent(&intent_of(&cancelled)).await.unwrap();
    f.clock.advance(Duration::from_secs(11));
    assert_eq!(mock.catch_up().await.unwrap(), 0);
    assert_eq!(mock.deliveries(), 1);

    // The process stopped after the merchant accepted the webhook, before the provider
    // recorded it: the decision is delivered again, as a new event.
    sqlx::query("UPDATE mock_intents SET notified_at = NULL WHERE id = $1")
        .bind(&intent)
        .execute(f.db.writer())
        .await
        .unwrap();
    assert_eq!(mock.catch_up().await.unwrap(), 1);
    assert_eq!(mock.deliveries(), 2);
    assert!(notified_at(&f, &intent).await.is_some());
    assert_eq!(current(&f, &payment).await, captured, "captured once; nothing changed");
    assert_eq!(events(&f, payments::SUCCEEDED).await.len(), 1);
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM webhook_receipts ORDER BY received_at")
        .fetch_all(f.db.reader())
        .await
        .unwrap();
    assert_eq!(outcomes, vec!["applied", "no_change"]);
    assert_eq!(current(&f, &open).await.status, PaymentStatus::RequiresAction);
    assert_eq!(
        mock.intent(&intent_of(&open)).await.unwrap().unwrap().status,
        "requires_action"
    );
    assert_eq!(mock.catch_up().await.unwrap(), 0);
    assert_eq!(mock.deliveries(), 2);
}

async fn bad_signatures_store_nothing_and_unknown_intents_are_ignored(f: Fixture) {
    let payment = pay(&f, Method::Card, 100).await;
    let (body, signature) = webhook(&f, "evt_x", "payment_intent.succeeded", &payment, json!({}));
    let mut forged = body.clone();
    let last = forged.len() - 2;
    forged[last] = b' ';
    let refused = [
        f.payments.receive_webhook("mock", &forged, Some(&signature)).await,
        f.payments.receive_webhook("mock", &body, None).await,
        f.payments.receive_webhook("mock", &body, Some("t=1,v1=00")).await,
        f.payments
            .receive_webhook("mock", &body, Some(&domain::sign("wrong", f.clock.now_secs(), &body)))
            .await,
        f.payments
            .receive_webhook(
                "mock",
                &body,
                Some(&domain::sign(SECRET, f.clock.now_secs() - 301, &body)),
            )
            .await,
    ];
    assert!(matches!(refused[0], Err(ApiError::Unauthorized(_))), "{:?}", refused[0]);
    assert!(matches!(refused[1], Err(ApiError::BadRequest(_))), "{:?}", refused[1]);
    assert!(matches!(refused[2], Err(ApiError::BadRequest(_))), "{:?}", refused[2]);
    assert!(matches!(refused[3], Err(ApiError::Unauthorized(_))), "{:?}", refused[3]);
    assert!(matches!(refused[4], Err(ApiError::Unauthorized(_))), "{:?}", refused[4]);
    assert!(matches!(
        f.payments.receive_webhook("stripe", &body, Some(&signature)).await,
        Err(ApiError::NotFound(_))
    ));
    let not_an_event = b"{\"hello\":1}".to_vec();
    let signed = domain::sign(SECRET, f.clock.now_secs(), &not_an_event);
    assert!(matches!(
        f.payments.receive_webhook("mock", &not_an_event, Some(&signed)).await,
        Err(ApiError::BadRequest(_))
    ));
    assert_eq!(count(&f, "SELECT COUNT(*) FROM webhook_receipts").await, 0);
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::RequiresAction);

    // A webhook for an intent we do not know is kept and acknowledged.
    let mut stranger = payment.clone();
    stranger.intent_id = Some("pi_unknown".to_owned());
    let unknown = webhook(&f, "evt_unknown", "payment_intent.succeeded", &stranger, json!({}));
    assert_eq!(send(&f, &unknown).await.unwrap(), WebhookOutcome::Ignored);
    assert_eq!(send(&f, &unknown).await.unwrap(), WebhookOutcome::Duplicate);
    assert_eq!(
        store::receipt(f.db.reader(), "evt_unknown")
            .await
            .unwrap()
            .unwrap()
            .outcome,
        "ignored"
    );
    // So is an event type we do not handle.
    let other = webhook(&f, "evt_other", "payment_intent.created", &payment, json!({}));
    assert_eq!(send(&f, &other).await.unwrap(), WebhookOutcome::Ignored);
    // The time is moved: a once-fresh signature is now stale.
    let fresh = webhook(&f, "evt_y", "payment_intent.succeeded", &payment, json!({}));
    f.clock.advance(Duration::from_secs(301));
    assert!(matches!(send(&f, &fresh).await, Err(ApiError::Unauthorized(_))));
    assert_eq!(current(&f, &payment).await.status, PaymentStatus::RequiresAction);
}

async fn only_the_owner_or_an_admin_sees_an_orders_payment(f: Fixture) {
    let payment = pay(&f, Method::Card, 100).await;
    let user = |id, role| CurrentUser {
        id,
        role,
        session_id: "s".into(),
    };
    let owner = user(payment.user_id, Role::Customer);
    assert_eq!(
        f.payments.payment_for_order(payment.order_id, &owner).await.unwrap().id,
        payment.id
    );
    let admin = user(Uuid::now_v7(), Role::Admin);
    assert_eq!(
        f.payments.payment_for_order(payment.order_id, &admin).await.unwrap().id,
        payment.id
    );
    let stranger = user(Uuid::now_v7(), Role::Customer);
    assert!(matches!(
        f.payments.payment_for_order(payment.order_id, &stranger).await,
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        f.payments.payment_for_order(Uuid::now_v7(), &admin).await,
        Err(ApiError::NotFound(_))
    ));
}

async fn admin_lists_are_filtered_and_paginated(f: Fixture) {
    let mut created = Vec::new();
    for i in 0..5 {
        let method = if i % 2 == 0 { Method::Cod } else { Method::Card };
        created.push(pay(&f, method, 100 + i).await);
    }
    let page = |limit, cursor| {
        PageParams {
            limit: Some(limit),
            cursor,
        }
        .parse()
        .unwrap()
    };
    let first = f.payments.list(&Default::default(), &page(2, None)).await.unwrap();
    assert_eq!(
        first.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![created[4].id, created[3].id]
    );
    let second = f
        .payments
        .list(&Default::default(), &page(2, first.next_cursor.clone()))
        .await
        .unwrap();
    assert_eq!(
        second.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![created[2].id, created[1].id]
    );
    let third = f
        .payments
        .list(&Default::default(), &page(2, second.next_cursor.clone()))
        .await
        .unwrap();
    assert_eq!(third.items.len(), 1);
    assert!(third.next_cursor.is_none());

    let awaiting = payments::ListFilter {
        status: Some(PaymentStatus::AwaitingDelivery),
        ..Default::default()
    };
    assert_eq!(
        f.payments.list(&awaiting, &page(10, None)).await.unwrap().items.len(),
        3
    );
    let by_user = payments::ListFilter {
        user_id: Some(created[1].user_id),
        ..Default::default()
    };
    let mine = f.payments.list(&by_user, &page(10, None)).await.unwrap();
    assert_eq!(mine.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![created[1].id]);
    let by_order = payments::ListFilter {
        order_id: Some(created[2].order_id),
        status: Some(PaymentStatus::Failed),
        ..Default::default()
    };
    assert!(f
        .payments
        .list(&by_order, &page(10, None))
        .await
        .unwrap()
        .items
        .is_empty());
}
