//! Triplet miners: which (anchor, positive, negative) triplets of a batch the loss is taken over.
//!
//! Every miner reads the batch's N×N distance matrix as plain row-major `f32` values (see
//! [`super::distance::distances_to_vec`]) and the batch's labels, and returns [`Triplet`]s of
//! indices into the batch. A valid triplet has `anchor ≠ positive` with equal labels and a
//! `negative` with another label. Miners are pure and deterministic: the output is ordered by
//! anchor, then positive, then negative, and ties between equal distances go to the lowest index.
//! NaN distances are never selected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rng::SeededRng;

/// Indices into a batch: the loss pulls `positive` towards `anchor` and pushes `negative` away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Triplet {
    pub anchor: usize,
    pub positive: usize,
    pub negative: usize,
}

/// How the online trainer picks triplets inside each batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Per anchor, the farthest positive and the nearest negative (Hermans et al. 2017).
    #[default]
    #[serde(alias = "batch_hard")]
    BatchHard,
    /// Every valid triplet; the loss averages over those with a positive loss.
    #[serde(alias = "batch_all")]
    BatchAll,
    /// Per anchor–positive pair, the nearest negative farther than the positive but within the
    /// margin (Schroff et al. 2015); pairs without one are skipped.
    #[serde(alias = "semi_hard")]
    SemiHard,
    /// Per anchor, one seeded random positive and negative: the baseline.
    Random,
}

impl Mining {
    /// Every mode, in documentation order.
    pub const ALL: [Mining; 4] = [Mining::BatchHard, Mining::BatchAll, Mining::SemiHard, Mining::Random];

    /// The configuration name: "batch-hard", "batch-all", "semi-hard" or "random" (the
    /// snake_case spellings are accepted when parsing).
    pub fn name(self) -> &'static str {
        match self {
            Mining::BatchHard => "batch-hard",
            Mining::BatchAll => "batch-all",
            Mining::SemiHard => "semi-hard",
            Mining::Random => "random",
        }
    }
}

impl fmt::Display for Mining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mining {
    type Err = MiningError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let kebab = name.replace('_', "-");
        Mining::ALL.into_iter().find(|mode| mode.name() == kebab).ok_or_else(|| MiningError::UnknownMode(name.into()))
    }
}

/// Why a miner could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MiningError {
    #[error("the distance matrix has {distances} entries but {labels} labels need {labels}×{labels}")]
    ShapeMismatch { distances: usize, labels: usize },
    #[error("unknown mining mode {0:?} (expected batch-hard, batch-all, semi-hard or random)")]
    UnknownMode(String),
}

/// Runs the miner `mining` on one batch. `margin` is used by semi-hard only, `seed` by random only.
pub fn mine(
    mining: Mining,
    distances: &[f32],
    labels: &[u32],
    margin: f32,
    seed: u64,
) -> Result<Vec<Triplet>, MiningError> {
    match mining {
        Mining::BatchHard => batch_hard(distances, labels),
        Mining::BatchAll => batch_all(distances, labels),
        Mining::SemiHard => semi_hard(distances, labels, margin),
        Mining::Random => random_triplets(distances, labels, seed),
    }
}

/// Per anchor that has a positive and a negative in the batch: its farthest positive and its
/// nearest negative. At most one triplet per item.
pub fn batch_hard(distances: &[f32], labels: &[u32]) -> Result<Vec<Triplet>, MiningError> {
    let batch = BatchView::new(distances, labels)?;
    let mut triplets = Vec::with_capacity(labels.len());
    for anchor in 0..labels.len() {
        let Some(positive) = batch.farthest_positive(anchor) else { continue };
        let Some(negative) = batch.nearest_negative(anchor, |_| true) else { continue };
        triplets.push(Triplet { anchor, positive, negative });
    }
    Ok(triplets)
}

/// Every valid triplet of the batch.
pub fn batch_all(distances: &[f32], labels: &[u32]) -> Result<Vec<Triplet>, MiningError> {
    let batch = BatchView::new(distances, labels)?;
    let mut triplets = Vec::new();
    for anchor in 0..labels.len() {
        for positive in batch.positives(anchor) {
            triplets.extend(batch.negatives(anchor).map(|negative| Triplet { anchor, positive, negative }));
        }
    }
    Ok(triplets)
}

/// Per anchor–positive pair, the nearest negative with `d_ap < d_an < d_ap + margin`.
///
/// A pair without such a negative is skipped, not given a fallback: a negative beyond the margin
/// has zero hinge loss and would only dilute the mean, and a negative nearer than the positive is
/// exactly the hard case FaceNet avoids because it can collapse the embedding early in training.
/// Under the soft-margin loss the window still uses `margin`.
pub fn semi_hard(distances: &[f32], labels: &[u32], margin: f32) -> Result<Vec<Triplet>, MiningError> {
    let batch = BatchView::new(distances, labels)?;
    let mut triplets = Vec::new();
    for anchor in 0..labels.len() {
        for positive in batch.positives(anchor) {
            let d_ap = batch.distance(anchor, positive);
            let in_window = |d_an: f32| d_ap < d_an && d_an < d_ap + margin;
            if let Some(negative) = batch.nearest_negative(anchor, in_window) {
                triplets.push(Triplet { anchor, positive, negative });
            }
        }
    }
    Ok(triplets)
}

/// Per anchor that has a positive and a negative in the batch: one positive and one negative
/// drawn uniformly with a generator seeded by `seed`. The distances are only checked for shape.
pub fn random_triplets(distances: &[f32], labels: &[u32], seed: u64) -> Result<Vec<Triplet>, MiningError> {
    let batch = BatchView::new(distances, labels)?;
    let mut rng = SeededRng::new(seed);
    let mut triplets = Vec::with_capacity(labels.len());
    for anchor in 0..labels.len() {
        let positives: Vec<usize> = batch.positives(anchor).collect();
        let negatives: Vec<usize> = batch.negatives(anchor).collect();
        if positives.is_empty() || negatives.is_empty() {
            continue;
        }
        let positive = positives[rng.below(positives.len())];
        let negative = negatives[rng.below(negatives.len())];
        triplets.push(Triplet { anchor, positive, negative });
    }
    Ok(triplets)
}

/// A batch's distance matrix and labels, checked to agree in size.
struct BatchView<'a> {
    distances: &'a [f32],
    labels: &'a [u32],
}

impl<'a> BatchView<'a> {
    fn new(distances: &'a [f32], labels: &'a [u32]) -> Result<Self, MiningError> {
        if labels.len().checked_mul(labels.len()) != Some(distances.len()) {
            return Err(MiningError::ShapeMismatch { distances: distances.len(), labels: labels.len() });
        }
        Ok(Self { distances, labels })
    }

    fn distance(&self, from: usize, to: usize) -> f32 {
        self.distances[from * self.labels.len() + to]
    }

    fn positives(&self, anchor: usize) -> impl Iterator<Item = usize> + '_ {
        let label = self.labels[anchor];
        (0..self.labels.len()).filter(move |&other| other != anchor && self.labels[other] == label)
    }

    fn negatives(&self, anchor: usize) -> impl Iterator<Item = usize> + '_ {
        let label = self.labels[anchor];
        (0..self.labels.len()).filter(move |&other| self.labels[other] != label)
    }

    /// The farthest positive of `anchor` (lowest index on ties).
    fn farthest_positive(&self, anchor: usize) -> Option<usize> {
        let mut farthest: Option<(usize, f32)> = None;
        for positive in self.positives(anchor) {
            let d_ap = self.distance(anchor, positive);
            if !d_ap.is_nan() && farthest.is_none_or(|(_, best)| d_ap > best) {
                farthest = Some((positive, d_ap));
            }
        }
        farthest.map(|(positive, _)| positive)
    }

    /// The nearest negative of `anchor` whose distance passes `accept` (lowest index on ties).
    fn nearest_negative(&self, anchor: usize, accept: impl Fn(f32) -> bool) -> Option<usize> {
        let mut nearest: Option<(usize, f32)> = None;
        for negative in self.negatives(anchor) {
            let d_an = self.distance(anchor, negative);
            if d_an.is_nan() || !accept(d_an) {
                continue;
            }
            if nearest.is_none_or(|(_, best)| d_an < best) {
                nearest = Some((negative, d_an));
            }
        }
        nearest.map(|(negative, _)| negative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mining_names_round_trip_through_serde_and_from_str() {
        for mode in Mining::ALL {
            let json = serde_json::to_string(&mode).expect("serialisable");
            assert_eq!(json, format!("\"{}\"", mode.name()));
            assert_eq!(serde_json::from_str::<Mining>(&json).expect("deserialisable"), mode);
            assert_eq!(mode.name().parse::<Mining>(), Ok(mode));
            let snake = mode.name().replace('-', "_");
            assert_eq!(serde_json::from_str::<Mining>(&format!("\"{snake}\"")).expect("alias"), mode);
            assert_eq!(snake.parse::<Mining>(), Ok(mode));
        }
        assert!(matches!("hardest".parse::<Mining>(), Err(MiningError::UnknownMode(_))));
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let error = batch_hard(&[0.0; 8], &[0, 0, 1]).expect_err("8 ≠ 3×3");
        assert_eq!(error, MiningError::ShapeMismatch { distances: 8, labels: 3 });
    }

    #[test]
    fn ties_go_to_the_lowest_index() {
        // Items 1 and 2 are equally far positives of 0; items 3 and 4 equally near negatives.
        let labels = [0, 0, 0, 1, 1];
        let mut distances = [0.5_f32; 25];
        for i in 0..5 {
            distances[i * 5 + i] = 0.0;
        }
        let triplets = batch_hard(&distances, &labels).expect("square");
        assert_eq!(triplets[0], Triplet { anchor: 0, positive: 1, negative: 3 });
    }

    #[test]
    fn a_batch_with_one_label_has_no_triplets() {
        let distances = [0.0_f32; 9];
        for mode in Mining::ALL {
            assert!(mine(mode, &distances, &[4, 4, 4], 0.2, 1).expect("square").is_empty(), "{mode}");
        }
    }
}
