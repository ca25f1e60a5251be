//! Byte layout of segment files: header, frames, batches, event records.
//!
//! This file is the code form of docs/FORMAT.md; keep the two in step. It
//! stays one file on purpose (over 800 lines, a third of them its tests):
//! every encoder sits beside its decoder, so the two cannot drift apart. All
//! integers are little-endian. Nothing here does I/O: encoders append to a
//! `Vec<u8>`, decoders take a byte slice and return borrowed views or a
//! [`FormatError`] that says what is wrong. Decoders never panic and never
//! allocate in proportion to a length read from the input.
//!
//! A segment is a header followed by frames:
//!
//! ```text
//! segment = header frame* [seal]
//! frame   = magic len durable_offset crc payload
//! batch   = first_position event_count reserved record{event_count}
//! ```
//!
//! A batch frame holds one append (S3: it is all there or not at all). A seal
//! frame, when present, is the last thing in a sealed segment.

use uuid::Uuid;

pub use crate::event::EventRef;

/// Identifies a Strata segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"STRATSEG";
/// Format version written in every segment header.
///
/// History: 1 — first release.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 48;

/// Magic of a frame that holds a batch of events.
pub const FRAME_MAGIC_BATCH: [u8; 4] = *b"SBAT";
/// Magic of the frame that seals a segment.
pub const FRAME_MAGIC_SEAL: [u8; 4] = *b"SEAL";
/// Size of a frame header: magic, payload length, durable offset, CRC.
pub const FRAME_HEADER_BYTES: usize = 20;
/// Largest frame payload a reader accepts. Checked before anything is
/// allocated or hashed, so a corrupt length cannot make a reader run away.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 64 << 20;

/// Size of a batch header: first position, event count, reserved.
pub const BATCH_HEADER_BYTES: usize = 16;
/// Most events one batch may hold.
pub const BATCH_EVENTS_MAX: u32 = 100_000;
/// Size of the payload of a seal frame.
pub const SEAL_PAYLOAD_BYTES: usize = 16;

/// Fixed part of an event record, before its variable-length fields.
pub const RECORD_HEADER_BYTES: usize = 68;
/// Hard limits of the record layout. The store's configurable limits
/// (`Limits`) must stay within these.
pub const AGGREGATE_ID_BYTES_MAX: usize = u16::MAX as usize;
pub const EVENT_TYPE_BYTES_MAX: usize = u16::MAX as usize;
pub const NODE_BYTES_MAX: usize = crate::hlc::NODE_BYTES_MAX;
pub const EVENT_DATA_BYTES_MAX: usize = 32 << 20;
pub const METADATA_BYTES_MAX: usize = 16 << 20;

/// Largest event record the format allows.
pub const RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES
    + NODE_BYTES_MAX
    + AGGREGATE_ID_BYTES_MAX
    + EVENT_TYPE_BYTES_MAX
    + EVENT_DATA_BYTES_MAX
    + METADATA_BYTES_MAX;

/// Record flag: metadata is present (it may still be empty).
pub const RECORD_FLAG_METADATA: u8 = 0b0000_0001;
const RECORD_FLAGS_KNOWN: u8 = RECORD_FLAG_METADATA;

const _: () = assert!(
    (RECORD_HEADER_BYTES
        + AGGREGATE_ID_BYTES_MAX
        + EVENT_TYPE_BYTES_MAX
        + NODE_BYTES_MAX
        + EVENT_DATA_BYTES_MAX
        + METADATA_BYTES_MAX) as u64
        + BATCH_HEADER_BYTES as u64
        <= FRAME_PAYLOAD_BYTES_MAX as u64
);
const _: () = assert!(SEAL_PAYLOAD_BYTES < BATCH_HEADER_BYTES + RECORD_HEADER_BYTES);

/// What is wrong with a run of bytes. Offsets are relative to the slice
/// given to the decoder; the log adds the file and absolute offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("needs {needed} bytes, only {available} available")]
    Truncated { needed: u64, available: u64 },
    #[error("bad magic {found:02x?}")]
    BadMagic { found: Vec<u8> },
    #[error("unsupported format version {found} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("frame payload length {len} exceeds the maximum {FRAME_PAYLOAD_BYTES_MAX}")]
    FrameTooLarge { len: u32 },
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("malformed {what}: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
}

impl FormatError {
    fn malformed(what: &'static str, reason: &'static str) -> FormatError {
        FormatError::Malformed { what, reason }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn need(bytes: &[u8], needed: usize) -> Result<(), FormatError> {
    if bytes.len() < needed {
        return Err(FormatError::Truncated {
            needed: needed as u64,
            available: bytes.len() as u64,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Segment header
// ---------------------------------------------------------------------------

/// The fixed header at offset 0 of every segment file.
///
/// ```text
/// | offset | size | field          |
/// | 0      | 8    | magic          | "STRATSEG"
/// | 8      | 4    | format_version | FORMAT_VERSION
/// | 12     | 4    | header_bytes   | SEGMENT_HEADER_BYTES
/// | 16     | 16   | store_id       | UUID of the store, same in every segment
/// | 32     | 8    | first_position | position of the first event in this file
/// | 40     | 4    | reserved       | zero
/// | 44     | 4    | crc32          | over bytes 0..44
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub store_id: Uuid,
    pub first_position: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
        b[16..32].copy_from_slice(self.store_id.as_bytes());
        b[32..40].copy_from_slice(&self.first_position.to_le_bytes());
        let crc = crc32fast::hash(&b[0..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(SegmentHeader::decode(&b), Ok(*self));
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, FormatError> {
        need(b, SEGMENT_HEADER_BYTES)?;
        if b[0..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic {
                found: b[0..8].to_vec(),
            });
        }
        let stored = u32_at(b, 44);
        let computed = crc32fast::hash(&b[0..44]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { found: version });
        }
        if u32_at(b, 12) as usize != SEGMENT_HEADER_BYTES {
            return Err(FormatError::malformed(
                "segment header",
                "header size field is wrong",
            ));
        }
        if u32_at(b, 40) != 0 {
            return Err(FormatError::malformed(
                "segment header",
                "reserved bytes are not zero",
            ));
        }
        let first_position = u64_at(b, 32);
        if first_position == 0 {
            return Err(FormatError::malformed(
                "segment header",
                "first position is 0 (positions start at 1)",
            ));
        }
        Ok(SegmentHeader {
            store_id: Uuid::from_bytes(b[16..32].try_into().expect("16 bytes")),
            first_position,
        })
    }
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// Kind of frame, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Batch,
    Seal,
}

/// A decoded frame header and its checked payload.
///
/// ```text
/// | offset | size | field          |
/// | 0      | 4    | magic          | "SBAT" (batch) or "SEAL"
/// | 4      | 4    | payload_len    | bytes of payload after the header
/// | 8      | 8    | durable_offset | bytes of this segment known to be on stable storage when this frame was written
/// | 16     | 4    | crc32          | over bytes 4..16 and the payload
/// | 20     | len  | payload        |
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub durable_offset: u64,
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Bytes the whole frame occupies.
    pub fn len(&self) -> usize {
        FRAME_HEADER_BYTES + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The parts of a frame header that can be read without the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub payload_len: u32,
    pub durable_offset: u64,
    pub crc: u32,
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + self.payload_len as u64
    }

    /// Reads a frame header. Checks magic and length bound, not the CRC.
    pub fn decode(b: &[u8]) -> Result<FrameHeader, FormatError> {
        need(b, FRAME_HEADER_BYTES)?;
        let kind = match &b[0..4] {
            m if m == FRAME_MAGIC_BATCH => FrameKind::Batch,
            m if m == FRAME_MAGIC_SEAL => FrameKind::Seal,
            m => return Err(FormatError::BadMagic { found: m.to_vec() }),
        };
        let payload_len = u32_at(b, 4);
        if payload_len > FRAME_PAYLOAD_BYTES_MAX {
            return Err(FormatError::FrameTooLarge { len: payload_len });
        }
        Ok(FrameHeader {
            kind,
            payload_len,
            durable_offset: u64_at(b, 8),
            crc: u32_at(b, 16),
        })
    }
}

fn frame_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[4..16]);
    h.update(payload);
    h.finalize()
}

/// Decodes and checks the frame at the start of `b`.
pub fn decode_frame(b: &[u8]) -> Result<Frame<'_>, FormatError> {
    let header = FrameHeader::decode(b)?;
    let total = header.frame_len();
    need(b, total as usize)?;
    let payload = &b[FRAME_HEADER_BYTES..total as usize];
    let computed = frame_crc(b, payload);
    if computed != header.crc {
        return Err(FormatError::ChecksumMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(Frame {
        kind: header.kind,
        durable_offset: header.durable_offset,
        payload,
    })
}

/// Appends a frame around `payload` (already in `buf` from `payload_start`).
///
/// The caller reserves [`FRAME_HEADER_BYTES`] at `payload_start -
/// FRAME_HEADER_BYTES` with [`begin_frame`], writes the payload, then calls
/// this to fill in the header. This way a batch is encoded in place, without
/// a second copy.
pub fn finish_frame(buf: &mut [u8], frame_start: usize, kind: FrameKind, durable_offset: u64) {
    let payload_len = buf.len() - frame_start - FRAME_HEADER_BYTES;
    assert!(payload_len <= FRAME_PAYLOAD_BYTES_MAX as usize);
    let (head, payload) = buf[frame_start..].split_at_mut(FRAME_HEADER_BYTES);
    head[0..4].copy_from_slice(match kind {
        FrameKind::Batch => &FRAME_MAGIC_BATCH,
        FrameKind::Seal => &FRAME_MAGIC_SEAL,
    });
    head[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    head[8..16].copy_from_slice(&durable_offset.to_le_bytes());
    let crc = frame_crc(head, payload);
    head[16..20].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(decode_frame(&buf[frame_start..]).is_ok());
}

/// Reserves room for a frame header; returns where the frame starts.
pub fn begin_frame(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.resize(start + FRAME_HEADER_BYTES, 0);
    start
}

// ---------------------------------------------------------------------------
// Seal
// ---------------------------------------------------------------------------

/// Payload of a seal frame, the last frame of a sealed segment.
///
/// ```text
/// | offset | size | field         |
/// | 0      | 8    | last_position | position of the last event in the segment
/// | 8      | 4    | body_crc32    | CRC-32 of every byte of the file before the seal frame
/// | 12     | 4    | reserved      | zero
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    pub last_position: u64,
    pub body_crc: u32,
}

impl Seal {
    pub fn encode_frame(&self, buf: &mut Vec<u8>, durable_offset: u64) {
        let start = begin_frame(buf);
        buf.extend_from_slice(&self.last_position.to_le_bytes());
        buf.extend_from_slice(&self.body_crc.to_le_bytes());
        buf.extend_from_slice(&0u32.to_le_bytes());
        finish_frame(buf, start, FrameKind::Seal, durable_offset);
    }

    pub fn decode(payload: &[u8]) -> Result<Seal, FormatError> {
        if payload.len() != SEAL_PAYLOAD_BYTES {
            return Err(FormatError::malformed("seal", "payload is not 16 bytes"));
        }
        if u32_at(payload, 12) != 0 {
            return Err(FormatError::malformed(
                "seal",
                "reserved bytes are not zero",
            ));
        }
        Ok(Seal {
            last_position: u64_at(payload, 0),
            body_crc: u32_at(payload, 8),
        })
    }
}

/// Total bytes of a seal frame.
pub const SEAL_FRAME_BYTES: usize = FRAME_HEADER_BYTES + SEAL_PAYLOAD_BYTES;

/// How much of a frame [`check_frame`] checks beyond its own CRC and
/// header: every reader of frames goes through it, each with its profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// The batch header only; records are decoded when read (the frame's
    /// CRC already covers them): the cursor, on segments recovery checked.
    Header,
    /// Every record of a batch too, and that nothing follows the last one:
    /// recovery, verification, and following another process's appends.
    Records,
}

/// What a frame holds.
#[derive(Debug, Clone, Copy)]
pub enum FrameBody<'a> {
    Batch(BatchRef<'a>),
    Seal(Seal),
}

/// A frame that passed [`check_frame`].
#[derive(Debug, Clone, Copy)]
pub struct CheckedFrame<'a> {
    /// Bytes the whole frame occupies.
    pub len: usize,
    pub durable_offset: u64,
    pub body: FrameBody<'a>,
}

/// Checks the frame at the start of `b`, found at byte `offset` of its
/// segment: magic, length, CRC, a durable offset no later than the frame
/// itself (a writer cannot have synced past what it had written), and its
/// payload as `check` says.
pub fn check_frame(
    b: &[u8],
    offset: u64,
    check: FrameCheck,
) -> Result<CheckedFrame<'_>, FormatError> {
    let frame = decode_frame(b)?;
    if frame.durable_offset > offset {
        return Err(FormatError::malformed(
            "frame",
            "durable offset lies beyond the frame itself",
        ));
    }
    let body = match frame.kind {
        FrameKind::Batch => {
            let batch = BatchRef::parse(frame.payload)?;
            if check == FrameCheck::Records {
                batch.validate()?;
            }
            FrameBody::Batch(batch)
        }
        FrameKind::Seal => FrameBody::Seal(Seal::decode(frame.payload)?),
    };
    Ok(CheckedFrame {
        len: frame.len(),
        durable_offset: frame.durable_offset,
        body,
    })
}

/// The search for a frame ran out of its budget (crafted input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchBudgetSpent;

/// The first offset at or after `from` where a whole frame with a valid
/// CRC starts and `wanted(offset, header)` holds: the one resync search,
/// for verification (the next frame after damage) and recovery (a later
/// frame that proves damage). Each CRC checked spends its payload's bytes
/// from `budget`, so that crafted input cannot make the search quadratic.
pub fn find_frame(
    bytes: &[u8],
    from: usize,
    mut wanted: impl FnMut(usize, &FrameHeader) -> bool,
    budget: &mut u64,
) -> Result<Option<usize>, SearchBudgetSpent> {
    let mut i = from;
    while i + FRAME_HEADER_BYTES <= bytes.len() {
        let magic = &bytes[i..i + 4];
        if (magic == FRAME_MAGIC_BATCH || magic == FRAME_MAGIC_SEAL)
            && let Ok(h) = FrameHeader::decode(&bytes[i..])
            && i as u64 + h.frame_len() <= bytes.len() as u64
            && wanted(i, &h)
        {
            if *budget < h.payload_len as u64 {
                return Err(SearchBudgetSpent);
            }
            *budget -= h.payload_len as u64;
            if decode_frame(&bytes[i..]).is_ok() {
                return Ok(Some(i));
            }
        }
        i += 1;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Batches and event records
// ---------------------------------------------------------------------------

/// Bytes `r` takes as a record in a batch.
pub fn record_len(r: &EventRef<'_>) -> usize {
    RECORD_HEADER_BYTES
        + r.hlc_node.len()
        + r.aggregate_id.len()
        + r.event_type.len()
        + r.data.len()
        + r.metadata.map_or(0, <[u8]>::len)
}

/// Most bytes of records one batch frame holds (its payload less the
/// batch header): the bound of [`crate::event::Limits::batch_bytes_max`].
pub const BATCH_RECORDS_BYTES_MAX: usize = FRAME_PAYLOAD_BYTES_MAX as usize - BATCH_HEADER_BYTES;

/// Writes a batch header; records follow with [`encode_record`].
///
/// ```text
/// | offset | size | field          |
/// | 0      | 8    | first_position | position of the first record
/// | 8      | 4    | event_count    | number of records, 1..=BATCH_EVENTS_MAX
/// | 12     | 4    | reserved       | zero
/// ```
pub fn encode_batch_header(buf: &mut Vec<u8>, first_position: u64, event_count: u32) {
    debug_assert!(first_position >= 1);
    debug_assert!((1..=BATCH_EVENTS_MAX).contains(&event_count));
    buf.extend_from_slice(&first_position.to_le_bytes());
    buf.extend_from_slice(&event_count.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
}

/// Appends one event record.
///
/// ```text
/// | offset | size | field            |
/// | 0      | 4    | record_len       | bytes of the whole record, this field included
/// | 4      | 4    | crc32            | over bytes 8..record_len
/// | 8      | 8    | position         |
/// | 16     | 16   | event_id         | UUID bytes
/// | 32     | 8    | version          |
/// | 40     | 8    | hlc_physical_ms  |
/// | 48     | 4    | hlc_counter      |
/// | 52     | 1    | hlc_node_len     | 1..=64
/// | 53     | 1    | flags            | bit 0: metadata present
/// | 54     | 2    | aggregate_id_len |
/// | 56     | 2    | event_type_len   |
/// | 58     | 2    | reserved         | zero
/// | 60     | 4    | data_len         |
/// | 64     | 4    | metadata_len     | zero when absent
/// | 68     | ...  | hlc_node, aggregate_id, event_type, data, metadata
/// ```
pub fn encode_record(buf: &mut Vec<u8>, r: &EventRef<'_>) {
    // Lengths are checked at the API boundary against `Limits`, which are
    // asserted to fit these fields.
    assert!(r.hlc_node.len() <= NODE_BYTES_MAX && !r.hlc_node.is_empty());
    assert!(r.aggregate_id.len() <= AGGREGATE_ID_BYTES_MAX);
    assert!(r.event_type.len() <= EVENT_TYPE_BYTES_MAX);
    assert!(r.data.len() <= EVENT_DATA_BYTES_MAX);
    assert!(r.metadata.map_or(0, <[u8]>::len) <= METADATA_BYTES_MAX);
    let start = buf.len();
    let len = record_len(r);
    buf.reserve(len);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0u8; 4]); // crc, filled in below
    buf.extend_from_slice(&r.position.to_le_bytes());
    buf.extend_from_slice(r.event_id.as_bytes());
    buf.extend_from_slice(&r.version.to_le_bytes());
    buf.extend_from_slice(&r.hlc_physical_ms.to_le_bytes());
    buf.extend_from_slice(&r.hlc_counter.to_le_bytes());
    buf.push(r.hlc_node.len() as u8);
    buf.push(if r.metadata.is_some() {
        RECORD_FLAG_METADATA
    } else {
        0
    });
    buf.extend_from_slice(&(r.aggregate_id.len() as u16).to_le_bytes());
    buf.extend_from_slice(&(r.event_type.len() as u16).to_le_bytes());
    buf.extend_from_slice(&0u16.to_le_bytes());
    buf.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(r.metadata.map_or(0, <[u8]>::len) as u32).to_le_bytes());
    debug_assert_eq!(buf.len() - start, RECORD_HEADER_BYTES);
    buf.extend_from_slice(r.hlc_node.as_bytes());
    buf.extend_from_slice(r.aggregate_id.as_bytes());
    buf.extend_from_slice(r.event_type.as_bytes());
    buf.extend_from_slice(r.data);
    if let Some(m) = r.metadata {
        buf.extend_from_slice(m);
    }
    debug_assert_eq!(buf.len() - start, len);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert!(decode_record(&buf[start..], true).is_ok());
}

/// Decodes the record at the start of `b`: the event, borrowed from `b`,
/// and the bytes the record takes. `check_crc` is false when the enclosing
/// frame's CRC was already checked.
pub fn decode_record(b: &[u8], check_crc: bool) -> Result<(EventRef<'_>, usize), FormatError> {
    const WHAT: &str = "event record";
    need(b, RECORD_HEADER_BYTES)?;
    let len = u32_at(b, 0) as usize;
    if len < RECORD_HEADER_BYTES {
        return Err(FormatError::malformed(
            WHAT,
            "length is below the header size",
        ));
    }
    if len > RECORD_BYTES_MAX {
        return Err(FormatError::malformed(
            WHAT,
            "length is above the largest record",
        ));
    }
    need(b, len)?;
    let b = &b[..len];
    if check_crc {
        let stored = u32_at(b, 4);
        let computed = crc32fast::hash(&b[8..]);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
    }
    let node_len = b[52] as usize;
    let flags = b[53];
    let aggregate_len = u16_at(b, 54) as usize;
    let type_len = u16_at(b, 56) as usize;
    let data_len = u32_at(b, 60) as usize;
    let metadata_len = u32_at(b, 64) as usize;
    if flags & !RECORD_FLAGS_KNOWN != 0 {
        return Err(FormatError::malformed(WHAT, "unknown flag bits"));
    }
    if u16_at(b, 58) != 0 {
        return Err(FormatError::malformed(WHAT, "reserved bytes are not zero"));
    }
    if node_len == 0 || node_len > NODE_BYTES_MAX {
        return Err(FormatError::malformed(WHAT, "HLC node length out of range"));
    }
    if aggregate_len > AGGREGATE_ID_BYTES_MAX
        || type_len > EVENT_TYPE_BYTES_MAX
        || data_len > EVENT_DATA_BYTES_MAX
        || metadata_len > METADATA_BYTES_MAX
    {
        return Err(FormatError::malformed(
            WHAT,
            "a field is longer than the format allows",
        ));
    }
    if flags & RECORD_FLAG_METADATA == 0 && metadata_len != 0 {
        return Err(FormatError::malformed(
            WHAT,
            "metadata length without metadata flag",
        ));
    }
    // Sum in u64: five u32-sized lengths cannot overflow it.
    let body = node_len as u64
        + aggregate_len as u64
        + type_len as u64
        + data_len as u64
        + metadata_len as u64;
    if RECORD_HEADER_BYTES as u64 + body != len as u64 {
        return Err(FormatError::malformed(
            WHAT,
            "field lengths do not add up to the record length",
        ));
    }
    // The three text fields are adjacent: validate them as one run of UTF-8
    // (one call instead of three), then check that each field starts and
    // ends on a character boundary, which makes each field valid on its own.
    let strings_end = RECORD_HEADER_BYTES + node_len + aggregate_len + type_len;
    let strings = std::str::from_utf8(&b[RECORD_HEADER_BYTES..strings_end])
        .map_err(|_| FormatError::malformed(WHAT, "a text field is not UTF-8"))?;
    let (node_end, aggregate_end) = (node_len, node_len + aggregate_len);
    if !strings.is_char_boundary(node_end) || !strings.is_char_boundary(aggregate_end) {
        return Err(FormatError::malformed(WHAT, "a text field is not UTF-8"));
    }
    let hlc_node = &strings[..node_end];
    let aggregate_id = &strings[node_end..aggregate_end];
    let event_type = &strings[aggregate_end..];
    let data = &b[strings_end..strings_end + data_len];
    let metadata = &b[strings_end + data_len..strings_end + data_len + metadata_len];
    let position = u64_at(b, 8);
    if position == 0 {
        return Err(FormatError::malformed(WHAT, "position is 0"));
    }
    let event = EventRef {
        position,
        event_id: Uuid::from_bytes(b[16..32].try_into().expect("16 bytes")),
        version: u64_at(b, 32),
        hlc_physical_ms: u64_at(b, 40),
        hlc_counter: u32_at(b, 48),
        hlc_node,
        aggregate_id,
        event_type,
        data,
        metadata: (flags & RECORD_FLAG_METADATA != 0).then_some(metadata),
    };
    Ok((event, len))
}

/// A batch payload whose frame CRC has been checked, with its header read.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    pub first_position: u64,
    pub event_count: u32,
    /// The record bytes after the batch header.
    pub records: &'a [u8],
}

impl<'a> BatchRef<'a> {
    /// The batch header alone (`first_position`, `event_count`), checked:
    /// what a reader skipping batches by their headers needs.
    pub fn parse_header(payload: &[u8]) -> Result<(u64, u32), FormatError> {
        need(payload, BATCH_HEADER_BYTES)?;
        let first_position = u64_at(payload, 0);
        let event_count = u32_at(payload, 8);
        if first_position == 0 {
            return Err(FormatError::malformed("batch", "first position is 0"));
        }
        if event_count == 0 || event_count > BATCH_EVENTS_MAX {
            return Err(FormatError::malformed("batch", "event count out of range"));
        }
        if u32_at(payload, 12) != 0 {
            return Err(FormatError::malformed(
                "batch",
                "reserved bytes are not zero",
            ));
        }
        if first_position.checked_add(event_count as u64).is_none() {
            return Err(FormatError::malformed("batch", "positions overflow"));
        }
        Ok((first_position, event_count))
    }

    /// Reads a batch header. Records are decoded lazily by [`BatchRef::iter`];
    /// [`BatchRef::validate`] decodes them all up front.
    pub fn parse(payload: &'a [u8]) -> Result<BatchRef<'a>, FormatError> {
        let (first_position, event_count) = Self::parse_header(payload)?;
        // Each record is at least its header: a count that cannot fit is
        // rejected before anyone iterates.
        let records = &payload[BATCH_HEADER_BYTES..];
        if (event_count as u64) * (RECORD_HEADER_BYTES as u64) > records.len() as u64 {
            return Err(FormatError::malformed(
                "batch",
                "event count exceeds what the payload can hold",
            ));
        }
        Ok(BatchRef {
            first_position,
            event_count,
            records,
        })
    }

    pub fn last_position(&self) -> u64 {
        self.first_position + self.event_count as u64 - 1
    }

    /// The batch as a frame payload holds it: header, then the records.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(BATCH_HEADER_BYTES + self.records.len());
        encode_batch_header(&mut payload, self.first_position, self.event_count);
        payload.extend_from_slice(self.records);
        payload
    }

    /// Records with their byte offset within `records` and whether the
    /// record's own CRC holds (the frame's CRC covers a batch read from a
    /// log, so [`BatchRef::iter`] does not check it; `strata dump` shows it).
    pub fn iter_with_crc(
        &self,
    ) -> impl Iterator<Item = Result<(usize, EventRef<'a>, bool), FormatError>> + 'a {
        let records = self.records;
        self.iter().map(move |r| {
            r.map(|(offset, rec)| (offset, rec, decode_record(&records[offset..], true).is_ok()))
        })
    }

    /// Records with their byte offset within `records`.
    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter {
            records: self.records,
            at: 0,
            next_position: self.first_position,
            remaining: self.event_count,
        }
    }

    /// Decodes every record and checks positions run from
    /// `first_position` without gaps and that nothing trails the last one.
    pub fn validate(&self) -> Result<(), FormatError> {
        let mut it = self.iter();
        for r in &mut it {
            r?;
        }
        if it.at != self.records.len() {
            return Err(FormatError::malformed(
                "batch",
                "bytes after the last record",
            ));
        }
        Ok(())
    }
}

/// Iterator over a batch's records: `(offset within records, record)`.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    records: &'a [u8],
    at: usize,
    next_position: u64,
    remaining: u32,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(usize, EventRef<'a>), FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if self.at != self.records.len() {
                // Reported once, after the last record.
                self.at = self.records.len();
                return Some(Err(FormatError::malformed(
                    "batch",
                    "bytes after the last record",
                )));
            }
            return None;
        }
        let offset = self.at;
        // After an error the iterator ends: nothing after a bad record can
        // be trusted, and the trailing-bytes check must not fire as well.
        let fail = |it: &mut Self, e| {
            it.remaining = 0;
            it.at = it.records.len();
            Some(Err(e))
        };
        let (r, len) = match decode_record(&self.records[offset..], false) {
            Ok(r) => r,
            Err(e) => return fail(self, e),
        };
        if r.position != self.next_position {
            return fail(
                self,
                FormatError::malformed("batch", "record positions are not consecutive"),
            );
        }
        self.at += len;
        self.next_position += 1;
        self.remaining -= 1;
        Some(Ok((offset, r)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// Packs units of `(records, bytes)` into log frames, whole units only, at
/// most `records_max` records and the format's payload per frame; returns
/// each frame's record count. A unit above those limits gets a frame of
/// its own (a batch within the store's limits always fits one:
/// `Limits::validate`).
pub fn pack_frames(units: &[(usize, usize)], records_max: usize) -> Vec<usize> {
    let payload_max = BATCH_RECORDS_BYTES_MAX;
    let records_max = records_max.min(BATCH_EVENTS_MAX as usize);
    let mut frames = Vec::new();
    let (mut records, mut bytes) = (0, 0);
    for &(n, b) in units {
        if records > 0 && (records + n > records_max || bytes + b > payload_max) {
            frames.push(records);
            (records, bytes) = (0, 0);
        }
        records += n;
        bytes += b;
    }
    if records > 0 {
        frames.push(records);
    }
    frames
}

/// A run of consecutive records exactly as a log stores them: what sync's
/// bulk catch-up carries from a server's log to a replica's, unchanged
/// (the `Records` message). Made by [`super::Cursor::next_run`] on the
/// sending side; checked once with [`RawRun::check`] on the receiving side,
/// and appended as checked ([`super::LogWriter::append_raw`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRun {
    pub first_position: u64,
    pub count: u32,
    /// `count` encoded records, back to back.
    pub records: Vec<u8>,
}

impl RawRun {
    /// The last record's position (`first_position` for an empty run,
    /// which [`RawRun::check`] refuses).
    pub fn last_position(&self) -> u64 {
        self.first_position
            .saturating_add(u64::from(self.count).saturating_sub(1))
    }

    /// Checks the run as a batch would be checked, each record's own CRC
    /// included (the bytes came from elsewhere): 1 to [`BATCH_EVENTS_MAX`]
    /// records that fit one batch frame, positions consecutive from
    /// `first_position`, nothing after the last record.
    pub fn check(&self) -> Result<CheckedRun<'_>, FormatError> {
        const WHAT: &str = "records";
        if self.count == 0 || self.count > BATCH_EVENTS_MAX {
            return Err(FormatError::malformed(WHAT, "count out of range"));
        }
        if (self.count as u64) * (RECORD_HEADER_BYTES as u64) > self.records.len() as u64 {
            return Err(FormatError::malformed(
                WHAT,
                "count exceeds what the bytes can hold",
            ));
        }
        if BATCH_HEADER_BYTES + self.records.len() > FRAME_PAYLOAD_BYTES_MAX as usize {
            return Err(FormatError::malformed(
                WHAT,
                "more bytes than one batch frame holds",
            ));
        }
        let mut records = Vec::with_capacity(self.count as usize);
        let mut at = 0usize;
        for i in 0..u64::from(self.count) {
            let (r, len) = decode_record(&self.records[at..], true)?;
            if self.first_position.checked_add(i) != Some(r.position) {
                return Err(FormatError::malformed(
                    WHAT,
                    "record positions are not consecutive",
                ));
            }
            records.push((at, r));
            at += len;
        }
        if at != self.records.len() {
            return Err(FormatError::malformed(WHAT, "bytes after the last record"));
        }
        Ok(CheckedRun { run: self, records })
    }
}

/// A [`RawRun`] whose records all passed [`RawRun::check`]: the only form
/// in which a log appends records it did not encode itself.
#[derive(Debug)]
pub struct CheckedRun<'a> {
    run: &'a RawRun,
    /// Each record with its offset within `run.records`.
    records: Vec<(usize, EventRef<'a>)>,
}

impl<'a> CheckedRun<'a> {
    pub fn run(&self) -> &'a RawRun {
        self.run
    }

    /// The records, in order, with their offsets within the run's bytes.
    pub fn records(&self) -> &[(usize, EventRef<'a>)] {
        &self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(position: u64, data: &[u8], metadata: Option<&[u8]>) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            &EventRef {
                position,
                event_id: Uuid::from_u128(position as u128),
                version: position,
                hlc_physical_ms: 1_700_000_000_000,
                hlc_counter: 3,
                hlc_node: "node",
                aggregate_id: "agg-1",
                event_type: "Thing",
                data,
                metadata,
            },
        );
        buf
    }

    fn batch_frame(first: u64, n: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let start = begin_frame(&mut buf);
        encode_batch_header(&mut buf, first, n);
        for i in 0..n as u64 {
            buf.extend_from_slice(&sample(first + i, b"{\"value\":1}", None));
        }
        finish_frame(&mut buf, start, FrameKind::Batch, 48);
        buf
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            store_id: Uuid::from_u128(7),
            first_position: 42,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        for i in 0..SEGMENT_HEADER_BYTES {
            let mut bad = b;
            bad[i] ^= 0x40;
            assert!(SegmentHeader::decode(&bad).is_err(), "flip at {i}");
        }
        assert!(matches!(
            SegmentHeader::decode(&b[..10]),
            Err(FormatError::Truncated { .. })
        ));
    }

    #[test]
    fn record_round_trips_with_and_without_metadata() {
        for md in [None, Some(&b""[..]), Some(&b"{\"user\":1}"[..])] {
            let b = sample(9, b"payload", md);
            let (r, len) = decode_record(&b, true).unwrap();
            assert_eq!(r.position, 9);
            assert_eq!(r.data, b"payload");
            assert_eq!(r.metadata, md);
            assert_eq!(len, b.len());
            assert_eq!(record_len(&r), b.len());
        }
    }

    #[test]
    fn frame_detects_every_single_bit_flip() {
        let frame = batch_frame(1, 3);
        let f = decode_frame(&frame).unwrap();
        let batch = BatchRef::parse(f.payload).unwrap();
        batch.validate().unwrap();
        assert_eq!(batch.iter().count(), 3);
        for i in 0..frame.len() {
            for bit in [0x01, 0x80] {
                let mut bad = frame.clone();
                bad[i] ^= bit;
                assert!(
                    decode_frame(&bad).is_err(),
                    "flip {bit:#x} at {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn frame_rejects_a_huge_length_before_reading() {
        let mut frame = batch_frame(1, 1);
        frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_frame(&frame),
            Err(FormatError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn seal_round_trips() {
        let mut buf = Vec::new();
        let seal = Seal {
            last_position: 99,
            body_crc: 0xdead_beef,
        };
        seal.encode_frame(&mut buf, 1234);
        assert_eq!(buf.len(), SEAL_FRAME_BYTES);
        let f = decode_frame(&buf).unwrap();
        assert_eq!(f.kind, FrameKind::Seal);
        assert_eq!(f.durable_offset, 1234);
        assert_eq!(Seal::decode(f.payload).unwrap(), seal);
    }

    #[test]
    fn batch_iteration_reports_bytes_after_the_last_record() {
        let mut payload = Vec::new();
        encode_batch_header(&mut payload, 1, 1);
        payload.extend_from_slice(&sample(1, b"x", None));
        payload.extend_from_slice(b"trailing");
        let batch = BatchRef::parse(&payload).unwrap();
        let items: Vec<_> = batch.iter().collect();
        assert!(items[0].is_ok());
        assert!(
            matches!(&items[1], Err(FormatError::Malformed { reason, .. }) if reason.contains("after the last record"))
        );
        assert_eq!(items.len(), 2);
        assert!(batch.validate().is_err());
    }

    #[test]
    fn reserved_bytes_must_be_zero() {
        let mut h = SegmentHeader {
            store_id: Uuid::from_u128(1),
            first_position: 1,
        }
        .encode();
        h[41] = 1;
        let crc = crc32fast::hash(&h[0..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        assert!(SegmentHeader::decode(&h).is_err());
        let mut seal = [0u8; SEAL_PAYLOAD_BYTES];
        seal[0] = 5;
        assert!(Seal::decode(&seal).is_ok());
        seal[13] = 1;
        assert!(Seal::decode(&seal).is_err());
    }

    #[test]
    fn a_character_split_across_two_text_fields_is_refused() {
        // Valid UTF-8 as one run, invalid field by field: "n\u{e9}" + "x"
        // re-cut as "n\xC3" + "\xA9x".
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            &EventRef {
                position: 1,
                event_id: Uuid::from_u128(1),
                version: 1,
                hlc_physical_ms: 1,
                hlc_counter: 0,
                hlc_node: "n\u{e9}",
                aggregate_id: "x",
                event_type: "T",
                data: b"",
                metadata: None,
            },
        );
        assert!(decode_record(&buf, true).is_ok());
        buf[52] = 2; // node_len 3 -> 2
        buf[54..56].copy_from_slice(&2u16.to_le_bytes()); // aggregate_id_len 1 -> 2
        let err = decode_record(&buf, false).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn record_lengths_beyond_the_format_limits_are_refused() {
        let mut b = sample(1, b"data", None);
        // Claim a data length above EVENT_DATA_BYTES_MAX.
        b[60..64].copy_from_slice(&((EVENT_DATA_BYTES_MAX + 1) as u32).to_le_bytes());
        assert!(decode_record(&b, false).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = SegmentHeader::decode(&bytes);
            let _ = decode_record(&bytes, true);
            let _ = decode_record(&bytes, false);
            if let Ok(f) = decode_frame(&bytes)
                && let Ok(b) = BatchRef::parse(f.payload)
            {
                let _ = b.validate();
            }
            if let Ok(b) = BatchRef::parse(&bytes) {
                for r in b.iter() { let _ = r; }
            }
        }

        #[test]
        fn record_encode_decode_identity(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            md in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            agg in "[a-z0-9-]{0,40}",
            ty in "[A-Za-z]{0,20}",
            node in "[a-z0-9]{1,64}",
            version in any::<u64>(),
            position in 1u64..,
        ) {
            let fields = EventRef {
                position, event_id: Uuid::from_u128(version as u128), version,
                hlc_physical_ms: version >> 1, hlc_counter: version as u32, hlc_node: &node,
                aggregate_id: &agg, event_type: &ty, data: &data, metadata: md.as_deref(),
            };
            let mut buf = Vec::new();
            encode_record(&mut buf, &fields);
            let (r, len) = decode_record(&buf, true).unwrap();
            prop_assert_eq!(len, buf.len());
            prop_assert_eq!((r.position, r.version, r.aggregate_id, r.event_type, r.data, r.metadata, r.hlc_node),
                (position, version, agg.as_str(), ty.as_str(), &data[..], md.as_deref(), node.as_str()));
        }
    }

    /// S3 for group commits: batches of one `append_batches` call share
    /// frames, but a batch is never split across two (a crash between
    /// them would keep half of it).
    #[test]
    fn s3_pack_frames_keeps_every_batch_whole() {
        let payload = BATCH_RECORDS_BYTES_MAX;
        let third = payload / 3;
        // Three batches fill a frame but for a few bytes; the fourth goes on.
        assert_eq!(
            pack_frames(&[(10, third), (20, third), (30, third), (5, 100)], 1_000),
            [60, 5]
        );
        // A batch that would cross the payload limit starts the next frame.
        assert_eq!(
            pack_frames(&[(1, third * 2), (2, third * 2)], 1_000),
            [1, 2]
        );
        // The record limit is a limit on whole batches too.
        assert_eq!(
            pack_frames(&[(600, 10), (600, 10), (1, 1)], 1_000),
            [600, 601]
        );
        // One unit alone may pass it (it was checked against the store's
        // own limits); the format's count bounds the limit given.
        assert_eq!(pack_frames(&[(1_500, 10)], 1_000), [1_500]);
        assert_eq!(
            pack_frames(&[(1, 1); 3], usize::MAX),
            [3],
            "records_max is capped at {BATCH_EVENTS_MAX}, not exceeded"
        );
        assert!(pack_frames(&[], 10).is_empty());
    }

    /// A run from another log is checked once, whole: framing, each
    /// record's CRC, consecutive positions, nothing after the last record,
    /// a count and a size one batch frame holds.
    #[test]
    fn a_raw_run_is_checked_whole_before_a_log_takes_it() {
        let records = [sample(7, b"a", None), sample(8, b"bb", Some(b"m"))].concat();
        let run = RawRun {
            first_position: 7,
            count: 2,
            records: records.clone(),
        };
        let checked = run.check().unwrap();
        let got: Vec<(usize, u64)> = checked
            .records()
            .iter()
            .map(|(at, r)| (*at, r.position))
            .collect();
        assert_eq!(got, [(0, 7), (sample(7, b"a", None).len(), 8)]);
        assert_eq!(run.last_position(), 8);
        let refused = |run: RawRun, why: &str| {
            let e = run.check().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        };
        let mut bad_crc = records.clone();
        *bad_crc.last_mut().unwrap() ^= 1;
        refused(
            RawRun {
                records: bad_crc,
                ..run.clone()
            },
            "checksum mismatch",
        );
        refused(
            RawRun {
                first_position: 6,
                ..run.clone()
            },
            "not consecutive",
        );
        refused(
            RawRun {
                count: 1,
                ..run.clone()
            },
            "after the last record",
        );
        refused(
            RawRun {
                count: 0,
                ..run.clone()
            },
            "count out of range",
        );
        refused(
            RawRun {
                count: 3,
                ..run.clone()
            },
            "count exceeds",
        );
        // Records of the largest data each, one more than a frame holds.
        let n = BATCH_RECORDS_BYTES_MAX / EVENT_DATA_BYTES_MAX + 1;
        let big: Vec<u8> = (1..=n as u64)
            .flat_map(|p| sample(p, &vec![0u8; EVENT_DATA_BYTES_MAX], None))
            .collect();
        refused(
            RawRun {
                first_position: 1,
                count: n as u32,
                records: big,
            },
            "more bytes than one batch frame holds",
        );
    }
}
