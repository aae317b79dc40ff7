//! What an operator sees: `/metrics` scraped after known traffic (an ingest
//! job, searches, 404s) shows every series with the counts sent and bounded
//! labels; every answer carries an `x-request-id` (the client's own, if it
//! sent one) and every error body names it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::support::{self, Client};

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: its samples and the declared type of each family.
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(declared) = line.strip_prefix("# TYPE ") {
                let (name, kind) = declared.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            samples.push(parse_sample(line));
        }
        Self { samples, types }
    }

    /// The samples named `name` whose labels include every pair of `labels`.
    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The one sample named `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.matching(name, labels).filter(|s| s.labels.len() == labels.len()).collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
        found[0].value
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// The values one label takes across the samples named `name`.
    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.matching(name, &[]).filter_map(|s| s.labels.get(label).cloned()).collect()
    }

    /// Checks a histogram series: cumulative buckets ending at `+Inf` = count; returns (count, sum).
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> (f64, f64) {
        let count = self.value(&format!("{name}_count"), labels);
        let sum = self.value(&format!("{name}_sum"), labels);
        let buckets: Vec<_> = self
            .matching(&format!("{name}_bucket"), labels)
            .filter(|s| s.labels.len() == labels.len() + 1)
            .map(|s| (s.labels["le"].clone(), s.value))
            .collect();
        assert!(buckets.len() > 2, "{name}{labels:?} has buckets");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{name}{labels:?} buckets are cumulative: {buckets:?}");
        assert_eq!(buckets.last(), Some(&("+Inf".to_owned(), count)), "{name}{labels:?}");
        (count, sum)
    }
}

/// `name{k="v",...} value`, label values with `\\`, `\"` and `\n` escapes.
fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).expect("a name");
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches(',');
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner.split_once("=\"").expect("key=\"value\"");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("a closing quote") {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next().expect("an escape").1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, other) => value.push(other),
                }
            };
            labels.insert(key.to_owned(), value);
            inner = &after[end..];
        }
    }
    let value = rest.trim().parse().unwrap_or_else(|_| panic!("a value in {line:?}"));
    Sample { name, labels, value }
}

async fn scrape(client: &Client) -> Scrape {
    let response = client.http.get(client.url("/metrics")).send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain; version=0.0.4"));
    Scrape::parse(&response.text().await.expect("body"))
}

const SEARCHES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_traffic_show_every_series_with_sane_values() {
    let started = Instant::now();
    let data = tempfile::tempdir().expect("tempdir");
    let (server, client) = support::start(support::settings(data.path())).await;
    let subset = support::fashion_subset(2, 1);

    // An ingest job, followed by polling (each poll a request we count).
    let (status, body) = client.upload("shop", subset.catalogue_zip.clone(), "catalogue.zip").await;
    assert_eq!(status, 202, "{body}");
    let job_path = format!("/jobs/{}", body["job"]["id"].as_str().expect("job id"));
    let mut polls = 0;
    let job = loop {
        let (status, job) = client.get(&job_path).await;
        polls += 1;
        assert_eq!(status, 200, "{job}");
        if job["status"] != "queued" && job["status"] != "running" {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    let items = job["result"]["ingested"].as_f64().expect("ingested");
    assert_eq!(items, 20.0);

    let mut model = String::new();
    for (_, image) in subset.queries.iter().take(SEARCHES) {
        let (status, found) = client.search_raw("shop", image.clone(), "&k=3").await;
        assert_eq!(status, 200, "{found}");
        model = found["model"].as_str().expect("model").to_owned();
    }
    // Two unknown paths share one series; a missing dataset counts under its route template.
    for path in ["/no/such/path", "/another/unknown?x=1", "/datasets/nope"] {
        assert_eq!(client.get(path).await.0, 404, "{path}");
    }
    let sent = 1 + polls + SEARCHES + 3;

    let m = scrape(&client).await;
    let http = "lookalike_http_requests_total";
    let duration = "lookalike_http_request_duration_seconds";
    assert_eq!(m.value(http, &[("method", "POST"), ("route", "/datasets"), ("status", "202")]), 1.0);
    assert_eq!(m.value(http, &[("method", "GET"), ("route", "/jobs/{id}"), ("status", "200")]), polls as f64);
    let search = [("method", "POST"), ("route", "/search"), ("status", "200")];
    assert_eq!(m.value(http, &search), SEARCHES as f64);
    assert_eq!(m.value(http, &[("method", "GET"), ("route", "unmatched"), ("status", "404")]), 2.0);
    assert_eq!(m.value(http, &[("method", "GET"), ("route", "/datasets/{name}"), ("status", "404")]), 1.0);
    assert_eq!(m.sum(http, &[]), sent as f64, "every request sent is counted once (this scrape not yet)");
    let routes = m.label_values(http, "route");
    let expected: BTreeSet<String> =
        ["/datasets", "/datasets/{name}", "/jobs/{id}", "/search", "unmatched"].map(String::from).into();
    assert_eq!(routes, expected, "routes are templates, never raw paths");
    for sample in m.matching(http, &[]) {
        let labels: Vec<(&str, &str)> = sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (count, sum) = m.histogram(duration, &labels);
        assert_eq!(count, sample.value, "{labels:?}: the histogram counts each request");
        assert!(sum > 0.0, "{labels:?}");
    }

    let (count, search_seconds) = m.histogram("lookalike_search_duration_seconds", &[]);
    assert_eq!(count, SEARCHES as f64);
    assert!(search_seconds > 0.0 && search_seconds < started.elapsed().as_secs_f64());
    let stage = |name: &str| m.value("lookalike_search_stage_seconds_total", &[("stage", name)]);
    assert!((stage("total") - search_seconds).abs() < 1e-6, "the stage total is the searches' latency");
    assert!(stage("forward") > 0.0 && stage("index") > 0.0 && stage("decode") > 0.0);
    for name in ["read", "decode", "queue", "forward", "index"] {
        assert!(stage(name) >= 0.0 && stage(name) <= stage("total"), "{name}");
    }
    assert!(stage("gathering") <= stage("queue"));

    let embedder = |name: &str| m.value(&format!("lookalike_embedder_{name}"), &[]);
    assert_eq!(embedder("images_total"), items + SEARCHES as f64, "the catalogue and each query, once");
    assert!(embedder("batches_total") >= 1.0 && embedder("batches_total") <= embedder("images_total"));
    assert!(embedder("forward_passes_total") >= embedder("batches_total"));
    assert!(embedder("forward_seconds_total") > 0.0);
    assert_eq!((embedder("rejected_total"), embedder("queue_depth")), (0.0, 0.0));

    let ingest = [("kind", "ingest"), ("status", "succeeded")];
    assert_eq!(m.value("lookalike_jobs_finished_total", &ingest), 1.0);
    assert_eq!(m.sum("lookalike_jobs_finished_total", &[]), 1.0);
    let (count, job_seconds) = m.histogram("lookalike_job_duration_seconds", &ingest);
    assert_eq!(count, 1.0);
    assert!(job_seconds > 0.0 && job_seconds < started.elapsed().as_secs_f64());

    assert_eq!(m.value("lookalike_dataset_items", &[("dataset", "shop")]), items);
    assert_eq!(m.value("lookalike_index_vectors", &[("dataset", "shop")]), items);
    assert_eq!(m.value("lookalike_dataset_active_model_info", &[("dataset", "shop"), ("model", &model)]), 1.0);
    assert_eq!(m.matching("lookalike_dataset_active_model_info", &[]).count(), 1);
    assert_eq!(m.value("lookalike_model_device_info", &[("device", "cpu")]), 1.0);

    // Names by convention: counters end in `_total`, durations are histograms in seconds.
    for (family, kind) in &m.types {
        assert!(family.starts_with("lookalike_"), "{family}");
        assert_eq!(kind == "counter", family.ends_with("_total"), "{family} is a {kind}");
        if kind == "histogram" {
            assert!(family.ends_with("_seconds"), "{family}");
        }
    }
    assert!(m.types.len() >= 15, "{:?}", m.types.keys());

    let again = scrape(&client).await;
    assert_eq!(again.value(http, &[("method", "GET"), ("route", "/metrics"), ("status", "200")]), 1.0);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_a_request_id_and_every_error_names_it() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut settings = support::settings(data.path());
    settings.auth.admin_keys = "admin-secret".into();
    let (server, client) = support::start(settings).await;
    let header = |response: &reqwest::Response| {
        response.headers().get("x-request-id").expect("x-request-id").to_str().expect("ascii").to_owned()
    };

    // Errors from a handler, the key check and the router each carry the id of their answer.
    let mut ids = BTreeSet::new();
    for (method, path, key, status, code) in [
        (reqwest::Method::GET, "/datasets/nope", Some("admin-secret"), 404, "dataset_not_found"),
        (reqwest::Method::GET, "/datasets/nope", None, 401, "unauthorized"),
        (reqwest::Method::DELETE, "/search", Some("admin-secret"), 405, "method_not_allowed"),
        (reqwest::Method::GET, "/no/such/path", Some("admin-secret"), 404, "not_found"),
    ] {
        let mut request = client.http.request(method.clone(), client.url(path));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("send");
        let id = header(&response);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "a fresh id is a UUID: {id}");
        let (got, body) = support::status_json(response).await;
        assert_eq!((got, &body["error"]["code"]), (status, &Value::from(code)), "{method} {path}");
        assert_eq!(body["error"]["request_id"], id, "{method} {path}: {body}");
        assert!(body["error"]["message"].is_string());
        ids.insert(id);
    }
    assert_eq!(ids.len(), 4, "each request its own id");

    // An id the client sent is kept: echoed and named in the error.
    let response = client
        .http
        .get(client.url("/datasets/nope"))
        .bearer_auth("admin-secret")
        .header("x-request-id", "client-chosen-42")
        .send()
        .await
        .expect("send");
    assert_eq!(header(&response), "client-chosen-42");
    let (_, body) = support::status_json(response).await;
    assert_eq!(body["error"]["request_id"], "client-chosen-42");

    // Successes carry one too, and their bodies are left alone.
    let response = client.http.get(client.url("/healthz")).send().await.expect("send");
    assert!(uuid::Uuid::parse_str(&header(&response)).is_ok());
    assert_eq!(support::status_json(response).await, (200, serde_json::json!({"status": "ok"})));
    server.stop().await.expect("stop");
}
