//! The distance the HNSW graph is built with: `1 − ⟨a, b⟩` for L2-normalised vectors.
//!
//! Owns the dot product and [`unit_cosine_distance`]. Both are pure functions of their
//! inputs and safe to call from any number of threads at once.
//!
//! The dot product is most of a search's time, and the project builds for baseline x86-64
//! (SSE only), so the compiler alone would never use wider registers. [`dot`] picks, once per
//! process, the widest kernel the CPU runs (`crate::cpu::features`): AVX-512F, else
//! AVX2 with FMA, else a portable loop the compiler vectorises for the baseline. Each keeps
//! four independent accumulators so consecutive multiply-adds do not wait on each other.
//! Distances are clamped to their mathematical range `[0, 2]`: a rounding error on a vector
//! compared with itself must not come out negative.

use std::sync::OnceLock;

/// A dot product of two equally long slices.
pub(crate) type DotFn = fn(&[f32], &[f32]) -> f32;

/// Number of independent partial sums of the portable loop: enough for the compiler to fill
/// 128-bit registers twice over.
const LANES: usize = 8;

/// The dot product of two equally long slices, with the fastest kernel this CPU runs.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_kernel()(a, b)
}

/// The fastest dot-product kernel this CPU runs, detected once.
pub(crate) fn dot_kernel() -> DotFn {
    static CHOSEN: OnceLock<DotFn> = OnceLock::new();
    *CHOSEN.get_or_init(detect)
}

/// `1 − cosine` for L2-normalised vectors, clamped to its mathematical range `[0, 2]`.
pub fn unit_cosine_distance(a: &[f32], b: &[f32]) -> f32 {
    clamp_distance(1.0 - dot(a, b))
}

/// The graph works with `1 − dot` unclamped (it only compares them); answers are clamped.
pub(crate) fn clamp_distance(raw: f32) -> f32 {
    raw.clamp(0.0, 2.0)
}

fn detect() -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = crate::cpu::features();
        if cpu.avx512f {
            return x86::dot_avx512;
        }
        if cpu.avx2_fma {
            return x86::dot_avx2;
        }
    }
    dot_portable
}

/// The baseline kernel: independent lanes the compiler turns into SSE.
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Safe entry point of the AVX-512F kernel. Only `detect` hands it out, after
    /// `is_x86_feature_detected!("avx512f")` said yes.
    pub(super) fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this function is only reachable through `detect`, which checked avx512f.
        unsafe { dot_avx512_kernel(a, b) }
    }

    /// Safe entry point of the AVX2 + FMA kernel; handed out only after both were detected.
    pub(super) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this function is only reachable through `detect`, which checked avx2 and fma.
        unsafe { dot_avx2_kernel(a, b) }
    }

    #[target_feature(enable = "avx512f")]
    fn dot_avx512_kernel(a: &[f32], b: &[f32]) -> f32 {
        const WIDTH: usize = 16;
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut sums = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load below): `i + WIDTH <= n`, so the 16 floats read lie inside both slices.
        while i + 4 * WIDTH <= n {
            for (lane, sum) in sums.iter_mut().enumerate() {
                let at = i + lane * WIDTH;
                let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(at)), _mm512_loadu_ps(pb.add(at))) };
                *sum = _mm512_fmadd_ps(x, y, *sum);
            }
            i += 4 * WIDTH;
        }
        while i + WIDTH <= n {
            let (x, y) = unsafe { (_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i))) };
            sums[0] = _mm512_fmadd_ps(x, y, sums[0]);
            i += WIDTH;
        }
        let total = _mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_add_ps(sums[2], sums[3]));
        let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
        _mm512_reduce_add_ps(total) + tail
    }

    #[target_feature(enable = "avx2,fma")]
    fn dot_avx2_kernel(a: &[f32], b: &[f32]) -> f32 {
        const WIDTH: usize = 8;
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut sums = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (every load below): `i + WIDTH <= n`, so the 8 floats read lie inside both slices.
        while i + 4 * WIDTH <= n {
            for (lane, sum) in sums.iter_mut().enumerate() {
                let at = i + lane * WIDTH;
                let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(at)), _mm256_loadu_ps(pb.add(at))) };
                *sum = _mm256_fmadd_ps(x, y, *sum);
            }
            i += 4 * WIDTH;
        }
        while i + WIDTH <= n {
            let (x, y) = unsafe { (_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i))) };
            sums[0] = _mm256_fmadd_ps(x, y, sums[0]);
            i += WIDTH;
        }
        let total = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps::<1>(total));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let single = _mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs));
        let tail: f32 = a[i..n].iter().zip(&b[i..n]).map(|(x, y)| x * y).sum();
        _mm_cvtss_f32(single) + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// Every kernel this CPU can run, with its name.
    fn kernels() -> Vec<(&'static str, DotFn)> {
        let mut all: Vec<(&'static str, DotFn)> = vec![("portable", dot_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            let cpu = crate::cpu::features();
            if cpu.avx512f {
                all.push(("avx512f", x86::dot_avx512));
            }
            if cpu.avx2_fma {
                all.push(("avx2+fma", x86::dot_avx2));
            }
        }
        all
    }

    #[test]
    fn every_kernel_matches_the_naive_dot_at_every_length() {
        for len in [0, 1, 7, 8, 15, 16, 17, 33, 63, 64, 65, 128, 129, 1280, 1283] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let expected = naive(&a, &b);
            for (name, kernel) in kernels() {
                let got = kernel(&a, &b);
                assert!(
                    (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                    "{name} at {len}: {got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn distance_is_clamped_to_its_range() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let norm = naive(&a, &a).sqrt();
        let unit: Vec<f32> = a.iter().map(|x| x / norm).collect();
        let d = unit_cosine_distance(&unit, &unit);
        assert!((0.0..1e-5).contains(&d));
        let opposite: Vec<f32> = unit.iter().map(|x| -x).collect();
        assert!((unit_cosine_distance(&unit, &opposite) - 2.0).abs() < 1e-5);
        let doubled: Vec<f32> = unit.iter().map(|x| 2.0 * x).collect();
        assert_eq!(unit_cosine_distance(&unit, &doubled), 0.0);
    }
}
