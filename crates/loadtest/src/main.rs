//! `loadtest`: drives a running Mercato on this machine with a bounded number of requests from
//! concurrent workers and prints throughput and latency percentiles.
//!
//! Scenarios:
//! - `login`: registers `--users` accounts, then logs them in round-robin (argon2-bound).
//! - `get --path P [--path Q …] [--paths-file F]`: GETs paths round-robin, optionally with a
//!   customer's token (`--auth`).
//! - `cart --sku A [--sku B …]`: each worker fills its own guest cart: adds one unit of a SKU,
//!   reads the cart, and empties it every 50 operations (every request counts as one operation).
//! - `checkout --sku A [--sku B …] [--method card]`: each worker registers a customer, then loops:
//!   adds one unit of the next SKU to its cart and checks out with a fresh `Idempotency-Key`. One
//!   operation is one checkout; the latencies are the checkout requests' (the cart add is not
//!   counted in them, but it is in the elapsed time). Run the server with
//!   `MERCATO_PAYMENTS_MOCK_AUTO=true` for automatic approval.
//!
//! Every loop is bounded by `--requests` and `--max-seconds`; only loopback targets are allowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "Load generator for a local Mercato")]
struct Args {
    /// Base URL of the target (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent workers.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Total requests to send (the loop stops at whichever bound comes first).
    #[arg(long, default_value_t = 2_000)]
    requests: u64,
    /// Time bound of the measured phase.
    #[arg(long, default_value_t = 60)]
    max_seconds: u64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Log in existing accounts round-robin.
    Login {
        /// How many accounts to register first.
        #[arg(long, default_value_t = 32)]
        users: usize,
    },
    /// GET paths round-robin: every `--path`, then every line of `--paths-file`.
    Get {
        #[arg(long)]
        path: Vec<String>,
        /// A file with one path per line (e.g. search queries with typos).
        #[arg(long)]
        paths_file: Option<std::path::PathBuf>,
        /// Send a customer's bearer token.
        #[arg(long)]
        auth: bool,
    },
    /// Cart operations on one guest cart per worker: add, get, and now and then clear.
    Cart {
        /// SKUs to add (round-robin); they need stock.
        #[arg(long = "sku", required = true)]
        skus: Vec<String>,
    },
    /// Checkouts: one customer per worker adds a unit and checks out, again and again.
    Checkout {
        /// SKUs to buy (round-robin); they need plenty of stock.
        #[arg(long = "sku", required = true)]
        skus: Vec<String>,
        /// card, upi, net_banking, wallet or cod.
        #[arg(long, default_value = "card")]
        method: String,
    },
}

const PASSWORD: &str = "load test passphrase";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url = reqwest::Url::parse(&args.url).context("invalid --url")?;
    let host = url.host_str().unwrap_or_default();
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1") || host.starts_with("127."),
        "loadtest only targets this machine (loopback), not {host}"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let base = args.url.trim_end_matches('/').to_owned();
    let run = format!(
        "{:x}",
        Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id())
    );

    let emails = match &args.scenario {
        Scenario::Login { users } => register(&client, &base, &run, *users).await?,
        Scenario::Get { auth: true, .. } => register(&client, &base, &run, 1).await?,
        Scenario::Checkout { .. } => register(&client, &base, &run, args.concurrency).await?,
        Scenario::Get { .. } | Scenario::Cart { .. } => Vec::new(),
    };
    let mut buyers = Vec::new();
    if let Scenario::Checkout { .. } = &args.scenario {
        for email in &emails {
            buyers.push(login(&client, &base, email).await?);
        }
    }
    let method = match &args.scenario {
        Scenario::Checkout { method, .. } => method.clone(),
        _ => String::new(),
    };
    let token = match &args.scenario {
        Scenario::Get { auth: true, .. } => Some(login(&client, &base, &emails[0]).await?),
        _ => None,
    };

    let paths: Arc<Vec<String>> = Arc::new(match &args.scenario {
        Scenario::Get { path, paths_file, .. } => {
            let mut paths = path.clone();
            if let Some(file) = paths_file {
                let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
                paths.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
            }
            anyhow::ensure!(!paths.is_empty(), "give at least one --path or a --paths-file");
            paths
        }
        Scenario::Cart { skus } | Scenario::Checkout { skus, .. } => skus.clone(),
        Scenario::Login { .. } => Vec::new(),
    });
    let cart = matches!(args.scenario, Scenario::Cart { .. });
    let checkout = matches!(args.scenario, Scenario::Checkout { .. });
    let issued = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let workers = (0..args.concurrency).map(|worker| {
        let buyer = buyers.get(worker).cloned();
        let (method, run) = (method.clone(), run.clone());
        let (client, base, issued, emails, token) = (
            client.clone(),
            base.clone(),
            issued.clone(),
            emails.clone(),
            token.clone(),
        );
        let scenario = match &args.scenario {
            Scenario::Login { .. } | Scenario::Cart { .. } | Scenario::Checkout { .. } => None,
            Scenario::Get { .. } => Some(paths.clone()),
        };
        let skus = paths.clone();
        let total = args.requests;
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut cart_token: Option<String> = None;
            let mut step = 0usize;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    break;
                }
                let mut begin = Instant::now();
                let ok = match &scenario {
                    None if checkout => {
                        step += 1;
                        let buyer = buyer.as_deref().unwrap_or_default();
                        let sku = &skus[step % skus.len()];
                        let added = match client
                            .post(format!("{base}/api/v1/cart/items"))
                            .bearer_auth(buyer)
                            .json(&json!({"sku": sku, "quantity": 1}))
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => true,
                            Ok(r) => {
                                let status = r.status().as_u16();
                                show_failure("cart add", status, &r.text().await.unwrap_or_default());
                                false
                            }
                            Err(err) => {
                                show_failure("cart add", 0, &err.to_string());
                                false
                            }
                        };
                        begin = Instant::now();
                        added
                            && checkout_once(&client, &base, buyer, &format!("lt-{run}-{worker}-{step}"), &method).await
                    }
                    None if cart => {
                        step += 1;
                        cart_step(&client, &base, &skus, step, &mut cart_token).await
                    }
                    None => {
                        let email = &emails[(n as usize) % emails.len()];
                        let body = json!({"email": email, "password": PASSWORD});
                        client
                            .post(format!("{base}/api/v1/auth/login"))
                            .json(&body)
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                    }
                    Some(paths) => {
                        let path = &paths[(n as usize) % paths.len()];
                        let mut request = client.get(format!("{base}{path}"));
                        if let Some(token) = &token {
                            request = request.bearer_auth(token);
                        }
                        match request.send().await {
                            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                            Err(_) => false,
                        }
                    }
                };
                latencies.push(begin.elapsed());
                if !ok {
                    errors += 1;
                }
            }
            (latencies, errors)
        })
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    for result in futures::future::join_all(workers).await {
        let (mut l, e) = result?;
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed();
    report(&latencies, errors, elapsed, args.concurrency);
    Ok(())
}

/// How many failed answers have been printed (the first few are, to see what went wrong).
static SHOWN: AtomicU64 = AtomicU64::new(0);

fn show_failure(what: &str, status: u16, body: &str) {
    if SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        eprintln!(
            "{what} answered {status}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
}

/// One checkout with an inline address; answers whether it was a 201.
async fn checkout_once(client: &reqwest::Client, base: &str, token: &str, key: &str, method: &str) -> bool {
    let body = json!({
        "payment_method": method,
        "shipping_address": {"full_name": "Load Test", "line1": "1 Bench Road", "city": "Testville",
                             "postal_code": "12345", "country": "US"},
    });
    match client
        .post(format!("{base}/api/v1/checkout"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            if status != 201 {
                show_failure("checkout", status, &body);
            }
            status == 201
        }
        Err(err) => {
            show_failure("checkout", 0, &err.to_string());
            false
        }
    }
}

/// One cart operation of a worker: every 50th empties the cart, odd steps add a unit of the
/// next SKU, even steps read the cart. The first add hands out the worker's guest token.
async fn cart_step(
    client: &reqwest::Client,
    base: &str,
    skus: &[String],
    step: usize,
    token: &mut Option<String>,
) -> bool {
    let url = format!("{base}/api/v1/cart");
    let request = if step.is_multiple_of(50) {
        client.delete(&url)
    } else if step % 2 == 1 {
        let sku = &skus[(step / 2) % skus.len()];
        client
            .post(format!("{url}/items"))
            .json(&json!({"sku": sku, "quantity": 1}))
    } else {
        client.get(&url)
    };
    let request = match token.as_deref() {
        Some(t) => request.header("X-Cart-Token", t),
        None => request,
    };
    match request.send().await {
        Ok(response) => {
            if token.is_none() {
                *token = response
                    .headers()
                    .get("x-cart-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
            response.status().is_success() && response.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

async fn register(client: &reqwest::Client, base: &str, run: &str, users: usize) -> anyhow::Result<Vec<String>> {
    let mut emails = Vec::with_capacity(users);
    for i in 0..users {
        let email = format!("load-{run}-{i}@example.com");
        let body = json!({"email": email, "full_name": "Load Test", "password": PASSWORD});
        let response = client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "registration failed: {}",
            response.status()
        );
        emails.push(email);
    }
    Ok(emails)
}

async fn login(client: &reqwest::Client, base: &str, email: &str) -> anyhow::Result<String> {
    let body = json!({"email": email, "password": PASSWORD});
    let reply: serde_json::Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no access token")
}

fn report(latencies: &[Duration], errors: u64, elapsed: Duration, concurrency: usize) {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    let percentile = |p: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let index = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
        sorted[index].as_secs_f64() * 1000.0
    };
    let count = sorted.len();
    println!(
        "requests: {count} in {:.2} s with {concurrency} workers, errors: {errors}",
        elapsed.as_secs_f64()
    );
    println!("throughput: {:.1} requests/s", count as f64 / elapsed.as_secs_f64());
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        percentile(50.0),
        percentile(90.0),
        percentile(99.0),
        percentile(100.0)
    );
}
