//! Where a search spends its time, without HTTP: seeds N products into a temporary SQLite
//! catalog, builds the index, then runs the benchmark's query mix through `SearchIndex::search`
//! with and without facets and prints the time of the first search of each query (its words
//! not yet seen since the index changed) and the mean time of the repeats.
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
        Arc::new(MemoryCache::new(std::time::Duration::from_secs(60), 1 << 20)),
    );
    let started = Instant::now();
    indexer.catch_up().await?;
    eprintln!("indexed {} docs in {:?}", index.num_docs(), started.elapsed());

    // Optionally, a file of queries (one text per line) run once each with facets: how the
    // process's memory grows with searches it has not seen (new words, new typos).
    if let Some(file) = args.next() {
        let texts = std::fs::read_to_string(file)?;
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS")).map(str::to_owned))
                .unwrap_or_default()
        };
        eprintln!("before the query file: {}", rss());
        let started = Instant::now();
        let mut n = 0u32;
        for text in texts.lines() {
            index.search(&SearchQuery {
                text: text.to_owned(),
                limit: 20,
                with_facets: true,
                ..SearchQuery::default()
            })?;
            n += 1;
            if n.is_multiple_of(5_000) {
                eprintln!("after {n} queries: {}", rss());
            }
        }
        eprintln!(
            "{n} queries in {:?} ({:?} each); {}",
            started.elapsed(),
            started.elapsed() / n.max(1),
            rss()
        );
        eprintln!("word cache (entries, bytes): {:?}", index.cache_sizes());
    }

    for with_facets in [false, true] {
        let mut totals = Vec::new();
        for text in QUERIES {
            let query = SearchQuery {
                text: (*text).to_owned(),
                limit: 20,
                with_facets,
                ..SearchQuery::default()
            };
            let started = Instant::now();
            let first = index.search(&query)?;
            let cold = started.elapsed();
            let started = Instant::now();
            for _ in 0..rounds {
                index.search(&query)?;
            }
            let per_query = started.elapsed() / rounds as u32;
            totals.push(per_query);
            println!(
                "facets={with_facets:<5} {text:<24} matches={:<6} first {cold:?}, then {per_query:?}",
                first.total
            );
        }
        let mean = totals.iter().sum::<std::time::Duration>() / totals.len() as u32;
        println!("facets={with_facets:<5} mean per query: {mean:?}");
    }
    Ok(())
}
