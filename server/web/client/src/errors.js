// Errors of the Strata browser client. Every refusal is a StrataError with a
// `code` a program can switch on and a message that says what to do; they
// cross worker and tab boundaries as plain objects (toWire/fromWire).

/**
 * @typedef {'invalid' | 'conflict' | 'duplicate_id' | 'projection' | 'no_opfs'
 *   | 'schema_mismatch' | 'server_mismatch' | 'closed' | 'storage' | 'internal'} ErrorCode
 */

export class StrataError extends Error {
  /**
   * @param {ErrorCode} code
   * @param {string} message
   * @param {Record<string, unknown>} [details] extra fields, e.g. `currentVersion` for a conflict
   */
  constructor(code, message, details = {}) {
    super(message);
    this.name = 'StrataError';
    /** @type {ErrorCode} */
    this.code = code;
    /** @type {Record<string, unknown>} */
    this.details = details;
    Object.assign(this, details);
  }
}

/**
 * An error as a structured-clone-safe object.
 * @param {unknown} e
 * @returns {{code: ErrorCode, message: string, details: Record<string, unknown>}}
 */
export function toWire(e) {
  if (e instanceof StrataError) return { code: e.code, message: e.message, details: e.details };
  const message = e instanceof Error ? e.message : String(e);
  return { code: 'internal', message, details: {} };
}

/**
 * @param {{code: ErrorCode, message: string, details?: Record<string, unknown>}} w
 * @returns {StrataError}
 */
export function fromWire(w) {
  return new StrataError(w.code, w.message, w.details ?? {});
}
