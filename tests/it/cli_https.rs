//! The CLI client over HTTPS: the real router served through rustls with a
//! self-signed certificate made for the test, and the `lookalike` binary run
//! against it with that certificate as its CA (and refused without it).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::{TlsAcceptor, server::TlsStream};

use crate::support;

/// A loopback listener that hands axum each connection once its TLS handshake is done.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = axum::serve::Listener::accept(&mut self.tcp).await;
            // A client that refuses the certificate fails its own handshake only.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A self-signed certificate for 127.0.0.1: its PEM (the CA the client is given) and the acceptor.
fn self_signed() -> (String, TlsAcceptor) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .expect("server config");
    (certified.cert.pem(), TlsAcceptor::from(Arc::new(config)))
}

/// Runs the `lookalike` binary; returns whether it succeeded and its stdout and stderr.
async fn lookalike(args: &[&str], env: &[(&str, &Path)]) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookalike"));
    command.args(args);
    for name in ["LOOKALIKE_SERVER", "LOOKALIKE_CA_CERT", "LOOKALIKE_API_KEY"] {
        command.env_remove(name);
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().await.expect("run lookalike");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_ingests_and_lists_models_over_https() {
    let data = tempfile::tempdir().expect("tempdir");
    let (server, _) = support::start(support::settings(data.path())).await;
    let (ca_pem, acceptor) = self_signed();
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("https://{}", tcp.local_addr().expect("addr"));
    let router = lookalike::http::router(server.state.clone());
    let serving = tokio::spawn(axum::serve(TlsListener { tcp, acceptor }, router).into_future());

    let files = tempfile::tempdir().expect("tempdir");
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).expect("write ca");
    let catalogue = files.path().join("catalogue");
    for (label, shade) in [("red", 200u8), ("red", 180), ("blue", 20), ("blue", 40)] {
        std::fs::create_dir_all(catalogue.join(label)).expect("label dir");
        let image = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([shade, (x * 8) as u8, (y * 8) as u8]));
        image.save(catalogue.join(label).join(format!("{shade}.png"))).expect("png");
    }
    let catalogue = catalogue.to_str().expect("utf-8 path");

    // Server and CA from the environment.
    let env = [("LOOKALIKE_SERVER", Path::new(&url)), ("LOOKALIKE_CA_CERT", ca.as_path())];
    let (ok, out) = lookalike(&["ingest", catalogue, "--dataset", "shop"], &env).await;
    assert!(ok, "{out}");
    assert!(out.contains("dataset shop: 4 images ingested"), "{out}");

    // The same from flags.
    let ca = ca.to_str().expect("utf-8 path");
    let (ok, out) = lookalike(&["models", "--dataset", "shop", "--server", &url, "--ca-cert", ca], &[]).await;
    assert!(ok, "{out}");
    assert!(out.lines().any(|line| line.contains(" yes ")), "the active model is listed: {out}");

    // Without the CA the self-signed certificate is refused.
    let (ok, out) = lookalike(&["models", "--dataset", "shop", "--server", &url], &[]).await;
    assert!(!ok && out.contains("cannot reach the server") && out.contains("certificate"), "{out}");

    serving.abort();
    server.stop().await.expect("stop");
}
