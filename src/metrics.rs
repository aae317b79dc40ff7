//! Counters for `GET /metrics`, written as Prometheus text.
//!
//! Plain atomics, bumped by handlers; nothing here blocks.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::state::AppState;

/// Upper bounds (ms) of the search latency histogram buckets.
const LATENCY_BUCKETS_MS: [u64; 10] = [2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000];

#[derive(Debug, Default)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub http_client_errors: AtomicU64,
    pub http_server_errors: AtomicU64,
    pub searches: AtomicU64,
    search_latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    search_latency_sum_ms: AtomicU64,
    search_stage_micros: [AtomicU64; SEARCH_STAGES.len()],
}

/// Where one answered search's time went, stage by stage.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchTiming {
    /// Reading the request body (or, for `similar`, the item's stored image).
    pub read: Duration,
    /// Decoding and resizing the image into model input, on a blocking thread.
    pub decode: Duration,
    /// In the embedder's queue until its forward pass started; `gathering`
    /// is the part of it spent waiting for a batch to fill.
    pub queued: Duration,
    pub gathering: Duration,
    /// The forward pass that embedded the query (shared with its batch).
    pub forward: Duration,
    /// Searching the index, on a blocking thread.
    pub index: Duration,
    /// The handler from start to answer; what the stages leave over is
    /// parsing, scheduling and building the answer.
    pub total: Duration,
}

/// Label values of `lookalike_search_stage_microseconds_total`, in
/// `SearchTiming::stages` order.
const SEARCH_STAGES: [&str; 7] = ["read", "decode", "queue", "gathering", "forward", "index", "total"];

impl SearchTiming {
    fn stages(&self) -> [Duration; SEARCH_STAGES.len()] {
        [self.read, self.decode, self.queued, self.gathering, self.forward, self.index, self.total]
    }
}

impl Metrics {
    /// Counts one answered search: its latency (the handler's total) and its stages.
    pub fn observe_search(&self, timing: &SearchTiming) {
        for (sum, stage) in self.search_stage_micros.iter().zip(timing.stages()) {
            sum.fetch_add(stage.as_micros() as u64, Ordering::Relaxed);
        }
        let millis = timing.total.as_secs_f64() * 1000.0;
        self.searches.fetch_add(1, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_MS.iter().position(|&b| millis <= b as f64).unwrap_or(LATENCY_BUCKETS_MS.len());
        self.search_latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.search_latency_sum_ms.fetch_add(millis.round() as u64, Ordering::Relaxed);
    }

    pub fn observe_status(&self, status: u16) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            self.http_client_errors.fetch_add(1, Ordering::Relaxed);
        } else if status >= 500 {
            self.http_server_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Renders every metric of the server as Prometheus text.
pub fn render(state: &AppState) -> String {
    let m = &state.metrics;
    let e = &state.embedder.stats;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
    };
    counter("lookalike_http_requests_total", "HTTP requests answered.", load(&m.http_requests));
    counter("lookalike_http_client_errors_total", "HTTP requests answered 4xx.", load(&m.http_client_errors));
    counter("lookalike_http_server_errors_total", "HTTP requests answered 5xx.", load(&m.http_server_errors));
    counter("lookalike_embedder_batches_total", "Forward passes run by the embedder.", load(&e.batches));
    counter("lookalike_embedder_images_total", "Images embedded.", load(&e.images));
    counter(
        "lookalike_embedder_forward_passes_total",
        "Passes through the model (a batch above embedder.max_forward_pixels takes several).",
        load(&e.passes),
    );
    counter("lookalike_embedder_rejected_total", "Queries refused because the queue was full.", load(&e.rejected));
    counter("lookalike_embedder_forward_microseconds_total", "Time spent in forward passes.", load(&e.forward_micros));
    let _ = writeln!(
        out,
        "# HELP lookalike_embedder_queue_depth Requests waiting for the model.\n# TYPE lookalike_embedder_queue_depth gauge\nlookalike_embedder_queue_depth {}",
        e.queued.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP lookalike_search_duration_ms Search latency.\n# TYPE lookalike_search_duration_ms histogram"
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
        cumulative += load(&m.search_latency[i]);
        let _ = writeln!(out, "lookalike_search_duration_ms_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += load(&m.search_latency[LATENCY_BUCKETS_MS.len()]);
    let _ = writeln!(out, "lookalike_search_duration_ms_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "lookalike_search_duration_ms_sum {}", load(&m.search_latency_sum_ms));
    let _ = writeln!(out, "lookalike_search_duration_ms_count {cumulative}");
    let _ = writeln!(
        out,
        "# HELP lookalike_search_stage_microseconds_total Time answered searches spent in each stage, summed; \
         divide by lookalike_search_duration_ms_count for the mean. queue includes gathering; total is the handler's.\n\
         # TYPE lookalike_search_stage_microseconds_total counter"
    );
    for (stage, sum) in SEARCH_STAGES.iter().zip(&m.search_stage_micros) {
        let _ = writeln!(out, "lookalike_search_stage_microseconds_total{{stage=\"{stage}\"}} {}", load(sum));
    }
    let _ =
        writeln!(out, "# HELP lookalike_dataset_items Live items per dataset.\n# TYPE lookalike_dataset_items gauge");
    for dataset in state.datasets() {
        let items = dataset.catalog.read().map(|c| c.len()).unwrap_or(0);
        let _ = writeln!(out, "lookalike_dataset_items{{dataset=\"{}\"}} {items}", dataset.name);
    }
    out
}
