//! Where a search spends its time, without HTTP: seeds N products into a temporary SQLite
//! catalog, builds the index, then runs the benchmark's query mix through `SearchIndex::search`
//! with and without facets and prints the mean time per query.
//!
//!   cargo run --release -p catalog --example search_profile -- [products] [rounds]

use std::sync::Arc;
use std::time::Instant;

use catalog::cache::MemoryCache;
use catalog::indexer::Indexer;
use catalog::search::{SearchIndex, SearchQuery};
use platform::outbox::PLATFORM_MIGRATIONS;

const QUERIES: &[&str] = &[
    "headphones",
    "wireles headphones",
    "blutooth speaker",
    "premium leather jacket",
    "acme",
    "coffe maker",
    "yoga mat",
    "stainles",
    "runing shoes",
    "smart watch",
    "kettle",
    "chef knife",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let products: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(200), |a| a.parse())?;

    let (db, _dir) = platform::testing::sqlite_db().await?;
    db.migrate("platform", PLATFORM_MIGRATIONS).await?;
    db.migrate(catalog::SERVICE, catalog::store::MIGRATIONS).await?;
    let started = Instant::now();
    catalog::seed::seed(&db, products, 0).await?;
    eprintln!("seeded {products} in {:?}", started.elapsed());

    let index = Arc::new(SearchIndex::in_memory()?);
    let indexer = Indexer::new(
        db.clone(),
        index.clone(),
        Arc::new(MemoryCache::new(std::time::Duration::from_secs(60), 10)),
    );
    let started = Instant::now();
    indexer.catch_up().await?;
    eprintln!("indexed {} docs in {:?}", index.num_docs(), started.elapsed());

    for with_facets in [false, true] {
        let mut totals = Vec::new();
        for text in QUERIES {
            let query = SearchQuery {
                text: (*text).to_owned(),
                limit: 20,
                with_facets,
                ..SearchQuery::default()
            };
            let first = index.search(&query)?;
            let started = Instant::now();
            for _ in 0..rounds {
                index.search(&query)?;
            }
            let per_query = started.elapsed() / rounds as u32;
            totals.push(per_query);
            println!(
                "facets={with_facets:<5} {text:<24} matches={:<6} {per_query:?}",
                first.total
            );
        }
        let mean = totals.iter().sum::<std::time::Duration>() / totals.len() as u32;
        println!("facets={with_facets:<5} mean per query: {mean:?}");
    }
    Ok(())
}
