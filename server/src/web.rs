//! The counter web demo at `/` and the Strata browser client it runs on,
//! embedded in the binary: the page (server/web/static/), the library
//! (server/web/client/src/, served under `/client/src/`), and the official
//! SQLite Wasm build it loads (vendored from npm by server/web/vendor.sh,
//! pinned in server/web/client/package.json). The client keeps its
//! database in OPFS through the SAH-pool VFS, which needs no cross-origin
//! isolation headers.
//!
//! Every response carries a Content-Security-Policy that lets the page run
//! only its own scripts (plus the Wasm compilation SQLite needs), connect
//! only to this server, and never be framed; `nosniff`; and a
//! Referrer-Policy that keeps URLs (which may carry `?server=` or a token)
//! from leaking to other sites.

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const WASM: &str = "application/wasm";

/// Every embedded file: URL path, content type, bytes. The URL layout
/// mirrors server/web/ (static/ at the root, client/ under /client/), so
/// the modules' relative imports work unchanged from a checkout.
pub const ASSETS: &[(&str, &str, &[u8])] = &[
    ("/", HTML, include_bytes!("../web/static/index.html")),
    (
        "/index.html",
        HTML,
        include_bytes!("../web/static/index.html"),
    ),
    ("/app.js", JS, include_bytes!("../web/static/app.js")),
    (
        "/counter-views.js",
        JS,
        include_bytes!("../web/static/counter-views.js"),
    ),
    ("/style.css", CSS, include_bytes!("../web/static/style.css")),
    (
        "/client/src/index.js",
        JS,
        include_bytes!("../web/client/src/index.js"),
    ),
    (
        "/client/src/worker.js",
        JS,
        include_bytes!("../web/client/src/worker.js"),
    ),
    (
        "/client/src/engine.js",
        JS,
        include_bytes!("../web/client/src/engine.js"),
    ),
    (
        "/client/src/sync.js",
        JS,
        include_bytes!("../web/client/src/sync.js"),
    ),
    (
        "/client/src/errors.js",
        JS,
        include_bytes!("../web/client/src/errors.js"),
    ),
    (
        "/client/src/hlc.js",
        JS,
        include_bytes!("../web/client/src/hlc.js"),
    ),
    (
        "/client/sqlite/index.mjs",
        JS,
        include_bytes!("../web/client/sqlite/index.mjs"),
    ),
    (
        "/client/sqlite/sqlite3.wasm",
        WASM,
        include_bytes!("../web/client/sqlite/sqlite3.wasm"),
    ),
];

/// The Content-Security-Policy of every page asset.
///
/// * `default-src 'self'`: scripts, the worker, styles, the Wasm fetch and
///   the schema module come from this server only; no inline script.
/// * `script-src 'self' 'wasm-unsafe-eval'`: compiling sqlite3.wasm needs
///   `wasm-unsafe-eval` (it allows Wasm, not JavaScript `eval`).
/// * `connect-src`: this server only. `'self'` covers `ws:`/`wss:` to the
///   same host in current browsers; the host is also named explicitly for
///   older ones, when the request's `Host` is a plain `host[:port]`.
/// * `frame-ancestors 'none'`: no site may frame the page (clickjacking).
pub fn content_security_policy(host: Option<&str>) -> String {
    let host = host.filter(|h| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    });
    let connect = match host {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; connect-src {connect}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
    )
}

/// The demo's routes.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for &(path, content_type, bytes) in ASSETS {
        router = router.route(
            path,
            get(move |headers: HeaderMap| async move {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned);
                let csp = HeaderValue::from_str(&content_security_policy(host.as_deref()))
                    .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'"));
                (
                    [
                        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                        // Assets change with the binary: revalidate on reload.
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                        (header::CONTENT_SECURITY_POLICY, csp),
                        (
                            header::X_CONTENT_TYPE_OPTIONS,
                            HeaderValue::from_static("nosniff"),
                        ),
                        (
                            header::REFERRER_POLICY,
                            HeaderValue::from_static("no-referrer"),
                        ),
                        // For browsers without frame-ancestors.
                        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                    ],
                    bytes,
                )
                    .into_response()
            }),
        );
    }
    router
}
