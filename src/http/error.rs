//! The one error type at the HTTP edge: every failure becomes
//! `{"error": {"code", "message"}}` with a stable snake_case code (`API.md`).
//!
//! Client mistakes are 4xx with a code naming the problem. Server faults are
//! logged with their detail and answered 500 `internal` without it.

use axum::Json;
use axum::extract::multipart::MultipartError;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug)]
pub struct AppError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    pub fn dataset_not_found(name: &str) -> Self {
        Self::not_found("dataset_not_found", format!("no dataset named {name:?}"))
    }

    /// A server fault: the detail goes to the log, the client gets a generic message.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal server error; see the server log")
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<sqlx::Error> for AppError {
    fn from(err: sqlx::Error) -> Self {
        Self::internal(format!("database: {err}"))
    }
}

impl From<anyhow::Error> for AppError {
    fn from(err: anyhow::Error) -> Self {
        Self::internal(format!("{err:#}"))
    }
}

impl From<std::io::Error> for AppError {
    fn from(err: std::io::Error) -> Self {
        Self::internal(format!("io: {err}"))
    }
}

impl From<MultipartError> for AppError {
    fn from(err: MultipartError) -> Self {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large(format!("request body too large: {}", err.body_text()));
        }
        Self::bad_request("invalid_multipart", format!("malformed multipart body: {}", err.body_text()))
    }
}

impl From<MultipartRejection> for AppError {
    fn from(err: MultipartRejection) -> Self {
        Self::bad_request("invalid_multipart", format!("expected a multipart/form-data body: {}", err.body_text()))
    }
}

impl From<JsonRejection> for AppError {
    fn from(err: JsonRejection) -> Self {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large(err.body_text());
        }
        Self::new(
            if err.status().is_client_error() { err.status() } else { StatusCode::BAD_REQUEST },
            "invalid_json",
            err.body_text(),
        )
    }
}

impl From<QueryRejection> for AppError {
    fn from(err: QueryRejection) -> Self {
        Self::bad_request("invalid_query", err.body_text())
    }
}
