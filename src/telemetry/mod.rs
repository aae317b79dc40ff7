//! What the server tells its operators: Prometheus metrics (`metrics`), the
//! per-request span, access log and request counters (`requests`), and the
//! log subscriber (`logging`).
//!
//! This module depends on nothing else in the crate: handlers and jobs call
//! into it, and the `/metrics` handler hands it a [`Snapshot`] of the state
//! it cannot see.

pub mod logging;
pub mod metrics;
pub mod requests;

pub use logging::LogFormat;
pub use metrics::{DatasetReading, EmbedderReading, Metrics, SearchTiming, Snapshot};
