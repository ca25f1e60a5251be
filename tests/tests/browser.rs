//! The web counter in two real browsers (issue 7): Debian's Chromium driven
//! by playwright-core (tests/browser/counter.mjs) against a real server on
//! loopback. The seed's flow — A +1; B sees 1; A goes offline and adds 2; B
//! adds 1; A comes back — ends at 4 in both pages, after a reload, on the
//! server, and in `strata counter show` run on the server's store.
//!
//! Needs `chromium` and `node` with tests/browser's packages installed;
//! `.ci/run` installs them. Without them this test fails, saying so: it is
//! never skipped silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `strata` binary of this build, built if needed.
fn strata_cli() -> PathBuf {
    let target = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let bin = target.join("strata");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "strata-cli"])
            .current_dir(workspace())
            .status()
            .unwrap();
        assert!(status.success(), "building the strata CLI failed");
    }
    bin
}

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

#[test]
fn the_seed_counter_flow_in_two_real_browsers_ends_at_4_everywhere() {
    let (chromium, browser_dir) = prerequisites();
    let cli = strata_cli();
    let data = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = strata_server::Config::new(
        data.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        None,
    );
    let server = runtime.spawn(strata_server::serve(
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
    let artifacts = workspace().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("browser-counter.png");
    let out = Command::new("node")
        .arg(browser_dir.join("counter.mjs"))
        .arg(format!("http://{addr}/"))
        .arg(&screenshot)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser flow failed:\n{stdout}\n{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
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
    let store = data.path().join(strata_server::DEFAULT_STORE);
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

    stop_tx.send(()).unwrap();
    runtime.block_on(server).unwrap().unwrap();
}
