//! The HTTP API of `API.md`: one module per resource, thin handlers.
//!
//! [`api`] lists the routes, each with its OpenAPI operation (`openapi`); `router` wires
//! them with the body limits, API-key checks, request ids, request metrics and logs around
//! one shared `AppState`.

pub mod auth;
pub mod datasets;
pub mod docs;
pub mod error;
pub mod extract;
pub mod items;
pub mod jobs;
pub mod models;
pub mod openapi;
pub mod ops;
pub mod search;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderMap, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use std::sync::Arc;

use crate::generation::DatasetState;
use crate::state::AppState;
use crate::telemetry;
use error::{AppError, AppResult, ErrorCode};

/// Room for the non-file fields of a multipart body beside its image.
const MULTIPART_OVERHEAD: u64 = 1 << 20;

pub fn router(state: AppState) -> Router {
    let limits = &state.settings.limits;
    // Handlers enforce the exact limits; the router's limits leave room to
    // drain a slightly oversized body so its sender reads the 413.
    let body_limit = |bytes: u64| {
        let bytes = bytes.saturating_add(MULTIPART_OVERHEAD + extract::DRAIN_ALLOWANCE);
        DefaultBodyLimit::max(usize::try_from(bytes).unwrap_or(usize::MAX))
    };
    let upload_limit = body_limit(limits.max_upload_bytes);
    let image_limit = body_limit(limits.max_image_bytes);
    let routes = if state.settings.server.role.serves_api() { api(upload_limit) } else { worker_api() };
    let (routes, _document) = routes.split_for_parts();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(image_limit)
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_key))
        .layer(middleware::from_fn(error_request_id))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), telemetry::requests::observe))
        // The last layer is the outermost: a request gets its id (a UUID, or
        // the `x-request-id` it came with) first, and its response carries it.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Every route, each registered with its OpenAPI operation (the handler's
/// `#[utoipa::path]`, which names its method and path): the router and
/// `/openapi.json` are both made from this list. `upload_limit` is the body
/// limit of a catalogue upload.
pub fn api(upload_limit: DefaultBodyLimit) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(datasets::create).layer(upload_limit))
        .routes(routes!(datasets::list))
        .routes(routes!(datasets::get, datasets::delete))
        .routes(routes!(datasets::labels))
        .routes(routes!(models::list))
        .routes(routes!(models::activate))
        .routes(routes!(items::add, items::list))
        .routes(routes!(items::get, items::delete))
        .routes(routes!(items::image))
        .routes(routes!(search::similar))
        .routes(routes!(search::search))
        .routes(routes!(jobs::list, jobs::create))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::artifact))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::page))
        .routes(routes!(docs::page))
        .routes(routes!(docs::asset))
}

/// What a `worker` process answers: whether it lives and is ready, and its metrics.
pub fn worker_api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

async fn not_found() -> AppError {
    AppError::new(ErrorCode::NotFound, "no such endpoint; see GET /openapi.json")
}

async fn method_not_allowed() -> AppError {
    AppError::new(ErrorCode::MethodNotAllowed, "this endpoint does not take that method")
}

/// Largest error body [`error_request_id`] rewrites; error bodies are a few hundred bytes.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// Adds the request's id to a JSON error body, making it
/// `{"error": {"code", "message", "request_id"}}`: a client reporting a
/// failure can quote the id, which names the server's log lines of it.
async fn error_request_id(request: Request, next: Next) -> Response {
    let request_id = telemetry::requests::request_id(&request);
    let response = next.run(request).await;
    let status = response.status();
    let small = response.body().size_hint().upper().is_some_and(|n| n <= MAX_ERROR_BODY);
    if !(status.is_client_error() || status.is_server_error()) || !is_json(response.headers()) || !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ERROR_BODY as usize).await {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(error = %err, "could not read an error body");
            return Response::from_parts(parts, Body::empty());
        }
    };
    let mut json = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(json) => json,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    let Some(error) = json.get_mut("error").and_then(serde_json::Value::as_object_mut) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    error.insert("request_id".into(), request_id.into());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json.to_string()))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"))
}

/// `API.md`: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn check_dataset_name(name: &str) -> Result<(), AppError> {
    let valid =
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(AppError::new(
            ErrorCode::InvalidDatasetName,
            format!("dataset name {name:?} must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"),
        ))
    }
}

/// The serving state of a dataset, or 404 (or 503 while it is still loading).
pub fn serving(state: &AppState, name: &str) -> AppResult<Arc<DatasetState>> {
    if let Some(dataset) = state.dataset(name) {
        return Ok(dataset);
    }
    if !state.is_ready() {
        return Err(AppError::new(ErrorCode::NotReady, "the server is still loading its indexes; retry shortly"));
    }
    Err(AppError::dataset_not_found(name))
}
