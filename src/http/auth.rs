//! API keys (`API.md`): when keys are configured, every request but
//! `/healthz`, `/readyz` and `/metrics` carries `Authorization: Bearer <key>`.
//! A read key may search and read; an admin key may do everything.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{AppError, ErrorCode};
use crate::state::AppState;

const OPEN_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let admin = state.settings.admin_keys();
    let read = state.settings.read_keys();
    if (admin.is_empty() && read.is_empty()) || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(key) = presented else {
        return AppError::new(ErrorCode::Unauthorized, "missing `Authorization: Bearer <key>`").into_response();
    };
    let is_admin = admin.iter().any(|k| constant_time_eq(k, key));
    let is_reader = read.iter().any(|k| constant_time_eq(k, key));
    if !is_admin && !is_reader {
        return AppError::new(ErrorCode::Unauthorized, "unknown API key").into_response();
    }
    if !is_admin && !is_read_request(request.method(), request.uri().path()) {
        return AppError::new(ErrorCode::Forbidden, "this API key may only search and read").into_response();
    }
    next.run(request).await
}

fn is_read_request(method: &Method, path: &str) -> bool {
    method == Method::GET || method == Method::HEAD || (method == Method::POST && path == "/search")
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
