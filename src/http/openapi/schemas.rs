//! Doc-only shapes: JSON the jobs write as free-form values (a job's `params` and `result`),
//! described for the document. Nothing is built from these types; `tests/it/openapi.rs` checks
//! that `FinetuneParams` names the same keys as the real one (`train::params::FinetuneParams`).

#![allow(dead_code)]

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use crate::train::retrieval::Metrics;

/// A finetune job's `params`. All optional; the defaults (shown) are the server's `[finetune]`
/// settings, and the job shows the resolved params it runs with. Unknown keys are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinetuneParams {
    /// How triplets are chosen: offline-mined hard positives injected into every batch with
    /// batch-hard inside it (`offline+online`), or one online rule alone.
    #[schema(value_type = Option<String>, pattern = "^(offline\\+online|batch-hard|batch-all|semi-hard|random)$", default = "offline+online")]
    mining: Option<String>,
    /// Passes over the training items, each items / (P·K) batches.
    #[schema(minimum = 1, maximum = 10000, default = 5)]
    epochs: Option<u32>,
    /// Triplet hinge margin on the unit sphere (distances lie in 0..2).
    #[schema(exclusive_minimum = 0.0, maximum = 2.0, default = 0.2)]
    margin: Option<f64>,
    /// softplus(d_ap − d_an) instead of the hinge.
    #[schema(default = false)]
    soft_margin: Option<bool>,
    #[schema(exclusive_minimum = 0.0, maximum = 1.0, default = 0.001)]
    learning_rate: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0, default = 0.01)]
    weight_decay: Option<f64>,
    /// P: labels per batch (lowered to the labels there are).
    #[schema(minimum = 2, maximum = 1024, default = 8)]
    batch_classes: Option<u32>,
    /// K: items per label in a batch.
    #[schema(minimum = 2, maximum = 1024, default = 4)]
    batch_per_class: Option<u32>,
    /// Length of the fine-tuned embedding.
    #[schema(minimum = 2, maximum = 4096, default = 128)]
    embedding_dim: Option<u32>,
    #[schema(minimum = 0, default = 0)]
    seed: Option<u64>,
    /// Fraction of each label's items held out of training to evaluate on (at least 2 per label
    /// stay in training).
    #[schema(exclusive_minimum = 0.0, maximum = 0.5, default = 0.1)]
    holdout: Option<f64>,
    /// Held-out queries evaluated at most (a seeded sample above it).
    #[schema(minimum = 1, default = 2000)]
    max_eval_queries: Option<u32>,
    /// When the trained model is activated: `if_better` (its held-out MAP@R beats the active
    /// model's, and its Recall@1 and Recall@5 are each no more than their noise margin lower),
    /// `always` or `never`.
    #[schema(value_type = Option<String>, pattern = "^(if_better|always|never)$", default = "if_better")]
    promote: Option<String>,
    /// How far `if_better` lets held-out Recall@1 and Recall@5 fall at least; each recall's noise
    /// margin is the larger of this and its standard error over the held-out queries.
    #[schema(minimum = 0.0, maximum = 1.0, default = 0.005)]
    recall_tolerance: Option<f64>,
    /// Same-label pairs farther than this quantile of all positive distances are hard positives.
    #[schema(minimum = 0.0, maximum = 1.0, default = 0.9)]
    positive_quantile: Option<f64>,
    /// Other-label pairs nearer than this quantile of all negative distances are hard negatives.
    #[schema(minimum = 0.0, maximum = 1.0, default = 0.1)]
    negative_quantile: Option<f64>,
    /// Above this many training items, offline mining runs on a seeded subset of this size.
    #[schema(minimum = 2, maximum = 100000, default = 10000)]
    max_mined_items: Option<u32>,
    /// Backbone blocks trained with the head, counted from the last (0: the head alone), or
    /// `"all"`.
    #[schema(example = 1, default = 3)]
    trainable_blocks: Option<serde_json::Value>,
    /// AdamW learning rate of the trained blocks (the head keeps `learning_rate`).
    #[schema(exclusive_minimum = 0.0, maximum = 1.0, default = 0.0001)]
    backbone_learning_rate: Option<f64>,
    /// Train the blocks from randomly cropped, flipped and colour-jittered images (seeded) instead
    /// of the cached block inputs. Needs `trainable_blocks` above 0.
    #[schema(default = false)]
    augment: Option<bool>,
    /// Share α of the pretrained geometry the new embedding keeps: `[√α·pretrained feature ;
    /// √(1−α)·trained embedding]`.
    #[schema(minimum = 0.0, exclusive_maximum = 1.0, default = 0.25)]
    pretrained_share: Option<f64>,
    /// How the learning rates move over the run: `constant`, or `cosine` down to 0 at the last step.
    #[schema(value_type = Option<String>, pattern = "^(constant|cosine)$", default = "cosine")]
    lr_schedule: Option<String>,
    /// Weight of the term that holds the batch's distances near the same items' pretrained-feature
    /// distances (0: triplets alone).
    #[schema(minimum = 0.0, maximum = 100.0, default = 0.0)]
    geometry_weight: Option<f64>,
    /// Wall-clock seconds training may take per 10,000 catalogue items, and at least this many:
    /// when the steps of `epochs` would take longer at the pace of the first steps, fewer run and
    /// the schedule ends on the last. Null: no limit.
    #[schema(exclusive_minimum = 0.0, maximum = 604800.0, default = 450.0)]
    training_seconds_per_10k_items: Option<f64>,
}

/// A reindex job's `params`: the model to serve the dataset with.
#[derive(ToSchema)]
pub struct ReindexParams {
    /// A model id from `GET /datasets/{name}/models`.
    model: String,
}

/// An ingest job's `result`.
#[derive(ToSchema)]
pub struct IngestResult {
    /// Images found in the archive.
    images: u64,
    /// Images stored, embedded and indexed.
    ingested: u64,
    /// Entries left out (undecodable images, bad ids or labels, duplicates).
    skipped: u64,
    /// Why entries were left out (the first ones).
    skipped_reasons: Vec<SkippedEntry>,
    seconds: f64,
    images_per_second: f64,
    /// Seconds per stage: `read`, `decode`, `store`, `embed`, `database`, `index`, `save`.
    stage_seconds: BTreeMap<String, f64>,
}

/// An archive entry that was not ingested.
#[derive(ToSchema)]
pub struct SkippedEntry {
    /// Its path inside the archive.
    path: String,
    reason: String,
}

/// A finetune job's `result`. Its artifacts are `distance-histogram.png`, `loss-curve.png` and
/// `mined-pairs.json`.
#[derive(ToSchema)]
pub struct FinetuneResult {
    /// The trained model's id.
    model: String,
    /// The model that was active when the job evaluated (its `before`).
    parent: String,
    /// Whether the trained model now serves the dataset.
    promoted: bool,
    /// Which rule of `promote` decided, in words, with the figures it read.
    decision: String,
    /// That rule by name.
    #[schema(value_type = String, pattern = "^(better|map_did_not_rise|recall1_fell|recall5_fell|always|never)$")]
    rule: (),
    eval: FinetuneEval,
    /// Offline mining: `mode`, `thresholds` (positive, negative, valley), `stats`, and the counts
    /// `hard_positives`, `hard_negatives`, `anchors_with_injected_positive`.
    #[schema(value_type = Object)]
    mining: (),
    /// Training: `trainable_blocks`, `steps`, `planned_steps` (more than `steps` when
    /// the time budget cut the run), `max_training_seconds` (that budget), `final_loss`, `batch_classes`,
    /// `batch_per_class`, `train_items`, `labels`.
    #[schema(value_type = Object)]
    training: (),
    /// Wall time per stage, and `total`, in seconds.
    seconds: BTreeMap<String, f64>,
}

/// Held-out metrics of the active model (`before`) and the trained one (`after`).
#[derive(ToSchema)]
pub struct FinetuneEval {
    before: Metrics,
    after: Metrics,
    /// Held-out queries evaluated.
    queries: u64,
    /// Items they were searched among.
    gallery: u64,
}

/// A reindex job's `result`.
#[derive(ToSchema)]
pub struct ReindexResult {
    /// The model now serving the dataset.
    model: String,
    items: u64,
    /// Whether the model's saved index was loaded instead of built.
    reused_index: bool,
    seconds: f64,
}

/// The schema of `CreateJob.params`: finetune or reindex params.
pub fn job_params() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::{Ref, schema::AnyOfBuilder};
    let params = AnyOfBuilder::new()
        .item(Ref::from_schema_name("FinetuneParams"))
        .item(Ref::from_schema_name("ReindexParams"))
        .description(Some("`FinetuneParams` for finetune; `ReindexParams` (`{\"model\": model_id}`) for reindex."));
    params.build().into()
}
