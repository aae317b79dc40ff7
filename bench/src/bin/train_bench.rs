//! Triplet training steps/s of lookalike, and everything the PyTorch peer needs to run the same
//! step on the same data (bench/train.sh; bench/train/peer.py reads the files written here).
//!
//! ```text
//! train_bench head OUT_DIR [--per-label N] [--warmup W] [--steps S]
//! train_bench tail OUT_DIR [--per-label N] [--warmup W] [--steps S]
//! ```
//!
//! `head`: the finetune job's step, [`train_head`] itself, on the Lite0 features (64 px) of
//! Fashion-MNIST training images (the experiment's feature cache, computed when missing).
//! `tail`: [`train_tail`], the last MBConv block, head convolution and head trained together,
//! on the activations entering that block (computed once, cached beside the features).
//!
//! Both run batch-hard mining with the `[finetune]` defaults of `TrainParams` (P×K = 8×4, margin
//! 0.2, AdamW lr 1e-3, weight decay 0.01, seed 0). The offline+online default mode runs the same
//! step on batches drawn differently, so batch-hard is the step that both sides can share.
//!
//! Into OUT_DIR go `manifest.json` (files, shapes, parameters), the initial weights and every
//! batch's item indices as raw little-endian files, and for `tail` the embeddings of the first
//! batch under the initial weights (the peer's forward check). Steps/s is taken over `steps`
//! steps after `warmup` untimed ones, from the times at which the training loop reports each step;
//! the result is one JSON line on stdout. Threads: candle's and rayon's (`RAYON_NUM_THREADS`).

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Module, Tensor};
use candle_nn::VarMap;
use clap::{Parser, ValueEnum};
use fashion_mnist::{self, Sample, Split};
use lookalike::network::EmbeddingModel;
use lookalike::network::lite0::{BLOCKS, Lite0};
use lookalike::network::preprocess::batch_tensor;
use lookalike::network::preprocess::prepare;
use lookalike::train::{
    BackboneTail, EmbeddingHead, PkSampler, PkShape, TrainError, TrainParams, train_head, train_tail,
};
use lookalike_bench::experiment::features::{self, Features};
use serde_json::json;

/// The block `tail` trains from: the last one.
const LAST_BLOCK: usize = BLOCKS - 1;
/// The input size the experiment cached its features at.
const INPUT_SIZE: u32 = 64;
/// Images pushed through the frozen backbone at once when caching block inputs.
const BACKBONE_BATCH: usize = 32;
/// Pixel bound handed to [`prepare`]; Fashion-MNIST images have 784.
const MAX_PIXELS: u64 = 1 << 20;
/// Losses reported per run, for the agreement check.
const REPORTED_LOSSES: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// Head only, on cached pooled features.
    Head,
    /// Last block + head convolution + head, on cached block inputs.
    Tail,
}

#[derive(Parser)]
#[command(about = "Times lookalike's triplet training step and exports it for the PyTorch peer")]
struct Cli {
    part: Part,
    out: PathBuf,
    /// Training images per label (first in file order); 0 for all 60,000.
    #[arg(long, default_value_t = 0)]
    per_label: usize,
    /// Untimed steps before the timed ones (at least 1).
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 500)]
    steps: usize,
    #[arg(long, env = "LOOKALIKE_WEIGHTS", default_value = "/var/tmp/lookalike-assets/efficientnet-lite0.safetensors")]
    weights: PathBuf,
    /// Where features and block inputs are cached (the mining experiment's folder).
    #[arg(long, env = "FEATURES_DIR", default_value = "/var/tmp/lookalike-experiment")]
    cache_dir: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    ensure!(cli.steps > 0 && cli.warmup > 0, "--steps and --warmup must be positive");
    fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    lookalike_bench::experiment::deep::import_weights_if_missing(&cli.weights)?;
    let model = EmbeddingModel::load(&cli.weights, INPUT_SIZE, &Device::Cpu)
        .with_context(|| format!("loading {} (run scripts/test-assets.sh)", cli.weights.display()))?;
    let all = fashion_mnist::read_split(Path::new(fashion_mnist::DEFAULT_DIR), Split::Train)?;
    let samples: Vec<Sample> = fashion_mnist::balanced_subset(&all, cli.per_label).into_iter().cloned().collect();
    let labels: Vec<u32> = samples.iter().map(|s| u32::from(s.label)).collect();
    write_u32(&cli.out.join("labels.u32"), &labels)?;
    let params = TrainParams { epochs: usize::MAX, ..TrainParams::default() };
    let total = cli.warmup + cli.steps;
    let batches = export_batches(&cli.out, &labels, &params, total)?;
    let mut manifest = json!({
        "part": match cli.part { Part::Head => "head", Part::Tail => "tail" },
        "items": labels.len(),
        "labels": "labels.u32",
        "batches": { "file": "batches.u32", "shape": [total, batches[0].len()] },
        "warmup": cli.warmup,
        "steps": cli.steps,
        "margin": params.margin,
        "learning_rate": params.learning_rate,
        "weight_decay": params.weight_decay,
        "adam_betas": [0.9, 0.999],
        "adam_eps": 1e-8,
        "mining": params.mining.name(),
    });

    let (times, losses, extra) = match cli.part {
        Part::Head => {
            let (cached, path) = head_features(&model, &samples, &cli.cache_dir)?;
            manifest["inputs"] = json!({ "file": path, "format": "lkfeat", "shape": [cached.len(), cached.dim] });
            let head = EmbeddingHead::seeded(
                &VarMap::new(),
                cached.dim,
                params.embedding_dim,
                params.head_init_seed(),
                &Device::Cpu,
            )?;
            let (weight, bias) = head.weights()?;
            manifest["weights"] = json!([
                export(&cli.out, "head.weight", &weight, &[params.embedding_dim, cached.dim])?,
                export(&cli.out, "head.bias", &bias, &[params.embedding_dim])?,
            ]);
            let params = TrainParams { input_dim: cached.dim, ..params };
            let (times, losses) = time_head(&cached.rows, &labels, &params, total)?;
            (times, losses, json!({}))
        }
        Part::Tail => {
            let lite0 = Lite0::load(&cli.weights, &Device::Cpu)?;
            let (inputs, path) = block_inputs(&model, &lite0, &samples, &cli.cache_dir)?;
            manifest["inputs"] = json!({ "file": path, "format": "lkfeat", "shape": inputs.dims() });
            let tail =
                BackboneTail::new(&lite0.tail_weights(LAST_BLOCK)?, params.embedding_dim, params.head_init_seed())?;
            let feature_check =
                check_tail_features(&model, &lite0, &tail, &samples[..samples.len().min(BACKBONE_BATCH)])?;
            eprintln!("tail features against the model's own embeddings: max |difference| {feature_check:.2e}");
            let mut weights = Vec::new();
            for (name, tensor) in tail.named_weights() {
                weights.push(export(&cli.out, &name, &tensor.flatten_all()?.to_vec1()?, tensor.dims())?);
            }
            manifest["weights"] = json!(weights);
            let first: Vec<u32> = batches[0].iter().map(|&i| i as u32).collect();
            let first = inputs.index_select(&Tensor::new(first, &Device::Cpu)?, 0)?;
            let embedded = tail.forward(&first)?;
            manifest["forward"] = export(&cli.out, "forward", &embedded.flatten_all()?.to_vec1()?, embedded.dims())?;
            let (times, losses) = time_tail(&tail, &inputs, &labels, &params, total)?;
            (times, losses, json!({ "feature_check": feature_check }))
        }
    };
    fs::write(cli.out.join("manifest.json"), serde_json::to_vec_pretty(&manifest)?)?;
    // times[i] is when step i ended: the timed steps are warmup..total.
    let seconds = times[total - 1].duration_since(times[cli.warmup - 1]).as_secs_f64();
    let timed = cli.steps;
    let line = json!({
        "part": manifest["part"],
        "engine": "lookalike",
        "items": labels.len(),
        "steps": timed,
        "seconds": seconds,
        "steps_per_s": timed as f64 / seconds,
        "losses": losses.iter().take(REPORTED_LOSSES).collect::<Vec<_>>(),
        "threads": rayon::current_num_threads(),
        "extra": extra,
    });
    println!("{line}");
    Ok(())
}

/// The item indices of the first `total` batches `train_head` and `train_tail` draw, written as
/// `batches.u32` (one row of P·K per step).
fn export_batches(out: &Path, labels: &[u32], params: &TrainParams, total: usize) -> Result<Vec<Vec<usize>>> {
    let shape = PkShape { labels_per_batch: params.batch_classes, items_per_label: params.batch_per_class };
    let sampler = PkSampler::new(labels, shape, params.seed)?;
    let batches: Vec<Vec<usize>> =
        (0u64..).flat_map(|epoch| sampler.epoch(epoch)).take(total).map(|batch| batch.items).collect();
    let flat: Vec<u32> = batches.iter().flatten().map(|&i| i as u32).collect();
    write_u32(&out.join("batches.u32"), &flat)?;
    Ok(batches)
}

/// The experiment's cached features of `samples` (computed and cached when missing), and the file.
fn head_features(model: &EmbeddingModel, samples: &[Sample], cache_dir: &Path) -> Result<(Features, PathBuf)> {
    let (cached, hit) = features::cached_features(model, Split::Train, samples, cache_dir)?;
    let path = features::cache_path(cache_dir, model, Split::Train, samples.len());
    eprintln!("features: {} ({})", path.display(), if hit { "cached" } else { "computed now" });
    Ok((cached, path))
}

/// The activations entering block 15 for `samples`, N×H×W×C, from their cache file (written when
/// missing: the images go through the server's image path and the frozen backbone).
fn block_inputs(
    model: &EmbeddingModel,
    lite0: &Lite0,
    samples: &[Sample],
    cache_dir: &Path,
) -> Result<(Tensor, PathBuf)> {
    let side = (INPUT_SIZE as usize).div_ceil(32);
    let name = format!("{}-{INPUT_SIZE}px-train-block{LAST_BLOCK}-{}.f32", model.id(), samples.len());
    let path = cache_dir.join(name);
    let cached = if path.is_file() {
        eprintln!("block inputs: {} (cached)", path.display());
        features::read_cache(&path)?
    } else {
        let started = Instant::now();
        let mut rows = Vec::new();
        let mut dim = 0;
        for chunk in samples.chunks(BACKBONE_BATCH) {
            let x = backbone_input(chunk)?;
            let y = lite0.block_input(&x, LAST_BLOCK)?;
            dim = y.elem_count() / chunk.len();
            rows.extend(y.flatten_all()?.to_vec1::<f32>()?);
        }
        let cached = Features { rows, dim };
        fs::create_dir_all(cache_dir)?;
        features::write_cache(&path, &cached)?;
        eprintln!("block inputs: {} (computed in {:.1} s)", path.display(), started.elapsed().as_secs_f64());
        cached
    };
    ensure!(cached.len() == samples.len() && cached.dim % (side * side) == 0, "{} does not fit", path.display());
    let channels = cached.dim / (side * side);
    let inputs = Tensor::from_vec(cached.rows, (samples.len(), side, side, channels), &Device::Cpu)?;
    Ok((inputs, path))
}

/// The model input of `samples` through the server's path (PNG, decode, resize, normalise).
fn backbone_input(samples: &[Sample]) -> Result<Tensor> {
    let inputs = samples
        .iter()
        .map(|sample| Ok(prepare(&fashion_mnist::png_bytes(sample), MAX_PIXELS, INPUT_SIZE)?.input))
        .collect::<Result<Vec<_>>>()?;
    Ok(batch_tensor(&inputs, INPUT_SIZE, &Device::Cpu)?)
}

/// Largest difference between the untrained tail's pooled features and the model's own
/// embeddings of the same images (both L2-normalised): the tail is the network's real end.
fn check_tail_features(model: &EmbeddingModel, lite0: &Lite0, tail: &BackboneTail, samples: &[Sample]) -> Result<f32> {
    let x = backbone_input(samples)?;
    let inputs: Vec<Vec<f32>> = samples
        .iter()
        .map(|sample| Ok(prepare(&fashion_mnist::png_bytes(sample), MAX_PIXELS, INPUT_SIZE)?.input))
        .collect::<Result<_>>()?;
    let expected: Vec<f32> = model.embed(&inputs)?.into_iter().flatten().collect();
    let ours = tail.features(&lite0.block_input(&x, LAST_BLOCK)?)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max))
}

/// Times `train_head` over `total` steps; returns the time each step ended and the losses.
fn time_head(features: &[f32], labels: &[u32], params: &TrainParams, total: usize) -> Result<(Vec<Instant>, Vec<f32>)> {
    let (mut times, mut losses) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let outcome = train_head(features, labels, None, params, &Device::Cpu, &mut |report, _| {
        times.push(Instant::now());
        losses.push(report.loss);
        if times.len() == total { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    match outcome {
        Err(TrainError::Canceled { .. }) => Ok((times, losses)),
        Err(error) => Err(error.into()),
        Ok(_) => bail!("training ended after {} of {total} steps", times.len()),
    }
}

/// Times `train_tail` over `total` steps; returns the time each step ended and the losses.
fn time_tail(
    tail: &BackboneTail,
    inputs: &Tensor,
    labels: &[u32],
    params: &TrainParams,
    total: usize,
) -> Result<(Vec<Instant>, Vec<f32>)> {
    let (mut times, mut losses) = (Vec::with_capacity(total), Vec::with_capacity(total));
    let outcome = train_tail(tail, inputs, labels, None, params, &mut |report, _| {
        times.push(Instant::now());
        losses.push(report.loss);
        if times.len() == total { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    });
    match outcome {
        Err(TrainError::Canceled { .. }) => Ok((times, losses)),
        Err(error) => Err(error.into()),
        Ok(_) => bail!("training ended after {} of {total} steps", times.len()),
    }
}

/// Writes `values` as `<name>.f32` and returns its manifest entry.
fn export(out: &Path, name: &str, values: &[f32], shape: &[usize]) -> Result<serde_json::Value> {
    let file = format!("{name}.f32");
    ensure!(values.len() == shape.iter().product::<usize>(), "{name}: {} values for {shape:?}", values.len());
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(out.join(&file), bytes)?;
    Ok(json!({ "name": name, "file": file, "shape": shape }))
}

fn write_u32(path: &Path, values: &[u32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(fs::write(path, bytes)?)
}
