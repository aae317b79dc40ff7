//! Operations: liveness, readiness, metrics, the OpenAPI document, the web page.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::error::{AppError, AppResult, ErrorCode};
use crate::generation::DatasetState;
use crate::state::AppState;
use crate::telemetry::metrics::CONTENT_TYPE;
use crate::telemetry::{DatasetReading, EmbedderReading, Snapshot};

const OPENAPI: &str = include_str!("openapi.json");
const PAGE: &str = include_str!("page.html");

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready", "model": state.embedder.model().id})).into_response()
    } else {
        AppError::new(ErrorCode::NotReady, "loading models and indexes").into_response()
    }
}

/// Every series of `telemetry::metrics`, with the readings of this moment.
pub async fn metrics(State(state): State<AppState>) -> AppResult<Response> {
    let text = state.metrics.encode(&snapshot(&state)).map_err(AppError::internal)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// What `/metrics` reads of the server's state at scrape time.
fn snapshot(state: &AppState) -> Snapshot {
    let stats = &state.embedder.stats;
    let embedder = EmbedderReading {
        batches: stats.batches.load(Ordering::Relaxed),
        images: stats.images.load(Ordering::Relaxed),
        forward_passes: stats.passes.load(Ordering::Relaxed),
        rejected: stats.rejected.load(Ordering::Relaxed),
        forward_seconds: stats.forward_micros.load(Ordering::Relaxed) as f64 / 1e6,
        queue_depth: i64::try_from(stats.queued.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
    };
    let datasets = state.datasets().iter().map(|dataset| dataset_reading(dataset)).collect();
    Snapshot { embedder, datasets }
}

fn dataset_reading(dataset: &DatasetState) -> DatasetReading {
    let items = dataset.catalog.read().map(|c| c.len()).unwrap_or(0);
    let generation = dataset.generation.load();
    DatasetReading {
        name: dataset.name.clone(),
        model: generation.model.id.clone(),
        items: i64::try_from(items).unwrap_or(i64::MAX),
        index_vectors: i64::try_from(generation.index.len()).unwrap_or(i64::MAX),
    }
}

pub async fn openapi() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
