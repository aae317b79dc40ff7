//! A generation: a model and the index built with it, the pair that answers a dataset's
//! searches, and everything that makes, stores and swaps one.
//!
//! A dataset's generation sits behind an `ArcSwap` in its [`DatasetState`]: a request takes one
//! snapshot and uses it from start to end, and a swap (a new model with the index built with it)
//! is one `store()` ([`promote`]). Every generation reads the output of the one shared trunk
//! (the embedder's network): the pretrained model its pooled features; a fine-tuned one maps them
//! through its trained head ([`Projection`]); one that also trained the backbone's last blocks
//! reads the activations entering the first of them and runs its own copy of those blocks
//! ([`Tail`]) before its head. So a query and the index it searches are always embedded by the
//! same model. The methods of [`Generation`] take that *model input* ([`ModelHandle::boundary`]
//! says which) and project it themselves.
//!
//! - [`dataset`]: the catalogue of live items and the dataset's serving state;
//! - [`store`]: trained models on disk (heads and their descriptions);
//! - [`build`]: building a generation aside and checking it before it serves;
//! - [`promote`]: putting a checked generation into service and recording it as active.

pub mod build;
pub mod dataset;
pub mod projection;
pub mod promote;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use build::{build_generation, check_generation};
pub use dataset::{Catalog, CatalogItem, DatasetState};
pub use promote::promote;

use crate::generation::projection::Projection;
use crate::index::{IndexParams, Neighbour, VectorIndex};
use crate::network::tail::Tail;

/// A model and the index built with it. Immutable but for appends of new
/// items, which are embedded by this same model.
pub struct Generation {
    pub model: ModelHandle,
    pub index: VectorIndex,
    /// Highest item `seq` whose vector is in `index`.
    covered_seq: AtomicU64,
    /// Set when the index changed since it was last saved.
    dirty: AtomicBool,
}

impl Generation {
    pub fn new(model: ModelHandle, index: VectorIndex, covered_seq: u64) -> Self {
        Self { model, index, covered_seq: AtomicU64::new(covered_seq), dirty: AtomicBool::new(false) }
    }

    /// An empty index for `model`, whose embeddings have `model.dim()` values.
    pub fn empty(model: ModelHandle, backbone_dim: usize, params: IndexParams) -> Self {
        let dim = model.dim(backbone_dim);
        Self::new(model, VectorIndex::new(dim, 1024, params), 0)
    }

    pub fn model_id(&self) -> &str {
        &self.model.id
    }

    /// Adds new items by their model inputs; `seq`s must be new to this index. Fails only when
    /// projecting them fails (a GPU, or inputs of the wrong size), before anything is added.
    pub fn append(&self, items: &[(u64, Vec<f32>)]) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        if self.model.is_pretrained() {
            self.index.insert_batch(items);
        } else {
            let inputs: Vec<&[f32]> = items.iter().map(|(_, f)| f.as_slice()).collect();
            let embedded: Vec<(u64, Vec<f32>)> =
                items.iter().map(|(seq, _)| *seq).zip(self.model.project_many(&inputs)?).collect();
            self.index.insert_batch(&embedded);
        }
        let top = items.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        self.covered_seq.fetch_max(top, Ordering::SeqCst);
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The records among `items` whose vectors this index lacks (a saved index lacks those added
    /// after it was saved). By the ids it holds, not by `covered_seq`: on PostgreSQL two processes
    /// adding items at once can commit a lower seq after a higher one, after a save.
    pub fn lacking(&self, items: &[crate::db::items::ItemRecord]) -> Vec<crate::db::items::ItemRecord> {
        let held = self.index.ids();
        items.iter().filter(|r| !held.contains(&r.seq)).cloned().collect()
    }

    pub fn covered_seq(&self) -> u64 {
        self.covered_seq.load(Ordering::SeqCst)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Searches for the `k` nearest live items passing the label filter;
    /// `query` is the query image's model input ([`ModelHandle::boundary`]).
    pub fn search(
        &self,
        catalog: &Catalog,
        query: &[f32],
        k: usize,
        label: Option<&str>,
        exclude: Option<u64>,
    ) -> anyhow::Result<Vec<(CatalogItem, f32)>> {
        let live = |seq: u64| catalog.get(seq).is_some_and(|item| label.is_none_or(|l| &*item.label == l));
        let keep = |seq: u64| Some(seq) != exclude && live(seq);
        let matching = catalog.matching(label) - usize::from(exclude.is_some_and(live));
        let query = self.model.project(query)?;
        let found: Vec<Neighbour> = self.index.search(&query, k, &keep, matching);
        let mut seen = std::collections::HashSet::new();
        Ok(found
            .into_iter()
            .filter(|n| seen.insert(n.id))
            .filter_map(|n| catalog.get(n.id).map(|item| (item.clone(), n.distance)))
            .take(k)
            .collect())
    }

    /// Saves the index and what it covers to `dir`, crash-safely: the new
    /// copy is written aside and renamed over the old one; then pushes it to the object store
    /// (where other processes load it from when they do not share this data dir).
    pub fn save(&self, dir: &Path, objects: &crate::storage::Objects) -> anyhow::Result<()> {
        let covered = self.covered_seq();
        self.dirty.store(false, Ordering::SeqCst);
        let result = crate::storage::replace_dir(dir, |tmp| {
            self.index.save(&tmp.join("hnsw"))?;
            let meta = IndexMeta { model_id: self.model.id.clone(), covered_seq: covered };
            crate::storage::write_atomic(&tmp.join(META_FILE), &serde_json::to_vec(&meta)?, true)?;
            Ok(())
        });
        if result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
        }
        result?;
        objects.push_dir(dir)
    }

    /// Loads the index of `model` saved by `save` in `dir`. The graph keeps the shape it was
    /// built with; it is searched with the `configured` search params, not the saved ones
    /// (a changed `ef_search` takes effect at the next start without a rebuild).
    pub fn load(dir: &Path, model: ModelHandle, configured: &IndexParams) -> anyhow::Result<Self> {
        let meta: IndexMeta = serde_json::from_slice(&std::fs::read(dir.join(META_FILE))?)
            .with_context(|| format!("bad {META_FILE} in {}", dir.display()))?;
        anyhow::ensure!(
            meta.model_id == model.id,
            "the index in {} was built with model {}, not {}",
            dir.display(),
            meta.model_id,
            model.id
        );
        let index = VectorIndex::load(&dir.join("hnsw"), configured)?;
        Ok(Self::new(model, index, meta.covered_seq))
    }
}

const META_FILE: &str = "meta.json";

#[derive(Debug, Serialize, Deserialize)]
struct IndexMeta {
    model_id: String,
    covered_seq: u64,
}

/// A model as a generation uses it: its id, its backbone, its head if it has one, and its
/// trained last blocks if it trained any (the trunk before them is the embedder's, shared).
#[derive(Clone)]
pub struct ModelHandle {
    pub id: String,
    pub backbone: String,
    pub head: Option<Arc<Projection>>,
    pub tail: Option<Arc<Tail>>,
    /// How much of the pretrained geometry a fine-tuned model keeps ([`PretrainedShare`]).
    pub pretrained: Option<PretrainedShare>,
}

/// A fine-tuned model's embedding keeps a share α of the pretrained model's: it is
/// `[√α·f ; √(1−α)·e]`, `f` the pretrained L2-normalised feature and `e` the trained embedding,
/// so squared distances are `α·|Δf|² + (1−α)·|Δe|²`. The trained embedding gathers each label
/// into one tight cluster; a query it puts into the wrong cluster finds no right item in its first
/// ten, where the pretrained features still find visually near items of its label. The blend keeps
/// those (docs/EXPERIMENTS.md measures α).
#[derive(Clone)]
pub struct PretrainedShare {
    pub share: f32,
    /// For a model that reads block inputs: the pretrained blocks from that block on (the
    /// embedder's own weights, not a copy), which give `f`.
    pub frozen: Option<Arc<Tail>>,
}

/// Block inputs projected per pass through a tail: bounds the activations held at once.
const TAIL_CHUNK: usize = 256;

impl ModelHandle {
    /// The pretrained backbone on its own.
    pub fn pretrained(backbone: &str) -> Self {
        Self { id: backbone.to_owned(), backbone: backbone.to_owned(), head: None, tail: None, pretrained: None }
    }

    pub fn is_pretrained(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }

    /// The block whose input activations this model reads (a trained tail's first block), or
    /// `None` for the backbone's pooled features.
    pub fn boundary(&self) -> Option<usize> {
        self.tail.as_ref().map(|tail| tail.first_block())
    }

    /// The search embedding of one model input: the features (or the block inputs run through
    /// the tail) projected by the head, or the features themselves for the pretrained model.
    pub fn project(&self, input: &[f32]) -> anyhow::Result<Vec<f32>> {
        Ok(self.project_many(&[input])?.remove(0))
    }

    /// [`ModelHandle::project`] of many rows (the head on the GPU when its bulk device is one).
    pub fn project_many(&self, inputs: &[&[f32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        if self.tail.is_none() && self.pretrained.is_none() {
            return self.project_features(inputs);
        }
        let mut out = Vec::with_capacity(inputs.len());
        for chunk in inputs.chunks(TAIL_CHUNK) {
            let trained = match &self.tail {
                Some(tail) => {
                    let features = tail.features(chunk)?;
                    self.project_features(&features.iter().map(Vec::as_slice).collect::<Vec<_>>())?
                }
                None => self.project_features(chunk)?,
            };
            match &self.pretrained {
                Some(blend) => {
                    let pretrained = match &blend.frozen {
                        Some(frozen) => frozen.features(chunk)?,
                        None => chunk.iter().map(|f| f.to_vec()).collect(),
                    };
                    let (a, b) = (blend.share.sqrt(), (1.0 - blend.share).sqrt());
                    out.extend(
                        pretrained
                            .iter()
                            .zip(trained)
                            .map(|(f, e)| f.iter().map(|x| a * x).chain(e.iter().map(|x| b * x)).collect::<Vec<f32>>()),
                    );
                }
                None => out.extend(trained),
            }
        }
        Ok(out)
    }

    fn project_features(&self, features: &[&[f32]]) -> anyhow::Result<Vec<Vec<f32>>> {
        match &self.head {
            Some(head) => head.project_many(features),
            None => Ok(features.iter().map(|f| f.to_vec()).collect()),
        }
    }

    /// Length of this model's embeddings, given the backbone's.
    pub fn dim(&self, backbone_dim: usize) -> usize {
        let trained = self.head.as_ref().map_or(backbone_dim, |h| h.out_dim());
        trained + if self.pretrained.is_some() { backbone_dim } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::EmbeddingHead;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// A blended model's embedding is `[√α·f ; √(1−α)·e]`: unit length, and squared distances
    /// are α times the pretrained ones plus (1 − α) times the trained ones.
    #[test]
    fn a_blended_embedding_mixes_squared_distances() -> anyhow::Result<()> {
        let head = EmbeddingHead::seeded(&VarMap::new(), 6, 3, 1, &Device::Cpu)?;
        let head = Arc::new(Projection::from_head(&head, &Device::Cpu)?);
        let trained =
            ModelHandle { id: "ft".into(), backbone: "b".into(), head: Some(head), tail: None, pretrained: None };
        let blended = ModelHandle { pretrained: Some(PretrainedShare { share: 0.3, frozen: None }), ..trained.clone() };
        assert_eq!((trained.dim(6), blended.dim(6)), (3, 9));
        let unit = |v: [f32; 6]| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.map(|x| x / n)
        };
        let (f, g) = (unit([1.0, 2.0, 0.0, -1.0, 0.5, 0.0]), unit([0.0, 1.0, 1.0, 0.0, -2.0, 1.0]));
        let squared = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
        let (bf, bg) = (blended.project(&f)?, blended.project(&g)?);
        assert!((bf.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-5);
        let expected = 0.3 * squared(&f, &g) + 0.7 * squared(&trained.project(&f)?, &trained.project(&g)?);
        assert!((squared(&bf, &bg) - expected).abs() < 1e-5, "{} vs {expected}", squared(&bf, &bg));
        Ok(())
    }
}
