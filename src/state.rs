//! The application state shared by handlers and jobs.
//!
//! `AppState` is a cheap clone of an `Arc`: the settings, the database, the object store, the
//! embedder (the model on its own thread), the running jobs' cancel flags, the metrics, and the
//! datasets being served. [`AppState::open`] opens storage and loads the model; the datasets are
//! added by the server's start-up (`server::restore_datasets`), which then marks the state ready.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;

use crate::cancel::CancelFlag;
use crate::config::Settings;
use crate::db::Db;
use crate::embedder::Embedder;
use crate::generation::{DatasetState, Generation, ModelHandle};
use crate::network::EmbeddingModel;
use crate::storage::{BlobStore, Objects};
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub db: Db,
    pub blobs: BlobStore,
    /// Where trained models, index snapshots, feature caches and artifacts are kept beyond the
    /// data dir (`storage::Objects`: nothing to do on the default local store).
    pub objects: Objects,
    pub embedder: Embedder,
    /// Where the model, and every tensor computation of jobs, runs (`model.device`).
    pub device: candle_core::Device,
    pub jobs: RunningJobs,
    pub metrics: Metrics,
    /// This process's name among the workers sharing the database ([`Settings::instance`]).
    pub instance: String,
    datasets: RwLock<HashMap<String, Arc<DatasetState>>>,
    ready: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Opens storage and the database and loads the model. Datasets are
    /// loaded by `load_datasets`, which `serve` runs in the background.
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data dir {}", settings.data_dir.display()))?;
        for dir in ["uploads", "indexes", "artifacts", "weights"] {
            std::fs::create_dir_all(settings.data_dir.join(dir))?;
        }
        let db = Db::open(&settings.database_url()).await?;
        let (weights, _) = settings.weights_path();
        let input_size = settings.model.input_size;
        let device = settings.model.device.resolve()?;
        let model_device = device.clone();
        let model = tokio::task::spawn_blocking(move || {
            EmbeddingModel::load(&weights, input_size, &model_device)
                .with_context(|| format!("cannot load model weights {}", weights.display()))
        })
        .await??;
        let embedder_settings = settings.embedder.resolve(&device);
        tracing::info!(
            model = model.id(),
            dim = model.dim(),
            input_size,
            device = crate::device::name(&device),
            max_batch = embedder_settings.max_batch,
            "model loaded"
        );
        let embedder = Embedder::start(model, embedder_settings)?;
        let objects = Objects::open(&settings.storage, &settings.data_dir)?;
        let checking = objects.clone();
        tokio::task::spawn_blocking(move || checking.check()).await??;
        tracing::info!(location = objects.location(), "object store");
        let blobs = BlobStore::new(objects.clone());
        Ok(Self(Arc::new(Inner {
            jobs: RunningJobs::default(),
            metrics: Metrics::default(),
            instance: settings.instance(),
            settings,
            db,
            blobs,
            objects,
            embedder,
            device,
            datasets: RwLock::new(HashMap::new()),
            ready: AtomicBool::new(false),
        })))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Marks every dataset loaded: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    pub fn uploads_dir(&self) -> PathBuf {
        self.settings.data_dir.join("uploads")
    }

    pub fn indexes_dir(&self) -> PathBuf {
        self.settings.data_dir.join("indexes")
    }

    pub fn dataset(&self, name: &str) -> Option<Arc<DatasetState>> {
        self.datasets.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn datasets(&self) -> Vec<Arc<DatasetState>> {
        self.datasets.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn add_dataset(&self, state: Arc<DatasetState>) {
        self.datasets.write().unwrap_or_else(|e| e.into_inner()).insert(state.name.clone(), state);
    }

    pub fn remove_dataset(&self, name: &str) -> Option<Arc<DatasetState>> {
        self.datasets.write().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    /// A new, empty serving state for a dataset, using the pretrained model.
    pub fn new_dataset_state(&self, name: &str) -> Arc<DatasetState> {
        self.empty_dataset_state(name, ModelHandle::pretrained(&self.embedder.model().id))
    }

    pub fn empty_dataset_state(&self, name: &str, model: ModelHandle) -> Arc<DatasetState> {
        let generation = Generation::empty(model, self.embedder.model().dim, self.settings.index.params.clone());
        Arc::new(DatasetState::new(name, &self.indexes_dir(), generation))
    }

    /// Saves every index changed by single-item writes; run periodically and at shutdown.
    /// A dataset with a running job is left to that job, which saves when it ends:
    /// saving a large index every interval in the middle of an ingest slows it down.
    pub fn save_dirty_indexes(&self) {
        if !self.settings.server.role.runs_jobs() {
            // An API replica writes no indexes: those of the workers' jobs are what it loads,
            // and what it added since it catches up from the database at its next start.
            return;
        }
        for dataset in self.datasets() {
            if self.jobs.active_for(&dataset.name).is_some() {
                continue;
            }
            if let Err(err) = dataset.save_if_dirty(&self.objects) {
                tracing::error!(dataset = %dataset.name, error = %format!("{err:#}"), "saving index failed");
            }
        }
    }
}

/// The jobs running in this process, with their cancel flags, and the scheduler's wake-up call.
#[derive(Default)]
pub struct RunningJobs {
    wake: Notify,
    running: Mutex<HashMap<String, (String, CancelFlag)>>,
}

impl RunningJobs {
    /// Wakes the scheduler after a job was queued.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Waits until [`RunningJobs::notify`] is called or `timeout` passes.
    pub async fn wait_for_work(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.wake.notified()).await;
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

    /// Records a job as running; its flag is what the job checks.
    pub fn register(&self, id: &str, dataset: &str) -> CancelFlag {
        let flag = CancelFlag::default();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(id.to_owned(), (dataset.to_owned(), flag.clone()));
        flag
    }

    pub fn unregister(&self, id: &str) {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}
