//! Which items a finetune job trains on and which it holds out to prove the new model on.

use std::collections::{BTreeMap, HashMap};

use crate::db::items::ItemRecord;
use crate::train::TrainRng;

/// Stream of the job's seed that splits off the held-out items.
const HOLDOUT_STREAM: u64 = 0x686f6c64;

/// Training and held-out items, as indices into the job's item list.
#[derive(Debug)]
pub struct Split {
    pub train: Vec<usize>,
    pub holdout: Vec<usize>,
}

/// Holds out `round(fraction · n)` items of each label of `n` items, chosen by
/// a seeded shuffle, but always leaves at least two to train on; labels with
/// fewer than three items are not held out at all (they could not be both a
/// query and have a positive left to find).
pub fn holdout_split(labels: &[u32], fraction: f64, seed: u64) -> Split {
    let mut by_label: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (index, &label) in labels.iter().enumerate() {
        by_label.entry(label).or_default().push(index);
    }
    let mut rng = TrainRng::for_stream(seed, HOLDOUT_STREAM);
    let (mut train, mut holdout) = (Vec::new(), Vec::new());
    for mut members in by_label.into_values() {
        rng.shuffle(&mut members);
        let n = members.len();
        let held = if n < 3 { 0 } else { ((fraction * n as f64).round() as usize).clamp(1, n - 2) };
        holdout.extend_from_slice(&members[..held]);
        train.extend_from_slice(&members[held..]);
    }
    train.sort_unstable();
    holdout.sort_unstable();
    Split { train, holdout }
}

/// Labels as dense ids (sorted names), and each record's id.
pub fn label_ids(records: &[ItemRecord]) -> (Vec<String>, Vec<u32>) {
    let names: Vec<String> =
        records.iter().map(|r| r.item.label.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let ids: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    let labels = records.iter().map(|r| ids[r.item.label.as_str()]).collect();
    (names, labels)
}

pub fn count_eligible_labels(labels: &[u32]) -> usize {
    let mut counts: HashMap<u32, usize> = HashMap::new();
    labels.iter().for_each(|&l| *counts.entry(l).or_default() += 1);
    counts.values().filter(|&&n| n >= 2).count()
}

/// The rows `indices` of `features`, flattened.
pub fn gather(features: &[Vec<f32>], indices: &[usize]) -> Vec<f32> {
    indices.iter().flat_map(|&i| features[i].iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_keeps_two_per_label_and_is_seeded() {
        let labels: Vec<u32> = [vec![0; 10], vec![1; 3], vec![2; 2]].concat();
        let split = holdout_split(&labels, 0.2, 7);
        let held: Vec<u32> = split.holdout.iter().map(|&i| labels[i]).collect();
        assert_eq!(held.iter().filter(|&&l| l == 0).count(), 2, "20% of 10");
        assert_eq!(held.iter().filter(|&&l| l == 1).count(), 1, "at least one when three or more");
        assert_eq!(held.iter().filter(|&&l| l == 2).count(), 0, "two items: none held out");
        let mut all: Vec<usize> = split.train.iter().chain(&split.holdout).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..labels.len()).collect::<Vec<_>>(), "a partition");
        assert_eq!(holdout_split(&labels, 0.2, 7).holdout, split.holdout);
        assert_ne!(holdout_split(&labels, 0.2, 8).holdout, split.holdout);
    }
}
