//! `strata sync` against a real server on loopback: it pulls, reports as
//! text and JSON, refuses a wrong pin with exit code 2, and `--status`
//! reads the local state without connecting.

use std::time::Duration;

use assert_cmd::Command;

fn strata(store: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("strata").unwrap();
    c.arg("--store").arg(store);
    c
}

#[test]
fn sync_pulls_reports_and_refuses_a_wrong_pin() {
    let data = tempfile::tempdir().unwrap();
    let replica = tempfile::tempdir().unwrap();
    let replica = replica.path().join("r");
    // A server whose default store holds three counter events.
    {
        let store =
            strata::Store::open(data.path().join("default"), strata::Options::default()).unwrap();
        for _ in 0..3 {
            store
                .append(
                    "counter-1",
                    strata::ExpectedVersion::Any,
                    vec![strata::projection::counter::increment(1)],
                )
                .unwrap();
        }
        store.close().unwrap();
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = strata_server::Config::new(
        data.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    let server = runtime.spawn(strata_server::serve(
        config,
        move |b: &strata_server::Bound| {
            let _ = ready_tx.send((b.quic.unwrap(), b.fingerprint.clone().unwrap()));
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let (addr, fingerprint) = ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let addr = addr.to_string();

    let out = strata(&replica)
        .args([
            "--json",
            "sync",
            "--server",
            &addr,
            "--fingerprint",
            &fingerprint,
        ])
        .assert()
        .success();
    let v: serde_json::Value =
        serde_json::from_slice(&out.get_output().stdout).expect("one JSON line");
    assert_eq!(v["connected"], true);
    assert_eq!(v["committed"], 3);
    assert_eq!(v["server_head"], 3);
    assert_eq!(v["pending"], 0);
    assert_eq!(v["rejections"], 0);
    assert_eq!(v["report"]["received_events"], 3);

    let out = strata(&replica)
        .args(["sync", "--server", &addr, "--fingerprint", &fingerprint])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("committed:      3 (server head 3)"), "{text}");

    let wrong = "0".repeat(64);
    let out = strata(&replica)
        .args(["sync", "--server", &addr, "--fingerprint", &wrong])
        .assert()
        .code(2);
    let err = String::from_utf8(out.get_output().stderr.clone()).unwrap();
    assert!(
        err.contains(&format!(
            "certificate fingerprint mismatch: expected {wrong}, got {fingerprint}"
        )),
        "{err}"
    );

    strata(&replica)
        .args(["sync", "--server", &addr])
        .assert()
        .code(2);

    // Local changes on a replica go to its outbox (its log holds only the
    // server's events) and the next sync pushes them.
    let out = strata(&replica)
        .args(["counter", "incr", "counter-1", "--by", "2"])
        .assert()
        .success();
    assert_eq!(
        String::from_utf8(out.get_output().stdout.clone()).unwrap(),
        "5\n",
        "the pending event counts at once"
    );
    // `show` reads without opening the replica, and counts it too.
    let out = strata(&replica)
        .args(["counter", "show", "counter-1"])
        .assert()
        .success();
    assert_eq!(
        String::from_utf8(out.get_output().stdout.clone()).unwrap(),
        "5\n",
        "show agrees with incr before the sync"
    );
    let out = strata(&replica)
        .args(["--json", "sync", "--status"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        (v["pending"].as_u64(), v["committed"].as_u64()),
        (Some(1), Some(3))
    );
    strata(&replica)
        .args(["sync", "--server", &addr, "--fingerprint", &fingerprint])
        .assert()
        .success();

    let _ = stop_tx.send(());
    runtime.block_on(server).unwrap().unwrap();

    let out = strata(&replica)
        .args(["--json", "sync", "--status"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["connected"], false);
    assert_eq!(v["committed"], 4);
    assert_eq!(v["pending"], 0);
    // What the last sync saw outlives it.
    assert_eq!(v["server_head"], 4);
    assert!(v["last_sync_ms"].as_u64().is_some(), "{v}");
    let out = strata(&replica)
        .args(["sync", "--status"])
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("server head 4 at the last sync"), "{text}");
    assert!(text.contains(" s ago"), "{text}");
    let out = strata(&replica)
        .args(["counter", "show", "counter-1"])
        .assert()
        .success();
    assert_eq!(
        String::from_utf8(out.get_output().stdout.clone()).unwrap(),
        "5\n"
    );

    let missing = data.path().join("nothing-here");
    strata(&missing).args(["sync", "--status"]).assert().code(2);
}
