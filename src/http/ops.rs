//! Operations: liveness, readiness, metrics, the OpenAPI document, the web page.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{AppError, AppResult, ErrorBody, ErrorCode};
use crate::generation::DatasetState;
use crate::state::AppState;
use crate::telemetry::metrics::CONTENT_TYPE;
use crate::telemetry::{DatasetReading, EmbedderReading, Snapshot};

const PAGE: &str = include_str!("page.html");

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok", pattern = "^ok$")]
    pub status: &'static str,
}

/// Liveness
#[utoipa::path(
    get, path = "/healthz", tag = "operations", operation_id = "healthz",
    security(()),
    responses((status = 200, description = "The process runs.", body = Health)),
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready", pattern = "^ready$")]
    pub status: &'static str,
    /// The loaded model id.
    pub model: String,
    /// Where the model runs: `cpu` or `cuda:N` (the `model.device` setting, resolved).
    #[schema(example = "cpu")]
    pub device: String,
}

/// Readiness
#[utoipa::path(
    get, path = "/readyz", tag = "operations", operation_id = "readyz",
    security(()),
    responses(
        (status = 200, description = "Models and indexes are loaded.", body = Ready),
        (status = 503, description = "Still loading models and indexes. Codes: `not_ready`.", body = ErrorBody),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(Ready {
            status: "ready",
            model: state.embedder.model().id.clone(),
            device: crate::device::name(&state.device),
        })
        .into_response()
    } else {
        AppError::new(ErrorCode::NotReady, "loading models and indexes").into_response()
    }
}

/// Prometheus metrics
///
/// Every series of `telemetry::metrics`, with the readings of this moment: requests by
/// method, route and status, job counts and durations by kind and status, the embedder's
/// batches, forward passes and queue, search latency and its stages, index sizes and the active
/// model per dataset.
#[utoipa::path(
    get, path = "/metrics", tag = "operations", operation_id = "metrics",
    security(()),
    responses((status = 200, description = "Prometheus text exposition format.", body = String, content_type = "text/plain")),
)]
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
    Snapshot { device: crate::device::name(&state.device), embedder, datasets }
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

/// This document
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations", operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI document.", body = Object)),
)]
pub async fn openapi() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], super::openapi::document()).into_response()
}

/// The web page
#[utoipa::path(
    get, path = "/", tag = "operations", operation_id = "page",
    security(()),
    responses((status = 200, description = "A search page: datasets, image search, catalogue upload, jobs.", body = String, content_type = "text/html")),
)]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
