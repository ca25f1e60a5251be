// Hybrid logical clock, the same rules as the Rust engine (DESIGN.md H1,
// engine/src/hlc.rs): monotonic when the wall clock steps back (keep the
// physical part, bump the counter), the receive rule on remote timestamps,
// a maximum drift for remote timestamps, counter overflow carrying into the
// physical part, total order (physical, counter, node), and a fixed-width
// text form that sorts like the clock.

export const PHYSICAL_DIGITS = 15;
export const COUNTER_DIGITS = 10;
export const PHYSICAL_MS_MAX = 999_999_999_999_999;
export const COUNTER_MAX = 4_294_967_295;
export const NODE_BYTES_MAX = 64;
export const DRIFT_MS_MAX_DEFAULT = 60_000;

/** Parses `physical:counter:node`, fixed-width or the seed's unpadded form. */
export function parseHlc(text) {
  if (typeof text !== 'string') throw new Error('HLC text must be a string');
  const first = text.indexOf(':');
  const second = first < 0 ? -1 : text.indexOf(':', first + 1);
  if (first < 0 || second < 0) throw new Error(`HLC text ${JSON.stringify(text)} is not physical:counter:node`);
  const p = text.slice(0, first);
  const c = text.slice(first + 1, second);
  const node = text.slice(second + 1);
  if (!/^[0-9]{1,15}$/.test(p)) throw new Error(`HLC physical part ${JSON.stringify(p)} is not 1 to 15 digits`);
  if (!/^[0-9]{1,10}$/.test(c) || Number(c) > COUNTER_MAX) throw new Error(`HLC counter ${JSON.stringify(c)} is out of range`);
  if (node.length === 0 || new TextEncoder().encode(node).length > NODE_BYTES_MAX || /[\s\p{Cc}]/u.test(node)) {
    throw new Error(`HLC node ${JSON.stringify(node)} is invalid`);
  }
  return { physical: Number(p), counter: Number(c), node };
}

/** The fixed-width text form. */
export function formatHlc(t) {
  return `${String(t.physical).padStart(PHYSICAL_DIGITS, '0')}:${String(t.counter).padStart(COUNTER_DIGITS, '0')}:${t.node}`;
}

/** -1, 0 or 1 comparing clocks (physical, counter, node). */
export function compareHlc(a, b) {
  if (a.physical !== b.physical) return a.physical < b.physical ? -1 : 1;
  if (a.counter !== b.counter) return a.counter < b.counter ? -1 : 1;
  if (a.node === b.node) return 0;
  // Byte order of UTF-8, as the Rust side compares.
  const x = new TextEncoder().encode(a.node);
  const y = new TextEncoder().encode(b.node);
  for (let i = 0; i < Math.min(x.length, y.length); i++) if (x[i] !== y[i]) return x[i] < y[i] ? -1 : 1;
  return x.length < y.length ? -1 : x.length > y.length ? 1 : 0;
}

function tick(physical, counter) {
  if (counter < COUNTER_MAX) return [physical, counter + 1];
  if (physical >= PHYSICAL_MS_MAX) throw new Error('HLC exhausted');
  return [physical + 1, 0];
}

export class Hlc {
  constructor(node, wallClock = () => Date.now(), driftMsMax = DRIFT_MS_MAX_DEFAULT) {
    this.node = node;
    this.wall = wallClock;
    this.driftMsMax = driftMsMax;
    this.physical = 0;
    this.counter = 0;
  }

  #wallMs() {
    return Math.min(Math.max(0, Math.floor(this.wall())), PHYSICAL_MS_MAX);
  }

  /** A timestamp for a local event, after everything seen so far. */
  now() {
    const wall = this.#wallMs();
    if (wall > this.physical) {
      this.physical = wall;
      this.counter = 0;
    } else {
      [this.physical, this.counter] = tick(this.physical, this.counter);
    }
    return { physical: this.physical, counter: this.counter, node: this.node };
  }

  /** The receive rule; throws for a remote too far ahead of the wall clock. */
  receive(remote) {
    const wall = this.#wallMs();
    if (remote.physical > wall + this.driftMsMax) {
      throw new Error(`remote timestamp ${formatHlc(remote)} is ${remote.physical - wall} ms ahead, more than ${this.driftMsMax} ms`);
    }
    const physical = Math.max(wall, this.physical, remote.physical);
    const ours = physical === this.physical;
    const theirs = physical === remote.physical;
    if (ours && theirs) [this.physical, this.counter] = tick(physical, Math.max(this.counter, remote.counter));
    else if (ours) [this.physical, this.counter] = tick(physical, this.counter);
    else if (theirs) [this.physical, this.counter] = tick(physical, remote.counter);
    else [this.physical, this.counter] = [physical, 0];
    return { physical: this.physical, counter: this.counter, node: this.node };
  }

  /** Moves the clock to at least `t` without the drift check (the server's
   *  canonical events, and the state restored after a reload). */
  restore(t) {
    if (t.physical > this.physical || (t.physical === this.physical && t.counter > this.counter)) {
      this.physical = t.physical;
      this.counter = t.counter;
    }
  }
}
