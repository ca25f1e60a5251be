//! The `strata` binary end to end: real processes, real stores.

use assert_cmd::Command;

fn strata(store: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("strata").unwrap();
    c.arg("--store").arg(store);
    c
}

#[test]
fn demo_runs_and_narrates() {
    let out = Command::cargo_bin("strata")
        .unwrap()
        .arg("demo")
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(text.contains("positions 1..4, versions 1..4"), "{text}");
    assert!(text.contains("current version is 5"), "{text}");
    assert!(text.contains("counter-1 = 3, counter-2 = 5"), "{text}");
    assert!(text.contains("agrees with the log: yes"), "{text}");
}

#[test]
fn init_then_append_prints_position_and_version_and_conflicts_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    strata(&store).arg("init").assert().success();
    strata(&store).arg("init").assert().code(2);
    let out = strata(&store)
        .args(["append", "c-1", "CounterIncremented", r#"{"value":1}"#])
        .assert()
        .success();
    assert_eq!(
        String::from_utf8_lossy(&out.get_output().stdout),
        "position 1 version 1\n"
    );
    let out = strata(&store)
        .args([
            "--json",
            "append",
            "c-1",
            "CounterIncremented",
            r#"{"value":1}"#,
            "--expect-version",
            "1",
            "--metadata",
            r#"{"u":1}"#,
        ])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(
        (v["position"].as_u64(), v["version"].as_u64()),
        (Some(2), Some(2))
    );
    let out = strata(&store)
        .args([
            "append",
            "c-1",
            "CounterIncremented",
            r#"{"value":1}"#,
            "--expect-version",
            "1",
        ])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(err.contains("current version is 2"), "{err}");
    strata(&store)
        .args(["append", "c-1", "X", "not json"])
        .assert()
        .code(2);
}

#[test]
fn a_missing_store_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = strata(&dir.path().join("nope"))
        .args(["append", "a", "T", "{}"])
        .assert()
        .code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr);
    assert!(err.contains("strata init"), "{err}");
}

#[test]
fn bench_smoke_prints_every_workload_as_json() {
    // Tiny sizes: this checks the workloads run and report, not speed.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("strata")
        .unwrap()
        .args([
            "--json",
            "bench",
            "--events",
            "2000",
            "--open-mib",
            "4",
            "--dir",
        ])
        .arg(dir.path().join("bench"))
        .assert()
        .success();
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "append_batch_durable",
            "append_concurrent_durable",
            "scan_all",
            "read_aggregate",
            "open_clean"
        ]
    );
    for r in &rows {
        for field in [
            "workload",
            "events",
            "strata_eps",
            "baseline_eps",
            "ratio",
            "limit_eps",
            "of_limit",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert!(r["strata_eps"].as_f64().unwrap() > 0.0);
    }
}
