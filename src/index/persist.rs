//! Saving and loading a [`VectorIndex`] directory.
//!
//! Owns the on-disk layout:
//! ```text
//! <dir>/index.json          format version, dim, params, point count, graph basename,
//!                           byte size and sha256 of each graph file
//! <dir>/graph.hnsw.graph    hnsw_rs's graph dump (absent when the index is empty)
//! <dir>/graph.hnsw.data     hnsw_rs's vector dump, ids included (absent when empty)
//! ```
//! `save` writes a sibling temporary directory, fsyncs every file and the directory, then
//! renames it into place and fsyncs the parent. Replacing an existing `<dir>` takes two
//! renames (old aside, new in); a crash between them leaves the old version at
//! `.<name>.previous-*` beside it, so prefer one fresh directory per generation.
//! `load` checks the sizes and checksums before handing the files to hnsw_rs, whose reader
//! asserts (panics) on some malformed input. Both are called from one thread at a time
//! per directory; `VectorIndex::save` already excludes concurrent inserts.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use hnsw_rs::prelude::AnnT;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::graph::Graph;
use super::{IndexParams, VectorIndex};

const META_FILE: &str = "index.json";
const GRAPH_BASENAME: &str = "graph";
/// Bumped whenever the layout or the meaning of a field changes.
const FORMAT_VERSION: u32 = 1;
const HASH_BUFFER_BYTES: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct IndexMeta {
    format_version: u32,
    dim: usize,
    len: usize,
    params: IndexParams,
    /// hnsw_rs basename of the dump; `None` for an empty index (nothing to dump).
    basename: Option<String>,
    files: Vec<FileDigest>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileDigest {
    name: String,
    bytes: u64,
    sha256: String,
}

pub(super) fn save(index: &VectorIndex, dir: &Path) -> anyhow::Result<()> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} does not name a directory", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = parent_of(dir);
    fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
    let written = write_into(index, &tmp).and_then(|()| replace_dir(&tmp, dir, &parent, &name));
    if written.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    written.with_context(|| format!("saving the index to {}", dir.display()))
}

/// Writes the whole index into the fresh directory `tmp` and makes it durable.
fn write_into(index: &VectorIndex, tmp: &Path) -> anyhow::Result<()> {
    fs::create_dir(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let len = index.len();
    let mut basename = None;
    let mut files = Vec::new();
    if len > 0 {
        let dumped = index.graph.with(|hnsw| {
            // hnsw_rs panics instead of failing when it cannot create its files.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hnsw.file_dump(tmp, GRAPH_BASENAME)))
        });
        let used = match dumped {
            Ok(result) => result.context("hnsw_rs could not dump the graph")?,
            Err(_) => bail!("hnsw_rs panicked while dumping the graph"),
        };
        for suffix in ["hnsw.graph", "hnsw.data"] {
            let file_name = format!("{used}.{suffix}");
            let path = tmp.join(&file_name);
            File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))?;
            files.push(digest(&path, file_name)?);
        }
        basename = Some(used);
    }
    let meta = IndexMeta {
        format_version: FORMAT_VERSION,
        dim: index.dim,
        len,
        params: index.params.clone(),
        basename,
        files,
    };
    let meta_path = tmp.join(META_FILE);
    let mut out = File::create(&meta_path)?;
    out.write_all(&serde_json::to_vec_pretty(&meta)?)?;
    out.sync_all()?;
    sync_dir(tmp)
}

/// Renames `tmp` to `dir`, moving an existing `dir` aside first and deleting it after.
fn replace_dir(tmp: &Path, dir: &Path, parent: &Path, name: &str) -> anyhow::Result<()> {
    let previous = if dir.exists() {
        let aside = parent.join(format!(".{name}.previous-{}", unique_suffix()));
        fs::rename(dir, &aside).with_context(|| format!("moving {} aside", dir.display()))?;
        Some(aside)
    } else {
        None
    };
    if let Err(error) = fs::rename(tmp, dir) {
        if let Some(aside) = &previous {
            let _ = fs::rename(aside, dir);
        }
        return Err(error).with_context(|| format!("renaming into {}", dir.display()));
    }
    sync_dir(parent)?;
    if let Some(aside) = previous {
        fs::remove_dir_all(&aside).with_context(|| format!("removing the previous index {}", aside.display()))?;
    }
    Ok(())
}

pub(super) fn load(dir: &Path) -> anyhow::Result<VectorIndex> {
    load_checked(dir).with_context(|| format!("loading the index from {}", dir.display()))
}

fn load_checked(dir: &Path) -> anyhow::Result<VectorIndex> {
    let meta_path = dir.join(META_FILE);
    let meta_bytes = fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    let meta: IndexMeta =
        serde_json::from_slice(&meta_bytes).with_context(|| format!("parsing {}", meta_path.display()))?;
    ensure!(
        meta.format_version == FORMAT_VERSION,
        "index format {} is not the supported {FORMAT_VERSION}",
        meta.format_version
    );
    ensure!(meta.dim > 0, "index dimension is 0");
    ensure!(
        (1..=256).contains(&meta.params.max_nb_connection),
        "max_nb_connection {} is out of range",
        meta.params.max_nb_connection
    );
    let Some(basename) = &meta.basename else {
        ensure!(meta.len == 0, "index of {} points has no graph", meta.len);
        return Ok(VectorIndex::new(meta.dim, 0, meta.params));
    };
    ensure!(meta.files.len() == 2 && is_plain_name(basename), "index.json lists an unexpected set of files");
    for expected in &meta.files {
        ensure!(is_plain_name(&expected.name), "bad file name {:?}", expected.name);
        let actual = digest(&dir.join(&expected.name), expected.name.clone())?;
        ensure!(
            actual.bytes == expected.bytes && actual.sha256 == expected.sha256,
            "{} is corrupted (size or checksum differs from index.json)",
            expected.name
        );
    }
    let graph = Graph::load(dir, basename)?;
    let (points, dim) = graph.with(|hnsw| (hnsw.get_nb_point(), hnsw.get_point_indexation().get_data_dimension()));
    ensure!(
        points == meta.len && dim == meta.dim,
        "graph holds {points} points of dimension {dim}, index.json says {} of {}",
        meta.len,
        meta.dim
    );
    Ok(VectorIndex::from_parts(meta.dim, meta.params, graph))
}

fn digest(path: &Path, name: String) -> anyhow::Result<FileDigest> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(HASH_BUFFER_BYTES, file);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut bytes = 0u64;
    loop {
        let read = reader.read(&mut buffer).with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok(FileDigest { name, bytes, sha256: hex::encode(hasher.finalize()) })
}

/// A single path component: no separators, not `.` or `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\'])
}

fn parent_of(dir: &Path) -> PathBuf {
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| anyhow!("syncing directory {}: {e}", dir.display()))
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}
