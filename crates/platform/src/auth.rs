//! Access-token verification shared by every service: EdDSA JWTs checked against the identity
//! service's JWKS (cached, fetched again once when an unknown `kid` appears), the
//! [`CurrentUser`] extractor and role guards.
//!
//! Every service verifies the token itself, even behind the gateway (defence in depth).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Seller,
    Admin,
    DeliveryAgent,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Seller => "seller",
            Role::Admin => "admin",
            Role::DeliveryAgent => "delivery_agent",
        }
    }

    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "customer" => Some(Role::Customer),
            "seller" => Some(Role::Seller),
            "admin" => Some(Role::Admin),
            "delivery_agent" => Some(Role::DeliveryAgent),
            _ => None,
        }
    }
}

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
    /// The session (refresh-token family) the token was issued for.
    pub sid: String,
}

/// One public key in a JWKS (Ed25519 as an OKP key).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    /// The public key, base64url without padding.
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

/// Where verification keys come from: the identity service in process, or its JWKS URL.
#[async_trait]
pub trait JwksSource: Send + Sync {
    async fn fetch(&self) -> anyhow::Result<JwkSet>;
}

/// Fetches the JWKS over HTTP.
#[derive(Debug)]
pub struct HttpJwks {
    pub url: String,
    pub client: reqwest::Client,
}

#[async_trait]
impl JwksSource for HttpJwks {
    async fn fetch(&self) -> anyhow::Result<JwkSet> {
        Ok(self
            .client
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }
}

/// Why a token was refused. Each becomes a 401; the reason goes to the log, not the client.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token has no key id")]
    MissingKid,
    #[error("unknown signing key")]
    UnknownKid,
    #[error("token rejected: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("keys unavailable: {0}")]
    KeysUnavailable(String),
}

/// The shortest time between two JWKS fetches caused by unknown `kid`s, so forged tokens with
/// random key ids cannot turn every request into a fetch.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a fetched key set is trusted. After that it is fetched again, so a key the
/// identity service retired (after rotation, once its tokens expired) stops verifying.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Verifies access tokens.
pub struct TokenVerifier {
    source: Arc<dyn JwksSource>,
    issuer: String,
    audience: String,
    cache_ttl: Duration,
    cache: RwLock<KeyCache>,
    /// Serializes fetches and remembers when the last one started.
    last_fetch: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl TokenVerifier {
    pub fn new(source: Arc<dyn JwksSource>, issuer: &str, audience: &str) -> Self {
        Self::with_cache_ttl(source, issuer, audience, DEFAULT_CACHE_TTL)
    }

    pub fn with_cache_ttl(source: Arc<dyn JwksSource>, issuer: &str, audience: &str, cache_ttl: Duration) -> Self {
        Self {
            source,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            cache_ttl,
            cache: RwLock::default(),
            last_fetch: Mutex::default(),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::MissingKid)?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(jsonwebtoken::decode::<Claims>(token, &key, &validation)?.claims)
    }

    /// The key for `kid`: from the cache while it is fresh, else from a new fetch. When the
    /// source is down, a stale cached key still serves (availability over freshness).
    async fn key(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let (hit, stale) = {
            let cache = self.cache.read().await;
            (
                cache.keys.get(kid).cloned(),
                cache.fetched_at.is_none_or(|at| at.elapsed() >= self.cache_ttl),
            )
        };
        match (hit, stale) {
            (Some(key), false) => Ok(key),
            (hit, _) => match self.refetch(kid).await {
                Err(TokenError::KeysUnavailable(reason)) => {
                    tracing::warn!(%reason, "JWKS unavailable; using the cached keys");
                    hit.ok_or(TokenError::KeysUnavailable(reason))
                }
                other => other,
            },
        }
    }

    /// Fetches the key set again (unknown `kid`s at most once per [`MIN_REFETCH_INTERVAL`])
    /// and looks up `kid`.
    async fn refetch(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let mut last_fetch = self.last_fetch.lock().await;
        {
            // Another request may have fetched while this one waited for the lock.
            let cache = self.cache.read().await;
            let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < self.cache_ttl);
            if fresh {
                if let Some(key) = cache.keys.get(kid) {
                    return Ok(key.clone());
                }
                if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
                    return Err(TokenError::UnknownKid);
                }
            }
        }
        *last_fetch = Some(Instant::now());
        let set = self
            .source
            .fetch()
            .await
            .map_err(|err| TokenError::KeysUnavailable(err.to_string()))?;
        let mut keys = HashMap::new();
        for jwk in set.keys.iter().filter(|k| k.kty == "OKP" && k.crv == "Ed25519") {
            match DecodingKey::from_ed_components(&jwk.x) {
                Ok(key) => {
                    keys.insert(jwk.kid.clone(), key);
                }
                Err(err) => tracing::warn!(kid = %jwk.kid, error = %err, "unusable key in JWKS skipped"),
            }
        }
        let found = keys.get(kid).cloned();
        *self.cache.write().await = KeyCache {
            keys,
            fetched_at: Some(Instant::now()),
        };
        found.ok_or(TokenError::UnknownKid)
    }
}

/// The authenticated caller, from a verified `Authorization: Bearer` access token.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub id: Uuid,
    pub role: Role,
    pub session_id: String,
}

impl CurrentUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The role guard: 403 unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden("your role may not do this".to_owned()))
        }
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Verifies the request's token with the [`TokenVerifier`] the router carries as an extension.
pub async fn authenticate(parts: &Parts) -> Result<CurrentUser, ApiError> {
    let verifier = parts
        .extensions
        .get::<Arc<TokenVerifier>>()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("no TokenVerifier extension on this router")))?;
    let token = bearer_token(parts).ok_or_else(|| ApiError::Unauthorized("missing bearer token".to_owned()))?;
    let claims = verifier.verify(token).await.map_err(|err| {
        tracing::info!(reason = %err, "access token refused");
        ApiError::Unauthorized("invalid or expired access token".to_owned())
    })?;
    let id = Uuid::parse_str(&claims.sub).map_err(|_| ApiError::Unauthorized("invalid access token".to_owned()))?;
    Ok(CurrentUser {
        id,
        role: claims.role,
        session_id: claims.sid,
    })
}

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(user) = parts.extensions.get::<CurrentUser>() {
            return Ok(user.clone());
        }
        let user = authenticate(parts).await?;
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

/// An authenticated caller with the admin role (403 otherwise).
#[derive(Debug, Clone)]
pub struct Admin(pub CurrentUser);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        user.require(&[Role::Admin])?;
        Ok(Admin(user))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{Ed25519KeyPair, KeyPair};

    use super::*;

    /// A JWKS whose keys the test changes.
    #[derive(Default)]
    struct Published(StdMutex<Vec<Jwk>>);

    #[async_trait]
    impl JwksSource for Published {
        async fn fetch(&self) -> anyhow::Result<JwkSet> {
            Ok(JwkSet {
                keys: self.0.lock().unwrap().clone(),
            })
        }
    }

    fn key_pair(kid: &str) -> (Jwk, EncodingKey) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x,
            kid: kid.into(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        };
        (jwk, EncodingKey::from_ed_der(pkcs8.as_ref()))
    }

    fn token(kid: &str, key: &EncodingKey) -> String {
        let now = crate::clock::now_ms() / 1000;
        let claims = Claims {
            iss: "i".into(),
            aud: "a".into(),
            sub: Uuid::nil().to_string(),
            role: Role::Customer,
            iat: now,
            exp: now + 600,
            sid: "s".into(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    #[tokio::test]
    async fn a_key_removed_from_the_jwks_stops_verifying_once_the_cache_expires() {
        let (old_jwk, old_key) = key_pair("old");
        let (new_jwk, new_key) = key_pair("new");
        let published = Arc::new(Published::default());
        *published.0.lock().unwrap() = vec![old_jwk];
        let verifier = TokenVerifier::with_cache_ttl(published.clone(), "i", "a", Duration::ZERO);
        verifier
            .verify(&token("old", &old_key))
            .await
            .expect("published key verifies");

        *published.0.lock().unwrap() = vec![new_jwk];
        verifier
            .verify(&token("new", &new_key))
            .await
            .expect("a new key is fetched");
        assert!(
            verifier.verify(&token("old", &old_key)).await.is_err(),
            "the retired key no longer verifies"
        );
    }

    #[tokio::test]
    async fn a_fresh_cache_answers_without_fetching() {
        let (jwk, key) = key_pair("k");
        let published = Arc::new(Published::default());
        *published.0.lock().unwrap() = vec![jwk];
        let verifier = TokenVerifier::new(published.clone(), "i", "a");
        verifier.verify(&token("k", &key)).await.unwrap();
        published.0.lock().unwrap().clear();
        verifier
            .verify(&token("k", &key))
            .await
            .expect("within the TTL the cached key serves");
    }
}
