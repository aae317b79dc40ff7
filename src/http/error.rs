//! The one error type at the HTTP edge: every failure becomes an [`ErrorBody`],
//! `{"error": {"code", "message", "request_id"}}`, with a stable snake_case code, one of
//! [`ErrorCode`] (`docs/API.md`), whose variant also fixes the status.
//!
//! Client mistakes are 4xx with a code naming the problem. Server faults are
//! logged with their detail and answered 500 `internal` without it.

use axum::Json;
use axum::extract::multipart::MultipartError;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::error::ErrorCode;

#[derive(Debug)]
pub struct AppError {
    pub code: ErrorCode,
    pub message: String,
}

pub type AppResult<T> = Result<T, AppError>;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "dataset_not_found", "message": "no dataset named \"shoes\"",
    "request_id": "6f1c2a4e-0b7d-4c1e-9a53-2f8e7d9b0c11"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request's id (its `x-request-id`), naming the server's log lines of it. Filled in by
    /// the router's `error_request_id` layer, which sees every error body.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(required = true)]
    pub request_id: String,
}

impl AppError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    pub fn dataset_not_found(name: &str) -> Self {
        Self::new(ErrorCode::DatasetNotFound, format!("no dataset named {name:?}"))
    }

    /// A server fault: the detail goes to the log, the client gets a generic message.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(ErrorCode::Internal, "internal server error; see the server log")
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body =
            ErrorBody { error: ErrorDetail { code: self.code, message: self.message, request_id: String::new() } };
        (self.code.status(), Json(body)).into_response()
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
        Self::new(ErrorCode::InvalidMultipart, format!("malformed multipart body: {}", err.body_text()))
    }
}

impl From<MultipartRejection> for AppError {
    fn from(err: MultipartRejection) -> Self {
        Self::new(ErrorCode::InvalidMultipart, format!("expected a multipart/form-data body: {}", err.body_text()))
    }
}

impl From<JsonRejection> for AppError {
    fn from(err: JsonRejection) -> Self {
        if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::too_large(err.body_text());
        }
        if let JsonRejection::MissingJsonContentType(_) = err {
            return Self::new(ErrorCode::UnsupportedMediaType, err.body_text());
        }
        Self::new(ErrorCode::InvalidJson, err.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(err: QueryRejection) -> Self {
        Self::new(ErrorCode::InvalidQuery, err.body_text())
    }
}
