//! Folders of the data dir (an index snapshot, a trained model, a training checkpoint) kept whole
//! in the object store.
//!
//! A pushed folder is written under a fresh version prefix, `{folder}/v/{version}/{file}`, and
//! only then named current by a one-object pointer, `{folder}/CURRENT` (a single PUT, which S3
//! makes atomic). A reader follows the pointer, so it sees a whole snapshot, old or new, never a
//! mix of two; the local copy records the version it holds (`.version`), so an unchanged folder
//! is not fetched twice. Older versions are removed once they are a few minutes old, which leaves
//! a reader that followed the old pointer time to finish. On the local store all of this is a
//! no-op: the folder written is the one stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};

use super::Objects;

/// Name of the pointer object to a folder's current version.
const CURRENT: &str = "CURRENT";
/// The file in a pulled or pushed local folder naming the version it holds.
const VERSION_FILE: &str = ".version";
/// How old a superseded version must be before a push removes it.
const KEEP_OLD_VERSIONS: Duration = Duration::from_secs(300);

/// The key of the pointer naming `folder`'s current version.
fn pointer(folder: &str) -> Key {
    Key::from(format!("{folder}/{CURRENT}"))
}

impl Objects {
    /// Uploads the folder `dir` of the data dir (every file under it) as a new version
    /// and names it current.
    pub fn push_dir(&self, dir: &Path) -> anyhow::Result<()> {
        if !self.remote {
            return Ok(());
        }
        let folder = self.key_of(dir)?;
        let version = uuid::Uuid::new_v4().simple().to_string();
        let mut files = Vec::new();
        for (name, path) in files_under(dir, "")? {
            if name != VERSION_FILE {
                files.push((Key::from(format!("{folder}/v/{version}/{name}")), std::fs::read(path)?));
            }
        }
        let store = self.store.clone();
        let current_key = pointer(&folder);
        let current = version.clone();
        self.block_on(async move {
            for (key, bytes) in files {
                store.put(&key, PutPayload::from(bytes)).await?;
            }
            store.put(&current_key, PutPayload::from(current.into_bytes())).await?;
            Ok::<_, object_store::Error>(())
        })?
        .with_context(|| format!("cannot upload {} to {}", dir.display(), self.location))?;
        std::fs::write(dir.join(VERSION_FILE), &version)?;
        if let Err(err) = self.remove_old_versions(&folder) {
            tracing::warn!(folder, error = %format!("{err:#}"), "could not remove old versions");
        }
        Ok(())
    }

    /// Makes the local folder `dir` hold the store's current version of it, downloading it
    /// when the local copy is missing or older; a folder the store lacks is left as it is.
    /// Returns whether the store has the folder.
    pub fn pull_dir(&self, dir: &Path) -> anyhow::Result<bool> {
        if !self.remote {
            return Ok(dir.exists());
        }
        let folder = self.key_of(dir)?;
        let Some(version) = self.get(pointer(&folder))? else {
            return Ok(false);
        };
        let version = String::from_utf8(version).context("a version pointer that is not UTF-8")?;
        if std::fs::read_to_string(dir.join(VERSION_FILE)).is_ok_and(|held| held == version) {
            return Ok(true);
        }
        let prefix = Key::from(format!("{folder}/v/{version}"));
        let store = self.store.clone();
        let files = self
            .block_on(async move {
                let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
                let mut files = Vec::new();
                for meta in listed {
                    let Some(parts) = meta.location.prefix_match(&prefix) else { continue };
                    let name: Vec<String> = parts.map(|p| p.as_ref().to_owned()).collect();
                    files.push((name.join("/"), store.get(&meta.location).await?.bytes().await?));
                }
                Ok::<_, object_store::Error>(files)
            })?
            .with_context(|| format!("cannot download {folder} from {}", self.location))?;
        super::replace_dir(dir, |tmp| {
            for (name, bytes) in &files {
                anyhow::ensure!(
                    !name.is_empty() && name.split('/').all(|p| !p.is_empty() && p != "." && p != ".."),
                    "a stored file named {name:?}"
                );
                super::write_atomic(&tmp.join(name), bytes, false)?;
            }
            std::fs::write(tmp.join(VERSION_FILE), &version)?;
            Ok(())
        })?;
        Ok(true)
    }

    /// Removes the versions of `folder` that are neither current nor recent.
    fn remove_old_versions(&self, folder: &str) -> anyhow::Result<()> {
        let current = self.get(pointer(folder))?.unwrap_or_default();
        let current = format!("{folder}/v/{}/", String::from_utf8_lossy(&current));
        let store = self.store.clone();
        let versions = Key::from(format!("{folder}/v"));
        let cutoff = chrono::Utc::now() - KEEP_OLD_VERSIONS;
        self.block_on(async move {
            let listed: Vec<_> = store.list(Some(&versions)).try_collect().await?;
            for meta in listed {
                if !meta.location.as_ref().starts_with(&current) && meta.last_modified < cutoff {
                    store.delete(&meta.location).await?;
                }
            }
            Ok::<_, object_store::Error>(())
        })??;
        Ok(())
    }
}

/// Every file under `dir`, with its path relative to `dir` (`/`-separated, after `prefix`).
fn files_under(dir: &Path, prefix: &str) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|_| anyhow::anyhow!("a file name that is not UTF-8"))?;
        let name = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type()?.is_dir() {
            files.extend(files_under(&entry.path(), &name)?);
        } else {
            files.push((name, entry.path()));
        }
    }
    Ok(files)
}
