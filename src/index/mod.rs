//! The nearest-neighbour index over one generation's embeddings.
//!
//! Owns [`VectorIndex`]: an HNSW graph (`hnsw_rs`) over L2-normalised f32 embeddings with
//! `1 − cosine` distance, its search with a caller-supplied id filter (deleted items, label
//! filter), an exact scan where the graph cannot promise a full answer, and crash-safe
//! save/load of the graph itself (see [`persist`](self) for the on-disk layout).
//!
//! Concurrency: a `VectorIndex` is `Send + Sync` and every method takes `&self`. Any number
//! of threads may search while others insert; `save` waits for running inserts and blocks
//! new ones while it writes, so a snapshot is never half a batch. Inserts and builds are
//! CPU-bound: call them from a dedicated thread or `spawn_blocking`, never on the runtime.
//!
//! Exact scans read the vectors back from hnsw_rs's point store, layer by layer, instead of
//! keeping a second flat copy: the vectors are by far the largest part of the index
//! (60,000 × 1280 f32 = 307 MB), a copy would double that, and the graph dump already holds
//! them, so a loaded index needs nothing more. Each layer is read under one read guard
//! (hnsw_rs's whole-index iterator re-locks recursively, which can deadlock against a
//! waiting insert). A full scan costs one dot product per stored point that passes the filter.

mod distance;
mod graph;
mod persist;

use std::cmp::Ordering;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::RwLock;

use hnsw_rs::prelude::FilterT;
use serde::{Deserialize, Serialize};

pub use distance::unit_cosine_distance;
use graph::{Graph, MAX_LAYERS};

// Ids are the caller's u64s, stored as hnsw_rs's usize data ids: lossless only on 64-bit.
const _: () = assert!(usize::BITS >= u64::BITS);

/// When a filter lets through at most this many times `ef` stored points, an exact scan
/// (one dot product per matching point) costs about what a graph search does, and the
/// graph search would have to wander far to find that many matches: answer exactly.
const EXACT_MATCHING_PER_EF: usize = 8;

/// hnsw_rs's filtered search can empty its result heap when `ef` is 1; never go below this.
const MIN_EF: usize = 2;

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
    /// Inserts hold it shared, `save` exclusively: a dump never sees half a batch.
    write_gate: RwLock<()>,
}

impl VectorIndex {
    /// An empty index for `dim`-dimensional vectors; `capacity_hint` pre-sizes its tables.
    ///
    /// # Panics
    /// If `dim` is 0 or `params.max_nb_connection` is not in `1..=256` (configuration is
    /// validated before it gets here).
    pub fn new(dim: usize, capacity_hint: usize, params: IndexParams) -> Self {
        assert!(dim > 0, "an index needs a positive dimension");
        assert!((1..=256).contains(&params.max_nb_connection), "max_nb_connection must be in 1..=256");
        let graph = Graph::new(params.max_nb_connection, capacity_hint, params.ef_construction);
        VectorIndex::from_parts(dim, params, graph)
    }

    fn from_parts(dim: usize, params: IndexParams, graph: Graph) -> Self {
        VectorIndex { dim, params, graph, write_gate: RwLock::new(()) }
    }

    /// Inserts a batch in parallel (rayon). Ids are the caller's and must be unique across
    /// the index: hnsw_rs does not deduplicate, so an id inserted twice is stored twice.
    ///
    /// # Panics
    /// If a vector's length is not [`dim`](Self::dim).
    pub fn insert_batch(&self, items: &[(u64, Vec<f32>)]) {
        for (id, vector) in items {
            assert_eq!(vector.len(), self.dim, "vector for id {id} has the wrong dimension");
        }
        let batch: Vec<(&Vec<f32>, usize)> = items.iter().map(|(id, vector)| (vector, *id as usize)).collect();
        let _shared = self.write_gate.read().unwrap_or_else(|e| e.into_inner());
        self.graph.with(|hnsw| hnsw.parallel_insert(&batch));
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
        let ef = self.params.ef_search.max(k).max(MIN_EF);
        let scan_is_cheaper = matching <= ef.saturating_mul(EXACT_MATCHING_PER_EF);
        if stored < self.params.exact_below || scan_is_cheaper {
            return self.exact_search(query, wanted, filter);
        }
        if matching >= stored {
            // Every stored id should pass: search without the filter, because hnsw_rs stops a
            // layer search early only when it has none (about 1.5× the queries/s at the same
            // recall, `bench/index.sh`). The answer is still filtered, so a caller whose count
            // is off gets a correct answer from the filtered search below instead.
            if let Some(mut found) = self.graph_search(query, k, ef, None) {
                found.retain(|n| filter(n.id));
                if found.len() >= wanted {
                    found.sort_by(by_distance_then_id);
                    found.truncate(wanted);
                    return found;
                }
            }
        }
        match self.graph_search(query, k, ef, Some(filter)) {
            Some(mut found) if found.len() >= wanted => {
                found.sort_by(by_distance_then_id);
                found.truncate(wanted);
                found
            }
            _ => self.exact_search(query, wanted, filter),
        }
    }

    /// The graph's answer, or `None` if hnsw_rs panicked (it asserts on internal states;
    /// the exact scan is the fallback, never a crashed request).
    fn graph_search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Option<Vec<Neighbour>> {
        let by_data_id = |id: &usize| filter.is_none_or(|f| f(*id as u64));
        let filter_t: Option<&dyn FilterT> = filter.map(|_| &by_data_id as &dyn FilterT);
        let result =
            catch_unwind(AssertUnwindSafe(|| self.graph.with(|hnsw| hnsw.search_filter(query, k, ef, filter_t))));
        match result {
            Ok(found) => {
                Some(found.into_iter().map(|n| Neighbour { id: n.d_id as u64, distance: n.distance }).collect())
            }
            Err(_) => {
                tracing::warn!("hnsw search panicked; answering with an exact scan");
                None
            }
        }
    }

    /// The `wanted` nearest points passing `filter`, by scanning every stored vector.
    fn exact_search(&self, query: &[f32], wanted: usize, filter: &(dyn Fn(u64) -> bool + Sync)) -> Vec<Neighbour> {
        let mut hits = Vec::new();
        self.graph.with(|hnsw| {
            let points = hnsw.get_point_indexation();
            for layer in 0..MAX_LAYERS {
                // Checked first: the layer iterator indexes the layer table unchecked.
                if points.get_layer_nb_point(layer) == 0 {
                    continue;
                }
                for point in points.get_layer_iterator(layer) {
                    let id = point.get_origin_id() as u64;
                    if filter(id) {
                        hits.push(Neighbour { id, distance: unit_cosine_distance(query, point.get_v()) });
                    }
                }
            }
        });
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
        let _exclusive = self.write_gate.write().unwrap_or_else(|e| e.into_inner());
        persist::save(self, dir)
    }

    /// Loads an index saved by [`save`](Self::save): the graph is read back as it was
    /// built, not rebuilt. A missing, partial or corrupted directory is an error.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        persist::load(dir)
    }

    /// How many points are stored (deleted ones included: deletion is the caller's filter).
    pub fn len(&self) -> usize {
        self.graph.with(|hnsw| hnsw.get_nb_point())
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
