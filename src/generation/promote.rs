//! Putting a built generation into service: check → save → swap → record active.
//!
//! The order is what keeps the database and the server from disagreeing. The new generation is
//! checked ([`check_generation`]) and its index saved before anything changes, so a failure
//! there leaves the old generation serving and recorded. The swap and the record then happen
//! together under the dataset's writer lock: the items that arrived during the build are added,
//! the new generation is stored (one `ArcSwap` store; a search that loaded the old one finishes
//! on it), and the model is recorded as active. Should that record fail, the old generation is
//! stored back before the lock is released, so the database never names a model that is not
//! served, and the server never serves a model the database does not name as active.
//!
//! Blocking (it embeds late items and waits on the database): call it from a job's thread.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::runtime::Handle;

use super::build::{Candidate, check_generation};
use super::dataset::DatasetState;
use crate::cancel::CancelFlag;
use crate::db::Db;
use crate::db::items::ItemRecord;
use crate::error::JobFailure;

/// Backbone features of items, in their order (the caller's feature cache and embedder).
pub type FeaturesOf<'a> = dyn FnMut(&[ItemRecord]) -> Result<Vec<Vec<f32>>, JobFailure> + 'a;

/// Puts `candidate` into service for `dataset` and records its model as active. A canceled job
/// stops before the swap; after it, the job is done.
pub fn promote(
    db: &Db,
    objects: &crate::storage::Objects,
    dataset: &DatasetState,
    candidate: Candidate,
    cancel: &CancelFlag,
    features_of: &mut FeaturesOf<'_>,
) -> Result<(), JobFailure> {
    check_generation(&candidate)?;
    let Candidate { generation, built, .. } = candidate;
    let model_id = generation.model.id.clone();
    generation.save(&dataset.index_dir(&model_id), objects)?;
    cancel.check()?;

    let runtime = Handle::current();
    let _writer = dataset.writer.lock().unwrap_or_else(|e| e.into_inner());
    let missing: HashSet<u64> = {
        let catalog = dataset.catalog.read().unwrap_or_else(|e| e.into_inner());
        catalog.seqs().filter(|seq| !built.contains(seq)).collect()
    };
    if !missing.is_empty() {
        // Items added while the new generation was being built: few, so they are embedded here,
        // under the lock that keeps more from arriving.
        let records: Vec<ItemRecord> =
            runtime.block_on(db.all_items(&dataset.name))?.into_iter().filter(|r| missing.contains(&r.seq)).collect();
        let features = features_of(&records)?;
        generation.append(&records.iter().map(|r| r.seq).zip(features).collect::<Vec<_>>())?;
        tracing::info!(dataset = %dataset.name, items = records.len(), "added items that arrived during the build");
    }
    let previous = dataset.generation.swap(Arc::new(generation));
    if let Err(err) = runtime.block_on(db.activate_model(&dataset.name, &model_id)) {
        dataset.generation.store(previous);
        tracing::error!(dataset = %dataset.name, model = %model_id, error = %err,
            "recording the new model as active failed: the previous generation serves on");
        return Err(err.into());
    }
    tracing::info!(dataset = %dataset.name, model = %model_id, previous = %previous.model.id, "generation swapped in");
    Ok(())
}
