//! The identity service's operations: each parses its input into domain types, applies the
//! rules, and persists the change and its events in one transaction.

use std::sync::Arc;
use std::time::Duration;

use platform::auth::{Claims, Role};
use platform::clock::SharedClock;
use platform::error::{ApiError, FieldError};
use platform::events::Event;
use platform::outbox::{self, Outbox};
use platform::page::{Page, PageRequest};
use platform::ratelimit::FailureThrottle;
use platform::store::{Db, Tx};
use serde_json::json;
use uuid::Uuid;

use crate::domain::{self, Email, Password};
use crate::keys::{Keys, Signer};
use crate::store::{self, AddressRow, UserRow, PURPOSE_RESET, PURPOSE_VERIFY};

pub const SERVICE: &str = "identity";

/// Settings of the identity service, taken from the platform config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub reset_ttl: Duration,
    pub verification_ttl: Duration,
}

/// An issued pair of tokens.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

/// An address as a user sends it; on update, absent fields keep their value.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    pub label: Option<String>,
    pub full_name: Option<String>,
    pub phone: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2.
    pub country: Option<String>,
    /// Make this the default address (the previous default stops being one).
    pub is_default: Option<bool>,
}

/// At most this many addresses per user.
const MAX_ADDRESSES: i64 = 20;

#[derive(Clone)]
pub struct Identity {
    db: Db,
    outbox: Outbox,
    keys: Keys,
    clock: SharedClock,
    throttle: Arc<dyn FailureThrottle>,
    settings: Settings,
    /// A hash verified against when the email is unknown, so the answer takes as long.
    dummy_hash: Arc<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("settings", &self.settings).finish()
    }
}

/// Hashes a password (on the hashing pool: argon2 takes tens of milliseconds of CPU).
pub async fn hash_password(password: &Password) -> Result<String, crate::hashing::HashError> {
    crate::hashing::hash(password.expose()).await
}

async fn verify_password(password: &str, hash: &str) -> Result<bool, crate::hashing::HashError> {
    crate::hashing::verify(password, hash).await
}

fn validation(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Identity {
    pub async fn new(
        db: Db,
        clock: SharedClock,
        throttle: Arc<dyn FailureThrottle>,
        settings: Settings,
    ) -> anyhow::Result<Self> {
        let keys = Keys::new(db.clone(), clock.clone(), settings.access_ttl);
        keys.ensure_active().await?;
        let dummy = Password::parse("password", "dummy password for timing").map_err(|e| anyhow::anyhow!(e.message))?;
        let dummy_hash = Arc::new(hash_password(&dummy).await?);
        Ok(Self {
            outbox: Outbox::new(db.clone()),
            db,
            keys,
            clock,
            throttle,
            settings,
            dummy_hash,
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    async fn commit(&self, tx: Tx) -> Result<(), ApiError> {
        tx.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    async fn enqueue(
        tx: &mut Tx,
        kind: &str,
        subject: &str,
        data: serde_json::Value,
        correlation: Option<&str>,
    ) -> Result<(), ApiError> {
        outbox::enqueue(tx, &Event::new(SERVICE, kind, subject, data, correlation)).await?;
        Ok(())
    }

    // ----- accounts -------------------------------------------------------------------------

    /// Creates an account. Customers come through `register`; admins and the CLI pick the role.
    pub async fn create_user(
        &self,
        email: &str,
        full_name: &str,
        password: &str,
        role: Role,
        correlation: Option<&str>,
    ) -> Result<UserRow, ApiError> {
        let (email, full_name, password) = match (
            Email::parse(email),
            domain::text("full_name", full_name, 1, 100),
            Password::parse("password", password),
        ) {
            (Ok(email), Ok(full_name), Ok(password)) => (email, full_name, password),
            (email, full_name, password) => {
                return Err(ApiError::Validation(
                    [email.err(), full_name.err(), password.err()]
                        .into_iter()
                        .flatten()
                        .collect(),
                ))
            }
        };
        let password_hash = hash_password(&password).await?;
        let now = self.now();
        let user = UserRow {
            id: platform::id::new_id().to_string(),
            email: email.as_str().to_owned(),
            full_name,
            password_hash,
            role: role.as_str().to_owned(),
            email_verified_at: None,
            disabled_at: None,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        let mut tx = self.db.begin().await?;
        store::insert_user(&mut tx, &user)
            .await
            .map_err(|err| ApiError::conflict_on_unique(err, "an account with this email already exists"))?;
        Self::enqueue(
            &mut tx,
            "user.registered",
            &user.id,
            json!({"user_id": user.id, "email": user.email, "full_name": user.full_name, "role": user.role}),
            correlation,
        )
        .await?;
        self.issue_verification(&mut tx, &user, correlation).await?;
        self.commit(tx).await?;
        Ok(user)
    }

    async fn issue_verification(&self, tx: &mut Tx, user: &UserRow, correlation: Option<&str>) -> Result<(), ApiError> {
        let now = self.now();
        let token = domain::new_secret();
        let expires_at = now + ms(self.settings.verification_ttl);
        store::void_one_time_tokens(tx, &user.id, PURPOSE_VERIFY, now).await?;
        store::insert_one_time_token(
            tx,
            &domain::secret_hash(&token),
            &user.id,
            PURPOSE_VERIFY,
            now,
            expires_at,
        )
        .await?;
        // The token travels to the notifications service in the event (never into a log line).
        Self::enqueue(
            tx,
            "user.email_verification_requested",
            &user.id,
            json!({"user_id": user.id, "email": user.email, "full_name": user.full_name, "token": token,
                   "expires_at": platform::clock::rfc3339(expires_at)}),
            correlation,
        )
        .await
    }

    /// Checks credentials and opens a session. Throttled per account and per client IP.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client_ip: Option<&str>,
    ) -> Result<(UserRow, Session), ApiError> {
        let email = Email::parse(email)
            .map(|e| e.as_str().to_owned())
            .unwrap_or_else(|_| email.trim().to_lowercase());
        let account_key = format!("login:account:{email}");
        let ip_key = client_ip.map(|ip| format!("login:ip:{ip}"));
        // The account counts attempts as they start (no burst of guesses at one account slips
        // through); the IP, shared by many honest people behind one address, counts failures.
        let account_blocked = self.throttle.attempt(&account_key).await;
        let ip_blocked = match &ip_key {
            Some(key) if account_blocked.is_none() => self.throttle.blocked_for(key).await,
            _ => None,
        };
        if let Some(wait) = account_blocked.or(ip_blocked) {
            return Err(ApiError::TooManyRequests {
                message: "too many failed logins; try again later".to_owned(),
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        let user = store::user_by_email(self.db.reader(), &email).await?;
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let matches = verify_password(password, hash).await?;
        let Some(user) = user.filter(|_| matches) else {
            // The account's attempt was counted when it started; the IP's failure is counted now.
            if let Some(key) = &ip_key {
                self.throttle.record_failure(key).await;
            }
            return Err(ApiError::Unauthorized("wrong email or password".to_owned()));
        };
        if user.disabled_at.is_some() {
            return Err(ApiError::Forbidden("this account is disabled".to_owned()));
        }
        self.throttle.reset(&account_key).await;
        let signer = self.keys.signer().await?;
        let mut tx = self.db.begin().await?;
        let session = self
            .open_session(&mut tx, &signer, &user, &platform::id::new_id().to_string())
            .await?;
        tx.commit().await?;
        Ok((user, session))
    }

    /// Issues an access token and a refresh token in `family`.
    /// Opens a new session for a user whose identity was just established (registration).
    pub async fn start_session(&self, user: &UserRow) -> Result<Session, ApiError> {
        let signer = self.keys.signer().await?;
        let mut tx = self.db.begin().await?;
        let session = self
            .open_session(&mut tx, &signer, user, &platform::id::new_id().to_string())
            .await?;
        tx.commit().await?;
        Ok(session)
    }

    /// The signer is taken before the transaction starts, so no second pool connection is
    /// needed while the transaction holds one (on PostgreSQL, reader and writer share a pool).
    async fn open_session(
        &self,
        tx: &mut Tx,
        signer: &Signer,
        user: &UserRow,
        family: &str,
    ) -> Result<Session, ApiError> {
        let now = self.now();
        let refresh_token = domain::new_secret();
        store::insert_refresh_token(
            tx,
            family,
            &user.id,
            &domain::secret_hash(&refresh_token),
            now,
            now + ms(self.settings.refresh_ttl),
        )
        .await?;
        let role = Role::parse(&user.role).unwrap_or(Role::Customer);
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user.id.clone(),
            role,
            iat: now / 1000,
            exp: (now + ms(self.settings.access_ttl)) / 1000,
            sid: family.to_owned(),
        };
        let access_token = signer.sign(&claims)?;
        Ok(Session {
            access_token,
            refresh_token,
            expires_in: self.settings.access_ttl.as_secs(),
        })
    }

    /// Rotates a refresh token. A token used twice means it leaked: the whole session family
    /// is revoked and both holders must log in again.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, ApiError> {
        let unauthorized = || ApiError::Unauthorized("invalid or expired refresh token".to_owned());
        let now = self.now();
        let signer = self.keys.signer().await?;
        let mut tx = self.db.begin().await?;
        let row = store::refresh_token_by_hash(&mut *tx, &domain::secret_hash(refresh_token))
            .await?
            .ok_or_else(unauthorized)?;
        if row.revoked_at.is_some() || row.expires_at <= now {
            return Err(unauthorized());
        }
        if row.used_at.is_some() || !store::use_refresh_token(&mut tx, &row.id, now).await? {
            drop(tx);
            let revoked = store::revoke_family(self.db.writer(), &row.family_id, now).await?;
            tracing::warn!(user_id = %row.user_id, family = %row.family_id, revoked, "refresh token reused; session family revoked");
            return Err(unauthorized());
        }
        let user = store::user_by_id_tx(&mut tx, &row.user_id)
            .await?
            .ok_or_else(unauthorized)?;
        if user.disabled_at.is_some() {
            return Err(ApiError::Forbidden("this account is disabled".to_owned()));
        }
        let session = self.open_session(&mut tx, &signer, &user, &row.family_id).await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Ends the session the refresh token belongs to. Unknown tokens are ignored (logging out
    /// twice is not an error).
    pub async fn logout(&self, refresh_token: &str) -> Result<(), ApiError> {
        let row = store::refresh_token_by_hash(self.db.reader(), &domain::secret_hash(refresh_token)).await?;
        if let Some(row) = row {
            store::revoke_family(self.db.writer(), &row.family_id, self.now()).await?;
        }
        Ok(())
    }

    /// Starts a password reset. Answers the same whether or not the email has an account.
    pub async fn forgot_password(&self, email: &str, correlation: Option<&str>) -> Result<(), ApiError> {
        let Ok(email) = Email::parse(email) else { return Ok(()) };
        let Some(user) = store::user_by_email(self.db.reader(), email.as_str()).await? else {
            return Ok(());
        };
        if user.disabled_at.is_some() {
            return Ok(());
        }
        let now = self.now();
        let token = domain::new_secret();
        let expires_at = now + ms(self.settings.reset_ttl);
        let mut tx = self.db.begin().await?;
        store::void_one_time_tokens(&mut tx, &user.id, PURPOSE_RESET, now).await?;
        store::insert_one_time_token(
            &mut tx,
            &domain::secret_hash(&token),
            &user.id,
            PURPOSE_RESET,
            now,
            expires_at,
        )
        .await?;
        Self::enqueue(
            &mut tx,
            "user.password_reset_requested",
            &user.id,
            json!({"user_id": user.id, "email": user.email, "full_name": user.full_name, "token": token,
                   "expires_at": platform::clock::rfc3339(expires_at)}),
            correlation,
        )
        .await?;
        self.commit(tx).await
    }

    /// Sets a new password with a reset token (once; it expires) and ends every session.
    pub async fn reset_password(&self, token: &str, new_password: &str) -> Result<(), ApiError> {
        let password = Password::parse("new_password", new_password).map_err(|e| ApiError::Validation(vec![e]))?;
        // Refuse a bad token before spending 19 MiB and tens of milliseconds on hashing; the
        // conditional spend below still decides.
        let token_hash = domain::secret_hash(token);
        if !store::one_time_token_open(self.db.reader(), &token_hash, PURPOSE_RESET, self.now()).await? {
            return Err(ApiError::BadRequest(
                "the reset token is invalid, used or expired".to_owned(),
            ));
        }
        let password_hash = hash_password(&password).await?;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let user_id = store::spend_one_time_token(&mut tx, &domain::secret_hash(token), PURPOSE_RESET, now)
            .await?
            .ok_or_else(|| ApiError::BadRequest("the reset token is invalid, used or expired".to_owned()))?;
        store::update_password(&mut tx, &user_id, &password_hash, now).await?;
        store::revoke_user_sessions(&mut tx, &user_id, now).await?;
        self.commit(tx).await
    }

    pub async fn verify_email(&self, token: &str) -> Result<(), ApiError> {
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let user_id = store::spend_one_time_token(&mut tx, &domain::secret_hash(token), PURPOSE_VERIFY, now)
            .await?
            .ok_or_else(|| ApiError::BadRequest("the verification token is invalid, used or expired".to_owned()))?;
        store::mark_email_verified(&mut tx, &user_id, now).await?;
        self.commit(tx).await
    }

    pub async fn resend_verification(&self, user_id: Uuid, correlation: Option<&str>) -> Result<(), ApiError> {
        let user = self.user(user_id).await?;
        if user.email_verified_at.is_some() {
            return Err(ApiError::Conflict("the email address is already verified".to_owned()));
        }
        let mut tx = self.db.begin().await?;
        self.issue_verification(&mut tx, &user, correlation).await?;
        self.commit(tx).await
    }

    // ----- profile ----------------------------------------------------------------------------

    pub async fn user(&self, id: Uuid) -> Result<UserRow, ApiError> {
        store::user_by_id(self.db.reader(), &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("user"))
    }

    pub async fn update_profile(&self, id: Uuid, full_name: Option<&str>) -> Result<UserRow, ApiError> {
        if let Some(name) = full_name {
            let name = domain::text("full_name", name, 1, 100).map_err(|e| ApiError::Validation(vec![e]))?;
            let mut tx = self.db.begin().await?;
            store::update_full_name(&mut tx, &id.to_string(), &name, self.now()).await?;
            self.commit(tx).await?;
        }
        self.user(id).await
    }

    /// Changes the password knowing the current one; other sessions end.
    pub async fn change_password(&self, id: Uuid, current: &str, new_password: &str) -> Result<(), ApiError> {
        let user = self.user(id).await?;
        let password = Password::parse("new_password", new_password).map_err(|e| ApiError::Validation(vec![e]))?;
        if !verify_password(current, &user.password_hash).await? {
            return Err(ApiError::validation("current_password", "is not your current password"));
        }
        let hash = hash_password(&password).await?;
        let now = self.now();
        let mut tx = self.db.begin().await?;
        store::update_password(&mut tx, &user.id, &hash, now).await?;
        store::revoke_user_sessions(&mut tx, &user.id, now).await?;
        self.commit(tx).await
    }

    // ----- sessions ---------------------------------------------------------------------------

    /// The user's open sessions, most recently refreshed first.
    pub async fn sessions(&self, user_id: Uuid) -> Result<Vec<store::SessionRow>, ApiError> {
        Ok(store::open_sessions(self.db.reader(), &user_id.to_string(), self.now()).await?)
    }

    /// Ends one of the user's sessions (its refresh token stops working; access tokens already
    /// issued expire on their own within the access-token lifetime).
    pub async fn end_session(&self, user_id: Uuid, session_id: &str) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        if !store::revoke_user_family(&mut tx, &user_id.to_string(), session_id, self.now()).await? {
            return Err(ApiError::not_found("session"));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Ends every session of the user ("log out everywhere").
    pub async fn end_all_sessions(&self, user_id: Uuid) -> Result<(), ApiError> {
        let mut tx = self.db.begin().await?;
        store::revoke_user_sessions(&mut tx, &user_id.to_string(), self.now()).await?;
        tx.commit().await?;
        Ok(())
    }

    // ----- addresses --------------------------------------------------------------------------

    pub async fn addresses(&self, user_id: Uuid) -> Result<Vec<AddressRow>, ApiError> {
        Ok(store::addresses_of(self.db.reader(), &user_id.to_string()).await?)
    }

    pub async fn address(&self, user_id: Uuid, id: Uuid) -> Result<AddressRow, ApiError> {
        let found = store::address_of(self.db.reader(), &user_id.to_string(), &id.to_string()).await?;
        found.ok_or_else(|| ApiError::not_found("address"))
    }

    /// Creates (`id` = None) or updates an address of the user. The first address, and any
    /// marked default, becomes the default; the previous default stops being one.
    pub async fn save_address(
        &self,
        user_id: Uuid,
        id: Option<Uuid>,
        input: AddressInput,
    ) -> Result<AddressRow, ApiError> {
        let user_id = user_id.to_string();
        let now = self.now();
        let mut tx = self.db.begin().await?;
        let existing = match id {
            Some(id) => Some(
                store::address_of(&mut *tx, &user_id, &id.to_string())
                    .await?
                    .ok_or_else(|| ApiError::not_found("address"))?,
            ),
            None => None,
        };
        let count = store::count_addresses(&mut tx, &user_id).await?;
        if existing.is_none() && count >= MAX_ADDRESSES {
            return Err(ApiError::Unprocessable(format!(
                "an account can keep at most {MAX_ADDRESSES} addresses"
            )));
        }
        let address = merge_address(existing.as_ref(), input.clone(), &user_id, now)?;
        let make_default = input.is_default == Some(true) || count == 0;
        let was_default = existing.as_ref().is_some_and(|a| a.is_default == 1);
        if input.is_default == Some(false) && was_default {
            return Err(ApiError::validation(
                "is_default",
                "make another address the default instead",
            ));
        }
        if make_default && !was_default {
            store::clear_default_address(&mut tx, &user_id).await?;
        }
        let address = AddressRow {
            is_default: i64::from(make_default || was_default),
            ..address
        };
        // Two concurrent "make default" requests (PostgreSQL, READ COMMITTED): the unique default
        // index lets one win; the other is told to retry rather than fail with 500.
        store::upsert_address(&mut tx, &address).await.map_err(|err| {
            ApiError::conflict_on_unique(
                err,
                "another change to your default address happened at the same time; retry",
            )
        })?;
        tx.commit().await?;
        Ok(address)
    }

    /// Deletes an address; when it was the default, the most recent other one becomes default.
    pub async fn delete_address(&self, user_id: Uuid, id: Uuid) -> Result<(), ApiError> {
        let user_id = user_id.to_string();
        let mut tx = self.db.begin().await?;
        let address = store::address_of(&mut *tx, &user_id, &id.to_string())
            .await?
            .ok_or_else(|| ApiError::not_found("address"))?;
        store::delete_address(&mut tx, &user_id, &address.id).await?;
        if address.is_default == 1 {
            store::promote_latest_address(&mut tx, &user_id, self.now()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    // ----- administration ---------------------------------------------------------------------

    pub async fn list_users(&self, search: Option<&str>, page: &PageRequest) -> Result<Page<UserRow>, ApiError> {
        let search = search.map(str::trim).filter(|s| !s.is_empty()).map(str::to_lowercase);
        let rows = store::list_users(
            self.db.reader(),
            search.as_deref(),
            page.after.as_deref(),
            page.fetch_limit(),
        )
        .await?;
        Ok(Page::from_rows(rows, page, |u| u.id.clone()))
    }

    /// Changes a user's role or disabled state. `expected_version` guards against lost updates;
    /// disabling ends every session of the user. Admins cannot demote or disable themselves.
    pub async fn admin_update_user(
        &self,
        actor: Uuid,
        id: Uuid,
        role: Option<Role>,
        disabled: Option<bool>,
        expected_version: Option<i64>,
    ) -> Result<UserRow, ApiError> {
        let user = self.user(id).await?;
        if actor == id && (role.is_some_and(|r| r != Role::Admin) || disabled == Some(true)) {
            return Err(ApiError::Unprocessable(
                "admins cannot demote or disable their own account".to_owned(),
            ));
        }
        let now = self.now();
        let role = role.map_or(user.role.clone(), |r| r.as_str().to_owned());
        let disabled_at = match disabled {
            Some(true) => user.disabled_at.or(Some(now)),
            Some(false) => None,
            None => user.disabled_at,
        };
        let mut tx = self.db.begin().await?;
        let version = expected_version.unwrap_or(user.version);
        if !store::admin_update_user(&mut tx, &user.id, &role, disabled_at, version, now).await? {
            return Err(ApiError::Conflict(
                "the user was changed by someone else; reload and retry".to_owned(),
            ));
        }
        if disabled_at.is_some() {
            store::revoke_user_sessions(&mut tx, &user.id, now).await?;
        }
        self.commit(tx).await?;
        self.user(id).await
    }
}

/// Applies `input` over `existing` (or over nothing, for a new address) and validates the result.
fn merge_address(
    existing: Option<&AddressRow>,
    input: AddressInput,
    user_id: &str,
    now: i64,
) -> Result<AddressRow, ApiError> {
    let mut errors = Vec::new();
    let mut required = |field: &str, new: Option<String>, old: Option<&String>, max: usize| -> String {
        match new.or_else(|| old.cloned()) {
            Some(value) => domain::text(field, &value, 1, max).unwrap_or_else(|e| {
                errors.push(e);
                String::new()
            }),
            None => {
                errors.push(FieldError::new(field, "is required"));
                String::new()
            }
        }
    };
    let full_name = required("full_name", input.full_name, existing.map(|a| &a.full_name), 100);
    let line1 = required("line1", input.line1, existing.map(|a| &a.line1), 200);
    let city = required("city", input.city, existing.map(|a| &a.city), 100);
    let postal_code = required("postal_code", input.postal_code, existing.map(|a| &a.postal_code), 20);
    let country_raw = required("country", input.country, existing.map(|a| &a.country), 2);
    let mut optional = |field: &str, new: Option<String>, old: Option<&Option<String>>, max: usize| -> Option<String> {
        let value = match new {
            Some(value) => Some(value),
            None => old.cloned().flatten(),
        };
        domain::optional_text(field, value.as_deref(), max).unwrap_or_else(|e| {
            errors.push(e);
            None
        })
    };
    let label = optional("label", input.label, existing.map(|a| &a.label), 50);
    let phone = optional("phone", input.phone, existing.map(|a| &a.phone), 30);
    let line2 = optional("line2", input.line2, existing.map(|a| &a.line2), 200);
    let region = optional("region", input.region, existing.map(|a| &a.region), 100);
    let country = if country_raw.is_empty() {
        String::new()
    } else {
        domain::country(&country_raw).unwrap_or_else(|e| {
            errors.push(e);
            String::new()
        })
    };
    if let Some(phone) = &phone {
        if !phone.chars().all(|c| c.is_ascii_digit() || " +-()".contains(c)) {
            errors.push(FieldError::new(
                "phone",
                "may hold digits, spaces, +, - and parentheses only",
            ));
        }
    }
    validation(errors)?;
    Ok(AddressRow {
        id: existing.map_or_else(|| platform::id::new_id().to_string(), |a| a.id.clone()),
        user_id: user_id.to_owned(),
        label,
        full_name,
        phone,
        line1,
        line2,
        city,
        region,
        postal_code,
        country,
        is_default: existing.map_or(0, |a| a.is_default),
        created_at: existing.map_or(now, |a| a.created_at),
        updated_at: now,
    })
}
