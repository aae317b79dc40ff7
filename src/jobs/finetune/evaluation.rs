//! Stage 4 of a finetune job, its figures: held-out items query the training items exactly, with
//! the active model (`before`) and the new one (`after`), and `promote` decides.

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
    pub promoted: bool,
    /// Which rule decided, in words.
    pub decision: String,
}

pub(super) fn before_and_after(
    run: &Run,
    catalogue: &Catalogue,
    split: &Split,
    parent: ModelHandle,
    model: ModelHandle,
) -> Result<Evaluation, JobFailure> {
    let params = &run.params;
    let mut queries = split.holdout.clone();
    if queries.len() > params.max_eval_queries {
        TrainRng::for_stream(params.seed, EVAL_STREAM).shuffle(&mut queries);
        queries.truncate(params.max_eval_queries);
        queries.sort_unstable();
    }
    let device = &run.state.device;
    let before = evaluate(&parent, catalogue, &queries, &split.train, device)?;
    run.cancel.check()?;
    let after = evaluate(&model, catalogue, &queries, &split.train, device)?;
    let (promoted, decision) = match params.promote {
        Promote::Always => (true, "promote is always".to_owned()),
        Promote::Never => (false, "promote is never".to_owned()),
        Promote::IfBetter if after.map_at_r > before.map_at_r => {
            (true, format!("held-out MAP@R rose from {:.4} to {:.4}", before.map_at_r, after.map_at_r))
        }
        Promote::IfBetter => {
            (false, format!("held-out MAP@R did not rise ({:.4} before, {:.4} after)", before.map_at_r, after.map_at_r))
        }
    };
    Ok(Evaluation { parent, model, before, after, queries: queries.len(), promoted, decision })
}

/// Held-out metrics of `model`: `queries` search `gallery` (both indices into the catalogue)
/// exactly.
fn evaluate(
    model: &ModelHandle,
    catalogue: &Catalogue,
    queries: &[usize],
    gallery: &[usize],
    device: &candle_core::Device,
) -> Result<Metrics, JobFailure> {
    let embed = |indices: &[usize]| -> anyhow::Result<Vec<f32>> {
        let rows: Vec<&[f32]> = indices.iter().map(|&i| catalogue.features[i].as_slice()).collect();
        Ok(model.project_many(&rows)?.concat())
    };
    let dim = model.dim(catalogue.features.first().map_or(0, Vec::len));
    let labels = |indices: &[usize]| -> Vec<u32> { indices.iter().map(|&i| catalogue.labels[i]).collect() };
    let (query_rows, gallery_rows) = (embed(queries)?, embed(gallery)?);
    let report =
        crate::train::retrieval::evaluate(&query_rows, &labels(queries), &gallery_rows, &labels(gallery), dim, device)?;
    Ok(report.metrics)
}
