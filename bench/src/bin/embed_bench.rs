//! lookalike's side of `bench/embed.sh`: the Lite0 backbone's forward pass
//! (pooled 1280-d features), timed at one input size and several batch sizes.
//!
//! Usage: `embed_bench WEIGHTS.safetensors [--size 224] [--batches 1,32]
//! [--min-images 64] [--min-rounds 5] [--check-input F --check-output G]`.
//!
//! Prints one JSON line per batch size, in the same shape as
//! `bench/embed/peer_torch.py`, so the script can put the two side by side.
//! With `--check-input` it first embeds those pixels (raw little-endian f32,
//! N×3×S×S) and writes the features to `--check-output`, for the script's
//! equivalence check against PyTorch on the same input.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use lookalike::network::lite0::Lite0;

struct Args {
    weights: PathBuf,
    size: usize,
    batches: Vec<usize>,
    min_images: usize,
    min_rounds: usize,
    check: Option<(PathBuf, PathBuf)>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut args =
        Args { weights: PathBuf::new(), size: 224, batches: vec![1, 32], min_images: 64, min_rounds: 5, check: None };
    let (mut check_in, mut check_out) = (None, None);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--size" => args.size = value()?.parse()?,
            "--batches" => args.batches = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--min-images" => args.min_images = value()?.parse()?,
            "--min-rounds" => args.min_rounds = value()?.parse()?,
            "--check-input" => check_in = Some(PathBuf::from(value()?)),
            "--check-output" => check_out = Some(PathBuf::from(value()?)),
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            path => args.weights = PathBuf::from(path),
        }
    }
    if args.weights.as_os_str().is_empty() {
        bail!("usage: embed_bench WEIGHTS.safetensors [--size S] [--batches 1,32] ...");
    }
    args.check = match (check_in, check_out) {
        (Some(i), Some(o)) => Some((i, o)),
        (None, None) => None,
        _ => bail!("--check-input and --check-output go together"),
    };
    Ok(args)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = Device::Cpu;
    let model = Lite0::load(&args.weights, &device)?;
    let s = args.size;

    if let Some((input, output)) = &args.check {
        let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        let pixels: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let n = pixels.len() / (3 * s * s);
        let x = Tensor::from_vec(pixels, (n, 3, s, s), &device)?;
        let features: Vec<f32> = model.features(&x)?.flatten_all()?.to_vec1()?;
        let out: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(output, out).with_context(|| format!("writing {}", output.display()))?;
    }

    for &batch in &args.batches {
        let x = Tensor::randn(0f32, 1f32, (batch, 3, s, s), &device)?;
        for _ in 0..2 {
            model.features(&x)?; // warm-up: first-touch allocations, thread pools
        }
        let rounds = args.min_images.div_ceil(batch).max(args.min_rounds);
        let mut per_image = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let start = Instant::now();
            model.features(&x)?;
            per_image.push(start.elapsed().as_secs_f64() / batch as f64);
        }
        per_image.sort_by(f64::total_cmp);
        let (best, median) = (per_image[0], per_image[rounds / 2]);
        println!(
            "{}",
            serde_json::json!({
                "engine": "lookalike", "setup": "candle", "size": s, "batch": batch,
                "threads": rayon::current_num_threads(), "rounds": rounds,
                "best_ms_per_image": best * 1e3, "median_ms_per_image": median * 1e3,
                "images_per_s": 1.0 / median,
            })
        );
    }
    Ok(())
}
