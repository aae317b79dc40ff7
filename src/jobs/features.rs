//! Backbone features of stored items: read from the dataset's [`FeatureCache`] (ingest writes
//! it), the missing ones embedded from the stored images through the embedder and cached. A
//! model that trained the backbone's last blocks reads the activations entering the first of
//! them instead ([`model_inputs_of`]), cached the same way per block.
//! Blocking: call from a job's thread (or `spawn_blocking`).

use std::collections::HashSet;

use rayon::prelude::*;

use crate::cancel::CancelFlag;
use crate::db::items::ItemRecord;
use crate::error::{ErrorCode, JobFailure};
use crate::feature_cache::FeatureCache;
use crate::state::AppState;

/// The feature cache of a dataset for the loaded backbone.
pub fn feature_cache(state: &AppState, dataset: &str) -> FeatureCache {
    let model = state.embedder.model();
    FeatureCache::new(state.data_dir(), dataset, &model.id, model.input_size, model.dim)
}

/// The cache of the activations entering block `block` for the loaded backbone.
pub fn block_cache(state: &AppState, dataset: &str, block: usize) -> anyhow::Result<FeatureCache> {
    let model = state.embedder.model();
    let dim = state.embedder.network().block_len(block)?;
    Ok(FeatureCache::at_block(state.data_dir(), dataset, &model.id, model.input_size, block, dim))
}

/// From how many items on a process lacking the cache fetches it from the object store rather than
/// embed them: a replica adding the few items another one took in should not download a
/// catalogue's cache (5 KB an item) for them; a worker finetuning should.
const FETCH_CACHE_FOR: usize = 1000;

/// Uploads a cache a job extended to the object store, for the workers that do not share this
/// data dir (nothing to do on the local store). A cache the store holds at the same length is
/// left alone.
pub fn store_cache(state: &AppState, cache: &FeatureCache) -> anyhow::Result<()> {
    let Ok(local) = std::fs::metadata(cache.path()) else {
        return Ok(());
    };
    if !state.objects.is_remote() || state.objects.stored_size(cache.path())? == Some(local.len()) {
        return Ok(());
    }
    state.objects.push_file(cache.path())
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
    model_inputs_of(state, dataset, records, None, cancel, progress)
}

/// What a model reads of `records`, in their order: the backbone features (`boundary` `None`) or
/// the activations entering block `boundary` (a model with a trained tail), from their cache,
/// the missing ones embedded from the stored images (and cached).
pub fn model_inputs_of(
    state: &AppState,
    dataset: &str,
    records: &[ItemRecord],
    boundary: Option<usize>,
    cancel: &CancelFlag,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<f32>>, JobFailure> {
    let cache = match boundary {
        Some(block) => block_cache(state, dataset, block)?,
        None => feature_cache(state, dataset),
    };
    if records.len() >= FETCH_CACHE_FOR {
        state.objects.pull_file(cache.path())?;
    }
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
                let bytes = state.blobs.get_blocking(&record.blob)?;
                crate::network::preprocess::prepare(&bytes, max_pixels, input_size)
                    .map(|p| p.input)
                    .map_err(|e| anyhow::anyhow!("stored image of {:?} unreadable: {e}", record.item.item_id))
            })
            .collect::<anyhow::Result<_>>()?;
        let embedded = state.embedder.embed_many_at_blocking(inputs, boundary).map_err(anyhow::Error::from)?;
        let rows: Vec<(u64, Vec<f32>)> =
            chunk.iter().map(|r| r.seq).zip(embedded.into_iter().map(|e| e.into_model_input())).collect();
        cache.append(&rows)?;
        cached.extend(rows);
        done += chunk.len();
        progress(done, total);
    }
    records
        .iter()
        .map(|r| cached.remove(&r.seq).ok_or_else(|| JobFailure::failed(ErrorCode::Internal, "a feature went missing")))
        .collect()
}
