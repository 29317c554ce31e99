//! Configuration: built-in defaults, then an optional `mercato.toml`, then `MERCATO_*`
//! environment variables (nested keys with `__`, e.g. `MERCATO_RATE_LIMIT__PER_USER_PER_MINUTE`),
//! then command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// One machine, embedded backends allowed.
    Development,
    /// Refuses embedded backends and default secrets.
    Production,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub profile: Profile,
    /// Where SQLite files, the event log, mail and the search index live.
    pub data_dir: PathBuf,
    pub host: String,
    pub port: u16,
    /// The URL people reach Mercato at; printed at start and used in links.
    pub public_url: Option<String>,
    /// `json` (default) or `pretty`.
    pub log_format: String,
    /// The first admin account, created at first start if no admin exists.
    #[serde(deserialize_with = "text_or_scalar")]
    pub admin_email: Option<String>,
    /// Taken as text even when it looks like a number (`MERCATO_ADMIN_PASSWORD=20242025`).
    #[serde(deserialize_with = "text_or_scalar")]
    pub admin_password: Option<String>,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    pub rate_limit: RateLimitConfig,
    pub login_throttle: LoginThrottleConfig,
    pub bus: BusConfig,
    pub database: DatabaseConfig,
    pub identity: IdentityConfig,
    pub catalog: CatalogConfig,
    pub inventory: InventoryConfig,
    pub cart: CartConfig,
    pub orders: OrdersConfig,
    pub payments: PaymentsConfig,
    pub notifications: NotificationsConfig,
    pub delivery: DeliveryConfig,
    pub cluster: ClusterConfig,
    pub gateway: GatewayConfig,
    pub telemetry: TelemetryConfig,
}

/// Trace export. Logs and `/metrics` are always on; traces leave the process only when an
/// OTLP endpoint is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP collector's base URL (`http://collector:4318`): spans are sent to
    /// `<url>/v1/traces` as protobuf. Unset: no trace export.
    pub otlp_endpoint: Option<String>,
    /// The exported spans' `service.name`; default `mercato`, or `mercato-<service>` for
    /// `mercato serve <service>`.
    pub service_name: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0; a request that arrives with a
    /// `traceparent` follows its caller's decision.
    pub sample_ratio: f64,
    /// Whether the public edge (the all-in-one server, the gateway) continues the trace a
    /// request arrives with (`traceparent`): set it when a trusted proxy or tracer sits in front.
    /// Off, a client can neither join another trace nor force its requests to be recorded.
    /// Services behind the gateway always continue the gateway's trace.
    pub trust_incoming_traceparent: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
            trust_incoming_traceparent: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    /// Where services fetch the JWKS in the distributed mode.
    pub jwks_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    pub body_limit_bytes: usize,
    pub request_timeout_secs: u64,
    /// Origins allowed by CORS; empty means same-origin only.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub per_user_per_minute: u32,
    pub per_ip_per_minute: u32,
    /// Where the buckets live: `memory` (this process) or `redis` (shared by every replica).
    pub store: RateLimitStore,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the limiter writes.
    pub redis_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStore {
    Memory,
    /// A second level in Redis; without Redis the cache works from memory alone.
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitStore {
    Memory,
    /// Token buckets in Redis, taken by one Lua script; requests pass while Redis is unreachable.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LoginThrottleConfig {
    pub max_failures: u32,
    pub base_lockout_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    /// The durable in-process log (`data/bus.db`).
    Log,
    Nats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BusConfig {
    pub kind: BusKind,
    pub nats_url: String,
    pub nats_stream: String,
    pub nats_subject_prefix: String,
    pub max_attempts: u32,
    pub retry_base_ms: u64,
    /// The in-process log keeps events every group has consumed this long, then prunes them.
    pub log_retention_hours: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    pub max_connections: u32,
    /// Per-service database URLs (`identity = "postgres://…"`); a service without one uses
    /// `sqlite://<data_dir>/<service>.db`.
    pub urls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentityConfig {
    pub password_reset_ttl_secs: u64,
    pub email_verification_ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CatalogConfig {
    /// The shop currency (ISO 4217) every catalog price is in.
    pub currency: String,
    /// How long a cached product page, list or search answer may be served.
    pub cache_ttl_secs: u64,
    /// How many mebibytes of answers the read cache holds, per part (product pages; lists and
    /// searches). Bounded in bytes, not entries: a search answer with facets is tens of kilobytes.
    pub cache_max_mb: u64,
    /// `memory`: the cache is this process's alone. `redis`: a second level in Redis shared by
    /// every catalog replica, invalidated by any of them (the distributed mode).
    pub cache_store: CacheStore,
    pub cache_redis_url: Option<String>,
    /// Prepended to every key of the Redis cache.
    pub cache_redis_prefix: String,
    /// With `redis`: how long a replica keeps an answer in its own memory in front of Redis
    /// (the longest another replica's change can go unseen if its event is late).
    pub cache_local_ttl_ms: u64,
    /// How many demo products a first all-in-one start seeds (0: none).
    pub seed_products: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct InventoryConfig {
    /// How long a reservation holds stock for an unpaid order.
    pub reservation_ttl_secs: u64,
    /// The low-stock threshold new SKUs get (0: no alerts).
    pub low_stock_threshold: i64,
    /// How often expired reservations are looked for.
    pub sweep_interval_secs: u64,
    /// Reserves, commits and releases that arrive together are written in one transaction
    /// (each keeps its own all-or-nothing outcome); `false`: a transaction each.
    pub batch_reservations: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OrdersConfig {
    /// The flat shipping fee of an order (minor units of the shop's currency).
    pub shipping_flat_minor: i64,
    /// Orders whose goods (after the discount) reach this ship free; absent: never free.
    pub free_shipping_threshold_minor: Option<i64>,
    /// Tax rate per destination country (ISO 3166-1 alpha-2), in basis points (1900 = 19 %).
    pub tax_rates_bps: BTreeMap<String, i64>,
    /// The rate for countries not listed, in basis points.
    pub default_tax_bps: i64,
    /// How long after delivery a customer may ask to return items.
    pub return_window_days: i64,
    /// How long an `Idempotency-Key` and its stored response are kept.
    pub idempotency_ttl_secs: u64,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            shipping_flat_minor: 499,
            free_shipping_threshold_minor: Some(5_000),
            tax_rates_bps: BTreeMap::new(),
            default_tax_bps: 0,
            return_window_days: 30,
            idempotency_ttl_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentsConfig {
    /// Secrets the mock provider's webhooks are signed with: the first signs, any verifies
    /// (rotation). The built-in development secret is refused by the production profile.
    pub webhook_secrets: Vec<String>,
    /// How far a webhook's timestamp may be from now.
    pub webhook_tolerance_secs: u64,
    /// Longest wait for one provider call.
    pub provider_timeout_ms: u64,
    /// Consecutive provider failures that open the circuit breaker, and how long it stays open.
    pub breaker_threshold: u32,
    pub breaker_open_secs: u64,
    /// The mock provider decides by itself (tests, load runs); also `MERCATO_PAYMENTS_MOCK_AUTO=true`.
    pub mock_auto: bool,
    /// In automatic mode: the share of payments approved (0.0–1.0).
    pub mock_approve_ratio: f64,
    /// In automatic mode: how long the provider takes to decide.
    pub mock_delay_ms: u64,
    /// In automatic mode: deliver every webhook twice.
    pub mock_duplicate_webhooks: bool,
    /// In automatic mode: deliver webhooks this much later still.
    pub mock_late_ms: u64,
}

/// The services that own a relational database.
pub const SERVICES_WITH_DATABASES: [&str; 8] = [
    "identity",
    "catalog",
    "inventory",
    "cart",
    "orders",
    "payments",
    "notifications",
    "delivery",
];

/// The development webhook secret; fine on one machine, refused in production.
pub const DEV_WEBHOOK_SECRET: &str = "whsec_mercato_development_only";

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            webhook_secrets: vec![DEV_WEBHOOK_SECRET.to_owned()],
            webhook_tolerance_secs: 300,
            provider_timeout_ms: 5_000,
            breaker_threshold: 5,
            breaker_open_secs: 30,
            mock_auto: false,
            mock_approve_ratio: 1.0,
            mock_delay_ms: 0,
            mock_duplicate_webhooks: false,
            mock_late_ms: 0,
        }
    }
}

/// How email leaves Mercato.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailerKind {
    /// `.eml` files under `<data dir>/mail` (one machine; refused in production).
    File,
    /// An SMTP server (`notifications.smtp_*`).
    Smtp,
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text (a relay on the same host or network only).
    None,
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NotificationsConfig {
    pub mailer: MailerKind,
    /// The `From:` of every email.
    pub from: String,
    /// Where operational alerts (low stock) go.
    pub operations_email: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_username: Option<String>,
    #[serde(deserialize_with = "text_or_scalar")]
    pub smtp_password: Option<String>,
    pub smtp_tls: SmtpTls,
    pub smtp_timeout_secs: u64,
    /// The shop's name in emails.
    pub shop_name: String,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            mailer: MailerKind::File,
            from: "Mercato <no-reply@mercato.local>".to_owned(),
            operations_email: "operations@mercato.local".to_owned(),
            smtp_host: "localhost".to_owned(),
            smtp_port: 587,
            smtp_username: None,
            smtp_password: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_timeout_secs: 10,
            shop_name: "Mercato".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// Assign each new shipment to the least-loaded agent serving its city.
    pub auto_assign: bool,
    /// Wrong delivery codes before the code is locked (an admin issues a new one).
    pub code_max_attempts: u32,
    /// How often shipments still waiting for an agent are offered again.
    pub sweep_interval_secs: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            auto_assign: true,
            code_max_attempts: 5,
            sweep_interval_secs: 30,
        }
    }
}

/// Where carts live.
/// How the processes of the distributed mode find and trust each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// The base URLs of each service's instances by service name, comma-separated
    /// (`MERCATO_CLUSTER__URLS__CATALOG=http://10.0.0.5:8080,http://10.0.0.6:8080`). Services
    /// call the first one (behind a load balancer) or spread over them; the gateway pools them.
    pub urls: BTreeMap<String, String>,
    /// The secret a service presents on its calls to another's `/internal` routes.
    #[serde(deserialize_with = "text_or_scalar")]
    pub service_token: Option<String>,
    /// This process's name among the replicas of its service (default: host name and port).
    /// Consumers that keep state per replica, like the search index, are named after it.
    pub replica: Option<String>,
    /// Longest wait for one call to another service.
    pub call_timeout_ms: u64,
    /// Extra attempts of an idempotent call after a connection error or a 5xx.
    pub call_retries: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            urls: BTreeMap::new(),
            service_token: None,
            replica: None,
            call_timeout_ms: 5_000,
            call_retries: 2,
        }
    }
}

/// The shortest service token the cluster accepts.
pub const MIN_SERVICE_TOKEN_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastConnections,
}

/// The gateway of the distributed mode (`mercato serve gateway`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// How a request picks among a service's healthy instances.
    pub balance: Balance,
    /// How often every instance's `/health/ready` is asked.
    pub health_interval_ms: u64,
    /// Consecutive failures (connection errors, timeouts, 502/503/504) that take an instance
    /// out of its pool, and for how long.
    pub eject_after: u32,
    pub eject_secs: u64,
    /// Extra attempts, on another instance, of idempotent requests only.
    pub retries: u32,
    pub connect_timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            balance: Balance::RoundRobin,
            health_interval_ms: 2_000,
            eject_after: 3,
            eject_secs: 10,
            retries: 1,
            connect_timeout_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStoreKind {
    /// In the cart service's own database (the all-in-one default).
    Sql,
    /// In Redis (`cart.redis_url`): a hash per cart with a TTL.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CartConfig {
    pub store: CartStoreKind,
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the cart writes.
    pub redis_prefix: String,
    /// A cart nobody writes to for this long is gone.
    pub ttl_secs: u64,
    /// Most units of one SKU per cart.
    pub max_quantity: i64,
    /// A cart with items idle this long is reported once as cart.abandoned.
    pub abandoned_after_secs: u64,
    pub sweep_interval_secs: u64,
    /// With `store = "sql"` in the all-in-one mode: carts are also kept in this process's memory
    /// (reads from memory, writes grouped into shared transactions). The distributed mode never
    /// keeps them: its replicas share the database.
    pub keep_in_memory: bool,
}

impl Default for CartConfig {
    fn default() -> Self {
        Self {
            store: CartStoreKind::Sql,
            redis_url: None,
            redis_prefix: "mercato:".to_owned(),
            ttl_secs: 24 * 3600,
            max_quantity: 99,
            abandoned_after_secs: 3600,
            sweep_interval_secs: 60,
            keep_in_memory: true,
        }
    }
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            reservation_ttl_secs: 15 * 60,
            low_stock_threshold: 5,
            sweep_interval_secs: 5,
            batch_reservations: true,
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            currency: "USD".to_owned(),
            cache_ttl_secs: 60,
            cache_max_mb: 64,
            cache_store: CacheStore::Memory,
            cache_redis_url: None,
            cache_redis_prefix: "mercato:".to_owned(),
            cache_local_ttl_ms: 2_000,
            seed_products: 1_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            profile: Profile::Development,
            data_dir: PathBuf::from("data"),
            host: "127.0.0.1".to_owned(),
            port: 8080,
            public_url: None,
            log_format: "json".to_owned(),
            admin_email: None,
            admin_password: None,
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            rate_limit: RateLimitConfig::default(),
            login_throttle: LoginThrottleConfig::default(),
            bus: BusConfig::default(),
            database: DatabaseConfig::default(),
            identity: IdentityConfig::default(),
            catalog: CatalogConfig::default(),
            inventory: InventoryConfig::default(),
            cart: CartConfig::default(),
            orders: OrdersConfig::default(),
            payments: PaymentsConfig::default(),
            notifications: NotificationsConfig::default(),
            delivery: DeliveryConfig::default(),
            cluster: ClusterConfig::default(),
            gateway: GatewayConfig::default(),
            telemetry: TelemetryConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "mercato".to_owned(),
            audience: "mercato".to_owned(),
            access_ttl_secs: 15 * 60,
            refresh_ttl_secs: 30 * 24 * 3600,
            jwks_url: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            cors_origins: Vec::new(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_user_per_minute: 100,
            per_ip_per_minute: 300,
            store: RateLimitStore::Memory,
            redis_url: None,
            redis_prefix: "mercato:".to_owned(),
        }
    }
}

impl Default for LoginThrottleConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            base_lockout_secs: 30,
        }
    }
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::Log,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_stream: "MERCATO_EVENTS".to_owned(),
            nats_subject_prefix: "mercato.events".to_owned(),
            max_attempts: 3,
            retry_base_ms: 200,
            log_retention_hours: 7 * 24,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            urls: BTreeMap::new(),
        }
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            password_reset_ttl_secs: 3600,
            email_verification_ttl_secs: 24 * 3600,
        }
    }
}

impl Config {
    /// Defaults, then `file` (or `./mercato.toml` when it exists), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None => figment = figment.merge(Toml::file("mercato.toml")),
        }
        figment
            .merge(Env::prefixed("MERCATO_").split("__"))
            // The documented switch of the mock provider's automatic mode.
            .merge(
                Env::raw()
                    .only(&["MERCATO_PAYMENTS_MOCK_AUTO"])
                    .map(|_| "payments.mock_auto".into()),
            )
            .extract()
            .map_err(Box::new)
    }

    /// The database URL of `service`.
    pub fn database_url(&self, service: &str) -> String {
        self.database
            .urls
            .get(service)
            .cloned()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join(format!("{service}.db")).display()))
    }

    /// The configured instances of `service` (`cluster.urls`), without trailing slashes.
    pub fn service_urls(&self, service: &str) -> Vec<String> {
        self.cluster
            .urls
            .get(service)
            .map(|urls| {
                urls.split(',')
                    .map(|u| u.trim().trim_end_matches('/').to_owned())
                    .filter(|u| !u.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The service token, when it is long enough to be trusted.
    pub fn service_token(&self) -> Result<&str, String> {
        match self.cluster.service_token.as_deref().map(str::trim) {
            Some(token) if token.len() >= MIN_SERVICE_TOKEN_LEN => Ok(token),
            Some(_) => Err(format!(
                "cluster.service_token is shorter than {MIN_SERVICE_TOKEN_LEN} characters; set MERCATO_CLUSTER__SERVICE_TOKEN"
            )),
            None => Err("cluster.service_token is not set; set MERCATO_CLUSTER__SERVICE_TOKEN (at least \
                 32 random characters, the same for every service)"
                .to_owned()),
        }
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", self.host, self.port))
    }

    pub fn retry_policy(&self) -> crate::bus::RetryPolicy {
        crate::bus::RetryPolicy {
            max_attempts: self.bus.max_attempts.max(1),
            base_backoff: Duration::from_millis(self.bus.retry_base_ms),
        }
    }

    /// The production profile's guard against embedded backends: names every setting that must change.
    pub fn check_production(&self) -> Result<(), String> {
        if self.profile != Profile::Production {
            return Ok(());
        }
        let mut problems = Vec::new();
        if matches!(self.bus.kind, BusKind::Log) {
            problems.push("bus.kind is `log`; set MERCATO_BUS__KIND=nats".to_owned());
        }
        if self.cart.store == CartStoreKind::Sql {
            problems.push("cart.store is `sql`; set MERCATO_CART__STORE=redis and MERCATO_CART__REDIS_URL".to_owned());
        }
        if self.payments.webhook_secrets.is_empty()
            || self
                .payments
                .webhook_secrets
                .iter()
                .any(|s| s == DEV_WEBHOOK_SECRET || s.len() < 16)
        {
            problems.push(
                "payments.webhook_secrets holds the development secret or one shorter than 16 characters; \
                 set MERCATO_PAYMENTS__WEBHOOK_SECRETS"
                    .to_owned(),
            );
        }
        if self.notifications.mailer == MailerKind::File {
            problems.push(
                "notifications.mailer is `file`; set MERCATO_NOTIFICATIONS__MAILER=smtp and MERCATO_NOTIFICATIONS__SMTP_HOST"
                    .to_owned(),
            );
        }
        for service in SERVICES_WITH_DATABASES {
            if self.database_url(service).starts_with("sqlite:") {
                problems.push(format!(
                    "{service} uses SQLite; set MERCATO_DATABASE__URLS__{}",
                    service.to_uppercase()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the production profile refuses this configuration: {}",
                problems.join("; ")
            ))
        }
    }
}

/// Environment values are parsed as TOML-like scalars, so a digits-only password arrives as a
/// number: accept any scalar for text settings.
fn text_or_scalar<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Scalar>::deserialize(deserializer)?.map(|value| match value {
        Scalar::Text(text) => text,
        Scalar::Integer(n) => n.to_string(),
        Scalar::Float(n) => n.to_string(),
        Scalar::Bool(b) => b.to_string(),
    }))
}

#[cfg(test)]
// `figment::Jail` closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn digits_only_passwords_are_text() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("MERCATO_ADMIN_PASSWORD", "20242025");
            let config = Config::load(None).map_err(|e| *e)?;
            assert_eq!(config.admin_password.as_deref(), Some("20242025"));
            assert_eq!(config.admin_email, None);
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("mercato.toml", "port = 9000\n[rate_limit]\nper_user_per_minute = 7\n")?;
            jail.set_env("MERCATO_PORT", "9100");
            let config = Config::load(None).map_err(|e| *e)?;
            assert_eq!(config.port, 9100);
            assert_eq!(config.rate_limit.per_user_per_minute, 7);
            assert_eq!(config.rate_limit.per_ip_per_minute, 300);
            assert_eq!(config.database_url("identity"), "sqlite://data/identity.db");
            Ok(())
        });
    }

    #[test]
    fn the_mock_providers_automatic_mode_has_its_own_switch() {
        figment::Jail::expect_with(|jail| {
            assert!(!Config::load(None).map_err(|e| *e)?.payments.mock_auto);
            jail.set_env("MERCATO_PAYMENTS_MOCK_AUTO", "true");
            let config = Config::load(None).map_err(|e| *e)?;
            assert!(config.payments.mock_auto);
            jail.set_env("MERCATO_PAYMENTS_MOCK_AUTO", "false");
            jail.set_env("MERCATO_PAYMENTS__MOCK_APPROVE_RATIO", "0.25");
            let config = Config::load(None).map_err(|e| *e)?;
            assert!(!config.payments.mock_auto);
            assert_eq!(config.payments.mock_approve_ratio, 0.25);
            Ok(())
        });
    }

    #[test]
    fn production_refuses_embedded_backends() {
        let config = Config {
            profile: Profile::Production,
            ..Config::default()
        };
        let err = config.check_production().unwrap_err();
        assert!(
            err.contains("MERCATO_BUS__KIND")
                && err.contains("MERCATO_DATABASE__URLS__IDENTITY")
                && err.contains("MERCATO_DATABASE__URLS__CATALOG")
                && err.contains("MERCATO_DATABASE__URLS__INVENTORY")
                && err.contains("MERCATO_CART__STORE=redis")
                && err.contains("MERCATO_DATABASE__URLS__ORDERS")
                && err.contains("MERCATO_PAYMENTS__WEBHOOK_SECRETS")
                && err.contains("MERCATO_NOTIFICATIONS__MAILER=smtp")
                && err.contains("MERCATO_DATABASE__URLS__NOTIFICATIONS")
                && err.contains("MERCATO_DATABASE__URLS__DELIVERY"),
            "{err}"
        );
        let mut smtp = Config {
            profile: Profile::Production,
            ..Config::default()
        };
        smtp.notifications.mailer = MailerKind::Smtp;
        assert!(!smtp.check_production().unwrap_err().contains("NOTIFICATIONS__MAILER"));
        let mut redis_carts = Config {
            profile: Profile::Production,
            ..Config::default()
        };
        redis_carts.cart.store = CartStoreKind::Redis;
        assert!(!redis_carts
            .check_production()
            .unwrap_err()
            .contains("MERCATO_CART__STORE"));
    }
}
