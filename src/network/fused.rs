//! The Lite0 forward pass's remaining CPU hot spots as fused kernels: the 1×1
//! convolutions as one `gemm` call each, with bias, residual and ReLU6 folded
//! around it, and the stem convolution computed directly into channels-last.
//!
//! Why: profiled at 224 px (`perf record` on the `embed_bench` bench tool), candle's
//! path for these spent about a fifth of the forward pass outside arithmetic:
//! the stem's im2col (a scalar gather) and its NCHW→NHWC copy, zero-filled
//! matmul outputs, then separate passes for bias, activation and the residual
//! add. Here a 1×1 convolution writes `bias (+ residual)` into its output once
//! and lets `gemm` accumulate the product on top (`read_dst`), and the stem
//! reads its 27 taps straight from the N×C×H×W input.
//!
//! CPU and f32 only; callers keep candle's ops for other devices and dtypes
//! ([`usable`]). No backward pass: training uses candle's ops.

use std::mem::MaybeUninit;

use candle_core::{Layout, Storage, Tensor, bail};
use rayon::prelude::*;

use super::depthwise::Padding;
use super::nhwc::bias_act;
use super::simd::{Simd, broadcast_pixel};

/// Upper clamp of ReLU6.
const RELU6_MAX: f32 = 6.0;
/// Most taps (input channels × k × k) the stem kernel takes; Lite0's is 3×3×3.
const MAX_STEM_TAPS: usize = 75;

/// Whether the fused kernels can run on `x` (CPU, f32).
pub(crate) fn usable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// Runs `f` on the f32 data of a contiguous CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> candle_core::Result<R>) -> candle_core::Result<R> {
    let (storage, layout): (_, &Layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else { bail!("fused kernel on a non-CPU tensor") };
    let Some((start, end)) = layout.contiguous_offsets() else { bail!("fused kernel on a non-contiguous tensor") };
    f(&cpu.as_slice::<f32>()?[start..end])
}

fn clamp_relu6(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.clamp(0.0, RELU6_MAX));
}

/// How `gemm` may split work: over rayon's pool unless it has one thread.
fn parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A 1×1 convolution over channels-last `x` (N×H×W×Cin) with `w` (Cin×Cout):
/// `x·w + bias (+ residual)`, then ReLU6 when `relu6`. `residual`, when given,
/// has the output's shape. Needs [`usable`] inputs.
pub(crate) fn pointwise(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    residual: Option<&Tensor>,
    relu6: bool,
) -> candle_core::Result<Tensor> {
    let (n, h, wd, c_in) = x.dims4()?;
    let (w_in, c_out) = w.dims2()?;
    if w_in != c_in || bias.dims() != [c_out] || residual.is_some_and(|r| r.dims() != [n, h, wd, c_out]) {
        bail!("pointwise: weight {:?} and bias {:?} do not fit {:?}", w.dims(), bias.dims(), x.dims());
    }
    let (x, w, bias) = (x.contiguous()?, w.contiguous()?, bias.contiguous()?);
    let residual = residual.map(Tensor::contiguous).transpose()?;
    let m = n * h * wd;
    let len = m * c_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    // With an activation and nothing to add, gemm writes the product and one pass adds
    // the bias and clamps. Otherwise the output starts as `bias (+ residual)` and gemm
    // adds the product on top: either way two passes over the output, not three.
    let epilogue = relu6 && residual.is_none();
    if !epilogue {
        let rows = out.spare_capacity_mut()[..len].par_chunks_mut(c_out);
        with_f32(&bias, |bias| {
            match &residual {
                Some(r) => with_f32(r, |r| {
                    rows.zip(r.par_chunks(c_out)).for_each(|(o, r)| {
                        o.iter_mut().zip(r).zip(bias).for_each(|((o, r), b)| {
                            o.write(r + b);
                        });
                    });
                    Ok(())
                })?,
                None => rows.for_each(|o| {
                    o.iter_mut().zip(bias).for_each(|(o, &b)| {
                        o.write(b);
                    });
                }),
            }
            Ok(())
        })?;
    }
    with_f32(&x, |x| {
        with_f32(&w, |w| {
            // SAFETY: `out` has room for m×c_out, `x` is m×c_in and `w` c_in×c_out, all
            // row-major and contiguous (checked above); the strides below describe exactly
            // those buffers. gemm reads `out` only when `read_dst`, and then it was written.
            unsafe {
                gemm::gemm(
                    m,
                    c_out,
                    c_in,
                    out.as_mut_ptr(),
                    1,
                    c_out as isize,
                    !epilogue,
                    x.as_ptr(),
                    1,
                    c_in as isize,
                    w.as_ptr(),
                    1,
                    c_out as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism(),
                );
            }
            Ok(())
        })
    })?;
    // SAFETY: gemm wrote every element of the m×c_out output.
    unsafe { out.set_len(len) };
    if relu6 && !epilogue {
        out.par_chunks_mut(1 << 14).for_each(clamp_relu6);
    }
    let y = Tensor::from_vec(out, (n, h, wd, c_out), x.device())?;
    if epilogue { bias_act(y, &bias, true) } else { Ok(y) }
}

/// The stem: a k×k convolution with `stride` and TensorFlow "same" padding of an
/// N×C×H×W image batch with `w` (Cout×C×k×k), plus `bias`, then ReLU6, written
/// channels-last (N×Ho×Wo×Cout). Needs [`usable`] inputs.
pub(crate) fn stem(x: &Tensor, w: &Tensor, bias: &Tensor, stride: usize) -> candle_core::Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (c_out, w_c, kh, kw) = w.dims4()?;
    if w_c != c || bias.dims() != [c_out] || kh != kw || stride == 0 {
        bail!("stem: weight {:?}, bias {:?}, stride {stride} do not fit {:?}", w.dims(), bias.dims(), x.dims());
    }
    let pad = Padding::same(h, wd, kh, stride);
    let (ho, wo) = (h.div_ceil(stride), wd.div_ceil(stride));
    // Taps × Cout, so one tap's weights for every output channel are contiguous.
    let taps = w.reshape((c_out, c * kh * kw))?.t()?.contiguous()?;
    let (x, bias) = (x.contiguous()?, bias.contiguous()?);
    if c * kh * kw > MAX_STEM_TAPS {
        bail!("stem: {c}×{kh}×{kw} taps are more than {MAX_STEM_TAPS}");
    }
    let len = n * ho * wo * c_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    with_f32(&x, |x| {
        with_f32(&taps, |taps| {
            with_f32(&bias, |bias| {
                let geometry = StemGeometry { c, h, w: wd, k: kh, stride, pad, ho, c_out, simd: Simd::detect() };
                let rows = out.spare_capacity_mut()[..len].par_chunks_exact_mut(wo * c_out);
                rows.enumerate().for_each(|(row, out_row)| geometry.row(x, taps, bias, row, out_row));
                Ok(())
            })
        })
    })?;
    // SAFETY: `row` wrote every element of every output row, and the rows cover `len`.
    unsafe { out.set_len(len) };
    Tensor::from_vec(out, (n, ho, wo, c_out), x.device())
}

/// The shapes one stem output row needs.
struct StemGeometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: Padding,
    ho: usize,
    c_out: usize,
    simd: Simd,
}

impl StemGeometry {
    /// Output row `row` (image `row / ho`, line `row % ho`): writes every element
    /// of `out_row`. The taps inside the image are listed once per pixel, and
    /// [`broadcast_pixel`] sums them for all output channels.
    fn row(&self, x: &[f32], taps: &[f32], bias: &[f32], row: usize, out_row: &mut [MaybeUninit<f32>]) {
        let (img, oy) = (row / self.ho, row % self.ho);
        let plane = self.h * self.w;
        let image = &x[img * self.c * plane..(img + 1) * self.c * plane];
        let mut inside = [(0usize, 0usize); MAX_STEM_TAPS];
        for (ox, pixel) in out_row.chunks_exact_mut(self.c_out).enumerate() {
            // (input offset, weight row offset) of every tap inside the image.
            let mut count = 0;
            for ch in 0..self.c {
                for ky in 0..self.k {
                    let Some(iy) = (oy * self.stride + ky).checked_sub(self.pad.top).filter(|&iy| iy < self.h) else {
                        continue;
                    };
                    for kx in 0..self.k {
                        let Some(ix) = (ox * self.stride + kx).checked_sub(self.pad.left).filter(|&ix| ix < self.w)
                        else {
                            continue;
                        };
                        inside[count] =
                            (ch * plane + iy * self.w + ix, ((ch * self.k + ky) * self.k + kx) * self.c_out);
                        count += 1;
                    }
                }
            }
            broadcast_pixel(self.simd, image, taps, &inside[..count], bias, true, pixel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    }

    #[test]
    fn pointwise_matches_matmul_bias_residual_relu6() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (n, h, w, c_in, c_out) in [(1, 3, 5, 7, 9), (2, 4, 4, 16, 24), (3, 1, 1, 33, 17)] {
            let x = Tensor::randn(0f32, 1f32, (n, h, w, c_in), &dev)?;
            let wt = Tensor::randn(0f32, 1f32, (c_in, c_out), &dev)?;
            let b = Tensor::randn(0f32, 1f32, c_out, &dev)?;
            let r = Tensor::randn(0f32, 1f32, (n, h, w, c_out), &dev)?;
            let product = x.reshape((n * h * w, c_in))?.matmul(&wt)?.reshape((n, h, w, c_out))?;
            let plain = product.broadcast_add(&b)?;
            assert!(max_diff(&pointwise(&x, &wt, &b, None, false)?, &plain)? < 1e-4);
            let clamped = plain.clamp(0f32, RELU6_MAX)?;
            assert!(max_diff(&pointwise(&x, &wt, &b, None, true)?, &clamped)? < 1e-4);
            let with_residual = (&plain + &r)?;
            assert!(max_diff(&pointwise(&x, &wt, &b, Some(&r), false)?, &with_residual)? < 1e-4);
        }
        Ok(())
    }

    #[test]
    fn stem_matches_padded_conv2d() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // Odd and even sides: TensorFlow "same" pads asymmetrically at stride 2.
        for (n, c, h, w, c_out, k, s) in [(2, 3, 9, 8, 32, 3, 2), (1, 3, 8, 8, 40, 3, 2), (1, 2, 5, 7, 5, 3, 1)] {
            let x = Tensor::randn(0f32, 1f32, (n, c, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 1f32, (c_out, c, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1f32, c_out, &dev)?;
            let pad = Padding::same(h, w, k, s);
            let expected = x
                .pad_with_zeros(2, pad.top, pad.bottom)?
                .pad_with_zeros(3, pad.left, pad.right)?
                .conv2d(&wt, 0, s, 1, 1)?
                .broadcast_add(&b.reshape((c_out, 1, 1))?)?
                .clamp(0f32, RELU6_MAX)?
                .permute((0, 2, 3, 1))?;
            let got = stem(&x, &wt, &b, s)?;
            assert_eq!(got.dims(), expected.dims());
            assert!(max_diff(&got, &expected)? < 1e-4, "{n}×{c}×{h}×{w} → {c_out}, k{k} s{s}");
        }
        Ok(())
    }
}
