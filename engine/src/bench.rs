//! Benchmark workloads, shared by `strata bench` and `cargo bench -p strata
//! --features bench` (compiled only with that feature; one file, as the
//! workloads share their setup, baselines and the way figures are made). Every figure is measured in the same run as its
//! baseline (the seed design's plain SQLite `events` table) and as its raw
//! limit (the same bytes written or read with nothing but framing, CRC and
//! the same sync pattern), so ratios compare like with like on this machine.
//!
//! Workloads (see docs/BENCHMARKS.md for what each one means):
//! `append_batch_durable`, `append_concurrent_durable`, `scan_all`,
//! `read_aggregate`, `open_clean`, `project_rebuild`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::event::{AggregateEvents, ExpectedVersion, NewEvent};
use crate::hlc::{Hlc, NodeId, SystemClock};
use crate::store::{Options, Store};
use crate::{Durability, Error};

/// Every workload, in the order [`run`] runs them.
pub const WORKLOADS: &[&str] = &[
    "append_batch_durable",
    "append_concurrent_durable",
    "scan_all",
    "read_aggregate",
    "open_clean",
    "project_rebuild",
    "backup",
];
/// Events per append in the batch workloads.
pub const BATCH_EVENTS: u64 = 1_000;
/// Aggregates per batch in `append_batch_durable` (each gets
/// `BATCH_EVENTS / BATCH_AGGREGATES` events).
pub const BATCH_AGGREGATES: u64 = 10;
/// Events per aggregate once the store is full.
pub const AGGREGATE_EVENTS: u64 = 1_000;
/// Writer threads in `append_concurrent_durable`.
pub const CONCURRENT_THREADS: usize = 32;
/// `append_concurrent_durable` appends this fraction of `events` (one event
/// per durable append is slow for the baseline).
pub const CONCURRENT_EVENTS_DIVISOR: u64 = 50;
/// Aggregates read in `read_aggregate`.
pub const READ_AGGREGATE_READS: usize = 200;
/// Times `read_aggregate` reads its aggregates on each side: long enough
/// (a million events at the default size) to time, and to profile.
pub const READ_AGGREGATE_ROUNDS: usize = 5;
/// Payload size of the `open_clean` store's events.
pub const OPEN_EVENT_BYTES: usize = 1_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Events in the main workloads (default 1,000,000).
    pub events: u64,
    /// Where stores and baseline databases are created (removed after).
    pub dir: PathBuf,
    /// Size of the store `open_clean` opens.
    pub open_bytes: u64,
    /// Only these workloads (all when empty).
    pub only: Vec<String>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            events: 1_000_000,
            dir: std::env::temp_dir().join("strata-bench"),
            open_bytes: 1 << 30,
            only: Vec::new(),
        }
    }
}

/// One workload's figures. Rates are events per second.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadResult {
    pub workload: String,
    pub events: u64,
    pub strata_eps: f64,
    pub baseline_eps: Option<f64>,
    /// `strata_eps / baseline_eps`.
    pub ratio: Option<f64>,
    pub limit_eps: Option<f64>,
    /// `strata_eps / limit_eps`.
    pub of_limit: Option<f64>,
    /// What the workload measured besides rates (sizes, times, memory).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl WorkloadResult {
    fn new(
        workload: &str,
        events: u64,
        strata: Duration,
        baseline: Option<Duration>,
        limit: Option<Duration>,
    ) -> Self {
        let eps = |d: Duration| events as f64 / d.as_secs_f64().max(1e-9);
        let strata_eps = eps(strata);
        let baseline_eps = baseline.map(eps);
        let limit_eps = limit.map(eps);
        WorkloadResult {
            workload: workload.into(),
            events,
            strata_eps,
            baseline_eps,
            ratio: baseline_eps.map(|b| strata_eps / b),
            limit_eps,
            of_limit: limit_eps.map(|l| strata_eps / l),
            extra: serde_json::Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    fn with_all<V: Into<serde_json::Value>>(
        mut self,
        fields: impl IntoIterator<Item = (&'static str, V)>,
    ) -> Self {
        for (key, value) in fields {
            self = self.with(key, value);
        }
        self
    }
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("baseline SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The payload of event `i`: about 200 bytes of JSON.
pub fn payload(i: u64) -> Vec<u8> {
    let head = format!("{{\"value\":1,\"seq\":{i},\"device\":\"bench\",\"note\":\"");
    let pad = 200usize.saturating_sub(head.len() + 2);
    let mut s = head.into_bytes();
    s.extend(std::iter::repeat_n(b'x', pad));
    s.extend_from_slice(b"\"}");
    s
}

const METADATA: &[u8] = br#"{"device":"bench"}"#;

fn aggregate_name(k: u64) -> String {
    format!("agg-{k:06}")
}

/// Runs the selected workloads, calling `report` as each finishes.
pub fn run(
    config: &BenchConfig,
    mut report: impl FnMut(&WorkloadResult),
) -> Result<Vec<WorkloadResult>, BenchError> {
    let wanted = |name: &str| config.only.is_empty() || config.only.iter().any(|w| w == name);
    let _ = std::fs::remove_dir_all(&config.dir);
    std::fs::create_dir_all(&config.dir)?;
    let mut results = Vec::new();
    // Each workload's peak resident memory (both of its sides: Strata and
    // its baseline run in this process one after the other), from a reset
    // of the peak before it.
    reset_peak_rss();
    let mut push = |r: WorkloadResult, results: &mut Vec<WorkloadResult>| {
        let r = match peak_rss_mib() {
            Some(mib) => r.with("peak_rss_mib", mib),
            None => r,
        };
        report(&r);
        results.push(r);
        reset_peak_rss();
    };
    let events = config.events.max(BATCH_EVENTS) / BATCH_EVENTS * BATCH_EVENTS;
    let store_dir = config.dir.join("store");
    let seed_db = config.dir.join("seed.sqlite");
    let raw_file = config.dir.join("raw.log");
    let needs_data = ["append_batch_durable", "scan_all", "read_aggregate"]
        .iter()
        .any(|w| wanted(w));
    if needs_data {
        let r = append_batch_durable(events, &store_dir, &seed_db, &raw_file)?;
        if wanted("append_batch_durable") {
            push(r, &mut results);
        }
    }
    if wanted("append_concurrent_durable") {
        let n = (events / CONCURRENT_EVENTS_DIVISOR).max(CONCURRENT_THREADS as u64 * 100);
        push(
            append_concurrent_durable(n, &config.dir.join("concurrent"))?,
            &mut results,
        );
    }
    if wanted("scan_all") {
        push(
            scan_all(events, &store_dir, &seed_db, &raw_file)?,
            &mut results,
        );
    }
    if wanted("read_aggregate") {
        push(read_aggregate(events, &store_dir, &seed_db)?, &mut results);
    }
    if wanted("open_clean") {
        push(
            open_clean(config.open_bytes, &config.dir.join("open"))?,
            &mut results,
        );
    }
    if wanted("project_rebuild") {
        push(
            project_rebuild(events, &config.dir.join("project"))?,
            &mut results,
        );
    }
    if wanted("backup") {
        push(
            backup(config.open_bytes, &config.dir.join("backup"))?,
            &mut results,
        );
    }
    let _ = std::fs::remove_dir_all(&config.dir);
    Ok(results)
}

/// Resets this process's peak resident set size (Linux: `VmHWM`), so that
/// the next reading is the peak since now. Elsewhere, does nothing.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// This process's peak resident set size since the last reset, in MiB
/// (Linux only).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((kib / 1024.0 * 10.0).round() / 10.0)
}

// --- the seed's SQLite table ------------------------------------------------

/// The seed design's table and indexes, verbatim.
const SEED_SCHEMA: &str = "
CREATE TABLE events (
    event_id        TEXT PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    timestamp       TEXT NOT NULL,
    metadata        BLOB,
    CONSTRAINT ux_aggregate_version UNIQUE (aggregate_id, version)
);
CREATE INDEX idx_events_aggregate_id ON events (aggregate_id);
CREATE INDEX idx_events_timestamp ON events (timestamp);
";

fn seed_open(path: &Path, create: bool) -> Result<Connection, BenchError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(Duration::from_secs(60))?;
    if create {
        conn.execute_batch(SEED_SCHEMA)?;
    }
    Ok(conn)
}

/// The seed's HLC text: unpadded `physical:counter:node`.
fn seed_hlc(hlc: &Hlc) -> String {
    let t = hlc.now().expect("a bench clock starts at the wall clock");
    format!("{}:{}:{}", t.physical_ms(), t.counter(), t.node())
}

const SEED_INSERT: &str = "INSERT INTO events (event_id, aggregate_id, version, event_type, event_data, timestamp, metadata)
                           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

// --- raw limit ----------------------------------------------------------------

/// Plain framing: `len u32, crc u32, payload`, one frame per write.
fn raw_frame(buf: &mut Vec<u8>, records: impl Iterator<Item = Vec<u8>>) {
    buf.clear();
    buf.extend_from_slice(&[0u8; 8]);
    for r in records {
        buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
        buf.extend_from_slice(&r);
    }
    let len = (buf.len() - 8) as u32;
    let crc = crc32fast::hash(&buf[8..]);
    buf[0..4].copy_from_slice(&len.to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A raw record the size of a Strata record for the same event.
fn raw_record(i: u64) -> Vec<u8> {
    let mut r = vec![0u8; crate::log::format::RECORD_HEADER_BYTES + 16 + 10];
    r.extend_from_slice(&payload(i));
    r.extend_from_slice(METADATA);
    r
}

fn raw_append(path: &Path, events: u64, per_sync: u64) -> Result<Duration, BenchError> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let mut buf = Vec::new();
    let start = Instant::now();
    let mut i = 0;
    while i < events {
        let n = per_sync.min(events - i);
        raw_frame(&mut buf, (i..i + n).map(raw_record));
        file.write_all(&buf)?;
        file.sync_data()?;
        i += n;
    }
    Ok(start.elapsed())
}

/// The raw limit of an append workload, measured right before and right
/// after Strata's part: the host's disk drifts from one minute to the
/// next, and a limit taken after the seed's part (tens of seconds later)
/// could be half or twice what Strata's part met. The limit is the mean of
/// the two times; both rates are reported (`limit_before_eps`,
/// `limit_after_eps`) so that drift shows.
struct RawLimit {
    events: u64,
    per_sync: u64,
    before: Duration,
}

/// `limit_before_eps` and `limit_after_eps`, for [`WorkloadResult::with_all`].
type LimitFields = [(&'static str, f64); 2];

impl RawLimit {
    /// Measures the first time, writing `path` (left for the workload to
    /// remove once its clocks have stopped: freeing its blocks makes the
    /// file system discard them, which should not land in a timed part).
    fn before(path: &Path, events: u64, per_sync: u64) -> Result<RawLimit, BenchError> {
        Ok(RawLimit {
            events,
            per_sync,
            before: raw_append(path, events, per_sync)?,
        })
    }

    /// Measures the second time, writing `path` (left for the workload to
    /// remove, as above), and returns the limit's time and the fields that
    /// report both.
    fn after(self, path: &Path) -> Result<(Duration, LimitFields), BenchError> {
        let after = raw_append(path, self.events, self.per_sync)?;
        let eps = |d: Duration| self.events as f64 / d.as_secs_f64().max(1e-9);
        Ok((
            (self.before + after) / 2,
            [
                ("limit_before_eps", eps(self.before)),
                ("limit_after_eps", eps(after)),
            ],
        ))
    }
}

// --- workloads ------------------------------------------------------------------

fn batch_groups(batch: u64, aggregates: u64) -> Vec<AggregateEvents> {
    // Small runs have fewer aggregates than a batch has groups.
    let groups = BATCH_AGGREGATES.min(aggregates);
    let per = BATCH_EVENTS / groups;
    (0..groups)
        .map(|g| {
            let agg = (batch * groups + g) % aggregates;
            AggregateEvents {
                aggregate_id: aggregate_name(agg),
                expected: ExpectedVersion::Any,
                events: (0..per)
                    .map(|j| {
                        let i = batch * BATCH_EVENTS + g * per + j;
                        NewEvent::new("Recorded", payload(i)).with_metadata(METADATA)
                    })
                    .collect(),
            }
        })
        .collect()
}

fn append_batch_durable(
    events: u64,
    store_dir: &Path,
    seed_db: &Path,
    raw_file: &Path,
) -> Result<WorkloadResult, BenchError> {
    let aggregates = (events / AGGREGATE_EVENTS).max(1);
    let batches = events / BATCH_EVENTS;

    let raw_before = raw_file.with_extension("before");
    let raw = RawLimit::before(&raw_before, events, BATCH_EVENTS)?;
    // Strata: durable appends, index caught up before the clock stops.
    let store = Store::open(store_dir, Options::default())?;
    let start = Instant::now();
    for b in 0..batches {
        store.append_batch(&batch_groups(b, aggregates))?;
    }
    let log_done = start.elapsed();
    store.flush_index()?;
    let strata = start.elapsed();
    let bytes = dir_bytes(&store_dir.join("log"));
    // Closing copies what is left of the index's WAL into its file (up to
    // `INDEX_CHECKPOINT_WAL_BYTES` the timed part did not copy).
    let closing = Instant::now();
    store.close()?;
    let close_ms = closing.elapsed().as_secs_f64() * 1e3;
    let index_bytes = ["index.sqlite", "index.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(store_dir.join(f)).ok())
        .map(|m| m.len())
        .sum::<u64>();
    let raw_after = raw_file.with_extension("after");
    let (limit, limit_fields) = raw.after(&raw_after)?;

    // Baseline: the seed's table, one transaction per batch.
    let seed = {
        let mut conn = seed_open(seed_db, true)?;
        let hlc = Hlc::new(
            NodeId::new("seed").expect("valid"),
            Arc::new(SystemClock),
            60_000,
        );
        let mut versions = vec![0u64; aggregates as usize];
        let start = Instant::now();
        for b in 0..batches {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(SEED_INSERT)?;
                for g in batch_groups(b, aggregates) {
                    let k: u64 = g.aggregate_id[4..].parse().expect("agg-NNNNNN");
                    for e in g.events {
                        versions[k as usize] += 1;
                        stmt.execute(params![
                            Uuid::new_v4().to_string(),
                            g.aggregate_id,
                            versions[k as usize],
                            e.event_type,
                            e.data,
                            seed_hlc(&hlc),
                            METADATA
                        ])?;
                    }
                }
            }
            tx.commit()?;
        }
        start.elapsed()
    };
    std::fs::remove_file(&raw_before)?;
    std::fs::remove_file(&raw_after)?;
    // `scan_all` reads the raw log back as its limit. Written here, after
    // the seed's part (untimed), it is in the page cache as it was when
    // the append limit was measured at this point, so `scan_all`'s limit
    // stays comparable with the runs before that changed.
    raw_append(raw_file, events, BATCH_EVENTS)?;
    Ok(WorkloadResult::new(
        "append_batch_durable",
        events,
        strata,
        Some(seed),
        Some(limit),
    )
    .with_all(limit_fields)
    .with(
        "strata_log_only_eps",
        events as f64 / log_done.as_secs_f64(),
    )
    .with("log_bytes", bytes)
    .with("close_ms", close_ms)
    .with("index_bytes", index_bytes)
    .with(
        "seed_bytes",
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", seed_db.display())).ok())
            .map(|m| m.len())
            .sum::<u64>(),
    ))
}

fn append_concurrent_durable(events: u64, dir: &Path) -> Result<WorkloadResult, BenchError> {
    std::fs::create_dir_all(dir)?;
    let per_thread = events / CONCURRENT_THREADS as u64;
    let events = per_thread * CONCURRENT_THREADS as u64;
    // The ceiling: perfect group commit, one sync per round of all writers.
    let raw_before = dir.join("raw.before");
    let raw = RawLimit::before(&raw_before, events, CONCURRENT_THREADS as u64)?;
    let store = Store::open(dir.join("store"), Options::default())?;
    let syncs_before = store.log().stats().syncs.load(Ordering::Relaxed);
    let strata = run_threads(|t| {
        let store = store.clone();
        move || -> Result<(), BenchError> {
            let agg = format!("writer-{t}");
            for i in 0..per_thread {
                store.append(
                    &agg,
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Recorded", payload(i)).with_metadata(METADATA)],
                )?;
            }
            Ok(())
        }
    })?;
    let syncs = store.log().stats().syncs.load(Ordering::Relaxed) - syncs_before;
    store.flush_index()?;
    store.close()?;
    let (limit, limit_fields) = raw.after(&dir.join("raw.log"))?;

    let seed_path = dir.join("seed.sqlite");
    drop(seed_open(&seed_path, true)?);
    let hlc = Arc::new(Hlc::new(
        NodeId::new("seed").expect("valid"),
        Arc::new(SystemClock),
        60_000,
    ));
    let seed = run_threads(|t| {
        let seed_path = seed_path.clone();
        let hlc = hlc.clone();
        move || -> Result<(), BenchError> {
            let mut conn = seed_open(&seed_path, false)?;
            let agg = format!("writer-{t}");
            for i in 0..per_thread {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                tx.execute(
                    SEED_INSERT,
                    params![
                        Uuid::new_v4().to_string(),
                        agg,
                        i + 1,
                        "Recorded",
                        payload(i),
                        seed_hlc(&hlc),
                        METADATA
                    ],
                )?;
                tx.commit()?;
            }
            Ok(())
        }
    })?;
    std::fs::remove_file(&raw_before)?;
    Ok(WorkloadResult::new(
        "append_concurrent_durable",
        events,
        strata,
        Some(seed),
        Some(limit),
    )
    .with_all(limit_fields)
    .with("threads", CONCURRENT_THREADS as u64)
    .with("events_per_fsync", events as f64 / syncs.max(1) as f64))
}

fn run_threads<F, G>(make: F) -> Result<Duration, BenchError>
where
    F: Fn(usize) -> G,
    G: FnOnce() -> Result<(), BenchError> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(CONCURRENT_THREADS + 1));
    let handles: Vec<_> = (0..CONCURRENT_THREADS)
        .map(|t| {
            let work = make(t);
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                work()
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("bench thread panicked")?;
    }
    Ok(start.elapsed())
}

fn scan_all(
    events: u64,
    store_dir: &Path,
    seed_db: &Path,
    raw_file: &Path,
) -> Result<WorkloadResult, BenchError> {
    let store = Store::open(store_dir, Options::default())?;
    let touch = |e: crate::EventRef<'_>| {
        e.data.len() + e.aggregate_id.len() + e.event_type.len() + e.version as usize
    };

    // Memory at half the store, then all of it.
    let half = events / 2;
    let (_, rss_half) = with_peak_rss(|| {
        let mut sum = 0usize;
        store.scan(1, Some(half), |e| {
            sum += touch(e);
            ControlFlow::Continue(())
        })
    });
    let start = Instant::now();
    let mut sum = 0usize;
    let (seen, rss_full) = with_peak_rss(|| {
        store.scan(1, None, |e| {
            sum += touch(e);
            ControlFlow::Continue(())
        })
    });
    let strata = start.elapsed();
    let seen = seen?;
    assert_eq!(seen, events, "scan saw every event");
    store.close()?;

    let conn = seed_open(seed_db, false)?;
    let start = Instant::now();
    let mut rows_seen = 0u64;
    {
        let mut stmt = conn.prepare("SELECT * FROM events ORDER BY timestamp")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for c in 0..7 {
                sum += match r.get_ref(c)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.len()
                    }
                    rusqlite::types::ValueRef::Integer(i) => i as usize,
                    _ => 0,
                };
            }
            rows_seen += 1;
        }
    }
    let seed = start.elapsed();
    assert_eq!(rows_seen, events);

    let file = File::open(raw_file)?;
    // SAFETY: the file was written above and is not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&file)? };
    let start = Instant::now();
    let (mut at, mut counted) = (0usize, 0u64);
    while at < map.len() {
        let len = u32::from_le_bytes(map[at..at + 4].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(map[at + 4..at + 8].try_into().expect("4"));
        let body = &map[at + 8..at + 8 + len];
        assert_eq!(crc32fast::hash(body), crc);
        let mut r = 0;
        while r < body.len() {
            let rl = u32::from_le_bytes(body[r..r + 4].try_into().expect("4")) as usize;
            sum += body[r + 4 + rl / 2] as usize;
            r += 4 + rl;
            counted += 1;
        }
        at += 8 + len;
    }
    let limit = start.elapsed();
    assert_eq!(counted, events);
    std::hint::black_box(sum);
    Ok(
        WorkloadResult::new("scan_all", events, strata, Some(seed), Some(limit))
            .with("peak_rss_delta_bytes_half", rss_half)
            .with("peak_rss_delta_bytes_full", rss_full),
    )
}

fn read_aggregate(
    events: u64,
    store_dir: &Path,
    seed_db: &Path,
) -> Result<WorkloadResult, BenchError> {
    let aggregates = (events / AGGREGATE_EVENTS).max(1);
    let picks: Vec<String> = (0..READ_AGGREGATE_READS as u64)
        .map(|i| aggregate_name(i.wrapping_mul(2_654_435_761) % aggregates))
        .collect();
    let store = Store::open(store_dir, Options::default())?;
    // A first, untimed round over every pick on each side, so that the
    // timed rounds compare warm reads; its rate is reported apart
    // (`*_first_round_eps`), since it depends on what the page cache kept
    // of each side's files.
    let start = Instant::now();
    let mut first_round = 0u64;
    for agg in &picks {
        first_round += store.read_aggregate(agg, 1, usize::MAX)?.len() as u64;
    }
    let strata_first = first_round as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut read = 0u64;
    for _ in 0..READ_AGGREGATE_ROUNDS {
        for agg in &picks {
            read += store.read_aggregate(agg, 1, usize::MAX)?.len() as u64;
        }
    }
    let strata = start.elapsed();
    // The borrowed variant: the same reads, each event looked at in place.
    let start = Instant::now();
    let mut visited = 0u64;
    let mut looked = 0usize;
    for _ in 0..READ_AGGREGATE_ROUNDS {
        for agg in &picks {
            visited += store.visit_aggregate(agg, 1, usize::MAX, |e| looked += e.data.len())?;
        }
    }
    let borrowed = start.elapsed();
    assert_eq!(visited, read, "both Strata reads see the same events");
    std::hint::black_box(looked);

    // Limit: the same records through the log alone, pointers known.
    let pointers: Vec<Vec<crate::index::Pointer>> = picks
        .iter()
        .map(|a| store.aggregate_pointers_for_bench(a))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let mut sum = 0usize;
    for _ in 0..READ_AGGREGATE_ROUNDS {
        for ptrs in &pointers {
            for p in ptrs {
                sum += store
                    .log()
                    .read_record(p.segment, p.offset, p.position, |r| r.data.len())
                    .map_err(Error::from)?;
            }
        }
    }
    let limit = start.elapsed();
    store.close()?;

    let conn = seed_open(seed_db, false)?;
    let mut stmt = conn.prepare("SELECT * FROM events WHERE aggregate_id = ?1 ORDER BY version")?;
    let fetch = |stmt: &mut rusqlite::Statement<'_>, agg: &str| -> Result<u64, BenchError> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(
            String,
            String,
            i64,
            String,
            Vec<u8>,
            String,
            Option<Vec<u8>>,
        )> = stmt
            .query_map([agg], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows.len() as u64)
    };
    let start = Instant::now();
    for agg in &picks {
        fetch(&mut stmt, agg)?;
    }
    let seed_first = first_round as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut seed_read = 0u64;
    for _ in 0..READ_AGGREGATE_ROUNDS {
        for agg in &picks {
            seed_read += fetch(&mut stmt, agg)?;
        }
    }
    let seed = start.elapsed();
    assert_eq!(read, seed_read, "both sides read the same events");
    std::hint::black_box(sum);
    Ok(
        WorkloadResult::new("read_aggregate", read, strata, Some(seed), Some(limit))
            .with(
                "reads",
                (READ_AGGREGATE_READS * READ_AGGREGATE_ROUNDS) as u64,
            )
            .with(
                "events_per_aggregate",
                read / (READ_AGGREGATE_READS * READ_AGGREGATE_ROUNDS) as u64,
            )
            .with("strata_first_round_eps", strata_first)
            .with("strata_borrowed_eps", read as f64 / borrowed.as_secs_f64())
            .with("seed_first_round_eps", seed_first),
    )
}

/// Fills a store in `dir` with about `bytes` of log (events of
/// [`OPEN_EVENT_BYTES`], no syncs); returns its event count.
fn fill_store(bytes: u64, dir: &Path) -> Result<u64, BenchError> {
    let per_event = OPEN_EVENT_BYTES as u64 + 100;
    let events = (bytes / per_event / BATCH_EVENTS).max(1) * BATCH_EVENTS;
    let store = Store::open(
        dir,
        Options {
            durability: Durability::None,
            ..Options::default()
        },
    )?;
    let data = vec![b'x'; OPEN_EVENT_BYTES];
    for b in 0..events / BATCH_EVENTS {
        let batch: Vec<NewEvent> = (0..BATCH_EVENTS)
            .map(|_| NewEvent::new("Recorded", data.clone()))
            .collect();
        store.append(&aggregate_name(b % 1000), ExpectedVersion::Any, batch)?;
    }
    store.close()?;
    Ok(events)
}

fn open_clean(bytes: u64, dir: &Path) -> Result<WorkloadResult, BenchError> {
    let events = fill_store(bytes, dir)?;
    let size = dir_bytes(&dir.join("log"));
    let start = Instant::now();
    let store = Store::open(dir, Options::default())?;
    let opened = start.elapsed();
    assert_eq!(store.head(), events);
    store.close()?;
    Ok(
        WorkloadResult::new("open_clean", events, opened, None, None)
            .with("open_seconds", opened.as_secs_f64())
            .with("store_bytes", size)
            .with("target_seconds", 1.0),
    )
}

/// `backup`: [`crate::backup::backup`] of a store of about `bytes` against
/// the baseline of copying the same files as `cp -r` then `sync` would
/// (each file copied whole and synced, then its directory), in the same
/// run, both reading a source the page cache holds.
fn backup(bytes: u64, dir: &Path) -> Result<WorkloadResult, BenchError> {
    let src = dir.join("src");
    let events = fill_store(bytes, &src)?;
    // The log and the files beside it (the index).
    let size = dir_bytes(&src) + dir_bytes(&src.join("log"));
    let copied = dir.join("cp");
    let start = Instant::now();
    copy_tree_synced(&src, &copied)?;
    let cp = start.elapsed();
    let start = Instant::now();
    let report = crate::backup::backup(&src, &dir.join("backup"), &Default::default())?;
    let took = start.elapsed();
    assert_eq!(report.head, events);
    let mut result = WorkloadResult::new("backup", events, took, Some(cp), None)
        .with("store_bytes", size)
        .with("backup_seconds", took.as_secs_f64())
        .with("cp_seconds", cp.as_secs_f64())
        .with("target_ratio", 0.8);
    // Incremental: nothing new, so only the active segment is looked at.
    let start = Instant::now();
    crate::backup::backup(&src, &dir.join("backup"), &Default::default())?;
    result = result.with("incremental_seconds", start.elapsed().as_secs_f64());
    Ok(result)
}

/// `cp -r` then `sync`, for one directory tree.
fn copy_tree_synced(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree_synced(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}

/// Counters in `project_rebuild`.
pub const PROJECT_COUNTERS: u64 = 1_000;

/// The counter events of batch `b` in `project_rebuild`: ten counters, a
/// hundred events each, mostly increments.
fn counter_groups(b: u64) -> Vec<AggregateEvents> {
    use crate::projection::counter::{DECREMENTED, INCREMENTED};
    let groups = BATCH_AGGREGATES;
    let per = BATCH_EVENTS / groups;
    (0..groups)
        .map(|g| AggregateEvents {
            aggregate_id: aggregate_name((b * groups + g) % PROJECT_COUNTERS),
            expected: ExpectedVersion::Any,
            events: (0..per)
                .map(|j| {
                    let i = b * BATCH_EVENTS + g * per + j;
                    let ty = if i % 4 == 3 { DECREMENTED } else { INCREMENTED };
                    NewEvent::new(ty, format!("{{\"value\":{}}}", 1 + i % 3).into_bytes())
                })
                .collect(),
        })
        .collect()
}

fn project_rebuild(events: u64, dir: &Path) -> Result<WorkloadResult, BenchError> {
    use crate::projection::counter::{CounterProjection, DECREMENTED};
    use crate::projection::{ViewOptions, Views};
    let views_err = |e: crate::projection::ProjectionError| {
        BenchError::Io(std::io::Error::other(e.to_string()))
    };
    std::fs::create_dir_all(dir)?;
    let store_dir = dir.join("store");
    let log_db = dir.join("seed-events.sqlite");
    let view_db = dir.join("seed-views.sqlite");
    // The same events in Strata's log and in the seed's event table.
    {
        let store = Store::open(
            &store_dir,
            Options {
                durability: Durability::None,
                ..Options::default()
            },
        )?;
        let mut seed = seed_open(&log_db, true)?;
        seed.pragma_update(None, "synchronous", "OFF")?;
        let hlc = Hlc::new(
            NodeId::new("seed").expect("valid"),
            Arc::new(SystemClock),
            60_000,
        );
        let mut versions = vec![0u64; PROJECT_COUNTERS as usize];
        for b in 0..events / BATCH_EVENTS {
            let groups = counter_groups(b);
            store.append_batch(&groups)?;
            let tx = seed.transaction()?;
            {
                let mut stmt = tx.prepare_cached(SEED_INSERT)?;
                for g in &groups {
                    let k: usize = g.aggregate_id[4..].parse().expect("agg-NNNNNN");
                    for e in &g.events {
                        versions[k] += 1;
                        stmt.execute(params![
                            Uuid::new_v4().to_string(),
                            g.aggregate_id,
                            versions[k],
                            e.event_type,
                            e.data,
                            seed_hlc(&hlc),
                            Option::<Vec<u8>>::None
                        ])?;
                    }
                }
            }
            tx.commit()?;
        }
        store.close()?;
    }

    // Strata: rebuild the counter view by replaying the whole log.
    let store = Store::open(&store_dir, Options::default())?;
    let start = Instant::now();
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection)],
        ViewOptions {
            background: false,
            ..ViewOptions::default()
        },
    )
    .map_err(views_err)?;
    let strata = start.elapsed();
    let strata_total: i64 = views
        .read(|c| c.query_row("SELECT sum(value) FROM current_count", [], |r| r.get(0)))
        .map_err(views_err)?;
    views.close();
    store.close()?;

    // The seed's loop: events after last_processed_hlc by timestamp, one
    // UPDATE per event, a transaction per batch with the HLC checkpoint.
    let log = seed_open(&log_db, false)?;
    let mut views_db = seed_open(&view_db, true)?;
    views_db.execute_batch(
        "CREATE TABLE current_count (id INTEGER PRIMARY KEY DEFAULT 1, value INTEGER NOT NULL);
         CREATE TABLE _metadata (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO _metadata VALUES ('last_processed_hlc', '');",
    )?;
    for k in 1..=PROJECT_COUNTERS {
        views_db.execute("INSERT INTO current_count (id, value) VALUES (?1, 0)", [k])?;
    }
    let start = Instant::now();
    let mut last = String::new();
    let mut applied = 0u64;
    let mut fetch = log.prepare(
        "SELECT event_id, aggregate_id, version, event_type, event_data, timestamp, metadata
         FROM events WHERE timestamp > ?1 ORDER BY timestamp ASC LIMIT ?2",
    )?;
    loop {
        let rows: Vec<(String, String, Vec<u8>, String)> = fetch
            .query_map(params![last, BATCH_EVENTS], |r| {
                Ok((r.get(1)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<_, _>>()?;
        let Some(batch_last) = rows.last().map(|r| r.3.clone()) else {
            break;
        };
        let tx = views_db.transaction()?;
        {
            let mut update =
                tx.prepare_cached("UPDATE current_count SET value = value + ?1 WHERE id = ?2")?;
            for (aggregate, ty, data, _) in &rows {
                let v: serde_json::Value =
                    serde_json::from_slice(data).map_err(|e| BenchError::Io(e.into()))?;
                let n = v["value"].as_i64().unwrap_or(0);
                let delta = if ty == DECREMENTED { -n } else { n };
                let id = aggregate[4..].parse::<i64>().expect("agg-NNNNNN") + 1;
                update.execute(params![delta, id])?;
            }
            tx.execute(
                "UPDATE _metadata SET value = ?1 WHERE key = 'last_processed_hlc'",
                [&batch_last],
            )?;
        }
        tx.commit()?;
        last = batch_last;
        applied += rows.len() as u64;
    }
    let seed = start.elapsed();
    let seed_total: i64 =
        views_db.query_row("SELECT sum(value) FROM current_count", [], |r| r.get(0))?;
    assert_eq!(applied, events, "the seed loop saw every event");
    assert_eq!(strata_total, seed_total, "both views agree");
    Ok(
        WorkloadResult::new("project_rebuild", events, strata, Some(seed), None)
            .with("counters", PROJECT_COUNTERS),
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Runs `f` while a thread samples resident memory; returns the peak growth
/// over the level before `f` started.
fn with_peak_rss<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = rss_bytes();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak.max(rss_bytes())
        })
    };
    let out = f();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0);
    (out, peak.saturating_sub(before))
}

/// Resident set size of this process (Linux), 0 where unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0)
}
