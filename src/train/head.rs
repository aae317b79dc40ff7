//! The embedding head: a linear layer from the backbone's pooled features to the search embedding.
//!
//! [`EmbeddingHead`] maps each `in_dim` feature row (the backbone's [`BACKBONE_DIM`] in production)
//! to an `out_dim` row ([`DEFAULT_EMBEDDING_DIM`] by default) and L2-normalises it, so distances
//! between embeddings lie in `[0, 2]` as the losses and miners expect. Its weights live under the
//! keys `head.weight` (`out_dim × in_dim`) and `head.bias` (`out_dim`), both when built from a
//! [`VarBuilder`] and in the safetensors file [`EmbeddingHead::save`] writes.
//!
//! [`EmbeddingHead::seeded`] fills a [`VarMap`] from a [`SeededRng`] instead of candle's global
//! generator, so that a training run is a pure function of its seed. A head is immutable once
//! built (training changes its weights only through the `Var`s of its `VarMap`) and can be shared
//! between threads.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Module, Result, Tensor, Var, bail};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::rng::SeededRng;

/// Width of the backbone's pooled feature vector: the head's input in production.
pub const BACKBONE_DIM: usize = 1280;
/// Width of the search embedding the head produces unless configured otherwise.
pub const DEFAULT_EMBEDDING_DIM: usize = 128;
/// Prefix of the head's weight keys (`head.weight`, `head.bias`).
pub const HEAD_PREFIX: &str = "head";
/// Floor of the squared norm before the square root in [`EmbeddingHead::forward`]: a zero row
/// stays a zero row (instead of NaN) and its gradient stays finite.
const MIN_SQUARED_NORM: f64 = 1e-12;

/// Linear projection followed by L2 normalisation of each row.
#[derive(Debug, Clone)]
pub struct EmbeddingHead {
    linear: Linear,
    in_dim: usize,
    out_dim: usize,
}

impl EmbeddingHead {
    /// The head whose weights `vb` holds under `head.weight` and `head.bias` (created with
    /// candle's default initialisation if `vb` is backed by a [`VarMap`] that lacks them).
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        if in_dim == 0 || out_dim == 0 {
            bail!("embedding head: dimensions must be positive (got {in_dim} → {out_dim})");
        }
        let linear = candle_nn::linear(in_dim, out_dim, vb.pp(HEAD_PREFIX))?;
        Ok(Self { linear, in_dim, out_dim })
    }

    /// A trainable head whose weights are stored in `varmap` and initialised from `seed`.
    ///
    /// Weights and bias are drawn uniformly from `±1/sqrt(in_dim)` (the usual default for a linear
    /// layer) with a [`SeededRng`]; the same seed gives bit-identical weights. Any `head.*` entries
    /// already in `varmap` are replaced.
    pub fn seeded(varmap: &VarMap, in_dim: usize, out_dim: usize, seed: u64, device: &Device) -> Result<Self> {
        let bound = 1.0 / (in_dim.max(1) as f32).sqrt();
        let mut rng = SeededRng::new(seed);
        let weight = uniform(&mut rng, out_dim * in_dim, bound);
        let bias = uniform(&mut rng, out_dim, bound);
        {
            let mut data = varmap.data().lock().map_err(|_| candle_core::Error::Msg("VarMap lock poisoned".into()))?;
            let weight = Var::from_tensor(&Tensor::from_vec(weight, (out_dim, in_dim), device)?)?;
            let bias = Var::from_tensor(&Tensor::from_vec(bias, out_dim, device)?)?;
            data.insert(format!("{HEAD_PREFIX}.weight"), weight);
            data.insert(format!("{HEAD_PREFIX}.bias"), bias);
        }
        Self::new(VarBuilder::from_varmap(varmap, DType::F32, device), in_dim, out_dim)
    }

    /// Loads a head written by [`EmbeddingHead::save`]; its dimensions are read from the weights.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path.as_ref(), device)?;
        let Some(weight) = tensors.get(&format!("{HEAD_PREFIX}.weight")) else {
            bail!("embedding head: {:?} has no {HEAD_PREFIX}.weight", path.as_ref());
        };
        let (out_dim, in_dim) = weight.dims2()?;
        Self::new(VarBuilder::from_tensors(tensors, DType::F32, device), in_dim, out_dim)
    }

    /// Writes the weights as safetensors under `head.weight` and `head.bias`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = HashMap::from([(format!("{HEAD_PREFIX}.weight"), self.linear.weight().clone())]);
        if let Some(bias) = self.linear.bias() {
            tensors.insert(format!("{HEAD_PREFIX}.bias"), bias.clone());
        }
        candle_core::safetensors::save(&tensors, path.as_ref())
    }

    /// The weights as plain row-major values: `(weight [out_dim × in_dim], bias [out_dim])`; a
    /// head built without bias gives zeros.
    pub fn weights(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let weight = self.linear.weight().flatten_all()?.to_vec1::<f32>()?;
        let bias = match self.linear.bias() {
            Some(bias) => bias.to_vec1::<f32>()?,
            None => vec![0.0; self.out_dim],
        };
        Ok((weight, bias))
    }

    /// Width of the feature rows the head reads.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Width of the embeddings the head writes.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Embeds plain row-major feature rows (`in_dim` values each) into unit rows (`out_dim` each).
    pub fn embed_rows(&self, features: &[f32], device: &Device) -> Result<Vec<f32>> {
        if !features.len().is_multiple_of(self.in_dim) {
            bail!("embedding head: {} values are not rows of {}", features.len(), self.in_dim);
        }
        let rows = Tensor::from_slice(features, (features.len() / self.in_dim, self.in_dim), device)?;
        self.forward(&rows)?.flatten_all()?.to_vec1::<f32>()
    }
}

impl Module for EmbeddingHead {
    /// N×`in_dim` features → N×`out_dim` rows of unit norm (a row projecting to zero stays zero).
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let projected = self.linear.forward(features)?;
        let norms = projected.sqr()?.sum_keepdim(D::Minus1)?.maximum(MIN_SQUARED_NORM)?.sqrt()?;
        projected.broadcast_div(&norms)
    }
}

/// `count` values uniform in `[-bound, bound)`, from the top 24 bits of each draw (exact in f32).
fn uniform(rng: &mut SeededRng, count: usize, bound: f32) -> Vec<f32> {
    const UNIT: f32 = 1.0 / (1u32 << 24) as f32;
    (0..count).map(|_| ((rng.next_u64() >> 40) as f32 * UNIT * 2.0 - 1.0) * bound).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_norms(values: &[f32], dim: usize) -> Vec<f32> {
        values.chunks_exact(dim).map(|row| row.iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
    }

    #[test]
    fn rows_are_unit_norm_and_a_zero_row_stays_finite() -> Result<()> {
        let device = Device::Cpu;
        let mut varmap = VarMap::new();
        let head = EmbeddingHead::seeded(&varmap, 6, 3, 1, &device)?;
        let features: Vec<f32> = (0..12).map(|i| i as f32 - 5.5).collect();
        let norms = row_norms(&head.embed_rows(&features, &device)?, 3);
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");

        varmap.set_one("head.bias", Tensor::zeros(3, DType::F32, &device)?)?;
        let embedded = head.embed_rows(&[0.0; 6], &device)?;
        assert_eq!(embedded, vec![0.0; 3], "a zero feature row with zero bias embeds to zero, not NaN");
        Ok(())
    }

    #[test]
    fn same_seed_same_weights_and_save_load_round_trips() -> Result<()> {
        let device = Device::Cpu;
        let first = EmbeddingHead::seeded(&VarMap::new(), 5, 4, 7, &device)?;
        let again = EmbeddingHead::seeded(&VarMap::new(), 5, 4, 7, &device)?;
        let other = EmbeddingHead::seeded(&VarMap::new(), 5, 4, 8, &device)?;
        let features: Vec<f32> = (0..10).map(|i| (i as f32).sin()).collect();
        let embedded = first.embed_rows(&features, &device)?;
        assert_eq!(embedded, again.embed_rows(&features, &device)?);
        assert_ne!(embedded, other.embed_rows(&features, &device)?);

        let dir = tempfile::tempdir().map_err(candle_core::Error::wrap)?;
        let path = dir.path().join("head.safetensors");
        first.save(&path)?;
        let loaded = EmbeddingHead::load(&path, &device)?;
        assert_eq!((loaded.in_dim(), loaded.out_dim()), (5, 4));
        assert_eq!(loaded.embed_rows(&features, &device)?, embedded);
        Ok(())
    }
}
