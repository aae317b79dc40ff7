//! The job table across restarts: a job that was running when the process
//! stopped is failed with a reason at the next start, and its dataset says so.

use lookalike::db::Db;
use lookalike::db::jobs::{JobKind, JobStatus};
use serde_json::json;

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
        let job = db.start_next_job().await.expect("start").expect("a queued job");
        assert_eq!(job.status, JobStatus::Running);
        db.close().await;
    }
    let (server, client) = support::start(settings).await;
    let (status, job) = client.get("/jobs/job-1").await;
    assert_eq!(status, 200, "{job}");
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
