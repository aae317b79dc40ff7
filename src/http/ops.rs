//! Operations: liveness, readiness, metrics, the OpenAPI document, the web page.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

const OPENAPI: &str = include_str!("openapi.json");
const PAGE: &str = include_str!("page.html");

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({"status": "ready", "model": state.embedder.model().id})).into_response()
    } else {
        super::error::AppError::new(super::error::ErrorCode::NotReady, "loading models and indexes").into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render(&state)).into_response()
}

pub async fn openapi() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
