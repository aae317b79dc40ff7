//! Retrieval quality: Recall@K and MAP@R ([`Metrics`], [`MetricsAccumulator`]), and exact
//! in-process evaluation: every query ranked against the whole gallery ([`evaluate`]).
//!
//! The measures are those of metric-learning work (Musgrave et al., "A Metric Learning Reality
//! Check", 2020). For one query with ranked results marked relevant (same label) or not, and
//! `R` relevant items in the catalogue:
//! - Recall@K is 1 when any of the first K results is relevant, else 0;
//! - AP@R = (1/R) · Σ_{i ≤ R, result i relevant} (relevant among first i) / i.
//!
//! The dataset figures are the means over queries.
//!
//! Training needs a quality figure that does not go through the server: the HTTP search caps `k`
//! at 1000, so `lookalike eval` can only give MAP@R with R capped, and an approximate index would
//! blur the differences between training runs that we want to measure. [`evaluate`] ranks every
//! gallery item for every query by the dot product (cosine, as rows are L2-normalised), exactly,
//! and feeds [`MetricsAccumulator`] with the true R: the number of gallery items that
//! share the query's label, however many there are.
//!
//! # Cost
//!
//! Similarities are computed [`QUERY_BLOCK`] queries at a time as one matrix product (candle's CPU
//! matmul, which is multi-threaded), so the full queries × gallery matrix is never held: 10,000
//! queries against 60,000 items would be 2.4 GB. Each query then keeps only its first
//! `max(R, 10)` results, found with a partial selection and sorted, across rayon's threads. Ties
//! between equal similarities go to the lower gallery index, so the result does not depend on the
//! number of threads. Queries' figures are summed in query order.

use std::cmp::Ordering;
use std::collections::HashMap;

use anyhow::{Context, ensure};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Recall@1/5/10 and MAP@R averaged over queries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// Queries whose similarities are computed together (one block is `QUERY_BLOCK` × gallery `f32`s).
pub const QUERY_BLOCK: usize = 256;
/// The deepest rank any reported metric reads besides MAP@R (Recall@10).
const MIN_RANKED: usize = 10;

/// Retrieval quality of a set of queries against a gallery.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetrievalReport {
    /// Recall@1/5/10 and MAP@R (exact R) averaged over the evaluated queries.
    pub metrics: Metrics,
    /// Queries evaluated: those with at least one gallery item of their label.
    pub queries: usize,
    /// Queries skipped because no gallery item has their label (R = 0).
    pub skipped: usize,
}

/// Queries (rows of `dim`, L2-normalised) search the gallery by cosine; R for a query = number of
/// gallery items with its label (queries with R = 0 are skipped and counted).
///
/// The similarity is the plain dot product: rows are expected to be unit vectors already. Errors
/// on a zero `dim`, on slices that are not whole rows matching their labels, on an empty gallery
/// and on non-finite values.
pub fn evaluate(
    queries: &[f32],
    query_labels: &[u32],
    gallery: &[f32],
    gallery_labels: &[u32],
    dim: usize,
    device: &Device,
) -> anyhow::Result<RetrievalReport> {
    validate(queries, query_labels, gallery, gallery_labels, dim)?;
    let mut relevant_counts: HashMap<u32, usize> = HashMap::new();
    for &label in gallery_labels {
        *relevant_counts.entry(label).or_default() += 1;
    }
    let evaluated: Vec<usize> =
        (0..query_labels.len()).filter(|&q| relevant_counts.contains_key(&query_labels[q])).collect();

    let gallery_t = Tensor::from_slice(gallery, (gallery_labels.len(), dim), device)?.t()?;
    let mut accumulator = MetricsAccumulator::default();
    for block in evaluated.chunks(QUERY_BLOCK) {
        let rows: Vec<f32> = block.iter().flat_map(|&q| &queries[q * dim..(q + 1) * dim]).copied().collect();
        let block_queries = Tensor::from_vec(rows, (block.len(), dim), device)?;
        let similarities: Vec<f32> = block_queries.matmul(&gallery_t)?.flatten_all()?.to_vec1()?;
        let ranked: Vec<(Vec<bool>, usize)> = block
            .par_iter()
            .zip(similarities.par_chunks_exact(gallery_labels.len()))
            .map(|(&q, row)| {
                let label = query_labels[q];
                let r = relevant_counts.get(&label).copied().unwrap_or(0);
                let top = top_ranked(row, r.max(MIN_RANKED));
                (top.iter().map(|&item| gallery_labels[item as usize] == label).collect(), r)
            })
            .collect();
        for (relevant, r) in &ranked {
            accumulator.add(relevant, *r);
        }
    }
    Ok(RetrievalReport {
        metrics: accumulator.finish(),
        queries: accumulator.queries(),
        skipped: query_labels.len() - evaluated.len(),
    })
}

/// The gallery indices of the `count` highest similarities (all of them if fewer), best first,
/// ties to the lower index.
fn top_ranked(similarities: &[f32], count: usize) -> Vec<u32> {
    let mut scored: Vec<(f32, u32)> = similarities.iter().enumerate().map(|(item, &s)| (s, item as u32)).collect();
    let count = count.min(scored.len());
    if count < scored.len() {
        scored.select_nth_unstable_by(count, best_first);
        scored.truncate(count);
    }
    scored.sort_unstable_by(best_first);
    scored.into_iter().map(|(_, item)| item).collect()
}

fn validate(
    queries: &[f32],
    query_labels: &[u32],
    gallery: &[f32],
    gallery_labels: &[u32],
    dim: usize,
) -> anyhow::Result<()> {
    ensure!(dim > 0, "the dimension must be positive");
    ensure!(
        query_labels.len().checked_mul(dim) == Some(queries.len()),
        "{} query values are not {} rows of {dim}",
        queries.len(),
        query_labels.len()
    );
    ensure!(
        gallery_labels.len().checked_mul(dim) == Some(gallery.len()),
        "{} gallery values are not {} rows of {dim}",
        gallery.len(),
        gallery_labels.len()
    );
    ensure!(!gallery_labels.is_empty(), "the gallery is empty");
    u32::try_from(gallery_labels.len()).ok().context("the gallery has too many items to index with u32")?;
    let non_finite = |values: &[f32]| values.chunks_exact(dim).position(|row| row.iter().any(|x| !x.is_finite()));
    if let Some(row) = non_finite(queries) {
        anyhow::bail!("query {row} holds a non-finite value");
    }
    if let Some(row) = non_finite(gallery) {
        anyhow::bail!("gallery item {row} holds a non-finite value");
    }
    Ok(())
}

/// Orders by similarity, best first; equal similarities by lower index.
fn best_first(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

#[cfg(test)]
#[path = "retrieval_tests.rs"]
mod tests;
