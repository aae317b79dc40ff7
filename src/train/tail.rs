//! Training the backbone's tail together with the head: Lite0's last MBConv block, its head
//! convolution and the [`EmbeddingHead`], from cached activations entering that block.
//!
//! [`BackboneTail`] is, in order: the 1×1 expand convolution (192 → 1152) and ReLU6, the 3×3
//! depthwise convolution (stride 1, "same" padding) and ReLU6, the 1×1 projection (1152 → 320),
//! the 1×1 head convolution (320 → 1280) and ReLU6, global average pooling, L2 normalisation (so
//! the pooled row is exactly the cached feature [`train_head`](super::train_head) trains on) and
//! the embedding head. Batch norm stays frozen: each convolution keeps the folded per-channel
//! affine of [`TailWeights`] as a trainable bias, as the inference code folds it. Activations are
//! channels-last (N×H×W×C), so each 1×1 convolution is one matrix product over all pixels; the
//! depthwise step goes through [`depthwise_conv2d`] (N×C×H×W, with its own backward pass) and back.
//!
//! [`train_tail`] runs the same step as `train_head` (P×K batches from [`PkSampler`], pairwise
//! distances, [`mine`], [`triplet_loss`], one AdamW step over every weight of the tail and head)
//! on block inputs instead of pooled features. It has no collapse guard and no offline injection.
//!
//! Not wired into the finetune job yet: `bench/src/bin/train_bench.rs` (behind `bench/train.sh`) is its
//! only user, to measure training steps/s with the last block trained. A tail owns its weights
//! ([`Var`]s in its own [`VarMap`]); training updates them in place, so one tail is trained by one
//! thread at a time.

use std::ops::ControlFlow;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Module, Result, Shape, Tensor, Var, bail};
use candle_nn::{Optimizer, ParamsAdamW, VarBuilder, VarMap};

use super::adamw::FusedAdamW;
use super::distance::{distances_to_vec, pairwise_distances};
use super::head::EmbeddingHead;
use super::losses::triplet_loss;
use super::miners::mine;
use super::sampler::{PkSampler, PkShape};
use super::trainer::{TrainError, TrainParams};
use crate::network::depthwise::{Padding, depthwise_conv2d};
use crate::network::lite0::TailWeights;
use crate::rng::SeededRng;

/// Upper clamp of ReLU6.
const RELU6_MAX: f64 = 6.0;
/// Floor of the pooled feature's squared norm before its square root (as [`EmbeddingHead`] does).
const MIN_SQUARED_NORM: f64 = 1e-12;
/// Stream of the seed whose draws seed the random miner, one per step (as `train_head` uses).
const MINING_STREAM: u64 = u64::MAX - 1;
/// Key prefix of the tail's weights in its [`VarMap`]: `tail.expand.weight`, `tail.expand.bias`, …
pub const TAIL_PREFIX: &str = "tail";
/// The tail's convolutions, in order, as named in its weight keys.
pub const TAIL_LAYERS: [&str; 4] = ["expand", "depthwise", "project", "head"];

/// Lite0's last block, head convolution and an embedding head, trainable (see the module docs).
pub struct BackboneTail {
    varmap: VarMap,
    expand: (Tensor, Tensor),
    /// Weight C×1×k×k (the layout of [`depthwise_conv2d`]), bias C.
    depthwise: (Tensor, Tensor),
    project: (Tensor, Tensor),
    conv_head: (Tensor, Tensor),
    kernel: usize,
    head: EmbeddingHead,
}

impl BackboneTail {
    /// A tail starting from `weights` (copied into new [`Var`]s) and a head of `embedding_dim`
    /// seeded from `head_seed` as [`EmbeddingHead::seeded`] does.
    pub fn new(weights: &TailWeights, embedding_dim: usize, head_seed: u64) -> Result<Self> {
        let device = weights.expand.weight.device().clone();
        let (kernel, _, hidden) = weights.depthwise.weight.dims3()?;
        // k×k×C channels-last → C×1×k×k.
        let depthwise_weight = weights.depthwise.weight.permute((2, 0, 1))?.reshape((hidden, 1, kernel, kernel))?;
        let layers = [
            (weights.expand.weight.clone(), &weights.expand.bias),
            (depthwise_weight, &weights.depthwise.bias),
            (weights.project.weight.clone(), &weights.project.bias),
            (weights.head.weight.clone(), &weights.head.bias),
        ];
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
            for (name, (weight, bias)) in TAIL_LAYERS.iter().zip(&layers) {
                // `copy` so that training never writes into the caller's (the model's) storage.
                data.insert(format!("{TAIL_PREFIX}.{name}.weight"), Var::from_tensor(&weight.copy()?)?);
                data.insert(format!("{TAIL_PREFIX}.{name}.bias"), Var::from_tensor(&bias.copy()?)?);
            }
        }
        let feature_dim = weights.head.weight.dim(1)?;
        let head = EmbeddingHead::seeded(&varmap, feature_dim, embedding_dim, head_seed, &device)?;
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let get = |name: &str, layer: &(Tensor, &Tensor)| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(TAIL_PREFIX).pp(name);
            Ok((vb.get(layer.0.dims(), "weight")?, vb.get(layer.1.dims(), "bias")?))
        };
        Ok(Self {
            expand: get(TAIL_LAYERS[0], &layers[0])?,
            depthwise: get(TAIL_LAYERS[1], &layers[1])?,
            project: get(TAIL_LAYERS[2], &layers[2])?,
            conv_head: get(TAIL_LAYERS[3], &layers[3])?,
            varmap,
            kernel,
            head,
        })
    }

    /// Every trainable weight by key (`tail.<layer>.weight|bias`, `head.weight|bias`), sorted;
    /// the depthwise weight is C×1×k×k, the 1×1 weights C_in×C_out, the head's out×in.
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<(String, Tensor)> = self
            .varmap
            .data()
            .lock()
            .map(|data| data.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect())
            .unwrap_or_default();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The embedding head at the end of the tail.
    pub fn head(&self) -> &EmbeddingHead {
        &self.head
    }

    /// Pooled, L2-normalised features: block inputs N×H×W×C (channels-last) → N×1280.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, _) = x.dims4()?;
        let hidden = self.depthwise.1.dim(0)?;
        let y = relu6(&pointwise(x, &self.expand)?)?;
        let y = y.reshape((n, h, w, hidden))?.permute((0, 3, 1, 2))?;
        let pad = Padding::same(h, w, self.kernel, 1);
        let y = depthwise_conv2d(&y, &self.depthwise.0, 1, pad)?;
        let y = relu6(&y.broadcast_add(&self.depthwise.1.reshape((1, hidden, 1, 1))?)?)?;
        let y = y.permute((0, 2, 3, 1))?.contiguous()?;
        let y = pointwise(&y, &self.project)?;
        let y = relu6(&pointwise(&y, &self.conv_head)?)?;
        let pooled = y.reshape((n, h * w, y.dim(D::Minus1)?))?.mean(1)?;
        let norms = pooled.sqr()?.sum_keepdim(D::Minus1)?.maximum(MIN_SQUARED_NORM)?.sqrt()?;
        pooled.broadcast_div(&norms)
    }
}

impl Module for BackboneTail {
    /// Block inputs N×H×W×C → N×`embedding_dim` unit rows.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.features(x)?)
    }
}

/// A 1×1 convolution over channels-last `x` (…×C_in) as one matrix product: (pixels×C_out).
fn pointwise(x: &Tensor, (weight, bias): &(Tensor, Tensor)) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    x.reshape(((), c))?.matmul(weight)?.broadcast_add(bias)
}

/// `min(max(x, 0), 6)`; on CPU `f32` one op whose gradient passes strictly inside (0, 6), as
/// PyTorch's `relu6` does. (`relu` then `minimum` costs four ops and a comparison mask built from
/// several temporaries in the backward pass, on every activation of the tail.)
fn relu6(x: &Tensor) -> Result<Tensor> {
    if !(x.device().is_cpu() && x.dtype() == DType::F32) {
        return x.relu()?.minimum(RELU6_MAX);
    }
    x.contiguous()?.apply_op1(Relu6)
}

/// The contiguous f32 data of a custom-op argument.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("relu6: argument is not contiguous") };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// ReLU6 forward; its backward is [`Relu6Grad`].
struct Relu6;

impl CustomOp1 for Relu6 {
    fn name(&self) -> &'static str {
        "relu6"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let max = RELU6_MAX as f32;
        let out = f32_data(s, l)?.iter().map(|&v| v.clamp(0.0, max)).collect();
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &Relu6Grad)?))
    }
}

/// The gradient of [`Relu6`]: arguments (its input, the incoming gradient).
struct Relu6Grad;

impl CustomOp2 for Relu6Grad {
    fn name(&self) -> &'static str {
        "relu6-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, grad) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        if x.len() != grad.len() {
            bail!("relu6: gradient of {} values for {}", grad.len(), x.len());
        }
        let max = RELU6_MAX as f32;
        let out = x.iter().zip(grad).map(|(&v, &g)| if v > 0.0 && v < max { g } else { 0.0 }).collect();
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Trains `tail` in place on `inputs` (the block inputs of `labels.len()` items, N×H×W×C) for
/// `params.epochs` epochs of P×K batches (`params.mining`; injection, `input_dim` and
/// `embedding_dim` are not used). After each step `observer` gets the step number and its loss
/// and may stop training with [`ControlFlow::Break`]. Returns the losses of the steps taken.
pub fn train_tail(
    tail: &BackboneTail,
    inputs: &Tensor,
    labels: &[u32],
    params: &TrainParams,
    observer: &mut dyn FnMut(usize, f32) -> ControlFlow<()>,
) -> std::result::Result<Vec<f32>, TrainError> {
    if inputs.dim(0)? != labels.len() {
        return Err(TrainError::InvalidInput(format!("{:?} inputs for {} labels", inputs.dims(), labels.len())));
    }
    let shape = PkShape { labels_per_batch: params.batch_classes, items_per_label: params.batch_per_class };
    let sampler = PkSampler::new(labels, shape, params.seed)?;
    let adamw = ParamsAdamW { lr: params.learning_rate, weight_decay: params.weight_decay, ..ParamsAdamW::default() };
    let mut optimizer = FusedAdamW::new(tail.varmap.all_vars(), adamw)?;
    let mining = params.mining;
    let mut mining_seeds = SeededRng::for_stream(params.seed, MINING_STREAM);
    let device = inputs.device();
    let mut losses = Vec::new();
    for epoch in 0..params.epochs {
        for batch in sampler.epoch(epoch as u64) {
            let step = losses.len();
            let indices: Vec<u32> = batch.items.iter().map(|&item| item as u32).collect();
            let x = inputs.index_select(&Tensor::new(indices, device)?, 0)?;
            let distances = pairwise_distances(&tail.forward(&x)?)?;
            let plain = distances_to_vec(&distances)?;
            let triplets = mine(mining, &plain, &batch.labels, params.margin, mining_seeds.next_u64())?;
            let loss = triplet_loss(&distances, &triplets, params.margin, params.soft_margin, mining.reduction())?;
            let value = loss.to_scalar::<f32>()?;
            if !value.is_finite() {
                return Err(TrainError::Diverged { step, loss: value });
            }
            optimizer.backward_step(&loss)?;
            losses.push(value);
            if observer(step, value).is_break() {
                return Ok(losses);
            }
        }
    }
    Ok(losses)
}

#[cfg(test)]
#[path = "tail_tests.rs"]
mod tests;
