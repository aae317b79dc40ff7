//! P×K batch sampling for online triplet mining, with optional injection of offline-mined positives.
//!
//! A [`PkSampler`] is built once from every item's label and yields the batches of an epoch as
//! item indices. Each batch holds `labels_per_batch` (P) distinct labels and exactly
//! `items_per_label` (K) items of each, grouped by label. Only labels with at least two items are
//! ever drawn, so every item in a batch has a positive. Labels are drawn uniformly (not in
//! proportion to their size), items uniformly within a label: without replacement, except that a
//! label with fewer than K items repeats some of them. An epoch is `max(1, eligible items / (P·K))`
//! batches; it does not promise that every item is seen.
//!
//! # Injection (`offline+online` mode)
//!
//! Given `anchor item → mined hard positive item`, each label of a batch first draws up to `K / 2`
//! (rounded down) anchors among its items that have a mined positive, and brings each anchor's
//! positive along; the remaining slots of the label's K are filled as without injection. Since
//! `2 · (K / 2) ≤ K`, batches stay exactly P×K. The pairs brought in are listed in
//! [`PkBatch::injected_pairs`]; other items of the batch may have mined positives that are not in it.
//!
//! Batches are a pure function of (seed, epoch number): the same seed gives the same batches, a
//! resumed run can regenerate any epoch, and the sampler is read-only after construction (share
//! it freely; it uses no interior state).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::rng::SeededRng;

/// The shape of a P×K batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkShape {
    /// P: distinct labels per batch. More labels give more (and harder) negatives per anchor.
    pub labels_per_batch: usize,
    /// K: items per label, at least 2. More items give more positives per anchor.
    pub items_per_label: usize,
}

/// One training batch: item indices grouped by label, their labels, and the injected pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkBatch {
    /// Indices into the item list the sampler was built from; P·K of them.
    pub items: Vec<usize>,
    /// `labels[i]` is the label of `items[i]`.
    pub labels: Vec<u32>,
    /// `(anchor, mined positive)` item pairs brought in together; empty without injection.
    pub injected_pairs: Vec<(usize, usize)>,
}

/// Why a sampler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SamplerError {
    #[error("items_per_label must be at least 2 (got {0}): an anchor needs a positive")]
    TooFewItemsPerLabel(usize),
    #[error("a batch needs {needed} labels with at least 2 items each, but only {eligible} have")]
    TooFewLabels { needed: usize, eligible: usize },
    #[error("mined pair ({anchor}, {positive}) refers to an item outside the {items} items")]
    InjectedOutOfRange { anchor: usize, positive: usize, items: usize },
    #[error("mined pair ({anchor}, {positive}) is not two distinct items of the same label")]
    InjectedNotPositive { anchor: usize, positive: usize },
}

/// The items of one label that can be drawn (a label with at least two items).
#[derive(Debug, Clone)]
struct LabelGroup {
    label: u32,
    items: Vec<usize>,
    /// The items of `items` that have a mined positive, ascending.
    with_mined_positive: Vec<usize>,
}

/// Draws P×K batches; see the module docs for the exact rules.
#[derive(Debug, Clone)]
pub struct PkSampler {
    shape: PkShape,
    seed: u64,
    groups: Vec<LabelGroup>,
    /// `0..groups.len()`, the pool labels are drawn from.
    group_ids: Vec<usize>,
    injected: HashMap<usize, usize>,
    batches_per_epoch: usize,
}

impl PkSampler {
    /// A sampler over items whose labels are `item_labels` (item `i` has label `item_labels[i]`).
    pub fn new(item_labels: &[u32], shape: PkShape, seed: u64) -> Result<Self, SamplerError> {
        Self::with_injected(item_labels, shape, seed, HashMap::new())
    }

    /// A sampler that also brings each drawn anchor's mined positive into its batch.
    pub fn with_injected(
        item_labels: &[u32],
        shape: PkShape,
        seed: u64,
        injected: HashMap<usize, usize>,
    ) -> Result<Self, SamplerError> {
        if shape.items_per_label < 2 {
            return Err(SamplerError::TooFewItemsPerLabel(shape.items_per_label));
        }
        for (&anchor, &positive) in &injected {
            let (Some(anchor_label), Some(positive_label)) = (item_labels.get(anchor), item_labels.get(positive))
            else {
                return Err(SamplerError::InjectedOutOfRange { anchor, positive, items: item_labels.len() });
            };
            if anchor == positive || anchor_label != positive_label {
                return Err(SamplerError::InjectedNotPositive { anchor, positive });
            }
        }
        let mut by_label: HashMap<u32, Vec<usize>> = HashMap::new();
        for (item, &label) in item_labels.iter().enumerate() {
            by_label.entry(label).or_default().push(item);
        }
        let mut groups: Vec<LabelGroup> = by_label
            .into_iter()
            .filter(|(_, items)| items.len() >= 2)
            .map(|(label, items)| {
                let with_mined_positive = items.iter().copied().filter(|item| injected.contains_key(item)).collect();
                LabelGroup { label, items, with_mined_positive }
            })
            .collect();
        groups.sort_unstable_by_key(|group| group.label);
        if shape.labels_per_batch == 0 || groups.len() < shape.labels_per_batch {
            return Err(SamplerError::TooFewLabels { needed: shape.labels_per_batch.max(1), eligible: groups.len() });
        }
        let eligible_items: usize = groups.iter().map(|group| group.items.len()).sum();
        let batches_per_epoch = (eligible_items / (shape.labels_per_batch * shape.items_per_label)).max(1);
        let group_ids = (0..groups.len()).collect();
        Ok(Self { shape, seed, groups, group_ids, injected, batches_per_epoch })
    }

    /// How many batches [`PkSampler::epoch`] returns.
    pub fn batches_per_epoch(&self) -> usize {
        self.batches_per_epoch
    }

    /// The batches of epoch number `epoch`, a pure function of the seed and `epoch`.
    pub fn epoch(&self, epoch: u64) -> Vec<PkBatch> {
        let mut rng = SeededRng::for_stream(self.seed, epoch);
        (0..self.batches_per_epoch).map(|_| self.batch(&mut rng)).collect()
    }

    fn batch(&self, rng: &mut SeededRng) -> PkBatch {
        let k = self.shape.items_per_label;
        let mut picked_groups = Vec::with_capacity(self.shape.labels_per_batch);
        draw_distinct(rng, &self.group_ids, &mut picked_groups, self.shape.labels_per_batch);

        let mut batch = PkBatch {
            items: Vec::with_capacity(self.shape.labels_per_batch * k),
            labels: Vec::with_capacity(self.shape.labels_per_batch * k),
            injected_pairs: Vec::new(),
        };
        for group in picked_groups.into_iter().map(|id| &self.groups[id]) {
            let mut anchors = Vec::with_capacity(k / 2);
            draw_distinct(rng, &group.with_mined_positive, &mut anchors, k / 2);
            let mut chosen: Vec<usize> = Vec::with_capacity(k);
            for anchor in anchors {
                let Some(&positive) = self.injected.get(&anchor) else { continue };
                for item in [anchor, positive] {
                    if !chosen.contains(&item) {
                        chosen.push(item);
                    }
                }
                batch.injected_pairs.push((anchor, positive));
            }
            draw_distinct(rng, &group.items, &mut chosen, k);
            while chosen.len() < k {
                // Only reached when the label has fewer than K items, all already chosen.
                chosen.push(group.items[rng.below(group.items.len())]);
            }
            batch.labels.extend(std::iter::repeat_n(group.label, chosen.len()));
            batch.items.extend(chosen);
        }
        debug_assert_eq!(batch.items.len(), self.shape.labels_per_batch * k);
        batch
    }
}

/// Adds uniformly drawn items of `pool` not already in `chosen` until `chosen` holds `target`
/// items or every item of `pool` is in it. `chosen` must hold distinct items, all from `pool`.
/// Rejection sampling: a draw that hits a chosen item is retried, which terminates because an
/// unchosen item exists; collisions are rare for large pools, and small pools are cheap to retry.
fn draw_distinct(rng: &mut SeededRng, pool: &[usize], chosen: &mut Vec<usize>, target: usize) {
    debug_assert!(chosen.iter().all(|item| pool.contains(item)));
    let mut missing = target.saturating_sub(chosen.len()).min(pool.len() - chosen.len());
    while missing > 0 {
        let item = pool[rng.below(pool.len())];
        if !chosen.contains(&item) {
            chosen.push(item);
            missing -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SHAPE: PkShape = PkShape { labels_per_batch: 3, items_per_label: 4 };

    /// Labels 0..5 with 6 items each, label 5 with 2 items, labels 6 and 7 with a single item.
    fn catalogue() -> Vec<u32> {
        let mut labels: Vec<u32> = (0..30).map(|item| item % 5).collect();
        labels.extend([5, 5, 6, 7]);
        labels
    }

    fn check_shape(batch: &PkBatch, item_labels: &[u32], shape: PkShape) {
        assert_eq!(batch.items.len(), shape.labels_per_batch * shape.items_per_label);
        let mut per_label: HashMap<u32, Vec<usize>> = HashMap::new();
        for (&item, &label) in batch.items.iter().zip(&batch.labels) {
            assert_eq!(item_labels[item], label, "item {item} carries its own label");
            per_label.entry(label).or_default().push(item);
        }
        assert_eq!(per_label.len(), shape.labels_per_batch, "{batch:?}");
        for (label, items) in per_label {
            assert_eq!(items.len(), shape.items_per_label, "label {label}");
            let distinct: HashSet<usize> = items.iter().copied().collect();
            let label_size = item_labels.iter().filter(|&&l| l == label).count();
            assert_eq!(distinct.len(), shape.items_per_label.min(label_size), "replacement only when short");
        }
    }

    #[test]
    fn every_batch_has_p_distinct_labels_of_k_items() -> Result<(), SamplerError> {
        let labels = catalogue();
        let sampler = PkSampler::new(&labels, SHAPE, 1)?;
        assert_eq!(sampler.batches_per_epoch(), 32 / 12);
        for epoch in 0..20 {
            for batch in sampler.epoch(epoch) {
                check_shape(&batch, &labels, SHAPE);
                assert!(batch.injected_pairs.is_empty());
            }
        }
        Ok(())
    }

    #[test]
    fn single_item_labels_are_never_drawn_and_short_labels_repeat() -> Result<(), SamplerError> {
        let labels = catalogue();
        let sampler = PkSampler::new(&labels, SHAPE, 2)?;
        let mut short_label_seen = false;
        for batch in (0..50).flat_map(|epoch| sampler.epoch(epoch)) {
            assert!(!batch.labels.iter().any(|&label| label == 6 || label == 7), "{batch:?}");
            let short: Vec<usize> = batch.items.iter().copied().filter(|&item| labels[item] == 5).collect();
            if !short.is_empty() {
                short_label_seen = true;
                assert_eq!(short.len(), 4);
                assert_eq!(short.iter().collect::<HashSet<_>>().len(), 2, "both items of label 5");
            }
        }
        assert!(short_label_seen, "label 5 is eligible and drawn uniformly");
        Ok(())
    }

    #[test]
    fn same_seed_same_batches_different_seed_or_epoch_different_batches() -> Result<(), SamplerError> {
        let labels = catalogue();
        let first = PkSampler::new(&labels, SHAPE, 9)?;
        let again = PkSampler::new(&labels, SHAPE, 9)?;
        let other = PkSampler::new(&labels, SHAPE, 10)?;
        assert_eq!(first.epoch(3), again.epoch(3));
        assert_ne!(first.epoch(3), other.epoch(3));
        assert_ne!(first.epoch(3), first.epoch(4));
        Ok(())
    }

    #[test]
    fn injection_puts_each_anchors_mined_positive_in_its_batch() -> Result<(), SamplerError> {
        let labels = catalogue();
        // Every item of labels 0..5 is mined a positive: the next item of its label, cyclically.
        let injected: HashMap<usize, usize> = (0..30).map(|item| (item, (item + 5) % 30)).collect();
        for items_per_label in [2, 3, 4, 5] {
            let shape = PkShape { labels_per_batch: 3, items_per_label };
            let sampler = PkSampler::with_injected(&labels, shape, 4, injected.clone())?;
            for batch in (0..10).flat_map(|epoch| sampler.epoch(epoch)) {
                check_shape(&batch, &labels, shape);
                let labels_with_mined = batch.labels.iter().filter(|&&label| label < 5).count() / items_per_label;
                assert_eq!(batch.injected_pairs.len(), labels_with_mined * (items_per_label / 2));
                for &(anchor, positive) in &batch.injected_pairs {
                    assert_eq!(injected.get(&anchor), Some(&positive));
                    assert!(batch.items.contains(&anchor) && batch.items.contains(&positive), "{batch:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn invalid_settings_are_errors() {
        let labels = catalogue();
        let too_wide = PkShape { labels_per_batch: 7, items_per_label: 2 };
        assert_eq!(
            PkSampler::new(&labels, too_wide, 0).err(),
            Some(SamplerError::TooFewLabels { needed: 7, eligible: 6 })
        );
        let too_narrow = PkShape { labels_per_batch: 2, items_per_label: 1 };
        assert_eq!(PkSampler::new(&labels, too_narrow, 0).err(), Some(SamplerError::TooFewItemsPerLabel(1)));
        let outside = HashMap::from([(0, 99)]);
        assert!(matches!(
            PkSampler::with_injected(&labels, SHAPE, 0, outside),
            Err(SamplerError::InjectedOutOfRange { .. })
        ));
        let other_label = HashMap::from([(0, 1)]);
        assert!(matches!(
            PkSampler::with_injected(&labels, SHAPE, 0, other_label),
            Err(SamplerError::InjectedNotPositive { .. })
        ));
    }
}
