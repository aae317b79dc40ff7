//! [`evaluate`] against a brute-force ranking, and small cases worked by hand.
//!
//! The random cases use small integer coordinates: their dot products are exact in `f32` whatever
//! the summation order of the matrix product, so the blocked and the brute-force rankings must
//! agree item for item, and the many exact ties exercise the lower-index rule.

use candle_core::Device;

use super::*;
use crate::rng::SeededRng;

/// Every gallery item ranked by exact similarity (ties to the lower index), then the metrics
/// computed from their definitions, without [`MetricsAccumulator`].
fn brute_force(
    queries: &[f32],
    query_labels: &[u32],
    gallery: &[f32],
    gallery_labels: &[u32],
    dim: usize,
) -> (Metrics, usize, usize) {
    let mut sum = Metrics::default();
    let (mut evaluated, mut skipped) = (0usize, 0usize);
    for (q, &label) in query_labels.iter().enumerate() {
        let r = gallery_labels.iter().filter(|&&l| l == label).count();
        if r == 0 {
            skipped += 1;
            continue;
        }
        let query = &queries[q * dim..(q + 1) * dim];
        let mut order: Vec<(f64, usize)> = gallery
            .chunks_exact(dim)
            .enumerate()
            .map(|(item, row)| (row.iter().zip(query).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum(), item))
            .collect();
        order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let relevant: Vec<bool> = order.iter().map(|&(_, item)| gallery_labels[item] == label).collect();
        let hit_within = |k: usize| f64::from(u8::from(relevant[..k.min(relevant.len())].contains(&true)));
        sum.recall_at_1 += hit_within(1);
        sum.recall_at_5 += hit_within(5);
        sum.recall_at_10 += hit_within(10);
        let mut hits = 0;
        let mut precision_sum = 0.0;
        for (rank, &is_relevant) in relevant[..r].iter().enumerate() {
            if is_relevant {
                hits += 1;
                precision_sum += f64::from(hits) / (rank + 1) as f64;
            }
        }
        sum.map_at_r += precision_sum / r as f64;
        evaluated += 1;
    }
    let n = evaluated.max(1) as f64;
    let mean = Metrics {
        recall_at_1: sum.recall_at_1 / n,
        recall_at_5: sum.recall_at_5 / n,
        recall_at_10: sum.recall_at_10 / n,
        map_at_r: sum.map_at_r / n,
    };
    (mean, evaluated, skipped)
}

/// `count` rows of `dim` small integers in -2..=2.
fn integer_rows(rng: &mut SeededRng, count: usize, dim: usize) -> Vec<f32> {
    (0..count * dim).map(|_| (rng.next_u64() % 5) as f32 - 2.0).collect()
}

fn assert_close(actual: &Metrics, expected: &Metrics) {
    let pairs = [
        (actual.recall_at_1, expected.recall_at_1),
        (actual.recall_at_5, expected.recall_at_5),
        (actual.recall_at_10, expected.recall_at_10),
        (actual.map_at_r, expected.map_at_r),
    ];
    for (a, e) in pairs {
        assert!((a - e).abs() < 1e-9, "{actual:?} vs {expected:?}");
    }
}

#[test]
fn matches_brute_force_on_random_data_with_ties_rare_labels_and_several_blocks() -> anyhow::Result<()> {
    let mut rng = SeededRng::new(11);
    for (dim, gallery_size, query_count) in [(6, 700, QUERY_BLOCK * 2 + 37), (3, 7, 20), (16, 300, 40)] {
        // Labels 0..6 are common; label 6 has few gallery items (R < 10); label 9 has none.
        let gallery_labels: Vec<u32> =
            (0..gallery_size).map(|i| if i % 97 == 5 { 6 } else { (rng.next_u64() % 6) as u32 }).collect();
        let query_labels: Vec<u32> = (0..query_count).map(|_| [0, 1, 2, 3, 4, 5, 6, 9][rng.below(8)]).collect();
        let gallery = integer_rows(&mut rng, gallery_size, dim);
        let queries = integer_rows(&mut rng, query_count, dim);
        let report = evaluate(&queries, &query_labels, &gallery, &gallery_labels, dim, &Device::Cpu)?;
        let (expected, evaluated, skipped) = brute_force(&queries, &query_labels, &gallery, &gallery_labels, dim);
        assert_close(&report.metrics, &expected);
        assert_eq!((report.queries, report.skipped), (evaluated, skipped));
        assert!(skipped > 0 && evaluated > 0);
    }
    Ok(())
}

#[test]
fn hand_worked_rankings() -> anyhow::Result<()> {
    let gallery = [1.0, 0.0, 0.0, 1.0, 0.6, 0.8];
    let gallery_labels = [0, 1, 0];
    // Query 0 ranks g0, g2, g1: relevant, relevant, not (AP@2 = 1). Query 1 ranks g1, g2, g0: not,
    // relevant, relevant (AP@2 = (1/2) / 2). Query 2's label is not in the gallery.
    let queries = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let report = evaluate(&queries, &[0, 0, 5], &gallery, &gallery_labels, 2, &Device::Cpu)?;
    assert_eq!((report.queries, report.skipped), (2, 1));
    assert_close(
        &report.metrics,
        &Metrics { recall_at_1: 0.5, recall_at_5: 1.0, recall_at_10: 1.0, map_at_r: (1.0 + 0.25) / 2.0 },
    );
    Ok(())
}

#[test]
fn equal_similarities_rank_the_lower_gallery_index_first() -> anyhow::Result<()> {
    let gallery = [0.0, 1.0, 0.0, 1.0];
    let query = [0.0, 1.0];
    let first_irrelevant = evaluate(&query, &[0], &gallery, &[1, 0], 2, &Device::Cpu)?;
    assert_eq!(first_irrelevant.metrics.recall_at_1, 0.0);
    assert_eq!(first_irrelevant.metrics.map_at_r, 0.0, "R = 1 and rank 1 is the other label");
    let first_relevant = evaluate(&query, &[0], &gallery, &[0, 1], 2, &Device::Cpu)?;
    assert_eq!(first_relevant.metrics.recall_at_1, 1.0);
    assert_eq!(first_relevant.metrics.map_at_r, 1.0);
    Ok(())
}

#[test]
fn top_ranked_keeps_the_best_in_order() {
    assert_eq!(top_ranked(&[0.1, 0.9, 0.5, 0.9, -1.0], 3), vec![1, 3, 2]);
    assert_eq!(top_ranked(&[0.1, 0.2], 10), vec![1, 0]);
}

#[test]
fn bad_inputs_are_errors() {
    let row = [1.0, 0.0];
    assert!(evaluate(&row, &[0], &row, &[0], 0, &Device::Cpu).is_err(), "zero dimension");
    assert!(evaluate(&row, &[0, 1], &row, &[0], 2, &Device::Cpu).is_err(), "queries do not match their labels");
    assert!(evaluate(&row, &[0], &row[..1], &[0], 2, &Device::Cpu).is_err(), "gallery is not whole rows");
    assert!(evaluate(&row, &[0], &[], &[], 2, &Device::Cpu).is_err(), "empty gallery");
    assert!(evaluate(&[f32::NAN, 0.0], &[0], &row, &[0], 2, &Device::Cpu).is_err(), "non-finite query");
    assert!(evaluate(&row, &[0], &[0.0, f32::INFINITY], &[0], 2, &Device::Cpu).is_err(), "non-finite gallery item");
}

// Recall@K and MAP@R of ranked lists.

#[test]
fn map_at_r_matches_the_papers_example() {
    // R = 10, relevant at ranks 1, 3, 5 (Musgrave et al., section 3.2 style).
    let mut ranked = vec![false; 10];
    ranked[0] = true;
    ranked[2] = true;
    ranked[4] = true;
    let expected = (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 10.0;
    assert!((average_precision_at_r(&ranked, 10) - expected).abs() < 1e-12);
}

#[test]
fn perfect_and_empty_rankings() {
    assert_eq!(average_precision_at_r(&[true; 4], 4), 1.0);
    assert_eq!(average_precision_at_r(&[false; 4], 4), 0.0);
    assert_eq!(average_precision_at_r(&[true], 4), 0.25, "missing results are misses");
    assert_eq!(average_precision_at_r(&[], 0), 0.0);
}

#[test]
fn recall_looks_only_at_the_first_k() {
    let ranked = [false, false, true];
    assert_eq!(recall_at(&ranked, 1), 0.0);
    assert_eq!(recall_at(&ranked, 3), 1.0);
    let mut acc = MetricsAccumulator::default();
    acc.add(&ranked, 1);
    acc.add(&[true], 1);
    let m = acc.finish();
    assert_eq!(m.recall_at_1, 0.5);
    assert_eq!(m.recall_at_5, 1.0);
    assert_eq!(m.map_at_r, 0.5);
}
