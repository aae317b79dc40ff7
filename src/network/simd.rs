//! The inner loops of the channels-last depthwise and stem kernels, one output
//! pixel at a time, in AVX-512, AVX2+FMA and portable copies chosen at run time.
//!
//! Both compute `out[j] = act(bias[j] + Σ over taps …)` for every channel `j` of
//! one pixel, keeping the sums of a block of channels in registers across all
//! taps. The compiler did not do this on its own from the plain loops (it kept
//! 32 scalar sums, `perf annotate` on the `embed_bench` bench tool), hence the
//! intrinsics. The project is built for baseline x86-64, so each copy is
//! selected by [`Simd::detect`] and entered through `unsafe` calls that rely on
//! that check.

use std::mem::MaybeUninit;

/// Upper clamp of ReLU6.
const RELU6_MAX: f32 = 6.0;

/// The widest copy of the kernels this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Simd {
    Avx512,
    Avx2,
    Portable,
}

impl Simd {
    /// From [`crate::cpu::features`]: AVX-512 needs AVX2+FMA as well (its copy uses both).
    pub(crate) fn detect() -> Self {
        let cpu = crate::cpu::features();
        if cpu.avx512f && cpu.avx2_fma {
            Simd::Avx512
        } else if cpu.avx2_fma {
            Simd::Avx2
        } else {
            Simd::Portable
        }
    }
}

/// One depthwise output pixel: `out[j] = act(bias[j] + Σ_(p, f) x[p + j] · w[f + j])`
/// over the `(p, f)` offsets in `taps`, for `j < out.len()`.
///
/// # Panics
/// If an offset plus `out.len()` runs past `x` or `w`, or `bias` is shorter than `out`.
pub(crate) fn depthwise_pixel(
    simd: Simd,
    x: &[f32],
    w: &[f32],
    taps: &[(usize, usize)],
    bias: &[f32],
    relu6: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let c = out.len();
    assert!(bias.len() >= c && taps.iter().all(|&(p, f)| p + c <= x.len() && f + c <= w.len()));
    match simd {
        // SAFETY: the CPU has these features (`Simd::detect`) and every read is in bounds
        // (asserted above).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::depthwise_avx512(x, w, taps, bias, relu6, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::depthwise_avx2(x, w, taps, bias, relu6, out) },
        _ => depthwise_portable(x, w, taps, bias, relu6, out, 0),
    }
}

/// One stem output pixel: `out[j] = act(bias[j] + Σ_(p, f) x[p] · w[f + j])`.
///
/// # Panics
/// As [`depthwise_pixel`], with `p < x.len()`.
pub(crate) fn broadcast_pixel(
    simd: Simd,
    x: &[f32],
    w: &[f32],
    taps: &[(usize, usize)],
    bias: &[f32],
    relu6: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let c = out.len();
    assert!(bias.len() >= c && taps.iter().all(|&(p, f)| p < x.len() && f + c <= w.len()));
    match simd {
        // SAFETY: as in `depthwise_pixel`.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { x86::broadcast_avx512(x, w, taps, bias, relu6, out) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { x86::broadcast_avx2(x, w, taps, bias, relu6, out) },
        _ => broadcast_portable(x, w, taps, bias, relu6, out, 0),
    }
}

fn act(v: f32, relu6: bool) -> f32 {
    if relu6 { v.clamp(0.0, RELU6_MAX) } else { v }
}

/// Channels `from..` of [`depthwise_pixel`], one at a time.
fn depthwise_portable(
    x: &[f32],
    w: &[f32],
    taps: &[(usize, usize)],
    bias: &[f32],
    relu6: bool,
    out: &mut [MaybeUninit<f32>],
    from: usize,
) {
    for j in from..out.len() {
        let sum = taps.iter().fold(bias[j], |s, &(p, f)| s + x[p + j] * w[f + j]);
        out[j].write(act(sum, relu6));
    }
}

/// Channels `from..` of [`broadcast_pixel`], one at a time.
fn broadcast_portable(
    x: &[f32],
    w: &[f32],
    taps: &[(usize, usize)],
    bias: &[f32],
    relu6: bool,
    out: &mut [MaybeUninit<f32>],
    from: usize,
) {
    for j in from..out.len() {
        let sum = taps.iter().fold(bias[j], |s, &(p, f)| s + x[p] * w[f + j]);
        out[j].write(act(sum, relu6));
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Callers guarantee the CPU features and that every offset plus `out.len()`
    //! stays inside `x` and `w` (for the broadcast kernels, `p < x.len()`).

    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use super::{RELU6_MAX, broadcast_portable, depthwise_portable};

    /// Generates one copy of a kernel for a vector type: blocks of `$wide`
    /// registers while they fit, then single registers, then the portable tail.
    macro_rules! kernel {
        ($name:ident, $feature:literal, $vec:ty, $lanes:literal, $wide:literal,
         $load:ident, $store:ident, $set1:ident, $fmadd:ident, $max:ident, $min:ident, $zero:ident,
         $broadcast:literal, $tail:ident) => {
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(
                x: &[f32],
                w: &[f32],
                taps: &[(usize, usize)],
                bias: &[f32],
                relu6: bool,
                out: &mut [MaybeUninit<f32>],
            ) {
                #[target_feature(enable = $feature)]
                #[inline]
                unsafe fn block<const R: usize>(
                    x: &[f32],
                    w: &[f32],
                    taps: &[(usize, usize)],
                    bias: &[f32],
                    relu6: bool,
                    out: *mut f32,
                    start: usize,
                ) {
                    // SAFETY (whole block): the caller's bounds guarantee, with
                    // `start + R * lanes <= out.len()` from the loops below.
                    unsafe {
                        let mut acc: [$vec; R] = [$zero(); R];
                        for (r, a) in acc.iter_mut().enumerate() {
                            *a = $load(bias.as_ptr().add(start + r * $lanes));
                        }
                        for &(p, f) in taps {
                            let wp = w.as_ptr().add(f + start);
                            if $broadcast {
                                let v = $set1(*x.get_unchecked(p));
                                for (r, a) in acc.iter_mut().enumerate() {
                                    *a = $fmadd(v, $load(wp.add(r * $lanes)), *a);
                                }
                            } else {
                                let xp = x.as_ptr().add(p + start);
                                for (r, a) in acc.iter_mut().enumerate() {
                                    *a = $fmadd($load(xp.add(r * $lanes)), $load(wp.add(r * $lanes)), *a);
                                }
                            }
                        }
                        for (r, a) in acc.iter().enumerate() {
                            let v = if relu6 { $min($max(*a, $zero()), $set1(RELU6_MAX)) } else { *a };
                            $store(out.add(start + r * $lanes), v);
                        }
                    }
                }

                let c = out.len();
                let ptr = out.as_mut_ptr().cast::<f32>();
                let mut start = 0;
                // SAFETY: each call covers `start..start + R * lanes`, inside `out`.
                unsafe {
                    while start + $wide * $lanes <= c {
                        block::<$wide>(x, w, taps, bias, relu6, ptr, start);
                        start += $wide * $lanes;
                    }
                    while start + $lanes <= c {
                        block::<1>(x, w, taps, bias, relu6, ptr, start);
                        start += $lanes;
                    }
                }
                $tail(x, w, taps, bias, relu6, out, start);
            }
        };
    }

    /// The AVX-512 copy of a kernel: 16 lanes a register.
    macro_rules! avx512 {
        ($name:ident, $wide:literal, $broadcast:literal, $tail:ident) => {
            kernel!(
                $name,
                "avx512f",
                __m512,
                16,
                $wide,
                _mm512_loadu_ps,
                _mm512_storeu_ps,
                _mm512_set1_ps,
                _mm512_fmadd_ps,
                _mm512_max_ps,
                _mm512_min_ps,
                _mm512_setzero_ps,
                $broadcast,
                $tail
            );
        };
    }

    /// The AVX2+FMA copy of a kernel: 8 lanes a register.
    macro_rules! avx2 {
        ($name:ident, $wide:literal, $broadcast:literal, $tail:ident) => {
            kernel!(
                $name,
                "avx2,fma",
                __m256,
                8,
                $wide,
                _mm256_loadu_ps,
                _mm256_storeu_ps,
                _mm256_set1_ps,
                _mm256_fmadd_ps,
                _mm256_max_ps,
                _mm256_min_ps,
                _mm256_setzero_ps,
                $broadcast,
                $tail
            );
        };
    }

    // (name, registers per wide block, broadcast the input value?, portable tail)
    avx512!(depthwise_avx512, 4, false, depthwise_portable);
    avx2!(depthwise_avx2, 4, false, depthwise_portable);
    avx512!(broadcast_avx512, 2, true, broadcast_portable);
    avx2!(broadcast_avx2, 4, true, broadcast_portable);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(simd: Simd, broadcast: bool, c: usize) -> Vec<f32> {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let w: Vec<f32> = (0..1000).map(|i| ((i * 53 % 89) as f32 - 44.0) / 23.0).collect();
        let bias: Vec<f32> = (0..c).map(|j| j as f32 / 10.0 - 1.0).collect();
        let taps = [(0, 3), (c + 1, 7), (2 * c + 5, 11)];
        let mut out = vec![MaybeUninit::uninit(); c];
        let f = if broadcast { broadcast_pixel } else { depthwise_pixel };
        f(simd, &x, &w, &taps, &bias, true, &mut out);
        // SAFETY: the kernels write every element.
        out.into_iter().map(|v| unsafe { v.assume_init() }).collect()
    }

    #[test]
    fn every_copy_matches_the_portable_one() {
        let simd = Simd::detect();
        let copies: &[Simd] = match simd {
            Simd::Avx512 => &[Simd::Avx512, Simd::Avx2],
            Simd::Avx2 => &[Simd::Avx2],
            Simd::Portable => &[],
        };
        // Channel counts that exercise wide blocks, single registers and the tail.
        for c in [1, 7, 8, 16, 17, 40, 64, 96, 100, 144] {
            for broadcast in [false, true] {
                let expected = run(Simd::Portable, broadcast, c);
                if c >= 8 {
                    assert!(expected.iter().any(|&v| v > 0.0 && v < RELU6_MAX), "the test data must not all clamp");
                }
                for &copy in copies {
                    let got = run(copy, broadcast, c);
                    for (g, e) in got.iter().zip(&expected) {
                        assert!((g - e).abs() < 1e-4, "{copy:?} broadcast={broadcast} c={c}: {g} vs {e}");
                    }
                }
            }
        }
    }
}
