//! Bodies of the fuzz targets: each cargo-fuzz target in fuzz/fuzz_targets/
//! is one call to a function here, and tests/tests/fuzz_corpus.rs replays
//! the committed corpus through the same functions on stable Rust.
//!
//! Every function feeds its input to the entry points the product uses
//! (the format decoders, `scan_frames`, `Store::open`, `Timestamp::parse`,
//! and the sync readers of network bytes: `wire::decode`, `ServerCore`,
//! `ReplicaCore` over a real `Replica`, `SeedSession`)
//! and panics only when an identity or an invariant fails: that panic is
//! the bug signal. Bad bytes must come back as `Err`, never as a panic
//! (docs/FORMAT.md section 5, STYLE.md section 2). What each target checks
//! is listed in fuzz/README.md.
//!
//! A crate of its own (strata-fuzzing), so that the engine library carries
//! none of this; it uses the engine's public API only.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use uuid::Uuid;

use strata::event::{
    AggregateEvents, Committed, Event, EventRef, ExpectedVersion, Limits, NewEvent,
};
use strata::hlc::{self, ManualClock, Timestamp, WallClock};
use strata::log::format::{self, BatchRef, FrameKind, SEGMENT_HEADER_BYTES, Seal, SegmentHeader};
use strata::log::recovery::{ScanStop, scan_frames};
use strata::log::segment::segment_file_name;
use strata::log::{Durability, LOG_DIR, SEGMENT_BYTES_MIN};
use strata::sync::proto::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, Placed, Proposal, ServerMessage,
};
use strata::sync::seed::{Auth, SeedSession, SeedStep, error_json};
use strata::sync::server::PUSHES_WAITING_PER_CLIENT_MAX;
use strata::sync::wire::{self, WireError};
use strata::sync::{
    CanonicalLog, ClientId, ClientInfo, CommitResult, CoreEvent, Push, PushPolicy, Replica,
    ReplicaConfig, ReplicaCore, ReplicaOptions, ServerConfig, ServerCore, StorageError,
};
use strata::{Error, Options, Store};

/// Node id of every timestamp the fuzz stores make, so that their bytes do
/// not depend on the random store id.
pub const NODE: &str = "fuzz";
/// Wall clock of the fuzz stores at open (2023-11-14), in milliseconds.
pub const CLOCK_START_MS: u64 = 1_700_000_000_000;
/// Store id written into every segment of the reference store and of the
/// generated seeds, so that they are the same in every run.
pub const PINNED_STORE_ID: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_f022_f022_f022);
/// Batches appended to the reference store that `recovery` mutates.
const REFERENCE_BATCHES: u64 = 12;
/// Aggregates of the reference store, `agg-0` and on.
const REFERENCE_AGGREGATES: u64 = 3;
/// Longest byte range `recovery` duplicates.
const DUPLICATE_BYTES_MAX: usize = 512;
/// Most operations one `store_model` input runs.
const MODEL_OPS_MAX: usize = 64;
/// Aggregates `store_model` appends to.
const MODEL_AGGREGATES: u8 = 3;
/// Timestamp `hlc_parse` compares against when its input has one only.
const HLC_REFERENCE: &str = "001700000000000:0000000000:nodeA";

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

/// Arbitrary bytes as the only segment of a store. A read-only open either
/// fails with a typed error or reads back, in position order and without
/// gaps, exactly the events `scan_frames` accepts in the same bytes.
pub fn segment_reader(data: &[u8]) {
    let scan = scan_frames(data, 1, |_, _| {});
    assert!(scan.good_end <= data.len() as u64);
    if scan.stop == ScanStop::End {
        assert_eq!(scan.good_end, data.len() as u64);
    }
    let dir = temp_dir();
    write_log(dir.path(), &[(segment_file_name(1), data.to_vec())]);
    let Ok(store) = Store::open(dir.path(), Options::read_only()) else {
        return;
    };
    // Recovery scans the last segment with `scan_frames`; a torn tail is
    // ignored, so what is visible is what the scan accepted.
    assert_eq!(store.head(), scan.next_position - 1);
    let mut next = 1;
    for event in store.read_all(1) {
        match event {
            Ok(event) => assert_eq!(event.position, next),
            // The record checks leave one rule to the conversion to
            // `Event`: a valid timestamp (rule R10). Anything else the
            // cursor refuses, the scan should have refused too.
            Err(e) => {
                assert!(e.to_string().contains("invalid timestamp"), "{e}");
                return;
            }
        }
        next += 1;
    }
    assert_eq!(next - 1, store.head());
    if let Some(Ok(first)) = store.read_all(1).next() {
        // Point reads check the record CRC as well, so they may refuse.
        if let Ok(Some(again)) = store.get(first.event_id) {
            assert_eq!(again.event_id, first.event_id);
        }
        let _ = store.read_aggregate(&first.aggregate_id, 1, 16);
    }
}

/// Every decoder of docs/FORMAT.md section 4 on the input, with the
/// identity it must keep: a decoded header, frame, seal or record encodes
/// back to the bytes it came from. The input is also parsed as a batch
/// payload directly, so the fuzzer reaches the record decoder without
/// having to forge a frame CRC first.
pub fn frame_decoder(data: &[u8]) {
    if let Ok(header) = SegmentHeader::decode(data) {
        assert_eq!(header.encode()[..], data[..SEGMENT_HEADER_BYTES]);
    }
    if let Ok((record, len)) = format::decode_record(data, true) {
        assert_eq!(encode_record(&record), data[..len]);
        assert_eq!(format::record_len(&record), len);
    }
    if let Ok(frame) = format::decode_frame(data) {
        let mut again = Vec::new();
        let start = format::begin_frame(&mut again);
        again.extend_from_slice(frame.payload);
        format::finish_frame(&mut again, start, frame.kind, frame.durable_offset);
        assert_eq!(again, data[..frame.len()]);
        match frame.kind {
            FrameKind::Batch => check_batch(frame.payload),
            FrameKind::Seal => {
                if let Ok(seal) = Seal::decode(frame.payload) {
                    let mut sealed = Vec::new();
                    seal.encode_frame(&mut sealed, frame.durable_offset);
                    assert_eq!(sealed, again);
                }
            }
        }
    }
    check_batch(data);
}

/// A valid store with known acknowledged batches, damaged by one mutation
/// the input chooses (see [`mutate`]), then opened read-write. It either
/// opens and holds a prefix of the acknowledged batches, each wholly there
/// or wholly absent, byte-equal to what was appended, through the log and
/// through the rebuilt index alike, and takes appends right after it; or
/// it fails with an error naming a segment file and an offset.
pub fn recovery(data: &[u8]) {
    let reference = reference();
    let mut segments = reference.segments.clone();
    mutate(&mut segments, data);
    let dir = temp_dir();
    write_log(dir.path(), &segments);
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let store = match Store::open(dir.path(), seed_options(Durability::None, clock)) {
        Ok(store) => store,
        Err(e) => {
            let text = e.to_string();
            let names_a_segment = segments
                .iter()
                .any(|(name, _)| text.contains(&format!("{LOG_DIR}/{name}")));
            assert!(names_a_segment && text.contains("offset"), "{text}");
            return;
        }
    };
    let events: Vec<Event> = store.read_all(1).collect::<Result<_, _>>().expect("read");
    assert_whole_batches(&events, &reference.batches);
    assert_eq!(store.head(), events.len() as u64);
    for k in 0..REFERENCE_AGGREGATES {
        let aggregate = format!("agg-{k}");
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| e.aggregate_id == aggregate)
            .collect();
        let indexed = store
            .read_aggregate(&aggregate, 1, usize::MAX)
            .expect("read");
        assert_eq!(indexed.iter().collect::<Vec<_>>(), mine);
    }
    let more = vec![NewEvent::new("After", b"{}".to_vec()).with_id(Uuid::from_u128(u128::MAX))];
    let committed = store
        .append("agg-after", ExpectedVersion::NoStream, more)
        .expect("append");
    assert_eq!(committed[0].position, events.len() as u64 + 1);
}

/// HLC text, split at the first newline into two timestamps (the second
/// defaults to a fixed one). Each that parses keeps its value through the
/// fixed-width form, the seed's unpadded form and serde; the two compare
/// the same as clocks, as fixed-width texts and through `compare_text`.
pub fn hlc_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\n').unwrap_or((text, HLC_REFERENCE));
    match (check_timestamp(a), check_timestamp(b)) {
        (Some(x), Some(y)) => {
            assert_eq!(Timestamp::compare_text(a, b), Ok(x.cmp(&y)));
            assert_eq!(x.to_text().cmp(&y.to_text()), x.cmp(&y));
            assert_eq!(x == y, x.cmp(&y) == Ordering::Equal);
        }
        _ => assert!(Timestamp::compare_text(a, b).is_err()),
    }
}

/// Operations decoded from the input (see [`Op`]) run against a real store
/// with 4 KiB segments and against an in-memory model of it; every result
/// and every read must agree, across reopens: positions, versions,
/// conflicts, idempotent retries (S6) and HLC timestamps (H1).
pub fn store_model(data: &[u8]) {
    let dir = temp_dir();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let open = || Store::open(dir.path(), seed_options(Durability::None, clock.clone()));
    let mut store = open().expect("open");
    let mut model = Model::default();
    let mut input = data;
    for _ in 0..MODEL_OPS_MAX {
        let Some(op) = Op::decode(&mut input, &model) else {
            break;
        };
        match op {
            Op::Append(groups) => {
                let wall = hlc_wall(&clock);
                let expected = model.append(&groups, wall);
                match (store.append_batch(&groups), expected) {
                    (Ok(got), Ok(want)) => assert_eq!(got, want),
                    (
                        Err(Error::Conflict {
                            aggregate_id,
                            current,
                            ..
                        }),
                        Err(want),
                    ) => {
                        assert_eq!((aggregate_id, current), want);
                    }
                    (got, want) => panic!("append: store {got:?}, model {want:?}"),
                }
            }
            Op::Reopen => {
                store.close().expect("close");
                store = open().expect("reopen");
                model.reopened();
            }
            Op::SetClock(ms) => clock.set(ms),
            Op::Read { agg, from, limit } => model.check_reads(&store, agg, from, limit),
        }
        assert_eq!(store.head(), model.events.len() as u64);
    }
    let all: Vec<Event> = store.read_all(1).collect::<Result<_, _>>().expect("read");
    assert_eq!(all, model.events);
}

// ---------------------------------------------------------------------------
// Shared by the targets and the corpus generator
// ---------------------------------------------------------------------------

/// Options whose stores are byte-for-byte reproducible apart from the store
/// id (see [`pin_store_id`]): a manual clock, a fixed node id, 4 KiB
/// segments so that a few events already fill several.
pub fn seed_options(durability: Durability, clock: Arc<ManualClock>) -> Options {
    Options {
        durability,
        segment_bytes_max: SEGMENT_BYTES_MIN,
        node_id: Some(NODE.to_owned()),
        clock,
        ..Options::default()
    }
}

/// Rewrites a segment's header with [`PINNED_STORE_ID`]. A seal's
/// `body_crc32` stays right: the CRC-32 of any valid header, which ends
/// with its own CRC, is the same (docs/FORMAT.md section 8).
pub fn pin_store_id(segment: &mut [u8]) {
    if let Ok(header) = SegmentHeader::decode(segment) {
        let pinned = SegmentHeader {
            store_id: PINNED_STORE_ID,
            ..header
        };
        segment[..SEGMENT_HEADER_BYTES].copy_from_slice(&pinned.encode());
    }
}

/// The segment files of a store's log, by name in position order, with
/// their store id pinned.
pub fn read_segments(store_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let log = store_dir.join(LOG_DIR);
    let mut names: Vec<String> = std::fs::read_dir(&log)
        .expect("list the log")
        .map(|entry| {
            entry
                .expect("list the log")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|name| name.ends_with(".seg"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let mut bytes = std::fs::read(log.join(&name)).expect("read a segment");
            pin_store_id(&mut bytes);
            (name, bytes)
        })
        .collect()
}

/// The segment files of the store `recovery` mutates, built once per
/// process: [`REFERENCE_BATCHES`] appends in `Sync` durability (so that
/// frames carry growing durable offsets) of one to three events each, over
/// three aggregates, some with metadata, filling several 4 KiB segments.
pub fn reference_segments() -> &'static [(String, Vec<u8>)] {
    &reference().segments
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

fn write_log(store_dir: &Path, segments: &[(String, Vec<u8>)]) {
    let log = store_dir.join(LOG_DIR);
    std::fs::create_dir(&log).expect("create the log directory");
    for (name, bytes) in segments {
        std::fs::write(log.join(name), bytes).expect("write a segment");
    }
}

/// What the store's clock reads, as its HLC sees it.
fn hlc_wall(clock: &ManualClock) -> u64 {
    clock.now_ms().min(hlc::PHYSICAL_MS_MAX)
}

fn encode_record(r: &EventRef<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    format::encode_record(&mut buf, r);
    buf
}

/// A batch payload: records follow each other from offset 0 with
/// consecutive positions, each encodes back to its bytes (but for the
/// record CRC, which is not checked inside a frame: the frame's covers
/// it), and `validate` agrees with the iteration.
fn check_batch(payload: &[u8]) {
    let Ok(batch) = BatchRef::parse(payload) else {
        return;
    };
    let (mut at, mut count, mut failed) = (0, 0u64, false);
    for item in batch.iter() {
        let Ok((offset, record)) = item else {
            failed = true;
            continue;
        };
        assert_eq!(offset, at);
        assert_eq!(record.position, batch.first_position + count);
        let len = format::record_len(&record);
        let bytes = &batch.records[offset..offset + len];
        let mut again = encode_record(&record);
        again[4..8].copy_from_slice(&bytes[4..8]);
        assert_eq!(again, bytes);
        at += len;
        count += 1;
    }
    assert!(failed || count == u64::from(batch.event_count));
    assert_eq!(batch.validate().is_ok(), !failed);
}

/// One timestamp text of `hlc_parse`.
fn check_timestamp(text: &str) -> Option<Timestamp> {
    let parsed = Timestamp::parse(text);
    assert_eq!(parsed.is_ok(), hlc::parse_parts(text).is_ok());
    let ts = parsed.ok()?;
    let fixed = ts.to_text();
    let node_len = ts.node().as_str().len();
    assert_eq!(
        fixed.len(),
        hlc::PHYSICAL_DIGITS + hlc::COUNTER_DIGITS + 2 + node_len
    );
    assert!(fixed.len() <= hlc::TEXT_BYTES_MAX);
    assert_eq!(Timestamp::parse(&fixed).as_ref(), Ok(&ts));
    let unpadded = format!("{}:{}:{}", ts.physical_ms(), ts.counter(), ts.node());
    assert_eq!(Timestamp::parse(&unpadded).as_ref(), Ok(&ts));
    assert_eq!(Timestamp::compare_text(text, &fixed), Ok(Ordering::Equal));
    let json = serde_json::to_string(&ts).expect("serialise");
    assert_eq!(
        serde_json::from_str::<Timestamp>(&json).ok().as_ref(),
        Some(&ts)
    );
    Some(ts)
}

// ---------------------------------------------------------------------------
// recovery: the reference store and its mutations
// ---------------------------------------------------------------------------

struct Reference {
    segments: Vec<(String, Vec<u8>)>,
    /// The acknowledged batches, as read back after they were appended.
    batches: Vec<Vec<Event>>,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = temp_dir();
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let store = Store::open(dir.path(), seed_options(Durability::Sync, clock)).expect("open");
        let mut batches = Vec::new();
        for b in 0..REFERENCE_BATCHES {
            let events: Vec<NewEvent> = (0..1 + b % 3)
                .map(|i| {
                    let data = vec![b'a' + (b % 26) as u8; 40 + 97 * ((b * 7 + i) % 11) as usize];
                    let event = NewEvent::new(format!("T{i}"), data)
                        .with_id(Uuid::from_u128(u128::from(b << 8 | i) + 1));
                    match (b + i) % 4 {
                        0 => event.with_metadata(b"{\"by\":\"fuzz\"}".to_vec()),
                        1 => event.with_metadata(Vec::new()),
                        _ => event,
                    }
                })
                .collect();
            let aggregate = format!("agg-{}", b % REFERENCE_AGGREGATES);
            let committed = store
                .append(&aggregate, ExpectedVersion::Any, events)
                .expect("append");
            let read = store.read_all(committed[0].position).take(committed.len());
            batches.push(read.collect::<Result<_, _>>().expect("read"));
        }
        store.close().expect("close");
        Reference {
            segments: read_segments(dir.path()),
            batches,
        }
    })
}

/// `events` are the first of `batches`, each batch whole (S3), in order.
fn assert_whole_batches(events: &[Event], batches: &[Vec<Event>]) {
    let mut rest = events;
    for batch in batches {
        if rest.is_empty() {
            break;
        }
        assert!(rest.len() >= batch.len(), "part of a batch survived");
        assert_eq!(rest[..batch.len()], batch[..]);
        rest = &rest[batch.len()..];
    }
    assert!(rest.is_empty(), "events that were never appended");
}

/// Applies the one mutation `data` describes to the segment files:
/// `[kind, offset as u32 LE, argument as u16 LE]`, missing bytes read as 0.
/// The offset counts through all files in order. Kind 0 truncates the file
/// there, 1 XORs that byte with the argument's low byte (1 if that is 0),
/// 2 repeats up to [`DUPLICATE_BYTES_MAX`] bytes from there right after
/// themselves.
///
/// One mutation only: CRC-32 catches every change of up to 32 adjacent
/// bits, but a fuzzer allowed several flips could forge a frame's CRC, and
/// forged frames are valid frames, not recovery bugs.
fn mutate(segments: &mut [(String, Vec<u8>)], data: &[u8]) {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let total: usize = segments.iter().map(|(_, bytes)| bytes.len()).sum();
    let mut at = u32::from_le_bytes([byte(1), byte(2), byte(3), byte(4)]) as usize % total;
    let argument = u16::from_le_bytes([byte(5), byte(6)]);
    for (_, bytes) in segments.iter_mut() {
        if at >= bytes.len() {
            at -= bytes.len();
            continue;
        }
        match byte(0) % 3 {
            0 => bytes.truncate(at),
            1 => bytes[at] ^= (argument as u8).max(1),
            _ => {
                let end = (at + 1 + usize::from(argument) % DUPLICATE_BYTES_MAX).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
        return;
    }
}

// ---------------------------------------------------------------------------
// store_model: operations and the model
// ---------------------------------------------------------------------------

/// One operation of `store_model`. The input is a run of operations, each
/// an opcode byte and a few argument bytes (missing ones read as 0):
///
/// ```text
/// opcode % 6   arguments                         operation
/// 0            aggregate count expected size     append to one aggregate
/// 1            aggregate count expected size     append to that aggregate and the next, atomically
/// 2            extra                             retry the last successful append (S6); extra odd: plus one new event
/// 3                                              close and reopen the store
/// 4            milliseconds                      set the wall clock to CLOCK_START_MS + 16 * ms
/// 5            aggregate from limit              read_aggregate, read_aggregate_backward, read_all, get
/// ```
///
/// `count % 4 + 1` events per aggregate, `size * 8` bytes of data each;
/// `expected % 4` is Any, NoStream, Exact(current), Exact(current ^ 1).
#[derive(Debug)]
enum Op {
    Append(Vec<AggregateEvents>),
    Reopen,
    SetClock(u64),
    Read { agg: u8, from: u8, limit: u8 },
}

impl Op {
    /// The next operation, consuming its bytes.
    fn decode(input: &mut &[u8], model: &Model) -> Option<Op> {
        let (&opcode, rest) = input.split_first()?;
        *input = rest;
        let mut arg = || {
            let (&b, rest) = input.split_first().unwrap_or((&0, &[]));
            *input = rest;
            b
        };
        let op = match opcode % 6 {
            k @ (0 | 1) => {
                let (agg, count, expected, size) = (arg(), arg(), arg(), arg());
                let mut groups = vec![model.group(agg, count, expected, size, 0)];
                if k == 1 {
                    let next = (agg % MODEL_AGGREGATES + 1) % MODEL_AGGREGATES;
                    groups.push(model.group(next, count, expected, size, 1));
                }
                Op::Append(groups)
            }
            2 => {
                let extra = arg();
                let Some((mut groups, _)) = model.last_append.clone() else {
                    return Some(Op::Reopen);
                };
                if extra % 2 == 1 {
                    for g in &mut groups {
                        g.expected = ExpectedVersion::Any;
                    }
                    groups[0].events.push(model.new_event(2, 0));
                }
                Op::Append(groups)
            }
            3 => Op::Reopen,
            4 => Op::SetClock(CLOCK_START_MS + 16 * u64::from(arg())),
            _ => Op::Read {
                agg: arg(),
                from: arg(),
                limit: arg(),
            },
        };
        Some(op)
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Every event in the log, in position order.
    events: Vec<Event>,
    /// The last value the store's clock handed out: `(physical, counter)`.
    hlc_last: (u64, u32),
    /// The last append that succeeded, and what it returned.
    last_append: Option<(Vec<AggregateEvents>, Vec<Committed>)>,
    /// Event ids handed out so far.
    ids: u128,
}

impl Model {
    fn aggregate(k: u8) -> String {
        format!("agg-{}", k % MODEL_AGGREGATES)
    }

    fn version(&self, aggregate_id: &str) -> u64 {
        let last = self
            .events
            .iter()
            .rev()
            .find(|e| e.aggregate_id == aggregate_id);
        last.map_or(0, |e| e.version)
    }

    /// A fresh event. Ids are scrambled, not increasing, so that appends
    /// also look ids up in the index rather than only in the tail.
    fn new_event(&self, size: u8, offset: u128) -> NewEvent {
        let n = self.ids + offset + 1;
        let id = Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        let data = vec![b'a' + (n % 26) as u8; usize::from(size) * 8];
        let event = NewEvent::new(format!("T{}", n % 3), data).with_id(id);
        match size % 3 {
            0 => event,
            1 => event.with_metadata(Vec::new()),
            _ => event.with_metadata(b"{\"m\":1}".to_vec()),
        }
    }

    fn group(&self, agg: u8, count: u8, expected: u8, size: u8, nth: u128) -> AggregateEvents {
        let aggregate_id = Model::aggregate(agg);
        let current = self.version(&aggregate_id);
        let n = u128::from(count % 4 + 1);
        AggregateEvents {
            expected: match expected % 4 {
                0 => ExpectedVersion::Any,
                1 => ExpectedVersion::NoStream,
                2 => ExpectedVersion::Exact(current),
                _ => ExpectedVersion::Exact(current ^ 1),
            },
            events: (0..n).map(|i| self.new_event(size, nth * 4 + i)).collect(),
            aggregate_id,
        }
    }

    /// What `Store::append_batch` must return, applied to the model: events
    /// whose id is in the log are not written again; if all are, nothing
    /// is checked. Otherwise each aggregate with new events checks its
    /// expectation, in order; a conflict is `(aggregate_id, current
    /// version)` and leaves the clock as it was. Once every check passed,
    /// the new events are stamped in order (the model's events bring no
    /// timestamps of their own).
    fn append(
        &mut self,
        groups: &[AggregateEvents],
        wall: u64,
    ) -> Result<Vec<Committed>, (String, u64)> {
        self.ids += 8;
        let known = |events: &[Event], id| events.iter().find(|e| e.event_id == id).cloned();
        let mut fresh: Vec<Event> = Vec::new();
        for g in groups {
            let new: Vec<&NewEvent> = g
                .events
                .iter()
                .filter(|e| known(&self.events, e.event_id).is_none())
                .collect();
            if new.is_empty() {
                continue;
            }
            let current = self.version(&g.aggregate_id);
            if !g.expected.admits(current) {
                return Err((g.aggregate_id.clone(), current));
            }
            for (i, e) in new.into_iter().enumerate() {
                fresh.push(Event {
                    position: (self.events.len() + fresh.len() + 1) as u64,
                    event_id: e.event_id,
                    aggregate_id: g.aggregate_id.clone(),
                    version: current + 1 + i as u64,
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    // Stamped below, once the whole batch holds.
                    timestamp: Timestamp::from_parts(0, 0, NODE).expect("valid"),
                    metadata: e.metadata.clone(),
                });
            }
        }
        for e in &mut fresh {
            self.hlc_last = if wall > self.hlc_last.0 {
                (wall, 0)
            } else {
                (self.hlc_last.0, self.hlc_last.1 + 1)
            };
            e.timestamp =
                Timestamp::from_parts(self.hlc_last.0, self.hlc_last.1, NODE).expect("valid");
        }
        let committed: Vec<Committed> = groups
            .iter()
            .flat_map(|g| &g.events)
            .map(|e| {
                let (event, existed) = match known(&self.events, e.event_id) {
                    Some(event) => (event, true),
                    None => (known(&fresh, e.event_id).expect("fresh"), false),
                };
                Committed {
                    event_id: e.event_id,
                    position: event.position,
                    version: event.version,
                    existed,
                }
            })
            .collect();
        self.events.extend(fresh);
        self.last_append = Some((groups.to_vec(), committed.clone()));
        Ok(committed)
    }

    /// A reopened store restores its clock from the largest timestamp in
    /// the log, so the ticks of failed appends are forgotten.
    fn reopened(&mut self) {
        self.hlc_last = self
            .events
            .iter()
            .map(|e| (e.timestamp.physical_ms(), e.timestamp.counter()))
            .max()
            .unwrap_or((0, 0));
    }

    /// Reads by aggregate (both ways), by position and by id agree with
    /// the model.
    fn check_reads(&self, store: &Store, agg: u8, from: u8, limit: u8) {
        let aggregate_id = Model::aggregate(agg);
        let mine: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| e.aggregate_id == aggregate_id)
            .collect();
        let (from_version, limit) = (u64::from(from % 8), usize::from(limit % 8) + 1);
        let forward = store
            .read_aggregate(&aggregate_id, from_version, limit)
            .expect("read");
        let want: Vec<&Event> = mine
            .iter()
            .copied()
            .filter(|e| e.version >= from_version)
            .take(limit)
            .collect();
        assert_eq!(forward.iter().collect::<Vec<_>>(), want);
        let backward = store
            .read_aggregate_backward(&aggregate_id, limit)
            .expect("read");
        let want: Vec<&Event> = mine.iter().rev().copied().take(limit).collect();
        assert_eq!(backward.iter().collect::<Vec<_>>(), want);
        let version = store.aggregate_version(&aggregate_id).expect("read");
        assert_eq!(version, self.version(&aggregate_id));
        let from_position = u64::from(from) % (self.events.len() as u64 + 2);
        let all: Vec<Event> = store
            .read_all(from_position)
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(all[..], self.events[from_position.max(1) as usize - 1..]);
        if let Some(e) = self
            .events
            .get(usize::from(from) % self.events.len().max(1))
        {
            assert_eq!(store.get(e.event_id).expect("get").as_ref(), Some(e));
        }
        assert_eq!(store.get(Uuid::from_u128(u128::MAX)).expect("get"), None);
    }
}

// ---------------------------------------------------------------------------
// Sync: the readers of untrusted network bytes
// ---------------------------------------------------------------------------

/// Token the seed server of `seed_json` requires.
pub const SYNC_TOKEN: &str = "fuzz-token";
/// Event type the push policy of the fuzzed servers refuses.
pub const FORBIDDEN_EVENT_TYPE: &str = "Forbidden";
/// Largest event data those servers accept, so that short inputs reach
/// the limit.
pub const SYNC_DATA_BYTES_MAX: usize = 64;
/// Most operations one `server_core` or `replica_core` input runs, and
/// most lines of one `seed_json` input.
const SYNC_OPS_MAX: usize = 48;
/// Clients of `server_core`. Three, one more than a commit takes
/// ([`ServerConfig::commit_pushes_max`] is 2 there), so that inputs reach
/// that limit.
const SERVER_CLIENTS: usize = 3;
/// Most steps [`Shell::settle`] takes (commits and turns running out); a
/// core that needs more never comes to rest.
const SETTLE_STEPS_MAX: usize = 256;
/// Ids of the events another node appends to the shared log start after
/// this, far from the ids clients push (1 to 32).
const FOREIGN_ID_BASE: u128 = 0xf0_0000_0000;
/// Time between two lines of `seed_json`.
const SEED_LINE_MS: u64 = 100;
/// Store ids the server of `replica_core` claims: the first, or another.
const SERVER_STORE_IDS: [Uuid; 2] = [Uuid::from_u128(0x5e4e_0001), Uuid::from_u128(0x5e4e_0002)];
/// Node of the timestamps the fuzzed servers and replicas receive.
const REMOTE_NODE: &str = "remote";
/// An hour: far beyond the HLC's default drift limit of a minute.
const HOUR_MS: u64 = 3_600_000;
/// A short `retry_after_ms` of `replica_core`'s `PullRequired` (the
/// largest wait the server sent before the core held pushes instead).
const RETRY_AFTER_MS_SHORT: u64 = 25;

/// Arbitrary bytes as the payload of a wire message (the length prefix
/// already taken off), decoded as a [`ClientMessage`] and as a
/// [`ServerMessage`]. Bad bytes are an `Err`; a decoded message encodes
/// back to the same bytes (see [`check_wire`] for the one exception, an
/// unpadded timestamp) and decodes to itself again.
pub fn sync_wire(data: &[u8]) {
    check_wire::<ClientMessage>(data);
    check_wire::<ServerMessage>(data);
}

/// A run of operations (see [`ServerOp`]) of three clients of a
/// [`ServerCore`] over a real store, the harness playing the shell (see
/// [`Shell`]): it numbers the requests, carries out the core's group
/// commits on the store (some fail, some stay in flight while clients go
/// on), and follows the log for each client as the QUIC shell does, raw
/// records for the second and events for the others, from where the
/// client asked and without gaps. Every message and every commit is
/// checked as it happens (see [`Shell`]); at the end the core is driven
/// until it is quiet, every push has had its final answer, the follow
/// streams reach the head, and the log reads back whole.
pub fn server_core(data: &[u8]) {
    let dir = temp_dir();
    let mut shell = Shell::open(dir.path());
    let mut conns: Vec<Conn> = (0..SERVER_CLIENTS)
        .map(|slot| Conn {
            id: shell.connect(true),
            raw: slot == 1,
            follow: None,
            last_push: None,
        })
        .collect();
    let mut input = data;
    for _ in 0..SYNC_OPS_MAX {
        let Some((slot, op)) = ServerOp::decode(&mut input, shell.now) else {
            break;
        };
        let conn = &mut conns[slot];
        match op {
            ServerOp::Push(events) => conn.push(&mut shell, events),
            ServerOp::Retry => {
                if let Some(events) = conn.last_push.clone() {
                    conn.push(&mut shell, events);
                }
            }
            ServerOp::Follow(from) => conn.follow = Some(from.max(1)),
            ServerOp::Storage(k) => shell.storage(k),
            ServerOp::Wait(ms) => {
                shell.wait(ms);
            }
            ServerOp::Reconnect { raw, may_write } => {
                shell.disconnect(conn.id);
                // A new connection gets a new id, as in the shells; the
                // client still has its last push, to send again.
                *conn = Conn {
                    id: shell.connect(may_write),
                    raw,
                    follow: None,
                    last_push: conn.last_push.take(),
                };
            }
            ServerOp::Poll => conn.poll(&shell),
            ServerOp::Skip => {}
        }
        shell.check();
    }
    shell.settle(|_, _| {});
    for conn in &mut conns {
        conn.poll(&shell);
    }
    shell.close();
}

/// Server messages (see [`ReplicaOp`]), arbitrary wire payloads among
/// them, handled by a [`ReplicaCore`] over a real [`Replica`] that has
/// pending local events. Errors are allowed (the shell then reconnects);
/// panics and hangs are not. Every push the core sends numbers each
/// aggregate's events right after its committed version. Afterwards the
/// replica closes and reopens, and its committed log reads back from
/// position 1 without gaps, errors or repeated event ids, each aggregate
/// at versions 1 to n.
pub fn replica_core(data: &[u8]) {
    let dir = temp_dir();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let options = ReplicaOptions {
        store: seed_options(Durability::None, clock.clone()),
        ..ReplicaOptions::default()
    };
    let replica = Replica::open(dir.path(), options.clone()).expect("open");
    let mut r = ReplicaSide {
        replica,
        core: ReplicaCore::new(ReplicaConfig {
            push_events_max: 2,
            ..ReplicaConfig::new("default", NODE)
        }),
        clock,
        now: CLOCK_START_MS,
        ids: 0,
        last_request: 0,
    };
    for agg in [0, 0, 1] {
        r.append_local(agg);
    }
    r.core.handle_connected(&r.replica.storage());
    r.drain();
    let mut input = data;
    for _ in 0..SYNC_OPS_MAX {
        let Some(op) = ReplicaOp::decode(&mut input) else {
            break;
        };
        r.run(op);
        let _ = r.core.status(&r.replica.storage(), r.now);
    }
    let ReplicaSide { replica, .. } = r;
    replica.close().expect("the replica closes");
    let replica = Replica::open(dir.path(), options).expect("the replica reopens");
    check_log(replica.committed());
    replica.close().expect("the reopened replica closes");
}

/// UTF-8 text, one line a message, from two seed-protocol clients of one
/// server, the harness playing the WebSocket shell over a [`Shell`]: lines
/// starting with `>` go to the second connection, which has to send `auth`
/// first (read with [`Auth::parse`] and the token compared, as the shell
/// does; a refusal ends the connection and the client connects again); the
/// first is authenticated already. A [`SeedSession`] turns each message
/// into a reply or a push; pushes go through the [`ServerCore`], and the
/// shell carries out its commits after each line, then polls both
/// sessions' broadcasts. A few lines are the shell's, not messages (see
/// [`SeedControl`]). Checked: every message sent is JSON with a `type`;
/// every event it names is in the store at the position it gives, with
/// `event_data` and `metadata` byte for byte as stored; each session's
/// stream of events goes on without gaps; every message of a client is
/// answered, and each push ends with exactly one `server_sync_response` or
/// `error` (after `rejected` errors naming its events), which says what
/// the core answered; a push carries the exact bytes of the `event_data`
/// and `metadata` texts sent, and the store ends holding those bytes, each
/// aggregate at versions 1 to n. The core's answers and commits are
/// checked as in [`server_core`].
pub fn seed_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = temp_dir();
    let mut shell = Shell::open(dir.path());
    let mut sides = [
        SeedSide::new(&mut shell, true),
        SeedSide::new(&mut shell, false),
    ];
    let mut verbatim = Verbatim::default();
    let mut hold = false;
    let mut fate = CommitFate::Done;
    for line in text.split('\n').take(SYNC_OPS_MAX) {
        let (slot, line) = match line.strip_prefix('>') {
            Some(rest) => (1, rest),
            None => (0, line),
        };
        match SeedControl::parse(line) {
            Some(SeedControl::Hold) => hold = true,
            Some(SeedControl::Commit) => hold = false,
            Some(SeedControl::Fail(f)) => fate = f,
            Some(SeedControl::Drop) => sides[slot].reconnect(&mut shell, slot == 0),
            Some(SeedControl::LeasePasses) => {
                let sent = shell.wait(shell.core.config().lease_ms);
                seed_route(&mut sides, &shell.store, sent);
            }
            None => seed_line(&mut shell, &mut sides, slot, line, &mut verbatim),
        }
        if !hold {
            while let Some(sent) = shell.commit(fate) {
                fate = CommitFate::Done;
                seed_route(&mut sides, &shell.store, sent);
            }
        }
        seed_broadcast(&mut sides, &shell.store);
        let sent = shell.wait(SEED_LINE_MS);
        seed_route(&mut sides, &shell.store, sent);
        shell.check();
    }
    shell.settle(|store, sent| {
        seed_route(&mut sides, store, sent);
        seed_broadcast(&mut sides, store);
    });
    seed_broadcast(&mut sides, &shell.store);
    for side in &sides {
        side.check_settled(&shell.store);
    }
    verbatim.check(&shell.store);
    shell.close();
}

/// The configuration of the fuzzed servers: small limits so that short
/// inputs reach them (4 events a push, 64 bytes of data, 2 pushes a
/// commit, 3 events and 512 bytes a follow message), a short lease and a
/// push policy.
fn sync_server_config() -> ServerConfig {
    ServerConfig {
        limits: Limits {
            event_data_bytes_max: SYNC_DATA_BYTES_MAX,
            ..Limits::default()
        },
        push_events_max: 4,
        message_events_max: 3,
        message_bytes_max: 512,
        lease_ms: 500,
        commit_pushes_max: 2,
        policy: Some(Arc::new(RefuseForbidden)),
        log_keeps_turns: false,
    }
}

/// Refuses events of type [`FORBIDDEN_EVENT_TYPE`].
#[derive(Debug)]
struct RefuseForbidden;

impl PushPolicy for RefuseForbidden {
    fn check(&self, _client: &str, event: &Proposal) -> Result<(), String> {
        if event.event_type == FORBIDDEN_EVENT_TYPE {
            return Err("refused by the fuzz policy".into());
        }
        Ok(())
    }
}

/// One message type of `sync_wire`.
///
/// bincode's serde mode with fixed-width integers gives every value one
/// encoding (tags, lengths and integers have fixed widths, an `Option` tag
/// or a `bool` other than 0 or 1 is refused, strings must be UTF-8, a UUID
/// must be 16 bytes), but for one field: a [`Timestamp`] travels as its
/// text, and the parser takes unpadded parts (`1:0:n`) while the encoder
/// writes the fixed width. An unpadded part is never longer than the fixed
/// one, so re-encoding can only lengthen a message, and does so exactly
/// when some timestamp was unpadded: equal lengths mean equal bytes.
fn check_wire<T>(data: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let Ok(msg) = wire::decode::<T>(data) else {
        return;
    };
    let mut framed = Vec::new();
    wire::encode(&msg, &mut framed).expect("a decoded message encodes");
    let prefix = framed[..wire::LENGTH_BYTES].try_into().expect("a prefix");
    let again = &framed[wire::LENGTH_BYTES..];
    assert_eq!(
        wire::payload_len(prefix).expect("within the limit"),
        again.len()
    );
    assert!(
        again.len() >= data.len(),
        "re-encoding shortened {msg:?} from {} to {} bytes",
        data.len(),
        again.len()
    );
    if again.len() == data.len() {
        assert_eq!(again, data, "{msg:?} re-encodes differently");
    }
    let back = wire::decode::<T>(again).expect("a re-encoded message decodes");
    assert_eq!(back, msg);
    let mut twice = Vec::new();
    wire::encode(&back, &mut twice).expect("encodes");
    assert_eq!(twice, framed);
    // Messages delimit themselves: a byte more is trailing, a byte less is
    // not a message.
    let mut longer = data.to_vec();
    longer.push(0);
    assert!(matches!(
        wire::decode::<T>(&longer),
        Err(WireError::Trailing(1))
    ));
    assert!(wire::decode::<T>(&data[..data.len() - 1]).is_err());
}

/// The committed log of a store reads back from position 1 to the head
/// without gaps or errors, with distinct event ids and each aggregate at
/// versions 1 to n.
fn check_log(store: &Store) {
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut ids = HashSet::new();
    let mut position = 0;
    for event in store.read_all(1) {
        let e = event.expect("the committed log reads back");
        position += 1;
        assert_eq!(e.position, position);
        let version = versions.entry(e.aggregate_id.clone()).or_default();
        *version += 1;
        assert_eq!(e.version, *version, "versions of {:?}", e.aggregate_id);
        assert!(ids.insert(e.event_id), "event id {} twice", e.event_id);
    }
    assert_eq!(position, store.head());
}

/// Takes the next byte of an input; missing bytes read as 0.
fn next_byte(input: &mut &[u8]) -> u8 {
    let (&b, rest) = input.split_first().unwrap_or((&0, &[]));
    *input = rest;
    b
}

/// Takes a chunk: a `u16` LE length, then that many bytes (fewer if the
/// input ends first); length `0xffff` takes the rest of the input, so that
/// a chunk can be longer.
fn next_chunk<'a>(input: &mut &'a [u8]) -> &'a [u8] {
    let len = match u16::from_le_bytes([next_byte(input), next_byte(input)]) {
        u16::MAX => input.len(),
        len => usize::from(len),
    };
    let (chunk, rest) = input.split_at(len.min(input.len()));
    *input = rest;
    chunk
}

fn remote_timestamp(physical_ms: u64, counter: u32) -> Timestamp {
    Timestamp::from_parts(physical_ms, counter, REMOTE_NODE).expect("valid")
}

// ---------------------------------------------------------------------------
// The harness as a server shell (server_core and seed_json)
// ---------------------------------------------------------------------------

/// How a commit the shell carries out goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommitFate {
    /// The log appends what holds, and says so.
    Done,
    /// The log fails before writing anything.
    FailsBeforeWrite,
    /// The log writes, then fails (an acknowledgement lost): the core hears
    /// `Unavailable`, yet the events are in the log, and a retry must find
    /// them there.
    FailsAfterWrite,
}

/// A push waiting for its final answer.
#[derive(Debug)]
struct Waiting {
    client: ClientId,
    request: u64,
    events: Vec<Proposal>,
    /// The events its `Rejected` named, once that came.
    rejected: Option<Vec<Uuid>>,
}

/// A commit carried out on the log and not yet handed back to the core.
#[derive(Debug)]
struct InFlight {
    id: u64,
    result: Result<CommitResult, StorageError>,
    /// The log's head before the commit, the events it appended, and the
    /// head right after them.
    head_before: u64,
    appended: Vec<Event>,
    head_after: u64,
}

/// What the shell was doing when the core sent a message.
#[derive(Debug, Clone, Copy)]
enum Cause {
    /// Handing it push `request` of `client`.
    Push { client: ClientId, request: u64 },
    /// Handing back a commit (`failed`: with an error) that found the log
    /// at `head_before`.
    Committed { failed: bool, head_before: u64 },
    /// Anything else.
    Other,
}

/// A message the core sent.
#[derive(Debug)]
struct Sent {
    client: ClientId,
    msg: ServerMessage,
    /// The request whose final answer it is.
    ended: Option<u64>,
}

/// The harness as the shell of a [`ServerCore`] over a real store: it
/// connects clients, hands the core their pushes, carries out the core's
/// group commits with [`CanonicalLog::append_pushes`] and hands back the
/// results, lets time pass, and plays another node appending to a shared
/// log. It keeps every push until its final answer, and checks:
///
/// * messages go only to connected clients, and are answers: a push gets
///   at most one `Rejected` (naming its own events), then exactly one
///   final answer; an `Error` is non-fatal, `Unauthorized` exactly for a
///   read-only client and `TooLarge` exactly for a push over the limits or
///   past [`PUSHES_WAITING_PER_CLIENT_MAX`], both at once, and
///   `Unavailable` only for a failed commit;
/// * `Accepted` places or rejects every event of the push, each placement
///   at the position and version the store holds it, with the content this
///   push gave it (an id re-used with other content is rejected, never
///   placed); `PullRequired` names aggregates of the push, none at a version
///   below the one it had before the commit; a rejected event was not
///   appended by its push;
/// * each push of a commit is what is left of the oldest waiting push of
///   its client, one client a push, at most `commit_pushes_max` of them;
///   a commit appends only events of its pushes, exactly as pushed; and
///   after a commit that went well, each event it appended is placed by an
///   `Accepted` in its answers (unless its client left), so a push
///   answered otherwise appended nothing of its own;
/// * the heads answers report never go back and never pass the store's;
///   `HeadMoved` grows and wakes the followers up to every commit's head;
///   the store's head never goes back; the turn is never held by a client
///   that left;
/// * at the end ([`Shell::settle`]) the core comes to rest with every
///   push answered, and ([`Shell::close`]) the log reads back whole and
///   holds nothing the server refuses for good.
struct Shell {
    store: Store,
    clock: Arc<ManualClock>,
    core: ServerCore,
    now: u64,
    /// Connected clients, and whether each may write.
    clients: HashMap<ClientId, bool>,
    next_client: ClientId,
    next_request: u64,
    /// Pushes without their final answer, oldest first.
    waiting: Vec<Waiting>,
    /// Every push ever made: `(client, request, events)`.
    history: Vec<(ClientId, u64, Vec<Proposal>)>,
    /// Events of pushes whose client left before their answer: a commit
    /// in flight may still append them, unannounced.
    orphans: Vec<Proposal>,
    in_flight: Option<InFlight>,
    /// The head the followers were woken up to (by `HeadMoved`, or by the
    /// shell itself for appends of another node).
    published: u64,
    /// The head of the last `HeadMoved`.
    head_moved: u64,
    /// The highest head an answer reported.
    answered_head: u64,
    /// The store's head when last checked.
    head_seen: u64,
    /// Events another node appended.
    foreign: u128,
}

impl Shell {
    fn open(dir: &Path) -> Shell {
        let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
        let store = Store::open(dir, seed_options(Durability::None, clock.clone())).expect("open");
        let config = sync_server_config();
        config
            .validate()
            .expect("the fuzz server's settings are valid");
        let core = ServerCore::new(config, store.head());
        Shell {
            store,
            clock,
            core,
            now: CLOCK_START_MS,
            clients: HashMap::new(),
            next_client: 1,
            next_request: 1,
            waiting: Vec::new(),
            history: Vec::new(),
            orphans: Vec::new(),
            in_flight: None,
            published: 0,
            head_moved: 0,
            answered_head: 0,
            head_seen: 0,
            foreign: 0,
        }
    }

    /// An authenticated connection.
    fn connect(&mut self, may_write: bool) -> ClientId {
        let id = self.next_client;
        self.next_client += 1;
        self.clients.insert(id, may_write);
        self.core.handle_connect(
            id,
            ClientInfo {
                name: format!("fuzz-{id}"),
                may_write,
            },
        );
        self.drain(Cause::Other);
        id
    }

    /// The connection is gone; its waiting pushes will never be answered.
    fn disconnect(&mut self, client: ClientId) {
        self.core.handle_disconnect(self.now, client);
        self.clients.remove(&client);
        let (gone, kept) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w: &Waiting| w.client == client);
        self.waiting = kept;
        self.orphans.extend(gone.into_iter().flat_map(|w| w.events));
        self.drain(Cause::Other);
    }

    /// A request number for the `server_core` clients. The shell numbers
    /// requests itself, so that it can tell their answers apart; the core
    /// only echoes them.
    fn next_request(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request - 1
    }

    /// Hands the core a push of a connected client. A push that may not
    /// wait (a read-only client, over the limits, too many waiting) is
    /// refused at once; any other push answered at once had nothing left
    /// to append.
    fn push(&mut self, client: ClientId, request: u64, events: Vec<Proposal>) -> Vec<Sent> {
        let may_write = self.clients[&client];
        let config = self.core.config();
        let waiting = self.waiting.iter().filter(|w| w.client == client).count();
        let bytes: usize = events.iter().map(Proposal::size_bytes).sum();
        let refusal = if !may_write {
            Some(ErrorCode::Unauthorized)
        } else if waiting >= PUSHES_WAITING_PER_CLIENT_MAX
            || events.len() > config.push_events_max
            || bytes > config.limits.batch_bytes_max
        {
            Some(ErrorCode::TooLarge)
        } else {
            None
        };
        assert!(
            self.find(client, request).is_none(),
            "request {request} of client {client} is waiting already"
        );
        self.history.push((client, request, events.clone()));
        self.waiting.push(Waiting {
            client,
            request,
            events: events.clone(),
            rejected: None,
        });
        self.core.handle_push(self.now, client, request, events);
        let sent = self.drain(Cause::Push { client, request });
        let answer = sent
            .iter()
            .find(|s| s.client == client && s.ended == Some(request))
            .map(|s| &s.msg);
        match (refusal, answer) {
            (None, None) => {}
            (None, Some(ServerMessage::Accepted { placed, .. })) if placed.is_empty() => {}
            (Some(want), Some(ServerMessage::Error { code, .. })) if *code == want => {}
            (want, got) => panic!(
                "push {request} of client {client} (waiting {waiting}, {bytes} bytes): expected {want:?} at once, got {got:?}"
            ),
        }
        sent
    }

    /// Carries out the next commit, or completes the one in flight. `None`
    /// when there is none to carry out.
    fn commit(&mut self, fate: CommitFate) -> Option<Vec<Sent>> {
        if self.in_flight.is_none() && !self.start_commit(fate) {
            return None;
        }
        self.finish_commit()
    }

    /// Takes the core's next commit and carries it out on the log, as the
    /// committer does; its result waits in flight. False if the core has
    /// no commit to give.
    fn start_commit(&mut self, fate: CommitFate) -> bool {
        assert!(self.in_flight.is_none(), "one commit at a time");
        let Some(commit) = self.core.poll_commit() else {
            return false;
        };
        self.check_commit_pushes(&commit.pushes);
        let before = self.store.head();
        let result = match fate {
            CommitFate::FailsBeforeWrite => Err(StorageError::Unavailable {
                reason: "the fuzz log fails before writing".into(),
            }),
            CommitFate::Done | CommitFate::FailsAfterWrite => {
                // A healthy store never fails a commit as a whole: one
                // client's push must not fail the others'.
                let result = self
                    .store
                    .append_pushes(&commit.pushes)
                    .unwrap_or_else(|e| panic!("a healthy log failed the commit {commit:?}: {e}"));
                assert_eq!(
                    result.outcomes.len(),
                    commit.pushes.len(),
                    "one outcome a push"
                );
                assert_eq!(result.head, self.store.head());
                if fate == CommitFate::Done {
                    Ok(result)
                } else {
                    Err(StorageError::Unavailable {
                        reason: "the fuzz log lost the acknowledgement".into(),
                    })
                }
            }
        };
        let head_after = self.store.head();
        let appended: Vec<Event> = self
            .store
            .read_all(before + 1)
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(appended.len() as u64, head_after - before);
        for e in &appended {
            assert!(
                commit
                    .pushes
                    .iter()
                    .flat_map(|p| p.events.iter())
                    .any(|p| is_proposal(p, e)),
                "the commit appended {e:?}, which none of its pushes holds as such"
            );
        }
        self.in_flight = Some(InFlight {
            id: commit.id,
            result,
            head_before: before,
            appended,
            head_after,
        });
        true
    }

    /// Hands the commit in flight back to the core.
    fn finish_commit(&mut self) -> Option<Vec<Sent>> {
        let f = self.in_flight.take()?;
        let failed = f.result.is_err();
        self.core.handle_committed(self.now, f.id, f.result);
        let sent = self.drain(Cause::Committed {
            failed,
            head_before: f.head_before,
        });
        if !failed {
            let placed: HashSet<(Uuid, u64)> = sent
                .iter()
                .filter_map(|s| match &s.msg {
                    ServerMessage::Accepted { placed, .. } => Some(placed),
                    _ => None,
                })
                .flatten()
                .map(|p| (p.event_id, p.position))
                .collect();
            for e in &f.appended {
                assert!(
                    placed.contains(&(e.event_id, e.position))
                        || self.orphans.iter().any(|p| is_proposal(p, e)),
                    "the commit appended {e:?}, yet no answer placed it: {sent:?}"
                );
            }
            if !f.appended.is_empty() {
                assert!(
                    self.published >= f.head_after,
                    "a commit moved the head to {}, but the followers were woken up to {} only",
                    f.head_after,
                    self.published
                );
            }
        }
        Some(sent)
    }

    /// Each push of a commit is what is left (some events refused) of the
    /// oldest waiting push of a connected client, one client a push.
    fn check_commit_pushes(&self, pushes: &[Push]) {
        assert!(!pushes.is_empty());
        assert!(pushes.len() <= self.core.config().commit_pushes_max);
        let mut oldest: Vec<&Waiting> = Vec::new();
        for w in &self.waiting {
            if !oldest.iter().any(|o| o.client == w.client) {
                oldest.push(w);
            }
        }
        fn assign(pushes: &[Push], oldest: &[&Waiting], used: &mut [bool]) -> bool {
            let Some((push, rest)) = pushes.split_first() else {
                return true;
            };
            for (i, w) in oldest.iter().enumerate() {
                if !used[i]
                    && w.client == push.client
                    && push.events.iter().all(|p| w.events.contains(p))
                {
                    used[i] = true;
                    if assign(rest, oldest, used) {
                        return true;
                    }
                    used[i] = false;
                }
            }
            false
        }
        for push in pushes {
            assert!(!push.events.is_empty(), "an empty push in a commit");
        }
        let mut used = vec![false; oldest.len()];
        assert!(
            assign(pushes, &oldest, &mut used),
            "the commit {pushes:?} is not made of the oldest waiting pushes of distinct clients: {:?}",
            self.waiting
        );
    }

    /// Time passes by `ms`, on the server and the store's clock.
    fn wait(&mut self, ms: u64) -> Vec<Sent> {
        self.now += ms;
        self.clock.set(self.now);
        self.core.handle_timeout(self.now);
        self.drain(Cause::Other)
    }

    /// Another node of a shared log appends an event to `agg-{k % 3}`; the
    /// shell learns the new head, tells the core and wakes its followers.
    fn foreign_append(&mut self, k: u8) {
        self.foreign += 1;
        let event = NewEvent::new("Foreign", b"{}".to_vec())
            .with_id(Uuid::from_u128(FOREIGN_ID_BASE + self.foreign));
        self.store
            .append(&format!("agg-{}", k % 3), ExpectedVersion::Any, vec![event])
            .expect("another node appends");
        let head = self.store.head();
        self.core.handle_head(head);
        self.published = self.published.max(head);
        self.drain(Cause::Other);
    }

    /// Takes what the core sends and reports, checking each message.
    fn drain(&mut self, cause: Cause) -> Vec<Sent> {
        let mut sent = Vec::new();
        while let Some((client, msg)) = self.core.poll_transmit() {
            let ended = self.on_message(cause, client, &msg);
            sent.push(Sent { client, msg, ended });
        }
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::HeadMoved { head } => {
                    assert!(
                        head > self.head_moved,
                        "HeadMoved from {} to {head}",
                        self.head_moved
                    );
                    assert!(
                        head <= self.store.head(),
                        "HeadMoved to {head}, past the log's head"
                    );
                    self.head_moved = head;
                    self.published = self.published.max(head);
                }
                CoreEvent::LeftTurn { client } => {
                    panic!("client {client} left a turn the log keeps, but this log keeps none")
                }
                other => panic!("a core event this harness does not know: {other:?}"),
            }
        }
        sent
    }

    fn find(&self, client: ClientId, request: u64) -> Option<usize> {
        self.waiting
            .iter()
            .position(|w| w.client == client && w.request == request)
    }

    fn take(&mut self, client: ClientId, request: u64, msg: &ServerMessage) -> Waiting {
        let i = self
            .find(client, request)
            .unwrap_or_else(|| panic!("{msg:?} to client {client} answers no waiting push"));
        self.waiting.remove(i)
    }

    /// Checks one message and returns the request it ended.
    fn on_message(&mut self, cause: Cause, client: ClientId, msg: &ServerMessage) -> Option<u64> {
        assert!(
            self.clients.contains_key(&client),
            "{msg:?} sent to client {client}, which left"
        );
        match msg {
            ServerMessage::Rejected {
                request,
                rejections,
            } => {
                let i = self
                    .find(client, *request)
                    .unwrap_or_else(|| panic!("{msg:?} answers no waiting push"));
                let w = &mut self.waiting[i];
                assert!(w.rejected.is_none(), "a second Rejected for {w:?}: {msg:?}");
                assert!(!rejections.is_empty(), "{msg:?}");
                for (id, _) in rejections {
                    assert!(
                        w.events.iter().any(|e| e.event_id == *id),
                        "rejected {id}, which {w:?} did not push"
                    );
                }
                w.rejected = Some(rejections.iter().map(|(id, _)| *id).collect());
                None
            }
            ServerMessage::Accepted {
                request,
                placed,
                head,
            } => {
                let w = self.take(client, *request, msg);
                self.check_head(*head);
                let mut answered: HashSet<Uuid> = w.rejected.iter().flatten().copied().collect();
                let mut seen = HashSet::new();
                for p in placed {
                    assert!(seen.insert(p.event_id), "{p:?} placed twice: {msg:?}");
                    let e =
                        self.store.get(p.event_id).expect("get").unwrap_or_else(|| {
                            panic!("placed {p:?}, which the store does not hold")
                        });
                    assert_eq!((e.position, e.version), (p.position, p.version), "{p:?}");
                    assert!(p.position <= *head, "{msg:?}");
                    assert!(
                        w.events
                            .iter()
                            .any(|x| x.event_id == p.event_id && same_content(x, &e)),
                        "placed {p:?}, but the log holds other content under that id: {e:?}; pushed {w:?}"
                    );
                    answered.insert(p.event_id);
                }
                for e in &w.events {
                    assert!(
                        answered.contains(&e.event_id),
                        "{} neither placed nor rejected: {msg:?}",
                        e.event_id
                    );
                }
                self.check_rejected(&w, &seen);
                Some(*request)
            }
            ServerMessage::PullRequired {
                request,
                conflicts,
                head,
                ..
            } => {
                let w = self.take(client, *request, msg);
                self.check_head(*head);
                assert!(!conflicts.is_empty(), "{msg:?}");
                for (aggregate_id, version) in conflicts {
                    assert!(
                        w.events.iter().any(|e| e.aggregate_id == *aggregate_id),
                        "a conflict on {aggregate_id:?}, which {w:?} does not touch"
                    );
                    // The version is one the aggregate had during the
                    // commit (usually after it), or, for a gap in the
                    // push's own versions (v1 then v3), the version the
                    // push itself got to: never less than before the
                    // commit.
                    if let Cause::Committed { head_before, .. } = cause {
                        let before = version_at(&self.store, aggregate_id, head_before);
                        assert!(
                            *version >= before,
                            "{aggregate_id:?} was at {before} before the commit, not {version}: {msg:?}"
                        );
                    }
                }
                self.check_rejected(&w, &HashSet::new());
                Some(*request)
            }
            ServerMessage::Error { code, fatal, .. } => {
                assert!(!fatal, "a fatal error from the core: {msg:?}");
                // An error names no request: at a push it answers that
                // push; else the client's oldest waiting one, the only one
                // a commit can hold (a client's pushes go in order).
                let request = match cause {
                    Cause::Push { client: c, request } if c == client => request,
                    _ => {
                        self.waiting
                            .iter()
                            .find(|w| w.client == client)
                            .unwrap_or_else(|| {
                                panic!("{msg:?} to client {client}, who waits for nothing")
                            })
                            .request
                    }
                };
                let w = self.take(client, request, msg);
                match code {
                    ErrorCode::Unauthorized => {
                        assert!(!self.clients[&client], "{msg:?} to a client that may write");
                        assert!(
                            matches!(cause, Cause::Push { .. }),
                            "{msg:?} after {cause:?}"
                        );
                    }
                    ErrorCode::TooLarge => {
                        assert!(
                            matches!(cause, Cause::Push { .. }),
                            "{msg:?} after {cause:?}"
                        );
                    }
                    ErrorCode::Unavailable => assert!(
                        matches!(cause, Cause::Committed { failed: true, .. }),
                        "{msg:?} after {cause:?}"
                    ),
                    _ => panic!("the core refused a push with {msg:?}"),
                }
                self.check_rejected(&w, &HashSet::new());
                Some(request)
            }
            other => panic!("the core sent {other:?}; anything but answers is the shell's"),
        }
    }

    /// A head in an answer: never back, never past the log's.
    fn check_head(&mut self, head: u64) {
        assert!(
            head >= self.answered_head,
            "an answer's head went back from {} to {head}",
            self.answered_head
        );
        assert!(
            head <= self.store.head(),
            "an answer's head {head} is past the log's"
        );
        self.answered_head = head;
    }

    /// A push's rejected events (but those its answer also placed: a
    /// repeated id) were not appended by it: if the log holds one with the
    /// content this push gave it, another push gave it that content too.
    fn check_rejected(&self, w: &Waiting, placed: &HashSet<Uuid>) {
        for id in w.rejected.iter().flatten().filter(|id| placed.contains(id)) {
            let copies = w.events.iter().filter(|p| p.event_id == *id).count();
            assert!(copies >= 2, "{id} of {w:?} both placed and rejected");
        }
        for id in w
            .rejected
            .iter()
            .flatten()
            .filter(|id| !placed.contains(id))
        {
            let mut copies = w.events.iter().filter(|p| p.event_id == *id);
            let (Some(copy), None) = (copies.next(), copies.next()) else {
                // Which copy of a repeated id was refused is the core's
                // choice; the first may have gone in (in a commit that
                // then failed).
                continue;
            };
            let Some(held) = self.store.get(*id).expect("get") else {
                continue;
            };
            if !same_content(copy, &held) {
                continue;
            }
            let other = self.history.iter().any(|(c, r, events)| {
                (*c, *r) != (w.client, w.request)
                    && events
                        .iter()
                        .any(|p| p.event_id == *id && same_content(p, &held))
            });
            assert!(
                other,
                "rejected {id} of {w:?}, yet the log holds it: {held:?}"
            );
        }
    }

    /// After every operation: the head never goes back, and the turn is
    /// never held by a client that left (it would hold the others' pushes
    /// for nothing until its lease runs out).
    fn check(&mut self) {
        let head = self.store.head();
        assert!(
            head >= self.head_seen,
            "the head went back from {} to {head}",
            self.head_seen
        );
        self.head_seen = head;
        if let Some(holder) = self.core.turn_holder() {
            assert!(
                self.clients.contains_key(&holder),
                "client {holder} holds the turn, but it left"
            );
        }
    }

    /// Drives the core until it is quiet, handing what it sends to
    /// `route`: commits carried out, and while pushes wait that no commit
    /// takes (held for another client's turn), time moved to when the
    /// turn runs out. Then every push has had its final answer.
    fn settle(&mut self, mut route: impl FnMut(&Store, Vec<Sent>)) {
        for _ in 0..SETTLE_STEPS_MAX {
            if let Some(sent) = self.commit(CommitFate::Done) {
                route(&self.store, sent);
            } else if self.waiting.is_empty() {
                break;
            } else {
                let Some(at) = self.core.poll_timeout() else {
                    panic!(
                        "pushes wait, but the core neither commits them nor wants a timeout: {:?}",
                        self.waiting
                    );
                };
                let sent = self.wait(at.saturating_sub(self.now));
                route(&self.store, sent);
            }
            self.check();
        }
        assert!(
            self.waiting.is_empty(),
            "the core came to no rest, pushes unanswered: {:?}",
            self.waiting
        );
        assert!(self.in_flight.is_none());
    }

    /// At the end: the log holds nothing the server refuses for good (the
    /// policy's type, data over the limit, an empty aggregate), but what
    /// another node appended.
    fn close(self) {
        check_log(&self.store);
        for e in self.store.read_all(1) {
            let e = e.expect("read");
            assert_ne!(
                e.event_type, FORBIDDEN_EVENT_TYPE,
                "appended despite the policy: {e:?}"
            );
            assert!(
                e.data.len() <= SYNC_DATA_BYTES_MAX,
                "appended despite the limit: {e:?}"
            );
            assert!(
                !e.aggregate_id.is_empty(),
                "appended to no aggregate: {e:?}"
            );
        }
        self.store.close().expect("close");
    }
}

/// Whether `e` is `p` as appended: the same id, aggregate, version, type,
/// data, metadata and timestamp.
fn is_proposal(p: &Proposal, e: &Event) -> bool {
    p.event_id == e.event_id
        && p.version == e.version
        && p.timestamp == e.timestamp
        && same_content(p, e)
}

/// Whether `p` and `e` are the same event by content (Y4): aggregate,
/// type, data and metadata.
fn same_content(p: &Proposal, e: &Event) -> bool {
    p.aggregate_id == e.aggregate_id
        && p.event_type == e.event_type
        && p.data == e.data
        && p.metadata == e.metadata
}

/// The version of `aggregate_id` when the log's head was `head`.
fn version_at(store: &Store, aggregate_id: &str, head: u64) -> u64 {
    store
        .read_aggregate(aggregate_id, 1, usize::MAX)
        .expect("read")
        .iter()
        .take_while(|e| e.position <= head)
        .last()
        .map_or(0, |e| e.version)
}

// ---------------------------------------------------------------------------
// server_core
// ---------------------------------------------------------------------------

/// One client of `server_core`, with what its shell keeps for it.
#[derive(Debug)]
struct Conn {
    id: ClientId,
    /// Whether its follow stream carries raw records (else events).
    raw: bool,
    /// The next position its follow stream must send, once it follows.
    follow: Option<u64>,
    last_push: Option<Vec<Proposal>>,
}

impl Conn {
    fn push(&mut self, shell: &mut Shell, events: Vec<Proposal>) {
        self.last_push = Some(events.clone());
        let request = shell.next_request();
        shell.push(self.id, request, events);
    }

    /// Reads the log for the client's follow stream as the QUIC shell
    /// does, until it has sent everything up to the head the followers
    /// were woken for: [`Store::read_raw_records`] for a raw client,
    /// [`Store::read_events`] for the others, within the server's message
    /// limits. Each read starts at the position due, goes on without gaps,
    /// and holds the events the store holds there.
    fn poll(&mut self, shell: &Shell) {
        let Some(mut next) = self.follow else {
            return;
        };
        let store = &shell.store;
        let config = shell.core.config();
        // Each read moves the stream on by at least one position.
        for _ in 0..=shell.published {
            if next > shell.published {
                self.follow = Some(next);
                return;
            }
            let events: Vec<Event> = if self.raw {
                let run = store
                    .read_raw_records(next, config.message_bytes_max)
                    .expect("read")
                    .unwrap_or_else(|| panic!("position {next} is due, but there are no records"));
                assert_eq!(run.first_position, next);
                let checked = run.check().expect("records decode");
                checked
                    .records()
                    .iter()
                    .map(|(_, r)| r.to_event().expect("a valid timestamp"))
                    .collect()
            } else {
                store
                    .read_events(next, config.message_events_max, config.message_bytes_max)
                    .expect("read")
            };
            assert!(
                !events.is_empty(),
                "position {next} is due, but nothing was read"
            );
            for e in events {
                assert_eq!(e.position, next, "the follow stream skipped or repeated");
                assert_eq!(store.get(e.event_id).expect("get").as_ref(), Some(&e));
                next += 1;
            }
        }
        panic!("the follow stream never runs dry");
    }
}

/// One operation of `server_core`. The input is a run of operations, each
/// an opcode byte and its arguments (missing bytes read as 0). `opcode / 8
/// % 3` picks the client: 0, 1 (whose follow stream carries raw records)
/// or 2. The shell numbers each push's request itself.
///
/// ```text
/// opcode % 8   arguments                   operation
/// 0            len u16 LE, len bytes       a ClientMessage decoded by wire::decode (skipped if it does not decode;
///                                          len 0xffff: the rest of the input): Push goes to the core, Follow to the
///                                          shell's follow stream, Hello is the shell's and does nothing here
/// 1            k                           the log, by k % 8: 0 to 3 carry out the next commit (poll_commit,
///                                          append_pushes, handle_committed); 4 carry it out but leave it in flight;
///                                          5 it fails before writing; 6 it writes, then fails; with a commit in
///                                          flight, 0 to 6 hand that one back instead; 7 another node appends to
///                                          agg-(k / 8 % 3) (handle_head)
/// 2            from                        Follow { from } (255: u64::MAX)
/// 3            count, 3 B/event            Push of count % 6 + 1 events (see proposal)
/// 4                                        the client's last push again (also after a reconnect)
/// 5            ms                          time passes: ms * 16 milliseconds (server and store clock), handle_timeout
/// 6            flags                       disconnect, connect again as a new client: raw records if bit 0,
///                                          read-only if bit 1
/// 7                                        poll the follow stream until it runs dry
/// ```
#[derive(Debug)]
enum ServerOp {
    Push(Vec<Proposal>),
    Retry,
    Follow(u64),
    Storage(u8),
    Wait(u64),
    Reconnect { raw: bool, may_write: bool },
    Poll,
    Skip,
}

impl ServerOp {
    /// The next operation and the client slot it is for.
    fn decode(input: &mut &[u8], now: u64) -> Option<(usize, ServerOp)> {
        let (&opcode, rest) = input.split_first()?;
        *input = rest;
        let slot = usize::from(opcode >> 3) % SERVER_CLIENTS;
        let op = match opcode % 8 {
            0 => match wire::decode::<ClientMessage>(next_chunk(input)) {
                Ok(ClientMessage::Push { events, .. }) => ServerOp::Push(events),
                Ok(ClientMessage::Follow { from }) => ServerOp::Follow(from),
                Ok(ClientMessage::Hello { .. }) | Err(_) => ServerOp::Skip,
            },
            1 => ServerOp::Storage(next_byte(input)),
            2 => ServerOp::Follow(match next_byte(input) {
                255 => u64::MAX,
                b => u64::from(b),
            }),
            3 => {
                let count = next_byte(input) % 6 + 1;
                let events = (0..count)
                    .map(|_| {
                        let spec = [next_byte(input), next_byte(input), next_byte(input)];
                        proposal(spec, now)
                    })
                    .collect();
                ServerOp::Push(events)
            }
            4 => ServerOp::Retry,
            5 => ServerOp::Wait(16 * u64::from(next_byte(input))),
            6 => {
                let flags = next_byte(input);
                ServerOp::Reconnect {
                    raw: flags & 1 == 1,
                    may_write: flags & 2 == 0,
                }
            }
            _ => ServerOp::Poll,
        };
        Some((slot, op))
    }
}

impl Shell {
    /// Operation 1 of [`ServerOp`]: the log's side.
    fn storage(&mut self, k: u8) {
        match k % 8 {
            7 => self.foreign_append(k / 8),
            4 if self.in_flight.is_none() => {
                self.start_commit(CommitFate::Done);
            }
            5 => {
                self.commit(CommitFate::FailsBeforeWrite);
            }
            6 => {
                self.commit(CommitFate::FailsAfterWrite);
            }
            _ => {
                self.commit(CommitFate::Done);
            }
        }
    }
}

/// A proposal from three bytes `[a, b, c]`:
///
/// * id `a % 32 + 1` (so ids repeat, within and across aggregates and
///   clients);
/// * aggregate `agg-{b % 4}`, but `b % 4 == 3` is the empty id (refused);
///   version `b / 4 % 8` (0 is refused);
/// * timestamp by `c % 4`: now, an hour ahead (beyond the drift limit), 1
///   ms, the largest clock; data by `c / 4 % 4`: `{}`, empty, one byte over
///   the limit, not JSON; metadata if bit 4; type [`FORBIDDEN_EVENT_TYPE`]
///   if bit 5, else `T` and `c / 64`.
fn proposal([a, b, c]: [u8; 3], now: u64) -> Proposal {
    let aggregate_id = match b % 4 {
        3 => String::new(),
        k => format!("agg-{k}"),
    };
    let timestamp = match c % 4 {
        0 => remote_timestamp(now, 0),
        1 => remote_timestamp(now + HOUR_MS, 0),
        2 => remote_timestamp(1, 0),
        _ => remote_timestamp(hlc::PHYSICAL_MS_MAX, u32::MAX),
    };
    let data = match c / 4 % 4 {
        0 => b"{}".to_vec(),
        1 => Vec::new(),
        2 => vec![b'x'; SYNC_DATA_BYTES_MAX + 1],
        _ => vec![0xff, 0],
    };
    Proposal {
        event_id: Uuid::from_u128(u128::from(a % 32) + 1),
        aggregate_id,
        version: u64::from(b / 4 % 8),
        event_type: if c & 32 != 0 {
            FORBIDDEN_EVENT_TYPE.into()
        } else {
            format!("T{}", c / 64)
        },
        data,
        timestamp,
        metadata: (c & 16 != 0).then(|| b"{\"m\":1}".to_vec()),
    }
}

// ---------------------------------------------------------------------------
// replica_core
// ---------------------------------------------------------------------------

/// One operation of `replica_core`. The input is a run of operations, each
/// an opcode byte and its arguments (missing bytes read as 0):
///
/// ```text
/// opcode % 8   arguments                    operation
/// 0            len u16 LE, len bytes        a ServerMessage decoded by wire::decode (skipped if it does not decode;
///                                           len 0xffff: the rest of the input)
/// 1            flags                        Welcome: bit 0 another store id, bit 1 another protocol,
///                                           flags / 4 % 4: head at the local head, 3 past it, 0, u64::MAX
/// 2            spec, 2 B/event              Events (see ReplicaSide::events)
/// 3            spec, damage, 2 B/event      the same as Records; damage % 8: 4 a flipped byte, 5 one more in
///                                           count, 6 a physical clock past the largest, 7 a node with a space
/// 4            k                            Accepted: request (see ReplicaSide::request), k / 4 % 4 placements
///                                           of pending events after the head; server head u64::MAX if bit 4
/// 5            k, head, retry               PullRequired { conflicts: agg-0, head: local + head % 4 (u64::MAX
///                                           if bit 2), retry_after_ms: retry % 4: 0, 100, 25, u64::MAX }
/// 6            k                            bit 2 clear: Rejected of the first pending event;
///                                           set: Error { code: k / 8 % 7, fatal: bit 0 }
/// 7            k                            k % 4: 0 time passes (k * 64 ms) and the timeout is handled,
///                                           1 disconnect and connect, 2 a local append to agg-(k / 4), 3 a local change
/// ```
#[derive(Debug)]
enum ReplicaOp {
    Message(Option<ServerMessage>),
    Welcome(u8),
    Events(u8, Vec<[u8; 2]>),
    Records(u8, u8, Vec<[u8; 2]>),
    Accepted(u8),
    PullRequired(u8, u8, u8),
    Refusal(u8),
    Local(u8),
}

impl ReplicaOp {
    fn decode(input: &mut &[u8]) -> Option<ReplicaOp> {
        let (&opcode, rest) = input.split_first()?;
        *input = rest;
        let specs = |input: &mut &[u8], spec: u8| -> Vec<[u8; 2]> {
            (0..ReplicaSide::event_count(spec))
                .map(|_| [next_byte(input), next_byte(input)])
                .collect()
        };
        let op = match opcode % 8 {
            0 => ReplicaOp::Message(wire::decode(next_chunk(input)).ok()),
            1 => ReplicaOp::Welcome(next_byte(input)),
            2 => {
                let spec = next_byte(input);
                ReplicaOp::Events(spec, specs(input, spec))
            }
            3 => {
                let (spec, damage) = (next_byte(input), next_byte(input));
                ReplicaOp::Records(spec, damage, specs(input, spec))
            }
            4 => ReplicaOp::Accepted(next_byte(input)),
            5 => ReplicaOp::PullRequired(next_byte(input), next_byte(input), next_byte(input)),
            6 => ReplicaOp::Refusal(next_byte(input)),
            _ => ReplicaOp::Local(next_byte(input)),
        };
        Some(op)
    }
}

/// The replica of `replica_core`, its core, and what the harness knows.
struct ReplicaSide {
    replica: Replica,
    core: ReplicaCore,
    clock: Arc<ManualClock>,
    now: u64,
    /// Fresh event ids handed out so far.
    ids: u128,
    /// The request of the last push the core sent.
    last_request: u64,
}

impl ReplicaSide {
    /// Events of an `Events` or `Records` operation: `spec / 8 % 5`.
    fn event_count(spec: u8) -> usize {
        usize::from(spec / 8 % 5)
    }

    fn fresh_id(&mut self) -> Uuid {
        self.ids += 1;
        Uuid::from_u128(0xf0_0000 + self.ids)
    }

    fn append_local(&mut self, agg: u8) {
        let event = NewEvent::new("Local", b"{}".to_vec()).with_id(self.fresh_id());
        let aggregate_id = format!("agg-{}", agg % 3);
        match self
            .replica
            .append(&aggregate_id, ExpectedVersion::Any, vec![event])
        {
            Ok(_) => {}
            // The server may have sent the largest timestamp there is;
            // then no later one exists, and saying so is the right answer.
            Err(strata::Error::Invalid(strata::event::InvalidInput::Timestamp(
                strata::hlc::HlcError::Exhausted,
            ))) => {}
            Err(e) => panic!("a local append: {e}"),
        }
    }

    fn first_pending(&mut self) -> Uuid {
        match self.replica.pending().first() {
            Some(p) => p.event_id,
            None => self.fresh_id(),
        }
    }

    /// The request an answer names, by `k % 4`: the last push's, the one
    /// after it, the one before it, or 0.
    fn request(&self, k: u8) -> u64 {
        match k % 4 {
            0 => self.last_request,
            1 => self.last_request + 1,
            2 => self.last_request.saturating_sub(1),
            _ => 0,
        }
    }

    /// Events from position `spec % 8` (0 to 3: right after the local
    /// head; 4: at it, or 1; 5: one past it; 6: 1; 7: `u64::MAX - 1`), one per
    /// two bytes `[x, y]`:
    ///
    /// * aggregate `agg-{x % 4}`, but 3 is 257 bytes (over the limit);
    ///   type by `x / 4 % 4`: `T`, `T`, empty, 257 bytes; metadata if bit
    ///   4; node `remote` or, if bit 5, `remote-2`;
    /// * version by `y % 4`: the next (twice), one past it, the current;
    ///   id by `y / 4 % 4`: fresh (twice), the first pending one, the
    ///   event at position 1's; timestamp by `y / 16 % 4`: now, an hour
    ///   ahead, the largest clock, 0; data by `y / 64`: `{}`, empty, not
    ///   JSON, 2 KiB.
    fn events(&mut self, spec: u8, specs: &[[u8; 2]]) -> Vec<Event> {
        let store = self.replica.committed();
        let head = store.head();
        let first = match spec % 8 {
            0..=3 => head + 1,
            // A record cannot say position 0.
            4 => head.max(1),
            5 => head + 2,
            6 => 1,
            _ => u64::MAX - 1,
        };
        let first_id = store
            .read_all(1)
            .next()
            .and_then(Result::ok)
            .map(|e| e.event_id);
        let mut versions: HashMap<String, u64> = HashMap::new();
        let mut out = Vec::with_capacity(specs.len());
        for (i, &[x, y]) in specs.iter().enumerate() {
            let aggregate_id = match x % 4 {
                3 => "a".repeat(strata::event::AGGREGATE_ID_BYTES_MAX_DEFAULT + 1),
                k => format!("agg-{k}"),
            };
            let current = match versions.get(&aggregate_id) {
                Some(&v) => v,
                None => self
                    .replica
                    .committed()
                    .aggregate_version(&aggregate_id)
                    .unwrap_or(0),
            };
            let version = match y % 4 {
                0 | 1 => current + 1,
                2 => current + 2,
                _ => current,
            };
            versions.insert(aggregate_id.clone(), version);
            let event_id = match y / 4 % 4 {
                2 => self.first_pending(),
                3 => first_id.unwrap_or_else(|| self.fresh_id()),
                _ => self.fresh_id(),
            };
            let node = if x & 32 != 0 { "remote-2" } else { REMOTE_NODE };
            let (physical_ms, counter) = match y / 16 % 4 {
                0 => (self.now, i as u32),
                1 => (self.now + HOUR_MS, 0),
                2 => (hlc::PHYSICAL_MS_MAX, u32::MAX),
                _ => (0, 0),
            };
            out.push(Event {
                position: first.saturating_add(i as u64),
                event_id,
                aggregate_id,
                version,
                event_type: match x / 4 % 4 {
                    2 => String::new(),
                    3 => "t".repeat(strata::event::EVENT_TYPE_BYTES_MAX_DEFAULT + 1),
                    _ => "T".into(),
                },
                data: match y / 64 {
                    0 => b"{}".to_vec(),
                    1 => Vec::new(),
                    2 => vec![0xff, 0xfe],
                    _ => vec![b'd'; 2048],
                },
                timestamp: Timestamp::from_parts(physical_ms, counter, node).expect("valid"),
                metadata: (x & 16 != 0).then(|| b"{\"m\":1}".to_vec()),
            });
        }
        out
    }

    /// `events` as a `Records` message, damaged as `damage % 8` says.
    fn records(events: &[Event], damage: u8) -> ServerMessage {
        let mut fields: Vec<EventRef<'_>> = events.iter().map(Event::as_ref).collect();
        if let Some(f) = fields.first_mut() {
            match damage % 8 {
                6 => f.hlc_physical_ms = hlc::PHYSICAL_MS_MAX + 1,
                7 => f.hlc_node = "a b",
                _ => {}
            }
        }
        let mut records = Vec::new();
        for f in &fields {
            format::encode_record(&mut records, f);
        }
        let mut count = events.len() as u32;
        match damage % 8 {
            4 if !records.is_empty() => {
                let at = usize::from(damage / 8) * 7 % records.len();
                records[at] ^= 0x10;
            }
            5 => count += 1,
            _ => {}
        }
        ServerMessage::Records {
            first_position: events.first().map_or(1, |e| e.position),
            count,
            records,
        }
    }

    fn run(&mut self, op: ReplicaOp) {
        let head = self.replica.committed().head();
        let msg = match op {
            ReplicaOp::Message(msg) => msg,
            ReplicaOp::Welcome(flags) => Some(ServerMessage::Welcome {
                protocol: PROTOCOL_VERSION + u32::from(flags >> 1 & 1),
                store_id: SERVER_STORE_IDS[usize::from(flags & 1)],
                head: match flags / 4 % 4 {
                    0 => head,
                    1 => head + 3,
                    2 => 0,
                    _ => u64::MAX,
                },
            }),
            ReplicaOp::Events(spec, specs) => Some(ServerMessage::Events {
                events: self.events(spec, &specs),
            }),
            ReplicaOp::Records(spec, damage, specs) => {
                let events = self.events(spec, &specs);
                Some(ReplicaSide::records(&events, damage))
            }
            ReplicaOp::Accepted(k) => {
                let pending = self.replica.pending();
                let placed: Vec<Placed> = pending
                    .iter()
                    .take(usize::from(k / 4 % 4))
                    .enumerate()
                    .map(|(i, p)| Placed {
                        event_id: p.event_id,
                        position: head + 1 + i as u64,
                        version: p.version,
                    })
                    .collect();
                Some(ServerMessage::Accepted {
                    request: self.request(k),
                    head: if k & 16 != 0 {
                        u64::MAX
                    } else {
                        head + placed.len() as u64
                    },
                    placed,
                })
            }
            ReplicaOp::PullRequired(k, h, retry) => {
                let conflict = self
                    .replica
                    .committed()
                    .aggregate_version("agg-0")
                    .expect("version");
                Some(ServerMessage::PullRequired {
                    request: self.request(k),
                    conflicts: vec![("agg-0".into(), conflict + 1)],
                    head: if h & 4 != 0 {
                        u64::MAX
                    } else {
                        head + u64::from(h % 4)
                    },
                    retry_after_ms: match retry % 4 {
                        0 => 0,
                        1 => 100,
                        2 => RETRY_AFTER_MS_SHORT,
                        _ => u64::MAX,
                    },
                })
            }
            ReplicaOp::Refusal(k) if k & 4 == 0 => Some(ServerMessage::Rejected {
                request: self.request(k),
                rejections: vec![(self.first_pending(), "refused by the fuzz server".into())],
            }),
            ReplicaOp::Refusal(k) => {
                const CODES: [ErrorCode; 7] = [
                    ErrorCode::Malformed,
                    ErrorCode::Unexpected,
                    ErrorCode::Unauthorized,
                    ErrorCode::Version,
                    ErrorCode::TooLarge,
                    ErrorCode::Unavailable,
                    ErrorCode::Internal,
                ];
                Some(ServerMessage::Error {
                    code: CODES[usize::from(k / 8 % 7)],
                    message: "fuzz".into(),
                    fatal: k & 1 == 1,
                })
            }
            ReplicaOp::Local(k) => {
                match k % 4 {
                    0 => {
                        self.now += 64 * u64::from(k);
                        self.clock.set(self.now);
                        let result = self
                            .core
                            .handle_timeout(self.now, &mut self.replica.storage());
                        self.after(result);
                    }
                    1 => {
                        self.core.handle_disconnected();
                        self.core.handle_connected(&self.replica.storage());
                    }
                    2 => {
                        self.append_local(k / 4);
                        let result = self
                            .core
                            .handle_local_change(self.now, &mut self.replica.storage());
                        self.after(result);
                    }
                    _ => {
                        let result = self
                            .core
                            .handle_local_change(self.now, &mut self.replica.storage());
                        self.after(result);
                    }
                }
                None
            }
        };
        if let Some(msg) = msg {
            let result = self
                .core
                .handle_message(self.now, msg, &mut self.replica.storage());
            self.after(result);
        }
        self.drain();
    }

    /// An error ends the connection; the shell connects again.
    fn after(&mut self, result: Result<(), strata::sync::SyncError>) {
        if result.is_err() {
            self.core.handle_disconnected();
            self.core.handle_connected(&self.replica.storage());
        }
    }

    /// Takes what the core sends. A push numbers each aggregate's events
    /// right after its committed version, in outbox order.
    fn drain(&mut self) {
        let store = self.replica.committed();
        while let Some(msg) = self.core.poll_transmit() {
            match msg {
                ClientMessage::Push {
                    request,
                    base,
                    events,
                } => {
                    assert!(!events.is_empty());
                    assert_eq!(base, store.head());
                    assert!(request > self.last_request, "request {request} reused");
                    self.last_request = request;
                    let mut versions: HashMap<&str, u64> = HashMap::new();
                    for e in &events {
                        let next = match versions.get(e.aggregate_id.as_str()) {
                            Some(v) => v + 1,
                            None => store.aggregate_version(&e.aggregate_id).expect("version") + 1,
                        };
                        assert_eq!(e.version, next, "pushed {e:?} out of turn");
                        versions.insert(&e.aggregate_id, e.version);
                    }
                }
                ClientMessage::Follow { from } => assert_eq!(from, store.head() + 1),
                ClientMessage::Hello { .. } => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------
// seed_json
// ---------------------------------------------------------------------------

/// A line of `seed_json` that is the shell's, not a message (after the
/// `>` that picks the second connection, where that matters):
///
/// ```text
/// line   what the shell does
/// !h     hold: commits wait (pushes gather, to share one)
/// !c     commit: carry out what waits, and again after each line
/// !f     the next commit fails before writing
/// !F     the next commit writes, then fails (the acknowledgement is lost)
/// !d     the connection drops; the client connects again (the second has to authenticate again)
/// !t     the turn's lease passes
/// ```
#[derive(Debug)]
enum SeedControl {
    Hold,
    Commit,
    Fail(CommitFate),
    Drop,
    LeasePasses,
}

impl SeedControl {
    fn parse(line: &str) -> Option<SeedControl> {
        Some(match line {
            "!h" => SeedControl::Hold,
            "!c" => SeedControl::Commit,
            "!f" => SeedControl::Fail(CommitFate::FailsBeforeWrite),
            "!F" => SeedControl::Fail(CommitFate::FailsAfterWrite),
            "!d" => SeedControl::Drop,
            "!t" => SeedControl::LeasePasses,
            _ => return None,
        })
    }
}

/// One connection of `seed_json`, as its shell and client see it.
#[derive(Debug)]
struct SeedSide {
    /// The session, once the connection is authenticated.
    session: Option<SeedSession>,
    /// The push whose request has not ended yet: its number and events.
    awaiting: Option<(u64, Vec<Proposal>)>,
    /// The position the session's stream of events must send next; `None`
    /// after a `client_sync_request`, whose cursor the harness does not
    /// map, until the next response says where it stands.
    next: Option<u64>,
}

impl SeedSide {
    fn new(shell: &mut Shell, authenticated: bool) -> SeedSide {
        SeedSide {
            session: authenticated.then(|| SeedSession::new(shell.connect(true))),
            awaiting: None,
            next: Some(1),
        }
    }

    fn reconnect(&mut self, shell: &mut Shell, authenticated: bool) {
        if let Some(session) = self.session.take() {
            shell.disconnect(session.client());
        }
        *self = SeedSide::new(shell, authenticated);
    }

    /// A message before `auth`, read as the WebSocket shell reads it: a
    /// good token connects silently; anything else gets an `error` (and
    /// all but a malformed `auth` end the connection, after which the
    /// client connects again, still unauthenticated).
    fn authenticate(&mut self, shell: &mut Shell, line: &str) {
        let reply = match Auth::parse(line) {
            Ok(auth) if auth.token == SYNC_TOKEN => {
                self.session = Some(SeedSession::new(shell.connect(true)));
                return;
            }
            Ok(_) => error_json("unauthorized", "missing or wrong token", None),
            Err(reply) => reply,
        };
        let out = check_seed_message(&reply, &shell.store);
        assert_eq!(out.kind, "error", "{reply}");
    }

    /// A message from the core for this session's push: what the session
    /// sends says what the core answered, and a final answer ends the
    /// request.
    fn reply(&mut self, store: &Store, msg: ServerMessage) {
        let session = self
            .session
            .as_mut()
            .expect("the core answers connected clients only");
        let (request, events) = self
            .awaiting
            .as_ref()
            .unwrap_or_else(|| panic!("{msg:?} to a session that waits for nothing"));
        let request = *request;
        let texts = session.handle_reply(msg.clone(), store);
        let outs: Vec<SeedOut> = texts
            .iter()
            .map(|t| seed_output(t, store, &mut self.next))
            .collect();
        let only = || {
            assert_eq!(outs.len(), 1, "{msg:?} became {texts:?}");
            &outs[0]
        };
        match &msg {
            ServerMessage::Rejected {
                request: r,
                rejections,
            } => {
                assert_eq!(*r, request);
                assert_eq!(outs.len(), rejections.len(), "{msg:?} became {texts:?}");
                for (out, (id, _)) in outs.iter().zip(rejections) {
                    assert_eq!(out.kind, "error");
                    assert_eq!(out.code.as_deref(), Some("rejected"));
                    assert_eq!(out.event_id, Some(*id));
                    assert!(events.iter().any(|e| e.event_id == *id));
                }
                return;
            }
            ServerMessage::Accepted { .. } => {
                assert_eq!(only().status.as_deref(), Some("OK"), "{texts:?}");
            }
            ServerMessage::PullRequired { conflicts, .. } => {
                let out = only();
                assert_eq!(out.status.as_deref(), Some("PULL_REQUIRED"), "{texts:?}");
                assert_eq!(&out.conflicts, conflicts, "{texts:?}");
            }
            ServerMessage::Error { code, .. } => {
                let out = only();
                assert_eq!(out.kind, "error");
                assert_eq!(out.code.as_deref(), Some(code.as_str()), "{texts:?}");
            }
            other => panic!("the core sent a session {other:?}"),
        }
        self.awaiting = None;
        assert!(
            !session.is_waiting(),
            "the request ended, but the session still waits"
        );
    }

    /// At the end: nothing waits, and a session that follows has been sent
    /// the whole log.
    fn check_settled(&self, store: &Store) {
        assert_eq!(self.awaiting, None, "a request never ended");
        let Some(session) = &self.session else {
            return;
        };
        assert!(!session.is_waiting());
        if session.is_following() {
            assert!(
                self.next.is_none_or(|n| n == store.head() + 1),
                "the stream stopped at {:?}, short of the head {}",
                self.next,
                store.head()
            );
        }
    }
}

/// One message line for connection `slot`.
fn seed_line(
    shell: &mut Shell,
    sides: &mut [SeedSide; 2],
    slot: usize,
    line: &str,
    verbatim: &mut Verbatim,
) {
    let side = &mut sides[slot];
    let Some(session) = side.session.as_mut() else {
        side.authenticate(shell, line);
        return;
    };
    let client = session.client();
    let step = session.handle_text(line, &shell.store);
    let waiting = session.is_waiting();
    if line.contains("client_sync_request") {
        // The cursor may have moved anywhere.
        side.next = None;
    }
    match step {
        SeedStep::Reply(texts) => {
            assert_eq!(texts.len(), 1, "a message gets one reply: {texts:?}");
            let out = seed_output(&texts[0], &shell.store, &mut side.next);
            assert!(out.ends(), "{line} was answered by {texts:?}");
            assert_eq!(waiting, side.awaiting.is_some());
        }
        SeedStep::Push { request, events } => {
            assert!(
                side.awaiting.is_none(),
                "a second push while {:?} waits",
                side.awaiting
            );
            assert!(waiting);
            verbatim.record(line, &events);
            side.awaiting = Some((request, events.clone()));
            let sent = shell.push(client, request, events);
            seed_route(sides, &shell.store, sent);
        }
    }
}

/// Hands what the core sent to the sessions it is for.
fn seed_route(sides: &mut [SeedSide; 2], store: &Store, sent: Vec<Sent>) {
    for Sent { client, msg, .. } in sent {
        let side = sides
            .iter_mut()
            .find(|s| s.session.as_ref().is_some_and(|x| x.client() == client))
            .unwrap_or_else(|| panic!("{msg:?} to client {client}, which has no session"));
        side.reply(store, msg);
    }
}

/// Polls every session's live events until there are none.
fn seed_broadcast(sides: &mut [SeedSide; 2], store: &Store) {
    for side in sides.iter_mut() {
        let Some(session) = side.session.as_mut() else {
            continue;
        };
        // Each broadcast moves the session on by at least one event.
        let mut polls = 0;
        while let Some(msg) = session.poll_broadcast(store).expect("broadcast") {
            let out = seed_output(&msg, store, &mut side.next);
            assert_eq!(out.kind, "server_new_events", "{msg}");
            polls += 1;
            assert!(polls <= store.head(), "broadcasts never run dry");
        }
    }
}

/// The bytes of an event's `event_data` and `metadata` (none for `null`).
type ValueBytes = (Vec<u8>, Option<Vec<u8>>);

/// The exact bytes of `event_data` and `metadata` of every event a seed
/// client pushed, by id.
#[derive(Debug, Default)]
struct Verbatim(HashMap<Uuid, Vec<ValueBytes>>);

/// The events of a client message, with their values as raw text.
#[derive(serde::Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    local_events: Option<Vec<RawEvent<'a>>>,
    #[serde(borrow, default)]
    rebased_events: Option<Vec<RawEvent<'a>>>,
}

/// An event of a message, as far as its bytes matter.
#[derive(serde::Deserialize)]
struct RawEvent<'a> {
    event_id: Uuid,
    #[serde(borrow)]
    event_data: &'a RawValue,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

impl Verbatim {
    /// Checks that a push carries the texts of its message's `event_data`
    /// and `metadata` unchanged (`null` metadata is none), and records
    /// them.
    fn record(&mut self, line: &str, events: &[Proposal]) {
        let raw: RawMessage<'_> = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("the session pushed {line}, which does not parse: {e}"));
        let raw = raw
            .local_events
            .or(raw.rebased_events)
            .expect("a pushed message has events");
        assert_eq!(raw.len(), events.len(), "{line}");
        for (r, p) in raw.iter().zip(events) {
            assert_eq!(r.event_id, p.event_id);
            let data = r.event_data.get().as_bytes();
            let metadata = r.metadata.map(|m| m.get().as_bytes().to_vec());
            assert_eq!(
                p.data, data,
                "event_data of {} changed on the way in",
                p.event_id
            );
            assert_eq!(
                p.metadata, metadata,
                "metadata of {} changed on the way in",
                p.event_id
            );
            self.0
                .entry(p.event_id)
                .or_default()
                .push((data.to_vec(), metadata));
        }
    }

    /// Every stored event holds the bytes a client sent for it.
    fn check(&self, store: &Store) {
        for e in store.read_all(1) {
            let e = e.expect("read");
            let sent = self
                .0
                .get(&e.event_id)
                .unwrap_or_else(|| panic!("the store holds {e:?}, which no client sent"));
            assert!(
                sent.iter()
                    .any(|(data, metadata)| *data == e.data && *metadata == e.metadata),
                "the store holds {e:?}, not the bytes sent: {sent:?}"
            );
        }
    }
}

/// What [`check_seed_message`] read from a message.
#[derive(Debug, Default)]
struct SeedOut {
    kind: String,
    code: Option<String>,
    event_id: Option<Uuid>,
    status: Option<String>,
    conflicts: Vec<(String, u64)>,
    /// Positions of the events it carries.
    positions: Vec<u64>,
    new_server_position: Option<u64>,
}

impl SeedOut {
    /// Whether it ends a request: a response, or an error other than a
    /// rejection (which comes before the end).
    fn ends(&self) -> bool {
        self.kind == "server_sync_response"
            || (self.kind == "error" && self.code.as_deref() != Some("rejected"))
    }
}

/// An event as a session sends it, as far as its bytes matter.
#[derive(serde::Deserialize)]
struct OutEvent<'a> {
    event_id: Uuid,
    #[serde(borrow)]
    event_data: &'a RawValue,
    #[serde(borrow, default)]
    metadata: Option<&'a RawValue>,
}

/// The events of a session's message.
#[derive(serde::Deserialize)]
struct OutEvents<'a> {
    #[serde(borrow, default)]
    missing_events: Vec<OutEvent<'a>>,
    #[serde(borrow, default)]
    events: Vec<OutEvent<'a>>,
}

/// One message a session sent, checked (see [`check_seed_message`]), and
/// its events checked against the session's stream: they go on from
/// `next` without a gap, and a response says where the stream stands.
fn seed_output(msg: &str, store: &Store, next: &mut Option<u64>) -> SeedOut {
    let out = check_seed_message(msg, store);
    if let (Some(n), Some(&first)) = (*next, out.positions.first()) {
        assert_eq!(first, n, "the session's stream skipped or repeated: {msg}");
    }
    if let Some(&last) = out.positions.last() {
        *next = Some(last + 1);
    }
    if let Some(position) = out.new_server_position {
        if out.positions.is_empty()
            && let Some(n) = *next
        {
            assert_eq!(
                position + 1,
                n,
                "a response moved the cursor without events: {msg}"
            );
        }
        *next = Some(position + 1);
    }
    out
}

/// One message a [`SeedSession`] or the shell sent: JSON with a `type`;
/// every event in it is in the store at the position it names,
/// contiguous, with the `event_data` and `metadata` the store holds, byte
/// for byte.
fn check_seed_message(msg: &str, store: &Store) -> SeedOut {
    let v: serde_json::Value =
        serde_json::from_str(msg).unwrap_or_else(|e| panic!("not JSON ({e}): {msg}"));
    let kind = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no type: {msg}"));
    let mut out = SeedOut {
        kind: kind.to_owned(),
        ..SeedOut::default()
    };
    let events = match kind {
        "error" => {
            assert!(v["code"].is_string() && v["message"].is_string(), "{msg}");
            out.code = v["code"].as_str().map(str::to_owned);
            out.event_id = v
                .get("event_id")
                .map(|id| id.as_str().expect("an id").parse().expect("a UUID"));
            return out;
        }
        "server_sync_response" => {
            let status = v["status"].as_str();
            assert!(matches!(status, Some("OK" | "PULL_REQUIRED")), "{msg}");
            out.status = status.map(str::to_owned);
            let position = v["new_server_position"].as_u64().expect("a position");
            assert!(position <= store.head(), "{msg}");
            out.new_server_position = Some(position);
            let token = v["new_server_hlc"].as_str().expect("a cursor");
            assert_eq!(token.is_empty(), position == 0, "{msg}");
            if position > 0 {
                let ts = Timestamp::parse(token).expect("a cursor is an HLC");
                assert_eq!(ts.node().as_str(), format!("@{position}"));
            }
            if let Some(conflicts) = v.get("conflicts") {
                out.conflicts = conflicts
                    .as_array()
                    .expect("conflicts")
                    .iter()
                    .map(|c| {
                        let aggregate = c["aggregate_id"].as_str().expect("an aggregate");
                        let version = c["current_version"].as_u64().expect("a version");
                        (aggregate.to_owned(), version)
                    })
                    .collect();
                assert!(!out.conflicts.is_empty(), "{msg}");
            }
            let events = v["missing_events"].as_array().expect("missing_events");
            if let Some(last) = events.last() {
                assert_eq!(last["position"].as_u64(), Some(position), "{msg}");
            }
            events
        }
        "server_new_events" => {
            let events = v["events"].as_array().expect("events");
            assert!(!events.is_empty(), "{msg}");
            events
        }
        other => panic!("unknown message type {other:?}: {msg}"),
    };
    for e in events {
        let position = e["position"].as_u64().expect("a position");
        assert!(
            out.positions.last().is_none_or(|p| p + 1 == position),
            "a gap before {position}: {msg}"
        );
        out.positions.push(position);
        let id: Uuid = e["event_id"]
            .as_str()
            .expect("an id")
            .parse()
            .expect("a UUID");
        let held = store.get(id).expect("get").expect("a sent event is held");
        assert_eq!(held.position, position);
        assert_eq!(e["version"].as_u64(), Some(held.version));
        assert_eq!(e["aggregate_id"].as_str(), Some(held.aggregate_id.as_str()));
    }
    // The values themselves, as raw text: exactly the stored bytes.
    let raw: OutEvents<'_> = serde_json::from_str(msg).expect("parsed above");
    for e in raw.missing_events.iter().chain(&raw.events) {
        let held = store.get(e.event_id).expect("get").expect("held");
        assert_eq!(
            e.event_data.get().as_bytes(),
            held.data,
            "event_data of {} was rewritten on the way out: {msg}",
            e.event_id
        );
        assert_eq!(
            e.metadata.map(|m| m.get().as_bytes()),
            held.metadata.as_deref(),
            "metadata of {} was rewritten on the way out: {msg}",
            e.event_id
        );
    }
    out
}
