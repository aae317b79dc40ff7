//! The `finetune` job: learn the catalogue, prove it on held-out items, and
//! swap the better model into service.
//!
//! Stages, in order (each is the job's `stage`; `progress` runs through the
//! ranges below and `detail` carries the stage's figures):
//! 1. `features` (0–20%): every live item's backbone features, from the
//!    feature cache (written by ingest), embedding only what it lacks.
//! 2. `mining` (20–30%): a seeded per-label split holds out `holdout` of each
//!    label's items; offline hard-example mining over the training items' pretrained
//!    features (`train::offline`: global quantile thresholds on the
//!    anchor–positive and anchor–negative distance distributions). Writes
//!    `distance-histogram.png` and `mined-pairs.json`.
//! 3. `training` (30–80%): the embedding head is trained on cached features
//!    with P×K batches and the triplet loss (`train::trainer`); in the default
//!    `offline+online` mode every batch brings each anchor's mined hard
//!    positive and mines hard negatives inside the batch. Writes
//!    `loss-curve.png`. A collapsed embedding fails the job with
//!    `training_collapsed` and promotes nothing.
//! 4. `evaluating` (80–85%): held-out items query the training items, with
//!    the active model (before) and the new one (after): Recall@1/5/10 and
//!    MAP@R with the exact R.
//! 5. `indexing` (85–98%) and `swapping`: when promoted (`promote`:
//!    `if_better` needs a higher MAP@R), an index is built with the new
//!    model aside, saved, recorded as active, and swapped in
//!    (`models::swap_in`). Not promoted: the model is recorded, inactive, and
//!    can be activated later.
//!
//! Cancel is checked between steps of every stage and once more before the
//! model is recorded as active: a canceled job leaves the active generation
//! untouched. Checkpoints for a job resumed after a restart: the feature cache,
//! and the trained head (saved under the job's artifacts folder with the item
//! set it was trained on), so a resumed job skips training when it had finished.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::{CancelFlag, JobFailure, JobResult, Reporter};
use crate::app::AppState;
use crate::db::items::ItemRecord;
use crate::db::jobs::Job;
use crate::db::models::NewModel;
use crate::eval::Metrics;
use crate::generation::ModelHandle;
use crate::model::projection::Projection;
use crate::models;
use crate::train::{
    EmbeddingHead, MinedPairs, Mining, OfflineMiningParams, TrainError, TrainParams, TrainRng, mine_offline, train_head,
};

/// The triplet selection of a finetune job (API.md: `mining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MiningMode {
    /// Offline-mined hard positives injected into every batch, batch-hard inside it.
    #[serde(rename = "offline+online")]
    OfflineOnline,
    #[serde(rename = "batch-hard")]
    BatchHard,
    #[serde(rename = "batch-all")]
    BatchAll,
    #[serde(rename = "semi-hard")]
    SemiHard,
    #[serde(rename = "random")]
    Random,
}

/// When a trained model is activated (API.md: `promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Promote {
    IfBetter,
    Always,
    Never,
}

/// A finetune job's params: the `[finetune]` settings, overridden key by key
/// by the request's `params`. Stored resolved in the job, so a resumed job and
/// a reader of `GET /jobs/{id}` see exactly what ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneParams {
    pub mining: MiningMode,
    pub epochs: usize,
    pub margin: f64,
    pub soft_margin: bool,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub batch_classes: usize,
    pub batch_per_class: usize,
    pub embedding_dim: usize,
    pub seed: u64,
    pub holdout: f64,
    pub max_eval_queries: usize,
    pub promote: Promote,
    pub positive_quantile: f64,
    pub negative_quantile: f64,
    pub max_mined_items: usize,
}

impl FinetuneParams {
    /// `defaults` overridden by the keys of `request` (an object, or null for
    /// none), checked. The error names the offending key.
    pub fn resolve(defaults: &Self, request: &Value) -> Result<Self, String> {
        let mut merged = serde_json::to_value(defaults).map_err(|e| e.to_string())?;
        match request {
            Value::Null => {}
            Value::Object(overrides) => {
                let target = merged.as_object_mut().ok_or("defaults are not an object")?;
                for (key, value) in overrides {
                    target.insert(key.clone(), value.clone());
                }
            }
            _ => return Err("params must be a JSON object".into()),
        }
        let params: Self = serde_json::from_value(merged).map_err(|e| format!("invalid params: {e}"))?;
        params.check()?;
        Ok(params)
    }

    fn check(&self) -> Result<(), String> {
        let rules: [(&str, bool, &str); 13] = [
            ("epochs", (1..=10_000).contains(&self.epochs), "1 to 10000"),
            ("margin", self.margin > 0.0 && self.margin <= 2.0, "above 0 and at most 2"),
            ("learning_rate", self.learning_rate > 0.0 && self.learning_rate <= 1.0, "above 0 and at most 1"),
            ("weight_decay", (0.0..=1.0).contains(&self.weight_decay), "0 to 1"),
            ("batch_classes", (2..=1024).contains(&self.batch_classes), "2 to 1024"),
            ("batch_per_class", (2..=1024).contains(&self.batch_per_class), "2 to 1024"),
            ("embedding_dim", (2..=4096).contains(&self.embedding_dim), "2 to 4096"),
            ("holdout", self.holdout > 0.0 && self.holdout <= 0.5, "above 0 and at most 0.5"),
            ("max_eval_queries", self.max_eval_queries >= 1, "at least 1"),
            ("positive_quantile", (0.0..=1.0).contains(&self.positive_quantile), "0 to 1"),
            ("negative_quantile", (0.0..=1.0).contains(&self.negative_quantile), "0 to 1"),
            ("max_mined_items", (2..=100_000).contains(&self.max_mined_items), "2 to 100000"),
            (
                "batch_classes",
                self.batch_classes.saturating_mul(self.batch_per_class) <= 65_536,
                "with batch_per_class, at most 65536 items per batch",
            ),
        ];
        match rules.iter().find(|(_, ok, _)| !ok) {
            Some((key, _, range)) => Err(format!("params.{key} must be {range}")),
            None => Ok(()),
        }
    }

    fn train_params(&self, input_dim: usize, batch_classes: usize) -> TrainParams {
        let (mining, offline_injection) = match self.mining {
            MiningMode::OfflineOnline => (Mining::BatchHard, true),
            MiningMode::BatchHard => (Mining::BatchHard, false),
            MiningMode::BatchAll => (Mining::BatchAll, false),
            MiningMode::SemiHard => (Mining::SemiHard, false),
            MiningMode::Random => (Mining::Random, false),
        };
        TrainParams {
            mining,
            offline_injection,
            epochs: self.epochs,
            margin: self.margin as f32,
            soft_margin: self.soft_margin,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            batch_classes,
            batch_per_class: self.batch_per_class,
            input_dim,
            embedding_dim: self.embedding_dim,
            seed: self.seed,
        }
    }

    fn mining_params(&self) -> OfflineMiningParams {
        OfflineMiningParams {
            positive_quantile: self.positive_quantile as f32,
            negative_quantile: self.negative_quantile as f32,
            max_exact_items: self.max_mined_items,
            seed: self.seed,
            ..OfflineMiningParams::default()
        }
    }
}

/// Stream of the job's seed that splits off the held-out items.
const HOLDOUT_STREAM: u64 = 0x686f6c64;
/// Stream of the job's seed that samples the evaluation queries.
const EVAL_STREAM: u64 = 0x6576616c;

/// Training and held-out items, as indices into the job's item list.
#[derive(Debug)]
pub struct Split {
    pub train: Vec<usize>,
    pub holdout: Vec<usize>,
}

/// Holds out `round(fraction · n)` items of each label of `n` items, chosen by
/// a seeded shuffle, but always leaves at least two to train on; labels with
/// fewer than three items are not held out at all (they could not be both a
/// query and have a positive left to find).
pub fn holdout_split(labels: &[u32], fraction: f64, seed: u64) -> Split {
    let mut by_label: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (index, &label) in labels.iter().enumerate() {
        by_label.entry(label).or_default().push(index);
    }
    let mut rng = TrainRng::for_stream(seed, HOLDOUT_STREAM);
    let (mut train, mut holdout) = (Vec::new(), Vec::new());
    for mut members in by_label.into_values() {
        rng.shuffle(&mut members);
        let n = members.len();
        let held = if n < 3 { 0 } else { ((fraction * n as f64).round() as usize).clamp(1, n - 2) };
        holdout.extend_from_slice(&members[..held]);
        train.extend_from_slice(&members[held..]);
    }
    train.sort_unstable();
    holdout.sort_unstable();
    Split { train, holdout }
}

pub fn run(state: &AppState, job: &Job, cancel: &CancelFlag) -> JobResult {
    let params = FinetuneParams::resolve(&state.settings.finetune, &job.params)
        .map_err(|message| JobFailure::failed("invalid_params", message))?;
    let runtime = Handle::current();
    let started = Instant::now();
    let mut timings = BTreeMap::new();
    let mut report = Reporter::new(state, job, &runtime);
    let dataset = state
        .dataset(&job.dataset)
        .ok_or_else(|| JobFailure::failed("dataset_not_found", "the dataset was deleted"))?;
    let artifacts = state.data_dir().join("artifacts").join(&job.id);
    std::fs::create_dir_all(&artifacts).map_err(anyhow::Error::from)?;

    // 1. Features of every live item.
    let stage = Instant::now();
    report.stage("features", 0.0, json!({}));
    let records = runtime.block_on(state.db.all_items(&job.dataset)).map_err(anyhow::Error::from)?;
    let features = models::features_of(state, &job.dataset, &records, cancel, &mut |done, total| {
        report.progress(
            "features",
            0.2 * done as f64 / total.max(1) as f64,
            json!({"embedded": done, "to_embed": total}),
        );
    })?;
    timings.insert("features", stage.elapsed().as_secs_f64());

    // 2. Split and offline mining.
    let stage = Instant::now();
    report.stage("mining", 0.2, json!({}));
    let (label_names, labels) = label_ids(&records);
    let split = holdout_split(&labels, params.holdout, params.seed);
    let backbone_dim = state.embedder.model().dim;
    let train_features = gather(&features, &split.train);
    let train_labels: Vec<u32> = split.train.iter().map(|&i| labels[i]).collect();
    let eligible_labels = count_eligible_labels(&train_labels);
    if eligible_labels < 2 || split.holdout.is_empty() {
        return Err(JobFailure::failed(
            "dataset_too_small",
            format!(
                "fine-tuning needs at least 2 labels with 2 training items each and held-out items to evaluate on; \
                 this dataset has {eligible_labels} such labels and {} held-out items",
                split.holdout.len()
            ),
        ));
    }
    cancel.check()?;
    let mined = mine_offline(&train_features, backbone_dim, &train_labels, &params.mining_params())
        .map_err(|e| JobFailure::failed("mining_failed", e.to_string()))?;
    write_artifact(
        state,
        &runtime,
        job,
        &artifacts,
        "mined-pairs.json",
        &mined_pairs_json(state, &mined, &split, &records)?,
    )?;
    let title = format!("{}: pretrained distances of {} anchors", job.dataset, mined.stats.anchors);
    let histogram = crate::train::plot::distance_histogram_png(&mined.histogram, &mined.thresholds, &title)?;
    write_artifact(state, &runtime, job, &artifacts, "distance-histogram.png", &histogram)?;
    timings.insert("mining", stage.elapsed().as_secs_f64());

    // 3. Training (or its checkpoint).
    let stage = Instant::now();
    let batch_classes = params.batch_classes.min(eligible_labels);
    let train_params = params.train_params(backbone_dim, batch_classes);
    let checkpoint = Checkpoint::new(&artifacts, &records, &params);
    let trained = match checkpoint.load() {
        Some(trained) => {
            tracing::info!(job = %job.id, "resuming from the trained head checkpoint");
            trained
        }
        None => {
            let trained = train(&mut report, cancel, &train_features, &train_labels, &mined, &train_params)?;
            checkpoint.save(&trained)?;
            trained
        }
    };
    let title = format!("{}: triplet loss, {} mining", job.dataset, mining_name(params.mining));
    write_artifact(
        state,
        &runtime,
        job,
        &artifacts,
        "loss-curve.png",
        &crate::train::plot::loss_curve_png(&trained.losses, &title)?,
    )?;
    timings.insert("training", stage.elapsed().as_secs_f64());

    // 4. Held-out evaluation, before and after.
    let stage = Instant::now();
    cancel.check()?;
    report.stage("evaluating", 0.8, json!({}));
    let mut queries = split.holdout.clone();
    if queries.len() > params.max_eval_queries {
        TrainRng::for_stream(params.seed, EVAL_STREAM).shuffle(&mut queries);
        queries.truncate(params.max_eval_queries);
        queries.sort_unstable();
    }
    let active = dataset.generation.load().model();
    let new_head = Arc::new(Projection::from_head(&trained.head)?);
    let before = evaluate(&active, &features, &labels, &queries, &split.train)?;
    cancel.check()?;
    let model_id = model_id_for(&job.id);
    let new_model = ModelHandle { id: model_id.clone(), backbone: active.backbone.clone(), head: Some(new_head) };
    let after = evaluate(&new_model, &features, &labels, &queries, &split.train)?;
    timings.insert("evaluating", stage.elapsed().as_secs_f64());
    let promoted = match params.promote {
        Promote::Always => true,
        Promote::Never => false,
        Promote::IfBetter => after.map_at_r > before.map_at_r,
    };

    // 5. Record the model; when promoted, build its index and swap it in.
    cancel.check()?;
    let model_dir = models::model_dir(state.data_dir(), &job.dataset, &new_model.id);
    let meta = json!({
        "id": new_model.id, "parent": active.id, "backbone": active.backbone,
        "input_size": state.embedder.model().input_size, "dim": params.embedding_dim, "job": job.id,
        "params": params, "eval": {"before": before, "after": after},
    });
    models::save_head(&model_dir, &trained.head, &meta)?;
    let model_row = NewModel {
        id: &new_model.id,
        parent: Some(&active.id),
        backbone: &active.backbone,
        dim: params.embedding_dim,
        eval: Some(&after),
        job: Some(&job.id),
    };
    runtime
        .block_on(async {
            if state.db.get_model(&job.dataset, &new_model.id).await?.is_none() {
                state.db.insert_model(&job.dataset, &model_row).await?;
            }
            state.db.set_model_eval(&job.dataset, &active.id, &before).await
        })
        .map_err(anyhow::Error::from)?;
    if promoted {
        let stage = Instant::now();
        report.stage("indexing", 0.85, json!({}));
        let probes: Vec<(u64, Vec<f32>)> = records
            .iter()
            .zip(&features)
            .step_by((records.len() / 16).max(1))
            .map(|(r, f)| (r.seq, f.clone()))
            .collect();
        let (generation, built) =
            models::build_generation(state, new_model, &records, features, cancel, &mut |done, total| {
                report.progress(
                    "indexing",
                    0.85 + 0.13 * done as f64 / total.max(1) as f64,
                    json!({"indexed": done, "items": total}),
                );
            })?;
        let probes: Vec<(u64, &[f32])> = probes.iter().map(|(seq, f)| (*seq, f.as_slice())).collect();
        models::check_generation(&generation, &built, &probes)?;
        generation.save(&dataset.index_dir(&model_id))?;
        timings.insert("indexing", stage.elapsed().as_secs_f64());
        cancel.check()?;
        report.stage("swapping", 0.98, json!({}));
        runtime.block_on(state.db.activate_model(&job.dataset, &model_id)).map_err(anyhow::Error::from)?;
        models::swap_in(state, &dataset, generation, &built)?;
    }
    timings.insert("total", started.elapsed().as_secs_f64());
    Ok(json!({
        "model": model_id,
        "parent": active.id,
        "promoted": promoted,
        "eval": {"before": before, "after": after, "queries": queries.len(), "gallery": split.train.len()},
        "mining": {
            "mode": mining_name(params.mining),
            "thresholds": mined.thresholds,
            "stats": mined.stats,
            "hard_positives": mined.hard_positives.len(),
            "hard_negatives": mined.hard_negatives.len(),
            "anchors_with_injected_positive": mined.injected_positives().len(),
        },
        "training": {
            "steps": trained.steps,
            "final_loss": trained.final_loss,
            "batch_classes": batch_classes,
            "batch_per_class": params.batch_per_class,
            "train_items": split.train.len(),
            "labels": label_names.len(),
        },
        "seconds": timings,
    }))
}

/// A trained model is named after the job that trained it.
fn model_id_for(job_id: &str) -> String {
    let compact: String = job_id.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    format!("ft-{compact}")
}

fn mining_name(mode: MiningMode) -> String {
    serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Labels as dense ids (sorted names), and each record's id.
fn label_ids(records: &[ItemRecord]) -> (Vec<String>, Vec<u32>) {
    let names: Vec<String> =
        records.iter().map(|r| r.item.label.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let ids: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    let labels = records.iter().map(|r| ids[r.item.label.as_str()]).collect();
    (names, labels)
}

fn count_eligible_labels(labels: &[u32]) -> usize {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    labels.iter().for_each(|&l| *counts.entry(l).or_default() += 1);
    counts.values().filter(|&&n| n >= 2).count()
}

/// The rows `indices` of `features`, flattened.
fn gather(features: &[Vec<f32>], indices: &[usize]) -> Vec<f32> {
    indices.iter().flat_map(|&i| features[i].iter().copied()).collect()
}

/// Runs the trainer, reporting each step (throttled) and stopping on cancel.
fn train(
    report: &mut Reporter,
    cancel: &CancelFlag,
    features: &[f32],
    labels: &[u32],
    mined: &MinedPairs,
    params: &TrainParams,
) -> Result<crate::train::TrainedHead, JobFailure> {
    let injected = params.offline_injection.then(|| mined.injected_positives());
    let items = labels.len();
    let steps = params.epochs * (items / (params.batch_classes * params.batch_per_class)).max(1);
    report.stage("training", 0.3, json!({"epoch": 0, "epochs": params.epochs, "step": 0, "steps": steps}));
    let mut observer = |step: &crate::train::StepReport, _: &EmbeddingHead| {
        if cancel.is_canceled() {
            return ControlFlow::Break(());
        }
        let detail = json!({
            "epoch": step.epoch + 1, "epochs": params.epochs, "step": step.step + 1, "steps": steps,
            "loss": step.loss, "mean_positive_distance": step.mean_positive_distance,
            "mean_negative_distance": step.mean_negative_distance, "active_triplets": step.active_triplets,
        });
        report.progress("training", 0.3 + 0.5 * (step.step + 1) as f64 / steps as f64, detail);
        ControlFlow::Continue(())
    };
    train_head(features, labels, injected.as_ref(), params, &mut observer).map_err(|err| match err {
        TrainError::Canceled { .. } => JobFailure::Canceled,
        TrainError::Collapsed { .. } => JobFailure::failed("training_collapsed", err.to_string()),
        TrainError::Diverged { .. } => JobFailure::failed("training_diverged", err.to_string()),
        TrainError::InvalidInput(_) | TrainError::Sampler(_) | TrainError::Mining(_) => {
            JobFailure::failed("invalid_params", err.to_string())
        }
        TrainError::Tensor(_) => JobFailure::failed("internal", err.to_string()),
    })
}

/// Held-out metrics of `model`: `queries` search `gallery` (both indices into
/// `features` and `labels`) exactly.
fn evaluate(
    model: &ModelHandle,
    features: &[Vec<f32>],
    labels: &[u32],
    queries: &[usize],
    gallery: &[usize],
) -> Result<Metrics, JobFailure> {
    let embed = |indices: &[usize]| -> Vec<f32> {
        match &model.head {
            Some(head) => {
                let rows: Vec<&[f32]> = indices.iter().map(|&i| features[i].as_slice()).collect();
                head.project_many(&rows).into_iter().flatten().collect()
            }
            None => gather(features, indices),
        }
    };
    let dim = model.dim(features.first().map_or(0, Vec::len));
    let query_labels: Vec<u32> = queries.iter().map(|&i| labels[i]).collect();
    let gallery_labels: Vec<u32> = gallery.iter().map(|&i| labels[i]).collect();
    let report =
        crate::train::retrieval::evaluate(&embed(queries), &query_labels, &embed(gallery), &gallery_labels, dim)?;
    Ok(report.metrics)
}

/// The mined pairs as item ids, with the model that mined them.
fn mined_pairs_json(
    state: &AppState,
    mined: &MinedPairs,
    split: &Split,
    records: &[ItemRecord],
) -> Result<Vec<u8>, JobFailure> {
    let id = |train_index: usize| records[split.train[train_index]].item.item_id.as_str();
    let pairs = |list: &[(usize, usize)]| -> Vec<[&str; 2]> { list.iter().map(|&(a, b)| [id(a), id(b)]).collect() };
    let body = json!({
        "model": state.embedder.model().id,
        "input_size": state.embedder.model().input_size,
        "thresholds": mined.thresholds,
        "stats": mined.stats,
        "histogram": mined.histogram,
        "hard_positives": pairs(&mined.hard_positives),
        "hard_negatives": pairs(&mined.hard_negatives),
    });
    Ok(serde_json::to_vec(&body).map_err(anyhow::Error::from)?)
}

fn write_artifact(
    state: &AppState,
    runtime: &Handle,
    job: &Job,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), JobFailure> {
    crate::storage::write_atomic(&dir.join(name), bytes, true).map_err(anyhow::Error::from)?;
    runtime.block_on(state.db.add_job_artifact(&job.id, name)).map_err(anyhow::Error::from)?;
    Ok(())
}

/// The trained head of an interrupted job, valid for the same items.
struct Checkpoint {
    dir: PathBuf,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct CheckpointMeta {
    key: String,
    steps: usize,
    final_loss: f32,
    losses: Vec<f32>,
}

impl Checkpoint {
    fn new(artifacts: &Path, records: &[ItemRecord], params: &FinetuneParams) -> Self {
        let mut hasher = Sha256::new();
        for record in records {
            hasher.update(record.seq.to_le_bytes());
        }
        hasher.update(serde_json::to_vec(params).unwrap_or_default());
        Self { dir: artifacts.join("checkpoint"), key: hex::encode(hasher.finalize()) }
    }

    fn load(&self) -> Option<crate::train::TrainedHead> {
        let meta: CheckpointMeta = serde_json::from_slice(&std::fs::read(self.dir.join("meta.json")).ok()?).ok()?;
        if meta.key != self.key {
            return None;
        }
        let head = EmbeddingHead::load(self.dir.join(models::HEAD_FILE), &candle_core::Device::Cpu).ok()?;
        Some(crate::train::TrainedHead { head, steps: meta.steps, final_loss: meta.final_loss, losses: meta.losses })
    }

    fn save(&self, trained: &crate::train::TrainedHead) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let head_path = self.dir.join(models::HEAD_FILE);
        trained.head.save(&head_path)?;
        std::fs::File::open(&head_path)?.sync_all()?;
        let meta = CheckpointMeta {
            key: self.key.clone(),
            steps: trained.steps,
            final_loss: trained.final_loss,
            losses: trained.losses.clone(),
        };
        crate::storage::write_atomic(&self.dir.join("meta.json"), &serde_json::to_vec(&meta)?, true)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> FinetuneParams {
        let settings: crate::config::Settings = crate::config::Settings::load(None).expect("embedded defaults load");
        settings.finetune
    }

    #[test]
    fn params_override_defaults_and_name_bad_keys() {
        let defaults = defaults();
        assert_eq!(defaults.mining, MiningMode::OfflineOnline);
        let params = FinetuneParams::resolve(&defaults, &json!({"mining": "semi-hard", "epochs": 3})).unwrap();
        assert_eq!((params.mining, params.epochs, params.margin), (MiningMode::SemiHard, 3, defaults.margin));
        assert_eq!(serde_json::to_value(&params).unwrap()["margin"], json!(0.2), "shown as written, not as f32 noise");
        for (bad, named) in [
            (json!({"mining": "hardest"}), "unknown variant"),
            (json!({"epochs": 0}), "params.epochs"),
            (json!({"holdout": 0.9}), "params.holdout"),
            (json!({"learning_rate": -1}), "params.learning_rate"),
            (json!({"epochs": "ten"}), "invalid params"),
            (json!({"epoch": 3}), "unknown field `epoch`"),
            (json!([1, 2]), "must be a JSON object"),
        ] {
            let err = FinetuneParams::resolve(&defaults, &bad).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }

    #[test]
    fn holdout_keeps_two_per_label_and_is_seeded() {
        let labels: Vec<u32> = [vec![0; 10], vec![1; 3], vec![2; 2]].concat();
        let split = holdout_split(&labels, 0.2, 7);
        let held: Vec<u32> = split.holdout.iter().map(|&i| labels[i]).collect();
        assert_eq!(held.iter().filter(|&&l| l == 0).count(), 2, "20% of 10");
        assert_eq!(held.iter().filter(|&&l| l == 1).count(), 1, "at least one when three or more");
        assert_eq!(held.iter().filter(|&&l| l == 2).count(), 0, "two items: none held out");
        let mut all: Vec<usize> = split.train.iter().chain(&split.holdout).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>(), "a partition");
        assert_eq!(holdout_split(&labels, 0.2, 7).holdout, split.holdout);
        assert_ne!(holdout_split(&labels, 0.2, 8).holdout, split.holdout);
    }
}
