//! The one path from image bytes to model input, used at ingest and at query
//! time alike, so a catalogue item and a query photo of it are seen the same.
//!
//! `decode_image` checks the declared size before decoding any pixels,
//! applies the EXIF orientation and turns every pixel mode (grayscale,
//! palette, 16-bit, RGBA composited onto white, CMYK JPEG) into 8-bit RGB.
//! `to_input` resizes, centre-crops and normalises like the weights were
//! trained. All functions are pure and can run on any thread.

use std::io::Cursor;

use candle_core::{Device, Tensor};
use image::imageops;
use image::{DynamicImage, GenericImageView, ImageDecoder, ImageError, ImageReader, RgbImage};

/// Resize target of the short side relative to the crop (256 for 224).
const RESIZE_NUMERATOR: u32 = 256;
const RESIZE_DENOMINATOR: u32 = 224;
/// Images more elongated than this are first centre-cropped to it, so that
/// resizing the short side never makes a huge image. The crop keeps more
/// than the later centre crop uses.
const MAX_ASPECT: u32 = 4;

/// Why bytes could not be turned into an image.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown or unsupported image format")]
    UnknownFormat,
    #[error("image is {width}×{height}, more than the {max} pixels allowed")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    #[error("corrupt image: {0}")]
    Corrupt(String),
}

/// Decodes `bytes` (any enabled format) to upright 8-bit RGB, refusing images
/// of more than `max_pixels` pixels before their pixels are decoded.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, DecodeError> {
    let reader =
        ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(DecodeError::TooManyPixels { width, height, max: max_pixels });
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt(format!("empty image {width}×{height}")));
    }
    // A broken EXIF block is no reason to refuse the pixels.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    Ok(to_rgb8_on_white(&img))
}

fn decode_error(e: ImageError) -> DecodeError {
    match e {
        ImageError::Unsupported(_) => DecodeError::UnknownFormat,
        other => DecodeError::Corrupt(other.to_string()),
    }
}

/// 8-bit RGB; transparent pixels are composited onto white.
fn to_rgb8_on_white(img: &DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.to_rgb8();
    }
    let rgba = img.to_rgba32f();
    let mut out = RgbImage::new(img.width(), img.height());
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let alpha = src[3].clamp(0.0, 1.0);
        for c in 0..3 {
            let v = src[c].clamp(0.0, 1.0) * alpha + (1.0 - alpha);
            dst[c] = (v * 255.0).round() as u8;
        }
    }
    out
}

/// Model input for `img`: short side resized to `input_size * 256 / 224`
/// (triangle filter, up or down), centre crop of `input_size`², CHW order,
/// each value `(x / 255 - 0.5) / 0.5`.
pub fn to_input(img: &RgbImage, input_size: u32) -> Vec<f32> {
    let size = input_size.max(1);
    let target = (f64::from(size) * f64::from(RESIZE_NUMERATOR) / f64::from(RESIZE_DENOMINATOR)).round() as u32;
    let view = crop_aspect(img);
    let (w, h) = view.dimensions();
    let (w, h) = (w.max(1), h.max(1));
    let scale = f64::from(target) / f64::from(w.min(h));
    let (nw, nh) = if w <= h {
        (target, ((f64::from(h) * scale).round() as u32).max(target))
    } else {
        (((f64::from(w) * scale).round() as u32).max(target), target)
    };
    let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
    let (vx, vy) = view.offsets();
    let crop = Crop { x: vx, y: vy, w, h };
    resize_crop_normalise(img, crop, (nw, nh), (x0, y0), size)
}

/// A rectangle of an image.
#[derive(Debug, Clone, Copy)]
struct Crop {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// The triangle filter's taps for resizing `from` samples to `to`, for the
/// outputs `first..first + count`: (first input index, normalised weights) each.
/// The same arithmetic as the `image` crate's `resize` with `FilterType::Triangle`
/// (support 1, widened by the ratio when shrinking), so results are identical.
fn triangle_taps(from: u32, to: u32, first: u32, count: u32) -> Vec<(u32, Vec<f32>)> {
    let ratio = from as f32 / to as f32;
    let sratio = ratio.max(1.0);
    let support = sratio;
    (first..first + count)
        .map(|out| {
            let centre = (out as f32 + 0.5) * ratio;
            let left = ((centre - support).floor() as i64).clamp(0, i64::from(from) - 1) as u32;
            let right = ((centre + support).ceil() as i64).clamp(i64::from(left) + 1, i64::from(from)) as u32;
            let centre = centre - 0.5;
            let mut weights: Vec<f32> = (left..right)
                .map(|i| {
                    let x = (i as f32 - centre) / sratio;
                    if x.abs() < 1.0 { 1.0 - x.abs() } else { 0.0 }
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            weights.iter_mut().for_each(|w| *w /= sum);
            (left, weights)
        })
        .collect()
}

/// `v` clamped to `0..=255` and rounded half away from zero, as `f32::round` does, without
/// its library call (the crate is built for baseline x86-64, which has no rounding
/// instruction): the fraction of a float below 256 is exact.
fn round_to_u8(v: f32) -> u8 {
    let v = v.clamp(0.0, 255.0);
    let whole = v as u8;
    if v - f32::from(whole) >= 0.5 { whole + 1 } else { whole }
}

/// Resizes `crop` of `img` to `new` (width, height) with the triangle filter,
/// keeps the `size`² square at `at`, and returns it normalised in CHW order.
///
/// This is `imageops::resize` followed by a crop, value for value, but it only
/// computes the pixels it keeps and reads the buffer directly: the generic
/// resize over a sub-image view took 2.7 ms to take a 28 px image to 256 px,
/// 15 % of a whole search (`bench/http_load.sh`).
fn resize_crop_normalise(img: &RgbImage, crop: Crop, new: (u32, u32), at: (u32, u32), size: u32) -> Vec<f32> {
    let (nw, nh) = new;
    let stride = img.width() as usize * 3;
    let raw = img.as_raw();
    let pixel = |x: u32, y: u32| {
        let i = (crop.y + y) as usize * stride + (crop.x + x) as usize * 3;
        [raw[i], raw[i + 1], raw[i + 2]]
    };
    let plane = (size * size) as usize;
    let mut out = vec![0f32; 3 * plane];
    let normalise = |v: u8| (f32::from(v) / 255.0 - 0.5) / 0.5;
    if (nw, nh) == (crop.w, crop.h) {
        // `imageops::resize` copies an image that keeps its size.
        for y in 0..size {
            for x in 0..size {
                let p = pixel(at.0 + x, at.1 + y);
                let i = (y * size + x) as usize;
                for c in 0..3 {
                    out[c * plane + i] = normalise(p[c]);
                }
            }
        }
        return out;
    }
    // Every kept value is one of 256: normalise once per value, not per pixel.
    let table: [f32; 256] = std::array::from_fn(|v| normalise(v as u8));
    let columns = triangle_taps(crop.w, nw, at.0, size);
    let rows = triangle_taps(crop.h, nh, at.1, size);
    // Input columns the kept output columns read.
    let col_lo = columns.iter().map(|(l, _)| *l).min().unwrap_or(0);
    let col_hi = columns.iter().map(|(l, w)| l + w.len() as u32).max().unwrap_or(0);
    let span = (col_hi - col_lo) as usize;
    // Vertical pass first, as `imageops::resize` does, into f32 without rounding.
    let mut tmp = vec![[0f32; 3]; span];
    for (y, (top, weights)) in rows.iter().enumerate() {
        for (j, t) in tmp.iter_mut().enumerate() {
            let x = col_lo + j as u32;
            *t = [0.0; 3];
            for (i, w) in weights.iter().enumerate() {
                let p = pixel(x, top + i as u32);
                for c in 0..3 {
                    t[c] += f32::from(p[c]) * w;
                }
            }
        }
        for (x, (left, weights)) in columns.iter().enumerate() {
            let mut t = [0f32; 3];
            for (i, w) in weights.iter().enumerate() {
                let v = tmp[(left - col_lo) as usize + i];
                for c in 0..3 {
                    t[c] += v[c] * w;
                }
            }
            let i = y * size as usize + x;
            for c in 0..3 {
                out[c * plane + i] = table[usize::from(round_to_u8(t[c]))];
            }
        }
    }
    out
}

/// View of `img` with its long side centre-cropped to at most `MAX_ASPECT`
/// times the short side (the whole image when it is not that elongated).
fn crop_aspect(img: &RgbImage) -> image::SubImage<&RgbImage> {
    let (w, h) = img.dimensions();
    let limit = w.min(h).saturating_mul(MAX_ASPECT);
    let (cw, ch) = (w.min(limit), h.min(limit));
    imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// Stacks inputs made by [`to_input`] into an N×3×S×S tensor on `device`.
pub fn batch_tensor(inputs: &[Vec<f32>], input_size: u32, device: &Device) -> candle_core::Result<Tensor> {
    let s = input_size as usize;
    let len = 3 * s * s;
    if let Some((i, bad)) = inputs.iter().enumerate().find(|(_, v)| v.len() != len) {
        candle_core::bail!("input {i} has {} values, expected {len} for size {input_size}", bad.len());
    }
    let data: Vec<f32> = inputs.iter().flatten().copied().collect();
    Tensor::from_vec(data, (inputs.len(), 3, s, s), device)
}

// ---- Uploaded bytes to model input: the one path used at ingest and at query time.

/// A decoded image ready for the model, with what is stored about it.
#[derive(Debug)]
pub struct Prepared {
    pub width: u32,
    pub height: u32,
    pub content_type: &'static str,
    pub input: Vec<f32>,
}

/// Decodes `bytes` (bounded by `max_pixels`) and makes the model input.
pub fn prepare(bytes: &[u8], max_pixels: u64, input_size: u32) -> Result<Prepared, DecodeError> {
    let content_type = content_type(bytes).ok_or(DecodeError::UnknownFormat)?;
    let rgb = decode_image(bytes, max_pixels)?;
    let (width, height) = rgb.dimensions();
    Ok(Prepared { width, height, content_type, input: to_input(&rgb, input_size) })
}

/// The MIME type of an accepted image format, from its magic bytes.
pub fn content_type(bytes: &[u8]) -> Option<&'static str> {
    use image::ImageFormat as F;
    match image::guess_format(bytes).ok()? {
        F::Jpeg => Some("image/jpeg"),
        F::Png => Some("image/png"),
        F::WebP => Some("image/webp"),
        F::Gif => Some("image/gif"),
        F::Bmp => Some("image/bmp"),
        _ => None,
    }
}

#[cfg(test)]
#[path = "preprocess_tests.rs"]
mod tests;
