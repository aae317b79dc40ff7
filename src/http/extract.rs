//! Extractors whose rejections are `AppError`s (JSON with a code), and the
//! shared parsing of parameters and uploaded fields.

use axum::extract::FromRequestParts;
use axum::extract::multipart::Field;
use axum::extract::rejection::PathRejection;

use super::error::{AppError, AppResult, ErrorCode};

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct AppPath<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct AppQuery<T>(pub T);

impl From<PathRejection> for AppError {
    fn from(err: PathRejection) -> Self {
        AppError::new(ErrorCode::InvalidPath, err.body_text())
    }
}

/// Parses `k`: a whole number from 1 to `max_k`, 10 when absent.
pub fn parse_k(raw: Option<&str>, max_k: usize) -> AppResult<usize> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(10.min(max_k));
    };
    match raw.parse::<usize>() {
        Ok(k) if (1..=max_k).contains(&k) => Ok(k),
        _ => {
            Err(AppError::new(ErrorCode::InvalidK, format!("k must be a whole number from 1 to {max_k}, got {raw:?}")))
        }
    }
}

/// Reads a whole multipart field, refusing more than `max` bytes.
pub async fn read_field(mut field: Field<'_>, max: u64, what: &str) -> AppResult<Vec<u8>> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await? {
        if (bytes.len() + chunk.len()) as u64 > max {
            drain(field).await;
            return Err(AppError::too_large(format!("{what} is larger than the {max} bytes allowed")));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Extra body a handler reads and discards after a limit is passed, so the
/// client, still sending, gets its 413 instead of a broken connection.
/// Bodies larger still are cut off by the router's body limit.
pub const DRAIN_ALLOWANCE: u64 = 64 << 20;

/// Reads and discards the rest of a field (see `DRAIN_ALLOWANCE`).
pub async fn drain(mut field: Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

/// Reads a short text field (a name, a label, a number).
pub async fn read_text(field: Field<'_>, name: &str) -> AppResult<String> {
    let bytes = read_field(field, 4096, name).await?;
    String::from_utf8(bytes).map_err(|_| AppError::new(ErrorCode::InvalidField, format!("field {name:?} is not UTF-8")))
}
