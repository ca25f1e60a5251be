//! The seed's JSON event object.

use strata::Event;

/// An event as the seed's protocol shows it: `event_data` and `metadata`
/// are JSON values when the bytes are JSON, strings otherwise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventJson {
    pub event_id: String,
    pub aggregate_id: String,
    pub version: u64,
    pub event_type: String,
    pub event_data: serde_json::Value,
    pub timestamp: String,
    pub metadata: Option<serde_json::Value>,
}

/// Bytes as a JSON value: parsed when they are JSON, a string otherwise.
pub fn bytes_to_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

impl From<&Event> for EventJson {
    fn from(e: &Event) -> Self {
        EventJson {
            event_id: e.event_id.to_string(),
            aggregate_id: e.aggregate_id.clone(),
            version: e.version,
            event_type: e.event_type.clone(),
            event_data: bytes_to_json(&e.data),
            timestamp: e.timestamp.to_string(),
            metadata: e.metadata.as_deref().map(bytes_to_json),
        }
    }
}
