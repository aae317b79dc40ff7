//! Tests of the trainable tail: against the same network written with candle's own convolutions,
//! and its gradients against finite differences.

use candle_core::Device;

use super::*;
use crate::network::lite0::BlockWeights;
use crate::network::tail::Tail;
use crate::rng::SeededRng;

// Input, hidden (expanded) and block output channels, pooled features, embedding: small stand-ins
// for Lite0's 112/192, 672/1152, 192/320, 1280 and 128.
const C_IN: usize = 3;
const HIDDEN: usize = 6;
const C_OUT: usize = 4;
const FEATURES: usize = 5;
const EMBEDDING: usize = 3;

fn uniform(rng: &mut SeededRng, shape: &[usize], scale: f32) -> Result<Tensor> {
    let count = shape.iter().product();
    let values: Vec<f32> =
        (0..count).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.3) * scale).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

/// A tail of three small blocks with every kind of block Lite0 has, in the layouts of
/// [`TailWeights`]: expand, stride 2, kernel 5, no residual (as block 11); expand, stride 1,
/// residual (blocks 12–14); no expand, kernel 3 (as block 0). Biases lean positive so ReLU6
/// passes most.
fn tiny_weights(seed: u64) -> Result<TailWeights> {
    let mut rng = SeededRng::new(seed);
    let mut folded = |weight: &[usize], channels: usize| -> Result<FoldedWeights> {
        Ok(FoldedWeights { weight: uniform(&mut rng, weight, 1.0)?, bias: uniform(&mut rng, &[channels], 1.0)? })
    };
    let blocks = vec![
        BlockWeights {
            expand: Some(folded(&[C_IN, HIDDEN], HIDDEN)?),
            depthwise: folded(&[5, 5, HIDDEN], HIDDEN)?,
            project: folded(&[HIDDEN, C_OUT], C_OUT)?,
            stride: 2,
            residual: false,
        },
        BlockWeights {
            expand: Some(folded(&[C_OUT, HIDDEN], HIDDEN)?),
            depthwise: folded(&[3, 3, HIDDEN], HIDDEN)?,
            project: folded(&[HIDDEN, C_OUT], C_OUT)?,
            stride: 1,
            residual: true,
        },
        BlockWeights {
            expand: None,
            depthwise: folded(&[3, 3, C_OUT], C_OUT)?,
            project: folded(&[C_OUT, C_IN], C_IN)?,
            stride: 1,
            residual: false,
        },
    ];
    Ok(TailWeights { first_block: 13, blocks, head: folded(&[C_IN, FEATURES], FEATURES)? })
}

/// The last block alone (expand, stride 1, no residual, as Lite0's block 15).
fn one_block(seed: u64) -> Result<TailWeights> {
    let mut weights = tiny_weights(seed)?;
    let mut last = weights.blocks.swap_remove(0);
    last.stride = 1;
    weights.head.weight = uniform(&mut SeededRng::new(seed + 1), &[C_OUT, FEATURES], 1.0)?;
    weights.blocks = vec![last];
    weights.first_block = 15;
    Ok(weights)
}

/// The pooled, normalised features computed N×C×H×W with candle's `conv2d` for every layer
/// (grouped for the depthwise ones, padded by hand), from the tail's own weight tensors.
fn reference_features(tail: &BackboneTail, x: &Tensor) -> Result<Tensor> {
    let conv1x1 = |x: &Tensor, (w, b): &Layer| -> Result<Tensor> {
        let (c_in, c_out) = w.dims2()?;
        let y = x.conv2d(&w.t()?.reshape((c_out, c_in, 1, 1))?, 0, 1, 1, 1)?;
        y.broadcast_add(&b.reshape((1, c_out, 1, 1))?)
    };
    let clamp = |x: Tensor| x.clamp(0f32, 6f32);
    let mut x = x.permute((0, 3, 1, 2))?.contiguous()?;
    for block in &tail.blocks {
        let y = match &block.expand {
            Some(expand) => clamp(conv1x1(&x, expand)?)?,
            None => x.clone(),
        };
        let (_, hidden, h, w) = y.dims4()?;
        let pad = Padding::same(h, w, block.kernel, block.stride);
        let y = y.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
        let y = y.conv2d(&block.depthwise.0, 0, block.stride, 1, hidden)?;
        let y = clamp(y.broadcast_add(&block.depthwise.1.reshape((1, hidden, 1, 1))?)?)?;
        let y = conv1x1(&y, &block.project)?;
        x = if block.residual { (y + &x)? } else { y };
    }
    let pooled = clamp(conv1x1(&x, &tail.conv_head)?)?.mean(D::Minus1)?.mean(D::Minus1)?;
    pooled.broadcast_div(&pooled.sqr()?.sum_keepdim(1)?.sqrt()?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

#[test]
fn forward_and_gradients_match_candle_conv2d() -> Result<()> {
    for weights in [tiny_weights(1)?, one_block(1)?] {
        let tail = BackboneTail::new(&weights, EMBEDDING, 2)?;
        let x = uniform(&mut SeededRng::new(3), &[2, 5, 4, C_IN], 2.0)?;
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
    }
    Ok(())
}

/// Every weight's gradient against central differences of the loss, coordinate by coordinate
/// (a few coordinates of each tensor, f32, step 1e-3): the backward passes of the custom ops
/// (ReLU6, depthwise) and of the residual, stride and padding are checked against the loss
/// itself, not against another implementation.
#[test]
fn gradients_match_finite_differences() -> Result<()> {
    let tail = BackboneTail::new(&tiny_weights(11)?, EMBEDDING, 12)?;
    let x = uniform(&mut SeededRng::new(13), &[3, 6, 5, C_IN], 2.0)?;
    let r = uniform(&mut SeededRng::new(14), &[3, EMBEDDING], 1.0)?;
    let loss = || -> Result<f64> { Ok(f64::from((tail.forward(&x)? * &r)?.sum_all()?.to_scalar::<f32>()?)) };
    let grads = (tail.forward(&x)? * &r)?.sum_all()?.backward()?;
    let weights = tail.named_weights();
    assert_eq!(weights.len(), 2 * (3 + 3 + 2) + 2 + 2, "blocks, head convolution and head");
    let step = 1e-3f32;
    let mut rng = SeededRng::new(15);
    let mut checked = 0;
    for (name, weight) in &weights {
        let var = Var::from_tensor(weight)?; // shares the tail's storage
        let analytic =
            grads.get(weight).unwrap_or_else(|| panic!("{name}: no gradient")).flatten_all()?.to_vec1::<f32>()?;
        let original = weight.flatten_all()?.to_vec1::<f32>()?;
        for _ in 0..4 {
            let at = (rng.next_u64() % original.len() as u64) as usize;
            let nudged = |delta: f32| -> Result<f64> {
                let mut values = original.clone();
                values[at] += delta;
                var.set(&Tensor::from_vec(values, weight.dims(), &Device::Cpu)?)?;
                loss()
            };
            let numeric = (nudged(step)? - nudged(-step)?) / (2.0 * f64::from(step));
            var.set(&Tensor::from_vec(original.clone(), weight.dims(), &Device::Cpu)?)?;
            let exact = f64::from(analytic[at]);
            assert!(
                (numeric - exact).abs() <= 2e-3 + 2e-2 * exact.abs(),
                "{name}[{at}]: {exact} analytic, {numeric} numeric"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * weights.len());
    Ok(())
}

#[test]
fn training_lowers_the_loss_and_changes_only_its_own_copy() -> Result<()> {
    let weights = tiny_weights(5)?;
    let first_expand = || weights.blocks[0].expand.as_ref().map(|e| e.weight.flatten_all()?.to_vec1::<f32>());
    let before = first_expand().transpose()?;
    let tail = BackboneTail::new(&weights, EMBEDDING, 6)?;
    // Four labels of eight items; each label shifts its inputs its own way.
    let labels: Vec<u32> = (0..32).map(|i| i / 8).collect();
    let noise = uniform(&mut SeededRng::new(7), &[32, 4, 4, C_IN], 1.0)?;
    let centres = uniform(&mut SeededRng::new(8), &[4, 1, 1, C_IN], 4.0)?;
    let label_index = Tensor::new(labels.clone(), &Device::Cpu)?;
    let inputs = noise.add(&centres.index_select(&label_index, 0)?.broadcast_as((32, 4, 4, C_IN))?)?;
    let params = TrainParams {
        epochs: 20, // two batches an epoch
        batch_classes: 4,
        batch_per_class: 4,
        learning_rate: 1e-2,
        ..TrainParams::default()
    };
    let losses = train_tail(&tail, &inputs, &labels, None, &params, &mut |_, _| ControlFlow::Continue(()))
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(losses.len(), 40);
    let mean = |l: &[f32]| l.iter().sum::<f32>() / l.len() as f32;
    assert!(mean(&losses[30..]) < mean(&losses[..10]), "{losses:?}");
    assert_eq!(first_expand().transpose()?, before, "the model's weights are untouched");
    Ok(())
}

#[test]
fn inputs_and_labels_must_agree() -> Result<()> {
    let tail = BackboneTail::new(&tiny_weights(1)?, EMBEDDING, 2)?;
    let inputs = Tensor::zeros((3, 2, 2, C_IN), DType::F32, &Device::Cpu)?;
    let result =
        train_tail(&tail, &inputs, &[0, 1], None, &TrainParams::default(), &mut |_, _| ControlFlow::Continue(()));
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

/// The head learns at `learning_rate`, the backbone's weights at `backbone_learning_rate`: with
/// the latter tiny, AdamW (whose step is about the learning rate, whatever the gradient's scale)
/// leaves them where they were while the head moves.
#[test]
fn the_backbone_learns_at_its_own_rate() -> Result<()> {
    let tail = BackboneTail::new(&tiny_weights(21)?, EMBEDDING, 22)?;
    let before: Vec<(String, Vec<f32>)> = tail
        .named_weights()
        .into_iter()
        .map(|(n, w)| Ok((n, w.flatten_all()?.to_vec1::<f32>()?)))
        .collect::<Result<_>>()?;
    let labels: Vec<u32> = (0..16).map(|i| i / 4).collect();
    let inputs = uniform(&mut SeededRng::new(23), &[16, 4, 4, C_IN], 2.0)?;
    let params = TrainParams {
        epochs: 5,
        batch_classes: 4,
        batch_per_class: 4,
        learning_rate: 1e-2,
        backbone_learning_rate: 1e-9,
        weight_decay: 0.0,
        ..TrainParams::default()
    };
    let losses = train_tail(&tail, &inputs, &labels, None, &params, &mut |_, _| ControlFlow::Continue(()))
        .map_err(candle_core::Error::wrap)?;
    assert_eq!(losses.len(), 5);
    for ((name, weight), (_, old)) in tail.named_weights().into_iter().zip(&before) {
        let new = weight.flatten_all()?.to_vec1::<f32>()?;
        let moved = new.iter().zip(old).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        if name.starts_with(TAIL_PREFIX) {
            assert!(moved < 1e-7, "{name} moved {moved}");
        } else {
            assert!(moved > 1e-3, "{name} moved only {moved}");
        }
    }
    Ok(())
}

/// What training learnt is what serving runs: after some steps, the trained weights in the
/// inference layout ([`BackboneTail::trained_weights`]) run by the server's [`Tail`] give the
/// training graph's features.
#[test]
fn the_served_tail_gives_the_trained_features() -> Result<()> {
    let tail = BackboneTail::new(&tiny_weights(31)?, EMBEDDING, 32)?;
    let labels: Vec<u32> = (0..16).map(|i| i / 4).collect();
    let inputs = uniform(&mut SeededRng::new(33), &[16, 6, 6, C_IN], 2.0)?;
    let params = TrainParams {
        epochs: 3,
        batch_classes: 4,
        batch_per_class: 4,
        learning_rate: 1e-2,
        backbone_learning_rate: 1e-2,
        ..TrainParams::default()
    };
    let before = tail.features(&inputs)?.flatten_all()?.to_vec1::<f32>()?;
    train_tail(&tail, &inputs, &labels, None, &params, &mut |_, _| ControlFlow::Continue(()))
        .map_err(candle_core::Error::wrap)?;
    let trained = tail.features(&inputs)?.to_vec2::<f32>()?;
    let moved = trained.iter().flatten().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 1e-3, "training moved the features only {moved}");
    let served = Tail::new(&tail.trained_weights()?).map_err(candle_core::Error::wrap)?;
    let rows: Vec<Vec<f32>> = inputs.flatten_from(1)?.to_vec2()?;
    let got = served.features(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>()).map_err(candle_core::Error::wrap)?;
    let gap = trained.iter().flatten().zip(got.iter().flatten()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(gap < 1e-5, "served features differ from the trained ones by {gap}");
    Ok(())
}
