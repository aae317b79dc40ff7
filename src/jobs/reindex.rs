//! The `reindex` job: serve a dataset with another of its models, e.g. to
//! roll back to an older generation (`POST /datasets/{name}/models/{id}/activate`).
//!
//! The model's saved index is loaded when there is one and caught up with the
//! items it lacks; otherwise one is built from the feature cache (or, for a model that trained
//! the backbone's last blocks, the cache of the activations entering the first of them). Then it is put
//! into service by `generation::promote` (check → save → swap → record active);
//! searches answer from the old generation until then.
//! Stages: `features` (0–30%), `indexing` (30–95%), `swapping`.

use std::collections::HashSet;

use serde_json::{Value, json};
use tokio::runtime::Handle;

use super::features::model_inputs_of;
use super::{JobResult, Reporter};
use crate::cancel::CancelFlag;
use crate::db::jobs::Job;
use crate::error::{ErrorCode, JobFailure};
use crate::generation::build::{Candidate, PROBES};
use crate::generation::{Generation, build_generation, promote, store};
use crate::state::AppState;

pub fn run(state: &AppState, job: &Job, cancel: &CancelFlag) -> JobResult {
    let runtime = Handle::current();
    let started = std::time::Instant::now();
    let mut report = Reporter::new(state, job, &runtime);
    let Some(model_id) = job.params.get("model").and_then(Value::as_str) else {
        return Err(JobFailure::failed(ErrorCode::InvalidParams, "a reindex job needs params.model"));
    };
    let dataset = crate::jobs::restore::dataset_for_job(state, &job.dataset, &runtime)?;
    let record = runtime.block_on(state.db.get_model(&job.dataset, model_id))?.ok_or_else(|| {
        JobFailure::failed(ErrorCode::ModelNotFound, format!("the dataset has no model {model_id:?}"))
    })?;
    let backbone = state.embedder.model();
    if record.backbone != backbone.id {
        return Err(JobFailure::failed(
            ErrorCode::ModelUnavailable,
            format!("model {model_id} reads backbone {}, but {} is loaded", record.backbone, backbone.id),
        ));
    }
    let model = store::load_handle(&state.objects, &job.dataset, &record, state.embedder.network(), &state.device)?;
    let records = runtime.block_on(state.db.all_items(&job.dataset))?;
    let dir = dataset.index_dir(model_id);
    state.objects.pull_dir(&dir)?;
    let boundary = model.boundary();
    let features_of =
        |records: &[crate::db::items::ItemRecord], cancel: &CancelFlag, progress: &mut dyn FnMut(usize, usize)| {
            model_inputs_of(state, &job.dataset, records, boundary, cancel, progress)
        };

    report.stage("features", 0.0, json!({}));
    let mut features_progress = |done: usize, total: usize| {
        report.progress("features", 0.3 * done as f64 / total.max(1) as f64, json!({"embedded": done}));
    };
    let (candidate, reused) = match Generation::load(&dir, model.clone(), &state.settings.index.params) {
        Ok(saved) => {
            // Deleted items the saved index still holds are filtered at search.
            let lacking = saved.lacking(&records);
            let features = features_of(&lacking, cancel, &mut features_progress)?;
            report.stage("indexing", 0.3, json!({"reused_index": true}));
            let rows: Vec<(u64, Vec<f32>)> = lacking.iter().map(|r| r.seq).zip(features).collect();
            let probes = rows.iter().take(PROBES).cloned().collect();
            saved.append(&rows)?;
            let built: HashSet<u64> = records.iter().map(|r| r.seq).collect();
            (Candidate { generation: saved, built, probes }, true)
        }
        Err(err) => {
            if dir.exists() {
                tracing::warn!(dataset = %job.dataset, model = model_id, error = %format!("{err:#}"), "saved index unusable: rebuilding");
            }
            let features = features_of(&records, cancel, &mut features_progress)?;
            report.stage("indexing", 0.3, json!({"reused_index": false}));
            let candidate = build_generation(
                model,
                backbone.dim,
                &state.settings.index.params,
                &records,
                features,
                cancel,
                &mut |done, total| {
                    let progress = 0.3 + 0.65 * done as f64 / total.max(1) as f64;
                    report.progress("indexing", progress, json!({"indexed": done}));
                },
            )?;
            (candidate, false)
        }
    };
    report.stage("swapping", 0.95, json!({}));
    promote(&state.db, &state.objects, &dataset, candidate, cancel, &mut |late| {
        features_of(late, &CancelFlag::default(), &mut |_, _| {})
    })?;
    Ok(json!({
        "model": model_id,
        "items": records.len(),
        "reused_index": reused,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
