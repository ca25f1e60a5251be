//! The seed's JSON event object, used by `strata import`/`export` (JSON
//! lines) and by the WebSocket protocol:
//!
//! ```json
//! {"event_id": "…", "aggregate_id": "counter-1", "version": 1,
//!  "event_type": "CounterIncremented", "event_data": {"value": 1},
//!  "timestamp": "001700000000000:0000000000:nodeA", "metadata": null}
//! ```
//!
//! `event_data` and `metadata` are JSON values embedded verbatim: stored
//! bytes that are JSON come out byte for byte, and JSON read in is stored
//! byte for byte. Stored bytes that are not JSON come out as a JSON string
//! of their text (lossy UTF-8). `timestamp` is written in the fixed-width
//! form and read in either form.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::event::{Event, NewEvent};
use crate::hlc::Timestamp;

/// One event as a JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventJson {
    pub event_id: Uuid,
    pub aggregate_id: String,
    pub version: u64,
    pub event_type: String,
    pub event_data: Box<RawValue>,
    pub timestamp: Timestamp,
    #[serde(default)]
    pub metadata: Option<Box<RawValue>>,
}

impl PartialEq for EventJson {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.aggregate_id == other.aggregate_id
            && self.version == other.version
            && self.event_type == other.event_type
            && self.event_data.get() == other.event_data.get()
            && self.timestamp == other.timestamp
            && self.metadata.as_ref().map(|m| m.get()) == other.metadata.as_ref().map(|m| m.get())
    }
}

/// Bytes as a JSON value: verbatim when they are JSON, a string otherwise.
pub fn bytes_to_raw(bytes: &[u8]) -> Box<RawValue> {
    match std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| RawValue::from_string(s.trim().to_owned()).ok())
    {
        Some(raw) => raw,
        None => {
            let text = serde_json::to_string(&String::from_utf8_lossy(bytes))
                .expect("a string serialises");
            RawValue::from_string(text).expect("a JSON string is JSON")
        }
    }
}

impl From<&Event> for EventJson {
    fn from(e: &Event) -> Self {
        EventJson {
            event_id: e.event_id,
            aggregate_id: e.aggregate_id.clone(),
            version: e.version,
            event_type: e.event_type.clone(),
            event_data: bytes_to_raw(&e.data),
            timestamp: e.timestamp.clone(),
            metadata: e.metadata.as_deref().map(bytes_to_raw),
        }
    }
}

impl EventJson {
    /// The event to append: same id, type, data, metadata and timestamp
    /// (the version is the store's to assign; check it with an expected
    /// version of `version - 1`). JSON `null` metadata means none.
    pub fn to_new_event(&self) -> NewEvent {
        let metadata = self
            .metadata
            .as_ref()
            .filter(|m| m.get() != "null")
            .map(|m| m.get().as_bytes().to_vec());
        NewEvent {
            event_id: self.event_id,
            event_type: self.event_type.clone(),
            data: self.event_data.get().as_bytes().to_vec(),
            metadata,
            timestamp: Some(self.timestamp.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_shape_round_trips_byte_for_byte() {
        let line = r#"{"event_id":"0190a4f2-0000-7000-8000-000000000001","aggregate_id":"counter-1","version":1,"event_type":"CounterIncremented","event_data":{"value": 1},"timestamp":"1700000000000:0:nodeA","metadata":null}"#;
        let e: EventJson = serde_json::from_str(line).unwrap();
        assert_eq!(e.event_data.get(), r#"{"value": 1}"#);
        let n = e.to_new_event();
        assert_eq!(n.data, br#"{"value": 1}"#);
        assert_eq!(n.metadata, None);
        assert_eq!(
            n.timestamp.unwrap().to_text(),
            "001700000000000:0000000000:nodeA"
        );
    }

    #[test]
    fn non_json_bytes_become_a_json_string() {
        assert_eq!(bytes_to_raw(b"plain text").get(), r#""plain text""#);
        assert_eq!(bytes_to_raw(br#"{"a":1}"#).get(), r#"{"a":1}"#);
    }
}
