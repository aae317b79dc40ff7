//! The object store behind the data dir: what must outlive this machine (originals, trained
//! models, index snapshots, feature caches, job artifacts) is kept there.
//!
//! By default the store *is* the data dir (`object_store`'s local file system rooted at it), so
//! files written into the data dir are already stored and [`Objects::push_dir`] and friends do
//! nothing. With `[storage] url = "s3://bucket[/prefix]"` the store is an S3-compatible bucket and
//! the data dir is only a cache: a process writes a folder locally, then pushes it; another
//! process pulls it when it needs it.
//!
//! Folders (an index snapshot, a model) are pushed and pulled whole: see `folders`.
//!
//! Blocking: call from a job's thread or `spawn_blocking`. The store's I/O runs on a runtime of
//! its own, so these calls work whatever runtime (or none) the caller is on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

use super::StorageSettings;

/// The part size of a streamed upload, and how many parts are sent at once.
const PART: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// The object store and the local data dir it backs. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    pub(super) store: Arc<dyn ObjectStore>,
    runtime: Arc<IoRuntime>,
    data_dir: PathBuf,
    /// Whether the store is elsewhere than the data dir (S3): only then do pushes and pulls copy.
    pub(super) remote: bool,
    /// Shown in logs and errors: `file://{data_dir}` or `s3://bucket/prefix`.
    pub(super) location: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("location", &self.location).finish()
    }
}

impl Objects {
    /// Opens the store `settings` name over `data_dir`.
    pub fn open(settings: &StorageSettings, data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let runtime = Arc::new(IoRuntime::new()?);
        let (store, remote, location): (Arc<dyn ObjectStore>, bool, String) = match settings.bucket()? {
            None => {
                let local = object_store::local::LocalFileSystem::new_with_prefix(data_dir)?;
                (Arc::new(local), false, format!("file://{}", data_dir.display()))
            }
            Some((bucket, prefix)) => {
                let store = s3(settings, &bucket)?;
                let location = format!("s3://{bucket}/{prefix}");
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    Arc::new(store)
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(store, prefix.as_str()))
                };
                (store, true, location)
            }
        };
        Ok(Self { store, runtime, data_dir: data_dir.to_path_buf(), remote, location })
    }

    pub fn is_remote(&self) -> bool {
        self.remote
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub(super) fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// Runs `future` (the store's I/O) to its end on the store's runtime.
    pub(super) fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> anyhow::Result<T> {
        self.runtime.block_on(future)
    }

    /// Checks that the store answers: a missing bucket or a wrong endpoint fails here, at
    /// start-up, rather than at the first upload.
    pub fn check(&self) -> anyhow::Result<()> {
        let store = self.store.clone();
        let probe = Key::from("lookalike-probe");
        let listed = self.block_on(async move { store.list_with_delimiter(Some(&probe)).await })?;
        listed.with_context(|| format!("cannot reach the object store {}", self.location))?;
        Ok(())
    }

    /// The store's key of a path inside the data dir.
    pub(super) fn key_of(&self, path: &Path) -> anyhow::Result<String> {
        let relative = path
            .strip_prefix(&self.data_dir)
            .with_context(|| format!("{} is not inside the data dir", path.display()))?;
        let parts: Vec<&str> =
            relative.iter().map(|p| p.to_str().context("a path that is not UTF-8")).collect::<Result<_, _>>()?;
        anyhow::ensure!(!parts.is_empty(), "the data dir itself has no key");
        Ok(parts.join("/"))
    }

    /// Uploads one file of the data dir, streamed in parts (a catalogue upload may be larger than
    /// memory); readers see the old object or the new, never part of one.
    pub fn push_file(&self, path: &Path) -> anyhow::Result<()> {
        if !self.remote {
            return Ok(());
        }
        let key = Key::from(self.key_of(path)?);
        let store = self.store.clone();
        let file = path.to_path_buf();
        self.block_on(async move {
            use tokio::io::AsyncReadExt;
            let mut reader = tokio::fs::File::open(&file).await?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(store.put_multipart(&key).await?, PART);
            let mut buffer = vec![0; PART];
            loop {
                let read = reader.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                writer.write(&buffer[..read]);
            }
            writer.finish().await?;
            anyhow::Ok(())
        })?
        .with_context(|| format!("cannot upload {} to {}", path.display(), self.location))?;
        Ok(())
    }

    /// Removes one file of the data dir, here and in the store; a missing one is not an error.
    pub fn delete_file(&self, path: &Path) -> anyhow::Result<()> {
        match std::fs::remove_file(path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err.into()),
            _ => {}
        }
        if !self.remote {
            return Ok(());
        }
        let key = Key::from(self.key_of(path)?);
        let store = self.store.clone();
        match self.block_on(async move { store.delete(&key).await })? {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => {
                Err(anyhow::Error::new(err).context(format!("cannot delete {} from {}", path.display(), self.location)))
            }
        }
    }

    /// The size of the store's copy of a file of the data dir, `None` when it has none.
    pub fn stored_size(&self, path: &Path) -> anyhow::Result<Option<u64>> {
        let key = Key::from(self.key_of(path)?);
        let store = self.store.clone();
        let head = self.block_on(async move {
            match store.head(&key).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(err),
            }
        })?;
        head.with_context(|| format!("cannot reach {}", self.location))
    }

    /// Downloads one file of the data dir unless it is here already; false when the store lacks
    /// it too.
    pub fn pull_file(&self, path: &Path) -> anyhow::Result<bool> {
        if path.exists() {
            return Ok(true);
        }
        if !self.remote {
            return Ok(false);
        }
        let key = Key::from(self.key_of(path)?);
        let store = self.store.clone();
        let dir = path.parent().context("a file without a folder")?.to_path_buf();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".pull-{}", uuid::Uuid::new_v4().simple()));
        let partial = tmp.clone();
        let pulled = self.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let mut stream = match store.get(&key).await {
                Ok(result) => result.into_stream(),
                Err(object_store::Error::NotFound { .. }) => return anyhow::Ok(false),
                Err(err) => return Err(err.into()),
            };
            let mut file = tokio::fs::File::create(&partial).await?;
            while let Some(chunk) = stream.try_next().await? {
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            Ok(true)
        })?;
        let renamed = match pulled {
            Ok(true) => std::fs::rename(&tmp, path).map(|()| true).map_err(anyhow::Error::from),
            other => other,
        };
        if !matches!(renamed, Ok(true)) {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed.with_context(|| format!("cannot download {} from {}", path.display(), self.location))
    }

    /// The object `key`, or `None` when the store lacks it.
    pub(super) fn get(&self, key: Key) -> anyhow::Result<Option<Vec<u8>>> {
        let store = self.store.clone();
        let got = self.block_on(async move {
            match store.get(&key).await {
                Ok(result) => result.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(err) => Err(err),
            }
        })?;
        got.with_context(|| format!("cannot download from {}", self.location))
    }

    /// Removes everything stored under the data dir's `path` (a file or a folder), here and in
    /// the store.
    pub fn delete_tree(&self, path: &Path) -> anyhow::Result<()> {
        super::remove_dir_if_exists(path)?;
        if !self.remote {
            return Ok(());
        }
        let prefix = Key::from(self.key_of(path)?);
        let store = self.store.clone();
        self.block_on(async move {
            let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            for meta in listed {
                store.delete(&meta.location).await?;
            }
            Ok::<_, object_store::Error>(())
        })?
        .with_context(|| format!("cannot delete {} from {}", path.display(), self.location))?;
        Ok(())
    }
}

/// An S3 client for `bucket`: credentials from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); with none, requests go unsigned (a store
/// that allows anonymous access, such as a test's SeaweedFS).
fn s3(settings: &StorageSettings, bucket: &str) -> anyhow::Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&settings.region)
        .with_virtual_hosted_style_request(!settings.path_style);
    if !settings.endpoint.is_empty() {
        builder = builder.with_endpoint(&settings.endpoint).with_allow_http(settings.endpoint.starts_with("http://"));
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        builder = builder.with_skip_signature(true);
    }
    builder.build().with_context(|| format!("invalid S3 settings for bucket {bucket}"))
}

/// A small multi-threaded runtime of the store's own, shut down without waiting when dropped
/// (dropping a runtime the plain way inside another one panics).
struct IoRuntime(Option<tokio::runtime::Runtime>);

impl IoRuntime {
    fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("object-store")
            .enable_all()
            .build()?;
        Ok(Self(Some(runtime)))
    }

    /// Runs `future` on this runtime and waits for it, from any thread: a spawned task joined
    /// through a channel, so a caller on another runtime's blocking thread does not nest runtimes.
    fn block_on<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> anyhow::Result<T> {
        let runtime = self.0.as_ref().context("the object store's runtime is shut down")?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().context("the object store's task ended without an answer")
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
