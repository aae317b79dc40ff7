//! Triplet training: fits an [`EmbeddingHead`] on cached backbone features ([`train_head`]), and
//! the loop it shares with the backbone's tail ([`train_model`], `super::tail::train_tail`).
//!
//! Over 400 lines: the parameters, the loop, its errors and the collapse guard it checks every
//! step are read together; the guard could move to a module of its own.
//!
//! [`train_head`] takes every training item's cached backbone feature row and label, and runs
//! `epochs` passes of P×K batches from a [`PkSampler`]. Each step embeds the batch's rows through
//! the head, computes [`pairwise_distances`], [`mine`]s triplets on [`distances_to_vec`], takes the
//! [`triplet_loss`] with the mode's [`Reduction`](super::Reduction) and makes one AdamW step
//! ([`FusedAdamW`]). After each step the caller's observer gets a [`StepReport`] and the head as that step left it: it can
//! record the loss curve, evaluate the head as a checkpoint (for quality against training steps),
//! and cancel the run by returning [`ControlFlow::Break`].
//!
//! # Collapse guard
//!
//! A triplet-trained embedding can collapse: every item maps to nearly the same point, positive
//! and negative distances become equal, and the hinge batch-hard loss sits at the margin with no
//! gradient left. Training stops with [`TrainError::Collapsed`] when, over each of the last
//! [`COLLAPSE_WINDOW`] steps, either the batch's mean anchor–negative and anchor–positive
//! distances (over all pairs of the batch) differ by less than [`COLLAPSE_DISTANCE_GAP`], or
//! (hinge loss only) the loss lies within [`COLLAPSE_LOSS_TOLERANCE`] of the margin. Requiring it
//! at every step of the window, not on average, keeps a healthy run whose distance gap or loss
//! merely passes through those values from being stopped.
//!
//! # Reproducibility
//!
//! Training runs on the CPU, single-threaded in its own logic, and every random choice (head
//! initialisation, batches, random mining) comes from [`SeededRng`] streams of `seed`: the same
//! features, labels, mined pairs and parameters give bit-identical losses and weights. A time
//! budget ([`TrainParams::max_seconds`], [`StepPlan`]) keeps that only while it does not bind:
//! where it cuts the run, how many steps run depends on the machine's pace.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Optimizer, ParamsAdamW, VarMap};
use serde::{Deserialize, Serialize};

use super::adamw::FusedAdamW;
use super::distance::{distances_to_vec, pairwise_distances, unit_rows};
use super::head::{BACKBONE_DIM, DEFAULT_EMBEDDING_DIM, EmbeddingHead};
use super::losses::triplet_loss;
use super::miners::{Mining, MiningError, mine};
use super::sampler::{PkSampler, PkShape, SamplerError};
use crate::rng::SeededRng;

/// Steps over which the collapse guard looks (see the module docs).
pub const COLLAPSE_WINDOW: usize = 50;
/// Mean anchor–negative minus mean anchor–positive distance below which a step looks collapsed.
pub const COLLAPSE_DISTANCE_GAP: f32 = 1e-3;
/// Distance of the hinge loss from the margin below which a step looks collapsed.
pub const COLLAPSE_LOSS_TOLERANCE: f32 = 1e-3;
/// Stream of `seed` that initialises the head (epochs use streams 0, 1, …).
const HEAD_INIT_STREAM: u64 = u64::MAX;
/// Stream of `seed` whose draws seed the random miner, one per step.
const MINING_STREAM: u64 = u64::MAX - 1;

/// The knobs of head training; `{}` in JSON gives the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainParams {
    /// Which triplets each batch trains on. Default batch-hard. Ignored with `offline_injection`.
    pub mining: Mining,
    /// The "offline+online" mode: each batch brings in its anchors' offline-mined positives and
    /// mines batch-hard inside the batch. Needs the mined pairs. Default false.
    pub offline_injection: bool,
    /// Passes over the training set (each of `max(1, items / (P·K))` batches). Default 10.
    pub epochs: usize,
    /// Hinge margin on the unit sphere (distances in 0..2); larger separates classes more but
    /// leaves more triplets active. Also bounds semi-hard's window. Default 0.2.
    pub margin: f32,
    /// Soft-margin loss `softplus(d_ap − d_an)` instead of the hinge. Default false.
    pub soft_margin: bool,
    /// AdamW learning rate (of the head). Default 1e-3.
    pub learning_rate: f64,
    /// AdamW learning rate of the backbone's weights when a tail is trained with the head
    /// ([`train_tail`](super::train_tail)): pretrained weights move less than a new head, or the
    /// embedding collapses early. Default 1e-4.
    pub backbone_learning_rate: f64,
    /// AdamW decoupled weight decay. Default 0.01 (candle's AdamW default).
    pub weight_decay: f64,
    /// P: labels per batch, at least 2 (an anchor needs negatives). Default 8.
    pub batch_classes: usize,
    /// K: items per label in a batch, at least 2 (an anchor needs a positive). Default 4.
    pub batch_per_class: usize,
    /// Width of the feature rows given to [`train_head`]. Default 1280 (the backbone's).
    pub input_dim: usize,
    /// Width of the embedding the head produces. Default 128.
    pub embedding_dim: usize,
    /// Seeds the head's initialisation, the batches and random mining. Default 0.
    pub seed: u64,
    /// How every learning rate moves over the run. Default constant.
    pub lr_schedule: LrSchedule,
    /// Weight of the geometry term ([`geometry_loss`]) added to the triplet loss: how strongly
    /// the batch's distances stay near its reference embeddings'
    /// ([`BatchInputs::reference`]). Default 0 (the triplet loss alone).
    pub geometry_weight: f32,
    /// Wall-clock seconds the run may train for ([`StepPlan`]): when the steps `epochs` asks
    /// for would take longer, the run plans fewer and ends its schedule at the last of them.
    /// Default none (every step runs, and the run is reproducible to the bit).
    pub max_seconds: Option<f64>,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            mining: Mining::BatchHard,
            offline_injection: false,
            epochs: 10,
            margin: 0.2,
            soft_margin: false,
            learning_rate: 1e-3,
            backbone_learning_rate: 1e-4,
            weight_decay: ParamsAdamW::default().weight_decay,
            batch_classes: 8,
            batch_per_class: 4,
            input_dim: BACKBONE_DIM,
            embedding_dim: DEFAULT_EMBEDDING_DIM,
            seed: 0,
            lr_schedule: LrSchedule::Constant,
            geometry_weight: 0.0,
            max_seconds: None,
        }
    }
}

/// The learning rate of step `t` of `T` as a share of the configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The configured rate at every step.
    #[default]
    Constant,
    /// Half a cosine from the configured rate at the first step to 0 after the last:
    /// `½(1 + cos(π·t/T))`.
    Cosine,
}

impl LrSchedule {
    /// The factor of step `step` of a run of `total` steps.
    pub fn factor(self, step: usize, total: usize) -> f64 {
        match self {
            Self::Constant => 1.0,
            Self::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total.max(1) as f64).cos()),
        }
    }
}

/// Steps between two timings of a run with a time budget (the first timing comes after as many).
pub const PLAN_PROBE_STEPS: usize = 20;

/// The steps a run takes: all it plans (`epochs` × batches), or, under a time budget
/// ([`TrainParams::max_seconds`]), as many as fit. Every [`PLAN_PROBE_STEPS`] steps the run times
/// itself; when the seconds per step so far project past the budget, it plans as many steps as the
/// budget holds at that pace, so a cosine schedule still ends at the last step run. A plan is only
/// ever shortened: a run the budget never binds takes every step, as without it. The run stops at
/// the budget whatever the plan said (a pace that slows after the last timing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPlan {
    planned: usize,
    total: usize,
    budget: Option<f64>,
}

impl StepPlan {
    pub fn new(planned: usize, budget: Option<f64>) -> Self {
        Self { planned, total: planned, budget }
    }

    /// Asked before step `step` (0-based), `elapsed` seconds into the run: whether it runs.
    pub fn admits(&mut self, step: usize, elapsed: f64) -> bool {
        if let Some(budget) = self.budget {
            if step > 0 && elapsed >= budget {
                self.total = step;
                return false;
            }
            if step >= PLAN_PROBE_STEPS && step.is_multiple_of(PLAN_PROBE_STEPS) {
                let affordable = (budget * step as f64 / elapsed.max(f64::MIN_POSITIVE)).floor() as usize;
                if affordable < self.total {
                    self.total = affordable.max(step + 1);
                }
            }
        }
        step < self.total
    }

    /// The steps the run now plans to take.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The steps `epochs` asked for.
    pub fn planned(&self) -> usize {
        self.planned
    }
}

/// The steps `params.epochs` passes over items labelled `labels` ask for: per epoch, the P×K
/// sampler's batches (the items of labels with two or more, over P·K, at least one).
pub fn planned_steps(labels: &[u32], params: &TrainParams) -> usize {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    labels.iter().for_each(|&label| *counts.entry(label).or_default() += 1);
    let eligible: usize = counts.values().filter(|&&n| n >= 2).sum();
    let batch = (params.batch_classes * params.batch_per_class).max(1);
    params.epochs.saturating_mul((eligible / batch).max(1))
}

impl TrainParams {
    /// The miner actually used: batch-hard in offline+online mode, `mining` otherwise.
    pub fn effective_mining(&self) -> Mining {
        if self.offline_injection { Mining::BatchHard } else { self.mining }
    }

    /// The seed [`train_head`] gives [`EmbeddingHead::seeded`]: with it a caller can rebuild the
    /// untrained head (to measure step 0) without running a step.
    pub fn head_init_seed(&self) -> u64 {
        SeededRng::for_stream(self.seed, HEAD_INIT_STREAM).next_u64()
    }
}

/// What one training step did, as the observer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepReport {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step, counted across epochs.
    pub step: usize,
    /// The batch loss before this step's update.
    pub loss: f32,
    /// Mean distance over every anchor–positive pair of the batch.
    pub mean_positive_distance: f32,
    /// Mean distance over every anchor–negative pair of the batch.
    pub mean_negative_distance: f32,
    /// Mined triplets with a positive loss (all of them under the soft margin).
    pub active_triplets: usize,
    /// The steps the run plans to take, this one included ([`StepPlan::total`]).
    pub steps: usize,
}

/// A trained head and its loss curve.
#[derive(Debug, Clone)]
pub struct TrainedHead {
    pub head: EmbeddingHead,
    /// Optimiser steps taken.
    pub steps: usize,
    /// The loss of the last step.
    pub final_loss: f32,
    /// The loss of every step, in order.
    pub losses: Vec<f32>,
}

/// Why training stopped without a head.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training input: {0}")]
    InvalidInput(String),
    #[error(transparent)]
    Sampler(#[from] SamplerError),
    #[error(transparent)]
    Mining(#[from] MiningError),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("training was canceled after {steps} steps")]
    Canceled { steps: usize },
    #[error("the loss is not finite at step {step}: {loss}")]
    Diverged { step: usize, loss: f32 },
    #[error(
        "the embedding collapsed at step {step}: mean positive distance {mean_positive_distance}, mean negative \
         distance {mean_negative_distance}, loss {loss} (margin {margin}) over the last {window} steps"
    )]
    Collapsed {
        step: usize,
        window: usize,
        mean_positive_distance: f32,
        mean_negative_distance: f32,
        loss: f32,
        margin: f32,
    },
}

/// Trains a head on `features` (`labels.len()` rows of `params.input_dim` values, row-major).
///
/// `injected` maps an anchor item to its offline-mined positive; it is used only with
/// `params.offline_injection`, which requires it. See the module docs for the loop, the collapse
/// guard and reproducibility.
pub fn train_head(
    features: &[f32],
    labels: &[u32],
    injected: Option<&HashMap<usize, usize>>,
    params: &TrainParams,
    device: &Device,
    observer: &mut dyn FnMut(&StepReport, &EmbeddingHead) -> ControlFlow<()>,
) -> Result<TrainedHead, TrainError> {
    validate(features, labels, params)?;
    let all_features = Tensor::from_slice(features, (labels.len(), params.input_dim), device)?;
    let varmap = VarMap::new();
    let head = EmbeddingHead::seeded(&varmap, params.input_dim, params.embedding_dim, params.head_init_seed(), device)?;
    let groups = vec![(varmap.all_vars(), params.learning_rate)];
    let losses = if params.geometry_weight > 0.0 {
        // The head's own inputs are the pretrained features whose geometry the term keeps.
        let reference = unit_rows(&all_features)?;
        let inputs = WithReference { inputs: &all_features, reference: &reference };
        train_model(&head, groups, &inputs, labels, injected, params, observer)?
    } else {
        train_model(&head, groups, &all_features, labels, injected, params, observer)?
    };
    let final_loss = losses.last().copied().unwrap_or(0.0);
    Ok(TrainedHead { head, steps: losses.len(), final_loss, losses })
}

/// Where a training step's inputs come from: one entry per training item (feature rows for a
/// head, block activations for a [`BackboneTail`](super::BackboneTail)).
pub trait BatchInputs {
    /// Items there are inputs for.
    fn items(&self) -> candle_core::Result<usize>;
    /// The inputs of `items` (training-item indices) for optimiser step `step`, stacked along the
    /// first dimension. `step` lets a source that augments draw the same changes on a rerun.
    fn batch(&self, step: usize, items: &[usize]) -> candle_core::Result<Tensor>;
    /// The reference embeddings of `items` (the pretrained model's) whose pairwise distances the
    /// geometry term keeps, when the source has them.
    fn reference(&self, _items: &[usize]) -> candle_core::Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Inputs from `inputs`, with `reference` (one row per item) as the items' reference embeddings.
pub struct WithReference<'a> {
    pub inputs: &'a dyn BatchInputs,
    pub reference: &'a Tensor,
}

impl BatchInputs for WithReference<'_> {
    fn items(&self) -> candle_core::Result<usize> {
        self.inputs.items()
    }

    fn batch(&self, step: usize, items: &[usize]) -> candle_core::Result<Tensor> {
        self.inputs.batch(step, items)
    }

    fn reference(&self, items: &[usize]) -> candle_core::Result<Option<Tensor>> {
        self.reference.batch(0, items).map(Some)
    }
}

/// The geometry term: the mean Huber distance (δ = 1) between the batch's pairwise distances
/// and its reference embeddings' (both on the unit sphere, so on one scale): the distance-wise
/// loss of relational knowledge distillation (Park et al. 2019), without its division by the
/// batch mean (with it, nothing holds the scale and a run of 3 blocks collapsed). The triplet
/// loss separates labels; this term pulls every distance back toward the pretrained one, so
/// no label is squeezed to a point, which loses the near neighbours of an item the model places
/// in the wrong label.
pub fn geometry_loss(distances: &Tensor, reference: &Tensor) -> candle_core::Result<Tensor> {
    let gap = distances.sub(&reference.detach())?.abs()?;
    let quadratic = gap.minimum(1.0)?;
    quadratic.mul(&gap.sub(&quadratic.affine(0.5, 0.0)?)?)?.mean_all()
}

/// Cached inputs: row `i` of the tensor is item `i`'s.
impl BatchInputs for Tensor {
    fn items(&self) -> candle_core::Result<usize> {
        self.dim(0)
    }

    fn batch(&self, _step: usize, items: &[usize]) -> candle_core::Result<Tensor> {
        let indices: Vec<u32> = items.iter().map(|&item| item as u32).collect();
        self.index_select(&Tensor::new(indices, self.device())?, 0)
    }
}

/// The training loop of [`train_head`] for any embedding `model` whose trainable weights are
/// `groups` (each with its AdamW learning rate): `inputs` gives each batch's entries, which each
/// step feeds through `model`. Returns every step's loss; the observer's break is
/// [`TrainError::Canceled`].
pub(super) fn train_model<M: Module>(
    model: &M,
    groups: Vec<(Vec<candle_core::Var>, f64)>,
    inputs: &dyn BatchInputs,
    labels: &[u32],
    injected: Option<&HashMap<usize, usize>>,
    params: &TrainParams,
    observer: &mut dyn FnMut(&StepReport, &M) -> ControlFlow<()>,
) -> Result<Vec<f32>, TrainError> {
    if inputs.items()? != labels.len() {
        return Err(invalid(format!("inputs of {} items for {} labels", inputs.items()?, labels.len())));
    }
    let shape = PkShape { labels_per_batch: params.batch_classes, items_per_label: params.batch_per_class };
    let sampler = match (params.offline_injection, injected) {
        (true, Some(pairs)) => PkSampler::with_injected(labels, shape, params.seed, pairs.clone())?,
        (true, None) => return Err(invalid("offline_injection needs the offline-mined pairs")),
        (false, _) => PkSampler::new(labels, shape, params.seed)?,
    };
    let mut optimizers = groups
        .into_iter()
        .filter(|(vars, _)| !vars.is_empty())
        .map(|(vars, lr)| {
            let optimizer =
                FusedAdamW::new(vars, ParamsAdamW { lr, weight_decay: params.weight_decay, ..ParamsAdamW::default() });
            optimizer.map(|optimizer| (optimizer, lr))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    // A caller that stops by its own step budget passes `usize::MAX` epochs: the schedule then
    // stays at its first rate.
    let mut plan = StepPlan::new(params.epochs.saturating_mul(sampler.batches_per_epoch()), params.max_seconds);
    let started = Instant::now();
    let mining = params.effective_mining();
    let mut mining_seeds = SeededRng::for_stream(params.seed, MINING_STREAM);
    let mut guard = CollapseGuard::new(params);
    let mut losses = Vec::new();

    'run: for epoch in 0..params.epochs {
        for batch in sampler.epoch(epoch as u64) {
            let step = losses.len();
            if !plan.admits(step, started.elapsed().as_secs_f64()) {
                break 'run;
            }
            let rows = inputs.batch(step, &batch.items)?;
            let distances = pairwise_distances(&model.forward(&rows)?)?;
            let plain = distances_to_vec(&distances)?;
            let triplets = mine(mining, &plain, &batch.labels, params.margin, mining_seeds.next_u64())?;
            let mut loss = triplet_loss(&distances, &triplets, params.margin, params.soft_margin, mining.reduction())?;
            if params.geometry_weight > 0.0 {
                let Some(reference) = inputs.reference(&batch.items)? else {
                    return Err(invalid("geometry_weight needs the items' reference embeddings"));
                };
                let geometry = geometry_loss(&distances, &pairwise_distances(&reference)?)?;
                loss = loss.add(&geometry.affine(f64::from(params.geometry_weight), 0.0)?)?;
            }
            let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::Diverged { step, loss: value });
            }
            let grads = loss.backward()?;
            let factor = params.lr_schedule.factor(step, plan.total());
            for (optimizer, lr) in &mut optimizers {
                optimizer.set_learning_rate(*lr * factor);
                optimizer.step(&grads)?;
            }
            losses.push(value);

            let n = batch.labels.len();
            let active_triplets = triplets
                .iter()
                .filter(|t| {
                    params.soft_margin
                        || plain[t.anchor * n + t.positive] - plain[t.anchor * n + t.negative] + params.margin > 0.0
                })
                .count();
            let (mean_positive_distance, mean_negative_distance) = mean_pair_distances(&plain, &batch.labels);
            let report = StepReport {
                epoch,
                step,
                loss: value,
                mean_positive_distance,
                mean_negative_distance,
                active_triplets,
                steps: plan.total(),
            };
            if observer(&report, model).is_break() {
                return Err(TrainError::Canceled { steps: losses.len() });
            }
            guard.check(&report)?;
        }
    }
    Ok(losses)
}

/// Leave-one-out Recall@1 by cosine similarity: the fraction of items whose most similar other
/// item (lowest index on ties) has the same label. Items alone in their label are not queries.
/// `vectors` holds `labels.len()` rows of `dim` values; rows need not be normalised. 0 with no query.
pub fn recall_at_1(vectors: &[f32], dim: usize, labels: &[u32]) -> f32 {
    debug_assert_eq!(vectors.len(), dim * labels.len());
    let unit: Vec<Vec<f32>> = vectors
        .chunks_exact(dim)
        .map(|row| {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            row.iter().map(|x| x / norm).collect()
        })
        .collect();
    let (mut queries, mut hits) = (0usize, 0usize);
    for (query, row) in unit.iter().enumerate() {
        if !labels.iter().enumerate().any(|(other, &label)| other != query && label == labels[query]) {
            continue;
        }
        let mut best: Option<(usize, f32)> = None;
        for (other, candidate) in unit.iter().enumerate().filter(|&(other, _)| other != query) {
            let similarity: f32 = row.iter().zip(candidate).map(|(a, b)| a * b).sum();
            if best.is_none_or(|(_, top)| similarity > top) {
                best = Some((other, similarity));
            }
        }
        queries += 1;
        hits += usize::from(best.is_some_and(|(other, _)| labels[other] == labels[query]));
    }
    if queries == 0 { 0.0 } else { hits as f32 / queries as f32 }
}

fn invalid(reason: impl Into<String>) -> TrainError {
    TrainError::InvalidInput(reason.into())
}

fn validate(features: &[f32], labels: &[u32], params: &TrainParams) -> Result<(), TrainError> {
    if params.input_dim == 0 || params.embedding_dim == 0 {
        return Err(invalid("input_dim and embedding_dim must be positive"));
    }
    if labels.len().checked_mul(params.input_dim) != Some(features.len()) {
        return Err(invalid(format!(
            "{} feature values are not {} rows of {}",
            features.len(),
            labels.len(),
            params.input_dim
        )));
    }
    if u32::try_from(labels.len()).is_err() {
        return Err(invalid("too many items to index with u32"));
    }
    if params.batch_classes < 2 {
        return Err(invalid("batch_classes must be at least 2: an anchor needs negatives"));
    }
    if !(params.margin.is_finite() && params.margin >= 0.0) {
        return Err(invalid("margin must be finite and non-negative"));
    }
    if !(params.learning_rate.is_finite() && params.learning_rate > 0.0 && params.weight_decay.is_finite()) {
        return Err(invalid("learning_rate must be positive and weight_decay finite"));
    }
    if let Some(row) = features.chunks_exact(params.input_dim).position(|row| row.iter().any(|x| !x.is_finite())) {
        return Err(invalid(format!("feature row {row} holds a non-finite value")));
    }
    Ok(())
}

/// Means of the anchor–positive and anchor–negative entries of a batch's distance matrix.
fn mean_pair_distances(distances: &[f32], labels: &[u32]) -> (f32, f32) {
    let n = labels.len();
    let (mut positive, mut positive_count, mut negative, mut negative_count) = (0.0f64, 0usize, 0.0f64, 0usize);
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let d = f64::from(distances[a * n + b]);
            if labels[a] == labels[b] {
                positive += d;
                positive_count += 1;
            } else {
                negative += d;
                negative_count += 1;
            }
        }
    }
    let mean = |sum: f64, count: usize| if count == 0 { 0.0 } else { (sum / count as f64) as f32 };
    (mean(positive, positive_count), mean(negative, negative_count))
}

/// The last [`COLLAPSE_WINDOW`] steps' reports and the rule of the module docs.
struct CollapseGuard {
    recent: VecDeque<StepReport>,
    margin: f32,
    /// Whether the loss-at-margin sign applies: hinge loss with a margin clearly above zero.
    watch_loss: bool,
}

impl CollapseGuard {
    fn new(params: &TrainParams) -> Self {
        Self {
            recent: VecDeque::with_capacity(COLLAPSE_WINDOW),
            margin: params.margin,
            watch_loss: !params.soft_margin && params.margin > COLLAPSE_LOSS_TOLERANCE,
        }
    }

    fn check(&mut self, report: &StepReport) -> Result<(), TrainError> {
        if self.recent.len() == COLLAPSE_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(*report);
        if self.recent.len() < COLLAPSE_WINDOW {
            return Ok(());
        }
        let distances_met = self
            .recent
            .iter()
            .all(|r| (r.mean_negative_distance - r.mean_positive_distance).abs() < COLLAPSE_DISTANCE_GAP);
        let loss_at_margin =
            self.watch_loss && self.recent.iter().all(|r| (r.loss - self.margin).abs() < COLLAPSE_LOSS_TOLERANCE);
        if !(distances_met || loss_at_margin) {
            return Ok(());
        }
        let count = self.recent.len() as f32;
        let mean = |field: fn(&StepReport) -> f32| self.recent.iter().map(field).sum::<f32>() / count;
        Err(TrainError::Collapsed {
            step: report.step,
            window: COLLAPSE_WINDOW,
            mean_positive_distance: mean(|r| r.mean_positive_distance),
            mean_negative_distance: mean(|r| r.mean_negative_distance),
            loss: mean(|r| r.loss),
            margin: self.margin,
        })
    }
}

#[cfg(test)]
#[path = "trainer_tests.rs"]
mod tests;
