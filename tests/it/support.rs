//! Shared test helpers: the real pretrained weights (imported once per test
//! binary), Fashion-MNIST subsets, and a real server on a free loopback port.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use fashion_mnist::Split;
use lookalike::config::Settings;
use lookalike::server::Server;
use serde_json::Value;

/// Input size the end-to-end tests run the model at (Fashion-MNIST is 28 px).
pub const TEST_INPUT_SIZE: u32 = 64;

pub fn assets_dir() -> PathBuf {
    let dir = PathBuf::from(std::env::var("LOOKALIKE_ASSETS").unwrap_or_else(|_| "/var/tmp/lookalike-assets".into()));
    let pth = dir.join("efficientnet-lite0-57934424.pth");
    assert!(pth.exists(), "{} is missing: run scripts/test-assets.sh", pth.display());
    dir
}

/// The real EfficientNet-Lite0 weights as safetensors, imported by the
/// project's own importer once per test binary.
pub fn weights() -> &'static Path {
    static WEIGHTS: OnceLock<PathBuf> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let dir = assets_dir();
        let out = dir.join("efficientnet-lite0.safetensors");
        if !out.exists() {
            lookalike::network::import::import_weights(&dir.join("efficientnet-lite0-57934424.pth"), &out)
                .expect("import the real weights");
        }
        out
    })
}

/// Settings for a test server: its own data dir, a free port, the real weights; its own
/// PostgreSQL database when the suite runs on PostgreSQL ([`database_url`]).
pub fn settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::load(None).expect("default settings");
    settings.data_dir = data_dir.to_path_buf();
    if let Some(url) = database_url(data_dir) {
        settings.database.url = url;
    }
    if let Some((url, endpoint)) = object_store(data_dir) {
        settings.storage.url = url;
        settings.storage.endpoint = endpoint;
    }
    settings.server.addr = "127.0.0.1:0".parse().expect("addr");
    settings.model.weights = weights().display().to_string();
    settings.model.fetch_if_missing = false;
    settings.model.input_size = TEST_INPUT_SIZE;
    settings.index.save_interval_s = 3600;
    // Short leases, so that a job a test's "killed" process left running on PostgreSQL is taken
    // back within seconds (the defaults wait 30 s); long enough for a loaded 2-core machine.
    settings.jobs.heartbeat_s = 1;
    settings.jobs.lease_s = 6;
    settings
}

/// With `LOOKALIKE_TEST_PG_URL` set (`postgres://user@host:port/db`, as `scripts/test.sh` sets
/// it after starting a throwaway cluster), the suite runs on PostgreSQL: each data dir gets a
/// database of its own on that server, named after the dir (the server creates it at start;
/// a restart within a test finds it again). Unset, the SQLite file in the data dir.
pub fn database_url(data_dir: &Path) -> Option<String> {
    use std::hash::{Hash, Hasher};
    let base = std::env::var("LOOKALIKE_TEST_PG_URL").ok().filter(|url| !url.is_empty())?;
    let (server, _) = base.rsplit_once('/').expect("LOOKALIKE_TEST_PG_URL is postgres://user@host:port/db");
    // DefaultHasher::new() has fixed keys: the same dir gives the same name.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    Some(format!("{server}/lk_{:016x}", hasher.finish()))
}

/// With `LOOKALIKE_TEST_S3_ENDPOINT` set (`http://host:port`, as `scripts/test-postgres.sh` sets
/// it after starting a throwaway SeaweedFS), originals, models, indexes, feature caches and
/// artifacts go to its bucket `lookalike`, under a prefix of each data dir's own; the data dir is
/// only a cache. Unset, the data dir itself.
pub fn object_store(data_dir: &Path) -> Option<(String, String)> {
    use std::hash::{Hash, Hasher};
    let endpoint = std::env::var("LOOKALIKE_TEST_S3_ENDPOINT").ok().filter(|url| !url.is_empty())?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut hasher);
    Some((format!("s3://lookalike/t{:016x}", hasher.finish()), endpoint))
}

pub async fn start(settings: Settings) -> (Server, Client) {
    let server = Server::start(settings).await.expect("server starts");
    server.wait_ready(Duration::from_secs(120)).await.expect("server ready");
    let client = Client { http: reqwest::Client::new(), base: format!("http://{}", server.addr) };
    (server, client)
}

/// A thin JSON client for the tests.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        status_json(response).await
    }

    pub async fn upload(&self, name: &str, archive: Vec<u8>, file_name: &str) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .text("name", name.to_owned())
            .part("archive", reqwest::multipart::Part::bytes(archive).file_name(file_name.to_owned()));
        let response = self.http.post(self.url("/datasets")).multipart(form).send().await.expect("POST /datasets");
        status_json(response).await
    }

    /// Searches with the raw image as the body.
    pub async fn search_raw(&self, dataset: &str, image: Vec<u8>, query: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(&format!("/search?dataset={dataset}{query}")))
            .header("content-type", "image/png")
            .body(image)
            .send()
            .await
            .expect("POST /search");
        status_json(response).await
    }

    /// Searches with a multipart form.
    pub async fn search_multipart(&self, dataset: &str, image: Vec<u8>, k: &str) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .text("dataset", dataset.to_owned())
            .text("k", k.to_owned())
            .part("image", reqwest::multipart::Part::bytes(image).file_name("query.png"));
        let response = self.http.post(self.url("/search")).multipart(form).send().await.expect("POST /search");
        status_json(response).await
    }

    /// Polls a job until it ends; returns it.
    pub async fn wait_job(&self, id: &str) -> Value {
        for _ in 0..6000 {
            let (status, job) = self.get(&format!("/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if matches!(job["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                return job;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not end in 300 s");
    }
}

pub async fn status_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, json)
}

/// A labelled Fashion-MNIST subset: a catalogue zip from the training split
/// and query PNGs (label, bytes) from the test split.
pub struct FashionSubset {
    pub catalogue_zip: Vec<u8>,
    pub queries: Vec<(String, Vec<u8>)>,
}

pub fn fashion_subset(catalogue_per_label: usize, queries_per_label: usize) -> FashionSubset {
    let dir = Path::new(fashion_mnist::DEFAULT_DIR);
    let train =
        fashion_mnist::read_split(dir, Split::Train).expect("Fashion-MNIST train split (scripts/test-assets.sh)");
    let test = fashion_mnist::read_split(dir, Split::Test).expect("Fashion-MNIST test split");
    let tmp = tempfile::tempdir().expect("tempdir");
    let zip_path = tmp.path().join("catalogue.zip");
    fashion_mnist::write_catalogue_zip(&fashion_mnist::balanced_subset(&train, catalogue_per_label), &zip_path)
        .expect("write catalogue");
    let queries = fashion_mnist::balanced_subset(&test, queries_per_label)
        .into_iter()
        .map(|s| (fashion_mnist::LABELS[s.label as usize].to_owned(), fashion_mnist::png_bytes(s)))
        .collect();
    FashionSubset { catalogue_zip: std::fs::read(&zip_path).expect("read zip"), queries }
}

/// Uploads a catalogue and waits for its ingest job to succeed.
pub async fn ingest(client: &Client, name: &str, zip: Vec<u8>) -> Value {
    let (status, body) = client.upload(name, zip, "catalogue.zip").await;
    assert_eq!(status, 202, "{body}");
    let job = client.wait_job(body["job"]["id"].as_str().expect("job id")).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    job
}

/// A zip archive of `entries` (name, bytes), in memory.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, bytes) in entries {
        zip.start_file(*name, options).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip finish").into_inner()
}
