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
fn init_then_append_prints_position_and_version_and_conflicts_exit_4() {
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
        .code(4);
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

#[cfg(feature = "bench")]
#[test]
fn bench_smoke_prints_every_workload_as_json() {
    // Tiny sizes: this checks the workloads run and report, not speed.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("strata")
        .unwrap()
        .env_remove("STRATA_BENCH_DATABASE_URL")
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
    // The engine's workloads, then the sync workloads (strata-server);
    // sync_scale_out needs a PostgreSQL database and is skipped without
    // one (tests/tests/scale_out.rs runs it on one).
    let expected: Vec<&str> = strata::bench::WORKLOADS
        .iter()
        .chain(strata_server::bench::WORKLOADS)
        .copied()
        .filter(|w| *w != "sync_scale_out")
        .collect();
    assert_eq!(names, expected);
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

// --- inspection, verification, repair, import/export ---------------------

use std::io::Write;
use std::path::Path;

use strata::{Durability, ExpectedVersion, NewEvent, Options, Store};

fn stdout(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

fn stderr(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(out.get_output().stderr.clone()).unwrap()
}

/// A store with small segments (so several are sealed), `n` events.
fn small_store(dir: &Path, n: u64) {
    let store = Store::open(
        dir,
        Options {
            durability: Durability::None,
            segment_bytes_max: 4096,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..n {
        store
            .append(
                &format!("agg-{}", i % 5),
                ExpectedVersion::Any,
                vec![NewEvent::new("Thing", format!("{{\"i\":{i}}}"))],
            )
            .unwrap();
    }
    store.close().unwrap();
}

fn segments_of(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn import_100k_then_export_gives_the_same_lines_and_reimport_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    strata(&store).arg("init").assert().success();
    let file = dir.path().join("in.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let mut lines = Vec::new();
    let mut versions = [0u64; 7];
    for i in 0..100_000u64 {
        let agg = (i * 7919 % 7) as usize;
        versions[agg] += 1;
        let id = strata::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128);
        let line = format!(
            r#"{{"event_id":"{id}","aggregate_id":"acct-{agg}","version":{},"event_type":"Deposited","event_data":{{"amount":{}}},"timestamp":"{:015}:{:010}:device-{agg}","metadata":{}}}"#,
            versions[agg],
            i % 100,
            1_700_000_000_000u64 + i,
            0,
            if i % 3 == 0 {
                r#"{"user":"ann"}"#
            } else {
                "null"
            }
        );
        writeln!(f, "{line}").unwrap();
        lines.push(line);
    }
    drop(f);
    let out = strata(&store)
        .args(["--json", "import"])
        .arg(&file)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (v["imported"].as_u64(), v["skipped"].as_u64()),
        (Some(100_000), Some(0))
    );
    let out = strata(&store).arg("export").assert().success();
    let exported: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(exported.len(), 100_000);
    if let Some(i) = (0..lines.len()).find(|&i| exported[i] != lines[i]) {
        panic!(
            "line {} differs:\n exported {}\n imported {}",
            i + 1,
            exported[i],
            lines[i]
        );
    }
    let out = strata(&store)
        .args(["--json", "import"])
        .arg(&file)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (v["imported"].as_u64(), v["skipped"].as_u64()),
        (Some(0), Some(100_000))
    );
    // One aggregate, from a position.
    let out = strata(&store)
        .args([
            "export",
            "--aggregate",
            "acct-3",
            "--from-position",
            "50000",
        ])
        .assert()
        .success();
    let text = stdout(&out);
    assert!(
        text.lines().count() > 1000
            && text
                .lines()
                .all(|l| l.contains(r#""aggregate_id":"acct-3""#))
    );
}

#[test]
fn a_bad_json_line_exits_2_with_its_line_number_and_writes_nothing_of_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    strata(&store).arg("init").assert().success();
    let good = |i: u64| {
        format!(
            r#"{{"event_id":"{}","aggregate_id":"a","version":{i},"event_type":"T","event_data":{{}},"timestamp":"1700000000000:{i}:n","metadata":null}}"#,
            strata::Uuid::from_u128(i as u128 + 1)
        )
    };
    let mut text: String = (1..=5).map(|i| good(i) + "\n").collect();
    text.push_str("{not json\n");
    text.push_str(&(good(6) + "\n"));
    let out = strata(&store)
        .args(["import", "-"])
        .write_stdin(text)
        .assert()
        .code(2);
    let err = stderr(&out);
    assert!(err.contains("line 6"), "{err}");
    assert!(err.contains("nothing of its batch was written"), "{err}");
    let out = strata(&store).args(["--json", "stats"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        v["events"], 0,
        "the batch holding the bad line was not written"
    );
}

/// A missing index is not damage (a read-write open rebuilds it), but
/// verify must not claim it agrees with the log: it says what is missing
/// and how it comes back.
#[test]
fn verify_says_when_the_index_is_missing_instead_of_calling_it_in_agreement() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    small_store(&store, 50);
    let out = strata(&store).arg("verify").assert().success();
    assert!(stdout(&out).contains("index agrees with the log"));
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let _ = std::fs::remove_file(store.join(name));
    }
    let out = strata(&store).arg("verify").assert().success();
    let text = stdout(&out);
    assert!(!text.contains("agrees"), "{text}");
    assert!(text.contains("index.sqlite is missing"), "{text}");
    assert!(text.contains("strata reindex"), "{text}");
    let out = strata(&store).args(["--json", "verify"]).assert().success();
    let last: serde_json::Value =
        serde_json::from_str(stdout(&out).trim().lines().last().unwrap()).unwrap();
    assert_eq!(last["index_position"], 0);
    assert!(last["index_note"].as_str().unwrap().contains("missing"));
    strata(&store).arg("reindex").assert().success();
    let out = strata(&store).arg("verify").assert().success();
    assert!(stdout(&out).contains("index agrees with the log"));
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_makes_verify_exit_1_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    small_store(&store, 200);
    strata(&store).arg("verify").assert().success();
    let segs = segments_of(&store);
    assert!(segs.len() >= 3);
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[300] ^= 0x10;
    std::fs::write(&segs[1], &bytes).unwrap();
    let out = strata(&store).arg("verify").assert().code(1);
    let text = stdout(&out);
    assert!(text.contains(&segs[1].display().to_string()), "{text}");
    assert!(text.contains("repair --truncate-after"), "{text}");
    // The sealed damage is reported, not silently dropped, by repair too.
    let out = strata(&store).arg("repair").assert().code(1);
    assert!(stderr(&out).contains("--truncate-after"));
    // segments and dump show it as well.
    strata(&store).arg("segments").assert().code(1);
    let out = strata(&store).arg("dump").arg(&segs[1]).assert().code(1);
    assert!(stdout(&out).contains("BAD"));
    // Truncating after the printed position removes the damage, keeping the
    // removed bytes in quarantine.
    let out = strata(&store).args(["--json", "verify"]).assert().code(1);
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    let keep = summary["truncate_after"].as_u64().unwrap();
    let out = strata(&store)
        .args(["repair", "--truncate-after", &keep.to_string()])
        .assert()
        .success();
    assert!(stdout(&out).contains("quarantine"));
    strata(&store).arg("verify").assert().success();
    let out = strata(&store).args(["--json", "stats"]).assert().success();
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["events"].as_u64(), Some(keep));
    assert!(
        store
            .join("quarantine")
            .read_dir()
            .unwrap()
            .next()
            .is_some()
    );
}

#[test]
fn a_truncated_tail_is_reported_dry_run_changes_nothing_and_repair_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    small_store(&store, 20);
    let last = segments_of(&store).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let out = strata(&store).arg("verify").assert().code(1);
    assert!(stdout(&out).contains("torn tail"), "{}", stdout(&out));
    let before = std::fs::read(&last).unwrap();
    let out = strata(&store)
        .args(["repair", "--dry-run"])
        .assert()
        .success();
    assert!(stdout(&out).contains("would cut"), "{}", stdout(&out));
    assert_eq!(
        std::fs::read(&last).unwrap(),
        before,
        "dry run changed nothing"
    );
    let out = strata(&store).arg("repair").assert().success();
    assert!(stdout(&out).contains("will cut"), "{}", stdout(&out));
    strata(&store).arg("verify").assert().success();
}

#[test]
fn a_store_locked_by_a_writer_can_still_be_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("s");
    small_store(&store_dir, 50);
    let writer = Store::open(&store_dir, Options::default()).unwrap();
    for cmd in [
        vec!["verify"],
        vec!["segments"],
        vec!["stats"],
        vec!["export"],
        vec!["dump", "--limit", "3"],
        vec!["tail", "-n", "2"],
        vec!["views", "status"],
        vec!["counter", "show", "x"],
    ] {
        strata(&store_dir).args(&cmd).assert().success();
    }
    let out = strata(&store_dir)
        .args(["append", "a", "T", "{}"])
        .assert()
        .code(3);
    assert!(stderr(&out).contains("locked by pid"), "{}", stderr(&out));
    strata(&store_dir).arg("repair").assert().code(3);
    strata(&store_dir).arg("reindex").assert().code(3);
    drop(writer);
}

#[test]
fn tail_follow_prints_events_another_process_appends_across_rolls() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("s");
    small_store(&store_dir, 3);
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("strata"))
        .arg("--store")
        .arg(&store_dir)
        .args(["tail", "--follow", "-n", "3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .expect("a line within 30 s")
    };
    // The follower is running once it has printed the 3 existing events.
    for _ in 0..3 {
        assert!(next().contains("Thing"));
    }
    let writer = Store::open(
        &store_dir,
        Options {
            segment_bytes_max: 4096,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..100 {
        writer
            .append(
                "follow",
                ExpectedVersion::Any,
                vec![NewEvent::new("Live", format!("{{\"i\":{i}}}"))],
            )
            .unwrap();
    }
    assert!(segments_of(&store_dir).len() > 2, "appends rolled segments");
    for i in 0..100 {
        let line = next();
        assert!(
            line.contains("Live") && line.contains(&format!("{{\"i\":{i}}}")),
            "event {i}: {line}"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn counter_commands_and_views() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    for (args, want) in [
        (vec!["counter", "incr", "c1"], "1"),
        (vec!["counter", "incr", "c1", "--by", "5"], "6"),
        (vec!["counter", "decr", "c1", "--by", "2"], "4"),
        (vec!["counter", "show", "c1"], "4"),
        (vec!["counter", "show", "nobody"], "0"),
    ] {
        let out = strata(&store).args(&args).assert().success();
        assert_eq!(stdout(&out), format!("{want}\n"), "{args:?}");
    }
    let out = strata(&store)
        .args(["--json", "counter", "show", "c1"])
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        (v["id"].as_str(), v["value"].as_i64()),
        (Some("c1"), Some(4))
    );
    // An event appended outside the view (no catch-up yet) still counts.
    strata(&store)
        .args(["append", "c1", "CounterIncremented", r#"{"value":10}"#])
        .assert()
        .success();
    let out = strata(&store)
        .args(["counter", "show", "c1"])
        .assert()
        .success();
    assert_eq!(stdout(&out), "14\n");
    let out = strata(&store).args(["views", "status"]).assert().success();
    assert!(
        stdout(&out).contains("counter") && stdout(&out).contains("lag 1"),
        "{}",
        stdout(&out)
    );
    let out = strata(&store)
        .args(["views", "rebuild", "counter"])
        .assert()
        .success();
    assert!(stdout(&out).contains("rebuilt counter"), "{}", stdout(&out));
    strata(&store)
        .args(["views", "rebuild", "nope"])
        .assert()
        .code(2);
    let out = strata(&store)
        .args(["--json", "views", "status"])
        .assert()
        .success();
    assert!(stdout(&out).contains(r#""lag":0"#), "{}", stdout(&out));
}

#[test]
fn reindex_rebuilds_a_deleted_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    small_store(&store, 120);
    strata::index::remove_index_files(&store).unwrap();
    let out = strata(&store).arg("reindex").assert().success();
    assert!(
        stdout(&out).contains("120 events in 5 aggregates"),
        "{}",
        stdout(&out)
    );
    strata(&store).arg("verify").assert().success();
}

#[test]
fn segments_and_dump_show_positions_offsets_and_crc() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    small_store(&store, 120);
    let out = strata(&store)
        .args(["--json", "segments"])
        .assert()
        .success();
    let rows: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(rows.len() > 2);
    assert_eq!(rows[0]["first_position"], 1);
    assert_eq!(rows.last().unwrap()["state"], "active");
    let total: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    assert_eq!(total, 120);
    let seg = segments_of(&store)[0].clone();
    // A segment file outside any store.
    let outside = dir.path().join("copy.seg");
    std::fs::copy(&seg, &outside).unwrap();
    let out = Command::cargo_bin("strata")
        .unwrap()
        .args(["--json", "dump"])
        .arg(&outside)
        .args(["--limit", "2"])
        .assert()
        .success();
    let recs: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2);
    assert_eq!(
        (recs[0]["position"].as_u64(), recs[0]["crc_ok"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(recs[0]["record_offset"].as_u64().unwrap() > 48);
}

#[test]
fn help_lists_every_command_and_the_exit_codes() {
    let out = Command::cargo_bin("strata")
        .unwrap()
        .arg("--help")
        .assert()
        .success();
    let text = stdout(&out);
    for cmd in [
        "init", "append", "import", "export", "segments", "dump", "verify", "repair", "reindex",
        "views", "stats", "tail", "bench", "counter", "demo",
    ] {
        assert!(
            text.contains(&format!("  {cmd}")),
            "{cmd} missing from --help"
        );
    }
    assert!(text.contains("EXIT CODES") && text.contains("3  store locked"));
    assert!(text.contains("4  append conflict"), "{text}");
    Command::cargo_bin("strata")
        .unwrap()
        .arg("no-such-command")
        .assert()
        .code(2);
}

#[test]
fn after_truncating_damage_new_appends_never_meet_a_stale_view() {
    // Found in review: views checkpointed beyond the cut were trusted once
    // new appends reused those positions.
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("s");
    {
        let store = Store::open(
            &store_dir,
            Options {
                durability: Durability::None,
                segment_bytes_max: 4096,
                ..Options::default()
            },
        )
        .unwrap();
        for _ in 0..200 {
            store
                .append(
                    "c",
                    ExpectedVersion::Any,
                    vec![strata::projection::counter::increment(1)],
                )
                .unwrap();
        }
        store.close().unwrap();
    }
    let out = strata(&store_dir)
        .args(["counter", "incr", "c"])
        .assert()
        .success();
    assert_eq!(stdout(&out), "201\n");
    let segs = segments_of(&store_dir);
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    bytes[200] ^= 0x01;
    std::fs::write(&segs[1], &bytes).unwrap();
    let out = strata(&store_dir)
        .args(["--json", "verify"])
        .assert()
        .code(1);
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    let keep = summary["truncate_after"].as_u64().unwrap();
    strata(&store_dir)
        .args(["repair", "--truncate-after", &keep.to_string()])
        .assert()
        .success();
    let out = strata(&store_dir)
        .args(["counter", "incr", "c"])
        .assert()
        .success();
    assert_eq!(
        stdout(&out),
        format!("{}\n", keep + 1),
        "the view was rebuilt from the repaired log"
    );
    strata(&store_dir).arg("verify").assert().success();
}

/// `strata backup DEST`: the copy verifies, exports the same events as the
/// source, and a backup cut short (its marker left behind) exits 3 with
/// what to do until a new backup completes it.
#[test]
fn backup_makes_a_store_that_verifies_and_exports_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (store, dest) = (dir.path().join("s"), dir.path().join("copy"));
    strata(&store).arg("init").assert().success();
    for i in 0..5 {
        strata(&store)
            .args([
                "append",
                &format!("c-{i}"),
                "CounterIncremented",
                r#"{"value":1}"#,
            ])
            .assert()
            .success();
    }
    let out = strata(&store)
        .args(["--json", "backup"])
        .arg(&dest)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["head"], 5);
    strata(&dest).arg("verify").assert().success();
    let export = |s: &std::path::Path| {
        strata(s)
            .arg("export")
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    assert_eq!(export(&dest), export(&store));
    std::fs::write(dest.join(strata::BACKUP_INCOMPLETE_FILE), b"").unwrap();
    let out = strata(&dest).arg("verify").assert().code(3);
    assert!(
        String::from_utf8_lossy(&out.get_output().stderr).contains("run the backup again"),
        "{out:?}"
    );
    strata(&store).arg("backup").arg(&dest).assert().success();
    strata(&dest).arg("verify").assert().success();
}
