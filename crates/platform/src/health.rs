//! `/health/live` and `/health/ready`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

type Check = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// The dependencies readiness depends on, by name.
#[derive(Clone, Default)]
pub struct HealthChecks {
    checks: BTreeMap<String, Check>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.keys()).finish()
    }
}

impl HealthChecks {
    pub fn add<F, Fut>(&mut self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.checks.insert(name.to_owned(), Arc::new(move || Box::pin(check())));
    }

    /// Runs every check (each with a 2-second limit); answers whether all passed and each result.
    pub async fn run(&self) -> (bool, BTreeMap<String, String>) {
        let mut results = BTreeMap::new();
        let mut healthy = true;
        for (name, check) in &self.checks {
            let outcome = match tokio::time::timeout(Duration::from_secs(2), check()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(err)) => {
                    tracing::warn!(check = %name, error = %format!("{err:#}"), "readiness check failed");
                    "failing".to_owned()
                }
                Err(_) => "timed out".to_owned(),
            };
            healthy &= outcome == "ok";
            results.insert(name.clone(), outcome);
        }
        (healthy, results)
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/health/live", get(|| async { Json(json!({"status": "ok"})) }))
            .route(
                "/health/ready",
                get(move || {
                    let checks = self.clone();
                    async move {
                        let (healthy, results) = checks.run().await;
                        let status = if healthy {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        };
                        let body = json!({"status": if healthy { "ok" } else { "unavailable" }, "checks": results});
                        (status, Json(body)).into_response()
                    }
                }),
            )
    }
}
