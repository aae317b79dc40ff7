//! A dataset's models: where they are stored, how a generation is built for
//! one, and how it is swapped into service.
//!
//! A model is the shared pretrained backbone plus, for a fine-tuned model, a
//! trained head saved under `models/{dataset}/{model_id}/` (`head.safetensors`
//! and `model.json`, written aside and renamed into place). The `models` table
//! records each one (`db::models`); the index built with it lives under
//! `indexes/{dataset}/{model_id}/` like the pretrained model's.
//!
//! Building a generation reads every live item's backbone features (from the
//! [`FeatureCache`], embedding what it lacks), maps them through the model's
//! head and inserts them into a new index, all aside from the generation in
//! service. [`swap_in`] then takes the dataset's writer lock, adds the items
//! that arrived meanwhile, and stores the new generation with one `ArcSwap`
//! store: a search that loaded the old one finishes on it.
//!
//! Everything here blocks: call it from a job's thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rayon::prelude::*;

use crate::app::AppState;
use crate::db::items::ItemRecord;
use crate::db::models::ModelRecord;
use crate::features::FeatureCache;
use crate::generation::{DatasetState, Generation, ModelHandle};
use crate::index::VectorIndex;
use crate::jobs::{CancelFlag, JobFailure};
use crate::model::projection::Projection;
use crate::train::EmbeddingHead;

pub const HEAD_FILE: &str = "head.safetensors";
pub const MODEL_META_FILE: &str = "model.json";

/// The folder of a dataset's trained models.
pub fn dataset_dir(data_dir: &Path, dataset: &str) -> PathBuf {
    data_dir.join("models").join(dataset)
}

/// The folder of one trained model.
pub fn model_dir(data_dir: &Path, dataset: &str, model_id: &str) -> PathBuf {
    dataset_dir(data_dir, dataset).join(model_id)
}

/// Saves a trained head and its description crash-safely.
pub fn save_head(dir: &Path, head: &EmbeddingHead, meta: &serde_json::Value) -> anyhow::Result<()> {
    let parent = dir.parent().context("model dir has no parent")?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".new-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        std::fs::create_dir_all(&tmp)?;
        head.save(tmp.join(HEAD_FILE))?;
        std::fs::File::open(tmp.join(HEAD_FILE))?.sync_all()?;
        crate::storage::write_atomic(&tmp.join(MODEL_META_FILE), &serde_json::to_vec_pretty(meta)?, true)?;
        crate::storage::remove_dir_if_exists(dir)?;
        std::fs::rename(&tmp, dir)?;
        anyhow::Ok(())
    })();
    if result.is_err() {
        let _ = crate::storage::remove_dir_if_exists(&tmp);
    }
    result
}

/// The model a record describes, ready to embed with (its head loaded).
pub fn load_handle(data_dir: &Path, dataset: &str, record: &ModelRecord) -> anyhow::Result<ModelHandle> {
    if record.is_pretrained() {
        return Ok(ModelHandle::pretrained(&record.backbone));
    }
    let path = model_dir(data_dir, dataset, &record.id).join(HEAD_FILE);
    let head = Projection::load(&path)?;
    Ok(ModelHandle { id: record.id.clone(), backbone: record.backbone.clone(), head: Some(Arc::new(head)) })
}

/// The feature cache of a dataset for the loaded backbone.
pub fn feature_cache(state: &AppState, dataset: &str) -> FeatureCache {
    let model = state.embedder.model();
    FeatureCache::new(state.data_dir(), dataset, &model.id, model.input_size, model.dim)
}

/// Backbone features of `records`, in their order: read from the cache, the
/// missing ones embedded from the stored images (and cached). `progress`
/// gets (done, total) after each chunk.
pub fn features_of(
    state: &AppState,
    dataset: &str,
    records: &[ItemRecord],
    cancel: &CancelFlag,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>, JobFailure> {
    let cache = feature_cache(state, dataset);
    let wanted: HashSet<u64> = records.iter().map(|r| r.seq).collect();
    let mut cached = cache.read(&wanted)?;
    let missing: Vec<&ItemRecord> = records.iter().filter(|r| !cached.contains_key(&r.seq)).collect();
    let total = missing.len();
    if total > 0 {
        tracing::info!(dataset, items = total, "embedding items the feature cache lacks");
    }
    let max_pixels = state.settings.limits.max_image_pixels;
    let input_size = state.embedder.model().input_size;
    let mut done = 0;
    for chunk in missing.chunks(state.settings.jobs.ingest_chunk.max(1)) {
        cancel.check()?;
        let inputs: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|record| {
                let bytes = state.blobs.get(&record.blob)?;
                crate::prepare::prepare(&bytes, max_pixels, input_size)
                    .map(|p| p.input)
                    .map_err(|e| anyhow::anyhow!("stored image of {:?} unreadable: {e}", record.item.item_id))
            })
            .collect::<anyhow::Result<_>>()?;
        let vectors = state.embedder.embed_many_blocking(inputs).map_err(anyhow::Error::from)?;
        let rows: Vec<(u64, Vec<f32>)> = chunk.iter().map(|r| r.seq).zip(vectors).collect();
        cache.append(&rows)?;
        cached.extend(rows);
        done += chunk.len();
        progress(done, total);
    }
    records
        .iter()
        .map(|r| cached.remove(&r.seq).ok_or_else(|| JobFailure::failed("internal", "a feature went missing")))
        .collect()
}

/// Chunk of items inserted between cancel checks and progress reports.
const BUILD_CHUNK: usize = 1024;

/// A new generation of `model` over `records` (with their backbone `features`),
/// and the seqs it holds.
pub fn build_generation(
    state: &AppState,
    model: ModelHandle,
    records: &[ItemRecord],
    features: Vec<Vec<f32>>,
    cancel: &CancelFlag,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Generation, HashSet<u64>), JobFailure> {
    let dim = model.dim(state.embedder.model().dim);
    let index = VectorIndex::new(dim, records.len().max(1024), state.settings.index.params.clone());
    let generation = Generation::new(model, index, 0);
    let mut rows: Vec<(u64, Vec<f32>)> = records.iter().map(|r| r.seq).zip(features).collect();
    let total = rows.len();
    let mut built = HashSet::with_capacity(total);
    let mut done = 0;
    while !rows.is_empty() {
        cancel.check()?;
        let rest = rows.split_off(rows.len().min(BUILD_CHUNK));
        built.extend(rows.iter().map(|(seq, _)| *seq));
        generation.append(&rows);
        done += rows.len();
        progress(done, total);
        rows = rest;
    }
    Ok((generation, built))
}

/// Items probed by [`check_generation`].
const PROBES: usize = 16;

/// Checks a generation before it goes into service: it holds every item it
/// was built from, and each of up to [`PROBES`] items spread over the list,
/// searched by its own features, comes back first at distance ~0 (or tied
/// with an identical item). A failure means the model or the index is
/// broken, and the generation in service is kept.
pub fn check_generation(
    generation: &Generation,
    built: &HashSet<u64>,
    probes: &[(u64, &[f32])],
) -> Result<(), JobFailure> {
    let stored = generation.index.len();
    if stored < built.len() {
        return Err(JobFailure::failed(
            "generation_check_failed",
            format!("the new index holds {stored} vectors for {} items", built.len()),
        ));
    }
    let step = (probes.len() / PROBES).max(1);
    for &(seq, feature) in probes.iter().step_by(step).take(PROBES) {
        let query = generation.embed(feature);
        let found = generation.index.search(&query, 1, &|_| true, stored);
        let ok = found.first().is_some_and(|n| n.id == seq || n.distance <= 1e-4);
        if !ok {
            return Err(JobFailure::failed(
                "generation_check_failed",
                format!("item {seq} searched by its own features did not come back first: {found:?}"),
            ));
        }
    }
    Ok(())
}

/// Puts `generation` into service for `dataset`: under the dataset's writer
/// lock, adds the live items it lacks (`built` is what it holds), then
/// stores it. Searches that loaded the old generation finish on it.
pub fn swap_in(
    state: &AppState,
    dataset: &DatasetState,
    generation: Generation,
    built: &HashSet<u64>,
) -> anyhow::Result<()> {
    let _writer = dataset.writer.lock().unwrap_or_else(|e| e.into_inner());
    let missing: HashSet<u64> = {
        let catalog = dataset.catalog.read().unwrap_or_else(|e| e.into_inner());
        catalog.seqs().filter(|seq| !built.contains(seq)).collect()
    };
    if !missing.is_empty() {
        // Items added while the new generation was being built: few, so they
        // are embedded here, under the lock that keeps more from arriving.
        let records: Vec<ItemRecord> = tokio::runtime::Handle::current()
            .block_on(state.db.all_items(&dataset.name))?
            .into_iter()
            .filter(|r| missing.contains(&r.seq))
            .collect();
        let features = features_of(state, &dataset.name, &records, &CancelFlag::default(), &mut |_, _| {})
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        generation.append(&records.iter().map(|r| r.seq).zip(features).collect::<Vec<_>>());
        tracing::info!(dataset = %dataset.name, items = records.len(), "added items that arrived during the build");
    }
    let model_id = generation.model_id.clone();
    dataset.generation.store(Arc::new(generation));
    tracing::info!(dataset = %dataset.name, model = %model_id, "generation swapped in");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::IndexParams;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut rng = crate::train::TrainRng::new(seed);
        let v: Vec<f32> = (0..dim).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    #[test]
    fn a_sound_generation_passes_and_a_broken_one_is_caught() {
        let dim = 16;
        let rows: Vec<(u64, Vec<f32>)> = (1..=40).map(|seq| (seq, unit(seq, dim))).collect();
        let generation =
            Generation::new(ModelHandle::pretrained("m"), VectorIndex::new(dim, 64, IndexParams::default()), 0);
        generation.append(&rows);
        let built: HashSet<u64> = rows.iter().map(|(seq, _)| *seq).collect();
        let probes: Vec<(u64, &[f32])> = rows.iter().map(|(seq, v)| (*seq, v.as_slice())).collect();
        check_generation(&generation, &built, &probes).expect("sound generation");

        // A probe whose features are not those its item was indexed with.
        let stranger = unit(999, dim);
        let wrong = [(3u64, stranger.as_slice())];
        let err = check_generation(&generation, &built, &wrong).expect_err("mismatch caught");
        assert!(err.to_string().contains("did not come back first"), "{err}");

        // An index missing items it was meant to hold.
        let mut more = built.clone();
        more.insert(41);
        let err = check_generation(&generation, &more, &probes).expect_err("missing item caught");
        assert!(err.to_string().contains("holds 40 vectors for 41 items"), "{err}");
    }
}
