//! The persisted job queue and its one scheduler loop.
//!
//! Jobs are rows of the `jobs` table (see `db::jobs`). `POST` handlers insert
//! a queued job and wake the scheduler through `JobQueue::notify`; the
//! scheduler takes the oldest queued job, runs it on a blocking thread, and
//! records its end. One job runs at a time. Cancelling a running job sets its
//! flag, which the job checks between steps. Jobs left running by a stopped
//! process are failed with a reason at the next start (`AppState::open`).

pub mod finetune;
pub mod ingest;
pub mod reindex;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use crate::app::AppState;
use crate::db::jobs::{CANCELED, FAILED, Job, SUCCEEDED};

/// How a job ended, other than by success.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    #[error("canceled")]
    Canceled,
    #[error("{message}")]
    Failed { code: &'static str, message: String },
}

impl JobFailure {
    pub fn failed(code: &'static str, message: impl Into<String>) -> Self {
        Self::Failed { code, message: message.into() }
    }
}

impl From<anyhow::Error> for JobFailure {
    fn from(err: anyhow::Error) -> Self {
        Self::failed("internal", format!("{err:#}"))
    }
}

/// The cancel flag of a running job, checked between its steps.
#[derive(Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_canceled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn check(&self) -> Result<(), JobFailure> {
        if self.is_canceled() { Err(JobFailure::Canceled) } else { Ok(()) }
    }
}

/// Kinds of job that resume after a restart instead of failing: their work
/// is a pure function of their params and the stored items, with checkpoints.
pub const RESUMABLE_KINDS: &[&str] = &["finetune", "reindex"];

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

/// What the scheduler and the handlers share.
#[derive(Default)]
pub struct JobQueue {
    wake: Notify,
    running: Mutex<HashMap<String, (String, CancelFlag)>>,
}

impl JobQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the scheduler after a job was queued.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Asks the running job `id` to stop; returns whether it was running here.
    pub fn cancel(&self, id: &str) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.get(id).map(|(_, flag)| flag.cancel()).is_some()
    }

    /// The id of the job running for `dataset`, if any.
    pub fn active_for(&self, dataset: &str) -> Option<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.iter().find(|(_, (d, _))| d == dataset).map(|(id, _)| id.clone())
    }

    /// Cancels whatever runs for `dataset`.
    pub fn cancel_dataset(&self, dataset: &str) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for (d, flag) in running.values() {
            if d == dataset {
                flag.cancel();
            }
        }
    }

    fn register(&self, job: &Job) -> CancelFlag {
        let flag = CancelFlag::default();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(job.id.clone(), (job.dataset.clone(), flag.clone()));
        flag
    }

    fn unregister(&self, id: &str) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// Runs queued jobs one at a time, forever.
pub async fn run_scheduler(state: AppState) {
    loop {
        match state.db.start_next_job().await {
            Ok(Some(job)) => run_one(&state, job).await,
            Ok(None) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), state.jobs.wake.notified()).await;
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
    let cancel = state.jobs.register(&job);
    tracing::info!(job = %job.id, kind = %job.kind, dataset = %job.dataset, "job started");
    let runner = state.clone();
    let running = job.clone();
    let outcome = tokio::task::spawn_blocking(move || match running.kind.as_str() {
        "ingest" => ingest::run(&runner, &running, &cancel),
        "finetune" => finetune::run(&runner, &running, &cancel),
        "reindex" => reindex::run(&runner, &running, &cancel),
        other => Err(JobFailure::failed("unsupported_job_kind", format!("no runner for jobs of kind {other:?}"))),
    })
    .await
    .unwrap_or_else(|panic| Err(JobFailure::failed("internal", format!("job panicked: {panic}"))));
    state.jobs.unregister(&job.id);
    let status = match &outcome {
        Ok(_) => SUCCEEDED,
        Err(JobFailure::Canceled) => CANCELED,
        Err(JobFailure::Failed { .. }) => FAILED,
    };
    state.metrics.observe_job(&job.kind, status, started.elapsed());
    let recorded = match &outcome {
        Ok(result) => state.db.finish_job(&job.id, SUCCEEDED, Some(result), None).await,
        Err(JobFailure::Canceled) => state.db.finish_job(&job.id, CANCELED, None, None).await,
        Err(JobFailure::Failed { code, message }) => {
            state.db.finish_job(&job.id, FAILED, None, Some((code, message))).await
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
