//! The triplet loss over mined triplets, built from tensor ops so gradients reach the embeddings.
//!
//! [`triplet_loss`] gathers `d(anchor, positive)` and `d(anchor, negative)` from the flattened
//! distance matrix with `index_select`, applies the hinge `max(0, d_ap − d_an + margin)` or the
//! soft margin `softplus(d_ap − d_an)`, and reduces. It is a pure function of its inputs.

use candle_core::{DType, Device, Result, Tensor, bail};
use serde::{Deserialize, Serialize};

use super::miners::{Mining, Triplet};

/// How per-triplet losses become the batch loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reduction {
    /// Mean over all triplets.
    #[default]
    Mean,
    /// Mean over the triplets whose loss is > 0 (batch-all); 0 when none is. The count is a
    /// constant for the gradient. Under the soft margin every loss is > 0, so this equals `Mean`.
    MeanOverActive,
    /// Sum over all triplets.
    Sum,
}

impl Mining {
    /// The reduction each mode is defined with: batch-all averages over active triplets only
    /// (most of its triplets are easy and would drown the gradient), the others over all.
    pub fn reduction(self) -> Reduction {
        match self {
            Mining::BatchAll => Reduction::MeanOverActive,
            Mining::BatchHard | Mining::SemiHard | Mining::Random => Reduction::Mean,
        }
    }
}

/// The scalar triplet loss of `triplets` over the N×N distance matrix `distances`.
///
/// With `soft`, each triplet costs `softplus(d_ap − d_an)` and `margin` is ignored; otherwise
/// `max(0, d_ap − d_an + margin)`. With no triplets the result is a zero that is still part of
/// the graph (its gradient is zero, never NaN). Fails if `distances` is not square or a triplet
/// index is outside the batch.
pub fn triplet_loss(
    distances: &Tensor,
    triplets: &[Triplet],
    margin: f32,
    soft: bool,
    reduction: Reduction,
) -> Result<Tensor> {
    let (rows, cols) = distances.dims2()?;
    if rows != cols {
        bail!("triplet_loss: the distance matrix is {rows}×{cols}, not square");
    }
    if triplets.is_empty() {
        // Not `affine(0.0, 0.0)`: candle prunes a zero-factor affine from the graph, and the
        // embeddings would then get no gradient entry at all instead of a zero one.
        let zero = Tensor::zeros((), distances.dtype(), distances.device())?;
        return distances.sum_all()?.mul(&zero);
    }
    let flat = distances.flatten_all()?;
    let anchor_positive = flat.index_select(&flat_indices(triplets, rows, distances.device(), |t| t.positive)?, 0)?;
    let anchor_negative = flat.index_select(&flat_indices(triplets, rows, distances.device(), |t| t.negative)?, 0)?;
    let gap = anchor_positive.sub(&anchor_negative)?;
    let per_triplet = if soft { softplus(&gap)? } else { gap.affine(1.0, f64::from(margin))?.relu()? };
    match reduction {
        Reduction::Mean => per_triplet.mean_all(),
        Reduction::Sum => per_triplet.sum_all(),
        Reduction::MeanOverActive => {
            let active = per_triplet.gt(0.0)?.to_dtype(per_triplet.dtype())?.sum_all()?;
            per_triplet.sum_all()?.div(&active.maximum(1.0)?)
        }
    }
}

/// Row-major positions `anchor·n + other(t)` of each triplet in the flattened matrix, as `u32`.
fn flat_indices(triplets: &[Triplet], n: usize, device: &Device, other: impl Fn(&Triplet) -> usize) -> Result<Tensor> {
    let mut indices = Vec::with_capacity(triplets.len());
    for triplet in triplets {
        let (anchor, other) = (triplet.anchor, other(triplet));
        if anchor >= n || other >= n {
            bail!("triplet_loss: triplet {triplet:?} points outside a batch of {n}");
        }
        let Ok(index) = u32::try_from(anchor * n + other) else {
            bail!("triplet_loss: a batch of {n} is too large to index with u32");
        };
        indices.push(index);
    }
    Tensor::from_vec(indices, triplets.len(), device)
}

/// `ln(1 + eˣ)` computed as `max(x, 0) + ln(1 + e^(−|x|))`, which never overflows; its gradient is
/// the logistic function (0.5 at 0, as candle's `relu` and `abs` derivatives are 1 at 0).
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = x.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    x.relu()?.add(&tail)
}

/// The value of a scalar loss, or an error when it is NaN or infinite (a diverged step).
pub fn loss_value(loss: &Tensor) -> Result<f32> {
    let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !value.is_finite() {
        bail!("triplet loss is not finite: {value}");
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(values: &[f32], n: usize) -> Tensor {
        Tensor::from_vec(values.to_vec(), (n, n), &Device::Cpu).expect("square")
    }

    const TRIPLET: Triplet = Triplet { anchor: 0, positive: 1, negative: 2 };

    #[test]
    fn hinge_and_soft_margin_values() -> Result<()> {
        // d_ap = 0.5, d_an = 0.3: gap 0.2.
        let distances = matrix(&[0.0, 0.5, 0.3, 0.5, 0.0, 0.9, 0.3, 0.9, 0.0], 3);
        let hinge = loss_value(&triplet_loss(&distances, &[TRIPLET], 0.1, false, Reduction::Mean)?)?;
        assert!((hinge - 0.3).abs() < 1e-6, "{hinge}");
        let soft = loss_value(&triplet_loss(&distances, &[TRIPLET], 0.1, true, Reduction::Mean)?)?;
        assert!((soft - (1.0 + 0.2_f32.exp()).ln()).abs() < 1e-6, "{soft}");
        Ok(())
    }

    #[test]
    fn no_triplets_is_a_zero_loss() -> Result<()> {
        let distances = matrix(&[0.0; 4], 2);
        for reduction in [Reduction::Mean, Reduction::MeanOverActive, Reduction::Sum] {
            assert_eq!(loss_value(&triplet_loss(&distances, &[], 0.2, false, reduction)?)?, 0.0);
        }
        Ok(())
    }

    #[test]
    fn no_triplets_gives_a_zero_gradient_not_a_missing_one() -> Result<()> {
        let var = candle_core::Var::from_tensor(&matrix(&[0.0, 0.4, 0.4, 0.0], 2))?;
        let loss = triplet_loss(var.as_tensor(), &[], 0.2, false, Reduction::Mean)?;
        let grads = loss.backward()?;
        let grad = grads.get(var.as_tensor()).map(|g| g.flatten_all()?.to_vec1::<f32>()).transpose()?;
        assert_eq!(grad, Some(vec![0.0; 4]));
        Ok(())
    }

    #[test]
    fn mean_over_active_ignores_zero_loss_triplets() -> Result<()> {
        // (0,1,2): 0.5 − 0.3 + 0.1 = 0.3 active; (0,1,3): 0.5 − 1.0 + 0.1 < 0 inactive.
        let distances = matrix(&[0.0, 0.5, 0.3, 1.0, 0.5, 0.0, 0.9, 0.9, 0.3, 0.9, 0.0, 0.9, 1.0, 0.9, 0.9, 0.0], 4);
        let triplets = [TRIPLET, Triplet { negative: 3, ..TRIPLET }];
        let active = loss_value(&triplet_loss(&distances, &triplets, 0.1, false, Reduction::MeanOverActive)?)?;
        let mean = loss_value(&triplet_loss(&distances, &triplets, 0.1, false, Reduction::Mean)?)?;
        assert!((active - 0.3).abs() < 1e-6 && (mean - 0.15).abs() < 1e-6, "{active} {mean}");
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() {
        let distances = matrix(&[0.0; 4], 2);
        assert!(triplet_loss(&distances, &[TRIPLET], 0.2, false, Reduction::Mean).is_err());
        let wide = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).expect("shape");
        assert!(triplet_loss(&wide, &[], 0.2, false, Reduction::Mean).is_err());
    }
}
