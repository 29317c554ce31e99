//! The notifications use cases: the one email an event causes (claimed in the log, rendered,
//! sent, recorded), the inbox entry it adds, the admins' log and template previews, and a
//! user's inbox.
//!
//! Exactly one email per event: the log row `(event id, email)` is claimed before sending,
//! so a redelivered or concurrently delivered event finds it taken or done; a failed attempt
//! leaves it `failed` for the next delivery (the bus's retry, or an admin's replay of the
//! dead letter) to take over.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform::clock::{rfc3339, SharedClock};
use platform::error::ApiError;
use platform::events::Event;
use platform::page::{Page, PageRequest};
use platform::store::{Db, Tx};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{truncate, Audience, Channel, LogStatus, NotificationKind};
use crate::mailer::{MailError, Mailer, OutgoingEmail};
use crate::store::{self, Claim, InboxRow, LogRow, NewAttempt, Outcome};
use crate::templates::{self, RenderContext, Rendered};

pub const SERVICE: &str = "notifications";

/// Longest error kept in the log.
const MAX_ERROR_CHARS: usize = 500;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The sender of every email, e.g. `Mercato <no-reply@mercato.local>`.
    pub from: String,
    /// Where operations alerts (low stock) go. Empty: they are skipped.
    pub operations_email: String,
    /// The shop's public base URL; links in emails are built on it.
    pub public_url: String,
    pub shop_name: String,
    /// An attempt that has held an email for this long without an outcome is taken to have
    /// died with its process, and the next delivery of the event sends instead.
    pub stale_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            from: "Mercato <no-reply@mercato.local>".to_owned(),
            operations_email: "operations@mercato.local".to_owned(),
            public_url: "http://localhost:8080".to_owned(),
            shop_name: "Mercato".to_owned(),
            stale_after: Duration::from_secs(120),
        }
    }
}

/// How to reach a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub email: String,
    pub full_name: String,
}

/// Where contact details come from when an event does not carry them (the identity service).
#[async_trait]
pub trait Directory: Send + Sync {
    /// The user's contact details; `None` for an unknown user. An `Err` is retried.
    async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<Contact>>;
}

/// The notifications service.
pub struct Notifications {
    db: Db,
    clock: SharedClock,
    settings: Settings,
    mailer: Arc<dyn Mailer>,
    directory: Arc<dyn Directory>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("settings", &self.settings)
            .finish()
    }
}

/// What one attempt at an email came to.
enum Attempt {
    Sent {
        recipient: String,
        subject: String,
    },
    Skipped {
        recipient: String,
        reason: String,
    },
    Failed {
        recipient: String,
        subject: String,
        error: String,
    },
}

/// What [`Notifications::send_email`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailOutcome {
    /// The event causes no email.
    NotMine,
    /// An earlier delivery sent (or skipped) it already.
    AlreadyDone,
    Sent,
    /// Nothing to send: no recipient, or an address that cannot be used.
    Skipped,
}

impl Notifications {
    pub fn new(
        db: Db,
        clock: SharedClock,
        settings: Settings,
        mailer: Arc<dyn Mailer>,
        directory: Arc<dyn Directory>,
    ) -> Self {
        Self {
            db,
            clock,
            settings,
            mailer,
            directory,
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn context<'a>(&'a self, recipient_name: Option<&'a str>) -> RenderContext<'a> {
        RenderContext {
            shop_name: &self.settings.shop_name,
            public_url: &self.settings.public_url,
            recipient_name,
        }
    }

    /// Sends the email `event` causes, unless a delivery of it did already. An `Err` means the
    /// attempt failed (recorded in the log) and the event must be delivered again.
    pub async fn send_email(&self, event: &Event) -> anyhow::Result<EmailOutcome> {
        let Some(kind) = NotificationKind::for_event(&event.kind) else {
            return Ok(EmailOutcome::NotMine);
        };
        let event_id = event.id.to_string();
        let channel = Channel::Email.as_str();
        // The claim comes first: a redelivery of a done event ends there (`Claim::Done`),
        // without calling the directory, and a first delivery needs no read before it.
        let user_id = user_id_of(event);
        let now = self.now();
        let id = platform::id::new_id().to_string();
        let stale_ms = i64::try_from(self.settings.stale_after.as_millis()).unwrap_or(i64::MAX);
        let claim = store::claim(
            self.db.writer(),
            &NewAttempt {
                id: &id,
                event_id: &event_id,
                event_type: &event.kind,
                kind: kind.as_str(),
                user_id: user_id.as_deref(),
                channel,
                now,
                stale_before: now.saturating_sub(stale_ms),
            },
        )
        .await?;
        let row = match claim {
            Claim::Won(row) => row,
            Claim::Done(_) => return Ok(EmailOutcome::AlreadyDone),
            Claim::Busy(row) => anyhow::bail!(
                "another delivery of event {event_id} has been sending its email since {}",
                rfc3339(row.updated_at)
            ),
        };
        // An attempt ends well before its claim goes stale, so no other delivery takes the row
        // over (and sends again) while this one may still be talking to the SMTP server.
        let limit = self.settings.stale_after / 2;
        let attempt = match tokio::time::timeout(limit, self.attempt(kind, event)).await {
            Ok(attempt) => attempt,
            Err(_) => Attempt::Failed {
                recipient: String::new(),
                subject: String::new(),
                error: format!("sending took longer than {} s", limit.as_secs()),
            },
        };
        let (status, recipient, subject, error) = match &attempt {
            Attempt::Sent { recipient, subject } => (LogStatus::Sent, recipient.as_str(), subject.as_str(), None),
            Attempt::Skipped { recipient, reason } => {
                (LogStatus::Skipped, recipient.as_str(), "", Some(reason.as_str()))
            }
            Attempt::Failed {
                recipient,
                subject,
                error,
            } => (
                LogStatus::Failed,
                recipient.as_str(),
                subject.as_str(),
                Some(error.as_str()),
            ),
        };
        let held = store::finish(
            self.db.writer(),
            &row.id,
            row.attempts,
            &Outcome {
                status: status.as_str(),
                recipient,
                subject,
                error: error.map(|e| truncate(e, MAX_ERROR_CHARS)),
                now: self.now(),
            },
        )
        .await?;
        if !held {
            tracing::warn!(%event_id, kind = kind.as_str(), "the email's log row was taken over while sending");
        }
        metrics::counter!("mercato_notifications_total", "kind" => kind.as_str(), "status" => status.as_str())
            .increment(1);
        match attempt {
            Attempt::Sent { .. } => Ok(EmailOutcome::Sent),
            Attempt::Skipped { reason, .. } => {
                tracing::info!(%event_id, kind = kind.as_str(), %reason, "email skipped");
                Ok(EmailOutcome::Skipped)
            }
            Attempt::Failed { error, .. } => Err(anyhow::anyhow!(
                "the {} email of event {event_id} failed (attempt {}): {}",
                kind.as_str(),
                row.attempts,
                truncate(&error, MAX_ERROR_CHARS)
            )),
        }
    }

    /// Resolves the recipient, renders and sends.
    async fn attempt(&self, kind: NotificationKind, event: &Event) -> Attempt {
        let (recipient, name) = match self.recipient(kind, event).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Attempt::Skipped {
                    recipient: String::new(),
                    reason: match kind.audience() {
                        Audience::Operations => "no operations address is configured".to_owned(),
                        _ => "no recipient: the event has no address and the user is unknown".to_owned(),
                    },
                }
            }
            Err(err) => {
                return Attempt::Failed {
                    recipient: String::new(),
                    subject: String::new(),
                    error: format!("looking up the recipient: {err:#}"),
                }
            }
        };
        let rendered = match templates::render(kind, &event.data, &self.context(name.as_deref())) {
            Ok(rendered) => rendered,
            Err(err) => {
                return Attempt::Failed {
                    recipient,
                    subject: String::new(),
                    error: err.to_string(),
                }
            }
        };
        let email = OutgoingEmail {
            from: self.settings.from.clone(),
            to: recipient.clone(),
            subject: rendered.subject.clone(),
            html: rendered.html,
            text: rendered.text,
            event_id: event.id,
        };
        match self.mailer.send(&email).await {
            Ok(()) => Attempt::Sent {
                recipient,
                subject: rendered.subject,
            },
            Err(MailError::Invalid(reason)) => Attempt::Skipped { recipient, reason },
            Err(err) => Attempt::Failed {
                recipient,
                subject: rendered.subject,
                error: err.to_string(),
            },
        }
    }

    /// The address to write to and the name to greet: the event's own address when it has
    /// one, else the directory's by the event's user.
    async fn recipient(
        &self,
        kind: NotificationKind,
        event: &Event,
    ) -> anyhow::Result<Option<(String, Option<String>)>> {
        if kind.audience() == Audience::Operations {
            let address = self.settings.operations_email.trim();
            return Ok((!address.is_empty()).then(|| (address.to_owned(), None)));
        }
        let text = |field: &str| {
            event
                .data
                .get(field)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        if let Some(address) = kind.email_field().and_then(text) {
            return Ok(Some((address, text("full_name"))));
        }
        let Some(user_id) = user_id_of(event).and_then(|id| Uuid::parse_str(&id).ok()) else {
            return Ok(None);
        };
        Ok(self
            .directory
            .contact(user_id)
            .await?
            .filter(|contact| !contact.email.trim().is_empty())
            .map(|contact| (contact.email, Some(contact.full_name))))
    }

    /// Adds the inbox entry `event` causes, in the consumer's transaction (so once).
    pub async fn record_inbox(&self, tx: &mut Tx, event: &Event) -> anyhow::Result<()> {
        let Some(kind) = NotificationKind::for_event(&event.kind) else {
            return Ok(());
        };
        if !kind.has_inbox_entry() {
            return Ok(());
        }
        let Some(user_id) = user_id_of(event) else {
            return Ok(());
        };
        let rendered: Rendered = templates::render(kind, &event.data, &self.context(None))?;
        let now = self.now();
        let event_id = event.id.to_string();
        let added = store::insert_inbox(
            tx,
            &InboxRow {
                id: platform::id::new_id().to_string(),
                user_id: user_id.clone(),
                kind: kind.as_str().to_owned(),
                title: rendered.subject.clone(),
                body: rendered.summary,
                link: rendered.link,
                event_id: event_id.clone(),
                created_at: now,
                read_at: None,
            },
        )
        .await?;
        if added {
            store::insert_delivered(
                tx,
                &LogRow {
                    id: platform::id::new_id().to_string(),
                    event_id,
                    event_type: event.kind.clone(),
                    kind: kind.as_str().to_owned(),
                    user_id: Some(user_id.clone()),
                    recipient: user_id,
                    channel: Channel::Inbox.as_str().to_owned(),
                    status: LogStatus::Sent.as_str().to_owned(),
                    attempts: 1,
                    error: None,
                    subject: rendered.subject,
                    created_at: now,
                    updated_at: now,
                    sent_at: Some(now),
                },
            )
            .await?;
        }
        Ok(())
    }

    // ----- admin ----------------------------------------------------------------------------

    /// The notification log, newest first.
    pub async fn log(&self, filter: &LogFilter, page: &PageRequest) -> Result<Page<LogView>, ApiError> {
        let filter = store::LogFilter {
            kind: filter.kind.map(|k| k.as_str().to_owned()),
            status: filter.status.map(|s| s.as_str().to_owned()),
            channel: filter.channel.map(|c| c.as_str().to_owned()),
            recipient: filter.recipient.clone(),
            event_id: filter.event_id.map(|id| id.to_string()),
            user_id: filter.user_id.map(|id| id.to_string()),
        };
        let rows = store::list_log(self.db.reader(), &filter, page.after.as_deref(), page.fetch_limit()).await?;
        let items = rows.into_iter().map(LogView::from_row).collect::<Result<Vec<_>, _>>()?;
        Ok(Page::from_rows(items, page, |view: &LogView| view.id.to_string()))
    }

    /// Every template, with the event it answers.
    pub fn templates(&self) -> Vec<TemplateView> {
        NotificationKind::ALL
            .into_iter()
            .map(|kind| TemplateView {
                kind,
                event_type: kind.event_type().to_owned(),
                audience: match kind.audience() {
                    Audience::Account => "account",
                    Audience::Customer => "customer",
                    Audience::Operations => "operations",
                }
                .to_owned(),
                channels: if kind.has_inbox_entry() {
                    vec![Channel::Email, Channel::Inbox]
                } else {
                    vec![Channel::Email]
                },
            })
            .collect()
    }

    /// `kind` rendered with sample data.
    pub fn preview(&self, kind: NotificationKind) -> PreviewView {
        let rendered = templates::preview(kind, &self.settings.shop_name, &self.settings.public_url);
        PreviewView {
            kind,
            subject: rendered.subject,
            html: rendered.html,
            text: rendered.text,
        }
    }

    // ----- the inbox ------------------------------------------------------------------------

    /// A user's inbox, newest first, with their unread count.
    pub async fn inbox(&self, user: Uuid, unread_only: bool, page: &PageRequest) -> Result<InboxPage, ApiError> {
        let user_id = user.to_string();
        let rows = store::list_inbox(
            self.db.reader(),
            &user_id,
            unread_only,
            page.after.as_deref(),
            page.fetch_limit(),
        )
        .await?;
        let items = rows
            .into_iter()
            .map(InboxItem::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let page = Page::from_rows(items, page, |item: &InboxItem| item.id.to_string());
        Ok(InboxPage {
            items: page.items,
            next_cursor: page.next_cursor,
            unread_count: store::unread_count(self.db.reader(), &user_id).await?,
        })
    }

    /// Marks one of the user's entries read; 404 for anyone else's.
    pub async fn mark_read(&self, user: Uuid, id: Uuid) -> Result<InboxItem, ApiError> {
        self.set_read(user, id, Some(self.now())).await
    }

    /// Marks one of the user's entries unread; 404 for anyone else's.
    pub async fn mark_unread(&self, user: Uuid, id: Uuid) -> Result<InboxItem, ApiError> {
        self.set_read(user, id, None).await
    }

    async fn set_read(&self, user: Uuid, id: Uuid, at: Option<i64>) -> Result<InboxItem, ApiError> {
        let row = store::set_read(self.db.writer(), &user.to_string(), &id.to_string(), at)
            .await?
            .ok_or_else(|| ApiError::not_found("notification"))?;
        InboxItem::from_row(row)
    }

    /// Marks every unread entry of the user read; answers how many.
    pub async fn read_all(&self, user: Uuid) -> Result<u64, ApiError> {
        Ok(store::read_all(self.db.writer(), &user.to_string(), self.now()).await?)
    }
}

/// The event's `user_id`, when it is one.
fn user_id_of(event: &Event) -> Option<String> {
    event
        .data
        .get("user_id")
        .and_then(serde_json::Value::as_str)
        .and_then(|raw| Uuid::parse_str(raw).ok())
        .map(|id| id.to_string())
}

fn parse_stored<T>(what: &str, raw: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, ApiError> {
    parse(raw).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("unknown {what} {raw:?} in the store")))
}

fn parse_stored_id(raw: &str) -> Result<Uuid, ApiError> {
    parse_stored("id", raw, platform::id::parse_id)
}

/// Which log rows an admin asks for.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub kind: Option<NotificationKind>,
    pub status: Option<LogStatus>,
    pub channel: Option<Channel>,
    pub recipient: Option<String>,
    pub event_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
}

/// One notification as the log has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LogView {
    pub id: Uuid,
    pub event_id: String,
    pub event_type: String,
    pub kind: NotificationKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Uuid>,
    /// The email address, or the user id for the inbox; empty if no attempt resolved one.
    pub recipient: String,
    pub channel: Channel,
    pub status: LogStatus,
    /// Attempts made so far.
    pub attempts: i64,
    /// Why the last attempt failed, or why nothing was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub subject: String,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
}

impl LogView {
    fn from_row(row: LogRow) -> Result<Self, ApiError> {
        Ok(Self {
            id: parse_stored_id(&row.id)?,
            kind: parse_stored("kind", &row.kind, NotificationKind::parse)?,
            user_id: row.user_id.as_deref().map(parse_stored_id).transpose()?,
            channel: parse_stored("channel", &row.channel, Channel::parse)?,
            status: parse_stored("status", &row.status, LogStatus::parse)?,
            event_id: row.event_id,
            event_type: row.event_type,
            recipient: row.recipient,
            attempts: row.attempts,
            error: row.error,
            subject: row.subject,
            created_at: rfc3339(row.created_at),
            updated_at: rfc3339(row.updated_at),
            sent_at: row.sent_at.map(rfc3339),
        })
    }
}

/// A template and the event it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct TemplateView {
    pub kind: NotificationKind,
    pub event_type: String,
    /// `account`, `customer` or `operations`.
    pub audience: String,
    pub channels: Vec<Channel>,
}

/// A template rendered with sample data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PreviewView {
    pub kind: NotificationKind,
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// An entry of a user's in-app inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct InboxItem {
    pub id: Uuid,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    /// A path below the shop's URL, e.g. `/orders/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub read: bool,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
    pub created_at: String,
}

impl InboxItem {
    fn from_row(row: InboxRow) -> Result<Self, ApiError> {
        Ok(Self {
            id: parse_stored_id(&row.id)?,
            kind: parse_stored("kind", &row.kind, NotificationKind::parse)?,
            title: row.title,
            body: row.body,
            link: row.link,
            read: row.read_at.is_some(),
            read_at: row.read_at.map(rfc3339),
            created_at: rfc3339(row.created_at),
        })
    }
}

/// A page of the inbox and how many entries are unread in all.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxPage {
    pub items: Vec<InboxItem>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    pub unread_count: i64,
}
