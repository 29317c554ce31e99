//! Live order updates over Server-Sent Events: the owner's stream of an order's changes, in
//! order, resumable with `Last-Event-ID`; nobody else's; and the admin feed of new orders.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cart::stocked;
use crate::checkout::{add_to_cart, card, checkout, path_of, wait_for_status};
use crate::helpers::TestApp;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub(crate) struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: Value,
}

/// An open event stream, read event by event.
pub(crate) struct SseStream {
    response: reqwest::Response,
    buffer: String,
    ready: VecDeque<Sse>,
}

impl SseStream {
    pub async fn open(app: &TestApp, path: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
        Self::open_at(&app.client, &app.url, path, token, last_event_id).await
    }

    /// [`SseStream::open`] on any server (a gateway, a replica).
    pub async fn open_at(
        client: &reqwest::Client,
        base: &str,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> reqwest::Response {
        let mut request = client
            .get(format!("{base}{path}"))
            .bearer_auth(token)
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.unwrap()
    }

    pub async fn connect(app: &TestApp, path: &str, token: &str, last_event_id: Option<&str>) -> Self {
        Self::connect_at(&app.client, &app.url, path, token, last_event_id).await
    }

    /// [`SseStream::connect`] on any server (a gateway, a replica).
    pub async fn connect_at(
        client: &reqwest::Client,
        base: &str,
        path: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        let response = Self::open_at(client, base, path, token, last_event_id).await;
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{:?}",
            response.headers()
        );
        Self {
            response,
            buffer: String::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or `None` if none comes in `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk()).await.ok()?;
            let chunk = chunk.expect("the stream stays readable")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    id: None,
                    event: "message".to_owned(),
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = serde_json::from_str(&data).unwrap();
                self.ready.push_back(event);
            }
        }
    }

    /// The next `status` event.
    pub async fn next_status(&mut self, wait: Duration) -> Option<Sse> {
        loop {
            let event = self.next(wait).await?;
            if event.event == "status" {
                return Some(event);
            }
        }
    }
}

async fn place_card_order(app: &TestApp, token: &str, sku: &str, key: &str) -> (String, String) {
    add_to_cart(app, token, sku, 1).await;
    let placed = checkout(app, token, key, card()).await.expect(201).body;
    (
        placed["order"]["id"].as_str().unwrap().to_owned(),
        path_of(placed["payment"]["redirect_url"].as_str().unwrap()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sees_paid_shipped_delivered_in_order_and_can_resume() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "LIVE-1", 1_000, 5).await;
    let token = app.customer_token("live@example.com").await;
    let (order_id, page) = place_card_order(&app, &token, "LIVE-1", "live-key").await;
    let path = format!("/api/v1/orders/{order_id}/events");

    // Another customer learns nothing; no token is a 401.
    let stranger = app.customer_token("stranger@example.com").await;
    let refused = SseStream::open(&app, &path, &stranger, None).await;
    assert_eq!(refused.status(), 404);
    assert!(refused.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("problem+json"));
    let anonymous = app.client.get(format!("{}{path}", app.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let garbled = SseStream::open(&app, &path, &token, Some("not-an-id")).await;
    assert_eq!(garbled.status(), 422);

    let mut stream = SseStream::connect(&app, &path, &token, None).await;
    let created = stream
        .next(Duration::from_secs(5))
        .await
        .expect("the history comes first");
    assert_eq!(created.event, "created");
    assert_eq!(created.data["to_status"], "pending");

    let approved = app
        .client
        .post(format!("{}{page}/approve", app.url))
        .send()
        .await
        .unwrap();
    assert!(approved.status().is_success());
    let paid = stream
        .next_status(Duration::from_secs(10))
        .await
        .expect("paid arrives live");
    assert_eq!(
        (paid.data["from_status"].as_str(), paid.data["to_status"].as_str()),
        (Some("pending"), Some("paid"))
    );

    let status = format!("/api/v1/admin/orders/{order_id}/status");
    for next in ["shipped", "delivered"] {
        app.patch(&status, Some(&admin), json!({"status": next}))
            .await
            .expect(200);
    }
    let shipped = stream
        .next_status(Duration::from_secs(10))
        .await
        .expect("shipped arrives live");
    assert_eq!(shipped.data["to_status"], "shipped");
    let delivered = stream
        .next_status(Duration::from_secs(10))
        .await
        .expect("delivered arrives live");
    assert_eq!(delivered.data["to_status"], "delivered");
    let (paid_id, delivered_id) = (paid.id.unwrap(), delivered.id.unwrap());
    assert!(paid_id.parse::<i64>().unwrap() < delivered_id.parse::<i64>().unwrap());

    // Resuming after `paid` sends what came after it, and only that.
    let mut resumed = SseStream::connect(&app, &path, &token, Some(&paid_id)).await;
    let mut after = Vec::new();
    while let Some(event) = resumed.next(Duration::from_millis(500)).await {
        after.push(event);
        if after.last().and_then(|e| e.id.as_deref()) == Some(delivered_id.as_str()) {
            break;
        }
    }
    let statuses: Vec<&str> = after
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.data["to_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["shipped", "delivered"]);
    assert!(after
        .iter()
        .all(|e| e.id.as_deref().unwrap().parse::<i64>().unwrap() > paid_id.parse::<i64>().unwrap()));
    wait_for_status(&app, &token, &order_id, "delivered").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_follow_new_orders_live_and_catch_up_after_a_reconnect() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "LIVE-2", 700, 10).await;
    let token = app.customer_token("feed@example.com").await;

    let refused = SseStream::open(&app, "/api/v1/admin/orders/live", &token, None).await;
    assert_eq!(refused.status(), 403);

    let mut feed = SseStream::connect(&app, "/api/v1/admin/orders/live", &admin, None).await;
    let (first, _) = place_card_order(&app, &token, "LIVE-2", "feed-1").await;
    let seen = feed
        .next(Duration::from_secs(10))
        .await
        .expect("a new order arrives live");
    assert_eq!(seen.event, "order");
    assert_eq!(seen.id.as_deref(), Some(first.as_str()));
    assert!(seen.data["total_minor"].as_i64().unwrap() > 0);
    drop(feed);

    // Placed while nobody listened: sent first on a reconnect after the last one seen.
    let (second, _) = place_card_order(&app, &token, "LIVE-2", "feed-2").await;
    let mut feed = SseStream::connect(&app, "/api/v1/admin/orders/live", &admin, Some(&first)).await;
    let caught_up = feed
        .next(Duration::from_secs(5))
        .await
        .expect("the missed order is replayed");
    assert_eq!(caught_up.id.as_deref(), Some(second.as_str()));
    let (third, _) = place_card_order(&app, &token, "LIVE-2", "feed-3").await;
    let live = feed.next(Duration::from_secs(10)).await.expect("then new ones, live");
    assert_eq!(
        live.id.as_deref(),
        Some(third.as_str()),
        "the replayed order is not sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_orders_stream_ends_and_a_reconnect_after_its_end_is_told_to_stop() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    stocked(&app, &admin, "LIVE-3", 500, 5).await;
    let token = app.customer_token("ends@example.com").await;
    let (order_id, _) = place_card_order(&app, &token, "LIVE-3", "ends-key").await;
    app.post(&format!("/api/v1/orders/{order_id}/cancel"), Some(&token), json!({}))
        .await
        .expect(200);
    wait_for_status(&app, &token, &order_id, "cancelled").await;

    let path = format!("/api/v1/orders/{order_id}/events");
    let mut stream = SseStream::connect(&app, &path, &token, None).await;
    let mut last = None;
    // The history, then the end of the stream (not a wait): the order is final.
    while let Some(event) = stream.next(Duration::from_secs(30)).await {
        last = event.id.clone();
    }
    let last = last.expect("the history was sent");
    let again = SseStream::open(&app, &path, &token, Some(&last)).await;
    assert_eq!(again.status(), 204, "nothing after the end of a final order");

    // Streams per user are bounded.
    let (open_order, _) = place_card_order(&app, &token, "LIVE-3", "ends-key-2").await;
    let open_path = format!("/api/v1/orders/{open_order}/events");
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(SseStream::connect(&app, &open_path, &token, None).await);
    }
    let refused = SseStream::open(&app, &open_path, &token, None).await;
    assert_eq!(refused.status(), 429);
    drop(held);
    let freed = platform::testing::eventually(Duration::from_secs(10), || async {
        let response = SseStream::open(&app, &open_path, &token, None).await;
        (response.status() == 200).then_some(())
    })
    .await;
    assert!(freed.is_some(), "closed streams free their places");
}
