//! Backups of a replica (issue 18): a replica's copy carries its outbox, so
//! restored and synced it neither loses nor duplicates what it had pending,
//! whether or not the lost original had pushed it before it was lost.

use std::sync::Arc;

use strata::Uuid;
use strata::backup::{BackupOptions, backup};
use strata::projection::counter;
use strata_sync::client::sync_until_idle;
use strata_tests::net::start;
use strata_tests::{counter_replica, increment_counter};

/// A replica synced some events and holds others pending; it is backed
/// up. Case 1: it is lost before pushing them; the restored copy pushes
/// them. Case 2: it pushed them after the backup, then was lost; the
/// restored copy pushes them again, and the server keeps each once. Every
/// event is on the server exactly once, and the restored replica's
/// counter equals the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_replica_pushes_its_pending_events_once() {
    for pushed_before_loss in [false, true] {
        let server = start(|c| c.quic = Some("127.0.0.1:0".parse().unwrap())).await;
        let opts = server.quic_options(None);
        let tmp = tempfile::tempdir().unwrap();
        let (dir, copy) = (tmp.path().join("replica"), tmp.path().join("copy"));
        let replica = counter_replica(&dir);
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(increment_counter(&replica, "counter-1"));
        }
        sync_until_idle(replica.clone(), opts.clone())
            .await
            .unwrap();
        for _ in 0..4 {
            ids.push(increment_counter(&replica, "counter-1"));
        }
        assert_eq!(replica.pending().len(), 4);
        let report = tokio::task::spawn_blocking({
            let (dir, copy) = (dir.clone(), copy.clone());
            move || backup(&dir, &copy, &BackupOptions::default())
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            report.snapshots.iter().any(|s| s == "outbox.sqlite"),
            "{report:?}"
        );
        if pushed_before_loss {
            sync_until_idle(replica.clone(), opts.clone())
                .await
                .unwrap();
            assert!(replica.pending().is_empty());
        }
        // The original is lost.
        drop(replica);
        let restored = counter_replica(&copy);
        assert_eq!(restored.pending().len(), 4, "the outbox came along");
        sync_until_idle(restored.clone(), opts.clone())
            .await
            .unwrap();
        assert!(restored.pending().is_empty());
        let log = server.events("default", None).await;
        let on_server: Vec<String> = log
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        let mut want: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let mut got = on_server.clone();
        want.sort();
        got.sort();
        assert_eq!(
            got, want,
            "every event once (pushed before loss: {pushed_before_loss})"
        );
        let value = restored
            .read_views(|c| counter::value(c, "counter-1"))
            .unwrap();
        assert_eq!(value, Some(7));
        Arc::try_unwrap(restored).unwrap().close().unwrap();
        server.stop().await;
    }
}

/// `strata backup` killed (SIGKILL) at random moments: each time, DEST is
/// either refused as an unfinished backup, or whole (it opens, checks
/// clean and is the source's prefix); never a store with a silent hole.
/// A backup run to the end over a killed one completes it.
#[test]
fn a_killed_backup_is_refused_or_whole_never_silently_partial() {
    use strata::{AggregateEvents, Error, NewEvent, Options, Store};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let options = || Options {
        segment_bytes_max: 64 << 10,
        ..Options::default()
    };
    let store = Store::open(&src, options()).unwrap();
    for k in 0..100 {
        let events = (0..100)
            .map(|i| {
                NewEvent::new(
                    "T",
                    format!(r#"{{"k":{k},"i":{i},"pad":"{}"}}"#, "p".repeat(150)).into_bytes(),
                )
            })
            .collect();
        store
            .append_batch(&[AggregateEvents {
                aggregate_id: format!("agg-{k}"),
                expected: strata::ExpectedVersion::Any,
                events,
            }])
            .unwrap();
    }
    let source: Vec<strata::Event> = store.read_all(1).map(Result::unwrap).collect();
    store.close().unwrap();
    let (mut refused, mut whole) = (0, 0);
    for round in 0..12u64 {
        let dest = tmp.path().join(format!("dest-{round}"));
        let mut child = std::process::Command::new(strata_tests::strata_cli())
            .arg("--store")
            .arg(&src)
            .arg("backup")
            .arg(&dest)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(round * 7));
        let _ = child.kill();
        child.wait().unwrap();
        if !dest.exists() {
            continue;
        }
        match Store::open(&dest, options()) {
            Err(Error::BackupIncomplete { .. }) => refused += 1,
            Err(e) => panic!("round {round}: neither refused as unfinished nor whole: {e}"),
            Ok(copy) => {
                let events: Vec<strata::Event> = copy.read_all(1).map(Result::unwrap).collect();
                assert_eq!(events.len() as u64, copy.head());
                assert_eq!(&events[..], &source[..events.len()], "round {round}");
                assert_eq!(
                    events.len(),
                    source.len(),
                    "round {round}: a finished backup is whole"
                );
                let (problems, _) = copy.verify_index(10).unwrap();
                assert!(problems.is_empty(), "round {round}: {problems:?}");
                whole += 1;
            }
        }
        // Run to the end, it completes whatever the kill left.
        backup(&src, &dest, &BackupOptions::default()).unwrap();
        let copy = Store::open(&dest, options()).unwrap();
        assert_eq!(copy.head(), source.len() as u64);
    }
    eprintln!("killed backups: {refused} refused as unfinished, {whole} whole");
    assert!(
        refused > 0,
        "no kill landed during a backup: the test proves nothing"
    );
}
