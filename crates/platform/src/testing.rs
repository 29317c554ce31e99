//! Test support shared by every crate's tests: fresh databases on each backend, the optional
//! real servers named by `MERCATO_TEST_*`, and polling with a deadline instead of sleeping.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::store::{Db, DbOptions};

pub const POSTGRES_URL_VAR: &str = "MERCATO_TEST_POSTGRES_URL";
pub const NATS_URL_VAR: &str = "MERCATO_TEST_NATS_URL";
pub const REDIS_URL_VAR: &str = "MERCATO_TEST_REDIS_URL";

/// The value of a `MERCATO_TEST_*` variable, if it is set and not empty.
pub fn server_url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// A SQLite database in a new temporary directory (kept alive by the returned guard).
pub async fn sqlite_db() -> anyhow::Result<(Db, tempfile_guard::TempDir)> {
    let dir = tempfile_guard::TempDir::new()?;
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    Ok((Db::connect(&url, &DbOptions::default()).await?, dir))
}

/// A PostgreSQL database in a fresh schema of the server named by `MERCATO_TEST_POSTGRES_URL`,
/// or `None` when the variable is not set.
pub async fn postgres_db() -> anyhow::Result<Option<Db>> {
    let Some(url) = server_url(POSTGRES_URL_VAR) else {
        return Ok(None);
    };
    let schema = format!("t_{}", crate::id::new_id().simple());
    execute_on_server(&url, &format!("CREATE SCHEMA \"{schema}\"")).await?;
    let options = DbOptions {
        max_connections: 10,
        search_path: Some(schema),
        ..DbOptions::default()
    };
    Ok(Some(Db::connect(&url, &options).await?))
}

/// Polls `check` until it answers `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A temporary directory removed on drop (a tiny stand-in so the platform crate does not
/// depend on `tempfile` outside tests).
pub mod tempfile_guard {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!("mercato-test-{}", crate::id::new_id().simple()));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The URL of a new, empty PostgreSQL database on the server named by
/// `MERCATO_TEST_POSTGRES_URL`, or `None` when the variable is not set. For tests that
/// configure a whole service by URL rather than by [`Db`].
pub async fn postgres_database_url() -> anyhow::Result<Option<String>> {
    let Some(url) = server_url(POSTGRES_URL_VAR) else {
        return Ok(None);
    };
    let name = format!("mercato_t_{}", crate::id::new_id().simple());
    execute_on_server(&url, &format!("CREATE DATABASE \"{name}\"")).await?;
    let mut parsed = reqwest::Url::parse(&url)?;
    parsed.set_path(&format!("/{name}"));
    Ok(Some(parsed.to_string()))
}

/// Runs one statement on the server at `url` through a short-lived connection.
async fn execute_on_server(url: &str, sql: &str) -> anyhow::Result<()> {
    let admin = Db::connect(
        url,
        &DbOptions {
            max_connections: 1,
            ..DbOptions::default()
        },
    )
    .await?;
    let result = sqlx::query(sql).execute(admin.writer()).await;
    admin.close().await;
    result?;
    Ok(())
}

/// Access tokens for a service's tests without identity: a fresh Ed25519 key, a verifier that
/// trusts it (issuer and audience `mercato`), and tokens it signs for any user and role.
pub struct TestTokens {
    key: jsonwebtoken::EncodingKey,
    verifier: std::sync::Arc<crate::auth::TokenVerifier>,
}

struct StaticJwks(crate::auth::Jwk);

#[async_trait::async_trait]
impl crate::auth::JwksSource for StaticJwks {
    async fn fetch(&self) -> anyhow::Result<crate::auth::JwkSet> {
        Ok(crate::auth::JwkSet {
            keys: vec![self.0.clone()],
        })
    }
}

impl Default for TestTokens {
    fn default() -> Self {
        Self::new()
    }
}

impl TestTokens {
    pub fn new() -> Self {
        use base64::Engine;
        use ring::signature::{Ed25519KeyPair, KeyPair};
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("an Ed25519 key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key just made");
        let jwk = crate::auth::Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            kid: "test".into(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        };
        Self {
            key: jsonwebtoken::EncodingKey::from_ed_der(pkcs8.as_ref()),
            verifier: std::sync::Arc::new(crate::auth::TokenVerifier::new(
                std::sync::Arc::new(StaticJwks(jwk)),
                "mercato",
                "mercato",
            )),
        }
    }

    pub fn verifier(&self) -> std::sync::Arc<crate::auth::TokenVerifier> {
        self.verifier.clone()
    }

    /// A token for `user` in `role`, valid for ten minutes.
    pub fn token(&self, user: &str, role: crate::auth::Role) -> String {
        let now = crate::clock::now_ms() / 1000;
        let claims = crate::auth::Claims {
            iss: "mercato".into(),
            aud: "mercato".into(),
            sub: user.to_owned(),
            role,
            iat: now,
            exp: now + 600,
            sid: "session".into(),
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("test".into());
        jsonwebtoken::encode(&header, &claims, &self.key).expect("claims serialize")
    }
}

/// An OTLP/HTTP collector for tests: serves `POST /v1/traces` on a free local port, decodes
/// each protobuf export and keeps the spans.
#[derive(Debug, Clone)]
pub struct OtlpCollector {
    /// The base URL to give as `telemetry.otlp_endpoint`.
    pub url: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
}

/// A span as the collector received it; ids in lowercase hex, attributes as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl OtlpCollector {
    pub async fn start() -> anyhow::Result<Self> {
        use axum::routing::post;
        let spans = std::sync::Arc::default();
        let router = axum::Router::new()
            .route("/v1/traces", post(collect))
            .with_state(std::sync::Arc::clone(&spans));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { url, spans })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|spans| spans.clone()).unwrap_or_default()
    }
}

async fn collect(
    axum::extract::State(spans): axum::extract::State<std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>>,
    body: bytes::Bytes,
) -> http::StatusCode {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value::Value, AnyValue};
    use prost::Message;

    fn text(value: Option<&AnyValue>) -> String {
        match value.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        }
    }
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return http::StatusCode::BAD_REQUEST;
    };
    let Ok(mut spans) = spans.lock() else {
        return http::StatusCode::INTERNAL_SERVER_ERROR;
    };
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            spans.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                    .collect(),
            });
        }
    }
    http::StatusCode::OK
}
