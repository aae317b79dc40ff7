//! The nearest-neighbour index over one generation's embeddings.
//!
//! Owns [`VectorIndex`]: an HNSW graph over L2-normalised f32 embeddings with `1 − cosine`
//! distance, its search with a caller-supplied id filter (deleted items, label filter), an
//! exact scan where the graph cannot promise a full answer, and crash-safe save/load of the
//! graph itself (see [`persist`](self) for the on-disk layout).
//!
//! Two engines hold the graph, chosen by [`IndexParams::engine`] (`index.engine` in the
//! configuration); everything else here (filters, exact scans, thresholds, save/load
//! atomicity) is shared, and both pass the same contract tests (`tests/index.rs`):
//! - `native` (the default): lookalike's own graph (`graph`, `nodes`, `scratch`,
//!   `graph_file`);
//! - `hnsw_rs`: the `hnsw_rs` crate's graph (`hnsw_rs_graph`), which the service was first
//!   specified on.
//!
//! A saved index records its engine; loading it under another engine is an error, and the
//! callers then rebuild from the feature cache as for any unreadable index.
//!
//! Concurrency: a `VectorIndex` is `Send + Sync` and every method takes `&self`. Any number
//! of threads may search while another inserts; batches are linked one at a time, and `save`
//! waits for a running batch and holds off the next while it writes, so a snapshot is never
//! half a batch. Inserts and builds are CPU-bound: call them from a dedicated thread or
//! `spawn_blocking`, never on the runtime.
//!
//! Why lookalike has its own graph instead of only `hnsw_rs`: `bench/index.sh` measured
//! hnsw_rs behind this same API at 0.35× hnswlib's queries/s at recall@10 ≥ 0.95 and 2.4×
//! its build time on Fashion-MNIST (60,000 × 1280), and 0.06× and 6.5× on 200,000 synthetic
//! 128-d vectors (`docs/BENCHMARKS.md`). The time went to its search loop (a hashed visited
//! set, a lock and a reference count per point, allocations per query) and to distances
//! compiled for baseline x86-64. The native graph follows the paper and hnswlib's layout:
//! vectors in one contiguous array, neighbour lists as fixed-capacity `u32` arrays with a
//! mutex per node, an epoch-stamped visited array and heaps reused per thread (a query
//! allocates only its answer), and a dot product that picks AVX-512 or AVX2 at run time.
//!
//! Exact scans read the vectors the engine stores (no second copy): one dot product per
//! stored point that passes the filter.

mod distance;
mod graph;
mod graph_file;
mod hnsw_rs_graph;
mod nodes;
mod persist;
mod scratch;

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use distance::unit_cosine_distance;
use graph::Graph;
use hnsw_rs_graph::HnswRsGraph;

/// When a filter lets through at most this many times `ef` stored points, an exact scan
/// (one dot product per matching point) costs about what a graph search does, and the
/// graph search would have to wander far to find that many matches: answer exactly.
pub const EXACT_MATCHING_PER_EF: usize = 8;

/// The largest `max_nb_connection` accepted (lists are fixed arrays of `2M` slots per node).
const MAX_CONNECTIONS: usize = 256;

/// How the graph is built and searched. Every field trades speed for recall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexParams {
    /// Which HNSW implementation holds the graph. Fixed when an index is built: an index
    /// saved by another engine is rebuilt at load.
    pub engine: IndexEngine,
    /// Links kept per node and layer (HNSW's M; the bottom layer keeps twice as many). More
    /// links: better recall and more memory and build time. At most 256.
    pub max_nb_connection: usize,
    /// Candidates considered while linking a new node. Higher: better graph, slower build.
    pub ef_construction: usize,
    /// Candidates considered while searching (raised to `k` when `k` is larger). Higher:
    /// better recall, slower queries.
    pub ef_search: usize,
    /// Below this many stored points every search is an exact scan: the scan is cheap and
    /// exact beats approximate.
    pub exact_below: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            engine: IndexEngine::Native,
            max_nb_connection: 16,
            ef_construction: 200,
            ef_search: 64,
            exact_below: 2_000,
        }
    }
}

/// The HNSW implementation behind a [`VectorIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexEngine {
    /// lookalike's own graph: the fastest to build and search (`bench/index.sh`).
    #[default]
    Native,
    /// The `hnsw_rs` crate's graph.
    HnswRs,
}

impl IndexEngine {
    pub const ALL: [IndexEngine; 2] = [IndexEngine::Native, IndexEngine::HnswRs];

    /// The name the configuration and saved indexes use.
    pub fn name(self) -> &'static str {
        match self {
            IndexEngine::Native => "native",
            IndexEngine::HnswRs => "hnsw_rs",
        }
    }
}

impl std::fmt::Display for IndexEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One search result: the caller's id and its `1 − cosine` distance to the query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Neighbour {
    pub id: u64,
    pub distance: f32,
}

/// Ascending distance, ties broken by id so that results are deterministic.
fn by_distance_then_id(a: &Neighbour, b: &Neighbour) -> Ordering {
    a.distance.total_cmp(&b.distance).then(a.id.cmp(&b.id))
}

/// An HNSW index over L2-normalised embeddings of one fixed dimension.
pub struct VectorIndex {
    dim: usize,
    params: IndexParams,
    engine: Engine,
    /// Held by a batch for its whole insert and by `save` while it writes: batches never
    /// overlap, and a dump never sees half a batch.
    write_gate: Mutex<()>,
}

impl VectorIndex {
    /// An empty index for `dim`-dimensional vectors; `capacity_hint` pre-sizes its tables.
    ///
    /// # Panics
    /// If `dim` is 0 or `params.max_nb_connection` is not in `1..=256` (configuration is
    /// validated before it gets here).
    pub fn new(dim: usize, capacity_hint: usize, params: IndexParams) -> Self {
        assert!(dim > 0, "an index needs a positive dimension");
        assert!((1..=MAX_CONNECTIONS).contains(&params.max_nb_connection), "max_nb_connection must be in 1..=256");
        let (m, ef_construction) = (params.max_nb_connection, params.ef_construction);
        let engine = match params.engine {
            IndexEngine::Native => Engine::Native(Graph::new(dim, m, ef_construction, capacity_hint)),
            IndexEngine::HnswRs => Engine::HnswRs(HnswRsGraph::new(m, ef_construction, capacity_hint)),
        };
        VectorIndex::from_parts(dim, params, engine)
    }

    fn from_parts(dim: usize, params: IndexParams, engine: Engine) -> Self {
        debug_assert_eq!(params.engine, engine.kind());
        VectorIndex { dim, params, engine, write_gate: Mutex::new(()) }
    }

    /// Inserts a batch, linked in parallel on the current rayon pool. Ids are the caller's
    /// and must be unique across the index: the index does not deduplicate, so an id
    /// inserted twice is stored twice.
    ///
    /// # Panics
    /// If a vector's length is not [`dim`](Self::dim).
    pub fn insert_batch(&self, items: &[(u64, Vec<f32>)]) {
        for (id, vector) in items {
            assert_eq!(vector.len(), self.dim, "vector for id {id} has the wrong dimension");
        }
        if items.is_empty() {
            return;
        }
        let _batch = self.write_gate.lock().unwrap_or_else(|e| e.into_inner());
        match &self.engine {
            Engine::Native(graph) => graph.insert_batch(items),
            Engine::HnswRs(graph) => graph.insert_batch(items),
        }
    }

    /// The `min(k, matching)` stored points nearest to `query` among those whose id passes
    /// `filter`, nearest first. `matching` is how many stored ids pass `filter` (the caller
    /// tracks it); the graph is searched when that is cheap and complete, otherwise, or when
    /// the graph search comes back short, the answer is an exact scan.
    ///
    /// # Panics
    /// If `query.len()` is not [`dim`](Self::dim).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &(dyn Fn(u64) -> bool + Sync),
        matching: usize,
    ) -> Vec<Neighbour> {
        assert_eq!(query.len(), self.dim, "query has the wrong dimension");
        let wanted = k.min(matching);
        let stored = self.len();
        if wanted == 0 || stored == 0 {
            return Vec::new();
        }
        let ef = self.params.ef_search.max(k);
        let scan_is_cheaper = matching <= ef.saturating_mul(EXACT_MATCHING_PER_EF);
        if stored < self.params.exact_below || scan_is_cheaper {
            return self.exact_search(query, wanted, filter);
        }
        if matching >= stored {
            // Every stored id should pass: search without calling the filter on every node
            // walked, then filter the answer. A caller whose count is off still gets a correct
            // answer from the filtered search below.
            if let Some(mut found) = self.engine.search(query, k, ef, None) {
                found.retain(|n| filter(n.id));
                if found.len() >= wanted {
                    found.sort_by(by_distance_then_id);
                    found.truncate(wanted);
                    return found;
                }
            }
        }
        match self.engine.search(query, k, ef, Some(filter)) {
            Some(mut found) if found.len() >= wanted => {
                found.sort_by(by_distance_then_id);
                found.truncate(wanted);
                found
            }
            _ => self.exact_search(query, wanted, filter),
        }
    }

    /// The ids of every stored point (deleted ones included: deletion is the caller's filter).
    pub fn ids(&self) -> std::collections::HashSet<u64> {
        let mut ids = std::collections::HashSet::with_capacity(self.len());
        let visit = |id: u64, _: &[f32]| {
            ids.insert(id);
        };
        match &self.engine {
            Engine::Native(graph) => graph.for_each_point(visit),
            Engine::HnswRs(graph) => graph.for_each_point(visit),
        }
        ids
    }

    /// The `wanted` nearest points passing `filter`, by scanning every stored vector.
    fn exact_search(&self, query: &[f32], wanted: usize, filter: &(dyn Fn(u64) -> bool + Sync)) -> Vec<Neighbour> {
        let mut hits = Vec::new();
        let visit = |id: u64, vector: &[f32]| {
            if filter(id) {
                hits.push(Neighbour { id, distance: unit_cosine_distance(query, vector) });
            }
        };
        match &self.engine {
            Engine::Native(graph) => graph.for_each_point(visit),
            Engine::HnswRs(graph) => graph.for_each_point(visit),
        }
        if hits.len() > wanted {
            hits.select_nth_unstable_by(wanted - 1, by_distance_then_id);
            hits.truncate(wanted);
        }
        hits.sort_by(by_distance_then_id);
        hits
    }

    /// Writes the index to `dir` crash-safely: everything goes into a temporary directory
    /// beside it, is fsynced, and is renamed into place. See the `persist` module.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let _exclusive = self.write_gate.lock().unwrap_or_else(|e| e.into_inner());
        persist::save(self, dir)
    }

    /// Loads an index saved by [`save`](Self::save): the graph is read back as it was
    /// built, not rebuilt. A missing, partial or corrupted directory is an error, and so is
    /// an index saved by an engine other than `configured.engine` (the caller rebuilds).
    /// The index keeps the shape it was built with (M, `ef_construction`); how it is
    /// searched (`ef_search`, `exact_below`) follows `configured`.
    pub fn load(dir: &Path, configured: &IndexParams) -> anyhow::Result<Self> {
        let mut index = persist::load(dir, configured.engine)?;
        index.params.ef_search = configured.ef_search;
        index.params.exact_below = configured.exact_below;
        Ok(index)
    }

    /// How many points are stored (deleted ones included: deletion is the caller's filter).
    pub fn len(&self) -> usize {
        match &self.engine {
            Engine::Native(graph) => graph.len(),
            Engine::HnswRs(graph) => graph.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }
}

/// The graph of a [`VectorIndex`], one variant per [`IndexEngine`]. A query matches on it
/// once; each engine's search loop runs without further dispatch.
enum Engine {
    Native(Graph),
    HnswRs(HnswRsGraph),
}

impl Engine {
    fn kind(&self) -> IndexEngine {
        match self {
            Engine::Native(_) => IndexEngine::Native,
            Engine::HnswRs(_) => IndexEngine::HnswRs,
        }
    }

    /// The `k` nearest points found at beam width `max(ef, k)` that `filter` accepts (all
    /// when `None`), in no particular order; `None` when the engine failed to answer.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Option<Vec<Neighbour>> {
        match self {
            Engine::Native(graph) => Some(graph.search(query, k, ef, filter)),
            Engine::HnswRs(graph) => graph.search(query, k, ef, filter),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The contract both engines keep is `tests/index.rs`; here, what only the inside shows.
    use super::*;

    #[test]
    fn params_deserialize_with_defaults_for_missing_fields() {
        let params: IndexParams = serde_json::from_str(r#"{"ef_search": 100}"#).expect("valid params");
        assert_eq!(params.ef_search, 100);
        assert_eq!(params.max_nb_connection, IndexParams::default().max_nb_connection);
        assert_eq!(params.engine, IndexEngine::Native);
        let params: IndexParams = serde_json::from_str(r#"{"engine": "hnsw_rs"}"#).expect("valid params");
        assert_eq!(params.engine, IndexEngine::HnswRs);
        assert!(serde_json::from_str::<IndexParams>(r#"{"engine": "faiss"}"#).is_err());
    }

    /// Every node of the native graph links out on layer 0 after batches of both sizes
    /// linked while searches run, and almost every one is linked to (the heuristic may prune
    /// a node out of all its neighbours' lists, as in any HNSW; its own links remain).
    #[test]
    fn native_links_every_node_after_inserts_racing_searches() {
        const DIM: usize = 16;
        // Deterministic, spread-out unit vectors; the random ones are the contract suite's.
        let vector = |i: usize| -> Vec<f32> {
            let v: Vec<f32> = (0..DIM).map(|j| ((i * 7 + j * 13) as f32 * 0.618).sin()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        };
        let rows: Vec<(u64, Vec<f32>)> = (0..3_000).map(|i| (i as u64, vector(i))).collect();
        let index = VectorIndex::new(DIM, 0, IndexParams { exact_below: 0, ..IndexParams::default() });
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    index.search(&rows[0].1, 10, &|_| true, index.len());
                }
            });
            for (round, batch) in rows.chunks(250).enumerate() {
                if round % 2 == 0 {
                    batch.chunks(30).for_each(|small| index.insert_batch(small));
                } else {
                    index.insert_batch(batch);
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let Engine::Native(graph) = &index.engine else { unreachable!("the default engine is native") };
        let nodes = graph.read();
        let mut linked_to = vec![false; nodes.len()];
        for node in 0..nodes.len() as u32 {
            assert!(nodes.neighbour_count(node, 0) > 0, "node {node} has no links");
            nodes.for_each_neighbour(node, 0, |n| linked_to[n as usize] = true);
        }
        let orphans = linked_to.iter().filter(|&&l| !l).count();
        assert!(orphans * 100 <= nodes.len(), "{orphans} nodes nobody links to");
    }
}
