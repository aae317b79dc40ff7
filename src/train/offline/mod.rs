//! Offline hard-example mining: the pairs the pretrained model finds hard, found once before training.
//!
//! Input: every training item's L2-normalised embedding from the pretrained model and its label.
//! For every ordered pair of distinct items `(a, b)` the distance `d(a, b) = sqrt(max(2 − 2·a·b, 0))`
//! (Euclidean between unit vectors, as [`super::distance`] computes it) is an anchor–positive
//! distance when the labels are equal and an anchor–negative distance otherwise.
//!
//! # The rule
//!
//! With `P` the multiset of all anchor–positive distances and `N` that of all anchor–negative ones:
//! - `t_pos` = the `positive_quantile` (q_p) quantile of `P`, `t_neg` = the `negative_quantile`
//!   (q_n) quantile of `N`, both to [`QUANTILE_BINS`]-bin precision (below);
//! - the hard positives of anchor `a` are the items `b ≠ a` with `label(b) = label(a)` and
//!   `d(a, b) ≥ t_pos`: the `hard_positives_per_anchor` farthest of them, farthest first. Every
//!   item is such an anchor, also above `max_exact_items` (see Size);
//! - the hard negatives of `a` are the items `b` with `label(b) ≠ label(a)` and `d(a, b) ≤ t_neg`:
//!   the `hard_negatives_per_anchor` nearest of them, nearest first.
//!
//! Ties between equal distances go to the lower item index. An item alone in its label has no
//! positives.
//!
//! **Quantiles.** Distances are counted in [`QUANTILE_BINS`] equal bins over `[0, 2]` (bin
//! `k = ⌊d · QUANTILE_BINS / 2⌋`; distances above 2, from vectors not quite normalised, count in
//! the last bin), so that 10⁸ distances need not be stored. For a distribution of `n` distances the
//! quantile bin `k_q` is the first whose cumulative count reaches `max(1, ⌈q·n⌉)`; the threshold is
//! then rounded outward, to the edge that makes the rule stricter: `t_pos` = the upper edge of
//! `k_p`, `t_neg` = the lower edge of `k_n`. Hence at most a fraction `1 − q_p` of positive pairs
//! qualify, and at most `q_n` of negative pairs (plus any lying exactly on `t_neg`). Edges are
//! multiples of `2 / QUANTILE_BINS`, exact in `f32`.
//!
//! **Valley** (information only, not used for selection). On the returned [`DistanceHistogram`],
//! the positive mode `m_p` and negative mode `m_n` are the bins with the most positive (negative)
//! distances, lowest bin on ties. If `m_p < m_n`, the valley is the centre of the bin `j` in
//! `m_p..=m_n` minimising `(pos_j / |P| + neg_j / |N|) / width_j` (the sum of the two densities,
//! each normalised to unit area; lowest bin on ties); otherwise the peaks overlap and it is `None`.
//!
//! **Histogram.** The occupied range of the fine bins (first to last non-empty) is split into
//! `histogram_bins` groups of consecutive fine bins (fewer if the range has fewer fine bins), the
//! group `j` covering fine bins `lo + ⌊j·span / groups⌋ ..` up to the next boundary. Its counts are
//! exact; its edges are fine-bin edges, so widths can differ by one fine bin.
//!
//! # Size
//!
//! Up to `max_exact_items` items every ordered pair is computed: anchors in blocks of
//! [`ANCHOR_BLOCK`] across rayon's threads, with dot products, without storing the N×N matrix
//! (N = 10,000 is 10⁸ distances).
//!
//! Above it, the all-pairs part is what does not scale (N = 60,000 is 3.6·10⁹ distances, nearly
//! all of them negative), so a uniform subset of `max_exact_items` items drawn with [`SeededRng`]
//! from `seed` stands in for the catalogue for everything but the positives: the thresholds, the
//! histogram, the [`MiningStats`] distances and the hard negatives are over the subset's pairs
//! (anchors and candidates are its items; indices still refer to the full item list).
//!
//! Hard positives, though, are mined for **every** item, against every other item of its label,
//! with the subset's `t_pos`. Training injects one mined positive per anchor, so positives from
//! the subset alone would confine `offline+online` training to the subset's items (a sixth of the
//! 60,000-item Fashion-MNIST catalogue). Same-label distances are cheap: `Σ_l n_l²` of them, ten
//! times fewer than all pairs for ten balanced labels (Fashion-MNIST: 10 × 6,000² = 3.6·10⁸ dot
//! products of 1280 values). They are computed per label in blocks of [`POSITIVE_BLOCK`] anchors
//! against all the label's candidates (never an n_l × n_l matrix), each anchor's candidates in
//! ascending index order with the same dot product as the exact path, so the pairs are exactly
//! those the rule gives, whatever the number of threads. A label with more than
//! `max_positive_scan_items` items would cost the square of its size; its anchors (still all of
//! its items) then search a seeded uniform subset of `max_positive_scan_items` of its items
//! instead (drawn from `seed` and the label), so its positives are the farthest within that subset.
//! [`MiningStats::positive_anchors`] and [`MiningStats::capped_positive_labels`] say what was done.
//!
//! [`mine_offline`] is pure and deterministic: the same inputs and seed give the same result,
//! whatever the number of threads (blocks are merged in order).
//!
//! The files: `scan` (one block of anchors against every mined item: counts and extremes),
//! `positives` (the hard positives of every item above `max_exact_items`), `bins` (quantiles,
//! the display histogram, the valley) and `kernels` (the dot products and the best-first lists
//! both scans share).

mod bins;
mod kernels;
mod positives;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use self::bins::{display_histogram, fine_edge, quantile_bin, valley};
use self::kernels::has_avx;
use self::positives::mine_all_positives;
use self::scan::BlockScan;
use self::scan::scan_block;
#[cfg(target_arch = "x86_64")]
use self::scan::scan_block_avx;
use crate::rng::SeededRng;

/// Fine bins over `[0, 2]` from which the quantile thresholds are read (bin width ≈ 0.001).
pub const QUANTILE_BINS: usize = 4096;
/// Anchors whose distances are computed together, so that each candidate is read once per block.
pub const ANCHOR_BLOCK: usize = 32;
/// Anchors of one label whose hard positives are searched together above `max_exact_items`: a
/// unit of parallel work small enough to spread 6,000-item labels over the threads.
pub const POSITIVE_BLOCK: usize = 64;
/// Stream of `seed` from which a capped label's positive candidates are drawn (the label is mixed in).
pub(super) const POSITIVE_STREAM: u64 = 0x706f_7369;
/// The largest distance between two unit vectors.
pub(super) const MAX_DISTANCE: f32 = 2.0;

/// The knobs of offline mining; `{}` in JSON gives the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OfflineMiningParams {
    /// q_p in `[0, 1]`: same-label pairs farther than this quantile of all positive distances are
    /// hard. Higher keeps fewer, harder positives. Default 0.9.
    pub positive_quantile: f32,
    /// q_n in `[0, 1]`: other-label pairs nearer than this quantile of all negative distances are
    /// hard. Lower keeps fewer, harder negatives. Default 0.1.
    pub negative_quantile: f32,
    /// At least 2. Above this many items, thresholds, statistics and hard negatives come from a
    /// seeded subset of this size (cost grows as its square: 10,000 is 10⁸ distances); hard
    /// positives are still mined for every item. Default 10,000.
    pub max_exact_items: usize,
    /// At least 2. Above `max_exact_items`, a label with more items than this searches its hard
    /// positives among a seeded subset of this many of its items (cost per label: its size times
    /// this). Default 100,000.
    pub max_positive_scan_items: usize,
    /// Most hard positives kept per anchor. Default 2.
    pub hard_positives_per_anchor: usize,
    /// Most hard negatives kept per anchor. Default 3.
    pub hard_negatives_per_anchor: usize,
    /// Bins of the returned histogram (at least 1). Default 64.
    pub histogram_bins: usize,
    /// Seeds the subset drawn above `max_exact_items`. Default 0.
    pub seed: u64,
}

impl Default for OfflineMiningParams {
    fn default() -> Self {
        Self {
            positive_quantile: 0.9,
            negative_quantile: 0.1,
            max_exact_items: 10_000,
            max_positive_scan_items: 100_000,
            hard_positives_per_anchor: 2,
            hard_negatives_per_anchor: 3,
            histogram_bins: 64,
            seed: 0,
        }
    }
}

/// Why mining could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OfflineMiningError {
    #[error("{values} embedding values are not a whole number of vectors of dimension {dim}")]
    BadShape { values: usize, dim: usize },
    #[error("{embeddings} embeddings but {labels} labels")]
    LabelCountMismatch { embeddings: usize, labels: usize },
    #[error("embedding {0} holds a non-finite value")]
    NonFinite(usize),
    #[error("invalid offline mining parameter: {0}")]
    InvalidParams(&'static str),
    #[error("no two mined items share a label: there are no positive pairs")]
    NoPositivePairs,
    #[error("all mined items share one label: there are no negative pairs")]
    NoNegativePairs,
}

/// The distances that decided hardness, and the valley between the peaks (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// `t_pos`: a same-label pair at least this far apart is a hard positive.
    pub positive: f32,
    /// `t_neg`: an other-label pair at most this far apart is a hard negative.
    pub negative: f32,
    /// Centre of the least dense bin between the two modes; `None` when the modes do not separate.
    pub valley: Option<f32>,
}

/// Counts of anchor–positive and anchor–negative distances (ordered pairs) per bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistanceHistogram {
    /// Bin `j` holds distances in `[bin_edges[j], bin_edges[j + 1])`; one more edge than bins.
    pub bin_edges: Vec<f32>,
    pub positive_counts: Vec<u64>,
    pub negative_counts: Vec<u64>,
}

/// What the mining looked at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningStats {
    /// Items mined as anchors (and candidates): all items, or the subset above `max_exact_items`.
    pub anchors: usize,
    /// Ordered same-label pairs `(a, b)`, `a ≠ b`.
    pub positive_pairs: u64,
    /// Ordered other-label pairs.
    pub negative_pairs: u64,
    pub mean_positive: f32,
    pub mean_negative: f32,
    /// Items whose same-label candidates were searched for hard positives: every item (also above
    /// `max_exact_items`). Absent from results mined before positives covered every item.
    #[serde(default)]
    pub positive_anchors: usize,
    /// Labels whose positives were searched in a subset of `max_positive_scan_items` candidates.
    #[serde(default)]
    pub capped_positive_labels: usize,
}

/// The result of offline mining, saved as JSON next to the model version it was mined with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinedPairs {
    pub thresholds: Thresholds,
    /// `(anchor, positive)` item indices, by anchor, farthest positive first.
    pub hard_positives: Vec<(usize, usize)>,
    /// `(anchor, negative)` item indices, by anchor, nearest negative first.
    pub hard_negatives: Vec<(usize, usize)>,
    pub histogram: DistanceHistogram,
    pub stats: MiningStats,
}

impl MinedPairs {
    /// Each anchor's hardest mined positive, as [`super::PkSampler::with_injected`] takes them.
    pub fn injected_positives(&self) -> HashMap<usize, usize> {
        let mut injected = HashMap::new();
        for &(anchor, positive) in &self.hard_positives {
            injected.entry(anchor).or_insert(positive);
        }
        injected
    }
}

/// Mines hard positives and negatives from `embeddings` (`labels.len()` rows of `dim` values,
/// row-major, L2-normalised); see the module docs for the exact rule.
pub fn mine_offline(
    embeddings: &[f32],
    dim: usize,
    labels: &[u32],
    params: &OfflineMiningParams,
) -> Result<MinedPairs, OfflineMiningError> {
    validate(embeddings, dim, labels, params)?;
    let items = mined_items(labels.len(), params);
    let avx = has_avx();
    let scans: Vec<BlockScan> = items
        .par_chunks(ANCHOR_BLOCK)
        .map(|block| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU supports AVX (checked by `has_avx`).
                return unsafe { scan_block_avx(block, &items, embeddings, dim, labels, params) };
            }
            let _ = avx;
            scan_block(block, &items, embeddings, dim, labels, params)
        })
        .collect();

    let mut positive_bins = vec![0u64; QUANTILE_BINS];
    let mut negative_bins = vec![0u64; QUANTILE_BINS];
    let (mut positive_sum, mut negative_sum) = (0.0f64, 0.0f64);
    for scan in &scans {
        positive_bins.iter_mut().zip(&scan.positive_bins).for_each(|(total, count)| *total += count);
        negative_bins.iter_mut().zip(&scan.negative_bins).for_each(|(total, count)| *total += count);
        positive_sum += scan.positive_sum;
        negative_sum += scan.negative_sum;
    }
    let positive_pairs: u64 = positive_bins.iter().sum();
    let negative_pairs: u64 = negative_bins.iter().sum();
    if positive_pairs == 0 {
        return Err(OfflineMiningError::NoPositivePairs);
    }
    if negative_pairs == 0 {
        return Err(OfflineMiningError::NoNegativePairs);
    }

    let positive = fine_edge(quantile_bin(&positive_bins, params.positive_quantile) + 1);
    let negative = fine_edge(quantile_bin(&negative_bins, params.negative_quantile));
    let mut hard_positives = Vec::new();
    let mut hard_negatives = Vec::new();
    let mut capped_positive_labels = 0;
    if items.len() == labels.len() {
        for scan in &scans {
            for (&anchor, farthest) in scan.anchors.iter().zip(&scan.farthest_positives) {
                hard_positives.extend(farthest.iter().filter(|(d, _)| *d >= positive).map(|&(_, item)| (anchor, item)));
            }
        }
    } else {
        let mined = mine_all_positives(embeddings, dim, labels, positive, params);
        hard_positives = mined.pairs;
        capped_positive_labels = mined.capped_labels;
    }
    for scan in &scans {
        for (&anchor, nearest) in scan.anchors.iter().zip(&scan.nearest_negatives) {
            hard_negatives.extend(nearest.iter().filter(|(d, _)| *d <= negative).map(|&(_, item)| (anchor, item)));
        }
    }
    let histogram = display_histogram(&positive_bins, &negative_bins, params.histogram_bins);
    let valley = valley(&histogram);
    Ok(MinedPairs {
        thresholds: Thresholds { positive, negative, valley },
        hard_positives,
        hard_negatives,
        histogram,
        stats: MiningStats {
            anchors: items.len(),
            positive_pairs,
            negative_pairs,
            mean_positive: (positive_sum / positive_pairs as f64) as f32,
            mean_negative: (negative_sum / negative_pairs as f64) as f32,
            positive_anchors: labels.len(),
            capped_positive_labels,
        },
    })
}

fn validate(
    embeddings: &[f32],
    dim: usize,
    labels: &[u32],
    params: &OfflineMiningParams,
) -> Result<(), OfflineMiningError> {
    if dim == 0 || !embeddings.len().is_multiple_of(dim) {
        return Err(OfflineMiningError::BadShape { values: embeddings.len(), dim });
    }
    if embeddings.len() / dim != labels.len() {
        return Err(OfflineMiningError::LabelCountMismatch {
            embeddings: embeddings.len() / dim,
            labels: labels.len(),
        });
    }
    if let Some(row) = embeddings.chunks_exact(dim).position(|row| row.iter().any(|value| !value.is_finite())) {
        return Err(OfflineMiningError::NonFinite(row));
    }
    let quantile_ok = |q: f32| (0.0..=1.0).contains(&q);
    if !quantile_ok(params.positive_quantile) || !quantile_ok(params.negative_quantile) {
        return Err(OfflineMiningError::InvalidParams("quantiles must lie in [0, 1]"));
    }
    if params.max_exact_items < 2 {
        return Err(OfflineMiningError::InvalidParams("max_exact_items must be at least 2"));
    }
    if params.max_positive_scan_items < 2 {
        return Err(OfflineMiningError::InvalidParams("max_positive_scan_items must be at least 2"));
    }
    if params.histogram_bins == 0 {
        return Err(OfflineMiningError::InvalidParams("histogram_bins must be at least 1"));
    }
    Ok(())
}

/// The items mined, ascending: all of them, or a seeded uniform subset above `max_exact_items`.
fn mined_items(count: usize, params: &OfflineMiningParams) -> Vec<usize> {
    let mut items: Vec<usize> = (0..count).collect();
    if count > params.max_exact_items {
        SeededRng::new(params.seed).shuffle(&mut items);
        items.truncate(params.max_exact_items);
        items.sort_unstable();
    }
    items
}
