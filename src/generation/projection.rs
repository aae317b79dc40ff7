//! A trained head as the server applies it: backbone feature → search embedding.
//!
//! Training builds an [`EmbeddingHead`] of candle tensors; serving needs the
//! same map applied to one query at a time in microseconds, without candle's
//! per-call overhead, and to tens of thousands of stored features when an
//! index is rebuilt. [`Projection`] holds the head's weights as plain rows and
//! computes `normalise(W·x + b)` exactly as [`EmbeddingHead`] does (same
//! floor on the norm), so a vector projected here matches the training code's
//! to rounding. Immutable and shared between threads.
//!
//! On a GPU (`model.device`), many rows at once ([`Projection::project_many`], a catalogue being
//! indexed or evaluated) are one matrix product on it; one query stays on the CPU, where a few
//! thousand multiply-adds take microseconds and a round trip to the GPU would not.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::train::EmbeddingHead;

/// Same floor as the training head's: a zero row stays zero.
const MIN_SQUARED_NORM: f32 = 1e-12;

#[derive(Debug, Clone)]
pub struct Projection {
    in_dim: usize,
    out_dim: usize,
    /// `out_dim` rows of `in_dim` values.
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// Where many rows at once are projected: the CPU's rayon loop, or one product on a GPU.
    bulk: Device,
}

impl Projection {
    /// The head's map, projecting many rows at once on `bulk`.
    pub fn from_head(head: &EmbeddingHead, bulk: &Device) -> Result<Self> {
        let (weight, bias) = head.weights()?;
        let (in_dim, out_dim) = (head.in_dim(), head.out_dim());
        ensure!(weight.len() == in_dim * out_dim && bias.len() == out_dim, "head weights have the wrong shape");
        Ok(Self { in_dim, out_dim, weight, bias, bulk: bulk.clone() })
    }

    /// Loads a head saved by [`EmbeddingHead::save`], projecting many rows at once on `bulk`.
    pub fn load(path: &Path, bulk: &Device) -> Result<Self> {
        let head = EmbeddingHead::load(path, &Device::Cpu)
            .with_context(|| format!("cannot load the head {}", path.display()))?;
        Self::from_head(&head, bulk)
    }

    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// One feature vector (`in_dim` values) → one unit embedding (`out_dim`).
    pub fn project(&self, feature: &[f32]) -> Vec<f32> {
        debug_assert_eq!(feature.len(), self.in_dim);
        let mut out: Vec<f32> = self
            .weight
            .chunks_exact(self.in_dim)
            .zip(&self.bias)
            .map(|(row, bias)| row.iter().zip(feature).map(|(w, x)| w * x).sum::<f32>() + bias)
            .collect();
        let norm = out.iter().map(|x| x * x).sum::<f32>().max(MIN_SQUARED_NORM).sqrt();
        out.iter_mut().for_each(|x| *x /= norm);
        out
    }

    /// Many feature vectors: in parallel on the CPU, or as one matrix product on the GPU. A
    /// single row (an item added on its own) stays on the CPU, like a query.
    pub fn project_many(&self, features: &[&[f32]]) -> Result<Vec<Vec<f32>>> {
        if self.bulk.is_cpu() || features.len() <= 1 {
            Ok(features.par_iter().map(|f| self.project(f)).collect())
        } else {
            self.project_with_tensors(features, &self.bulk)
        }
    }

    /// `normalise(X·Wᵀ + b)` as candle tensor ops on `device` (any device; used off the CPU).
    fn project_with_tensors(&self, features: &[&[f32]], device: &Device) -> Result<Vec<Vec<f32>>> {
        if features.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<f32> = features.iter().flat_map(|f| f.iter().copied()).collect();
        ensure!(rows.len() == features.len() * self.in_dim, "feature rows are not {} values long", self.in_dim);
        let x = Tensor::from_vec(rows, (features.len(), self.in_dim), device)?;
        let w = Tensor::from_slice(&self.weight, (self.out_dim, self.in_dim), device)?;
        let b = Tensor::from_slice(&self.bias, self.out_dim, device)?;
        let y = x.matmul(&w.t()?)?.broadcast_add(&b)?;
        let norm = y.sqr()?.sum_keepdim(1)?.clamp(MIN_SQUARED_NORM, f32::INFINITY)?.sqrt()?;
        Ok(y.broadcast_div(&norm)?.to_vec2()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn matches_the_training_head() -> Result<()> {
        let head = EmbeddingHead::seeded(&VarMap::new(), 40, 8, 3, &Device::Cpu)?;
        let projection = Projection::from_head(&head, &Device::Cpu)?;
        let features: Vec<f32> = (0..120).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
        let expected = head.embed_rows(&features, &Device::Cpu)?;
        let got: Vec<f32> = features.chunks_exact(40).flat_map(|row| projection.project(row)).collect();
        assert_eq!(got.len(), expected.len());
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let norms: Vec<f32> = got.chunks_exact(8).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).collect();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
        // The tensor path a GPU takes, here on the CPU, gives the same rows.
        let rows: Vec<&[f32]> = features.chunks_exact(40).collect();
        let tensors = projection.project_with_tensors(&rows, &Device::Cpu)?;
        for (a, b) in tensors.iter().flatten().zip(&got) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        assert_eq!(projection.project_many(&rows)?.concat(), got);
        Ok(())
    }
}
