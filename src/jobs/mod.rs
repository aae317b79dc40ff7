//! The persisted job queue and its one scheduler loop.
//!
//! Jobs are rows of the `jobs` table (see `db::jobs`). `POST` handlers insert
//! a queued job and wake the scheduler through `RunningJobs::notify` (in `state`); the
//! scheduler takes the oldest queued job, runs it on a blocking thread, and
//! records its end. One job runs at a time. Cancelling a running job sets its
//! flag, which the job checks between steps. Jobs left running by a stopped
//! process are resumed or failed with a reason at the next start (`server`).
//!
//! - [`features`]: backbone features of stored items, from the feature cache or the embedder;
//! - [`ingest`], [`finetune`], [`reindex`]: one module per kind of job.

pub mod features;
pub mod finetune;
pub mod ingest;
pub mod reindex;

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::db::jobs::{Job, JobKind, JobStatus};
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

/// Runs queued jobs one at a time, forever.
pub async fn run_scheduler(state: AppState) {
    loop {
        match state.db.start_next_job().await {
            Ok(Some(job)) => run_one(&state, job).await,
            Ok(None) => {
                state.jobs.wait_for_work(IDLE_POLL).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "job queue unreadable");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn run_one(state: &AppState, job: Job) {
    let started = Instant::now();
    let cancel = state.jobs.register(&job.id, &job.dataset);
    tracing::info!(job = %job.id, kind = %job.kind, dataset = %job.dataset, "job started");
    let runner = state.clone();
    let running = job.clone();
    let outcome = tokio::task::spawn_blocking(move || match running.kind {
        JobKind::Ingest => ingest::run(&runner, &running, &cancel),
        JobKind::Finetune => finetune::run(&runner, &running, &cancel),
        JobKind::Reindex => reindex::run(&runner, &running, &cancel),
    })
    .await
    .unwrap_or_else(|panic| Err(JobFailure::failed(ErrorCode::Internal, format!("job panicked: {panic}"))));
    state.jobs.unregister(&job.id);
    let status = match &outcome {
        Ok(_) => JobStatus::Succeeded,
        Err(JobFailure::Canceled) => JobStatus::Canceled,
        Err(JobFailure::Failed { .. }) => JobStatus::Failed,
    };
    state.metrics.observe_job(job.kind.as_str(), status.as_str(), started.elapsed());
    let recorded = match &outcome {
        Ok(result) => state.db.finish_job(&job.id, JobStatus::Succeeded, Some(result), None).await,
        Err(JobFailure::Canceled) => state.db.finish_job(&job.id, JobStatus::Canceled, None, None).await,
        Err(JobFailure::Failed { code, message }) => {
            state.db.finish_job(&job.id, JobStatus::Failed, None, Some((*code, message))).await
        }
    };
    match outcome {
        Ok(_) => tracing::info!(job = %job.id, "job succeeded"),
        Err(err) => tracing::warn!(job = %job.id, error = %err, "job did not succeed"),
    }
    if let Err(err) = recorded {
        tracing::error!(job = %job.id, error = %err, "could not record the end of a job");
    }
}

/// The result a job records on success.
pub type JobResult = Result<Value, JobFailure>;
