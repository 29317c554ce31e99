//! `/health/live` and `/health/ready`.
//!
//! A check either gates readiness (the database: without it the instance cannot answer) or is
//! advisory (the event bus: the outbox keeps events while it is away, so the instance keeps
//! serving and answers `degraded` with 200). A load balancer that took every replica out while
//! NATS restarts would turn a broker blip into an outage of the shop.

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

/// The dependencies readiness depends on (or reports on), by name.
#[derive(Clone, Default)]
pub struct HealthChecks {
    /// Each check, and whether readiness depends on it.
    checks: BTreeMap<String, (Check, bool)>,
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.checks.keys()).finish()
    }
}

impl HealthChecks {
    /// A check readiness depends on.
    pub fn add<F, Fut>(&mut self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.checks
            .insert(name.to_owned(), (Arc::new(move || Box::pin(check())), true));
    }

    /// A check that is reported but leaves the instance ready (`degraded` while it fails).
    pub fn add_advisory<F, Fut>(&mut self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.checks
            .insert(name.to_owned(), (Arc::new(move || Box::pin(check())), false));
    }

    /// Runs every check (each with a 2-second limit); answers whether every gating check
    /// passed, whether every check did, and each result.
    pub async fn run(&self) -> (bool, bool, BTreeMap<String, String>) {
        let mut results = BTreeMap::new();
        let mut healthy = true;
        let mut all = true;
        for (name, (check, gating)) in &self.checks {
            let outcome = match tokio::time::timeout(Duration::from_secs(2), check()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(err)) => {
                    tracing::warn!(check = %name, error = %format!("{err:#}"), "readiness check failed");
                    "failing".to_owned()
                }
                Err(_) => "timed out".to_owned(),
            };
            let ok = outcome == "ok";
            all &= ok;
            if *gating {
                healthy &= ok;
            }
            results.insert(name.clone(), outcome);
        }
        (healthy, all, results)
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/health/live", get(|| async { Json(json!({"status": "ok"})) }))
            .route(
                "/health/ready",
                get(move || {
                    let checks = self.clone();
                    async move {
                        let (healthy, all, results) = checks.run().await;
                        let (status, word) = match (healthy, all) {
                            (true, true) => (StatusCode::OK, "ok"),
                            (true, false) => (StatusCode::OK, "degraded"),
                            (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                        };
                        let body = json!({"status": word, "checks": results});
                        (status, Json(body)).into_response()
                    }
                }),
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_advisory_check_degrades_but_a_gating_one_makes_unready() {
        let mut checks = HealthChecks::default();
        checks.add("db", || async { Ok(()) });
        checks.add_advisory("bus", || async { anyhow::bail!("away") });
        let (healthy, all, results) = checks.run().await;
        assert!(healthy && !all);
        assert_eq!(results["bus"], "failing");
        checks.add("cache", || async { anyhow::bail!("away") });
        let (healthy, _, results) = checks.run().await;
        assert!(!healthy);
        assert_eq!(results["cache"], "failing");
    }
}
