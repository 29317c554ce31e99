//! Events: published if and only if their change commits, dead letters and replay, and
//! durability across a restart.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mercato::app::ExtensionConsumer;
use platform::consumer::EventHandler;
use platform::events::Event;
use platform::store::Tx;
use serde_json::json;

use crate::helpers::{id_of, TestApp, PASSWORD};

/// Counts `user.registered` events; fails while `failing` is set.
#[derive(Default)]
struct Probe {
    failing: AtomicBool,
    attempts: AtomicU32,
    applied: AtomicU32,
    seen: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl EventHandler for Probe {
    async fn handle(&self, _tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            anyhow::bail!("probe is failing on purpose");
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(event.subject.clone());
        Ok(())
    }
}

fn extension(probe: &Arc<Probe>) -> Vec<ExtensionConsumer> {
    vec![ExtensionConsumer {
        name: "probe".to_owned(),
        types: vec!["user.registered".to_owned()],
        handler: probe.clone(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_published_if_and_only_if_its_transaction_commits() {
    let app = TestApp::spawn().await;
    let user = app.register("once@example.com").await;
    let user_id = id_of(&user);
    app.wait_for_event("user.registered", &user_id).await;

    // A duplicate registration rolls back: no user, no event.
    let body = json!({"email": "once@example.com", "full_name": "Again", "password": PASSWORD});
    app.post("/api/v1/auth/register", None, body).await.expect_problem(409);
    // A later committed change proves the relay has moved past the failed attempt.
    let marker = id_of(&app.register("marker@example.com").await);
    app.wait_for_event("user.registered", &marker).await;

    let registered: Vec<Event> = app
        .bus_events()
        .await
        .into_iter()
        .filter(|e| e.kind == "user.registered")
        .collect();
    let emails: Vec<&str> = registered.iter().map(|e| e.data["email"].as_str().unwrap()).collect();
    // The admin created at start, the first registration and the marker — not the duplicate.
    assert_eq!(
        emails,
        vec![crate::helpers::ADMIN_EMAIL, "once@example.com", "marker@example.com"]
    );
    assert!(
        app.outboxes_drain().await,
        "the outbox drains once every event is published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_failing_three_times_is_dead_lettered_and_replayed_once() {
    let probe = Arc::new(Probe {
        failing: AtomicBool::new(true),
        ..Probe::default()
    });
    let mut app = TestApp::spawn_with(|_| {}, extension(&probe)).await;
    // The admin account's own user.registered, created at start while the probe fails, stays.
    app.expect_dead_letters(1);
    let admin = app.admin_token().await;

    // The admin account's own user.registered fails too; register one more for a clear subject.
    let user_id = id_of(&app.register("dlq@example.com").await);
    let letter = platform::testing::eventually(Duration::from_secs(10), || async {
        let list = app.get("/api/v1/admin/dead-letters", Some(&admin)).await.expect(200);
        list.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["event"]["subject"] == user_id.as_str())
            .cloned()
    })
    .await
    .expect("the failing event reaches the dead letters");
    assert_eq!(letter["attempts"], 3);
    assert_eq!(letter["consumer"], "probe");
    assert!(letter["error"].as_str().unwrap().contains("failing on purpose"));
    assert_eq!(probe.applied.load(Ordering::SeqCst), 0);

    probe.failing.store(false, Ordering::SeqCst);
    let path = format!("/api/v1/admin/dead-letters/{}/replay", letter["id"].as_str().unwrap());
    let replayed = app.post(&path, Some(&admin), json!({})).await.expect(200);
    assert!(replayed.body["replayed_at"].is_string());
    app.post(&path, Some(&admin), json!({})).await.expect_problem(409);
    let applied_for_user = probe.seen.lock().unwrap().iter().filter(|s| **s == user_id).count();
    assert_eq!(applied_for_user, 1, "the replay delivered the event once");

    let list = app.get("/api/v1/admin/dead-letters", Some(&admin)).await.expect(200);
    assert!(list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["event"]["subject"] != user_id.as_str()));
    let missing = format!("/api/v1/admin/dead-letters/{}/replay", platform::id::new_id());
    app.post(&missing, Some(&admin), json!({})).await.expect_problem(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_users_and_undelivered_events() {
    let app = TestApp::spawn().await;
    let user_id = id_of(&app.register("durable@example.com").await);
    app.wait_for_event("user.registered", &user_id).await;
    app.stop().await;

    // A change committed just before a crash: in the outbox, never relayed.
    let db = mercato::app::identity_db(&app.config).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let stranded = Event::new(
        "identity",
        "user.registered",
        "stranded-subject",
        json!({"email": "stranded@example.com"}),
        None,
    );
    platform::outbox::enqueue(&mut tx, &stranded).await.unwrap();
    tx.commit().await.unwrap();
    db.close().await;

    // The consumer group is new: it starts from the beginning of the durable log.
    let probe = Arc::new(Probe::default());
    let app = app.restart(extension(&probe)).await;
    app.login("durable@example.com", PASSWORD).await.expect(200);
    let seen = platform::testing::eventually(Duration::from_secs(10), || async {
        let seen = probe.seen.lock().unwrap().clone();
        (seen.contains(&user_id) && seen.contains(&"stranded-subject".to_owned())).then_some(seen)
    })
    .await
    .expect("events from before the restart are delivered after it");
    assert_eq!(seen.iter().filter(|s| **s == user_id).count(), 1);
    assert!(app.outboxes_drain().await, "the outbox drains after the restart");
}
