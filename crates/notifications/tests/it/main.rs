//! The notifications service against a real database and a real SMTP listener. The store and
//! delivery tests run on SQLite and, when `MERCATO_TEST_POSTGRES_URL` is set, on PostgreSQL;
//! `bus` runs the real retry and dead-letter path, `http` drives the router.

mod bus;
mod http;
mod smtp;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::join_all;
use mail_parser::{MessageParser, MimeHeaders};
use notifications::store::{self, Claim, LogFilter, NewAttempt, Outcome};
use notifications::templates::sample;
use notifications::{
    Contact, Directory, Mailer, NotificationEvents, NotificationKind, Notifications, Settings, SmtpMailer, EVENT_TYPES,
};
use platform::clock::{OffsetClock, SharedClock};
use platform::consumer::IdempotentConsumer;
use platform::error::ApiError;
use platform::events::Event;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::page::PageParams;
use platform::store::Db;
use platform::testing::tempfile_guard::TempDir;
use serde_json::json;
use uuid::Uuid;

use crate::smtp::SmtpServer;

macro_rules! suite {
    ($backend:ident, $open:ident) => {
        mod $backend {
            suite!(@tests $open;
                concurrent_claims_of_one_event_have_one_winner,
                a_failed_or_abandoned_claim_is_taken_over_and_its_old_holder_fenced_off,
                the_log_is_filtered_and_paginated_newest_first,
                inbox_entries_are_read_and_unread_by_their_owner_only,
                each_email_type_is_sent_once_when_its_event_arrives_three_times,
                concurrent_deliveries_of_one_event_send_one_email,
                an_event_without_a_recipient_is_logged_as_skipped,
                a_directory_outage_fails_the_attempt_and_the_next_delivery_sends,
            );
        }
    };
    (@tests $open:ident; $($test:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                match super::$open().await {
                    Some(fixture) => super::$test(fixture).await,
                    None => eprintln!("skipped: {} is not set", platform::testing::POSTGRES_URL_VAR),
                }
            }
        )+
    };
}

suite!(sqlite, open_sqlite);
suite!(postgres, open_postgres);

/// The user every sample event is about.
pub const USER: &str = "01930000-0000-7000-8000-0000000000aa";
/// The address the directory has for [`USER`] (the events that carry one say `asha@example.com`).
pub const DIRECTORY_EMAIL: &str = "asha.directory@example.com";
pub const OPERATIONS_EMAIL: &str = "ops@mercato.test";

pub struct Fixture {
    pub db: Db,
    pub clock: Arc<OffsetClock>,
    _dir: Option<TempDir>,
}

async fn fixture(db: Db, dir: Option<TempDir>) -> Fixture {
    db.migrate("platform", PLATFORM_MIGRATIONS)
        .await
        .expect("platform migrations");
    db.migrate(notifications::SERVICE, notifications::MIGRATIONS)
        .await
        .expect("notifications migrations");
    Fixture {
        db,
        clock: Arc::new(OffsetClock::default()),
        _dir: dir,
    }
}

pub async fn open_sqlite() -> Option<Fixture> {
    let (db, dir) = platform::testing::sqlite_db().await.expect("sqlite");
    Some(fixture(db, Some(dir)).await)
}

async fn open_postgres() -> Option<Fixture> {
    let db = platform::testing::postgres_db().await.expect("postgres")?;
    Some(fixture(db, None).await)
}

/// Contact details by user id; answers errors while `down`.
#[derive(Default)]
pub struct TestDirectory {
    contacts: HashMap<Uuid, Contact>,
    down: AtomicBool,
}

impl TestDirectory {
    pub fn with_sample_user() -> Self {
        let mut contacts = HashMap::new();
        contacts.insert(
            Uuid::parse_str(USER).unwrap(),
            Contact {
                email: DIRECTORY_EMAIL.to_owned(),
                full_name: "Asha Rao".to_owned(),
            },
        );
        Self {
            contacts,
            down: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Directory for TestDirectory {
    async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<Contact>> {
        anyhow::ensure!(!self.down.load(Ordering::SeqCst), "identity is unavailable");
        Ok(self.contacts.get(&user_id).cloned())
    }
}

pub fn settings() -> Settings {
    Settings {
        operations_email: OPERATIONS_EMAIL.to_owned(),
        public_url: "https://shop.test".to_owned(),
        ..Settings::default()
    }
}

impl Fixture {
    pub fn service(&self, mailer: Arc<dyn Mailer>, directory: Arc<dyn Directory>) -> Arc<Notifications> {
        let clock: SharedClock = self.clock.clone();
        Arc::new(Notifications::new(
            self.db.clone(),
            clock,
            settings(),
            mailer,
            directory,
        ))
    }

    /// The service sending to `server`, with the sample user in its directory.
    pub fn smtp_service(&self, server: &SmtpServer) -> Arc<Notifications> {
        let mailer = SmtpMailer::new(&server.settings()).expect("SMTP mailer");
        self.service(Arc::new(mailer), Arc::new(TestDirectory::with_sample_user()))
    }

    pub fn consumer(&self, notifications: &Arc<Notifications>) -> IdempotentConsumer {
        IdempotentConsumer::new(
            "notifications",
            self.db.clone(),
            Arc::new(NotificationEvents {
                notifications: notifications.clone(),
            }),
        )
    }

    pub async fn email_log(&self, event: &Event) -> store::LogRow {
        store::log_entry(self.db.reader(), &event.id.to_string(), "email")
            .await
            .unwrap()
            .expect("an email log row")
    }

    pub async fn inbox_entries(&self, user: &str) -> Vec<store::InboxRow> {
        store::list_inbox(self.db.reader(), user, false, None, 1_000)
            .await
            .unwrap()
    }
}

pub fn event_of(kind: NotificationKind) -> Event {
    Event::new("test", kind.event_type(), "subject", sample(kind), None)
}

const NOW: i64 = 1_800_000_000_000;
const MINUTE: i64 = 60_000;

fn attempt<'a>(id: &'a str, event_id: &'a str, now: i64) -> NewAttempt<'a> {
    NewAttempt {
        id,
        event_id,
        event_type: "order.created",
        kind: "order_placed",
        user_id: Some(USER),
        channel: "email",
        now,
        stale_before: now - 2 * MINUTE,
    }
}

fn outcome<'a>(status: &'a str, recipient: &'a str, now: i64) -> Outcome<'a> {
    Outcome {
        status,
        recipient,
        subject: "Order placed — ORD-1",
        error: (status != "sent").then_some("451 try later"),
        now,
    }
}

// ----- the store ----------------------------------------------------------------------------

async fn concurrent_claims_of_one_event_have_one_winner(f: Fixture) {
    let event_id = Uuid::now_v7().to_string();
    let ids: Vec<String> = (0..8).map(|_| Uuid::now_v7().to_string()).collect();
    let claims = join_all(ids.iter().map(|id| {
        let pool = f.db.writer().clone();
        let event_id = event_id.clone();
        async move { store::claim(&pool, &attempt(id, &event_id, NOW)).await.unwrap() }
    }))
    .await;
    let winners: Vec<&store::LogRow> = claims
        .iter()
        .filter_map(|c| match c {
            Claim::Won(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    assert!(
        claims.iter().all(|c| matches!(c, Claim::Won(_) | Claim::Busy(_))),
        "{claims:?}"
    );
    let winner = winners[0].clone();
    assert_eq!((winner.status.as_str(), winner.attempts), ("sending", 1));

    // Once sent, every later claim finds it done.
    assert!(
        store::finish(f.db.writer(), &winner.id, 1, &outcome("sent", "a@example.com", NOW + 1))
            .await
            .unwrap()
    );
    let id = Uuid::now_v7().to_string();
    match store::claim(f.db.writer(), &attempt(&id, &event_id, NOW + 10 * MINUTE))
        .await
        .unwrap()
    {
        Claim::Done(row) => {
            assert_eq!(
                (row.status.as_str(), row.recipient.as_str(), row.sent_at),
                ("sent", "a@example.com", Some(NOW + 1))
            );
        }
        other => panic!("expected done, got {other:?}"),
    }
    // The inbox channel of the same event is a claim of its own.
    let inbox = NewAttempt {
        channel: "inbox",
        ..attempt(&id, &event_id, NOW)
    };
    let other_id = Uuid::now_v7().to_string();
    let inbox = NewAttempt { id: &other_id, ..inbox };
    assert!(matches!(
        store::claim(f.db.writer(), &inbox).await.unwrap(),
        Claim::Won(_)
    ));
}

async fn a_failed_or_abandoned_claim_is_taken_over_and_its_old_holder_fenced_off(f: Fixture) {
    let event_id = Uuid::now_v7().to_string();
    let first = Uuid::now_v7().to_string();
    let Claim::Won(row) = store::claim(f.db.writer(), &attempt(&first, &event_id, NOW))
        .await
        .unwrap()
    else {
        panic!("the first claim wins");
    };
    assert!(store::finish(
        f.db.writer(),
        &row.id,
        row.attempts,
        &outcome("failed", "a@example.com", NOW)
    )
    .await
    .unwrap());

    // A failed row is taken over by exactly one of several concurrent claims.
    let ids: Vec<String> = (0..6).map(|_| Uuid::now_v7().to_string()).collect();
    let claims = join_all(ids.iter().map(|id| {
        let pool = f.db.writer().clone();
        let event_id = event_id.clone();
        async move { store::claim(&pool, &attempt(id, &event_id, NOW + 1)).await.unwrap() }
    }))
    .await;
    let retaken: Vec<store::LogRow> = claims
        .into_iter()
        .filter_map(|c| match c {
            Claim::Won(row) => Some(row),
            _ => None,
        })
        .collect();
    assert_eq!(retaken.len(), 1);
    assert_eq!((retaken[0].attempts, retaken[0].id.as_str()), (2, row.id.as_str()));

    // A `sending` row is left alone while fresh and taken over once stale.
    let id = Uuid::now_v7().to_string();
    assert!(matches!(
        store::claim(f.db.writer(), &attempt(&id, &event_id, NOW + MINUTE))
            .await
            .unwrap(),
        Claim::Busy(_)
    ));
    let Claim::Won(taken) = store::claim(f.db.writer(), &attempt(&id, &event_id, NOW + 3 * MINUTE))
        .await
        .unwrap()
    else {
        panic!("a stale claim is taken over");
    };
    assert_eq!(taken.attempts, 3);
    // The abandoned attempt, should it come back, can no longer record an outcome.
    assert!(!store::finish(
        f.db.writer(),
        &row.id,
        2,
        &outcome("sent", "a@example.com", NOW + 3 * MINUTE)
    )
    .await
    .unwrap());
    assert!(store::finish(
        f.db.writer(),
        &row.id,
        3,
        &outcome("sent", "a@example.com", NOW + 3 * MINUTE)
    )
    .await
    .unwrap());
    let row = store::log_entry(f.db.reader(), &event_id, "email")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((row.status.as_str(), row.attempts, row.error), ("sent", 3, None));
}

async fn the_log_is_filtered_and_paginated_newest_first(f: Fixture) {
    let other_user = Uuid::now_v7().to_string();
    let mut event_ids = Vec::new();
    for (n, (kind, status, recipient, user)) in [
        ("order_placed", "sent", "a@example.com", USER),
        ("order_placed", "failed", "b@example.com", other_user.as_str()),
        ("welcome", "sent", "a@example.com", USER),
        ("payment_failed", "skipped", "", USER),
        ("low_stock", "sent", OPERATIONS_EMAIL, ""),
    ]
    .into_iter()
    .enumerate()
    {
        let event_id = Uuid::now_v7().to_string();
        let id = Uuid::now_v7().to_string();
        let now = NOW + n as i64;
        let new = NewAttempt {
            kind,
            user_id: (!user.is_empty()).then_some(user),
            ..attempt(&id, &event_id, now)
        };
        let Claim::Won(row) = store::claim(f.db.writer(), &new).await.unwrap() else {
            panic!("fresh claim");
        };
        assert!(
            store::finish(f.db.writer(), &row.id, 1, &outcome(status, recipient, now))
                .await
                .unwrap()
        );
        event_ids.push(event_id);
    }
    let list = |filter: LogFilter| {
        let pool = f.db.reader().clone();
        async move {
            store::list_log(&pool, &filter, None, 100)
                .await
                .unwrap()
                .into_iter()
                .map(|row| row.event_id)
                .collect::<Vec<_>>()
        }
    };
    let all = list(LogFilter::default()).await;
    let newest_first: Vec<String> = event_ids.iter().rev().cloned().collect();
    assert_eq!(all, newest_first);
    let filter = |f: fn(&mut LogFilter)| {
        let mut filter = LogFilter::default();
        f(&mut filter);
        filter
    };
    assert_eq!(
        list(filter(|f| f.kind = Some("order_placed".into()))).await,
        vec![event_ids[1].clone(), event_ids[0].clone()]
    );
    assert_eq!(
        list(filter(|f| f.status = Some("failed".into()))).await,
        vec![event_ids[1].clone()]
    );
    assert_eq!(
        list(filter(|f| {
            f.recipient = Some("a@example.com".into());
            f.status = Some("sent".into());
        }))
        .await,
        vec![event_ids[2].clone(), event_ids[0].clone()]
    );
    assert_eq!(
        list(filter(|f| f.user_id = Some(USER.into()))).await,
        vec![event_ids[3].clone(), event_ids[2].clone(), event_ids[0].clone()]
    );
    assert_eq!(
        list(filter(|f| f.channel = Some("inbox".into()))).await,
        Vec::<String>::new()
    );
    let by_event = LogFilter {
        event_id: Some(event_ids[4].clone()),
        ..LogFilter::default()
    };
    assert_eq!(list(by_event).await, vec![event_ids[4].clone()]);

    // Pages through the service: two, two, one, then none.
    let server = SmtpServer::start().await;
    let notifications = f.smtp_service(&server);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = PageParams {
            limit: Some(2),
            cursor: cursor.clone(),
        }
        .parse()
        .unwrap();
        let page = notifications
            .log(&notifications::service::LogFilter::default(), &page)
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|item| item.event_id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
}

async fn inbox_entries_are_read_and_unread_by_their_owner_only(f: Fixture) {
    let server = SmtpServer::start().await;
    let notifications = f.smtp_service(&server);
    let consumer = f.consumer(&notifications);
    let kinds = [
        NotificationKind::OrderPlaced,
        NotificationKind::PaymentReceived,
        NotificationKind::OrderShipped,
        NotificationKind::Welcome,
    ];
    for kind in kinds {
        assert!(consumer.process(&event_of(kind)).await.unwrap());
    }
    let user = Uuid::parse_str(USER).unwrap();
    let stranger = Uuid::now_v7();
    let first_page = PageParams::default().parse().unwrap();
    let inbox = notifications.inbox(user, false, &first_page).await.unwrap();
    // The account email has no inbox entry; the rest are newest first.
    let titles: Vec<&str> = inbox.items.iter().map(|i| i.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Order shipped — ORD-2026-000123",
            "Payment received — ORD-2026-000123",
            "Order placed — ORD-2026-000123"
        ]
    );
    assert_eq!(inbox.unread_count, 3);
    assert!(inbox.items.iter().all(|i| !i.read));
    assert_eq!(
        inbox.items[2].link.as_deref(),
        Some("/orders/01930000-0000-7000-8000-000000000001")
    );

    let target = inbox.items[1].id;
    assert!(matches!(
        notifications.mark_read(stranger, target).await,
        Err(ApiError::NotFound(_))
    ));
    assert!(matches!(
        notifications.mark_unread(stranger, target).await,
        Err(ApiError::NotFound(_))
    ));
    assert_eq!(notifications.read_all(stranger).await.unwrap(), 0);
    assert!(notifications
        .inbox(stranger, false, &first_page)
        .await
        .unwrap()
        .items
        .is_empty());

    let read = notifications.mark_read(user, target).await.unwrap();
    assert!(read.read && read.read_at.is_some());
    // Reading again keeps the first reading time.
    f.clock.advance(std::time::Duration::from_secs(60));
    assert_eq!(
        notifications.mark_read(user, target).await.unwrap().read_at,
        read.read_at
    );
    let unread = notifications.inbox(user, true, &first_page).await.unwrap();
    assert_eq!(unread.unread_count, 2);
    assert_eq!(unread.items.len(), 2);
    assert!(unread.items.iter().all(|i| i.id != target));

    let again = notifications.mark_unread(user, target).await.unwrap();
    assert!(!again.read && again.read_at.is_none());
    assert_eq!(notifications.read_all(user).await.unwrap(), 3);
    let after = notifications.inbox(user, false, &first_page).await.unwrap();
    assert_eq!(after.unread_count, 0);
    assert!(after.items.iter().all(|i| i.read));
    assert!(notifications
        .inbox(user, true, &first_page)
        .await
        .unwrap()
        .items
        .is_empty());

    // Pages of one.
    let page = PageParams {
        limit: Some(1),
        cursor: None,
    }
    .parse()
    .unwrap();
    let first = notifications.inbox(user, false, &page).await.unwrap();
    assert_eq!(first.items.len(), 1);
    let next = PageParams {
        limit: Some(1),
        cursor: first.next_cursor.clone(),
    }
    .parse()
    .unwrap();
    let second = notifications.inbox(user, false, &next).await.unwrap();
    assert_eq!(second.items[0].id, target);
}

// ----- delivery -----------------------------------------------------------------------------

/// The address each kind goes to: the event's own, else the directory's, or operations.
fn expected_recipient(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::LowStock => OPERATIONS_EMAIL,
        kind if kind.email_field().is_some() => "asha@example.com",
        _ => DIRECTORY_EMAIL,
    }
}

async fn each_email_type_is_sent_once_when_its_event_arrives_three_times(f: Fixture) {
    let server = SmtpServer::start().await;
    let notifications = f.smtp_service(&server);
    let consumer = f.consumer(&notifications);
    let events: Vec<Event> = NotificationKind::ALL.into_iter().map(event_of).collect();
    for event in &events {
        let applied: Vec<bool> = [
            consumer.process(event).await.unwrap(),
            consumer.process(event).await.unwrap(),
            consumer.process(event).await.unwrap(),
        ]
        .into();
        assert_eq!(applied, [true, false, false], "{}", event.kind);
    }
    let messages = server.messages();
    assert_eq!(messages.len(), NotificationKind::ALL.len());
    for (kind, event) in NotificationKind::ALL.into_iter().zip(&events) {
        let sent: Vec<_> = messages
            .iter()
            .filter(|m| {
                let parsed = MessageParser::default().parse(&m.data).unwrap();
                parsed.header_raw("X-Mercato-Event-Id").map(str::trim) == Some(event.id.to_string().as_str())
            })
            .collect();
        assert_eq!(sent.len(), 1, "{kind:?}");
        let received = sent[0];
        assert_eq!(received.rcpt_to, [expected_recipient(kind)], "{kind:?}");
        assert_eq!(received.mail_from, "no-reply@mercato.local");
        let parsed = MessageParser::default().parse(&received.data).unwrap();
        let content_type = parsed.content_type().unwrap();
        assert_eq!(
            (content_type.ctype(), content_type.subtype()),
            ("multipart", Some("alternative")),
            "{kind:?}"
        );
        assert_eq!(parsed.text_body_count(), 1, "{kind:?}");
        assert_eq!(parsed.html_body_count(), 1, "{kind:?}");
        let log = f.email_log(event).await;
        assert_eq!(
            (
                log.status.as_str(),
                log.attempts,
                log.recipient.as_str(),
                log.kind.as_str()
            ),
            ("sent", 1, expected_recipient(kind), kind.as_str()),
            "{kind:?}"
        );
        assert_eq!(parsed.subject(), Some(log.subject.as_str()), "{kind:?}");
        assert_eq!(
            parsed.to().and_then(|to| to.first()).and_then(|a| a.address()),
            Some(expected_recipient(kind))
        );
        assert!(parsed.body_html(0).unwrap().contains("<!DOCTYPE html>"));
    }
    // One inbox entry per customer event, however often it arrived.
    let inbox = f.inbox_entries(USER).await;
    let customer_kinds = NotificationKind::ALL.iter().filter(|k| k.has_inbox_entry()).count();
    assert_eq!(inbox.len(), customer_kinds);
    let code = inbox.iter().find(|e| e.kind == "delivery_code").unwrap();
    assert_eq!(code.body, "Your delivery code for ORD-2026-000123: 482913");
    let log = store::list_log(f.db.reader(), &LogFilter::default(), None, 1_000)
        .await
        .unwrap();
    assert_eq!(log.len(), NotificationKind::ALL.len() + customer_kinds);
    assert!(log.iter().all(|row| row.status == "sent"));
}

async fn concurrent_deliveries_of_one_event_send_one_email(f: Fixture) {
    let server = SmtpServer::start().await;
    let notifications = f.smtp_service(&server);
    let consumer = f.consumer(&notifications);
    let event = event_of(NotificationKind::OrderPlaced);
    let results = join_all((0..3).map(|_| consumer.process(&event))).await;
    // A delivery that met another one mid-send fails (to be retried); at least one succeeds.
    assert!(results.iter().any(|r| r.is_ok()), "{results:?}");
    assert_eq!(server.accepted(), 1);
    // The retries of the ones that failed send nothing more.
    for _ in 0..3 {
        consumer.process(&event).await.unwrap();
    }
    assert_eq!(server.accepted(), 1);
    assert_eq!(f.inbox_entries(USER).await.len(), 1);
    assert_eq!(f.email_log(&event).await.status, "sent");
}

async fn an_event_without_a_recipient_is_logged_as_skipped(f: Fixture) {
    let server = SmtpServer::start().await;
    let notifications = f.smtp_service(&server);
    let consumer = f.consumer(&notifications);
    let stranger = Uuid::now_v7().to_string();
    let mut data = sample(NotificationKind::PaymentReceived);
    data["user_id"] = json!(stranger);
    let unknown_user = Event::new("payments", "payment.succeeded", "p", data, None);
    assert!(consumer.process(&unknown_user).await.unwrap());
    let log = f.email_log(&unknown_user).await;
    assert_eq!(log.status, "skipped");
    assert!(log.error.as_deref().unwrap().contains("no recipient"), "{log:?}");
    // The user still finds it in the inbox.
    assert_eq!(f.inbox_entries(&stranger).await.len(), 1);

    let mut data = sample(NotificationKind::OrderPlaced);
    data["customer_email"] = json!("not an address");
    let bad_address = Event::new("orders", "order.created", "o", data, None);
    assert!(consumer.process(&bad_address).await.unwrap());
    let log = f.email_log(&bad_address).await;
    assert_eq!(
        (log.status.as_str(), log.recipient.as_str()),
        ("skipped", "not an address")
    );

    let no_operations = Notifications::new(
        f.db.clone(),
        f.clock.clone(),
        Settings {
            operations_email: String::new(),
            ..settings()
        },
        Arc::new(SmtpMailer::new(&server.settings()).unwrap()),
        Arc::new(TestDirectory::default()),
    );
    let low = event_of(NotificationKind::LowStock);
    assert_eq!(
        no_operations.send_email(&low).await.unwrap(),
        notifications::EmailOutcome::Skipped
    );
    assert_eq!(server.accepted(), 0);
    // Types the service has no template for are ignored.
    let paid = Event::new("orders", "order.paid", "o", sample(NotificationKind::OrderPlaced), None);
    assert!(!EVENT_TYPES.contains(&"order.paid"));
    assert!(consumer.process(&paid).await.unwrap());
    assert!(store::log_entry(f.db.reader(), &paid.id.to_string(), "email")
        .await
        .unwrap()
        .is_none());
}

async fn a_directory_outage_fails_the_attempt_and_the_next_delivery_sends(f: Fixture) {
    let server = SmtpServer::start().await;
    let directory = Arc::new(TestDirectory::with_sample_user());
    let notifications = f.service(
        Arc::new(SmtpMailer::new(&server.settings()).unwrap()),
        directory.clone(),
    );
    let consumer = f.consumer(&notifications);
    let event = event_of(NotificationKind::RefundIssued);
    directory.down.store(true, Ordering::SeqCst);
    let err = consumer.process(&event).await.unwrap_err();
    assert!(format!("{err:#}").contains("identity is unavailable"), "{err:#}");
    let log = f.email_log(&event).await;
    assert_eq!((log.status.as_str(), log.attempts), ("failed", 1));
    assert!(
        f.inbox_entries(USER).await.is_empty(),
        "no effect before the email went"
    );

    directory.down.store(false, Ordering::SeqCst);
    assert!(consumer.process(&event).await.unwrap());
    let log = f.email_log(&event).await;
    assert_eq!(
        (log.status.as_str(), log.attempts, log.recipient.as_str(), log.error),
        ("sent", 2, DIRECTORY_EMAIL, None)
    );
    assert_eq!(server.accepted(), 1);
    assert_eq!(f.inbox_entries(USER).await.len(), 1);
}
