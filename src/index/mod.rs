//! The nearest-neighbour index over one generation's embeddings.
//!
//! Owns [`VectorIndex`]: an HNSW graph over L2-normalised f32 embeddings with `1 − cosine`
//! distance, its search with a caller-supplied id filter (deleted items, label filter), an
//! exact scan where the graph cannot promise a full answer, and crash-safe save/load of the
//! graph itself (see [`persist`](self) for the on-disk layout).
//!
//! Concurrency: a `VectorIndex` is `Send + Sync` and every method takes `&self`. Any number
//! of threads may search while another inserts; batches are linked one at a time, and `save`
//! waits for a running batch and holds off the next while it writes, so a snapshot is never
//! half a batch. Inserts and builds are CPU-bound: call them from a dedicated thread or
//! `spawn_blocking`, never on the runtime.
//!
//! Why lookalike has its own graph (`graph`, `nodes`, `scratch`, `distance`) instead of the
//! `hnsw_rs` crate it started with: `bench/index.sh` measured hnsw_rs behind this same API at
//! 0.35× hnswlib's queries/s at recall@10 ≥ 0.95 and 2.4× its build time on Fashion-MNIST
//! (60,000 × 1280), and 0.06× and 6.5× on 200,000 synthetic 128-d vectors
//! (`docs/BENCHMARKS.md`). The time went to its search loop (a hashed visited set, a lock and
//! a reference count per point, allocations per query) and to distances compiled for baseline
//! x86-64. The graph here follows the paper and hnswlib's layout: vectors in one contiguous
//! array, neighbour lists as fixed-capacity `u32` arrays with a mutex per node, an
//! epoch-stamped visited array and heaps reused per thread (a query allocates only its
//! answer), and a dot product that picks AVX-512 or AVX2 at run time.
//!
//! Exact scans read the same contiguous vectors the graph searches: one dot product per
//! stored point that passes the filter, no second copy.

mod distance;
mod graph;
mod nodes;
mod persist;
mod scratch;
#[cfg(test)]
mod tests_against_brute_force;

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub use distance::unit_cosine_distance;
use graph::Graph;

/// When a filter lets through at most this many times `ef` stored points, an exact scan
/// (one dot product per matching point) costs about what a graph search does, and the
/// graph search would have to wander far to find that many matches: answer exactly.
const EXACT_MATCHING_PER_EF: usize = 8;

/// The largest `max_nb_connection` accepted (lists are fixed arrays of `2M` slots per node).
const MAX_CONNECTIONS: usize = 256;

/// How the graph is built and searched. Every field trades speed for recall.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IndexParams {
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
        IndexParams { max_nb_connection: 16, ef_construction: 200, ef_search: 64, exact_below: 2_000 }
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
    graph: Graph,
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
        let graph = Graph::new(dim, params.max_nb_connection, params.ef_construction, capacity_hint);
        VectorIndex::from_parts(dim, params, graph)
    }

    fn from_parts(dim: usize, params: IndexParams, graph: Graph) -> Self {
        VectorIndex { dim, params, graph, write_gate: Mutex::new(()) }
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
        self.graph.insert_batch(items);
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
            let mut found = self.graph.search(query, k, ef, None);
            found.retain(|n| filter(n.id));
            if found.len() >= wanted {
                found.sort_by(by_distance_then_id);
                found.truncate(wanted);
                return found;
            }
        }
        let mut found = self.graph.search(query, k, ef, Some(filter));
        if found.len() < wanted {
            return self.exact_search(query, wanted, filter);
        }
        found.sort_by(by_distance_then_id);
        found.truncate(wanted);
        found
    }

    /// The `wanted` nearest points passing `filter`, by scanning every stored vector.
    fn exact_search(&self, query: &[f32], wanted: usize, filter: &(dyn Fn(u64) -> bool + Sync)) -> Vec<Neighbour> {
        let nodes = self.graph.read();
        let mut hits: Vec<Neighbour> = nodes
            .ids
            .iter()
            .zip(nodes.vectors.chunks_exact(self.dim))
            .filter(|(id, _)| filter(**id))
            .map(|(&id, vector)| Neighbour { id, distance: unit_cosine_distance(query, vector) })
            .collect();
        drop(nodes);
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
    /// built, not rebuilt. A missing, partial or corrupted directory is an error. The
    /// params are those it was saved with; see [`with_search_params`](Self::with_search_params).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        persist::load(dir)
    }

    /// The index with the search-time params (`ef_search`, `exact_below`) of `configured`:
    /// a loaded index keeps the shape it was built with (M, `ef_construction`), but how it
    /// is searched follows the current configuration.
    pub fn with_search_params(mut self, configured: &IndexParams) -> Self {
        self.params.ef_search = configured.ef_search;
        self.params.exact_below = configured.exact_below;
        self
    }

    /// How many points are stored (deleted ones included: deletion is the caller's filter).
    pub fn len(&self) -> usize {
        self.graph.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    #[test]
    fn index_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<VectorIndex>();
    }

    #[test]
    fn empty_index_and_zero_k_return_nothing() {
        let index = VectorIndex::new(3, 10, IndexParams::default());
        assert!(index.is_empty());
        assert!(index.search(&[1.0, 0.0, 0.0], 5, &|_| true, 0).is_empty());
        index.insert_batch(&[(7, unit(vec![1.0, 0.0, 0.0]))]);
        assert!(index.search(&[1.0, 0.0, 0.0], 0, &|_| true, 1).is_empty());
        let hits = index.search(&[1.0, 0.0, 0.0], 5, &|_| true, 1);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, 7);
        assert!(hits[0].distance.abs() < 1e-6);
    }

    #[test]
    fn params_deserialize_with_defaults_for_missing_fields() {
        let params: IndexParams = serde_json::from_str(r#"{"ef_search": 100}"#).expect("valid params");
        assert_eq!(params.ef_search, 100);
        assert_eq!(params.max_nb_connection, IndexParams::default().max_nb_connection);
    }
}
