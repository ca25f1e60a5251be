//! Replays every file of fuzz/corpus/<target>/ through that fuzz target's
//! body in `strata_fuzzing`, on stable Rust. CI has no nightly to run
//! cargo-fuzz, so this is where the seeds, and every crash input a fuzzer
//! ever found (kept in the corpus after its fix), keep being checked: the
//! target functions assert their identities themselves, so a replay that
//! does not panic is a pass.
//!
//! `regenerate_seed_corpus` is ignored by default: it rewrites the
//! generated seeds (`seed-*`) from real stores built with the engine. See
//! fuzz/README.md.

use std::collections::BTreeSet;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use strata::log::format::{FrameHeader, SEGMENT_HEADER_BYTES};
use strata::log::recovery::{ScanStop, scan_frames};
use strata::sync::proto::{
    ClientMessage, ErrorCode, PROTOCOL_VERSION, Placed, Proposal, ServerMessage,
};
use strata::sync::wire;
use strata::{
    AggregateEvents, Durability, Event, ExpectedVersion, ManualClock, NewEvent, Store, Timestamp,
    Uuid,
};
use strata_fuzzing as fuzzing;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 9] = [
    ("segment_reader", fuzzing::segment_reader),
    ("frame_decoder", fuzzing::frame_decoder),
    ("recovery", fuzzing::recovery),
    ("hlc_parse", fuzzing::hlc_parse),
    ("store_model", fuzzing::store_model),
    ("sync_wire", fuzzing::sync_wire),
    ("server_core", fuzzing::server_core),
    ("replica_core", fuzzing::replica_core),
    ("seed_json", fuzzing::seed_json),
];

/// Prefix of the generated seeds; other corpus files (crash inputs kept as
/// regression seeds) are never touched by the generator.
const SEED_PREFIX: &str = "seed-";

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

fn replay(target: &str) {
    let (_, run) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("known target");
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no input", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let bytes = fs::read(path).unwrap();
        if panic::catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus inputs failed (panic messages above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn fuzz_corpus_segment_reader_replays_cleanly() {
    replay("segment_reader");
}

#[test]
fn fuzz_corpus_frame_decoder_replays_cleanly() {
    replay("frame_decoder");
}

#[test]
fn fuzz_corpus_recovery_replays_cleanly() {
    replay("recovery");
}

#[test]
fn fuzz_corpus_hlc_parse_replays_cleanly() {
    replay("hlc_parse");
}

#[test]
fn fuzz_corpus_store_model_replays_cleanly() {
    replay("store_model");
}

#[test]
fn fuzz_corpus_sync_wire_replays_cleanly() {
    replay("sync_wire");
}

#[test]
fn fuzz_corpus_server_core_replays_cleanly() {
    replay("server_core");
}

#[test]
fn fuzz_corpus_replica_core_replays_cleanly() {
    replay("replica_core");
}

#[test]
fn fuzz_corpus_seed_json_replays_cleanly() {
    replay("seed_json");
}

/// A target added to fuzz/ without a corpus, or a corpus without a target,
/// would go unreplayed.
#[test]
fn fuzz_corpus_directories_match_the_fuzz_targets() {
    let names = |dir: PathBuf, suffix: &str| -> BTreeSet<String> {
        fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter_map(|name| name.strip_suffix(suffix).map(str::to_owned))
            .collect()
    };
    let targets: BTreeSet<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    assert_eq!(names(fuzz_dir().join("corpus"), ""), targets);
    assert_eq!(names(fuzz_dir().join("fuzz_targets"), ".rs"), targets);
}

// ---------------------------------------------------------------------------
// Seed generator
// ---------------------------------------------------------------------------

#[test]
#[ignore = "rewrites fuzz/corpus/*/seed-*; run by hand, see fuzz/README.md"]
fn regenerate_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            if name.starts_with(SEED_PREFIX) {
                fs::remove_file(&path).unwrap();
            }
        }
    }
    let stores = seed_stores();
    segment_reader_seeds(&stores);
    frame_decoder_seeds(&stores);
    recovery_seeds();
    hlc_parse_seeds();
    store_model_seeds();
    let sync = SyncLog::build();
    sync_wire_seeds(&sync);
    for (name, bytes) in server_core_seeds() {
        write_seed("server_core", name, &bytes);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED_5E4C);
    for i in 0..4 {
        let len = rng.random_range(16..96);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        write_seed("server_core", &format!("random-{i}"), &bytes);
    }
    // No random runs for replica_core: most of them meet a bug found by
    // the fuzzer (see fuzz/README.md), and crash inputs are kept apart.
    for (name, bytes) in replica_core_seeds(&sync) {
        write_seed("replica_core", name, &bytes);
    }
    for (name, text) in seed_json_seeds() {
        write_seed("seed_json", name, text.as_bytes());
    }
}

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let path = corpus_dir(target).join(format!("{SEED_PREFIX}{name}"));
    assert!(!path.exists(), "two seeds named {name}");
    fs::write(path, bytes).unwrap();
}

/// A store built for seeds: its segment files, store id pinned.
struct SeedStore {
    name: &'static str,
    segments: Vec<(String, Vec<u8>)>,
}

/// Builds a store from appends of `(aggregate, events)` groups, with the
/// fuzz targets' deterministic options, so that regenerating gives the same
/// Appends each entry as one batch of groups, any expected version.
fn append_all(store: &Store, appends: Vec<Vec<(&str, Vec<NewEvent>)>>) {
    for groups in appends {
        let groups: Vec<AggregateEvents> = groups
            .into_iter()
            .map(|(aggregate, events)| AggregateEvents {
                aggregate_id: aggregate.to_owned(),
                expected: ExpectedVersion::Any,
                events,
            })
            .collect();
        store.append_batch(&groups).unwrap();
    }
}

/// bytes.
fn build(
    name: &'static str,
    durability: Durability,
    appends: Vec<Vec<(&str, Vec<NewEvent>)>>,
) -> SeedStore {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(fuzzing::CLOCK_START_MS));
    let store = Store::open(dir.path(), fuzzing::seed_options(durability, clock)).unwrap();
    append_all(&store, appends);
    store.close().unwrap();
    SeedStore {
        name,
        segments: fuzzing::read_segments(dir.path()),
    }
}

fn event(id: u128, event_type: &str, data: &[u8]) -> NewEvent {
    NewEvent::new(event_type, data.to_vec()).with_id(Uuid::from_u128(id))
}

fn seed_stores() -> Vec<SeedStore> {
    let value = |n: u32| format!("{{\"value\":{n}}}").into_bytes();
    let binary: Vec<u8> = (0..=255).collect();
    vec![
        build("empty", Durability::None, vec![]),
        build(
            "one-event",
            Durability::None,
            vec![vec![(
                "counter-1",
                vec![event(1, "CounterIncremented", &value(1))],
            )]],
        ),
        build(
            "mixed",
            Durability::None,
            vec![
                vec![
                    ("counter-1", vec![event(1, "CounterIncremented", &value(1))]),
                    ("gruß-☃", vec![event(2, "Zählerstand", &binary)]),
                ],
                vec![(
                    "counter-1",
                    vec![
                        event(3, "CounterDecremented", &value(2)).with_metadata(Vec::new()),
                        event(4, "CounterIncremented", b"").with_metadata(b"{\"user\":7}".to_vec()),
                    ],
                )],
                vec![(
                    "counter-2",
                    vec![event(5, "Imported", &value(3)).with_timestamp(
                        Timestamp::parse("1600000000000:4294967295:remote-node").unwrap(),
                    )],
                )],
            ],
        ),
        build(
            "sync",
            Durability::Sync,
            (0..5)
                .map(|i| {
                    let events = (0..=i % 2)
                        .map(|j| event(u128::from(10 * i + j + 1), "Step", &value(i)))
                        .collect();
                    vec![("steps", events)]
                })
                .collect(),
        ),
        // A batch too big for a 4 KiB segment gets a segment of its own;
        // the next append seals it.
        build(
            "big",
            Durability::None,
            vec![
                vec![("big", vec![event(1, "Blob", &[b'x'; 5000])])],
                vec![("big", vec![event(2, "Small", &value(0))])],
            ],
        ),
        SeedStore {
            name: "reference",
            segments: fuzzing::reference_segments().to_vec(),
        },
    ]
}

/// `(offset, length)` of every frame of a segment, seal included.
fn frames(segment: &[u8], first_position: u64) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let scan = scan_frames(segment, first_position, |offset, _| {
        let offset = offset as usize;
        let header = FrameHeader::decode(&segment[offset..]).unwrap();
        out.push((offset, header.frame_len() as usize));
    });
    match scan.stop {
        ScanStop::End => {}
        ScanStop::Sealed { offset, .. } => {
            out.push((offset as usize, segment.len() - offset as usize));
        }
        ScanStop::Bad { offset, error } => panic!("seed segment bad at {offset}: {error}"),
    }
    out
}

fn first_position(name: &str) -> u64 {
    strata::log::segment::parse_segment_file_name(name).unwrap()
}

fn segment_reader_seeds(stores: &[SeedStore]) {
    for store in stores {
        for (i, (name, bytes)) in store.segments.iter().enumerate() {
            write_seed(
                "segment_reader",
                &format!("{}-segment-{}", store.name, i + 1),
                bytes,
            );
            // Later segments do not start at position 1: they exercise the
            // name check only, so one of them is enough.
            if first_position(name) != 1 {
                break;
            }
        }
    }
    // Damage and torn tails on the segments with several frames.
    for store in stores
        .iter()
        .filter(|s| ["mixed", "sync"].contains(&s.name))
    {
        let bytes = &store.segments[0].1;
        let frames = frames(bytes, 1);
        let &(last, last_len) = frames.last().unwrap();
        let (second, second_len) = frames[1];
        let mut variants: Vec<(&str, Vec<u8>)> = vec![
            ("torn-in-last-frame", bytes[..last + last_len / 2].to_vec()),
            ("torn-in-last-frame-header", bytes[..last + 7].to_vec()),
            ("short-header", bytes[..SEGMENT_HEADER_BYTES - 1].to_vec()),
            ("zeros-after-last-frame", [&bytes[..], &[0u8; 40]].concat()),
            (
                "last-frame-twice",
                [&bytes[..], &bytes[last..last + last_len]].concat(),
            ),
        ];
        let mut flipped = bytes.clone();
        flipped[second + second_len / 2] ^= 0x20;
        variants.push(("flip-in-second-frame", flipped));
        for (variant, bytes) in variants {
            write_seed(
                "segment_reader",
                &format!("{}-{variant}", store.name),
                &bytes,
            );
        }
    }
}

fn frame_decoder_seeds(stores: &[SeedStore]) {
    for store in stores {
        let (name, bytes) = &store.segments[0];
        write_seed(
            "frame_decoder",
            &format!("{}-segment-header", store.name),
            &bytes[..SEGMENT_HEADER_BYTES],
        );
        for (offset, len) in frames(bytes, first_position(name)) {
            let frame = &bytes[offset..offset + len];
            let kind = if &frame[..4] == b"SEAL" {
                "seal"
            } else {
                "batch"
            };
            let seed = format!("{}-{kind}-frame-at-{offset}", store.name);
            write_seed("frame_decoder", &seed, frame);
            if kind == "seal" {
                continue;
            }
            // The payload alone goes straight to the batch parser, and its
            // first record to the record decoder (which checks its CRC).
            let payload = &frame[20..];
            write_seed("frame_decoder", &format!("{seed}-payload"), payload);
            let record_len = u32::from_le_bytes(payload[16..20].try_into().unwrap()) as usize;
            write_seed(
                "frame_decoder",
                &format!("{seed}-record"),
                &payload[16..16 + record_len],
            );
        }
    }
}

/// Mutations of the reference store (`[kind, offset u32 LE, argument u16
/// LE]`, see `strata_fuzzing::recovery`) at its interesting offsets: the
/// headers and every frame of the first (sealed) and last (active)
/// segments, plus one frame in between.
fn recovery_seeds() {
    const TRUNCATE: u8 = 0;
    const FLIP: u8 = 1;
    const DUPLICATE: u8 = 2;
    let segments = fuzzing::reference_segments();
    let mut seeds: Vec<(String, u8, usize, u16)> = Vec::new();
    let mut base = 0;
    for (i, (name, bytes)) in segments.iter().enumerate() {
        let frames = frames(bytes, first_position(name));
        let edge = i == 0 || i == segments.len() - 1;
        let s = i + 1;
        seeds.push((
            format!("seg{s}-flip-header-store-id"),
            FLIP,
            base + 20,
            0x01,
        ));
        seeds.push((format!("seg{s}-truncate-in-header"), TRUNCATE, base + 47, 0));
        for (f, &(offset, len)) in frames.iter().enumerate() {
            if !edge && f != 1 {
                continue;
            }
            let at = base + offset;
            let frame = format!("seg{s}-frame{}", f + 1);
            let whole = (len - 1).min(u16::MAX as usize) as u16;
            seeds.extend([
                (format!("{frame}-truncate-at-start"), TRUNCATE, at, 0),
                (
                    format!("{frame}-truncate-in-middle"),
                    TRUNCATE,
                    at + len / 2,
                    0,
                ),
                (format!("{frame}-flip-magic"), FLIP, at, 0x04),
                (format!("{frame}-flip-length"), FLIP, at + 5, 0x80),
                (format!("{frame}-flip-durable-offset"), FLIP, at + 9, 0x01),
                (
                    format!("{frame}-flip-payload"),
                    FLIP,
                    at + 20 + len / 3,
                    0xff,
                ),
                (format!("{frame}-duplicate-whole"), DUPLICATE, at, whole),
            ]);
        }
        base += bytes.len();
    }
    for (name, kind, at, argument) in seeds {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&(at as u32).to_le_bytes());
        bytes.extend_from_slice(&argument.to_le_bytes());
        write_seed("recovery", &name, &bytes);
    }
}

fn hlc_parse_seeds() {
    let seeds: [(&str, &str); 30] = [
        ("fixed", "001700000000000:0000000000:nodeA"),
        ("fixed-max", "999999999999999:4294967295:node"),
        ("fixed-zero", "000000000000000:0000000000:n"),
        ("unpadded-seed-form", "1700000000000:0:nodeA"),
        ("unpadded-small", "9:0:A"),
        ("mixed-padding", "0017:00000:node"),
        ("node-with-colons", "1:2:a:b:c"),
        ("node-unicode", "1700000000000:3:gruß-☃"),
        (
            "node-64-bytes",
            "1:0:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        (
            "node-65-bytes",
            "1:0:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdefX",
        ),
        (
            "store-node-id",
            "001700000000000:0000000001:9f3c2a1b4d5e6f70",
        ),
        ("pair-ordered-numerically", "9:0:A\n10:0:A"),
        ("pair-same-clock-nodes-differ", "5:1:A\n5:1:B"),
        (
            "pair-fixed-and-unpadded",
            "001700000000000:0000000007:n\n1700000000000:7:n",
        ),
        ("pair-counter-vs-physical", "1:4294967295:z\n2:0:a"),
        ("empty", ""),
        ("physical-only", "1"),
        ("no-node", "1:2"),
        ("empty-node", "1:0:"),
        ("letters", "x:0:n"),
        ("negative", "-1:0:n"),
        ("plus-sign", "+1:0:n"),
        ("counter-overflow", "1:4294967296:n"),
        ("counter-11-digits", "1:00000000000:n"),
        ("physical-16-digits", "1234567890123456:0:n"),
        ("space-in-node", "1:0:has space"),
        ("leading-space", " 1:0:n"),
        ("tab-in-node", "1:0:a\tb"),
        (
            "too-long",
            "000000000000001:0000000001:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-",
        ),
        ("pair-one-bad", "1:0:n\n1:x:n"),
    ];
    for (name, text) in seeds {
        write_seed("hlc_parse", name, text.as_bytes());
    }
}

/// Operation sequences for `store_model` (opcodes in
/// `strata_fuzzing::store_model`'s documentation), hand-written for the
/// paths that matter, plus a few random ones.
fn store_model_seeds() {
    const APPEND: u8 = 0;
    const APPEND_TWO: u8 = 1;
    const RETRY: u8 = 2;
    const REOPEN: u8 = 3;
    const CLOCK: u8 = 4;
    const READ: u8 = 5;
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("append-read", vec![APPEND, 0, 0, 0, 2, READ, 0, 1, 3]),
        (
            "append-reopen-read",
            vec![
                APPEND, 0, 2, 1, 4, REOPEN, READ, 0, 0, 7, APPEND, 0, 0, 2, 1, READ, 0, 1, 7,
            ],
        ),
        (
            "conflict-no-stream",
            vec![APPEND, 1, 0, 1, 0, APPEND, 1, 0, 1, 0, READ, 1, 0, 0],
        ),
        (
            "conflict-wrong-exact",
            vec![APPEND, 2, 1, 2, 9, APPEND, 2, 1, 3, 9, APPEND, 2, 1, 2, 9],
        ),
        (
            "two-aggregates-second-conflicts",
            vec![APPEND, 1, 0, 0, 1, APPEND_TWO, 0, 0, 1, 3, READ, 1, 0, 7],
        ),
        (
            "retry-is-idempotent",
            vec![APPEND, 0, 3, 1, 5, RETRY, 0, RETRY, 0, READ, 0, 0, 7],
        ),
        (
            "retry-plus-new-event",
            vec![
                APPEND_TWO, 0, 1, 0, 3, RETRY, 1, READ, 0, 0, 7, REOPEN, RETRY, 1,
            ],
        ),
        (
            "clock-steps-back",
            vec![
                CLOCK, 200, APPEND, 0, 0, 0, 1, CLOCK, 3, APPEND, 0, 1, 0, 1, REOPEN, APPEND, 1, 0,
                0, 1, READ, 0, 0, 7,
            ],
        ),
        // 255 * 8 bytes per event: segments roll every few appends.
        (
            "segments-roll",
            [APPEND, 0, 3, 0, 255]
                .repeat(6)
                .into_iter()
                .chain([REOPEN, READ, 0, 2, 7])
                .collect(),
        ),
        (
            "many-reopens",
            [APPEND_TWO, 2, 0, 0, 40, REOPEN]
                .repeat(5)
                .into_iter()
                .chain([READ, 2, 3, 7])
                .collect(),
        ),
    ];
    for (name, bytes) in seeds {
        write_seed("store_model", name, &bytes);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    for i in 0..6 {
        let len = rng.random_range(16..96);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        write_seed("store_model", &format!("random-{i}"), &bytes);
    }
}

// ---------------------------------------------------------------------------
// Sync seeds
// ---------------------------------------------------------------------------

/// A small server log for the sync seeds, built like the other seed
/// stores (manual clock, fixed ids and node), read back as events and as
/// raw records.
struct SyncLog {
    events: Vec<Event>,
    /// The whole log as one run of raw records.
    records: strata::log::RawRun,
}

impl SyncLog {
    fn build() -> SyncLog {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(fuzzing::CLOCK_START_MS));
        let store =
            Store::open(dir.path(), fuzzing::seed_options(Durability::None, clock)).unwrap();
        let appends: Vec<Vec<(&str, Vec<NewEvent>)>> = vec![
            vec![
                ("agg-0", vec![event(1, "T", b"{}")]),
                ("agg-1", vec![event(2, "T", b"{\"v\":1}")]),
            ],
            vec![(
                "agg-0",
                vec![event(3, "T", b"").with_metadata(b"{\"m\":1}".to_vec())],
            )],
            vec![(
                "agg-2",
                vec![
                    event(4, "Imported", &[0, 1, 0xff])
                        .with_timestamp(Timestamp::parse("1600000000000:7:remote").unwrap()),
                ],
            )],
        ];
        append_all(&store, appends);
        let events = store.read_all(1).collect::<Result<Vec<_>, _>>().unwrap();
        let records = store.read_raw_records(1, usize::MAX).unwrap().unwrap();
        store.close().unwrap();
        SyncLog { events, records }
    }

    fn records_message(&self) -> ServerMessage {
        self.records.clone().into()
    }
}

/// A message's wire payload, without its length prefix.
fn client_payload(msg: &ClientMessage) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(msg, &mut out).unwrap();
    out.split_off(wire::LENGTH_BYTES)
}

fn server_payload(msg: &ServerMessage) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode(msg, &mut out).unwrap();
    out.split_off(wire::LENGTH_BYTES)
}

/// A payload with the first occurrence of `ts` (a length-prefixed
/// fixed-width text) written unpadded instead, as the seed's clients do.
fn unpad(payload: &[u8], ts: &Timestamp) -> Vec<u8> {
    let fixed = ts.to_text();
    let mut needle = (fixed.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(fixed.as_bytes());
    let at = payload
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let short = format!("{}:{}:{}", ts.physical_ms(), ts.counter(), ts.node());
    let mut out = payload[..at].to_vec();
    out.extend_from_slice(&(short.len() as u64).to_le_bytes());
    out.extend_from_slice(short.as_bytes());
    out.extend_from_slice(&payload[at + needle.len()..]);
    out
}

/// A chunk of the operation formats of `server_core` and `replica_core`:
/// a `u16` LE length (`0xffff`: the rest of the input), then the bytes.
fn chunk(payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len())
        .ok()
        .filter(|&len| len != u16::MAX)
        .unwrap_or(u16::MAX);
    [&len.to_le_bytes()[..], payload].concat()
}

fn remote(physical_ms: u64, counter: u32) -> Timestamp {
    Timestamp::from_parts(physical_ms, counter, "remote").unwrap()
}

fn sample_proposal(id: u128, aggregate: &str, version: u64) -> Proposal {
    Proposal {
        event_id: Uuid::from_u128(id),
        aggregate_id: aggregate.into(),
        version,
        event_type: "T".into(),
        data: b"{}".to_vec(),
        timestamp: remote(fuzzing::CLOCK_START_MS, 0),
        metadata: None,
    }
}

fn hello(token: Option<&str>) -> ClientMessage {
    ClientMessage::Hello {
        protocol: PROTOCOL_VERSION,
        store: "default".into(),
        token: token.map(str::to_owned),
        client: "fuzz-client".into(),
    }
}

fn sync_wire_seeds(sync: &SyncLog) {
    let push_one = client_payload(&ClientMessage::Push {
        request: 1,
        base: 0,
        events: vec![sample_proposal(1, "agg-0", 1)],
    });
    let mut with_metadata = sample_proposal(2, "agg-1", 1);
    with_metadata.metadata = Some(b"{\"m\":1}".to_vec());
    let events = ServerMessage::Events {
        events: sync.events.clone(),
    };
    let error = |code, fatal| ServerMessage::Error {
        code,
        message: "refused".into(),
        fatal,
    };
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "client-hello-token",
            client_payload(&hello(Some(fuzzing::SYNC_TOKEN))),
        ),
        ("client-hello-no-token", client_payload(&hello(None))),
        (
            "client-follow",
            client_payload(&ClientMessage::Follow { from: 1 }),
        ),
        (
            "client-follow-max",
            client_payload(&ClientMessage::Follow { from: u64::MAX }),
        ),
        ("client-push-one", push_one.clone()),
        (
            "client-push-two",
            client_payload(&ClientMessage::Push {
                request: 2,
                base: 4,
                events: vec![sample_proposal(1, "agg-0", 1), with_metadata],
            }),
        ),
        (
            "client-push-empty",
            client_payload(&ClientMessage::Push {
                request: 3,
                base: 0,
                events: Vec::new(),
            }),
        ),
        (
            "client-push-unpadded-timestamp",
            unpad(&push_one, &remote(fuzzing::CLOCK_START_MS, 0)),
        ),
        (
            "server-welcome",
            server_payload(&ServerMessage::Welcome {
                protocol: PROTOCOL_VERSION,
                store_id: fuzzing::PINNED_STORE_ID,
                head: 4,
            }),
        ),
        (
            "server-accepted",
            server_payload(&ServerMessage::Accepted {
                request: 1,
                placed: vec![Placed {
                    event_id: Uuid::from_u128(1),
                    position: 1,
                    version: 1,
                }],
                head: 4,
            }),
        ),
        (
            "server-pull-required",
            server_payload(&ServerMessage::PullRequired {
                request: 1,
                conflicts: vec![("agg-0".into(), 2)],
                head: 4,
                retry_after_ms: 250,
            }),
        ),
        (
            "server-rejected",
            server_payload(&ServerMessage::Rejected {
                request: 1,
                rejections: vec![(Uuid::from_u128(1), "no".into())],
            }),
        ),
        ("server-events", server_payload(&events)),
        (
            "server-events-unpadded-timestamp",
            unpad(&server_payload(&events), &sync.events[3].timestamp),
        ),
        ("server-records", server_payload(&sync.records_message())),
        (
            "server-error-fatal",
            server_payload(&error(ErrorCode::Unauthorized, true)),
        ),
        (
            "server-error-too-large",
            server_payload(&error(ErrorCode::TooLarge, false)),
        ),
    ];
    // Malformed variants.
    let hello_token = client_payload(&hello(Some(fuzzing::SYNC_TOKEN)));
    let mut bad_option = hello_token.clone();
    bad_option[4 + 4 + 8 + "default".len()] = 2;
    let mut bad_utf8 = hello_token;
    bad_utf8[4 + 4 + 8] = 0xff;
    let mut bad_bool = server_payload(&error(ErrorCode::Internal, false));
    *bad_bool.last_mut().unwrap() = 2;
    // The proposal's id: a length of 15 and 15 bytes.
    let id_at = 4 + 8 + 8 + 8;
    let mut short_uuid = push_one.clone();
    short_uuid[id_at..id_at + 8].copy_from_slice(&15u64.to_le_bytes());
    short_uuid.remove(id_at + 8);
    let mut bad_tag = client_payload(&ClientMessage::Follow { from: 1 });
    bad_tag[0] = 9;
    let mut huge_claim = push_one.clone();
    huge_claim[4 + 8 + 8..4 + 8 + 8 + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    seeds.extend([
        (
            "bad-push-truncated",
            push_one[..push_one.len() - 1].to_vec(),
        ),
        ("bad-push-trailing-byte", [&push_one[..], &[0]].concat()),
        ("bad-option-tag", bad_option),
        ("bad-utf8", bad_utf8),
        ("bad-bool", bad_bool),
        ("bad-uuid-length", short_uuid),
        ("bad-variant", bad_tag),
        ("bad-huge-length", huge_claim),
    ]);
    for (name, bytes) in seeds {
        write_seed("sync_wire", name, &bytes);
    }
}

/// Operation runs for `server_core` (opcodes in the documentation of
/// `strata_fuzzing`'s `ServerOp`).
fn server_core_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const WIRE: u8 = 0;
    const STORAGE: u8 = 1;
    const FOLLOW: u8 = 2;
    const RETRY: u8 = 4;
    const WAIT: u8 = 5;
    const RECONNECT: u8 = 6;
    const POLL: u8 = 7;
    // Added to an opcode: the second client (raw records), the third.
    const ONE: u8 = 8;
    const TWO: u8 = 16;
    // Arguments of STORAGE: carry out a commit (or hand back the one in
    // flight); carry one out and leave it in flight; fail one before or
    // after writing; another node appends (plus 8 times the aggregate).
    const COMMIT: u8 = 0;
    const START: u8 = 4;
    const FAIL_BEFORE: u8 = 5;
    const FAIL_AFTER: u8 = 6;
    const FOREIGN: u8 = 7;
    // A proposal: id, aggregate (3: the empty id), version, flags (see
    // `strata_fuzzing::proposal`: timestamp % 4, data << 2, metadata 16,
    // the forbidden type 32).
    let ev = |id: u8, agg: u8, version: u8, flags: u8| [id - 1, agg | version << 2, flags];
    let push = |client: u8, events: &[[u8; 3]]| -> Vec<u8> {
        let mut out = vec![3 + client, events.len() as u8 - 1];
        out.extend(events.iter().flatten());
        out
    };
    let commit = [STORAGE, COMMIT];
    let cat = |parts: &[&[u8]]| parts.concat();
    // Client 0 appends to agg-0; client 1, behind, conflicts in the same
    // commit and gets the turn on agg-0.
    let conflict = cat(&[
        &push(0, &[ev(1, 0, 1, 0)]),
        &push(ONE, &[ev(2, 0, 1, 0)]),
        &commit,
    ]);
    vec![
        (
            "push-commit-follow",
            cat(&[
                &[FOLLOW, 1],
                &push(0, &[ev(1, 0, 1, 0), ev(2, 1, 1, 16)]),
                &commit,
                &[POLL],
                &push(0, &[ev(3, 0, 2, 0)]),
                &commit,
                &[POLL],
            ]),
        ),
        (
            "raw-client-follows",
            cat(&[
                &[ONE + FOLLOW, 1],
                &push(0, &[ev(1, 0, 1, 0), ev(2, 1, 1, 0), ev(3, 2, 1, 0)]),
                &commit,
                &[ONE + POLL],
                &push(0, &[ev(4, 0, 2, 0)]),
                &commit,
                &[ONE + POLL, ONE + FOLLOW, 2, ONE + POLL],
            ]),
        ),
        (
            // Three clients, two pushes a commit.
            "group-commit",
            cat(&[
                &[FOLLOW, 1, ONE + FOLLOW, 1, TWO + FOLLOW, 1],
                &push(0, &[ev(1, 0, 1, 0)]),
                &push(ONE, &[ev(2, 1, 1, 0)]),
                &push(TWO, &[ev(3, 2, 1, 0)]),
                &commit,
                &[POLL, ONE + POLL],
                &commit,
                &[TWO + POLL],
            ]),
        ),
        (
            // Client 0's next push is held while client 1 has the turn,
            // goes once client 1 has appended, and conflicts.
            "conflict-turn-held",
            cat(&[
                &conflict,
                &push(0, &[ev(3, 0, 2, 0)]),
                &commit,
                &push(ONE, &[ev(2, 0, 2, 0)]),
                &commit,
                &commit,
                &push(0, &[ev(3, 0, 3, 0)]),
                &commit,
            ]),
        ),
        (
            "lease-expires",
            cat(&[
                &conflict,
                &push(0, &[ev(3, 0, 2, 0)]),
                &commit,
                &[WAIT, 40],
                &commit,
            ]),
        ),
        (
            // A push still held when the input ends: the turn has to run
            // out for it.
            "held-at-the-end",
            cat(&[&conflict, &push(0, &[ev(3, 0, 2, 0)])]),
        ),
        (
            "holder-disconnects",
            cat(&[
                &conflict,
                &push(0, &[ev(3, 0, 2, 0)]),
                &[ONE + RECONNECT, 1],
                &commit,
                &[ONE + FOLLOW, 0, ONE + POLL],
            ]),
        ),
        (
            // Pushes that arrive while a commit is in flight go in the
            // next one.
            "in-flight-commit",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0)]),
                &[STORAGE, START],
                &push(ONE, &[ev(2, 1, 1, 0)]),
                &push(0, &[ev(3, 0, 2, 0)]),
                &commit,
                &commit,
            ]),
        ),
        (
            "commit-fails-before-write",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0)]),
                &push(ONE, &[ev(2, 1, 1, 0)]),
                &[STORAGE, FAIL_BEFORE, RETRY, ONE + RETRY],
                &commit,
            ]),
        ),
        (
            // The events are in the log, the client heard Unavailable;
            // its retry finds them there.
            "commit-fails-after-write",
            cat(&[
                &[FOLLOW, 1],
                &push(0, &[ev(1, 0, 1, 0), ev(2, 0, 2, 0)]),
                &[STORAGE, FAIL_AFTER, POLL, RETRY],
                &commit,
                &[POLL],
            ]),
        ),
        (
            "foreign-appends",
            cat(&[
                &[FOLLOW, 1, STORAGE, FOREIGN],
                &push(0, &[ev(1, 0, 1, 0)]),
                &commit,
                &push(0, &[ev(1, 0, 2, 0)]),
                &[STORAGE, FOREIGN + 8],
                &commit,
                &[POLL],
                // Another node appends while a commit is in flight.
                &push(0, &[ev(5, 2, 1, 0)]),
                &[STORAGE, START, STORAGE, FOREIGN + 16],
                &commit,
                &[POLL],
            ]),
        ),
        (
            "rejections",
            cat(&[
                // Version 0, the empty aggregate, the policy, data over
                // the limit: refused at once.
                &push(
                    0,
                    &[
                        ev(1, 0, 0, 0),
                        ev(2, 3, 1, 0),
                        ev(3, 0, 1, 32),
                        ev(4, 0, 1, 8),
                    ],
                ),
                // An hour ahead, the largest clock (refused by the log's
                // clock), not JSON.
                &push(0, &[ev(5, 0, 1, 1), ev(6, 1, 1, 3), ev(7, 2, 1, 12)]),
                &commit,
                &commit,
                &commit,
                // 1 ms, with metadata.
                &push(0, &[ev(8, 2, 2, 2 | 16)]),
                &commit,
            ]),
        ),
        (
            "too-large",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0); 5]),
                &push(0, &[ev(1, 0, 1, 0); 4]),
                &commit,
            ]),
        ),
        (
            "waiting-limit",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0)]),
                &push(0, &[ev(2, 0, 2, 0)]),
                &push(0, &[ev(3, 0, 3, 0)]),
                &push(0, &[ev(4, 0, 4, 0)]),
                &push(0, &[ev(5, 0, 5, 0)]),
                &commit,
                &commit,
            ]),
        ),
        (
            // Id 1 again, on another aggregate and with other data: refused;
            // with the same content: the same event, where it is.
            "id-reused-other-content",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0)]),
                &commit,
                &push(ONE, &[ev(1, 1, 1, 0)]),
                &commit,
                &push(ONE, &[ev(1, 0, 2, 4)]),
                &commit,
                &push(ONE, &[ev(1, 0, 1, 16)]),
                &commit,
                &push(ONE, &[ev(1, 0, 1, 0), ev(2, 0, 2, 0)]),
                &commit,
            ]),
        ),
        (
            "duplicate-ids",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0), ev(1, 0, 1, 0)]),
                &push(0, &[ev(2, 1, 1, 0), ev(2, 1, 2, 16)]),
                &push(0, &[ev(1, 2, 1, 0)]),
                &commit,
                &commit,
                &commit,
                &[RETRY],
                &commit,
                &push(0, &[ev(1, 0, 1, 0), ev(9, 0, 2, 0)]),
                &commit,
            ]),
        ),
        (
            "version-gap-in-push",
            cat(&[&push(0, &[ev(1, 0, 1, 0), ev(2, 0, 3, 0)]), &commit]),
        ),
        (
            // A push with a gap, and in the same commit another that fills
            // it (see "a conflict can name a version the aggregate no
            // longer has" in fuzz/README.md).
            "gap-filled-in-the-same-commit",
            cat(&[
                &push(0, &[ev(1, 0, 2, 0)]),
                &push(ONE, &[ev(2, 0, 1, 0)]),
                &commit,
            ]),
        ),
        (
            "read-only",
            cat(&[
                &[RECONNECT, 2, FOLLOW, 1],
                &push(0, &[ev(1, 0, 1, 0)]),
                &push(ONE, &[ev(2, 0, 1, 0)]),
                &commit,
                &[POLL],
            ]),
        ),
        (
            "follow-from-max",
            cat(&[
                &[FOLLOW, 255],
                &push(0, &[ev(1, 0, 1, 0)]),
                &commit,
                &[POLL, FOLLOW, 0, POLL],
            ]),
        ),
        (
            // A push whose client leaves before its commit is dropped.
            "disconnect-pending-push",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0)]),
                &[RECONNECT, 0],
                &commit,
                &[RETRY],
                &commit,
            ]),
        ),
        (
            // One whose commit is in flight is appended, unanswered; the
            // retry finds it.
            "disconnect-in-flight-push",
            cat(&[
                &push(0, &[ev(1, 0, 1, 0)]),
                &[STORAGE, START, RECONNECT, 0],
                &commit,
                &[RETRY],
                &commit,
            ]),
        ),
        (
            "wire-messages",
            cat(&[
                &[WIRE],
                &chunk(&client_payload(&hello(Some(fuzzing::SYNC_TOKEN)))),
                &[WIRE],
                &chunk(&client_payload(&ClientMessage::Follow { from: 1 })),
                &[WIRE],
                &chunk(&client_payload(&ClientMessage::Push {
                    request: 7,
                    base: 0,
                    events: vec![
                        sample_proposal(1, "agg-0", 1),
                        sample_proposal(2, "agg-0", 2),
                    ],
                })),
                &commit,
                &[POLL, WIRE],
                &chunk(b"not a message"),
                &[ONE + WIRE],
                &chunk(&client_payload(&hello(None))),
                &[ONE + WIRE],
                &chunk(&client_payload(&ClientMessage::Push {
                    request: 0,
                    base: 0,
                    events: Vec::new(),
                })),
            ]),
        ),
    ]
}

/// Operation runs for `replica_core` (opcodes in
/// `strata_fuzzing::replica_core`'s documentation). The replica starts
/// with pending events agg-0 v1, agg-0 v2, agg-1 v1 and pushes two at a
/// time.
fn replica_core_seeds(sync: &SyncLog) -> Vec<(&'static str, Vec<u8>)> {
    const WIRE: u8 = 0;
    const WELCOME: u8 = 1;
    const EVENTS: u8 = 2;
    const RECORDS: u8 = 3;
    const ACCEPTED: u8 = 4;
    const PULL: u8 = 5;
    const REFUSAL: u8 = 6;
    const LOCAL: u8 = 7;
    // Where a run of events starts (0: after the head, 4: at it, 5: one
    // past it, 6: 1) and how many.
    let spec = |start: u8, n: u8| start | n << 3;
    // One event: aggregate, version (0: next, 2: one past, 3: current),
    // id (0: fresh, 2: the first pending, 3: position 1's), timestamp (0:
    // now, 1: an hour ahead, 3: 0), data (0: `{}`, 2: not JSON).
    let ev = |agg: u8, version: u8, id: u8, ts: u8| [agg, version | id << 2 | ts << 4];
    let events = |start: u8, evs: &[[u8; 2]]| -> Vec<u8> {
        let mut out = vec![EVENTS, spec(start, evs.len() as u8)];
        out.extend(evs.iter().flatten());
        out
    };
    let records = |start: u8, damage: u8, evs: &[[u8; 2]]| -> Vec<u8> {
        let mut out = vec![RECORDS, spec(start, evs.len() as u8), damage];
        out.extend(evs.iter().flatten());
        out
    };
    let cat = |parts: &[&[u8]]| parts.concat();
    let first_pending = |agg| ev(agg, 0, 2, 0);
    let other = |agg| ev(agg, 0, 0, 0);
    let welcome = [WELCOME, 0];
    vec![
        (
            "welcome-accepted-events",
            cat(&[
                &welcome,
                &[ACCEPTED, 8],
                &events(0, &[first_pending(0)]),
                &events(0, &[first_pending(0)]),
                &[ACCEPTED, 4],
                &events(0, &[first_pending(1)]),
            ]),
        ),
        (
            "pull-required-rebase",
            cat(&[
                &welcome,
                &events(0, &[other(0), other(1)]),
                &[PULL, 0, 0, 0],
                &[ACCEPTED, 8],
            ]),
        ),
        (
            "pull-required-retry-after",
            cat(&[
                &welcome,
                &[PULL, 0, 0, 1, LOCAL, 4, PULL, 0, 0, 2, LOCAL, 4],
            ]),
        ),
        (
            "rejected-then-accepted",
            cat(&[&welcome, &[REFUSAL, 0, ACCEPTED, 4]]),
        ),
        (
            "stale-answers",
            cat(&[
                &welcome,
                &[ACCEPTED, 1 | 8, ACCEPTED, 2, PULL, 3, 0, 0, ACCEPTED, 16],
            ]),
        ),
        (
            "error-too-large-halves",
            cat(&[
                &welcome,
                &[
                    REFUSAL,
                    4 | 4 << 3,
                    LOCAL,
                    8,
                    REFUSAL,
                    4 | 5 << 3,
                    LOCAL,
                    16,
                ],
            ]),
        ),
        (
            "error-fatal-reconnects",
            cat(&[&welcome, &[REFUSAL, 4 | 1 | 2 << 3], &welcome]),
        ),
        (
            "welcome-wrong-store",
            cat(&[&welcome, &[LOCAL, 1, WELCOME, 1]]),
        ),
        (
            "welcome-server-behind",
            cat(&[&welcome, &events(0, &[other(2)]), &[WELCOME, 8]]),
        ),
        ("welcome-other-protocol", vec![WELCOME, 2, WELCOME, 4]),
        (
            "events-gap-overlap-repeat",
            cat(&[
                &events(0, &[other(0), other(1)]),
                &events(5, &[other(0)]),
                &events(4, &[other(0), other(0)]),
                &events(6, &[other(2)]),
            ]),
        ),
        (
            "events-bad-versions",
            cat(&[
                &events(0, &[ev(0, 2, 0, 0)]),
                &events(0, &[other(0), ev(0, 3, 0, 0)]),
            ]),
        ),
        (
            "events-odd-fields",
            cat(&[
                // A 257-byte aggregate, an empty type, a long type.
                &events(0, &[other(3)]),
                &events(0, &[[8, 0], [12 | 16 | 32, 1 << 6], [0, 3 << 6]]),
                // An hour ahead, a clock of 0.
                &events(0, &[ev(1, 0, 0, 1), ev(1, 0, 0, 3)]),
            ]),
        ),
        (
            "records",
            cat(&[
                &welcome,
                &records(0, 0, &[first_pending(0), other(1)]),
                &records(0, 0, &[]),
                &records(0, 4 | 3 << 3, &[other(2)]),
                &records(0, 5, &[other(2)]),
                &records(6, 0, &[other(0), other(0), other(2)]),
            ]),
        ),
        (
            "timeout",
            cat(&[&welcome, &[LOCAL, 252, LOCAL, 252, LOCAL, 252]]),
        ),
        (
            "local-appends",
            cat(&[
                &[LOCAL, 2, LOCAL, 6],
                &welcome,
                &[LOCAL, 3, LOCAL, 1, LOCAL, 10],
            ]),
        ),
        (
            "wire-welcome-events",
            cat(&[
                &[WIRE],
                &chunk(&server_payload(&ServerMessage::Welcome {
                    protocol: PROTOCOL_VERSION,
                    store_id: fuzzing::PINNED_STORE_ID,
                    head: 4,
                })),
                &[WIRE],
                &chunk(&server_payload(&ServerMessage::Events {
                    events: sync.events.clone(),
                })),
            ]),
        ),
        (
            "wire-welcome-records",
            cat(&[
                &[WIRE],
                &chunk(&server_payload(&ServerMessage::Welcome {
                    protocol: PROTOCOL_VERSION,
                    store_id: fuzzing::PINNED_STORE_ID,
                    head: 4,
                })),
                &[WIRE],
                &chunk(&server_payload(&sync.records_message())),
            ]),
        ),
    ]
}

/// Lines of JSON messages for `seed_json`; a line starting with `>` goes to
/// the second session, which has to authenticate first.
fn seed_json_seeds() -> Vec<(&'static str, String)> {
    let ev = |id: u32, agg: &str, version: u64, data: &str| {
        format!(
            r#"{{"event_id":"00000000-0000-0000-0000-{id:012}","aggregate_id":"{agg}","version":{version},"event_type":"T","event_data":{data},"timestamp":"1700000000000:0:nodeA","metadata":null}}"#
        )
    };
    let sync = |hlc: &str, events: &[String]| {
        format!(
            r#"{{"type":"client_sync_request","last_synced_hlc":"{hlc}","local_events":[{}]}}"#,
            events.join(",")
        )
    };
    let push = |events: &[String]| {
        format!(
            r#"{{"type":"client_push_events","rebased_events":[{}]}}"#,
            events.join(",")
        )
    };
    let auth = format!(r#">{{"type":"auth","token":"{}"}}"#, fuzzing::SYNC_TOKEN);
    let lines = |lines: &[String]| lines.join("\n");
    let two = ev(2, "agg-0", 2, r#"{"v":2}"#);
    vec![
        (
            "sync-then-push",
            lines(&[
                sync("", &[]),
                sync("", &[ev(1, "agg-0", 1, r#"{"v":1}"#)]),
                push(std::slice::from_ref(&two)),
            ]),
        ),
        (
            "two-clients-conflict",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                auth.clone(),
                format!(">{}", sync("", &[ev(2, "agg-0", 1, "{}")])),
                format!(">{}", push(std::slice::from_ref(&two))),
                sync("", &[ev(3, "agg-0", 2, "{}")]),
            ]),
        ),
        (
            "cursor-token-and-position",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}"), ev(2, "agg-1", 1, "{}")]),
                sync("001700000000000:0000000000:@1", &[]),
                sync("1700000000000:0:@2", &[]),
                sync("1700000000000:0:nodeA", &[]),
                r#"{"type":"client_sync_request","last_synced_hlc":"","last_synced_position":1,"local_events":[]}"#.into(),
                r#"{"type":"client_sync_request","last_synced_hlc":"","last_synced_position":18446744073709551615,"local_events":[]}"#.into(),
            ]),
        ),
        (
            "refusals",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}"), ev(1, "agg-0", 2, "{}")]),
                sync("", &[ev(1, "agg-0", 1, "{}"), ev(2, "agg-0", 3, "{}")]),
                push(&[ev(3, "agg-0", 0, "{}")]),
                push(&[ev(4, "", 1, "{}")]),
                push(&[ev(5, "agg-2", 1, &format!(r#""{}""#, "x".repeat(80)))]),
                push(&[ev(6, "agg-2", 1, "{}").replace(r#""T""#, r#""Forbidden""#)]),
                push(&[ev(7, "agg-2", 1, "{}").replace("1700000000000:0", "1800000000000:0")]),
            ]),
        ),
        (
            "malformed",
            lines(&[
                "".into(),
                "not json".into(),
                "[]".into(),
                r#"{"type":7}"#.into(),
                r#"{"type":"ping"}"#.into(),
                r#"{"type":"auth","token":"x"}"#.into(),
                r#"{"type":"client_push_events"}"#.into(),
                r#"{"type":"client_push_events","rebased_events":[],"extra":1}"#.into(),
                sync("not an hlc", &[]),
                push(&[ev(1, "agg-0", 1, "{}").replace("\"version\":1", "\"version\":1.5")]),
            ]),
        ),
        (
            "auth",
            lines(&[
                format!(">{}", sync("", &[])),
                r#">{"type":"auth","token":"wrong"}"#.into(),
                r#">{"type":"auth"}"#.into(),
                auth.clone(),
                auth.clone(),
                format!(">{}", sync("", &[])),
            ]),
        ),
        (
            // Both pushes wait, then share one commit.
            "hold-group-commit",
            lines(&[
                auth.clone(),
                "!h".into(),
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                format!(">{}", sync("", &[ev(2, "agg-1", 1, "{}")])),
                "!c".into(),
                push(&[ev(3, "agg-1", 2, "{}")]),
            ]),
        ),
        (
            // The second client loses a race and gets the turn: the first
            // client's next push is held (its next message is refused as
            // early) until the second has appended, then conflicts.
            "held-push-turn",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                auth.clone(),
                format!(">{}", sync("", &[ev(2, "agg-0", 1, "{}")])),
                push(&[ev(3, "agg-0", 2, "{}")]),
                sync("", &[]),
                format!(">{}", push(&[ev(2, "agg-0", 2, "{}")])),
                push(&[ev(3, "agg-0", 3, "{}")]),
            ]),
        ),
        (
            "held-at-the-end",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                auth.clone(),
                format!(">{}", sync("", &[ev(2, "agg-0", 1, "{}")])),
                push(&[ev(3, "agg-0", 2, "{}")]),
            ]),
        ),
        (
            "lease-passes",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                auth.clone(),
                format!(">{}", sync("", &[ev(2, "agg-0", 1, "{}")])),
                push(&[ev(3, "agg-0", 2, "{}")]),
                "!t".into(),
                ">!d".into(),
                auth.clone(),
                format!(">{}", sync("", &[])),
            ]),
        ),
        (
            // Unavailable before the write, then after it: the retry finds
            // the events in the log.
            "commit-fails",
            lines(&[
                "!f".into(),
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                "!F".into(),
                push(std::slice::from_ref(&two)),
                push(std::slice::from_ref(&two)),
            ]),
        ),
        (
            "drop-while-waiting",
            lines(&[
                "!h".into(),
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                "!d".into(),
                "!c".into(),
                sync("", &[]),
                ">!d".into(),
                auth.clone(),
                format!(">{}", sync("", &[ev(2, "agg-0", 1, "{}")])),
            ]),
        ),
        (
            // Key order, whitespace, a number no float holds, an exponent,
            // duplicate keys: stored and sent back byte for byte.
            "verbatim",
            lines(&[
                sync(
                    "",
                    &[ev(
                        1,
                        "agg-0",
                        1,
                        r#"{"b": 1, "a": 12345678901234567890123456789, "e": 1E2, "b": 2}"#,
                    )
                    .replace(
                        r#""metadata":null"#,
                        r#""metadata":[ 1.50 , {"z":null,"a" :0} ]"#,
                    )],
                ),
                auth,
                format!(">{}", sync("", &[])),
            ]),
        ),
        (
            "id-reused-other-content",
            lines(&[
                sync("", &[ev(1, "agg-0", 1, "{}")]),
                push(&[ev(1, "agg-1", 1, "{}")]),
                push(&[ev(1, "agg-0", 1, r#"{"v":2}"#)]),
                push(&[ev(1, "agg-0", 1, "{}"), ev(2, "agg-0", 2, "{}")]),
            ]),
        ),
        (
            "too-many-events",
            lines(&[push(&[
                ev(1, "agg-0", 1, "{}"),
                ev(2, "agg-0", 2, "{}"),
                ev(3, "agg-0", 3, "{}"),
                ev(4, "agg-0", 4, "{}"),
                ev(5, "agg-0", 5, "{}"),
            ])]),
        ),
        (
            "metadata-and-broadcast",
            lines(&[
                sync("", &[]),
                r#">{"type":"auth","token":"fuzz-token"}"#.into(),
                format!(
                    ">{}",
                    push(&[ev(1, "agg-1", 1, "[1,2]").replace(
                        r#""metadata":null"#,
                        r#""metadata":{"by":"fuzz"}"#
                    )])
                ),
                push(&[ev(2, "agg-1", 2, "null")]),
            ]),
        ),
    ]
}
