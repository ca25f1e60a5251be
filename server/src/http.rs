//! The HTTP port: its own accept loop (rather than `axum::serve`) so that
//! every connection is bounded before it has shown a token.
//!
//! * **TLS** (rustls) when [`crate::Config::http_is_tls`]: `https:` and
//!   `wss:`. Plain HTTP on loopback, or off it with
//!   [`crate::HttpTls::Never`] (`--http-plaintext`, behind a TLS proxy).
//! * **Caps**: at most [`crate::Config::http_connections_max`] connections,
//!   and [`crate::Config::http_connections_per_address_max`] from one
//!   address; beyond them a connection is closed at once.
//! * **Timeouts**: the TLS handshake, and then each request's headers,
//!   within [`crate::Config::http_header_timeout`] (default
//!   [`HEADER_READ_TIMEOUT`]); the header timer also closes a keep-alive
//!   connection idle that long (hyper starts it whenever it waits for a
//!   request).
//! * **A read budget**: a connection may read at most
//!   [`UNAUTHENTICATED_READ_BYTES_MAX`] bytes until a handler that
//!   authenticated its client lifts it ([`ReadBudget::lift`], the `/ws`
//!   handler does): before that only requests without bodies and a small
//!   `auth` message fit. A connection past its budget is closed.
//!
//! Every request gets its [`ConnectInfo`], the connection's [`ReadBudget`]
//! and its [`Place`] as extensions; a handler that upgrades the connection
//! (`/ws`) keeps the place for as long as the WebSocket lives, so upgraded
//! connections count against the caps too.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::admission::{Admitted, ConnectionCount};

/// Default [`crate::Config::http_header_timeout`]: the longest a client
/// may take to send a request's headers, and the longest a keep-alive
/// connection may stay idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a connection may read before its client is authenticated:
/// request lines and headers, and a first `auth` message over `/ws`.
pub const UNAUTHENTICATED_READ_BYTES_MAX: u64 = 64 << 10;
/// Largest request head (request line and headers).
pub const HEADER_BYTES_MAX: usize = 16 << 10;
/// Connections to the `/metrics` listen address (a scraper or two).
pub const METRICS_CONNECTIONS_MAX: usize = 16;
/// How long shutdown waits for HTTP connections to finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The bytes a connection may still read; see the module documentation.
#[derive(Debug, Clone)]
pub struct ReadBudget(Arc<AtomicU64>);

impl ReadBudget {
    fn new(bytes: u64) -> ReadBudget {
        ReadBudget(Arc::new(AtomicU64::new(bytes)))
    }

    /// The client is authenticated: no limit from now on (the protocol's
    /// own message limits apply).
    pub fn lift(&self) {
        self.0.store(u64::MAX, Ordering::Release);
    }

    /// A new request on a kept-alive connection: its budget starts again
    /// (unless lifted).
    fn refill(&self, bytes: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left != u64::MAX).then_some(bytes)
            });
    }

    /// Bytes left.
    fn left(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Takes `n` bytes (at most what is left).
    fn take(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                (left != u64::MAX).then(|| left.saturating_sub(n))
            });
    }
}

/// A connection's place under the HTTP caps, given back when the last
/// clone drops: the connection's task holds one, and so does a WebSocket
/// made of the connection.
#[derive(Debug, Clone)]
pub struct Place(
    #[expect(dead_code, reason = "held for its Drop: the place is given back")] Arc<Admitted>,
);

/// A connection's stream with its read budget.
struct Budgeted<S> {
    inner: S,
    budget: ReadBudget,
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    /// Reads at most what the budget has left, so that a peer's
    /// read-ahead (a WebSocket library filling its buffer past the `auth`
    /// message) never counts against it; with nothing left, the
    /// connection fails.
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.budget.left();
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client sent more than it may before authenticating",
            )));
        }
        let room = buf.remaining();
        let n = if left >= room as u64 {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            buf.filled().len() - before
        } else {
            // The same as tokio's `Take`: read into a shorter view of the
            // unfilled part, then advance the whole buffer.
            let mut limited = buf.take(left as usize);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut limited))?;
            let n = limited.filled().len();
            // SAFETY: the inner reader initialised and filled `n` bytes of
            // the unfilled part that `limited` views.
            unsafe { buf.assume_init(n) };
            buf.advance(n);
            n
        };
        self.budget.take(n as u64);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How the HTTP port runs.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub connections_max: usize,
    pub per_address_max: usize,
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `stop` turns true, then lets open
/// requests finish (at most [`SHUTDOWN_GRACE`]). Upgraded connections
/// (WebSockets) end on the stop signal themselves.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: HttpOptions,
    count: Arc<ConnectionCount>,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut tasks = JoinSet::new();
    let mut refusals_logged = 0u64;
    loop {
        let (tcp, peer) = tokio::select! {
            () = crate::until_stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let Some(admitted) =
            count.admit(peer.ip(), options.connections_max, options.per_address_max)
        else {
            // Closed at once: a flood from one address cannot take the
            // places of others. Logged now and then, not per connection.
            refusals_logged += 1;
            if refusals_logged.is_power_of_two() {
                tracing::warn!(%peer, refused = refusals_logged, "HTTP connection over the connection caps; closed");
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        let header_timeout = options.header_timeout;
        let place = Place(Arc::new(admitted));
        tasks.spawn(async move {
            let stream = match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => Stream::Plain(tcp),
            };
            serve_connection(stream, peer, place, app, header_timeout, stop).await;
        });
    }
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    place: Place,
    app: Router,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let budget = ReadBudget::new(UNAUTHENTICATED_READ_BYTES_MAX);
    let io = TokioIo::new(Budgeted {
        inner: stream,
        budget: budget.clone(),
    });
    let service = app.map_request(
        move |mut req: axum::extract::Request<hyper::body::Incoming>| {
            budget.refill(UNAUTHENTICATED_READ_BYTES_MAX);
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(budget.clone());
            req.extensions_mut().insert(place.clone());
            req
        },
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(HEADER_BYTES_MAX.max(8192));
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        () = crate::until_stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_budget_holds_until_lifted() {
        let b = ReadBudget::new(10);
        b.take(6);
        assert_eq!(b.left(), 4);
        b.take(5);
        assert_eq!(b.left(), 0);
        b.refill(10);
        assert_eq!(b.left(), 10);
        b.lift();
        b.take(1 << 40);
        b.refill(10);
        assert_eq!(b.left(), u64::MAX);
    }

    #[tokio::test]
    async fn reads_stop_at_the_budget_and_fail_beyond_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let budget = ReadBudget::new(100);
        let mut reader = Budgeted {
            inner: server,
            budget: budget.clone(),
        };
        client.write_all(&[7u8; 300]).await.unwrap();
        let mut buf = vec![0u8; 1000];
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(n, 100, "a large read is cut to the budget");
        let err = reader.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        budget.lift();
        assert_eq!(reader.read(&mut buf).await.unwrap(), 200);
    }
}
