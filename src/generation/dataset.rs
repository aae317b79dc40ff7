//! A dataset being served ([`DatasetState`]): its catalogue of live items ([`Catalog`]) and its
//! current [`Generation`] behind an `ArcSwap`.
//!
//! The catalogue maps index ids (`seq`) to items; an id missing from it (a deleted item) is never
//! returned, whatever the index still holds. Readers take the catalogue's read lock briefly;
//! ingest and item writes take the write lock briefly. Whoever adds items to the current
//! generation, or replaces it, holds [`DatasetState::writer`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;

use super::Generation;
use crate::db::items::ItemRecord;

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
    pub fn save_if_dirty(&self, objects: &crate::storage::Objects) -> anyhow::Result<bool> {
        let generation = self.generation.load_full();
        if !generation.is_dirty() {
            return Ok(false);
        }
        generation.save(&self.index_dir(generation.model_id()), objects)?;
        Ok(true)
    }
}
