//! End-to-end tests over real HTTP: one binary, shared helpers in `support`.

mod archive;
mod bad_input;
mod cli_https;
mod db;
mod embedder;
mod fashion_e2e;
mod finetune;
mod healthcheck;
mod items;
mod jobs;
mod metrics;
mod openapi;
mod replicas;
mod storage;
mod support;
