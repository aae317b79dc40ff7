//! Fashion-MNIST as lookalike's shared source of real, labelled images.
//!
//! Owns reading the gzip IDX files of the Debian package `dataset-fashion-mnist`
//! (`/usr/share/datasets/fashion-mnist/`), picking label-balanced subsets, and writing them
//! out in the shapes the service ingests: a catalogue zip laid out folder-per-label and a
//! query folder. Tests, demos and benchmarks all go through here (and through the
//! `lookalike-data` binary of `bench/`), so they see the same images under the same names.
//! It is a crate of its own, depending on nothing of lookalike's, so that both the service's
//! integration tests (a dev-dependency) and the bench crate (which depends on the service)
//! can use it without a dependency cycle.
//!
//! Everything here is plain synchronous I/O on values the caller owns: call it from a
//! blocking context; separate calls share nothing and may run on different threads.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use flate2::read::GzDecoder;
use image::{ExtendedColorType, ImageEncoder, codecs::png::PngEncoder};
use zip::{CompressionMethod, ZipWriter, write::SimpleFileOptions};

/// Where the Debian package puts the files.
pub const DEFAULT_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Class names, indexed by label; also the folder names in catalogues and query folders.
pub const LABELS: [&str; 10] =
    ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"];

/// Image side in pixels.
pub const SIDE: usize = 28;
/// Bytes per image (one 8-bit gray value per pixel, row-major).
pub const PIXELS: usize = SIDE * SIDE;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The two official splits: 60,000 training and 10,000 test images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix of the split.
    pub fn file_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// One image with its label and its position in its split's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Position in the split (0-based); names the image in written layouts.
    pub index: usize,
    /// Class, an index into [`LABELS`].
    pub label: u8,
    /// 28 × 28 gray values, row-major.
    pub pixels: Vec<u8>,
}

impl Sample {
    /// The class name, e.g. `"sneaker"`.
    pub fn label_name(&self) -> &'static str {
        LABELS.get(usize::from(self.label)).copied().unwrap_or("unknown")
    }

    /// Path of the image inside a catalogue or query folder: `<label>/<index:05>.png`.
    pub fn relative_path(&self) -> String {
        format!("{}/{:05}.png", self.label_name(), self.index)
    }
}

/// Reads one split from `dir`, checking magic numbers, counts, image size and labels.
pub fn read_split(dir: &Path, split: Split) -> anyhow::Result<Vec<Sample>> {
    let prefix = split.file_prefix();
    let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let images = read_gz(&images_path)?;
    let labels = read_gz(&labels_path)?;
    let pixels = parse_images(&images).with_context(|| format!("parsing {}", images_path.display()))?;
    let labels = parse_labels(&labels).with_context(|| format!("parsing {}", labels_path.display()))?;
    ensure!(
        pixels.len() == labels.len() * PIXELS,
        "{} holds {} images but {} holds {} labels",
        images_path.display(),
        pixels.len() / PIXELS,
        labels_path.display(),
        labels.len()
    );
    Ok(labels
        .iter()
        .zip(pixels.chunks_exact(PIXELS))
        .enumerate()
        .map(|(index, (&label, pixels))| Sample { index, label, pixels: pixels.to_vec() })
        .collect())
}

fn read_gz(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    GzDecoder::new(file).read_to_end(&mut bytes).with_context(|| format!("decompressing {}", path.display()))?;
    Ok(bytes)
}

/// The big-endian u32 at word `i` of an IDX header.
fn header_word(bytes: &[u8], i: usize) -> anyhow::Result<u32> {
    let start = 4 * i;
    match bytes.get(start..start + 4) {
        Some(word) => Ok(u32::from_be_bytes([word[0], word[1], word[2], word[3]])),
        None => bail!("file ends inside its header"),
    }
}

/// The pixel bytes of an IDX3 image file, after checking its header.
fn parse_images(bytes: &[u8]) -> anyhow::Result<&[u8]> {
    let magic = header_word(bytes, 0)?;
    ensure!(magic == IMAGES_MAGIC, "magic {magic:#010x} is not {IMAGES_MAGIC:#010x}");
    let count = header_word(bytes, 1)? as usize;
    let (rows, cols) = (header_word(bytes, 2)?, header_word(bytes, 3)?);
    ensure!(rows as usize == SIDE && cols as usize == SIDE, "images are {rows}x{cols}, not {SIDE}x{SIDE}");
    let body = &bytes[16..];
    ensure!(
        Some(body.len()) == count.checked_mul(PIXELS),
        "header says {count} images but the file holds {} bytes of pixels",
        body.len()
    );
    Ok(body)
}

/// The label bytes of an IDX1 label file, after checking its header and values.
fn parse_labels(bytes: &[u8]) -> anyhow::Result<&[u8]> {
    let magic = header_word(bytes, 0)?;
    ensure!(magic == LABELS_MAGIC, "magic {magic:#010x} is not {LABELS_MAGIC:#010x}");
    let count = header_word(bytes, 1)? as usize;
    let body = &bytes[8..];
    ensure!(body.len() == count, "header says {count} labels but the file holds {}", body.len());
    if let Some(bad) = body.iter().find(|&&l| usize::from(l) >= LABELS.len()) {
        bail!("label {bad} is out of range");
    }
    Ok(body)
}

/// The first `per_label` samples of each label, kept in file order (so labels interleave as
/// in the file). `per_label == 0` means no limit: every sample is returned.
pub fn balanced_subset(samples: &[Sample], per_label: usize) -> Vec<&Sample> {
    if per_label == 0 {
        return samples.iter().collect();
    }
    let mut taken = [0usize; LABELS.len()];
    samples
        .iter()
        .filter(|sample| match taken.get_mut(usize::from(sample.label)) {
            Some(count) if *count < per_label => {
                *count += 1;
                true
            }
            _ => false,
        })
        .collect()
}

/// The sample as an 8-bit grayscale 28 × 28 PNG.
///
/// # Panics
/// If `sample.pixels` is not 784 bytes long ([`read_split`] never makes such a sample).
pub fn png_bytes(sample: &Sample) -> Vec<u8> {
    assert_eq!(sample.pixels.len(), PIXELS, "a sample has 28x28 pixels");
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&sample.pixels, SIDE as u32, SIDE as u32, ExtendedColorType::L8)
        .expect("encoding a well-sized grayscale image into memory cannot fail");
    png
}

/// Writes the samples as a zip with one folder per label (`<label>/<index:05>.png`).
/// PNGs are already compressed, so entries are stored. The zip is written beside `out`
/// and renamed into place once complete and synced.
pub fn write_catalogue_zip(samples: &[&Sample], out: &Path) -> anyhow::Result<()> {
    let tmp = sibling(out, "tmp")?;
    let written = write_zip_to(samples, &tmp)
        .and_then(|()| fs::rename(&tmp, out).with_context(|| format!("renaming into {}", out.display())));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn write_zip_to(samples: &[&Sample], path: &Path) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut zip = ZipWriter::new(BufWriter::new(file));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    for sample in samples {
        zip.start_file(sample.relative_path(), options)?;
        zip.write_all(&png_bytes(sample))?;
    }
    let file = zip
        .finish()?
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("flushing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))
}

/// Writes each sample to `<out>/<label>/<index:05>.png`, creating folders as needed.
/// Existing files of the same names are overwritten; others are left alone.
pub fn write_query_dir(samples: &[&Sample], out: &Path) -> anyhow::Result<()> {
    for sample in samples {
        let path = out.join(sample.relative_path());
        if let Some(folder) = path.parent() {
            fs::create_dir_all(folder).with_context(|| format!("creating {}", folder.display()))?;
        }
        fs::write(&path, png_bytes(sample)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `<parent>/.<name>.<tag>-<pid>`: a scratch path beside `path` on the same file system.
fn sibling(path: &Path, tag: &str) -> anyhow::Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("{} does not name a file", path.display()))?.to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{tag}-{}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
        let mut bytes = magic.to_be_bytes().to_vec();
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn parsers_check_headers_and_sizes() {
        let one = vec![7u8; PIXELS];
        assert!(parse_images(&idx(IMAGES_MAGIC, &[1, 28, 28], &one)).is_ok());
        assert!(parse_images(&idx(LABELS_MAGIC, &[1, 28, 28], &one)).is_err());
        assert!(parse_images(&idx(IMAGES_MAGIC, &[2, 28, 28], &one)).is_err());
        assert!(parse_images(&idx(IMAGES_MAGIC, &[1, 27, 28], &one)).is_err());
        assert!(parse_images(&[0, 0, 8]).is_err());
        assert!(parse_labels(&idx(LABELS_MAGIC, &[2], &[0, 9])).is_ok());
        assert!(parse_labels(&idx(LABELS_MAGIC, &[2], &[0, 10])).is_err());
        assert!(parse_labels(&idx(LABELS_MAGIC, &[3], &[0, 1])).is_err());
    }

    #[test]
    fn balanced_subset_keeps_file_order_and_zero_means_all() {
        let samples: Vec<Sample> = [0u8, 1, 0, 0, 1, 2]
            .iter()
            .enumerate()
            .map(|(index, &label)| Sample { index, label, pixels: vec![0; PIXELS] })
            .collect();
        let picked: Vec<usize> = balanced_subset(&samples, 2).iter().map(|s| s.index).collect();
        assert_eq!(picked, vec![0, 1, 2, 4, 5]);
        assert_eq!(balanced_subset(&samples, 0).len(), samples.len());
    }

    fn decode(png: &[u8]) -> image::GrayImage {
        let decoded = image::load_from_memory_with_format(png, image::ImageFormat::Png).expect("a valid png");
        assert_eq!(decoded.color(), image::ColorType::L8);
        decoded.to_luma8()
    }

    /// Uses the installed Debian package `dataset-fashion-mnist`.
    #[test]
    fn real_splits_read_and_round_trip_through_zip_and_folder() {
        let source = Path::new(DEFAULT_DIR);
        for (split, total) in [(Split::Train, 60_000), (Split::Test, 10_000)] {
            let samples = read_split(source, split).expect("the installed data set");
            assert_eq!(samples.len(), total);
            let mut counts = [0usize; LABELS.len()];
            samples.iter().for_each(|s| counts[usize::from(s.label)] += 1);
            assert_eq!(counts, [total / LABELS.len(); LABELS.len()]);
        }

        let test = read_split(source, Split::Test).expect("the installed data set");
        let subset = balanced_subset(&test, 3);
        assert_eq!(subset.len(), 3 * LABELS.len());
        let dir = tempfile::tempdir().expect("tempdir");
        let zip_path = dir.path().join("catalogue.zip");
        write_catalogue_zip(&subset, &zip_path).expect("zip written");
        let mut archive = zip::ZipArchive::new(File::open(&zip_path).expect("open")).expect("a valid zip");
        assert_eq!(archive.len(), subset.len());
        for sample in &subset {
            let mut png = Vec::new();
            archive
                .by_name(&sample.relative_path())
                .expect("entry present")
                .read_to_end(&mut png)
                .expect("entry readable");
            let image = decode(&png);
            assert_eq!(image.dimensions(), (SIDE as u32, SIDE as u32));
            assert_eq!(image.into_raw(), sample.pixels);
        }

        let queries = dir.path().join("queries");
        write_query_dir(&subset, &queries).expect("folder written");
        for sample in &subset {
            let png = fs::read(queries.join(sample.relative_path())).expect("file present");
            assert_eq!(decode(&png).into_raw(), sample.pixels);
        }
    }
}
