//! Fused inference kernels over channels-last (N×H×W×C) activations, used by
//! the Lite0 forward pass on CPU.
//!
//! Channels-last makes a 1×1 convolution one matrix product over all pixels
//! of the batch, and lets the depthwise kernel and the bias/ReLU6 epilogue run
//! over contiguous channel vectors the compiler vectorises. These ops have no
//! backward pass (training uses [`super::depthwise`] in N×C×H×W). Work is
//! split over rows on rayon's pool.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, DType, InplaceOp2, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::depthwise::Padding;
use super::simd::{Simd, depthwise_pixel};

/// Upper clamp of ReLU6.
const RELU6_MAX: f32 = 6.0;
/// Largest depthwise kernel (taps) the channels-last kernel takes; Lite0's is 5×5.
const MAX_TAPS: usize = 49;

/// `x + bias` over the last dimension, then ReLU6 when `relu6`. On CPU it
/// overwrites `x`'s storage and returns it: pass only a tensor just produced
/// and held nowhere else.
pub(crate) fn bias_act(x: Tensor, bias: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if bias.dims() != [c] {
        bail!("bias {:?} does not fit channels-last {:?}", bias.dims(), x.dims());
    }
    if !fast(&x) {
        let y = x.broadcast_add(bias)?;
        return if relu6 { y.clamp(0f32, RELU6_MAX) } else { Ok(y) };
    }
    let x = if x.is_contiguous() { x } else { x.contiguous()? };
    x.inplace_op2(&bias.contiguous()?, &BiasAct { relu6 })?;
    Ok(x)
}

/// Depthwise convolution of channels-last `x` (N×H×W×C) with `w` (kh×kw×C),
/// plus `bias` (C), then ReLU6 when `relu6`.
pub fn depthwise_bias_act(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: Padding,
    relu6: bool,
) -> candle_core::Result<Tensor> {
    let (_, h, wd, c) = x.dims4()?;
    let (kh, kw, wc) = w.dims3()?;
    if wc != c || bias.dims() != [c] || stride == 0 || h + pad.top + pad.bottom < kh || wd + pad.left + pad.right < kw {
        bail!("depthwise: weight {:?}, bias {:?}, stride {stride} do not fit {:?}", w.dims(), bias.dims(), x.dims());
    }
    if !fast(x) {
        // Channels-first through the portable path, then back.
        let wf = w.permute((2, 0, 1))?.unsqueeze(1)?;
        let y = super::depthwise::depthwise_conv2d(
            &x.permute((0, 3, 1, 2))?.contiguous()?,
            &wf.contiguous()?,
            stride,
            pad,
        )?;
        return bias_act(y.permute((0, 2, 3, 1))?.contiguous()?, bias, relu6);
    }
    let op = DepthwiseNhwc { stride, pad, relu6 };
    x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &bias.contiguous()?, &op)
}

fn fast(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn f32_data<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("channels-last kernel on a non-contiguous tensor") };
    Ok(&s.as_slice::<f32>()?[start..end])
}

#[inline(always)]
fn activate(v: &mut [f32], relu6: bool) {
    if relu6 {
        v.iter_mut().for_each(|x| *x = x.clamp(0.0, RELU6_MAX));
    }
}

/// Whether the AVX2+FMA copies of the kernels can run on this CPU.
fn has_avx2() -> bool {
    crate::cpu::features().avx2_fma
}

/// Rows of `c` channels: `rows[i] = act(rows[i] + bias)`.
#[inline(always)]
fn bias_act_rows(rows: &mut [f32], bias: &[f32], relu6: bool) {
    for row in rows.chunks_exact_mut(bias.len()) {
        for (o, &b) in row.iter_mut().zip(bias) {
            *o += b;
        }
        activate(row, relu6);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bias_act_rows_avx2(rows: &mut [f32], bias: &[f32], relu6: bool) {
    bias_act_rows(rows, bias, relu6);
}

/// In-place bias and activation over rows of channels.
struct BiasAct {
    relu6: bool,
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "nhwc-bias-act"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<()> {
        let bias = f32_data(s2, l2)?;
        let Some((start, end)) = l1.contiguous_offsets() else { bail!("bias-act on a non-contiguous tensor") };
        let CpuStorage::F32(x) = s1 else { bail!("bias-act wants f32") };
        let c = bias.len().max(1);
        let avx2 = has_avx2();
        // Chunks of whole rows, large enough to amortise the task overhead.
        let rows_per_task = (1 << 14) / c + 1;
        x[start..end].par_chunks_mut(rows_per_task * c).for_each(|rows| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU supports AVX2 and FMA (checked by `has_avx2`).
                return unsafe { bias_act_rows_avx2(rows, bias, self.relu6) };
            }
            let _ = avx2;
            bias_act_rows(rows, bias, self.relu6);
        });
        Ok(())
    }
}

/// What one output row of the channels-last depthwise kernel reads.
struct DepthwiseRows<'a> {
    x: &'a [f32],
    filter: &'a [f32],
    bias: &'a [f32],
    dims: (usize, usize, usize),
    kernel: (usize, usize),
    out_rows: usize,
    stride: usize,
    pad: Padding,
    relu6: bool,
    simd: Simd,
}

impl DepthwiseRows<'_> {
    /// Output row `row` (image `row / out_rows`, line `row % out_rows`),
    /// written in full (every element of `out_row`).
    ///
    /// The taps inside the image are listed once per output pixel, and
    /// [`depthwise_pixel`] sums them for all channels.
    fn run(&self, row: usize, out_row: &mut [MaybeUninit<f32>]) {
        let ((h, w, c), (kh, kw), s, pad) = (self.dims, self.kernel, self.stride, self.pad);
        let (img, oy) = (row / self.out_rows, row % self.out_rows);
        let image = &self.x[img * h * w * c..(img + 1) * h * w * c];
        // Filter rows whose input row is inside the image.
        let ky_lo = pad.top.saturating_sub(oy * s);
        let ky_hi = (h + pad.top).saturating_sub(oy * s).min(kh);
        let mut taps = [(0usize, 0usize); MAX_TAPS];
        for (ox, out) in out_row.chunks_exact_mut(c).enumerate() {
            let kx_lo = pad.left.saturating_sub(ox * s);
            let kx_hi = (w + pad.left).saturating_sub(ox * s).min(kw);
            // (pixel offset, filter offset) of every tap inside the image.
            let mut count = 0;
            for ky in ky_lo..ky_hi {
                let iy = oy * s + ky - pad.top;
                for kx in kx_lo..kx_hi {
                    taps[count] = ((iy * w + ox * s + kx - pad.left) * c, (ky * kw + kx) * c);
                    count += 1;
                }
            }
            depthwise_pixel(self.simd, image, self.filter, &taps[..count], self.bias, self.relu6, out);
        }
    }
}

struct DepthwiseNhwc {
    stride: usize,
    pad: Padding,
    relu6: bool,
}

impl CustomOp3 for DepthwiseNhwc {
    fn name(&self) -> &'static str {
        "nhwc-depthwise-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = l1.shape().dims4()?;
        let (kh, kw, _) = l2.shape().dims3()?;
        let (s, pad) = (self.stride, self.pad);
        let ho = (h + pad.top + pad.bottom - kh) / s + 1;
        let wo = (w + pad.left + pad.right - kw) / s + 1;
        let rows = DepthwiseRows {
            x: f32_data(s1, l1)?,
            filter: f32_data(s2, l2)?,
            bias: f32_data(s3, l3)?,
            dims: (h, w, c),
            kernel: (kh, kw),
            out_rows: ho,
            stride: s,
            pad,
            relu6: self.relu6,
            simd: Simd::detect(),
        };
        if kh * kw > MAX_TAPS {
            bail!("depthwise: a {kh}×{kw} kernel has more than {MAX_TAPS} taps");
        }
        let len = n * ho * wo * c;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        out.spare_capacity_mut()[..len]
            .par_chunks_exact_mut(wo * c)
            .enumerate()
            .for_each(|(row, out_row)| rows.run(row, out_row));
        // SAFETY: `run` wrote every element of every output row, and the rows cover `len`.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), Shape::from((n, ho, wo, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn depthwise_matches_channels_first() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        for (n, c, h, w, k, s) in [
            (2, 5, 9, 8, 3, 2),
            (1, 7, 7, 7, 5, 1),
            (3, 4, 6, 11, 5, 2),
            (1, 3, 2, 2, 3, 1),
            (1, 72, 5, 6, 3, 2),
            (2, 64, 4, 4, 5, 1),
        ] {
            let pad = Padding::same(h, w, k, s);
            let x = Tensor::randn(0f32, 2f32, (n, c, h, w), &dev)?;
            let wf = Tensor::randn(0f32, 1f32, (c, 1, k, k), &dev)?;
            let b = Tensor::randn(0f32, 1f32, c, &dev)?;
            let expected = super::super::depthwise::depthwise_conv2d(&x, &wf, s, pad)?
                .broadcast_add(&b.reshape((c, 1, 1))?)?
                .clamp(0f32, RELU6_MAX)?;
            let x_nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
            let w_nhwc = wf.squeeze(1)?.permute((1, 2, 0))?.contiguous()?;
            let got = depthwise_bias_act(&x_nhwc, &w_nhwc, &b, s, pad, true)?.permute((0, 3, 1, 2))?;
            let diff = (got - expected)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "{n}×{c}×{h}×{w} k{k} s{s}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn bias_act_clamps() -> candle_core::Result<()> {
        let x = Tensor::new(&[[-1f32, 2.0, 7.0], [0.5, -3.0, 10.0]], &Device::Cpu)?;
        let b = Tensor::new(&[0.5f32, 0.0, -0.5], &Device::Cpu)?;
        assert_eq!(bias_act(x.copy()?, &b, true)?.to_vec2::<f32>()?, [[0.0, 2.0, 6.0], [1.0, 0.0, 6.0]]);
        assert_eq!(bias_act(x.copy()?, &b, false)?.to_vec2::<f32>()?, [[-0.5, 2.0, 6.5], [1.0, -3.0, 9.5]]);
        Ok(())
    }
}
