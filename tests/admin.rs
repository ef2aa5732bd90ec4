//! The web admin's handlers through `tower::ServiceExt::oneshot`, over a real ring server
//! with file images: authentication, validation, and every operation's effect on the
//! running gateway and on the persisted config.

mod support;

#[path = "support/admin.rs"]
mod fixture;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use gateway::net::NetControl;
use gateway::ring::initiator::{ConnectOptions, Data, Initiator};
use http_body_util::BodyExt;
use netvirt::client::RingClient;
use serde_json::{json, Value};
use tower::ServiceExt;

use fixture::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_open_and_changes_need_the_token() {
    let f = start();
    let r = send(&f, api("GET", "/api/v1/overview", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["pans"][0]["name"], "alpha");
    let r = send(&f, api("GET", "/", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains("log in") && !r.body.contains("Create PAN"), "read-only page shows no forms");

    let new_pan = || Some(json!({"name": "beta"}));
    send(&f, api("POST", "/api/v1/pans", new_pan(), None)).await.problem(StatusCode::UNAUTHORIZED);
    send(&f, api("POST", "/api/v1/pans", new_pan(), Some("wrong-token-wrong-token")))
        .await
        .problem(StatusCode::UNAUTHORIZED);
    send(&f, api("DELETE", "/api/v1/pans/alpha/nodes/n1", None, None)).await.problem(StatusCode::UNAUTHORIZED);
    let r = send(&f, form("/ui/change", &[("csrf", "x"), ("op", "create-pan"), ("pan", "beta")], None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(saved(&f).pans.len(), 1, "nothing changed");

    let r = send(&f, api("POST", "/api/v1/pans", new_pan(), Some(TOKEN))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(saved(&f).pans.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_cookie_and_forms_need_the_csrf_token() {
    let f = start();
    let r = send(&f, form("/login", &[("token", "not-the-token")], None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.set_cookie.is_none());
    // The second failure from the same client waits before answering.
    let t = std::time::Instant::now();
    send(&f, form("/login", &[("token", "still-not-it")], None)).await;
    assert!(t.elapsed() >= Duration::from_millis(240), "failed logins are slowed down");

    let r = send(&f, form("/login", &[("token", TOKEN)], None)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let set = r.set_cookie.unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();

    let page = send(&f, Request::get("/pans/alpha").header(header::COOKIE, &cookie).body(Body::empty()).unwrap()).await;
    assert!(page.body.contains("Create LUN"), "logged-in pages show forms");
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();

    let r = send(&f, form("/ui/change", &[("csrf", "forged"), ("op", "create-pan"), ("pan", "gamma")], Some(&cookie)))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // The API with only the cookie needs the CSRF header too.
    let r = send(
        &f,
        Request::post("/api/v1/pans")
            .header(header::COOKIE, &cookie)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"name":"gamma"}"#))
            .unwrap(),
    )
    .await;
    r.problem(StatusCode::FORBIDDEN);
    assert!(!saved(&f).pans.iter().any(|p| p.name == "gamma"));

    let back = "/pans/alpha";
    let ok = [("csrf", csrf.as_str()), ("op", "create-pan"), ("pan", "gamma"), ("back", back)];
    let r = send(&f, form("/ui/change", &ok, Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some(back));
    assert!(saved(&f).pans.iter().any(|p| p.name == "gamma"));
    // A form that fails shows the reason, with the problem's status.
    let r =
        send(&f, form("/ui/change", &[("csrf", &csrf), ("op", "create-pan"), ("pan", "gamma")], Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("exists"), "{}", r.body);
    // Forms never redirect off the site.
    let r = send(
        &f,
        form(
            "/ui/change",
            &[("csrf", &csrf), ("op", "create-pan"), ("pan", "delta"), ("back", "//evil.example/")],
            Some(&cookie),
        ),
    )
    .await;
    assert_eq!(r.location.as_deref(), Some("/"));

    let r = send(&f, form("/logout", &[("csrf", &csrf)], Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = send(&f, form("/ui/change", &[("csrf", &csrf), ("op", "create-pan"), ("pan", "eps")], Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "the session ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_takes_effect_on_the_running_gateway_and_is_persisted() {
    let f = start();
    assert_eq!(call(&f, "POST", "/api/v1/pans", Some(json!({"name": "beta"}))).await.status, StatusCode::CREATED);
    let r = call(&f, "POST", "/api/v1/pans/beta/nodes", Some(json!({"name": "web1"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let cred = r.json()["credential"].as_str().unwrap().to_string();
    assert!(cred.len() >= 16);

    // A new sparse image, and an existing file.
    let r = call(&f, "POST", "/api/v1/pans/beta/luns", Some(json!({"name": "disk", "size": "8MiB"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["size_bytes"], 8 << 20);
    let made = PathBuf::from(r.json()["path"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&made).unwrap().len(), 8 << 20);
    let existing = f.dir.path().join("images").join("existing.raw");
    std::fs::create_dir_all(existing.parent().unwrap()).unwrap();
    std::fs::write(&existing, vec![0x5a; 1 << 20]).unwrap();
    let r =
        call(&f, "POST", "/api/v1/pans/beta/luns", Some(json!({"name": "old", "path": existing, "block_size": 4096})))
            .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!((r.json()["size_bytes"].as_u64(), r.json()["block_size"].as_u64()), (Some(1 << 20), Some(4096)));

    let map =
        |t: u16, l: u16, image: &str, access: &str| json!({"target": t, "lun": l, "image": image, "access": access});
    assert_eq!(
        call(&f, "POST", "/api/v1/pans/beta/nodes/web1/maps", Some(map(0, 0, "disk", "rw"))).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        call(&f, "POST", "/api/v1/pans/beta/nodes/web1/maps", Some(map(0, 1, "old", "ro"))).await.status,
        StatusCode::CREATED
    );

    // The new node connects with the returned credential and sees its map; I/O works and
    // is counted; the read-only map refuses writes.
    let mut i = connect(&f, "beta", "web1", &cred);
    let luns: Vec<_> = i.luns().iter().map(|l| (l.target, l.lun, l.block_size, l.read_only)).collect();
    assert_eq!(luns, vec![(0, 0, 512, false), (0, 1, 4096, true)]);
    for lun in [0, 1] {
        // Each LUN reports the new nexus's power-on unit attention once.
        i.execute(0, lun, &[0; 6], Data::None).unwrap();
    }
    let data = vec![0xa5u8; 8192];
    assert!(i.write(0, 0, 8, &data, false, false).unwrap().good());
    let (resp, back) = i.read(0, 0, 8, 8192).unwrap();
    assert!(resp.good() && back == data);
    let (resp, old) = i.read(0, 1, 0, 4096).unwrap();
    assert!(resp.good() && old.iter().all(|&b| b == 0x5a), "the existing file's contents are served");
    assert!(!i.write(0, 1, 0, &[0u8; 4096], false, false).unwrap().good());
    let lun = call(&f, "GET", "/api/v1/pans/beta/luns/disk", None).await.json();
    assert_eq!((lun["counters"]["writes"].as_u64(), lun["counters"]["bytes_written"].as_u64()), (Some(1), Some(8192)));
    assert_eq!((lun["counters"]["reads"].as_u64(), lun["counters"]["bytes_read"].as_u64()), (Some(1), Some(8192)));
    let text = call(&f, "GET", "/metrics", None).await.body;
    assert!(text.contains(r#"pangate_lun_written_bytes_total{pan="beta",lun="disk"} 8192"#), "{text}");

    // Resize: the capacity grows for the connected node.
    let r = call(&f, "POST", "/api/v1/pans/beta/luns/disk/resize", Some(json!({"size": "12MiB"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["size_bytes"], 12 << 20);
    let mut cap = None;
    for _ in 0..3 {
        // The first command after the resize reports CAPACITY DATA HAS CHANGED.
        if let (resp, Some(c)) = i.read_capacity(0, 0).unwrap() {
            if resp.good() {
                cap = Some(c);
                break;
            }
        }
    }
    assert_eq!(cap, Some(((12 << 20) / 512, 512)));
    call(&f, "POST", "/api/v1/pans/beta/luns/disk/resize", Some(json!({"size": "4MiB"})))
        .await
        .problem(StatusCode::BAD_REQUEST);

    // Unmap: the LUN is gone for the live queue pair.
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/beta/nodes/web1/maps/0/1", None).await.status, StatusCode::NO_CONTENT);
    let (resp, _) = i.read(0, 1, 0, 4096).unwrap();
    assert!(!resp.good(), "an unmapped LUN answers LOGICAL UNIT NOT SUPPORTED");
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/beta/luns/old", None).await.status, StatusCode::NO_CONTENT);
    assert!(existing.exists(), "deleting a LUN keeps its file");

    // A LAN is validated and persisted.
    let lan = json!({"name": "lan1", "mtu": 9000, "ports": [{"node": "web1", "ips": ["198.18.5.1/24"]}]});
    let r = call(&f, "POST", "/api/v1/pans/beta/lans", Some(lan)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.json()["mtu"], 9000);
    let cfg = saved(&f);
    let beta = cfg.pans.iter().find(|p| p.name == "beta").unwrap();
    assert_eq!(beta.lans[0].ports[0].ips, vec!["198.18.5.1/24".to_string()]);
    assert_eq!(beta.images.iter().map(|i| (i.name.as_str(), i.size.0)).collect::<Vec<_>>(), vec![("disk", 12 << 20)]);
    assert_eq!(beta.nodes[0].luns.len(), 1);
    call(&f, "DELETE", "/api/v1/pans/beta/nodes/web1", None).await.problem(StatusCode::CONFLICT);
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/beta/lans/lan1", None).await.status, StatusCode::NO_CONTENT);

    // Deleting the node closes its queue pair and refuses new ones.
    call(&f, "DELETE", "/api/v1/pans/beta/luns/disk", None).await.problem(StatusCode::CONFLICT);
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/beta/nodes/web1", None).await.status, StatusCode::NO_CONTENT);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while i.check_connected().is_ok() {
        assert!(std::time::Instant::now() < deadline, "the deleted node's queue pair stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
    let opts = ConnectOptions {
        pan: "beta".into(),
        node: "web1".into(),
        credential: cred,
        slots: 256,
        data_bytes: 1 << 20,
        client: None,
    };
    assert!(Initiator::connect(&f.socket, &opts).is_err());
    call(&f, "DELETE", "/api/v1/pans/beta", None).await.problem(StatusCode::CONFLICT);
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/beta/luns/disk", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/beta", None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(saved(&f).pans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["alpha"]);
    // The original node was never disturbed.
    let mut old = connect(&f, "alpha", "n1", CRED);
    old.execute(0, 0, &[0; 6], Data::None).unwrap();
    assert!(old.read(0, 0, 0, 512).unwrap().0.good());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_problem_document_never_a_500() {
    let f = start();
    let own: &Path = &f.file;
    let images = f.dir.path().join("images");
    std::os::unix::fs::symlink(images.join("a0.img"), images.join("alias.img")).unwrap();
    let cases: Vec<(&str, String, Option<Value>, StatusCode)> = vec![
        ("POST", "/api/v1/pans".into(), Some(json!({"name": "Bad Name"})), StatusCode::BAD_REQUEST),
        ("POST", "/api/v1/pans".into(), Some(json!({"name": ""})), StatusCode::BAD_REQUEST),
        ("POST", "/api/v1/pans".into(), Some(json!({"name": "alpha"})), StatusCode::CONFLICT),
        ("POST", "/api/v1/pans".into(), Some(json!({"nome": "x"})), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/api/v1/pans".into(), Some(json!([1, 2])), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/api/v1/pans/nope/nodes".into(), Some(json!({"name": "x"})), StatusCode::NOT_FOUND),
        ("POST", "/api/v1/pans/alpha/nodes".into(), Some(json!({"name": "n1"})), StatusCode::CONFLICT),
        (
            "POST",
            "/api/v1/pans/alpha/nodes".into(),
            Some(json!({"name": "n2", "credential": "short"})),
            StatusCode::BAD_REQUEST,
        ),
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "x", "size": "0"})), StatusCode::BAD_REQUEST),
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "x", "size": "lots"})), StatusCode::BAD_REQUEST),
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "x", "size": "1000"})), StatusCode::BAD_REQUEST),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "size": "64TiB"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "size": "1MiB", "block_size": 1024})),
            StatusCode::BAD_REQUEST,
        ),
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "x"})), StatusCode::BAD_REQUEST),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "size": "1M", "path": "/tmp/x"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": "rel/img"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": "/nonexistent/img"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": images.join("missing.img")})),
            StatusCode::NOT_FOUND,
        ),
        // The gateway's own files, host files and devices are never LUNs (images lie under
        // the image roots; block devices must be listed).
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "x", "path": own})), StatusCode::BAD_REQUEST),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": "/etc/passwd"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": "/etc/shadow"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": images.join("../pangate.toml")})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": images.join("a0.img")})),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/luns".into(),
            Some(json!({"name": "x", "path": images.join("alias.img")})),
            StatusCode::CONFLICT,
        ),
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "x", "path": "/dev"})), StatusCode::BAD_REQUEST),
        ("POST", "/api/v1/pans/alpha/luns".into(), Some(json!({"name": "a0", "size": "1M"})), StatusCode::CONFLICT),
        ("POST", "/api/v1/pans/alpha/luns/zz/resize".into(), Some(json!({"size": "1G"})), StatusCode::NOT_FOUND),
        (
            "POST",
            "/api/v1/pans/alpha/nodes/n1/maps".into(),
            Some(json!({"target": 0, "lun": 0, "image": "a0"})),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/nodes/n1/maps".into(),
            Some(json!({"target": 0, "lun": 16384, "image": "a0"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/nodes/n1/maps".into(),
            Some(json!({"target": 0, "lun": 70000, "image": "a0"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/nodes/n1/maps".into(),
            Some(json!({"target": 0, "lun": 2, "image": "a0", "access": "rx"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/nodes/n1/maps".into(),
            Some(json!({"target": 0, "lun": 2, "image": "zz"})),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/nodes/zz/maps".into(),
            Some(json!({"target": 0, "lun": 2, "image": "a0"})),
            StatusCode::NOT_FOUND,
        ),
        ("DELETE", "/api/v1/pans/alpha/nodes/n1/maps/0/x".into(), None, StatusCode::BAD_REQUEST),
        ("DELETE", "/api/v1/pans/alpha/nodes/n1/maps/0/9".into(), None, StatusCode::NOT_FOUND),
        ("DELETE", "/api/v1/pans/alpha".into(), None, StatusCode::CONFLICT),
        ("DELETE", "/api/v1/pans/alpha/luns/a0".into(), None, StatusCode::CONFLICT),
        ("DELETE", "/api/v1/pans/alpha/lans/none".into(), None, StatusCode::NOT_FOUND),
        ("POST", "/api/v1/pans/alpha/lans".into(), Some(json!({"name": "l", "mtu": 100})), StatusCode::BAD_REQUEST),
        (
            "POST",
            "/api/v1/pans/alpha/lans".into(),
            Some(json!({"name": "l", "ports": [{"node": "ghost"}]})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/v1/pans/alpha/lans".into(),
            Some(json!({"name": "l", "ports": [{"node": "n1", "ips": ["300.1.1.1/24"]}]})),
            StatusCode::BAD_REQUEST,
        ),
        ("GET", "/api/v1/pans/none".into(), None, StatusCode::NOT_FOUND),
        ("GET", "/api/v1/no/such/route".into(), None, StatusCode::NOT_FOUND),
    ];
    let before = std::fs::read_to_string(&f.file).unwrap();
    for (method, uri, body, want) in cases {
        let r = call(&f, method, &uri, body.clone()).await;
        assert_eq!(r.status, want, "{method} {uri} {body:?}: {}", r.body);
        r.problem(want);
    }
    // Not JSON at all.
    let r = send(
        &f,
        Request::post("/api/v1/pans")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"name\":"))
            .unwrap(),
    )
    .await;
    r.problem(StatusCode::BAD_REQUEST);
    let r = send(
        &f,
        Request::post("/api/v1/pans")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .body(Body::from("name=x"))
            .unwrap(),
    )
    .await;
    r.problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(std::fs::read_to_string(&f.file).unwrap(), before, "no refused change touched the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let f = start();
    let doc = call(&f, "GET", "/api/v1/openapi.json", None).await.json();
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/overview",
        "/api/v1/pans",
        "/api/v1/pans/{pan}",
        "/api/v1/pans/{pan}/nodes",
        "/api/v1/pans/{pan}/nodes/{node}",
        "/api/v1/pans/{pan}/nodes/{node}/maps",
        "/api/v1/pans/{pan}/nodes/{node}/maps/{target}/{lun}",
        "/api/v1/pans/{pan}/luns",
        "/api/v1/pans/{pan}/luns/{lun}",
        "/api/v1/pans/{pan}/luns/{lun}/resize",
        "/api/v1/pans/{pan}/lans",
        "/api/v1/pans/{pan}/lans/{lan}",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert_eq!(doc["components"]["securitySchemes"]["token"]["scheme"], "bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lan_created_at_run_time_switches_at_once_and_deleting_it_detaches_its_ports() {
    let f = start();
    let r = call(&f, "POST", "/api/v1/pans/alpha/nodes", Some(json!({"name": "n2"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let cred2 = r.json()["credential"].as_str().unwrap().to_string();
    let attach = |node: &str, cred: &str| RingClient::connect(&f.net_socket, "alpha", node, "wire", cred);
    assert!(attach("n1", CRED).is_err(), "no LAN yet");

    let lan = json!({"name": "wire", "ports": [
        {"node": "n1", "ips": ["198.18.7.1/24"]},
        {"node": "n2", "ips": ["198.18.7.2/24"]},
    ]});
    let r = call(&f, "POST", "/api/v1/pans/alpha/lans", Some(lan)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = call(&f, "GET", "/api/v1/pans/alpha", None).await;
    let wire = &r.json()["lans"][0];
    assert_eq!((wire["name"].as_str(), wire["active"].as_bool()), (Some("wire"), Some(true)), "{}", r.body);

    // Both nodes attach and a frame crosses, with no restart.
    let mut a = attach("n1", CRED).unwrap();
    let mut b = attach("n2", &cred2).unwrap();
    f.state.sample().await;
    assert_eq!(a.ips(), ["198.18.7.1/24"]);
    let frame = udp_frame(a.mac().0, b.mac().0, [198, 18, 7, 1], [198, 18, 7, 2]);
    assert!(a.send(&frame).unwrap());
    a.flush();
    assert_eq!(recv_frame(&mut b).as_deref(), Some(&frame[..]));
    let shown = f.net.show().unwrap();
    let counted = &shown.lans.iter().find(|l| l.lan == "wire").unwrap().counters;
    assert_eq!(counted.frames_in, 1, "{counted:?}");
    // Its ports are in the metrics too.
    let r = call(&f, "GET", "/metrics", None).await;
    assert!(r.body.contains(r#"pangate_lan_frames_total{pan="alpha",lan="wire",direction="in"} 1"#), "{}", r.body);
    // And in the LAN's and the nodes' charts: a frame in from n1, out to n2, with its bytes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.state.sample().await;
    let series = |uri: &str| send(&f, api("GET", uri, None, None));
    let lan = series("/api/v1/pans/alpha/lans/wire/series").await.json();
    let (dt, first) = (lan["t"].as_array().unwrap().len(), |c: usize| lan["values"][c][0].as_f64().unwrap());
    assert_eq!(dt, 1, "{lan}");
    assert!(first(0) > 0.0 && first(1) > 0.0 && first(2) == 0.0, "frames in, out, dropped: {lan}");
    assert!((first(3) / first(0) - frame.len() as f64).abs() < 1.0, "bytes in a second per frame: {lan}");
    let n1 = series("/api/v1/pans/alpha/nodes/n1/series").await.json();
    assert_eq!(n1["charts"][0]["title"], "Frames", "{n1}");
    assert!(n1["values"][0][0].as_f64().unwrap() > 0.0 && n1["values"][1][0].as_f64().unwrap() == 0.0, "{n1}");

    // Moving n1's address to n2 (a failover): n2 announces it with a gratuitous ARP and
    // may send from it; n1 no longer may.
    let move_ip = |ip: &str, node: &str| json!({"ip": ip, "node": node});
    let r = call(&f, "POST", "/api/v1/pans/alpha/lans/wire/move-ip", Some(move_ip("198.18.7.1", "n2"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["ports"][1]["ips"], json!(["198.18.7.2/24", "198.18.7.1/24"]), "{}", r.body);
    let garp = recv_frame(&mut a).expect("the old owner hears the gratuitous ARP");
    let arp = etherparse::ArpPacketSlice::from_slice(&garp[14..]).unwrap();
    assert_eq!((garp[0..6].to_vec(), &garp[12..14]), (vec![0xff; 6], &[0x08, 0x06][..]));
    assert_eq!((arp.sender_hw_addr(), arp.sender_protocol_addr()), (&b.mac().0[..], &[198, 18, 7, 1][..]));
    assert_eq!(arp.sender_protocol_addr(), arp.target_protocol_addr(), "gratuitous: it asks for itself");
    let from_moved = udp_frame(b.mac().0, a.mac().0, [198, 18, 7, 1], [198, 18, 7, 9]);
    assert!(b.send(&from_moved).unwrap());
    b.flush();
    assert_eq!(recv_frame(&mut a).as_deref(), Some(&from_moved[..]), "n2 now sends from the moved address");
    let stale = udp_frame(a.mac().0, b.mac().0, [198, 18, 7, 1], [198, 18, 7, 2]);
    assert!(a.send(&stale).unwrap());
    a.flush();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let shown = f.net.show().unwrap();
        let port = &shown.lans[0].ports[0];
        if port.counters.drops.get("ip_spoof").copied().unwrap_or(0) == 1 {
            assert!(port.ips.is_empty(), "net show follows the move: {:?}", port.ips);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "n1's stale use of the address was not dropped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let saved_ports = &saved(&f).pans[0].lans[0].ports;
    assert!(saved_ports[0].ips.is_empty() && saved_ports[1].ips.len() == 2, "{saved_ports:?}");
    for (ip, node, status) in [
        ("fe80::1", "n1", StatusCode::BAD_REQUEST),
        ("198.18.7.77", "n1", StatusCode::NOT_FOUND),
        ("198.18.7.1", "n9", StatusCode::NOT_FOUND),
    ] {
        let r = call(&f, "POST", "/api/v1/pans/alpha/lans/wire/move-ip", Some(move_ip(ip, node))).await;
        r.problem(status);
    }

    // Deleting it detaches the clients at once and refuses new ones.
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/alpha/lans/wire", None).await.status, StatusCode::NO_CONTENT);
    assert!(a.detached() && b.detached(), "the deleted LAN's ring clients were told");
    assert!(attach("n1", CRED).is_err());
    assert!(f.net.show().unwrap().lans.is_empty());
    assert!(saved(&f).pans[0].lans.is_empty());

    // The same name can be created again, and works.
    let lan = json!({"name": "wire", "ports": [
        {"node": "n1", "ips": ["198.18.7.1/24"]},
        {"node": "n2", "ips": ["198.18.7.2/24"]},
    ]});
    assert_eq!(call(&f, "POST", "/api/v1/pans/alpha/lans", Some(lan)).await.status, StatusCode::CREATED);
    let mut a = attach("n1", CRED).unwrap();
    let mut b = attach("n2", &cred2).unwrap();
    let frame = udp_frame(b.mac().0, a.mac().0, [198, 18, 7, 2], [198, 18, 7, 1]);
    assert!(b.send(&frame).unwrap());
    b.flush();
    assert_eq!(recv_frame(&mut a).as_deref(), Some(&frame[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_lan_created_at_run_time_gets_its_namespace_and_deleting_it_removes_them() {
    let root = rustix::process::geteuid().is_root() && Path::new("/dev/net/tun").exists();
    if support::skip_because((!root).then(|| "needs root and /dev/net/tun (TAP devices)".into())) {
        return;
    }
    let f = start();
    let ns = format!("pgt{}adm", std::process::id() % 100_000);
    // Removes the namespace even if the test fails.
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _guard = Netns(ns.clone());
    let lan = json!({"name": "tapped", "ports": [{"node": "n1", "netns": ns, "ips": ["198.18.8.1/24"]}]});
    let r = call(&f, "POST", "/api/v1/pans/alpha/lans", Some(lan)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let link = std::process::Command::new("ip").args(["-n", &ns, "-br", "addr"]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("pgtapped-n1") && link.contains("198.18.8.1/24"), "{link}");
    assert_eq!(call(&f, "DELETE", "/api/v1/pans/alpha/lans/tapped", None).await.status, StatusCode::NO_CONTENT);
    assert!(!Path::new("/run/netns").join(&ns).exists(), "the namespace pangate made for the LAN is gone");
}

#[tokio::test]
async fn every_response_is_unframeable_unsniffable_scriptless_and_echoes_little() {
    let f = start();
    let long = "x".repeat(100_000);
    let requests = [
        api("GET", "/", None, None),
        api("GET", &format!("/assets/{}/pangate.js", env!("CARGO_PKG_VERSION")), None, None),
        api("GET", "/api/v1/pans", None, None),
        api("GET", "/metrics", None, None),
        api("GET", "/no/such/page", None, None),
        api("POST", "/api/v1/pans", Some(json!({ "name": long })), Some(TOKEN)),
    ];
    for req in requests {
        let uri = req.uri().to_string();
        let resp = web::router(f.state.clone()).oneshot(req).await.unwrap();
        let h = |name| resp.headers().get(name).map(|v: &header::HeaderValue| v.to_str().unwrap().to_string());
        assert_eq!(h(header::CONTENT_SECURITY_POLICY).as_deref(), Some(web::CONTENT_SECURITY_POLICY), "{uri}");
        assert_eq!(h(header::X_FRAME_OPTIONS).as_deref(), Some("DENY"), "{uri}");
        assert_eq!(h(header::X_CONTENT_TYPE_OPTIONS).as_deref(), Some("nosniff"), "{uri}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() < 2048 || uri != "/api/v1/pans", "{uri}: {} bytes echoed", body.len());
    }
    // The pages need nothing the policy forbids: no inline style or script (each script
    // is an empty element loading this origin's asset), no javascript: URL.
    let page = send(&f, api("GET", "/", None, None)).await.body;
    assert!(!page.contains("<style") && !page.contains("javascript:") && !page.contains("style="), "{page}");
    let scripts: Vec<&str> = page.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 2, "uPlot and pangate.js: {page}");
    for s in scripts {
        assert!(s.starts_with(" src=\"/assets/") && s.contains("defer></script>"), "an inline or foreign script: {s}");
        let body = &s[s.find('>').unwrap() + 1..s.find("</script>").unwrap()];
        assert!(body.is_empty(), "inline script: {body}");
    }
    // And the assets are served, as what they are.
    for (asset, kind) in [("pangate.js", "text/javascript"), ("uplot.js", "text/javascript"), ("uplot.css", "text/css")]
    {
        let r = send(&f, api("GET", &format!("/assets/{}/{asset}", env!("CARGO_PKG_VERSION")), None, None)).await;
        assert_eq!(r.status, StatusCode::OK, "{asset}");
        assert!(r.content_type.starts_with(kind), "{asset}: {}", r.content_type);
    }
    // A form that does not parse gets the error page, not axum's plain text.
    let r = send(&f, form("/ui/change", &[("nonsense", "1")], None)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.content_type.starts_with("text/html"), "{}", r.content_type);
    assert!(r.body.contains("the form is not valid"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_made_from_the_page_relays_to_its_backend_and_drains_from_the_page() {
    let f = start();
    let r = call(&f, "POST", "/api/v1/pans/alpha/nodes", Some(json!({"name": "n2"}))).await;
    let cred2 = r.json()["credential"].as_str().unwrap().to_string();
    let lan = json!({"name": "wire", "ports": [
        {"node": "n1", "ips": ["198.18.7.1/24"]},
        {"node": "n2", "ips": ["198.18.7.2/24"]},
    ]});
    assert_eq!(call(&f, "POST", "/api/v1/pans/alpha/lans", Some(lan)).await.status, StatusCode::CREATED);

    // Log in, and create the cluster with the page's form.
    let r = send(&f, form("/login", &[("token", TOKEN)], None)).await;
    let cookie = r.set_cookie.unwrap().split(';').next().unwrap().to_string();
    let page = send(&f, Request::get("/pans/alpha").header(header::COOKIE, &cookie).body(Body::empty()).unwrap()).await;
    assert!(page.body.contains("Create cluster"), "{}", page.body);
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let make = [
        ("csrf", csrf.as_str()),
        ("op", "create-cluster"),
        ("pan", "alpha"),
        ("name", "wire"),
        ("cluster", "web"),
        ("ip", "198.18.7.100"),
        ("services", "80 n1 sticky"),
    ];
    let r = send(&f, form("/ui/change", &make, Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let c = &saved(&f).pans[0].lans[0].clusters[0];
    assert_eq!(
        (c.name.as_str(), c.ip.as_str(), c.services[0].nodes.clone()),
        ("web", "198.18.7.100", vec!["n1".into()])
    );
    assert!(c.services[0].sticky);

    // Through the running LAN: a SYN from n2 to the cluster's MAC reaches n1, addressed to
    // n1's MAC and otherwise unchanged.
    let mut a = RingClient::connect(&f.net_socket, "alpha", "n1", "wire", CRED).unwrap();
    let mut b = RingClient::connect(&f.net_socket, "alpha", "n2", "wire", &cred2).unwrap();
    let view = call(&f, "GET", "/api/v1/pans/alpha", None).await.json();
    let cluster = &view["lans"][0]["clusters"][0];
    assert_eq!(cluster["name"], "web", "{view}");
    let mac: netvirt::mac::Mac = cluster["mac"].as_str().unwrap().parse().unwrap();
    let mut syn = Vec::new();
    etherparse::PacketBuilder::ethernet2(b.mac().0, mac.0)
        .ipv4([198, 18, 7, 2], [198, 18, 7, 100], 64)
        .tcp(40000, 80, 1, 65535)
        .syn()
        .write(&mut syn, &[])
        .unwrap();
    assert!(b.send(&syn).unwrap());
    b.flush();
    let got = recv_frame(&mut a).expect("the backend gets the connection");
    assert_eq!(&got[..6], &a.mac().0);
    assert_eq!(&got[6..], &syn[6..]);

    // Drain n1 from the page: saved, and the page now offers to take it back.
    let drain = [
        ("csrf", csrf.as_str()),
        ("op", "drain"),
        ("pan", "alpha"),
        ("name", "wire"),
        ("cluster", "web"),
        ("node", "n1"),
        ("port", "80"),
        ("proto", "tcp"),
    ];
    let r = send(&f, form("/ui/change", &drain, Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(saved(&f).pans[0].lans[0].clusters[0].services[0].draining, vec!["n1".to_string()]);
    let page = send(&f, Request::get("/pans/alpha").header(header::COOKIE, &cookie).body(Body::empty()).unwrap()).await;
    assert!(page.body.contains("undrain"), "{}", page.body);
    let show = f.net.show().unwrap();
    let live = &show.lans.iter().find(|l| l.lan == "wire").unwrap().clusters[0];
    assert_eq!(live.backends[0].health, "draining", "{live:?}");
    let text = call(&f, "GET", "/metrics", None).await.body;
    let want = r#"pangate_cluster_backend_state{pan="alpha",lan="wire",cluster="web",proto="tcp",port="80",node="n1",state="draining"} 1"#;
    assert!(text.contains(want), "{text}");
    assert!(text.contains(r#"pangate_cluster_new_flows_total{pan="alpha",lan="wire",cluster="web"} 1"#), "{text}");

    // A bad services line is a 400 with why; deleting through the API leaves nothing.
    let bad = [
        ("csrf", csrf.as_str()),
        ("op", "create-cluster"),
        ("pan", "alpha"),
        ("name", "wire"),
        ("cluster", "x"),
        ("ip", "198.18.7.101"),
        ("services", "eighty n1"),
    ];
    let r = send(&f, form("/ui/change", &bad, Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let r = call(&f, "DELETE", "/api/v1/pans/alpha/lans/wire/clusters/web", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert!(saved(&f).pans[0].lans[0].clusters.is_empty());
    assert!(f.net.show().unwrap().lans.iter().find(|l| l.lan == "wire").unwrap().clusters.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_fails_over_to_a_spare_from_the_page_and_its_old_credential_opens_nothing() {
    let f = start();
    let r = call(&f, "POST", "/api/v1/pans/alpha/nodes", Some(json!({"name": "s1", "spare": true}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let spare_cred = r.json()["credential"].as_str().unwrap().to_string();
    let lan = json!({"name": "wire", "ports": [{"node": "n1", "ips": ["198.18.7.1/24"]}]});
    assert_eq!(call(&f, "POST", "/api/v1/pans/alpha/lans", Some(lan)).await.status, StatusCode::CREATED);
    let mut old_qp = connect(&f, "alpha", "n1", CRED);
    old_qp.execute(0, 0, &[0; 6], Data::None).unwrap();
    let old_port = RingClient::connect(&f.net_socket, "alpha", "n1", "wire", CRED).unwrap();

    // A spare shows as one, and has no failover button of its own; the form offers it.
    let r = send(&f, form("/login", &[("token", TOKEN)], None)).await;
    let cookie = r.set_cookie.unwrap().split(';').next().unwrap().to_string();
    let page = send(&f, Request::get("/pans/alpha").header(header::COOKIE, &cookie).body(Body::empty()).unwrap()).await;
    assert!(page.body.contains("s1 (spare)") && page.body.contains("Fail over"), "{}", page.body);
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let go = [("csrf", csrf.as_str()), ("op", "failover"), ("pan", "alpha"), ("node", "n1"), ("name", "s1")];
    let r = send(&f, form("/ui/change", &go, Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);

    // Saved as one change: the spare is gone, n1 has its credential and keeps its map.
    let cfg = saved(&f);
    assert_eq!(cfg.pans[0].nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["n1"]);
    assert_eq!(cfg.pans[0].nodes[0].credential, spare_cred);
    assert_eq!(cfg.pans[0].nodes[0].luns.len(), 1);
    // The old node's queue pair and port were closed; its credential opens neither again.
    let mut out = Vec::new();
    assert!(old_qp.poll(&mut out, Duration::from_millis(100)).is_err() || old_qp.check_connected().is_err());
    let opts = ConnectOptions {
        pan: "alpha".into(),
        node: "n1".into(),
        credential: CRED.into(),
        slots: 16,
        data_bytes: 1 << 20,
        client: None,
    };
    let refused = Initiator::connect(&f.socket, &opts).unwrap_err().to_string();
    assert!(refused.contains("wrong credential"), "{refused}");
    assert!(RingClient::connect(&f.net_socket, "alpha", "n1", "wire", CRED).is_err());
    drop(old_port);
    // The spare's credential is n1's now, for storage and network alike.
    let mut new_qp = connect(&f, "alpha", "n1", &spare_cred);
    assert!(new_qp.execute(0, 0, &[0; 6], Data::None).is_ok());
    let mut attached = None;
    for _ in 0..100 {
        match RingClient::connect(&f.net_socket, "alpha", "n1", "wire", &spare_cred) {
            Ok(c) => {
                attached = Some(c);
                break;
            }
            // The old client's port may take a moment to be let go of.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(attached.is_some(), "the spare attaches to n1's port");
    let text = call(&f, "GET", "/metrics", None).await.body;
    assert!(text.contains(r#"pangate_failovers_total{pan="alpha",trigger="manual",outcome="done"} 1"#), "{text}");
    // There is no spare left: a 409 that says so.
    let r = call(&f, "POST", "/api/v1/pans/alpha/nodes/n1/failover", None).await;
    assert!(r.problem(StatusCode::CONFLICT).contains("no free spare"));
}
