//! `TestApp`: the all-in-one application on port 0 with a temporary data directory, a clock
//! tests can move, and request helpers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway::EdgeMode;
use mercato::app::{App, AppOptions, ExtensionConsumer};
use platform::clock::OffsetClock;
use platform::config::Config;
use platform::events::Event;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const ADMIN_EMAIL: &str = "admin@test.local";
pub const ADMIN_PASSWORD: &str = "admin password for tests";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub url: String,
    pub client: reqwest::Client,
    pub app: App,
    pub clock: Arc<OffsetClock>,
    pub config: Config,
    server: tokio::task::JoinHandle<()>,
    dir: Option<tempfile::TempDir>,
    /// Open dead letters the test means to leave; any other number fails it when dropped.
    expected_dead_letters: i64,
    /// Set once stopped for a restart: the drop check belongs to the restarted app.
    stopped: bool,
}

/// A response: status, headers and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self
    }

    #[track_caller]
    pub fn expect_problem(self, status: u16) -> Self {
        let reply = self.expect(status);
        assert_eq!(
            reply.content_type(),
            "application/problem+json",
            "errors are problem+json"
        );
        assert_eq!(reply.body["status"], status, "problem body names the status");
        reply
    }
}

pub fn test_config(data_dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_path_buf(),
        ..Config::default()
    };
    config.admin_email = Some(ADMIN_EMAIL.to_owned());
    config.admin_password = Some(ADMIN_PASSWORD.to_owned());
    // Tests make many requests from one IP; the rate-limit tests lower these.
    config.rate_limit.per_ip_per_minute = 100_000;
    config.rate_limit.per_user_per_minute = 100_000;
    config.bus.retry_base_ms = 5;
    // Catalog tests create the products they need; the seeding test turns this back on.
    config.catalog.seed_products = 0;
    // Tests run the cart sweeper themselves, after moving the clock.
    config.cart.sweep_interval_secs = 24 * 3600;
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}, Vec::new()).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Config), extensions: Vec<ExtensionConsumer>) -> Self {
        Self::spawn_in_mode(configure, extensions, EdgeMode::Gateway).await
    }

    /// One service process (`mercato serve identity`) rather than the all-in-one edge.
    pub async fn spawn_in_mode(
        configure: impl FnOnce(&mut Config),
        extensions: Vec<ExtensionConsumer>,
        mode: EdgeMode,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        configure(&mut config);
        Self::start(config, extensions, Arc::new(OffsetClock::default()), Some(dir), mode).await
    }

    async fn start(
        config: Config,
        extensions: Vec<ExtensionConsumer>,
        clock: Arc<OffsetClock>,
        dir: Option<tempfile::TempDir>,
        mode: EdgeMode,
    ) -> Self {
        let options = AppOptions {
            clock: clock.clone(),
            extension_consumers: extensions,
            mode,
        };
        let app = App::start(config.clone(), options).await.expect("app starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = app.router.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        Self {
            url: format!("http://{addr}"),
            client: reqwest::Client::new(),
            app,
            clock,
            config,
            server,
            dir,
            expected_dead_letters: 0,
            stopped: false,
        }
    }

    /// Stops the application and starts it again on the same data directory, as a process
    /// restart would.
    pub async fn restart(mut self, extensions: Vec<ExtensionConsumer>) -> Self {
        self.stop().await;
        self.stopped = true;
        let dir = self.dir.take();
        Self::start(
            self.config.clone(),
            extensions,
            self.clock.clone(),
            dir,
            EdgeMode::Gateway,
        )
        .await
    }

    pub async fn stop(&self) {
        self.server.abort();
        self.app.shutdown().await;
    }

    /// Declares that the test ends with `n` open dead letters on purpose.
    pub fn expect_dead_letters(&mut self, n: i64) {
        self.expected_dead_letters = n;
    }

    /// Whether every service's outbox empties within a grace period. The relay marks a row sent
    /// only after the bus has it, so a test that has just seen an event waits here rather than
    /// reading the outbox at once.
    pub async fn outboxes_drain(&self) -> bool {
        let outboxes = [
            self.app.identity.outbox(),
            self.app.catalog.outbox(),
            self.app.inventory.outbox(),
            self.app.cart.outbox(),
        ];
        platform::testing::eventually(Duration::from_secs(5), || async {
            for outbox in outboxes {
                if outbox.pending().await.ok()? != 0 {
                    return None;
                }
            }
            Some(())
        })
        .await
        .is_some()
    }

    /// What a finished test must not leave behind: undelivered outbox rows (after a grace
    /// period for the relay) or dead letters it did not declare.
    async fn leftovers(&self) -> Option<String> {
        if !self.outboxes_drain().await {
            return Some("the test ended with outbox rows the relay never published".to_owned());
        }
        let open = self.app.dead_letters.count().await.ok()?;
        (open != self.expected_dead_letters).then(|| {
            format!(
                "the test ended with {open} open dead letters, expected {}",
                self.expected_dead_letters
            )
        })
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.request(reqwest::Method::POST, path, token, Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.request(reqwest::Method::PATCH, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.request(reqwest::Method::PUT, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(reqwest::Method::DELETE, path, token, None).await
    }

    /// Registers a customer; answers the whole auth response.
    pub async fn register(&self, email: &str) -> Value {
        self.post(
            "/api/v1/auth/register",
            None,
            json!({"email": email, "full_name": "Test User", "password": PASSWORD}),
        )
        .await
        .expect(201)
        .body
    }

    /// Registers a customer; answers its access token.
    pub async fn customer_token(&self, email: &str) -> String {
        token_of(&self.register(email).await)
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post(
            "/api/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await
    }

    pub async fn admin_token(&self) -> String {
        token_of(&self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect(200).body)
    }

    /// Events on the in-process bus, oldest first.
    pub async fn bus_events(&self) -> Vec<Event> {
        self.app
            .log_bus
            .as_ref()
            .expect("tests run on the in-process bus")
            .events()
            .await
            .expect("events readable")
    }

    /// Waits until the bus holds an event of `kind` about `subject`.
    pub async fn wait_for_event(&self, kind: &str, subject: &str) -> Event {
        platform::testing::eventually(Duration::from_secs(10), || async {
            self.bus_events()
                .await
                .into_iter()
                .find(|e| e.kind == kind && e.subject == subject)
        })
        .await
        .unwrap_or_else(|| panic!("no {kind} event for {subject} within 10 s"))
    }
}

pub fn token_of(auth: &Value) -> String {
    auth["access_token"].as_str().expect("access_token").to_owned()
}

pub fn refresh_of(auth: &Value) -> String {
    auth["refresh_token"].as_str().expect("refresh_token").to_owned()
}

pub fn id_of(value: &Value) -> String {
    value["id"]
        .as_str()
        .or_else(|| value["user"]["id"].as_str())
        .expect("id")
        .to_owned()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.stopped || std::thread::panicking() {
            return;
        }
        let handle = tokio::runtime::Handle::current();
        let problem = tokio::task::block_in_place(|| handle.block_on(self.leftovers()));
        if let Some(problem) = problem {
            panic!("{problem}");
        }
    }
}
