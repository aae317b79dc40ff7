//! Training the backbone's tail together with the head: Lite0's last N MBConv blocks, its head
//! convolution and the [`EmbeddingHead`], from cached activations entering the first of them.
//!
//! Each block of a [`BackboneTail`] is, in order: the 1×1 expand convolution and ReLU6 (absent in
//! block 0), the k×k depthwise convolution (its stride, "same" padding) and ReLU6, the 1×1
//! projection, and the block's input added back when it has a residual. After the blocks: the 1×1
//! head convolution (→ 1280) and ReLU6, global average pooling, L2 normalisation (so the pooled row
//! of an untrained tail is exactly the cached feature [`train_head`](super::train_head) trains on)
//! and the embedding head. Batch norm stays frozen: each convolution keeps the folded per-channel
//! affine of [`TailWeights`] as a trainable bias, as the inference code folds it. Activations are
//! channels-last (N×H×W×C), so each 1×1 convolution is one matrix product over all pixels; the
//! depthwise step goes through [`depthwise_conv2d`] (N×C×H×W, with its own backward pass) and back.
//!
//! [`train_tail`] runs the loop of `train_head` (P×K batches, offline injection, pairwise
//! distances, mining, the triplet loss, one AdamW step over every weight of the tail and head, the
//! collapse guard) on block inputs instead of pooled features.
//!
//! The finetune job trains one when `trainable_blocks` is above 0, and serves what it learnt
//! through [`BackboneTail::trained_weights`] and [`crate::network::tail::Tail`]. A tail owns its weights ([`Var`]s in its own
//! [`VarMap`]); training updates them in place, so one tail is trained by one thread at a time.

use std::collections::HashMap;
use std::ops::ControlFlow;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, D, DType, Layout, Module, Result, Shape, Tensor, Var, bail};
use candle_nn::VarMap;

use super::head::EmbeddingHead;
use super::trainer::{BatchInputs, StepReport, TrainError, TrainParams, train_model};
use crate::network::depthwise::{Padding, depthwise_conv2d};
use crate::network::lite0::{BlockWeights, FoldedWeights, TailWeights};

/// Upper clamp of ReLU6.
const RELU6_MAX: f64 = 6.0;
/// Floor of the pooled feature's squared norm before its square root (as [`EmbeddingHead`] does).
const MIN_SQUARED_NORM: f64 = 1e-12;
/// Key prefix of the tail's weights in its [`VarMap`]: `tail.15.expand.weight`, `tail.conv_head.bias`, …
pub const TAIL_PREFIX: &str = "tail";
/// Name of the head convolution's weights under [`TAIL_PREFIX`].
pub const CONV_HEAD: &str = "conv_head";

/// A (weight, bias) pair of the tail's [`Var`]s.
type Layer = (Tensor, Tensor);

/// One trainable MBConv block (see the module docs).
struct TailBlock {
    expand: Option<Layer>,
    /// Weight C×1×k×k (the layout of [`depthwise_conv2d`]), bias C.
    depthwise: Layer,
    project: Layer,
    kernel: usize,
    stride: usize,
    residual: bool,
}

impl TailBlock {
    /// Block input N×H×W×C → block output N×H'×W'×C_out, channels-last.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, w, _) = x.dims4()?;
        let hidden = self.depthwise.1.dim(0)?;
        let y = match &self.expand {
            Some(expand) => relu6(&pointwise(x, expand)?)?.reshape((n, h, w, hidden))?,
            None => x.clone(),
        };
        let pad = Padding::same(h, w, self.kernel, self.stride);
        let y = depthwise_conv2d(&y.permute((0, 3, 1, 2))?, &self.depthwise.0, self.stride, pad)?;
        let y = relu6(&y.broadcast_add(&self.depthwise.1.reshape((1, hidden, 1, 1))?)?)?;
        let (_, _, h_out, w_out) = y.dims4()?;
        let y = y.permute((0, 2, 3, 1))?.contiguous()?;
        let y = pointwise(&y, &self.project)?.reshape((n, h_out, w_out, ()))?;
        if self.residual { y + x } else { Ok(y) }
    }
}

/// Lite0's last blocks, head convolution and an embedding head, trainable (see the module docs).
pub struct BackboneTail {
    varmap: VarMap,
    first_block: usize,
    blocks: Vec<TailBlock>,
    conv_head: Layer,
    head: EmbeddingHead,
}

impl BackboneTail {
    /// A tail starting from `weights` (copied into new [`Var`]s) and a head of `embedding_dim`
    /// seeded from `head_seed` as [`EmbeddingHead::seeded`] does.
    pub fn new(weights: &TailWeights, embedding_dim: usize, head_seed: u64) -> Result<Self> {
        let device = weights.head.weight.device().clone();
        let varmap = VarMap::new();
        // Each weight is copied into a new Var under `name`, so that training never writes into
        // the caller's (the model's) storage; the forward pass uses the Var's tensor.
        let var = |name: String, tensor: &Tensor| -> Result<Tensor> {
            let var = Var::from_tensor(&tensor.copy()?)?;
            let trained = var.as_tensor().clone();
            varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?.insert(name, var);
            Ok(trained)
        };
        let layer = |name: String, folded: &FoldedWeights, weight: Tensor| -> Result<Layer> {
            Ok((var(format!("{name}.weight"), &weight)?, var(format!("{name}.bias"), &folded.bias)?))
        };
        let mut blocks = Vec::with_capacity(weights.blocks.len());
        for (offset, block) in weights.blocks.iter().enumerate() {
            let name = format!("{TAIL_PREFIX}.{}", weights.first_block + offset);
            let (kernel, _, hidden) = block.depthwise.weight.dims3()?;
            // k×k×C channels-last → C×1×k×k.
            let depthwise = block.depthwise.weight.permute((2, 0, 1))?.reshape((hidden, 1, kernel, kernel))?;
            let expand = match &block.expand {
                Some(e) => Some(layer(format!("{name}.expand"), e, e.weight.clone())?),
                None => None,
            };
            blocks.push(TailBlock {
                expand,
                depthwise: layer(format!("{name}.depthwise"), &block.depthwise, depthwise)?,
                project: layer(format!("{name}.project"), &block.project, block.project.weight.clone())?,
                kernel,
                stride: block.stride,
                residual: block.residual,
            });
        }
        let conv_head = layer(format!("{TAIL_PREFIX}.{CONV_HEAD}"), &weights.head, weights.head.weight.clone())?;
        let feature_dim = weights.head.weight.dim(1)?;
        let head = EmbeddingHead::seeded(&varmap, feature_dim, embedding_dim, head_seed, &device)?;
        Ok(Self { varmap, first_block: weights.first_block, blocks, conv_head, head })
    }

    /// Index in the network of the first trained block (the block whose inputs the tail takes).
    pub fn first_block(&self) -> usize {
        self.first_block
    }

    /// Every trainable weight by key (`tail.<block>.<layer>.weight|bias`,
    /// `tail.conv_head.weight|bias`, `head.weight|bias`), sorted; a depthwise weight is C×1×k×k,
    /// the 1×1 weights C_in×C_out, the head's out×in.
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

    /// The trained blocks and head convolution in the layouts of [`TailWeights`] (copies: more
    /// training leaves them as they are), for [`crate::network::tail::Tail`] to serve.
    pub fn trained_weights(&self) -> Result<TailWeights> {
        let folded = |(weight, bias): &Layer| -> Result<FoldedWeights> {
            Ok(FoldedWeights { weight: weight.copy()?, bias: bias.copy()? })
        };
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (hidden, _, kernel, _) = block.depthwise.0.dims4()?;
            // C×1×k×k → k×k×C channels-last.
            let depthwise = block.depthwise.0.reshape((hidden, kernel, kernel))?.permute((1, 2, 0))?.contiguous()?;
            blocks.push(BlockWeights {
                expand: block.expand.as_ref().map(folded).transpose()?,
                depthwise: FoldedWeights { weight: depthwise, bias: block.depthwise.1.copy()? },
                project: folded(&block.project)?,
                stride: block.stride,
                residual: block.residual,
            });
        }
        Ok(TailWeights { first_block: self.first_block, blocks, head: folded(&self.conv_head)? })
    }

    /// The embedding head at the end of the tail.
    pub fn head(&self) -> &EmbeddingHead {
        &self.head
    }

    /// Pooled, L2-normalised features: block inputs N×H×W×C (channels-last) → N×1280.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut y = x.clone();
        for block in &self.blocks {
            y = block.forward(&y)?;
        }
        let (n, h, w, _) = y.dims4()?;
        let y = relu6(&pointwise(&y, &self.conv_head)?)?;
        let pooled = y.reshape((n, h * w, ()))?.mean(1)?;
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

/// Trains `tail` in place on `inputs` (the block inputs of `labels.len()` items, N×H×W×C: cached
/// as one tensor, or computed per batch from images by [`super::images::ImageBatches`]) with
/// the loop of [`train_head`](super::train_head): `params.epochs` epochs of P×K batches, the
/// offline-mined positives of `injected` brought into each batch with `params.offline_injection`,
/// the collapse guard, and the observer after each step (its break is [`TrainError::Canceled`]).
/// The head learns at `params.learning_rate`, the backbone's blocks and head convolution at
/// `params.backbone_learning_rate`.
/// `input_dim` and `embedding_dim` are not read: the tail's shapes are its own. Returns the losses
/// of the steps taken.
pub fn train_tail(
    tail: &BackboneTail,
    inputs: &dyn BatchInputs,
    labels: &[u32],
    injected: Option<&HashMap<usize, usize>>,
    params: &TrainParams,
    observer: &mut dyn FnMut(&StepReport, &BackboneTail) -> ControlFlow<()>,
) -> std::result::Result<Vec<f32>, TrainError> {
    let (mut head, mut backbone) = (Vec::new(), Vec::new());
    for (name, var) in
        tail.varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?.iter()
    {
        if name.starts_with(TAIL_PREFIX) { &mut backbone } else { &mut head }.push(var.clone());
    }
    let groups = vec![(head, params.learning_rate), (backbone, params.backbone_learning_rate)];
    train_model(tail, groups, inputs, labels, injected, params, observer)
}

#[cfg(test)]
#[path = "tail_tests.rs"]
mod tests;
