//! Building a generation aside from the one in service, and checking it before it serves.
//!
//! Everything here blocks (it inserts into an HNSW graph): call it from a job's thread.

use std::collections::HashSet;

use super::{Generation, ModelHandle};
use crate::cancel::CancelFlag;
use crate::db::items::ItemRecord;
use crate::error::{ErrorCode, JobFailure};
use crate::index::{IndexParams, VectorIndex};

/// Chunk of items inserted between cancel checks and progress reports.
const BUILD_CHUNK: usize = 1024;

/// A generation built aside, with what [`check_generation`] needs to check it.
pub struct Candidate {
    pub generation: Generation,
    /// The item seqs it holds.
    pub built: HashSet<u64>,
    /// Items to search by their own model inputs, spread over what it was built from.
    pub probes: Vec<(u64, Vec<f32>)>,
}

/// A new generation of `model` over `records` (with their model inputs, `features`),
/// with probes spread over the records.
pub fn build_generation(
    model: ModelHandle,
    backbone_dim: usize,
    params: &IndexParams,
    records: &[ItemRecord],
    features: Vec<Vec<f32>>,
    cancel: &CancelFlag,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Candidate, JobFailure> {
    let step = (records.len() / PROBES).max(1);
    let probes: Vec<(u64, Vec<f32>)> =
        records.iter().zip(&features).step_by(step).map(|(r, f)| (r.seq, f.clone())).collect();
    let dim = model.dim(backbone_dim);
    let index = VectorIndex::new(dim, records.len().max(1024), params.clone());
    let generation = Generation::new(model, index, 0);
    let mut rows: Vec<(u64, Vec<f32>)> = records.iter().map(|r| r.seq).zip(features).collect();
    let total = rows.len();
    let mut built = HashSet::with_capacity(total);
    let mut done = 0;
    while !rows.is_empty() {
        cancel.check()?;
        let rest = rows.split_off(rows.len().min(BUILD_CHUNK));
        built.extend(rows.iter().map(|(seq, _)| *seq));
        generation.append(&rows)?;
        done += rows.len();
        progress(done, total);
        rows = rest;
    }
    Ok(Candidate { generation, built, probes })
}

/// Items probed by [`check_generation`].
pub const PROBES: usize = 16;

/// Checks a generation before it goes into service: it holds every item it
/// was built from, and each of up to [`PROBES`] items spread over the list,
/// searched by its own features, comes back first at distance ~0 (or tied
/// with an identical item). A failure means the model or the index is
/// broken, and the generation in service is kept.
pub fn check_generation(candidate: &Candidate) -> Result<(), JobFailure> {
    let Candidate { generation, built, probes } = candidate;
    let stored = generation.index.len();
    if stored < built.len() {
        return Err(JobFailure::failed(
            ErrorCode::GenerationCheckFailed,
            format!("the new index holds {stored} vectors for {} items", built.len()),
        ));
    }
    let step = (probes.len() / PROBES).max(1);
    for (seq, feature) in probes.iter().step_by(step).take(PROBES) {
        let seq = *seq;
        let query = generation.model.project(feature).map_err(|e| {
            JobFailure::failed(ErrorCode::GenerationCheckFailed, format!("item {seq} cannot be embedded: {e:#}"))
        })?;
        let found = generation.index.search(&query, 1, &|_| true, stored);
        let ok = found.first().is_some_and(|n| n.id == seq || n.distance <= 1e-4);
        if !ok {
            return Err(JobFailure::failed(
                ErrorCode::GenerationCheckFailed,
                format!("item {seq} searched by its own features did not come back first: {found:?}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        let mut rng = crate::train::TrainRng::new(seed);
        let v: Vec<f32> = (0..dim).map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / norm).collect()
    }

    #[test]
    fn a_sound_generation_passes_and_a_broken_one_is_caught() {
        let dim = 16;
        let rows: Vec<(u64, Vec<f32>)> = (1..=40).map(|seq| (seq, unit(seq, dim))).collect();
        let generation =
            Generation::new(ModelHandle::pretrained("m"), VectorIndex::new(dim, 64, IndexParams::default()), 0);
        generation.append(&rows).expect("no head to fail");
        let built: HashSet<u64> = rows.iter().map(|(seq, _)| *seq).collect();
        let mut candidate = Candidate { generation, built, probes: rows.clone() };
        check_generation(&candidate).expect("sound generation");

        // A probe whose features are not those its item was indexed with.
        candidate.probes = vec![(3, unit(999, dim))];
        let err = check_generation(&candidate).expect_err("mismatch caught");
        assert!(err.to_string().contains("did not come back first"), "{err}");

        // An index missing items it was meant to hold.
        candidate.probes = rows;
        candidate.built.insert(41);
        let err = check_generation(&candidate).expect_err("missing item caught");
        assert!(err.to_string().contains("holds 40 vectors for 41 items"), "{err}");
    }
}
