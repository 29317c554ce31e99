//! Builds the running application from a [`Config`]: opens each service's database, migrates
//! it, picks the bus, starts the outbox relays and consumers, and assembles the router.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use cart::Cart;
use catalog::Catalog;
use identity::Identity;
use inventory::Inventory;
use platform::auth::{Role, TokenVerifier};
use platform::bus::log::LogBus;
use platform::bus::nats::{NatsBus, NatsConfig};
use platform::bus::Bus;
use platform::clock::{SharedClock, SystemClock};
use platform::config::{BusKind, CacheStore, CartStoreKind, Config};
use platform::consumer::{DeadLetters, EventHandler, IdempotentConsumer};
use platform::health::HealthChecks;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::ratelimit::{MemoryFailureThrottle, MemoryRateLimiter, ThrottlePolicy};
use platform::store::{Db, DbOptions};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::local::{
    CartLines, CatalogPrices, CatalogProducts, IdentityAgents, IdentityContacts, IdentityCustomers,
    InventoryReservations, InventoryStock, PaymentsForOrders,
};

/// A consumer that is not part of a built-in service (a shop's own integration, or a test).
/// Extension consumers keep their processed ids and dead letters in `extensions.db`.
#[derive(Clone)]
pub struct ExtensionConsumer {
    pub name: String,
    pub types: Vec<String>,
    pub handler: Arc<dyn EventHandler>,
}

/// What differs between a production start, a single-service start and a test start.
#[derive(Clone)]
pub struct AppOptions {
    pub clock: SharedClock,
    pub extension_consumers: Vec<ExtensionConsumer>,
    /// `Gateway`: everything behind the public edge (all-in-one). `Service`: one service
    /// process (`mercato serve <service>`) that a gateway fronts.
    pub mode: gateway::EdgeMode,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            extension_consumers: Vec::new(),
            mode: gateway::EdgeMode::Gateway,
        }
    }
}

/// The first admin account, when this start created it.
#[derive(Debug, Clone)]
pub struct CreatedAdmin {
    pub email: String,
    /// Set when the password was generated (and must be shown once).
    pub generated_password: Option<String>,
}

/// A running application: its router and the handles to stop it.
pub struct App {
    pub config: Config,
    pub router: Router,
    pub identity: Arc<Identity>,
    pub catalog: Arc<Catalog>,
    pub inventory: Arc<Inventory>,
    pub cart: Arc<Cart>,
    pub orders: Arc<orders::Orders>,
    pub payments: Arc<payments::Payments>,
    pub notifications: Arc<notifications::Notifications>,
    pub delivery: Arc<delivery::Delivery>,
    pub bus: Arc<dyn Bus>,
    /// The in-process log when the bus is the embedded one.
    pub log_bus: Option<LogBus>,
    pub dead_letters: Arc<DeadLetters>,
    pub created_admin: Option<CreatedAdmin>,
    cancel: CancellationToken,
    dbs: Vec<Db>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("dead_letters", &self.dead_letters).finish()
    }
}

pub async fn open_db(config: &Config, service: &str) -> anyhow::Result<Db> {
    let url = config.database_url(service);
    let options = DbOptions {
        max_connections: config.database.max_connections,
        ..DbOptions::default()
    };
    Db::connect(&url, &options)
        .await
        .with_context(|| format!("cannot open the {service} database"))
}

/// Opens and migrates the identity database.
pub async fn identity_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, identity::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(identity::SERVICE, identity::store::MIGRATIONS).await?;
    Ok(db)
}

/// Opens and migrates the catalog database.
pub async fn catalog_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, catalog::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(catalog::SERVICE, catalog::store::MIGRATIONS).await?;
    Ok(db)
}

/// Opens and migrates the inventory database.
pub async fn inventory_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, inventory::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(inventory::SERVICE, inventory::store::MIGRATIONS).await?;
    Ok(db)
}

pub fn build_inventory(config: &Config, db: Db, clock: SharedClock) -> Inventory {
    let settings = inventory::Settings {
        reservation_ttl: Duration::from_secs(config.inventory.reservation_ttl_secs),
        default_low_stock_threshold: config.inventory.low_stock_threshold.max(0),
        sweep_interval: Duration::from_secs(config.inventory.sweep_interval_secs.max(1)),
        batch_reservations: config.inventory.batch_reservations,
    };
    Inventory::new(db, clock, settings)
}

/// Opens and migrates the cart database (its outbox, and the carts when they live in SQL).
pub async fn cart_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, cart::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(cart::SERVICE, cart::store::MIGRATIONS).await?;
    Ok(db)
}

/// Builds the cart over its database, with its carts in SQL or Redis as configured. `sole_writer`
/// says this process is the only one writing the cart database (the all-in-one mode): then SQL
/// carts are also kept in memory, unless `cart.keep_in_memory` is off.
pub async fn build_cart(
    config: &Config,
    db: Db,
    products: Arc<dyn cart::service::Products>,
    stock: Arc<dyn cart::service::Stock>,
    clock: SharedClock,
    sole_writer: bool,
) -> anyhow::Result<Cart> {
    let ttl = Duration::from_secs(config.cart.ttl_secs.max(60));
    let store: Arc<dyn cart::store::CartStore> = match config.cart.store {
        CartStoreKind::Sql if sole_writer && config.cart.keep_in_memory => {
            Arc::new(cart::kept_store::KeptCartStore::new(db.clone(), ttl))
        }
        CartStoreKind::Sql => Arc::new(cart::store::SqlCartStore::new(db.clone(), ttl)),
        CartStoreKind::Redis => {
            let url = config
                .cart
                .redis_url
                .as_deref()
                .context("cart.store is `redis` but cart.redis_url is not set (MERCATO_CART__REDIS_URL)")?;
            Arc::new(
                cart::redis_store::RedisCartStore::connect(url, &config.cart.redis_prefix, ttl)
                    .await
                    .context("cannot connect to Redis for carts")?,
            )
        }
    };
    let settings = cart::Settings {
        max_quantity: config.cart.max_quantity.max(1),
        abandoned_after: Duration::from_secs(config.cart.abandoned_after_secs.max(1)),
        sweep_interval: Duration::from_secs(config.cart.sweep_interval_secs.max(1)),
    };
    Ok(Cart::new(
        db,
        store,
        products,
        stock,
        clock,
        settings,
        &config.catalog.currency,
    ))
}

/// Opens and migrates the orders database.
pub async fn orders_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, orders::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(orders::SERVICE, orders::store::MIGRATIONS).await?;
    Ok(db)
}

/// Opens and migrates the payments database.
pub async fn payments_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, payments::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(payments::SERVICE, payments::store::MIGRATIONS).await?;
    Ok(db)
}

/// Opens and migrates the notifications database.
pub async fn notifications_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, notifications::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(notifications::SERVICE, notifications::MIGRATIONS).await?;
    Ok(db)
}

/// Opens and migrates the delivery database.
pub async fn delivery_db(config: &Config) -> anyhow::Result<Db> {
    let db = open_db(config, delivery::SERVICE).await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(delivery::SERVICE, delivery::store::MIGRATIONS).await?;
    Ok(db)
}

pub fn build_delivery(
    config: &Config,
    db: Db,
    clock: SharedClock,
    agents: Arc<dyn delivery::AgentDirectory>,
) -> delivery::Delivery {
    let d = &config.delivery;
    let settings = delivery::Settings {
        code_max_attempts: d.code_max_attempts.max(1),
        auto_assign: d.auto_assign,
        sweep_interval: Duration::from_secs(d.sweep_interval_secs.max(1)),
    };
    delivery::Delivery::new(db, clock, settings, agents)
}

/// The mailer the configuration asks for: `.eml` files under `<data dir>/mail`, or SMTP.
pub fn build_mailer(config: &Config) -> anyhow::Result<Arc<dyn notifications::Mailer>> {
    use platform::config::{MailerKind, SmtpTls};
    let n = &config.notifications;
    let transport = match n.mailer {
        MailerKind::File => notifications::MailTransport::File(config.data_dir.join("mail")),
        MailerKind::Smtp => notifications::MailTransport::Smtp(notifications::SmtpSettings {
            host: n.smtp_host.clone(),
            port: n.smtp_port,
            username: n.smtp_username.clone(),
            password: n.smtp_password.clone(),
            tls: match n.smtp_tls {
                SmtpTls::None => notifications::SmtpTls::None,
                SmtpTls::Starttls => notifications::SmtpTls::Starttls,
                SmtpTls::Tls => notifications::SmtpTls::Tls,
            },
            timeout: Duration::from_secs(n.smtp_timeout_secs.max(1)),
        }),
    };
    transport
        .build(config.profile)
        .map_err(|err| anyhow::anyhow!("cannot set up the mailer: {err}"))
}

pub fn build_notifications(
    config: &Config,
    db: Db,
    clock: SharedClock,
    mailer: Arc<dyn notifications::Mailer>,
    directory: Arc<dyn notifications::Directory>,
) -> notifications::Notifications {
    let n = &config.notifications;
    let settings = notifications::Settings {
        from: n.from.clone(),
        operations_email: n.operations_email.clone(),
        public_url: config.public_url(),
        shop_name: n.shop_name.clone(),
        // A send is about ten SMTP commands, each up to the timeout: a claim goes stale only
        // well after an attempt has given up (it stops at half of this).
        stale_after: Duration::from_secs(n.smtp_timeout_secs.max(1).saturating_mul(30).max(120)),
    };
    notifications::Notifications::new(db, clock, settings, mailer, directory)
}

/// Builds payments with the mock provider, in automatic mode when configured.
pub fn build_payments(config: &Config, db: Db, clock: SharedClock) -> Arc<payments::Payments> {
    let p = &config.payments;
    let settings = payments::Settings {
        public_url: config.public_url(),
        webhook_secrets: p.webhook_secrets.clone(),
        tolerance_secs: i64::try_from(p.webhook_tolerance_secs).unwrap_or(300),
        provider_timeout: Duration::from_millis(p.provider_timeout_ms.max(1)),
        breaker_threshold: p.breaker_threshold.max(1),
        breaker_open_for: Duration::from_secs(p.breaker_open_secs.max(1)),
        mock_auto: p.mock_auto.then(|| payments::mock::AutoSettings {
            delay: Duration::from_millis(p.mock_delay_ms),
            approve_ratio: p.mock_approve_ratio.clamp(0.0, 1.0),
            duplicate_webhooks: p.mock_duplicate_webhooks,
            late_ms: p.mock_late_ms,
        }),
        ..payments::Settings::default()
    };
    payments::Payments::new(db, clock, settings)
}

pub fn build_orders(config: &Config, db: Db, clock: SharedClock, clients: orders::Clients) -> orders::Orders {
    let settings = orders::Settings {
        currency: config.catalog.currency.clone(),
        pricing: orders::domain::Pricing {
            shipping_flat: config.orders.shipping_flat_minor.max(0),
            free_shipping_threshold: config.orders.free_shipping_threshold_minor,
            tax_rates_bps: config
                .orders
                .tax_rates_bps
                .iter()
                .map(|(country, bps)| (country.to_ascii_uppercase(), *bps))
                .collect(),
            default_tax_bps: config.orders.default_tax_bps.max(0),
        },
        return_window: Duration::from_secs(
            u64::try_from(config.orders.return_window_days.clamp(0, 3650))
                .unwrap_or(0)
                .saturating_mul(86_400),
        ),
        idempotency_ttl: Duration::from_secs(config.orders.idempotency_ttl_secs.max(60)),
        // Twice the reservation's time: the reservation's expiry cancels an unpaid order first.
        unpaid_timeout: Duration::from_secs(config.inventory.reservation_ttl_secs.max(1).saturating_mul(2)),
        ..orders::Settings::default()
    };
    orders::Orders::new(db, clock, settings, clients)
}

/// Gives the demo catalog's SKUs their demo stock (those not stocked yet).
pub async fn seed_demo_stock(catalog_db: &Db, inventory: &Inventory) -> anyhow::Result<usize> {
    let seller = Some(catalog::seed::DEMO_SELLER.to_string());
    let skus: Vec<inventory::service::DemoSku> = catalog::seed::demo_skus(catalog_db)
        .await?
        .into_iter()
        .map(|(sku, product_id)| inventory::service::DemoSku {
            sku,
            product_id,
            seller_id: seller.clone(),
        })
        .collect();
    inventory
        .seed_demo_stock(&skus)
        .await
        .map_err(|err| anyhow::anyhow!("cannot seed the demo stock: {err}"))
}

/// Builds the catalog over its database, with its read cache (in memory, or with a Redis
/// second level) and the search index under `<data dir>/search`.
pub async fn build_catalog(config: &Config, db: Db, clock: SharedClock) -> anyhow::Result<Catalog> {
    let index =
        catalog::search::SearchIndex::open(&config.data_dir.join("search")).context("cannot open the search index")?;
    let ttl = Duration::from_secs(config.catalog.cache_ttl_secs);
    let cache: Arc<dyn catalog::cache::Cache> = match config.catalog.cache_store {
        CacheStore::Memory => Arc::new(catalog::cache::MemoryCache::new(ttl, config.catalog.cache_max_mb << 20)),
        CacheStore::Redis => {
            let url = config
                .catalog
                .cache_redis_url
                .as_deref()
                .context("catalog.cache_store is redis: set MERCATO_CATALOG__CACHE_REDIS_URL")?;
            Arc::new(
                catalog::redis_cache::TieredCache::connect(
                    url,
                    &config.catalog.cache_redis_prefix,
                    ttl,
                    Duration::from_millis(config.catalog.cache_local_ttl_ms),
                    config.catalog.cache_max_mb << 20,
                )
                .await
                .context("cannot connect to Redis for the catalog cache")?,
            )
        }
    };
    let settings = catalog::Settings {
        currency: config.catalog.currency.clone(),
    };
    Ok(Catalog::new(db, clock, cache, Arc::new(index), settings))
}

/// Seeds the demo catalog and its stock on a first start (no categories yet), unless
/// configured off.
async fn seed_first_start(config: &Config, catalog: &Catalog, inventory: &Inventory) -> anyhow::Result<()> {
    if config.catalog.seed_products == 0 || !catalog::store::all_categories(catalog.db().reader()).await?.is_empty() {
        return Ok(());
    }
    let report = catalog::seed::seed(catalog.db(), config.catalog.seed_products, platform::clock::now_ms()).await?;
    let stocked = seed_demo_stock(catalog.db(), inventory).await?;
    tracing::info!(
        products = report.products,
        categories = report.categories,
        stocked_skus = stocked,
        elapsed_ms = report.elapsed_ms as u64,
        "seeded the demo catalog"
    );
    Ok(())
}

pub async fn build_identity(config: &Config, db: Db, clock: SharedClock) -> anyhow::Result<Identity> {
    let policy = ThrottlePolicy {
        max_failures: config.login_throttle.max_failures.max(1),
        base_lockout: Duration::from_secs(config.login_throttle.base_lockout_secs),
    };
    // Login throttles live where the rate limits do: in Redis, every replica counts together.
    let throttle: Arc<dyn platform::ratelimit::FailureThrottle> = match config.rate_limit.store {
        platform::config::RateLimitStore::Memory => Arc::new(MemoryFailureThrottle::new(policy, clock.clone())),
        platform::config::RateLimitStore::Redis => {
            let url = config.rate_limit.redis_url.as_deref().context(
                "rate_limit.store is `redis` but rate_limit.redis_url is not set (MERCATO_RATE_LIMIT__REDIS_URL)",
            )?;
            Arc::new(
                platform::ratelimit::redis_limiter::RedisFailureThrottle::connect(
                    url,
                    &config.rate_limit.redis_prefix,
                    policy,
                    clock.clone(),
                )
                .await?,
            )
        }
    };
    let settings = identity::Settings {
        issuer: config.auth.issuer.clone(),
        audience: config.auth.audience.clone(),
        access_ttl: Duration::from_secs(config.auth.access_ttl_secs),
        refresh_ttl: Duration::from_secs(config.auth.refresh_ttl_secs),
        reset_ttl: Duration::from_secs(config.identity.password_reset_ttl_secs),
        verification_ttl: Duration::from_secs(config.identity.email_verification_ttl_secs),
    };
    Identity::new(db, clock, throttle, settings).await
}

/// The edge's rate limiter: in this process's memory, or in Redis shared by every replica.
pub async fn build_rate_limiter(
    config: &Config,
    clock: SharedClock,
) -> anyhow::Result<Arc<dyn platform::ratelimit::RateLimiter>> {
    use platform::config::RateLimitStore;
    let r = &config.rate_limit;
    Ok(match r.store {
        RateLimitStore::Memory => Arc::new(MemoryRateLimiter::new(clock)),
        RateLimitStore::Redis => {
            let url = r.redis_url.as_deref().context(
                "rate_limit.store is `redis` but rate_limit.redis_url is not set (MERCATO_RATE_LIMIT__REDIS_URL)",
            )?;
            Arc::new(platform::ratelimit::redis_limiter::RedisRateLimiter::connect(url, &r.redis_prefix, clock).await?)
        }
    })
}

/// The OpenAPI document of everything the all-in-one process serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let mut doc = identity::api::IdentityApi::openapi();
    doc.merge(catalog::api::CatalogApi::openapi());
    doc.merge(inventory::api::InventoryApi::openapi());
    doc.merge(cart::api::CartApi::openapi());
    doc.merge(orders::api::OrdersApi::openapi());
    doc.merge(payments::api::PaymentsApi::openapi());
    doc.merge(notifications::NotificationsApi::openapi());
    doc.merge(delivery::DeliveryApi::openapi());
    doc.merge(platform::consumer::DeadLettersApi::openapi());
    doc.info.title = "Mercato API".to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some("Mercato's public REST API. Errors are RFC 9457 problem+json.".to_owned());
    describe_errors(&mut doc);
    doc.components.get_or_insert_with(Default::default).add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .build(),
        ),
    );
    doc
}

/// Every error is `application/problem+json`, and some can come from any operation (the edge's
/// rate limit, body checks, the token check): say so in the document, once, for all operations.
fn describe_errors(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let problem = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    platform::error::PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("Problem")))
                        .build(),
                )
                .build(),
        )
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let responses = &mut operation.responses.responses;
            for (status, response) in responses.iter_mut() {
                if let (true, RefOr::T(response)) = (status.starts_with('4') || status.starts_with('5'), response) {
                    if let Some(content) = response.content.shift_remove("application/json") {
                        response
                            .content
                            .insert(platform::error::PROBLEM_JSON.to_owned(), content);
                    }
                }
            }
            let mut common = vec![("429", "too many requests; see `Retry-After`")];
            if operation.request_body.is_some() {
                common.extend([
                    ("400", "the body is not JSON, or `Content-Type` is missing"),
                    ("413", "the body is larger than the limit"),
                    ("422", "invalid fields"),
                ]);
            }
            if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                common.push(("401", "missing, invalid or expired access token"));
            }
            if path.starts_with("/api/v1/admin/") {
                common.push(("403", "the caller is not an admin"));
            }
            // Routes that hash a password wait for the bounded hashing pool.
            let hashes = [
                "/auth/register",
                "/auth/login",
                "/auth/password/reset",
                "/users/me/password",
            ];
            if hashes.iter().any(|suffix| path.ends_with(suffix)) {
                common.push(("503", "password hashing is at capacity; see `Retry-After`"));
            }
            for (status, description) in common {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description));
            }
        }
    }
}

/// The bus as configured: the in-process log (with its database, to be closed at the end) or
/// NATS JetStream.
pub async fn open_bus(
    config: &Config,
    cancel: &CancellationToken,
) -> anyhow::Result<(Arc<dyn Bus>, Option<LogBus>, Vec<Db>)> {
    Ok(match config.bus.kind {
        BusKind::Log => {
            let db = open_db(config, "bus").await?;
            let log = LogBus::open(db.clone(), cancel.clone()).await?;
            log.spawn_pruner(Duration::from_secs(config.bus.log_retention_hours.saturating_mul(3600)));
            (Arc::new(log.clone()), Some(log), vec![db])
        }
        BusKind::Nats => {
            let nats = NatsConfig {
                stream: config.bus.nats_stream.clone(),
                subject_prefix: config.bus.nats_subject_prefix.clone(),
                ..NatsConfig::new(&config.bus.nats_url)
            };
            (
                Arc::new(NatsBus::connect(nats, cancel.clone()).await?),
                None,
                Vec::new(),
            )
        }
    })
}

/// `/metrics`: the Prometheus text, with the dead letters still open and, in a process that
/// serves the catalog, its cache hit ratios.
pub fn metrics_router(dead_letters: Arc<DeadLetters>, catalog: Option<Arc<Catalog>>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let dead_letters = dead_letters.clone();
            if let Some(catalog) = &catalog {
                for (cache, ratio) in catalog.cache().hit_ratios() {
                    metrics::gauge!("mercato_cache_hit_ratio", "cache" => cache).set(ratio);
                }
            }
            async move {
                if let Ok(open) = dead_letters.count().await {
                    metrics::gauge!("mercato_dead_letters_open").set(open as f64);
                }
                platform::telemetry::render_metrics()
            }
        }),
    )
}

/// Every service's routes callable without a token.
pub fn public_routes() -> Vec<String> {
    identity::api::PUBLIC_ROUTES
        .iter()
        .chain(catalog::api::PUBLIC_ROUTES)
        .chain(inventory::api::PUBLIC_ROUTES)
        .chain(cart::api::PUBLIC_ROUTES)
        .chain(orders::api::PUBLIC_ROUTES)
        .chain(payments::api::PUBLIC_ROUTES)
        .chain(notifications::PUBLIC_ROUTES)
        .chain(delivery::PUBLIC_ROUTES)
        .map(|r| (*r).to_owned())
        .collect()
}

/// A consumer of a service: its name (its offsets and processed ids are kept under it), its
/// handler and the event types it takes.
pub type ConsumerSpec = (String, Arc<dyn EventHandler>, &'static [&'static str]);

pub fn register(dead_letters: &mut DeadLetters, db: &Db, specs: Vec<ConsumerSpec>) {
    for (name, handler, types) in specs {
        dead_letters.register(IdempotentConsumer::new(name, db.clone(), handler), types);
    }
}

/// The catalog's consumers. `replica` names this process among the catalog's replicas: each
/// replica keeps its own search index, so each follows the product events itself.
pub fn catalog_consumers(catalog: &Arc<Catalog>, replica: Option<&str>) -> Vec<ConsumerSpec> {
    let search = match replica {
        Some(replica) => format!("catalog-search-{replica}"),
        None => "catalog-search".to_owned(),
    };
    vec![
        (
            search,
            Arc::new(catalog::events::IndexFollower {
                indexer: catalog.indexer().clone(),
            }),
            catalog::events::INDEXED_EVENTS,
        ),
        (
            "catalog-verified-buyers".to_owned(),
            Arc::new(catalog::events::VerifiedBuyers),
            &[catalog::events::ORDER_DELIVERED],
        ),
        (
            "catalog-stock".to_owned(),
            Arc::new(catalog::events::StockSignals),
            &[catalog::events::AVAILABILITY_CHANGED],
        ),
    ]
}

pub fn inventory_consumers(inventory: &Arc<Inventory>) -> Vec<ConsumerSpec> {
    vec![
        (
            "inventory-products".to_owned(),
            Arc::new(inventory::events::ProductSkus {
                inventory: inventory.clone(),
            }),
            inventory::events::PRODUCT_EVENTS,
        ),
        (
            "inventory-orders".to_owned(),
            Arc::new(inventory::events::OrderReservations {
                inventory: inventory.clone(),
            }),
            inventory::events::ORDER_EVENTS,
        ),
    ]
}

pub fn cart_consumers(cart: &Arc<Cart>) -> Vec<ConsumerSpec> {
    vec![
        (
            "cart-reprice".to_owned(),
            Arc::new(cart::events::Reprice { cart: cart.clone() }),
            cart::events::PRODUCT_EVENTS,
        ),
        (
            "cart-orders".to_owned(),
            Arc::new(cart::events::ClearOnPaid { cart: cart.clone() }),
            cart::events::ORDER_EVENTS,
        ),
        (
            "cart-checkouts".to_owned(),
            Arc::new(cart::events::CheckedOut),
            &[cart::events::ORDER_CREATED],
        ),
        (
            "cart-holds".to_owned(),
            Arc::new(cart::events::ReleaseHolds { cart: cart.clone() }),
            cart::events::ENDED_ORDER_EVENTS,
        ),
    ]
}

pub fn orders_consumers(orders: &Arc<orders::Orders>) -> Vec<ConsumerSpec> {
    vec![
        (
            "orders-payments".to_owned(),
            Arc::new(orders::events::PaymentOutcomes { orders: orders.clone() }),
            orders::events::PAYMENT_EVENTS,
        ),
        (
            "orders-reservations".to_owned(),
            Arc::new(orders::events::ReservationExpiry { orders: orders.clone() }),
            &[orders::events::INVENTORY_RELEASED, orders::events::INVENTORY_UNFILLABLE],
        ),
        (
            "orders-shipments".to_owned(),
            Arc::new(orders::events::ShipmentProgress { orders: orders.clone() }),
            orders::events::SHIPMENT_EVENTS,
        ),
    ]
}

pub fn payments_consumers(payments: &Arc<payments::Payments>) -> Vec<ConsumerSpec> {
    vec![(
        "payments-orders".to_owned(),
        Arc::new(payments::events::OrderPayments {
            payments: payments.clone(),
        }),
        payments::events::ORDER_EVENTS,
    )]
}

pub fn notifications_consumers(notifications: &Arc<notifications::Notifications>) -> Vec<ConsumerSpec> {
    vec![(
        "notifications".to_owned(),
        Arc::new(notifications::NotificationEvents {
            notifications: notifications.clone(),
        }),
        notifications::EVENT_TYPES,
    )]
}

pub fn delivery_consumers(delivery: &Arc<delivery::Delivery>) -> Vec<ConsumerSpec> {
    vec![(
        "delivery-orders".to_owned(),
        Arc::new(delivery::OrderShipments {
            delivery: delivery.clone(),
        }),
        delivery::ORDER_EVENTS,
    )]
}

impl App {
    /// Starts the all-in-one application (without binding a port).
    pub async fn start(config: Config, options: AppOptions) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        // Install the metrics recorder before anything records.
        platform::telemetry::metrics_handle();
        let cancel = CancellationToken::new();
        let clock = options.clock.clone();

        let (bus, log_bus, mut dbs) = open_bus(&config, &cancel).await?;

        let identity_db = identity_db(&config).await?;
        dbs.push(identity_db.clone());
        let identity = Arc::new(build_identity(&config, identity_db.clone(), clock.clone()).await?);
        identity
            .outbox()
            .spawn_relay(identity::SERVICE, bus.clone(), cancel.clone());
        let created_admin = ensure_admin(&config, &identity).await?;

        let catalog_db = catalog_db(&config).await?;
        dbs.push(catalog_db.clone());
        let catalog = Arc::new(build_catalog(&config, catalog_db.clone(), clock.clone()).await?);
        let inventory_db = inventory_db(&config).await?;
        dbs.push(inventory_db.clone());
        let inventory = Arc::new(build_inventory(&config, inventory_db.clone(), clock.clone()));
        seed_first_start(&config, &catalog, &inventory).await?;
        // Rebuilds a missing index and catches up one that fell behind, before serving.
        catalog
            .indexer()
            .catch_up()
            .await
            .context("cannot build the search index")?;
        catalog.indexer().spawn(cancel.clone());
        catalog
            .outbox()
            .spawn_relay(catalog::SERVICE, bus.clone(), cancel.clone());

        inventory
            .outbox()
            .spawn_relay(inventory::SERVICE, bus.clone(), cancel.clone());
        inventory.spawn_sweeper(cancel.clone());

        let cart_db = cart_db(&config).await?;
        dbs.push(cart_db.clone());
        let cart = Arc::new(
            build_cart(
                &config,
                cart_db.clone(),
                Arc::new(CatalogProducts(catalog.clone())),
                Arc::new(InventoryStock(inventory.clone())),
                clock.clone(),
                true,
            )
            .await?,
        );
        cart.outbox().spawn_relay(cart::SERVICE, bus.clone(), cancel.clone());
        cart.spawn_sweeper(cancel.clone());

        let payments_db = payments_db(&config).await?;
        dbs.push(payments_db.clone());
        let payments = build_payments(&config, payments_db.clone(), clock.clone());
        payments
            .outbox()
            .spawn_relay(payments::SERVICE, bus.clone(), cancel.clone());
        payments.spawn_sweeper(cancel.clone());

        let orders_db = orders_db(&config).await?;
        dbs.push(orders_db.clone());
        let clients = orders::Clients {
            carts: Arc::new(CartLines(cart.clone())),
            prices: Arc::new(CatalogPrices(catalog.clone())),
            customers: Arc::new(IdentityCustomers(identity.clone())),
            stock: Arc::new(InventoryReservations(inventory.clone())),
            payments: Arc::new(PaymentsForOrders(payments.clone())),
        };
        let orders = Arc::new(build_orders(&config, orders_db.clone(), clock.clone(), clients));
        orders
            .outbox()
            .spawn_relay(orders::SERVICE, bus.clone(), cancel.clone());
        orders.spawn_sweeper(cancel.clone());

        let notifications_db = notifications_db(&config).await?;
        dbs.push(notifications_db.clone());
        let notifications = Arc::new(build_notifications(
            &config,
            notifications_db.clone(),
            clock.clone(),
            build_mailer(&config)?,
            Arc::new(IdentityContacts(identity.clone())),
        ));

        let delivery_db = delivery_db(&config).await?;
        dbs.push(delivery_db.clone());
        let delivery = Arc::new(build_delivery(
            &config,
            delivery_db.clone(),
            clock.clone(),
            Arc::new(IdentityAgents(identity.clone())),
        ));
        delivery
            .outbox()
            .spawn_relay(delivery::SERVICE, bus.clone(), cancel.clone());
        delivery.spawn_sweeper(cancel.clone());

        let mut dead_letters = DeadLetters::default();
        let consumers = [
            (&catalog_db, catalog_consumers(&catalog, None)),
            (&inventory_db, inventory_consumers(&inventory)),
            (&cart_db, cart_consumers(&cart)),
            (&orders_db, orders_consumers(&orders)),
            (&payments_db, payments_consumers(&payments)),
            (&notifications_db, notifications_consumers(&notifications)),
            (&delivery_db, delivery_consumers(&delivery)),
        ];
        for (db, specs) in consumers {
            register(&mut dead_letters, db, specs);
        }
        if !options.extension_consumers.is_empty() {
            let db = open_db(&config, "extensions").await?;
            db.migrate("platform", PLATFORM_MIGRATIONS).await?;
            for extension in &options.extension_consumers {
                let types: Vec<&str> = extension.types.iter().map(String::as_str).collect();
                dead_letters.register(
                    IdempotentConsumer::new(extension.name.clone(), db.clone(), extension.handler.clone()),
                    &types,
                );
            }
            dbs.push(db);
        }
        dead_letters.start(bus.as_ref(), config.retry_policy()).await?;
        // Live order streams are woken through the bus, so a change made by any process reaches
        // the streams of every process.
        bus.watch(
            orders::live::LIVE_EVENTS.iter().map(|t| (*t).to_owned()).collect(),
            Arc::new(orders.live().clone()),
        )
        .await?;
        let dead_letters = Arc::new(dead_letters);

        let verifier = Arc::new(TokenVerifier::new(
            Arc::new(identity.keys().clone()),
            &config.auth.issuer,
            &config.auth.audience,
        ));
        let mut checks = HealthChecks::default();
        let service_dbs = [
            ("identity_db", &identity_db),
            ("catalog_db", &catalog_db),
            ("inventory_db", &inventory_db),
            ("cart_db", &cart_db),
            ("orders_db", &orders_db),
            ("payments_db", &payments_db),
            ("notifications_db", &notifications_db),
            ("delivery_db", &delivery_db),
        ];
        for (name, db) in service_dbs {
            let db = db.clone();
            checks.add(name, move || {
                let db = db.clone();
                async move { db.ping().await.map_err(Into::into) }
            });
        }
        let cart_for_health = cart.clone();
        checks.add("cart_store", move || {
            let cart = cart_for_health.clone();
            async move { cart.store().ping().await }
        });
        let bus_for_health = bus.clone();
        checks.add_advisory("bus", move || {
            let bus = bus_for_health.clone();
            async move { bus.ping().await }
        });

        let routes = Router::new()
            .merge(identity::api::router(identity.clone(), verifier.clone()))
            .merge(catalog::api::router(catalog.clone(), verifier.clone()))
            .merge(inventory::api::router(inventory.clone(), verifier.clone()))
            .merge(cart::api::router(cart.clone(), verifier.clone()))
            .merge(orders::api::router(orders.clone(), verifier.clone()))
            .merge(payments::api::router(payments.clone(), verifier.clone()))
            .merge(payments::api::psp_router(payments.clone()))
            .merge(notifications::router(notifications.clone(), verifier.clone()))
            .merge(delivery::router(delivery.clone(), verifier.clone()))
            .merge(platform::consumer::admin_router(dead_letters.clone()))
            .merge(checks.router())
            .merge(metrics_router(dead_letters.clone(), Some(catalog.clone())))
            .merge(gateway::docs_router(openapi()));
        let edge = gateway::Edge {
            mode: options.mode,
            http: config.http.clone(),
            rate_limit: config.rate_limit.clone(),
            limiter: build_rate_limiter(&config, clock.clone()).await?,
            public_routes: public_routes(),
            verifier,
        };
        let router = edge.wrap(routes);
        Ok(Self {
            config,
            router,
            identity,
            catalog,
            inventory,
            cart,
            orders,
            payments,
            notifications,
            delivery,
            bus,
            log_bus,
            dead_letters,
            created_admin,
            cancel,
            dbs,
        })
    }

    /// Stops background work and closes the databases.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let index = self.catalog.indexer().index().clone();
        let _ = tokio::task::spawn_blocking(move || index.close()).await;
        for db in &self.dbs {
            db.close().await;
        }
    }
}

/// Creates the first admin account when there is none: with `MERCATO_ADMIN_EMAIL` /
/// `MERCATO_ADMIN_PASSWORD` when set, else `admin@mercato.local` and a generated password.
pub(crate) async fn ensure_admin(config: &Config, identity: &Identity) -> anyhow::Result<Option<CreatedAdmin>> {
    if identity::store::admin_exists(identity.db().reader()).await? {
        return Ok(None);
    }
    let email = config
        .admin_email
        .clone()
        .unwrap_or_else(|| "admin@mercato.local".to_owned());
    let (password, generated) = match &config.admin_password {
        Some(password) => (password.clone(), None),
        None => {
            let password = identity::domain::generated_password();
            (password.clone(), Some(password))
        }
    };
    identity
        .create_user(&email, "Administrator", &password, Role::Admin, None)
        .await
        .map_err(|err| anyhow::anyhow!("cannot create the first admin account: {err}"))?;
    Ok(Some(CreatedAdmin {
        email,
        generated_password: generated,
    }))
}
