//! A real server on loopback for the end-to-end tests, and the raw
//! clients they talk to it with: HTTP/1.1 over a plain or TLS stream,
//! seed-style WebSocket messages, and QUIC client options. Nothing here is
//! a mock: every helper opens real sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use strata_sync::client::ClientOptions;
use strata_sync::tls::Trust;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single expected message or answer may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(20);

/// A WebSocket to the server.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

// --- the server ------------------------------------------------------------

/// `strata_server::serve` on 127.0.0.1:0 in a fresh data directory, on
/// the test's runtime.
#[derive(Debug)]
pub struct TestServer {
    /// The HTTP port.
    pub addr: SocketAddr,
    /// Everything the server said it bound.
    pub bound: strata_server::Bound,
    pub data: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), strata_server::ServerError>>,
}

/// Where a test server keeps its stores' logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded stores in the data directory (the server's default).
    Embedded,
    /// A fresh database of this process's test PostgreSQL cluster
    /// ([`crate::pg::PgCluster::shared`]).
    Postgres,
}

thread_local! {
    /// The backend of the servers [`start`] starts on this thread.
    static BACKEND: std::cell::Cell<Backend> = const { std::cell::Cell::new(Backend::Embedded) };
    /// Servers started on PostgreSQL on this thread.
    static PG_SERVERS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The file in a test server's data directory that names its database,
/// so that [`start_in`] restarts a server on the same one.
const DATABASE_URL_FILE: &str = "test-database-url";

/// Runs `test` (a `#[tokio::test]` function) with every server it starts
/// through [`start`] or [`start_in`] from its own body keeping its logs in
/// PostgreSQL: a test suite runs on both backends by listing its tests
/// again under `on_postgres`. Servers started from spawned tasks are not
/// covered, so the call fails unless at least one server was started on
/// PostgreSQL.
pub fn on_postgres(test: fn()) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BACKEND.set(Backend::Embedded);
        }
    }
    let _reset = Reset;
    BACKEND.set(Backend::Postgres);
    PG_SERVERS.set(0);
    test();
    assert!(
        PG_SERVERS.get() > 0,
        "the test started no server on PostgreSQL from its own body"
    );
}

/// Starts a server whose configuration `tweak` adjusts (HTTP only unless
/// it sets `quic`), on this thread's backend (see [`on_postgres`]).
pub async fn start(tweak: impl FnOnce(&mut strata_server::Config)) -> TestServer {
    start_in(tempfile::tempdir().unwrap(), tweak).await
}

/// A new database in the shared test cluster, as a connection string.
pub async fn new_database() -> String {
    tokio::task::spawn_blocking(|| {
        let cluster = crate::pg::PgCluster::shared();
        cluster.url(&cluster.create_database())
    })
    .await
    .unwrap()
}

/// The database of a test server with data directory `data`: the one it
/// had if it ran before, a new one if this thread's backend is PostgreSQL
/// (see [`on_postgres`]), none otherwise. For tests that start servers
/// their own way.
pub async fn test_database(data: &std::path::Path) -> Option<strata_server::pg::PgConfig> {
    let url_file = data.join(DATABASE_URL_FILE);
    let url = match std::fs::read_to_string(&url_file) {
        Ok(url) => url,
        Err(_) if BACKEND.get() == Backend::Postgres => {
            let url = new_database().await;
            std::fs::write(&url_file, &url).unwrap();
            url
        }
        Err(_) => return None,
    };
    PG_SERVERS.set(PG_SERVERS.get() + 1);
    Some(strata_server::pg::PgConfig::new(url))
}

/// [`start`] on an existing data directory (and, for a server that ran on
/// PostgreSQL, on the same database).
pub async fn start_in(
    data: tempfile::TempDir,
    tweak: impl FnOnce(&mut strata_server::Config),
) -> TestServer {
    let mut config = strata_server::Config::new(
        data.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        None,
    );
    config.database = test_database(data.path()).await;
    tweak(&mut config);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(strata_server::serve(
        config,
        move |bound: &strata_server::Bound| {
            let _ = ready_tx.send(bound.clone());
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let bound = tokio::time::timeout(RECV_TIMEOUT, ready_rx)
        .await
        .expect("the server starts in time")
        .expect("the server started");
    TestServer {
        addr: bound.http,
        bound,
        data,
        stop,
        task,
    }
}

impl TestServer {
    /// The `/ws` URL with `query` (e.g. `?store=x`).
    pub fn url(&self, query: &str) -> String {
        let scheme = if self.bound.http_tls { "wss" } else { "ws" };
        format!("{scheme}://{}/ws{query}", self.addr)
    }

    /// QUIC client options pinning the server's certificate.
    pub fn quic_options(&self, token: Option<&str>) -> ClientOptions {
        let mut o = ClientOptions::new(
            self.bound
                .quic
                .expect("the server has a QUIC port")
                .to_string(),
            Trust::Pin(self.bound.fingerprint.clone().expect("a fingerprint")),
        );
        o.token = token.map(str::to_owned);
        o.request_timeout = RECV_TIMEOUT;
        o.backoff_max = Duration::from_millis(200);
        o
    }

    /// Stops the server, waits for `serve` to return, and hands back its
    /// data directory.
    pub async fn stop(self) -> tempfile::TempDir {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("serve returns promptly after the stop signal")
            .unwrap()
            .unwrap();
        self.data
    }

    /// `GET /events` of a store (with `token`, if any), as JSON.
    pub async fn events(&self, store: &str, token: Option<&str>) -> Vec<Value> {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let path = format!("/events?from=1&limit=10000&store={store}");
        let r = http_get(self.addr, &path, &headers).await;
        assert_eq!(r.status, 200, "{}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }
}

// --- HTTP/1.1 ----------------------------------------------------------------

/// An HTTP response as read off the wire.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A TCP connection to `addr` from the loopback address `from` (any of
/// 127.0.0.0/8 on Linux), so that tests can be several client addresses.
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// `GET path` on a fresh connection (`Host: 127.0.0.1` unless `headers`
/// has one), read to the end.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    http_request(stream, path, headers)
        .await
        .expect("an HTTP answer")
}

/// `GET path` over `stream` with `Connection: close`; `None` when the
/// server closed without answering.
pub async fn http_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<HttpResponse> {
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("Host: 127.0.0.1\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut out))
        .await
        .expect("the server answers in time")
        .ok()?;
    parse_response(&out)
}

/// Parses a whole HTTP/1.1 response (chunked bodies decoded).
pub fn parse_response(out: &[u8]) -> Option<HttpResponse> {
    let split = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next()?.get(9..12)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = out[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16)
                    .ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = decoded;
    }
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A rustls client configuration for the HTTP port that trusts exactly
/// the certificate with `fingerprint` and speaks HTTP/1.1.
pub fn https_client_config(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    let mut tls = strata_server::tls::client_config(&Trust::Pin(fingerprint.to_owned()))
        .unwrap()
        .config;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}

/// A TLS connection to the HTTP port, pinning `fingerprint`.
pub async fn tls_connect(
    addr: SocketAddr,
    fingerprint: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(https_client_config(fingerprint));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

// --- raw QUIC ------------------------------------------------------------------

/// A raw QUIC connection to the server from the loopback address `from`,
/// pinning its certificate, with its one bidirectional stream opened: for
/// tests that speak the wire format byte by byte.
pub async fn quic_raw(
    server: &TestServer,
    from: IpAddr,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let fingerprint = server.bound.fingerprint.clone().expect("a fingerprint");
    let tls = strata_server::tls::client_config(&Trust::Pin(fingerprint))
        .unwrap()
        .config;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let endpoint = quinn::Endpoint::client(SocketAddr::new(from, 0)).unwrap();
    let conn = tokio::time::timeout(
        RECV_TIMEOUT,
        endpoint
            .connect_with(config, server.bound.quic.expect("a QUIC port"), "localhost")
            .unwrap(),
    )
    .await
    .expect("the handshake completes")
    .expect("the handshake succeeds");
    let (send, recv) = conn.open_bi().await.unwrap();
    (endpoint, conn, send, recv)
}

/// Writes one length-prefixed message.
pub async fn quic_send(send: &mut quinn::SendStream, msg: &strata::sync::proto::ClientMessage) {
    let mut buf = Vec::new();
    strata::sync::wire::encode(msg, &mut buf).unwrap();
    send.write_all(&buf).await.unwrap();
}

/// Reads one length-prefixed server message; `None` when the stream or
/// connection ended first.
pub async fn quic_recv(recv: &mut quinn::RecvStream) -> Option<strata::sync::proto::ServerMessage> {
    let read = async {
        let mut prefix = [0u8; strata::sync::wire::LENGTH_BYTES];
        recv.read_exact(&mut prefix).await.ok()?;
        let len = strata::sync::wire::payload_len(prefix).ok()?;
        let mut payload = vec![0u8; len];
        recv.read_exact(&mut payload).await.ok()?;
        strata::sync::wire::decode(&payload).ok()
    };
    tokio::time::timeout(RECV_TIMEOUT, read)
        .await
        .expect("the server answers in time")
}

// --- WebSocket -----------------------------------------------------------------

pub async fn connect(url: &str) -> Ws {
    connect_request(url, &[]).await.unwrap()
}

/// Opens a WebSocket with extra request headers.
pub async fn connect_request(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tungstenite::Error> {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("the handshake completes")
        .map(|(ws, _)| ws)
}

/// The refusal of an upgrade: status and body.
pub async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match connect_request(url, headers).await {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, v: &Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON text message; panics on anything else.
pub async fn recv<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    serde_json::from_str(&recv_text(ws).await).unwrap()
}

/// The next text message, as the server wrote it.
pub async fn recv_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> String {
    loop {
        let msg = tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("a message arrives")
            .expect("the connection is open")
            .expect("the connection is healthy");
        match msg {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until a message of type `kind`, skipping `server_new_events`.
pub async fn recv_type<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    kind: &str,
) -> Value {
    loop {
        let v = recv(ws).await;
        if v["type"] == kind {
            return v;
        }
        assert_eq!(
            v["type"], "server_new_events",
            "while waiting for {kind}: {v}"
        );
    }
}

/// The next `error` message, which must have `code` and a message.
pub async fn expect_error<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: &str,
) -> Value {
    let v = recv_type(ws, "error").await;
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

/// Reads until the server closes; returns its close frame.
pub async fn recv_close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
) -> Option<CloseFrame> {
    loop {
        match tokio::time::timeout(RECV_TIMEOUT, ws.next())
            .await
            .expect("the server closes")
        {
            Some(Ok(Message::Close(frame))) => return frame,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("expected a close frame, got {e}"),
            None => return None,
        }
    }
}
