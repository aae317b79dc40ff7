//! Each request's span, access log line and request metrics, as one axum
//! middleware ([`observe`]).
//!
//! It runs inside tower-http's `SetRequestIdLayer` (which gives every request
//! an `x-request-id`, keeping one the client sent) and after routing (the
//! router applies it to each route), so it knows the request id and the
//! matched route template. Everything the handler logs happens inside the
//! `request` span, so every line of a request names its id; work the handler
//! moves to a blocking thread logs without it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId;
use tracing::Instrument;

use super::metrics::{Metrics, UNMATCHED_ROUTE};

/// Runs the request inside its span, then counts it and writes its access log line.
pub async fn observe(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map_or(UNMATCHED_ROUTE, MatchedPath::as_str).to_owned();
    let request_id = request_id(&request);
    let span = tracing::info_span!("request", request_id = %request_id, method = %method, route = %route,
        path = %request.uri().path());
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics.observe_request(&method, &route, status, elapsed);
    span.in_scope(|| tracing::info!(status, latency_ms = elapsed.as_micros() as f64 / 1000.0, "answered"));
    response
}

/// The id `SetRequestIdLayer` gave the request (empty outside it).
pub fn request_id(request: &Request) -> String {
    request
        .extensions()
        .get::<RequestId>()
        .map(|id| String::from_utf8_lossy(id.header_value().as_bytes()).into_owned())
        .unwrap_or_default()
}
