//! The bus on NATS JetStream, for the distributed mode.
//!
//! One stream holds every event under `<prefix>.<event type>`; publishing sets `Nats-Msg-Id`
//! to the event id, so the stream drops a duplicate publish (the outbox relay may publish twice
//! after a crash). Each consumer group is a durable pull consumer; a message is acknowledged
//! after the handler succeeds, negatively acknowledged with a backoff when it fails, and
//! dead-lettered and acknowledged when it has failed on its last allowed delivery.
//!
//! The server here (2.9) takes one filter subject per consumer, so a group that wants several
//! types filters on `<prefix>.>` and acknowledges the others unseen.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_trait::async_trait;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Bus, Subscription};
use crate::events::Event;

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub url: String,
    /// The JetStream stream name (tests use a fresh one each).
    pub stream: String,
    /// The subject prefix events are published under.
    pub subject_prefix: String,
    /// How long the server waits for an acknowledgement before redelivering (a crashed consumer).
    pub ack_wait: Duration,
}

impl NatsConfig {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            stream: "MERCATO_EVENTS".to_owned(),
            subject_prefix: "mercato.events".to_owned(),
            ack_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: NatsConfig,
    groups: Arc<Mutex<HashSet<String>>>,
    cancel: CancellationToken,
}

impl NatsBus {
    /// Connects and creates the stream if it does not exist (idempotent).
    pub async fn connect(config: NatsConfig, cancel: CancellationToken) -> anyhow::Result<Self> {
        let client = async_nats::connect(&config.url)
            .await
            .context("cannot connect to NATS")?;
        let jetstream = jetstream::new(client.clone());
        jetstream
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .context("cannot create the JetStream stream")?;
        Ok(Self {
            client,
            jetstream,
            config,
            groups: Arc::default(),
            cancel,
        })
    }

    fn subject(&self, kind: &str) -> String {
        format!("{}.{kind}", self.config.subject_prefix)
    }

    async fn run(self, subscription: Subscription, consumer: consumer::Consumer<consumer::pull::Config>) {
        let group = subscription.group.clone();
        loop {
            let mut messages = match consumer.messages().await {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(%group, error = %err, "cannot pull from JetStream; retrying");
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    () = self.cancel.cancelled() => return,
                    next = messages.next() => next,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(err)) => {
                        tracing::warn!(%group, error = %err, "JetStream pull failed");
                        continue;
                    }
                    None => break,
                };
                if let Err(err) = self.handle(&subscription, &message).await {
                    tracing::warn!(%group, error = %format!("{err:#}"), "cannot acknowledge a JetStream message");
                }
            }
        }
    }

    async fn handle(&self, subscription: &Subscription, message: &jetstream::Message) -> anyhow::Result<()> {
        let ack = |kind| async move { message.ack_with(kind).await.map_err(|err| anyhow::anyhow!(err)) };
        let event = match std::str::from_utf8(&message.payload)
            .map_err(anyhow::Error::from)
            .and_then(|raw| Ok(Event::from_json(raw)?))
        {
            Ok(event) => event,
            Err(err) => {
                tracing::error!(group = %subscription.group, error = %err, "unreadable event on the bus terminated");
                return ack(AckKind::Term).await;
            }
        };
        if !subscription.wants(&event.kind) {
            return ack(AckKind::Ack).await;
        }
        let attempt = message.info().map(|info| info.delivered).unwrap_or(1).max(1) as u32;
        match subscription.handler.deliver(&event).await {
            Ok(()) => ack(AckKind::Ack).await,
            Err(err) if attempt >= subscription.retry.max_attempts => {
                let error = format!("{err:#}");
                tracing::warn!(group = %subscription.group, event_id = %event.id, event_type = %event.kind, %error, attempts = attempt, "event dead-lettered");
                metrics::counter!("mercato_dead_letters_total", "group" => subscription.group.clone()).increment(1);
                match subscription.handler.dead_letter(&event, &error, attempt).await {
                    Ok(()) => ack(AckKind::Ack).await,
                    Err(err) => {
                        // Not acknowledged: the server delivers it again and we retry the dead letter.
                        tracing::error!(group = %subscription.group, error = %format!("{err:#}"), "cannot record a dead letter");
                        ack(AckKind::Nak(Some(subscription.retry.backoff(attempt)))).await
                    }
                }
            }
            Err(err) => {
                tracing::debug!(group = %subscription.group, event_id = %event.id, error = %format!("{err:#}"), attempt, "event delivery failed; retrying");
                ack(AckKind::Nak(Some(subscription.retry.backoff(attempt)))).await
            }
        }
    }
}

impl NatsBus {
    /// Sends one event; the returned future resolves when the server has stored it.
    async fn send(&self, event: &Event) -> anyhow::Result<jetstream::context::PublishAckFuture> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        self.jetstream
            .publish_with_headers(self.subject(&event.kind), headers, event.to_json().into())
            .await
            .context("JetStream publish failed")
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, event: &Event) -> anyhow::Result<()> {
        self.send(event)
            .await?
            .await
            .context("JetStream did not acknowledge the publish")?;
        Ok(())
    }

    /// Sends the whole batch, then waits for the acknowledgements in order: one round trip
    /// of waiting instead of one per event. The server stores the messages in the order they
    /// were sent; one it already has (by `Nats-Msg-Id`) is acknowledged as a duplicate.
    async fn publish_all(&self, events: &[Event]) -> (usize, anyhow::Result<()>) {
        let mut pending = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in events {
            match self.send(event).await {
                Ok(ack) => pending.push(ack),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let sent = pending.len();
        for (acknowledged, ack) in pending.into_iter().enumerate() {
            if let Err(err) = ack.await {
                let err = anyhow::Error::new(err).context("JetStream did not acknowledge the publish");
                return (acknowledged, Err(err));
            }
        }
        (sent, failure.map_or(Ok(()), Err))
    }

    async fn subscribe(&self, subscription: Subscription) -> anyhow::Result<()> {
        super::claim_group(&self.groups, &subscription.group)?;
        let filter_subject = match subscription.types.as_slice() {
            [only] if only != "*" => self.subject(only),
            _ => format!("{}.>", self.config.subject_prefix),
        };
        let stream = self
            .jetstream
            .get_stream(&self.config.stream)
            .await
            .context("JetStream stream missing")?;
        let config = consumer::pull::Config {
            durable_name: Some(subscription.group.clone()),
            filter_subject,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait,
            // Unlimited: our own limit dead-letters the event on its last attempt, and
            // if recording the dead letter fails the event must come back, not vanish.
            max_deliver: -1,
            ..Default::default()
        };
        // A new version may subscribe a group to other event types (a wider filter). The
        // durable consumer of the old version keeps its filter, so it is replaced by one that
        // starts right after the last event the old one had acknowledged throughout; what lies
        // between comes again, and consumers are idempotent.
        if let Ok(info) = stream.consumer_info(&subscription.group).await {
            if info.config.filter_subject != config.filter_subject {
                let start_sequence = info.ack_floor.stream_sequence + 1;
                tracing::info!(
                    group = %subscription.group,
                    from = %info.config.filter_subject,
                    to = %config.filter_subject,
                    start_sequence,
                    "the consumer's event types changed; replacing its JetStream consumer"
                );
                stream
                    .delete_consumer(&subscription.group)
                    .await
                    .context("cannot replace the JetStream consumer")?;
                stream
                    .create_consumer(consumer::pull::Config {
                        deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence },
                        ..config.clone()
                    })
                    .await
                    .context("cannot replace the JetStream consumer")?;
            }
        }
        let consumer = stream
            .get_or_create_consumer(&subscription.group, config)
            .await
            .context("cannot create the JetStream consumer")?;
        tokio::spawn(self.clone().run(subscription, consumer));
        Ok(())
    }

    /// A core NATS subscription per watched subject: JetStream's publishes are ordinary NATS
    /// messages too, so every process that subscribes receives each one live, and nothing is
    /// stored for it.
    async fn watch(&self, types: Vec<String>, handler: Arc<dyn super::Delivery>) -> anyhow::Result<()> {
        let subjects: Vec<String> = if types.iter().any(|t| t == "*") {
            vec![format!("{}.>", self.config.subject_prefix)]
        } else {
            types.iter().map(|t| self.subject(t)).collect()
        };
        for subject in subjects {
            let mut subscriber = self
                .client
                .subscribe(subject.clone())
                .await
                .with_context(|| format!("cannot watch {subject}"))?;
            let (handler, cancel) = (handler.clone(), self.cancel.clone());
            tokio::spawn(async move {
                loop {
                    let message = tokio::select! {
                        () = cancel.cancelled() => return,
                        message = subscriber.next() => message,
                    };
                    let Some(message) = message else { return };
                    let event = match std::str::from_utf8(&message.payload)
                        .map_err(anyhow::Error::from)
                        .and_then(|raw| Ok(Event::from_json(raw)?))
                    {
                        Ok(event) => event,
                        Err(err) => {
                            tracing::debug!(%subject, error = %err, "unreadable event on a watched subject");
                            continue;
                        }
                    };
                    if let Err(err) = handler.deliver(&event).await {
                        tracing::debug!(%subject, error = %format!("{err:#}"), "a watcher failed");
                    }
                }
            });
        }
        Ok(())
    }

    async fn ping(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.client.connection_state() == async_nats::connection::State::Connected,
            "not connected to NATS"
        );
        Ok(())
    }
}
