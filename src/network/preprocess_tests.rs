//! Unit tests of the decoding path: every pixel mode, orientation, bad input.
//! Images are made in memory, except the CMYK JPEG (no encoder at hand here:
//! a 16×8 fixture written by Pillow, left half cyan, right half white).

use std::io::{Cursor, Write};

use image::codecs::jpeg::JpegEncoder;
use image::{ExtendedColorType, ImageBuffer, ImageEncoder, ImageFormat, Luma, Rgb, Rgba};

use super::*;

const MAX: u64 = 1 << 24;
const CMYK_JPEG: &[u8] = include_bytes!("testdata/cmyk.jpg");

fn png<P: image::PixelWithColorType>(img: &ImageBuffer<P, Vec<P::Subpixel>>) -> Vec<u8>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).expect("encode png");
    out.into_inner()
}

#[test]
fn grayscale_becomes_rgb() {
    let img = ImageBuffer::from_fn(4, 3, |x, _| Luma([x as u8 * 60]));
    let rgb = decode_image(&png(&img), MAX).expect("decode");
    assert_eq!(rgb.dimensions(), (4, 3));
    assert_eq!(rgb.get_pixel(2, 1).0, [120, 120, 120]);
}

#[test]
fn sixteen_bit_becomes_eight_bit() {
    let img = ImageBuffer::from_fn(2, 2, |x, _| if x == 0 { Rgb([65535u16, 0, 32896]) } else { Rgb([257, 514, 771]) });
    let rgb = decode_image(&png(&img), MAX).expect("decode");
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 128]);
    assert_eq!(rgb.get_pixel(1, 0).0, [1, 2, 3]);
}

#[test]
fn alpha_is_composited_onto_white() {
    let img = ImageBuffer::from_fn(3, 1, |x, _| match x {
        0 => Rgba([0u8, 0, 0, 0]),
        1 => Rgba([255, 0, 0, 255]),
        _ => Rgba([0, 0, 255, 128]),
    });
    let rgb = decode_image(&png(&img), MAX).expect("decode");
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
    assert_eq!(rgb.get_pixel(1, 0).0, [255, 0, 0]);
    assert_eq!(rgb.get_pixel(2, 0).0, [127, 127, 255]);
}

/// A PNG chunk: length, type, data, CRC-32 of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
}

/// A 2×2 palette PNG (colour type 3) whose last entry is fully transparent.
fn palette_png() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&2u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 3, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"PLTE", &[255, 0, 0, 0, 255, 0, 0, 0, 0]);
    chunk(&mut out, b"tRNS", &[255, 255, 0]);
    // Two rows, filter byte 0, palette indices.
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(&[0, 0, 1, 0, 2, 0]).expect("compress");
    chunk(&mut out, b"IDAT", &z.finish().expect("compress"));
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn palette_with_transparency_becomes_rgb() {
    let rgb = decode_image(&palette_png(), MAX).expect("decode");
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(rgb.get_pixel(1, 0).0, [0, 255, 0]);
    assert_eq!(rgb.get_pixel(0, 1).0, [255, 255, 255]);
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    let rgb = decode_image(CMYK_JPEG, MAX).expect("decode");
    assert_eq!(rgb.dimensions(), (16, 8));
    let (cyan, white) = (rgb.get_pixel(2, 4).0, rgb.get_pixel(13, 4).0);
    assert!(cyan[0] < 40 && cyan[1] > 215 && cyan[2] > 215, "{cyan:?}");
    assert!(white.iter().all(|&v| v > 215), "{white:?}");
}

/// TIFF-structured EXIF with one IFD entry: Orientation = `value`.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&value.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    tiff
}

#[test]
fn exif_orientation_is_applied() {
    // 32×16, left half red, right half blue; orientation 6 = rotate 90° clockwise.
    let img = ImageBuffer::from_fn(32, 16, |x, _| if x < 16 { Rgb([255u8, 0, 0]) } else { Rgb([0, 0, 255]) });
    let mut bytes = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut bytes, 95);
    encoder.set_exif_metadata(exif_orientation(6)).expect("exif");
    encoder.write_image(img.as_raw(), 32, 16, ExtendedColorType::Rgb8).expect("encode jpeg");
    let rgb = decode_image(&bytes, MAX).expect("decode");
    assert_eq!(rgb.dimensions(), (16, 32));
    let (top, bottom) = (rgb.get_pixel(8, 4).0, rgb.get_pixel(8, 28).0);
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
}

#[test]
fn text_is_unknown_format() {
    let err = decode_image(b"name,price\nshirt,10\n", MAX).expect_err("not an image");
    assert!(matches!(err, DecodeError::UnknownFormat), "{err:?}");
}

#[test]
fn truncated_png_is_corrupt() {
    let img = ImageBuffer::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, 7]));
    let bytes = png(&img);
    for len in [20, bytes.len() / 2, bytes.len() - 13] {
        let err = decode_image(&bytes[..len], MAX).expect_err("truncated");
        assert!(matches!(err, DecodeError::Corrupt(_)), "{len}: {err:?}");
    }
}

#[test]
fn too_many_pixels_is_refused_before_decoding() {
    let img = ImageBuffer::from_fn(100, 50, |_, _| Luma([9u8]));
    let err = decode_image(&png(&img), 4999).expect_err("too large");
    assert!(matches!(err, DecodeError::TooManyPixels { width: 100, height: 50, max: 4999 }), "{err:?}");
    // The pixels are never read: a PNG cut inside its image data still reports its size.
    let bytes = png(&img);
    let err = decode_image(&bytes[..bytes.len() - 16], 4999).expect_err("too large");
    assert!(matches!(err, DecodeError::TooManyPixels { .. }), "{err:?}");
    assert!(decode_image(&png(&img), 5000).is_ok());
}

#[test]
fn input_is_resized_cropped_and_normalised() {
    // A small, wide image is upscaled: short side to 256 for 224, then cropped.
    let img = RgbImage::from_fn(40, 20, |x, _| if x < 20 { Rgb([0, 255, 0]) } else { Rgb([255, 255, 255]) });
    let input = to_input(&img, 224);
    assert_eq!(input.len(), 3 * 224 * 224);
    assert!(input.iter().all(|v| (-1.0..=1.0).contains(v)));
    let plane = 224 * 224;
    // Left edge green, right edge white, CHW order.
    assert_eq!((input[100 * 224], input[plane + 100 * 224], input[2 * plane + 100 * 224]), (-1.0, 1.0, -1.0));
    assert_eq!(input[100 * 224 + 223], 1.0);
    // A very elongated image stays cheap and fills the crop.
    let strip = RgbImage::from_pixel(4000, 3, Rgb([10, 20, 30]));
    let input = to_input(&strip, 64);
    assert_eq!(input.len(), 3 * 64 * 64);
    assert!((input[0] - (10.0 / 127.5 - 1.0)).abs() < 1e-6);
}

#[test]
fn batch_tensor_checks_lengths() {
    let ok = batch_tensor(&[vec![0.0; 3 * 32 * 32], vec![1.0; 3 * 32 * 32]], 32, &Device::Cpu).expect("batch");
    assert_eq!(ok.dims(), [2, 3, 32, 32]);
    assert!(batch_tensor(&[vec![0.0; 10]], 32, &Device::Cpu).is_err());
}

/// `to_input` as it was written before its dedicated resize: `imageops::resize` of the
/// aspect-cropped view, then the centre crop, normalised. The reference for the test below.
fn to_input_with_imageops(img: &RgbImage, input_size: u32) -> Vec<f32> {
    use image::GenericImageView;
    use image::imageops::{self, FilterType};
    let size = input_size;
    let target = (f64::from(size) * 256.0 / 224.0).round() as u32;
    let view = crop_aspect(img);
    let (w, h) = view.dimensions();
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
            for c in 0..3 {
                out[c * plane + (y * size + x) as usize] = (f32::from(p[c]) / 255.0 - 0.5) / 0.5;
            }
        }
    }
    out
}

#[test]
fn dedicated_resize_matches_imageops_value_for_value() {
    // Up- and downscaling, odd and even sides, an aspect crop, and a size kept as is.
    let shapes =
        [(28, 28, 224), (28, 28, 64), (640, 480, 224), (333, 517, 64), (97, 1000, 64), (73, 73, 64), (256, 300, 224)];
    for (w, h, size) in shapes {
        let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7 + y * 3) as u8, (x * x + y) as u8, ((x ^ y) * 5) as u8]));
        let expected = to_input_with_imageops(&img, size);
        let got = to_input(&img, size);
        assert_eq!(got.len(), expected.len());
        let differing = got.iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{w}×{h} at {size}: {differing} values differ");
    }
}
