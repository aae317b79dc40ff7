//! The hard positives of every item when mining runs on a subset: per label, blocks of anchors
//! against the label's (possibly capped) candidates, in parallel, merged in anchor order.

use std::collections::HashMap;

use rayon::prelude::*;

use super::kernels::{dot4, has_avx, keep_best};
use super::{OfflineMiningParams, POSITIVE_BLOCK, POSITIVE_STREAM};
use crate::rng::SeededRng;

/// One anchor's best candidates `(distance, item)`, best first.
type Best = Vec<(f32, usize)>;

/// Hard positives of every item, and how many labels had their candidates capped.
pub(super) struct AllPositives {
    pub(super) pairs: Vec<(usize, usize)>,
    pub(super) capped_labels: usize,
}

/// The hard positives of every item (the rule with threshold `t_pos`), by anchor ascending.
pub(super) fn mine_all_positives(
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
                SeededRng::for_stream(params.seed, stream).shuffle(&mut candidates);
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
