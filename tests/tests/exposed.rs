//! A server one can expose (issue 13): each probe of the outsider's report
//! is reproduced here against a real server on loopback, with small caps
//! and short timeouts so that every test stays bounded in count and time.
//! Hostile clients come from other loopback addresses (127.0.0.2, …) than
//! the real ones (127.0.0.1), so that per-address caps can be seen to
//! hold. The rows of the report and their tests:
//!
//! | probe | test |
//! |---|---|
//! | `/events` readable without a token; any token grants every store | [`grants_are_per_store_on_every_endpoint_and_transport`] |
//! | `/events?store=<new>` creates stores | [`reads_never_create_stores`] |
//! | `/events?limit=10000` over large events | [`event_pages_are_capped_in_bytes`] |
//! | `Host: evil.example` (DNS rebinding) | [`an_open_server_answers_loopback_names_and_pages_only`] |
//! | empty or short tokens accepted | [`empty_short_or_blank_tokens_stop_the_server_at_start`] |
//! | idle unauthenticated WebSockets lock real clients out; commits wake them | [`idle_unauthenticated_connections_hold_places_of_their_own_and_sleep`] |
//! | slowloris | [`half_sent_requests_are_capped_per_address_and_timed_out`] |
//! | unauthenticated 4 MB messages parsed | [`before_authenticating_only_a_small_message_is_read`] |
//! | QUIC connections announcing 32 MiB frames | [`quic_hellos_are_read_under_a_small_cap`] |
//! | token guessing | [`failed_authentications_are_throttled_per_address`] |
//! | a store named `tls` | [`a_store_named_tls_lives_apart_from_the_identity`] |
//! | the page's `?server=` | tests/browser/tabs.mjs, step 10 (tests/tests/browser.rs) |
//! | page headers | server/tests/page.rs |
//! | `/health` shows head and store id | [`grants_are_per_store_on_every_endpoint_and_transport`] |
//! | shutdown one store after another | [`shutdown_closes_many_stores_and_keeps_what_it_acknowledged`] (time: docs/BENCHMARKS.md) |
//!
//! TLS on the HTTP port: [`https_and_wss_on_the_http_port_with_the_own_or_a_given_certificate`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use strata::projection::counter;
use strata::sync::proto::{ClientMessage, ErrorCode, PROTOCOL_VERSION, ServerMessage};
use strata::sync::{Replica, ReplicaOptions, SyncError};
use strata::{ExpectedVersion, NewEvent, Options, Store};
use strata_server::{HttpTls, ServerError};
use strata_sync::client::{ClientError, sync_until_idle};
use strata_tests::net::{
    RECV_TIMEOUT, TestServer, connect, connect_from, expect_error, http_get, http_request,
    quic_raw, quic_recv, quic_send, recv, recv_close, send, start, start_in, tls_connect,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// May read and write every store (and read `/metrics`).
const ADMIN: &str = "admin-token-000000001";
/// May read `default`, and `ghost` (which does not exist).
const READER: &str = "reader-token-00000001";
/// May read and write the stores `team-*`.
const TEAM: &str = "team-token-0000000001";

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const ATTACKER_2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Writes the token file of the three tokens above into `dir`.
fn token_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(
        &path,
        format!(
            "# token              stores   mode\n\
             {ADMIN}  *        write\n\
             {READER}  default  read\n\
             {READER}  ghost    read\n\
             {TEAM}  team-*   write\n"
        ),
    )
    .unwrap();
    path
}

/// A server with the token file, HTTP and QUIC on loopback.
async fn start_guarded(tweak: impl FnOnce(&mut strata_server::Config)) -> TestServer {
    let data = tempfile::tempdir().unwrap();
    let tokens = token_file(data.path());
    start_in(data, |c| {
        c.token_file = Some(tokens);
        c.quic = Some("127.0.0.1:0".parse().unwrap());
        tweak(c);
    })
    .await
}

/// A `Hello` for the default store.
fn hello(token: Option<&str>) -> ClientMessage {
    ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        store: String::new(),
        token: token.map(str::to_owned),
        client: "exposed-test".into(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A seed event object for `aggregate` at `version`.
fn seed_event(aggregate: &str, version: u64, pad: usize) -> Value {
    json!({
        "event_id": strata::Uuid::now_v7().to_string(),
        "aggregate_id": aggregate,
        "version": version,
        "event_type": "Recorded",
        "event_data": {"pad": "x".repeat(pad)},
        "timestamp": format!("{}:0:tester", strata_server::quic::now_ms()),
        "metadata": null,
    })
}

/// One seed sync with `events`, over a plain or TLS WebSocket: the
/// `server_sync_response` or `error`.
async fn seed_push<S>(ws: &mut WebSocketStream<S>, events: Vec<Value>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request =
        json!({"type": "client_sync_request", "last_synced_hlc": "", "local_events": events});
    ws.send(Message::text(request.to_string())).await.unwrap();
    loop {
        let msg = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("an answer in time")
            .expect("the connection is open")
            .expect("the connection is healthy");
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "server_sync_response" || v["type"] == "error" {
                return v;
            }
        }
    }
}

/// `/metrics` as the admin sees it.
/// `fut`, or a panic naming `step` if it has not finished within `limit`:
/// a step that would wait forever fails the test and says where.
async fn within<T>(step: &str, limit: Duration, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("{step} did not finish within {limit:?}"))
}

async fn metrics(server: &TestServer) -> String {
    let r = http_get(
        server.addr,
        "/metrics",
        &[("authorization", &bearer(ADMIN))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The value of one series of the exposition.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

fn open_replica(dir: &Path) -> Arc<Replica> {
    Arc::new(Replica::open(dir, ReplicaOptions::default()).unwrap())
}

fn increment(r: &Replica, aggregate: &str) {
    r.append(aggregate, ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
}

/// Whether `store` has any file in the data directory.
fn exists(server: &TestServer, store: &str) -> bool {
    server.data.path().join(store).exists()
}

// --- authorization -------------------------------------------------------------

/// Every endpoint and transport asks for a token that grants the store,
/// before opening it: `/events`, `/health?store=`, `/metrics`, `/ws` and
/// QUIC. A read grant reads and follows but cannot push; a token for
/// `team-*` cannot touch `default`; a store is created only by a token that
/// may write it. `/health` alone says only that the server is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_per_store_on_every_endpoint_and_transport() {
    let server = start_guarded(|_| {}).await;
    let get = |path: &str, token: Option<&'static str>| {
        let addr = server.addr;
        let path = path.to_owned();
        async move {
            let auth = token.map(bearer);
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            http_get(addr, &path, &headers).await
        }
    };

    // /events: nothing without a token, the granted store with one.
    assert_eq!(get("/events", None).await.status, 401);
    assert_eq!(
        get("/events?token=wrong-token-000000001", None)
            .await
            .status,
        401
    );
    assert_eq!(get("/events", Some(READER)).await.status, 200);
    assert_eq!(get("/events?store=team-a", Some(READER)).await.status, 403);
    assert_eq!(get("/events?store=default", Some(TEAM)).await.status, 403);
    let r = get(&format!("/events?token={READER}"), None).await;
    assert_eq!(r.status, 200, "a token in the query works too");

    // /health: up for anyone, the store's head only with a grant.
    let r = get("/health", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), r#"{"ok":true}"#);
    assert_eq!(get("/health?store=default", None).await.status, 401);
    let r = get("/health?store=default", Some(READER)).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text().contains("\"head\":0") && r.text().contains("store_id"),
        "{}",
        r.text()
    );

    // /metrics on the HTTP port: a token for every store only.
    assert_eq!(get("/metrics", None).await.status, 401);
    assert_eq!(get("/metrics", Some(READER)).await.status, 403);
    assert_eq!(get("/metrics", Some(ADMIN)).await.status, 200);

    // /ws: the reader reads default but cannot push there.
    let mut ws = connect(&server.url(&format!("?token={READER}"))).await;
    let v = seed_push(&mut ws, vec![]).await;
    assert_eq!(v["status"], "OK", "{v}");
    let v = seed_push(&mut ws, vec![seed_event("counter-1", 1, 4)]).await;
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["code"], "unauthorized", "{v}");
    // The team token may not name default at all, nor create other stores.
    for store in ["default", "other"] {
        let mut ws = connect(&server.url(&format!("?store={store}&token={TEAM}"))).await;
        expect_error(&mut ws, "unauthorized").await;
        let frame = recv_close(&mut ws).await.expect("a close frame");
        assert_eq!(u16::from(frame.code), 1008);
    }
    assert!(!exists(&server, "other"));
    // It creates and writes its own.
    let mut ws = connect(&server.url(&format!("?store=team-a&token={TEAM}"))).await;
    let v = seed_push(&mut ws, vec![seed_event("counter-1", 1, 4)]).await;
    assert_eq!(v["status"], "OK", "{v}");
    assert!(exists(&server, "team-a"));
    // A grant to read a store that does not exist does not create it.
    let mut ws = connect(&server.url(&format!("?store=ghost&token={READER}"))).await;
    let v = expect_error(&mut ws, "unauthorized").await;
    assert!(v["message"].as_str().unwrap().contains("no store"), "{v}");
    assert!(!exists(&server, "ghost"));

    // QUIC: the same grants.
    let dir = tempfile::tempdir().unwrap();
    let replica = open_replica(dir.path());
    increment(&replica, "counter-1");
    let refused_with = |err: ClientError, code: ErrorCode| match err {
        ClientError::Sync(SyncError::Refused { code: got, .. }) => assert_eq!(got, code),
        other => panic!("expected a refusal ({code:?}), got {other}"),
    };
    let mut opts = server.quic_options(Some(TEAM));
    opts.store = "default".into();
    refused_with(
        sync_until_idle(replica.clone(), opts).await.unwrap_err(),
        ErrorCode::Unauthorized,
    );
    let mut opts = server.quic_options(Some(READER));
    opts.store = "default".into();
    refused_with(
        sync_until_idle(replica.clone(), opts).await.unwrap_err(),
        ErrorCode::Unauthorized,
    );
    let mut opts = server.quic_options(Some(READER));
    opts.store = "ghost".into();
    refused_with(
        sync_until_idle(replica.clone(), opts).await.unwrap_err(),
        ErrorCode::Unauthorized,
    );
    assert!(!exists(&server, "ghost"));
    // A replica belongs to one store: another one for team-q.
    let dir = tempfile::tempdir().unwrap();
    let replica = open_replica(dir.path());
    increment(&replica, "counter-1");
    let mut opts = server.quic_options(Some(TEAM));
    opts.store = "team-q".into();
    let report = sync_until_idle(replica.clone(), opts).await.unwrap();
    assert_eq!(report.accepted_events, 1);
    assert!(exists(&server, "team-q"));
    // Written by the team token, readable over HTTP by it, not by the reader.
    assert_eq!(server.events("team-q", Some(TEAM)).await.len(), 1);
    assert_eq!(get("/events?store=team-q", Some(READER)).await.status, 403);

    drop(replica);
    server.stop().await;
}

/// A read never creates a store: unknown names are 404 over HTTP (with or
/// without a grant to write them), and nothing appears on disk or among
/// the open stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_never_create_stores() {
    let server = start_guarded(|_| {}).await;
    let before: Vec<_> = std::fs::read_dir(server.data.path()).unwrap().collect();
    let open_before = server.bound.registry.open_stores().len();
    for i in 0..50 {
        for path in [
            format!("/events?store=new-{i}"),
            format!("/health?store=new-{i}"),
        ] {
            let r = http_get(server.addr, &path, &[("authorization", &bearer(ADMIN))]).await;
            assert_eq!(r.status, 404, "{path}: {}", r.text());
            assert!(r.text().contains(&format!("new-{i}")), "{}", r.text());
        }
    }
    let after: Vec<_> = std::fs::read_dir(server.data.path()).unwrap().collect();
    assert_eq!(before.len(), after.len());
    assert_eq!(server.bound.registry.open_stores().len(), open_before);
    // A bad name is a 400, never a path.
    let r = http_get(
        server.addr,
        "/events?store=..%2Fetc",
        &[("authorization", &bearer(ADMIN))],
    )
    .await;
    assert_eq!(r.status, 400);
    server.stop().await;
}

/// `/events` pages are capped in bytes, not only in events: 12 events of
/// 256 KiB asked for with `limit=10000` come in pages of about
/// `EVENTS_PAGE_BYTES_MAX`, each naming where the next starts, and
/// together hold every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_pages_are_capped_in_bytes() {
    const EVENTS: u64 = 12;
    const PAD: usize = 256 << 10;
    let data = tempfile::tempdir().unwrap();
    {
        let store = Store::open(data.path().join("default"), Options::default()).unwrap();
        for v in 1..=EVENTS {
            let body = serde_json::to_vec(&json!({"pad": "y".repeat(PAD)})).unwrap();
            store
                .append(
                    "big",
                    ExpectedVersion::Exact(v - 1),
                    vec![NewEvent::new("Big", body)],
                )
                .unwrap();
        }
        store.close().unwrap();
        // One batch of five: pages cut through it.
        let store = Store::open(data.path().join("batched"), Options::default()).unwrap();
        let batch = (0..5).map(|i| NewEvent::new("Small", format!("{{\"i\":{i}}}").into_bytes()));
        store
            .append("one", ExpectedVersion::Exact(0), batch.collect())
            .unwrap();
        store.close().unwrap();
    }
    let server = start_in(data, |_| {}).await;
    // `limit` is kept inside a batch, and the next page starts where this
    // one stopped: nothing skipped, nothing twice.
    let mut from = 0u64;
    let mut seen = Vec::new();
    loop {
        let r = http_get(
            server.addr,
            &format!("/events?store=batched&from={from}&limit=2"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let events: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert!(events.len() <= 2, "{} events for limit=2", events.len());
        seen.extend(events.iter().map(|e| e["version"].as_u64().unwrap()));
        match r.header("strata-next-from") {
            Some(next) => from = next.parse().unwrap(),
            None => break,
        }
        assert!(seen.len() <= 5, "pages never end: {seen:?}");
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
    let mut from = 1u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = http_get(
            server.addr,
            &format!("/events?from={from}&limit=10000"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(
            r.body.len() <= strata_server::EVENTS_PAGE_BYTES_MAX + 2 * PAD,
            "a page of {} bytes",
            r.body.len()
        );
        let events: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
        assert!(!events.is_empty());
        seen.extend(events.iter().map(|e| e["version"].as_u64().unwrap()));
        pages += 1;
        match r.header("strata-next-from") {
            Some(next) => from = next.parse().unwrap(),
            None => break,
        }
        assert!(pages <= EVENTS, "pages never end");
    }
    assert_eq!(seen, (1..=EVENTS).collect::<Vec<_>>());
    assert!(
        pages >= 3,
        "{pages} pages for {EVENTS} events of {PAD} bytes"
    );
    server.stop().await;
}

/// A server without tokens (loopback only) answers loopback names only, so
/// a site whose name was re-pointed at 127.0.0.1 (DNS rebinding) cannot
/// read it from a browser: `Host: evil.example` is 421 on every path, a
/// foreign `Origin` is 403. With tokens, the token is what counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_server_answers_loopback_names_and_pages_only() {
    let server = start(|_| {}).await;
    let port = server.addr.port();
    for path in ["/events", "/health", "/", "/ws"] {
        let r = http_get(
            server.addr,
            path,
            &[("host", &format!("evil.example:{port}"))],
        )
        .await;
        assert_eq!(r.status, 421, "{path}: {}", r.text());
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".into(),
    ] {
        let r = http_get(server.addr, "/events", &[("host", &host)]).await;
        assert_eq!(r.status, 200, "{host}");
    }
    let r = http_get(
        server.addr,
        "/events",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http_get(
        server.addr,
        "/events",
        &[("origin", &format!("http://localhost:{port}"))],
    )
    .await;
    assert_eq!(r.status, 200);
    server.stop().await;

    let server = start_guarded(|_| {}).await;
    let headers = [
        ("host", "strata.example"),
        ("authorization", &*bearer(READER)),
    ];
    assert_eq!(http_get(server.addr, "/events", &headers).await.status, 200);
    assert_eq!(
        http_get(server.addr, "/events", &[("host", "strata.example")])
            .await
            .status,
        401
    );
    server.stop().await;
}

/// `--token ''`, `--token 's3cret,'`, `STRATA_TOKENS=','` and short tokens
/// stop the server at start with a message saying what a token must be;
/// they never count as "a token is set".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_short_or_blank_tokens_stop_the_server_at_start() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: strata_server::ServeArgs,
    }
    let parsed = |args: &[&str]| {
        Cli::try_parse_from(std::iter::once("strata-server").chain(args.iter().copied()))
            .unwrap()
            .serve
            .tokens
    };
    for tokens in [
        parsed(&["--token", ""]),
        parsed(&["--token", "s3cret,"]),
        parsed(&["--token", ","]),
        parsed(&["--token", "s3cret"]),
        parsed(&["--token", "fifteen-bytes!!"]),
        vec![format!("{ADMIN} "), ADMIN.into()],
    ] {
        assert!(!tokens.is_empty());
        let data = tempfile::tempdir().unwrap();
        let mut config = strata_server::Config::new(
            data.path().to_path_buf(),
            "0.0.0.0:0".parse().unwrap(),
            None,
        );
        config.tokens = tokens.clone();
        let err = strata_server::serve(config, |_| panic!("started with {tokens:?}"), async {})
            .await
            .unwrap_err();
        assert!(matches!(err, ServerError::Auth(_)), "{tokens:?}: {err}");
        assert!(err.to_string().contains("16"), "{err}");
    }
    // A token file with an empty token column is refused the same way.
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("tokens");
    std::fs::write(&file, "short * write\n").unwrap();
    let mut config = strata_server::Config::new(
        data.path().to_path_buf(),
        "0.0.0.0:0".parse().unwrap(),
        None,
    );
    config.token_file = Some(file);
    let err = strata_server::serve(config, |_| panic!("started"), async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tokens:1"), "{err}");
}

// --- bounded work before authentication -----------------------------------------

/// Connections that never authenticate hold places of their own, never
/// those of authenticated clients: 8 per address (beyond, 503 or QUIC
/// `Unavailable`) and 16 in all, where the oldest gives way to a newer
/// one. Two hostile addresses fill them; then 12 WebSocket clients with a
/// token at the upgrade and 4 QUIC replicas (which wait to authenticate
/// like anyone, and take idle ones' places) sync as usual. Their commits
/// wake none of the idle connections, which are attached to no store.
/// Each idle one is told why it ends: evicted (1013), or at the auth
/// deadline (1008). Their places are free afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_connections_hold_places_of_their_own_and_sleep() {
    const PER_ADDRESS: usize = 8;
    let server = start_guarded(|c| {
        c.unauthenticated_max = 2 * PER_ADDRESS;
        c.unauthenticated_per_address_max = PER_ADDRESS;
        c.connections_max = 32;
        c.auth_timeout = Duration::from_secs(8);
    })
    .await;
    let addr = server.addr;
    // WebSocket upgrades from a chosen address.
    let upgrade_from = |from: IpAddr| async move {
        let tcp = connect_from(from, addr).await.unwrap();
        let url = format!("ws://{addr}/ws");
        let upgraded =
            tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::client_async(url, tcp))
                .await
                .expect("the upgrade is answered in time");
        match upgraded {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    };
    let mut idle = Vec::new();
    for from in [ATTACKER, ATTACKER_2] {
        for i in 0..PER_ADDRESS + 4 {
            match upgrade_from(from).await {
                Ok(ws) => idle.push(ws),
                Err(status) => {
                    assert_eq!(status, 503);
                    assert!(i >= PER_ADDRESS, "refused the {i}th from {from}");
                }
            }
        }
    }
    assert_eq!(idle.len(), 2 * PER_ADDRESS);
    // QUIC from a full address: its Hello gets Unavailable.
    let (_e, _c, mut send_stream, mut recv_stream) = quic_raw(&server, ATTACKER).await;
    quic_send(&mut send_stream, &hello(Some(ADMIN))).await;
    match quic_recv(&mut recv_stream).await {
        Some(ServerMessage::Error {
            code: ErrorCode::Unavailable,
            fatal: true,
            message,
        }) => {
            assert!(message.contains("not authenticated"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }

    // Real clients, with their token at the upgrade or in Hello.
    let mut writers = Vec::new();
    for i in 0..12 {
        let url = server.url(&format!("?token={ADMIN}"));
        writers.push(tokio::spawn(async move {
            let mut ws = connect(&url).await;
            for v in 1..=3 {
                let reply = seed_push(&mut ws, vec![seed_event(&format!("w-{i}"), v, 16)]).await;
                assert_eq!(reply["status"], "OK", "{reply}");
            }
            ws
        }));
    }
    let mut replicas = Vec::new();
    for i in 0..4 {
        let opts = server.quic_options(Some(ADMIN));
        replicas.push(tokio::spawn(async move {
            let dir = tempfile::tempdir().unwrap();
            let replica = open_replica(dir.path());
            increment(&replica, &format!("q-{i}"));
            let report = sync_until_idle(replica.clone(), opts).await.unwrap();
            assert_eq!(report.accepted_events, 1);
        }));
    }
    // Each step within a minute: the waiting places free themselves after
    // the 8 s authentication timeout at the latest.
    let minute = Duration::from_secs(60);
    let mut open = Vec::new();
    for (i, w) in writers.into_iter().enumerate() {
        open.push(within(&format!("writer {i}"), minute, w).await.unwrap());
    }
    for (i, r) in replicas.into_iter().enumerate() {
        within(&format!("replica {i}"), minute, r).await.unwrap();
    }
    let text = within("reading /metrics", minute, metrics(&server)).await;
    let evicted = series(&text, "strata_unauthenticated_evicted_total").unwrap() as usize;
    // The first replica found every waiting place taken and evicted the
    // oldest idle one; a replica gives its place back once its Hello is
    // read, so the others evicted one only if they overlapped.
    assert!((1..=4).contains(&evicted), "{text}");
    assert_eq!(
        series(
            &text,
            "strata_unauthenticated_connections_open{transport=\"ws\"}"
        ),
        Some((2 * PER_ADDRESS - evicted) as f64),
        "{text}"
    );
    assert_eq!(
        series(&text, "strata_clients{store=\"default\"}"),
        Some(12.0),
        "only the authenticated WebSockets are attached to the store: {text}"
    );
    assert!(series(&text, "strata_connections_refused_total{transport=\"ws\"}").unwrap() >= 8.0);
    // After 40 commits, the first thing each idle one hears is why it ends.
    let (mut told_evicted, mut told_late) = (0, 0);
    for mut ws in idle {
        let v = recv(&mut ws).await;
        assert_eq!(v["type"], "error", "an unauthenticated socket heard {v}");
        let frame = recv_close(&mut ws).await.expect("a close frame");
        match v["code"].as_str() {
            Some("unavailable") => {
                told_evicted += 1;
                assert_eq!(u16::from(frame.code), 1013);
            }
            Some("unauthorized") => {
                told_late += 1;
                assert!(
                    v["message"].as_str().unwrap().contains("no auth message"),
                    "{v}"
                );
                assert_eq!(u16::from(frame.code), 1008);
            }
            _ => panic!("{v}"),
        }
    }
    assert_eq!(
        (told_evicted, told_late),
        (evicted, 2 * PER_ADDRESS - evicted)
    );
    // Their places are free again.
    let mut ws = upgrade_from(ATTACKER).await.expect("a place again");
    send(&mut ws, &json!({"type": "auth", "token": ADMIN})).await;
    assert_eq!(seed_push(&mut ws, vec![]).await["status"], "OK");
    drop(open);
    server.stop().await;
}

/// Slowloris: half-sent requests are capped per address (the rest closed
/// at once) and closed when the header timeout passes; a client from
/// another address is served throughout. A keep-alive connection left idle
/// is closed by the same timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_capped_per_address_and_timed_out() {
    const PER_ADDRESS: usize = 32;
    let server = start(|c| {
        c.http_connections_per_address_max = PER_ADDRESS;
        c.http_header_timeout = Duration::from_secs(2);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 * PER_ADDRESS {
        let mut s = connect_from(ATTACKER, server.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await;
        held.push(s);
    }
    // A real client is served while they are held.
    let r = http_get(server.addr, "/health", &[]).await;
    assert_eq!(r.status, 200);
    // Every half-sent request ends: PER_ADDRESS at the timeout, the rest
    // at once; none is ever answered 200.
    let mut closed_at_once = 0;
    for mut s in held {
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let read = tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "a half-sent request is still held");
        assert!(!String::from_utf8_lossy(&out).contains(" 200 "));
        if started.elapsed() < Duration::from_millis(500) {
            closed_at_once += 1;
        }
    }
    assert!(closed_at_once >= 2 * PER_ADDRESS - 1, "{closed_at_once}");
    // An idle keep-alive connection is closed too.
    let mut s = connect_from(CLIENT, server.addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(RECV_TIMEOUT, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "an idle keep-alive connection is held");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    server.stop().await;
}

/// Before authenticating, a WebSocket may send only a small `auth`
/// message: a 1 MiB request ends the connection unread (no answer, no
/// parse), while a client that sent its token sends large messages
/// normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_authenticating_only_a_small_message_is_read() {
    let server = start_guarded(|_| {}).await;
    for _ in 0..3 {
        let mut ws = connect(&server.url("")).await;
        let big = json!({"type": "client_sync_request", "last_synced_hlc": "",
            "local_events": [seed_event("counter-1", 1, 1 << 20)]});
        // The server may cut the connection while this is being written.
        let _ = ws.send(Message::text(big.to_string())).await;
        let next = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("the server ends the connection");
        assert!(
            !matches!(next, Some(Ok(Message::Text(_)))),
            "the unauthenticated message was read and answered: {next:?}"
        );
    }
    let text = metrics(&server).await;
    assert!(
        series(&text, "strata_bytes_in_total{transport=\"ws\"}").unwrap() < 65536.0,
        "{text}"
    );
    // Authenticated, large messages go through (events of 512 KiB; the
    // event limit is 1 MiB).
    let mut ws = connect(&server.url(&format!("?token={ADMIN}"))).await;
    let reply = seed_push(&mut ws, vec![seed_event("counter-1", 1, 512 << 10)]).await;
    assert_eq!(reply["status"], "OK", "{}", reply["message"]);
    // The same after an auth message.
    let mut ws = connect(&server.url("")).await;
    send(&mut ws, &json!({"type": "auth", "token": ADMIN})).await;
    let reply = seed_push(&mut ws, vec![seed_event("counter-2", 1, 512 << 10)]).await;
    assert_eq!(reply["status"], "OK", "{}", reply["message"]);
    server.stop().await;
}

/// QUIC reads `Hello` under a small cap of its own: ten connections that
/// announce 32 MiB first messages are refused at once (`TooLarge`), and
/// take nothing from the budget of authenticated clients, which sync
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_hellos_are_read_under_a_small_cap() {
    let server = start_guarded(|c| c.auth_timeout = Duration::from_secs(6)).await;
    let mut hostile = Vec::new();
    for _ in 0..10 {
        let (endpoint, conn, mut send, recv) = quic_raw(&server, ATTACKER).await;
        let announced = strata::sync::wire::MESSAGE_BYTES_MAX as u32;
        send.write_all(&announced.to_le_bytes()).await.unwrap();
        send.write_all(&[0u8; 1024]).await.unwrap();
        hostile.push((endpoint, conn, send, recv));
    }
    let dir = tempfile::tempdir().unwrap();
    let replica = open_replica(dir.path());
    increment(&replica, "counter-1");
    let report = sync_until_idle(replica.clone(), server.quic_options(Some(ADMIN)))
        .await
        .unwrap();
    assert_eq!(report.accepted_events, 1);
    for (_e, _c, _s, mut recv) in hostile {
        match quic_recv(&mut recv).await {
            Some(ServerMessage::Error {
                code: ErrorCode::TooLarge,
                fatal: true,
                message,
            }) => {
                assert!(message.contains("Hello"), "{message}")
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
    // A Hello that never ends (two bytes of its length): refused at the
    // deadline, not held.
    let (_endpoint, _conn, mut send, mut recv) = quic_raw(&server, ATTACKER).await;
    send.write_all(&[0x10, 0]).await.unwrap();
    drop(replica);
    match quic_recv(&mut recv).await {
        Some(ServerMessage::Error {
            fatal: true,
            message,
            ..
        }) => {
            assert!(message.contains("no Hello"), "{message}")
        }
        other => panic!("expected a refusal at the deadline, got {other:?}"),
    }
    server.stop().await;
}

/// Token guessing: after `FAILURES_PER_WINDOW_MAX` failures an address is
/// refused (429) even with the right token, while other addresses are
/// served; failures are counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_throttled_per_address() {
    let server = start_guarded(|_| {}).await;
    let from = |ip: IpAddr, token: &'static str| {
        let addr = server.addr;
        async move {
            let s = connect_from(ip, addr).await.unwrap();
            let auth = bearer(token);
            http_request(s, "/events", &[("authorization", &auth)])
                .await
                .unwrap()
                .status
        }
    };
    for i in 0..strata_server::auth::FAILURES_PER_WINDOW_MAX {
        assert_eq!(
            from(ATTACKER, "guess-token-00000000").await,
            401,
            "guess {i}"
        );
    }
    assert_eq!(from(ATTACKER, ADMIN).await, 429);
    assert_eq!(from(ATTACKER_2, ADMIN).await, 200);
    assert_eq!(from(CLIENT, READER).await, 200);
    // The throttle is the remedy's kind of refusal on the sync transports
    // too: "unavailable", retry later, not "your token is wrong".
    let (_endpoint, _conn, mut qsend, mut recv) = quic_raw(&server, ATTACKER).await;
    quic_send(&mut qsend, &hello(Some(ADMIN))).await;
    match quic_recv(&mut recv).await {
        Some(ServerMessage::Error {
            code: ErrorCode::Unavailable,
            fatal: true,
            message,
        }) => assert!(message.contains("too many failed attempts"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let tcp = connect_from(ATTACKER, server.addr).await.unwrap();
    let url = format!("ws://{}/ws", server.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    send(&mut ws, &json!({"type": "auth", "token": ADMIN})).await;
    let refusal = expect_error(&mut ws, "unavailable").await;
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many failed attempts")),
        "{refusal}"
    );
    let close = recv_close(&mut ws).await.expect("a close frame");
    assert_eq!(u16::from(close.code), 1013);
    let text = metrics(&server).await;
    assert!(
        series(&text, "strata_auth_failures_total").unwrap() >= 20.0,
        "{text}"
    );
    server.stop().await;
}

// --- operations ------------------------------------------------------------------

/// A store named `tls` is a store like any other: the server's key lives
/// in `.tls/`, a name no store can take, and survives a restart unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_named_tls_lives_apart_from_the_identity() {
    let server = start_guarded(|_| {}).await;
    let fingerprint = server.bound.fingerprint.clone();
    let mut ws = connect(&server.url(&format!("?store=tls&token={ADMIN}"))).await;
    let reply = seed_push(&mut ws, vec![seed_event("counter-1", 1, 4)]).await;
    assert_eq!(reply["status"], "OK", "{reply}");
    drop(ws);
    let data = server.stop().await;
    let identity = data.path().join(strata_server::tls::TLS_DIR);
    assert!(identity.join(strata_server::tls::KEY_FILE).exists());
    let store = data.path().join("tls");
    assert!(store.join(strata::log::LOG_DIR).is_dir());
    assert!(!store.join(strata_server::tls::KEY_FILE).exists());
    assert!(!store.join(strata_server::tls::CERT_FILE).exists());
    assert!(
        strata_server::registry::validate_store_name(strata_server::tls::TLS_DIR).is_err(),
        "no store can be named like the identity's folder"
    );
    let tokens = token_file(data.path());
    let again = start_in(data, |c| {
        c.token_file = Some(tokens);
        c.quic = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    assert_eq!(again.bound.fingerprint, fingerprint);
    assert_eq!(again.events("tls", Some(ADMIN)).await.len(), 1);
    again.stop().await;
}

/// Shutdown closes every open store (several at once) and keeps every
/// event it acknowledged: 40 stores, each written over WebSocket, all
/// readable after the server stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_many_stores_and_keeps_what_it_acknowledged() {
    const STORES: usize = 40;
    let server = start_guarded(|_| {}).await;
    for i in 0..STORES {
        let mut ws = connect(&server.url(&format!("?store=s-{i}&token={ADMIN}"))).await;
        let events = (1..=3).map(|v| seed_event("counter-1", v, 8)).collect();
        let reply = seed_push(&mut ws, events).await;
        assert_eq!(reply["status"], "OK", "{reply}");
    }
    assert_eq!(server.bound.registry.open_stores().len(), STORES + 1);
    let data = server.stop().await;
    for i in 0..STORES {
        let store = Store::open(data.path().join(format!("s-{i}")), Options::default()).unwrap();
        assert_eq!(store.head(), 3, "store s-{i}");
        store.close().unwrap();
    }
}

// --- TLS on the HTTP port ----------------------------------------------------------

/// `https:` and `wss:` on the HTTP port: with the server's own certificate
/// (what QUIC uses; the default off loopback, `--https` on it) or a given
/// `--tls-cert`/`--tls-key`. Plain HTTP to a TLS port gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_on_the_http_port_with_the_own_or_a_given_certificate() {
    let server = start_guarded(|c| c.http_tls = HttpTls::Always).await;
    assert!(server.bound.http_tls);
    let fingerprint = server.bound.fingerprint.clone().unwrap();
    let tls = tls_connect(server.addr, &fingerprint).await.unwrap();
    let r = http_request(
        tls,
        "/health?store=default",
        &[("authorization", &bearer(READER))],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // wss: the seed flow over TLS.
    let tls = tls_connect(server.addr, &fingerprint).await.unwrap();
    let url = format!("wss://localhost:{}/ws?token={ADMIN}", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let reply = seed_push(&mut ws, vec![seed_event("counter-1", 1, 4)]).await;
    assert_eq!(reply["status"], "OK", "{reply}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        http_request(plain, "/health", &[])
            .await
            .is_none_or(|r| r.status != 200)
    );
    // A given certificate: here the first server's own files.
    let data = server.stop().await;
    let dir = data.path().join(strata_server::tls::TLS_DIR);
    let (cert, key) = (
        dir.join(strata_server::tls::CERT_FILE),
        dir.join(strata_server::tls::KEY_FILE),
    );
    let given = strata_server::tls::load_cert_and_key(&cert, &key)
        .unwrap()
        .0;
    let given_fp = strata_server::tls::fingerprint(&given[0]);
    let tokens = token_file(data.path());
    let other = start(|c| {
        c.token_file = Some(tokens);
        c.http_tls = HttpTls::Always;
        c.tls_cert = Some((cert, key));
    })
    .await;
    assert!(other.bound.http_tls);
    assert_eq!(
        other.bound.fingerprint, None,
        "no own identity is made without QUIC"
    );
    let tls = tls_connect(other.addr, &given_fp).await.unwrap();
    let r = http_request(tls, "/events", &[("authorization", &bearer(READER))])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    other.stop().await;
    // Off loopback TLS is the default; plain HTTP there needs saying so.
    let off = start_guarded(|c| c.http = "0.0.0.0:0".parse().unwrap()).await;
    assert!(off.bound.http_tls);
    off.stop().await;
    let plain = start_guarded(|c| {
        c.http = "0.0.0.0:0".parse().unwrap();
        c.http_tls = HttpTls::Never;
    })
    .await;
    assert!(!plain.bound.http_tls);
    plain.stop().await;
}
