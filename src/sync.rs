//! Keeping this process's serving copy of the datasets in step with the database, which other
//! processes sharing it (API replicas, workers: `server.role`) change.
//!
//! Each process holds every dataset's catalogue and index in memory. What it changes itself it
//! applies at once; what others change it learns here: on each `lookalike_changes` notification
//! (PostgreSQL `NOTIFY`, sent by every write of a dataset, its items or its active model) and
//! every `server.sync_interval_ms` whatever happens, since notifications can be lost. Per
//! dataset it compares cheap figures first (item count and highest `seq` against its catalogue,
//! the active model against the one it serves) and reads the rows only when they differ, or
//! every [`FULL_CHECK_EVERY`] rounds (a late commit of a lower `seq` can hide behind equal
//! figures). New items are embedded (the feature cache usually has them) and added, deleted ones
//! leave the catalogue, a new active model is loaded with its saved index and swapped in as a
//! promotion does. A dataset with a job running in this process is left to that job, which
//! writes this process's copy itself.
//!
//! On SQLite one process owns the database file, so nothing runs here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::db::items::ItemRecord;
use crate::db::{Backend, Channel};
use crate::generation::DatasetState;
use crate::state::AppState;

/// Every this many rounds the rows are compared even when the figures agree.
pub const FULL_CHECK_EVERY: u64 = 30;

/// Runs forever (returns at once on SQLite): a round at each notification and at each interval.
pub async fn run(state: AppState) {
    if state.db.backend() == Backend::Sqlite {
        return;
    }
    let wake = Arc::new(Notify::new());
    let listening = wake.clone();
    let db = state.db.clone();
    tokio::spawn(async move { db.listen(Channel::Changes, |_| listening.notify_one()).await });
    let interval = Duration::from_millis(state.settings.server.sync_interval_ms.max(10));
    let mut round = 0u64;
    loop {
        let _ = tokio::time::timeout(interval, wake.notified()).await;
        round += 1;
        if let Err(err) = sync_all(&state, round.is_multiple_of(FULL_CHECK_EVERY)).await {
            tracing::warn!(error = %format!("{err:#}"), "could not bring the datasets up to date");
        }
    }
}

/// One round over every dataset: those new to this process are loaded, those gone are dropped,
/// the others brought up to date. `full`: compare the rows even when the figures agree.
pub async fn sync_all(state: &AppState, full: bool) -> anyhow::Result<()> {
    if !state.is_ready() {
        return Ok(()); // the start-up load comes first
    }
    let stored = state.db.list_datasets().await?;
    let names: HashSet<&str> = stored.iter().map(|d| d.name.as_str()).collect();
    for loaded in state.datasets() {
        if !names.contains(loaded.name.as_str()) && state.jobs.active_for(&loaded.name).is_none() {
            tracing::info!(dataset = %loaded.name, "deleted by another process: dropped");
            state.remove_dataset(&loaded.name);
        }
    }
    for dataset in &stored {
        if state.jobs.active_for(&dataset.name).is_some() {
            continue;
        }
        match state.dataset(&dataset.name) {
            None => crate::jobs::restore::load_dataset(state, &dataset.name).await?,
            Some(loaded) => sync_dataset(state, loaded, full).await?,
        }
    }
    Ok(())
}

/// Brings one loaded dataset up to date: its active model, then its items.
async fn sync_dataset(state: &AppState, dataset: Arc<DatasetState>, full: bool) -> anyhow::Result<()> {
    let serving = dataset.generation.load().model.id.clone();
    let active = state.db.active_model(&dataset.name).await?;
    let switch = active.is_some_and(|a| a.id != serving);
    let (count, top) = state.db.item_stats(&dataset.name).await?;
    let (held, held_top) = {
        let catalog = dataset.catalog.read().unwrap_or_else(|e| e.into_inner());
        (catalog.len() as u64, catalog.seqs().max().unwrap_or(0))
    };
    if !switch && !full && (count, top) == (held, held_top) {
        return Ok(());
    }
    let items = state.db.all_items(&dataset.name).await?;
    let model = if switch { Some(crate::jobs::restore::active_model(state, &dataset.name).await?) } else { None };
    let state = state.clone();
    tokio::task::spawn_blocking(move || apply(&state, &dataset, model, &items)).await?
}

/// Blocking: swaps in `model` when given (its saved index, caught up with `items`), then makes the
/// catalogue and the index hold exactly `items`.
fn apply(
    state: &AppState,
    dataset: &DatasetState,
    model: Option<crate::generation::ModelHandle>,
    items: &[ItemRecord],
) -> anyhow::Result<()> {
    let switched = model.is_some();
    if let Some(model) = model {
        let id = model.id.clone();
        let generation = crate::jobs::restore::load_generation(state, &dataset.name, model, items)?;
        let _writer = dataset.writer.lock().unwrap_or_else(|e| e.into_inner());
        let previous = dataset.generation.swap(Arc::new(generation));
        tracing::info!(dataset = %dataset.name, model = %id, previous = %previous.model.id,
            "activated by another process: generation swapped in");
    }
    let _writer = dataset.writer.lock().unwrap_or_else(|e| e.into_inner());
    let stored: HashMap<u64, &ItemRecord> = items.iter().map(|r| (r.seq, r)).collect();
    let (missing, gone): (Vec<ItemRecord>, Vec<String>) = {
        let catalog = dataset.catalog.read().unwrap_or_else(|e| e.into_inner());
        let missing = items.iter().filter(|r| catalog.get(r.seq).is_none()).cloned().collect();
        let gone = catalog
            .seqs()
            .filter(|seq| !stored.contains_key(seq))
            .filter_map(|seq| catalog.get(seq).map(|c| c.item_id.to_string()))
            .collect();
        (missing, gone)
    };
    if !gone.is_empty() {
        let mut catalog = dataset.catalog.write().unwrap_or_else(|e| e.into_inner());
        for item_id in &gone {
            catalog.remove(item_id);
        }
        tracing::debug!(dataset = %dataset.name, items = gone.len(), "deleted by another process");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let generation = dataset.generation.load_full();
    // A generation just loaded holds every item of `items` already (`load_generation` caught it
    // up): the missing ones join the catalogue only. Otherwise the catalogue and the index hold
    // the same items (both change under the writer lock), so the missing ones are new to both.
    let new: Vec<ItemRecord> = if switched { Vec::new() } else { missing.clone() };
    if !new.is_empty() {
        let features = crate::jobs::features::model_inputs_of(
            state,
            &dataset.name,
            &new,
            generation.model.boundary(),
            &Default::default(),
            &mut |_, _| {},
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        generation.append(&new.iter().map(|r| r.seq).zip(features).collect::<Vec<_>>())?;
    }
    let mut catalog = dataset.catalog.write().unwrap_or_else(|e| e.into_inner());
    for record in &missing {
        catalog.insert(record.seq, &record.item.item_id, &record.item.label);
    }
    tracing::debug!(dataset = %dataset.name, items = missing.len(), "added by another process");
    Ok(())
}
