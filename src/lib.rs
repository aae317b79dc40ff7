//! lookalike: self-hosted visual similarity search that learns its catalogue.
//!
//! The parts and their rooms are described in `ARCHITECTURE.md`; in short:
//! `http` answers the API, `embedder` batches queries in front of the `model`,
//! each dataset is served by a `generation::Generation` (model + `index`),
//! `jobs` run ingests in the background over the `db` and `storage`.

pub mod archive;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod cpu;
pub mod db;
pub mod device;
pub mod embedder;
pub mod error;
pub mod feature_cache;
pub mod generation;
pub mod http;
pub mod index;
pub mod jobs;
pub mod network;
pub mod rng;
pub mod server;
pub mod state;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod train;
