//! The HNSW graph itself, whether built in this process or loaded from a dump.
//!
//! Owns [`Graph`]: a freshly built `Hnsw<'static, ..>`, or a loaded one held together with the
//! `HnswIo` it borrows from (`HnswIo::load_hnsw*` returns an `Hnsw<'b, ..>` tied to the
//! reloader, so the two live in one `self_cell` and are dropped together; nothing is leaked).
//! `Hnsw` synchronises internally (its insert and search take `&self`), so a `Graph` is shared
//! by reference between any number of inserting and searching threads.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Context, anyhow};
use hnsw_rs::prelude::{Hnsw, HnswIo};

use super::distance::UnitCosine;

/// The graph type: f32 embeddings, `1 − cosine` distance.
pub(crate) type UnitHnsw<'a> = Hnsw<'a, f32, UnitCosine>;

/// hnsw_rs caps the number of layers at 16.
pub(crate) const MAX_LAYERS: usize = 16;

self_cell::self_cell!(
    /// A reloaded graph and the reloader it borrows from.
    pub(crate) struct LoadedHnsw {
        owner: HnswIo,
        #[not_covariant]
        dependent: UnitHnsw,
    }
);

pub(crate) enum Graph {
    Built(UnitHnsw<'static>),
    Loaded(LoadedHnsw),
}

impl Graph {
    /// An empty graph ready for inserts.
    pub(crate) fn new(max_nb_connection: usize, capacity_hint: usize, ef_construction: usize) -> Self {
        Graph::Built(Hnsw::new(max_nb_connection, capacity_hint.max(1), MAX_LAYERS, ef_construction, UnitCosine))
    }

    /// Reloads `<dir>/<basename>.hnsw.{graph,data}`. hnsw_rs asserts on some malformed input
    /// instead of returning an error; such a panic is caught here and turned into an error
    /// (the caller verifies checksums first, so this is the second line of defence).
    pub(crate) fn load(dir: &Path, basename: &str) -> anyhow::Result<Self> {
        let io = HnswIo::new(dir, basename);
        let loaded = LoadedHnsw::try_new(io, |io| {
            match catch_unwind(AssertUnwindSafe(|| io.load_hnsw_with_dist(UnitCosine))) {
                Ok(result) => result.context("hnsw_rs could not reload the graph"),
                Err(_) => Err(anyhow!("hnsw_rs panicked while reloading the graph")),
            }
        })?;
        Ok(Graph::Loaded(loaded))
    }

    /// Runs `f` on the graph, whichever way it was made.
    pub(crate) fn with<R>(&self, f: impl for<'a> FnOnce(&UnitHnsw<'a>) -> R) -> R {
        match self {
            Graph::Built(hnsw) => f(hnsw),
            Graph::Loaded(loaded) => loaded.with_dependent(|_io, hnsw| f(hnsw)),
        }
    }
}
