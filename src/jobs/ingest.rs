//! The `ingest` job: decode, store, embed and index every image of an
//! uploaded catalogue archive (already checked whole by `archive::scan`
//! when it was uploaded).
//!
//! Runs on a blocking thread. Images are handled in chunks: decoded in
//! parallel, embedded as one bulk request to the embedder, their bytes made
//! durable, then their rows committed in one transaction, then added to the
//! index and the catalogue (so a search never sees an item before its row).
//! Progress is images done / total. Images that fail to decode are skipped
//! and listed (with reasons) in the result, beside the seconds each stage
//! took (`stage_seconds`; `read` is what the others leave: scanning and
//! unpacking the archive).

use std::path::Path;
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde_json::json;
use tokio::runtime::Handle;

use super::JobResult;
use crate::archive::{self, ArchiveLimits, Entry, Skipped};
use crate::cancel::CancelFlag;
use crate::db::datasets::{STATUS_FAILED, STATUS_READY};
use crate::db::items::NewItem;
use crate::db::jobs::Job;
use crate::error::{ErrorCode, JobFailure};
use crate::network::preprocess::{Prepared, prepare};
use crate::state::AppState;
use crate::storage::BlobStore;

/// An item's seq and a vector of it.
type Row = (u64, Vec<f32>);

pub fn run(state: &AppState, job: &Job, cancel: &CancelFlag) -> JobResult {
    let runtime = Handle::current();
    let upload = job.params.get("archive").and_then(|v| v.as_str()).map(|name| state.uploads_dir().join(name));
    let Some(upload) = upload else {
        return Err(JobFailure::failed(ErrorCode::InvalidJob, "ingest job without an archive"));
    };
    // Uploaded through another process, the archive is in the object store.
    let outcome = match state.objects.pull_file(&upload) {
        Ok(true) => ingest(state, job, cancel, &upload, &runtime),
        Ok(false) => Err(JobFailure::failed(ErrorCode::InvalidArchive, "the uploaded archive is gone")),
        Err(err) => Err(JobFailure::from(err)),
    };
    if let Err(err) = state.objects.delete_file(&upload) {
        tracing::warn!(job = %job.id, error = %format!("{err:#}"), "could not remove the uploaded archive");
    }
    let status = if outcome.is_ok() { STATUS_READY } else { STATUS_FAILED };
    if let Err(err) = runtime.block_on(state.db.set_dataset_status(&job.dataset, status)) {
        tracing::error!(dataset = %job.dataset, error = %err, "could not record the dataset status");
    }
    outcome
}

fn ingest(state: &AppState, job: &Job, cancel: &CancelFlag, upload: &Path, runtime: &Handle) -> JobResult {
    let started = Instant::now();
    let dataset = crate::jobs::restore::dataset_for_job(state, &job.dataset, runtime)?;
    let limits = &state.settings.limits;
    let manifest = archive::scan(
        upload,
        ArchiveLimits { max_entries: limits.max_archive_entries, max_unpacked_bytes: limits.max_unpacked_bytes },
    )
    .map_err(|e| JobFailure::failed(ErrorCode::InvalidArchive, e.to_string()))?;
    let total = manifest.entries.len();
    let mut run = Run {
        state,
        job,
        runtime,
        dataset: &dataset,
        total,
        done: 0,
        ingested: 0,
        skipped: manifest.skipped.clone(),
        skipped_count: manifest.skipped_count,
        pending: Vec::with_capacity(state.settings.jobs.ingest_chunk),
        features: crate::jobs::features::feature_cache(state, &job.dataset),
        blocks: None,
        stages: Stages::default(),
    };
    let chunk = state.settings.jobs.ingest_chunk;
    archive::for_each_image(upload, &manifest, limits.max_image_bytes, &mut |entry, bytes| {
        cancel.check().map_err(anyhow::Error::from)?;
        match bytes {
            Ok(bytes) => run.pending.push((entry.clone(), bytes)),
            Err(reason) => run.skip(&entry.path, reason),
        }
        if run.pending.len() >= chunk {
            run.flush()?;
        }
        Ok(())
    })
    .map_err(|err| match err.downcast::<JobFailure>() {
        Ok(failure) => failure,
        Err(err) => JobFailure::from(err),
    })?;
    cancel.check()?;
    run.flush()?;
    let saving = Instant::now();
    let generation = dataset.generation.load_full();
    let index_dir = dataset.index_dir(generation.model_id());
    generation.save(&index_dir, &state.objects)?;
    crate::jobs::features::store_cache(state, &run.features)?;
    if let Some((_, blocks)) = &run.blocks {
        crate::jobs::features::store_cache(state, blocks)?;
    }
    run.stages.save += saving.elapsed();
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64();
    Ok(json!({
        "images": total,
        "ingested": run.ingested,
        "skipped": run.skipped_count,
        "skipped_reasons": run.skipped,
        "seconds": seconds,
        "images_per_second": run.ingested as f64 / seconds.max(1e-9),
        "stage_seconds": run.stages.seconds(elapsed),
    }))
}

/// Time spent in each stage of an ingest job, summed over its chunks.
#[derive(Debug, Default)]
struct Stages {
    /// Decoding and resizing into model input (in parallel).
    decode: Duration,
    /// Writing the image bytes and making them durable.
    store: Duration,
    /// Waiting for and running the model.
    embed: Duration,
    /// Inserting rows and recording progress.
    database: Duration,
    /// Feature cache, index and catalogue.
    index: Duration,
    /// Saving the index at the end.
    save: Duration,
}

impl Stages {
    fn seconds(&self, total: Duration) -> serde_json::Value {
        let timed = self.decode + self.store + self.embed + self.database + self.index + self.save;
        json!({
            "read": total.saturating_sub(timed).as_secs_f64(),
            "decode": self.decode.as_secs_f64(),
            "store": self.store.as_secs_f64(),
            "embed": self.embed.as_secs_f64(),
            "database": self.database.as_secs_f64(),
            "index": self.index.as_secs_f64(),
            "save": self.save.as_secs_f64(),
        })
    }
}

struct Run<'a> {
    state: &'a AppState,
    job: &'a Job,
    runtime: &'a Handle,
    dataset: &'a crate::generation::DatasetState,
    total: usize,
    done: usize,
    ingested: usize,
    skipped: Vec<Skipped>,
    skipped_count: usize,
    pending: Vec<(Entry, Vec<u8>)>,
    features: crate::feature_cache::FeatureCache,
    /// The block-input cache of the block last asked for, and that block.
    blocks: Option<(usize, crate::feature_cache::FeatureCache)>,
    stages: Stages,
}

impl Run<'_> {
    /// The cache of the activations entering `block`.
    fn block_cache(&mut self, block: usize) -> anyhow::Result<&crate::feature_cache::FeatureCache> {
        if self.blocks.as_ref().is_none_or(|(b, _)| *b != block) {
            self.blocks = Some((block, crate::jobs::features::block_cache(self.state, &self.dataset.name, block)?));
        }
        Ok(&self.blocks.as_ref().expect("just set").1)
    }

    fn skip(&mut self, path: &str, reason: String) {
        self.skipped_count += 1;
        self.done += 1;
        if self.skipped.len() < archive::MAX_SKIP_REASONS {
            self.skipped.push(Skipped { path: path.to_owned(), reason });
        }
    }

    /// Decodes, embeds, stores and indexes the pending images.
    fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let max_pixels = self.state.settings.limits.max_image_pixels;
        let input_size = self.state.embedder.model().input_size;
        let decoding = Instant::now();
        let prepared: Vec<Result<Prepared, String>> = pending
            .par_iter()
            .map(|(_, bytes)| prepare(bytes, max_pixels, input_size).map_err(|e| format!("invalid image: {e}")))
            .collect();
        self.stages.decode += decoding.elapsed();
        let mut good = Vec::with_capacity(pending.len());
        for ((entry, bytes), result) in pending.into_iter().zip(prepared) {
            match result {
                Ok(image) => good.push((entry, bytes, image)),
                Err(reason) => self.skip(&entry.path, reason),
            }
        }
        if !good.is_empty() {
            self.store(good)?;
        }
        let progress = self.done as f64 / self.total.max(1) as f64;
        let recording = Instant::now();
        self.runtime.block_on(self.state.db.set_job_progress(&self.job.id, "ingesting", progress))?;
        self.stages.database += recording.elapsed();
        Ok(())
    }

    fn store(&mut self, good: Vec<(Entry, Vec<u8>, Prepared)>) -> anyhow::Result<()> {
        let blobs = &self.state.blobs;
        let storing = Instant::now();
        let mut inputs = Vec::with_capacity(good.len());
        let mut rows = Vec::with_capacity(good.len());
        let mut originals = Vec::with_capacity(good.len());
        for (entry, bytes, image) in good {
            let key = BlobStore::new_key(&self.dataset.name);
            originals.push((key.clone(), bytes));
            rows.push(NewItem {
                item_id: entry.item_id,
                label: entry.label,
                width: image.width,
                height: image.height,
                content_type: image.content_type.to_owned(),
                blob: key,
            });
            inputs.push(image.input);
        }
        blobs.put_many_blocking(originals)?;
        let mut stored = storing.elapsed();
        let embedding = Instant::now();
        // The serving model's input; else the block inputs a default finetune trains from, kept
        // in their cache so that it need not run the frozen blocks again.
        let serving = self.dataset.generation.load().model.boundary();
        let boundary = serving.or(self.state.settings.finetune.first_trainable_block());
        let embedded = self.state.embedder.embed_many_at_blocking(inputs, boundary)?;
        self.stages.embed += embedding.elapsed();
        let syncing = Instant::now();
        blobs.sync_keys(rows.iter().map(|r| r.blob.as_str()))?;
        stored += syncing.elapsed();
        self.stages.store += stored;
        let inserting = Instant::now();
        let seqs = self.runtime.block_on(self.state.db.insert_items(&self.dataset.name, &rows))?;
        self.stages.database += inserting.elapsed();
        let indexing = Instant::now();
        let (features, blocks): (Vec<Row>, Vec<Row>) =
            seqs.iter().zip(embedded).map(|(&seq, e)| ((seq, e.features), (seq, e.block.unwrap_or_default()))).unzip();
        // Kept for fine-tuning and reindexing; a lost row is embedded again then.
        if let Err(err) = self.features.append(&features) {
            tracing::warn!(dataset = %self.dataset.name, error = %format!("{err:#}"), "feature cache not written");
        }
        if let Some(block) = boundary
            && let Err(err) = self.block_cache(block).and_then(|cache| cache.append(&blocks))
        {
            tracing::warn!(dataset = %self.dataset.name, error = %format!("{err:#}"), "block cache not written");
        }
        let _writer = self.dataset.writer.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.dataset.generation.load();
        let model_inputs = match generation.model.boundary() {
            None => features,
            now if now == boundary => blocks,
            // Only a job swaps generations, and jobs run one at a time: not while this one runs.
            now => anyhow::bail!("the serving model began reading block {now:?} during the ingest, not {boundary:?}"),
        };
        generation.append(&model_inputs)?;
        let mut catalog = self.dataset.catalog.write().unwrap_or_else(|e| e.into_inner());
        for (seq, row) in seqs.iter().zip(&rows) {
            catalog.insert(*seq, &row.item_id, &row.label);
        }
        drop(catalog);
        self.stages.index += indexing.elapsed();
        self.done += rows.len();
        self.ingested += rows.len();
        Ok(())
    }
}
