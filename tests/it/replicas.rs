//! Several processes on one PostgreSQL database: two API replicas and a worker, each a server of
//! its own (in this test process; `server.role` decides what each does), sharing one data
//! folder. What goes through one replica is served by the other: a catalogue ingested (by the
//! worker) through A is searched on B with identical answers, an item added on B is found on A,
//! one deleted on A is gone from B, each within the sync bound. On SQLite, whose file one
//! process owns, there is nothing to show: the test returns at once (scripts/test.sh runs the
//! suite again on PostgreSQL).

use std::time::{Duration, Instant};

use lookalike::config::Role;
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
    let (on_a, _) =
        search_until(&client_a, &query, |found| found["results"].as_array().is_some_and(|r| r.len() == 5)).await;
    let (on_b, _) = search_until(&client_b, &query, |found| found["results"] == on_a["results"]).await;
    let (_, dataset_b) = client_b.get("/datasets/shop").await;
    assert_eq!(dataset_b["items"].as_u64(), Some(items), "{dataset_b}");
    assert_eq!(on_b["results"], on_a["results"]);

    // Added on B: found on A.
    let (label, image) = subset.queries[9].clone();
    let form = reqwest::multipart::Form::new()
        .text("label", label)
        .text("item_id", "from-b")
        .part("image", reqwest::multipart::Part::bytes(image.clone()).file_name("x.png"));
    let response = client_b.http.post(client_b.url("/datasets/shop/items")).multipart(form).send().await.expect("post");
    let (status, item) = support::status_json(response).await;
    assert_eq!(status, 201, "{item}");
    let (found, after) =
        search_until(&client_a, &image, |found| ids(found).first().is_some_and(|id| id == "from-b")).await;
    eprintln!("an item added on B was found on A after {after:?}");
    assert!(found["results"][0]["distance"].as_f64().expect("distance") < 1e-4, "{found}");

    // Deleted on A: gone from B.
    let response = client_a.http.delete(client_a.url("/datasets/shop/items/from-b")).send().await.expect("delete");
    assert_eq!(response.status(), 204);
    let (_, after) = search_until(&client_b, &image, |found| !ids(found).contains(&"from-b".to_owned())).await;
    eprintln!("an item deleted on A was gone from B after {after:?}");

    // A finetune job (run by the worker) is promoted: both replicas serve the new model within
    // the bound, and searches on both go on answering throughout.
    let searching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut searchers = Vec::new();
    for client in [client_a.clone(), client_b.clone()] {
        let (searching, query) = (searching.clone(), query.clone());
        searchers.push(tokio::spawn(async move {
            let (mut answered, mut failed, mut models) = (0, Vec::new(), Vec::<String>::new());
            while searching.load(std::sync::atomic::Ordering::SeqCst) {
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
        }));
    }
    let body = serde_json::json!({"kind": "finetune", "dataset": "shop", "params": {"epochs": 2, "promote": "always"}});
    let response = client_a.http.post(client_a.url("/jobs")).json(&body).send().await.expect("post");
    let (status, job) = support::status_json(response).await;
    assert_eq!(status, 202, "{job}");
    let job = client_b.wait_job(job["id"].as_str().expect("id")).await;
    assert_eq!((job["status"].as_str(), job["worker"].as_str()), (Some("succeeded"), Some("worker-1")), "{job}");
    let promoted = job["result"]["model"].as_str().expect("model").to_owned();
    for (name, client) in [("A", &client_a), ("B", &client_b)] {
        let (_, after) = search_until(client, &query, |found| found["model"] == promoted.as_str()).await;
        eprintln!("replica {name} served the promoted model {after:?} after the job ended");
    }
    searching.store(false, std::sync::atomic::Ordering::SeqCst);
    for searcher in searchers {
        let (answered, failed, models) = searcher.await.expect("searcher");
        assert!(failed.is_empty(), "failed searches during the swap: {failed:?}");
        assert_eq!(models.last(), Some(&promoted), "{models:?}");
        assert!(answered > 0 && models.len() == 2, "one model change: {models:?}");
    }

    for server in [worker, b, a] {
        server.stop().await.expect("stop");
    }
}

/// A `lookalike serve --role worker` process of its own on the test's database and data folder.
fn spawn_worker(
    settings: &lookalike::config::Settings,
    instance: &str,
    log: &std::path::Path,
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookalike"));
    command.args(["serve", "--role", "worker"]);
    let env = [
        ("LOOKALIKE__DATA_DIR", settings.data_dir.display().to_string()),
        ("LOOKALIKE__DATABASE__URL", settings.database.url.clone()),
        ("LOOKALIKE__SERVER__ADDR", "127.0.0.1:0".to_owned()),
        ("LOOKALIKE__SERVER__INSTANCE", instance.to_owned()),
        ("LOOKALIKE__SERVER__SYNC_INTERVAL_MS", SYNC_INTERVAL_MS.to_string()),
        ("LOOKALIKE__MODEL__WEIGHTS", settings.model.weights.clone()),
        ("LOOKALIKE__MODEL__FETCH_IF_MISSING", "false".to_owned()),
        ("LOOKALIKE__MODEL__INPUT_SIZE", settings.model.input_size.to_string()),
        ("LOOKALIKE__JOBS__HEARTBEAT_S", settings.jobs.heartbeat_s.to_string()),
        ("LOOKALIKE__JOBS__LEASE_S", settings.jobs.lease_s.to_string()),
    ];
    command.envs(env).env("RUST_LOG", "info").kill_on_drop(true);
    command
        .stdout(std::fs::File::create(log).expect("log"))
        .stderr(std::fs::File::create(log.with_extension("err")).expect("log"));
    command.spawn().expect("start a worker process")
}

/// Two worker processes; the one running a finetune job is killed (SIGKILL) in the middle of its
/// training: the other takes the job back once its lease runs out, runs it to the end, and the
/// API replica serves the promoted model. Nothing is lost: the catalogue is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_finished_by_the_other() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut settings = support::settings(data.path());
    if !settings.database.url.starts_with("postgres") {
        eprintln!("SQLite: one process per database file; nothing to show (run on PostgreSQL)");
        return;
    }
    settings.server.role = Role::Api;
    settings.server.instance = "api-a".into();
    settings.server.sync_interval_ms = SYNC_INTERVAL_MS;
    let (api, client) = support::start(settings.clone()).await;
    let mut workers = vec![
        ("worker-1", spawn_worker(&settings, "worker-1", &data.path().join("worker-1.log"))),
        ("worker-2", spawn_worker(&settings, "worker-2", &data.path().join("worker-2.log"))),
    ];
    let subset = support::fashion_subset(3, 1);
    let ingested = support::ingest(&client, "shop", subset.catalogue_zip.clone()).await;
    let items = ingested["result"]["ingested"].as_u64().expect("ingested");

    // Long enough to be caught training: many epochs of a small catalogue.
    let body =
        serde_json::json!({"kind": "finetune", "dataset": "shop", "params": {"epochs": 100, "promote": "always"}});
    let response = client.http.post(client.url("/jobs")).json(&body).send().await.expect("post");
    let (status, job) = support::status_json(response).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let started = Instant::now();
    let victim = loop {
        let (_, job) = client.get(&format!("/jobs/{id}")).await;
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

    let job = client.wait_job(&id).await;
    eprintln!("{victim} killed; the job ended {:?} later", killed_at.elapsed());
    let survivor = workers[0].0;
    assert_eq!(
        (job["status"].as_str(), job["worker"].as_str(), job["attempts"].as_u64()),
        (Some("succeeded"), Some(survivor), Some(2)),
        "{job}"
    );
    let promoted = job["result"]["model"].as_str().expect("model").to_owned();
    let (_, query) = subset.queries[2].clone();
    search_until(&client, &query, |found| found["model"] == promoted.as_str()).await;
    let (_, dataset) = client.get("/datasets/shop").await;
    assert_eq!(
        (dataset["items"].as_u64(), dataset["model"].as_str()),
        (Some(items), Some(promoted.as_str())),
        "{dataset}"
    );
    api.stop().await.expect("stop");
}
