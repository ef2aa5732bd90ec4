//! The web admin against real peers: a Prometheus server scraping `/metrics` while known
//! I/O goes through the rings, `promtool check metrics`, headless Chromium driving the
//! pages, and schemathesis fuzzing the API from its OpenAPI document.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gateway::ring::initiator::{ConnectOptions, Data, Initiator};
use support::{on_path, skip_because, Gateway};

const TOKEN: &str = "web-real-admin-token-0123456789";
const CRED: &str = "nnnnnnnnnnnnnnnnnnnnnnnn";

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Running {
    dir: tempfile::TempDir,
    gateway: Gateway,
    base: String,
}

fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("pangate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
serial = "pg-web"
data_dir = "{d}"
[web]
listen = "127.0.0.1:{port}"
token = "{TOKEN}"
[[pan]]
name = "obs"
[[pan.image]]
name = "vol"
path = "images/vol.img"
size = "16MiB"
[[pan.node]]
name = "n1"
credential = "{CRED}"
luns = [{{ target = 0, lun = 0, image = "vol", access = "rw" }}]
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let gateway = Gateway::start(dir.path(), &config);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(&[&format!("{base}/api/v1/overview")]).0 != 200 {
        assert!(Instant::now() < deadline, "the web admin did not answer within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Running { dir, gateway, base }
}

/// (HTTP status, body) of a curl call.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-m", "10", "-w", "\n%{http_code}"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of an instant query with one result, if Prometheus has it.
fn query(prom: &str, q: &str) -> Option<f64> {
    let (code, body) = curl(&["-G", &format!("{prom}/api/v1/query"), "--data-urlencode", &format!("query={q}")]);
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_counters_that_match_the_io_exactly() {
    let tools = ["prometheus", "promtool", "curl"].into_iter().filter(|t| !on_path(t)).collect::<Vec<_>>();
    if skip_because((!tools.is_empty()).then(|| format!("needs {tools:?} (Debian prometheus, curl)"))) {
        return;
    }
    let run = start();
    let target = run.base.trim_start_matches("http://").to_string();
    let prom_port = free_port();
    let prom = format!("http://127.0.0.1:{prom_port}");
    let prom_dir = run.dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pangate\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Known I/O: a TEST UNIT READY (which takes the power-on unit attention), 37 8-KiB
    // writes, 23 4-KiB reads and one SYNCHRONIZE CACHE.
    let opts = ConnectOptions {
        pan: "obs".into(),
        node: "n1".into(),
        credential: CRED.into(),
        slots: 256,
        data_bytes: 4 << 20,
        client: None,
    };
    let mut i = Initiator::connect(&run.gateway.socket, &opts).unwrap();
    i.execute(0, 0, &[0; 6], Data::None).unwrap();
    for n in 0..37u64 {
        assert!(i.write(0, 0, n * 16, &[n as u8; 8192], false, false).unwrap().good());
    }
    for n in 0..23u64 {
        assert!(i.read(0, 0, n * 16, 4096).unwrap().0.good());
    }
    assert!(i.flush(0, 0).unwrap().good());

    // One set of series per LUN, by name, whichever nodes map it.
    let sel = r#"{job="pangate",pan="obs",lun="vol"}"#;
    let deadline = Instant::now() + Duration::from_secs(60);
    while query(&prom, &format!("pangate_lun_writes_total{sel}")) != Some(37.0) {
        assert!(Instant::now() < deadline, "Prometheus did not scrape the writes within 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let expect = [
        (format!("pangate_lun_writes_total{sel}"), 37.0),
        (format!("pangate_lun_reads_total{sel}"), 23.0),
        (format!("pangate_lun_written_bytes_total{sel}"), 37.0 * 8192.0),
        (format!("pangate_lun_read_bytes_total{sel}"), 23.0 * 4096.0),
        (format!("sum(pangate_lun_commands_total{sel})"), 62.0),
        (r#"pangate_lun_commands_total{pan="obs",opcode=~"SYNCHRONIZE_CACHE_1[06]"}"#.to_string(), 1.0),
        (r#"sum(pangate_lun_completions_total{pan="obs",status="good"})"#.to_string(), 61.0),
        (format!("pangate_lun_command_duration_seconds_count{sel}"), 62.0),
        ("pangate_ring_connections{pan=\"obs\",node=\"n1\"}".to_string(), 1.0),
        ("pangate_ring_outstanding_commands{pan=\"obs\",node=\"n1\"}".to_string(), 0.0),
        ("up{job=\"pangate\"}".to_string(), 1.0),
        ("pangate_build_info".to_string(), 1.0),
    ];
    for (q, want) in expect {
        assert_eq!(query(&prom, &q), Some(want), "{q}");
    }
    let busy = query(&prom, &format!("pangate_lun_busy_seconds_total{sel}")).unwrap();
    assert!(busy > 0.0 && busy < 60.0, "busy seconds {busy}");
    assert!(query(&prom, "process_resident_memory_bytes{job=\"pangate\"}").unwrap() > 1e6);

    // promtool's lint of the exposition finds nothing.
    let text = curl(&[&format!("{}/metrics", run.base)]).1;
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web/browser")
}

#[test]
fn headless_chromium_creates_maps_and_watches_a_lun() {
    let missing = if !Path::new("/usr/bin/chromium").exists() {
        Some("needs /usr/bin/chromium (Debian chromium)".to_string())
    } else if !on_path("node") || !browser_dir().join("node_modules/playwright-core").exists() {
        Some("needs node and `npm ci --prefix web/browser` (playwright-core)".to_string())
    } else {
        None
    };
    if skip_because(missing) {
        return;
    }
    let run = start();
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("admin-lun-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("timeout")
        .args(["120", "node"])
        .arg(browser_dir().join("admin.mjs"))
        .env("BASE", &run.base)
        .env("TOKEN", TOKEN)
        .env("PANGATE", env!("CARGO_BIN_EXE_pangate"))
        .env("SOCKET", &run.gateway.socket)
        .env("SHOT", &shot)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed: {said}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "no screenshot at {}", shot.display());
    eprintln!("browser: {}; screenshot at {}", said.trim(), shot.display());
}

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    if skip_because((!on_path("schemathesis")).then(|| "needs schemathesis (pip install schemathesis)".to_string())) {
        return;
    }
    let run = start();
    let out = Command::new("timeout")
        .args(["300", "schemathesis", "run"])
        .arg(format!("{}/api/v1/openapi.json", run.base))
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--checks", "not_a_server_error,response_schema_conformance,content_type_conformance"])
        .args(["--max-examples", "40", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{said}");
}
