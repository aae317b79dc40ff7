//! The server's Prometheus metrics, kept with `prometheus-client` and named
//! by Prometheus conventions (base units, `_seconds`, `_total`).
//!
//! Two kinds of series. Events are recorded into [`Metrics`] as they happen
//! (requests, searches, jobs): atomic updates, never blocking, from any
//! thread. Readings of the server's state (the embedder's counters and
//! queue, each dataset's items, index and active model) are taken at scrape
//! time by the `/metrics` handler into a [`Snapshot`]; [`Metrics::encode`]
//! writes both in the Prometheus text format. A fresh registry per scrape
//! means a deleted dataset's series disappear with it.
//!
//! Every label is bounded: routes are the router's templates (or
//! [`UNMATCHED_ROUTE`]), methods a fixed set, job kinds and statuses the
//! server's own, datasets those that exist.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of [`Metrics::encode`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Prefix of every series.
const PREFIX: &str = "lookalike";

/// The route label of a request no route matched: one value for every
/// unknown path, so a scanner cannot grow the series without bound.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Upper bounds (s) of the request and search latency buckets: a search
/// answers in milliseconds, an upload may take many seconds.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 30.0, 120.0];

/// Upper bounds (s) of the job duration buckets: a small ingest takes
/// seconds, a fine-tune of a large catalogue hours.
const JOB_BUCKETS: [f64; 10] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0];

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

/// Label values of `lookalike_search_stage_seconds_total`, in
/// `SearchTiming::stages` order.
const SEARCH_STAGES: [&str; 7] = ["read", "decode", "queue", "gathering", "forward", "index", "total"];

impl SearchTiming {
    fn stages(&self) -> [Duration; SEARCH_STAGES.len()] {
        [self.read, self.decode, self.queued, self.gathering, self.forward, self.index, self.total]
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    kind: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatasetLabels {
    dataset: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    device: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    dataset: String,
    model: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, summed: a counter of `f64`.
type SecondsCounter = Counter<f64, AtomicU64>;

/// The event series; cheap to clone (every field shares its values).
#[derive(Debug, Clone)]
pub struct Metrics {
    http_requests: Family<RequestLabels, Counter>,
    http_duration: HistogramFamily<RequestLabels>,
    search_duration: Histogram,
    search_stages: Family<StageLabels, SecondsCounter>,
    jobs_finished: Family<JobLabels, Counter>,
    job_duration: HistogramFamily<JobLabels>,
}

/// What the embedder has counted so far (`embedder::EmbedderStats`), read at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedderReading {
    pub batches: u64,
    pub images: u64,
    pub forward_passes: u64,
    pub rejected: u64,
    pub forward_seconds: f64,
    pub queue_depth: i64,
}

/// One served dataset at scrape time.
#[derive(Debug, Clone, Default)]
pub struct DatasetReading {
    pub name: String,
    /// The model its generation serves with.
    pub model: String,
    /// Live items in its catalogue.
    pub items: i64,
    /// Vectors in its index (deleted items stay until the next rebuild).
    pub index_vectors: i64,
}

/// The readings of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Where the model runs (`cpu`, `cuda:0`): the `model_device_info` series.
    pub device: String,
    pub embedder: EmbedderReading,
    pub datasets: Vec<DatasetReading>,
}

impl Default for Metrics {
    fn default() -> Self {
        let search_stages = Family::<StageLabels, SecondsCounter>::default();
        for stage in SEARCH_STAGES {
            // Present at zero before the first search, so a reader's deltas start from it.
            drop(search_stages.get_or_create(&StageLabels { stage }));
        }
        Self {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency_histogram),
            search_duration: latency_histogram(),
            search_stages,
            jobs_finished: Family::default(),
            job_duration: Family::new_with_constructor(job_histogram),
        }
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

fn job_histogram() -> Histogram {
    Histogram::new(JOB_BUCKETS)
}

/// The method as a label: the standard ones by name, any other as `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Counts one answered request; `route` is the matched route template
    /// (`/datasets/{name}`) or [`UNMATCHED_ROUTE`], never a raw path.
    pub fn observe_request(&self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let labels = RequestLabels { method: method_label(method), route: route.to_owned(), status };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Counts one answered search: its latency (the handler's total) and its stages.
    pub fn observe_search(&self, timing: &SearchTiming) {
        for (stage, spent) in SEARCH_STAGES.into_iter().zip(timing.stages()) {
            self.search_stages.get_or_create(&StageLabels { stage }).inc_by(spent.as_secs_f64());
        }
        self.search_duration.observe(timing.total.as_secs_f64());
    }

    /// Counts one job that ended with `status` after running `elapsed`.
    pub fn observe_job(&self, kind: &str, status: &str, elapsed: Duration) {
        let labels = JobLabels { kind: kind.to_owned(), status: status.to_owned() };
        self.jobs_finished.get_or_create(&labels).inc();
        self.job_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// Every series, the events recorded so far and the `snapshot`'s
    /// readings, as Prometheus text ([`CONTENT_TYPE`]).
    pub fn encode(&self, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix(PREFIX);
        self.register_events(&mut registry);
        register_readings(&mut registry, snapshot);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }

    fn register_events(&self, registry: &mut Registry) {
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            self.http_requests.clone(),
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from receiving a request to its response headers, by method, route template and status",
            Unit::Seconds,
            self.http_duration.clone(),
        );
        registry.register_with_unit(
            "search_duration",
            "Latency of answered searches (POST /search and GET .../similar), in the handler",
            Unit::Seconds,
            self.search_duration.clone(),
        );
        registry.register_with_unit(
            "search_stage",
            "Time answered searches spent in each stage, summed; divide by lookalike_search_duration_seconds_count \
             for the mean. queue includes gathering; total is the handler's",
            Unit::Seconds,
            self.search_stages.clone(),
        );
        registry.register(
            "jobs_finished",
            "Jobs that ended, by kind and status (succeeded, failed, canceled)",
            self.jobs_finished.clone(),
        );
        registry.register_with_unit(
            "job_duration",
            "Time jobs ran (from start to end, not counting their wait in the queue), by kind and status",
            Unit::Seconds,
            self.job_duration.clone(),
        );
    }
}

fn register_readings(registry: &mut Registry, snapshot: &Snapshot) {
    let device = Family::<DeviceLabels, Gauge>::default();
    device.get_or_create(&DeviceLabels { device: snapshot.device.clone() }).set(1);
    registry.register("model_device_info", "Where the embedding model runs, cpu or cuda:N (value 1)", device);
    let e = &snapshot.embedder;
    registry.register("embedder_batches", "Batches run by the embedder", ConstCounter::new(e.batches));
    registry.register("embedder_images", "Images embedded", ConstCounter::new(e.images));
    registry.register(
        "embedder_forward_passes",
        "Passes through the model (a batch above embedder.max_forward_pixels takes several)",
        ConstCounter::new(e.forward_passes),
    );
    registry.register(
        "embedder_rejected",
        "Queries refused because the embedder's queue was full",
        ConstCounter::new(e.rejected),
    );
    registry.register_with_unit(
        "embedder_forward",
        "Time spent in forward passes",
        Unit::Seconds,
        ConstCounter::new(e.forward_seconds),
    );
    registry.register("embedder_queue_depth", "Requests waiting for the model", ConstGauge::new(e.queue_depth));

    let items = Family::<DatasetLabels, Gauge>::default();
    let vectors = Family::<DatasetLabels, Gauge>::default();
    let models = Family::<ModelLabels, Gauge>::default();
    for dataset in &snapshot.datasets {
        let labels = DatasetLabels { dataset: dataset.name.clone() };
        items.get_or_create(&labels).set(dataset.items);
        vectors.get_or_create(&labels).set(dataset.index_vectors);
        models.get_or_create(&ModelLabels { dataset: dataset.name.clone(), model: dataset.model.clone() }).set(1);
    }
    registry.register("dataset_items", "Live items per dataset", items);
    registry.register(
        "index_vectors",
        "Vectors in each dataset's served index (deleted items stay until the next rebuild)",
        vectors,
    );
    registry.register("dataset_active_model_info", "The model serving each dataset (value 1)", models);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_by_convention() {
        let metrics = Metrics::default();
        metrics.observe_request(&Method::GET, "/datasets/{name}", 404, Duration::from_millis(3));
        metrics.observe_search(&SearchTiming { total: Duration::from_millis(7), ..SearchTiming::default() });
        metrics.observe_job("ingest", "succeeded", Duration::from_secs(2));
        let snapshot = Snapshot {
            device: "cpu".into(),
            embedder: EmbedderReading { forward_seconds: 0.5, ..EmbedderReading::default() },
            datasets: vec![DatasetReading { name: "shoes".into(), model: "m1".into(), items: 3, index_vectors: 4 }],
        };
        let text = metrics.encode(&snapshot).expect("encode");
        for line in [
            r#"lookalike_http_requests_total{method="GET",route="/datasets/{name}",status="404"} 1"#,
            r#"lookalike_http_request_duration_seconds_count{method="GET",route="/datasets/{name}",status="404"} 1"#,
            "lookalike_search_duration_seconds_count 1",
            r#"lookalike_search_stage_seconds_total{stage="total"} 0.007"#,
            r#"lookalike_search_stage_seconds_total{stage="read"} 0.0"#,
            r#"lookalike_jobs_finished_total{kind="ingest",status="succeeded"} 1"#,
            r#"lookalike_job_duration_seconds_sum{kind="ingest",status="succeeded"} 2.0"#,
            "lookalike_embedder_forward_seconds_total 0.5",
            "lookalike_embedder_queue_depth 0",
            r#"lookalike_dataset_items{dataset="shoes"} 3"#,
            r#"lookalike_index_vectors{dataset="shoes"} 4"#,
            r#"lookalike_dataset_active_model_info{dataset="shoes",model="m1"} 1"#,
            r#"lookalike_model_device_info{device="cpu"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn unknown_methods_share_one_label() {
        let metrics = Metrics::default();
        for method in ["FOO", "BAR"] {
            let method = Method::from_bytes(method.as_bytes()).expect("method");
            metrics.observe_request(&method, UNMATCHED_ROUTE, 405, Duration::ZERO);
        }
        let text = metrics.encode(&Snapshot::default()).expect("encode");
        assert!(text.contains(r#"lookalike_http_requests_total{method="OTHER",route="unmatched",status="405"} 2"#));
    }
}
