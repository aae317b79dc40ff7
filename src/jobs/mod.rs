//! The persisted job queue and the scheduler loop of a process that runs jobs.
//!
//! Jobs are rows of the `jobs` table (see `db::jobs`). `POST` handlers insert a queued job and
//! wake the schedulers: this process's through `RunningJobs::notify` (in `state`), other
//! processes' through the database (`db::notify`, PostgreSQL) or their next poll. A scheduler
//! takes the oldest queued job under its lease, runs it on a blocking thread while a heartbeat
//! renews the lease, and records its end. One job runs at a time per worker. Cancelling a
//! running job sets its flag, which the job checks between steps: directly in this process,
//! through the job's row (`cancel_requested`, read by the heartbeat) from any other. A job whose
//! heartbeat went stale (its worker was killed) is taken back by an idle scheduler, and one a
//! restarted worker left is taken back at its start (`server`): resumed or failed with a reason.
//!
//! - [`features`]: backbone features of stored items, from the feature cache or the embedder;
//! - [`ingest`], [`finetune`], [`reindex`]: one module per kind of job.

pub mod features;
pub mod finetune;
pub mod ingest;
pub mod reindex;
pub mod restore;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cancel::CancelFlag;
use crate::db::jobs::{Job, JobKind, JobStatus};
use crate::db::leases::Stale;
use crate::error::{ErrorCode, JobFailure};
use crate::state::AppState;

/// How long an idle scheduler sleeps before it looks at the queue again without being woken.
const IDLE_POLL: Duration = Duration::from_secs(5);

/// Shortest time between two progress writes of a running job.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Writes a running job's stage, progress and detail to its row: at once on
/// a new stage, at most every `PROGRESS_INTERVAL` within one. A failed write
/// is logged, not fatal: progress is information.
pub struct Reporter<'a> {
    state: &'a AppState,
    job: &'a Job,
    runtime: &'a tokio::runtime::Handle,
    last: Option<Instant>,
}

impl<'a> Reporter<'a> {
    pub fn new(state: &'a AppState, job: &'a Job, runtime: &'a tokio::runtime::Handle) -> Self {
        Self { state, job, runtime, last: None }
    }

    pub fn stage(&mut self, stage: &str, progress: f64, detail: Value) {
        self.last = None;
        self.progress(stage, progress, detail);
    }

    pub fn progress(&mut self, stage: &str, progress: f64, detail: Value) {
        if self.last.is_some_and(|at| at.elapsed() < PROGRESS_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let write = self.state.db.set_job_detail(&self.job.id, stage, progress, &detail);
        if let Err(err) = self.runtime.block_on(write) {
            tracing::warn!(job = %self.job.id, error = %err, "could not record job progress");
        }
    }
}

/// Runs queued jobs one at a time, forever; between jobs, takes back those whose worker died.
pub async fn run_scheduler(state: AppState) {
    let mut last_reclaim: Option<Instant> = None;
    let heartbeat = Duration::from_secs(state.settings.jobs.heartbeat_s);
    loop {
        if last_reclaim.is_none_or(|at| at.elapsed() >= heartbeat) {
            last_reclaim = Some(Instant::now());
            if let Err(err) = reclaim_jobs(&state, false).await {
                tracing::error!(error = %format!("{err:#}"), "could not take back the jobs of stopped workers");
            }
        }
        match state.db.start_next_job(&state.instance).await {
            Ok(Some(job)) => run_one(&state, job).await,
            Ok(None) => {
                state.jobs.wait_for_work(IDLE_POLL.min(heartbeat)).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "job queue unreadable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Takes back running jobs whose worker is gone (see [`crate::db::Db::reclaim_jobs`]): those
/// whose heartbeat is older than `jobs.lease_s`, and, `at_start`, those this instance ran before
/// it restarted. On SQLite, whose file one process owns, every running job is this process's at
/// its start. A failed ingest marks its dataset failed.
pub async fn reclaim_jobs(state: &AppState, at_start: bool) -> anyhow::Result<()> {
    let jobs = &state.settings.jobs;
    let ago = |seconds: u64| {
        let at = chrono::Utc::now() - chrono::Duration::seconds(seconds as i64);
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let any = match state.db.backend() {
        crate::db::Backend::Sqlite if at_start => "9999".to_owned(),
        _ => ago(jobs.lease_s),
    };
    // A namesake that still lives beat within two heartbeats; a restarted one did not.
    let mine = if at_start { ago(2 * jobs.heartbeat_s) } else { String::new() };
    let stale = Stale { any: &any, me: &state.instance, mine: &mine };
    let (failed, requeued) = state.db.reclaim_jobs(jobs.max_attempts, &stale).await?;
    for job in failed {
        tracing::warn!(job = %job.id, kind = %job.kind, dataset = %job.dataset, worker = ?job.worker,
            "the job's worker stopped: failed");
        if job.kind == JobKind::Ingest {
            state.db.set_dataset_status(&job.dataset, crate::db::datasets::STATUS_FAILED).await?;
        }
    }
    for job in requeued {
        tracing::warn!(job = %job.id, kind = %job.kind, dataset = %job.dataset, worker = ?job.worker,
            "the job's worker stopped: queued to resume");
    }
    Ok(())
}

/// Renews the lease on `job` every `jobs.heartbeat_s` until aborted. A cancel asked through the
/// database raises `cancel`; a lost lease raises `cancel` and `lost`.
fn spawn_heartbeat(state: &AppState, job: &Job, cancel: CancelFlag, lost: CancelFlag) -> tokio::task::JoinHandle<()> {
    let (state, id) = (state.clone(), job.id.clone());
    let every = Duration::from_secs(state.settings.jobs.heartbeat_s);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match state.db.heartbeat(&id, &state.instance).await {
                Ok(Some(false)) => {}
                Ok(Some(true)) => {
                    cancel.cancel();
                }
                Ok(None) => {
                    tracing::error!(job = %id, "lease lost: another worker took the job back; stopping this run");
                    lost.cancel();
                    cancel.cancel();
                    return;
                }
                Err(err) => tracing::warn!(job = %id, error = %err, "heartbeat not recorded"),
            }
        }
    })
}

async fn run_one(state: &AppState, job: Job) {
    let started = Instant::now();
    let cancel = state.jobs.register(&job.id, &job.dataset);
    let lost = CancelFlag::default();
    let heartbeat = spawn_heartbeat(state, &job, cancel.clone(), lost.clone());
    tracing::info!(job = %job.id, kind = %job.kind, dataset = %job.dataset, attempt = job.attempts, "job started");
    let runner = state.clone();
    let running = job.clone();
    let outcome = tokio::task::spawn_blocking(move || match running.kind {
        JobKind::Ingest => ingest::run(&runner, &running, &cancel),
        JobKind::Finetune => finetune::run(&runner, &running, &cancel),
        JobKind::Reindex => reindex::run(&runner, &running, &cancel),
    })
    .await
    .unwrap_or_else(|panic| Err(JobFailure::failed(ErrorCode::Internal, format!("job panicked: {panic}"))));
    heartbeat.abort();
    state.jobs.unregister(&job.id);
    if lost.is_canceled() {
        tracing::warn!(job = %job.id, "this run's end is not recorded: the job belongs to another worker now");
        return;
    }
    let status = match &outcome {
        Ok(_) => JobStatus::Succeeded,
        Err(JobFailure::Canceled) => JobStatus::Canceled,
        Err(JobFailure::Failed { .. }) => JobStatus::Failed,
    };
    state.metrics.observe_job(job.kind.as_str(), status.as_str(), started.elapsed());
    let (result, error) = match &outcome {
        Ok(result) => (Some(result), None),
        Err(JobFailure::Canceled) => (None, None),
        Err(JobFailure::Failed { code, message }) => (None, Some((*code, message.as_str()))),
    };
    let recorded = state.db.finish_job(&job.id, &state.instance, status, result, error).await;
    match outcome {
        Ok(_) => tracing::info!(job = %job.id, "job succeeded"),
        Err(err) => tracing::warn!(job = %job.id, error = %err, "job did not succeed"),
    }
    match recorded {
        Ok(true) => {}
        Ok(false) => tracing::warn!(job = %job.id, "the end of the job is not recorded: its lease was lost"),
        Err(err) => tracing::error!(job = %job.id, error = %err, "could not record the end of a job"),
    }
}

/// The result a job records on success.
pub type JobResult = Result<Value, JobFailure>;
