//! The operator's view through the admin's handlers: the event log, the status header,
//! confirmation before destructive actions, and the charts' series.

#[path = "support/admin.rs"]
mod fixture;
mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use gateway::ring::initiator::{ConnectOptions, Data, Initiator};
use serde_json::json;

use fixture::*;

/// The event log: a node connecting and going, a refused handshake, a change and a refused
/// one, each with level, time, subject and message, as JSON (newer than `after`) and on the
/// pages; the header shows version, uptime and every front-end's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_logged_served_as_json_and_shown_with_the_gateways_status() {
    let f = start();
    let mut qp = connect(&f, "alpha", "n1", CRED);
    qp.execute(0, 0, &[0; 6], Data::None).unwrap();
    drop(qp);
    let opts = ConnectOptions {
        pan: "alpha".into(),
        node: "n1".into(),
        credential: "wrong-wrong-wrong-1".into(),
        slots: 8,
        data_bytes: 1 << 20,
        client: None,
    };
    assert!(Initiator::connect(&f.socket, &opts).is_err());
    assert_eq!(call(&f, "POST", "/api/v1/pans", Some(json!({"name": "beta"}))).await.status, StatusCode::CREATED);
    assert_eq!(call(&f, "POST", "/api/v1/pans", Some(json!({"name": "beta"}))).await.status, StatusCode::CONFLICT);

    let mut kinds = Vec::new();
    for _ in 0..100 {
        let r = send(&f, api("GET", "/api/v1/events", None, None)).await;
        assert_eq!(r.status, StatusCode::OK);
        let events = r.json();
        kinds = events.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect();
        if kinds.iter().any(|k| k == "node_disconnected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for wanted in ["node_connected", "node_disconnected", "handshake_refused", "change", "change_refused"] {
        assert!(kinds.iter().any(|k| k == wanted), "no {wanted} in {kinds:?}");
    }
    let all = send(&f, api("GET", "/api/v1/events", None, None)).await.json();
    let all = all.as_array().unwrap();
    let connected = all.iter().find(|e| e["kind"] == "node_connected").unwrap();
    assert_eq!((connected["subject"].as_str(), connected["level"].as_str()), (Some("alpha/n1"), Some("info")));
    assert!(connected["unix_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let refused = all.iter().find(|e| e["kind"] == "change_refused").unwrap();
    assert!(refused["message"].as_str().unwrap().contains("create PAN beta"), "{refused}");
    // Only newer events after a number; at most `limit`, the newest.
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first: {seqs:?}");
    let newer = send(&f, api("GET", &format!("/api/v1/events?after={}", seqs[1]), None, None)).await.json();
    assert_eq!(newer.as_array().unwrap().len(), seqs.len() - 2);
    let last = send(&f, api("GET", "/api/v1/events?limit=1", None, None)).await.json();
    assert_eq!(last[0]["seq"].as_u64(), seqs.last().copied());
    send(&f, api("GET", "/api/v1/events?after=x", None, None)).await.problem(StatusCode::BAD_REQUEST);

    // The pages: the dashboard's recent events and the whole log, under the status header.
    let page = send(&f, Request::get("/").body(Body::empty()).unwrap()).await;
    assert!(page.body.contains("Recent events") && page.body.contains("queue pair opened"), "{}", page.body);
    assert!(page.body.contains(&format!("v{}", env!("CARGO_PKG_VERSION"))) && page.body.contains("up "));
    assert!(page.body.contains("TCMU: off") && page.body.contains("iSCSI: off") && page.body.contains("netvirt: on"));
    assert!(page.body.contains("FUSE mounts: 0"), "{}", page.body);
    let events = send(&f, Request::get("/events").body(Body::empty()).unwrap()).await;
    assert!(events.body.contains("a handshake was refused") && events.body.contains(" UTC"), "{}", events.body);
}

/// Delete, unmap and fail over first show what will happen: the button is a link to a page
/// that says so and carries the real form; read-only tables have no action column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_actions_ask_first_and_read_only_tables_have_no_empty_column() {
    let f = start();
    let anonymous = send(&f, Request::get("/pans/alpha").body(Body::empty()).unwrap()).await;
    assert!(!anonymous.body.contains("<th></th>") && !anonymous.body.contains("actions"), "{}", anonymous.body);
    // The PAN page draws its topology: node n1's map of LUN a0 is a line between them.
    assert!(anonymous.body.contains(r#"<svg class="topology""#), "{}", anonymous.body);
    assert!(anonymous.body.contains("n1 maps a0 as target 0 LUN 0"), "{}", anonymous.body);
    let r = send(&f, form("/login", &[("token", TOKEN)], None)).await;
    let cookie = r.set_cookie.unwrap().split(';').next().unwrap().to_string();
    let page = send(&f, Request::get("/pans/alpha").header(header::COOKIE, &cookie).body(Body::empty()).unwrap()).await;
    // Every destructive button leads to the confirmation page; none posts a change itself.
    for op in ["delete-lun", "unmap", "failover", "delete-node", "delete-pan"] {
        let at = page.body.find(&format!(r#"name="op" value="{op}""#)).unwrap_or_else(|| panic!("no {op} button"));
        let form = &page.body[page.body[..at].rfind("<form").unwrap()..at];
        assert!(form.contains(r#"method="get" action="/ui/confirm""#), "{op}: {form}");
    }

    let ask = "/ui/confirm?op=unmap&back=%2Fpans%2Falpha&label=unmap&pan=alpha&node=n1&target=0&lun=0";
    let confirm = send(&f, Request::get(ask).header(header::COOKIE, &cookie).body(Body::empty()).unwrap()).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.body.contains("This will <strong>unmap target 0 LUN 0 from alpha/n1</strong>"), "{}", confirm.body);
    assert!(confirm.body.contains(r#"href="/pans/alpha">Cancel"#), "{}", confirm.body);
    // Asking changes nothing; the form it carries does, with this session's CSRF token.
    assert_eq!(saved(&f).pans[0].nodes[0].luns.len(), 1);
    let csrf = confirm.body.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let change_form = confirm.body.split(r#"action="/ui/change""#).nth(1).unwrap().split("</form>").next().unwrap();
    let fields: Vec<(String, String)> = change_form
        .split("<input type=\"hidden\" name=\"")
        .skip(1)
        .map(|s| {
            let (k, rest) = s.split_once("\" value=\"").unwrap();
            (k.to_string(), rest.split('"').next().unwrap().to_string())
        })
        .collect();
    assert!(fields.iter().any(|(k, v)| k == "csrf" && *v == csrf) && !fields.iter().any(|(k, _)| k == "label"));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = send(&f, form("/ui/change", &fields, Some(&cookie))).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(saved(&f).pans[0].nodes[0].luns.is_empty());
    // Not logged in, the page only says to log in.
    let anon = send(&f, Request::get(ask).body(Body::empty()).unwrap()).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
}

/// The charts' series: after I/O, the LUN's, its PAN's and the gateway's series have read
/// and write IOPS, throughput and latency percentiles, and only newer points after a time;
/// the pages carry a panel per subject and the tables the newest rates; a bad query or an
/// unknown subject is a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_chart_io_rates_and_latency_per_lun_pan_and_gateway() {
    let f = start();
    f.state.sample().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut i = connect(&f, "alpha", "n1", CRED);
    i.execute(0, 0, &[0; 6], Data::None).unwrap(); // the power-on unit attention
    let data = vec![0x5au8; 4096];
    for n in 0..20 {
        assert!(i.write(0, 0, n * 8, &data, false, false).unwrap().good());
    }
    for n in 0..10 {
        assert!(i.read(0, 0, n * 8, 4096).unwrap().0.good());
    }
    f.state.sample().await;

    let get = |uri: String| send(&f, api("GET", &uri, None, None));
    let lun = get("/api/v1/pans/alpha/luns/a0/series".into()).await.json();
    let titles: Vec<&str> = lun["charts"].as_array().unwrap().iter().map(|c| c["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["IOPS", "Throughput", "Latency"]);
    assert_eq!(lun["charts"][2]["unit"], "s");
    assert_eq!(lun["t"].as_array().unwrap().len(), 1, "{lun}");
    let v = |s: &serde_json::Value, column: usize| s["values"][column][0].as_f64().unwrap();
    let (reads, writes) = (v(&lun, 0), v(&lun, 1));
    assert!(reads > 0.0 && writes > 0.0 && writes > reads, "{lun}");
    assert!((v(&lun, 3) / writes - 4096.0).abs() < 1.0, "bytes written a second are 4 KiB per write: {lun}");
    let (p50, p99) = (v(&lun, 4), v(&lun, 5));
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 10.0, "{lun}");
    // The PAN and the whole gateway add up their LUNs (here, the one).
    for uri in ["/api/v1/pans/alpha/series", "/api/v1/series"] {
        assert_eq!(get(uri.into()).await.json()["values"], lun["values"], "{uri}");
    }
    // Only newer points after a time.
    let t = lun["t"][0].as_f64().unwrap();
    let newer = get(format!("/api/v1/pans/alpha/luns/a0/series?after={t}")).await.json();
    assert_eq!(newer["t"].as_array().unwrap().len(), 0, "{newer}");
    // A node without LAN ports or per-node counters has no charts, which is not an error.
    let node = get("/api/v1/pans/alpha/nodes/n1/series".into()).await;
    assert_eq!((node.status, node.json()["charts"].as_array().unwrap().len()), (StatusCode::OK, 0));
    get("/api/v1/pans/alpha/luns/nope/series".into()).await.problem(StatusCode::NOT_FOUND);
    get("/api/v1/pans/alpha/luns/a0/series?after=x".into()).await.problem(StatusCode::BAD_REQUEST);
    get("/api/v1/pans/alpha/luns/a0/series?after=inf".into()).await.problem(StatusCode::BAD_REQUEST);

    // The pages: a panel per subject, captioned with the newest values, and the LUN table's
    // newest rates and p99; sizes in binary units.
    let page = get("/pans/alpha/luns/a0".into()).await.body;
    assert!(page.contains(r#"data-series="/api/v1/pans/alpha/luns/a0/series""#), "{page}");
    assert!(page.contains(r#"data-chart="Latency""#) && page.contains("p99 "), "{page}");
    assert!(page.contains("80.0 KiB") && page.contains("40.0 KiB"), "20 writes and 10 reads of 4 KiB: {page}");
    let pan = get("/pans/alpha".into()).await.body;
    assert!(pan.contains(r#"data-series="/api/v1/pans/alpha/series""#) && pan.contains("p99 latency"), "{pan}");
    assert!(pan.contains(r#"href="/pans/alpha/nodes/n1""#), "node names link to their page: {pan}");
    let dashboard = get("/".into()).await.body;
    assert!(
        dashboard.contains(r#"data-series="/api/v1/series""#) && dashboard.contains("<body data-live"),
        "{dashboard}"
    );
    assert!(dashboard.contains("1 KiB = 1024 bytes"), "the units are labelled: {dashboard}");
    let node = get("/pans/alpha/nodes/n1".into()).await;
    assert!(node.status == StatusCode::OK && node.body.contains("per_node_metrics"), "{}", node.body);
    assert!(node.body.contains("target 0") || node.body.contains(r#"href="/pans/alpha/luns/a0""#), "{}", node.body);
    assert_eq!(get("/pans/alpha/nodes/zz".into()).await.status, StatusCode::NOT_FOUND);
}
