// The part of the official SQLite Wasm build's API that the client uses
// is typed where it is called; the module itself is only declared here, so
// that `tsc` does not infer 650 kB of generated JavaScript.
declare function sqlite3InitModule(options?: Record<string, unknown>): Promise<any>;
export default sqlite3InitModule;
