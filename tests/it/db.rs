//! The database layer itself, on each engine the run has: SQLite always, and PostgreSQL when
//! `LOOKALIKE_TEST_PG_URL` names a server (`scripts/test.sh` starts one). The same calls must
//! give the same answers on both: text order by code point, pages, a duplicate that stores
//! nothing, the one active model, the job queue (two takers never get one job), cascades.

use lookalike::db::items::{InsertError, NewItem};
use lookalike::db::jobs::{JobFilter, JobKind, JobStatus};
use lookalike::db::leases::Stale;
use lookalike::db::models::NewModel;
use lookalike::db::{Backend, Db};
use lookalike::error::ErrorCode;
use lookalike::train::retrieval::Metrics;
use serde_json::json;

use super::support;

fn item(id: &str, label: &str) -> NewItem {
    NewItem {
        item_id: id.into(),
        label: label.into(),
        width: 28,
        height: 28,
        content_type: "image/png".into(),
        blob: format!("blobs/{id}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_gives_the_same_answers_on_each_engine() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut engines = vec![(Backend::Sqlite, format!("sqlite://{}?mode=rwc", data.path().join("t.db").display()))];
    if let Some(url) = support::database_url(data.path()) {
        engines.push((Backend::Postgres, url));
    }
    for (backend, url) in engines {
        let db = Db::open(&url).await.expect("open");
        assert_eq!(db.backend(), backend);
        same_answers(&db).await;
        two_takers_never_get_one_job(&db, &url).await;
        leases_pass_between_workers(&db, &url).await;
        db.close().await;
        // Reopened: the migrations already applied are recognised, nothing is lost.
        let db = Db::open(&url).await.expect("reopen");
        assert_eq!(db.list_datasets().await.expect("datasets").len(), 1, "{backend:?}");
        db.close().await;
    }
}

async fn same_answers(db: &Db) {
    let name = format!("{:?}", db.backend());
    assert!(db.insert_dataset("shop", "ingesting", "lite0-x").await.expect("insert"), "{name}");
    assert!(!db.insert_dataset("shop", "ready", "lite0-y").await.expect("insert"), "{name}: the name is taken");

    let seqs = db.insert_items("shop", &[item("b", "x"), item("B", "y"), item("a-1", "x")]).await.expect("items");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: {seqs:?}");
    let duplicate = db.insert_items("shop", &[item("new", "y"), item("a-1", "y")]).await;
    assert!(matches!(duplicate, Err(InsertError::Duplicate(ref id)) if id == "a-1"), "{name}: {duplicate:?}");
    assert!(db.get_item("shop", "new").await.expect("get").is_none(), "{name}: the failed batch stored nothing");

    // Code-point order, as SQLite's BINARY: "B" < "a-1" < "b".
    let ids =
        |items: Vec<lookalike::db::items::ItemRecord>| items.into_iter().map(|r| r.item.item_id).collect::<Vec<_>>();
    assert_eq!(ids(db.list_items("shop", None, None, 10).await.expect("list")), ["B", "a-1", "b"], "{name}");
    assert_eq!(ids(db.list_items("shop", None, Some("B"), 1).await.expect("page")), ["a-1"], "{name}");
    assert_eq!(ids(db.list_items("shop", Some("x"), None, 10).await.expect("label")), ["a-1", "b"], "{name}");
    assert_eq!(ids(db.all_items("shop").await.expect("all")), ["b", "B", "a-1"], "{name}: by seq");
    assert_eq!(db.label_counts("shop").await.expect("counts"), [("x".to_owned(), 2), ("y".to_owned(), 1)], "{name}");
    let stored = db.get_item("shop", "B").await.expect("get").expect("B");
    assert_eq!((stored.item.width, stored.content_type.as_str(), stored.blob.as_str()), (28, "image/png", "blobs/B"));

    db.ensure_pretrained_model("shop", "lite0-x", 1280).await.expect("pretrained");
    db.ensure_pretrained_model("shop", "lite0-x", 1280).await.expect("twice is once");
    let metrics = Metrics { recall_at_1: 0.5, recall_at_5: 0.75, recall_at_10: 1.0, map_at_r: 0.25 };
    let model = NewModel {
        id: "ft-1",
        parent: Some("lite0-x"),
        backbone: "lite0-x",
        dim: 1408,
        eval: Some(&metrics),
        job: Some("j"),
    };
    db.insert_model("shop", &model).await.expect("model");
    assert_eq!(db.active_model("shop").await.expect("active").expect("one").id, "lite0-x", "{name}");
    db.activate_model("shop", "ft-1").await.expect("activate");
    let models = db.list_models("shop").await.expect("models");
    let shown: Vec<(&str, bool)> = models.iter().map(|m| (m.id.as_str(), m.active)).collect();
    assert_eq!(shown, [("lite0-x", false), ("ft-1", true)], "{name}: oldest first, one active");
    assert_eq!(models[1].eval, Some(metrics), "{name}");
    db.set_model_eval("shop", "lite0-x", &metrics).await.expect("eval");
    assert_eq!(db.get_model("shop", "lite0-x").await.expect("get").expect("model").eval, Some(metrics));
    let dataset = db.get_dataset("shop").await.expect("dataset").expect("shop");
    assert_eq!((dataset.model.as_deref(), dataset.items, dataset.labels), (Some("ft-1"), 3, 2), "{name}");

    let params = json!({"epochs": 2, "nested": {"a": [1, 2]}});
    db.insert_job("j1", JobKind::Finetune, "shop", &params).await.expect("job");
    db.insert_job("j2", JobKind::Reindex, "shop", &json!({})).await.expect("job");
    let first = db.start_next_job("w1").await.expect("start").expect("queued");
    assert_eq!(
        (first.id.as_str(), first.status, first.attempts, &first.params),
        ("j1", JobStatus::Running, 1, &params)
    );
    assert_eq!(first.worker.as_deref(), Some("w1"), "{name}");
    db.set_job_detail("j1", "training", 0.5, &json!({"step": 3})).await.expect("detail");
    db.add_job_artifact("j1", "loss.png").await.expect("artifact");
    db.add_job_artifact("j1", "loss.png").await.expect("artifact again");
    assert!(db.finish_job("j1", "w1", JobStatus::Succeeded, Some(&json!({"ok": true})), None).await.expect("finish"));
    let done = db.get_job("j1").await.expect("get").expect("j1");
    assert_eq!(
        (done.status, done.progress, done.artifacts.as_slice()),
        (JobStatus::Succeeded, 1.0, &["loss.png".to_owned()][..])
    );
    assert_eq!((done.detail, done.result), (Some(json!({"step": 3})), Some(json!({"ok": true}))), "{name}");
    assert!(db.cancel_queued_job("j2").await.expect("cancel"), "{name}");
    assert!(!db.cancel_queued_job("j1").await.expect("cancel"), "{name}: a finished job stays");
    let filter = JobFilter { dataset: Some("shop"), status: Some(JobStatus::Canceled), kind: None };
    let canceled = db.list_jobs(&filter, 10).await.expect("list");
    assert_eq!(canceled.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(), ["j2"], "{name}");
    assert_eq!(db.list_jobs(&JobFilter::default(), 10).await.expect("all").len(), 2, "{name}");

    db.insert_job("j3", JobKind::Ingest, "shop", &json!({})).await.expect("job");
    db.start_next_job("w1").await.expect("start").expect("j3");
    let (failed, requeued) = db.reclaim_jobs(3, &everything_stale("w1")).await.expect("reclaim");
    assert_eq!((failed.len(), requeued.len()), (1, 0), "{name}: an ingest is not resumed");
    let j3 = db.get_job("j3").await.expect("get").expect("j3");
    assert_eq!(j3.error.map(|e| e.code), Some(ErrorCode::Interrupted.as_str().to_owned()), "{name}");

    assert_eq!(db.delete_item("shop", "b").await.expect("delete").map(|r| r.item.label), Some("x".into()));
    assert!(db.delete_item("shop", "b").await.expect("delete").is_none(), "{name}");
    // The other dataset goes with its items and models; "shop" stays for the reopen check.
    assert!(db.insert_dataset("gone", "ready", "lite0-x").await.expect("insert"));
    db.insert_items("gone", &[item("g", "x")]).await.expect("items");
    db.ensure_pretrained_model("gone", "lite0-x", 1280).await.expect("model");
    db.insert_job("j4", JobKind::Reindex, "gone", &json!({})).await.expect("job");
    db.cancel_dataset_jobs("gone").await.expect("cancel");
    assert_eq!(db.get_job("j4").await.expect("get").expect("j4").status, JobStatus::Canceled, "{name}");
    assert!(db.delete_dataset("gone").await.expect("delete"), "{name}");
    assert!(
        db.all_items("gone").await.expect("items").is_empty()
            && db.list_models("gone").await.expect("models").is_empty()
    );
}

/// Two pools (as two processes would hold) ask for the next job at once, twice over: each job
/// is taken by exactly one of them.
async fn two_takers_never_get_one_job(db: &Db, url: &str) {
    let other = Db::open(url).await.expect("second pool");
    for round in 0..2 {
        let (a, b) = (format!("t{round}a"), format!("t{round}b"));
        db.insert_job(&a, JobKind::Reindex, "shop", &json!({})).await.expect("job");
        db.insert_job(&b, JobKind::Reindex, "shop", &json!({})).await.expect("job");
        let (first, second) = tokio::join!(db.start_next_job("w1"), other.start_next_job("w2"));
        let (first, second) = (first.expect("first").expect("a job"), second.expect("second").expect("a job"));
        let mut taken = [first.id.clone(), second.id.clone()];
        taken.sort();
        assert_eq!(taken, [a.clone(), b.clone()], "{:?}", db.backend());
        assert!(db.finish_job(&first.id, "w1", JobStatus::Succeeded, None, None).await.expect("finish"));
        assert!(other.finish_job(&second.id, "w2", JobStatus::Succeeded, None, None).await.expect("finish"));
    }
    other.close().await;
}

/// A `reclaim_jobs` bound under which every running job's worker is gone.
fn everything_stale(me: &str) -> Stale<'_> {
    Stale { any: "9999", me, mine: "" }
}

/// A job's lease: the worker that took it renews it and reads cancel requests through it; a
/// job whose worker is gone is taken back once (by one of two processes asking at once), then
/// resumed by another worker, and the first one can neither renew nor end it any more.
async fn leases_pass_between_workers(db: &Db, url: &str) {
    let name = format!("{:?}", db.backend());
    let other = Db::open(url).await.expect("second pool");
    let nobody_stale = Stale { any: "2000-01-01T00:00:00.000Z", me: "wa", mine: "2000-01-01T00:00:00.000Z" };
    db.insert_job("l1", JobKind::Finetune, "shop", &json!({})).await.expect("job");
    let job = db.start_next_job("wa").await.expect("start").expect("l1");
    assert_eq!((job.id.as_str(), job.worker.as_deref()), ("l1", Some("wa")), "{name}");
    assert_eq!(db.heartbeat("l1", "wa").await.expect("beat"), Some(false), "{name}");
    assert_eq!(db.heartbeat("l1", "wb").await.expect("beat"), None, "{name}: not wb's lease");
    assert!(db.request_cancel("l1").await.expect("cancel"), "{name}");
    assert_eq!(db.heartbeat("l1", "wa").await.expect("beat"), Some(true), "{name}: the worker reads the cancel");
    let (failed, requeued) = db.reclaim_jobs(3, &nobody_stale).await.expect("reclaim");
    assert!(failed.is_empty() && requeued.is_empty(), "{name}: wa beats, its job stays");

    // wa dies: two processes see its job stale at once; one takes it back.
    let (x, y) = (everything_stale("x"), everything_stale("y"));
    let (mine, theirs) = tokio::join!(db.reclaim_jobs(3, &x), other.reclaim_jobs(3, &y));
    let (mine, theirs) = (mine.expect("reclaim"), theirs.expect("reclaim"));
    let requeued: Vec<_> = mine.1.iter().chain(&theirs.1).map(|j| j.id.as_str()).collect();
    assert_eq!((requeued, mine.0.len() + theirs.0.len()), (vec!["l1"], 0), "{name}");
    let queued = db.get_job("l1").await.expect("get").expect("l1");
    assert_eq!((queued.status, queued.stage.as_str(), queued.worker), (JobStatus::Queued, "resuming", None), "{name}");

    let resumed = other.start_next_job("wb").await.expect("start").expect("l1 again");
    assert_eq!((resumed.id.as_str(), resumed.attempts), ("l1", 2), "{name}");
    assert_eq!(other.heartbeat("l1", "wb").await.expect("beat"), Some(false), "{name}: the cancel was wa's run's");
    assert_eq!(db.heartbeat("l1", "wa").await.expect("beat"), None, "{name}: wa lost the lease");
    assert!(!db.finish_job("l1", "wa", JobStatus::Failed, None, None).await.expect("finish"), "{name}");
    assert!(other.finish_job("l1", "wb", JobStatus::Succeeded, None, None).await.expect("finish"), "{name}");
    assert_eq!(db.get_job("l1").await.expect("get").expect("l1").status, JobStatus::Succeeded, "{name}");

    // At a restart, a worker takes back what its previous life left, and nobody else's.
    db.insert_job("l2", JobKind::Reindex, "shop", &json!({})).await.expect("job");
    db.start_next_job("wa").await.expect("start").expect("l2");
    let restarted = |me| Stale { any: "2000-01-01T00:00:00.000Z", me, mine: "9999" };
    assert_eq!(db.reclaim_jobs(3, &restarted("wb")).await.expect("reclaim").1.len(), 0, "{name}");
    assert_eq!(db.reclaim_jobs(3, &restarted("wa")).await.expect("reclaim").1.len(), 1, "{name}");
    let again = db.start_next_job("wa").await.expect("start").expect("l2");
    assert!(db.finish_job(&again.id, "wa", JobStatus::Succeeded, None, None).await.expect("finish"), "{name}");
    other.close().await;
}
