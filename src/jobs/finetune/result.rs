//! What a finetune job records as its `result` (API.md: the finetune job's result).

use std::collections::BTreeMap;

use serde::Serialize;

use super::evaluation;
use crate::train::retrieval::Metrics;
use crate::train::{MiningStats, Thresholds};

/// What a finetune job records as its `result`.
#[derive(Debug, Serialize)]
pub struct FinetuneResult {
    /// The trained model's id.
    pub model: String,
    /// The model that was active when the job evaluated (its `before`).
    pub parent: String,
    pub promoted: bool,
    /// Which rule of `promote` decided, in words.
    pub decision: String,
    /// That rule by name (`better`, `map_did_not_rise`, `recall1_fell`, `recall5_fell`, `always`,
    /// `never`).
    pub rule: evaluation::Rule,
    pub eval: EvalSummary,
    pub mining: MiningSummary,
    pub training: TrainingSummary,
    /// Seconds per stage, and `total`.
    pub seconds: BTreeMap<&'static str, f64>,
}

#[derive(Debug, Serialize)]
pub struct EvalSummary {
    pub before: Metrics,
    pub after: Metrics,
    pub queries: usize,
    pub gallery: usize,
}

#[derive(Debug, Serialize)]
pub struct MiningSummary {
    pub mode: String,
    pub thresholds: Thresholds,
    pub stats: MiningStats,
    pub hard_positives: usize,
    pub hard_negatives: usize,
    pub anchors_with_injected_positive: usize,
}

#[derive(Debug, Serialize)]
pub struct TrainingSummary {
    /// Backbone blocks trained with the head (0: the head alone).
    pub trainable_blocks: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// The steps `epochs` asked for; more than `steps` when the time budget cut the run.
    pub planned_steps: usize,
    /// The time budget training ran under, from `training_seconds_per_10k_items` (`None`: no
    /// limit).
    pub max_training_seconds: Option<f64>,
    pub final_loss: f32,
    pub batch_classes: usize,
    pub batch_per_class: usize,
    pub train_items: usize,
    pub labels: usize,
}
