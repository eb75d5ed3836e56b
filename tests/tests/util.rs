//! Helpers shared by the scenarios.

use std::net::SocketAddr;

use archiver_tests::App;
use bytes::Bytes;
use http_body_util::Full;

/// The probe app with its required secret set and its upstream at `upstream`.
pub fn probe_app(upstream: SocketAddr) -> App {
    App::builder("tests/probe/spin.toml")
        .variable("probe_secret", "s3cret-probe")
        .variable("upstream_origin", format!("http://{upstream}"))
        .build()
        .expect("probe app loads")
}

/// A tiny HTTP server on loopback answering every request with `200 upstream says hi`.
pub async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"upstream says hi"),
                    )))
                });
                let io = wasmtime_wasi_http::io::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    address
}

/// A loopback address nothing listens on and no manifest lists.
pub fn unlisted() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}
