//! `lookalike healthcheck`: one `GET /readyz` of a running server, for a container's
//! `HEALTHCHECK` or any probe that runs a command. Success (exit 0) means the server answered
//! 200 within the timeout; anything else fails with one line saying why: no answer (refused,
//! unreachable, timed out) or the status and error code the server gave.

use std::time::Duration;

use super::ServerArgs;
use super::client::Client;
use crate::config::Settings;

/// Asks `url` (default: the settings' `server.addr` on this machine) whether it is ready.
pub async fn check(settings: &Settings, url: Option<String>, timeout: Duration) -> anyhow::Result<()> {
    let server = ServerArgs { server: url, api_key: None, ca_cert: None };
    let ready = Client::new(settings, &server)?.ready(timeout).await?;
    let field = |name: &str| ready[name].as_str().unwrap_or("?").to_owned();
    println!("ready: serving model {} on {}", field("model"), field("device"));
    Ok(())
}
