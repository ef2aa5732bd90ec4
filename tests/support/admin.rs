//! The web admin's test fixture: a real ring server with file images and netvirt, the
//! gateway's admin over them, and requests through `tower::ServiceExt::oneshot`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use gateway::admin::{GatewayAdmin, Running};
use gateway::config::Config;
use gateway::net::LiveNetwork;
use gateway::registry::Registry;
use gateway::ring::initiator::{ConnectOptions, Initiator};
use gateway::ring::server::{Server, ServerOptions};
use gateway::storage;
use http_body_util::BodyExt;
use netvirt::client::RingClient;
use netvirt::network::Network;
use serde_json::Value;
use tower::ServiceExt;

pub const TOKEN: &str = "admin-token-for-tests-0123456789";
pub const CRED: &str = "cccccccccccccccccccccccc";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub file: PathBuf,
    pub socket: PathBuf,
    pub net_socket: PathBuf,
    pub state: web::WebState,
    pub net: Arc<LiveNetwork>,
    pub _server: Server,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.net.stop();
    }
}

pub fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
serial = "pg-admin"
data_dir = "{d}"
[[pan]]
name = "alpha"
[[pan.image]]
name = "a0"
path = "images/a0.img"
size = "16MiB"
[[pan.node]]
name = "n1"
credential = "{CRED}"
luns = [{{ target = 0, lun = 0, image = "a0", access = "rw" }}]
"#,
        d = dir.path().display()
    );
    let file = dir.path().join("pangate.toml");
    std::fs::write(&file, &text).unwrap();
    let cfg = Config::load(&file).unwrap();
    let (images, maps) = storage::open_all(&cfg, dir.path()).unwrap();
    let names = images.iter().map(|i| (i.pan.clone(), i.name.clone())).collect();
    let socket = dir.path().join("pangate.sock");
    let opts = ServerOptions::new(&socket);
    let metrics = opts.metrics.clone();
    let registry = Registry::from_config(&cfg, &maps);
    let server = Server::start(images, registry.clone(), opts).unwrap();
    // netvirt with no LANs yet, authorising nodes as the gateway does.
    let authorize = gateway::net::node_authorizer(registry.clone());
    let net_socket = dir.path().join("net.sock");
    let net = Arc::new(LiveNetwork::new(Some(
        Network::start(
            vec![],
            &net_socket,
            authorize,
            netvirt::network::Options { spin: Duration::ZERO, workers: 2, fastpath: true },
        )
        .unwrap(),
    )));
    let admin = GatewayAdmin::new(
        cfg,
        file.clone(),
        dir.path().to_path_buf(),
        names,
        Running { control: server.images(), registry, metrics, net: net.clone(), iscsi: None, tcmu: false },
    )
    .unwrap();
    let state = web::WebState::new(Arc::new(admin), TOKEN.into());
    Fixture { dir, file, socket, net_socket, state, net, _server: server }
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub set_cookie: Option<String>,
    pub location: Option<String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A 4xx problem document, which says what is wrong.
    pub fn problem(&self, status: StatusCode) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.content_type, "application/problem+json", "{}", self.body);
        let p = self.json();
        assert_eq!(p["status"], status.as_u16());
        let detail = p["detail"].as_str().unwrap().to_string();
        assert!(!detail.is_empty());
        detail
    }
}

pub async fn send(f: &Fixture, req: Request<Body>) -> Reply {
    let resp = web::router(f.state.clone()).oneshot(req).await.unwrap();
    let h = |name| resp.headers().get(name).map(|v: &header::HeaderValue| v.to_str().unwrap().to_string());
    let (content_type, set_cookie, location) = (h(header::CONTENT_TYPE), h(header::SET_COOKIE), h(header::LOCATION));
    let status = resp.status();
    let body = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Reply { status, content_type: content_type.unwrap_or_default(), set_cookie, location, body }
}

pub fn api(method: &str, uri: &str, body: Option<Value>, token: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match body {
        Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())).unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

pub async fn call(f: &Fixture, method: &str, uri: &str, body: Option<Value>) -> Reply {
    send(f, api(method, uri, body, Some(TOKEN))).await
}

pub fn form(uri: &str, fields: &[(&str, &str)], cookie: Option<&str>) -> Request<Body> {
    let body: String = fields
        .iter()
        .map(|(k, v)| {
            format!("{k}={}", v.replace('%', "%25").replace('&', "%26").replace(' ', "+").replace('/', "%2F"))
        })
        .collect::<Vec<_>>()
        .join("&");
    let mut b =
        Request::builder().method("POST").uri(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, c);
    }
    b.body(Body::from(body)).unwrap()
}

pub fn saved(f: &Fixture) -> Config {
    Config::load(&f.file).unwrap()
}

pub fn connect(f: &Fixture, pan: &str, node: &str, cred: &str) -> Initiator {
    let opts = ConnectOptions {
        pan: pan.into(),
        node: node.into(),
        credential: cred.into(),
        slots: 256,
        data_bytes: 4 << 20,
        client: None,
    };
    Initiator::connect(&f.socket, &opts).unwrap()
}

/// Waits (boundedly) for a frame on a ring client.
pub fn recv_frame(c: &mut RingClient) -> Option<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    while std::time::Instant::now() < deadline {
        if let Some(n) = c.recv(&mut buf).unwrap() {
            return Some(buf[..n].to_vec());
        }
        c.wait(Duration::from_millis(20)).unwrap();
    }
    None
}

/// A UDP frame between the two addresses, for switching tests.
pub fn udp_frame(src: [u8; 6], dst: [u8; 6], sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2(src, dst).ipv4(sip, dip, 64).udp(7, 9);
    let mut f = Vec::new();
    b.write(&mut f, b"created at run time").unwrap();
    f
}
