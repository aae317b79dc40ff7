//! Depthwise 2-D convolution (one k×k filter per channel) as a candle custom
//! op, forward and backward, because candle's grouped `conv2d` is orders of
//! magnitude slower than the arithmetic needs on CPU.
//!
//! Input N×C×H×W, weight C×1×kh×kw, f32, any stride, asymmetric zero padding.
//! The CPU kernels work one (image, channel) plane at a time, planes in
//! parallel on rayon's pool. Inside a plane, each filter tap adds a scaled
//! input row to an output row over the column range the padding leaves valid,
//! so the inner loops are bounds-check-free AXPYs the compiler vectorises.
//! Other devices and dtypes (a GPU) take [`depthwise_by_taps`]: one
//! multiply-add of a shifted, strided view per filter tap, as plain tensor
//! ops. candle's grouped `conv2d` would run one convolution per channel
//! (it splits the groups), over a thousand kernel launches per layer.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

/// Zero padding on each side of the spatial dimensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Padding {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Padding {
    /// The same padding on all four sides.
    pub fn uniform(p: usize) -> Self {
        Self { top: p, bottom: p, left: p, right: p }
    }

    /// TensorFlow "same" padding for an `h`×`w` input: the output is
    /// `ceil(in / stride)` and any odd total goes to the bottom/right.
    pub fn same(h: usize, w: usize, kernel: usize, stride: usize) -> Self {
        let total = |n: usize| (n.div_ceil(stride).saturating_sub(1) * stride + kernel).saturating_sub(n);
        let (th, tw) = (total(h), total(w));
        Self { top: th / 2, bottom: th - th / 2, left: tw / 2, right: tw - tw / 2 }
    }
}

/// Depthwise convolution of `x` (N×C×H×W) with `w` (C×1×kh×kw).
pub fn depthwise_conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: Padding) -> candle_core::Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (wc, one, kh, kw) = w.dims4()?;
    if wc != c || one != 1 {
        bail!("depthwise weight {:?} does not fit input {:?}", w.dims(), x.dims());
    }
    if stride == 0 || h + pad.top + pad.bottom < kh || wd + pad.left + pad.right < kw {
        bail!("depthwise: kernel {kh}×{kw}, stride {stride} do not fit input {:?} padded {pad:?}", x.dims());
    }
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32;
    if !fast {
        return depthwise_by_taps(x, w, stride, pad);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, DepthwiseConv { stride, pad })
}

/// The depthwise convolution as a sum over the kh×kw filter taps of the padded input's strided
/// window under each tap times that tap's per-channel weight: `2·kh·kw` elementwise tensor ops,
/// on any device, differentiable by candle's autograd. Shapes are checked by the caller.
pub(crate) fn depthwise_by_taps(x: &Tensor, w: &Tensor, stride: usize, pad: Padding) -> candle_core::Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let g = Geometry::new(h, wd, kh, kw, stride, pad);
    // Padded on the far sides up to a whole number of strides past the last window, so that every
    // tap's window is `ho·stride` rows (`wo·stride` columns) whose first of each stride is read.
    let rows = (g.ho * stride + kh).max(h + pad.top + pad.bottom);
    let cols = (g.wo * stride + kw).max(wd + pad.left + pad.right);
    let x = x.pad_with_zeros(2, pad.top, rows - h - pad.top)?.pad_with_zeros(3, pad.left, cols - wd - pad.left)?;
    let strided = |t: Tensor, dim: usize, start: usize, out: usize| -> candle_core::Result<Tensor> {
        let window = t.narrow(dim, start, out * stride)?;
        if stride == 1 {
            return Ok(window);
        }
        let mut shape = window.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, stride);
        window.reshape(shape)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
    };
    let taps = w.reshape((c, kh * kw))?;
    let mut sum: Option<Tensor> = None;
    for ky in 0..kh {
        let band = strided(x.clone(), 2, ky, g.ho)?;
        for kx in 0..kw {
            let window = strided(band.clone(), 3, kx, g.wo)?;
            let tap = taps.narrow(1, ky * kw + kx, 1)?.reshape((1, c, 1, 1))?;
            let term = window.broadcast_mul(&tap)?;
            sum = Some(match sum {
                Some(sum) => (sum + term)?,
                None => term,
            });
        }
    }
    sum.ok_or_else(|| candle_core::Error::Msg("depthwise: empty kernel".into()))
}

/// Sizes of one plane's convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    stride: usize,
    pad: Padding,
}

impl Geometry {
    fn new(h: usize, w: usize, kh: usize, kw: usize, stride: usize, pad: Padding) -> Self {
        let ho = (h + pad.top + pad.bottom - kh) / stride + 1;
        let wo = (w + pad.left + pad.right - kw) / stride + 1;
        Self { h, w, kh, kw, ho, wo, stride, pad }
    }

    /// Input row read by output row `oy` through filter row `ky`, if inside.
    #[inline]
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.stride + ky).checked_sub(self.pad.top).filter(|&iy| iy < self.h)
    }

    /// For filter column `kx`: the output columns `lo..hi` whose input column
    /// is inside the image, and the input column of `lo`.
    #[inline]
    fn columns(&self, kx: usize) -> (usize, usize, usize) {
        let s = self.stride;
        let lo = self.pad.left.saturating_sub(kx).div_ceil(s);
        // Output column ox reads input column ox*s + kx - left < w.
        let hi = match (self.w + self.pad.left).checked_sub(kx + 1) {
            Some(last) => (last / s + 1).min(self.wo),
            None => 0,
        };
        if lo >= hi {
            return (0, 0, 0);
        }
        (lo, hi, lo * s + kx - self.pad.left)
    }

    /// [`Geometry::columns`] of every filter column, computed once per op rather than once per
    /// plane and row (planes can be as small as 2×2, where that arithmetic dominated).
    fn all_columns(&self) -> Vec<Columns> {
        (0..self.kw).map(|kx| self.columns(kx)).collect()
    }
}

/// `(lo, hi, start)` of [`Geometry::columns`].
type Columns = (usize, usize, usize);

/// `out[i] += a * x[i * stride]` over `out.len()` elements.
#[inline(always)]
fn axpy_strided(out: &mut [f32], a: f32, x: &[f32], stride: usize) {
    if stride == 1 {
        let n = out.len();
        for (o, &v) in out.iter_mut().zip(&x[..n]) {
            *o += a * v;
        }
    } else {
        for (o, &v) in out.iter_mut().zip(x.iter().step_by(stride)) {
            *o += a * v;
        }
    }
}

/// One plane of the forward pass: `out` (ho×wo) = x (h×w) ⋆ f (kh×kw).
fn forward_plane(g: &Geometry, cols: &[Columns], x: &[f32], f: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for (oy, out_row) in out.chunks_exact_mut(g.wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.input_row(oy, ky) else {
                continue;
            };
            let in_row = &x[iy * g.w..(iy + 1) * g.w];
            for kx in 0..g.kw {
                let (lo, hi, start) = cols[kx];
                axpy_strided(&mut out_row[lo..hi], f[ky * g.kw + kx], &in_row[start..], g.stride);
            }
        }
    }
}

/// One plane of the input gradient: scatter `grad` (ho×wo) back through f.
fn grad_input_plane(g: &Geometry, cols: &[Columns], grad: &[f32], f: &[f32], dx: &mut [f32]) {
    dx.fill(0.0);
    for (oy, grad_row) in grad.chunks_exact(g.wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.input_row(oy, ky) else {
                continue;
            };
            let dx_row = &mut dx[iy * g.w..(iy + 1) * g.w];
            for kx in 0..g.kw {
                let (lo, hi, start) = cols[kx];
                let a = f[ky * g.kw + kx];
                let targets = dx_row[start..].iter_mut().step_by(g.stride);
                for (d, &v) in targets.zip(&grad_row[lo..hi]) {
                    *d += a * v;
                }
            }
        }
    }
}

/// One plane's contribution to the filter gradient, added to `df` (kh×kw).
fn grad_weight_plane(g: &Geometry, cols: &[Columns], x: &[f32], grad: &[f32], df: &mut [f32]) {
    for (oy, grad_row) in grad.chunks_exact(g.wo).enumerate() {
        for ky in 0..g.kh {
            let Some(iy) = g.input_row(oy, ky) else {
                continue;
            };
            let in_row = &x[iy * g.w..(iy + 1) * g.w];
            for kx in 0..g.kw {
                let (lo, hi, start) = cols[kx];
                let dot: f32 =
                    grad_row[lo..hi].iter().zip(in_row[start..].iter().step_by(g.stride)).map(|(a, b)| a * b).sum();
                df[ky * g.kw + kx] += dot;
            }
        }
    }
}

/// The contiguous f32 data of a custom-op argument.
fn f32_data<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else { bail!("depthwise: {what} is not contiguous") };
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// Forward op; its backward pass uses the two gradient ops below.
struct DepthwiseConv {
    stride: usize,
    pad: Padding,
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (_, _, kh, kw) = l2.shape().dims4()?;
        let (x, f) = (f32_data(s1, l1, "input")?, f32_data(s2, l2, "weight")?);
        let g = Geometry::new(h, w, kh, kw, self.stride, self.pad);
        let cols = g.all_columns();
        let mut out = vec![0f32; n * c * g.ho * g.wo];
        out.par_chunks_exact_mut(g.ho * g.wo).enumerate().for_each(|(plane, out)| {
            let ch = plane % c;
            forward_plane(&g, &cols, &x[plane * h * w..(plane + 1) * h * w], &f[ch * kh * kw..(ch + 1) * kh * kw], out);
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let g = Geometry::new(h, wd, kh, kw, self.stride, self.pad);
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(w, &DepthwiseGradInput { g })?;
        let dw = x.apply_op2_no_bwd(&grad, &DepthwiseGradWeight { g })?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Gradient with respect to the input: arguments (grad N×C×ho×wo, weight).
struct DepthwiseGradInput {
    g: Geometry,
}

impl CustomOp2 for DepthwiseGradInput {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let cols = g.all_columns();
        let (n, c, _, _) = l1.shape().dims4()?;
        let (grad, f) = (f32_data(s1, l1, "gradient")?, f32_data(s2, l2, "weight")?);
        let (plane_in, plane_out, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
        let mut dx = vec![0f32; n * c * plane_in];
        dx.par_chunks_exact_mut(plane_in).enumerate().for_each(|(plane, dx)| {
            let ch = plane % c;
            grad_input_plane(
                &g,
                &cols,
                &grad[plane * plane_out..(plane + 1) * plane_out],
                &f[ch * taps..(ch + 1) * taps],
                dx,
            );
        });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, g.h, g.w))))
    }
}

/// Gradient with respect to the weight: arguments (input, grad N×C×ho×wo).
struct DepthwiseGradWeight {
    g: Geometry,
}

impl CustomOp2 for DepthwiseGradWeight {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.g;
        let cols = g.all_columns();
        let (n, c, _, _) = l1.shape().dims4()?;
        let (x, grad) = (f32_data(s1, l1, "input")?, f32_data(s2, l2, "gradient")?);
        let (plane_in, plane_out, taps) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
        let mut dw = vec![0f32; c * taps];
        dw.par_chunks_exact_mut(taps).enumerate().for_each(|(ch, df)| {
            for img in 0..n {
                let plane = img * c + ch;
                grad_weight_plane(
                    &g,
                    &cols,
                    &x[plane * plane_in..(plane + 1) * plane_in],
                    &grad[plane * plane_out..(plane + 1) * plane_out],
                    df,
                );
            }
        });
        Ok((CpuStorage::F32(dw), Shape::from((c, 1, g.kh, g.kw))))
    }
}

#[cfg(test)]
#[path = "depthwise_tests.rs"]
mod tests;
