//! The `reindex` job: serve a dataset with another of its models, e.g. to
//! roll back to an older generation (`POST /datasets/{name}/models/{id}/activate`).
//!
//! The model's saved index is loaded when there is one and caught up with the
//! items it lacks; otherwise one is built from the feature cache. Then the
//! model is recorded as active and the generation swapped in
//! (`models::swap_in`); searches answer from the old generation until then.
//! Stages: `features` (0–30%), `indexing` (30–95%), `swapping`.

use std::collections::HashSet;

use serde_json::json;
use tokio::runtime::Handle;

use super::{CancelFlag, JobFailure, JobResult, Reporter};
use crate::app::AppState;
use crate::db::jobs::Job;
use crate::generation::Generation;
use crate::models;

pub fn run(state: &AppState, job: &Job, cancel: &CancelFlag) -> JobResult {
    let runtime = Handle::current();
    let started = std::time::Instant::now();
    let mut report = Reporter::new(state, job, &runtime);
    let Some(model_id) = job.params.get("model").and_then(|v| v.as_str()) else {
        return Err(JobFailure::failed("invalid_params", "a reindex job needs params.model"));
    };
    let dataset = state
        .dataset(&job.dataset)
        .ok_or_else(|| JobFailure::failed("dataset_not_found", "the dataset was deleted"))?;
    let record = runtime
        .block_on(state.db.get_model(&job.dataset, model_id))
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| JobFailure::failed("model_not_found", format!("the dataset has no model {model_id:?}")))?;
    if record.backbone != state.embedder.model().id {
        return Err(JobFailure::failed(
            "model_unavailable",
            format!("model {model_id} reads backbone {}, but {} is loaded", record.backbone, state.embedder.model().id),
        ));
    }
    let model = models::load_handle(state.data_dir(), &job.dataset, &record)?;
    let records = runtime.block_on(state.db.all_items(&job.dataset)).map_err(anyhow::Error::from)?;
    let dir = dataset.index_dir(model_id);

    report.stage("features", 0.0, json!({}));
    let mut probes: Vec<(u64, Vec<f32>)> = Vec::new();
    let (generation, built, reused) = match Generation::load(&dir, model.clone(), &state.settings.index.params) {
        Ok(saved) => {
            // The saved index covers items up to its seq; deleted ones are filtered at search.
            let lacking: Vec<_> = records.iter().filter(|r| r.seq > saved.covered_seq()).cloned().collect();
            let features = models::features_of(state, &job.dataset, &lacking, cancel, &mut |done, total| {
                report.progress("features", 0.3 * done as f64 / total.max(1) as f64, json!({"embedded": done}));
            })?;
            report.stage("indexing", 0.3, json!({"reused_index": true}));
            let rows: Vec<(u64, Vec<f32>)> = lacking.iter().map(|r| r.seq).zip(features).collect();
            probes.extend(rows.iter().take(16).cloned());
            saved.append(&rows);
            let built: HashSet<u64> = records.iter().map(|r| r.seq).collect();
            (saved, built, true)
        }
        Err(err) => {
            if dir.exists() {
                tracing::warn!(dataset = %job.dataset, model = model_id, error = %format!("{err:#}"), "saved index unusable: rebuilding");
            }
            let features = models::features_of(state, &job.dataset, &records, cancel, &mut |done, total| {
                report.progress("features", 0.3 * done as f64 / total.max(1) as f64, json!({"embedded": done}));
            })?;
            report.stage("indexing", 0.3, json!({"reused_index": false}));
            let step = (records.len() / 16).max(1);
            probes.extend(records.iter().zip(&features).step_by(step).map(|(r, f)| (r.seq, f.clone())));
            let (generation, built) =
                models::build_generation(state, model, &records, features, cancel, &mut |done, total| {
                    report.progress(
                        "indexing",
                        0.3 + 0.65 * done as f64 / total.max(1) as f64,
                        json!({"indexed": done}),
                    );
                })?;
            (generation, built, false)
        }
    };
    let probe_refs: Vec<(u64, &[f32])> = probes.iter().map(|(seq, f)| (*seq, f.as_slice())).collect();
    models::check_generation(&generation, &built, &probe_refs)?;
    generation.save(&dir)?;
    cancel.check()?;
    report.stage("swapping", 0.95, json!({}));
    runtime.block_on(state.db.activate_model(&job.dataset, model_id)).map_err(anyhow::Error::from)?;
    models::swap_in(state, &dataset, generation, &built)?;
    Ok(json!({
        "model": model_id,
        "items": records.len(),
        "reused_index": reused,
        "seconds": started.elapsed().as_secs_f64(),
    }))
}
