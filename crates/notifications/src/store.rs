//! The notifications tables and queries. One SQL text serves SQLite and PostgreSQL.
//!
//! `notification_log` has one row per event and channel (`UNIQUE (event_id, channel)`): the
//! row is the claim on sending. An attempt takes it by inserting it (`ON CONFLICT DO NOTHING`)
//! or by one conditional `UPDATE` of a failed or abandoned row, so two deliveries of one event
//! never both send. `inbox` has one entry per event (`event_id UNIQUE`), listed per user
//! newest first by id (UUIDv7, so creation order) through the `(user_id, id)` index.

use platform::store::{Conditions, Migration, SqlValue, Tx};
use sqlx::{AnyPool, FromRow};

use crate::domain::LogStatus;

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "notification log and inbox",
    sql: "CREATE TABLE notification_log (
            id TEXT PRIMARY KEY,
            event_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            kind TEXT NOT NULL,
            user_id TEXT,
            recipient TEXT NOT NULL,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts BIGINT NOT NULL,
            error TEXT,
            subject TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            sent_at BIGINT,
            UNIQUE (event_id, channel),
            CHECK (channel IN ('email', 'inbox')),
            CHECK (status IN ('sending', 'sent', 'failed', 'skipped')));
          CREATE INDEX notification_log_kind ON notification_log (kind, id);
          CREATE INDEX notification_log_status ON notification_log (status, id);
          CREATE INDEX notification_log_recipient ON notification_log (recipient, id);
          CREATE INDEX notification_log_user ON notification_log (user_id, id);
          CREATE TABLE inbox (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            title TEXT NOT NULL,
            body TEXT NOT NULL,
            link TEXT,
            event_id TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            read_at BIGINT);
          CREATE INDEX inbox_user ON inbox (user_id, id)",
    postgres: None,
}];

// ----- the notification log -----------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct LogRow {
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub kind: String,
    /// The user the notification is about, when there is one (not for operations alerts).
    pub user_id: Option<String>,
    /// The address (email) or the user id (inbox); empty until an attempt resolved it.
    pub recipient: String,
    /// `email` or `inbox`.
    pub channel: String,
    /// `sending`, `sent`, `failed` or `skipped`.
    pub status: String,
    /// Attempts started, the current one included.
    pub attempts: i64,
    /// Why the last attempt failed, or why nothing was sent.
    pub error: Option<String>,
    pub subject: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub sent_at: Option<i64>,
}

const LOG_COLUMNS: &str = "id, event_id, event_type, kind, user_id, recipient, channel, status, attempts, error, \
     subject, created_at, updated_at, sent_at";

/// What an attempt to send knows before it starts.
#[derive(Debug, Clone, Copy)]
pub struct NewAttempt<'a> {
    pub id: &'a str,
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub kind: &'a str,
    pub user_id: Option<&'a str>,
    pub channel: &'a str,
    pub now: i64,
    /// A `sending` row last touched before this is taken to be abandoned (its process died).
    pub stale_before: i64,
}

/// What [`claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This attempt holds the row (now `sending`) and must send, then record the outcome.
    Won(LogRow),
    /// Sent or skipped already: nothing to do.
    Done(LogRow),
    /// Another attempt is sending right now.
    Busy(LogRow),
}

/// Claims the right to send `attempt`'s notification: inserts its row as `sending`, or takes
/// over a `failed` row or an abandoned `sending` one with one conditional update. Of
/// concurrent claims, exactly one wins.
pub async fn claim(pool: &AnyPool, attempt: &NewAttempt<'_>) -> Result<Claim, sqlx::Error> {
    let inserted: Option<LogRow> = sqlx::query_as(&format!(
        "INSERT INTO notification_log ({LOG_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, '', $6, 'sending', 1, NULL, '', $7, $7, NULL)
         ON CONFLICT (event_id, channel) DO NOTHING
         RETURNING {LOG_COLUMNS}"
    ))
    .bind(attempt.id)
    .bind(attempt.event_id)
    .bind(attempt.event_type)
    .bind(attempt.kind)
    .bind(attempt.user_id)
    .bind(attempt.channel)
    .bind(attempt.now)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = inserted {
        return Ok(Claim::Won(row));
    }
    let taken: Option<LogRow> = sqlx::query_as(&format!(
        "UPDATE notification_log SET status = 'sending', attempts = attempts + 1, updated_at = $3
         WHERE event_id = $1 AND channel = $2
           AND (status = 'failed' OR (status = 'sending' AND updated_at < $4))
         RETURNING {LOG_COLUMNS}"
    ))
    .bind(attempt.event_id)
    .bind(attempt.channel)
    .bind(attempt.now)
    .bind(attempt.stale_before)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = taken {
        return Ok(Claim::Won(row));
    }
    let current = log_entry(pool, attempt.event_id, attempt.channel)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok(if LogStatus::parse(&current.status).is_some_and(LogStatus::is_final) {
        Claim::Done(current)
    } else {
        Claim::Busy(current)
    })
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// `sent`, `failed` or `skipped`.
    pub status: &'a str,
    pub recipient: &'a str,
    pub subject: &'a str,
    pub error: Option<&'a str>,
    pub now: i64,
}

/// Records how the attempt holding the row (`sending`) ended; `false` when the row was no
/// longer held (taken over as abandoned meanwhile).
pub async fn finish(pool: &AnyPool, row_id: &str, attempts: i64, outcome: &Outcome<'_>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE notification_log SET status = $3, recipient = $4, subject = $5, error = $6, updated_at = $7,
           sent_at = CASE WHEN $3 = 'sent' THEN $7 ELSE sent_at END
         WHERE id = $1 AND attempts = $2 AND status = 'sending'",
    )
    .bind(row_id)
    .bind(attempts)
    .bind(outcome.status)
    .bind(outcome.recipient)
    .bind(outcome.subject)
    .bind(outcome.error)
    .bind(outcome.now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a notification delivered inside the consumer's transaction (the inbox), once.
pub async fn insert_delivered(tx: &mut Tx, row: &LogRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "INSERT INTO notification_log ({LOG_COLUMNS})
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (event_id, channel) DO NOTHING"
    ))
    .bind(&row.id)
    .bind(&row.event_id)
    .bind(&row.event_type)
    .bind(&row.kind)
    .bind(&row.user_id)
    .bind(&row.recipient)
    .bind(&row.channel)
    .bind(&row.status)
    .bind(row.attempts)
    .bind(&row.error)
    .bind(&row.subject)
    .bind(row.created_at)
    .bind(row.updated_at)
    .bind(row.sent_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn log_entry(pool: &AnyPool, event_id: &str, channel: &str) -> Result<Option<LogRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {LOG_COLUMNS} FROM notification_log WHERE event_id = $1 AND channel = $2"
    ))
    .bind(event_id)
    .bind(channel)
    .fetch_optional(pool)
    .await
}

/// Which log rows an admin list shows.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub kind: Option<String>,
    pub status: Option<String>,
    pub channel: Option<String>,
    pub recipient: Option<String>,
    pub event_id: Option<String>,
    pub user_id: Option<String>,
}

/// A page of log rows, newest first (ids are UUIDv7), before the id `before`.
pub async fn list_log(
    pool: &AnyPool,
    filter: &LogFilter,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<LogRow>, sqlx::Error> {
    let mut c = Conditions::default();
    for (column, value) in [
        ("kind", &filter.kind),
        ("status", &filter.status),
        ("channel", &filter.channel),
        ("recipient", &filter.recipient),
        ("event_id", &filter.event_id),
        ("user_id", &filter.user_id),
    ] {
        if let Some(value) = value {
            c.push(&format!("{column} = ?"), SqlValue::Text(value.clone()));
        }
    }
    if let Some(before) = before {
        c.push("id < ?", SqlValue::Text(before.to_owned()));
    }
    let limit = c.bind(SqlValue::Int(limit));
    let sql = format!(
        "SELECT {LOG_COLUMNS} FROM notification_log {} ORDER BY id DESC LIMIT {limit}",
        c.where_sql()
    );
    sqlx::query_as_with(&sql, c.into_arguments()).fetch_all(pool).await
}

// ----- the inbox ----------------------------------------------------------------------------

#[derive(Debug, Clone, FromRow, PartialEq, Eq)]
pub struct InboxRow {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    pub title: String,
    pub body: String,
    /// A path below the shop's public URL, e.g. `/orders/{id}`.
    pub link: Option<String>,
    pub event_id: String,
    pub created_at: i64,
    pub read_at: Option<i64>,
}

const INBOX_COLUMNS: &str = "id, user_id, kind, title, body, link, event_id, created_at, read_at";

/// Adds an inbox entry unless the event already made one; `true` when added.
pub async fn insert_inbox(tx: &mut Tx, row: &InboxRow) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(&format!(
        "INSERT INTO inbox ({INBOX_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (event_id) DO NOTHING"
    ))
    .bind(&row.id)
    .bind(&row.user_id)
    .bind(&row.kind)
    .bind(&row.title)
    .bind(&row.body)
    .bind(&row.link)
    .bind(&row.event_id)
    .bind(row.created_at)
    .bind(row.read_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A page of a user's inbox, newest first, before the id `before`.
pub async fn list_inbox(
    pool: &AnyPool,
    user_id: &str,
    unread_only: bool,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<InboxRow>, sqlx::Error> {
    let unread = if unread_only { " AND read_at IS NULL" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {INBOX_COLUMNS} FROM inbox WHERE user_id = $1{unread} AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT {limit}"
    ))
    .bind(user_id)
    .bind(before)
    .fetch_all(pool)
    .await
}

pub async fn unread_count(pool: &AnyPool, user_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE user_id = $1 AND read_at IS NULL")
        .bind(user_id)
        .fetch_one(pool)
        .await
}

/// Marks one of the user's entries read (keeping the first reading time) or unread (`at:
/// None`). `None` when the user has no such entry.
pub async fn set_read(
    pool: &AnyPool,
    user_id: &str,
    id: &str,
    at: Option<i64>,
) -> Result<Option<InboxRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE inbox SET read_at = CASE WHEN $3 IS NULL THEN NULL ELSE COALESCE(read_at, $3) END
         WHERE id = $1 AND user_id = $2 RETURNING {INBOX_COLUMNS}"
    ))
    .bind(id)
    .bind(user_id)
    .bind(at)
    .fetch_optional(pool)
    .await
}

/// Marks every unread entry of the user read; answers how many.
pub async fn read_all(pool: &AnyPool, user_id: &str, at: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE inbox SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL")
        .bind(user_id)
        .bind(at)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
