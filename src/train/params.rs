//! A finetune job's params ([`FinetuneParams`]): the `[finetune]` settings overridden key by key
//! by the request, checked, and turned into the trainer's and the offline miner's params. Also
//! the one rule of how large a dataset must be to fine-tune on ([`check_trainable`]), applied
//! both when a job is requested and when it runs.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LrSchedule, Mining, OfflineMiningParams, TrainParams};
use crate::network::lite0::BLOCKS;

/// A label takes part in fine-tuning with at least this many items: one held out to evaluate
/// on, and two to train on (an anchor and its positive).
pub const MIN_ITEMS_PER_LABEL: usize = 3;
/// Labels of at least [`MIN_ITEMS_PER_LABEL`] items needed: a triplet needs a negative label.
pub const MIN_LABELS: usize = 2;

/// Checks that a dataset whose labels hold `label_sizes` items can be fine-tuned on; the error
/// says what is missing.
pub fn check_trainable(label_sizes: impl IntoIterator<Item = usize>) -> Result<(), String> {
    let usable = label_sizes.into_iter().filter(|&n| n >= MIN_ITEMS_PER_LABEL).count();
    if usable >= MIN_LABELS {
        return Ok(());
    }
    Err(format!(
        "fine-tuning needs at least {MIN_LABELS} labels with {MIN_ITEMS_PER_LABEL} or more items \
         (one held out, two to train on); this dataset has {usable}"
    ))
}

/// The largest `training_seconds_per_10k_items`: a week.
pub const MAX_TRAINING_SECONDS: f64 = 604_800.0;

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
    /// How far `if_better` lets held-out Recall@1 and Recall@5 fall at least (each recall's noise
    /// margin is the larger of this and its standard error: `evaluation::decide`).
    pub recall_tolerance: f64,
    pub positive_quantile: f64,
    pub negative_quantile: f64,
    pub max_mined_items: usize,
    /// Lite0 blocks trained with the head, counted from the last (0: the head alone; `"all"` in a
    /// request is every block). Above 0 the head convolution trains too, from the cached
    /// activations entering the first trained block.
    #[serde(deserialize_with = "trainable_blocks")]
    pub trainable_blocks: usize,
    /// AdamW learning rate of the trained blocks (the head keeps `learning_rate`).
    pub backbone_learning_rate: f64,
    /// Train the blocks from the images, randomly cropped, flipped and colour-jittered each step
    /// (seeded), instead of from the cached block inputs. Needs `trainable_blocks` above 0.
    pub augment: bool,
    /// Share α of the pretrained geometry the model's embedding keeps: `[√α·pretrained feature ;
    /// √(1−α)·trained embedding]` (`generation::PretrainedShare`); 0 serves the trained embedding
    /// alone.
    pub pretrained_share: f64,
    /// How the learning rates move over the run: `constant`, or `cosine` from the configured
    /// rates down to 0 at the last step. A job stored before this param existed ran constant.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
    /// Weight of the geometry term: the batch's distances are held near the same items'
    /// pretrained-feature distances (`train::geometry_loss`), so labels separate without each shrinking
    /// to a point. 0 (also for a job stored before this param existed) trains on triplets alone.
    #[serde(default)]
    pub geometry_weight: f64,
    /// Wall-clock seconds training may take per 10,000 catalogue items, and at least this many
    /// in all ([`Self::max_training_seconds`], `train::StepPlan`): when the steps of `epochs` would
    /// take longer at the pace of the first steps, fewer run and the schedule ends at the last of
    /// them. `None` (null; also a job stored before this param existed): every step runs.
    #[serde(default)]
    pub training_seconds_per_10k_items: Option<f64>,
}

/// `trainable_blocks`: a count, or `"all"`.
fn trainable_blocks<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Blocks {
        Count(usize),
        Word(String),
    }
    match Blocks::deserialize(deserializer)? {
        Blocks::Count(n) => Ok(n),
        Blocks::Word(word) if word == "all" => Ok(BLOCKS),
        Blocks::Word(word) => Err(serde::de::Error::custom(format!(
            "trainable_blocks is a number of blocks (0 to {BLOCKS}) or \"all\", not {word:?}"
        ))),
    }
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
        let rules: [(&str, bool, &str); 19] = [
            (
                "training_seconds_per_10k_items",
                self.training_seconds_per_10k_items.is_none_or(|s| s > 0.0 && s <= MAX_TRAINING_SECONDS),
                "above 0 and at most 604800 (a week), or null for no limit",
            ),
            ("geometry_weight", (0.0..=100.0).contains(&self.geometry_weight), "0 to 100"),
            ("pretrained_share", (0.0..1.0).contains(&self.pretrained_share), "0 to below 1"),
            ("trainable_blocks", self.trainable_blocks <= BLOCKS, "0 to 16, or \"all\""),
            (
                "backbone_learning_rate",
                self.backbone_learning_rate > 0.0 && self.backbone_learning_rate <= 1.0,
                "above 0 and at most 1",
            ),
            ("epochs", (1..=10_000).contains(&self.epochs), "1 to 10000"),
            ("margin", self.margin > 0.0 && self.margin <= 2.0, "above 0 and at most 2"),
            ("learning_rate", self.learning_rate > 0.0 && self.learning_rate <= 1.0, "above 0 and at most 1"),
            ("weight_decay", (0.0..=1.0).contains(&self.weight_decay), "0 to 1"),
            ("batch_classes", (2..=1024).contains(&self.batch_classes), "2 to 1024"),
            ("batch_per_class", (2..=1024).contains(&self.batch_per_class), "2 to 1024"),
            ("embedding_dim", (2..=4096).contains(&self.embedding_dim), "2 to 4096"),
            ("holdout", self.holdout > 0.0 && self.holdout <= 0.5, "above 0 and at most 0.5"),
            ("max_eval_queries", self.max_eval_queries >= 1, "at least 1"),
            ("recall_tolerance", (0.0..=1.0).contains(&self.recall_tolerance), "0 to 1"),
            ("positive_quantile", (0.0..=1.0).contains(&self.positive_quantile), "0 to 1"),
            ("negative_quantile", (0.0..=1.0).contains(&self.negative_quantile), "0 to 1"),
            ("max_mined_items", (2..=100_000).contains(&self.max_mined_items), "2 to 100000"),
            (
                "batch_classes",
                self.batch_classes.saturating_mul(self.batch_per_class) <= 65_536,
                "with batch_per_class, at most 65536 items per batch",
            ),
        ];
        if self.augment && self.trainable_blocks == 0 {
            return Err(
                "params.augment needs trainable_blocks above 0 (the head alone trains on cached features)".into()
            );
        }
        match rules.iter().find(|(_, ok, _)| !ok) {
            Some((key, _, range)) => Err(format!("params.{key} must be {range}")),
            None => Ok(()),
        }
    }

    pub fn train_params(&self, input_dim: usize, batch_classes: usize) -> TrainParams {
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
            backbone_learning_rate: self.backbone_learning_rate,
            weight_decay: self.weight_decay,
            batch_classes,
            batch_per_class: self.batch_per_class,
            input_dim,
            embedding_dim: self.embedding_dim,
            seed: self.seed,
            lr_schedule: self.lr_schedule,
            geometry_weight: self.geometry_weight as f32,
            max_seconds: None,
        }
    }

    /// The training time budget of a job over a catalogue of `items`:
    /// `training_seconds_per_10k_items` up to 10,000 items, in proportion above (the steps of
    /// `epochs` grow with the catalogue too, so the budget binds where the machine is slow for
    /// them, not where the catalogue is large).
    pub fn max_training_seconds(&self, items: usize) -> Option<f64> {
        self.training_seconds_per_10k_items.map(|seconds| seconds * (items as f64 / 10_000.0).max(1.0))
    }

    /// The first trained block when blocks are trained: the block whose inputs training and the
    /// trained model read.
    pub fn first_trainable_block(&self) -> Option<usize> {
        (self.trainable_blocks > 0).then(|| BLOCKS - self.trainable_blocks)
    }

    pub fn mining_params(&self) -> OfflineMiningParams {
        OfflineMiningParams {
            positive_quantile: self.positive_quantile as f32,
            negative_quantile: self.negative_quantile as f32,
            max_exact_items: self.max_mined_items,
            seed: self.seed,
            ..OfflineMiningParams::default()
        }
    }
}

/// The name a mining mode is written with (`offline+online`, `batch-hard`, ...).
pub fn mining_name(mode: MiningMode) -> String {
    serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainable_needs_two_labels_of_three() {
        assert!(check_trainable([3, 3]).is_ok());
        assert!(check_trainable([10, 2, 3]).is_ok());
        let err = check_trainable([10, 2, 2]).unwrap_err();
        assert!(err.contains("has 1"), "{err}");
        assert!(check_trainable([]).is_err());
    }
}
