//! Several processes on one PostgreSQL database and one S3 store. First two API replicas and a
//! worker as servers in this test process (`server.role` decides what each does), sharing one
//! data dir, which times how soon what goes through one replica is served by the other: a
//! catalogue ingested (by the worker) through A is searched on B with identical answers, an item
//! added on B is found on A, one deleted on A is gone from B, a promoted model is served by both.
//! Then the deployment itself: two API replicas and two workers as `lookalike serve` processes,
//! each with a data dir of its own, one worker killed in the middle of a job. On SQLite, whose
//! file one process owns, there is nothing to show: the tests return at once (scripts/test.sh
//! runs the suite again on PostgreSQL and SeaweedFS).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lookalike::config::{Role, Settings};
use serde_json::Value;

use super::support::{self, Client};

/// `server.sync_interval_ms` here; a change must show within a few of them (and usually shows at
/// once: PostgreSQL notifies).
const SYNC_INTERVAL_MS: u64 = 200;
const BOUND: Duration = Duration::from_secs(10);

fn ids(body: &Value) -> Vec<String> {
    body["results"].as_array().expect("results").iter().map(|r| r["item_id"].as_str().expect("id").to_owned()).collect()
}

/// Searches until `done` holds of the answer or `BOUND` passes; returns the answer and how long.
async fn search_until(client: &Client, image: &[u8], done: impl Fn(&Value) -> bool) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        let (status, found) = client.search_raw("shop", image.to_vec(), "&k=5").await;
        if status == 200 && done(&found) {
            return (found, started.elapsed());
        }
        assert!(started.elapsed() < BOUND, "not seen within {BOUND:?}: {status} {found}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until both replicas serve the `promoted` model (within the bound), then stops the
/// searchers and checks that none failed and each saw one model change, to `promoted`.
async fn both_serve_promoted(
    replicas: [&Client; 2],
    query: &[u8],
    promoted: &str,
    searching: Arc<AtomicBool>,
    searchers: Vec<Searcher>,
) {
    for (name, client) in ["A", "B"].into_iter().zip(replicas) {
        let (_, after) = search_until(client, query, |found| found["model"] == promoted).await;
        eprintln!("replica {name} served the promoted model {after:?} after the job ended");
    }
    searching.store(false, Ordering::SeqCst);
    for searcher in searchers {
        let (answered, failed, models) = searcher.await.expect("searcher");
        assert!(failed.is_empty(), "failed searches during the swap: {failed:?}");
        assert!(answered > 0 && models.len() == 2, "one model change: {models:?}");
        assert_eq!(models.last().map(String::as_str), Some(promoted), "{models:?}");
    }
}

/// Waits until A answers `query` with 5 results and B answers the same.
async fn same_answers(a: &Client, b: &Client, query: &[u8]) {
    let (on_a, _) = search_until(a, query, |found| found["results"].as_array().is_some_and(|r| r.len() == 5)).await;
    let (on_b, _) = search_until(b, query, |found| found["results"] == on_a["results"]).await;
    assert_eq!(on_b["results"], on_a["results"]);
}

/// Adds `(label, image)` as item `from-b` through B and waits until a search on A finds it first,
/// at distance 0; returns the image.
async fn add_on_b_find_on_a(b: &Client, a: &Client, (label, image): (String, Vec<u8>)) -> Vec<u8> {
    let form = reqwest::multipart::Form::new()
        .text("label", label)
        .text("item_id", "from-b")
        .part("image", reqwest::multipart::Part::bytes(image.clone()).file_name("x.png"));
    let response = b.http.post(b.url("/datasets/shop/items")).multipart(form).send().await.expect("post");
    let (status, item) = support::status_json(response).await;
    assert_eq!(status, 201, "{item}");
    let (found, after) = search_until(a, &image, |found| ids(found).first().is_some_and(|id| id == "from-b")).await;
    eprintln!("an item added on B was found on A after {after:?}");
    assert!(found["results"][0]["distance"].as_f64().expect("distance") < 1e-4, "{found}");
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_is_told_every_replica_serves() {
    let data = tempfile::tempdir().expect("tempdir");
    let base = support::settings(data.path());
    if !base.database.url.starts_with("postgres") {
        eprintln!("SQLite: one process per database file; nothing to show (run on PostgreSQL)");
        return;
    }
    let with = |role: Role, instance: &str| {
        let mut settings = base.clone();
        settings.server.role = role;
        settings.server.instance = instance.into();
        settings.server.sync_interval_ms = SYNC_INTERVAL_MS;
        settings
    };
    let (a, client_a) = support::start(with(Role::Api, "api-a")).await;
    let (b, client_b) = support::start(with(Role::Api, "api-b")).await;
    let (worker, _) = support::start(with(Role::Worker, "worker-1")).await;

    let subset = support::fashion_subset(3, 1);
    let job = support::ingest(&client_a, "shop", subset.catalogue_zip.clone()).await;
    assert_eq!(job["worker"], "worker-1", "{job}");
    let items = job["result"]["ingested"].as_u64().expect("ingested");

    // B serves the catalogue A took in, with A's answers, item for item and distance for distance.
    let (_, query) = subset.queries[4].clone();
    same_answers(&client_a, &client_b, &query).await;
    let (_, dataset_b) = client_b.get("/datasets/shop").await;
    assert_eq!(dataset_b["items"].as_u64(), Some(items), "{dataset_b}");

    // Added on B: found on A.
    let image = add_on_b_find_on_a(&client_b, &client_a, subset.queries[9].clone()).await;

    // Deleted on A: gone from B.
    let response = client_a.http.delete(client_a.url("/datasets/shop/items/from-b")).send().await.expect("delete");
    assert_eq!(response.status(), 204);
    let (_, after) = search_until(&client_b, &image, |found| !ids(found).contains(&"from-b".to_owned())).await;
    eprintln!("an item deleted on A was gone from B after {after:?}");

    // A finetune job (run by the worker) is promoted: both replicas serve the new model within
    // the bound, and searches on both go on answering throughout.
    let searching = Arc::new(AtomicBool::new(true));
    let searchers: Vec<_> =
        [&client_a, &client_b].map(|c| keep_searching(c.clone(), query.clone(), searching.clone())).into();
    let body = serde_json::json!({"kind": "finetune", "dataset": "shop", "params": {"epochs": 2, "promote": "always"}});
    let response = client_a.http.post(client_a.url("/jobs")).json(&body).send().await.expect("post");
    let (status, job) = support::status_json(response).await;
    assert_eq!(status, 202, "{job}");
    let job = client_b.wait_job(job["id"].as_str().expect("id")).await;
    assert_eq!((job["status"].as_str(), job["worker"].as_str()), (Some("succeeded"), Some("worker-1")), "{job}");
    let promoted = job["result"]["model"].as_str().expect("model").to_owned();
    both_serve_promoted([&client_a, &client_b], &query, &promoted, searching, searchers).await;

    for server in [worker, b, a] {
        server.stop().await.expect("stop");
    }
}

/// A `lookalike serve --role {role}` process of its own, with the data dir `dir`, listening on
/// `port`, on the test's database and object store; its log beside its data dir.
fn spawn_server(settings: &Settings, role: &str, instance: &str, dir: &Path, port: u16) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookalike"));
    command.args(["serve", "--role", role]);
    let env = [
        ("LOOKALIKE__DATA_DIR", dir.display().to_string()),
        ("LOOKALIKE__DATABASE__URL", settings.database.url.clone()),
        ("LOOKALIKE__STORAGE__URL", settings.storage.url.clone()),
        ("LOOKALIKE__STORAGE__ENDPOINT", settings.storage.endpoint.clone()),
        ("LOOKALIKE__SERVER__ADDR", format!("127.0.0.1:{port}")),
        ("LOOKALIKE__SERVER__INSTANCE", instance.to_owned()),
        ("LOOKALIKE__SERVER__SYNC_INTERVAL_MS", SYNC_INTERVAL_MS.to_string()),
        ("LOOKALIKE__MODEL__WEIGHTS", settings.model.weights.clone()),
        ("LOOKALIKE__MODEL__FETCH_IF_MISSING", "false".to_owned()),
        ("LOOKALIKE__MODEL__INPUT_SIZE", settings.model.input_size.to_string()),
        ("LOOKALIKE__JOBS__HEARTBEAT_S", settings.jobs.heartbeat_s.to_string()),
        ("LOOKALIKE__JOBS__LEASE_S", settings.jobs.lease_s.to_string()),
    ];
    let log = dir.with_extension("log");
    command.envs(env).env("RUST_LOG", "info").kill_on_drop(true);
    command
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::fs::File::create(log.with_extension("err")).expect("log"));
    command.spawn().expect("start a lookalike process")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A client of the process on `port`, once it answers `/readyz`.
async fn ready_client(port: u16) -> Client {
    let client = Client { http: reqwest::Client::new(), base: format!("http://127.0.0.1:{port}") };
    let started = Instant::now();
    loop {
        match client.http.get(client.url("/readyz")).send().await {
            Ok(response) if response.status() == 200 => return client,
            _ => assert!(started.elapsed() < Duration::from_secs(120), "the process on port {port} never became ready"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many searches answered, the failures, the models that answered (each once, in order).
type Searcher = tokio::task::JoinHandle<(usize, Vec<String>, Vec<String>)>;

/// Searches `client` without pause until `searching` is cleared; returns how many answered,
/// the failures, and the models that answered, in order, each once.
fn keep_searching(client: Client, query: Vec<u8>, searching: Arc<AtomicBool>) -> Searcher {
    tokio::spawn(async move {
        let (mut answered, mut failed, mut models) = (0, Vec::new(), Vec::<String>::new());
        while searching.load(Ordering::SeqCst) {
            let (status, found) = client.search_raw("shop", query.clone(), "&k=5").await;
            if status != 200 {
                failed.push(format!("{status} {found}"));
                continue;
            }
            answered += 1;
            let model = found["model"].as_str().expect("model").to_owned();
            if models.last() != Some(&model) {
                models.push(model);
            }
        }
        (answered, failed, models)
    })
}

/// The deployment of docs/SCALING.md as processes: two API replicas (A, B) and two workers, each
/// a `lookalike serve` of its own with a data dir of its own, sharing only PostgreSQL and the S3
/// store (SeaweedFS). A catalogue ingested through A (a worker runs the job) is served by B with
/// identical answers; an item added on B is found on A, its image read back from the store; a
/// finetune job's worker is killed (SIGKILL) in the middle of training, the other worker takes
/// the job back once the lease runs out and finishes it, and both replicas serve the promoted
/// model within the bound, searched without pause and without a failure. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_workers_as_processes_share_only_the_database_and_the_store() {
    let data = tempfile::tempdir().expect("tempdir");
    let settings = support::settings(data.path());
    if !settings.database.url.starts_with("postgres") {
        eprintln!("SQLite: one process per database file; nothing to show (run on PostgreSQL)");
        return;
    }
    assert!(
        !settings.storage.url.is_empty(),
        "on PostgreSQL this test needs an S3 store too: run it through scripts/test-postgres.sh"
    );
    let dir = |name: &str| data.path().join(name);
    let (port_a, port_b) = (free_port(), free_port());
    let _api_a = spawn_server(&settings, "api", "api-a", &dir("api-a"), port_a);
    let _api_b = spawn_server(&settings, "api", "api-b", &dir("api-b"), port_b);
    let mut workers = vec![
        ("worker-1", spawn_server(&settings, "worker", "worker-1", &dir("worker-1"), free_port())),
        ("worker-2", spawn_server(&settings, "worker", "worker-2", &dir("worker-2"), free_port())),
    ];
    let (client_a, client_b) = (ready_client(port_a).await, ready_client(port_b).await);

    // Ingested through A, run by a worker: B answers as A does.
    let subset = support::fashion_subset(3, 1);
    let job = support::ingest(&client_a, "shop", subset.catalogue_zip.clone()).await;
    assert!(job["worker"].as_str().is_some_and(|w| w.starts_with("worker-")), "{job}");
    let items = job["result"]["ingested"].as_u64().expect("ingested");
    let (_, query) = subset.queries[4].clone();
    same_answers(&client_a, &client_b, &query).await;

    // Added on B: found on A, and A serves its image, which only the store holds for A.
    let image = add_on_b_find_on_a(&client_b, &client_a, subset.queries[9].clone()).await;
    let response = client_a.http.get(client_a.url("/datasets/shop/items/from-b/image")).send().await.expect("get");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("bytes").as_ref(), image.as_slice(), "the image as uploaded to B");
    for replica in ["api-a", "api-b"] {
        assert!(!dir(replica).join("blobs").exists(), "{replica} keeps originals only in the store");
    }

    // A finetune job, its worker killed in the middle of training; A and B searched throughout.
    let searching = Arc::new(AtomicBool::new(true));
    let searchers: Vec<_> =
        [&client_a, &client_b].map(|c| keep_searching(c.clone(), query.clone(), searching.clone())).into();
    let body =
        serde_json::json!({"kind": "finetune", "dataset": "shop", "params": {"epochs": 100, "promote": "always"}});
    let response = client_a.http.post(client_a.url("/jobs")).json(&body).send().await.expect("post");
    let (status, job) = support::status_json(response).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let started = Instant::now();
    let victim = loop {
        let (_, job) = client_b.get(&format!("/jobs/{id}")).await;
        if job["stage"] == "training" && job["detail"]["step"].as_u64().is_some_and(|s| s > 0) {
            break job["worker"].as_str().expect("worker").to_owned();
        }
        let waiting = matches!(job["status"].as_str(), Some("queued" | "running"));
        assert!(waiting, "the job ended before it could be interrupted: {job}");
        assert!(started.elapsed() < Duration::from_secs(120), "the job never trained: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let position = workers.iter().position(|(name, _)| *name == victim).expect("a worker of ours");
    let (_, mut child) = workers.remove(position);
    child.start_kill().expect("SIGKILL");
    child.wait().await.expect("killed");
    let killed_at = Instant::now();
    let job = client_a.wait_job(&id).await;
    eprintln!("{victim} killed; the job ended {:?} later", killed_at.elapsed());
    let survivor = workers[0].0;
    assert_eq!(
        (job["status"].as_str(), job["worker"].as_str(), job["attempts"].as_u64()),
        (Some("succeeded"), Some(survivor), Some(2)),
        "{job}"
    );
    let promoted = job["result"]["model"].as_str().expect("model").to_owned();
    both_serve_promoted([&client_a, &client_b], &query, &promoted, searching, searchers).await;

    // Nothing lost: both replicas hold the whole catalogue, served by the promoted model.
    for client in [&client_a, &client_b] {
        let (_, dataset) = client.get("/datasets/shop").await;
        assert_eq!(
            (dataset["items"].as_u64(), dataset["model"].as_str()),
            (Some(items + 1), Some(promoted.as_str())),
            "{dataset}"
        );
    }
    let (on_a, _) = search_until(&client_a, &query, |found| found["model"] == promoted.as_str()).await;
    let (on_b, _) = search_until(&client_b, &query, |found| found["results"] == on_a["results"]).await;
    assert_eq!(on_a["results"], on_b["results"]);
}
