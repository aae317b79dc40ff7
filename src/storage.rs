//! Bytes on disk: original images (blobs), uploads in flight, artifacts.
//!
//! Everything lives under the data dir; keys are made by the server (never
//! from client input), and every write goes to a temporary file that is synced
//! and renamed into place, so a crash leaves either the old state or the new.
//! `BlobStore` is `Clone + Send + Sync` and used from blocking threads.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// A store rooted at `<data_dir>/blobs`.
    pub fn new(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("blobs");
        fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    /// A fresh key for a new blob of `dataset`.
    pub fn new_key(dataset: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{dataset}/{}/{id}", &id[..2])
    }

    fn path(&self, key: &str) -> io::Result<PathBuf> {
        let safe = !key.is_empty()
            && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'));
        if !safe {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad blob key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// Stores `bytes` durably under `key`. With `sync` false the caller syncs
    /// later (see `sync_keys`), which is much faster for many small blobs.
    pub fn put(&self, key: &str, bytes: &[u8], sync: bool) -> io::Result<()> {
        let path = self.path(key)?;
        write_atomic(&path, bytes, sync)
    }

    /// Makes the named blobs durable (fsync of each file and its folder).
    pub fn sync_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        let mut dirs = std::collections::BTreeSet::new();
        for key in keys {
            let path = self.path(key)?;
            fs::File::open(&path)?.sync_all()?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(key)?)
    }

    /// Removes one blob; a missing one is not an error.
    pub fn delete(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.path(key)?) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
            _ => Ok(()),
        }
    }

    /// Removes every blob of a dataset.
    pub fn delete_dataset(&self, dataset: &str) -> io::Result<()> {
        remove_dir_if_exists(&self.path(dataset)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path()).expect("store");
        let key = BlobStore::new_key("shoes");
        store.put(&key, b"bytes", true).expect("put");
        assert_eq!(store.get(&key).expect("get"), b"bytes");
        store.delete(&key).expect("delete");
        assert!(store.get(&key).is_err());
        store.delete(&key).expect("deleting twice is fine");
    }

    #[test]
    fn keys_cannot_escape_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::new(dir.path()).expect("store");
        for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b", "a/./b"] {
            assert!(store.put(key, b"x", false).is_err(), "{key}");
        }
    }
}
