//! The mailers against real receivers, and the real retry path: the durable log bus retries a
//! failing SMTP server three times, dead-letters the event, and an admin's replay sends it once
//! the server recovers (SQLite).

use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use notifications::store;
use notifications::templates::sample;
use notifications::{
    FileMailer, MailError, Mailer, NotificationKind, OutgoingEmail, SmtpMailer, SmtpSettings, SmtpTls, EVENT_TYPES,
};
use platform::bus::log::LogBus;
use platform::bus::{Bus, RetryPolicy};
use platform::consumer::DeadLetters;
use platform::error::ApiError;
use platform::events::Event;
use platform::page::PageRequest;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{event_of, open_sqlite, USER};
use crate::smtp::SmtpServer;

fn email(to: &str) -> OutgoingEmail {
    OutgoingEmail {
        from: "Mercato <no-reply@mercato.local>".to_owned(),
        to: to.to_owned(),
        subject: "Order placed — ORD-2026-000123 ✓".to_owned(),
        html: "<!DOCTYPE html><html><body><p>Hello <b>Asha</b></p></body></html>".to_owned(),
        text: "Hello Asha\n.\n..a line that starts with dots\n".to_owned(),
        event_id: Uuid::now_v7(),
    }
}

#[tokio::test]
async fn an_email_travels_to_a_real_smtp_server_and_parses() {
    let server = SmtpServer::start().await;
    let mailer = SmtpMailer::new(&server.settings()).unwrap();
    let outgoing = email("asha@example.com");
    mailer.send(&outgoing).await.unwrap();

    let received = server.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].mail_from, "no-reply@mercato.local");
    assert_eq!(received[0].rcpt_to, ["asha@example.com"]);
    let parsed = MessageParser::default()
        .parse(&received[0].data)
        .expect("a MIME message");
    let content_type = parsed.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("multipart", Some("alternative"))
    );
    assert_eq!(parsed.subject(), Some("Order placed — ORD-2026-000123 ✓"));
    let to = parsed.to().and_then(|to| to.first()).unwrap();
    assert_eq!(to.address(), Some("asha@example.com"));
    let from = parsed.from().and_then(|from| from.first()).unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Mercato"), Some("no-reply@mercato.local"))
    );
    assert_eq!(parsed.body_text(0).unwrap().replace("\r\n", "\n"), outgoing.text);
    assert_eq!(parsed.body_html(0).unwrap(), outgoing.html);
    assert_eq!(
        parsed.header_raw("X-Mercato-Event-Id").map(str::trim),
        Some(outgoing.event_id.to_string().as_str())
    );
    assert_eq!(
        parsed.message_id(),
        Some(format!("{}@mercato.local", outgoing.event_id).as_str())
    );
}

#[tokio::test]
async fn smtp_refusals_and_unreachable_servers_are_temporary_failures() {
    let server = SmtpServer::start().await;
    server.set_failing(true);
    let mailer = SmtpMailer::new(&server.settings()).unwrap();
    let err = mailer.send(&email("asha@example.com")).await.unwrap_err();
    assert!(
        matches!(&err, MailError::Transient(message) if message.contains("451")),
        "{err}"
    );
    assert_eq!((server.accepted(), server.refused()), (0, 1));

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = SmtpMailer::new(&SmtpSettings {
        host: "127.0.0.1".to_owned(),
        port,
        tls: SmtpTls::None,
        timeout: Duration::from_secs(2),
        ..SmtpSettings::default()
    })
    .unwrap();
    let err = closed.send(&email("asha@example.com")).await.unwrap_err();
    assert!(matches!(err, MailError::Transient(_)), "{err}");
}

#[tokio::test]
async fn the_file_mailer_writes_one_parsable_eml_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let mail_dir = dir.path().join("data").join("mail");
    let mailer = FileMailer::new(&mail_dir);
    let outgoing = email("asha@example.com");
    mailer.send(&outgoing).await.unwrap();
    // The same event again replaces its file rather than adding one.
    mailer.send(&outgoing).await.unwrap();
    mailer.send(&email("ravi@example.com")).await.unwrap();

    let mut names: Vec<String> = std::fs::read_dir(&mail_dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().all(|n| n.ends_with(".eml") && !n.starts_with('.')),
        "{names:?}"
    );
    let raw = std::fs::read(mail_dir.join(format!("{}.eml", outgoing.event_id))).unwrap();
    let parsed = MessageParser::default().parse(&raw).expect("a MIME message");
    assert_eq!(parsed.subject(), Some(outgoing.subject.as_str()));
    assert_eq!(
        parsed.to().and_then(|to| to.first()).and_then(|a| a.address()),
        Some("asha@example.com")
    );
    assert_eq!(parsed.text_body_count(), 1);
    assert_eq!(parsed.html_body_count(), 1);
}

#[tokio::test]
async fn a_failing_smtp_server_dead_letters_after_three_attempts_and_a_replay_sends_once() {
    let f = open_sqlite().await.unwrap();
    let server = SmtpServer::start().await;
    server.set_failing(true);
    let notifications = f.smtp_service(&server);

    let (bus_db, _bus_dir) = platform::testing::sqlite_db().await.unwrap();
    let cancel = CancellationToken::new();
    let bus = LogBus::open(bus_db, cancel.clone()).await.unwrap();
    let mut dead_letters = DeadLetters::default();
    dead_letters.register(f.consumer(&notifications), EVENT_TYPES);
    let policy = RetryPolicy {
        max_attempts: 3,
        base_backoff: Duration::from_millis(10),
    };
    dead_letters.start(&bus, policy).await.unwrap();

    let event = event_of(NotificationKind::OrderPlaced);
    bus.publish(&event).await.unwrap();
    let first_page = PageRequest { limit: 10, after: None };
    let letter = platform::testing::eventually(Duration::from_secs(20), || async {
        dead_letters.list(&first_page).await.unwrap().items.into_iter().next()
    })
    .await
    .expect("the event is dead-lettered");
    assert_eq!(
        (letter.event_id.as_str(), letter.attempts, letter.consumer.as_str()),
        (event.id.to_string().as_str(), 3, "notifications")
    );
    assert!(letter.error.contains("451"), "{}", letter.error);
    assert_eq!((server.accepted(), server.refused()), (0, 3));
    let log = f.email_log(&event).await;
    assert_eq!((log.status.as_str(), log.attempts), ("failed", 3));
    assert!(log.error.as_deref().unwrap().contains("451"), "{log:?}");
    assert!(f.inbox_entries(USER).await.is_empty());

    server.set_failing(false);
    let replayed = dead_letters.replay(letter.id).await.unwrap();
    assert!(replayed.replayed_at.is_some());
    assert_eq!(server.accepted(), 1);
    let log = f.email_log(&event).await;
    assert_eq!((log.status.as_str(), log.attempts, log.error), ("sent", 4, None));
    assert!(log.sent_at.is_some());
    assert_eq!(f.inbox_entries(USER).await.len(), 1);
    let received = server.messages();
    let parsed = MessageParser::default().parse(&received[0].data).unwrap();
    assert_eq!(parsed.subject(), Some("Order placed — ORD-2026-000123"));

    // Replaying again, or the event arriving once more, sends nothing.
    assert!(matches!(
        dead_letters.replay(letter.id).await,
        Err(ApiError::Conflict(_))
    ));
    assert!(!f.consumer(&notifications).process(&event).await.unwrap());
    assert_eq!(server.accepted(), 1);

    // The consumer goes on with the next event.
    let next = Event::new(
        "orders",
        "order.created",
        "o",
        sample(NotificationKind::OrderPlaced),
        None,
    );
    bus.publish(&next).await.unwrap();
    // The server accepts the message a moment before the consumer records it as sent.
    platform::testing::eventually(Duration::from_secs(20), || async {
        let logged = store::log_entry(f.db.reader(), &next.id.to_string(), "email")
            .await
            .unwrap();
        logged.filter(|row| row.status == "sent").map(|_| ())
    })
    .await
    .expect("the next event is sent and recorded");
    assert_eq!(server.accepted(), 2);
    assert_eq!(dead_letters.count().await.unwrap(), 0);
    cancel.cancel();
}
