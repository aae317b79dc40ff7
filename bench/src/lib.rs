//! What is not the lookalike service, kept out of its library: the mining experiment behind
//! `lookalike-experiment` and `docs/EXPERIMENTS.md`, and (as binaries in `bench/src/bin/`) the
//! dataset maker `lookalike-data` and the benchmarks that `bench/*.sh` run.
//!
//! It uses the service only through `lookalike`'s public API, and reads Fashion-MNIST through
//! the `fashion-mnist` crate, as the service's integration tests do.

pub mod experiment;
