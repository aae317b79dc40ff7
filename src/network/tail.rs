//! A trained tail as the server runs it: the activations entering Lite0's block `first_block`
//! (cached, or computed by the shared trunk) → that block and every later one, the head
//! convolution, pooling and L2 normalisation: the features a deep generation's head reads.
//!
//! A fine-tuned generation that trained the last N blocks (`train::tail::BackboneTail`) keeps
//! only their weights ([`TailWeights`], saved with [`save_tail`]); the trunk before them is the
//! embedder's one pretrained network, shared by every generation. [`Tail`] runs those weights with
//! the inference code of [`super::lite0`] (folded convolutions, fused kernels, one image per task
//! on the CPU), so an untrained tail gives exactly the pretrained features.
//!
//! Saved weights use the layouts of [`TailWeights`] under `tail.{block}.expand|depthwise|project`
//! and `tail.conv_head` (`.weight`, `.bias`); strides and residuals come from the architecture
//! ([`lite0::block_layout`]).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};
use candle_core::{Device, Tensor};

use super::lite0::{self, BLOCKS, Block, BlockWeights, FoldedConv, FoldedWeights, TailWeights};

/// Key prefix of a saved tail's weights.
const PREFIX: &str = "tail";
/// Name of the head convolution's weights under [`PREFIX`].
const CONV_HEAD: &str = "conv_head";

/// The last blocks and head convolution of a (trained) Lite0, ready to run.
pub struct Tail {
    first_block: usize,
    in_channels: usize,
    blocks: Vec<Block>,
    head: FoldedConv,
}

impl Tail {
    /// The tail `weights` describe.
    pub fn new(weights: &TailWeights) -> Result<Self> {
        let blocks: Vec<Block> = weights.blocks.iter().map(Block::from_weights).collect::<Result<_>>()?;
        let head = FoldedConv::pointwise(&weights.head)?;
        let in_channels = weights.in_channels()?;
        Ok(Self { first_block: weights.first_block, in_channels, blocks, head })
    }

    /// Index in the network of the block whose inputs the tail reads.
    pub fn first_block(&self) -> usize {
        self.first_block
    }

    /// L2-normalised pooled features of block inputs: each row H×H×C channels-last (C the first
    /// block's input channels, H from the row's length).
    pub fn features(&self, rows: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.in_channels;
        let pixels = rows[0].len() / c;
        let side = (pixels as f64).sqrt().round() as usize;
        ensure!(side * side * c == rows[0].len(), "a block input of {} values is not H×H×{c}", rows[0].len());
        ensure!(rows.iter().all(|r| r.len() == rows[0].len()), "block inputs of different sizes");
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let x = Tensor::from_vec(flat, (rows.len(), side, side, c), &Device::Cpu)?;
        let pooled = lite0::per_image(&x, |one| {
            let mut y = one.clone();
            for block in &self.blocks {
                y = block.forward(&y)?;
            }
            let y = self.head.forward(&y, true)?;
            let (n, h, w, c) = y.dims4()?;
            y.reshape((n, h * w, c))?.mean(1)
        })?;
        let rows: Vec<Vec<f32>> = pooled.to_vec2()?;
        Ok(rows.into_iter().map(super::l2_normalised).collect())
    }
}

/// Writes `weights` as safetensors (see the module docs for the keys).
pub fn save_tail(weights: &TailWeights, path: &Path) -> Result<()> {
    let mut tensors = HashMap::new();
    let mut put = |name: String, folded: &FoldedWeights| {
        tensors.insert(format!("{name}.weight"), folded.weight.clone());
        tensors.insert(format!("{name}.bias"), folded.bias.clone());
    };
    for (offset, block) in weights.blocks.iter().enumerate() {
        let name = format!("{PREFIX}.{}", weights.first_block + offset);
        if let Some(expand) = &block.expand {
            put(format!("{name}.expand"), expand);
        }
        put(format!("{name}.depthwise"), &block.depthwise);
        put(format!("{name}.project"), &block.project);
    }
    put(format!("{PREFIX}.{CONV_HEAD}"), &weights.head);
    candle_core::safetensors::save(&tensors, path).with_context(|| format!("writing {}", path.display()))
}

/// Reads weights written by [`save_tail`]: the blocks present must run to the network's last.
pub fn load_tail(path: &Path) -> Result<TailWeights> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading the tail {}", path.display()))?;
    let get = |name: &str| -> Result<FoldedWeights> {
        let part = |what: &str| {
            tensors
                .get(&format!("{name}.{what}"))
                .cloned()
                .ok_or_else(|| anyhow!("{}: no {name}.{what}", path.display()))
        };
        Ok(FoldedWeights { weight: part("weight")?, bias: part("bias")? })
    };
    let first_block =
        (0..BLOCKS).find(|b| tensors.contains_key(&format!("{PREFIX}.{b}.depthwise.weight"))).unwrap_or(BLOCKS);
    let mut blocks = Vec::with_capacity(BLOCKS - first_block);
    for b in first_block..BLOCKS {
        let name = format!("{PREFIX}.{b}");
        let (stride, residual) = lite0::block_layout(b).ok_or_else(|| anyhow!("Lite0 has no block {b}"))?;
        let expand = tensors.contains_key(&format!("{name}.expand.weight")).then(|| get(&format!("{name}.expand")));
        blocks.push(BlockWeights {
            expand: expand.transpose()?,
            depthwise: get(&format!("{name}.depthwise"))?,
            project: get(&format!("{name}.project"))?,
            stride,
            residual,
        });
    }
    Ok(TailWeights { first_block, blocks, head: get(&format!("{PREFIX}.{CONV_HEAD}"))? })
}
