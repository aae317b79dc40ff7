//! One block of anchors against every mined item: the fine-bin counts of their distances, the sums
//! behind the means, and each anchor's farthest positives and nearest negatives.

use super::OfflineMiningParams;
use super::QUANTILE_BINS;
use super::bins::fine_bin;
use super::kernels::{keep_best, unit_distance};

/// One block of anchors against every candidate: fine-bin counts, sums, and per-anchor extremes.
pub(super) struct BlockScan {
    pub(super) anchors: Vec<usize>,
    pub(super) positive_bins: Vec<u64>,
    pub(super) negative_bins: Vec<u64>,
    pub(super) positive_sum: f64,
    pub(super) negative_sum: f64,
    /// Per anchor, its `hard_positives_per_anchor` farthest positives `(distance, item)`, farthest first.
    pub(super) farthest_positives: Vec<Vec<(f32, usize)>>,
    /// Per anchor, its `hard_negatives_per_anchor` nearest negatives, nearest first.
    pub(super) nearest_negatives: Vec<Vec<(f32, usize)>>,
}

/// [`scan_block`] compiled for AVX, with the same bits (see `positives::farthest_positives_avx`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
pub(super) fn scan_block_avx(
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
pub(super) fn scan_block(
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
