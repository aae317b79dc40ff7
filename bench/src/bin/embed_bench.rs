//! lookalike's side of `bench/embed.sh` and `scripts/gpu-check.sh`: the Lite0
//! backbone's forward pass (pooled 1280-d features), timed at one input size
//! and several batch sizes, on the CPU or a GPU.
//!
//! Usage: `embed_bench WEIGHTS.safetensors [--device auto|cpu|cuda|cuda:N]
//! [--size 224] [--batches 1,32] [--min-images 64] [--min-rounds 5] [--max-seconds S]
//! [--check-input F | --check-images A.jpg,B.png,...] [--check-output G] [--check-pixels P]`.
//!
//! Prints one JSON line per batch size, in the same shape as
//! `bench/embed/peer_torch.py`, naming the device, so a script can put the two
//! side by side. `--batches ""` times nothing (a check only). Each batch size runs
//! `max(min-rounds, min-images / batch)` timed rounds, or fewer (never under
//! [`MIN_TIMED_ROUNDS`]) once `--max-seconds` have passed: a bound for a run
//! with a time limit on a device whose speed is not known yet.
//!
//! The check embeds fixed input first and writes the features (raw
//! little-endian f32, N×1280, before the service's L2 normalisation) to
//! `--check-output`, for a script to compare against PyTorch or another
//! device: `--check-input` is pixels already made (raw f32, N×3×S×S);
//! `--check-images` decodes and preprocesses image files on the service's own
//! path (`preprocess::prepare` with the configured pixel limit), and
//! `--check-pixels` writes the pixels it fed, so a peer can use the same ones.
//! With check input, the timed batches are its images repeated, else random.
//!
//! Timings hold the input on the device already and leave the features there;
//! the device is synchronised before the clock is read (CUDA runs
//! asynchronously), so each round is the whole forward pass.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use lookalike::config::Settings;
use lookalike::device::DeviceChoice;
use lookalike::network::lite0::Lite0;
use lookalike::network::preprocess;

/// Untimed forward passes before each batch size's rounds (first-touch
/// allocations, thread pools, CUDA kernel loading).
const WARM_UP_ROUNDS: usize = 2;
/// Timed rounds kept per batch size even past `--max-seconds`, for a median.
const MIN_TIMED_ROUNDS: usize = 3;

/// Where the check's input comes from.
enum CheckInput {
    /// Raw little-endian f32 pixels, N×3×S×S.
    Pixels(PathBuf),
    /// Image files, preprocessed as the service does.
    Images(Vec<PathBuf>),
}

struct Args {
    weights: PathBuf,
    device: DeviceChoice,
    size: usize,
    batches: Vec<usize>,
    min_images: usize,
    min_rounds: usize,
    max_seconds: Option<f64>,
    check: Option<CheckInput>,
    check_output: Option<PathBuf>,
    check_pixels: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let mut args = Args {
        weights: PathBuf::new(),
        device: DeviceChoice::Auto,
        size: 224,
        batches: vec![1, 32],
        min_images: 64,
        min_rounds: 5,
        max_seconds: None,
        check: None,
        check_output: None,
        check_pixels: None,
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--device" => args.device = value()?.parse().map_err(anyhow::Error::msg)?,
            "--size" => args.size = value()?.parse()?,
            "--batches" => args.batches = list(&value()?).map(str::parse).collect::<Result<_, _>>()?,
            "--min-images" => args.min_images = value()?.parse()?,
            "--min-rounds" => args.min_rounds = value()?.parse()?,
            "--max-seconds" => args.max_seconds = Some(value()?.parse()?),
            "--check-input" => args.check = Some(CheckInput::Pixels(PathBuf::from(value()?))),
            "--check-images" => args.check = Some(CheckInput::Images(list(&value()?).map(PathBuf::from).collect())),
            "--check-output" => args.check_output = Some(PathBuf::from(value()?)),
            "--check-pixels" => args.check_pixels = Some(PathBuf::from(value()?)),
            flag if flag.starts_with("--") => bail!("unknown flag {flag}"),
            path => args.weights = PathBuf::from(path),
        }
    }
    if args.weights.as_os_str().is_empty() {
        bail!("usage: embed_bench WEIGHTS.safetensors [--device D] [--size S] [--batches 1,32] ...");
    }
    ensure!(
        args.check.is_some() == args.check_output.is_some(),
        "--check-output goes with --check-input or --check-images"
    );
    ensure!(
        args.check_pixels.is_none() || matches!(args.check, Some(CheckInput::Images(_))),
        "--check-pixels goes with --check-images"
    );
    ensure!(args.min_rounds >= 1, "--min-rounds must be at least 1");
    Ok(args)
}

/// The non-empty items of a comma-separated list.
fn list(text: &str) -> impl Iterator<Item = &str> {
    text.split(',').map(str::trim).filter(|item| !item.is_empty())
}

fn read_f32(path: &PathBuf) -> Result<Vec<f32>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(bytes.len() % 4 == 0, "{} is not raw f32", path.display());
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

fn write_f32(path: &PathBuf, values: &[f32]) -> Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The check's pixels, N×3×S×S flattened.
fn check_pixels(check: &CheckInput, size: usize) -> Result<Vec<f32>> {
    match check {
        CheckInput::Pixels(path) => {
            let pixels = read_f32(path)?;
            ensure!(pixels.len() % (3 * size * size) == 0, "{} is not N×3×{size}×{size}", path.display());
            Ok(pixels)
        }
        CheckInput::Images(paths) => {
            let max_pixels = Settings::load(None)?.limits.max_image_pixels;
            let mut pixels = Vec::with_capacity(paths.len() * 3 * size * size);
            for path in paths {
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let prepared = preprocess::prepare(&bytes, max_pixels, u32::try_from(size)?)
                    .with_context(|| format!("preparing {}", path.display()))?;
                pixels.extend(prepared.input);
            }
            Ok(pixels)
        }
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let device = args.device.resolve()?;
    let device_name = lookalike::device::name(&device);
    let model = Lite0::load(&args.weights, &device)?;
    let s = args.size;
    let image_len = 3 * s * s;

    let mut fixed = None;
    if let (Some(check), Some(output)) = (&args.check, &args.check_output) {
        let pixels = check_pixels(check, s)?;
        ensure!(!pixels.is_empty(), "the check has no images");
        if let Some(path) = &args.check_pixels {
            write_f32(path, &pixels)?;
        }
        let n = pixels.len() / image_len;
        let x = Tensor::from_vec(pixels.clone(), (n, 3, s, s), &device)?;
        let features: Vec<f32> = model.features(&x)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        write_f32(output, &features)?;
        fixed = Some(pixels);
    }

    for &batch in &args.batches {
        let x = match &fixed {
            Some(pixels) => {
                let repeated = pixels.chunks_exact(image_len).cycle().take(batch).flatten().copied().collect();
                Tensor::from_vec(repeated, (batch, 3, s, s), &device)?
            }
            None => Tensor::randn(0f32, 1f32, (batch, 3, s, s), &device)?,
        };
        for _ in 0..WARM_UP_ROUNDS {
            model.features(&x)?;
        }
        device.synchronize()?;
        let planned = args.min_images.div_ceil(batch).max(args.min_rounds);
        let mut per_image = Vec::with_capacity(planned);
        let timing = Instant::now();
        for _ in 0..planned {
            let start = Instant::now();
            model.features(&x)?;
            device.synchronize()?;
            per_image.push(start.elapsed().as_secs_f64() / batch as f64);
            let out_of_time = args.max_seconds.is_some_and(|limit| timing.elapsed().as_secs_f64() > limit);
            if out_of_time && per_image.len() >= MIN_TIMED_ROUNDS {
                break;
            }
        }
        let rounds = per_image.len();
        per_image.sort_by(f64::total_cmp);
        let (best, median) = (per_image[0], per_image[rounds / 2]);
        println!(
            "{}",
            serde_json::json!({
                "engine": "lookalike", "setup": "candle", "device": device_name, "size": s, "batch": batch,
                "threads": rayon::current_num_threads(), "rounds": rounds,
                "best_ms_per_image": best * 1e3, "median_ms_per_image": median * 1e3,
                "images_per_s": 1.0 / median,
            })
        );
    }
    Ok(())
}
