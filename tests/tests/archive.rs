//! The server's continuous archive end to end (issue 18): dozens of QUIC
//! replicas and seed JSON clients write through a server process that
//! archives its store; the server is SIGKILLed, its store deleted, and
//! `strata restore` rebuilds it from the archive: every acknowledged event
//! is back, `strata verify` passes, and the same replicas and clients go
//! on syncing with the restored server.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::projection::counter;
use strata::sync::Replica;
use strata::{Event, Store};
use strata_archive::Manifest;
use strata_sync::client::{ClientOptions, sync_until_idle};
use strata_sync::tls::Trust;
use strata_tests::net::{Ws, connect};
use strata_tests::procs::{ServerProcess, kill, spawn_server_with};
use strata_tests::seed::SeedClient;
use strata_tests::{counter_replica, increment_counter, strata_cli};

const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sync_server");
/// QUIC replicas, each in-process with its own store.
const REPLICAS: usize = 24;
/// Clients of the seed's JSON protocol over `/ws`, retrying at once.
const SEEDS: usize = 12;
/// Increments per client before the loss, on a shared counter and its own.
const ROUNDS: usize = 5;

fn start(data: &Path, archive: &Path) -> ServerProcess {
    spawn_server_with(
        SERVER_BIN.as_ref(),
        data,
        "127.0.0.1:0".parse().unwrap(),
        None,
        &[
            ("SYNC_SERVER_ARCHIVE", archive.to_str().unwrap()),
            ("SYNC_SERVER_ARCHIVE_INTERVAL_MS", "50"),
        ],
    )
}

fn quic(server: &ServerProcess) -> ClientOptions {
    let mut o = ClientOptions::new(
        server.addr.to_string(),
        Trust::Pin(server.fingerprint.clone()),
    );
    o.request_timeout = Duration::from_secs(10);
    o.backoff_max = Duration::from_millis(200);
    o
}

fn ws_url(server: &ServerProcess) -> String {
    format!("ws://{}/ws", server.http)
}

/// Syncs until idle, again after what a client is told to retry: 36
/// clients connecting at once from one address meet the server's cap on
/// connections that have not authenticated yet ("retry later").
async fn sync_retrying(r: &Arc<Replica>, opts: &ClientOptions) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sync_until_idle(r.clone(), opts.clone()).await {
            Ok(_) => return,
            Err(e) if !e.is_permanent() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("sync: {e}"),
        }
    }
}

/// The server's log, read beside it through a read-only handle.
fn server_log(store: &Path) -> Vec<Event> {
    let s = Store::open_read_only(store).unwrap();
    s.read_all(1).collect::<Result<_, _>>().unwrap()
}

/// Every client writes `ROUNDS` times to "shared" and to its own counter,
/// all at once; returns when each write is acknowledged.
async fn write_round(
    replicas: &[Arc<Replica>],
    seeds: Vec<(SeedClient, Ws)>,
    server: &ServerProcess,
) -> Vec<(SeedClient, Ws)> {
    let mut tasks = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let (r, opts) = (r.clone(), quic(server));
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                increment_counter(&r, "shared");
                increment_counter(&r, &format!("own-q{i}"));
                sync_retrying(&r, &opts).await;
            }
            assert!(r.pending().is_empty());
            None
        }));
    }
    for (i, (mut client, mut ws)) in seeds.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                client.increment("shared", 1);
                client.increment(&format!("own-j{i}"), 1);
                client.sync(&mut ws).await.expect("no error");
            }
            assert!(client.local.is_empty(), "json{i}: every event accepted");
            Some((client, ws))
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.unwrap() {
            out.push(s);
        }
    }
    out
}

async fn wait_archived(archive: &Path, head: u64) {
    let target = strata_archive::target::open(archive.to_str().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let archived = Manifest::load(&*target).unwrap().map_or(0, |m| m.head);
        if archived >= head {
            assert_eq!(archived, head, "archived beyond the head");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the archive is at {archived}, the head at {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(strata_cli())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_store_lost_with_its_disk_comes_back_from_the_archive_and_sync_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let (data, archive) = (root.path().join("data"), root.path().join("archive"));
    let (store_dir, store_archive) = (data.join("default"), archive.join("default"));
    let mut server = start(&data, &archive);

    let dirs: Vec<_> = (0..REPLICAS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let replicas: Vec<Arc<Replica>> = dirs.iter().map(|d| counter_replica(d.path())).collect();
    let mut seeds = Vec::new();
    for i in 0..SEEDS {
        seeds.push((
            SeedClient::new(&format!("json{i}")),
            connect(&ws_url(&server)).await,
        ));
    }
    let seeds = write_round(&replicas, seeds, &server).await;
    let acknowledged = server_log(&store_dir);
    let total = (REPLICAS + SEEDS) * ROUNDS * 2;
    assert_eq!(acknowledged.len(), total, "every event once");

    // The archive catches up on its timer (no shutdown step helps: the
    // server is killed), then the disk is lost.
    wait_archived(&store_archive, total as u64).await;
    kill(&mut server.child);
    std::fs::remove_dir_all(&store_dir).unwrap();

    let out = cli(&[
        "--store",
        store_dir.to_str().unwrap(),
        "--json",
        "restore",
        "--from",
        store_archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["head"], total as u64, "{report}");
    let out = cli(&["--store", store_dir.to_str().unwrap(), "verify"]);
    assert!(
        out.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        server_log(&store_dir),
        acknowledged,
        "every acknowledged event is back"
    );

    // The same clients go on with the restored server (same identity, a
    // new address): nothing pushed twice, nothing lost.
    let server = start(&data, &archive);
    let mut again = Vec::new();
    for (client, _old) in seeds {
        again.push((client, connect(&ws_url(&server)).await));
    }
    let mut seeds = write_round(&replicas, again, &server).await;
    let log = server_log(&store_dir);
    assert_eq!(log.len(), 2 * total);
    assert_eq!(log[..total], acknowledged[..]);
    let ids: HashSet<_> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), log.len(), "an event was stored twice");
    let shared = (2 * (REPLICAS + SEEDS) * ROUNDS) as i64;
    for r in &replicas {
        sync_retrying(r, &quic(&server)).await;
        let committed: Vec<Event> = r.committed().read_all(1).collect::<Result<_, _>>().unwrap();
        assert_eq!(committed, log, "a replica holds the restored server's log");
        let value = r.read_views(|c| counter::value(c, "shared")).unwrap();
        assert_eq!(value, Some(shared));
    }
    for (client, ws) in &mut seeds {
        client.sync(ws).await.expect("no error");
        assert_eq!(client.count("shared"), shared, "{}", client.node);
    }
    // And the archive follows the restored server.
    wait_archived(&store_archive, log.len() as u64).await;
    drop(server);
    for r in replicas {
        Arc::try_unwrap(r).unwrap().close().unwrap();
    }
}
