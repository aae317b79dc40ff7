//! Uploaded bytes to model input: the one path used at ingest and at query time.

use crate::model::preprocess::{self, DecodeError};

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
    let rgb = preprocess::decode_image(bytes, max_pixels)?;
    let (width, height) = rgb.dimensions();
    Ok(Prepared { width, height, content_type, input: preprocess::to_input(&rgb, input_size) })
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
