//! Tests of offline mining against a naive enumeration of every pair, on seeded clustered embeddings.

use super::kernels::{dot, dot4, has_avx, unit_distance};
use super::*;
use crate::train::{PkSampler, PkShape};

/// `labels × per_label` unit vectors around one random unit centre per label; returns (rows, labels).
fn clustered(labels: u32, per_label: usize, dim: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SeededRng::new(seed);
    let mut uniform = move || (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    let mut rows = Vec::new();
    let mut item_labels = Vec::new();
    for label in 0..labels {
        let centre = normalised((0..dim).map(|_| uniform()).collect());
        for _ in 0..per_label {
            rows.extend(normalised(centre.iter().map(|c| c + spread * uniform()).collect()));
            item_labels.push(label);
        }
    }
    (rows, item_labels)
}

fn normalised(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

fn row(rows: &[f32], dim: usize, item: usize) -> &[f32] {
    &rows[item * dim..(item + 1) * dim]
}

/// Five labels of seven items and one label of a single item (index 35), 16-dimensional.
fn small_set() -> (Vec<f32>, Vec<u32>, usize) {
    let dim = 16;
    let (mut rows, mut labels) = clustered(5, 7, dim, 0.6, 3);
    let (lonely, _) = clustered(1, 1, dim, 0.0, 99);
    rows.extend(lonely);
    labels.push(5);
    let (more, more_labels) = clustered(1, 4, dim, 0.6, 7);
    rows.extend(more);
    labels.extend(more_labels.iter().map(|_| 6));
    (rows, labels, dim)
}

fn naive_quantile(mut distances: Vec<f32>, q: f32) -> f32 {
    distances.sort_by(f32::total_cmp);
    let target = ((f64::from(q) * distances.len() as f64).ceil() as usize).max(1);
    distances[target - 1]
}

#[test]
fn matches_a_naive_enumeration_of_every_pair() -> Result<(), OfflineMiningError> {
    let (rows, labels, dim) = small_set();
    let n = labels.len();
    assert_eq!(n, 40);
    let params = OfflineMiningParams { histogram_bins: 7, hard_positives_per_anchor: 2, ..Default::default() };
    let mined = mine_offline(&rows, dim, &labels, &params)?;

    let mut positives = Vec::new();
    let mut negatives = Vec::new();
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let d = unit_distance(row(&rows, dim, a), row(&rows, dim, b));
            let exact = row(&rows, dim, a).iter().zip(row(&rows, dim, b)).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
            assert!((d - exact.sqrt()).abs() < 1e-3, "dot-product distance {d} vs {}", exact.sqrt());
            if labels[a] == labels[b] { positives.push(d) } else { negatives.push(d) }
        }
    }
    let step = 2.0 / QUANTILE_BINS as f32;
    let t_pos = ((naive_quantile(positives.clone(), 0.9) / step).floor() + 1.0) * step;
    let t_neg = (naive_quantile(negatives.clone(), 0.1) / step).floor() * step;
    assert_eq!((mined.thresholds.positive, mined.thresholds.negative), (t_pos, t_neg));

    let pick = |same: bool, keep: &dyn Fn(f32) -> bool, farthest: bool, per_anchor: usize| {
        let mut pairs = Vec::new();
        for a in 0..n {
            let mut found: Vec<(f32, usize)> = (0..n)
                .filter(|&b| b != a && (labels[a] == labels[b]) == same)
                .map(|b| (unit_distance(row(&rows, dim, a), row(&rows, dim, b)), b))
                .filter(|&(d, _)| keep(d))
                .collect();
            found.sort_by(|x, y| if farthest { y.0.total_cmp(&x.0) } else { x.0.total_cmp(&y.0) }.then(x.1.cmp(&y.1)));
            pairs.extend(found.iter().take(per_anchor).map(|&(_, b)| (a, b)));
        }
        pairs
    };
    assert_eq!(mined.hard_positives, pick(true, &|d| d >= t_pos, true, 2));
    assert_eq!(mined.hard_negatives, pick(false, &|d| d <= t_neg, false, 3));
    assert!(!mined.hard_positives.is_empty() && !mined.hard_negatives.is_empty());

    let edges = &mined.histogram.bin_edges;
    assert_eq!(edges.len(), 8);
    let bin_of = |d: f32| {
        assert!(d >= edges[0] && d < edges[edges.len() - 1], "{d} outside {edges:?}");
        edges.windows(2).position(|pair| d >= pair[0] && d < pair[1]).unwrap_or(edges.len() - 2)
    };
    let count = |distances: &[f32]| {
        let mut counts = vec![0u64; edges.len() - 1];
        distances.iter().for_each(|&d| counts[bin_of(d)] += 1);
        counts
    };
    assert_eq!(mined.histogram.positive_counts, count(&positives));
    assert_eq!(mined.histogram.negative_counts, count(&negatives));

    let mean = |values: &[f32]| (values.iter().map(|&d| f64::from(d)).sum::<f64>() / values.len() as f64) as f32;
    assert_eq!(mined.stats.anchors, n);
    assert_eq!(mined.stats.positive_pairs, positives.len() as u64);
    assert_eq!(mined.stats.negative_pairs, negatives.len() as u64);
    assert!((mined.stats.mean_positive - mean(&positives)).abs() < 1e-5);
    assert!((mined.stats.mean_negative - mean(&negatives)).abs() < 1e-5);
    Ok(())
}

#[test]
fn separated_clusters_give_ordered_peaks_and_valid_pairs() -> Result<(), OfflineMiningError> {
    let dim = 32;
    let (rows, labels) = clustered(12, 15, dim, 0.5, 11);
    let mined = mine_offline(&rows, dim, &labels, &OfflineMiningParams::default())?;
    let (stats, thresholds) = (&mined.stats, &mined.thresholds);
    assert!(stats.mean_positive < stats.mean_negative, "{stats:?}");
    for t in [thresholds.positive, thresholds.negative] {
        assert!(stats.mean_positive < t && t < stats.mean_negative, "{thresholds:?} vs {stats:?}");
    }
    let valley = thresholds.valley.expect("separated clusters have a valley");
    assert!(stats.mean_positive < valley && valley < stats.mean_negative, "valley {valley}");
    let d = |a: usize, b: usize| unit_distance(row(&rows, dim, a), row(&rows, dim, b));
    for &(a, p) in &mined.hard_positives {
        assert!(a != p && labels[a] == labels[p] && d(a, p) >= thresholds.positive);
    }
    for &(a, n) in &mined.hard_negatives {
        assert!(labels[a] != labels[n] && d(a, n) <= thresholds.negative);
    }
    assert!(!mined.hard_positives.is_empty() && !mined.hard_negatives.is_empty());
    assert!(mined.hard_positives.len() <= 2 * labels.len() && mined.hard_negatives.len() <= 3 * labels.len());
    Ok(())
}

#[test]
fn single_item_labels_get_no_positives() -> Result<(), OfflineMiningError> {
    let (rows, labels, dim) = small_set();
    let lonely = 35;
    assert_eq!(labels.iter().filter(|&&label| label == labels[lonely]).count(), 1);
    let params = OfflineMiningParams { positive_quantile: 0.0, ..Default::default() };
    let mined = mine_offline(&rows, dim, &labels, &params)?;
    assert!(mined.hard_positives.iter().all(|&(a, p)| a != lonely && p != lonely));
    assert!(mined.hard_negatives.iter().any(|&(a, _)| a == lonely));
    let injected = mined.injected_positives();
    assert!(!injected.contains_key(&lonely));
    assert_eq!(injected.len(), labels.len() - 1, "every other item has a positive at quantile 0");
    Ok(())
}

#[test]
fn injected_positives_are_the_hardest_and_the_sampler_accepts_them() -> Result<(), Box<dyn std::error::Error>> {
    let (rows, labels, dim) = small_set();
    let mined = mine_offline(&rows, dim, &labels, &OfflineMiningParams::default())?;
    let injected = mined.injected_positives();
    for (&anchor, &positive) in &injected {
        let first = mined.hard_positives.iter().find(|&&(a, _)| a == anchor);
        assert_eq!(first, Some(&(anchor, positive)));
    }
    PkSampler::with_injected(&labels, PkShape { labels_per_batch: 3, items_per_label: 4 }, 0, injected)?;
    Ok(())
}

#[test]
fn subsampling_above_max_exact_items_is_seeded_and_deterministic() -> Result<(), OfflineMiningError> {
    let dim = 16;
    let (rows, labels) = clustered(6, 10, dim, 0.5, 5);
    let params = OfflineMiningParams { max_exact_items: 24, seed: 1, ..Default::default() };
    let mined = mine_offline(&rows, dim, &labels, &params)?;
    assert_eq!(mined.stats.anchors, 24);
    assert_eq!(mined.stats.positive_pairs + mined.stats.negative_pairs, 24 * 23);
    let mut involved: Vec<usize> = mined.hard_negatives.iter().flat_map(|&(a, b)| [a, b]).collect();
    involved.sort_unstable();
    involved.dedup();
    assert!(involved.len() <= 24 && involved.iter().all(|&item| item < labels.len()));
    assert_eq!(mined.stats.positive_anchors, labels.len());

    assert_eq!(mine_offline(&rows, dim, &labels, &params)?, mined);
    let other_seed = mine_offline(&rows, dim, &labels, &OfflineMiningParams { seed: 2, ..params })?;
    assert_ne!(other_seed, mined);
    let exact = OfflineMiningParams::default();
    assert_eq!(mine_offline(&rows, dim, &labels, &exact)?, mine_offline(&rows, dim, &labels, &exact)?);
    Ok(())
}

/// Every item's hard positives by brute force: same-label items at distance `≥ t_pos`, the `per_anchor`
/// farthest first, ties to the lower index.
fn brute_force_positives(
    rows: &[f32],
    dim: usize,
    labels: &[u32],
    t_pos: f32,
    per_anchor: usize,
) -> Vec<(usize, usize)> {
    let n = labels.len();
    let mut pairs = Vec::new();
    for a in 0..n {
        let mut found: Vec<(f32, usize)> = (0..n)
            .filter(|&b| b != a && labels[a] == labels[b])
            .map(|b| (unit_distance(row(rows, dim, a), row(rows, dim, b)), b))
            .filter(|&(d, _)| d >= t_pos)
            .collect();
        found.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
        pairs.extend(found.iter().take(per_anchor).map(|&(_, b)| (a, b)));
    }
    pairs
}

/// 7 labels of 13 items (dimension 37, not a multiple of 8 or 4) plus the lonely label of `small_set`.
fn positive_set() -> (Vec<f32>, Vec<u32>, usize) {
    let dim = 37;
    let (mut rows, mut labels) = clustered(7, 13, dim, 0.7, 21);
    let (lonely, _) = clustered(1, 1, dim, 0.0, 98);
    rows.extend(lonely);
    labels.push(7);
    (rows, labels, dim)
}

#[test]
fn above_max_exact_items_every_item_gets_its_exact_hard_positives() -> Result<(), OfflineMiningError> {
    let (rows, labels, dim) = positive_set();
    let n = labels.len();
    for per_anchor in [1, 2, 5] {
        let params = OfflineMiningParams {
            max_exact_items: 30,
            positive_quantile: 0.6,
            hard_positives_per_anchor: per_anchor,
            seed: 4,
            ..Default::default()
        };
        let mined = mine_offline(&rows, dim, &labels, &params)?;
        let t_pos = mined.thresholds.positive;
        assert_eq!(mined.hard_positives, brute_force_positives(&rows, dim, &labels, t_pos, per_anchor));
        assert_eq!((mined.stats.anchors, mined.stats.positive_anchors), (30, n));
        assert_eq!(mined.stats.capped_positive_labels, 0);

        // Anchors outside the subset get positives too: more than the subset's 30 anchors have one.
        let injected = mined.injected_positives();
        assert!(injected.len() > 30, "{} anchors with a positive", injected.len());
        assert!(!injected.contains_key(&(n - 1)), "the lonely item has no positive");

        // The statistics and negatives are still the subset's alone.
        assert_eq!(mined.stats.positive_pairs + mined.stats.negative_pairs, 30 * 29);
        let mut involved: Vec<usize> = mined.hard_negatives.iter().flat_map(|&(a, b)| [a, b]).collect();
        involved.sort_unstable();
        involved.dedup();
        assert!(involved.len() <= 30);
    }
    Ok(())
}

#[test]
fn positive_mining_does_not_depend_on_the_thread_count() -> Result<(), Box<dyn std::error::Error>> {
    let (rows, labels, dim) = positive_set();
    let params = OfflineMiningParams { max_exact_items: 40, positive_quantile: 0.5, ..Default::default() };
    let capped = OfflineMiningParams { max_positive_scan_items: 6, ..params.clone() };
    let mine_with = |threads: usize, params: &OfflineMiningParams| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
        Ok::<_, Box<dyn std::error::Error>>(pool.install(|| mine_offline(&rows, dim, &labels, params))?)
    };
    for params in [&params, &capped] {
        let one = mine_with(1, params)?;
        assert_eq!(one, mine_with(3, params)?);
        assert_eq!(one, mine_with(8, params)?);
    }
    Ok(())
}

#[test]
fn capped_labels_search_a_seeded_subset_of_candidates() -> Result<(), OfflineMiningError> {
    let (rows, labels, dim) = positive_set();
    let n = labels.len();
    let base = OfflineMiningParams { max_exact_items: 30, positive_quantile: 0.3, ..Default::default() };
    let full = mine_offline(&rows, dim, &labels, &base)?;
    // A cap at the largest label's size changes nothing.
    let at_size =
        mine_offline(&rows, dim, &labels, &OfflineMiningParams { max_positive_scan_items: 13, ..base.clone() })?;
    assert_eq!(at_size, full);

    let capped_params = OfflineMiningParams { max_positive_scan_items: 5, ..base.clone() };
    let capped = mine_offline(&rows, dim, &labels, &capped_params)?;
    assert_eq!(capped.stats.capped_positive_labels, 7);
    assert_eq!(capped.thresholds, full.thresholds);
    let d = |a: usize, b: usize| unit_distance(row(&rows, dim, a), row(&rows, dim, b));
    let mut candidates_per_label: HashMap<u32, Vec<usize>> = HashMap::new();
    for &(a, p) in &capped.hard_positives {
        assert!(a != p && labels[a] == labels[p] && d(a, p) >= capped.thresholds.positive);
        candidates_per_label.entry(labels[a]).or_default().push(p);
    }
    for (label, mut seen) in candidates_per_label {
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() <= 5, "label {label} drew positives from {} candidates", seen.len());
    }
    // Every anchor of a label searches the same candidates, so all anchors still get positives.
    assert!(capped.injected_positives().len() > 30);
    assert!(capped.injected_positives().len() < n);
    assert_eq!(mine_offline(&rows, dim, &labels, &capped_params)?, capped);
    let other_seed = mine_offline(&rows, dim, &labels, &OfflineMiningParams { seed: 9, ..capped_params })?;
    assert_ne!(other_seed.hard_positives, capped.hard_positives);
    Ok(())
}

#[test]
fn dot4_sums_exactly_as_dot() {
    let (rows, _, dim) = positive_set();
    for b in 0..10 {
        let anchors = [3, 17, 40, 88].map(|a| row(&rows, dim, a));
        let four = dot4(anchors, row(&rows, dim, b));
        for (slot, anchor) in anchors.iter().enumerate() {
            assert_eq!(four[slot].to_bits(), dot(anchor, row(&rows, dim, b)).to_bits());
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn dot4_avx(a: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
    dot4(a, b)
}

#[test]
fn the_avx_build_of_the_kernel_gives_the_same_bits() {
    if !has_avx() {
        return;
    }
    let (rows, _, dim) = positive_set();
    for b in 0..rows.len() / dim {
        let anchors = [0, 5, 50, 91].map(|a| row(&rows, dim, a));
        // SAFETY: the CPU supports AVX (checked above).
        #[cfg(target_arch = "x86_64")]
        let four = unsafe { dot4_avx(anchors, row(&rows, dim, b)) };
        #[cfg(not(target_arch = "x86_64"))]
        let four = dot4(anchors, row(&rows, dim, b));
        for (slot, anchor) in anchors.iter().enumerate() {
            assert_eq!(four[slot].to_bits(), dot(anchor, row(&rows, dim, b)).to_bits());
        }
    }
}

#[test]
fn bad_inputs_are_rejected() {
    let (rows, labels, dim) = small_set();
    let params = OfflineMiningParams::default();
    fn mine(rows: &[f32], dim: usize, labels: &[u32], params: &OfflineMiningParams) -> Option<OfflineMiningError> {
        mine_offline(rows, dim, labels, params).err()
    }
    assert_eq!(
        mine(&rows[1..], dim, &labels, &params),
        Some(OfflineMiningError::BadShape { values: rows.len() - 1, dim })
    );
    assert!(matches!(mine(&rows, 0, &labels, &params), Some(OfflineMiningError::BadShape { .. })));
    assert!(matches!(mine(&rows, dim, &labels[1..], &params), Some(OfflineMiningError::LabelCountMismatch { .. })));
    let mut with_nan = rows.clone();
    with_nan[3 * dim + 2] = f32::NAN;
    assert_eq!(mine(&with_nan, dim, &labels, &params), Some(OfflineMiningError::NonFinite(3)));
    let distinct: Vec<u32> = (0..labels.len() as u32).collect();
    assert_eq!(mine(&rows, dim, &distinct, &params), Some(OfflineMiningError::NoPositivePairs));
    assert_eq!(mine(&rows, dim, &vec![0; labels.len()], &params), Some(OfflineMiningError::NoNegativePairs));
    for bad in [
        OfflineMiningParams { positive_quantile: 1.5, ..Default::default() },
        OfflineMiningParams { max_exact_items: 1, ..Default::default() },
        OfflineMiningParams { histogram_bins: 0, ..Default::default() },
        OfflineMiningParams { max_positive_scan_items: 1, ..Default::default() },
    ] {
        assert!(matches!(mine(&rows, dim, &labels, &bad), Some(OfflineMiningError::InvalidParams(_))));
    }
}

#[test]
fn params_and_result_round_trip_through_json() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(serde_json::from_str::<OfflineMiningParams>("{}")?, OfflineMiningParams::default());
    let (rows, labels, dim) = small_set();
    let mined = mine_offline(&rows, dim, &labels, &OfflineMiningParams::default())?;
    assert_eq!(serde_json::from_str::<MinedPairs>(&serde_json::to_string(&mined)?)?, mined);
    Ok(())
}
