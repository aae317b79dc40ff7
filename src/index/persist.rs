//! Saving and loading a [`VectorIndex`] directory.
//!
//! Owns the on-disk layout:
//! ```text
//! <dir>/index.json   format version, dim, params (the engine among them), point count,
//!                    and each graph file's name, byte size and sha256
//! native:  <dir>/graph.bin          the graph's own tables (see `graph_file`)
//! hnsw_rs: <dir>/graph.hnsw.graph   hnsw_rs's dump: the graph
//!          <dir>/graph.hnsw.data    and the vectors with their ids (see `hnsw_rs_graph`)
//! ```
//! An empty index has no graph file. `load` checks every file's size and checksum before
//! parsing it, and refuses an index saved by another engine than the configured one, so
//! the caller rebuilds it. Directories written by the first hnsw_rs-based versions (format
//! version 1) fail to load with an error; the service then rebuilds from its feature cache.
//! Format 2 directories written before the engine was recorded name no engine and load as
//! native, which is what wrote them.
//!
//! `save` writes a sibling temporary directory, fsyncs every file and the directory, then
//! renames it into place and fsyncs the parent. Replacing an existing `<dir>` takes two
//! renames (old aside, new in); a crash between them leaves the old version at
//! `.<name>.previous-*` beside it, so prefer one fresh directory per generation.
//! Both are called from one thread at a time per directory; `VectorIndex::save` already
//! excludes concurrent inserts.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::graph_file::{self, Shape};
use super::hnsw_rs_graph::{self, HnswRsGraph};
use super::{Engine, IndexEngine, IndexParams, MAX_CONNECTIONS, VectorIndex};

const META_FILE: &str = "index.json";
/// Bumped whenever the layout or the meaning of a field changes (1: hnsw_rs dumps before
/// engines were recorded).
const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
struct IndexMeta {
    format_version: u32,
    dim: usize,
    len: usize,
    params: IndexParams,
    /// The native graph file; `None` for an empty index and for hnsw_rs.
    graph: Option<FileDigest>,
    /// hnsw_rs's dump files, graph first; empty for an empty index and for native.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    dump: Vec<FileDigest>,
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
    let (mut graph, mut dump) = (None, Vec::new());
    match &index.engine {
        _ if len == 0 => {}
        Engine::Native(native) => {
            let (bytes, sha256) = graph_file::write(native, &tmp.join(graph_file::FILE_NAME))?;
            graph = Some(FileDigest { name: graph_file::FILE_NAME.to_string(), bytes, sha256 });
        }
        Engine::HnswRs(hnsw) => {
            for name in hnsw.dump(tmp)? {
                let path = tmp.join(&name);
                File::open(&path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))?;
                let (bytes, sha256) = digest(&path)?;
                dump.push(FileDigest { name, bytes, sha256 });
            }
        }
    }
    let params = index.params.clone();
    let meta = IndexMeta { format_version: FORMAT_VERSION, dim: index.dim, len, params, graph, dump };
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

pub(super) fn load(dir: &Path, engine: IndexEngine) -> anyhow::Result<VectorIndex> {
    load_checked(dir, engine).with_context(|| format!("loading the index from {}", dir.display()))
}

fn load_checked(dir: &Path, configured: IndexEngine) -> anyhow::Result<VectorIndex> {
    let meta_path = dir.join(META_FILE);
    let meta_bytes = fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?;
    let meta: IndexMeta =
        serde_json::from_slice(&meta_bytes).with_context(|| format!("parsing {}", meta_path.display()))?;
    ensure!(
        meta.format_version == FORMAT_VERSION,
        "index format {} is not the supported {FORMAT_VERSION}",
        meta.format_version
    );
    ensure!(
        meta.params.engine == configured,
        "the index was built by the {} engine, the configured engine is {configured}",
        meta.params.engine
    );
    ensure!(meta.dim > 0, "index dimension is 0");
    ensure!(
        (1..=MAX_CONNECTIONS).contains(&meta.params.max_nb_connection),
        "max_nb_connection {} is out of range",
        meta.params.max_nb_connection
    );
    if meta.len == 0 {
        ensure!(meta.graph.is_none() && meta.dump.is_empty(), "an empty index names graph files");
        return Ok(VectorIndex::new(meta.dim, 0, meta.params));
    }
    let engine = match meta.params.engine {
        IndexEngine::Native => {
            let expected = meta.graph.as_ref().with_context(|| format!("index of {} points has no graph", meta.len))?;
            ensure!(
                expected.name == graph_file::FILE_NAME,
                "index.json names an unexpected graph file {:?}",
                expected.name
            );
            let bytes = read_checked(dir, expected)?;
            let shape = Shape {
                len: meta.len,
                dim: meta.dim,
                m: meta.params.max_nb_connection,
                ef_construction: meta.params.ef_construction,
            };
            let path = dir.join(graph_file::FILE_NAME);
            Engine::Native(graph_file::read(&bytes, &shape).with_context(|| format!("reading {}", path.display()))?)
        }
        IndexEngine::HnswRs => {
            let names: Vec<&str> = meta.dump.iter().map(|f| f.name.as_str()).collect();
            ensure!(names == hnsw_rs_graph::dump_files(), "index.json names unexpected dump files {names:?}");
            for expected in &meta.dump {
                let found = digest(&dir.join(&expected.name))?;
                ensure!(
                    found == (expected.bytes, expected.sha256.clone()),
                    "{} is corrupted (size or checksum differs from index.json)",
                    expected.name
                );
            }
            let hnsw = HnswRsGraph::load(dir)?;
            ensure!(
                hnsw.len() == meta.len && hnsw.dim() == meta.dim,
                "the dump holds {} points of dimension {}, index.json says {} of {}",
                hnsw.len(),
                hnsw.dim(),
                meta.len,
                meta.dim
            );
            Engine::HnswRs(hnsw)
        }
    };
    Ok(VectorIndex::from_parts(meta.dim, meta.params, engine))
}

/// The bytes of the file `expected` names in `dir`, if their size and checksum match.
fn read_checked(dir: &Path, expected: &FileDigest) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(&expected.name);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() as u64 == expected.bytes && hex::encode(Sha256::digest(&bytes)) == expected.sha256,
        "{} is corrupted (size or checksum differs from index.json)",
        expected.name
    );
    Ok(bytes)
}

/// The size and sha256 (hex) of the file at `path`.
fn digest(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok((bytes, hex::encode(hasher.finalize())))
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
