//! Stage 4 of a finetune job, its figures: held-out items query the training items exactly, with
//! the active model (`before`) and the new one (`after`), and `promote` decides ([`decide`]).

use serde::Serialize;

use super::split::Split;
use super::{Catalogue, Run};
use crate::error::JobFailure;
use crate::generation::ModelHandle;
use crate::train::TrainRng;
use crate::train::params::Promote;
use crate::train::retrieval::Metrics;

/// Stream of the job's seed that samples the evaluation queries.
const EVAL_STREAM: u64 = 0x6576616c;

/// The held-out figures of both models and what `promote` made of them.
pub struct Evaluation {
    /// The model that was active (its figures are `before`).
    pub parent: ModelHandle,
    /// The newly trained model (`after`).
    pub model: ModelHandle,
    pub before: Metrics,
    pub after: Metrics,
    /// Held-out items that queried.
    pub queries: usize,
    pub decision: Decision,
}

/// What `promote` made of the held-out figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub promoted: bool,
    pub rule: Rule,
    /// The rule and the figures it read, in words.
    pub reason: String,
}

/// The rule of `promote` that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `promote: always`.
    Always,
    /// `promote: never`.
    Never,
    /// `if_better`: MAP@R rose and neither Recall@1 nor Recall@5 fell past the tolerance.
    Better,
    /// `if_better`: MAP@R did not rise.
    MapDidNotRise,
    /// `if_better`: MAP@R rose but Recall@1 fell by more than the tolerance.
    Recall1Fell,
    /// `if_better`: MAP@R rose but Recall@5 fell by more than the tolerance.
    Recall5Fell,
}

/// The promotion rule. `if_better` promotes only a model whose held-out MAP@R is higher and whose
/// Recall@1 and Recall@5 are each no more than their noise margin below the active model's: a
/// model that tightens whole classes but loses the first results a user sees is refused. A
/// recall's noise margin is `recall_tolerance`, or the standard error of the active model's
/// recall over `queries` held-out queries, `√(p(1 − p)/queries)`, when that is larger (with 100
/// queries one query is 0.01 of recall, and a fall of one or two is noise).
pub fn decide(promote: Promote, before: &Metrics, after: &Metrics, recall_tolerance: f64, queries: usize) -> Decision {
    let decision = |promoted, rule, reason: String| Decision { promoted, rule, reason };
    let map = format!("held-out MAP@R {:.4} → {:.4}", before.map_at_r, after.map_at_r);
    let margin = |p: f64| recall_tolerance.max((p * (1.0 - p) / queries.max(1) as f64).sqrt());
    let fell = |name: &str, before: f64, after: f64| {
        format!(
            "{map} rose, but {name} fell {before:.4} → {after:.4}, more than its noise margin {:.4} ({queries} queries)",
            margin(before)
        )
    };
    match promote {
        Promote::Always => decision(true, Rule::Always, format!("promote is always ({map})")),
        Promote::Never => decision(false, Rule::Never, format!("promote is never ({map})")),
        Promote::IfBetter if after.map_at_r <= before.map_at_r => {
            decision(false, Rule::MapDidNotRise, format!("{map}: did not rise"))
        }
        Promote::IfBetter if after.recall_at_1 < before.recall_at_1 - margin(before.recall_at_1) => {
            decision(false, Rule::Recall1Fell, fell("Recall@1", before.recall_at_1, after.recall_at_1))
        }
        Promote::IfBetter if after.recall_at_5 < before.recall_at_5 - margin(before.recall_at_5) => {
            decision(false, Rule::Recall5Fell, fell("Recall@5", before.recall_at_5, after.recall_at_5))
        }
        Promote::IfBetter => decision(
            true,
            Rule::Better,
            format!(
                "{map} rose; Recall@1 {:.4} → {:.4} and Recall@5 {:.4} → {:.4}, within their noise margins {:.4} and \
                 {:.4} ({queries} queries)",
                before.recall_at_1,
                after.recall_at_1,
                before.recall_at_5,
                after.recall_at_5,
                margin(before.recall_at_1),
                margin(before.recall_at_5)
            ),
        ),
    }
}

/// `parent_inputs` and `model_inputs`: what each model reads of every catalogue item
/// ([`ModelHandle::boundary`]), in catalogue order.
pub(super) fn before_and_after(
    run: &Run,
    catalogue: &Catalogue,
    split: &Split,
    (parent, parent_inputs): (ModelHandle, &[Vec<f32>]),
    (model, model_inputs): (ModelHandle, &[Vec<f32>]),
) -> Result<Evaluation, JobFailure> {
    let params = &run.params;
    let mut queries = split.holdout.clone();
    if queries.len() > params.max_eval_queries {
        TrainRng::for_stream(params.seed, EVAL_STREAM).shuffle(&mut queries);
        queries.truncate(params.max_eval_queries);
        queries.sort_unstable();
    }
    let device = &run.state.device;
    let before = evaluate(&parent, parent_inputs, catalogue, &queries, &split.train, device)?;
    run.cancel.check()?;
    let after = evaluate(&model, model_inputs, catalogue, &queries, &split.train, device)?;
    let decision = decide(params.promote, &before, &after, params.recall_tolerance, queries.len());
    Ok(Evaluation { parent, model, before, after, queries: queries.len(), decision })
}

/// Held-out metrics of `model`: `queries` search `gallery` (both indices into the catalogue)
/// exactly.
fn evaluate(
    model: &ModelHandle,
    inputs: &[Vec<f32>],
    catalogue: &Catalogue,
    queries: &[usize],
    gallery: &[usize],
    device: &candle_core::Device,
) -> Result<Metrics, JobFailure> {
    let embed = |indices: &[usize]| -> anyhow::Result<Vec<f32>> {
        let rows: Vec<&[f32]> = indices.iter().map(|&i| inputs[i].as_slice()).collect();
        Ok(model.project_many(&rows)?.concat())
    };
    let dim = model.dim(catalogue.features.first().map_or(0, Vec::len));
    let labels = |indices: &[usize]| -> Vec<u32> { indices.iter().map(|&i| catalogue.labels[i]).collect() };
    let (query_rows, gallery_rows) = (embed(queries)?, embed(gallery)?);
    let report =
        crate::train::retrieval::evaluate(&query_rows, &labels(queries), &gallery_rows, &labels(gallery), dim, device)?;
    Ok(report.metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::retrieval;

    /// Unit vectors in the plane at the given angles (degrees), flattened.
    fn at_angles(degrees: &[f64]) -> Vec<f32> {
        degrees.iter().flat_map(|d| [d.to_radians().cos() as f32, d.to_radians().sin() as f32]).collect()
    }

    fn metrics(queries: &[f64], query_labels: &[u32], gallery: &[f64], gallery_labels: &[u32]) -> Metrics {
        let (q, g) = (at_angles(queries), at_angles(gallery));
        retrieval::evaluate(&q, query_labels, &g, gallery_labels, 2, &candle_core::Device::Cpu).unwrap().metrics
    }

    /// Two embeddings of the same 20 gallery items (labels 0 and 1) and 10 queries. `before`
    /// interleaves the labels around the circle, each query beside an item of its own label: every
    /// first result is right, whole classes are mixed. `after` gathers each label in one tight
    /// cluster, but one query of label 0 lands inside label 1's: MAP@R rises, Recall@5 falls.
    #[test]
    fn if_better_refuses_a_model_that_raises_map_at_r_but_lowers_recall_at_5() {
        let gallery_labels: Vec<u32> = (0..20).map(|i| i % 2).collect();
        let query_labels: Vec<u32> = (0..10).map(|i| i % 2).collect();
        let before_gallery: Vec<f64> = (0..20).map(|i| f64::from(i) * 18.0).collect();
        let before_queries: Vec<f64> = (0..10).map(|i| f64::from(i) * 18.0 + 1.0).collect();
        let cluster = |label: u32, i: u32| if label == 0 { f64::from(i) * 0.5 } else { 180.0 + f64::from(i) * 0.5 };
        let after_gallery: Vec<f64> = (0..20).map(|i| cluster(i % 2, i)).collect();
        let mut after_queries: Vec<f64> = (0..10).map(|i| cluster(i % 2, i) + 0.1).collect();
        after_queries[0] = 182.0;

        let before = metrics(&before_queries, &query_labels, &before_gallery, &gallery_labels);
        let after = metrics(&after_queries, &query_labels, &after_gallery, &gallery_labels);
        assert!(after.map_at_r > before.map_at_r + 0.2, "{before:?} → {after:?}");
        assert_eq!((before.recall_at_1, before.recall_at_5), (1.0, 1.0));
        assert_eq!((after.recall_at_1, after.recall_at_5), (0.9, 0.9));

        let refused = decide(Promote::IfBetter, &before, &after, 0.005, 10);
        assert!(!refused.promoted);
        // Recall@1 fell too, and is checked first; with a tolerance that lets Recall@1's fall
        // pass, Recall@5's still refuses the model.
        assert_eq!(refused.rule, Rule::Recall1Fell);
        let only_recall_5 = Metrics { recall_at_1: before.recall_at_1, ..after };
        let refused = decide(Promote::IfBetter, &before, &only_recall_5, 0.005, 10);
        assert_eq!((refused.promoted, refused.rule), (false, Rule::Recall5Fell));
        assert!(refused.reason.contains("Recall@5 fell 1.0000 → 0.9000"), "{}", refused.reason);
        // The same model passes when the tolerance covers the fall, and `always` ignores it.
        assert_eq!(decide(Promote::IfBetter, &before, &after, 0.2, 10).rule, Rule::Better);
        assert!(decide(Promote::Always, &before, &after, 0.0, 10).promoted);
    }

    #[test]
    fn if_better_needs_map_at_r_to_rise_and_allows_recall_within_its_noise_margin() {
        let before = Metrics { recall_at_1: 0.90, recall_at_5: 0.97, recall_at_10: 0.98, map_at_r: 0.50 };
        let same = decide(Promote::IfBetter, &before, &before, 0.005, 2000);
        assert_eq!((same.promoted, same.rule), (false, Rule::MapDidNotRise));
        // With 2000 queries the margins are the tolerance (0.005) and √(0.9·0.1/2000) = 0.0067.
        let slightly_lower = Metrics { recall_at_1: 0.894, recall_at_5: 0.966, recall_at_10: 0.90, map_at_r: 0.6 };
        let promoted = decide(Promote::IfBetter, &before, &slightly_lower, 0.005, 2000);
        assert_eq!((promoted.promoted, promoted.rule), (true, Rule::Better), "{}", promoted.reason);
        let lower = Metrics { recall_at_1: 0.892, ..slightly_lower };
        assert_eq!(decide(Promote::IfBetter, &before, &lower, 0.005, 2000).rule, Rule::Recall1Fell);
        // With 100 queries a fall of two queries (0.02) is within the standard error (0.03).
        assert_eq!(
            decide(Promote::IfBetter, &before, &Metrics { recall_at_1: 0.88, ..lower }, 0.005, 100).rule,
            Rule::Better
        );
        let never = decide(Promote::Never, &before, &slightly_lower, 0.005, 2000);
        assert_eq!((never.promoted, never.rule), (false, Rule::Never));
    }
}
