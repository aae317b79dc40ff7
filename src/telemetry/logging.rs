//! The log subscriber: lines on stderr, as text for a person (coloured on a
//! terminal) or as JSON (one object per line) for a log pipeline (`[log] format`).
//!
//! `RUST_LOG` chooses what is logged (default [`DEFAULT_FILTER`]). A line
//! logged while a request is handled carries the request's span (its
//! `request_id`, method and route): in text as a `request{...}:` prefix, in
//! JSON as the `span` object.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// What is logged unless `RUST_LOG` says otherwise: our info lines (the
/// access log among them), the libraries' warnings.
pub const DEFAULT_FILTER: &str = "info,sqlx=warn,tower_http=warn";

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

/// Installs the process's log subscriber; does nothing if one is installed
/// already (tests that start several servers).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
}
