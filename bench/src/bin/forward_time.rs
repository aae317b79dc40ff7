//! Prints the forward time per image of the Lite0 backbone (pooled features)
//! at a few input sizes and batch sizes, plus one depthwise layer against
//! candle's grouped conv2d.
//!
//! Usage: `cargo run --release -p lookalike-bench --bin forward_time [-- [WEIGHTS.safetensors]
//! [--runs SIZExBATCH,...] [--device auto|cpu|cuda|cuda:N]]`; without weights the legacy `.pth`
//! from `$LOOKALIKE_ASSETS` is imported to a temporary file first. `--runs 224x32` times only
//! those rows (and skips the depthwise layer), e.g. for `bench/ingest.sh`. `--device` (default
//! `auto`, as the service) says where the model runs; each timed round ends by synchronising
//! the device, so a GPU's asynchronous work is inside the time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Tensor;
use lookalike::device::DeviceChoice;
use lookalike::network::depthwise::{Padding, depthwise_conv2d};
use lookalike::network::lite0::Lite0;

/// (input size, batch size) rows of the table by default.
const RUNS: [(usize, usize); 6] = [(224, 1), (224, 32), (64, 1), (64, 32), (96, 32), (128, 32)];
/// Images pushed through per row, at least (more for small batches).
const MIN_IMAGES: usize = 64;
/// Timed rounds per row, at least.
const MIN_ROUNDS: usize = 5;
/// Timed rounds of the single depthwise layer.
const LAYER_ROUNDS: usize = 20;

fn main() -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("forward-time-{}.safetensors", std::process::id()));
    let mut args = std::env::args_os().skip(1);
    let mut weights_arg = None;
    let mut runs: Option<Vec<(usize, usize)>> = None;
    let mut choice = DeviceChoice::Auto;
    while let Some(arg) = args.next() {
        if arg == "--runs" {
            let spec = args.next().context("--runs needs SIZExBATCH[,SIZExBATCH...]")?;
            runs = Some(parse_runs(&spec.to_string_lossy())?);
        } else if arg == "--device" {
            let spec = args.next().context("--device needs auto, cpu, cuda or cuda:N")?;
            choice = spec.to_string_lossy().parse().map_err(anyhow::Error::msg)?;
        } else {
            weights_arg = Some(arg);
        }
    }
    let weights = match weights_arg {
        Some(path) => PathBuf::from(path),
        None => {
            let assets = std::env::var_os("LOOKALIKE_ASSETS")
                .map_or_else(|| PathBuf::from("/var/tmp/lookalike-assets"), PathBuf::from);
            let pth = assets.join("efficientnet-lite0-57934424.pth");
            lookalike::network::import::import_weights(&pth, &scratch).context("run scripts/test-assets.sh first")?;
            scratch.clone()
        }
    };
    let device = choice.resolve()?;
    let model = Lite0::load(&weights, &device)?;
    let _ = std::fs::remove_file(&scratch);

    // The machine may be shared: report the best and the median of several rounds.
    println!("device: {}; threads: rayon {}", lookalike::device::name(&device), rayon::current_num_threads());
    println!("{:>6} {:>6} {:>8} {:>16} {:>18}", "size", "batch", "rounds", "best ms/image", "median ms/image");
    let chosen = runs.is_some();
    for (size, batch) in runs.unwrap_or_else(|| RUNS.to_vec()) {
        let x = Tensor::randn(0f32, 1f32, (batch, 3, size, size), &device)?;
        model.features(&x)?; // warm-up
        device.synchronize()?;
        let rounds = MIN_IMAGES.div_ceil(batch).max(MIN_ROUNDS);
        let mut per_image: Vec<f64> = (0..rounds)
            .map(|_| {
                let start = Instant::now();
                model.features(&x)?;
                device.synchronize()?;
                Ok(start.elapsed().as_secs_f64() * 1e3 / batch as f64)
            })
            .collect::<candle_core::Result<_>>()?;
        per_image.sort_by(f64::total_cmp);
        let (best, median) = (per_image[0], per_image[rounds / 2]);
        println!("{size:>6} {batch:>6} {rounds:>8} {best:>16.2} {median:>18.2}");
    }

    if chosen {
        return Ok(());
    }
    // The layer that motivated the dedicated kernel: 5×5, 1152 channels, 7×7.
    let x = Tensor::randn(0f32, 1f32, (1, 1152, 7, 7), &device)?;
    let w = Tensor::randn(0f32, 1f32, (1152, 1, 5, 5), &device)?;
    let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<f64> {
        f()?;
        device.synchronize()?;
        let start = Instant::now();
        for _ in 0..LAYER_ROUNDS {
            f()?;
        }
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64() / LAYER_ROUNDS as f64 * 1e3)
    };
    let ours = time(&|| depthwise_conv2d(&x, &w, 1, Padding::uniform(2)))?;
    let candle = time(&|| x.pad_with_zeros(2, 2, 2)?.pad_with_zeros(3, 2, 2)?.conv2d(&w, 0, 1, 1, 1152))?;
    println!("depthwise 5x5 1152ch 7x7: ours {ours:.3} ms, candle conv2d {candle:.3} ms");
    Ok(())
}

/// `224x32,64x1` → `[(224, 32), (64, 1)]`.
fn parse_runs(spec: &str) -> Result<Vec<(usize, usize)>> {
    spec.split(',')
        .map(|run| {
            let (size, batch) = run.split_once('x').with_context(|| format!("{run:?} is not SIZExBATCH"))?;
            Ok((size.trim().parse()?, batch.trim().parse()?))
        })
        .collect()
}
