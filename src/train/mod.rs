//! Training primitives for fine-tuning the embedding head with the triplet loss.
//!
//! This module owns the pieces of online triplet training that do not depend on the model, the
//! data store or the job system:
//! - [`adamw`]: [`FusedAdamW`], candle's AdamW update computed in one in-place pass per weight;
//! - [`distance`]: the differentiable pairwise distance matrix of a batch's embeddings;
//! - [`miners`]: which triplets of a batch to train on ([`Mining`]: batch-hard, batch-all,
//!   semi-hard, random);
//! - [`losses`]: the hinge or soft-margin triplet loss over mined triplets, with its [`Reduction`];
//! - [`sampler`]: P×K batches of item indices, optionally injecting offline-mined positives;
//! - [`offline`]: hard positives and negatives mined once from the pretrained model's embeddings of
//!   the whole training set, with the thresholds and histogram that chose them ([`MinedPairs`]);
//! - [`head`]: the [`EmbeddingHead`], a linear layer from backbone features to L2-normalised
//!   embeddings, seeded from [`crate::rng::SeededRng`] and saved as safetensors;
//! - [`params`]: a finetune job's params ([`params::FinetuneParams`]) and the dataset-size rule;
//! - [`plot`]: PNG charts of a job's artifacts: the mined distance histogram with its thresholds,
//!   MAP@R lines per mining mode and the loss curve;
//! - [`retrieval`]: exact Recall@K and MAP@R of queries against a gallery, for evaluating heads
//!   without the server;
//! - [`trainer`]: [`train_head`], the head-only training loop over cached backbone features, with
//!   its [`TrainParams`], per-step [`StepReport`]s, cancellation and collapse guard;
//! - [`tail`]: [`BackboneTail`], the backbone's last blocks and head convolution trained together
//!   with the head from block inputs ([`train_tail`]), cached or computed per batch from (augmented)
//!   images ([`images`]).
//!
//! A training step reads: draw a [`PkBatch`], embed its items, compute [`pairwise_distances`],
//! read them back with [`distances_to_vec`], [`mine`] the triplets, take the [`triplet_loss`]
//! and back-propagate; [`train_head`] runs exactly that loop. Everything here is pure: no global
//! state, no locks, no I/O except [`EmbeddingHead::save`] and [`EmbeddingHead::load`]; the same
//! inputs and seed always give the same outputs. All of it is single-threaded except [`mine_offline`]
//! and [`retrieval::evaluate`], which spread their rows over rayon's pool (and candle's matmul
//! threads) and merge them in a fixed order.

pub mod adamw;
pub mod distance;
pub mod head;
pub mod images;
pub mod losses;
pub mod miners;
pub mod offline;
pub mod params;
pub mod plot;
pub mod retrieval;
pub mod sampler;
pub mod tail;
pub mod trainer;

#[cfg(test)]
mod tests;

/// The crate's seeded generator under its former name, for callers outside `train`.
pub use crate::rng::SeededRng as TrainRng;
pub use adamw::FusedAdamW;
pub use distance::{MIN_SQUARED_DISTANCE, distances_to_vec, pairwise_distances};
pub use head::{BACKBONE_DIM, DEFAULT_EMBEDDING_DIM, EmbeddingHead};
pub use losses::{Reduction, loss_value, triplet_loss};
pub use miners::{Mining, MiningError, Triplet, batch_all, batch_hard, mine, random_triplets, semi_hard};
pub use offline::{
    DistanceHistogram, MinedPairs, MiningStats, OfflineMiningError, OfflineMiningParams, Thresholds, mine_offline,
};
pub use sampler::{PkBatch, PkSampler, PkShape, SamplerError};
pub use tail::{BackboneTail, train_tail};
pub use trainer::{
    BatchInputs, COLLAPSE_DISTANCE_GAP, COLLAPSE_LOSS_TOLERANCE, COLLAPSE_WINDOW, LrSchedule, PLAN_PROBE_STEPS,
    StepPlan, StepReport, TrainError, TrainParams, TrainedHead, WithReference, geometry_loss, planned_steps,
    recall_at_1, train_head,
};
