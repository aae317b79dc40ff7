//! The deep experiment: does training the backbone's last blocks with the head retrieve better
//! than the head alone, and does offline+online mining still help?
//!
//! One run per process (`lookalike-experiment deep --blocks N --mode M`), so that the peak memory
//! it reports (`VmHWM`) is that run's own; `bench/deep_experiment.sh` runs the matrix and
//! `bench/deep_table.py` gathers the runs' JSON into the table of `docs/EXPERIMENTS.md`.
//!
//! Protocol, as [`super`]'s: the 60,000 Fashion-MNIST training images are the catalogue and the
//! training set, the 10,000 test images the queries (never trained on), exact search, MAP@R with
//! the true R, Recall@1/5/10, images through the server's path at 64 px.
//! - The frozen part of the backbone runs once: the activations entering block [`CACHE_BLOCK`]
//!   of every image are cached on disk (the module docs of [`super::features`] give the format);
//!   a run with N trained blocks continues them through the frozen blocks up to block 16 − N.
//! - The pretrained features (for the baseline and offline mining) are the frozen network's own
//!   end applied to the same cache, L2-normalised.
//! - `--blocks 0` trains the head alone on those features (`train_head`), N ≥ 1 trains the last N
//!   blocks, the head convolution and the head together (`train_tail`), from the same seed, for
//!   the same number of steps with the same batches (P×K sampling depends on the labels and the
//!   seed only).
//! - Checkpoints embed the catalogue and the queries through the model as trained so far.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use candle_core::{D, Device, Module, Tensor};
use rayon::prelude::*;
use serde::Serialize;

use super::features::{self, Features};
use super::read_subset;
use super::runs::{Checkpoint, Mode, Outcome, Recorder};
use super::views::MirrorViews;
use fashion_mnist::{self, Sample, Split};
use lookalike::network::EmbeddingModel;
use lookalike::network::lite0::{BLOCKS, Lite0};
use lookalike::network::preprocess::{batch_tensor, prepare};
use lookalike::train::retrieval::{self, Metrics};
use lookalike::train::{
    BackboneTail, BatchInputs, EmbeddingHead, OfflineMiningParams, PkSampler, PkShape, TrainError, TrainParams,
    WithReference, mine_offline, train_head, train_tail,
};

/// The block whose inputs are cached: runs may train up to `BLOCKS − CACHE_BLOCK` = 5 blocks.
pub const CACHE_BLOCK: usize = 11;
/// Images through the frozen backbone per task.
const BACKBONE_CHUNK: usize = 256;
/// Items embedded per forward pass at a checkpoint.
const EVAL_CHUNK: usize = 2048;
/// The legacy PyTorch weights scripts/test-assets.sh fetches, beside the safetensors.
const PTH_NAME: &str = "efficientnet-lite0-57934424.pth";
/// Pixel bound handed to [`prepare`]; Fashion-MNIST images have 784.
const MAX_PIXELS: u64 = 1 << 20;

/// One run of the deep experiment.
#[derive(Debug, Clone, Serialize)]
pub struct DeepConfig {
    pub weights: PathBuf,
    pub input_size: u32,
    pub source: PathBuf,
    pub cache_dir: PathBuf,
    /// Catalogue and query images per label (first in file order); 0 for the whole split.
    pub catalogue_per_label: usize,
    pub queries_per_label: usize,
    /// Trained blocks: 0 for the head alone, 1 to 5.
    pub blocks: usize,
    pub mode: &'static str,
    pub budget: usize,
    pub checkpoints: Vec<usize>,
    pub train: TrainParams,
    pub offline: OfflineMiningParams,
    /// Shares α of the pretrained geometry to also evaluate at each checkpoint (logged): each
    /// item as `[√α·pretrained feature ; √(1−α)·trained embedding]`, so squared distances mix
    /// as α·pretrained + (1−α)·trained.
    pub mix: Vec<f32>,
    /// Train on each item's image or its mirror image, drawn per step ([`super::views`]).
    pub mirror_views: bool,
}

/// What one run measured (one JSON file).
#[derive(Debug, Clone, Serialize)]
pub struct DeepRun {
    pub config: DeepConfig,
    pub machine: String,
    pub model_id: String,
    pub catalogue_items: usize,
    pub query_items: usize,
    /// The pretrained features, exact search.
    pub baseline: Metrics,
    pub outcome: Outcome,
    pub steps: usize,
    pub checkpoints: Vec<Checkpoint>,
    /// Seconds: the frozen backbone (0 when cached), continuing the cache to the run's block,
    /// offline mining (offline+online only), training alone, checkpoint evaluations, the run.
    pub backbone_seconds: f64,
    pub prepare_seconds: f64,
    pub mining_seconds: f64,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub total_seconds: f64,
    /// Peak resident memory of the process (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// The trained embedding blended with the pretrained features ([`DeepConfig::mix`]), at
    /// each checkpoint.
    pub blended: Vec<Blended>,
}

/// Quality of one blend at one checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Blended {
    pub step: usize,
    pub share: f32,
    pub metrics: Metrics,
}

/// Runs one configuration and returns what it measured.
pub fn run(config: &DeepConfig) -> anyhow::Result<DeepRun> {
    ensure!(config.blocks <= BLOCKS - CACHE_BLOCK, "--blocks must be 0 to {}", BLOCKS - CACHE_BLOCK);
    let mode = *Mode::ALL.iter().find(|m| m.name == config.mode).context("unknown mode")?;
    let started = Instant::now();
    let device = Device::Cpu;
    import_weights_if_missing(&config.weights)?;
    let model = EmbeddingModel::load(&config.weights, config.input_size, &device)?;
    let lite0 = Lite0::load(&config.weights, &device)?;
    let catalogue_samples = read_subset(&config.source, Split::Train, config.catalogue_per_label)?;
    let query_samples = read_subset(&config.source, Split::Test, config.queries_per_label)?;
    let catalogue_labels: Vec<u32> = catalogue_samples.iter().map(|s| u32::from(s.label)).collect();
    let query_labels: Vec<u32> = query_samples.iter().map(|s| u32::from(s.label)).collect();

    let backbone_started = Instant::now();
    let (catalogue_cache, hit_c) =
        cached_block_inputs(config, &model, &lite0, Split::Train, &catalogue_samples, false)?;
    let (query_cache, hit_q) = cached_block_inputs(config, &model, &lite0, Split::Test, &query_samples, false)?;
    let backbone_seconds = if hit_c && hit_q { 0.0 } else { backbone_started.elapsed().as_secs_f64() };

    let prepare_started = Instant::now();
    let first_block = BLOCKS - config.blocks;
    let catalogue_inputs = continue_to(&lite0, &catalogue_cache, first_block)?;
    let mirrored_inputs = if config.mirror_views {
        let (cache, _) = cached_block_inputs(config, &model, &lite0, Split::Train, &catalogue_samples, true)?;
        Some(continue_to(&lite0, &cache, first_block)?)
    } else {
        None
    };
    let query_inputs = continue_to(&lite0, &query_cache, first_block)?;
    let pretrained_catalogue = pretrained_features(&lite0, &catalogue_cache)?;
    let pretrained_queries = pretrained_features(&lite0, &query_cache)?;
    drop((catalogue_cache, query_cache));
    let prepare_seconds = prepare_started.elapsed().as_secs_f64();
    let dim = lookalike::network::lite0::FEATURE_DIM;
    let baseline = retrieval::evaluate(
        &pretrained_queries,
        &query_labels,
        &pretrained_catalogue,
        &catalogue_labels,
        dim,
        &device,
    )?
    .metrics;
    tracing::info!(?baseline, prepare_seconds, "pretrained baseline");

    let mining_started = Instant::now();
    let injected = if mode.offline_injection {
        mine_offline(&pretrained_catalogue, dim, &catalogue_labels, &config.offline)?.injected_positives()
    } else {
        HashMap::new()
    };
    let mining_seconds = mining_started.elapsed().as_secs_f64();

    let params = mode.params(&TrainParams { input_dim: dim, ..config.train.clone() });
    let shape = PkShape { labels_per_batch: params.batch_classes, items_per_label: params.batch_per_class };
    let per_epoch = PkSampler::new(&catalogue_labels, shape, params.seed)?.batches_per_epoch();
    let params = TrainParams { epochs: config.budget.div_ceil(per_epoch).max(1), ..params };
    let data = EvalData { catalogue_labels: &catalogue_labels, query_labels: &query_labels };

    let mut recorder = Recorder::new(config.budget, &config.checkpoints);
    let blended = std::cell::RefCell::new(Vec::new());
    let train_started = Instant::now();
    let trained = if config.blocks == 0 {
        let evaluate = |head: &EmbeddingHead| -> anyhow::Result<Metrics> {
            let gallery = head.embed_rows(&pretrained_catalogue, &device)?;
            let queries = head.embed_rows(&pretrained_queries, &device)?;
            data.metrics(&queries, &gallery, head.out_dim())
        };
        if config.checkpoints.contains(&0) {
            let initial = super::runs::initial_head(&params)?;
            recorder.checkpoints.push(Checkpoint::at_start(evaluate(&initial)?));
        }
        train_head(&pretrained_catalogue, &catalogue_labels, Some(&injected), &params, &device, &mut |report, head| {
            recorder.observe(report, || evaluate(head))
        })
        .map(|t| t.steps)
    } else {
        let tail = BackboneTail::new(&lite0.tail_weights(first_block)?, params.embedding_dim, params.head_init_seed())?;
        let evaluate = |tail: &BackboneTail| -> anyhow::Result<Metrics> {
            let gallery = embed_through(tail, &catalogue_inputs)?;
            let queries = embed_through(tail, &query_inputs)?;
            let step = blended.borrow().len() / config.mix.len().max(1);
            for &share in &config.mix {
                let d = params.embedding_dim;
                let mixed_gallery = mixed(&pretrained_catalogue, &gallery, dim, d, share);
                let mixed_queries = mixed(&pretrained_queries, &queries, dim, d, share);
                let metrics = data.metrics(&mixed_queries, &mixed_gallery, dim + d)?;
                tracing::info!(share, ?metrics, "blended with the pretrained features");
                // The checkpoint's step: the n-th evaluation is the n-th checkpoint.
                blended.borrow_mut().push(Blended { step, share, metrics });
            }
            data.metrics(&queries, &gallery, params.embedding_dim)
        };
        if config.checkpoints.contains(&0) {
            recorder.checkpoints.push(Checkpoint::at_start(evaluate(&tail)?));
        }
        // The geometry term's reference (the pretrained features, unit length); a copy of 60,000
        // rows is made only when the term is on.
        let reference = if params.geometry_weight > 0.0 {
            Tensor::from_slice(&pretrained_catalogue, (catalogue_labels.len(), dim), &device)?
        } else {
            Tensor::zeros((0, dim), candle_core::DType::F32, &device)?
        };
        let views = match &mirrored_inputs {
            Some(mirrored) => Some(MirrorViews {
                rows: Tensor::cat(&[&catalogue_inputs, mirrored], 0)?,
                items: catalogue_labels.len(),
                seed: params.seed,
            }),
            None => None,
        };
        let training: &dyn BatchInputs = match &views {
            Some(views) => views,
            None => &catalogue_inputs,
        };
        let inputs = WithReference { inputs: training, reference: &reference };
        train_tail(&tail, &inputs, &catalogue_labels, Some(&injected), &params, &mut |report, tail| {
            recorder.observe(report, || evaluate(tail))
        })
        .map(|losses| losses.len())
    };
    let elapsed = train_started.elapsed();
    if let Some(error) = recorder.error.take() {
        return Err(error.context("evaluating a checkpoint"));
    }
    let outcome = match trained {
        Err(TrainError::Canceled { steps }) if steps == config.budget => Outcome::Completed,
        Ok(steps) if steps == config.budget => Outcome::Completed,
        Ok(steps) => Outcome::Failed(format!("the epochs ran out after {steps} steps")),
        Err(error @ (TrainError::Collapsed { .. } | TrainError::Diverged { .. })) => Outcome::Failed(error.to_string()),
        Err(other) => return Err(other.into()),
    };
    Ok(DeepRun {
        config: config.clone(),
        machine: super::report::machine_description(),
        model_id: model.id().to_owned(),
        catalogue_items: catalogue_labels.len(),
        query_items: query_labels.len(),
        baseline,
        outcome,
        steps: recorder.steps,
        checkpoints: recorder.checkpoints,
        backbone_seconds,
        prepare_seconds,
        mining_seconds,
        train_seconds: elapsed.saturating_sub(recorder.eval_time).as_secs_f64(),
        eval_seconds: recorder.eval_time.as_secs_f64(),
        total_seconds: started.elapsed().as_secs_f64(),
        peak_rss_mib: peak_rss_mib().unwrap_or(f64::NAN),
        blended: blended
            .into_inner()
            .into_iter()
            .map(|b| Blended { step: config.checkpoints.get(b.step).copied().unwrap_or(b.step), ..b })
            .collect(),
    })
}

/// Labels of the two sides of a checkpoint's search.
struct EvalData<'a> {
    catalogue_labels: &'a [u32],
    query_labels: &'a [u32],
}

impl EvalData<'_> {
    fn metrics(&self, queries: &[f32], gallery: &[f32], dim: usize) -> anyhow::Result<Metrics> {
        Ok(retrieval::evaluate(queries, self.query_labels, gallery, self.catalogue_labels, dim, &Device::Cpu)?.metrics)
    }
}

/// The activations entering [`CACHE_BLOCK`] for `samples`, N×H×W×C: from the cache file when
/// present, else computed (PNG, the server's decoding, the frozen backbone) and cached; of the
/// mirror images (flipped left to right) when `mirrored`. The `bool` says whether the cache
/// answered.
fn cached_block_inputs(
    config: &DeepConfig,
    model: &EmbeddingModel,
    lite0: &Lite0,
    split: Split,
    samples: &[Sample],
    mirrored: bool,
) -> anyhow::Result<(Tensor, bool)> {
    let side = (config.input_size as usize).div_ceil(16);
    let name = format!(
        "{}-{}px-{}-block{CACHE_BLOCK}-{}{}.f32",
        model.id(),
        config.input_size,
        split.file_prefix(),
        samples.len(),
        if mirrored { "-mirrored" } else { "" }
    );
    let path = config.cache_dir.join(name);
    let (cached, hit) = if path.is_file() {
        (features::read_cache(&path)?, true)
    } else {
        let started = Instant::now();
        let chunks = samples
            .chunks(BACKBONE_CHUNK)
            .map(|chunk| {
                let inputs = chunk
                    .par_iter()
                    .map(|s| Ok(prepare(&fashion_mnist::png_bytes(s), MAX_PIXELS, config.input_size)?.input))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let mut x = batch_tensor(&inputs, config.input_size, &Device::Cpu)?;
                if mirrored {
                    let columns: Vec<u32> = (0..config.input_size).rev().collect();
                    x = x.index_select(&Tensor::new(columns, &Device::Cpu)?, 3)?;
                }
                Ok(lite0.block_input(&x, CACHE_BLOCK)?.flatten_all()?.to_vec1::<f32>()?)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let rows: Vec<f32> = chunks.concat();
        let cached = Features { dim: rows.len() / samples.len().max(1), rows };
        fs::create_dir_all(&config.cache_dir)?;
        features::write_cache(&path, &cached)?;
        tracing::info!(path = %path.display(), seconds = started.elapsed().as_secs_f64(), "block inputs cached");
        (cached, false)
    };
    ensure!(cached.len() == samples.len() && cached.dim % (side * side) == 0, "{} does not fit", path.display());
    let channels = cached.dim / (side * side);
    Ok((Tensor::from_vec(cached.rows, (samples.len(), side, side, channels), &Device::Cpu)?, hit))
}

/// `inputs` (entering [`CACHE_BLOCK`]) through the frozen blocks up to `first_block`.
fn continue_to(lite0: &Lite0, inputs: &Tensor, first_block: usize) -> anyhow::Result<Tensor> {
    let n = inputs.dim(0)?;
    let parts = (0..n)
        .step_by(BACKBONE_CHUNK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|at| lite0.forward_blocks(&inputs.narrow(0, at, BACKBONE_CHUNK.min(n - at))?, CACHE_BLOCK, first_block))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// The pretrained network's L2-normalised features from the cached block inputs, row-major.
fn pretrained_features(lite0: &Lite0, inputs: &Tensor) -> anyhow::Result<Vec<f32>> {
    let pooled = lite0.features_from(inputs, CACHE_BLOCK)?;
    let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    Ok(pooled.broadcast_div(&norms)?.flatten_all()?.to_vec1()?)
}

/// Rows `[√α·pretrained ; √(1−α)·trained]` (see [`DeepConfig::mix`]).
fn mixed(pretrained: &[f32], trained: &[f32], pre_dim: usize, dim: usize, alpha: f32) -> Vec<f32> {
    let (a, b) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    pretrained
        .chunks_exact(pre_dim)
        .zip(trained.chunks_exact(dim))
        .flat_map(|(p, t)| p.iter().map(move |x| a * x).chain(t.iter().map(move |x| b * x)))
        .collect()
}

/// Rows of `tail`'s embeddings of every input, in chunks.
fn embed_through(tail: &BackboneTail, inputs: &Tensor) -> anyhow::Result<Vec<f32>> {
    let n = inputs.dim(0)?;
    let mut rows = Vec::new();
    for at in (0..n).step_by(EVAL_CHUNK) {
        let chunk = inputs.narrow(0, at, EVAL_CHUNK.min(n - at))?;
        rows.extend(tail.forward(&chunk)?.detach().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(rows)
}

/// Imports the legacy `.pth` that scripts/test-assets.sh fetches beside `weights` when the
/// safetensors file is missing (the test suite does the same on its first run).
pub fn import_weights_if_missing(weights: &Path) -> anyhow::Result<()> {
    if weights.is_file() {
        return Ok(());
    }
    let pth = weights.with_file_name(PTH_NAME);
    tracing::info!(from = %pth.display(), to = %weights.display(), "importing the weights");
    lookalike::network::import::import_weights(&pth, weights).context("run scripts/test-assets.sh first")?;
    Ok(())
}

/// The process's peak resident set (`VmHWM` of `/proc/self/status`), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
