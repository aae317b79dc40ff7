//! Layered settings: the embedded `config/default.toml`, then the file named by
//! `--config`, then `LOOKALIKE__SECTION__KEY` environment variables.
//!
//! `Settings` is read once at start-up and shared read-only (inside `AppState`).
//! API keys are secrets: `Debug` redacts them so a logged `Settings` never leaks one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::index::IndexParams;

/// The defaults, compiled into the binary so `lookalike serve` runs anywhere.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// File name of the imported pretrained backbone inside `<data_dir>/weights`.
pub const DEFAULT_WEIGHTS_FILE: &str = "efficientnet-lite0.safetensors";

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub storage: crate::storage::StorageSettings,
    pub model: ModelSettings,
    pub embedder: EmbedderConfig,
    pub index: IndexSettings,
    pub limits: Limits,
    pub jobs: JobSettings,
    /// Defaults of a finetune job's params.
    pub finetune: crate::train::params::FinetuneParams,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` for a person reading a terminal, `json` (one object per line) for a log pipeline.
    pub format: crate::telemetry::LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexSettings {
    #[serde(flatten)]
    pub params: IndexParams,
    /// How often (s) indexes changed by single-item writes are saved.
    pub save_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub addr: SocketAddr,
    /// What this process does (`serve --role` overrides it).
    pub role: Role,
    /// This process's name in the jobs table; empty: the host's name (see [`Settings::instance`]).
    pub instance: String,
    /// On PostgreSQL, how often (ms) this process looks for changes other processes made to
    /// the datasets, besides when it is notified of one (`sync`).
    pub sync_interval_ms: u64,
}

/// What a `serve` process does. Every role keeps the datasets' serving state in step with the
/// database; only a process that runs jobs takes them from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, strum::Display)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// Serve the API and run jobs: one process does everything (the default).
    All,
    /// Serve the API; run no jobs (replicas behind a load balancer).
    Api,
    /// Run jobs; HTTP answers only `/healthz`, `/readyz` and `/metrics`.
    Worker,
}

impl Role {
    pub fn serves_api(self) -> bool {
        matches!(self, Self::All | Self::Api)
    }

    pub fn runs_jobs(self) -> bool {
        matches!(self, Self::All | Self::Worker)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSettings {
    pub weights: String,
    pub input_size: u32,
    pub fetch_if_missing: bool,
    /// Where the model runs: `auto`, `cpu`, `cuda` or `cuda:N` (`crate::device`).
    #[serde(default)]
    pub device: crate::device::DeviceChoice,
}

/// The `[embedder]` section. The batch limits left unset take the device's own defaults
/// ([`EmbedderConfig::resolve`]): a GPU is fastest per image in passes far larger than a CPU's.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct EmbedderConfig {
    pub max_batch: Option<usize>,
    pub max_wait_ms: u64,
    pub queue_capacity: usize,
    pub max_forward_pixels: Option<usize>,
}

/// The CPU's batch limits: 32 images, 131072 input pixels a pass (`config/default.toml` says why).
const CPU_BATCH: (usize, usize) = (32, 131_072);
/// A GPU's: 256 images a pass of up to 256 images at 224 px.
const GPU_BATCH: (usize, usize) = (256, 256 * 224 * 224);

impl EmbedderConfig {
    /// The embedder's settings on `device`: what the section sets, the device's defaults for
    /// the rest.
    pub fn resolve(&self, device: &candle_core::Device) -> crate::embedder::EmbedderSettings {
        let (batch, pixels) = if device.is_cpu() { CPU_BATCH } else { GPU_BATCH };
        crate::embedder::EmbedderSettings {
            max_batch: self.max_batch.unwrap_or(batch),
            max_wait_ms: self.max_wait_ms,
            queue_capacity: self.queue_capacity,
            max_forward_pixels: self.max_forward_pixels.unwrap_or(pixels),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    pub max_upload_bytes: u64,
    pub max_image_bytes: u64,
    pub max_archive_entries: u64,
    pub max_unpacked_bytes: u64,
    pub max_image_pixels: u64,
    pub max_k: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JobSettings {
    pub ingest_chunk: usize,
    pub max_attempts: i64,
    /// How often (s) a worker renews its lease on the job it runs.
    pub heartbeat_s: u64,
    /// A running job whose heartbeat is older than this (s) has lost its worker: it is taken
    /// back and resumed or failed.
    pub lease_s: u64,
}

#[derive(Clone, Deserialize)]
pub struct AuthSettings {
    pub admin_keys: String,
    pub read_keys: String,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = |keys: &str| split_keys(keys).count();
        f.debug_struct("AuthSettings")
            .field("admin_keys", &format_args!("<{} redacted>", count(&self.admin_keys)))
            .field("read_keys", &format_args!("<{} redacted>", count(&self.read_keys)))
            .finish()
    }
}

/// The non-empty, trimmed keys of a comma-separated list.
pub fn split_keys(keys: &str) -> impl Iterator<Item = &str> {
    keys.split(',').map(str::trim).filter(|k| !k.is_empty())
}

impl Settings {
    /// Reads the layers in order; `file` is the optional `--config` file.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("LOOKALIKE__").split("__"));
        let settings: Settings = figment.extract().context("invalid settings")?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.model.input_size >= 32, "model.input_size must be at least 32");
        anyhow::ensure!(self.embedder.max_batch != Some(0), "embedder.max_batch must be at least 1");
        anyhow::ensure!(self.embedder.queue_capacity >= 1, "embedder.queue_capacity must be at least 1");
        anyhow::ensure!(self.embedder.max_forward_pixels != Some(0), "embedder.max_forward_pixels must be at least 1");
        anyhow::ensure!(self.jobs.ingest_chunk >= 1, "jobs.ingest_chunk must be at least 1");
        anyhow::ensure!(self.limits.max_k >= 1, "limits.max_k must be at least 1");
        anyhow::ensure!(self.jobs.heartbeat_s >= 1, "jobs.heartbeat_s must be at least 1");
        anyhow::ensure!(
            self.jobs.lease_s >= 3 * self.jobs.heartbeat_s,
            "jobs.lease_s ({}) must be at least three heartbeats (jobs.heartbeat_s = {}), so that a slow \
             heartbeat does not lose a live worker its job",
            self.jobs.lease_s,
            self.jobs.heartbeat_s
        );
        self.storage.bucket()?;
        if !self.database.url.is_empty() {
            crate::db::Db::backend_of(&self.database.url)?;
        }
        Ok(())
    }

    /// The database URL: the configured one (SQLite or PostgreSQL), or a SQLite file in the
    /// data dir.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}?mode=rwc", self.data_dir.join("lookalike.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// The backbone weights file, and whether it is the default location.
    pub fn weights_path(&self) -> (PathBuf, bool) {
        if self.model.weights.is_empty() {
            (self.data_dir.join("weights").join(DEFAULT_WEIGHTS_FILE), true)
        } else {
            (PathBuf::from(&self.model.weights), false)
        }
    }

    /// This process's name among the workers sharing the database: `server.instance`, or the
    /// host's name (stable across restarts, so a restarted worker takes back its own jobs at
    /// once; give each process on one host its own `server.instance`).
    pub fn instance(&self) -> String {
        if !self.server.instance.is_empty() {
            return self.server.instance.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| std::env::var("COMPUTERNAME").ok());
        host.map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).unwrap_or_else(|| "lookalike".to_owned())
    }

    pub fn admin_keys(&self) -> Vec<String> {
        split_keys(&self.auth.admin_keys).map(str::to_owned).collect()
    }

    pub fn read_keys(&self) -> Vec<String> {
        split_keys(&self.auth.read_keys).map(str::to_owned).collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::db::redact_url;
    use crate::train::params::{FinetuneParams, MiningMode};

    #[test]
    fn embedded_defaults_parse() {
        let figment = Figment::from(Toml::string(DEFAULT_TOML));
        let settings: Settings = figment.extract().expect("defaults parse");
        assert_eq!(settings.server.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.limits.max_k, 1000);
        assert_eq!(settings.log.format, crate::telemetry::LogFormat::Text);
        settings.validate().expect("defaults are valid");
    }

    #[test]
    fn json_logs_are_a_setting() {
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string("[log]\nformat = \"json\""));
        let settings: Settings = figment.extract().expect("settings parse");
        assert_eq!(settings.log.format, crate::telemetry::LogFormat::Json);
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string("[log]\nformat = \"xml\""));
        assert!(figment.extract::<Settings>().is_err(), "an unknown format is refused");
    }

    #[test]
    fn the_device_is_a_setting_and_the_embedder_takes_its_defaults() {
        use crate::device::DeviceChoice;
        let settings = Settings::load(None).expect("embedded defaults load");
        assert_eq!(settings.model.device, DeviceChoice::Auto);
        let cpu = settings.embedder.resolve(&candle_core::Device::Cpu);
        assert_eq!((cpu.max_batch, cpu.max_forward_pixels), CPU_BATCH);
        let figment = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string("[model]\ndevice = \"cuda:1\"\n[embedder]\nmax_batch = 4"));
        let settings: Settings = figment.extract().expect("settings parse");
        assert_eq!(settings.model.device, DeviceChoice::Cuda(1));
        assert_eq!(settings.embedder.resolve(&candle_core::Device::Cpu).max_batch, 4, "a set value wins");
        let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string("[model]\ndevice = \"tpu\""));
        let err = figment.extract::<Settings>().unwrap_err().to_string();
        assert!(err.contains("invalid device \"tpu\""), "{err}");
    }

    #[test]
    fn keys_are_redacted_in_debug() {
        let auth = AuthSettings { admin_keys: "secret1, secret2".into(), read_keys: String::new() };
        let shown = format!("{auth:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("<2 redacted>"), "{shown}");
    }

    #[test]
    fn postgres_password_is_redacted() {
        assert_eq!(redact_url("postgres://u:pw@host/db"), "postgres://***@host/db");
    }

    fn defaults() -> FinetuneParams {
        Settings::load(None).expect("embedded defaults load").finetune
    }

    #[test]
    fn the_time_budget_is_the_floor_up_to_10k_items_and_grows_in_proportion_above() {
        let params = FinetuneParams { training_seconds_per_10k_items: Some(450.0), ..defaults() };
        assert_eq!(params.max_training_seconds(100), Some(450.0));
        assert_eq!(params.max_training_seconds(10_000), Some(450.0));
        assert_eq!(params.max_training_seconds(60_000), Some(2700.0));
        let unlimited = FinetuneParams { training_seconds_per_10k_items: None, ..defaults() };
        assert_eq!(unlimited.max_training_seconds(60_000), None);
        let err = FinetuneParams::resolve(&params, &serde_json::json!({"training_seconds_per_10k_items": -1}));
        assert!(err.unwrap_err().contains("params.training_seconds_per_10k_items must be"));
        let lifted = FinetuneParams::resolve(&params, &serde_json::json!({"training_seconds_per_10k_items": null}));
        assert_eq!(lifted.expect("null lifts the limit").training_seconds_per_10k_items, None);
    }

    /// The `[finetune]` section is what a finetune job starts from.
    #[test]
    fn finetune_params_override_the_section_defaults_and_name_bad_keys() {
        let defaults = defaults();
        assert_eq!(defaults.mining, MiningMode::OfflineOnline);
        let params = FinetuneParams::resolve(&defaults, &json!({"mining": "semi-hard", "epochs": 3})).unwrap();
        assert_eq!((params.mining, params.epochs, params.margin), (MiningMode::SemiHard, 3, defaults.margin));
        assert_eq!(serde_json::to_value(&params).unwrap()["margin"], json!(0.2), "shown as written, not as f32 noise");
        for (bad, named) in [
            (json!({"mining": "hardest"}), "unknown variant"),
            (json!({"epochs": 0}), "params.epochs"),
            (json!({"holdout": 0.9}), "params.holdout"),
            (json!({"learning_rate": -1}), "params.learning_rate"),
            (json!({"epochs": "ten"}), "invalid params"),
            (json!({"epoch": 3}), "unknown field `epoch`"),
            (json!([1, 2]), "must be a JSON object"),
        ] {
            let err = FinetuneParams::resolve(&defaults, &bad).unwrap_err();
            assert!(err.contains(named), "{bad}: {err}");
        }
    }
}
