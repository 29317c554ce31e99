//! Reservation throughput: concurrent workers reserve 1–3 SKUs for an order and commit it, on a
//! fresh SQLite file or on PostgreSQL. Prints reserve+commit pairs per second and latency
//! percentiles of each pair. Reservations are written in batches (the default) or, with `alone`,
//! in a transaction each.
//!
//!   cargo run --release -p inventory --example reserve_bench -- sqlite [orders] [workers] [alone]
//!   cargo run --release -p inventory --example reserve_bench -- postgres://… [orders] [workers] [alone]

use std::sync::Arc;
use std::time::{Duration, Instant};

use inventory::domain::Line;
use inventory::service::StockChange;
use inventory::{Context, Inventory, Settings};
use platform::clock::SystemClock;
use platform::outbox::PLATFORM_MIGRATIONS;
use platform::store::{Db, DbOptions};

const SKUS: usize = 100;
/// Pairs run before the measured ones.
const WARM_UP: usize = 2_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "sqlite".to_owned());
    let orders: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let workers: usize = args.next().map_or(Ok(32), |a| a.parse())?;
    let batch = args.next().as_deref() != Some("alone");

    let dir = tempfile::tempdir()?;
    let mut schema = None;
    let db = if target == "sqlite" {
        let url = format!("sqlite://{}", dir.path().join("inventory.db").display());
        Db::connect(&url, &DbOptions::default()).await?
    } else {
        // A schema of its own, dropped at the end.
        let name = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let admin = Db::connect(&target, &DbOptions::default()).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(admin.writer())
            .await?;
        admin.close().await;
        let options = DbOptions {
            max_connections: 20,
            search_path: Some(name.clone()),
            ..DbOptions::default()
        };
        schema = Some(name);
        Db::connect(&target, &options).await?
    };
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(inventory::SERVICE, inventory::store::MIGRATIONS).await?;
    let settings = Settings {
        batch_reservations: batch,
        ..Settings::default()
    };
    let inventory = Arc::new(Inventory::new(db.clone(), Arc::new(SystemClock), settings));
    let skus: Vec<String> = (0..SKUS).map(|i| format!("BENCH-{i:03}")).collect();
    let mut tx = db.begin().await?;
    for sku in &skus {
        inventory
            .sync_product(&mut tx, &format!("p-{sku}"), None, std::slice::from_ref(sku))
            .await?;
    }
    tx.commit().await?;
    for sku in &skus {
        let change = StockChange::Set {
            on_hand: 100_000_000,
            threshold: Some(0),
        };
        inventory
            .change_stock(sku, change, None, Context::default())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }

    // A warm-up the size of a shop's first minutes, then (on PostgreSQL) the statistics that
    // autovacuum would gather by then: a fresh table's plans are made for an empty table.
    pairs(&inventory, &skus, "warm-up", 0..WARM_UP, workers).await?;
    if schema.is_some() {
        sqlx::query("ANALYZE").execute(db.writer()).await?;
    }
    let started = Instant::now();
    let mut latencies = pairs(&inventory, &skus, "order", 0..orders, workers).await?;
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{target} ({}): {} reserve+commit pairs by {workers} workers in {:.2} s = {:.0} reservations/s; \
         latency p50 {:?} p99 {:?} max {:?}",
        if batch { "batched" } else { "a transaction each" },
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    let report = inventory.check().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    anyhow::ensure!(
        report.violations.is_empty(),
        "inventory check failed: {:?}",
        report.violations
    );
    println!("inventory check: {} SKUs consistent", report.skus);
    db.close().await;
    if let Some(name) = schema {
        let admin = Db::connect(&target, &DbOptions::default()).await?;
        sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
            .execute(admin.writer())
            .await?;
        admin.close().await;
    }
    Ok(())
}

/// Reserves and commits orders `prefix-n` for every n in `orders`, from `workers` tasks; answers
/// each pair's latency.
async fn pairs(
    inventory: &Arc<Inventory>,
    skus: &[String],
    prefix: &'static str,
    orders: std::ops::Range<usize>,
    workers: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let inventory = inventory.clone();
        let skus = skus.to_vec();
        let orders = orders.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = orders.start + w;
            while n < orders.end {
                let lines: Vec<Line> = (0..1 + n % 3)
                    .map(|k| Line {
                        sku: skus[(n * 7 + k * 13) % SKUS].clone(),
                        quantity: 1,
                    })
                    .collect();
                let order = format!("{prefix}-{n}");
                let begin = Instant::now();
                inventory
                    .reserve(&order, &lines, None, Context::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("{:?}", e))?;
                inventory
                    .commit(&order, Context::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                latencies.push(begin.elapsed());
                n += workers;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(latencies)
}
