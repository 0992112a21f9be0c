//! `/healthz`, `/readyz` and `/metrics`: unauthenticated, for probes and scrapers.
//!
//! Owns: the probes' answers. Must not: say more than what failed (never a database's own words).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// The server can serve: the database answers and it is not shutting down.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    // Bounded: a database that does not answer is as bad as one that refuses.
    // The probe is unauthenticated: it says what failed, never the database's own words
    // (they may name hosts, users or paths). Those go to the log.
    let db = match tokio::time::timeout(std::time::Duration::from_secs(3), state.store.ping()).await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database check failed");
            Err("the database refused the check")
        }
        Err(_) => Err("the database did not answer within 3 s"),
    };
    let shutting_down = state.agents.is_shutting_down();
    let ok = db.is_ok() && !shutting_down;
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "database": if db.is_ok() { "ok" } else { "unreachable" },
        "database_error": db.as_ref().err(),
        "shutting_down": shutting_down,
        "agents_connected": state.agents.live_count(),
    });
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(body),
    )
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
