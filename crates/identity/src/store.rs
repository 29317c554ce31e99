//! Identity's tables and the queries on them (the signing-key queries live with the keys, in
//! `keys.rs`).

use platform::store::{Migration, Tx};
use sqlx::{AnyPool, FromRow};

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "users, sessions, one-time tokens, addresses, signing keys",
    sql: "CREATE TABLE users (
            id TEXT PRIMARY KEY,
            email TEXT NOT NULL UNIQUE,
            full_name TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            email_verified_at BIGINT,
            disabled_at BIGINT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            version BIGINT NOT NULL);
          CREATE INDEX users_role ON users (role);
          CREATE TABLE refresh_tokens (
            id TEXT PRIMARY KEY,
            family_id TEXT NOT NULL,
            user_id TEXT NOT NULL REFERENCES users (id),
            token_hash TEXT NOT NULL UNIQUE,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT,
            revoked_at BIGINT);
          CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
          CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
          CREATE TABLE one_time_tokens (
            token_hash TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id),
            purpose TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            used_at BIGINT);
          CREATE INDEX one_time_tokens_user ON one_time_tokens (user_id, purpose);
          CREATE TABLE addresses (
            id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users (id),
            label TEXT,
            full_name TEXT NOT NULL,
            phone TEXT,
            line1 TEXT NOT NULL,
            line2 TEXT,
            city TEXT NOT NULL,
            region TEXT,
            postal_code TEXT NOT NULL,
            country TEXT NOT NULL,
            is_default BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL);
          CREATE INDEX addresses_user ON addresses (user_id);
          CREATE UNIQUE INDEX addresses_one_default ON addresses (user_id) WHERE is_default = 1;
          CREATE TABLE signing_keys (
            kid TEXT PRIMARY KEY,
            private_pkcs8 TEXT NOT NULL,
            public_key TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            retired_at BIGINT)",
    postgres: None,
}];

#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub full_name: String,
    pub password_hash: String,
    pub role: String,
    pub email_verified_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: i64,
}

const USER_COLUMNS: &str =
    "id, email, full_name, password_hash, role, email_verified_at, disabled_at, created_at, updated_at, version";

pub async fn insert_user(tx: &mut Tx, user: &UserRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&user.id)
    .bind(&user.email)
    .bind(&user.full_name)
    .bind(&user.password_hash)
    .bind(&user.role)
    .bind(user.email_verified_at)
    .bind(user.disabled_at)
    .bind(user.created_at)
    .bind(user.updated_at)
    .bind(user.version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn user_by_email(pool: &AnyPool, email: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"))
        .bind(email)
        .fetch_optional(pool)
        .await
}

pub async fn user_by_id(pool: &AnyPool, id: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn user_by_id_tx(tx: &mut Tx, id: &str) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
}

pub async fn admin_exists(pool: &AnyPool) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin'")
        .fetch_one(pool)
        .await?;
    Ok(n > 0)
}

/// Users ordered by id (creation order), after the cursor, optionally whose email contains `search`.
pub async fn list_users(
    pool: &AnyPool,
    search: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<UserRow>, sqlx::Error> {
    let pattern = search.map(|s| format!("%{}%", s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    sqlx::query_as(&format!(
        "SELECT {USER_COLUMNS} FROM users
         WHERE ($1 IS NULL OR email LIKE $1 ESCAPE '\\') AND ($2 IS NULL OR id > $2)
         ORDER BY id LIMIT $3"
    ))
    .bind(pattern)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn update_full_name(tx: &mut Tx, id: &str, full_name: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET full_name = $1, updated_at = $2, version = version + 1 WHERE id = $3")
        .bind(full_name)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn update_password(tx: &mut Tx, id: &str, password_hash: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2, version = version + 1 WHERE id = $3")
        .bind(password_hash)
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn mark_email_verified(tx: &mut Tx, id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET email_verified_at = $1, updated_at = $1, version = version + 1 WHERE id = $2 AND email_verified_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Sets role and disabled state if the row is still at `expected_version`; answers whether it was.
pub async fn admin_update_user(
    tx: &mut Tx,
    id: &str,
    role: &str,
    disabled_at: Option<i64>,
    expected_version: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE users SET role = $1, disabled_at = $2, updated_at = $3, version = version + 1
         WHERE id = $4 AND version = $5",
    )
    .bind(role)
    .bind(disabled_at)
    .bind(now)
    .bind(id)
    .bind(expected_version)
    .execute(&mut **tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}

#[derive(Debug, Clone, FromRow)]
pub struct RefreshTokenRow {
    pub id: String,
    pub family_id: String,
    pub user_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub async fn insert_refresh_token(
    tx: &mut Tx,
    family_id: &str,
    user_id: &str,
    token_hash: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(platform::id::new_id().to_string())
    .bind(family_id)
    .bind(user_id)
    .bind(token_hash)
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn refresh_token_by_hash<'e, E>(executor: E, token_hash: &str) -> Result<Option<RefreshTokenRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(
        "SELECT id, family_id, user_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(executor)
    .await
}

/// Marks a refresh token used if nobody has used it yet; answers whether this call did.
pub async fn use_refresh_token(tx: &mut Tx, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let updated =
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
    Ok(updated.rows_affected() == 1)
}

pub async fn revoke_family(executor: &AnyPool, family_id: &str, now: i64) -> Result<u64, sqlx::Error> {
    let revoked = sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(family_id)
        .execute(executor)
        .await?;
    Ok(revoked.rows_affected())
}

pub async fn revoke_user_sessions(tx: &mut Tx, user_id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// An open session: a refresh-token family whose current token is unused, unrevoked and unexpired.
#[derive(Debug, Clone, FromRow)]
pub struct SessionRow {
    pub family_id: String,
    pub started_at: i64,
    pub refreshed_at: i64,
    pub expires_at: i64,
}

pub async fn open_sessions(pool: &AnyPool, user_id: &str, now: i64) -> Result<Vec<SessionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.family_id,
                (SELECT MIN(f.created_at) FROM refresh_tokens f WHERE f.family_id = r.family_id) AS started_at,
                r.created_at AS refreshed_at,
                r.expires_at
         FROM refresh_tokens r
         WHERE r.user_id = $1 AND r.used_at IS NULL AND r.revoked_at IS NULL AND r.expires_at > $2
         ORDER BY r.created_at DESC",
    )
    .bind(user_id)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// Revokes one session of the user; answers whether it was theirs and open.
pub async fn revoke_user_family(tx: &mut Tx, user_id: &str, family_id: &str, now: i64) -> Result<bool, sqlx::Error> {
    let revoked = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND family_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(user_id)
    .bind(family_id)
    .execute(&mut **tx)
    .await?;
    Ok(revoked.rows_affected() > 0)
}

pub const PURPOSE_RESET: &str = "password_reset";
pub const PURPOSE_VERIFY: &str = "email_verification";

pub async fn insert_one_time_token(
    tx: &mut Tx,
    token_hash: &str,
    user_id: &str,
    purpose: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO one_time_tokens (token_hash, user_id, purpose, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(token_hash)
        .bind(user_id)
        .bind(purpose)
        .bind(now)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Whether a one-time token exists unused and unexpired (a cheap pre-check; spending decides).
pub async fn one_time_token_open(
    pool: &AnyPool,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM one_time_tokens WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
    )
    .bind(token_hash)
    .bind(purpose)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// Spends a one-time token if it is unused and unexpired; answers its user.
pub async fn spend_one_time_token(
    tx: &mut Tx,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE one_time_tokens SET used_at = $1
         WHERE token_hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1
         RETURNING user_id",
    )
    .bind(now)
    .bind(token_hash)
    .bind(purpose)
    .fetch_optional(&mut **tx)
    .await
}

/// Spends every unused token of a purpose (a new reset link voids older ones).
pub async fn void_one_time_tokens(tx: &mut Tx, user_id: &str, purpose: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE one_time_tokens SET used_at = $1 WHERE user_id = $2 AND purpose = $3 AND used_at IS NULL")
        .bind(now)
        .bind(user_id)
        .bind(purpose)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct AddressRow {
    pub id: String,
    pub user_id: String,
    pub label: Option<String>,
    pub full_name: String,
    pub phone: Option<String>,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    pub country: String,
    pub is_default: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const ADDRESS_COLUMNS: &str =
    "id, user_id, label, full_name, phone, line1, line2, city, region, postal_code, country, is_default, created_at, updated_at";

pub async fn addresses_of(pool: &AnyPool, user_id: &str) -> Result<Vec<AddressRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 ORDER BY is_default DESC, id"
    ))
    .bind(user_id)
    .fetch_all(pool)
    .await
}

pub async fn address_of<'e, E>(executor: E, user_id: &str, id: &str) -> Result<Option<AddressRow>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query_as(&format!(
        "SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND id = $2"
    ))
    .bind(user_id)
    .bind(id)
    .fetch_optional(executor)
    .await
}

pub async fn count_addresses(tx: &mut Tx, user_id: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM addresses WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
}

pub async fn upsert_address(tx: &mut Tx, a: &AddressRow) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO addresses ({ADDRESS_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET label = excluded.label, full_name = excluded.full_name, phone = excluded.phone,
           line1 = excluded.line1, line2 = excluded.line2, city = excluded.city, region = excluded.region,
           postal_code = excluded.postal_code, country = excluded.country, is_default = excluded.is_default,
           updated_at = excluded.updated_at"
    ))
    .bind(&a.id)
    .bind(&a.user_id)
    .bind(&a.label)
    .bind(&a.full_name)
    .bind(&a.phone)
    .bind(&a.line1)
    .bind(&a.line2)
    .bind(&a.city)
    .bind(&a.region)
    .bind(&a.postal_code)
    .bind(&a.country)
    .bind(a.is_default)
    .bind(a.created_at)
    .bind(a.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn clear_default_address(tx: &mut Tx, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE addresses SET is_default = 0 WHERE user_id = $1 AND is_default = 1")
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn delete_address(tx: &mut Tx, user_id: &str, id: &str) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query("DELETE FROM addresses WHERE user_id = $1 AND id = $2")
        .bind(user_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(deleted.rows_affected() == 1)
}

/// Makes the most recently created address of the user the default (after the default was deleted).
pub async fn promote_latest_address(tx: &mut Tx, user_id: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE addresses SET is_default = 1, updated_at = $1
         WHERE id = (SELECT id FROM addresses WHERE user_id = $2 ORDER BY id DESC LIMIT 1)",
    )
    .bind(now)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
