//! The calls one service makes to another, over HTTP: the distributed mode's side of each
//! client trait, against the `/internal/v1` routes of `crate::internal`. Every call carries the
//! service token and goes through the platform's client (timeouts, retries of idempotent calls
//! only, a circuit breaker per instance); an answer that is a problem comes back as the same
//! [`ApiError`], so a 409 or a 503 upstream reaches the end user as it was meant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use platform::http_client::{CallError, ClientPolicy, ServiceClient};
use platform::ApiError;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::internal::{wire, SERVICE_TOKEN_HEADER};

/// One other service: its instances, called in turn.
#[derive(Debug)]
pub struct Peer {
    service: &'static str,
    instances: Vec<ServiceClient>,
    next: AtomicUsize,
    token: String,
}

impl Peer {
    pub fn new(service: &'static str, urls: &[String], token: &str, policy: &ClientPolicy) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !urls.is_empty(),
            "no address for the {service} service; set MERCATO_CLUSTER__URLS__{}",
            service.to_uppercase()
        );
        Ok(Self {
            service,
            instances: urls.iter().map(|url| ServiceClient::new(url, policy.clone())).collect(),
            next: AtomicUsize::new(0),
            token: token.to_owned(),
        })
    }

    /// Calls one instance; an instance whose circuit is open is passed over for the next.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, ApiError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let correlation = platform::telemetry::current_correlation_id();
        let mut headers = vec![(SERVICE_TOKEN_HEADER, self.token.as_str())];
        if let Some(id) = correlation.as_deref() {
            headers.push(("x-correlation-id", id));
        }
        let mut last = CallError::CircuitOpen;
        for i in 0..self.instances.len() {
            let instance = &self.instances[(start + i) % self.instances.len()];
            match instance.call(method.clone(), path, body, &headers).await {
                Ok(response) => return Ok(response),
                // Another instance may be up; a request that reached one and failed is not sent
                // again unless it is idempotent (the client already retried those).
                Err(err @ CallError::CircuitOpen) => last = err,
                Err(err @ CallError::Transport(_)) if is_idempotent(&method) => last = err,
                Err(err) => return Err(self.unavailable(&err)),
            }
        }
        Err(self.unavailable(&last))
    }

    fn unavailable(&self, err: &CallError) -> ApiError {
        tracing::warn!(service = self.service, error = %err, "a call to another service failed");
        ApiError::Unavailable {
            message: format!("the {} service is unavailable", self.service),
            retry_after_secs: 1,
        }
    }

    /// The answer's JSON body, or the problem it is, as the same error.
    async fn json<T: DeserializeOwned>(&self, response: reqwest::Response) -> Result<T, ApiError> {
        let response = self.success(response).await?;
        response
            .json()
            .await
            .map_err(|err| ApiError::Internal(anyhow::anyhow!("the {} service answered garbage: {err}", self.service)))
    }

    async fn success(&self, response: reqwest::Response) -> Result<reqwest::Response, ApiError> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = response.bytes().await.unwrap_or_default();
        Err(ApiError::from_problem(status, &body, retry_after))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let response = self.call(Method::GET, path, None).await?;
        self.json(response).await
    }

    /// A GET whose 404 means "none".
    async fn find<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ApiError> {
        let response = self.call(Method::GET, path, None).await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.json(response).await.map(Some)
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved characters).
fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn sku_query(skus: &[String]) -> String {
    let joined: Vec<String> = skus.iter().map(|s| segment(s)).collect();
    joined.join(",")
}

fn to_anyhow(err: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{err}")
}

/// The client policy of calls between services, from the configuration.
pub fn policy(config: &platform::config::Config) -> ClientPolicy {
    ClientPolicy {
        timeout: Duration::from_millis(config.cluster.call_timeout_ms.max(1)),
        retries: config.cluster.call_retries,
        ..ClientPolicy::default()
    }
}

// ----- identity ------------------------------------------------------------------------------

/// Identity over HTTP: contact details, agents and customers' addresses.
pub struct RemoteIdentity(pub Arc<Peer>);

impl RemoteIdentity {
    async fn user(&self, user: Uuid) -> anyhow::Result<Option<wire::User>> {
        self.0
            .find(&format!("/internal/v1/users/{user}"))
            .await
            .map_err(to_anyhow)
    }
}

#[async_trait]
impl notifications::Directory for RemoteIdentity {
    async fn contact(&self, user_id: Uuid) -> anyhow::Result<Option<notifications::Contact>> {
        Ok(self.user(user_id).await?.map(Into::into))
    }
}

#[async_trait]
impl delivery::AgentDirectory for RemoteIdentity {
    async fn user(&self, user_id: Uuid) -> anyhow::Result<Option<delivery::DirectoryUser>> {
        Ok(RemoteIdentity::user(self, user_id).await?.map(Into::into))
    }
}

#[async_trait]
impl orders::service::Customers for RemoteIdentity {
    async fn address(&self, user: Uuid, id: Uuid) -> anyhow::Result<Option<orders::service::Address>> {
        self.0
            .find(&format!("/internal/v1/users/{user}/addresses/{id}"))
            .await
            .map_err(to_anyhow)
    }

    async fn email(&self, user: Uuid) -> anyhow::Result<Option<String>> {
        Ok(self.user(user).await?.map(|u| u.email))
    }
}

// ----- catalog -------------------------------------------------------------------------------

/// The catalog over HTTP: SKUs with their current prices.
pub struct RemoteCatalog(pub Arc<Peer>);

impl RemoteCatalog {
    async fn skus(&self, skus: &[String]) -> anyhow::Result<Vec<wire::Sku>> {
        let mut found = Vec::with_capacity(skus.len());
        // The route takes 500 at a time.
        for chunk in skus.chunks(500) {
            let page: Vec<wire::Sku> = self
                .0
                .get(&format!("/internal/v1/catalog/skus?skus={}", sku_query(chunk)))
                .await
                .map_err(to_anyhow)?;
            found.extend(page);
        }
        Ok(found)
    }
}

#[async_trait]
impl cart::service::Products for RemoteCatalog {
    async fn skus(&self, skus: &[String]) -> anyhow::Result<Vec<cart::service::SkuInfo>> {
        Ok(RemoteCatalog::skus(self, skus)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

#[async_trait]
impl orders::service::Prices for RemoteCatalog {
    async fn skus(&self, skus: &[String]) -> anyhow::Result<Vec<orders::service::PricedSku>> {
        Ok(RemoteCatalog::skus(self, skus)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

// ----- inventory -----------------------------------------------------------------------------

/// Inventory over HTTP: availability for the cart, reservations for checkout.
pub struct RemoteInventory(pub Arc<Peer>);

#[async_trait]
impl cart::service::Stock for RemoteInventory {
    async fn available(&self, skus: &[String]) -> anyhow::Result<HashMap<String, i64>> {
        let mut found = HashMap::with_capacity(skus.len());
        for chunk in skus.chunks(500) {
            let page: HashMap<String, i64> = self
                .0
                .get(&format!("/internal/v1/inventory/available?skus={}", sku_query(chunk)))
                .await
                .map_err(to_anyhow)?;
            found.extend(page);
        }
        Ok(found)
    }
}

#[async_trait]
impl orders::service::Stock for RemoteInventory {
    async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[orders::service::CartLine],
        correlation_id: Option<&str>,
    ) -> Result<(), orders::service::StockRefusal> {
        use orders::service::StockRefusal;
        let body = serde_json::to_value(wire::Reserve {
            lines: lines
                .iter()
                .map(|l| wire::Line {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                })
                .collect(),
            correlation_id: correlation_id.map(str::to_owned),
        })
        .map_err(|err| StockRefusal::Failed(err.into()))?;
        let path = format!("/internal/v1/inventory/reservations/{order_id}");
        let response = self
            .0
            .call(Method::PUT, &path, Some(&body))
            .await
            .map_err(|err| StockRefusal::Failed(to_anyhow(err)))?;
        match self.0.success(response).await {
            Ok(_) => Ok(()),
            Err(ApiError::ConflictWith { members, .. }) if members.get("short").is_some() => {
                let short = serde_json::from_value(members["short"].clone())
                    .map_err(|err| StockRefusal::Failed(anyhow::anyhow!("inventory answered garbage: {err}")))?;
                Err(StockRefusal::Short(short))
            }
            Err(err) => Err(StockRefusal::Failed(to_anyhow(err))),
        }
    }

    async fn release(&self, order_id: Uuid, correlation_id: Option<&str>) -> anyhow::Result<()> {
        let mut path = format!("/internal/v1/inventory/reservations/{order_id}");
        if let Some(id) = correlation_id {
            path.push_str(&format!("?correlation_id={}", segment(id)));
        }
        let response = self.0.call(Method::DELETE, &path, None).await.map_err(to_anyhow)?;
        self.0.success(response).await.map(|_| ()).map_err(to_anyhow)
    }
}

// ----- cart ----------------------------------------------------------------------------------

/// The cart over HTTP: what checkout buys.
pub struct RemoteCart(pub Arc<Peer>);

#[async_trait]
impl orders::service::Carts for RemoteCart {
    async fn hold(&self, user: Uuid, order_id: Uuid) -> anyhow::Result<Vec<orders::service::CartLine>> {
        // Idempotent per order (the same units again), so safe to retry.
        let response = self
            .0
            .call(
                Method::PUT,
                &format!("/internal/v1/carts/users/{user}/holds/{order_id}"),
                None,
            )
            .await
            .map_err(to_anyhow)?;
        let lines: Vec<wire::Line> = self.0.json(response).await.map_err(to_anyhow)?;
        Ok(lines
            .into_iter()
            .map(|l| orders::service::CartLine {
                sku: l.sku,
                quantity: l.quantity,
            })
            .collect())
    }

    async fn release(&self, order_id: Uuid) -> anyhow::Result<()> {
        let response = self
            .0
            .call(Method::DELETE, &format!("/internal/v1/carts/holds/{order_id}"), None)
            .await
            .map_err(to_anyhow)?;
        self.0.success(response).await.map(|_| ()).map_err(to_anyhow)
    }
}

// ----- payments ------------------------------------------------------------------------------

/// Payments over HTTP: starting a payment and refunding one.
pub struct RemotePayments(pub Arc<Peer>);

#[async_trait]
impl orders::service::Payments for RemotePayments {
    async fn start(&self, request: orders::service::StartPayment) -> Result<orders::service::StartedPayment, ApiError> {
        let body = serde_json::to_value(wire::StartPayment {
            order_number: request.order_number,
            user_id: request.user_id,
            method: request.method,
            amount_minor: request.amount_minor,
            currency: request.currency,
            correlation_id: request.correlation_id,
        })
        .map_err(|err| ApiError::Internal(err.into()))?;
        let path = format!("/internal/v1/payments/orders/{}", request.order_id);
        let response = self.0.call(Method::PUT, &path, Some(&body)).await?;
        self.0.json(response).await
    }

    async fn refund(
        &self,
        order_id: Uuid,
        amount: Option<i64>,
        reason: &str,
        key: &str,
        correlation_id: Option<&str>,
    ) -> Result<(), ApiError> {
        let body = serde_json::to_value(wire::Refund {
            amount_minor: amount,
            reason: reason.to_owned(),
            correlation_id: correlation_id.map(str::to_owned),
        })
        .map_err(|err| ApiError::Internal(err.into()))?;
        let path = format!("/internal/v1/payments/orders/{order_id}/refunds/{}", segment(key));
        let response = self.0.call(Method::PUT, &path, Some(&body)).await?;
        self.0.success(response).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("ab-C_1.~"), "ab-C_1.~");
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
