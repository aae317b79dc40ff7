//! Tests of the depthwise kernels against candle's grouped `conv2d` and its autograd.

use super::*;

#[test]
fn same_padding_matches_tensorflow() {
    // 224 at stride 2 with k=3: out 112, total pad 1 → (0, 1).
    assert_eq!(Padding::same(224, 224, 3, 2), Padding { top: 0, bottom: 1, left: 0, right: 1 });
    // Stride 1, k=5: total 4 → (2, 2).
    assert_eq!(Padding::same(7, 7, 5, 1), Padding::uniform(2));
    // 7 at stride 2 with k=5: out 4, total 3*2+5-7 = 4 → (2, 2); 8: total 3 → (1, 2).
    assert_eq!(Padding::same(7, 8, 5, 2), Padding { top: 2, bottom: 2, left: 1, right: 2 });
}

#[test]
fn column_ranges_stay_inside() {
    for (w, k, s, left, right) in [(7, 5, 1, 2, 2), (8, 3, 2, 0, 1), (5, 5, 2, 3, 1), (3, 3, 1, 0, 0), (1, 3, 1, 1, 1)]
    {
        let pad = Padding { top: 0, bottom: 0, left, right };
        let g = Geometry::new(k, w, k, k, s, pad);
        for kx in 0..k {
            let (lo, hi, start) = g.columns(kx);
            for ox in 0..g.wo {
                let ix = (ox * s + kx) as isize - left as isize;
                let inside = ix >= 0 && (ix as usize) < w;
                assert_eq!(inside, (lo..hi).contains(&ox), "w{w} k{k} s{s} kx{kx} ox{ox}");
                if ox == lo && inside {
                    assert_eq!(start as isize, ix);
                }
            }
        }
    }
}

use candle_core::{Device, Var};

/// candle's own grouped convolution after explicit padding: the reference.
/// The padded input is cut to the extent the strided windows read, since
/// candle's conv2d backward gets the input shape wrong otherwise.
fn reference(x: &Tensor, w: &Tensor, stride: usize, pad: Padding) -> candle_core::Result<Tensor> {
    let (c, k) = (x.dim(1)?, w.dim(2)?);
    let x = x.pad_with_zeros(2, pad.top, pad.bottom)?.pad_with_zeros(3, pad.left, pad.right)?;
    let used = |n: usize| (n - k) / stride * stride + k;
    let (h, wd) = (x.dim(2)?, x.dim(3)?);
    x.narrow(2, 0, used(h))?.narrow(3, 0, used(wd))?.conv2d(w, 0, stride, 1, c)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0));
    d.and_then(|d| d.to_scalar::<f32>()).expect("difference")
}

/// (batch, channels, height, width, kernel, stride, padding)
fn cases() -> Vec<(usize, usize, usize, usize, usize, usize, Padding)> {
    let p = |top, bottom, left, right| Padding { top, bottom, left, right };
    vec![
        (1, 3, 7, 7, 3, 1, Padding::uniform(1)),
        (2, 5, 8, 9, 3, 2, p(0, 1, 0, 1)),
        (1, 4, 7, 7, 5, 1, Padding::uniform(2)),
        (3, 2, 9, 6, 5, 2, p(2, 2, 1, 2)),
        (1, 1, 5, 5, 5, 1, Padding::default()),
        (2, 3, 4, 4, 3, 3, p(1, 0, 2, 1)),
        (1, 2, 3, 3, 5, 1, Padding::uniform(3)),
        (2, 6, 16, 12, 3, 2, Padding::same(16, 12, 3, 2)),
    ]
}

type Depthwise = fn(&Tensor, &Tensor, usize, Padding) -> candle_core::Result<Tensor>;

/// The CPU kernels, and the tap sum a GPU takes (run here on the CPU).
const PATHS: [(&str, Depthwise); 2] = [("custom op", depthwise_conv2d), ("tap sum", depthwise_by_taps)];

#[test]
fn forward_matches_grouped_conv2d() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (path, depthwise) in PATHS {
        for (n, c, h, w, k, s, pad) in cases() {
            let x = Tensor::randn(0f32, 1f32, (n, c, h, w), &dev)?;
            let f = Tensor::randn(0f32, 1f32, (c, 1, k, k), &dev)?;
            let diff = max_abs_diff(&depthwise(&x, &f, s, pad)?, &reference(&x, &f, s, pad)?);
            assert!(diff < 1e-4, "{path} {n}×{c}×{h}×{w} k{k} s{s} {pad:?}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn non_contiguous_input_is_handled() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1f32, (2, 3, 9, 8), &dev)?.transpose(2, 3)?;
    let f = Tensor::randn(0f32, 1f32, (3, 1, 3, 3), &dev)?;
    let pad = Padding::uniform(1);
    let diff = max_abs_diff(&depthwise_conv2d(&x, &f, 2, pad)?, &reference(&x, &f, 2, pad)?);
    assert!(diff < 1e-4, "{diff}");
    Ok(())
}

#[test]
fn gradients_match_autograd_through_conv2d() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for ((path, depthwise), (n, c, h, w, k, s, pad)) in
        PATHS.into_iter().flat_map(|p| cases().into_iter().map(move |c| (p, c)))
    {
        let x = Var::randn(0f32, 1f32, (n, c, h, w), &dev)?;
        let f = Var::randn(0f32, 1f32, (c, 1, k, k), &dev)?;
        let y = depthwise(&x, &f, s, pad)?;
        // A random linear loss, so every output position has its own weight.
        let r = Tensor::randn(0f32, 1f32, y.dims(), &dev)?;
        let ours = (&y * &r)?.sum_all()?.backward()?;
        let theirs = (reference(&x, &f, s, pad)? * &r)?.sum_all()?.backward()?;
        for (name, v) in [("input", &x), ("weight", &f)] {
            let (a, b) = (ours.get(v).expect("our gradient"), theirs.get(v).expect("reference gradient"));
            let diff = max_abs_diff(a, b);
            assert!(diff < 1e-4, "{path}: {name} grad {n}×{c}×{h}×{w} k{k} s{s} {pad:?}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn bad_shapes_are_errors() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
    assert!(depthwise_conv2d(&x, &Tensor::zeros((2, 1, 3, 3), DType::F32, &dev)?, 1, Padding::default()).is_err());
    assert!(depthwise_conv2d(&x, &Tensor::zeros((3, 1, 5, 5), DType::F32, &dev)?, 1, Padding::default()).is_err());
    assert!(depthwise_conv2d(&x, &Tensor::zeros((3, 1, 3, 3), DType::F32, &dev)?, 0, Padding::default()).is_err());
    Ok(())
}
