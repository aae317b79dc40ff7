//! The native graph's file, `graph.bin`: the graph's own tables written out.
//!
//! Owns the layout (little-endian):
//! ```text
//! magic "LKGRAPH1", then u64 len, dim, M, entry node, top level;
//! the caller ids (len × u64); the levels (len × u8); the vectors (len × dim × f32);
//! the layer-0 lists (len × (1 + 2M) × u32: count, then slots);
//! the upper lists, node by node (level × (1 + M) × u32)
//! ```
//! so `read` is one pass, a bounds check of every link (a corrupted file is an error, never
//! a panic or a walk out of bounds later), with nothing rebuilt. The checksum that catches
//! most damage first is `persist`'s. `write` holds the graph's read lock while it writes:
//! searches go on, inserts wait.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

use super::graph::Graph;
use super::nodes::{MAX_LEVEL, Nodes};

pub(super) const FILE_NAME: &str = "graph.bin";
const GRAPH_MAGIC: &[u8; 8] = b"LKGRAPH1";
/// Bytes handed to the file (and the hash) at a time while saving.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// What `index.json` says the file holds; `read` checks the file against it.
pub(super) struct Shape {
    pub(super) len: usize,
    pub(super) dim: usize,
    pub(super) m: usize,
    pub(super) ef_construction: usize,
}

/// Writes `graph` (which must not be empty) to `path` and syncs it; returns the file's size
/// and sha256 (hex).
pub(super) fn write(graph: &Graph, path: &Path) -> anyhow::Result<(u64, String)> {
    let nodes = graph.read();
    let entry = graph.entry().filter(|_| nodes.len() > 0).context("an empty graph has no file")?;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new(), bytes: 0 };
    write_graph(&nodes, entry, &mut out).with_context(|| format!("writing {}", path.display()))?;
    let HashingWriter { inner, hasher, bytes } = out;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// The graph in `bytes` (a whole `graph.bin`), checked against `expected`.
pub(super) fn read(bytes: &[u8], expected: &Shape) -> anyhow::Result<Graph> {
    let (nodes, entry) = read_nodes(bytes, expected)?;
    Ok(Graph::from_nodes(nodes, Some(entry), expected.ef_construction))
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

/// Parses and validates `graph.bin`: every count, level and link is checked, so a file that
/// passed the checksum but was written wrong is still an error here, not a panic later.
fn read_nodes(bytes: &[u8], expected: &Shape) -> anyhow::Result<(Nodes, (u32, u8))> {
    let mut input = Input { bytes, at: 0 };
    ensure!(input.take(GRAPH_MAGIC.len())? == GRAPH_MAGIC, "not a lookalike graph file");
    let mut header = [0u64; 5];
    for field in &mut header {
        *field = input.u64s(1)?[0];
    }
    let [len, dim, m, entry, top] = header.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
    ensure!(
        len == expected.len && dim == expected.dim && m == expected.m,
        "graph holds {len} points of dimension {dim} with M = {m}, index.json says {} of {} with M = {}",
        expected.len,
        expected.dim,
        expected.m
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
