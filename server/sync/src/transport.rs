//! What both ends of a QUIC sync connection share: the transport settings,
//! the framing of [`strata::sync::wire`] messages on a stream (a 4-byte
//! little-endian length, then bincode), and the close codes. The server
//! (`strata-server`'s `quic` module) and the client ([`crate::client`]) use
//! the same functions, so the two cannot drift apart.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Connection, RecvStream, SendStream, VarInt};
use serde::de::DeserializeOwned;
use strata::sync::wire;
use tokio::sync::Semaphore;

/// A connection without any packet for this long is dead (the server's
/// setting; clients may choose a shorter one, and the shorter wins).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest idle timeout a client may ask for.
pub const IDLE_TIMEOUT_MIN: Duration = Duration::from_millis(300);
/// Longest idle timeout a client may ask for.
pub const IDLE_TIMEOUT_MAX: Duration = Duration::from_secs(600);
/// Keep-alives go this many times per idle timeout.
pub const KEEP_ALIVES_PER_IDLE_TIMEOUT: u32 = 3;
/// How long a closing stream waits for the peer to acknowledge the last
/// message.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Per-stream receive window and per-connection send window: large enough
/// for bulk catch-up to keep several 1 MiB messages in flight.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;

const _: () = assert!(
    IDLE_TIMEOUT_MIN.as_millis() <= IDLE_TIMEOUT.as_millis()
        && IDLE_TIMEOUT.as_millis() <= IDLE_TIMEOUT_MAX.as_millis()
);
const _: () = assert!(wire::MESSAGE_BYTES_MAX <= u32::MAX as usize);

/// Largest UDP payload MTU discovery probes for. Probing is safe on any
/// path (a lost probe only ends the search); paths with jumbo frames or
/// loopback carry bulk catch-up in far fewer packets than the default 1452
/// bytes allow.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 65_527;

/// QUIC application close codes.
pub mod close {
    /// Done: the client finished.
    pub const DONE: u32 = 0;
    /// A fatal protocol error was sent (see the `Error` message).
    pub const REFUSED: u32 = 1;
    /// The client did not take messages fast enough.
    pub const SLOW: u32 = 2;
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 3;
}

/// Transport settings both sides use; `idle_timeout` is between
/// [`IDLE_TIMEOUT_MIN`] and [`IDLE_TIMEOUT_MAX`].
pub fn transport_config(idle_timeout: Duration) -> quinn::TransportConfig {
    assert!((IDLE_TIMEOUT_MIN..=IDLE_TIMEOUT_MAX).contains(&idle_timeout));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle_timeout).expect("checked above: fits a varint"),
    ))
    .keep_alive_interval(Some(idle_timeout / KEEP_ALIVES_PER_IDLE_TIMEOUT))
    .stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES))
    .send_window(STREAM_WINDOW_BYTES as u64)
    .mtu_discovery_config(Some({
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(UDP_PAYLOAD_BYTES_MAX);
        mtu
    }))
    .max_concurrent_bidi_streams(VarInt::from_u32(1))
    .max_concurrent_uni_streams(VarInt::from_u32(0));
    t
}

// --- frames ------------------------------------------------------------------

/// One frame read from a stream.
#[derive(Debug)]
pub enum Frame<T> {
    Message(T),
    /// The length prefix was valid but the payload is not a message: the
    /// stream is still in step.
    Malformed(String),
}

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer finished its stream")]
    Finished,
    #[error("the peer finished its stream inside a message")]
    Truncated,
    #[error("a message of {len} bytes is more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{0}")]
    Stream(#[from] quinn::ReadError),
}

/// Reads one length-prefixed message of at most `max` bytes (at most
/// [`wire::MESSAGE_BYTES_MAX`]). The length is checked before the payload
/// is allocated; with `budget`, the payload's bytes are reserved from it
/// while it is read and decoded. `counted` adds the bytes read.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
    budget: Option<&Semaphore>,
    counted: Option<&AtomicU64>,
) -> Result<Frame<T>, FrameError> {
    let mut prefix = [0u8; wire::LENGTH_BYTES];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Err(FrameError::Finished),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Stream(e)),
    }
    let max = max.min(wire::MESSAGE_BYTES_MAX);
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let _reserved = match budget {
        // The budget is never closed and each message is at most
        // MESSAGE_BYTES_MAX <= INBOUND_BYTES_MAX, so this always succeeds
        // eventually.
        Some(b) => Some(b.acquire_many(len as u32).await.ok()),
        None => None,
    };
    let mut payload = vec![0u8; len];
    match recv.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Stream(e)),
    }
    if let Some(c) = counted {
        c.fetch_add((wire::LENGTH_BYTES + len) as u64, Ordering::Relaxed);
    }
    Ok(match wire::decode::<T>(&payload) {
        Ok(msg) => Frame::Message(msg),
        Err(e) => Frame::Malformed(e.to_string()),
    })
}

/// Why a message could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the peer did not take a message within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Stream(#[from] quinn::WriteError),
    #[error("{0}")]
    Encode(#[from] wire::WireError),
}

/// Encodes `msg` into `buf` and writes it within `timeout`.
pub async fn write_frame<T: serde::Serialize>(
    send: &mut SendStream,
    buf: &mut Vec<u8>,
    msg: &T,
    timeout: Duration,
) -> Result<(), SendError> {
    buf.clear();
    wire::encode(msg, buf)?;
    match tokio::time::timeout(timeout, send.write_all(buf)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(SendError::Timeout(timeout)),
    }
}

/// Finishes `send`, gives the peer [`CLOSE_LINGER`] to acknowledge what
/// was sent, then closes the connection.
pub async fn close_gracefully(conn: &Connection, send: &mut SendStream, code: u32, reason: &str) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(CLOSE_LINGER, send.stopped()).await;
    }
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}
