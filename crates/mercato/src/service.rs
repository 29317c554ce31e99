//! One service in a process of its own (`mercato serve <service>`), for the distributed mode:
//! the same service code as the all-in-one mode, with its own database, the shared bus (NATS
//! JetStream), its consumers, and the services it calls reached over HTTP (`crate::peers`).
//! It serves its public routes behind a service edge (the gateway in front does the edge
//! checks) and its `/internal/v1` routes to the services holding the cluster token.

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use catalog::Catalog;
use platform::auth::{HttpJwks, JwksSource, TokenVerifier};
use platform::clock::SharedClock;
use platform::config::{BusKind, Config};
use platform::consumer::DeadLetters;
use platform::health::HealthChecks;
use platform::store::Db;
use tokio_util::sync::CancellationToken;

use crate::app::{self, ConsumerSpec, CreatedAdmin};
use crate::internal;
use crate::peers::{self, Peer, RemoteCart, RemoteCatalog, RemoteIdentity, RemoteInventory, RemotePayments};

/// The services `mercato serve` runs, each in a process of its own.
pub const SERVICES: [&str; 8] = platform::config::SERVICES_WITH_DATABASES;

/// A running service process: its router and the handles to stop it.
pub struct ServiceApp {
    pub service: &'static str,
    pub router: Router,
    pub created_admin: Option<CreatedAdmin>,
    catalog: Option<Arc<Catalog>>,
    cancel: CancellationToken,
    dbs: Vec<Db>,
}

impl std::fmt::Debug for ServiceApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceApp").field("service", &self.service).finish()
    }
}

/// What one service contributes to its process.
struct Part {
    db: Db,
    routes: Router,
    internal: Router,
    public_routes: &'static [&'static str],
    consumers: Vec<ConsumerSpec>,
    catalog: Option<Arc<Catalog>>,
    orders: Option<Arc<orders::Orders>>,
    cart: Option<Arc<cart::Cart>>,
    created_admin: Option<CreatedAdmin>,
}

impl Part {
    fn new(db: Db, routes: Router, internal: Router, public_routes: &'static [&'static str]) -> Self {
        Self {
            db,
            routes,
            internal,
            public_routes,
            consumers: Vec::new(),
            catalog: None,
            orders: None,
            cart: None,
            created_admin: None,
        }
    }
}

/// The other services this process calls, each reached over HTTP.
struct Peers<'a> {
    config: &'a Config,
    token: &'a str,
    policy: platform::http_client::ClientPolicy,
}

impl Peers<'_> {
    fn get(&self, service: &'static str) -> anyhow::Result<Arc<Peer>> {
        Ok(Arc::new(Peer::new(
            service,
            &self.config.service_urls(service),
            self.token,
            &self.policy,
        )?))
    }
}

/// This process's name among its service's replicas, fit for a consumer name.
fn replica_name(config: &Config) -> String {
    let raw = config.cluster.replica.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".to_owned());
        format!("{host}-{}", config.port)
    });
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl ServiceApp {
    /// Starts `service` (without binding a port).
    pub async fn start(config: Config, service: &str, clock: SharedClock) -> anyhow::Result<Self> {
        let service: &'static str = SERVICES.iter().copied().find(|s| *s == service).with_context(|| {
            format!(
                "unknown service `{service}`; available: {}, gateway",
                SERVICES.join(", ")
            )
        })?;
        anyhow::ensure!(
            matches!(config.bus.kind, BusKind::Nats),
            "a service in a process of its own needs the shared bus; set MERCATO_BUS__KIND=nats"
        );
        let token = config.service_token().map_err(anyhow::Error::msg)?.to_owned();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
        platform::telemetry::metrics_handle();
        let cancel = CancellationToken::new();
        let (bus, _, mut dbs) = app::open_bus(&config, &cancel).await?;
        let peers = Peers {
            config: &config,
            token: &token,
            policy: peers::policy(&config),
        };

        // Identity verifies tokens with its own keys; every other service with identity's JWKS.
        let identity = if service == identity::SERVICE {
            let db = app::identity_db(&config).await?;
            Some(Arc::new(app::build_identity(&config, db, clock.clone()).await?))
        } else {
            None
        };
        let keys: Arc<dyn JwksSource> = match &identity {
            Some(identity) => Arc::new(identity.keys().clone()),
            None => Arc::new(HttpJwks {
                url: jwks_url(&config)?,
                client: reqwest::Client::new(),
            }),
        };
        let verifier = Arc::new(TokenVerifier::new(keys, &config.auth.issuer, &config.auth.audience));

        let part = match service {
            identity::SERVICE => {
                let identity = identity.expect("built above for the identity service");
                identity
                    .outbox()
                    .spawn_relay(identity::SERVICE, bus.clone(), cancel.clone());
                let mut part = Part::new(
                    identity.db().clone(),
                    identity::api::router(identity.clone(), verifier.clone()),
                    internal::identity(identity.clone()),
                    identity::api::PUBLIC_ROUTES,
                );
                part.created_admin = app::ensure_admin(&config, &identity).await?;
                part
            }
            catalog::SERVICE => {
                let db = app::catalog_db(&config).await?;
                let catalog = Arc::new(app::build_catalog(&config, db.clone(), clock.clone()).await?);
                catalog
                    .indexer()
                    .catch_up()
                    .await
                    .context("cannot build the search index")?;
                catalog.indexer().spawn(cancel.clone());
                catalog
                    .outbox()
                    .spawn_relay(catalog::SERVICE, bus.clone(), cancel.clone());
                let mut part = Part::new(
                    db,
                    catalog::api::router(catalog.clone(), verifier.clone()),
                    internal::catalog(catalog.clone()),
                    catalog::api::PUBLIC_ROUTES,
                );
                part.consumers = app::catalog_consumers(&catalog, Some(&replica_name(&config)));
                part.catalog = Some(catalog);
                part
            }
            inventory::SERVICE => {
                let db = app::inventory_db(&config).await?;
                let inventory = Arc::new(app::build_inventory(&config, db.clone(), clock.clone()));
                inventory
                    .outbox()
                    .spawn_relay(inventory::SERVICE, bus.clone(), cancel.clone());
                inventory.spawn_sweeper(cancel.clone());
                let mut part = Part::new(
                    db,
                    inventory::api::router(inventory.clone(), verifier.clone()),
                    internal::inventory(inventory.clone()),
                    inventory::api::PUBLIC_ROUTES,
                );
                part.consumers = app::inventory_consumers(&inventory);
                part
            }
            cart::SERVICE => {
                let db = app::cart_db(&config).await?;
                let cart = Arc::new(
                    app::build_cart(
                        &config,
                        db.clone(),
                        Arc::new(RemoteCatalog(peers.get(catalog::SERVICE)?)),
                        Arc::new(RemoteInventory(peers.get(inventory::SERVICE)?)),
                        clock.clone(),
                        false,
                    )
                    .await?,
                );
                cart.outbox().spawn_relay(cart::SERVICE, bus.clone(), cancel.clone());
                cart.spawn_sweeper(cancel.clone());
                let mut part = Part::new(
                    db,
                    cart::api::router(cart.clone(), verifier.clone()),
                    internal::cart(cart.clone()),
                    cart::api::PUBLIC_ROUTES,
                );
                part.consumers = app::cart_consumers(&cart);
                part.cart = Some(cart);
                part
            }
            orders::SERVICE => {
                let db = app::orders_db(&config).await?;
                let identity = Arc::new(RemoteIdentity(peers.get(identity::SERVICE)?));
                let clients = orders::Clients {
                    carts: Arc::new(RemoteCart(peers.get(cart::SERVICE)?)),
                    prices: Arc::new(RemoteCatalog(peers.get(catalog::SERVICE)?)),
                    customers: identity,
                    stock: Arc::new(RemoteInventory(peers.get(inventory::SERVICE)?)),
                    payments: Arc::new(RemotePayments(peers.get(payments::SERVICE)?)),
                };
                let orders = Arc::new(app::build_orders(&config, db.clone(), clock.clone(), clients));
                orders
                    .outbox()
                    .spawn_relay(orders::SERVICE, bus.clone(), cancel.clone());
                orders.spawn_sweeper(cancel.clone());
                let mut part = Part::new(
                    db,
                    orders::api::router(orders.clone(), verifier.clone()),
                    Router::new(),
                    orders::api::PUBLIC_ROUTES,
                );
                part.consumers = app::orders_consumers(&orders);
                part.orders = Some(orders);
                part
            }
            payments::SERVICE => {
                let db = app::payments_db(&config).await?;
                let payments = app::build_payments(&config, db.clone(), clock.clone());
                payments
                    .outbox()
                    .spawn_relay(payments::SERVICE, bus.clone(), cancel.clone());
                payments.spawn_sweeper(cancel.clone());
                let mut part = Part::new(
                    db,
                    payments::api::router(payments.clone(), verifier.clone())
                        .merge(payments::api::psp_router(payments.clone())),
                    internal::payments(payments.clone()),
                    payments::api::PUBLIC_ROUTES,
                );
                part.consumers = app::payments_consumers(&payments);
                part
            }
            notifications::SERVICE => {
                let db = app::notifications_db(&config).await?;
                let notifications = Arc::new(app::build_notifications(
                    &config,
                    db.clone(),
                    clock.clone(),
                    app::build_mailer(&config)?,
                    Arc::new(RemoteIdentity(peers.get(identity::SERVICE)?)),
                ));
                let mut part = Part::new(
                    db,
                    notifications::router(notifications.clone(), verifier.clone()),
                    Router::new(),
                    notifications::PUBLIC_ROUTES,
                );
                part.consumers = app::notifications_consumers(&notifications);
                part
            }
            delivery::SERVICE => {
                let db = app::delivery_db(&config).await?;
                let delivery = Arc::new(app::build_delivery(
                    &config,
                    db.clone(),
                    clock.clone(),
                    Arc::new(RemoteIdentity(peers.get(identity::SERVICE)?)),
                ));
                delivery
                    .outbox()
                    .spawn_relay(delivery::SERVICE, bus.clone(), cancel.clone());
                delivery.spawn_sweeper(cancel.clone());
                let mut part = Part::new(
                    db,
                    delivery::router(delivery.clone(), verifier.clone()),
                    Router::new(),
                    delivery::PUBLIC_ROUTES,
                );
                part.consumers = app::delivery_consumers(&delivery);
                part
            }
            other => anyhow::bail!("unknown service `{other}`"),
        };
        dbs.push(part.db.clone());

        let mut dead_letters = DeadLetters::default();
        app::register(&mut dead_letters, &part.db, part.consumers);
        dead_letters.start(bus.as_ref(), config.retry_policy()).await?;
        let dead_letters = Arc::new(dead_letters);
        if let Some(orders) = &part.orders {
            // Whichever replica a client streams from hears every order change through the bus.
            bus.watch(
                orders::live::LIVE_EVENTS.iter().map(|t| (*t).to_owned()).collect(),
                Arc::new(orders.live().clone()),
            )
            .await?;
        }

        let mut checks = HealthChecks::default();
        let db = part.db.clone();
        checks.add(&format!("{service}_db"), move || {
            let db = db.clone();
            async move { db.ping().await.map_err(Into::into) }
        });
        if let Some(cart) = part.cart.clone() {
            checks.add("cart_store", move || {
                let cart = cart.clone();
                async move { cart.store().ping().await }
            });
        }
        let bus_for_health = bus.clone();
        checks.add_advisory("bus", move || {
            let bus = bus_for_health.clone();
            async move { bus.ping().await }
        });

        let routes = part
            .routes
            .merge(internal::guard(part.internal, &token))
            .merge(platform::consumer::admin_router(dead_letters.clone()))
            .merge(checks.router())
            .merge(app::metrics_router(dead_letters, part.catalog.clone()));
        let edge = gateway::Edge {
            mode: gateway::EdgeMode::Service,
            http: config.http.clone(),
            rate_limit: config.rate_limit.clone(),
            limiter: app::build_rate_limiter(&config, clock.clone()).await?,
            public_routes: part.public_routes.iter().map(|r| (*r).to_owned()).collect(),
            verifier,
        };
        Ok(Self {
            service,
            router: edge.wrap(routes),
            created_admin: part.created_admin,
            catalog: part.catalog,
            cancel,
            dbs,
        })
    }

    /// Stops background work and closes the database.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        if let Some(catalog) = &self.catalog {
            let index = catalog.indexer().index().clone();
            let _ = tokio::task::spawn_blocking(move || index.close()).await;
        }
        for db in &self.dbs {
            db.close().await;
        }
    }
}

/// Where identity publishes its keys: `auth.jwks_url`, else the first identity instance.
pub fn jwks_url(config: &Config) -> anyhow::Result<String> {
    if let Some(url) = &config.auth.jwks_url {
        return Ok(url.clone());
    }
    let identity = config.service_urls(identity::SERVICE);
    let first = identity
        .first()
        .context("no JWKS address; set MERCATO_AUTH__JWKS_URL or MERCATO_CLUSTER__URLS__IDENTITY")?;
    Ok(format!("{first}/.well-known/jwks.json"))
}
