//! The `mercato` command: run the whole shop, one service, migrations, or admin tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mercato::app::{self, App, AppOptions};
use platform::auth::Role;
use platform::clock::SystemClock;
use platform::config::Config;
use platform::traces::TraceExport;

/// mimalloc instead of the system allocator: searches and JSON answers allocate many small
/// short-lived values, where glibc's malloc showed as a tenth of the CPU time in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "mercato",
    version,
    about = "An e-commerce platform: one binary today, separate services tomorrow."
)]
struct Cli {
    /// A TOML configuration file (default: ./mercato.toml when it exists).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Where the databases, the event log and mail live (default: ./data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The HTTP port (default: 8080).
    #[arg(long, global = true)]
    port: Option<u16>,
    /// Do not seed the demo catalog on a first start (same as MERCATO_CATALOG__SEED_PRODUCTS=0).
    #[arg(long, global = true)]
    no_seed: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in this process behind the gateway edge (the default).
    Run,
    /// Run one service in this process.
    Serve {
        /// identity, catalog, inventory, cart, orders, payments, notifications, delivery or
        /// gateway. Configured by environment (database URL, NATS, Redis, the other services'
        /// addresses in `cluster.urls`, the service token).
        service: String,
    },
    /// Apply pending database migrations and exit.
    Migrate {
        /// Only this service (default: all).
        #[arg(long)]
        service: Option<String>,
    },
    /// Add deterministic demo products (and the demo category tree) until the catalog holds
    /// `--products` of them. The search index catches up at the next start, or within seconds
    /// when Mercato is running.
    Seed {
        #[arg(long, default_value_t = 1_000)]
        products: usize,
    },
    /// Administrative tasks.
    Admin {
        #[command(subcommand)]
        task: AdminTask,
    },
    /// Inventory tasks.
    Inventory {
        #[command(subcommand)]
        task: InventoryTask,
    },
}

#[derive(Debug, Subcommand)]
enum InventoryTask {
    /// Prove, for every SKU, that reserved equals the sum of its active reservations, that on
    /// hand is not negative and covers what is reserved. Lists the SKUs that break it and
    /// exits with status 1 when any does.
    Check,
}

#[derive(Debug, Subcommand)]
enum AdminTask {
    /// Create an account with any role.
    CreateUser {
        #[arg(long)]
        email: String,
        /// The password (default: read from MERCATO_NEW_USER_PASSWORD, else generated and printed).
        #[arg(long, env = "MERCATO_NEW_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, default_value = "Administrator")]
        name: String,
        /// customer, seller, admin or delivery_agent.
        #[arg(long, default_value = "customer")]
        role: String,
    },
    /// Retire the active token-signing key and create a new one. Tokens signed with the old
    /// key stay valid until they expire.
    RotateKeys,
}

const SERVICES: &[&str] = &platform::config::SERVICES_WITH_DATABASES;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = run(cli).await;
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if let Some(port) = cli.port {
        config.port = port;
    }
    if cli.no_seed {
        config.catalog.seed_products = 0;
    }
    let command = cli.command.unwrap_or(Command::Run);
    let service_name = match &command {
        Command::Serve { service } => format!("mercato-{service}"),
        _ => "mercato".to_owned(),
    };
    // The gateway and the all-in-one server face the public; a service faces the gateway.
    let edge = !matches!(&command, Command::Serve { service } if service != "gateway");
    let export = TraceExport::start(&config.telemetry, &service_name, edge).context("invalid telemetry settings")?;
    platform::telemetry::init_logging(config.log_format != "pretty", export.as_ref());
    config.check_production().map_err(anyhow::Error::msg)?;
    let result = match command {
        Command::Run => run_all(config, AppOptions::default()).await,
        Command::Serve { service } => serve(config, &service).await,
        Command::Migrate { service } => migrate(&config, service.as_deref()).await,
        Command::Seed { products } => seed(&config, products).await,
        Command::Admin { task } => admin(&config, task).await,
        Command::Inventory { task } => inventory_task(&config, task).await,
    };
    if let Some(export) = export {
        // The last spans go out through the runtime, which must still be running.
        let _ = tokio::task::spawn_blocking(move || export.shutdown()).await;
    }
    result
}

async fn run_all(config: Config, options: AppOptions) -> anyhow::Result<()> {
    let app = App::start(config.clone(), options).await?;
    let addr: SocketAddr = format!("{}:{}", config.host, config.port)
        .parse()
        .context("invalid host or port")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let url = config.public_url();
    println!("Mercato is running at {url}");
    println!("  API docs:  {url}/api/docs");
    println!("  OpenAPI:   {url}/api/openapi.json");
    println!("  health:    {url}/health/ready");
    println!("  metrics:   {url}/metrics");
    if let Some(admin) = &app.created_admin {
        match &admin.generated_password {
            Some(password) => {
                println!("  first admin account created: {}  password: {password}", admin.email);
                println!("  (the password is shown this once; change it after logging in)");
            }
            None => println!("  first admin account created: {}", admin.email),
        }
    }
    serve_router(listener, app.router.clone()).await?;
    app.shutdown().await;
    Ok(())
}

/// One service, or the gateway, in a process of its own.
async fn serve(config: Config, service: &str) -> anyhow::Result<()> {
    let addr: SocketAddr = format!("{}:{}", config.host, config.port)
        .parse()
        .context("invalid host or port")?;
    let clock: platform::clock::SharedClock = std::sync::Arc::new(platform::clock::SystemClock);
    if service == "gateway" {
        let gateway = mercato::gateway_app::GatewayApp::start(config, clock).await?;
        let listener = bind(addr).await?;
        println!("Mercato gateway listening on {addr}");
        serve_router(listener, gateway.router.clone()).await?;
        gateway.shutdown();
        return Ok(());
    }
    let app = mercato::service::ServiceApp::start(config, service, clock).await?;
    let listener = bind(addr).await?;
    println!("Mercato {} listening on {addr}", app.service);
    if let Some(admin) = &app.created_admin {
        match &admin.generated_password {
            Some(password) => println!("  first admin account created: {}  password: {password}", admin.email),
            None => println!("  first admin account created: {}", admin.email),
        }
    }
    serve_router(listener, app.router.clone()).await?;
    app.shutdown().await;
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn serve_router(listener: tokio::net::TcpListener, router: axum::Router) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(());
        });
    // In-flight requests get a grace period after the signal, not forever.
    tokio::select! {
        result = server => result?,
        () = async {
            let _ = stop_rx.await;
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        } => tracing::warn!("requests still running 10 s after the signal were abandoned"),
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM. A signal that cannot be watched never resolves.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind: SignalKind| async move {
        match signal(kind) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = watch(SignalKind::interrupt()) => tracing::info!("SIGINT received; shutting down"),
        () = watch(SignalKind::terminate()) => tracing::info!("SIGTERM received; shutting down"),
    }
}

async fn migrate(config: &Config, service: Option<&str>) -> anyhow::Result<()> {
    let services: Vec<&str> = match service {
        Some(one) if SERVICES.contains(&one) => vec![one],
        Some(other) => anyhow::bail!("unknown service `{other}`; available: {}", SERVICES.join(", ")),
        None => SERVICES.to_vec(),
    };
    std::fs::create_dir_all(&config.data_dir)?;
    if service.is_none() && matches!(config.bus.kind, platform::config::BusKind::Log) {
        let db = app::open_db(config, "bus").await?;
        db.migrate("bus", platform::bus::log::MIGRATIONS).await?;
        db.close().await;
        println!("bus (in-process event log): migrated");
    }
    for service in services {
        match service {
            "identity" => app::identity_db(config).await?.close().await,
            "catalog" => app::catalog_db(config).await?.close().await,
            "inventory" => app::inventory_db(config).await?.close().await,
            "cart" => app::cart_db(config).await?.close().await,
            "orders" => app::orders_db(config).await?.close().await,
            "payments" => app::payments_db(config).await?.close().await,
            "notifications" => app::notifications_db(config).await?.close().await,
            "delivery" => app::delivery_db(config).await?.close().await,
            _ => {}
        }
        println!("{service}: migrated");
    }
    Ok(())
}

async fn seed(config: &Config, products: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let db = app::catalog_db(config).await?;
    let report = catalog::seed::seed(&db, products, platform::clock::now_ms()).await?;
    let inventory_db = app::inventory_db(config).await?;
    let inventory = app::build_inventory(config, inventory_db.clone(), Arc::new(SystemClock));
    let stocked = app::seed_demo_stock(&db, &inventory).await?;
    db.close().await;
    inventory_db.close().await;
    println!(
        "seeded {} products ({} variants) and {} categories in {:.1} s, and stocked {stocked} new SKUs; \
         the catalog now holds {products} demo products",
        report.products,
        report.variants,
        report.categories,
        report.elapsed_ms as f64 / 1000.0
    );
    Ok(())
}

async fn inventory_task(config: &Config, task: InventoryTask) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let db = app::inventory_db(config).await?;
    let inventory = app::build_inventory(config, db.clone(), Arc::new(SystemClock));
    match task {
        InventoryTask::Check => {
            let report = inventory
                .check()
                .await
                .map_err(|err| anyhow::anyhow!("cannot check the inventory: {err}"))?;
            db.close().await;
            for v in &report.violations {
                println!(
                    "VIOLATION {}: on hand {}, reserved {}, held by active reservations {}",
                    v.sku, v.on_hand, v.reserved, v.held
                );
            }
            if report.violations.is_empty() {
                println!(
                    "inventory check: {} SKUs, every one consistent (reserved = active reservations, 0 <= reserved <= on hand)",
                    report.skus
                );
                Ok(())
            } else {
                anyhow::bail!(
                    "inventory check: {} of {} SKUs are inconsistent",
                    report.violations.len(),
                    report.skus
                )
            }
        }
    }
}

async fn admin(config: &Config, task: AdminTask) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let db = app::identity_db(config).await?;
    let identity = app::build_identity(config, db.clone(), Arc::new(SystemClock)).await?;
    match task {
        AdminTask::CreateUser {
            email,
            password,
            name,
            role,
        } => {
            let role = Role::parse(&role).context("role must be customer, seller, admin or delivery_agent")?;
            let (password, generated) = match password {
                Some(password) => (password, false),
                None => (identity::domain::generated_password(), true),
            };
            let user = identity
                .create_user(&email, &name, &password, role, None)
                .await
                .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            println!("created {} ({}) with role {}", user.email, user.id, user.role);
            if generated {
                println!("password: {password}");
            }
        }
        AdminTask::RotateKeys => {
            let kid = identity.keys().rotate().await?;
            println!("new signing key {kid} is active; the previous key stays published until its tokens expire");
        }
    }
    // Events written by these commands are published by the running server's relay.
    db.close().await;
    Ok(())
}
