//! The mining experiment: does offline+online mining train the head better or faster than
//! in-batch mining alone, on the full Fashion-MNIST?
//!
//! The protocol, fixed here so that one command reproduces it (`bench/mining_experiment.sh`):
//! 1. the pretrained backbone embeds the 60,000 training images (the catalogue, also the training
//!    set) and the 10,000 official test images (the queries) through the server's image path,
//!    cached on disk ([`features`]);
//! 2. baseline: the test images search the catalogue with the raw 1280-d features, exactly
//!    ([`lookalike::train::retrieval`], MAP@R with the true R = 6,000);
//! 3. offline mining ([`mine_offline`]) on the catalogue features with default parameters (above
//!    10,000 items its thresholds and negatives come from a seeded subset of 10,000; hard
//!    positives are mined for every catalogue item, within its label);
//! 4. every [`runs::Mode`] trains a head from the same seed and parameters for the same number of
//!    optimiser steps, and is evaluated on the test queries at the same checkpoints; two modes
//!    (offline+online and batch-hard) are repeated with further seeds to show the spread;
//! 5. [`report`] writes the results as JSON, CSV and markdown tables, [`figures`] draws the
//!    distance histogram and MAP@R against steps from them.
//!
//! Queries are never trained on. Everything runs on the CPU, one stage after another, each stage
//! using every core; [`run`] is deterministic apart from the measured times.

pub mod deep;
pub mod features;
pub mod figures;
pub mod report;
pub mod runs;
pub mod views;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use serde::Serialize;

use fashion_mnist::{self, Sample, Split};
use lookalike::network::EmbeddingModel;
use lookalike::train::retrieval::{self, RetrievalReport};
use lookalike::train::{MinedPairs, OfflineMiningParams, TrainParams, mine_offline};
use runs::{Mode, RunData, RunResult};

/// Modes repeated with [`ExperimentConfig::extra_seeds`].
pub const REPEATED_MODES: [&str; 2] = ["offline+online", "batch-hard"];

/// What to run and where; [`ExperimentConfig::full`] is the reported experiment.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentConfig {
    /// Backbone weights (safetensors).
    pub weights: PathBuf,
    /// Side of the model input in pixels.
    pub input_size: u32,
    /// Folder with the Fashion-MNIST gzip IDX files.
    pub source: PathBuf,
    /// Where backbone features are cached between runs.
    pub cache_dir: PathBuf,
    /// Where results, tables and figures are written.
    pub out_dir: PathBuf,
    /// Catalogue images per label (first in file order); 0 for the whole training split.
    pub catalogue_per_label: usize,
    /// Query images per label; 0 for the whole test split.
    pub queries_per_label: usize,
    /// Optimiser steps every run takes.
    pub budget: usize,
    /// Step counts at which the head is evaluated (0 = the untrained head).
    pub checkpoints: Vec<usize>,
    /// Training parameters shared by every run (mining, injection, loss and epochs are set per run).
    pub train: TrainParams,
    /// Seeds beyond `train.seed` for the [`REPEATED_MODES`].
    pub extra_seeds: Vec<u64>,
    pub offline: OfflineMiningParams,
}

impl ExperimentConfig {
    /// The reported experiment: the full splits at 64 px, 3,000 steps, seeds 0 (all modes), 1, 2.
    pub fn full(weights: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            weights,
            input_size: 64,
            source: PathBuf::from(fashion_mnist::DEFAULT_DIR),
            cache_dir: PathBuf::from("/var/tmp/lookalike-experiment"),
            out_dir,
            catalogue_per_label: 0,
            queries_per_label: 0,
            budget: 3000,
            checkpoints: vec![0, 250, 500, 1000, 2000, 3000],
            train: TrainParams { seed: 0, ..TrainParams::default() },
            extra_seeds: vec![1, 2],
            offline: OfflineMiningParams::default(),
        }
    }

    /// A smoke run of seconds: 200 catalogue images, 50 queries, 20 steps, one extra seed.
    pub fn tiny(weights: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            catalogue_per_label: 20,
            queries_per_label: 5,
            budget: 20,
            checkpoints: vec![0, 10, 20],
            extra_seeds: vec![1],
            ..Self::full(weights, out_dir)
        }
    }
}

/// What offline mining found, without the pair lists.
#[derive(Debug, Clone, Serialize)]
pub struct OfflineSummary {
    pub params: OfflineMiningParams,
    pub thresholds: lookalike::train::Thresholds,
    pub stats: lookalike::train::MiningStats,
    pub histogram: lookalike::train::DistanceHistogram,
    pub hard_positive_pairs: usize,
    pub hard_negative_pairs: usize,
    /// Anchors with an injected positive (each anchor's hardest mined positive).
    pub injected_anchors: usize,
    pub seconds: f64,
}

impl OfflineSummary {
    fn new(params: &OfflineMiningParams, mined: &MinedPairs, injected_anchors: usize, seconds: f64) -> Self {
        Self {
            params: params.clone(),
            thresholds: mined.thresholds.clone(),
            stats: mined.stats.clone(),
            histogram: mined.histogram.clone(),
            hard_positive_pairs: mined.hard_positives.len(),
            hard_negative_pairs: mined.hard_negatives.len(),
            injected_anchors,
            seconds,
        }
    }
}

/// Everything measured, as written to `results.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentResults {
    pub config: ExperimentConfig,
    /// CPU model and core count of the machine that ran it.
    pub machine: String,
    pub model_id: String,
    pub catalogue_items: usize,
    pub query_items: usize,
    /// Seconds to get the features, and whether they came from the cache.
    pub feature_seconds: f64,
    pub features_cached: bool,
    /// The raw pretrained features (no head), exact search.
    pub baseline: RetrievalReport,
    pub baseline_seconds: f64,
    pub offline: OfflineSummary,
    /// Every run: each mode at `train.seed`, then the repeated modes at the extra seeds.
    pub runs: Vec<RunResult>,
    pub total_seconds: f64,
}

/// Runs the experiment of the module docs and writes its outputs under `config.out_dir`.
pub fn run(config: &ExperimentConfig) -> anyhow::Result<ExperimentResults> {
    let started = Instant::now();
    let model = EmbeddingModel::load(&config.weights, config.input_size, &Device::Cpu)
        .with_context(|| format!("loading {}", config.weights.display()))?;
    let catalogue_samples = read_subset(&config.source, Split::Train, config.catalogue_per_label)?;
    let query_samples = read_subset(&config.source, Split::Test, config.queries_per_label)?;
    let catalogue_labels: Vec<u32> = catalogue_samples.iter().map(|s| u32::from(s.label)).collect();
    let query_labels: Vec<u32> = query_samples.iter().map(|s| u32::from(s.label)).collect();

    let features_started = Instant::now();
    let (catalogue, catalogue_cached) =
        features::cached_features(&model, Split::Train, &catalogue_samples, &config.cache_dir)?;
    let (queries, queries_cached) = features::cached_features(&model, Split::Test, &query_samples, &config.cache_dir)?;
    let feature_seconds = features_started.elapsed().as_secs_f64();
    tracing::info!(feature_seconds, catalogue_cached, queries_cached, "features ready");

    let baseline_started = Instant::now();
    let baseline = retrieval::evaluate(
        &queries.rows,
        &query_labels,
        &catalogue.rows,
        &catalogue_labels,
        queries.dim,
        &Device::Cpu,
    )?;
    let baseline_seconds = baseline_started.elapsed().as_secs_f64();
    tracing::info!(map_at_r = baseline.metrics.map_at_r, baseline_seconds, "pretrained baseline");

    let mining_started = Instant::now();
    let mined = mine_offline(&catalogue.rows, catalogue.dim, &catalogue_labels, &config.offline)?;
    let injected = mined.injected_positives();
    let offline = OfflineSummary::new(&config.offline, &mined, injected.len(), mining_started.elapsed().as_secs_f64());
    tracing::info!(seconds = offline.seconds, injected = injected.len(), "offline mining");

    let data = RunData {
        catalogue: &catalogue.rows,
        catalogue_labels: &catalogue_labels,
        queries: &queries.rows,
        query_labels: &query_labels,
        injected: &injected,
    };
    let base = TrainParams { input_dim: catalogue.dim, ..config.train.clone() };
    let mut planned: Vec<(Mode, u64)> = Mode::ALL.iter().map(|&mode| (mode, base.seed)).collect();
    for &seed in &config.extra_seeds {
        planned.extend(Mode::ALL.iter().filter(|m| REPEATED_MODES.contains(&m.name)).map(|&mode| (mode, seed)));
    }
    let mut results = Vec::with_capacity(planned.len());
    for (mode, seed) in planned {
        let run =
            runs::run_mode(mode, &TrainParams { seed, ..base.clone() }, config.budget, &config.checkpoints, &data)?;
        tracing::info!(mode = mode.name, seed, train_seconds = run.train_seconds, outcome = ?run.outcome, "run done");
        results.push(run);
    }

    let results = ExperimentResults {
        config: config.clone(),
        machine: report::machine_description(),
        model_id: model.id().to_owned(),
        catalogue_items: catalogue_labels.len(),
        query_items: query_labels.len(),
        feature_seconds,
        features_cached: catalogue_cached && queries_cached,
        baseline,
        baseline_seconds,
        offline,
        runs: results,
        total_seconds: started.elapsed().as_secs_f64(),
    };
    report::write_outputs(&results)?;
    figures::write_figures(&config.out_dir)?;
    Ok(results)
}

/// The first `per_label` samples of each label of `split` (all of them for 0), in file order.
pub fn read_subset(source: &std::path::Path, split: Split, per_label: usize) -> anyhow::Result<Vec<Sample>> {
    let samples = fashion_mnist::read_split(source, split)?;
    if per_label == 0 {
        return Ok(samples);
    }
    Ok(fashion_mnist::balanced_subset(&samples, per_label).into_iter().cloned().collect())
}
