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

/// Verifies access tokens.
pub struct TokenVerifier {
    source: Arc<dyn JwksSource>,
    issuer: String,
    audience: String,
    keys: RwLock<HashMap<String, DecodingKey>>,
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
        Self {
            source,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            keys: RwLock::default(),
            last_fetch: Mutex::default(),
        }
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::MissingKid)?;
        // Bind first: a read guard living through the `match` would deadlock the refetch's write.
        let cached = self.keys.read().await.get(&kid).cloned();
        let key = match cached {
            Some(key) => key,
            None => self.refetch_for(&kid).await?,
        };
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(jsonwebtoken::decode::<Claims>(token, &key, &validation)?.claims)
    }

    /// Fetches the key set again (at most once per [`MIN_REFETCH_INTERVAL`]) and looks up `kid`.
    async fn refetch_for(&self, kid: &str) -> Result<DecodingKey, TokenError> {
        let mut last_fetch = self.last_fetch.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
            return Err(TokenError::UnknownKid);
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
        *self.keys.write().await = keys;
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
