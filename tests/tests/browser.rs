//! The web counter in real browsers: Debian's Chromium driven by
//! playwright-core against a real server on loopback.
//!
//! * Issue 7 (tests/browser/counter.mjs): the seed's flow — A +1; B sees 1;
//!   A goes offline and adds 2; B adds 1; A comes back — ends at 4 in both
//!   pages, after a reload, on the server, and in `strata counter show` run
//!   on the server's store.
//! * Issues 17 and 13 (tests/browser/tabs.mjs): the browser client with several
//!   tabs of one profile (all persistent; the owner tab closing or freezing
//!   with events pending; appends in flight across the change of owner), a
//!   second profile converging, a reload, a projection version bump, a
//!   rejection, a browser without OPFS, and a `?server=` link to another
//!   server (refused). The server's log must then hold
//!   exactly the events the pages show, each once.
//!
//! Screenshots go to `<target>/tmp/browser-artifacts/` (printed).
//!
//! Needs `chromium` and `node` with tests/browser's packages installed;
//! `.ci/run` installs them. Without them this test fails, saying so: it is
//! never skipped silently.

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::Duration;
use strata_tests::{strata_cli, workspace};

fn prerequisites() -> (PathBuf, PathBuf) {
    let chromium =
        PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let browser_dir = workspace().join("tests/browser");
    let missing: Vec<&str> = [
        (!chromium.exists()).then_some("chromium (apt-get install chromium)"),
        Command::new("node")
            .arg("--version")
            .output()
            .is_err()
            .then_some("node"),
        (!browser_dir.join("node_modules/playwright-core").exists())
            .then_some("playwright-core (npm ci in tests/browser)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        missing.is_empty(),
        "the browser test needs {}; `.ci/run` installs them",
        missing.join(", ")
    );
    (chromium, browser_dir)
}

/// Where screenshots go: kept after the test, never committed.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    eprintln!("browser test artifacts in {}", dir.display());
    dir
}

/// One browser test at a time: each starts several Chromiums, and CI has
/// two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A server on loopback, open (no tokens), in a fresh data directory.
struct Server {
    addr: std::net::SocketAddr,
    data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), strata_server::ServerError>>>,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let config = strata_server::Config::new(
            data.path().to_path_buf(),
            "127.0.0.1:0".parse().unwrap(),
            None,
        );
        let task = runtime.spawn(strata_server::serve(
            config,
            move |bound: &strata_server::Bound| {
                let _ = ready_tx.send(bound.http);
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server started");
        Server {
            addr,
            data,
            stop: Some(stop_tx),
            task: Some(task),
            runtime,
        }
    }

    fn store(&self) -> PathBuf {
        self.data.path().join(strata_server::DEFAULT_STORE)
    }

    fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        let task = self.task.take().unwrap();
        self.runtime.block_on(task).unwrap().unwrap();
    }
}

/// Runs a script of tests/browser and returns its JSON summary.
fn run_script(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let (chromium, browser_dir) = prerequisites();
    let out = Command::new("node")
        .arg(browser_dir.join(script))
        .args(args)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn the_seed_counter_flow_in_two_real_browsers_ends_at_4_everywhere() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cli = strata_cli();
    let server = Server::start();
    let screenshot = artifacts().join("browser-counter.png");
    let summary = run_script(
        "counter.mjs",
        &[
            format!("http://{}/", server.addr).as_ref(),
            screenshot.as_os_str(),
        ],
    );
    assert_eq!(
        (
            summary["a"]["value"].as_i64(),
            summary["b"]["value"].as_i64()
        ),
        (Some(4), Some(4)),
        "{summary}"
    );
    assert!(screenshot.exists(), "the screenshot is kept as an artifact");

    // The server agrees: its log holds 4 increments of the counter, and
    // the CLI (read-only, beside the running server) shows 4.
    let store = server.store();
    let show = Command::new(&cli)
        .arg("--store")
        .arg(&store)
        .args(["counter", "show", "counter"])
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&show.stdout), "4\n");
    let events: Vec<strata::Event> = strata::Store::open_read_only(&store)
        .unwrap()
        .read_all(1)
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| e.aggregate_id == "counter" && e.event_type == "CounterIncremented")
    );

    server.stop();
}

#[test]
fn every_tab_is_persistent_and_the_server_holds_exactly_what_the_pages_show() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start();
    let dir = artifacts();
    let summary = run_script(
        "tabs.mjs",
        &[format!("http://{}/", server.addr).as_ref(), dir.as_os_str()],
    );
    assert_eq!(summary["ok"], true, "{summary}");
    for shot in [
        "tabs-offline-owner.png",
        "tabs-rejection-inspector.png",
        "tabs-profile1.png",
    ] {
        assert!(dir.join(shot).exists(), "{shot} was not saved");
    }
    // The server refused the reused id with a reason naming it.
    let reason = summary["rejection"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{summary}");

    // Y4 and Y3: the server's log holds every event the pages counted, each
    // once, and nothing of the refused one; its sums are the pages' values.
    let events: Vec<strata::Event> = strata::Store::open_read_only(server.store())
        .unwrap()
        .read_all(1)
        .map(Result::unwrap)
        .collect();
    let ids: std::collections::HashSet<_> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), events.len(), "an event id is in the log twice");
    let mut sums: std::collections::BTreeMap<String, i64> = Default::default();
    for e in &events {
        let data: serde_json::Value = serde_json::from_slice(&e.data).unwrap();
        let value = data["value"].as_i64().unwrap();
        let sign = match e.event_type.as_str() {
            "CounterIncremented" => 1,
            "CounterDecremented" => -1,
            "CounterCreated" => 0,
            other => panic!("unexpected event type {other}"),
        };
        *sums.entry(e.aggregate_id.clone()).or_default() += sign * value;
    }
    let burst = summary["burst"].as_i64().unwrap();
    let expected: std::collections::BTreeMap<String, i64> = [
        ("burst".to_owned(), burst),
        ("counter".to_owned(), 6),
        ("likes".to_owned(), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(sums, expected, "{summary}");
    for profile in ["profile1", "profile2"] {
        let shown: std::collections::BTreeMap<String, i64> =
            serde_json::from_value(summary[profile]["counters"].clone()).unwrap();
        assert_eq!(shown, expected, "{profile}: {summary}");
    }
    // 2 + 3 in the first steps, one each in steps 4, 6 and 8; "likes" was
    // created and incremented twice.
    assert_eq!(events.len() as i64, 8 + 3 + burst);
    server.stop();
}

/// The README's server section, as a new user runs it (issue 13): a token
/// file, `strata serve --https` (HTTPS and WSS on the HTTP port with the
/// server's own certificate, QUIC beside it), two browsers given the token
/// once as `#token=` and accepting the self-signed certificate, and a
/// replica synced with `strata sync --fingerprint` and `STRATA_TOKEN`. The
/// seed's flow ends at 4 in the browsers; the replica adds 1; the server
/// and the replica both hold 5.
#[test]
fn the_readme_way_a_token_file_and_tls_sync_a_replica_and_two_browsers() {
    use std::io::BufRead;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cli = strata_cli();
    let dir = tempfile::tempdir().unwrap();
    let token = "readme-token-0123456789abcdef";
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{token} * write\n")).unwrap();
    let data = dir.path().join("server-data");
    let mut server = KillOnDrop(
        Command::new(&cli)
            .arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--token-file")
            .arg(&tokens)
            .args(["--https", "--http", "127.0.0.1:0", "--quic", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(server.0.stdout.take().unwrap()).lines();
    let mut page = None;
    let mut quic = None;
    while quic.is_none() {
        let line = lines
            .next()
            .expect("the server prints where it listens")
            .unwrap();
        if let Some(url) = line.strip_prefix("strata-server: web demo at ") {
            page = Some(url.to_owned());
        }
        if let Some(rest) = line.strip_prefix("strata-server: QUIC sync at quic://") {
            let (addr, fp) = rest.split_once(" (certificate SHA-256 ").unwrap();
            quic = Some((addr.to_owned(), fp.trim_end_matches(')').to_owned()));
        }
    }
    let page = page.expect("the page's URL");
    let (quic, fingerprint) = quic.unwrap();
    assert!(page.starts_with("https://"), "{page}");

    let screenshot = artifacts().join("browser-readme-tls.png");
    let (chromium, browser_dir) = prerequisites();
    let out = Command::new("node")
        .arg(browser_dir.join("counter.mjs"))
        .arg(format!("{page}#token={token}"))
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .env("IGNORE_HTTPS_ERRORS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["a"]["value"], 4, "{summary}");
    assert_eq!(summary["b"]["value"], 4, "{summary}");

    let replica = dir.path().join("replica");
    let strata = |args: &[&str]| {
        let out = Command::new(&cli)
            .arg("--store")
            .arg(&replica)
            .args(args)
            .env("STRATA_TOKEN", token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let sync = ["sync", "--server", &quic, "--fingerprint", &fingerprint];
    strata(&sync);
    assert_eq!(strata(&["counter", "show", "counter"]), "4\n");
    strata(&["counter", "incr", "counter"]);
    strata(&sync);
    let status = strata(&["sync", "--status"]);
    let pending = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("pending:"))
        .map(str::trim);
    assert_eq!(pending, Some("0"), "{status}");

    // SIGTERM: the server closes its stores; the log holds 5 increments.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(server.0.wait().unwrap().success());
    let show = Command::new(&cli)
        .arg("--store")
        .arg(data.join(strata_server::DEFAULT_STORE))
        .args(["counter", "show", "counter"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&show.stdout), "5\n");
}

/// A child process killed if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
