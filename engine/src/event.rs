//! Events as the application sees them, and the limits they must respect.

use std::fmt;

use uuid::Uuid;

use crate::hlc::{HlcError, NodeId, Timestamp};
use crate::log::format;

/// A recorded event: what was appended, plus where it landed.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// Place in the log: 1, 2, 3, ... without gaps.
    pub position: u64,
    pub event_id: Uuid,
    pub aggregate_id: String,
    /// Place in its aggregate: 1, 2, 3, ... without gaps.
    pub version: u64,
    pub event_type: String,
    pub data: Vec<u8>,
    pub timestamp: Timestamp,
    pub metadata: Option<Vec<u8>>,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("position", &self.position)
            .field("event_id", &self.event_id)
            .field("aggregate_id", &self.aggregate_id)
            .field("version", &self.version)
            .field("event_type", &self.event_type)
            .field("data", &String::from_utf8_lossy(&self.data))
            .field("timestamp", &self.timestamp)
            .field(
                "metadata",
                &self.metadata.as_ref().map(|m| String::from_utf8_lossy(m)),
            )
            .finish()
    }
}

impl Event {
    /// A borrowed view of this event, as projections and scans see events.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            position: self.position,
            event_id: self.event_id,
            aggregate_id: &self.aggregate_id,
            version: self.version,
            event_type: &self.event_type,
            data: &self.data,
            hlc_physical_ms: self.timestamp.physical_ms(),
            hlc_counter: self.timestamp.counter(),
            hlc_node: self.timestamp.node().as_str(),
            metadata: self.metadata.as_deref(),
        }
    }

    /// The payload parsed as JSON.
    pub fn data_json<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_slice(&self.data)
    }
}

/// A recorded event borrowed from the log (a memory-mapped segment or a
/// read buffer): reading it copies nothing. The one borrowed form of a
/// record: the log decodes records into it and encodes records from it
/// (`log::format::decode_record`, `encode_record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub position: u64,
    pub event_id: Uuid,
    pub aggregate_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub hlc_physical_ms: u64,
    pub hlc_counter: u32,
    pub hlc_node: &'a str,
    pub metadata: Option<&'a [u8]>,
}

impl EventRef<'_> {
    /// The timestamp as an owned value (allocates the node).
    pub fn timestamp(&self) -> Result<Timestamp, HlcError> {
        Timestamp::from_parts(self.hlc_physical_ms, self.hlc_counter, self.hlc_node)
    }

    /// The timestamp's fixed-width text form.
    pub fn timestamp_text(&self) -> String {
        crate::hlc::timestamp_text(self.hlc_physical_ms, self.hlc_counter, self.hlc_node)
    }

    /// Like [`EventRef::to_event`], reusing `node` when this event was
    /// stamped by the same node (and remembering this event's node).
    pub fn to_event_sharing_node(&self, node: &mut Option<NodeId>) -> Result<Event, HlcError> {
        let shared = match node {
            Some(n) if n.as_str() == self.hlc_node => n.clone(),
            _ => {
                let n = NodeId::new(self.hlc_node)?;
                *node = Some(n.clone());
                n
            }
        };
        Ok(Event {
            position: self.position,
            event_id: self.event_id,
            aggregate_id: self.aggregate_id.to_owned(),
            version: self.version,
            event_type: self.event_type.to_owned(),
            data: self.data.to_vec(),
            timestamp: Timestamp::new(self.hlc_physical_ms, self.hlc_counter, shared)?,
            metadata: self.metadata.map(<[u8]>::to_vec),
        })
    }

    pub fn to_event(&self) -> Result<Event, HlcError> {
        Ok(Event {
            position: self.position,
            event_id: self.event_id,
            aggregate_id: self.aggregate_id.to_owned(),
            version: self.version,
            event_type: self.event_type.to_owned(),
            data: self.data.to_vec(),
            timestamp: self.timestamp()?,
            metadata: self.metadata.map(<[u8]>::to_vec),
        })
    }
}

/// An event to append. The store assigns position and version; it assigns
/// the timestamp too unless one is given (imports and sync keep theirs).
#[derive(Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub data: Vec<u8>,
    pub metadata: Option<Vec<u8>>,
    pub timestamp: Option<Timestamp>,
}

impl fmt::Debug for NewEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewEvent")
            .field("event_id", &self.event_id)
            .field("event_type", &self.event_type)
            .field("data", &String::from_utf8_lossy(&self.data))
            .field(
                "metadata",
                &self.metadata.as_ref().map(|m| String::from_utf8_lossy(m)),
            )
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

impl NewEvent {
    /// A new event with a fresh UUIDv7 id.
    pub fn new(event_type: impl Into<String>, data: impl Into<Vec<u8>>) -> NewEvent {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            data: data.into(),
            metadata: None,
            timestamp: None,
        }
    }

    /// A new event whose payload is `data` serialised as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(
        event_type: impl Into<String>,
        data: &T,
    ) -> serde_json::Result<NewEvent> {
        Ok(NewEvent::new(event_type, serde_json::to_vec(data)?))
    }

    pub fn with_id(mut self, event_id: Uuid) -> NewEvent {
        self.event_id = event_id;
        self
    }

    pub fn with_metadata(mut self, metadata: impl Into<Vec<u8>>) -> NewEvent {
        self.metadata = Some(metadata.into());
        self
    }

    pub fn with_timestamp(mut self, timestamp: Timestamp) -> NewEvent {
        self.timestamp = Some(timestamp);
        self
    }
}

/// What the caller believes the aggregate's current version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The aggregate must have no events yet.
    NoStream,
    /// The aggregate's last version must be exactly this (0 = no events).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether `current` satisfies the expectation.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no events yet"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Events for one aggregate, for an atomic append across aggregates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateEvents {
    pub aggregate_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// Where each appended event landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    pub event_id: Uuid,
    pub position: u64,
    pub version: u64,
    /// The event_id was already in the log: nothing was written for it and
    /// `position`/`version` are those of the earlier append (S6).
    pub existed: bool,
}

/// Size limits checked when events are appended. Defaults are the `*_DEFAULT`
/// constants; each may be raised up to the format's hard limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub aggregate_id_bytes_max: usize,
    pub event_type_bytes_max: usize,
    pub event_data_bytes_max: usize,
    pub metadata_bytes_max: usize,
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
}

pub const AGGREGATE_ID_BYTES_MAX_DEFAULT: usize = 256;
pub const EVENT_TYPE_BYTES_MAX_DEFAULT: usize = 256;
pub const EVENT_DATA_BYTES_MAX_DEFAULT: usize = 1 << 20;
pub const METADATA_BYTES_MAX_DEFAULT: usize = 64 << 10;
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 10_000;
pub const BATCH_BYTES_MAX_DEFAULT: usize = 16 << 20;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            aggregate_id_bytes_max: AGGREGATE_ID_BYTES_MAX_DEFAULT,
            event_type_bytes_max: EVENT_TYPE_BYTES_MAX_DEFAULT,
            event_data_bytes_max: EVENT_DATA_BYTES_MAX_DEFAULT,
            metadata_bytes_max: METADATA_BYTES_MAX_DEFAULT,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
        }
    }
}

impl Limits {
    /// Checks the limits fit the log format; names the first that does not.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let checks: [(&'static str, usize, usize); 6] = [
            (
                "aggregate_id_bytes_max",
                self.aggregate_id_bytes_max,
                format::AGGREGATE_ID_BYTES_MAX,
            ),
            (
                "event_type_bytes_max",
                self.event_type_bytes_max,
                format::EVENT_TYPE_BYTES_MAX,
            ),
            (
                "event_data_bytes_max",
                self.event_data_bytes_max,
                format::EVENT_DATA_BYTES_MAX,
            ),
            (
                "metadata_bytes_max",
                self.metadata_bytes_max,
                format::METADATA_BYTES_MAX,
            ),
            (
                "batch_events_max",
                self.batch_events_max,
                format::BATCH_EVENTS_MAX as usize,
            ),
            (
                "batch_bytes_max",
                self.batch_bytes_max,
                format::BATCH_RECORDS_BYTES_MAX,
            ),
        ];
        for (name, value, max) in checks {
            if value == 0 || value > max {
                return Err(InvalidInput::Setting {
                    name,
                    reason: format!("is {value}, must be between 1 and {max}"),
                });
            }
        }
        Ok(())
    }
}

/// Input refused at the API boundary. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    #[error(
        "{field} is {len} bytes, more than the limit of {max}; shorten it or raise `Limits::{field}_bytes_max`"
    )]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is empty; give it a value")]
    Empty { field: &'static str },
    #[error("{field} contains a control character; use printable text")]
    ControlCharacter { field: &'static str },
    #[error("a batch of {count} events is more than the limit of {max}; split it")]
    TooManyEvents { count: usize, max: usize },
    #[error("a batch of {bytes} bytes is more than the limit of {max}; split it")]
    BatchTooLarge { bytes: usize, max: usize },
    #[error("an append needs at least one event")]
    NoEvents,
    #[error("event {event_id} appears twice in one append")]
    DuplicateInBatch { event_id: Uuid },
    #[error("setting {name} {reason}")]
    Setting { name: &'static str, reason: String },
    #[error(transparent)]
    Timestamp(#[from] HlcError),
    /// One event's own timestamp was refused (the receive rule, H1).
    #[error("event {event_id}: {source}")]
    EventTimestamp { event_id: Uuid, source: HlcError },
}

/// The most bytes an event can take as a log record, whatever its
/// timestamp's node: what batch byte limits count.
pub(crate) fn record_bytes_bound(
    aggregate_id: &str,
    event_type: &str,
    data: &[u8],
    metadata: Option<&[u8]>,
) -> usize {
    crate::log::format::RECORD_HEADER_BYTES
        + crate::hlc::NODE_BYTES_MAX
        + aggregate_id.len()
        + event_type.len()
        + data.len()
        + metadata.map_or(0, <[u8]>::len)
}

impl Limits {
    pub(crate) fn check_aggregate_id(&self, id: &str) -> Result<(), InvalidInput> {
        check_text("aggregate_id", id, self.aggregate_id_bytes_max)
    }

    pub(crate) fn check_event(&self, e: &NewEvent) -> Result<(), InvalidInput> {
        self.check_event_fields(&e.event_type, &e.data, e.metadata.as_deref())
    }

    pub(crate) fn check_event_fields(
        &self,
        event_type: &str,
        data: &[u8],
        metadata: Option<&[u8]>,
    ) -> Result<(), InvalidInput> {
        check_text("event_type", event_type, self.event_type_bytes_max)?;
        if data.len() > self.event_data_bytes_max {
            return Err(InvalidInput::TooLong {
                field: "event_data",
                len: data.len(),
                max: self.event_data_bytes_max,
            });
        }
        if let Some(m) = metadata
            && m.len() > self.metadata_bytes_max
        {
            return Err(InvalidInput::TooLong {
                field: "metadata",
                len: m.len(),
                max: self.metadata_bytes_max,
            });
        }
        Ok(())
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(InvalidInput::Empty { field });
    }
    if value.len() > max {
        return Err(InvalidInput::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidInput::ControlCharacter { field });
    }
    Ok(())
}
