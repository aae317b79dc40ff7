//! Loading a dataset's serving copy from what is stored: its active model (the pretrained one
//! standing in when that cannot be used), the model's saved index, the items that index lacks.
//! The server's start-up loads every dataset with it; `sync` the ones other processes create or
//! change; a job the dataset it runs for when this process does not hold it yet.

use std::sync::Arc;

use crate::generation::{DatasetState, Generation, ModelHandle};
use crate::state::AppState;

/// The model a dataset should serve with: its active one, or the
/// pretrained backbone when that cannot be used (recorded as active).
pub async fn active_model(state: &AppState, dataset: &str) -> anyhow::Result<ModelHandle> {
    let backbone = state.embedder.model().id.clone();
    state.db.ensure_pretrained_model(dataset, &backbone, state.embedder.model().dim).await?;
    let Some(active) = state.db.active_model(dataset).await? else {
        anyhow::bail!("dataset {dataset} has no active model");
    };
    if active.backbone != backbone {
        tracing::warn!(dataset, model = %active.id, backbone = %active.backbone, loaded = %backbone,
            "the active model was trained on another backbone: serving the pretrained model");
    } else {
        let loading = state.clone();
        let (name, record) = (dataset.to_owned(), active.clone());
        let loaded = tokio::task::spawn_blocking(move || {
            let network = loading.embedder.network();
            crate::generation::store::load_handle(&loading.objects, &name, &record, network, &loading.device)
        })
        .await?;
        match loaded {
            Ok(model) => return Ok(model),
            Err(err) => tracing::error!(dataset, model = %active.id, error = %format!("{err:#}"),
                "the active model cannot be loaded: serving the pretrained model"),
        }
    }
    state.db.activate_model(dataset, &backbone).await?;
    Ok(ModelHandle::pretrained(&backbone))
}

/// Blocking: the saved index (or a new one), caught up with `items`.
pub fn restore_dataset(
    state: &AppState,
    name: &str,
    model: ModelHandle,
    items: &[crate::db::items::ItemRecord],
) -> anyhow::Result<Arc<DatasetState>> {
    let generation = load_generation(state, name, model, items)?;
    let dataset = Arc::new(DatasetState::new(name, &state.indexes_dir(), generation));
    dataset.fill_catalog(items);
    Ok(dataset)
}

/// Blocking: the generation of `model` for dataset `name`: its saved index (a new one when none
/// is saved or it is unreadable), with the `items` it lacks embedded and added (and saved).
pub fn load_generation(
    state: &AppState,
    name: &str,
    model: ModelHandle,
    items: &[crate::db::items::ItemRecord],
) -> anyhow::Result<Generation> {
    let dir = state.indexes_dir().join(name).join(&model.id);
    if let Err(err) = state.objects.pull_dir(&dir) {
        tracing::warn!(dataset = name, error = %format!("{err:#}"), "could not fetch the saved index");
    }
    let generation = match Generation::load(&dir, model.clone(), &state.settings.index.params) {
        Ok(generation) => generation,
        Err(err) => {
            if dir.exists() {
                tracing::warn!(dataset = name, error = %format!("{err:#}"), "saved index unreadable: rebuilding");
            }
            Generation::empty(model, state.embedder.model().dim, state.settings.index.params.clone())
        }
    };
    let missing = generation.lacking(items);
    if !missing.is_empty() {
        tracing::info!(dataset = name, items = missing.len(), "adding items the saved index lacks");
        // Their cache usually has them (ingest writes it); the rest are embedded and cached.
        let boundary = generation.model.boundary();
        let features = crate::jobs::features::model_inputs_of(
            state,
            name,
            &missing,
            boundary,
            &Default::default(),
            &mut |_, _| {},
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        generation.append(&missing.iter().map(|r| r.seq).zip(features).collect::<Vec<_>>())?;
        if state.settings.server.role.runs_jobs() {
            generation.save(&dir, &state.objects)?;
        }
    }
    Ok(generation)
}

/// Loads a dataset this process does not hold yet (another process created it), from its rows, its
/// active model and that model's saved index.
pub async fn load_dataset(state: &AppState, name: &str) -> anyhow::Result<()> {
    let items = state.db.all_items(name).await?;
    let model = active_model(state, name).await?;
    let loading = state.clone();
    let owned = name.to_owned();
    let loaded = tokio::task::spawn_blocking(move || restore_dataset(&loading, &owned, model, &items)).await??;
    if state.dataset(name).is_none() {
        tracing::info!(dataset = name, "created by another process: loaded");
        state.add_dataset(loaded);
    }
    Ok(())
}

/// Blocking (a job's thread): the dataset's serving copy, loaded from the database when this
/// process has none yet (a worker taking the ingest of a dataset an API replica just made).
pub fn dataset_for_job(
    state: &AppState,
    name: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<Arc<DatasetState>, crate::error::JobFailure> {
    let deleted =
        || crate::error::JobFailure::failed(crate::error::ErrorCode::DatasetNotFound, "the dataset was deleted");
    if let Some(dataset) = state.dataset(name) {
        return Ok(dataset);
    }
    if runtime.block_on(state.db.get_dataset(name))?.is_none() {
        return Err(deleted());
    }
    runtime
        .block_on(load_dataset(state, name))
        .map_err(|e| crate::error::JobFailure::failed(crate::error::ErrorCode::Internal, format!("{e:#}")))?;
    state.dataset(name).ok_or_else(deleted)
}
