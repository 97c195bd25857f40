//! Health, readiness and metrics endpoints of the operator itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::health::Health;
use crate::telemetry::Metrics;

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// `/healthz` is liveness (the process answers); `/readyz` follows [`Health`]; `/metrics`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(encode))
        .with_state(Shared { metrics, health })
}

async fn ready(State(s): State<Shared>) -> impl IntoResponse {
    let phase = s.health.phase();
    let code = if phase.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, phase.describe())
}

async fn encode(State(s): State<Shared>) -> impl IntoResponse {
    match s.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router(metrics, health)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Phase;

    async fn readyz(health: &Arc<Health>) -> (StatusCode, String) {
        use http_body_util::BodyExt;
        let shared = Shared {
            metrics: Arc::new(Metrics::default()),
            health: health.clone(),
        };
        let response = ready(State(shared)).await.into_response();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_watches_have_synced() {
        let health = Arc::new(Health::default());
        let (code, body) = readyz(&health).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("connecting"), "{body}");
        health.set(Phase::Syncing);
        assert_eq!(readyz(&health).await.0, StatusCode::SERVICE_UNAVAILABLE);
        health.set(Phase::Serving);
        assert_eq!(
            readyz(&health).await,
            (StatusCode::OK, "ready: watches synced".to_string())
        );
        health.set(Phase::Standby);
        assert_eq!(readyz(&health).await.0, StatusCode::OK);
    }
}
