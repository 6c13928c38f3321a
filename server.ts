/**
 * A UDP server: the classic Python tutorial's `recvfrom` loop, in Deno. It
 * prints each datagram sent to 127.0.0.1:6789 as one line, `Message from
 * <sender>: <text>`. Run it so (the README explains each flag):
 * `deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' server.ts`
 *
 * @module
 */
import { parseArgs } from "node:util";

/** The tutorial's address: loopback, so only this machine can send to it. */
export const DEFAULT_HOSTNAME = "127.0.0.1";
/** The tutorial's port. */
export const DEFAULT_PORT = 6789;

/** The tutorial's server: binds, then hands each datagram to `handler` until `signal` aborts. */
export async function serve(options: ServeOptions, handler: Handler) {
  const { hostname = DEFAULT_HOSTNAME, port = DEFAULT_PORT, signal } = options;
  // 1. Bind. There is no listen() or accept(): UDP has no connections, so
  // this one socket receives from every sender.
  const conn = Deno.listenDatagram({ transport: "udp", hostname, port });
  // A stop closes the socket, once: the receive() under way then fails.
  let open = true;
  const stop = () => {
    if (open) conn.close();
    open = false;
  };
  signal?.addEventListener("abort", stop);
  try {
    options.onListen?.(conn.addr as Deno.NetAddr);
    if (signal?.aborted) return;
    // 2. Loop on recvfrom(). The tutorial's recvfrom(1024) keeps 1024 bytes
    // of a datagram; 64 KiB holds the largest. One buffer serves them all.
    const buffer = new Uint8Array(65_536);
    while (true) {
      let data, from;
      try {
        [data, from] = await conn.receive(buffer);
      } catch (error) {
        if (isClosed(error)) break; // stopped
        // Windows: an earlier reply found no listener. Not this datagram's.
        if (error instanceof Deno.errors.ConnectionReset) continue;
        throw error;
      }
      // 3. Print it: the handler does (see `Printer`). A handler that returns
      // a promise is waited for (a full output, a reply under way): it needs
      // `data` still, or cannot keep up, so read no more for now.
      const pending = handler(data, from as Deno.NetAddr, conn);
      if (pending) await settled(pending, signal);
    }
  } finally {
    signal?.removeEventListener("abort", stop);
    stop();
  }
}

/**
 * What `serve()` does with each datagram. `data` is a view into the buffer
 * that the next datagram overwrites: valid until the handler returns, or
 * until the promise it returns settles.
 */
export type Handler = (
  data: Uint8Array,
  from: Deno.NetAddr,
  conn: Deno.DatagramConn,
) => void | Promise<void>;

/** Where `serve()` listens, and when it stops. */
export interface ServeOptions {
  /** The address to listen on (default: `127.0.0.1`). */
  hostname?: string;
  /** The port to listen on, 0 for any free one (default: 6789). */
  port?: number;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** Called once the socket is bound, with its address (and the port chosen for port 0). */
  onListen?: (addr: Deno.NetAddr) => void;
}

/** Waits for `promise`, or until `signal` aborts: a stop must not wait for a stuck output. */
async function settled(promise: Promise<void>, signal?: AbortSignal) {
  if (!signal) return await promise;
  promise.catch(() => {}); // if it fails after a stop, nobody is waiting
  let abort = () => {};
  const aborted = new Promise<void>((resolve) => abort = resolve);
  signal.addEventListener("abort", abort); // taken off again: waits are many
  try {
    await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener("abort", abort);
  }
}

/** Whether `error` says that the socket was closed, which is how the loop ends. */
function isClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
}

// ---------------------------------------------------------------------------
// Beyond the tutorial: what makes it hold up, in the order a learner meets the
// problems: a slow output, a hostile sender, echo, chat, numbered datagrams;
// the command line last.
// ---------------------------------------------------------------------------

// 1. A slow output. A UDP sender does not wait: while the server waits for
// its output (a slow terminal, a paused pipe), the socket's queue fills and
// the kernel drops what comes; and `console.log()` blocks the process, Ctrl+C
// included. So lines are written in the background, 1 MiB waiting at most.
const QUEUE_LIMIT = 1_048_576;
const FLUSH_MS = 10;
// A write is whole lines, at most PIPE_BUF (4096) bytes, which a pipe takes
// whole or not at all; a longer line goes in pieces of up to 32 KiB, since
// each write costs a hand-over to another thread.
const PIECE_SIZE = 4096;
const LONG_PIECE_SIZE = 32_768;
const RETRY_MS = 5; // after WouldBlock: a non-blocking pipe is full

/** Lines on their way to a writer such as `Deno.stdout`, in the background: 1 MiB waits at most. */
export class Output {
  /** Lines that `print()` dropped because 1 MiB was waiting. */
  dropped = 0;
  #error: Error | undefined;
  #writer: { write(data: Uint8Array): Promise<number> };
  #onError: (error: Error) => void;
  #beside: Output | undefined;
  // Two buffers: lines are added to one while the other is written.
  #adding = new Uint8Array(65_536);
  #added = 0;
  #writing = new Uint8Array(65_536);
  #start = 0; // #writing from #start to #end is not written yet
  #end = 0;
  #loop: Promise<void> | undefined; // the writing, while under way
  #busy = false; // a write under way
  #midLine = false; // a line begun and not ended (after a stop: never ends)
  #waiting = false; // for the other's line to end: our turn is next
  #changed = Promise.withResolvers<void>(); // after each write, and at a stop
  #stop = new AbortController();

  /**
   * Lines for `writer` (`Deno.stdout`, or one like it); `onError` is called
   * if it fails. With `beside` (stdout, for stderr: `2>&1` makes them one
   * file) the two take turns, and neither writes inside a long line that the
   * other writes in pieces, where its tail would pass for a line of its own.
   */
  constructor(
    writer: { write(data: Uint8Array): Promise<number> },
    options: { onError?: (error: Error) => void; beside?: Output } = {},
  ) {
    this.#writer = writer;
    this.#beside = options.beside;
    this.#onError = options.onError ?? (() => {});
    if (options.beside) options.beside.#beside = this;
  }

  /** Why the writer failed, if it did: `BrokenPipe` when its reader went away. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Whether 1 MiB or more is waiting. */
  get full(): boolean {
    return this.#end - this.#start + this.#added >= QUEUE_LIMIT;
  }

  /** Resolves once less than 1 MiB waits, or the output stopped; rejects if the writer failed. */
  async room() {
    while (this.full && !this.#error && !this.#stop.signal.aborted) {
      await this.#changed.promise;
    }
    if (this.#error) throw this.#error;
  }

  /** Adds `line`, which ends in "\n", by copying it; throws if the writer failed. */
  append(line: Uint8Array) {
    if (this.#stop.signal.aborted) return;
    const added = this.#added + line.length;
    if (added > this.#adding.length) { // grows as needed, never shrinks
      const more = new Uint8Array(Math.max(added, 2 * this.#adding.length));
      more.set(this.#adding.subarray(0, this.#added));
      this.#adding = more;
    }
    this.#adding.set(line, this.#added);
    this.#added = added;
    if (this.#error) throw this.#error; // the line kept: counted as unwritten
    this.#loop ??= this.#write();
  }

  /** Adds `text` as a line, or drops it while 1 MiB waits: diagnostics hold nothing up. */
  print(text: string) {
    if (this.full || this.#error) this.dropped++;
    else this.append(encoder.encode(`${text}\n`));
  }

  /** Writes until `until` (`performance.now()`), then stops; returns the lines not written. */
  async finish(until: number): Promise<number> {
    const late = delay(until - performance.now(), this.#stop.signal);
    await Promise.race([this.#loop, late]);
    this.#stop.abort(); // ends the delay, a retry's, and all writing
    this.#changed.resolve();
    // A write under way may land still: none is undone.
    return countLines(this.#writing.subarray(this.#start, this.#end)) +
      countLines(this.#adding.subarray(0, this.#added));
  }

  async #write() {
    while (!this.#stop.signal.aborted) {
      if (this.#start === this.#end) { // all written: the buffers swap
        // Lines that come together share a write: unless a write's worth
        // waits, wait a moment for more (a write costs a thread hand-over).
        if (this.#added < PIECE_SIZE) await delay(FLUSH_MS, this.#stop.signal);
        if (this.#added === 0 || this.#stop.signal.aborted) break;
        [this.#adding, this.#writing] = [this.#writing, this.#adding];
        this.#end = this.#added;
        this.#start = this.#added = 0;
      }
      const piece = nextPiece(this.#writing, this.#start, this.#end);
      // Turns with `beside` (see the constructor): never inside its line; and
      // no long line of ours begun while it writes, or waits for its turn.
      const ends = piece[piece.length - 1] === 0x0a, other = this.#beside;
      const begins = !ends && !this.#midLine;
      const busy = other && (other.#busy || other.#waiting);
      const open = other && other.#midLine && !other.#stop.signal.aborted;
      if (other && (open || (begins && busy))) {
        this.#waiting = Boolean(open);
        await other.#changed.promise;
        this.#waiting = false;
        continue;
      }
      this.#busy = true;
      if (!ends) this.#midLine = true; // until a write ends the line
      try {
        if (other && other.#midLine) { // it stopped in a line: end that line
          other.#midLine = false;
          await this.#writer.write(encoder.encode("\n"));
        }
        const written = await this.#writer.write(piece);
        // After a stop, a line begun stays open: its rest is not written.
        const stopped = this.#stop.signal.aborted;
        if (written > 0 && !stopped) {
          this.#midLine = piece[written - 1] !== 0x0a;
        }
        this.#start += written;
      } catch (error) {
        if (error instanceof Deno.errors.WouldBlock) {
          await delay(RETRY_MS, this.#stop.signal);
        } else if (!(error instanceof Deno.errors.Interrupted)) {
          this.#error = error instanceof Error ? error : new Error(`${error}`);
          this.#midLine = false;
          this.#onError(this.#error);
          break;
        }
      } finally {
        this.#busy = false;
        this.#changed.resolve();
        this.#changed = Promise.withResolvers();
      }
    }
    this.#loop = undefined;
  }
}

/** The next write of `lines[start..end]`: whole lines up to PIECE_SIZE, or a long line's piece. */
function nextPiece(lines: Uint8Array, start: number, end: number): Uint8Array {
  const piece = lines.subarray(start, Math.min(end, start + PIECE_SIZE));
  const newline = piece.lastIndexOf(0x0a);
  if (start + piece.length === end || newline >= 0) {
    return piece.subarray(0, newline + 1 || piece.length);
  }
  // A long line: up to its end, which then goes with whole lines.
  const long = lines.subarray(start, Math.min(end, start + LONG_PIECE_SIZE));
  const lineEnd = long.indexOf(0x0a);
  return lineEnd < 0 ? long : long.subarray(0, lineEnd);
}

function countLines(bytes: Uint8Array): number {
  let lines = 0;
  for (let i = 0; (i = bytes.indexOf(0x0a, i) + 1) > 0;) lines++;
  return lines;
}

/** Resolves after `ms` milliseconds, or as soon as `signal` aborts. */
function delay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    // Clamped: setTimeout() fires at once past 2^31-1 ms.
    const timer = setTimeout(done, Math.min(Math.max(0, ms), 2 ** 31 - 1));
    signal.addEventListener("abort", done);
    if (signal.aborted) done();
  });
}

// 2. A hostile sender: a datagram is any bytes, from anyone. Printed raw, they
// could move the cursor or clear the screen (controls), forge a line (a line
// break, then "Message from ..."), hide text (`ad\u200bmin`) or reorder it
// (bidirectional controls). So printable text is shown as it is, and every
// other byte as an escape that reads back into the exact bytes.

/** Prints each datagram as a line: `Message from <sender>: <text>`, or in hex. */
export class Printer {
  /** Datagrams printed. */
  datagrams = 0;
  /** Their bytes. */
  bytes = 0;
  /** The terminal's width: a longer line would wrap, and its tail pass for a line. */
  columns: number;
  #output: Output;
  #hex: boolean;
  #from: Deno.NetAddr | undefined; // the last sender, and its prefix
  #prefix: Uint8Array = new Uint8Array();
  #line = new Uint8Array(65_536); // each line is made here

  /** A printer to `output`; at a terminal, `columns` is its width. */
  constructor(output: Output, options: { hex?: boolean; columns?: number }) {
    this.#output = output;
    this.#hex = options.hex ?? false;
    this.columns = options.columns ?? Infinity;
  }

  /** The `Handler` that prints: it returns a promise only when 1 MiB waits to be written. */
  print: Handler = (data, from) => {
    this.datagrams++;
    this.bytes += data.length;
    const last = this.#from, hex = this.#hex;
    // Most datagrams come from the sender of the one before: its prefix again.
    if (hex || from.port !== last?.port || from.hostname !== last.hostname) {
      const size = hex ? ` (${plural(data.length, "byte")})` : "";
      const prefix = `Message from ${formatAddress(from)}${size}: `;
      this.#from = from;
      this.#prefix = encoder.encode(prefix);
    }
    const at = this.#prefix.length;
    const size = at + MAX_EXPANSION * data.length + MARKER_ROOM + 1;
    if (size > this.#line.length) this.#line = new Uint8Array(size);
    const line = this.#line;
    line.set(this.#prefix);
    let end = (hex ? hexInto : escapeInto)(data, line, at, this.columns - at);
    line[end++] = 0x0a; // "\n"
    this.#output.append(line.subarray(0, end));
    // Far behind: read no more until it catches up. Meanwhile the kernel
    // queues what arrives, then drops it, as for any slow receiver.
    if (this.#output.full) return this.#output.room();
  };
}

// --- escaper: client.ts copies from here ---
const encoder = new TextEncoder();
const HEX = encoder.encode("0123456789abcdef");
const BACKSLASH = 0x5c;
// The most bytes one byte becomes (`\xNN`), and room for the marker of a cut.
const MAX_EXPANSION = 4;
const MARKER_ROOM = 32;
// The letters of the short escapes, each for one byte: \t \n \r \\.
const SHORT = new Uint8Array(0x80);
[SHORT[9], SHORT[10], SHORT[13], SHORT[92]] = encoder.encode("tnr\\");
// One rule for what is escaped above ASCII, not a list that is never complete:
// "other" (controls, format characters such as zero-width spaces and the
// bidirectional controls, private use, unassigned), separators that pass for
// a space or break a line, the default-ignorable (drawn as nothing), and
// U+FFFD itself (it would pass for a decoding error).
const HIDDEN = /[\p{C}\p{Z}\p{Default_Ignorable_Code_Point}\ufffd]/u;
// A regex per character is slow, so each verdict is kept: 0 not known yet, 1
// shown, 2 hidden (the need: README).
const verdicts = new Uint8Array(0x110000);

/**
 * Writes `data` escaped into `out` from `at`, and returns where it ends (room
 * needed: MAX_EXPANSION bytes each, and MARKER_ROOM). Given `columns`, it is
 * cut to fit in that many terminal columns (above ASCII a character counts
 * 2, to be safe) with ` \[+N bytes]` at the end, N the bytes not shown.
 */
export function escapeInto(
  data: Uint8Array,
  out: Uint8Array,
  at: number,
  columns = Infinity,
): number {
  // Printable ASCII, the common case, is copied at once (the need: README).
  if (data.length <= columns && isPlain(data)) {
    out.set(data, at);
    return at + data.length;
  }
  const budget = columns - marker(data.length).length; // where a cut ends
  let o = at, width = 0, keptIn = 0, keptOut = at;
  for (let i = 0; i < data.length;) {
    const byte = data[i], start = o;
    const codePoint = byte < 0x80 ? byte : decode(data, i);
    const size = codePoint < 0x80 ? 1 : leadingOnes(byte);
    if (byte >= 0x20 && byte < 0x7f && byte !== BACKSLASH) out[o++] = byte;
    else if (byte < 0x80 && SHORT[byte]) {
      out[o++] = BACKSLASH;
      out[o++] = SHORT[byte];
    } else if (codePoint < 0x80) o = writeByte(out, o, byte); // or not UTF-8
    else if (isHidden(codePoint)) o = writeCodePoint(out, o, codePoint);
    else for (let k = 0; k < size; k++) out[o++] = data[i + k]; // as it is
    i += size;
    if (columns === Infinity) continue; // not at a terminal: no cut
    // Cut only between characters and escapes, never inside one.
    width += byte >= 0x80 && o - start === size ? 2 : o - start;
    if (width <= budget) keptIn = i, keptOut = o;
    else if (width > columns) {
      return writeText(out, keptOut, marker(data.length - keptIn));
    }
  }
  return o;
}

function isPlain(data: Uint8Array): boolean {
  for (let i = 0; i < data.length; i++) {
    if (data[i] < 0x20 || data[i] > 0x7e || data[i] === BACKSLASH) return false;
  }
  return true;
}

function isHidden(codePoint: number): boolean {
  verdicts[codePoint] ||= HIDDEN.test(String.fromCodePoint(codePoint)) ? 2 : 1;
  return verdicts[codePoint] === 2;
}

/** The code point of the UTF-8 sequence at `data[i]`, or -1 if it is not valid UTF-8. */
function decode(data: Uint8Array, i: number): number {
  const size = leadingOnes(data[i]); // of the lead byte: the sequence's length
  if (size < 2 || size > 4 || i + size > data.length) return -1;
  let codePoint = data[i] & (0x7f >> size);
  for (let k = 1; k < size; k++) {
    if ((data[i + k] & 0xc0) !== 0x80) return -1;
    codePoint = (codePoint << 6) | (data[i + k] & 0x3f);
  }
  // Overlong forms and surrogates are not UTF-8, and decoders differ on them.
  const overlong = codePoint < [0, 0, 0x80, 0x800, 0x10000][size];
  const surrogate = codePoint >= 0xd800 && codePoint <= 0xdfff;
  return overlong || surrogate || codePoint > 0x10ffff ? -1 : codePoint;
}

function leadingOnes(byte: number): number {
  return Math.clz32(~(byte << 24));
}

/** Writes `\xNN`: one byte, whatever it is. */
function writeByte(out: Uint8Array, o: number, byte: number): number {
  out[o] = BACKSLASH;
  out[o + 1] = 0x78; // x
  out[o + 2] = HEX[byte >> 4];
  out[o + 3] = HEX[byte & 0xf];
  return o + 4;
}

/** Writes `\uXXXX`, or `\u{XXXXX}` above U+FFFF, as JavaScript does. */
function writeCodePoint(out: Uint8Array, o: number, codePoint: number) {
  const digits = codePoint > 0xfffff ? 6 : codePoint > 0xffff ? 5 : 4;
  o = writeText(out, o, digits > 4 ? "\\u{" : "\\u");
  for (let shift = 4 * digits - 4; shift >= 0; shift -= 4) {
    out[o++] = HEX[(codePoint >> shift) & 0xf];
  }
  return digits > 4 ? writeText(out, o, "}") : o;
}

// A backslash, then "[": no escape of ours, so no datagram can forge it.
function marker(hidden: number): string {
  return ` \\[+${hidden} bytes]`;
}

function writeText(out: Uint8Array, o: number, ascii: string): number {
  for (let k = 0; k < ascii.length; k++) out[o++] = ascii.charCodeAt(k);
  return o;
}

/** Writes `data` as hex (`ff fe 00 41`), cut to `columns` as `escapeInto()` cuts. */
function hexInto(
  data: Uint8Array,
  out: Uint8Array,
  at: number,
  columns: number,
) {
  const fits = 3 * data.length - 1 <= columns;
  const room = Math.floor((columns - marker(data.length).length + 1) / 3);
  const shown = fits ? data.length : Math.max(0, room);
  let o = at;
  for (let i = 0; i < shown; i++) {
    if (i > 0) out[o++] = 0x20; // " "
    out[o++] = HEX[data[i] >> 4];
    out[o++] = HEX[data[i] & 0xf];
  }
  return fits ? o : writeText(out, o, marker(data.length - shown));
}

/** `127.0.0.1:6789`, or `[::1]:6789` for IPv6. */
function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return `${bracketed(hostname)}:${port}`;
}

/** `::1` as `[::1]`, the form an address with a port and `--allow-net` take. */
function bracketed(hostname: string): string {
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}
// --- escaper: to here ---

// 3. Replies go wherever a datagram claims to come from, and UDP does not
// check that claim: a forged source chooses where they go. One rule for each
// harm that can do:
// - Loops and floods with services: replies go only to ports that systems
//   give clients (Linux's first is 32768; Windows' and macOS', 49152), less
//   three services that listen among them. Services listen below.
// - Floods: each address, member and newcomer has a budget (`Bucket`), kept
//   in tables that never forget a budget under way.
// - Loops with another echo server: bytes that come straight back again are
//   our own reply, and are not answered.
const CLIENT_PORTS = 32_768;
const SERVICE_PORTS = [33_848, 41_794, 53_413]; // Jenkins, Crestron, Netis

/** Why the server never replies to `to`, or `undefined` if it may. */
function refusal(self: Deno.NetAddr, to: Deno.NetAddr): string | undefined {
  // Bound to 0.0.0.0 or ::, every local address is its own.
  const anywhere = self.hostname === "0.0.0.0" || self.hostname === "::";
  if (to.port === self.port && (anywhere || to.hostname === self.hostname)) {
    return "the server's own address"; // it would answer itself for ever
  }
  if (to.port < CLIENT_PORTS || SERVICE_PORTS.includes(to.port)) {
    return `port ${to.port} is no client's (services listen there)`;
  }
}

/** A token bucket: up to `burst` tokens, refilled at `perSecond`. */
type Bucket = { tokens: number; at: number }; // at: ms
type Rate = [burst: number, perSecond: number];

/** Refills `bucket` up to `now`, and returns whether it is full again. */
function refill(bucket: Bucket, [burst, perSecond]: Rate, now: number) {
  const tokens = bucket.tokens + (now - bucket.at) * perSecond / 1000;
  bucket.tokens = Math.min(burst, tokens);
  bucket.at = now;
  return bucket.tokens === burst;
}

/** Takes a token from `bucket` at `now`, if it has one. */
function take(bucket: Bucket, rate: Rate, now: number): boolean {
  refill(bucket, rate, now);
  if (bucket.tokens < 1) return false;
  bucket.tokens--;
  return true;
}

// The tables keyed by address keep their keys in the order of use (a Map's
// order is the order set): the first is the one used longest ago.
function setLast<T>(table: Map<string, T>, key: string, value: T) {
  table.delete(key);
  table.set(key, value);
}

// Echo: each datagram goes back to its sender, byte for byte, as a game
// server's reply would: at most REPLY_RATE a second to an address. A loop
// with another echo server sends the same bytes back within a round trip,
// well under LOOP_MS on a LAN; a person, or a game at 60 a second, sends its
// next datagram later. So bytes that come straight back the LOOP_LIMIT-th time
// in a row are a loop. (Servers further apart meet the rate limit instead.)
const REPLY_RATE: Rate = [100, 100];
const LOOP_MS = 10;
const LOOP_LIMIT = 2;
const LOOP_MEMORY = 64; // replies remembered per address
// Addresses remembered, as forged sources have no end. Only one whose budget
// is full again is forgotten: forgetting one under way would hand whoever
// filled the table a fresh budget. (Full again, it has sent nothing in the
// last LOOP_MS either: a reply spends a token, and one comes back in LOOP_MS.)
const MAX_PEERS = 4096;

// Reports a problem as a warning of a kind (`echo`, `chat`); reads the time,
// in ms (`performance.now()`, or a test's clock).
type Warn = (kind: string, text: string) => void;
type Clock = { clock?: () => number };

/** A `Handler` that sends each datagram back to its sender, unless a rule above says not to. */
export function echo(
  warn: (kind: string, text: string) => void,
  { clock = () => performance.now() }: { clock?: () => number } = {},
): Handler {
  type Reply = { hash: number; at: number; back: number };
  const peers = new Map<string, { budget: Bucket; sent: Reply[] }>();
  return async (data, from, conn) => {
    const time = clock(), key = formatAddress(from);
    const not = (why: string) => warn("echo", `not replying to ${key}: ${why}`);
    const refused = refusal(conn.addr as Deno.NetAddr, from);
    if (refused) return not(refused);
    let peer = peers.get(key);
    if (!peer && peers.size >= MAX_PEERS) {
      const [oldest, { budget }] = peers.entries().next().value!;
      if (!refill(budget, REPLY_RATE, time)) return not("busy");
      peers.delete(oldest);
    }
    peer ??= { budget: { tokens: REPLY_RATE[0], at: time }, sent: [] };
    setLast(peers, key, peer);
    const h = hash(data);
    peer.sent = peer.sent.filter((reply) => time - reply.at < LOOP_MS);
    const back = 1 + (peer.sent.findLast((s) => s.hash === h)?.back ?? -1);
    if (back >= LOOP_LIMIT) return not(`an echo loop (back ${back} times)`);
    if (!take(peer.budget, REPLY_RATE, time)) return not("over 100 a second");
    peer.sent.push({ hash: h, at: time, back });
    if (peer.sent.length > LOOP_MEMORY) peer.sent.shift();
    try {
      await conn.send(data, from);
    } catch (error) {
      if (!isClosed(error)) not(reason(error));
    }
  };
}

/** A 32-bit FNV-1a hash: enough to tell whether bytes came back unchanged. */
function hash(data: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i], 0x01000193);
  return h >>> 0;
}

// 4. Chat: each datagram goes to every other member, marked with who said it.
// A member is an address heard in the last CHAT_IDLE_MS, CHAT_MAX_MEMBERS at
// most: a full chat admits a newcomer in place of the member silent longest,
// never of one heard in the last CHAT_KEEP_MS (forged joins cannot push out
// the talkers). One datagram in makes up to 49 out, so each member's messages
// are relayed at its own RELAY_RATE, a budget nobody else can spend; it
// starts with one (its first words), so joining again refills nothing; and
// newcomers join at JOIN_RATE.
const CHAT_IDLE_MS = 5 * 60_000;
const CHAT_MAX_MEMBERS = 50;
const CHAT_KEEP_MS = 60_000;
const RELAY_RATE: Rate = [10, 2];
const JOIN_RATE: Rate = [CHAT_MAX_MEMBERS, 5];
// A relay starts `<127.0.0.1:51610> `; a datagram that does comes from another
// chat server, and relaying it on would loop.
const RELAY_MARK = /^<(\[[\d.:a-f]+\]|[\d.]+):\d+> /;
const MAX_DATAGRAM = 65_507; // 65,535 less the IPv4 and UDP headers
type Member = { addr: Deno.NetAddr; heard: number; relays: Bucket };

/** A chat: its members, and the rules for joining and relaying. */
export class ChatRoom {
  #members = new Map<string, Member>(); // by address, silent longest first
  #joins: Bucket;
  #warn: Warn;
  #clock: () => number;

  /** A chat that reports through `warn`. */
  constructor(warn: Warn, { clock = () => performance.now() }: Clock = {}) {
    this.#warn = warn;
    this.#clock = clock;
    this.#joins = { tokens: JOIN_RATE[0], at: clock() };
  }

  /** How many members there are now. */
  get size(): number {
    return this.#members.size;
  }

  /** The `Handler` that relays each datagram to the other members. */
  relay: Handler = async (data, from, conn) => {
    const key = formatAddress(from), mark = encoder.encode(`<${key}> `);
    const not = (why: string) =>
      this.#warn("chat", `not relaying for ${key}: ${why}`);
    const refused = refusal(conn.addr as Deno.NetAddr, from);
    if (refused) return not(refused);
    if (RELAY_MARK.test(String.fromCharCode(...data.subarray(0, 64)))) return;
    if (mark.length + data.length > MAX_DATAGRAM) {
      return not(`${data.length} bytes and the mark do not fit in a datagram`);
    }
    // Checks first, budgets then: what is not relayed spends none.
    const time = this.#clock(), member = this.#hear(key, from, time);
    if (!member) return not("the chat is full, or joins come too fast");
    const others = [...this.#members].filter(([other]) => other !== key);
    if (others.length === 0) return;
    if (!take(member.relays, RELAY_RATE, time)) return not("over 2 a second");
    const marked = new Uint8Array(mark.length + data.length);
    marked.set(mark);
    marked.set(data, mark.length);
    // All at once, not one after another: a full chat is 49 sends.
    await Promise.all(others.map(async ([other, { addr }]) => {
      try {
        await conn.send(marked, addr);
      } catch (error) {
        if (isClosed(error)) return;
        this.#warn("chat", `cannot relay to ${other}: ${reason(error)}`);
        // Unreachable or not allowed: out. A full buffer (WouldBlock, or
        // ENOBUFS on macOS) is only for a moment.
        const busy = error instanceof Deno.errors.WouldBlock ||
          /no buffer space/i.test(String(error));
        if (!busy) this.#members.delete(other);
      }
    }));
  };

  /** Notes that `key` spoke at `time`: its membership, if it has or gets one. */
  #hear(key: string, addr: Deno.NetAddr, time: number) {
    for (const [other, { heard }] of this.#members) {
      if (time - heard < CHAT_IDLE_MS) break;
      this.#members.delete(other); // silent too long
    }
    let member = this.#members.get(key);
    if (!member) {
      const [oldest, silent] = this.#members.entries().next().value ?? [];
      const full = this.#members.size >= CHAT_MAX_MEMBERS;
      if (full && time - silent!.heard < CHAT_KEEP_MS) return;
      if (!take(this.#joins, JOIN_RATE, time)) return;
      if (full) this.#members.delete(oldest!);
      member = { addr, heard: time, relays: { tokens: 1, at: time } };
    }
    member.heard = time;
    setLast(this.#members, key, member);
    return member;
  }
}

// 5. Numbered datagrams: what UDP did on the way. A datagram can be lost,
// duplicated or overtaken, and the bytes alone do not show it. So `--seq` in
// the client starts each with `#<n>/<count> ` (`#<n> ` alone works too), and
// `--stats` counts what the numbers tell. Numbers can be forged, so a sender's
// loss is its own word, and the total sums none: a sender's first numbered
// datagram sets its run (the count, or without one the first number); a number
// outside the run is a stray, not a gap. Lost: the count (or the numbers from
// the first to the highest) less those that came.
const WINDOW = 4096; // numbers remembered, to tell a duplicate from a late one
// Senders followed at once. A sender is forgotten (its counts kept in the
// total) only once quiet for QUIET_MS, longer than the client's slowest pace
// (1 a second): forgetting a run under way would count its loss twice.
const MAX_SENDERS = 1024;
const QUIET_MS = 5_000;
const TOP_SENDERS = 5; // named in the summary, busiest first
// `#<n> ` or `#<n>/<count> `: decimal from 1, no leading zero, up to 9 digits.
const NUMBERED = /^#([1-9]\d{0,8})(?:\/([1-9]\d{0,8}))? /;
// What the numbers of one sender, or of several, told; and when they came.
const NO_COUNTS = {
  senders: 0,
  received: 0,
  expected: 0,
  arrived: 0, // numbers of the run that came, once each as far as known
  duplicated: 0,
  outOfOrder: 0,
  tooLate: 0, // WINDOW or more behind the highest: maybe a duplicate
  stray: 0,
  unnumbered: 0,
  first: Infinity,
  last: -Infinity,
};
type Counts = typeof NO_COUNTS;

/** Counts what each sender's numbers (`#<n>/<count> `, from `client --seq`) tell. */
export class SequenceStats {
  #senders = new Map<string, Sender>(); // heard longest ago first
  #forgotten = { ...NO_COUNTS }; // of the senders forgotten
  #untracked = 0; // datagrams from senders beyond MAX_SENDERS
  #clock: () => number;

  /** Stats that read the time from `clock`, in ms (default: `performance.now()`). */
  constructor({ clock = () => performance.now() }: Clock = {}) {
    this.#clock = clock;
  }

  /** The `Handler` that counts a datagram. */
  count: Handler = (data, from) => {
    const key = formatAddress(from), time = this.#clock();
    let sender = this.#senders.get(key);
    if (!sender && this.#senders.size >= MAX_SENDERS) {
      const [oldest, quiet] = this.#senders.entries().next().value!;
      if (time - quiet.counts.last < QUIET_MS) return void this.#untracked++;
      this.#senders.delete(oldest);
      add(this.#forgotten, quiet.counts);
    }
    sender ??= new Sender(time);
    setLast(this.#senders, key, sender);
    sender.see(data, time);
  };

  /** A line for each of the busiest senders, then one for all; none if nothing came. */
  summary(): string[] {
    const senders = [...this.#senders]
      .sort(([, a], [, b]) => b.counts.received - a.counts.received);
    const total = { ...this.#forgotten };
    for (const [, { counts }] of senders) add(total, counts);
    const lines = senders.slice(0, TOP_SENDERS)
      .map(([key, { counts }]) => `${key}: ${describe(counts)}`);
    // A sender's loss is its own word (its count), which a forged source can
    // make up about itself: the total sums what came, and no such claims.
    total.expected = 0;
    if (total.senders > 1) {
      lines.push(`${plural(total.senders, "sender")}: ${describe(total)}`);
    }
    if (this.#untracked) {
      const untracked = plural(this.#untracked, "datagram");
      lines.push(`${untracked} not followed: too many senders`);
    }
    return lines;
  }
}

/** One sender's counts, and its run of numbers. */
class Sender {
  counts: Counts;
  #count = -1; // the run's count: 0 if its numbers have none; -1 before one
  #lowest = 0;
  #highest = 0;
  // Number n, once it came, at n % WINDOW: no clearing as numbers grow, since
  // each slot says which number it holds.
  #seen = new Uint32Array(WINDOW);

  constructor(time: number) {
    this.counts = { ...NO_COUNTS, senders: 1, first: time };
  }

  /** Counts what the number that `data` starts with tells, if it has one. */
  see(data: Uint8Array, time: number) {
    const counts = this.counts;
    counts.received++;
    counts.last = time;
    const match = data[0] === 0x23 // "#": only then the regex
      ? NUMBERED.exec(String.fromCharCode(...data.subarray(0, 21)))
      : null;
    if (!match) return void counts.unnumbered++;
    const n = Number(match[1]), count = Number(match[2] ?? 0);
    if (this.#count < 0) { // the first: it sets the run
      this.#count = count;
      this.#lowest = count ? 1 : n;
    }
    const beyond = count ? n > count : n >= this.#highest + WINDOW;
    const stray = beyond && this.#highest > 0 || n < this.#lowest;
    if (count !== this.#count || stray) return void counts.stray++;
    if (n > this.#highest) this.#highest = n;
    else if (n <= this.#highest - WINDOW) counts.tooLate++;
    else if (this.#seen[n % WINDOW] === n) return void counts.duplicated++;
    else counts.outOfOrder++;
    this.#seen[n % WINDOW] = n;
    counts.arrived++;
    counts.expected = count || this.#highest - this.#lowest + 1;
  }
}

/** Adds `counts` to `total`: the numbers summed, the times widened. */
function add(total: Counts, counts: Counts) {
  const { first, last } = total;
  for (const key in counts) {
    total[key as keyof Counts] += counts[key as keyof Counts];
  }
  total.first = Math.min(first, counts.first);
  total.last = Math.max(last, counts.last);
}

/** `10,000 expected, 3,968 received, 6,032 lost (60.3%), ..., 81,528/s` */
function describe(counts: Counts): string {
  const { expected, received, arrived, first, last } = counts;
  const lost = Math.max(0, expected - arrived);
  const share = expected ? lost * 100 / expected : 0;
  const percent = share > 0 && share < 0.1 ? "<0.1" : share.toFixed(1);
  // A rate needs two readings of the clock, some time apart.
  const rate = last > first &&
    `${thousands((received - 1) * 1000 / (last - first))}/s`;
  const parts = [
    expected && `${thousands(expected)} expected`,
    `${thousands(received)} received`,
    expected && `${thousands(lost)} lost (${percent}%)`,
    expected && `${thousands(counts.duplicated)} duplicated`,
    expected && `${thousands(counts.outOfOrder)} out of order`,
    counts.tooLate && `${thousands(counts.tooLate)} too late`,
    counts.stray && `${thousands(counts.stray)} stray`,
    counts.unnumbered && `${thousands(counts.unnumbered)} unnumbered`,
    rate,
  ];
  return parts.filter(Boolean).join(", ");
}

/** `9,620`: rounded, thousands separated, the same on every system. */
function thousands(value: number): string {
  return Math.round(value).toLocaleString("en-US");
}

/** "1 datagram", "7,800 bytes". */
function plural(count: number, noun: string): string {
  return `${thousands(count)} ${noun}${count === 1 ? "" : "s"}`;
}

/** A `Handler` that runs each of `handlers` in turn, and waits for those that return a promise. */
export function all(...handlers: Handler[]): Handler {
  if (handlers.length === 1) return handlers[0];
  return (data, from, conn) => {
    let pending: Promise<void>[] | undefined;
    for (const handler of handlers) {
      const promise = handler(data, from, conn);
      if (promise) (pending ??= []).push(promise);
    }
    if (pending) return Promise.all(pending).then(() => {});
  };
}

// 6. The command line, which wires the parts together.

const [REPLY_BURST, REPLY_PER_SECOND] = REPLY_RATE;
const [RELAY_BURST, RELAY_PER_SECOND] = RELAY_RATE;
const USAGE =
  `Usage: deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' server.ts [options]
   or, in this project (deno.json gives those flags): deno task server [options]

Prints every UDP datagram that arrives, one line each, with its sender.

Options:
  -H, --hostname <host>  address to listen on (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      port to listen on, 0 for any free one (default: ${DEFAULT_PORT})
      --hex              show each datagram's length and bytes in hex
      --stats            count what the numbers of \`client --seq\` tell (#1/10,
                         #2/10, ...): when stopped, say how many were lost,
                         duplicated, out of order, too late (4,096 behind:
                         counted as come), stray (not of the sender's run) or
                         unnumbered, and the rate
      --echo             send every datagram back to its sender: ${REPLY_BURST} at
                         once, then ${REPLY_PER_SECOND} a second to each address; bytes that
                         come back within ${LOOP_MS} ms of our echo of them, the
                         ${LOOP_LIMIT}nd time in a row, are a loop: not answered
      --chat             relay every datagram to the other members, the
                         addresses heard in the last 5 minutes (${CHAT_MAX_MEMBERS} at
                         most): from each, its first message, then ${RELAY_PER_SECOND} a
                         second, saved up to ${RELAY_BURST}
  -h, --help             show this help

--echo and --chat reply only to ports that systems give clients (${CLIENT_PORTS}
and up): services that answer every datagram listen below.`;

// Exit codes: 0 stopped with every line written; 1 a failure, or lines that
// the output did not take in time; 2 a usage error; 141 the output's reader
// went away (128 + SIGPIPE, as for `yes | head`).
const EXIT_USAGE = 2;
const EXIT_CLOSED = 141;
// On a stop, the lines still waiting get LINES_MS, the summary SUMMARY_MS:
// the server ends within 1 s, whatever its outputs do.
const LINES_MS = 600;
const SUMMARY_MS = 200;

class UsageError extends Error {}

function parseError(error: unknown): boolean {
  const code = (error as { code?: string } | null)?.code;
  return code?.startsWith("ERR_PARSE_ARGS") ?? false;
}

function parseOptions(args: string[]) {
  if (args[0] === "--") args = args.slice(1); // `deno task server -- ...`
  // `--port -1` would be taken for two options: make it `--port=-1`.
  const i = args.findIndex((arg, i) =>
    /^(-p|--port)$/.test(arg) && /^-\d/.test(args[i + 1] ?? "")
  );
  if (i >= 0) args.splice(i, 2, `--port=${args[i + 1]}`);
  const { values } = parseArgs({
    args,
    options: {
      hostname: { type: "string", short: "H" },
      port: { type: "string", short: "p" },
      hex: { type: "boolean" },
      stats: { type: "boolean" },
      echo: { type: "boolean" },
      chat: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  // Defaults here, not in parseArgs: Deno 2.0's types miss them.
  const { hostname = DEFAULT_HOSTNAME, port = `${DEFAULT_PORT}` } = values;
  if (values.help) return { ...values, hostname, port: DEFAULT_PORT }; // first
  // A port where only a host belongs: 127.0.0.1:6789, [::1]:6789.
  const typo = /^\[(.*)\]:(\d+)$|^([^:]*):(\d+)$/.exec(hostname);
  if (typo) {
    const [host, port] = [typo[1] ?? typo[3], typo[2] ?? typo[4]];
    const use = host ? `-H ${host} -p ${port}` : `-p ${port}`;
    throw new UsageError(`--hostname takes no port: use ${use}`);
  }
  if (!/^\d+$/.test(port) || Number(port) > 65_535) {
    const range = "an integer from 0 to 65535";
    throw new UsageError(`--port must be ${range}, not "${port}"`);
  }
  if (values.echo && values.chat) {
    throw new UsageError("--echo and --chat cannot be used together");
  }
  // As Deno's permissions name it: lower case, IPv6 without brackets.
  const bare = hostname.toLowerCase().replace(/^\[(.*)\]$/, "$1");
  return { ...values, hostname: bare, port: Number(port) };
}

/** Runs the server as the command line says, and returns the exit code. */
async function main(args: string[]): Promise<number> {
  // A stdout that fails (its reader went away) stops the server; a stderr
  // that fails loses only the diagnostics.
  const controller = new AbortController();
  const out = new Output(Deno.stdout, { onError: () => controller.abort() });
  const err = new Output(Deno.stderr, { beside: out });
  let code: number;
  try {
    code = await run(args, out, err, controller);
  } catch (error) {
    const usage = parseError(error) || error instanceof UsageError;
    err.print(`error: ${reason(error)}${usage ? " (see --help)" : ""}`);
    code = usage ? EXIT_USAGE : 1;
  }
  // The last lines (an error, the help) get a moment, never long enough to
  // hang; a server that ran has finished both already.
  await out.finish(performance.now() + SUMMARY_MS);
  // A reader that went away (`--help | head -1`) needs no word, as for `yes`.
  const closed = out.error instanceof Deno.errors.BrokenPipe;
  if (out.error && !closed && code === 0) {
    err.print(`error: cannot write the output: ${reason(out.error)}`);
  }
  await err.finish(performance.now() + SUMMARY_MS);
  if (!out.error || code !== 0) return code;
  return closed ? EXIT_CLOSED : 1;
}

async function run(
  args: string[],
  out: Output,
  err: Output,
  controller: AbortController,
): Promise<number> {
  // Deno 1.x runs this file but differs in ways that matter: say so.
  const deno = Deno.version.deno;
  if (deno.startsWith("1.")) {
    throw new Error(
      `this needs Deno 2.0 or newer, not ${deno}: run deno upgrade`,
    );
  }
  const options = parseOptions(args);
  if (options.help) {
    out.print(USAGE);
    return 0;
  }
  // Without --unstable-net it is missing at run time; `deno check` passes.
  if (typeof Deno.listenDatagram !== "function") {
    throw new Error("Deno.listenDatagram is unstable: run with --unstable-net");
  }
  // Ctrl+C may come twice (under `deno task`, from the terminal and from the
  // task runner): aborting twice is harmless. The listeners stay until
  // Deno.exit(): a SIGINT with no listener would kill the process.
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGINT", stop);
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", stop);
  // At a terminal, lines are cut to its width, followed as it is resized (a
  // width of 0 is unknown: then a common one).
  const terminal = Deno.stdout.isTerminal();
  const width = () => terminal ? Deno.consoleSize().columns || 80 : Infinity;
  const printer = new Printer(out, { hex: options.hex, columns: width() });
  if (terminal && Deno.build.os !== "windows") {
    Deno.addSignalListener("SIGWINCH", () => printer.columns = width());
  }
  const warnings = new Warnings(err);
  const room = options.chat ? new ChatRoom(warnings.warn) : undefined;
  const stats = options.stats ? new SequenceStats() : undefined;
  // Replies first (they read the clock as the datagram comes), the print last.
  const handlers = [
    options.echo ? echo(warnings.warn) : undefined,
    room?.relay,
    stats?.count,
    printer.print,
  ].filter((handler) => handler !== undefined);
  const { hostname, port } = options;
  const mode = options.echo ? " (echo)" : room ? " (chat)" : "";
  let listening = false, failed = false;
  try {
    await serve({
      hostname,
      port,
      signal: controller.signal,
      onListen(addr) {
        listening = true;
        err.print(`Listening on ${formatAddress(addr)}${mode}; Ctrl+C stops`);
      },
    }, all(...handlers));
  } catch (error) {
    const where = formatAddress({ transport: "udp", hostname, port });
    const context = listening ? "" : `cannot listen on ${reason(where)}: `;
    if (error !== out.error) err.print(`error: ${context}${reason(error)}`);
    if (!listening) return 1;
    failed = true;
  }
  const unwritten = await out.finish(performance.now() + LINES_MS);
  const closed = out.error instanceof Deno.errors.BrokenPipe;
  if (out.error && !closed) {
    err.print(`error: cannot write the output: ${reason(out.error)}`);
  }
  const hidden = warnings.held + err.dropped;
  const lost = `${plural(unwritten, "line")} not written`;
  const { datagrams, bytes } = printer;
  const summary = [
    `Received ${plural(datagrams, "datagram")}, ${plural(bytes, "byte")}`,
    room && plural(room.size, "chat member"),
    hidden && `${plural(hidden, "warning")} not shown`,
    closed ? `the output was closed, ${lost}` : out.error && lost,
    !out.error && unwritten && `${lost}: the output did not take them in time`,
  ];
  err.print(summary.filter(Boolean).join("; "));
  for (const line of stats?.summary() ?? []) err.print(line);
  await err.finish(performance.now() + SUMMARY_MS);
  if (closed) return EXIT_CLOSED;
  return out.error || unwritten || failed ? 1 : 0;
}

/** An error as the end of a line: `Address in use (os error 98)` as `address in use`. */
function reason(error: unknown): string {
  let text = error instanceof Error ? error.message : String(error);
  // Deno 2.0 adds the system's words again, and repeats some messages.
  text = text.replace(/ \(os error \d+\).*$/s, "").replace(/^(.+): \1$/s, "$1");
  // parseArgs explains in several sentences: the first says what is wrong.
  if (parseError(error)) text = text.split(/(?<=\.)\s/)[0].replace(/\.$/, "");
  // Deno says "run again with the --allow-net flag": say which.
  const denied = text.match(/^Requires net access to "(.*):\d+"/)?.[1];
  const flag = `--allow-net=${denied}`; // zsh takes [::1] for a pattern
  if (denied) {
    text = `not allowed: run server.ts with ${
      flag.includes("[") ? `'${flag}'` : flag
    }`;
  }
  text = text.replace(/^[A-Z](?=[a-z]* )/, (first) => first.toLowerCase());
  const data = encoder.encode(text); // from outside: escaped as a datagram
  const out = new Uint8Array(MAX_EXPANSION * data.length);
  return new TextDecoder().decode(out.subarray(0, escapeInto(data, out, 0)));
}

/** Warnings, one a second of each kind at most: a flood must not become one of lines. */
class Warnings {
  /** Warnings held back, and not shown since. */
  held = 0;
  #output: Output;
  #kinds = new Map<string, { at: number; held: number }>();

  constructor(output: Output) {
    this.#output = output;
  }

  warn: Warn = (kind, text) => {
    const time = performance.now();
    const last = this.#kinds.get(kind) ?? { at: -Infinity, held: 0 };
    this.#kinds.set(kind, last);
    if (time - last.at < 1000) {
      last.held++;
      this.held++;
      return;
    }
    const more = last.held ? ` (and ${last.held} more like it before)` : "";
    this.#output.print(`warning: ${text}${more}`);
    this.held -= last.held;
    last.held = 0;
    last.at = time;
  };
}

if (import.meta.main) Deno.exit(await main(Deno.args));
