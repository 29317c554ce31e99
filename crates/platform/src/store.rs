//! The relational store every service uses: one [`Db`] handle over SQLite or PostgreSQL with
//! the same SQL, and a small migrator with one migration set per service.
//!
//! Why sqlx's `Any` driver and not an ORM: every query is plain SQL that both engines accept
//! (`$1` placeholders, `ON CONFLICT`, `RETURNING`), so the one code path is exercised by the
//! SQLite and PostgreSQL conformance suites alike, and builds stay small. Portable column
//! types only: ids are TEXT (UUIDv7 strings), instants are BIGINT unix milliseconds, flags are
//! nullable instants (`disabled_at`) rather than booleans.
//!
//! SQLite allows one writer at a time. Instead of letting connections fight over the lock
//! (`SQLITE_BUSY`), a SQLite [`Db`] has a writer pool of exactly one connection, used for
//! every transaction, and a reader pool for plain reads; WAL lets readers run beside it.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Executor};

pub type Tx = sqlx::Transaction<'static, Any>;

/// A pooled connection idle longer than this is pinged before it is handed out; one in steady
/// use is not. sqlx's default pings on every acquire: a round trip to the SQLite worker thread
/// or the PostgreSQL server before each query, which was a third of a cart read's cost.
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(5);

/// Pool options shared by both backends: the ping only after idling (above).
fn pool_options(max_connections: u32, acquire_timeout: Duration) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_WHEN_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend of an open connection or transaction (`None` for one Mercato does not use).
    pub fn of(connection: &sqlx::AnyConnection) -> Option<Self> {
        match connection.backend_name() {
            "SQLite" => Some(Self::Sqlite),
            "PostgreSQL" => Some(Self::Postgres),
            _ => None,
        }
    }
}

/// Pool sizes and timeouts.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// PostgreSQL only: the schema to put first on the search path (tests use one per test).
    pub search_path: Option<String>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            search_path: None,
        }
    }
}

/// A service's database.
#[derive(Clone, Debug)]
pub struct Db {
    writer: AnyPool,
    reader: AnyPool,
    backend: Backend,
    /// Tells databases apart: clones of one `Db` share it.
    instance: u64,
}

static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_instance() -> u64 {
    NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Db {
    /// Connects to `url`: `sqlite://path/to/file.db` (created if missing) or `postgres://…`.
    pub async fn connect(url: &str, options: &DbOptions) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, options).await
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Self::connect_postgres(url, options).await
        } else {
            anyhow::bail!("unsupported database URL scheme (expected sqlite: or postgres:)")
        }
    }

    async fn connect_sqlite(url: &str, options: &DbOptions) -> anyhow::Result<Self> {
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        let connect = AnyConnectOptions::from_str(&url).context("invalid SQLite URL")?;
        let pool = |max: u32| {
            pool_options(max, options.acquire_timeout)
                .min_connections(1)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                             PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
                             PRAGMA temp_store = MEMORY;",
                        )
                        .await?;
                        Ok(())
                    })
                })
                .connect_with(connect.clone())
        };
        let writer = pool(1).await.context("cannot open the SQLite database")?;
        let reader = pool(options.max_connections.clamp(1, 8))
            .await
            .context("cannot open the SQLite database")?;
        Ok(Self {
            writer,
            reader,
            backend: Backend::Sqlite,
            instance: next_instance(),
        })
    }

    async fn connect_postgres(url: &str, options: &DbOptions) -> anyhow::Result<Self> {
        let connect = AnyConnectOptions::from_str(url).context("invalid PostgreSQL URL")?;
        let search_path = options.search_path.clone();
        let pool = pool_options(options.max_connections, options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                let search_path = search_path.clone();
                Box::pin(async move {
                    if let Some(schema) = search_path {
                        conn.execute(format!("SET search_path TO \"{schema}\"").as_str())
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect)
            .await
            .context("cannot connect to PostgreSQL")?;
        Ok(Self {
            writer: pool.clone(),
            reader: pool,
            backend: Backend::Postgres,
            instance: next_instance(),
        })
    }

    /// True when both handles are clones of one connected database.
    pub fn same_as(&self, other: &Db) -> bool {
        self.instance == other.instance
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads outside a transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// The pool for single-statement writes outside a transaction.
    pub fn writer(&self) -> &AnyPool {
        &self.writer
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.writer.begin().await
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map(|_| ())
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    /// Applies the migrations of `scope` not yet applied, each in its own transaction, in
    /// version order. Concurrent migrators on PostgreSQL wait for each other.
    pub async fn migrate(&self, scope: &str, migrations: &[Migration]) -> anyhow::Result<()> {
        let mut conn = self.writer.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock(72707369)")
                .execute(&mut *conn)
                .await?;
        }
        let result = self.migrate_locked(&mut conn, scope, migrations).await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock(72707369)")
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn migrate_locked(
        &self,
        conn: &mut sqlx::pool::PoolConnection<Any>,
        scope: &str,
        migrations: &[Migration],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS _mercato_migrations (
                scope TEXT NOT NULL,
                version BIGINT NOT NULL,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL,
                PRIMARY KEY (scope, version))",
        )
        .execute(&mut **conn)
        .await?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _mercato_migrations WHERE scope = $1")
            .bind(scope)
            .fetch_all(&mut **conn)
            .await?;
        let mut pending: Vec<&Migration> = migrations.iter().filter(|m| !applied.contains(&m.version)).collect();
        pending.sort_by_key(|m| m.version);
        for migration in pending {
            let sql = match self.backend {
                Backend::Postgres => migration
                    .postgres
                    .unwrap_or(migration.sql)
                    .replace(SERIAL_KEY, "BIGSERIAL PRIMARY KEY"),
                Backend::Sqlite => migration.sql.replace(SERIAL_KEY, "INTEGER PRIMARY KEY AUTOINCREMENT"),
            };
            let mut tx = sqlx::Connection::begin(&mut **conn).await?;
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("migration {scope}/{} `{}` failed", migration.version, migration.name))?;
            }
            sqlx::query("INSERT INTO _mercato_migrations (scope, version, name, applied_at) VALUES ($1, $2, $3, $4)")
                .bind(scope)
                .bind(migration.version)
                .bind(migration.name)
                .bind(crate::clock::now_ms())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(
                scope,
                version = migration.version,
                name = migration.name,
                "migration applied"
            );
        }
        Ok(())
    }
}

/// `$first, $first+1, …` for `n` values: the placeholders of an `IN (…)` list or a multi-row
/// `VALUES`, in the `$N` form both SQLite and PostgreSQL accept.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows (or keys) per multi-row statement: at up to 60 columns, under the bind limits of SQLite
/// (32,766) and PostgreSQL (65,535).
pub const ROWS_PER_STATEMENT: usize = 500;

/// `($1, …, $columns), ($columns+1, …)` for `rows` rows: the `VALUES` of a multi-row `INSERT`
/// whose values are bound row by row.
pub fn value_rows(rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|i| format!("({})", placeholders(i * columns + 1, columns)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The strings of a JSON array bound at `param` (`serde_json::to_string(&values)`), as a
/// subquery for `IN (…)`. The SQL text is the same whatever the number of values, so the
/// statement is prepared and planned once per connection rather than once per length.
///
/// ```
/// # use platform::store::{json_values, Backend};
/// assert_eq!(json_values(Backend::Sqlite, "$1"), "SELECT value FROM json_each($1)");
/// assert_eq!(json_values(Backend::Postgres, "$1"), "SELECT json_array_elements_text($1::json)");
/// ```
pub fn json_values(backend: Backend, param: &str) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT value FROM json_each({param})"),
        Backend::Postgres => format!("SELECT json_array_elements_text({param}::json)"),
    }
}

/// A value bound to a query built at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
}

/// The conditions of a filtered list, added one at a time with their values, which are
/// numbered `$1, $2, …` in the order they are bound.
///
/// ```
/// # use platform::store::{Conditions, SqlValue};
/// let mut c = Conditions::default();
/// c.push("status = ?", SqlValue::Text("paid".into()));
/// let id = c.bind(SqlValue::Text("0190".into()));
/// c.add(format!("id < {id}"));
/// let limit = c.bind(SqlValue::Int(20));
/// assert_eq!(format!("{} LIMIT {limit}", c.where_sql()), "WHERE status = $1 AND id < $2 LIMIT $3");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<SqlValue>,
}

impl Conditions {
    /// Binds `value` and answers its placeholder, for a condition (or a `LIMIT`) written by hand.
    pub fn bind(&mut self, value: SqlValue) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    /// Adds a condition that binds nothing, or whose placeholders came from [`Self::bind`].
    pub fn add(&mut self, clause: impl Into<String>) {
        self.clauses.push(clause.into());
    }

    /// Adds `clause`, whose one `?` stands for `value`.
    pub fn push(&mut self, clause: &str, value: SqlValue) {
        let placeholder = self.bind(value);
        self.add(clause.replacen('?', &placeholder, 1));
    }

    /// `column IN (…)` over `values`; nothing when there are none.
    pub fn push_in(&mut self, column: &str, values: impl IntoIterator<Item = SqlValue>) {
        let marks: Vec<String> = values.into_iter().map(|v| self.bind(v)).collect();
        if !marks.is_empty() {
            self.add(format!("{column} IN ({})", marks.join(", ")));
        }
    }

    /// `WHERE a AND b …`, or nothing when no condition was added.
    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The bound values, for `sqlx::query_as_with`.
    pub fn into_arguments(self) -> sqlx::any::AnyArguments<'static> {
        use sqlx::Arguments;
        let mut arguments = sqlx::any::AnyArguments::default();
        for value in self.values {
            // Adding a String or an i64 to `Any` arguments cannot fail.
            let _ = match value {
                SqlValue::Text(v) => arguments.add(v),
                SqlValue::Int(v) => arguments.add(v),
            };
        }
        arguments
    }
}

/// Written in a migration where an auto-incrementing 64-bit key is wanted; each engine gets its
/// own spelling (`INTEGER PRIMARY KEY AUTOINCREMENT`, `BIGSERIAL PRIMARY KEY`).
pub const SERIAL_KEY: &str = "SERIAL_KEY";

/// One schema change. `sql` holds `;`-separated statements (no `;` inside literals);
/// `postgres` replaces it on PostgreSQL where the dialects differ beyond [`SERIAL_KEY`].
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
    pub postgres: Option<&'static str>,
}

/// True when a database error is a unique-constraint violation (SQLite and PostgreSQL).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c == "23505" || c == "2067" || c == "1555")
                || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}
