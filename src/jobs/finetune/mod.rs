//! The `finetune` job: learn the catalogue, prove it on held-out items, and
//! swap the better model into service.
//!
//! Stages, in order (each is the job's `stage`; `progress` runs through the
//! ranges below and `detail` carries the stage's figures), one function each:
//! 1. [`features`] (0–20%): every live item's backbone features, from the
//!    feature cache (written by ingest), embedding only what it lacks; with
//!    `trainable_blocks` above 0 also the activations entering the first trained
//!    block, from their own cache (ingest writes the default's).
//! 2. [`mining`] (20–30%): a seeded per-label split holds out `holdout` of each
//!    label's items ([`split`]); offline hard-example mining over the training
//!    items' pretrained features (`train::offline`: global quantile thresholds on
//!    the anchor–positive and anchor–negative distance distributions). Writes
//!    `distance-histogram.png` and `mined-pairs.json`.
//! 3. [`training`] (30–80%): the embedding head is trained on cached features
//!    (with `trainable_blocks`, the last blocks and head convolution with it, on
//!    the cached block inputs: `train::tail`)
//!    with P×K batches and the triplet loss (`train::trainer`); in the default
//!    `offline+online` mode every batch brings each anchor's mined hard
//!    positive and mines hard negatives inside the batch. Writes
//!    `loss-curve.png`. A collapsed embedding fails the job with
//!    `training_collapsed` and promotes nothing.
//! 4. [`evaluating`] (80–85%): held-out items query the training items, with
//!    the active model (before) and the new one (after): Recall@1/5/10 and
//!    MAP@R with the exact R. The new model is recorded (inactive).
//! 5. `indexing` (85–98%) and `swapping` ([`promoting`]): when promoted
//!    (`promote`: `if_better` needs a higher MAP@R and neither Recall@1 nor
//!    Recall@5 lower by more than `recall_tolerance`), an index is built with
//!    the new model aside and put into service by `generation::promote`
//!    (check → save → swap → record active). Not promoted: the model stays
//!    recorded, inactive, and can be activated later.
//!
//! Cancel is checked between steps of every stage and once more before the
//! swap: a canceled job leaves the active generation untouched. Checkpoints for
//! a job resumed after a restart: the feature cache, and the trained head
//! ([`checkpoint`]), so a resumed job skips training when it had finished.

mod checkpoint;
mod evaluation;
mod result;
pub mod split;
mod training;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::runtime::Handle;

use super::{JobResult, Reporter};
use crate::cancel::CancelFlag;
use crate::db::items::ItemRecord;
use crate::db::jobs::Job;
use crate::db::models::NewModel;
use crate::error::{ErrorCode, JobFailure};
use crate::generation::projection::Projection;
use crate::generation::{DatasetState, ModelHandle, build_generation, promote, store};
use crate::network::tail::Tail;
use crate::train::params::{FinetuneParams, check_trainable, mining_name};
use crate::train::{MinedPairs, mine_offline};
use checkpoint::Trained;
use evaluation::Evaluation;
pub use result::{EvalSummary, FinetuneResult, MiningSummary, TrainingSummary};
pub use split::{Split, holdout_split};

/// What every stage of one run reads.
struct Run<'a> {
    state: &'a crate::state::AppState,
    job: &'a Job,
    cancel: &'a CancelFlag,
    params: FinetuneParams,
    runtime: Handle,
    dataset: Arc<DatasetState>,
    artifacts: PathBuf,
}

impl Run<'_> {
    /// Writes an artifact of the job and lists it on the job.
    fn write_artifact(&self, name: &str, bytes: &[u8]) -> Result<(), JobFailure> {
        crate::storage::write_atomic(&self.artifacts.join(name), bytes, true)?;
        self.state.objects.push_file(&self.artifacts.join(name))?;
        self.runtime.block_on(self.state.db.add_job_artifact(&self.job.id, name))?;
        Ok(())
    }
}

/// The catalogue as the stages after `features` see it.
struct Catalogue {
    records: Vec<ItemRecord>,
    /// Backbone features, in `records` order.
    features: Vec<Vec<f32>>,
    /// With trained blocks: the activations entering the first, in `records` order.
    blocks: Option<Vec<Vec<f32>>>,
    /// Label id of each record; `label_names[id]` is its name.
    labels: Vec<u32>,
    label_names: Vec<String>,
}

impl Catalogue {
    /// What `model` reads of every item: the block inputs loaded for a model that trained blocks,
    /// else the features. (A model reading another block than the loaded one is the caller's.)
    fn inputs_of(&self, model: &ModelHandle) -> &[Vec<f32>] {
        match (model.boundary(), &self.blocks) {
            (Some(_), Some(blocks)) => blocks,
            _ => &self.features,
        }
    }
}

/// What the `mining` stage hands to training.
struct Mined {
    split: Split,
    /// Training items' features (flattened rows) and labels, in `split.train` order.
    train_features: Vec<f32>,
    train_labels: Vec<u32>,
    /// Labels with at least two training items: the most a P×K batch can draw.
    batch_labels: usize,
    pairs: MinedPairs,
}

pub fn run(state: &crate::state::AppState, job: &Job, cancel: &CancelFlag) -> JobResult {
    let params = FinetuneParams::resolve(&state.settings.finetune, &job.params)
        .map_err(|message| JobFailure::failed(ErrorCode::InvalidParams, message))?;
    let dataset = crate::jobs::restore::dataset_for_job(state, &job.dataset, &Handle::current())?;
    let artifacts = state.data_dir().join("artifacts").join(&job.id);
    std::fs::create_dir_all(&artifacts)?;
    let run = Run { state, job, cancel, params, runtime: Handle::current(), dataset, artifacts };
    let mut report = Reporter::new(state, job, &run.runtime);
    let started = Instant::now();
    let mut seconds = BTreeMap::new();
    let mut timed = |name: &'static str, since: Instant| {
        seconds.insert(name, since.elapsed().as_secs_f64());
    };

    let stage = Instant::now();
    let catalogue = features(&run, &mut report)?;
    timed("features", stage);
    let stage = Instant::now();
    let mined = mining(&run, &mut report, &catalogue)?;
    timed("mining", stage);
    let stage = Instant::now();
    let trained = training::run(&run, &mut report, &catalogue, &mined)?;
    timed("training", stage);
    let stage = Instant::now();
    let evaluation = evaluating(&run, &mut report, &catalogue, &mined, &trained)?;
    timed("evaluating", stage);
    let labels = catalogue.label_names.len();
    let train_params = training::train_params(&run, &catalogue, &mined);
    if evaluation.decision.promoted {
        let stage = Instant::now();
        promoting(&run, &mut report, catalogue, &evaluation.model)?;
        timed("indexing", stage);
    }
    timed("total", started);

    let result = FinetuneResult {
        model: evaluation.model.id.clone(),
        parent: evaluation.parent.id.clone(),
        promoted: evaluation.decision.promoted,
        decision: evaluation.decision.reason,
        rule: evaluation.decision.rule,
        eval: EvalSummary {
            before: evaluation.before,
            after: evaluation.after,
            queries: evaluation.queries,
            gallery: mined.split.train.len(),
        },
        mining: MiningSummary {
            mode: mining_name(run.params.mining),
            thresholds: mined.pairs.thresholds.clone(),
            stats: mined.pairs.stats.clone(),
            hard_positives: mined.pairs.hard_positives.len(),
            hard_negatives: mined.pairs.hard_negatives.len(),
            anchors_with_injected_positive: mined.pairs.injected_positives().len(),
        },
        training: TrainingSummary {
            trainable_blocks: run.params.trainable_blocks,
            steps: trained.head.steps,
            planned_steps: crate::train::planned_steps(&mined.train_labels, &train_params),
            max_training_seconds: train_params.max_seconds,
            final_loss: trained.head.final_loss,
            batch_classes: train_params.batch_classes,
            batch_per_class: run.params.batch_per_class,
            train_items: mined.split.train.len(),
            labels,
        },
        seconds,
    };
    Ok(serde_json::to_value(result).map_err(anyhow::Error::from)?)
}

/// Stage 1: every live item's backbone features.
fn features(run: &Run, report: &mut Reporter) -> Result<Catalogue, JobFailure> {
    report.stage("features", 0.0, json!({}));
    let records = run.runtime.block_on(run.state.db.all_items(&run.job.dataset))?;
    let boundary = run.params.first_trainable_block();
    let share = if boundary.is_some() { 0.1 } else { 0.2 };
    let features =
        super::features::features_of(run.state, &run.job.dataset, &records, run.cancel, &mut |done, total| {
            let progress = share * done as f64 / total.max(1) as f64;
            report.progress("features", progress, json!({"embedded": done, "to_embed": total}));
        })?;
    let blocks = match boundary {
        Some(block) => Some(super::features::model_inputs_of(
            run.state,
            &run.job.dataset,
            &records,
            Some(block),
            run.cancel,
            &mut |done, total| {
                let progress = 0.1 + 0.1 * done as f64 / total.max(1) as f64;
                report.progress("features", progress, json!({"block": block, "embedded": done, "to_embed": total}));
            },
        )?),
        None => None,
    };
    super::features::store_cache(run.state, &super::features::feature_cache(run.state, &run.job.dataset))?;
    if let Some(block) = boundary {
        super::features::store_cache(run.state, &super::features::block_cache(run.state, &run.job.dataset, block)?)?;
    }
    let (label_names, labels) = split::label_ids(&records);
    Ok(Catalogue { records, features, blocks, labels, label_names })
}

/// Stage 2: the held-out split, and offline mining over the training items.
fn mining(run: &Run, report: &mut Reporter, catalogue: &Catalogue) -> Result<Mined, JobFailure> {
    report.stage("mining", 0.2, json!({}));
    let params = &run.params;
    let mut label_sizes = vec![0usize; catalogue.label_names.len()];
    catalogue.labels.iter().for_each(|&l| label_sizes[l as usize] += 1);
    check_trainable(label_sizes).map_err(|message| JobFailure::failed(ErrorCode::DatasetTooSmall, message))?;
    let split = holdout_split(&catalogue.labels, params.holdout, params.seed);
    let train_features = split::gather(&catalogue.features, &split.train);
    let train_labels: Vec<u32> = split.train.iter().map(|&i| catalogue.labels[i]).collect();
    let batch_labels = split::count_eligible_labels(&train_labels);
    run.cancel.check()?;
    let backbone_dim = run.state.embedder.model().dim;
    let pairs = mine_offline(&train_features, backbone_dim, &train_labels, &params.mining_params())
        .map_err(|e| JobFailure::failed(ErrorCode::MiningFailed, e.to_string()))?;
    run.write_artifact("mined-pairs.json", &mined_pairs_json(run, &pairs, &split, &catalogue.records)?)?;
    let title = format!("{}: pretrained distances of {} anchors", run.job.dataset, pairs.stats.anchors);
    let histogram = crate::train::plot::distance_histogram_png(&pairs.histogram, &pairs.thresholds, &title)?;
    run.write_artifact("distance-histogram.png", &histogram)?;
    Ok(Mined { split, train_features, train_labels, batch_labels, pairs })
}

/// Stage 4: held-out figures before and after, the promotion decision, and the new model
/// recorded (inactive) with its head saved.
fn evaluating(
    run: &Run,
    report: &mut Reporter,
    catalogue: &Catalogue,
    mined: &Mined,
    trained: &Trained,
) -> Result<Evaluation, JobFailure> {
    run.cancel.check()?;
    report.stage("evaluating", 0.8, json!({}));
    let parent = run.dataset.generation.load().model.clone();
    let model = ModelHandle {
        id: model_id_for(&run.job.id),
        backbone: parent.backbone.clone(),
        head: Some(Arc::new(Projection::from_head(&trained.head.head, &run.state.device)?)),
        tail: trained.tail.as_ref().map(Tail::new).transpose()?.map(Arc::new),
        pretrained: store::pretrained_share(
            run.params.pretrained_share,
            run.params.first_trainable_block(),
            run.state.embedder.network(),
        )?,
    };
    // The active model may read another block than the new one (an earlier deep finetune).
    let parent_inputs = match parent.boundary() {
        None => None,
        Some(block) if Some(block) == run.params.first_trainable_block() => None,
        other => Some(super::features::model_inputs_of(
            run.state,
            &run.job.dataset,
            &catalogue.records,
            other,
            run.cancel,
            &mut |_, _| {},
        )?),
    };
    let parent_inputs = parent_inputs.as_deref().unwrap_or_else(|| catalogue.inputs_of(&parent));
    let model_inputs = catalogue.inputs_of(&model);
    let evaluation =
        evaluation::before_and_after(run, catalogue, &mined.split, (parent, parent_inputs), (model, model_inputs))?;
    run.cancel.check()?;
    let dim = evaluation.model.dim(run.state.embedder.model().dim);
    let meta = json!({
        "id": evaluation.model.id, "parent": evaluation.parent.id, "backbone": evaluation.parent.backbone,
        "input_size": run.state.embedder.model().input_size, "dim": dim, "job": run.job.id,
        "pretrained_share": run.params.pretrained_share,
        "trainable_blocks": run.params.trainable_blocks, "first_block": run.params.first_trainable_block(),
        "params": run.params, "eval": {"before": evaluation.before, "after": evaluation.after},
    });
    let model_dir = store::model_dir(run.state.data_dir(), &run.job.dataset, &evaluation.model.id);
    store::save_model(&model_dir, &trained.head.head, trained.tail.as_ref(), &meta)?;
    run.state.objects.push_dir(&model_dir)?;
    let row = NewModel {
        id: &evaluation.model.id,
        parent: Some(&evaluation.parent.id),
        backbone: &evaluation.parent.backbone,
        dim,
        eval: Some(&evaluation.after),
        job: Some(&run.job.id),
    };
    let db = &run.state.db;
    run.runtime.block_on(async {
        if db.get_model(&run.job.dataset, row.id).await?.is_none() {
            db.insert_model(&run.job.dataset, &row).await?;
        }
        db.set_model_eval(&run.job.dataset, &evaluation.parent.id, &evaluation.before).await
    })?;
    Ok(evaluation)
}

/// Stage 5: the new model's index, built aside, then checked, saved, swapped in and recorded.
/// Takes the catalogue: what the model reads goes into the new index without a copy.
fn promoting(run: &Run, report: &mut Reporter, catalogue: Catalogue, model: &ModelHandle) -> Result<(), JobFailure> {
    report.stage("indexing", 0.85, json!({}));
    let state = run.state;
    let inputs = match model.boundary() {
        Some(_) => catalogue.blocks.unwrap_or_default(),
        None => catalogue.features,
    };
    let candidate = build_generation(
        model.clone(),
        state.embedder.model().dim,
        &state.settings.index.params,
        &catalogue.records,
        inputs,
        run.cancel,
        &mut |done, total| {
            let progress = 0.85 + 0.13 * done as f64 / total.max(1) as f64;
            report.progress("indexing", progress, json!({"indexed": done, "items": total}));
        },
    )?;
    report.stage("swapping", 0.98, json!({}));
    let boundary = model.boundary();
    promote(&state.db, &state.objects, &run.dataset, candidate, run.cancel, &mut |records| {
        super::features::model_inputs_of(
            state,
            &run.job.dataset,
            records,
            boundary,
            &CancelFlag::default(),
            &mut |_, _| {},
        )
    })
}

/// A trained model is named after the job that trained it.
fn model_id_for(job_id: &str) -> String {
    let compact: String = job_id.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
    format!("ft-{compact}")
}

/// The mined pairs as item ids, with the model that mined them.
fn mined_pairs_json(
    run: &Run,
    mined: &MinedPairs,
    split: &Split,
    records: &[ItemRecord],
) -> Result<Vec<u8>, JobFailure> {
    let id = |train_index: usize| records[split.train[train_index]].item.item_id.as_str();
    let pairs = |list: &[(usize, usize)]| -> Vec<[&str; 2]> { list.iter().map(|&(a, b)| [id(a), id(b)]).collect() };
    let model = run.state.embedder.model();
    let body = json!({
        "model": model.id,
        "input_size": model.input_size,
        "thresholds": mined.thresholds,
        "stats": mined.stats,
        "histogram": mined.histogram,
        "hard_positives": pairs(&mined.hard_positives),
        "hard_negatives": pairs(&mined.hard_negatives),
    });
    Ok(serde_json::to_vec(&body).map_err(anyhow::Error::from)?)
}
