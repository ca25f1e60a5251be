#!/usr/bin/env bash
# Refreshes the vendored SQLite Wasm files from the pinned npm package.
# The server embeds server/web/static/ and server/web/client/ at compile time, so building it needs
# no npm; run this after changing the version in package.json.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
cp node_modules/@sqlite.org/sqlite-wasm/dist/index.mjs client/sqlite/index.mjs
cp node_modules/@sqlite.org/sqlite-wasm/dist/sqlite3.wasm client/sqlite/sqlite3.wasm
echo "vendored @sqlite.org/sqlite-wasm $(node -p "require('./node_modules/@sqlite.org/sqlite-wasm/package.json').version")"
