//! The job table across restarts: a job that was running when the process
//! stopped is failed with a reason at the next start, and its dataset says so.

use lookalike::config::Role;
use lookalike::db::Db;
use lookalike::db::jobs::{JobKind, JobStatus};
use serde_json::{Value, json};

use super::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_at_a_stop_is_failed_with_a_reason() {
    let data = tempfile::tempdir().expect("tempdir");
    let settings = support::settings(data.path());
    {
        // What a process killed during an ingest leaves behind.
        let db = Db::open(&settings.database_url()).await.expect("db");
        assert!(db.insert_dataset("half", "ingesting", "lite0-x").await.expect("dataset"));
        db.insert_job("job-1", JobKind::Ingest, "half", &json!({"archive": "gone.upload"})).await.expect("job");
        let job = db.start_next_job(&settings.instance()).await.expect("start").expect("a queued job");
        assert_eq!(job.status, JobStatus::Running);
        db.close().await;
    }
    let (server, client) = support::start(settings).await;
    // On SQLite at once (one process owns the file); on PostgreSQL once the job's lease ran out
    // (its heartbeat was seconds old at the restart, as a namesake's that still lives would be).
    let job = client.wait_job("job-1").await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "interrupted");
    assert!(job["finished_at"].is_string());
    let (_, dataset) = client.get("/datasets/half").await;
    assert_eq!(dataset["status"], "failed");
    let (status, jobs) = client.get("/jobs?dataset=half&status=failed&kind=ingest").await;
    assert_eq!((status, jobs["jobs"].as_array().map(Vec::len)), (200, Some(1)));

    let (status, canceled) =
        support::status_json(client.http.post(client.url("/jobs/job-1/cancel")).send().await.expect("cancel")).await;
    assert_eq!((status, &canceled["status"]), (202, &json!("failed")), "an ended job stays as it ended");
    server.stop().await.expect("stop");
}

/// `server.role`: an `api` process queues jobs and runs none; a `worker` process, on the same
/// database, takes them (its name is the job's `worker`) and answers only its health routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_process_runs_no_jobs_and_a_worker_serves_no_api() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut settings = support::settings(data.path());
    settings.server.role = Role::Api;
    settings.server.instance = "api-1".into();
    let (api, api_client) = support::start(settings.clone()).await;
    let db = Db::open(&settings.database_url()).await.expect("db");
    // A reindex job without a model fails at once: enough to see which process runs it.
    db.insert_job("r-1", JobKind::Reindex, "nowhere", &json!({})).await.expect("job");
    api.state.jobs.notify();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let (_, job) = api_client.get("/jobs/r-1").await;
    assert_eq!((job["status"].as_str(), &job["worker"]), (Some("queued"), &Value::Null), "{job}");

    settings.server.role = Role::Worker;
    settings.server.instance = "worker-1".into();
    let (worker, worker_client) = support::start(settings).await;
    let job = api_client.wait_job("r-1").await;
    assert_eq!((job["status"].as_str(), job["worker"].as_str()), (Some("failed"), Some("worker-1")), "{job}");
    assert_eq!(job["error"]["code"], "invalid_params", "{job}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = worker_client.http.get(worker_client.url(path)).send().await.expect("GET");
        assert_eq!(response.status(), 200, "{path}");
    }
    for path in ["/datasets", "/jobs/r-1", "/openapi.json"] {
        let (status, body) = worker_client.get(path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{path}: {body}");
    }
    db.close().await;
    worker.stop().await.expect("stop");
    api.stop().await.expect("stop");
}
