//! Retrieval quality metrics: Recall@K and MAP@R, as in metric-learning work
//! (Musgrave et al., "A Metric Learning Reality Check", 2020).
//!
//! For one query with ranked results marked relevant (same label) or not, and
//! `R` relevant items in the catalogue:
//! - Recall@K is 1 when any of the first K results is relevant, else 0;
//! - AP@R = (1/R) · Σ_{i ≤ R, result i relevant} (relevant among first i) / i.
//!
//! The dataset figures are the means over queries. Pure functions.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub map_at_r: f64,
}

/// 1.0 when one of the first `k` results is relevant.
pub fn recall_at(relevant: &[bool], k: usize) -> f64 {
    f64::from(u8::from(relevant.iter().take(k).any(|&r| r)))
}

/// AP@R over the first `r` ranked results (missing results count as misses).
pub fn average_precision_at_r(relevant: &[bool], r: usize) -> f64 {
    if r == 0 {
        return 0.0;
    }
    let mut hits = 0usize;
    let mut sum = 0.0;
    for (i, &is_relevant) in relevant.iter().take(r).enumerate() {
        if is_relevant {
            hits += 1;
            sum += hits as f64 / (i + 1) as f64;
        }
    }
    sum / r as f64
}

/// Sums per-query figures into dataset means.
#[derive(Debug, Default)]
pub struct MetricsAccumulator {
    sum: Metrics,
    queries: usize,
}

impl MetricsAccumulator {
    /// Adds one query: its ranked relevance and its number of relevant items.
    pub fn add(&mut self, relevant: &[bool], r: usize) {
        self.sum.recall_at_1 += recall_at(relevant, 1);
        self.sum.recall_at_5 += recall_at(relevant, 5);
        self.sum.recall_at_10 += recall_at(relevant, 10);
        self.sum.map_at_r += average_precision_at_r(relevant, r);
        self.queries += 1;
    }

    pub fn queries(&self) -> usize {
        self.queries
    }

    pub fn finish(&self) -> Metrics {
        let n = self.queries.max(1) as f64;
        Metrics {
            recall_at_1: self.sum.recall_at_1 / n,
            recall_at_5: self.sum.recall_at_5 / n,
            recall_at_10: self.sum.recall_at_10 / n,
            map_at_r: self.sum.map_at_r / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
