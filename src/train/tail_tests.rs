//! Tests of the trainable tail against the same network written with candle's own convolutions.

use candle_core::Device;

use super::*;
use crate::network::lite0::FoldedWeights;

// Input, hidden (expanded) and projected channels, pooled features, embedding: small stand-ins
// for Lite0's 192, 1152, 320, 1280 and 128.
const C_IN: usize = 3;
const HIDDEN: usize = 6;
const C_OUT: usize = 4;
const FEATURES: usize = 5;
const EMBEDDING: usize = 3;
const KERNEL: usize = 3;

fn uniform(rng: &mut SeededRng, shape: &[usize], scale: f32) -> Result<Tensor> {
    let count = shape.iter().product();
    let values: Vec<f32> =
        (0..count).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.3) * scale).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// Small weights in the layouts of [`TailWeights`]; biases lean positive so ReLU6 passes most.
fn tiny_weights(seed: u64) -> Result<TailWeights> {
    let mut rng = SeededRng::new(seed);
    let mut folded = |weight: &[usize], channels: usize| -> Result<FoldedWeights> {
        Ok(FoldedWeights { weight: uniform(&mut rng, weight, 1.0)?, bias: uniform(&mut rng, &[channels], 1.0)? })
    };
    Ok(TailWeights {
        expand: folded(&[C_IN, HIDDEN], HIDDEN)?,
        depthwise: folded(&[KERNEL, KERNEL, HIDDEN], HIDDEN)?,
        project: folded(&[HIDDEN, C_OUT], C_OUT)?,
        head: folded(&[C_OUT, FEATURES], FEATURES)?,
    })
}

/// The pooled, normalised features computed N×C×H×W with candle's `conv2d` for every layer
/// (grouped for the depthwise one), from the tail's own weight tensors.
fn reference_features(tail: &BackboneTail, x: &Tensor) -> Result<Tensor> {
    let conv1x1 = |x: &Tensor, (w, b): &(Tensor, Tensor)| -> Result<Tensor> {
        let (c_in, c_out) = w.dims2()?;
        let y = x.conv2d(&w.t()?.reshape((c_out, c_in, 1, 1))?, 0, 1, 1, 1)?;
        y.broadcast_add(&b.reshape((1, c_out, 1, 1))?)
    };
    let clamp = |x: Tensor| x.clamp(0f32, 6f32);
    let x = x.permute((0, 3, 1, 2))?.contiguous()?;
    let y = clamp(conv1x1(&x, &tail.expand)?)?;
    let y = y.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?.conv2d(&tail.depthwise.0, 0, 1, 1, HIDDEN)?;
    let y = clamp(y.broadcast_add(&tail.depthwise.1.reshape((1, HIDDEN, 1, 1))?)?)?;
    let y = clamp(conv1x1(&conv1x1(&y, &tail.project)?, &tail.conv_head)?)?;
    let pooled = y.mean(D::Minus1)?.mean(D::Minus1)?;
    pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(1)?.sqrt()?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

#[test]
fn forward_and_gradients_match_candle_conv2d() -> Result<()> {
    let tail = BackboneTail::new(&tiny_weights(1)?, EMBEDDING, 2)?;
    let x = uniform(&mut SeededRng::new(3), &[2, 4, 3, C_IN], 2.0)?;
    let (ours, theirs) = (tail.features(&x)?, reference_features(&tail, &x)?);
    assert_eq!(ours.dims(), &[2, FEATURES]);
    assert!(max_abs_diff(&ours, &theirs)? < 1e-5);

    // A random linear loss of the embeddings, so every output has its own weight.
    let r = uniform(&mut SeededRng::new(4), &[2, EMBEDDING], 1.0)?;
    let ours = (tail.forward(&x)? * &r)?.sum_all()?.backward()?;
    let theirs = (tail.head().forward(&reference_features(&tail, &x)?)? * &r)?.sum_all()?.backward()?;
    for (name, weight) in tail.named_weights() {
        let (a, b) = (ours.get(&weight), theirs.get(&weight));
        let (Some(a), Some(b)) = (a, b) else { panic!("{name}: no gradient") };
        let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-3);
        assert!(max_abs_diff(a, b)? / scale < 1e-4, "{name}");
    }
    Ok(())
}

#[test]
fn training_lowers_the_loss_and_changes_only_its_own_copy() -> Result<()> {
    let weights = tiny_weights(5)?;
    let before = weights.expand.weight.flatten_all()?.to_vec1::<f32>()?;
    let tail = BackboneTail::new(&weights, EMBEDDING, 6)?;
    // Four labels of eight items; each label shifts its inputs its own way.
    let labels: Vec<u32> = (0..32).map(|i| i / 8).collect();
    let noise = uniform(&mut SeededRng::new(7), &[32, 2, 2, C_IN], 1.0)?;
    let centres = uniform(&mut SeededRng::new(8), &[4, 1, 1, C_IN], 4.0)?;
    let label_index = Tensor::new(labels.clone(), &Device::Cpu)?;
    let inputs = noise.add(&centres.index_select(&label_index, 0)?.broadcast_as((32, 2, 2, C_IN))?)?;
    let params = TrainParams {
        epochs: 20, // two batches an epoch
        batch_classes: 4,
        batch_per_class: 4,
        learning_rate: 1e-2,
        ..TrainParams::default()
    };
    let losses = train_tail(&tail, &inputs, &labels, &params, &mut |_, _| ControlFlow::Continue(()))
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(losses.len(), 40);
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    assert!(mean(&losses[30..]) < mean(&losses[..10]), "{losses:?}");
    assert_eq!(weights.expand.weight.flatten_all()?.to_vec1::<f32>()?, before, "the model's weights are untouched");
    Ok(())
}

#[test]
fn inputs_and_labels_must_agree() -> Result<()> {
    let tail = BackboneTail::new(&tiny_weights(1)?, EMBEDDING, 2)?;
    let inputs = Tensor::zeros((3, 2, 2, C_IN), DType::F32, &Device::Cpu)?;
    let result = train_tail(&tail, &inputs, &[0, 1], &TrainParams::default(), &mut |_, _| ControlFlow::Continue(()));
    assert!(matches!(result, Err(TrainError::InvalidInput(_))));
    Ok(())
}

#[test]
fn relu6_clamps_and_passes_gradient_strictly_inside() -> Result<()> {
    let x = Var::from_tensor(&Tensor::new(&[-1f32, 0.0, 0.5, 5.5, 6.0, 7.0], &Device::Cpu)?)?;
    let y = relu6(x.as_tensor())?;
    assert_eq!(y.to_vec1::<f32>()?, [0.0, 0.0, 0.5, 5.5, 6.0, 6.0]);
    let grads = (y * Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0], &Device::Cpu)?)?.sum_all()?.backward()?;
    let grad = grads.get(x.as_tensor()).map(|g| g.to_vec1::<f32>()).transpose()?;
    assert_eq!(grad, Some(vec![0.0, 0.0, 3.0, 4.0, 0.0, 0.0]));
    Ok(())
}
