//! The application state shared by handlers and jobs, and its start-up.
//!
//! `AppState` is a cheap clone of an `Arc`. Start-up opens the database,
//! fails jobs a stopped process left running, loads the model onto the
//! embedder thread, and then (in the background, while `/readyz` answers 503)
//! loads each dataset's catalogue and saved index, embedding any item the
//! saved index does not cover yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;
use crate::db::Db;
use crate::db::datasets::{STATUS_FAILED, STATUS_INGESTING};
use crate::embedder::{Embedder, EmbedderSettings};
use crate::generation::{DatasetState, Generation, ModelHandle};
use crate::jobs::JobQueue;
use crate::model::EmbeddingModel;
use crate::storage::BlobStore;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub db: Db,
    pub blobs: BlobStore,
    pub embedder: Embedder,
    pub jobs: JobQueue,
    pub metrics: Metrics,
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
        let (failed, requeued) =
            db.recover_interrupted_jobs(crate::jobs::RESUMABLE_KINDS, settings.jobs.max_attempts).await?;
        for job in failed {
            tracing::warn!(job = %job.id, kind = %job.kind, dataset = %job.dataset, "job interrupted by a restart: failed");
            if job.kind == "ingest" {
                db.set_dataset_status(&job.dataset, STATUS_FAILED).await?;
            }
        }
        for job in requeued {
            tracing::warn!(job = %job.id, kind = %job.kind, dataset = %job.dataset, "job interrupted by a restart: resumed");
        }
        let (weights, _) = settings.weights_path();
        let input_size = settings.model.input_size;
        let model = tokio::task::spawn_blocking(move || {
            EmbeddingModel::load(&weights, input_size, &candle_core::Device::Cpu)
                .with_context(|| format!("cannot load model weights {}", weights.display()))
        })
        .await??;
        tracing::info!(model = model.id(), dim = model.dim(), input_size, "model loaded");
        let embedder = Embedder::start(
            model,
            EmbedderSettings {
                max_batch: settings.embedder.max_batch,
                max_wait: Duration::from_millis(settings.embedder.max_wait_ms),
                queue_capacity: settings.embedder.queue_capacity,
                max_forward_pixels: settings.embedder.max_forward_pixels,
            },
        )?;
        let blobs = BlobStore::new(&settings.data_dir)?;
        Ok(Self(Arc::new(Inner {
            jobs: JobQueue::new(),
            metrics: Metrics::default(),
            settings,
            db,
            blobs,
            embedder,
            datasets: RwLock::new(HashMap::new()),
            ready: AtomicBool::new(false),
        })))
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
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

    fn empty_dataset_state(&self, name: &str, model: ModelHandle) -> Arc<DatasetState> {
        let generation = Generation::empty(model, self.embedder.model().dim, self.settings.index.params.clone());
        Arc::new(DatasetState::new(name, &self.indexes_dir(), generation))
    }

    /// The model a dataset should serve with: its active one, or the
    /// pretrained backbone when that cannot be used (recorded as active).
    async fn active_model(&self, dataset: &str) -> anyhow::Result<ModelHandle> {
        let backbone = self.embedder.model().id.clone();
        self.db.ensure_pretrained_model(dataset, &backbone, self.embedder.model().dim).await?;
        let Some(active) = self.db.active_model(dataset).await? else {
            anyhow::bail!("dataset {dataset} has no active model");
        };
        if active.backbone != backbone {
            tracing::warn!(dataset, model = %active.id, backbone = %active.backbone, loaded = %backbone,
                "the active model was trained on another backbone: serving the pretrained model");
        } else {
            match crate::models::load_handle(self.data_dir(), dataset, &active) {
                Ok(model) => return Ok(model),
                Err(err) => tracing::error!(dataset, model = %active.id, error = %format!("{err:#}"),
                    "the active model cannot be loaded: serving the pretrained model"),
            }
        }
        self.db.activate_model(dataset, &backbone).await?;
        Ok(ModelHandle::pretrained(&backbone))
    }

    /// Loads every dataset's catalogue and index, then marks the server ready.
    pub async fn load_datasets(&self) -> anyhow::Result<()> {
        for dataset in self.db.list_datasets().await? {
            let started = std::time::Instant::now();
            let items = self.db.all_items(&dataset.name).await?;
            let model = self.active_model(&dataset.name).await?;
            let state = self.clone();
            let name = dataset.name.clone();
            let loaded = tokio::task::spawn_blocking(move || state.restore_dataset(&name, model, &items)).await??;
            if dataset.status == STATUS_INGESTING {
                // No job runs yet: one left running was failed in `open`. Still
                // ingesting without a queued job means the process stopped between
                // creating the dataset and queueing its job.
                let queued = self
                    .db
                    .list_jobs(
                        &crate::db::jobs::JobFilter {
                            dataset: Some(&dataset.name),
                            status: Some(crate::db::jobs::QUEUED),
                            kind: None,
                        },
                        1,
                    )
                    .await?;
                if queued.is_empty() {
                    self.db.set_dataset_status(&dataset.name, STATUS_FAILED).await?;
                }
            }
            tracing::info!(dataset = %dataset.name, items = loaded.catalog.read().map(|c| c.len()).unwrap_or(0),
                elapsed_ms = started.elapsed().as_millis() as u64, "dataset loaded");
            self.add_dataset(loaded);
        }
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!("ready");
        Ok(())
    }

    /// Blocking: the saved index (or a new one), caught up with `items`.
    fn restore_dataset(
        &self,
        name: &str,
        model: ModelHandle,
        items: &[crate::db::items::ItemRecord],
    ) -> anyhow::Result<Arc<DatasetState>> {
        let empty = self.empty_dataset_state(name, model.clone());
        let dir = empty.index_dir(&model.id);
        let state = match Generation::load(&dir, model, &self.settings.index.params) {
            Ok(generation) => Arc::new(DatasetState::new(name, &self.indexes_dir(), generation)),
            Err(err) => {
                if dir.exists() {
                    tracing::warn!(dataset = name, error = %format!("{err:#}"), "saved index unreadable: rebuilding");
                }
                empty
            }
        };
        state.fill_catalog(items);
        let generation = state.generation.load_full();
        let missing: Vec<_> = items.iter().filter(|r| r.seq > generation.covered_seq()).cloned().collect();
        if !missing.is_empty() {
            tracing::info!(dataset = name, items = missing.len(), "adding items the saved index lacks");
            // The feature cache usually has them (ingest writes it); the rest are embedded and cached.
            let features = crate::models::features_of(self, name, &missing, &Default::default(), &mut |_, _| {})
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            generation.append(&missing.iter().map(|r| r.seq).zip(features).collect::<Vec<_>>());
            generation.save(&dir)?;
        }
        Ok(state)
    }

    /// Saves every index changed by single-item writes; run periodically and at shutdown.
    /// A dataset with a running job is left to that job, which saves when it ends:
    /// saving a large index every interval in the middle of an ingest slows it down.
    pub fn save_dirty_indexes(&self) {
        for dataset in self.datasets() {
            if self.jobs.active_for(&dataset.name).is_some() {
                continue;
            }
            if let Err(err) = dataset.save_if_dirty() {
                tracing::error!(dataset = %dataset.name, error = %format!("{err:#}"), "saving index failed");
            }
        }
    }
}
