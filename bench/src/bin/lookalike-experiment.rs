//! `lookalike-experiment`: the mining experiment of `docs/EXPERIMENTS.md`, one command.
//!
//! Owns the command line only; the protocol is in `lookalike_bench::experiment`. It uses every core and
//! takes minutes (`--tiny`: seconds); run one at a time per cache folder.
//!
//! ```text
//! lookalike-experiment [--tiny] [--weights FILE] [--out DIR] [--cache-dir DIR] [--budget STEPS]
//! lookalike-experiment --replot [--out DIR]     # redraw the figures from DIR/results.json
//! ```

use std::path::PathBuf;

use clap::Parser;
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
        ExperimentConfig::tiny(cli.weights, cli.out)
    } else {
        ExperimentConfig::full(cli.weights, cli.out)
    };
    if let Some(dir) = cli.cache_dir {
        config.cache_dir = dir;
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
