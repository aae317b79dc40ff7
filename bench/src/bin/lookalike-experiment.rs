//! `lookalike-experiment`: the mining experiment of `docs/EXPERIMENTS.md`, one command.
//!
//! Owns the command line only; the protocol is in `lookalike_bench::experiment`. It uses every core and
//! takes minutes (`--tiny`: seconds); run one at a time per cache folder.
//!
//! ```text
//! lookalike-experiment [--tiny] [--weights FILE] [--out DIR] [--cache-dir DIR] [--budget STEPS]
//! lookalike-experiment --replot [--out DIR]     # redraw the figures from DIR/results.json
//! lookalike-experiment --deep-blocks N --mode MODE --out FILE.json [--tiny] [--budget STEPS] [--seed S]
//! ```
//!
//! `--deep-blocks` runs one configuration of the deep experiment (`experiment::deep`): N trained
//! blocks (0 = the head alone) with one mining mode; `bench/deep_experiment.sh` runs the matrix.

use std::path::PathBuf;

use clap::Parser;
use lookalike::train::TrainParams;
use lookalike_bench::experiment::deep::DeepConfig;
use lookalike_bench::experiment::{self, ExperimentConfig};

#[derive(Parser)]
#[command(name = "lookalike-experiment", about = "Compares triplet mining modes on Fashion-MNIST")]
struct Cli {
    /// A smoke run of seconds (200 catalogue images, 50 queries, 20 steps) instead of the full one.
    #[arg(long)]
    tiny: bool,
    /// Backbone weights (safetensors, from `lookalike fetch-model` or scripts/test-assets.sh).
    #[arg(long, default_value = "/var/tmp/lookalike-assets/efficientnet-lite0.safetensors")]
    weights: PathBuf,
    /// Where results.json, tables.md and the figures go.
    #[arg(long, default_value = "docs/experiments")]
    out: PathBuf,
    /// Where backbone features are cached between runs.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Optimiser steps per run; checkpoints scale with it. Default: the protocol's.
    #[arg(long)]
    budget: Option<usize>,
    /// Only redraw the figures from the `results.json` already in `--out`; runs nothing.
    #[arg(long)]
    replot: bool,
    /// One run of the deep experiment with this many trained backbone blocks (0 to 5); `--out`
    /// is then the JSON file it writes.
    #[arg(long)]
    deep_blocks: Option<usize>,
    /// The deep run's mining mode (offline+online, batch-hard, batch-all, semi-hard, random).
    #[arg(long, default_value = "offline+online")]
    mode: String,
    /// The deep run's seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The deep run's training parameters, as a JSON object of `TrainParams` fields over the
    /// defaults (for example `{"backbone_learning_rate": 3e-5, "embedding_dim": 256}`).
    #[arg(long, default_value = "{}")]
    train: String,
    /// Deep runs: also evaluate the trained embedding mixed with this share of the pretrained
    /// features at each checkpoint (logged), e.g. `--mix 0.25,0.5`.
    #[arg(long, value_delimiter = ',')]
    mix: Vec<f32>,
    /// Deep runs: each step trains on each item's image or, half the time, its mirror image
    /// (both cached), the augmentation that cached activations allow.
    #[arg(long)]
    mirror_views: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.replot {
        return experiment::figures::write_figures(&cli.out);
    }
    let mut config = if cli.tiny {
        ExperimentConfig::tiny(cli.weights.clone(), cli.out.clone())
    } else {
        ExperimentConfig::full(cli.weights.clone(), cli.out.clone())
    };
    if let Some(dir) = cli.cache_dir.clone() {
        config.cache_dir = dir;
    }
    if let Some(blocks) = cli.deep_blocks {
        return deep(&cli, config, blocks);
    }
    if let Some(budget) = cli.budget {
        config.checkpoints = config.checkpoints.iter().map(|&c| c * budget / config.budget).collect();
        config.budget = budget;
    }
    let results = experiment::run(&config)?;
    println!("{}", experiment::report::tables(&results));
    eprintln!("total wall time {:.0} s; outputs in {}", results.total_seconds, config.out_dir.display());
    Ok(())
}

/// One deep run on the data, input size and parameters of `base`; writes its JSON to `--out`.
fn deep(cli: &Cli, base: ExperimentConfig, blocks: usize) -> anyhow::Result<()> {
    let mode = experiment::runs::Mode::ALL
        .iter()
        .find(|m| m.name == cli.mode)
        .ok_or_else(|| anyhow::anyhow!("unknown mode {:?}", cli.mode))?
        .name;
    let budget = cli.budget.unwrap_or(base.budget);
    let checkpoints = [0, budget / 3, 2 * budget / 3, budget];
    let config = DeepConfig {
        weights: base.weights,
        input_size: base.input_size,
        source: base.source,
        cache_dir: base.cache_dir,
        catalogue_per_label: base.catalogue_per_label,
        queries_per_label: base.queries_per_label,
        blocks,
        mode,
        budget,
        checkpoints: checkpoints.to_vec(),
        train: train_params(&base.train, &cli.train, cli.seed)?,
        offline: base.offline,
        mix: cli.mix.clone(),
        mirror_views: cli.mirror_views,
    };
    let run = experiment::deep::run(&config)?;
    if let Some(dir) = cli.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.out, serde_json::to_vec_pretty(&run)?)?;
    let last = run.checkpoints.last().map(|c| c.metrics);
    eprintln!(
        "{blocks} blocks, {mode}: {last:?} after {} steps; training {:.0} s, peak {:.0} MiB; wrote {}",
        run.steps,
        run.train_seconds,
        run.peak_rss_mib,
        cli.out.display()
    );
    Ok(())
}

/// `base` with the fields of the JSON object `overrides`, and `seed`.
fn train_params(base: &TrainParams, overrides: &str, seed: u64) -> anyhow::Result<TrainParams> {
    let mut merged = serde_json::to_value(base)?;
    let overrides: serde_json::Value = serde_json::from_str(overrides)?;
    let (Some(target), Some(fields)) = (merged.as_object_mut(), overrides.as_object()) else {
        anyhow::bail!("--train must be a JSON object");
    };
    for (key, value) in fields {
        anyhow::ensure!(target.contains_key(key), "--train: no training parameter {key:?}");
        target.insert(key.clone(), value.clone());
    }
    Ok(TrainParams { seed, ..serde_json::from_value(merged)? })
}
