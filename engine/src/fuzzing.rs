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
//! Built only with the `fuzzing` feature, which brings in `tempfile`.
#![cfg(feature = "fuzzing")]

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::event::{AggregateEvents, Committed, Event, ExpectedVersion, Limits, NewEvent};
use crate::hlc::{self, ManualClock, Timestamp, WallClock};
use crate::log::format::{
    self, BatchRef, FrameKind, RecordFields, RecordRef, SEGMENT_HEADER_BYTES, Seal, SegmentHeader,
};
use crate::log::recovery::{ScanStop, scan_frames};
use crate::log::segment::segment_file_name;
use crate::log::{Durability, LOG_DIR, SEGMENT_BYTES_MIN};
use crate::sync::proto::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, Placed, Proposal, ServerMessage,
};
use crate::sync::seed::SeedSession;
use crate::sync::server::RETRY_AFTER_MS_MAX;
use crate::sync::wire::{self, WireError};
use crate::sync::{
    ClientId, PushPolicy, Replica, ReplicaConfig, ReplicaCore, ReplicaOptions, ServerConfig,
    ServerCore,
};
use crate::{Error, Options, Store};

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
    if let Ok(record) = format::decode_record(data, true) {
        assert_eq!(encode_record(&record), data[..record.encoded_len]);
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

fn encode_record(r: &RecordRef<'_>) -> Vec<u8> {
    let mut buf = Vec::new();
    format::encode_record(
        &mut buf,
        &RecordFields {
            position: r.position,
            event_id: r.event_id,
            version: r.version,
            hlc_physical_ms: r.hlc_physical_ms,
            hlc_counter: r.hlc_counter,
            hlc_node: r.hlc_node,
            aggregate_id: r.aggregate_id,
            event_type: r.event_type,
            data: r.data,
            metadata: r.metadata,
        },
    );
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
        let bytes = &batch.records[offset..offset + record.encoded_len];
        let mut again = encode_record(&record);
        again[4..8].copy_from_slice(&bytes[4..8]);
        assert_eq!(again, bytes);
        at += record.encoded_len;
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
    /// expectation, in order, and stamps its new events right after. A
    /// conflict is `(aggregate_id, current version)`; the events of the
    /// aggregates before it were stamped already, so the clock moved.
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
                self.hlc_last = if wall > self.hlc_last.0 {
                    (wall, 0)
                } else {
                    (self.hlc_last.0, self.hlc_last.1 + 1)
                };
                fresh.push(Event {
                    position: (self.events.len() + fresh.len() + 1) as u64,
                    event_id: e.event_id,
                    aggregate_id: g.aggregate_id.clone(),
                    version: current + 1 + i as u64,
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    timestamp: Timestamp::from_parts(self.hlc_last.0, self.hlc_last.1, NODE)
                        .expect("valid"),
                    metadata: e.metadata.clone(),
                });
            }
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

/// Token the servers of `server_core` and `seed_json` require.
pub const SYNC_TOKEN: &str = "fuzz-token";
/// Event type the push policy of those servers refuses.
pub const FORBIDDEN_EVENT_TYPE: &str = "Forbidden";
/// Largest event data those servers accept, so that short inputs reach
/// the limit.
pub const SYNC_DATA_BYTES_MAX: usize = 64;
/// Most operations one `server_core` or `replica_core` input runs, and
/// most messages of one `seed_json` input.
const SYNC_OPS_MAX: usize = 48;
/// Store ids the server of `replica_core` claims: the first, or another.
const SERVER_STORE_IDS: [Uuid; 2] = [Uuid::from_u128(0x5e4e_0001), Uuid::from_u128(0x5e4e_0002)];
/// Node of the timestamps the fuzzed servers and replicas receive.
const REMOTE_NODE: &str = "remote";
/// An hour: far beyond the HLC's default drift limit of a minute.
const HOUR_MS: u64 = 3_600_000;

/// Arbitrary bytes as the payload of a wire message (the length prefix
/// already taken off), decoded as a [`ClientMessage`] and as a
/// [`ServerMessage`]. Bad bytes are an `Err`; a decoded message encodes
/// back to the same bytes (see [`check_wire`] for the one exception, an
/// unpadded timestamp) and decodes to itself again.
pub fn sync_wire(data: &[u8]) {
    check_wire::<ClientMessage>(data);
    check_wire::<ServerMessage>(data);
}

/// A run of client messages (see [`ServerOp`]) from two clients handled by
/// a [`ServerCore`] over a real store, with their follow streams polled in
/// between. The head only grows; a push gets exactly one final reply,
/// `Accepted`, `PullRequired` or `Error`, after at most one `Rejected`;
/// every placement names an event the store holds there; follow streams
/// deliver the log from where the client asked, without gaps.
pub fn server_core(data: &[u8]) {
    let dir = temp_dir();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let mut store =
        Store::open(dir.path(), seed_options(Durability::None, clock.clone())).expect("open");
    let mut core = ServerCore::new(sync_server_config());
    let mut clients = [ServerSide::default(), ServerSide::default()];
    for (slot, side) in clients.iter_mut().enumerate() {
        side.raw = slot == 1;
        core.connect(slot as ClientId + 1, side.raw);
    }
    let mut now = CLOCK_START_MS;
    let mut input = data;
    for _ in 0..SYNC_OPS_MAX {
        let Some(op) = ServerOp::decode(&mut input, now) else {
            break;
        };
        let head = store.head();
        let (slot, op) = op;
        let id = slot as ClientId + 1;
        let side = &mut clients[slot];
        match op {
            ServerOp::Message(msg) => server_handle(&mut core, &mut store, side, id, now, msg),
            ServerOp::Retry => {
                if let Some(msg) = side.last_push.clone() {
                    server_handle(&mut core, &mut store, side, id, now, msg);
                }
            }
            ServerOp::Wait(ms) => {
                now += ms;
                clock.set(now);
            }
            ServerOp::Reconnect { raw } => {
                core.disconnect(id, now);
                core.connect(id, raw);
                *side = ServerSide {
                    raw,
                    ..ServerSide::default()
                };
            }
            ServerOp::Poll => server_poll(&mut core, &mut store, side, id),
            ServerOp::Skip => {}
        }
        assert!(store.head() >= head, "the head went back from {head}");
    }
    for (slot, side) in clients.iter_mut().enumerate() {
        server_poll(&mut core, &mut store, side, slot as ClientId + 1);
    }
    check_log(&store);
    store.close().expect("close");
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

/// UTF-8 text, one JSON message a line, sent to two [`SeedSession`]s of one
/// server (lines starting with `>` go to the second, which has to send
/// `auth` first), with their broadcasts polled after each. Every output
/// message is JSON with a `type`; every event it names is in the store at
/// the position it gives; the store ends with each aggregate at versions 1
/// to n.
pub fn seed_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = temp_dir();
    let clock = Arc::new(ManualClock::new(CLOCK_START_MS));
    let store =
        Store::open(dir.path(), seed_options(Durability::None, clock.clone())).expect("open");
    let mut log = store.clone();
    let mut core = ServerCore::new(sync_server_config());
    let connect = |id, token, core: &mut ServerCore, log: &Store| {
        let (session, out) = SeedSession::connect(id, token, core, log);
        assert!(out.messages.is_empty() && !out.close, "{out:?}");
        session
    };
    let mut sessions = [
        connect(1, Some(SYNC_TOKEN), &mut core, &log),
        connect(2, None, &mut core, &log),
    ];
    let mut now = CLOCK_START_MS;
    for line in text.split('\n').take(SYNC_OPS_MAX) {
        let (slot, line) = match line.strip_prefix('>') {
            Some(rest) => (1, rest),
            None => (0, line),
        };
        let head = store.head();
        let out = sessions[slot].handle_text(now, line, &mut core, &mut log);
        for msg in &out.messages {
            check_seed_message(msg, &store);
        }
        assert!(store.head() >= head, "the head went back from {head}");
        if out.close {
            sessions[slot].disconnect(&mut core, now);
            let token = (slot == 0).then_some(SYNC_TOKEN);
            sessions[slot] = connect(slot as ClientId + 1, token, &mut core, &log);
        }
        for session in &mut sessions {
            // Each broadcast moves the session on by at least one event.
            let mut polls = 0;
            while let Some(msg) = session.poll_broadcast(&mut log).expect("broadcast") {
                check_seed_message(&msg, &store);
                polls += 1;
                assert!(polls <= store.head(), "broadcasts never run dry");
            }
        }
        now += 100;
        clock.set(now);
    }
    check_log(&store);
    drop(log);
    store.close().expect("close");
}

/// The configuration of the fuzzed servers: a token, small limits so that
/// short inputs reach them, a short lease and a push policy.
fn sync_server_config() -> ServerConfig {
    ServerConfig {
        tokens: vec![SYNC_TOKEN.to_owned()],
        limits: Limits {
            event_data_bytes_max: SYNC_DATA_BYTES_MAX,
            ..Limits::default()
        },
        push_events_max: 4,
        message_events_max: 3,
        message_bytes_max: 512,
        lease_ms: 500,
        policy: Some(Arc::new(RefuseForbidden)),
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
// server_core
// ---------------------------------------------------------------------------

/// What the harness knows of one client of `server_core`.
#[derive(Debug, Default)]
struct ServerSide {
    raw: bool,
    welcomed: bool,
    /// The next position the follow stream must send.
    follow: Option<u64>,
    last_push: Option<ClientMessage>,
}

/// One operation of `server_core`. The input is a run of operations, each
/// an opcode byte and its arguments (missing bytes read as 0). Bit 3 of
/// the opcode picks the client (1, or 2 whose transport carries raw
/// records):
///
/// ```text
/// opcode % 8   arguments                   operation
/// 0            len u16 LE, len bytes       a ClientMessage decoded by wire::decode (skipped if it does not decode;
///                                          len 0xffff: the rest of the input)
/// 1            flags                       Hello: bit 0 another protocol; flags / 2 % 3: the token, no token, a wrong token
/// 2            from                        Follow { from } (255: u64::MAX)
/// 3            request count, 3 B/event    Push of count % 6 + 1 events (see proposal)
/// 4                                        the client's last push again
/// 5            ms                          time passes: ms * 16 milliseconds (server and store clock)
/// 6            raw                         disconnect, connect again (raw & 1: raw records)
/// 7                                        poll the follow stream until it runs dry
/// ```
#[derive(Debug)]
enum ServerOp {
    Message(ClientMessage),
    Retry,
    Wait(u64),
    Reconnect { raw: bool },
    Poll,
    Skip,
}

impl ServerOp {
    /// The next operation and the client slot it is for.
    fn decode(input: &mut &[u8], now: u64) -> Option<(usize, ServerOp)> {
        let (&opcode, rest) = input.split_first()?;
        *input = rest;
        let slot = usize::from(opcode >> 3) % 2;
        let op = match opcode % 8 {
            0 => match wire::decode::<ClientMessage>(next_chunk(input)) {
                Ok(msg) => ServerOp::Message(msg),
                Err(_) => ServerOp::Skip,
            },
            1 => {
                let flags = next_byte(input);
                ServerOp::Message(ClientMessage::Hello {
                    protocol: PROTOCOL_VERSION + u32::from(flags & 1),
                    store: "default".into(),
                    token: match flags / 2 % 3 {
                        0 => Some(SYNC_TOKEN.into()),
                        1 => None,
                        _ => Some("wrong".into()),
                    },
                    client: "fuzz-client".into(),
                })
            }
            2 => ServerOp::Message(ClientMessage::Follow {
                from: match next_byte(input) {
                    255 => u64::MAX,
                    b => u64::from(b),
                },
            }),
            3 => {
                let request = u64::from(next_byte(input));
                let count = next_byte(input) % 6 + 1;
                let events = (0..count)
                    .map(|_| {
                        let spec = [next_byte(input), next_byte(input), next_byte(input)];
                        proposal(spec, now)
                    })
                    .collect();
                ServerOp::Message(ClientMessage::Push {
                    request,
                    base: 0,
                    events,
                })
            }
            4 => ServerOp::Retry,
            5 => ServerOp::Wait(16 * u64::from(next_byte(input))),
            6 => ServerOp::Reconnect {
                raw: next_byte(input) & 1 == 1,
            },
            _ => ServerOp::Poll,
        };
        Some((slot, op))
    }
}

/// A proposal from three bytes `[a, b, c]`:
///
/// * id `a % 32 + 1` (so ids repeat, within and across aggregates);
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

/// Hands one message to the core and checks the replies.
fn server_handle(
    core: &mut ServerCore,
    store: &mut Store,
    side: &mut ServerSide,
    id: ClientId,
    now: u64,
    msg: ClientMessage,
) {
    let head = store.head();
    let replies = core.handle(now, id, msg.clone(), store);
    let unexpected = |replies: &[ServerMessage]| {
        assert!(
            matches!(
                replies,
                [ServerMessage::Error {
                    code: ErrorCode::Unexpected,
                    fatal: true,
                    ..
                }]
            ),
            "{replies:?}"
        );
    };
    match msg {
        ClientMessage::Hello {
            protocol, token, ..
        } => {
            let admitted = protocol == PROTOCOL_VERSION && token.as_deref() == Some(SYNC_TOKEN);
            match &replies[..] {
                [
                    ServerMessage::Welcome {
                        protocol,
                        store_id,
                        head,
                    },
                ] if admitted => {
                    assert_eq!(*protocol, PROTOCOL_VERSION);
                    assert_eq!(*store_id, store.store_id());
                    assert_eq!(*head, store.head());
                    side.welcomed = true;
                }
                [ServerMessage::Error { fatal: true, .. }] if !admitted => {}
                other => panic!("Hello (admitted: {admitted}) answered {other:?}"),
            }
        }
        ClientMessage::Follow { from } => {
            if side.welcomed {
                assert!(replies.is_empty(), "{replies:?}");
                side.follow = Some(from.max(1));
            } else {
                unexpected(&replies);
            }
        }
        ClientMessage::Push {
            request,
            ref events,
            ..
        } => {
            if side.welcomed {
                check_push_replies(store, head, request, events, &replies);
                side.last_push = Some(msg);
            } else {
                unexpected(&replies);
                assert_eq!(store.head(), head);
            }
        }
    }
}

/// A push's replies: at most one `Rejected` naming events of the push, then
/// exactly one final reply. `Accepted` places or rejects every event of
/// the push, at the position and version the store holds it; anything else
/// appended nothing.
fn check_push_replies(
    store: &Store,
    head_before: u64,
    request: u64,
    events: &[Proposal],
    replies: &[ServerMessage],
) {
    let ids: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    let (last, rest) = replies.split_last().expect("a push is answered");
    let mut rejected = HashSet::new();
    match rest {
        [] => {}
        [
            ServerMessage::Rejected {
                request: r,
                rejections,
            },
        ] => {
            assert_eq!(*r, request);
            assert!(!rejections.is_empty());
            for (id, _) in rejections {
                assert!(ids.contains(id), "rejected {id}, which was not pushed");
                rejected.insert(*id);
            }
        }
        other => panic!("a push answered {other:?} before {last:?}"),
    }
    match last {
        ServerMessage::Accepted {
            request: r,
            placed,
            head,
        } => {
            assert_eq!(*r, request);
            assert_eq!(*head, store.head());
            let mut answered = rejected;
            for p in placed {
                check_placed(store, p);
                assert!(
                    ids.contains(&p.event_id),
                    "placed {p:?}, which was not pushed"
                );
                answered.insert(p.event_id);
            }
            assert_eq!(answered, ids, "events neither placed nor rejected");
        }
        ServerMessage::PullRequired {
            request: r,
            conflicts,
            head,
            ..
        } => {
            assert_eq!(*r, request);
            assert_eq!(store.head(), head_before, "appended, yet PullRequired");
            assert_eq!(*head, store.head());
            assert!(!conflicts.is_empty());
            for (aggregate_id, version) in conflicts {
                assert!(events.iter().any(|e| e.aggregate_id == *aggregate_id));
                // The store's version; but a gap in the push's own versions
                // (v1 then v3) reports the version the push itself got to
                // (1) when the store's (0) is where the push starts.
                let current = store.aggregate_version(aggregate_id).expect("version");
                assert!(
                    *version >= current,
                    "{aggregate_id:?} is at {current}, not {version}"
                );
            }
        }
        ServerMessage::Error { fatal: false, .. } => {
            assert_eq!(store.head(), head_before, "appended, yet refused");
        }
        other => panic!("a push answered {other:?}"),
    }
}

fn check_placed(store: &Store, p: &Placed) {
    let e = store
        .get(p.event_id)
        .expect("get")
        .unwrap_or_else(|| panic!("placed {p:?}, which the store does not hold"));
    assert_eq!((e.position, e.version), (p.position, p.version));
}

/// Polls a client's follow stream until it runs dry: it sends something
/// exactly when events are due, raw records to raw clients and events to
/// the others, from the position due on, as the store holds them.
fn server_poll(core: &mut ServerCore, store: &mut Store, side: &mut ServerSide, id: ClientId) {
    // Each message moves the stream on by at least one position.
    for _ in 0..=store.head() {
        let polled = core.poll_events(id, store).expect("poll_events");
        let due = side.follow.filter(|&next| next <= store.head());
        let Some(msg) = polled else {
            assert_eq!(due, None, "events due but none sent");
            return;
        };
        let next = due.unwrap_or_else(|| panic!("{msg:?} sent, nothing due"));
        match msg {
            ServerMessage::Events { events } if !side.raw => {
                assert!(!events.is_empty());
                for (i, e) in events.iter().enumerate() {
                    assert_eq!(e.position, next + i as u64);
                    assert_eq!(store.get(e.event_id).expect("get").as_ref(), Some(e));
                }
                side.follow = Some(next + events.len() as u64);
            }
            ServerMessage::Records {
                first_position,
                count,
                records,
            } if side.raw => {
                assert_eq!(first_position, next);
                format::for_each_record(first_position, count, &records, |r| {
                    let e = store.get(r.event_id).expect("get").expect("held");
                    assert_eq!((e.position, e.version), (r.position, r.version));
                })
                .expect("records decode");
                side.follow = Some(next + u64::from(count));
            }
            other => panic!("the follow stream sent {other:?} (raw: {})", side.raw),
        }
    }
    panic!("the follow stream never runs dry");
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
///                                           if bit 2), retry_after_ms: retry % 4: 0, 100, 250, u64::MAX }
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
            Err(crate::Error::Invalid(crate::event::InvalidInput::Timestamp(
                crate::hlc::HlcError::Exhausted,
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
                3 => "a".repeat(crate::event::AGGREGATE_ID_BYTES_MAX_DEFAULT + 1),
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
                    3 => "t".repeat(crate::event::EVENT_TYPE_BYTES_MAX_DEFAULT + 1),
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
        let mut fields: Vec<RecordFields<'_>> = events.iter().map(|e| e.as_ref().into()).collect();
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
                        2 => RETRY_AFTER_MS_MAX,
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
    fn after(&mut self, result: Result<(), crate::sync::SyncError>) {
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

/// One message a [`SeedSession`] sent: JSON with a `type`, and every event
/// in it is in the store at the position it names, contiguous.
fn check_seed_message(msg: &str, store: &Store) {
    let v: serde_json::Value =
        serde_json::from_str(msg).unwrap_or_else(|e| panic!("not JSON ({e}): {msg}"));
    let kind = v["type"]
        .as_str()
        .unwrap_or_else(|| panic!("no type: {msg}"));
    let events = match kind {
        "error" => {
            assert!(v["code"].is_string() && v["message"].is_string(), "{msg}");
            return;
        }
        "server_sync_response" => {
            let status = v["status"].as_str();
            assert!(matches!(status, Some("OK" | "PULL_REQUIRED")), "{msg}");
            let position = v["new_server_position"].as_u64().expect("a position");
            assert!(position <= store.head(), "{msg}");
            let token = v["new_server_hlc"].as_str().expect("a cursor");
            assert_eq!(token.is_empty(), position == 0, "{msg}");
            if position > 0 {
                let ts = Timestamp::parse(token).expect("a cursor is an HLC");
                assert_eq!(ts.node().as_str(), format!("@{position}"));
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
    let mut next = None;
    for e in events {
        let position = e["position"].as_u64().expect("a position");
        assert!(
            next.is_none_or(|n| n == position),
            "a gap before {position}"
        );
        next = Some(position + 1);
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
}
