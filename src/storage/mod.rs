//! Bytes that outlive a process: original images (blobs) and the folders of trained models,
//! index snapshots, feature caches and job artifacts, kept in an object store ([`Objects`]:
//! the data dir by default, an S3-compatible bucket when configured), plus the crash-safe file
//! writes every on-disk folder is made with.
//!
//! Keys are made by the server (never from client input), and every local write goes to a
//! temporary file that is synced and renamed into place, so a crash leaves either the old state
//! or the new.

mod blobs;
mod folders;
mod objects;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

pub use blobs::BlobStore;
pub use objects::Objects;

use anyhow::Context;
use serde::Deserialize;

/// The `[storage]` section: where originals, trained models, index snapshots, feature caches
/// and job artifacts are kept (`storage::Objects`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StorageSettings {
    /// Empty: the data dir. `s3://BUCKET` or `s3://BUCKET/PREFIX`: an S3-compatible bucket.
    pub url: String,
    /// The S3 endpoint (`http://host:port` for a self-hosted store); empty: AWS's.
    pub endpoint: String,
    pub region: String,
    /// Path-style requests (`{endpoint}/{bucket}/{key}`), as self-hosted stores expect.
    pub path_style: bool,
}

impl StorageSettings {
    /// The bucket and key prefix of an `s3://` URL, `None` for the data dir.
    pub fn bucket(&self) -> anyhow::Result<Option<(String, String)>> {
        if self.url.is_empty() {
            return Ok(None);
        }
        let rest = self.url.strip_prefix("s3://").with_context(|| {
            format!("storage.url {:?} is not empty (the data dir) nor s3://BUCKET[/PREFIX]", self.url)
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "storage.url {:?} names no bucket", self.url);
        Ok(Some((bucket.to_owned(), prefix.trim_matches('/').to_owned())))
    }
}

/// Writes `bytes` to a temporary file beside `path`, optionally syncs it, and
/// renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8], sync: bool) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        if sync {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces the folder `dir` with one that `fill` writes, crash-safely: `fill` writes into a new
/// sibling folder, which is renamed over `dir` once complete, so a reader (or a crash) sees the
/// old folder or the new one, never a mix. On failure the half-written folder is removed and
/// `dir` is untouched.
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let parent = dir.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "folder has no parent"))?;
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(".new-{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        fs::create_dir_all(&tmp)?;
        fill(&tmp)?;
        let old = parent.join(format!(".old-{}", uuid::Uuid::new_v4().simple()));
        if dir.exists() {
            fs::rename(dir, &old)?;
        }
        fs::rename(&tmp, dir)?;
        remove_dir_if_exists(&old)?;
        anyhow::Ok(())
    })();
    if result.is_err() {
        let _ = remove_dir_if_exists(&tmp);
    }
    result
}

pub fn remove_dir_if_exists(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}
