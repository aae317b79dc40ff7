//! API keys (`API.md`): when keys are configured, every request but those of
//! [`is_open`] carries `Authorization: Bearer <key>`. A read key may search and
//! read; an admin key may do everything.

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::{AppError, ErrorCode};
use crate::state::AppState;

/// Paths anyone may read: probes and metrics, and the pages and the API's
/// description, which a browser loads without a bearer header and which hold
/// nothing secret (the pages ask for a key before they call the API).
const OPEN_PATHS: [&str; 6] = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/", "/docs"];

/// Whether `path` needs no key: one of [`OPEN_PATHS`], or a file of the API page.
fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || path.starts_with("/docs/")
}

pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let admin = state.settings.admin_keys();
    let read = state.settings.read_keys();
    if (admin.is_empty() && read.is_empty()) || is_open(request.uri().path()) {
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
    let presented = Sha256::digest(key);
    let is_admin = is_one_of(&admin, &presented);
    let is_reader = is_one_of(&read, &presented);
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

/// Whether the key whose SHA-256 is `presented` is one of `keys`, in a time that
/// tells nothing of which key matched or how much of one did: digests (all 32
/// bytes, whatever the keys' lengths) are compared with `ct_eq` against every
/// key, with no early exit.
fn is_one_of(keys: &[String], presented: &[u8]) -> bool {
    keys.iter().fold(Choice::from(0), |found, key| found | Sha256::digest(key).as_slice().ct_eq(presented)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_only_itself() {
        let keys = vec!["first-secret".to_owned(), "second".to_owned()];
        let is_key = |candidate: &str| is_one_of(&keys, &Sha256::digest(candidate));
        assert!(is_key("first-secret"));
        assert!(is_key("second"));
        for wrong in ["", "first", "first-secret2", "second ", "Second"] {
            assert!(!is_key(wrong), "{wrong:?}");
        }
        assert!(!is_one_of(&[], &Sha256::digest("second")));
    }
}
