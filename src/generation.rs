//! A dataset's serving state: its catalogue of live items and its current
//! generation, the `(model, index)` pair that answers searches.
//!
//! The generation sits behind an `ArcSwap`: a request takes one snapshot and
//! uses it from start to end, and a swap (a new model with the index built
//! with it) is one `store()`. Every generation reads the same backbone
//! features (the embedder's output); a fine-tuned one maps them through its
//! trained head ([`Projection`]) before they touch its index, so a query and
//! the index it searches are always embedded by the same model. The methods
//! of [`Generation`] take backbone features and project them themselves. The catalogue maps index ids (`seq`) to items;
//! an id missing from it (a deleted item) is never returned, whatever the
//! index still holds. Readers take the catalogue's read lock briefly; ingest
//! and item writes take the write lock briefly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::db::items::ItemRecord;
use crate::index::{IndexParams, Neighbour, VectorIndex};
use crate::model::projection::Projection;

/// One live item as search needs it.
#[derive(Debug, Clone)]
pub struct CatalogItem {
    pub item_id: Arc<str>,
    pub label: Arc<str>,
}

/// The live items of a dataset, by index id.
#[derive(Debug, Default)]
pub struct Catalog {
    items: HashMap<u64, CatalogItem>,
    by_item_id: HashMap<Arc<str>, u64>,
    label_counts: HashMap<Arc<str>, usize>,
}

impl Catalog {
    pub fn insert(&mut self, seq: u64, item_id: &str, label: &str) {
        let item_id: Arc<str> = Arc::from(item_id);
        let label = match self.label_counts.get_key_value(label) {
            Some((known, _)) => known.clone(),
            None => Arc::from(label),
        };
        *self.label_counts.entry(label.clone()).or_default() += 1;
        self.by_item_id.insert(item_id.clone(), seq);
        if let Some(old) = self.items.insert(seq, CatalogItem { item_id, label }) {
            self.forget_label(&old.label);
        }
    }

    pub fn remove(&mut self, item_id: &str) -> Option<u64> {
        let seq = self.by_item_id.remove(item_id)?;
        if let Some(old) = self.items.remove(&seq) {
            self.forget_label(&old.label);
        }
        Some(seq)
    }

    fn forget_label(&mut self, label: &str) {
        if let Some(count) = self.label_counts.get_mut(label) {
            *count -= 1;
            if *count == 0 {
                self.label_counts.remove(label);
            }
        }
    }

    pub fn get(&self, seq: u64) -> Option<&CatalogItem> {
        self.items.get(&seq)
    }

    pub fn seq_of(&self, item_id: &str) -> Option<u64> {
        self.by_item_id.get(item_id).copied()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Index ids of all live items, in no particular order.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.items.keys().copied()
    }

    /// How many live items carry `label` (all items when `None`).
    pub fn matching(&self, label: Option<&str>) -> usize {
        match label {
            Some(label) => self.label_counts.get(label).copied().unwrap_or(0),
            None => self.items.len(),
        }
    }
}

/// A model and the index built with it. Immutable but for appends of new
/// items, which are embedded by this same model.
pub struct Generation {
    pub model_id: String,
    /// The backbone whose features this generation reads.
    pub backbone: String,
    /// The trained head; `None` for the pretrained backbone, whose features are the embeddings.
    pub head: Option<Arc<Projection>>,
    pub index: VectorIndex,
    /// Highest item `seq` whose vector is in `index`.
    covered_seq: AtomicU64,
    /// Set when the index changed since it was last saved.
    dirty: AtomicBool,
}

impl Generation {
    pub fn new(model: ModelHandle, index: VectorIndex, covered_seq: u64) -> Self {
        Self {
            model_id: model.id,
            backbone: model.backbone,
            head: model.head,
            index,
            covered_seq: AtomicU64::new(covered_seq),
            dirty: AtomicBool::new(false),
        }
    }

    /// An empty index for `model`, whose embeddings have `model.dim()` values.
    pub fn empty(model: ModelHandle, backbone_dim: usize, params: IndexParams) -> Self {
        let dim = model.dim(backbone_dim);
        Self::new(model, VectorIndex::new(dim, 1024, params), 0)
    }

    /// The model this generation embeds with.
    pub fn model(&self) -> ModelHandle {
        ModelHandle { id: self.model_id.clone(), backbone: self.backbone.clone(), head: self.head.clone() }
    }

    /// The search embedding of a backbone feature vector.
    pub fn embed(&self, feature: &[f32]) -> Vec<f32> {
        match &self.head {
            Some(head) => head.project(feature),
            None => feature.to_vec(),
        }
    }

    /// Adds new items by their backbone features; `seq`s must be new to this index.
    pub fn append(&self, items: &[(u64, Vec<f32>)]) {
        if items.is_empty() {
            return;
        }
        match &self.head {
            Some(head) => {
                let features: Vec<&[f32]> = items.iter().map(|(_, f)| f.as_slice()).collect();
                let embedded: Vec<(u64, Vec<f32>)> =
                    items.iter().map(|(seq, _)| *seq).zip(head.project_many(&features)).collect();
                self.index.insert_batch(&embedded);
            }
            None => self.index.insert_batch(items),
        }
        let top = items.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        self.covered_seq.fetch_max(top, Ordering::SeqCst);
        self.dirty.store(true, Ordering::SeqCst);
    }

    pub fn covered_seq(&self) -> u64 {
        self.covered_seq.load(Ordering::SeqCst)
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::SeqCst)
    }

    /// Searches for the `k` nearest live items passing the label filter;
    /// `query` is the query image's backbone feature vector.
    pub fn search(
        &self,
        catalog: &Catalog,
        query: &[f32],
        k: usize,
        label: Option<&str>,
        exclude: Option<u64>,
    ) -> Vec<(CatalogItem, f32)> {
        let live = |seq: u64| catalog.get(seq).is_some_and(|item| label.is_none_or(|l| &*item.label == l));
        let keep = |seq: u64| Some(seq) != exclude && live(seq);
        let matching = catalog.matching(label) - usize::from(exclude.is_some_and(live));
        let query = self.embed(query);
        let found: Vec<Neighbour> = self.index.search(&query, k, &keep, matching);
        let mut seen = std::collections::HashSet::new();
        found
            .into_iter()
            .filter(|n| seen.insert(n.id))
            .filter_map(|n| catalog.get(n.id).map(|item| (item.clone(), n.distance)))
            .take(k)
            .collect()
    }

    /// Saves the index and what it covers to `dir`, crash-safely: the new
    /// copy is written aside and renamed over the old one.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let covered = self.covered_seq();
        self.dirty.store(false, Ordering::SeqCst);
        let parent = dir.parent().context("index dir has no parent")?;
        std::fs::create_dir_all(parent)?;
        let tmp = parent.join(format!(".save-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            std::fs::create_dir_all(&tmp)?;
            self.index.save(&tmp.join("hnsw"))?;
            let meta = IndexMeta { model_id: self.model_id.clone(), covered_seq: covered };
            crate::storage::write_atomic(&tmp.join(META_FILE), &serde_json::to_vec(&meta)?, true)?;
            let old = parent.join(format!(".old-{}", uuid::Uuid::new_v4().simple()));
            if dir.exists() {
                std::fs::rename(dir, &old)?;
            }
            std::fs::rename(&tmp, dir)?;
            crate::storage::remove_dir_if_exists(&old)?;
            anyhow::Ok(())
        })();
        if result.is_err() {
            self.dirty.store(true, Ordering::SeqCst);
            let _ = crate::storage::remove_dir_if_exists(&tmp);
        }
        result
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

/// A model as a generation uses it: its id, its backbone, and its head if it has one.
#[derive(Clone)]
pub struct ModelHandle {
    pub id: String,
    pub backbone: String,
    pub head: Option<Arc<Projection>>,
}

impl ModelHandle {
    /// The pretrained backbone on its own.
    pub fn pretrained(backbone: &str) -> Self {
        Self { id: backbone.to_owned(), backbone: backbone.to_owned(), head: None }
    }

    /// Length of this model's embeddings, given the backbone's.
    pub fn dim(&self, backbone_dim: usize) -> usize {
        self.head.as_ref().map_or(backbone_dim, |h| h.out_dim())
    }
}

/// A dataset being served.
pub struct DatasetState {
    pub name: String,
    pub catalog: RwLock<Catalog>,
    pub generation: ArcSwap<Generation>,
    /// Held by whoever adds items to the current generation (ingest, item
    /// uploads) and by a swap, so that no item is added to a generation
    /// that is being replaced: a swap adds what the new one lacks under it.
    pub writer: Mutex<()>,
    index_root: PathBuf,
}

impl DatasetState {
    pub fn new(name: &str, index_root: &Path, generation: Generation) -> Self {
        Self {
            name: name.to_owned(),
            catalog: RwLock::new(Catalog::default()),
            generation: ArcSwap::from_pointee(generation),
            writer: Mutex::new(()),
            index_root: index_root.join(name),
        }
    }

    /// Where the index of `model_id` is saved.
    pub fn index_dir(&self, model_id: &str) -> PathBuf {
        self.index_root.join(model_id)
    }

    /// The folder of all this dataset's indexes.
    pub fn index_root(&self) -> &Path {
        &self.index_root
    }

    pub fn fill_catalog(&self, items: &[ItemRecord]) {
        let mut catalog = self.catalog.write().unwrap_or_else(|e| e.into_inner());
        for record in items {
            catalog.insert(record.seq, &record.item.item_id, &record.item.label);
        }
    }

    /// Saves the current generation when it changed since its last save.
    pub fn save_if_dirty(&self) -> anyhow::Result<bool> {
        let generation = self.generation.load_full();
        if !generation.is_dirty() {
            return Ok(false);
        }
        generation.save(&self.index_dir(&generation.model_id))?;
        Ok(true)
    }
}
