//! Sync messages, independent of how they travel. The binary encoding for
//! QUIC is in [`super::wire`]; the seed's JSON messages for WebSocket are
//! mapped onto the same core in [`super::seed`].

use uuid::Uuid;

use crate::event::{Event, NewEvent};
use crate::hlc::Timestamp;
use crate::log::RawRun;

/// Version of the sync protocol. Carried in the QUIC ALPN and in `Hello`.
///
/// History: 1 — first release.
pub const PROTOCOL_VERSION: u32 = 1;
/// ALPN protocol id of QUIC connections.
pub const ALPN: &[u8] = b"strata-sync/1";

/// An event proposed by a replica: everything but the position, which the
/// server assigns. `version` is where the replica believes the event falls
/// in its aggregate; the server appends it only if the aggregate's version
/// is `version - 1`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Proposal {
    pub event_id: Uuid,
    pub aggregate_id: String,
    pub version: u64,
    pub event_type: String,
    pub data: Vec<u8>,
    pub timestamp: Timestamp,
    pub metadata: Option<Vec<u8>>,
}

impl Proposal {
    /// The event to append (the store keeps the proposal's timestamp).
    pub fn to_new_event(&self) -> NewEvent {
        NewEvent {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            data: self.data.clone(),
            metadata: self.metadata.clone(),
            timestamp: Some(self.timestamp.clone()),
        }
    }

    /// The bytes this event counts for against batch limits
    /// ([`crate::Limits::batch_bytes_max`]).
    pub fn size_bytes(&self) -> usize {
        crate::event::record_bytes_bound(
            &self.aggregate_id,
            &self.event_type,
            &self.data,
            self.metadata.as_deref(),
        )
    }
}

/// Where an accepted event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placed {
    pub event_id: Uuid,
    pub position: u64,
    pub version: u64,
}

/// Why a message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed,
    /// A valid message in a state where it is not allowed.
    Unexpected,
    /// Missing or wrong token.
    Unauthorized,
    /// The client speaks another protocol version.
    Version,
    /// A limit was exceeded (message size, batch size, ...).
    TooLarge,
    /// The server is busy or shutting down; retry later.
    Unavailable,
    /// Anything else on the server's side.
    Internal,
}

impl ErrorCode {
    /// The code as text, as the JSON protocol sends it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::Unexpected => "unexpected",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Version => "version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// Replica to server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClientMessage {
    /// First message: who the client is, which store, its credentials.
    Hello {
        protocol: u32,
        store: String,
        token: Option<String>,
        /// The replica's HLC node id (for logs).
        client: String,
    },
    /// Send committed events from position `from` on, and keep sending new
    /// ones as they commit.
    Follow { from: u64 },
    /// Append these events. `base` is the last server position the replica
    /// has (diagnostics and the seed's missing-events reply); the check is
    /// per event, by version.
    Push {
        request: u64,
        base: u64,
        events: Vec<Proposal>,
    },
}

/// Server to replica.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ServerMessage {
    Welcome {
        protocol: u32,
        /// The hosted store's id: a replica refuses to mix logs of two
        /// stores.
        store_id: Uuid,
        head: u64,
    },
    /// The push was appended (or had been already: idempotent by id). The
    /// events also arrive through the follow stream.
    Accepted {
        request: u64,
        placed: Vec<Placed>,
        head: u64,
    },
    /// Nothing was appended: these aggregates advanced past the versions
    /// the push was based on (or another client has the turn on them). Pull
    /// up to `head`, rebase, and push again, after `retry_after_ms`.
    PullRequired {
        request: u64,
        conflicts: Vec<(String, u64)>,
        head: u64,
        retry_after_ms: u64,
    },
    /// These events are refused for good (invalid, not permitted); the rest
    /// of the push was handled as if they were not in it.
    Rejected {
        request: u64,
        rejections: Vec<(Uuid, String)>,
    },
    /// Committed events, in position order, without gaps.
    Events { events: Vec<Event> },
    /// Committed log records as the log stores them (bulk catch-up): a
    /// batch of `count` records starting at `first_position`.
    Records {
        first_position: u64,
        count: u32,
        #[serde(with = "bytes")]
        records: Vec<u8>,
    },
    /// The server refuses a message; `fatal` errors close the connection.
    Error {
        code: ErrorCode,
        message: String,
        fatal: bool,
    },
}

impl From<RawRun> for ServerMessage {
    /// A run of records as the `Records` message that carries it.
    fn from(run: RawRun) -> ServerMessage {
        ServerMessage::Records {
            first_position: run.first_position,
            count: run.count,
            records: run.records,
        }
    }
}

/// Serde for a byte vector as one run of bytes (`serialize_bytes`) rather
/// than a sequence of `u8`s. The bincode bytes are the same (a `u64`
/// length, then the bytes) but are written and read in one go instead of
/// one call per byte, which made a 1 MiB `Records` message cost about 17 ms
/// to encode.
mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl<'de> Visitor<'de> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }

            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            // Formats without a bytes type (JSON) send a sequence.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}
