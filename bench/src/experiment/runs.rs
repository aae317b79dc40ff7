//! One training run per (mining mode, seed) at a fixed step budget, evaluated at checkpoints.
//!
//! A fair comparison gives every mode the same number of optimiser steps on the same features
//! with the same seed and parameters; only the mining differs. [`train_head`] counts in epochs, so
//! a run asks for enough epochs to pass the budget and its observer stops it exactly there. The
//! observer also evaluates the head at each checkpoint (the catalogue and the queries projected
//! by the head, ranked exactly by [`retrieval::evaluate`]); that time is measured and left out of
//! the run's training time, so steps/s compares the modes' own cost.
//!
//! Runs are sequential (each uses all cores through candle and rayon) and deterministic.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_nn::VarMap;
use serde::Serialize;

use lookalike::train::retrieval::Metrics;
use lookalike::train::retrieval::{self, RetrievalReport};
use lookalike::train::{EmbeddingHead, Mining, PkSampler, PkShape, StepReport, TrainError, TrainParams, train_head};

/// A way of choosing triplets, as the experiment names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mode {
    /// The name in tables: "offline+online", "batch-hard", …
    pub name: &'static str,
    pub mining: Mining,
    pub offline_injection: bool,
    pub soft_margin: bool,
}

impl Mode {
    /// Every mode compared, offline+online first.
    pub const ALL: [Mode; 6] = [
        Mode { name: "offline+online", mining: Mining::BatchHard, offline_injection: true, soft_margin: false },
        Mode { name: "batch-hard", mining: Mining::BatchHard, offline_injection: false, soft_margin: false },
        Mode { name: "batch-all", mining: Mining::BatchAll, offline_injection: false, soft_margin: false },
        Mode { name: "semi-hard", mining: Mining::SemiHard, offline_injection: false, soft_margin: false },
        Mode { name: "random", mining: Mining::Random, offline_injection: false, soft_margin: false },
        Mode { name: "batch-hard soft-margin", mining: Mining::BatchHard, offline_injection: false, soft_margin: true },
    ];

    /// `base` with this mode's mining, injection and loss.
    pub fn params(&self, base: &TrainParams) -> TrainParams {
        TrainParams {
            mining: self.mining,
            offline_injection: self.offline_injection,
            soft_margin: self.soft_margin,
            ..base.clone()
        }
    }
}

/// The data a run trains and is evaluated on: backbone features and labels.
pub struct RunData<'a> {
    /// The catalogue: training items, also the gallery searched at checkpoints.
    pub catalogue: &'a [f32],
    pub catalogue_labels: &'a [u32],
    /// The queries searched at checkpoints (never trained on).
    pub queries: &'a [f32],
    pub query_labels: &'a [u32],
    /// Offline-mined anchor → positive, for modes with injection.
    pub injected: &'a HashMap<usize, usize>,
}

/// Quality after some steps, and how training went since the previous checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Checkpoint {
    /// Optimiser steps taken.
    pub step: usize,
    pub metrics: Metrics,
    /// Mean batch loss over the steps since the previous checkpoint (0 at step 0).
    pub mean_loss: f32,
    /// Mean number of mined triplets with a positive loss per step over the same steps.
    pub mean_active_triplets: f32,
}

impl Checkpoint {
    /// The untrained model's figures (step 0).
    pub fn at_start(metrics: Metrics) -> Self {
        Self { step: 0, metrics, mean_loss: 0.0, mean_active_triplets: 0.0 }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Reached the budget.
    Completed,
    /// Training stopped with an error (collapse, divergence) before the budget.
    Failed(String),
}

/// One mode at one seed.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub mode: Mode,
    pub seed: u64,
    pub outcome: Outcome,
    pub steps: usize,
    pub checkpoints: Vec<Checkpoint>,
    /// Wall time of the training steps alone (checkpoint evaluation excluded).
    pub train_seconds: f64,
    pub steps_per_second: f64,
    /// Wall time spent evaluating checkpoints.
    pub eval_seconds: f64,
}

impl RunResult {
    /// The last checkpoint's metrics, if any was reached.
    pub fn final_metrics(&self) -> Option<Metrics> {
        self.checkpoints.last().map(|c| c.metrics)
    }
}

/// The untrained head of `params` (what step 0 of every mode with this seed starts from).
pub fn initial_head(params: &TrainParams) -> anyhow::Result<EmbeddingHead> {
    let varmap = VarMap::new();
    Ok(EmbeddingHead::seeded(&varmap, params.input_dim, params.embedding_dim, params.head_init_seed(), &Device::Cpu)?)
}

/// Projects catalogue and queries through `head` and ranks every query against the catalogue.
pub fn evaluate_head(head: &EmbeddingHead, data: &RunData) -> anyhow::Result<RetrievalReport> {
    let gallery = head.embed_rows(data.catalogue, &Device::Cpu)?;
    let queries = head.embed_rows(data.queries, &Device::Cpu)?;
    retrieval::evaluate(&queries, data.query_labels, &gallery, data.catalogue_labels, head.out_dim(), &Device::Cpu)
}

/// Trains `mode` from `base` (seed included) for `budget` steps, evaluating at each step count in
/// `checkpoints` (those above `budget` are ignored; step 0 is measured on [`initial_head`]).
pub fn run_mode(
    mode: Mode,
    base: &TrainParams,
    budget: usize,
    checkpoints: &[usize],
    data: &RunData,
) -> anyhow::Result<RunResult> {
    let params = mode.params(base);
    let shape = PkShape { labels_per_batch: params.batch_classes, items_per_label: params.batch_per_class };
    let per_epoch = PkSampler::new(data.catalogue_labels, shape, params.seed)?.batches_per_epoch();
    let params = TrainParams { epochs: budget.div_ceil(per_epoch).max(1), ..params };

    let mut recorder = Recorder::new(budget, checkpoints);
    if checkpoints.contains(&0) {
        recorder.checkpoints.push(Checkpoint::at_start(evaluate_head(&initial_head(&params)?, data)?.metrics));
    }
    let started = Instant::now();
    let trained = train_head(
        data.catalogue,
        data.catalogue_labels,
        Some(data.injected),
        &params,
        &Device::Cpu,
        &mut |report, head| recorder.observe(report, || Ok(evaluate_head(head, data)?.metrics)),
    );
    let total = started.elapsed();
    if let Some(error) = recorder.error {
        return Err(error.context(format!("evaluating {} at a checkpoint", mode.name)));
    }
    let outcome = match trained {
        Err(TrainError::Canceled { steps }) if steps == budget => Outcome::Completed,
        Ok(trained) if trained.steps == budget => Outcome::Completed,
        Ok(trained) => Outcome::Failed(format!("the epochs ran out after {} steps", trained.steps)),
        Err(error @ (TrainError::Collapsed { .. } | TrainError::Diverged { .. })) => Outcome::Failed(error.to_string()),
        Err(other) => return Err(other.into()),
    };
    let train_seconds = total.saturating_sub(recorder.eval_time).as_secs_f64();
    Ok(RunResult {
        mode,
        seed: params.seed,
        outcome,
        steps: recorder.steps,
        checkpoints: recorder.checkpoints,
        train_seconds,
        steps_per_second: recorder.steps as f64 / train_seconds.max(f64::MIN_POSITIVE),
        eval_seconds: recorder.eval_time.as_secs_f64(),
    })
}

/// The observer's state: steps, checkpoints, and the time spent evaluating them.
pub struct Recorder {
    budget: usize,
    at: Vec<usize>,
    /// Steps taken.
    pub steps: usize,
    since: usize,
    loss_sum: f64,
    active_sum: usize,
    pub checkpoints: Vec<Checkpoint>,
    pub eval_time: Duration,
    /// The evaluation error that stopped training, if one did.
    pub error: Option<anyhow::Error>,
}

impl Recorder {
    pub fn new(budget: usize, checkpoints: &[usize]) -> Self {
        Self {
            budget,
            at: checkpoints.to_vec(),
            steps: 0,
            since: 0,
            loss_sum: 0.0,
            active_sum: 0,
            checkpoints: Vec::new(),
            eval_time: Duration::ZERO,
            error: None,
        }
    }

    /// After each step: counts it, evaluates at a checkpoint (timed apart), and breaks at the
    /// budget or on an evaluation error.
    pub fn observe(
        &mut self,
        report: &StepReport,
        evaluate: impl FnOnce() -> anyhow::Result<Metrics>,
    ) -> ControlFlow<()> {
        self.steps = report.step + 1;
        self.loss_sum += f64::from(report.loss);
        self.active_sum += report.active_triplets;
        self.since += 1;
        if self.at.contains(&self.steps) {
            let started = Instant::now();
            match evaluate() {
                Ok(metrics) => {
                    tracing::info!(
                        steps = self.steps,
                        ?metrics,
                        loss = self.loss_sum / self.since as f64,
                        "checkpoint"
                    );
                    self.checkpoints.push(Checkpoint {
                        step: self.steps,
                        metrics,
                        mean_loss: (self.loss_sum / self.since as f64) as f32,
                        mean_active_triplets: self.active_sum as f32 / self.since as f32,
                    });
                    (self.loss_sum, self.active_sum, self.since) = (0.0, 0, 0);
                }
                Err(error) => {
                    self.error = Some(error);
                    return ControlFlow::Break(());
                }
            }
            self.eval_time += started.elapsed();
        }
        if self.steps >= self.budget { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lookalike::train::TrainRng;

    /// `classes` classes of 12 items: a class offset on the first two dimensions plus noise.
    fn clustered(classes: usize, seed: u64, dim: usize) -> (Vec<f32>, Vec<u32>) {
        let mut rng = TrainRng::new(seed);
        let mut noise = || (rng.next_u64() % 1000) as f32 / 1000.0 - 0.5;
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for class in 0..classes {
            for _ in 0..12 {
                let angle = class as f32;
                rows.extend([angle.cos() * 2.0 + noise(), angle.sin() * 2.0 + noise()]);
                rows.extend((2..dim).map(|_| noise() * 3.0));
                labels.push(class as u32);
            }
        }
        (rows, labels)
    }

    #[test]
    fn every_mode_stops_exactly_at_the_budget_across_epochs_and_records_its_checkpoints() -> anyhow::Result<()> {
        let dim = 16;
        let (catalogue, catalogue_labels) = clustered(6, 1, dim);
        let (queries, query_labels) = clustered(6, 2, dim);
        let injected: HashMap<usize, usize> =
            (0..catalogue_labels.len()).map(|i| (i, i - i % 12 + (i + 5) % 12)).collect();
        let data = RunData {
            catalogue: &catalogue,
            catalogue_labels: &catalogue_labels,
            queries: &queries,
            query_labels: &query_labels,
            injected: &injected,
        };
        let base = TrainParams {
            input_dim: dim,
            embedding_dim: 4,
            batch_classes: 3,
            learning_rate: 1e-2,
            ..TrainParams::default()
        };
        // 72 items in batches of 12: 6 steps an epoch, so a budget of 15 ends inside the third epoch.
        for mode in Mode::ALL {
            let run = run_mode(mode, &base, 15, &[0, 5, 15, 40], &data)?;
            assert!(matches!(run.outcome, Outcome::Completed), "{}: {:?}", mode.name, run.outcome);
            assert_eq!(run.steps, 15, "{}", mode.name);
            let steps: Vec<usize> = run.checkpoints.iter().map(|c| c.step).collect();
            assert_eq!(steps, vec![0, 5, 15], "{}", mode.name);
            assert!(run.checkpoints[1..].iter().all(|c| c.mean_loss.is_finite() && c.metrics.map_at_r > 0.0));
        }
        let initial = evaluate_head(&initial_head(&base)?, &data)?;
        let first = run_mode(Mode::ALL[1], &base, 15, &[0], &data)?;
        assert_eq!(first.checkpoints[0].metrics, initial.metrics, "step 0 is the untrained head");
        Ok(())
    }
}
