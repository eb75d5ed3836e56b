//! Helpers shared by the scenarios.

use std::net::SocketAddr;

use archiver_tests::App;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

/// The probe app with its required secret set and its upstream at `upstream`.
pub fn probe_app(upstream: SocketAddr) -> App {
    App::builder("tests/probe/spin.toml")
        .variable("probe_secret", "s3cret-probe")
        .variable("upstream_origin", format!("http://{upstream}"))
        .build()
        .expect("probe app loads")
}

/// A tiny HTTP server on loopback answering every request with `200 upstream says hi`, but
/// `/framing`, answered with how the request's body came: `chunked N` or `length N` (N bytes).
pub async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let answer = match request.uri().path() {
                            "/framing" => {
                                let headers = request.headers();
                                let framing = match (
                                    headers.get("transfer-encoding"),
                                    headers.get("content-length"),
                                ) {
                                    (Some(te), None) => te.to_str().unwrap_or("?").to_string(),
                                    (None, Some(_)) => "length".to_string(),
                                    (None, None) => "none".to_string(),
                                    (Some(_), Some(_)) => "both".to_string(),
                                };
                                let body = request.into_body().collect().await;
                                let received = body.map(|b| b.to_bytes().len()).unwrap_or(0);
                                Bytes::from(format!("{framing} {received}"))
                            }
                            _ => Bytes::from_static(b"upstream says hi"),
                        };
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(answer)))
                    },
                );
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

/// A JMAP client for assertions, as the service account the archiver uses.
pub struct Jmap {
    authorization: String,
    pub api_url: String,
}

/// The mail server the test command starts (scripts/mail-server/start).
pub const JMAP_SESSION_URL: &str = "http://127.0.0.1:18080/jmap/";
pub const JMAP_USER: &str = "archiver@acme.example";
pub const JMAP_PASSWORD: &str = "archiverpw";

impl Jmap {
    pub async fn connect() -> Jmap {
        use base64::Engine;
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{JMAP_USER}:{JMAP_PASSWORD}"))
        );
        let mut jmap = Jmap {
            authorization,
            api_url: String::new(),
        };
        let session = jmap
            .request("GET", JMAP_SESSION_URL, None)
            .await
            .unwrap_or_else(|e| panic!("no JMAP server at {JMAP_SESSION_URL} ({e}); start it with scripts/mail-server/start"));
        let api = session["apiUrl"].as_str().expect("apiUrl");
        jmap.api_url = format!("http://127.0.0.1:18080{api}");
        jmap
    }

    async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let uri: http::Uri = url.parse()?;
        let address = format!(
            "{}:{}",
            uri.host().unwrap_or("127.0.0.1"),
            uri.port_u16().unwrap_or(80)
        );
        let stream = tokio::net::TcpStream::connect(address).await?;
        let io = wasmtime_wasi_http::io::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = http::Request::builder()
            .method(method)
            .uri(uri.path())
            .header(
                "host",
                uri.authority().map(|a| a.as_str()).unwrap_or("localhost"),
            )
            .header("authorization", &self.authorization)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await?
            .to_bytes();
        anyhow::ensure!(status.is_success(), "{method} {url}: {status}");
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// One method call; returns its result object.
    pub async fn call(&self, method: &str, arguments: serde_json::Value) -> serde_json::Value {
        let body = serde_json::json!({
            "using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"],
            "methodCalls": [[method, arguments, "0"]],
        });
        let answer = self
            .request("POST", &self.api_url.clone(), Some(body))
            .await
            .unwrap();
        let response = &answer["methodResponses"][0];
        assert_eq!(response[0], method, "{answer}");
        response[1].clone()
    }
}

/// Where the scenarios keep the app's key-value store: SQLite (Spin's default), or Redis as
/// Spin's runtime config file puts it there when `ARCHIVER_TEST_KV=redis` (the test command runs
/// the pipeline and Graph scenarios both ways), each app on a server of its own.
pub fn on_store(builder: archiver_tests::AppBuilder) -> archiver_tests::AppBuilder {
    if std::env::var("ARCHIVER_TEST_KV").as_deref() != Ok("redis") {
        return builder;
    }
    let server = archiver_tests::RedisServer::start().expect("redis-server starts");
    builder
        .redis(std::sync::Arc::new(server))
        .expect("the runtime config loads")
}
