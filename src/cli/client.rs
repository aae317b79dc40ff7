//! The HTTP client behind the server commands (`ingest`, `search`, `eval`, `finetune`,
//! `models`, `activate`, `healthcheck`). An `https://` server is reached through rustls, trusting the
//! system's roots and any `--ca-cert`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::ServerArgs;
use crate::archive::{self, ArchiveLimits};
use crate::config::Settings;
use crate::train::retrieval::MetricsAccumulator;

/// How `eval` queries the server.
#[derive(Debug, Clone, Copy)]
pub struct EvalOptions {
    pub concurrency: usize,
    pub limit: usize,
    pub k: Option<usize>,
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    pub fn new(settings: &Settings, args: &ServerArgs) -> anyhow::Result<Self> {
        let base =
            args.server.clone().unwrap_or_else(|| format!("http://{}", super::local_address(settings.server.addr)));
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(3600));
        if let Some(path) = &args.ca_cert {
            http = http.tls_certs_merge(read_ca_certs(path)?);
        }
        let http = http.build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), api_key: args.api_key.clone() })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// One `GET /readyz` that must end within `timeout`: its answer, or why it is not a 200.
    pub async fn ready(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.json(self.request(reqwest::Method::GET, "/readyz").timeout(timeout)).await
    }

    async fn json(&self, builder: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = builder.send().await.with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("?");
            let message = body["error"]["message"].as_str().unwrap_or("");
            bail!("server answered {status}: {code}: {message}");
        }
        Ok(body)
    }

    pub async fn ingest(&self, source: &Path, dataset: &str) -> anyhow::Result<()> {
        let (archive, _temp) = if source.is_dir() {
            let temp = tempfile_path("lookalike-upload", "zip");
            zip_dir(source, &temp)?;
            (temp.clone(), Some(TempFile(temp)))
        } else {
            (source.to_path_buf(), None)
        };
        // Streamed from disk: a catalogue can be far larger than memory.
        let file =
            tokio::fs::File::open(&archive).await.with_context(|| format!("cannot read {}", archive.display()))?;
        let length = file.metadata().await?.len();
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let file_name = archive.file_name().and_then(|n| n.to_str()).unwrap_or("catalogue.zip").to_owned();
        let part = Part::stream_with_length(body, length).file_name(file_name);
        let form = Form::new().text("name", dataset.to_owned()).part("archive", part);
        let answer = self.json(self.request(reqwest::Method::POST, "/datasets").multipart(form)).await?;
        let job_id = answer["job"]["id"].as_str().context("no job id in the answer")?.to_owned();
        let job = self.follow_job(&job_id, "ingest").await?;
        match job["status"].as_str() {
            Some("succeeded") => {
                let result = &job["result"];
                println!(
                    "dataset {dataset}: {} images ingested, {} skipped, {:.1} images/s",
                    result["ingested"],
                    result["skipped"],
                    result["images_per_second"].as_f64().unwrap_or(0.0)
                );
                for skipped in result["skipped_reasons"].as_array().into_iter().flatten().take(20) {
                    println!("  skipped {}: {}", skipped["path"], skipped["reason"]);
                }
                Ok(())
            }
            status => bail!("ingest job {job_id} ended {}: {}", status.unwrap_or("?"), job["error"]),
        }
    }

    /// Polls a job with a progress bar (its stage and, while training, the
    /// step and loss) until it ends; returns it.
    async fn follow_job(&self, job_id: &str, kind: &str) -> anyhow::Result<Value> {
        let bar = ProgressBar::new(1000);
        let template = format!("{{spinner}} {kind} [{{bar:40}}] {{percent:>3}}% {{elapsed}} {{msg}}");
        bar.set_style(ProgressStyle::with_template(&template)?);
        let job = loop {
            let job = self.json(self.request(reqwest::Method::GET, &format!("/jobs/{job_id}"))).await?;
            bar.set_position((job["progress"].as_f64().unwrap_or(0.0) * 1000.0) as u64);
            let stage = job["stage"].as_str().unwrap_or("").to_owned();
            let detail = &job["detail"];
            let message = match (detail["step"].as_u64(), detail["steps"].as_u64(), detail["loss"].as_f64()) {
                (Some(step), Some(steps), Some(loss)) => format!("{stage} step {step}/{steps} loss {loss:.4}"),
                _ => stage,
            };
            bar.set_message(message);
            if matches!(job["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                break job;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        bar.finish();
        Ok(job)
    }

    /// Queues a finetune job with `params`, follows it, and prints the
    /// before/after metrics.
    pub async fn finetune(&self, dataset: &str, params: Value, wait: bool) -> anyhow::Result<()> {
        let body = serde_json::json!({"kind": "finetune", "dataset": dataset, "params": params});
        let job = self.json(self.request(reqwest::Method::POST, "/jobs").json(&body)).await?;
        let job_id = job["id"].as_str().context("no job id in the answer")?.to_owned();
        println!("finetune job {job_id} queued with params {}", job["params"]);
        if !wait {
            return Ok(());
        }
        let job = self.follow_job(&job_id, "finetune").await?;
        if job["status"] != "succeeded" {
            bail!("finetune job {job_id} ended {}: {}", job["status"], job["error"]);
        }
        let result = &job["result"];
        println!("model {} (parent {}), promoted: {}", result["model"], result["parent"], result["promoted"]);
        println!("{:<8} {:>9} {:>9} {:>9} {:>9}", "held-out", "Recall@1", "Recall@5", "Recall@10", "MAP@R");
        for when in ["before", "after"] {
            let m = &result["eval"][when];
            let f = |key: &str| m[key].as_f64().unwrap_or(f64::NAN);
            println!(
                "{when:<8} {:>9.4} {:>9.4} {:>9.4} {:>9.4}",
                f("recall_at_1"),
                f("recall_at_5"),
                f("recall_at_10"),
                f("map_at_r")
            );
        }
        println!("artifacts: {}", job["artifacts"]);
        println!("took {:.1} s", result["seconds"]["total"].as_f64().unwrap_or(0.0));
        Ok(())
    }

    /// Prints a dataset's models.
    pub async fn models(&self, dataset: &str) -> anyhow::Result<()> {
        let answer = self.json(self.request(reqwest::Method::GET, &format!("/datasets/{dataset}/models"))).await?;
        println!("{:<24} {:<24} {:>6} {:>9} {:>9}  created", "model", "parent", "active", "Recall@1", "MAP@R");
        for model in answer["models"].as_array().into_iter().flatten() {
            let metric = |key: &str| model["eval"][key].as_f64().map_or("-".to_owned(), |v| format!("{v:.4}"));
            println!(
                "{:<24} {:<24} {:>6} {:>9} {:>9}  {}",
                model["id"].as_str().unwrap_or(""),
                model["parent"].as_str().unwrap_or("-"),
                if model["active"] == true { "yes" } else { "" },
                metric("recall_at_1"),
                metric("map_at_r"),
                model["created_at"].as_str().unwrap_or("")
            );
        }
        Ok(())
    }

    /// Activates a model and follows the reindex job.
    pub async fn activate(&self, dataset: &str, model: &str) -> anyhow::Result<()> {
        let path = format!("/datasets/{dataset}/models/{}/activate", urlencode(model));
        let job = self.json(self.request(reqwest::Method::POST, &path)).await?;
        let job_id = job["id"].as_str().context("no job id in the answer")?.to_owned();
        let job = self.follow_job(&job_id, "reindex").await?;
        if job["status"] != "succeeded" {
            bail!("reindex job {job_id} ended {}: {}", job["status"], job["error"]);
        }
        println!("dataset {dataset} now searches with model {model}");
        Ok(())
    }

    async fn search_bytes(
        &self,
        bytes: Vec<u8>,
        dataset: &str,
        k: usize,
        label: Option<&str>,
    ) -> anyhow::Result<Value> {
        let content_type = crate::network::preprocess::content_type(&bytes).unwrap_or("image/png");
        let mut query = vec![("dataset", dataset.to_owned()), ("k", k.to_string())];
        if let Some(label) = label {
            query.push(("label", label.to_owned()));
        }
        let builder = self
            .request(reqwest::Method::POST, "/search")
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        self.json(builder).await
    }

    pub async fn search(&self, image: &Path, dataset: &str, k: usize, label: Option<&str>) -> anyhow::Result<()> {
        let bytes = tokio::fs::read(image).await.with_context(|| format!("cannot read {}", image.display()))?;
        let answer = self.search_bytes(bytes, dataset, k, label).await?;
        println!("{:>4}  {:<40} {:<20} {:>8}", "rank", "item_id", "label", "distance");
        for (rank, hit) in answer["results"].as_array().into_iter().flatten().enumerate() {
            println!(
                "{:>4}  {:<40} {:<20} {:>8.4}",
                rank + 1,
                hit["item_id"].as_str().unwrap_or(""),
                hit["label"].as_str().unwrap_or(""),
                hit["distance"].as_f64().unwrap_or(f64::NAN)
            );
        }
        println!(
            "model {}, {:.1} ms",
            answer["model"].as_str().unwrap_or("?"),
            answer["took_ms"].as_f64().unwrap_or(0.0)
        );
        Ok(())
    }

    pub async fn eval(
        &self,
        dataset: &str,
        queries: &Path,
        options: EvalOptions,
        json_out: Option<&Path>,
    ) -> anyhow::Result<()> {
        let EvalOptions { concurrency, limit, k: fixed_k } = options;
        let labels = self.json(self.request(reqwest::Method::GET, &format!("/datasets/{dataset}/labels"))).await?;
        let counts: std::collections::HashMap<String, usize> = labels["labels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| Some((l["label"].as_str()?.to_owned(), l["items"].as_u64()? as usize)))
            .collect();
        let mut samples = load_queries(queries)?;
        if limit > 0 {
            samples.truncate(limit);
        }
        anyhow::ensure!(!samples.is_empty(), "no labelled query images in {}", queries.display());
        let max_k = fixed_k.unwrap_or(1000).clamp(1, 1000);
        let started = Instant::now();
        let bar = ProgressBar::new(samples.len() as u64);
        let results: Vec<anyhow::Result<QueryOutcome>> = futures_util::stream::iter(samples)
            .map(|(label, bytes)| {
                let r = counts.get(&label).copied().unwrap_or(0);
                let k = fixed_k.unwrap_or(r).clamp(10.min(max_k), max_k);
                async move {
                    let t = Instant::now();
                    let answer = self.search_bytes(bytes, dataset, k, None).await?;
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    let relevant: Vec<bool> = answer["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|hit| hit["label"].as_str() == Some(label.as_str()))
                        .collect();
                    Ok((label, r.min(max_k), relevant, ms))
                }
            })
            .buffer_unordered(concurrency.max(1))
            .inspect(|_| bar.inc(1))
            .collect()
            .await;
        bar.finish_and_clear();
        let wall = started.elapsed().as_secs_f64();
        let mut acc = MetricsAccumulator::default();
        let mut latencies = Vec::new();
        let mut capped = false;
        for result in results {
            let (label, r, relevant, ms) = result?;
            capped |= counts.get(&label).copied().unwrap_or(0) > max_k;
            acc.add(&relevant, r);
            latencies.push(ms);
        }
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        let m = acc.finish();
        println!("queries          {}", acc.queries());
        println!("Recall@1         {:.4}", m.recall_at_1);
        println!("Recall@5         {:.4}", m.recall_at_5);
        println!("Recall@10        {:.4}", m.recall_at_10);
        println!("MAP@R            {:.4}{}", m.map_at_r, if capped { "  (R capped at k)" } else { "" });
        println!("search p50 ms    {:.1}  (client side, {concurrency} in flight)", pct(0.5));
        println!("search p99 ms    {:.1}", pct(0.99));
        println!("queries/s        {:.1}", acc.queries() as f64 / wall);
        if let Some(path) = json_out {
            let figures = serde_json::json!({
                "queries": acc.queries(), "metrics": m, "map_at_r_capped_at": if capped { Some(max_k) } else { None },
                "p50_ms": pct(0.5), "p99_ms": pct(0.99), "queries_per_second": acc.queries() as f64 / wall,
            });
            std::fs::write(path, serde_json::to_vec_pretty(&figures)?)?;
        }
        Ok(())
    }
}

/// One eval query's label, its number of relevant items, ranked relevance and latency (ms).
type QueryOutcome = (String, usize, Vec<bool>, f64);

/// The certificates of a PEM file given as `--ca-cert`.
fn read_ca_certs(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", path.display());
    Ok(certs)
}

/// Labelled query images from `<label>/<file>` folders or a catalogue archive.
fn load_queries(source: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut samples = Vec::new();
    if source.is_dir() {
        let mut labels: Vec<_> =
            std::fs::read_dir(source)?.filter_map(Result::ok).filter(|e| e.path().is_dir()).collect();
        labels.sort_by_key(|e| e.file_name());
        for label_dir in labels {
            let label = label_dir.file_name().to_string_lossy().into_owned();
            let mut files: Vec<_> = std::fs::read_dir(label_dir.path())?.filter_map(Result::ok).collect();
            files.sort_by_key(|e| e.file_name());
            for file in files.into_iter().filter(|f| f.path().is_file()) {
                samples.push((label.clone(), std::fs::read(file.path())?));
            }
        }
        return Ok(samples);
    }
    let limits = ArchiveLimits { max_entries: u64::MAX, max_unpacked_bytes: u64::MAX };
    let manifest = archive::scan(source, limits).map_err(|e| anyhow::anyhow!("{}: {e}", source.display()))?;
    archive::for_each_image(source, &manifest, u64::MAX, &mut |entry, bytes| {
        if let Ok(bytes) = bytes {
            samples.push((entry.label.clone(), bytes));
        }
        Ok(())
    })?;
    Ok(samples)
}

/// Packs a `<label>/<file>` folder into a zip (stored: images are compressed already).
fn zip_dir(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                let name = path.strip_prefix(dir)?.to_string_lossy().replace('\\', "/");
                zip.start_file(name, options)?;
                std::io::copy(&mut std::fs::File::open(&path)?, &mut zip)?;
            }
        }
    }
    zip.finish()?;
    Ok(())
}

fn tempfile_path(prefix: &str, ext: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}.{ext}", uuid::Uuid::new_v4().simple()))
}

/// Removes a temporary file when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Percent-encodes a path segment.
fn urlencode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
