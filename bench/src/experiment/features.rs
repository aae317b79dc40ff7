//! Backbone features of Fashion-MNIST images, computed once and cached on disk.
//!
//! Every mining mode trains only the head, on the same frozen backbone features, so the backbone
//! runs once per (weights, input size, split, image count): 70,000 images at 64 px take minutes on
//! two cores, and a rerun should not pay them again. Images go through the server's own path:
//! each 28 × 28 gray image is encoded as PNG ([`fashion_mnist::png_bytes`]) and decoded by
//! [`prepare`], so the features are the ones an ingest of the same images would store.
//!
//! The cache file is `<cache_dir>/<model id>-<input size>px-<split>-<count>.f32`: a header of
//! [`MAGIC`], the row count and the dimension (u64 little-endian), then the rows as little-endian
//! `f32`. The model id changes with the weights, so stale features are never read. Files are
//! written beside their final name and renamed, so an interrupted run leaves no half file.
//!
//! Why not the service's [`lookalike::feature_cache::FeatureCache`]: that one is keyed by item
//! seq, append-only (a dataset grows item by item and a crash may tear the last record), and its
//! files do not carry their dimension (the backbone in the file name implies it); readers ask for
//! a set of seqs and get a map. These files are whole matrices written once, in sample order, and
//! they are also the benches' exchange format: `bench/index/data.py` turns them into the index
//! benchmark's data (which `index_bench` reads back in this format) and `bench/train/peer.py` reads
//! `train_bench`'s inputs in it, both with one `numpy.fromfile` (`bench/feature_matrix.py`). Going
//! through the service's format would mean passing the dimension to every reader and reordering
//! rows by seq, for no gain: nothing here appends.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, ensure};
use rayon::prelude::*;

use fashion_mnist::{self, Sample, Split};
use lookalike::network::EmbeddingModel;
use lookalike::network::preprocess::prepare;

/// First bytes of a feature cache file (format version 1).
const MAGIC: &[u8; 8] = b"LKFEAT01";
/// Images embedded per forward pass, as the server's embedder batches them.
pub const EMBED_BATCH: usize = 32;
/// Images decoded together across rayon's threads before their batches are embedded.
const DECODE_CHUNK: usize = 1024;
/// Pixel bound handed to [`prepare`]; Fashion-MNIST images have 784.
const MAX_PIXELS: u64 = 1 << 20;

/// Row-major features of a list of samples.
#[derive(Debug, Clone)]
pub struct Features {
    pub rows: Vec<f32>,
    pub dim: usize,
}

impl Features {
    /// The number of rows.
    pub fn len(&self) -> usize {
        self.rows.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The cache file for `count` samples of `split` under `model`.
pub fn cache_path(cache_dir: &Path, model: &EmbeddingModel, split: Split, count: usize) -> PathBuf {
    cache_dir.join(format!("{}-{}px-{}-{count}.f32", model.id(), model.input_size(), split.file_prefix()))
}

/// The backbone features of `samples` (all of `split`, or a label-balanced subset of it, which its
/// size identifies), read from the cache when present, else computed and cached. The `bool` says
/// whether the cache answered.
pub fn cached_features(
    model: &EmbeddingModel,
    split: Split,
    samples: &[Sample],
    cache_dir: &Path,
) -> anyhow::Result<(Features, bool)> {
    let path = cache_path(cache_dir, model, split, samples.len());
    if path.is_file() {
        let features = read_cache(&path)?;
        ensure!(
            features.len() == samples.len() && features.dim == model.dim(),
            "{} holds {} rows of {}, expected {} of {}",
            path.display(),
            features.len(),
            features.dim,
            samples.len(),
            model.dim()
        );
        return Ok((features, true));
    }
    let features = embed_samples(model, samples)?;
    fs::create_dir_all(cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    write_cache(&path, &features)?;
    Ok((features, false))
}

/// Embeds `samples` through PNG encoding, [`prepare`] and [`EmbeddingModel::embed`].
pub fn embed_samples(model: &EmbeddingModel, samples: &[Sample]) -> anyhow::Result<Features> {
    let started = Instant::now();
    let mut rows = Vec::with_capacity(samples.len() * model.dim());
    for (chunk_index, chunk) in samples.chunks(DECODE_CHUNK).enumerate() {
        let inputs = chunk
            .par_iter()
            .map(|sample| {
                prepare(&fashion_mnist::png_bytes(sample), MAX_PIXELS, model.input_size())
                    .map(|prepared| prepared.input)
                    .with_context(|| format!("preparing image {}", sample.index))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for batch in inputs.chunks(EMBED_BATCH) {
            rows.extend(model.embed(batch)?.into_iter().flatten());
        }
        let done = (chunk_index * DECODE_CHUNK + chunk.len()).min(samples.len());
        tracing::info!(done, total = samples.len(), seconds = started.elapsed().as_secs_f64(), "embedding images");
    }
    Ok(Features { rows, dim: model.dim() })
}

/// Reads a file in the cache format of the module docs.
pub fn read_cache(path: &Path) -> anyhow::Result<Features> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let header = MAGIC.len() + 16;
    ensure!(bytes.len() >= header && bytes[..MAGIC.len()] == MAGIC[..], "{} is not a feature cache", path.display());
    let word = |at: usize| -> anyhow::Result<usize> {
        let mut le = [0u8; 8];
        le.copy_from_slice(&bytes[at..at + 8]);
        usize::try_from(u64::from_le_bytes(le)).context("feature cache header out of range")
    };
    let (count, dim) = (word(MAGIC.len())?, word(MAGIC.len() + 8)?);
    let body = &bytes[header..];
    ensure!(
        count.checked_mul(dim).and_then(|n| n.checked_mul(4)) == Some(body.len()),
        "{} is truncated or corrupt",
        path.display()
    );
    let rows = body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(Features { rows, dim })
}

/// Writes `features` in the cache format of the module docs (beside `path`, then renamed).
pub fn write_cache(path: &Path, features: &Features) -> anyhow::Result<()> {
    let mut bytes = Vec::with_capacity(MAGIC.len() + 16 + features.rows.len() * 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(features.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&(features.dim as u64).to_le_bytes());
    features.rows.iter().for_each(|x| bytes.extend_from_slice(&x.to_le_bytes()));
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_damage() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f.f32");
        let features = Features { rows: vec![1.0, -2.5, 0.0, 3.25, 7.0, f32::MIN_POSITIVE], dim: 3 };
        write_cache(&path, &features)?;
        let read = read_cache(&path)?;
        assert_eq!((read.rows, read.dim), (features.rows, 3));
        let bytes = fs::read(&path)?;
        fs::write(&path, &bytes[..bytes.len() - 1])?;
        assert!(read_cache(&path).is_err(), "truncated");
        fs::write(&path, b"not a cache at all, no")?;
        assert!(read_cache(&path).is_err(), "wrong magic");
        Ok(())
    }
}
