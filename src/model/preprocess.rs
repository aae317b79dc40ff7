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
use image::imageops::{self, FilterType};
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
    let resized = imageops::resize(&*view, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - size) / 2, (nh - size) / 2);
    let plane = (size * size) as usize;
    let mut out = vec![0f32; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel(x0 + x, y0 + y);
            let i = (y * size + x) as usize;
            for c in 0..3 {
                out[c * plane + i] = (f32::from(p[c]) / 255.0 - 0.5) / 0.5;
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

#[cfg(test)]
#[path = "preprocess_tests.rs"]
mod tests;
