//! Signing keys: Ed25519 key pairs kept in the identity database, one active at a time.
//! Rotation retires the active key but keeps publishing it in the JWKS until every token it
//! signed has expired, so rotation logs nobody out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use platform::auth::{Claims, Jwk, JwkSet, JwksSource};
use platform::clock::SharedClock;
use platform::store::Db;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::sync::RwLock;

/// How long a signing key read from the database is trusted before it is read again (so a
/// rotation made by another process is picked up).
const ACTIVE_KEY_TTL: Duration = Duration::from_secs(10);

struct ActiveKey {
    kid: String,
    key: EncodingKey,
    loaded: Instant,
}

#[derive(Clone)]
pub struct Keys {
    db: Db,
    clock: SharedClock,
    /// Retired keys stay in the JWKS this long: the access-token lifetime plus a margin.
    retired_grace_ms: i64,
    active: Arc<RwLock<Option<Arc<ActiveKey>>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys")
    }
}

impl Keys {
    pub fn new(db: Db, clock: SharedClock, access_ttl: Duration) -> Self {
        let retired_grace_ms = i64::try_from((access_ttl + Duration::from_secs(60)).as_millis()).unwrap_or(i64::MAX);
        Self {
            db,
            clock,
            retired_grace_ms,
            active: Arc::default(),
        }
    }

    /// Creates the first key if there is none.
    pub async fn ensure_active(&self) -> anyhow::Result<()> {
        let existing: Option<String> =
            sqlx::query_scalar("SELECT kid FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
                .fetch_optional(self.db.reader())
                .await?;
        if existing.is_none() {
            let mut tx = self.db.begin().await?;
            let any: Option<String> =
                sqlx::query_scalar("SELECT kid FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
            if any.is_none() {
                self.insert_new(&mut tx).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Retires the active key and makes a new one active. Answers the new key id.
    pub async fn rotate(&self) -> anyhow::Result<String> {
        let mut tx = self.db.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(self.clock.now_ms())
            .execute(&mut *tx)
            .await?;
        let kid = self.insert_new(&mut tx).await?;
        tx.commit().await?;
        *self.active.write().await = None;
        Ok(kid)
    }

    async fn insert_new(&self, tx: &mut platform::store::Tx) -> anyhow::Result<String> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("generated key unreadable"))?;
        let kid = platform::id::new_id().simple().to_string();
        sqlx::query("INSERT INTO signing_keys (kid, private_pkcs8, public_key, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&kid)
            .bind(STANDARD.encode(pkcs8.as_ref()))
            .bind(URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()))
            .bind(self.clock.now_ms())
            .execute(&mut **tx)
            .await?;
        Ok(kid)
    }

    async fn load_active(&self) -> anyhow::Result<ActiveKey> {
        let (kid, private): (String, String) = sqlx::query_as(
            "SELECT kid, private_pkcs8 FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
        )
        .fetch_optional(self.db.reader())
        .await?
        .context("no active signing key")?;
        let der = STANDARD.decode(private).context("stored signing key is not base64")?;
        Ok(ActiveKey {
            kid,
            key: EncodingKey::from_ed_der(&der),
            loaded: Instant::now(),
        })
    }

    /// The active key, ready to sign (read from the database at most every few seconds).
    pub async fn signer(&self) -> anyhow::Result<Signer> {
        if let Some(key) = self
            .active
            .read()
            .await
            .as_ref()
            .filter(|k| k.loaded.elapsed() < ACTIVE_KEY_TTL)
        {
            return Ok(Signer(key.clone()));
        }
        let fresh = Arc::new(self.load_active().await?);
        *self.active.write().await = Some(fresh.clone());
        Ok(Signer(fresh))
    }

    /// The public keys tokens may be signed with now: the active one and those retired within
    /// the grace period.
    pub async fn jwks(&self) -> anyhow::Result<JwkSet> {
        let since = self.clock.now_ms() - self.retired_grace_ms;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT kid, public_key FROM signing_keys WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC",
        )
        .bind(since)
        .fetch_all(self.db.reader())
        .await?;
        Ok(JwkSet {
            keys: rows
                .into_iter()
                .map(|(kid, x)| Jwk {
                    kty: "OKP".to_owned(),
                    crv: "Ed25519".to_owned(),
                    x,
                    kid,
                    alg: "EdDSA".to_owned(),
                    use_: "sig".to_owned(),
                })
                .collect(),
        })
    }
}

/// A signing key taken from [`Keys::signer`]; signing needs no I/O.
#[derive(Clone)]
pub struct Signer(Arc<ActiveKey>);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Signer").field(&self.0.kid).finish()
    }
}

impl Signer {
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.0.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.0.key)?)
    }
}

/// The JWKS straight from the identity database, for services in the same process.
#[async_trait]
impl JwksSource for Keys {
    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        self.jwks().await
    }
}
