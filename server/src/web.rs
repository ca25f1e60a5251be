//! The counter web demo at `/`, embedded in the binary: the page, its
//! worker, and the official SQLite Wasm build (vendored from npm by
//! server/web/vendor.sh, pinned in server/web/package.json). The worker
//! keeps its database in OPFS through the SAH-pool VFS, which needs no
//! cross-origin isolation headers.

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

/// Every embedded file: URL path, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../web/static/index.html"),
    ),
    (
        "/index.html",
        "text/html; charset=utf-8",
        include_bytes!("../web/static/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/static/app.js"),
    ),
    (
        "/worker.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/static/worker.js"),
    ),
    (
        "/hlc.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/static/hlc.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../web/static/style.css"),
    ),
    (
        "/sqlite/index.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!("../web/static/sqlite/index.mjs"),
    ),
    (
        "/sqlite/sqlite3.wasm",
        "application/wasm",
        include_bytes!("../web/static/sqlite/sqlite3.wasm"),
    ),
];

/// The demo's routes.
pub fn routes() -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for &(path, content_type, bytes) in ASSETS {
        router = router.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        // Assets change with the binary: revalidate on reload.
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    bytes,
                )
                    .into_response()
            }),
        );
    }
    router
}
