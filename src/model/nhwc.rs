//! Fused inference kernels over channels-last (N×H×W×C) activations, used by
//! the Lite0 forward pass on CPU.
//!
//! Channels-last makes a 1×1 convolution one matrix product over all pixels
//! of the batch, and lets the depthwise kernel and the bias/ReLU6 epilogue run
//! over contiguous channel vectors the compiler vectorises. These ops have no
//! backward pass (training uses [`super::depthwise`] in N×C×H×W). Work is
//! split over rows on rayon's pool.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

use super::depthwise::Padding;

/// Upper clamp of ReLU6.
const RELU6_MAX: f32 = 6.0;

/// `x + bias` over the last dimension, then ReLU6 when `relu6`.
pub fn bias_act(x: &Tensor, bias: &Tensor, relu6: bool) -> candle_core::Result<Tensor> {
    let c = x.dim(candle_core::D::Minus1)?;
    if bias.dims() != [c] {
        bail!("bias {:?} does not fit channels-last {:?}", bias.dims(), x.dims());
    }
    if !fast(x) {
        let y = x.broadcast_add(bias)?;
        return if relu6 { y.clamp(0f32, RELU6_MAX) } else { Ok(y) };
    }
    x.contiguous()?.apply_op2_no_bwd(&bias.contiguous()?, &BiasAct { relu6 })
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
        let y = super::depthwise::depthwise_conv2d(&x.permute((0, 3, 1, 2))?, &wf, stride, pad)?;
        return bias_act(&y.permute((0, 2, 3, 1))?.contiguous()?, bias, relu6);
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

struct BiasAct {
    relu6: bool,
}

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "nhwc-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, bias) = (f32_data(s1, l1)?, f32_data(s2, l2)?);
        let c = bias.len();
        let mut out = vec![0f32; x.len()];
        // Chunks of whole rows, large enough to amortise the task overhead.
        let rows_per_task = (1 << 14) / c.max(1) + 1;
        out.par_chunks_mut(rows_per_task * c).zip(x.par_chunks(rows_per_task * c)).for_each(|(out, x)| {
            for (o, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                for ((o, &x), &b) in o.iter_mut().zip(x).zip(bias) {
                    *o = x + b;
                }
                activate(o, self.relu6);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
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
        let (x, f, bias) = (f32_data(s1, l1)?, f32_data(s2, l2)?, f32_data(s3, l3)?);
        let (s, pad) = (self.stride, self.pad);
        let ho = (h + pad.top + pad.bottom - kh) / s + 1;
        let wo = (w + pad.left + pad.right - kw) / s + 1;
        let mut out = vec![0f32; n * ho * wo * c];
        out.par_chunks_exact_mut(wo * c).enumerate().for_each(|(row, out_row)| {
            let (img, oy) = (row / ho, row % ho);
            let image = &x[img * h * w * c..(img + 1) * h * w * c];
            // Filter rows whose input row is inside the image.
            let ky_lo = pad.top.saturating_sub(oy * s);
            let ky_hi = (h + pad.top).saturating_sub(oy * s).min(kh);
            for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
                acc.copy_from_slice(bias);
                let kx_lo = pad.left.saturating_sub(ox * s);
                let kx_hi = (w + pad.left).saturating_sub(ox * s).min(kw);
                for ky in ky_lo..ky_hi {
                    let iy = oy * s + ky - pad.top;
                    for kx in kx_lo..kx_hi {
                        let ix = ox * s + kx - pad.left;
                        let pixel = &image[(iy * w + ix) * c..(iy * w + ix + 1) * c];
                        let tap = &f[(ky * kw + kx) * c..(ky * kw + kx + 1) * c];
                        for ((a, &v), &t) in acc.iter_mut().zip(pixel).zip(tap) {
                            *a += v * t;
                        }
                    }
                }
                activate(acc, self.relu6);
            }
        });
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
        for (n, c, h, w, k, s) in [(2, 5, 9, 8, 3, 2), (1, 7, 7, 7, 5, 1), (3, 4, 6, 11, 5, 2), (1, 3, 2, 2, 3, 1)] {
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
        assert_eq!(bias_act(&x, &b, true)?.to_vec2::<f32>()?, [[0.0, 2.0, 6.0], [1.0, 0.0, 6.0]]);
        assert_eq!(bias_act(&x, &b, false)?.to_vec2::<f32>()?, [[-0.5, 2.0, 6.5], [1.0, -3.0, 9.5]]);
        Ok(())
    }
}
