//! Live order updates over Server-Sent Events: an owner follows one order's timeline, an admin
//! follows new orders.
//!
//! The streams read what they send from the database (the order's timeline, the orders table),
//! so a resumed stream (`Last-Event-ID`) misses nothing and never sends a change twice. What
//! makes them live is [`LiveHub`]: a bus subscriber on `order.created` and
//! `order.status_changed` that wakes the open streams; a woken stream reads again. The hub only
//! wakes, so a lagging stream (one that missed wake-ups) loses nothing either: it reads again,
//! and every stream also reads again every [`RECHECK`] in case a wake-up never came.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::response::sse::Event as SseEvent;
use futures::stream::{self, Stream};
use platform::bus::Delivery;
use platform::clock::rfc3339;
use platform::error::ApiError;
use platform::events::Event;
use serde_json::json;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::OrderStatus;
use crate::service::{Orders, CREATED, STATUS_CHANGED};
use crate::store;

/// The events the hub listens to.
pub const LIVE_EVENTS: &[&str] = &[CREATED, STATUS_CHANGED];

/// How often an open stream reads again without a wake-up.
pub const RECHECK: Duration = Duration::from_secs(15);

/// How many orders an admin stream replays after a `Last-Event-ID`, at most.
const ADMIN_REPLAY: i64 = 100;

/// Streams one user may hold open at once in this process.
pub const MAX_STREAMS_PER_USER: usize = 5;

/// A stream ends after this long, like the access token it was opened with; the client
/// reconnects (with a fresh token, and `Last-Event-ID`) and misses nothing.
pub const MAX_STREAM_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// A wake-up for open streams.
#[derive(Debug, Clone)]
pub enum Signal {
    /// An order was placed; the event's data (the order as placed).
    Created(Arc<serde_json::Value>),
    /// An order's status changed.
    Changed(String),
}

/// Wakes the open streams of this process when an order changes, and counts them per user.
#[derive(Debug, Clone)]
pub struct LiveHub {
    sender: broadcast::Sender<Signal>,
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
}

/// One open stream of a user; dropping it (the client went away) frees the place.
#[derive(Debug)]
pub struct StreamTicket {
    open: Arc<Mutex<HashMap<Uuid, usize>>>,
    user: Uuid,
}

impl Drop for StreamTicket {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl Default for LiveHub {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl LiveHub {
    pub fn new(capacity: usize) -> Self {
        Self {
            sender: broadcast::channel(capacity.max(1)).0,
            open: Arc::default(),
        }
    }

    /// Admits one more stream of `user`, or answers 429 when they hold
    /// [`MAX_STREAMS_PER_USER`] already.
    pub fn admit(&self, user: Uuid) -> Result<StreamTicket, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(user).or_insert(0);
        if *count >= MAX_STREAMS_PER_USER {
            return Err(ApiError::TooManyRequests {
                message: format!("at most {MAX_STREAMS_PER_USER} live streams at once; close one first"),
                retry_after_secs: 5,
            });
        }
        *count += 1;
        Ok(StreamTicket {
            open: self.open.clone(),
            user,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.sender.subscribe()
    }

    /// Wakes the streams that follow what `event` changed. Nobody listening is fine.
    pub fn signal(&self, event: &Event) {
        let signal = match event.kind.as_str() {
            CREATED => Signal::Created(Arc::new(event.data.clone())),
            STATUS_CHANGED => Signal::Changed(event.subject.clone()),
            _ => return,
        };
        let _ = self.sender.send(signal);
    }

    /// How many streams are open in this process.
    pub fn listeners(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// The hub as a bus subscriber. Waking cannot fail, so nothing is ever dead-lettered.
#[async_trait]
impl Delivery for LiveHub {
    async fn deliver(&self, event: &Event) -> anyhow::Result<()> {
        self.signal(event);
        Ok(())
    }

    async fn dead_letter(&self, _event: &Event, _error: &str, _attempts: u32) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Reads `Last-Event-ID` of an order stream: the sequence number of the last timeline entry
/// the client saw.
pub fn timeline_position(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq >= 0)
            .ok_or_else(|| ApiError::validation("Last-Event-ID", "must be an id this stream sent")),
    }
}

/// Reads `Last-Event-ID` of the admin feed: the id of the last order the client saw.
pub fn order_position(raw: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    match raw.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(raw) => Uuid::parse_str(raw)
            .map(Some)
            .map_err(|_| ApiError::validation("Last-Event-ID", "must be an id this stream sent")),
    }
}

struct OrderFollow {
    orders: Arc<Orders>,
    order_id: String,
    after: i64,
    signals: broadcast::Receiver<Signal>,
    ready: VecDeque<SseEvent>,
    /// The order reached a final status: once what is queued is sent, the stream ends.
    finished: bool,
    ends_at: tokio::time::Instant,
    _ticket: StreamTicket,
}

impl OrderFollow {
    /// Queues the timeline entries after `after`. Answers whether there were any.
    async fn read(&mut self) -> bool {
        match store::order(self.orders.db.reader(), &self.order_id).await {
            Ok(Some(row)) => self.finished = OrderStatus::parse(&row.status).is_some_and(OrderStatus::is_final),
            Ok(None) => self.finished = true,
            Err(err) => {
                tracing::warn!(order_id = %self.order_id, error = %err, "cannot read the order for a live stream")
            }
        }
        match store::timeline(self.orders.db.reader(), &self.order_id).await {
            Ok(entries) => {
                let after = self.after;
                for entry in entries.into_iter().filter(|e| e.seq > after) {
                    self.after = entry.seq;
                    let data = json!({
                        "order_id": entry.order_id, "at": rfc3339(entry.at), "kind": entry.kind,
                        "from_status": entry.from_status, "to_status": entry.to_status,
                        "actor": entry.actor, "reason": entry.reason,
                    });
                    self.ready.push_back(
                        SseEvent::default()
                            .id(entry.seq.to_string())
                            .event(entry.kind)
                            .data(data.to_string()),
                    );
                }
            }
            Err(err) => {
                tracing::warn!(order_id = %self.order_id, error = %err, "cannot read the order timeline for a live stream")
            }
        }
        !self.ready.is_empty()
    }

    /// Waits for a wake-up about this order (or a missed one, or the periodic re-read).
    /// Answers false when the hub is gone.
    async fn wait(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        if now >= self.ends_at {
            return false;
        }
        let deadline = (now + RECHECK).min(self.ends_at);
        loop {
            match tokio::time::timeout_at(deadline, self.signals.recv()).await {
                Err(_) => return true,
                Ok(Ok(Signal::Changed(order_id))) if order_id == self.order_id => return true,
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return true,
                Ok(Err(broadcast::error::RecvError::Closed)) => return false,
            }
        }
    }
}

struct NewOrders {
    orders: Arc<Orders>,
    signals: broadcast::Receiver<Signal>,
    ready: VecDeque<SseEvent>,
    /// Orders already sent (by a replay), which a wake-up may name again.
    sent: HashSet<String>,
    /// The newest order id sent, where a read after missed wake-ups starts.
    last: Option<String>,
    ends_at: tokio::time::Instant,
    _ticket: StreamTicket,
}

impl NewOrders {
    /// Queues the orders placed after `last` (at most [`ADMIN_REPLAY`]) that were not sent yet.
    async fn read_since(&mut self, after: &str) -> Result<(), ApiError> {
        for row in store::orders_after(self.orders.db.reader(), after, ADMIN_REPLAY).await? {
            let lines = store::lines_of(self.orders.db.reader(), std::slice::from_ref(&row.id)).await?;
            if let Some((id, event)) = order_summary(&crate::service::event_data(&row, &lines)) {
                self.queue(id, event);
            }
        }
        Ok(())
    }

    fn queue(&mut self, id: String, event: SseEvent) {
        if self.sent.insert(id.clone()) {
            if self.last.as_ref().is_none_or(|last| *last < id) {
                self.last = Some(id);
            }
            self.ready.push_back(event);
        }
    }
}

fn order_summary(data: &serde_json::Value) -> Option<(String, SseEvent)> {
    let id = data.get("order_id")?.as_str()?.to_owned();
    let items = data.get("items").and_then(|i| i.as_array()).map_or(0, Vec::len);
    let summary = json!({
        "order_id": id, "number": data.get("number"), "user_id": data.get("user_id"),
        "status": data.get("status"), "total_minor": data.get("total_minor"),
        "currency": data.get("currency"), "payment_method": data.get("payment_method"),
        "items": items,
    });
    Some((
        id.clone(),
        SseEvent::default().id(id).event("order").data(summary.to_string()),
    ))
}

impl Orders {
    /// The live timeline of an order for its owner (or an admin): every entry after `after`,
    /// then each new one as it happens, until the order reaches a final status. 404 for anyone
    /// else, before anything is streamed. `None` when the order is final and nothing came
    /// after `after` (answer 204, which tells an `EventSource` to stop reconnecting).
    pub async fn follow(
        self: &Arc<Self>,
        id: Uuid,
        caller: Uuid,
        admin: bool,
        after: i64,
    ) -> Result<Option<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
        // Subscribe before the first read, so no change between the two goes unnoticed.
        let signals = self.live.subscribe();
        let row = self.row(&id.to_string()).await?;
        if !admin && row.user_id != caller.to_string() {
            return Err(ApiError::not_found("order"));
        }
        let ticket = self.live.admit(caller)?;
        let mut follow = OrderFollow {
            orders: self.clone(),
            order_id: row.id,
            after,
            signals,
            ready: VecDeque::new(),
            finished: false,
            ends_at: tokio::time::Instant::now() + MAX_STREAM_LIFETIME,
            _ticket: ticket,
        };
        if !follow.read().await && follow.finished {
            return Ok(None);
        }
        Ok(Some(stream::unfold(follow, |mut follow| async move {
            loop {
                if let Some(event) = follow.ready.pop_front() {
                    return Some((Ok(event), follow));
                }
                if follow.finished {
                    return None;
                }
                if follow.read().await {
                    continue;
                }
                if follow.finished || !follow.wait().await {
                    return None;
                }
            }
        })))
    }

    /// New orders as they are placed, for admins. After a `Last-Event-ID` (an order id), the
    /// orders placed since are sent first (up to a hundred).
    pub async fn new_orders(
        self: &Arc<Self>,
        admin: Uuid,
        after: Option<Uuid>,
    ) -> Result<impl Stream<Item = Result<SseEvent, Infallible>>, ApiError> {
        let signals = self.live.subscribe();
        let ticket = self.live.admit(admin)?;
        let mut feed = NewOrders {
            orders: self.clone(),
            signals,
            ready: VecDeque::new(),
            sent: HashSet::new(),
            last: None,
            ends_at: tokio::time::Instant::now() + MAX_STREAM_LIFETIME,
            _ticket: ticket,
        };
        match after {
            Some(after) => feed.read_since(&after.to_string()).await?,
            // From now on: what the newest order is now, so missed wake-ups can be read later.
            None => {
                feed.last = store::newest_order_id(self.db.reader()).await?;
            }
        }
        Ok(stream::unfold(feed, |mut feed| async move {
            loop {
                if let Some(event) = feed.ready.pop_front() {
                    return Some((Ok(event), feed));
                }
                let signal = match tokio::time::timeout_at(feed.ends_at, feed.signals.recv()).await {
                    Ok(signal) => signal,
                    Err(_) => return None,
                };
                match signal {
                    Ok(Signal::Created(data)) => {
                        if let Some((id, event)) = order_summary(&data) {
                            feed.queue(id, event);
                        }
                    }
                    Ok(Signal::Changed(_)) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        // Wake-ups were missed: read what was placed since the last one sent.
                        tracing::debug!(missed, "an admin live feed fell behind; reading new orders again");
                        let after = feed.last.clone().unwrap_or_default();
                        if let Err(err) = feed.read_since(&after).await {
                            tracing::warn!(error = %err, "cannot read new orders for an admin live feed");
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_strictly() {
        assert_eq!(timeline_position(None).unwrap(), 0);
        assert_eq!(timeline_position(Some(" 42 ")).unwrap(), 42);
        assert!(timeline_position(Some("-1")).is_err());
        assert!(timeline_position(Some("x")).is_err());
        assert_eq!(order_position(Some("")).unwrap(), None);
        assert!(order_position(Some("nope")).is_err());
    }

    #[test]
    fn a_user_holds_a_bounded_number_of_streams() {
        let hub = LiveHub::new(8);
        let (ada, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let mut tickets: Vec<StreamTicket> = (0..MAX_STREAMS_PER_USER).map(|_| hub.admit(ada).unwrap()).collect();
        assert!(matches!(hub.admit(ada), Err(ApiError::TooManyRequests { .. })));
        assert!(hub.admit(bob).is_ok(), "others are not affected");
        tickets.pop();
        assert!(hub.admit(ada).is_ok(), "a closed stream frees its place");
    }

    #[tokio::test]
    async fn the_hub_wakes_on_status_changes_and_new_orders_only() {
        let hub = LiveHub::new(8);
        let mut rx = hub.subscribe();
        hub.signal(&Event::new("orders", STATUS_CHANGED, "o-1", json!({}), None));
        hub.signal(&Event::new("orders", "order.paid", "o-1", json!({}), None));
        hub.signal(&Event::new("orders", CREATED, "o-2", json!({"order_id": "o-2"}), None));
        assert!(matches!(rx.recv().await.unwrap(), Signal::Changed(id) if id == "o-1"));
        assert!(matches!(rx.recv().await.unwrap(), Signal::Created(data) if data["order_id"] == "o-2"));
        assert!(rx.try_recv().is_err(), "order.paid is not a wake-up of its own");
    }
}
