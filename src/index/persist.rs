//! Saving and loading a [`VectorIndex`] directory.
//!
//! Owns the on-disk layout:
//! ```text
//! <dir>/index.json   format version, dim, params, point count, and the graph file's byte
//!                    size and sha256
//! <dir>/graph.bin    the graph (absent when the index is empty), little-endian:
//!                    magic "LKGRAPH1", then u64 len, dim, M, entry node, top level;
//!                    the caller ids (len × u64); the levels (len × u8); the vectors
//!                    (len × dim × f32); the layer-0 lists (len × (1 + 2M) × u32: count,
//!                    then slots); the upper lists, node by node (level × (1 + M) × u32)
//! ```
//! The file is the graph's own tables written out, so `load` is one read, a checksum and a
//! bounds check of every link (a corrupted file is an error, never a panic or a walk out of
//! bounds later), with nothing rebuilt. Directories written by the hnsw_rs-based versions
//! (format 1) fail to load with an error; the service then rebuilds from its feature cache.
//!
//! `save` writes a sibling temporary directory, fsyncs every file and the directory, then
//! renames it into place and fsyncs the parent. Replacing an existing `<dir>` takes two
//! renames (old aside, new in); a crash between them leaves the old version at
//! `.<name>.previous-*` beside it, so prefer one fresh directory per generation.
//! Both are called from one thread at a time per directory; `VectorIndex::save` already
//! excludes concurrent inserts.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::graph::Graph;
use super::nodes::{MAX_LEVEL, Nodes};
use super::{IndexParams, MAX_CONNECTIONS, VectorIndex};

const META_FILE: &str = "index.json";
const GRAPH_FILE: &str = "graph.bin";
const GRAPH_MAGIC: &[u8; 8] = b"LKGRAPH1";
/// Bumped whenever the layout or the meaning of a field changes (1: hnsw_rs dumps).
const FORMAT_VERSION: u32 = 2;
/// Bytes handed to the file (and the hash) at a time while saving.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct IndexMeta {
    format_version: u32,
    dim: usize,
    len: usize,
    params: IndexParams,
    /// The graph file; `None` for an empty index (nothing to write).
    graph: Option<FileDigest>,
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
    let nodes = index.graph.read();
    let len = nodes.len();
    let graph = match index.graph.entry() {
        Some(entry) if len > 0 => {
            let path = tmp.join(GRAPH_FILE);
            let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
            let mut out = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
            write_graph(&nodes, entry, &mut out).with_context(|| format!("writing {}", path.display()))?;
            let HashingWriter { inner, hasher, bytes } = out;
            let file = inner.into_inner().map_err(|e| e.into_error())?;
            file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
            Some(FileDigest { name: GRAPH_FILE.to_string(), bytes, sha256: hex::encode(hasher.finalize()) })
        }
        _ => None,
    };
    drop(nodes);
    let meta = IndexMeta { format_version: FORMAT_VERSION, dim: index.dim, len, params: index.params.clone(), graph };
    let meta_path = tmp.join(META_FILE);
    let mut out = File::create(&meta_path)?;
    out.write_all(&serde_json::to_vec_pretty(&meta)?)?;
    out.sync_all()?;
    sync_dir(tmp)
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    /// Writes fixed-size little-endian values a chunk at a time.
    fn put_all<const N: usize>(&mut self, values: impl Iterator<Item = [u8; N]>) -> std::io::Result<()> {
        let mut chunk = Vec::with_capacity(WRITE_CHUNK_BYTES);
        for value in values {
            chunk.extend_from_slice(&value);
            if chunk.len() + N > WRITE_CHUNK_BYTES {
                self.put(&chunk)?;
                chunk.clear();
            }
        }
        self.put(&chunk)
    }
}

fn write_graph(nodes: &Nodes, (entry, top): (u32, u8), out: &mut HashingWriter<impl Write>) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    out.put(GRAPH_MAGIC)?;
    let header = [nodes.len(), nodes.dim, nodes.m, entry as usize, usize::from(top)];
    out.put_all(header.iter().map(|&v| (v as u64).to_le_bytes()))?;
    out.put_all(nodes.ids.iter().map(|id| id.to_le_bytes()))?;
    out.put(&nodes.levels)?;
    out.put_all(nodes.vectors.iter().map(|x| x.to_le_bytes()))?;
    out.put_all(nodes.layer0.iter().map(|slot| slot.load(Relaxed).to_le_bytes()))?;
    out.put_all(nodes.upper.iter().flat_map(|lists| lists.iter()).map(|slot| slot.load(Relaxed).to_le_bytes()))
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
        (1..=MAX_CONNECTIONS).contains(&meta.params.max_nb_connection),
        "max_nb_connection {} is out of range",
        meta.params.max_nb_connection
    );
    let Some(expected) = &meta.graph else {
        ensure!(meta.len == 0, "index of {} points has no graph", meta.len);
        return Ok(VectorIndex::new(meta.dim, 0, meta.params));
    };
    ensure!(expected.name == GRAPH_FILE, "index.json names an unexpected graph file {:?}", expected.name);
    let path = dir.join(GRAPH_FILE);
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        bytes.len() as u64 == expected.bytes && hex::encode(Sha256::digest(&bytes)) == expected.sha256,
        "{GRAPH_FILE} is corrupted (size or checksum differs from index.json)"
    );
    let (nodes, entry) = read_graph(&bytes, &meta).with_context(|| format!("reading {}", path.display()))?;
    drop(bytes);
    let graph = Graph::from_nodes(nodes, Some(entry), meta.params.ef_construction);
    Ok(VectorIndex::from_parts(meta.dim, meta.params, graph))
}

/// Parses and validates `graph.bin`: every count, level and link is checked, so a file that
/// passed the checksum but was written wrong is still an error here, not a panic later.
fn read_graph(bytes: &[u8], meta: &IndexMeta) -> anyhow::Result<(Nodes, (u32, u8))> {
    let mut input = Input { bytes, at: 0 };
    ensure!(input.take(GRAPH_MAGIC.len())? == GRAPH_MAGIC, "not a lookalike graph file");
    let mut header = [0u64; 5];
    for field in &mut header {
        *field = input.u64s(1)?[0];
    }
    let [len, dim, m, entry, top] = header.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
    ensure!(
        len == meta.len && dim == meta.dim && m == meta.params.max_nb_connection,
        "graph holds {len} points of dimension {dim} with M = {m}, index.json says {} of {} with M = {}",
        meta.len,
        meta.dim,
        meta.params.max_nb_connection
    );
    ensure!(len > 0 && len <= u32::MAX as usize, "graph of {len} points");
    ensure!(entry < len && top <= usize::from(MAX_LEVEL), "entry point {entry} at level {top} is out of range");
    let ids = input.u64s(len)?;
    let levels = input.take(len)?.to_vec();
    ensure!(levels.iter().all(|&l| l <= MAX_LEVEL), "a level exceeds {MAX_LEVEL}");
    ensure!(
        usize::from(levels[entry]) == top && levels.iter().all(|&l| usize::from(l) <= top),
        "the entry point is not on the top level"
    );
    let floats = len.checked_mul(dim).context("graph size overflows")?;
    let vectors: Vec<f32> = input
        .take(floats.checked_mul(4).context("graph size overflows")?)?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let layer0 = input.u32s(len * (1 + 2 * m))?;
    let mut upper = Vec::with_capacity(len);
    for &level in &levels {
        upper.push(input.u32s(usize::from(level) * (1 + m))?.into_boxed_slice());
    }
    ensure!(input.at == bytes.len(), "{} bytes after the graph", bytes.len() - input.at);
    for (node, block) in layer0.chunks_exact(1 + 2 * m).enumerate() {
        check_list(block, 0, &levels).with_context(|| format!("node {node}, layer 0"))?;
    }
    for (node, lists) in upper.iter().enumerate() {
        for (layer, block) in lists.chunks_exact(1 + m).enumerate() {
            check_list(block, layer + 1, &levels).with_context(|| format!("node {node}, layer {}", layer + 1))?;
        }
    }
    let nodes = Nodes::from_parts(dim, m, ids, levels, vectors, layer0, upper);
    Ok((nodes, (entry as u32, top as u8)))
}

/// A list's count fits its slots, and each neighbour exists and lives on `layer`.
fn check_list(block: &[u32], layer: usize, levels: &[u8]) -> anyhow::Result<()> {
    let count = block[0] as usize;
    ensure!(count < block.len(), "{count} neighbours in a list of {}", block.len() - 1);
    for &n in &block[1..=count] {
        let level = levels.get(n as usize).with_context(|| format!("neighbour {n} does not exist"))?;
        ensure!(usize::from(*level) >= layer, "neighbour {n} does not live on layer {layer}");
    }
    Ok(())
}

/// A cursor over the file's bytes that fails instead of reading past the end.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            bail!("the file ends early (wanted {n} bytes at offset {})", self.at);
        };
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u64s(&mut self, n: usize) -> anyhow::Result<Vec<u64>> {
        let raw = self.take(n.checked_mul(8).context("size overflows")?)?;
        Ok(raw.chunks_exact(8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])).collect())
    }

    fn u32s(&mut self, n: usize) -> anyhow::Result<Vec<u32>> {
        let raw = self.take(n.checked_mul(4).context("size overflows")?)?;
        Ok(raw.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
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
