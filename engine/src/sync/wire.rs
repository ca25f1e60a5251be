//! The binary message encoding used over QUIC: each message is a 4-byte
//! little-endian length followed by that many bytes of bincode 2 (serde
//! mode) with a fixed configuration: little-endian, fixed-width integers,
//! and a decode limit of [`MESSAGE_BYTES_MAX`]. docs/PROTOCOL.md spells the
//! resulting bytes out field by field.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest message, length prefix excluded. Checked before reading or
/// allocating. The server's settings must fit under it
/// (`ServerConfig::validate`, and its defaults by a compile-time check).
pub const MESSAGE_BYTES_MAX: usize = 32 << 20;
/// Size of the length prefix.
pub const LENGTH_BYTES: usize = 4;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MESSAGE_BYTES_MAX>()
}

/// What is wrong with a message's bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("a message of {len} bytes is more than the limit of {MESSAGE_BYTES_MAX}")]
    TooLarge { len: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} bytes after the end of the message")]
    Trailing(usize),
}

/// Appends `msg`, length-prefixed, to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut Vec<u8>) -> Result<(), WireError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; LENGTH_BYTES]);
    bincode::serde::encode_into_std_write(msg, out, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = out.len() - start - LENGTH_BYTES;
    if len > MESSAGE_BYTES_MAX {
        out.truncate(start);
        return Err(WireError::TooLarge { len });
    }
    out[start..start + LENGTH_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// The payload length announced by a length prefix, checked against the
/// limit.
pub fn payload_len(prefix: [u8; LENGTH_BYTES]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge { len });
    }
    Ok(len)
}

/// Decodes one message payload (without its length prefix); every byte
/// must belong to the message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    if payload.len() > MESSAGE_BYTES_MAX {
        return Err(WireError::TooLarge { len: payload.len() });
    }
    let (msg, used) = bincode::serde::decode_from_slice(payload, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::Trailing(payload.len() - used));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::proto::{ClientMessage, Proposal, ServerMessage};

    #[test]
    fn messages_round_trip_and_bad_bytes_are_errors() {
        let msg = ClientMessage::Push {
            request: 7,
            base: 3,
            events: vec![Proposal {
                event_id: uuid::Uuid::from_u128(1),
                aggregate_id: "a".into(),
                version: 4,
                event_type: "T".into(),
                data: b"{}".to_vec(),
                timestamp: crate::Timestamp::from_parts(5, 0, "n").unwrap(),
                metadata: None,
            }],
        };
        let mut buf = Vec::new();
        encode(&msg, &mut buf).unwrap();
        let len = payload_len(buf[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, buf.len() - 4);
        assert_eq!(decode::<ClientMessage>(&buf[4..]).unwrap(), msg);
        // Truncated, extended, and garbage payloads are errors, not panics.
        assert!(decode::<ClientMessage>(&buf[4..buf.len() - 1]).is_err());
        let mut longer = buf[4..].to_vec();
        longer.push(0);
        assert!(matches!(
            decode::<ClientMessage>(&longer),
            Err(WireError::Trailing(1))
        ));
        assert!(decode::<ServerMessage>(&[0xff; 40]).is_err());
        assert!(payload_len(u32::MAX.to_le_bytes()).is_err());
        // A length field claiming a huge vector does not allocate it.
        let mut huge = vec![2u8, 0, 0, 0]; // Push
        huge.extend_from_slice(&7u64.to_le_bytes());
        huge.extend_from_slice(&3u64.to_le_bytes());
        huge.extend_from_slice(&u64::MAX.to_le_bytes()); // events.len()
        assert!(decode::<ClientMessage>(&huge).is_err());
    }
}
