//! The model: turns decoded images into L2-normalised embeddings.
//!
//! [`EmbeddingModel`] is the one type the rest of the service uses: the
//! EfficientNet-Lite0 backbone ([`lite0`]), whose L2-normalised pooled
//! features every generation reads (a fine-tuned generation then applies its
//! own head, `generation::projection`). Inputs come from [`preprocess`] (the single decoding path for ingest
//! and queries); weights come from [`fetch`] and [`import`] at set-up time.
//! A loaded model is immutable and `Send + Sync`; `embed` is CPU-heavy and
//! blocking, so callers run it on a dedicated thread or `spawn_blocking`.

pub mod depthwise;
pub mod fetch;
mod fused;
pub mod import;
pub mod lite0;
pub mod nhwc;
pub mod preprocess;
mod simd;
pub mod tail;

use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::Device;
use sha2::{Digest, Sha256};

use lite0::Lite0;

/// Hex digits of the weights' sha256 kept in a model id.
const ID_HASH_CHARS: usize = 12;
/// Below this norm an embedding is treated as zero and left unscaled.
const MIN_NORM: f32 = 1e-12;

/// The backbone, with the input size it expects and an id that names its weights.
pub struct EmbeddingModel {
    backbone: Lite0,
    input_size: u32,
    device: Device,
    id: String,
}

impl EmbeddingModel {
    /// Loads backbone weights (safetensors from [`import::import_weights`])
    /// for inputs of `input_size`×`input_size` pixels.
    pub fn load(weights: &Path, input_size: u32, device: &Device) -> Result<Self> {
        ensure!(
            input_size as usize >= lite0::MIN_INPUT_SIZE,
            "input size {input_size} is below the minimum {}",
            lite0::MIN_INPUT_SIZE
        );
        let bytes = std::fs::read(weights).with_context(|| format!("reading {}", weights.display()))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        let id = format!("lite0-{}", &digest[..ID_HASH_CHARS]);
        let backbone = Lite0::load(weights, device)?;
        Ok(Self { backbone, input_size, device: device.clone(), id })
    }

    /// Length of an embedding.
    pub fn dim(&self) -> usize {
        lite0::FEATURE_DIM
    }

    /// Side of the square input, in pixels.
    pub fn input_size(&self) -> u32 {
        self.input_size
    }

    /// A short id that changes whenever the weights do.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Embeds a batch of inputs made by [`preprocess::to_input`] at
    /// `input_size()`. Each row is L2-normalised (a zero row stays zero).
    pub fn embed(&self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let x = preprocess::batch_tensor(inputs, self.input_size, &self.device)?;
        let features = self.backbone.features(&x)?;
        let rows: Vec<Vec<f32>> = features.to_device(&Device::Cpu)?.to_vec2()?;
        Ok(rows.into_iter().map(l2_normalised).collect())
    }

    /// [`embed`](Self::embed), also keeping the activations entering block `boundary` when asked
    /// (what a deep generation's trained tail reads): one pass gives both.
    pub fn embed_at(&self, inputs: &[Vec<f32>], boundary: Option<usize>) -> Result<Vec<Embedded>> {
        let Some(block) = boundary else {
            return Ok(self.embed(inputs)?.into_iter().map(|features| Embedded { features, block: None }).collect());
        };
        if inputs.is_empty() {
            return Ok(Vec::new());
        }
        let x = preprocess::batch_tensor(inputs, self.input_size, &self.device)?;
        let activations = self.backbone.block_input(&x, block)?;
        let features: Vec<Vec<f32>> =
            self.backbone.features_from(&activations, block)?.to_device(&Device::Cpu)?.to_vec2()?;
        let blocks: Vec<Vec<f32>> = activations.flatten_from(1)?.to_device(&Device::Cpu)?.to_vec2()?;
        Ok(features
            .into_iter()
            .zip(blocks)
            .map(|(f, b)| Embedded { features: l2_normalised(f), block: Some(b) })
            .collect())
    }

    /// The activations entering block `block` of a batch of inputs, as one N×H×W×C tensor on the
    /// CPU (where a tail trains).
    pub fn block_inputs(&self, inputs: &[Vec<f32>], block: usize) -> Result<candle_core::Tensor> {
        let x = preprocess::batch_tensor(inputs, self.input_size, &self.device)?;
        Ok(self.backbone.block_input(&x, block)?.to_device(&Device::Cpu)?)
    }

    /// The pretrained weights of the blocks from `first_block` on and the head convolution: where
    /// a trainable tail starts.
    pub fn tail_weights(&self, first_block: usize) -> Result<lite0::TailWeights> {
        self.backbone.tail_weights(first_block)
    }

    /// Values in the activations entering block `block` for one image at `input_size()`
    /// (H×W×C, from the architecture: nothing runs).
    pub fn block_len(&self, block: usize) -> Result<usize> {
        let (side, channels) = lite0::block_input_dims(self.input_size as usize, block)
            .ok_or_else(|| anyhow::anyhow!("Lite0 has {} blocks, not {block}", lite0::BLOCKS))?;
        Ok(side * side * channels)
    }
}

/// What the shared trunk gives for one image: the pretrained model's features, and the
/// activations entering a trained tail's first block when one was asked for (H×W×C,
/// channels-last).
#[derive(Debug, Clone)]
pub struct Embedded {
    pub features: Vec<f32>,
    pub block: Option<Vec<f32>>,
}

impl Embedded {
    /// What a model that reads block inputs (`Some`) or features (`None`) reads.
    pub fn into_model_input(self) -> Vec<f32> {
        self.block.unwrap_or(self.features)
    }
}

pub(crate) fn l2_normalised(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > MIN_NORM {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_guards_zero() {
        assert_eq!(l2_normalised(vec![0.0, 0.0]), vec![0.0, 0.0]);
        let v = l2_normalised(vec![3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }
}
