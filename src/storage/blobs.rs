//! Original images ("blobs"), under `blobs/{dataset}/{xx}/{uuid}` in the object store.
//!
//! The async methods serve handlers; the `_blocking` ones and [`BlobStore::sync_keys`] serve job
//! threads. On the local store a blob is a file of the data dir, made durable by an fsync (at
//! once, or for a whole batch by `sync_keys`, much faster for many small images); on S3 a PUT
//! that returned is durable.

use std::io;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};

use super::Objects;

/// How many uploads [`BlobStore::put_many_blocking`] keeps in flight.
const PARALLEL_PUTS: usize = 16;

#[derive(Clone, Debug)]
pub struct BlobStore {
    objects: Objects,
}

impl BlobStore {
    pub fn new(objects: Objects) -> Self {
        Self { objects }
    }

    /// A fresh key for a new blob of `dataset`.
    pub fn new_key(dataset: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("{dataset}/{}/{id}", &id[..2])
    }

    /// The store's key of a blob key, refusing any that could name something else.
    fn key(key: &str) -> io::Result<Key> {
        let safe = !key.is_empty()
            && key.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
            && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_'));
        if !safe {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad blob key {key:?}")));
        }
        Ok(Key::from(format!("blobs/{key}")))
    }

    /// Stores `bytes` durably under `key`.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> io::Result<()> {
        let (this, key) = (self.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || this.put_blocking(&key, bytes, true)).await.map_err(io::Error::other)?
    }

    /// Stores `bytes` under `key`; with `sync` false on the local store the caller makes it
    /// durable later ([`BlobStore::sync_keys`]).
    pub fn put_blocking(&self, key: &str, bytes: Vec<u8>, sync: bool) -> io::Result<()> {
        let path = Self::key(key)?;
        let store = self.objects.clone();
        let put = self.objects.block_on(async move { store.store().put(&path, PutPayload::from(bytes)).await });
        put.map_err(io::Error::other)?.map_err(to_io)?;
        if sync { self.sync_keys([key]) } else { Ok(()) }
    }

    /// Stores many blobs, several at a time (on S3 each is a request); on the local store the
    /// caller makes them durable ([`BlobStore::sync_keys`]).
    pub fn put_many_blocking(&self, blobs: Vec<(String, Vec<u8>)>) -> io::Result<()> {
        let keyed: Vec<(Key, Vec<u8>)> =
            blobs.into_iter().map(|(k, b)| Ok((Self::key(&k)?, b))).collect::<io::Result<_>>()?;
        let store = self.objects.clone();
        let put = self.objects.block_on(async move {
            let puts = keyed.into_iter().map(|(key, bytes)| {
                let store = store.clone();
                async move { store.store().put(&key, PutPayload::from(bytes)).await }
            });
            futures_util::stream::iter(puts).buffer_unordered(PARALLEL_PUTS).try_collect::<Vec<_>>().await
        });
        put.map_err(io::Error::other)?.map_err(to_io)?;
        Ok(())
    }

    /// Makes the named blobs durable: on the local store an fsync of each file and its folder.
    pub fn sync_keys<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> io::Result<()> {
        if self.objects.is_remote() {
            return Ok(());
        }
        let mut dirs = std::collections::BTreeSet::new();
        for key in keys {
            let path = self.objects.data_dir().join(Self::key(key)?.as_ref());
            std::fs::File::open(&path)?.sync_all()?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub async fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        let (this, key) = (self.clone(), key.to_owned());
        tokio::task::spawn_blocking(move || this.get_blocking(&key)).await.map_err(io::Error::other)?
    }

    pub fn get_blocking(&self, key: &str) -> io::Result<Vec<u8>> {
        let path = Self::key(key)?;
        let store = self.objects.clone();
        let got = self.objects.block_on(async move {
            let result = store.store().get(&path).await?;
            result.bytes().await
        });
        Ok(got.map_err(io::Error::other)?.map_err(to_io)?.to_vec())
    }

    /// Removes one blob; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> io::Result<()> {
        let path = Self::key(key)?;
        let store = self.objects.clone();
        let deleted = tokio::task::spawn_blocking(move || {
            let objects = store.clone();
            store.block_on(async move { objects.store().delete(&path).await })
        });
        match deleted.await.map_err(io::Error::other)?.map_err(io::Error::other)? {
            Err(object_store::Error::NotFound { .. }) | Ok(()) => Ok(()),
            Err(err) => Err(to_io(err)),
        }
    }

    /// Removes every blob of a dataset (blocking).
    pub fn delete_dataset(&self, dataset: &str) -> anyhow::Result<()> {
        Self::key(dataset)?;
        self.objects.delete_tree(&self.objects.data_dir().join("blobs").join(dataset))
    }
}

fn to_io(err: object_store::Error) -> io::Error {
    match err {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, err),
        err => io::Error::other(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageSettings;

    fn store(dir: &std::path::Path) -> BlobStore {
        BlobStore::new(Objects::open(&StorageSettings::default(), dir).expect("store"))
    }

    #[test]
    fn put_get_delete_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let key = BlobStore::new_key("shoes");
        store.put_blocking(&key, b"bytes".to_vec(), true).expect("put");
        assert_eq!(store.get_blocking(&key).expect("get"), b"bytes");
        assert!(dir.path().join("blobs").join(&key).is_file(), "the local store is the data dir");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(store.delete(&key)).expect("delete");
        assert_eq!(store.get_blocking(&key).expect_err("deleted").kind(), io::ErrorKind::NotFound);
        runtime.block_on(store.delete(&key)).expect("deleting twice is fine");
    }

    #[test]
    fn keys_cannot_escape_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        for key in ["../x", "a/../../x", "/etc/passwd", "", "a//b", "a/./b"] {
            assert!(store.put_blocking(key, b"x".to_vec(), false).is_err(), "{key}");
        }
    }
}
