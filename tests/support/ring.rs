//! The ring tests' fixture: a real gateway server on a Unix socket with two PANs' file
//! images on the io_uring engine, and the initiators and links that reach it.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use gateway::config::Config;
use gateway::ring::initiator::{ConnectOptions, Initiator};
use gateway::ring::server::{Server, ServerOptions};
use gateway::storage;
use scsi::sense::parse_sense;
use scsi::Asc;

pub const CRED_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa";
pub const CRED_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb";
pub const CRED_C: &str = "cccccccccccccccccccccccc";

pub fn config(dir: &Path) -> Config {
    let text = format!(
        r#"
serial = "pg-test"
data_dir = "{dir}"

[[pan]]
name = "alpha"
[[pan.image]]
name = "a0"
path = "images/a0.img"
size = "16MiB"
[[pan.image]]
name = "shared"
path = "images/shared.img"
size = "16MiB"
block_size = 4096
[[pan.node]]
name = "n1"
credential = "{CRED_A}"
luns = [{{ target = 0, lun = 0, image = "a0", access = "rw" }}, {{ target = 0, lun = 1, image = "shared", access = "ro" }}]
[[pan.node]]
name = "n2"
credential = "{CRED_C}"
luns = [{{ target = 0, lun = 1, image = "shared", access = "rw" }}]

[[pan]]
name = "beta"
[[pan.image]]
name = "b0"
path = "images/b0.img"
size = "16MiB"
[[pan.node]]
name = "n1"
credential = "{CRED_B}"
luns = [{{ target = 0, lun = 0, image = "b0", access = "rw" }}, {{ target = 2, lun = 7, image = "b0", access = "rw" }}]
"#,
        dir = dir.display()
    );
    Config::parse(&text, None).unwrap()
}

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub socket: std::path::PathBuf,
}

pub fn start() -> Fixture {
    start_with(|_| {})
}

pub fn start_with(tune: impl FnOnce(&mut ServerOptions)) -> Fixture {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("gateway=debug").try_init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (images, maps) = storage::open_all(&cfg, dir.path()).unwrap();
    let socket = dir.path().join("pangate.sock");
    let mut o = ServerOptions::new(&socket);
    tune(&mut o);
    let server = Server::start(images, gateway::registry::Registry::from_config(&cfg, &maps), o).unwrap();
    Fixture { _dir: dir, server: Some(server), socket }
}

/// One queue pair of node n1 (PAN beta) over `gateway::ring::link`, with `data_bytes` of
/// data area, its first command's unit attention already taken.
pub fn link_n1(f: &Fixture, data_bytes: u64, io_timeout: Duration) -> gateway::ring::link::Link {
    use gateway::ring::link::{Command, Link, LinkOptions};
    let mut connect = opts("beta", "n1", CRED_B);
    connect.data_bytes = data_bytes;
    let link = Link::connect(LinkOptions {
        socket: f.socket.clone(),
        alternates: Vec::new(),
        connect,
        queues: 1,
        io_timeout,
        retry: true,
        reconnect_timeout: Duration::ZERO,
    })
    .unwrap();
    link.queue().execute(Command { target: 0, lun: 0, cdb: &[0; 6], out: &[], in_len: 0 });
    link
}

pub fn opts(pan: &str, node: &str, cred: &str) -> ConnectOptions {
    ConnectOptions {
        pan: pan.into(),
        node: node.into(),
        credential: cred.into(),
        slots: 256,
        data_bytes: 16 << 20,
        client: None,
    }
}

pub fn connect(f: &Fixture, pan: &str, node: &str, cred: &str) -> Initiator {
    Initiator::connect(&f.socket, &opts(pan, node, cred)).unwrap()
}

/// Whether images keep their data in their files: not when `PANGATE_ENGINE=ram` runs the
/// suite on the RAM engine (and so on its direct path), as `scripts/test-all` does too.
pub fn images_on_disk() -> bool {
    std::env::var(gateway::engine::ENGINE_ENV).map_or(true, |e| e != "ram")
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed)).collect()
}

pub fn sense_of(r: &gateway::ring::initiator::Response) -> (u8, Asc) {
    let (k, a, _) = parse_sense(&r.sense).expect("sense parses");
    (k, a)
}
