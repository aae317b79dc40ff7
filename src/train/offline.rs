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
//! all of them negative), so a uniform subset of `max_exact_items` items drawn with [`TrainRng`]
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

use std::collections::HashMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::rng::TrainRng;

/// Fine bins over `[0, 2]` from which the quantile thresholds are read (bin width ≈ 0.001).
pub const QUANTILE_BINS: usize = 4096;
/// Anchors whose distances are computed together, so that each candidate is read once per block.
pub const ANCHOR_BLOCK: usize = 32;
/// Anchors of one label whose hard positives are searched together above `max_exact_items`: a
/// unit of parallel work small enough to spread 6,000-item labels over the threads.
pub const POSITIVE_BLOCK: usize = 64;
/// Stream of `seed` from which a capped label's positive candidates are drawn (the label is mixed in).
const POSITIVE_STREAM: u64 = 0x706f_7369;
/// The largest distance between two unit vectors.
const MAX_DISTANCE: f32 = 2.0;

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
        TrainRng::new(params.seed).shuffle(&mut items);
        items.truncate(params.max_exact_items);
        items.sort_unstable();
    }
    items
}

/// One anchor's best candidates `(distance, item)`, best first.
type Best = Vec<(f32, usize)>;

/// Hard positives of every item, and how many labels had their candidates capped.
struct AllPositives {
    pairs: Vec<(usize, usize)>,
    capped_labels: usize,
}

/// The hard positives of every item (the rule with threshold `t_pos`), by anchor ascending.
fn mine_all_positives(
    embeddings: &[f32],
    dim: usize,
    labels: &[u32],
    t_pos: f32,
    params: &OfflineMiningParams,
) -> AllPositives {
    let mut by_label: HashMap<u32, Vec<usize>> = HashMap::new();
    for (item, &label) in labels.iter().enumerate() {
        by_label.entry(label).or_default().push(item);
    }
    let mut groups: Vec<(u32, Vec<usize>)> = by_label.into_iter().filter(|(_, items)| items.len() >= 2).collect();
    groups.sort_unstable_by_key(|&(label, _)| label);
    let mut capped_labels = 0;
    // (anchors, candidates) per label; both ascending.
    let work: Vec<(&[usize], Vec<usize>)> = groups
        .iter()
        .map(|(label, items)| {
            let mut candidates = items.clone();
            if candidates.len() > params.max_positive_scan_items {
                capped_labels += 1;
                let stream = POSITIVE_STREAM ^ u64::from(*label).rotate_left(32);
                TrainRng::for_stream(params.seed, stream).shuffle(&mut candidates);
                candidates.truncate(params.max_positive_scan_items);
                candidates.sort_unstable();
            }
            (items.as_slice(), candidates)
        })
        .collect();
    let blocks: Vec<(&[usize], &[usize])> = work
        .iter()
        .flat_map(|(anchors, candidates)| {
            anchors.chunks(POSITIVE_BLOCK).map(move |block| (block, candidates.as_slice()))
        })
        .collect();
    let avx = has_avx();
    let found: Vec<Vec<(usize, Best)>> = blocks
        .par_iter()
        .map(|&(block, candidates)| {
            #[cfg(target_arch = "x86_64")]
            if avx {
                // SAFETY: the CPU supports AVX (checked by `has_avx`).
                return unsafe { farthest_positives_avx(block, candidates, embeddings, dim, t_pos, params) };
            }
            let _ = avx;
            farthest_positives(block, candidates, embeddings, dim, t_pos, params)
        })
        .collect();
    let mut per_anchor: Vec<(usize, Best)> = found.into_iter().flatten().collect();
    // Blocks come label by label; each anchor appears once, so this orders the pairs by anchor.
    per_anchor.sort_unstable_by_key(|&(anchor, _)| anchor);
    let pairs = per_anchor
        .into_iter()
        .flat_map(|(anchor, farthest)| farthest.into_iter().map(move |(_, item)| (anchor, item)))
        .collect();
    AllPositives { pairs, capped_labels }
}

/// Whether the 8-lane sums of [`dot`] and [`dot4`] can run as single AVX instructions.
fn has_avx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`farthest_positives`] compiled for AVX: the same additions and products, lane by lane, so the
/// same bits (without FMA, which would round differently); the default x86-64 target has only SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn farthest_positives_avx(
    block: &[usize],
    candidates: &[usize],
    embeddings: &[f32],
    dim: usize,
    t_pos: f32,
    params: &OfflineMiningParams,
) -> Vec<(usize, Best)> {
    farthest_positives(block, candidates, embeddings, dim, t_pos, params)
}

/// For each anchor of `block`, its `hard_positives_per_anchor` farthest candidates at distance
/// `≥ t_pos` (itself excluded), farthest first, ties to the lower index.
#[inline(always)]
fn farthest_positives(
    block: &[usize],
    candidates: &[usize],
    embeddings: &[f32],
    dim: usize,
    t_pos: f32,
    params: &OfflineMiningParams,
) -> Vec<(usize, Best)> {
    let row = |item: usize| &embeddings[item * dim..(item + 1) * dim];
    let mut farthest = vec![Vec::new(); block.len()];
    // Anchors four at a time against one candidate: each candidate value loaded once feeds four
    // dot products. `dot4` sums in the same order as `dot`, so distances are those of the exact path.
    for (quad_index, quad) in block.chunks(4).enumerate() {
        let rows: [&[f32]; 4] = std::array::from_fn(|slot| row(quad[slot.min(quad.len() - 1)]));
        for &candidate in candidates {
            let dots = dot4(rows, row(candidate));
            for (slot, &anchor) in quad.iter().enumerate() {
                if anchor == candidate {
                    continue;
                }
                let d = (2.0 - 2.0 * dots[slot]).max(0.0).sqrt();
                if d >= t_pos {
                    keep_best(
                        &mut farthest[quad_index * 4 + slot],
                        (d, candidate),
                        params.hard_positives_per_anchor,
                        |a, b| a > b,
                    );
                }
            }
        }
    }
    block.iter().copied().zip(farthest).collect()
}

/// One block of anchors against every candidate: fine-bin counts, sums, and per-anchor extremes.
struct BlockScan {
    anchors: Vec<usize>,
    positive_bins: Vec<u64>,
    negative_bins: Vec<u64>,
    positive_sum: f64,
    negative_sum: f64,
    /// Per anchor, its `hard_positives_per_anchor` farthest positives `(distance, item)`, farthest first.
    farthest_positives: Vec<Vec<(f32, usize)>>,
    /// Per anchor, its `hard_negatives_per_anchor` nearest negatives, nearest first.
    nearest_negatives: Vec<Vec<(f32, usize)>>,
}

/// [`scan_block`] compiled for AVX, with the same bits (see [`farthest_positives_avx`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn scan_block_avx(
    block: &[usize],
    candidates: &[usize],
    embeddings: &[f32],
    dim: usize,
    labels: &[u32],
    params: &OfflineMiningParams,
) -> BlockScan {
    scan_block(block, candidates, embeddings, dim, labels, params)
}

#[inline(always)]
fn scan_block(
    block: &[usize],
    candidates: &[usize],
    embeddings: &[f32],
    dim: usize,
    labels: &[u32],
    params: &OfflineMiningParams,
) -> BlockScan {
    let row = |item: usize| &embeddings[item * dim..(item + 1) * dim];
    let mut scan = BlockScan {
        anchors: block.to_vec(),
        positive_bins: vec![0; QUANTILE_BINS],
        negative_bins: vec![0; QUANTILE_BINS],
        positive_sum: 0.0,
        negative_sum: 0.0,
        farthest_positives: vec![Vec::new(); block.len()],
        nearest_negatives: vec![Vec::new(); block.len()],
    };
    // Candidates in the outer loop: each is read once per block while the block's anchors stay in cache.
    for &candidate in candidates {
        let candidate_row = row(candidate);
        for (slot, &anchor) in block.iter().enumerate() {
            if anchor == candidate {
                continue;
            }
            let d = unit_distance(row(anchor), candidate_row);
            if labels[anchor] == labels[candidate] {
                scan.positive_bins[fine_bin(d)] += 1;
                scan.positive_sum += f64::from(d);
                keep_best(
                    &mut scan.farthest_positives[slot],
                    (d, candidate),
                    params.hard_positives_per_anchor,
                    |a, b| a > b,
                );
            } else {
                scan.negative_bins[fine_bin(d)] += 1;
                scan.negative_sum += f64::from(d);
                keep_best(
                    &mut scan.nearest_negatives[slot],
                    (d, candidate),
                    params.hard_negatives_per_anchor,
                    |a, b| a < b,
                );
            }
        }
    }
    scan
}

/// Inserts `entry` into the best-first `list` of at most `capacity` entries. Candidates arrive in
/// ascending index order and only a strictly better distance overtakes, so ties keep the lower index.
fn keep_best(list: &mut Vec<(f32, usize)>, entry: (f32, usize), capacity: usize, better: impl Fn(f32, f32) -> bool) {
    let position = list.iter().position(|&(d, _)| better(entry.0, d)).unwrap_or(list.len());
    if position < capacity {
        list.insert(position, entry);
        list.truncate(capacity);
    }
}

/// Euclidean distance between unit vectors through their dot product.
#[inline(always)]
fn unit_distance(a: &[f32], b: &[f32]) -> f32 {
    (2.0 - 2.0 * dot(a, b)).max(0.0).sqrt()
}

/// Dot product over eight independent partial sums, so the compiler can vectorise it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let mut partial = [0.0f32; LANES];
    for (x, y) in a_chunks.iter().zip(b_chunks) {
        for ((sum, p), q) in partial.iter_mut().zip(x).zip(y) {
            *sum += p * q;
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(p, q)| p * q).sum();
    partial.iter().sum::<f32>() + rest
}

/// Four dot products against one vector `b` (all of its length), each summed exactly as [`dot`]
/// sums it.
#[inline(always)]
fn dot4(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    const LANES: usize = 8;
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let split = b_chunks.len() * LANES;
    // Cut to `b`'s chunk count so that indexing below needs no bounds check.
    let a_chunks = a.map(|row| &row.as_chunks::<LANES>().0[..b_chunks.len()]);
    let mut partial = [[0.0f32; LANES]; 4];
    for (chunk, y) in b_chunks.iter().enumerate() {
        for (sums, rows) in partial.iter_mut().zip(&a_chunks) {
            for ((sum, p), q) in sums.iter_mut().zip(&rows[chunk]).zip(y) {
                *sum += p * q;
            }
        }
    }
    std::array::from_fn(|slot| {
        let rest: f32 = a[slot][split..].iter().zip(b_rest).map(|(p, q)| p * q).sum();
        partial[slot].iter().sum::<f32>() + rest
    })
}

fn fine_bin(d: f32) -> usize {
    ((d * (QUANTILE_BINS as f32 / MAX_DISTANCE)) as usize).min(QUANTILE_BINS - 1)
}

fn fine_edge(bin: usize) -> f32 {
    bin as f32 * (MAX_DISTANCE / QUANTILE_BINS as f32)
}

/// The first fine bin whose cumulative count reaches `max(1, ⌈q·n⌉)` (`bins` holds `n > 0` counts).
fn quantile_bin(bins: &[u64], q: f32) -> usize {
    let total: u64 = bins.iter().sum();
    let target = ((f64::from(q) * total as f64).ceil() as u64).max(1);
    let mut seen = 0;
    for (bin, &count) in bins.iter().enumerate() {
        seen += count;
        if seen >= target {
            return bin;
        }
    }
    bins.len() - 1
}

/// Groups the occupied fine bins into at most `bins` display bins (see the module docs).
fn display_histogram(positive: &[u64], negative: &[u64], bins: usize) -> DistanceHistogram {
    let occupied = |bin: &usize| positive[*bin] + negative[*bin] > 0;
    let low = (0..QUANTILE_BINS).find(occupied).unwrap_or(0);
    let high = (0..QUANTILE_BINS).rev().find(occupied).unwrap_or(QUANTILE_BINS - 1).max(low);
    let span = high - low + 1;
    let groups = bins.min(span);
    let boundaries: Vec<usize> = (0..=groups).map(|group| low + group * span / groups).collect();
    let sum_range = |counts: &[u64]| boundaries.windows(2).map(|pair| counts[pair[0]..pair[1]].iter().sum()).collect();
    DistanceHistogram {
        bin_edges: boundaries.iter().map(|&bin| fine_edge(bin)).collect(),
        positive_counts: sum_range(positive),
        negative_counts: sum_range(negative),
    }
}

/// The valley between the positive and negative modes (see the module docs).
fn valley(histogram: &DistanceHistogram) -> Option<f32> {
    let mode = |counts: &[u64]| {
        counts.iter().enumerate().fold(0, |best, (bin, &count)| if count > counts[best] { bin } else { best })
    };
    let (positive_mode, negative_mode) = (mode(&histogram.positive_counts), mode(&histogram.negative_counts));
    if positive_mode >= negative_mode {
        return None;
    }
    let positive_total = histogram.positive_counts.iter().sum::<u64>() as f64;
    let negative_total = histogram.negative_counts.iter().sum::<u64>() as f64;
    let edges = &histogram.bin_edges;
    let density = |bin: usize| {
        let width = f64::from(edges[bin + 1] - edges[bin]);
        (histogram.positive_counts[bin] as f64 / positive_total
            + histogram.negative_counts[bin] as f64 / negative_total)
            / width
    };
    let lowest = (positive_mode..=negative_mode)
        .fold(positive_mode, |best, bin| if density(bin) < density(best) { bin } else { best });
    Some((edges[lowest] + edges[lowest + 1]) / 2.0)
}

#[cfg(test)]
#[path = "offline_tests.rs"]
mod tests;
