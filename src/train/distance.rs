//! Pairwise Euclidean distances between the embeddings of a training batch.
//!
//! [`pairwise_distances`] is differentiable: the loss is built on its output and gradients flow
//! back to the embeddings. [`distances_to_vec`] reads the same matrix back as plain numbers (no
//! gradient) for the miners. Both are pure functions of their input.
//!
//! # Safe square root
//!
//! The squared distances come from the Gram matrix, `|a|² + |b|² − 2·a·b`. Before the square root
//! they are floored: `d = sqrt(max(d², MIN_SQUARED_DISTANCE))`. The floor, not an added epsilon,
//! is used because:
//! - the derivative of `sqrt` is `1 / (2·d)`, and candle computes it as `grad / d`, which is NaN
//!   at `d = 0` even when the incoming gradient is zero (every diagonal entry, any two coinciding
//!   embeddings). With the floor, `d ≥ sqrt(MIN_SQUARED_DISTANCE)` everywhere, so this division
//!   is always finite, and an entry below the floor gets zero gradient (there is no meaningful
//!   direction to push two coinciding points);
//! - the Gram form can round a zero distance to a tiny negative or positive number; the floor is
//!   above that rounding noise for unit-norm embeddings (about 1e-7 in `f32`), so coinciding
//!   rows land exactly on the floor instead of on noise with a huge `1 / (2·d)`;
//! - distances above the floor are exact, whereas `sqrt(d² + eps)` shifts every distance.
//!
//! The cost: the diagonal and coinciding rows read `sqrt(MIN_SQUARED_DISTANCE)` = 1e-3 instead of
//! 0, which is negligible next to a margin of about 0.1–1 on the unit sphere (distances in 0..2).

use candle_core::{D, DType, Result, Tensor};

/// Floor applied to squared distances before the square root (see the module docs). Distances
/// below `sqrt(MIN_SQUARED_DISTANCE)` = 1e-3 read as 1e-3 and pass no gradient.
pub const MIN_SQUARED_DISTANCE: f64 = 1e-6;

/// The N×N matrix of Euclidean distances between the rows of an N×D `embeddings` tensor.
///
/// Differentiable with respect to `embeddings`; never NaN or infinite in value or gradient for
/// finite input. The embeddings are expected to be L2-normalised (the floor is sized for that).
pub fn pairwise_distances(embeddings: &Tensor) -> Result<Tensor> {
    let (rows, _dims) = embeddings.dims2()?;
    let gram = embeddings.matmul(&embeddings.t()?)?;
    let squared_norms = embeddings.sqr()?.sum_keepdim(D::Minus1)?;
    let squared = squared_norms.broadcast_add(&squared_norms.t()?)?.sub(&gram.affine(2.0, 0.0)?)?;
    debug_assert_eq!(squared.dims(), &[rows, rows]);
    squared.maximum(MIN_SQUARED_DISTANCE)?.sqrt()
}

/// `rows` (N×D) each divided by its Euclidean length (a zero row stays zero).
pub fn unit_rows(rows: &Tensor) -> Result<Tensor> {
    rows.broadcast_div(&rows.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?)
}

/// Reads an N×N distance matrix back as row-major `f32` values, detached from the graph.
pub fn distances_to_vec(distances: &Tensor) -> Result<Vec<f32>> {
    distances.detach().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn embeddings(rows: &[[f32; 3]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 3), &Device::Cpu).expect("valid shape")
    }

    #[test]
    fn matches_per_pair_euclidean_distance() -> Result<()> {
        let rows = [[0.6, 0.8, 0.0], [0.0, 0.6, 0.8], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]];
        let distances = distances_to_vec(&pairwise_distances(&embeddings(&rows))?)?;
        for (i, a) in rows.iter().enumerate() {
            for (j, b) in rows.iter().enumerate() {
                let expected: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
                let expected = expected.max(MIN_SQUARED_DISTANCE.sqrt() as f32);
                assert!((distances[i * rows.len() + j] - expected).abs() < 1e-5, "entry ({i}, {j})");
            }
        }
        Ok(())
    }

    #[test]
    fn gradient_is_finite_when_rows_coincide() -> Result<()> {
        let var = Var::from_tensor(&embeddings(&[[0.6, 0.8, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 0.0]]))?;
        let distances = pairwise_distances(var.as_tensor())?;
        let grads = distances.sum_all()?.backward()?;
        let grad = grads.get(var.as_tensor()).map(distances_to_vec).transpose()?;
        let grad = grad.ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
        assert!(grad.iter().all(|g| g.is_finite()), "{grad:?}");
        Ok(())
    }
}
