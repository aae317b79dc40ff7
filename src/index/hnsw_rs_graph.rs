//! The `hnsw_rs` engine: the HNSW graph of the `hnsw_rs` crate, the engine the service was
//! first specified on, selectable with `index.engine = "hnsw_rs"` (lookalike's own graph,
//! `native`, stays the default: `bench/index.sh` measures it several times faster).
//!
//! Owns [`HnswRsGraph`]: inserting, searching with an id filter, visiting every stored point
//! (exact scans), and hnsw_rs's own dump and reload. `Hnsw` synchronises internally (its
//! insert and search take `&self`), so a `HnswRsGraph` is shared by reference between any
//! number of inserting and searching threads; `VectorIndex` still serialises batches and
//! keeps them out of a dump.
//!
//! Save and load use hnsw_rs's dump (`<basename>.hnsw.graph` and `.hnsw.data`), not a copy
//! of the vectors rebuilt on load: reloading reads the graph back as it was built. Measured
//! on 20,000 × 128 random unit vectors on this project's busy 2-core machine (`cargo test
//! --test index -- --ignored load_is_faster`, `TIMING_N=20000 TIMING_DIM=128`): reload
//! 0.48 s (checksums included) against a rebuild of 38 s; a rebuild also grows with the
//! index's size times the cost of an insert, a reload only with its bytes on disk (26 MB
//! here). Two costs come with the dump, both handled here:
//! - hnsw_rs asserts (panics) on some malformed files instead of failing: `persist` checks
//!   every file's size and sha256 first, and a panic left is caught and made an error;
//! - the reloaded `Hnsw<'b, ..>` borrows the `HnswIo` that read it, although without memory
//!   mapping (never turned on here) it keeps nothing from it. The reloader (a path, a name,
//!   a counter: about a hundred bytes, no open file) is leaked per load so that the graph is
//!   `'static`, rather than tying the two together with `unsafe` or another crate.
//!
//! Distances are [`UnitCosine`], `1 − ⟨a, b⟩` with lookalike's run-time-dispatched dot
//! product (`distance`), so the two engines compare the graphs, not the arithmetic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, anyhow, ensure};
use hnsw_rs::prelude::{AnnT, Distance, FilterT, Hnsw, HnswIo};

use super::Neighbour;
use super::distance::{clamp_distance, dot};

/// hnsw_rs keeps at most 16 layers.
const MAX_LAYERS: usize = 16;

/// hnsw_rs's filtered search can empty its result heap when `ef` is 1; never go below this.
const MIN_EF: usize = 2;

/// Batches smaller than this are inserted on the calling thread.
const PARALLEL_BATCH: usize = 64;

/// The basename of the dump's two files inside an index directory.
const DUMP_BASENAME: &str = "graph";

/// `1 − ⟨a, b⟩` for L2-normalised vectors, as the native graph computes it. Its type name
/// is written into every dump and checked on reload, so renaming or moving it makes older
/// dumps fail to load (the service then rebuilds from its feature cache).
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitCosine;

impl Distance<f32> for UnitCosine {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        // Clamped: hnsw_rs asserts that distances are not negative, and a vector compared
        // with itself can round to just below 0.
        clamp_distance(1.0 - dot(va, vb))
    }
}

type UnitHnsw = Hnsw<'static, f32, UnitCosine>;

pub(super) struct HnswRsGraph {
    hnsw: UnitHnsw,
}

impl HnswRsGraph {
    pub(super) fn new(m: usize, ef_construction: usize, capacity: usize) -> Self {
        let hnsw = Hnsw::new(m, capacity.max(1), MAX_LAYERS, ef_construction.max(1), UnitCosine);
        HnswRsGraph { hnsw }
    }

    pub(super) fn len(&self) -> usize {
        self.hnsw.get_nb_point()
    }

    /// Adds `items`, in parallel on the current rayon pool when the batch is large.
    pub(super) fn insert_batch(&self, items: &[(u64, Vec<f32>)]) {
        if items.len() < PARALLEL_BATCH {
            for (id, vector) in items {
                self.hnsw.insert_slice((vector.as_slice(), *id as usize));
            }
            return;
        }
        let batch: Vec<(&Vec<f32>, usize)> = items.iter().map(|(id, vector)| (vector, *id as usize)).collect();
        self.hnsw.parallel_insert(&batch);
    }

    /// The `k` nearest points found at beam width `max(ef, k)` among those `filter` accepts,
    /// or `None` if hnsw_rs panicked (it asserts on internal states; the caller falls back
    /// to an exact scan instead of failing the request).
    pub(super) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Option<Vec<Neighbour>> {
        let by_data_id = |id: &usize| filter.is_none_or(|f| f(*id as u64));
        let filter_t: Option<&dyn FilterT> = filter.map(|_| &by_data_id as &dyn FilterT);
        let ef = ef.max(k).max(MIN_EF);
        let found = catch_unwind(AssertUnwindSafe(|| self.hnsw.search_filter(query, k, ef, filter_t)));
        match found {
            Ok(found) => {
                Some(found.into_iter().map(|n| Neighbour { id: n.d_id as u64, distance: n.distance }).collect())
            }
            Err(_) => {
                tracing::warn!("hnsw_rs search panicked; answering with an exact scan");
                None
            }
        }
    }

    /// Calls `visit` with every stored point's caller id and vector, layer by layer. Each
    /// layer is read under one read guard: hnsw_rs's whole-index iterator locks recursively,
    /// which can deadlock against a waiting insert.
    pub(super) fn for_each_point(&self, mut visit: impl FnMut(u64, &[f32])) {
        let points = self.hnsw.get_point_indexation();
        for layer in 0..MAX_LAYERS {
            // Checked first: the layer iterator indexes the layer table unchecked.
            if points.get_layer_nb_point(layer) == 0 {
                continue;
            }
            for point in points.get_layer_iterator(layer) {
                visit(point.get_origin_id() as u64, point.get_v());
            }
        }
    }

    /// Dumps the graph into the directory `dir` (which exists and holds no dump yet) and
    /// returns the names of the files written.
    pub(super) fn dump(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        // hnsw_rs panics instead of failing when it cannot write its files.
        let basename = catch_unwind(AssertUnwindSafe(|| self.hnsw.file_dump(dir, DUMP_BASENAME)))
            .map_err(|_| anyhow!("hnsw_rs panicked while dumping the graph"))?
            .context("hnsw_rs could not dump the graph")?;
        ensure!(basename == DUMP_BASENAME, "hnsw_rs dumped to {basename:?} instead of {DUMP_BASENAME:?}");
        Ok(dump_files().to_vec())
    }

    /// Reloads the dump that [`dump`](Self::dump) wrote into `dir`. The caller has checked
    /// the files' checksums; a panic inside hnsw_rs's reader is still caught here.
    pub(super) fn load(dir: &Path) -> anyhow::Result<Self> {
        let reloader: &'static HnswIo = Box::leak(Box::new(HnswIo::new(dir, DUMP_BASENAME)));
        let hnsw = catch_unwind(AssertUnwindSafe(|| reloader.load_hnsw_with_dist(UnitCosine)))
            .map_err(|_| anyhow!("hnsw_rs panicked while reloading the graph"))?
            .context("hnsw_rs could not reload the graph")?;
        Ok(HnswRsGraph { hnsw })
    }

    /// The dimension of the stored vectors, 0 while empty.
    pub(super) fn dim(&self) -> usize {
        self.hnsw.get_point_indexation().get_data_dimension()
    }
}

/// The files a dump consists of, graph first.
pub(super) fn dump_files() -> [String; 2] {
    [format!("{DUMP_BASENAME}.hnsw.graph"), format!("{DUMP_BASENAME}.hnsw.data")]
}
