//! The `mercato` binary itself: first start, and a crash (`kill -9`) followed by a restart.

use std::process::Stdio;
use std::time::Duration;

use platform::bus::log::LogBus;
use platform::store::{Db, DbOptions};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::helpers::PASSWORD;

struct Server {
    child: Child,
    url: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data_dir: &std::path::Path, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_mercato"))
        .args(["--data-dir", data_dir.to_str().unwrap(), "--port", &port.to_string()])
        .env("MERCATO_ADMIN_PASSWORD", "binary test admin password")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the mercato binary starts");
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = platform::testing::eventually(Duration::from_secs(30), || async {
        let reply = client.get(format!("{url}/health/ready")).send().await.ok()?;
        reply.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "the binary answers /health/ready within 30 s");
    Server { child, url }
}

async fn registered_events(data_dir: &std::path::Path, subject: &str) -> usize {
    let url = format!("sqlite://{}", data_dir.join("bus.db").display());
    let db = Db::connect(&url, &DbOptions::default()).await.unwrap();
    let log = LogBus::open(db.clone(), CancellationToken::new()).await.unwrap();
    let count = log
        .events()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == "user.registered" && e.subject == subject)
        .count();
    db.close().await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_binary_restarts_with_its_users_and_events() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(dir.path(), port).await;
    let client = reqwest::Client::new();

    let body = json!({"email": "crash@example.com", "full_name": "Crash Test", "password": PASSWORD});
    let reply = client
        .post(format!("{}/api/v1/auth/register", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 201);
    let user: serde_json::Value = reply.json().await.unwrap();
    let user_id = user["user"]["id"].as_str().unwrap().to_owned();
    // No graceful shutdown: the event may be in the outbox, in the log, or half-way.
    server.child.kill().await.unwrap();
    let mut stdout = String::new();
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    assert!(
        stdout.contains("first admin account created"),
        "first start announces the admin: {stdout}"
    );

    let server = start(dir.path(), port).await;
    let login = json!({"email": "crash@example.com", "password": PASSWORD});
    let reply = client
        .post(format!("{}/api/v1/auth/login", server.url))
        .json(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200, "the user survived the crash");
    let once = platform::testing::eventually(Duration::from_secs(10), || async {
        (registered_events(dir.path(), &user_id).await == 1).then_some(())
    })
    .await;
    assert!(
        once.is_some(),
        "the user's event is published exactly once after the restart"
    );
    let admin = json!({"email": "admin@mercato.local", "password": "binary test admin password"});
    let reply = client
        .post(format!("{}/api/v1/auth/login", server.url))
        .json(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        200,
        "the admin made at first start is kept, not made again"
    );
}

/// Runs `mercato --data-dir <dir> <args>`; answers (success, stdout, stderr).
async fn run_command(data_dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mercato"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("the mercato binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_stocks_the_demo_skus_and_the_inventory_check_finds_broken_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = run_command(dir.path(), &["seed", "--products", "20"]).await;
    assert!(ok, "seed failed: {out} {err}");
    assert!(out.contains("seeded 20 products"), "{out}");
    let (ok, out, err) = run_command(dir.path(), &["inventory", "check"]).await;
    assert!(ok, "a freshly seeded inventory is consistent: {out} {err}");
    assert!(out.contains("every one consistent"), "{out}");

    let url = format!("sqlite://{}", dir.path().join("inventory.db").display());
    let db = Db::connect(&url, &DbOptions::default()).await.unwrap();
    let skus: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM stock WHERE on_hand >= 5")
        .fetch_one(db.reader())
        .await
        .unwrap();
    assert!(skus >= 20, "every demo SKU has stock: {skus}");
    let broken: String = sqlx::query_scalar("SELECT sku FROM stock ORDER BY sku LIMIT 1")
        .fetch_one(db.reader())
        .await
        .unwrap();
    sqlx::query("UPDATE stock SET reserved = 2 WHERE sku = $1")
        .bind(&broken)
        .execute(db.writer())
        .await
        .unwrap();
    db.close().await;
    let (ok, out, err) = run_command(dir.path(), &["inventory", "check"]).await;
    assert!(!ok, "a broken SKU fails the check");
    assert!(out.contains(&format!("VIOLATION {broken}: on hand")), "{out}");
    assert!(err.contains("1 of"), "{err}");
}
