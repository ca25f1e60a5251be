//! The web page and the browser client as the server serves them (issue 13,
//! item 5; issue 17): every file of server/web/static/ and of the client
//! library is served byte for byte with its content type, and every
//! response carries the security headers: a CSP that allows only this
//! server's scripts (plus Wasm compilation), connections to this server,
//! and no framing; nosniff; a Referrer-Policy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

async fn get(addr: SocketAddr, path: &str, host: &str) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(out[..split].to_vec()).unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: out[split + 4..].to_vec(),
    }
}

async fn start(
    tokens: &[&str],
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), strata_server::ServerError>>,
    tempfile::TempDir,
) {
    let data = tempfile::tempdir().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut config = strata_server::Config::new(
        data.path().to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        None,
    );
    config.tokens = tokens.iter().map(|t| t.to_string()).collect();
    let server = tokio::spawn(strata_server::serve(
        config,
        move |bound: &strata_server::Bound| {
            let _ = tx.send(bound.http);
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let addr = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .unwrap()
        .unwrap();
    (addr, stop_tx, server, data)
}

/// Files under `dir` (recursively), as paths relative to `root`.
fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

#[tokio::test]
async fn the_page_and_every_client_file_are_served_with_security_headers() {
    let (addr, stop, server, _data) = start(&[]).await;
    let host = addr.to_string();
    let web = Path::new(env!("CARGO_MANIFEST_DIR")).join("web");

    // Every file the page and the library are made of, by its URL.
    let mut served: Vec<(String, PathBuf)> = Vec::new();
    let mut found = Vec::new();
    files(&web.join("static"), &web.join("static"), &mut found);
    for f in found.drain(..) {
        served.push((format!("/{}", f.display()), web.join("static").join(f)));
    }
    for dir in ["client/src", "client/sqlite"] {
        files(&web, &web.join(dir), &mut found);
    }
    for f in found.drain(..) {
        if f.extension()
            .is_some_and(|e| e == "js" || e == "mjs" || e == "wasm")
        {
            served.push((format!("/{}", f.display()), web.join(f)));
        }
    }
    assert!(served.len() >= 12, "{served:?}");
    served.push(("/".into(), web.join("static/index.html")));

    for (url, file) in &served {
        let r = get(addr, url, &host).await;
        assert_eq!(r.status, 200, "{url} is not served (add it to web::ASSETS)");
        assert_eq!(
            r.body,
            std::fs::read(file).unwrap(),
            "{url} differs from {file:?}"
        );
        let want = match file.extension().and_then(|e| e.to_str()) {
            Some("js" | "mjs") => "text/javascript; charset=utf-8",
            Some("wasm") => "application/wasm",
            Some("css") => "text/css; charset=utf-8",
            Some("html") => "text/html; charset=utf-8",
            other => panic!("{url}: unexpected extension {other:?}"),
        };
        assert_eq!(r.header("content-type"), Some(want), "{url}");

        let csp = r.header("content-security-policy").unwrap_or_default();
        let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
        for d in [
            "default-src 'self'",
            "script-src 'self' 'wasm-unsafe-eval'",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'none'",
        ] {
            assert!(directives.contains(&d), "{url}: no `{d}` in {csp:?}");
        }
        assert!(
            directives.contains(&format!("connect-src 'self' ws://{host} wss://{host}").as_str()),
            "{url}: connect-src is not this server only: {csp:?}"
        );
        assert!(!csp.contains("unsafe-inline") && !csp.contains("'unsafe-eval'"));
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{url}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{url}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{url}");
    }

    // The sync endpoint is not a page: it gets no page policy.
    let r = get(addr, "/health", &host).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-security-policy").is_none());

    // A server without tokens answers loopback names only (DNS rebinding).
    let r = get(addr, "/", "evil.example").await;
    assert_eq!(r.status, 421);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    // With tokens, any name reaches the page, but a Host header cannot
    // smuggle directives into the policy.
    let (addr, stop, server, _data) = start(&["page-test-token-0001"]).await;
    let r = get(addr, "/", "evil.example;script-src").await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    assert!(!csp.contains("evil"), "{csp}");
    assert!(csp.contains("connect-src 'self';"), "{csp}");
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
