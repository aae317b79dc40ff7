//! The distance the HNSW graph is built with: `1 − ⟨a, b⟩` for L2-normalised vectors.
//!
//! Owns [`UnitCosine`] and [`unit_cosine_distance`]. Both are pure functions of their
//! inputs and safe to call from any number of threads at once.
//!
//! Why not `anndists`' `DistDot` or `DistCosine`: `DistDot` asserts `1 − dot ≥ 0`, which a
//! rounding error on a vector compared with itself breaks (a panic inside a search), and
//! `DistCosine` recomputes both norms in f64 on every call. This one clamps to `[0, 2]` and
//! sums in independent lanes so the compiler vectorises it.

use hnsw_rs::prelude::Distance;

/// Number of independent partial sums: enough for the compiler to fill 256-bit registers.
const LANES: usize = 8;

/// The dot product of two equally long slices.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut sums = [0.0f32; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let tail: f32 = chunks_a.remainder().iter().zip(chunks_b.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for ((sum, x), y) in sums.iter_mut().zip(ca).zip(cb) {
            *sum += x * y;
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// `1 − cosine` for L2-normalised vectors, clamped to its mathematical range `[0, 2]`.
pub fn unit_cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    (1.0 - dot(a, b)).clamp(0.0, 2.0)
}

/// The HNSW distance type. Its type name is written into every graph dump and checked on
/// load, so renaming or moving it makes older dumps unloadable (load fails with an error,
/// and the caller rebuilds from stored embeddings).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        unit_cosine_distance(va, vb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_dot_and_clamps() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);

        let norm = dot(&a, &a).sqrt();
        let unit: Vec<f32> = a.iter().map(|x| x / norm).collect();
        let d = unit_cosine_distance(&unit, &unit);
        assert!((0.0..1e-5).contains(&d));
        let opposite: Vec<f32> = unit.iter().map(|x| -x).collect();
        assert!((unit_cosine_distance(&unit, &opposite) - 2.0).abs() < 1e-5);
    }
}
