//! Training inputs computed from the images, batch by batch, instead of read from a cache: what
//! a tail trains on when its items are augmented (every step must see a new crop, so nothing can
//! be cached), or where running the frozen blocks is cheap (a GPU).
//!
//! [`ImageBatches`] loads each item's image, optionally [`augment`]s it, makes the model input
//! ([`to_input`]) and runs the frozen network up to the tail's first block. With augmentation off
//! that is exactly what the block cache holds, so both train alike (a test holds them to 1e-4).
//!
//! Augmentation, seeded by (seed, step, item) so a rerun draws the same changes: a random resized
//! crop (60–100% of the area, aspect 3:4 to 4:3), a horizontal flip half the time, and colour
//! jitter (brightness, contrast and saturation each scaled by 0.8–1.2).

use candle_core::Tensor;
use image::RgbImage;
use image::imageops;
use rayon::prelude::*;

use super::trainer::BatchInputs;
use crate::network::EmbeddingModel;
use crate::network::preprocess::to_input;
use crate::rng::{SeededRng, splitmix64};

/// Smallest share of the image's area a random crop keeps.
const MIN_CROP_AREA: f32 = 0.6;
/// Widest aspect ratio (width / height, or its inverse) of a random crop.
const MAX_CROP_ASPECT: f32 = 4.0 / 3.0;
/// Brightness, contrast and saturation are each scaled by 1 ± this at most.
const JITTER: f32 = 0.2;

/// An item's image, by training-item index.
pub type LoadImage<'a> = dyn Fn(usize) -> anyhow::Result<RgbImage> + Sync + 'a;

/// Block inputs of a batch computed from its images (see the module docs).
pub struct ImageBatches<'a> {
    pub images: &'a LoadImage<'a>,
    /// Training items (what `images` can load: 0 to `items` − 1).
    pub items: usize,
    /// The frozen network, run up to `block`.
    pub network: &'a EmbeddingModel,
    pub block: usize,
    /// Seed of the augmentation; `None` leaves the images as they are.
    pub augment: Option<u64>,
}

impl BatchInputs for ImageBatches<'_> {
    fn items(&self) -> candle_core::Result<usize> {
        Ok(self.items)
    }

    fn batch(&self, step: usize, items: &[usize]) -> candle_core::Result<Tensor> {
        let size = self.network.input_size();
        let inputs: Vec<Vec<f32>> = items
            .par_iter()
            .map(|&item| {
                let image = (self.images)(item)?;
                Ok(match self.augment {
                    Some(seed) => {
                        let key = splitmix64(seed ^ splitmix64(step as u64)) ^ item as u64;
                        to_input(&augment(&image, &mut SeededRng::new(key)), size)
                    }
                    None => to_input(&image, size),
                })
            })
            .collect::<anyhow::Result<_>>()
            .map_err(candle_core::Error::wrap)?;
        self.network.block_inputs(&inputs, self.block).map_err(candle_core::Error::wrap)
    }
}

/// A random resized crop, flip and colour jitter of `image` drawn from `rng`.
pub fn augment(image: &RgbImage, rng: &mut SeededRng) -> RgbImage {
    let uniform = |rng: &mut SeededRng, low: f32, high: f32| low + (high - low) * (rng.symmetric() + 1.0) / 2.0;
    let (w, h) = image.dimensions();
    let area = uniform(rng, MIN_CROP_AREA, 1.0) * (w * h) as f32;
    let aspect = uniform(rng, -MAX_CROP_ASPECT.ln(), MAX_CROP_ASPECT.ln()).exp();
    let crop_w = ((area * aspect).sqrt().round() as u32).clamp(1, w);
    let crop_h = ((area / aspect).sqrt().round() as u32).clamp(1, h);
    let x = rng.below((w - crop_w + 1) as usize) as u32;
    let y = rng.below((h - crop_h + 1) as usize) as u32;
    let mut out = imageops::crop_imm(image, x, y, crop_w, crop_h).to_image();
    if rng.below(2) == 1 {
        imageops::flip_horizontal_in_place(&mut out);
    }
    let brightness = uniform(rng, 1.0 - JITTER, 1.0 + JITTER);
    let contrast = uniform(rng, 1.0 - JITTER, 1.0 + JITTER);
    let saturation = uniform(rng, 1.0 - JITTER, 1.0 + JITTER);
    let grey = |p: &image::Rgb<u8>| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
    let mean = out.pixels().map(grey).sum::<f32>() / (out.width() * out.height()).max(1) as f32 * brightness;
    for pixel in out.pixels_mut() {
        let luma = grey(pixel) * brightness;
        for channel in pixel.0.iter_mut() {
            let v = f32::from(*channel) * brightness;
            let v = luma + (v - luma) * saturation;
            let v = mean + (v - mean) * contrast;
            *channel = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8]))
    }

    #[test]
    fn augmentation_is_seeded_and_changes_the_image_within_its_bounds() {
        let image = gradient(40, 30);
        let a = augment(&image, &mut SeededRng::new(7));
        assert_eq!(a, augment(&image, &mut SeededRng::new(7)), "the same seed, the same image");
        let others: Vec<RgbImage> = (0..20).map(|seed| augment(&image, &mut SeededRng::new(seed))).collect();
        assert!(others.iter().any(|o| *o != a), "other seeds draw other changes");
        for out in &others {
            let kept = (out.width() * out.height()) as f32 / (40.0 * 30.0);
            assert!((MIN_CROP_AREA * 0.9..=1.0).contains(&kept), "kept {kept} of the area");
        }
    }
}
