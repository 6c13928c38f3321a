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

/** The tutorial's server: binds, then hands each datagram to `handler` (a print, in the tutorial) until `signal` aborts. */
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
      // a promise is waited for: it cannot keep up, so read no more for now.
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

/**
 * Waits until `promise` settles, or `signal` aborts: a stop must not wait for
 * a handler held up by a stuck output. (Each wait takes its listener off
 * again: a server runs for long, and waits often.)
 */
async function settled(promise: Promise<void>, signal?: AbortSignal) {
  if (!signal) return await promise;
  promise.catch(() => {}); // if it fails after a stop, nobody is waiting
  let abort = () => {};
  const aborted = new Promise<void>((resolve) => abort = resolve);
  signal.addEventListener("abort", abort);
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
// Beyond the tutorial: the parts that make it hold up, in the order a learner
// meets the problems: a slow output, a hostile sender, echo, chat, numbered
// datagrams, the command line.
// ---------------------------------------------------------------------------

// 1. A slow output. A UDP sender does not wait for the receiver: while the
// server waits for its output (a slow terminal, a pipe whose reader pauses),
// datagrams pile up in the socket's queue, and once it is full the kernel
// drops them. And `console.log()` waits: while a reader pauses, nothing else
// runs, not even Ctrl+C. So lines are collected in chunks and written in the
// background with `write()`, which Deno runs on a thread of its own: the
// receive loop, the signals and the stop carry on whatever the output does.
// Both stdout and stderr are written so.

// A chunk of lines, and how many bytes may wait at most (plus one line):
// beyond that, `Printer` makes the loop wait, and diagnostics are dropped.
const CHUNK_SIZE = 65_536;
const QUEUE_LIMIT = 1_048_576;
// A line waits at most this long to be written, so that it shows promptly
// while lines arriving together still share one write.
const FLUSH_MS = 10;
// Another program on the same pipe may make it non-blocking: a write to a full
// pipe then fails with WouldBlock instead of waiting, and is tried again. Deno
// writes stdout through a line buffer, so that only a write of whole lines is
// taken whole or not at all, and a pipe takes at most PIPE_BUF bytes (4096 on
// Linux; 512 on macOS, where a longer write may then be cut) all or nothing.
// So every write is of whole lines, 4096 bytes at most (a longer line goes in
// pieces). Even to a regular file: telling a file from a pipe takes node:fs,
// and loading it made each full garbage collection stop the receive loop 2-3
// ms longer (see the README's "How fast is it?").
const PIECE_SIZE = 4096;
// Inside a line longer than that, a write without a line end is not held in
// Deno's line buffer: it goes out as it is, and says how much went. So a long
// line (escapes make a 65,507-byte datagram up to 262 KB) goes in pieces of
// up to 32 KiB, not 4 KiB: each write costs Deno a hand-over to another thread
// (about 30 us of CPU here), and 64 of them made such a line cost 3-4 times
// what an ASCII one does. (The line end stays in a piece of PIPE_BUF or less.)
const LONG_PIECE_SIZE = 32_768;
const RETRY_MS = 5;

/** Where an `Output` writes: `Deno.stdout`, `Deno.stderr`, or any writer like them. */
export interface Writer {
  /** Writes some of `data`, and says how many bytes. */
  write(data: Uint8Array): Promise<number>;
}

/** A chunk of lines waiting to be written. */
interface Chunk {
  bytes: Uint8Array;
  lines: number;
}

/**
 * Lines on their way to a writer: collected in chunks, written in the
 * background, in order, whole lines at a time. Nothing here ever blocks.
 */
export class Output {
  /** Lines dropped by `print()` because too many were waiting. */
  dropped = 0;
  #writer: Writer;
  #onError: (error: Error) => void;
  #error: Error | undefined;
  #chunk: Uint8Array = new Uint8Array(CHUNK_SIZE); // the lines being collected
  #length = 0; // of the lines in #chunk
  #lines = 0; // in #chunk
  #added = 0;
  #written = 0;
  #queue: Chunk[] = [];
  #queued = 0; // bytes
  #offset = 0; // how much of #queue[0] is written
  #spare: Uint8Array[] = [];
  #writing: Promise<void> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #room: PromiseWithResolvers<void> | undefined;
  #stopped = new AbortController();

  /** Lines for `writer`; `onError` is called once if it fails. */
  constructor(writer: Writer, onError: (error: Error) => void = () => {}) {
    this.#writer = writer;
    this.#onError = onError;
  }

  /** Why the writer failed, if it did: `BrokenPipe` when its reader went away. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Whether 1 MiB of lines or more is waiting. */
  get full(): boolean {
    return this.#queued >= QUEUE_LIMIT;
  }

  /** Resolves once a chunk has been written, or the output has stopped. */
  room(): Promise<void> {
    this.#room ??= Promise.withResolvers();
    return this.#room.promise;
  }

  /** Adds `line`, which ends in "\n": copied, so `line` may then be reused. */
  append(line: Uint8Array) {
    // A line that fits in a chunk is never cut across two: a pipe takes
    // whole lines of 4096 bytes or less in one piece (see PIECE_SIZE).
    if (this.#length + line.length > this.#chunk.length) this.#flush();
    let rest = line;
    while (this.#length + rest.length > this.#chunk.length) {
      // Longer than a chunk: it fills this one and goes on in the next.
      const room = this.#chunk.length - this.#length;
      this.#chunk.set(rest.subarray(0, room), this.#length);
      this.#length += room;
      rest = rest.subarray(room);
      this.#flush();
    }
    this.#chunk.set(rest, this.#length);
    this.#length += rest.length;
    this.#lines++;
    this.#added++;
    // Written soon, in one write with the lines that come meanwhile; while a
    // write is under way, once it is done.
    if (!this.#writing && !this.#stopped.signal.aborted) {
      this.#timer ??= setTimeout(() => this.#flush(), FLUSH_MS);
    }
  }

  /** Adds `text` as a line, unless 1 MiB is waiting: for diagnostics, which must never hold anything up. */
  print(text: string) {
    if (this.full) {
      this.dropped++;
      return;
    }
    this.append(encoder.encode(`${text}\n`));
  }

  /**
   * Writes what is waiting, until the time `until` (`performance.now()`);
   * then stops for good, and returns how many lines were not written. A
   * write under way then may still land: Deno cannot take it back.
   */
  async finish(until: number): Promise<number> {
    this.#flush();
    const stopped = this.#stopped.signal;
    await Promise.race([
      this.#writing,
      delay(until - performance.now(), stopped),
    ]);
    this.#stopped.abort(); // and with it the timers
    this.#room?.resolve();
    // The whole lines of a chunk written in part count as written.
    const head = this.#queue[0]?.bytes.subarray(0, this.#offset) ??
      new Uint8Array();
    let partial = 0;
    for (let i = head.indexOf(0x0a); i >= 0; i = head.indexOf(0x0a, i + 1)) {
      partial++;
    }
    return this.#added - this.#written - partial;
  }

  /** Sends the lines in `buffer` to be written, and starts a new chunk. */
  #flush() {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#length === 0) return;
    this.#queue.push({
      bytes: this.#chunk.subarray(0, this.#length),
      lines: this.#lines,
    });
    this.#queued += this.#length;
    this.#chunk = this.#spare.pop() ?? new Uint8Array(CHUNK_SIZE);
    this.#length = 0;
    this.#lines = 0;
    this.#writing ??= this.#write();
  }

  /** Writes the queued chunks in order, until none is left, or it fails or stops. */
  async #write() {
    const stopped = this.#stopped.signal;
    try {
      while (this.#queue.length > 0 && !this.#error && !stopped.aborted) {
        await this.#writeSome();
      }
    } finally {
      this.#writing = undefined;
    }
    // The lines that came meanwhile go soon, in one write.
    if (this.#length > 0 && !stopped.aborted) {
      this.#timer ??= setTimeout(() => this.#flush(), FLUSH_MS);
    }
  }

  /** Writes whole lines of the first chunk, and takes it off once written. */
  async #writeSome() {
    const { bytes, lines } = this.#queue[0];
    try {
      this.#offset += await this.#writer.write(wholeLines(bytes, this.#offset));
    } catch (error) {
      if (error instanceof Deno.errors.Interrupted) return;
      if (error instanceof Deno.errors.WouldBlock) {
        return await delay(RETRY_MS, this.#stopped.signal);
      }
      this.#error = error instanceof Error ? error : new Error(String(error));
      this.#room?.resolve();
      return this.#onError(this.#error);
    }
    if (this.#offset < bytes.length) return;
    this.#queue.shift();
    this.#queued -= bytes.length;
    this.#offset = 0;
    this.#written += lines;
    // Its array serves again, if it is a chunk's.
    if (bytes.buffer.byteLength === CHUNK_SIZE) {
      this.#spare.push(new Uint8Array(bytes.buffer));
    }
    this.#room?.resolve();
    this.#room = undefined;
  }
}

/**
 * What to write next of `bytes` from `start`: whole lines, PIECE_SIZE bytes
 * at most; or, inside a line longer than that, up to LONG_PIECE_SIZE bytes
 * without its line end.
 */
function wholeLines(bytes: Uint8Array, start: number): Uint8Array {
  const piece = bytes.subarray(start, start + PIECE_SIZE);
  if (start + piece.length === bytes.length) return piece;
  const newline = piece.lastIndexOf(0x0a);
  if (newline >= 0) return piece.subarray(0, newline + 1);
  const end = bytes.indexOf(0x0a, start + PIECE_SIZE);
  const stop = end < 0 ? bytes.length : end;
  return bytes.subarray(start, Math.min(stop, start + LONG_PIECE_SIZE));
}
/** Resolves after `ms` milliseconds, or as soon as `signal` aborts. */
function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(0, ms));
    signal?.addEventListener("abort", done);
  });
}

// 2. A hostile sender: a datagram is any bytes, from anyone. Printed raw, a
// stranger's bytes could move the cursor or clear the terminal (control
// characters), forge a line (a line break and "Message from ..."), hide text
// (invisible characters: `ad\u200bmin` looks like `admin`) or reorder it
// (bidirectional controls, "Trojan Source"). So a line shows printable text
// as it is, and escapes everything else in a way that can be read back into
// the exact bytes (see the README's "What the server shows").

/**
 * Prints each datagram as one line, `Message from <sender>: <text>`, or with
 * `hex`, `Message from <sender> (4 bytes): ff fe 00 41`; and counts them.
 */
export class Printer {
  /** Datagrams printed. */
  datagrams = 0;
  /** Their bytes. */
  bytes = 0;
  #output: Output;
  #hex: boolean;
  #columns: number;
  // The last sender's prefix, `Message from 127.0.0.1:51610: `, as bytes:
  // most datagrams come from the sender of the one before.
  #from: Deno.NetAddr | undefined;
  #prefix = new Uint8Array();
  // Each line is made here, then copied to the output: no array per line.
  #line = new Uint8Array(CHUNK_SIZE);

  /**
   * A printer to `output`. At a terminal, give its width as `columns`: a
   * longer line would wrap, and its second half pass for a line of its own.
   */
  constructor(output: Output, { hex = false, columns = Infinity } = {}) {
    this.#output = output;
    this.#hex = hex;
    this.#columns = columns;
  }

  /** The `Handler` that prints: it returns a promise only when the output is far behind. */
  print: Handler = (data, from) => {
    this.datagrams++;
    this.bytes += data.length;
    const prefix = this.#prefixOf(from, data.length);
    const size = prefix.length + MAX_EXPANSION * data.length + MARKER_ROOM + 1;
    if (size > this.#line.length) this.#line = new Uint8Array(size);
    const line = this.#line;
    line.set(prefix);
    const columns = this.#columns - prefix.length;
    let end = this.#hex
      ? hexInto(data, line, prefix.length, columns)
      : escapeInto(data, line, prefix.length, columns);
    line[end++] = 0x0a; // "\n"
    const output = this.#output;
    output.append(line.subarray(0, end));
    // Far behind: read no more until it catches up. Meanwhile the kernel
    // queues what arrives, then drops it, as for any slow receiver.
    if (output.full) return output.room();
  };

  #prefixOf(from: Deno.NetAddr, length: number): Uint8Array {
    if (this.#hex) {
      return encoder.encode(
        `Message from ${formatAddress(from)} (${plural(length, "byte")}): `,
      );
    }
    if (
      from.port !== this.#from?.port || from.hostname !== this.#from.hostname
    ) {
      this.#from = from;
      this.#prefix = encoder.encode(`Message from ${formatAddress(from)}: `);
    }
    return this.#prefix;
  }
}

/** The most output bytes one input byte can make: a byte becomes `\xNN`. */
export const MAX_EXPANSION = 4;
/** Room for the cut marker, ` \[+65507 bytes]`, beyond `MAX_EXPANSION` bytes per input byte. */
export const MARKER_ROOM = 32;

const BACKSLASH = 0x5c;
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const HEX = encoder.encode("0123456789abcdef");
// The letter of the short escapes, by byte (0: none): each still stands for
// one byte, so they are lossless too.
const SHORT = new Uint8Array(0x80);
SHORT[0x09] = 0x74; // \t
SHORT[0x0a] = 0x6e; // \n
SHORT[0x0d] = 0x72; // \r
SHORT[BACKSLASH] = BACKSLASH; // \\

// Which characters above ASCII are escaped, in one rule rather than a list
// that is never complete:
// - \p{C}, "Other": controls (C1 as well as C0: a terminal obeys them),
//   format characters (zero-width spaces and joiners, which hide inside a
//   word; the bidirectional controls, which reorder a line), private-use and
//   unassigned characters (which no one can know the look of);
// - \p{Z}, separators (the plain space is ASCII, and never comes here): they
//   look like a space and are not one, or break lines (U+2028, U+2029);
// - Default_Ignorable_Code_Point: drawn as nothing (variation selectors,
//   Hangul fillers, tag characters);
// - U+FFFD itself: sent as such, it would pass for a decoding error.
const HIDDEN = /[\p{C}\p{Z}\p{Default_Ignorable_Code_Point}\ufffd]/u;
// A regex per character is slow, so each answer is kept, once found: 0 not
// known yet, 1 shown, 2 escaped. Pages of the table never used take no memory.
// (A memo of a fixed rule: whoever fills it, every server reads the same.)
const verdicts = new Uint8Array(0x110000);

function isHidden(codePoint: number): boolean {
  let verdict = verdicts[codePoint];
  if (verdict === 0) {
    verdict = HIDDEN.test(String.fromCodePoint(codePoint)) ? 2 : 1;
    verdicts[codePoint] = verdict;
  }
  return verdict === 2;
}

/**
 * Writes the escaped form of `data` into `out` from index `at`, and returns
 * where it ends. `out` needs `MAX_EXPANSION * data.length + MARKER_ROOM`
 * bytes from `at`. Given `columns`, the text is cut to fit in that many
 * terminal columns (ASCII counts 1, any other character 2, to be safe),
 * ending with ` \[+N bytes]`, N the bytes not shown: a line wider than the
 * terminal would wrap, and its tail would look like a line of its own.
 */
export function escapeInto(
  data: Uint8Array,
  out: Uint8Array,
  at: number,
  columns = Infinity,
): number {
  // Printable ASCII, the common case, is copied at once.
  if (data.length <= columns && isPlain(data)) {
    out.set(data, at);
    return at + data.length;
  }
  // Where to cut if the whole does not fit: the marker must fit too.
  const budget = columns === Infinity
    ? Infinity
    : columns - marker(data.length).length;
  let o = at, width = 0, keptIn = 0, keptOut = at;
  for (let i = 0; i < data.length;) {
    const byte = data[i];
    const start = o;
    let shown = false; // a character above ASCII, as it is
    if (byte >= 0x20 && byte < 0x7f && byte !== BACKSLASH) {
      out[o++] = byte; // printable ASCII
      i++;
    } else if (byte < 0x80) {
      o = SHORT[byte]
        ? writeShort(out, o, SHORT[byte])
        : writeByte(out, o, byte);
      i++;
    } else {
      const codePoint = decode(data, i);
      if (codePoint < 0) {
        // Not UTF-8: this byte alone, then decoding resumes at the next.
        o = writeByte(out, o, byte);
        i++;
      } else if (isHidden(codePoint)) {
        o = writeCodePoint(out, o, codePoint);
        i += utf8Length(codePoint);
      } else {
        // A printable character: its bytes go as they are.
        const end = i + utf8Length(codePoint);
        while (i < end) out[o++] = data[i++];
        shown = true;
      }
    }
    if (columns === Infinity) continue; // not at a terminal: nothing to cut
    // Columns: a character above ASCII may be wide, so it counts 2; the rest
    // is ASCII, one column a byte.
    width += shown ? 2 : o - start;
    // Never cut inside an escape or a character: only between them.
    if (width > columns) return writeMarker(out, keptOut, data.length - keptIn);
    if (width <= budget) {
      keptIn = i;
      keptOut = o;
    }
  }
  return o;
}

/** `text` made safe to print, escaped as `escapeInto()` does: for host names and error messages. */
export function printable(text: string): string {
  const data = encoder.encode(text);
  const out = new Uint8Array(MAX_EXPANSION * data.length);
  return decoder.decode(out.subarray(0, escapeInto(data, out, 0)));
}

/**
 * Writes `data` as hex bytes, `ff fe 00 41`, into `out` from `at`, and
 * returns where it ends; cut to `columns` as `escapeInto()` cuts.
 */
export function hexInto(
  data: Uint8Array,
  out: Uint8Array,
  at: number,
  columns = Infinity,
): number {
  // Three columns a byte, less the last space; if the whole does not fit,
  // as many as leave room for the marker.
  const shown = 3 * data.length - 1 <= columns ? data.length : Math.max(
    0,
    Math.floor((columns - marker(data.length).length + 1) / 3),
  );
  let o = at;
  for (let i = 0; i < shown; i++) {
    if (i > 0) out[o++] = 0x20; // " "
    out[o++] = HEX[data[i] >> 4];
    out[o++] = HEX[data[i] & 0xf];
  }
  return shown < data.length ? writeMarker(out, o, data.length - shown) : o;
}

/** Whether every byte of `data` is printable ASCII other than a backslash. */
function isPlain(data: Uint8Array): boolean {
  for (let i = 0; i < data.length; i++) {
    const byte = data[i];
    if (byte < 0x20 || byte > 0x7e || byte === BACKSLASH) return false;
  }
  return true;
}

// The smallest code point of a 2-, 3- and 4-byte sequence: less is an
// overlong form, which would let one character hide behind another encoding.
const MIN_CODE_POINT = [0, 0, 0x80, 0x800, 0x10000];

/** The code point of the valid UTF-8 sequence at `data[i]`, or -1 if there is none. */
function decode(data: Uint8Array, i: number): number {
  const lead = data[i];
  const length = lead >= 0xf8
    ? 0
    : lead >= 0xf0
    ? 4
    : lead >= 0xe0
    ? 3
    : lead >= 0xc0
    ? 2
    : 0; // a continuation byte cannot start a sequence
  if (length === 0 || i + length > data.length) return -1;
  let codePoint = lead & (0x7f >> length);
  for (let k = 1; k < length; k++) {
    const next = data[i + k];
    if ((next & 0xc0) !== 0x80) return -1;
    codePoint = (codePoint << 6) | (next & 0x3f);
  }
  // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not
  // UTF-8: decoders differ on them, so they are shown as bytes.
  if (
    codePoint < MIN_CODE_POINT[length] || codePoint > 0x10ffff ||
    (codePoint >= 0xd800 && codePoint <= 0xdfff)
  ) return -1;
  return codePoint;
}

/** How many bytes UTF-8 takes for `codePoint` (always the shortest form). */
function utf8Length(codePoint: number): number {
  return codePoint < 0x80
    ? 1
    : codePoint < 0x800
    ? 2
    : codePoint < 0x10000
    ? 3
    : 4;
}

/** Writes `\` and `letter`. */
function writeShort(out: Uint8Array, o: number, letter: number): number {
  out[o] = BACKSLASH;
  out[o + 1] = letter;
  return o + 2;
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
function writeCodePoint(out: Uint8Array, o: number, codePoint: number): number {
  out[o++] = BACKSLASH;
  out[o++] = 0x75; // u
  const astral = codePoint > 0xffff;
  if (astral) out[o++] = 0x7b; // {
  const digits = codePoint > 0xfffff ? 6 : astral ? 5 : 4;
  for (let shift = 4 * (digits - 1); shift >= 0; shift -= 4) {
    out[o++] = HEX[(codePoint >> shift) & 0xf];
  }
  if (astral) out[o++] = 0x7d; // }
  return o;
}

// A backslash followed by "[" is no escape of ours: no datagram can forge it.
function marker(hidden: number): string {
  return ` \\[+${hidden} bytes]`;
}

/** Writes the marker that ends a cut line, saying how many bytes are not shown. */
function writeMarker(out: Uint8Array, o: number, hidden: number): number {
  const text = marker(hidden);
  for (let k = 0; k < text.length; k++) out[o++] = text.charCodeAt(k);
  return o;
}

/** `127.0.0.1:6789`, or `[::1]:6789` for IPv6. */
export function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return `${bracketed(hostname)}:${port}`;
}

/** `::1` as `[::1]`, the form that an address with a port and `--allow-net` take. */
function bracketed(hostname: string): string {
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

// Replies go wherever a datagram claims to come from, and UDP does not check
// that claim: anyone who can reach the port can forge the source address, and
// so choose where the server's replies go. Each defence below is one rule:
// - Some addresses are never replied to (`refusal()`).
// - Replies to one address, relays of one chat member, and chat joins are
//   each limited in rate (`RateLimit`): a loop or a forged flood that escapes
//   the rest stays slow, and the server serves everyone else meanwhile.
// - A datagram that comes back faster than a person or a game would send it
//   is our own reply, reflected: it is not answered (`EchoLoops`).
// - A chat relay carries a mark; a datagram that has one is not relayed again.

// Ports where services live that answer every datagram, some with far more
// than they get: a forged source there would make the server attack them, or
// them attack the server. All below 1024 (echo 7, daytime 13, qotd 17,
// chargen 19, time 37, DNS 53, NTP 123, SNMP 161...), and these above it,
// all below the ports that systems give clients (32768 and up):
const REFLECTOR_PORTS = new Set([
  1434, // Microsoft SQL Server browser
  1900, // SSDP
  3283, // Apple Remote Desktop
  3702, // WS-Discovery
  5353, // mDNS
  5683, // CoAP
  10001, // Ubiquiti discovery
  11211, // memcached
  27015, // Steam (Source engine queries)
]);

/** Why the server never replies to `to`, or `undefined` if it may. */
export function refusal(
  self: Deno.NetAddr,
  to: Deno.NetAddr,
): string | undefined {
  // Bound to 0.0.0.0 or ::, every local address is its own.
  const anywhere = self.hostname === "0.0.0.0" || self.hostname === "::";
  if (to.port === self.port && (anywhere || to.hostname === self.hostname)) {
    return "the server's own address"; // it would answer itself for ever
  }
  if (to.port < 1024 || REFLECTOR_PORTS.has(to.port)) {
    return "a port where services answer every datagram";
  }
}

/**
 * A token bucket per key: `burst` at once, then `perSecond`. At most `keys`
 * keys are kept, the longest unused forgotten first: forged sources have no
 * end, and a forgotten key starts again with a full bucket.
 */
export class RateLimit {
  #burst: number;
  #perSecond: number;
  #keys: number;
  #buckets = new Map<string, { tokens: number; at: number }>();

  /** `burst` at once, then `perSecond`, for each of at most `keys` keys. */
  constructor(burst: number, perSecond: number, keys = 4096) {
    this.#burst = burst;
    this.#perSecond = perSecond;
    this.#keys = keys;
  }

  /** Takes one token for `key` at time `now` (ms), if it has one left. */
  take(key: string, now: number): boolean {
    let bucket = this.#buckets.get(key);
    if (bucket) this.#buckets.delete(key); // to the end: used last
    else if (this.#buckets.size >= this.#keys) {
      this.#buckets.delete(this.#buckets.keys().next().value!);
    }
    bucket ??= { tokens: this.#burst, at: now };
    bucket.tokens = Math.min(
      this.#burst,
      bucket.tokens + (now - bucket.at) * this.#perSecond / 1000,
    );
    bucket.at = now;
    this.#buckets.set(key, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens--;
    return true;
  }

  /** How many keys are kept now. */
  get size(): number {
    return this.#buckets.size;
  }
}

// A loop with an echo service, or between two echo servers, sends the same
// bytes back within a round trip: well under LOOP_MS on a LAN. A person, or a
// game at 60 datagrams a second, sends its next datagram later. So bytes that
// come straight back (within LOOP_MS of our reply) LOOP_LIMIT times are a
// loop, and are not answered again. (A client that pastes the same line three
// times gets two echoes. Two servers further apart than LOOP_MS are not
// caught so: REPLY_RATE bounds such a loop.)
const LOOP_MS = 10;
const LOOP_LIMIT = 2;
// Each peer's sends of the last LOOP_MS are remembered, at most this many.
const LOOP_MEMORY = 64;

/** What was sent to each peer in the last LOOP_MS: to tell an echo loop from a client that repeats itself. */
export class EchoLoops {
  #peers = new Map<string, { hash: number; at: number; bounces: number }[]>();

  /** How many times `data` has come straight back from `key` by `now` (ms): 0 if it was not just sent there. */
  bounces(key: string, data: Uint8Array, now: number): number {
    const sent = this.#recent(key, now);
    if (!sent) return 0; // the common case: no hash to compute
    const h = hash(data);
    const last = sent.findLast((datagram) => datagram.hash === h);
    return last ? last.bounces + 1 : 0;
  }

  /** Notes that `data`, back for the `bounces`-th time, was sent to `key` at `now`. */
  sent(key: string, data: Uint8Array, now: number, bounces: number) {
    const sent = this.#recent(key, now) ?? [];
    if (sent.length >= LOOP_MEMORY) sent.shift();
    sent.push({ hash: hash(data), at: now, bounces });
    this.#peers.delete(key); // to the end: sent to last
    if (this.#peers.size >= 4096) {
      this.#peers.delete(this.#peers.keys().next().value!);
    }
    this.#peers.set(key, sent);
  }

  /** What was sent to `key` in the last LOOP_MS, if anything. */
  #recent(key: string, now: number) {
    const sent = this.#peers.get(key);
    while (sent?.length && now - sent[0].at >= LOOP_MS) sent.shift();
    if (sent?.length) return sent;
    this.#peers.delete(key);
  }
}

/** A 32-bit FNV-1a hash: enough to tell whether bytes came back unchanged. */
function hash(data: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i], 0x01000193);
  return h >>> 0;
}

/**
 * Sends `data` to `to`; returns why it failed, if it did. A failure concerns
 * that peer only: it is reported, and serving goes on. A socket closed
 * meanwhile (the server stops) fails quietly.
 */
export async function sendTo(
  conn: Deno.DatagramConn,
  data: Uint8Array,
  to: Deno.NetAddr,
  warn: Warn,
): Promise<unknown> {
  try {
    await conn.send(data, to);
  } catch (error) {
    if (!isClosed(error)) {
      warn("send", `cannot send to ${formatAddress(to)}: ${reason(error)}`);
    }
    return error;
  }
}

/**
 * Whether a failed send may work if tried again later: the system's buffers
 * were full for a moment (macOS says ENOBUFS for a burst), not the address
 * refused for good.
 */
function isBusy(error: unknown): boolean {
  return error instanceof Deno.errors.WouldBlock ||
    error instanceof Error && /no buffer space/i.test(error.message);
}

/** Reports a problem as a warning of a kind; see `Warnings`. */
export type Warn = (kind: string, text: string) => void;

// 3. Echo: each datagram goes back to its sender, byte for byte, as a game
// server's reply would. Replies to one address: REPLY_BURST at once, then
// REPLY_RATE a second.
const REPLY_BURST = 100;
const REPLY_RATE = 100;

/** A `Handler` that sends each datagram back to its sender, unless a defence says not to. */
export function echo(warn: Warn): Handler {
  const rate = new RateLimit(REPLY_BURST, REPLY_RATE);
  const loops = new EchoLoops();
  return async (data, from, conn) => {
    const now = performance.now();
    const key = formatAddress(from);
    const refused = refusal(conn.addr as Deno.NetAddr, from);
    if (refused) return warn("refused", `not replying to ${key}: ${refused}`);
    const bounces = loops.bounces(key, data, now);
    if (bounces >= LOOP_LIMIT) {
      return warn(
        "loop",
        `not replying to ${key}: what it sent came straight back ${bounces} times (an echo loop)`,
      );
    }
    if (!rate.take(key, now)) {
      return warn(
        "rate",
        `not replying to ${key}: more than ${REPLY_RATE} a second`,
      );
    }
    const failed = await sendTo(conn, data, from, warn);
    if (!failed) loops.sent(key, data, now, bounces);
  };
}

// 4. Chat: each datagram goes to every other member, marked with who said it.
// A member is an address that spoke in the last CHAT_IDLE_MINUTES; at most
// CHAT_MAX_MEMBERS, since forged sources have no end. One datagram in makes
// up to 49 out, each with an 18-byte mark or more: the rates below bound what
// a flood can make the server send (50 members x 2 relays a second x 49).
const CHAT_IDLE_MINUTES = 5;
const CHAT_MAX_MEMBERS = 50;
// A full chat admits a newcomer in place of the member silent longest, but
// never of one that spoke within this long: forged joins cannot push out
// the people talking.
const CHAT_KEEP_MS = 60_000;
// Each member's datagrams are relayed RELAY_BURST at once, then RELAY_RATE a
// second; the rest are printed, not relayed. A member's budget is its own:
// other members, real or forged, cannot use it up.
const RELAY_BURST = 10;
const RELAY_RATE = 2;
// Newcomers are admitted JOIN_BURST at once, then JOIN_RATE a second: each
// new member costs a relay to every other one, and forged ones come cheap.
const JOIN_BURST = CHAT_MAX_MEMBERS;
const JOIN_RATE = 5;
// A relay is marked `<127.0.0.1:51610> `; a datagram that already has such a
// mark comes from another chat server, and relaying it on would loop.
const RELAY_MARK = /^<(\[[\d.:a-f]+\]|[\d.]+):\d+> /;
/** The most a UDP datagram carries over IPv4: 65,535 less the IP and UDP headers. */
const MAX_DATAGRAM = 65_507;

/**
 * The members of a chat, and the rules for joining and relaying. Times are
 * in milliseconds, from `performance.now()`.
 */
export class ChatRoom {
  // Silent longest first: Map keeps insertion order.
  #members = new Map<string, { addr: Deno.NetAddr; heard: number }>();
  #relays = new RateLimit(RELAY_BURST, RELAY_RATE, CHAT_MAX_MEMBERS);
  #joins = new RateLimit(JOIN_BURST, JOIN_RATE, 1);

  /** How many members there are now. */
  get size(): number {
    return this.#members.size;
  }

  /**
   * Notes that `key` (at `from`) spoke at `now`, and returns the members to
   * relay its words to, or why there are none.
   */
  hear(key: string, from: Deno.NetAddr, now: number): Deno.NetAddr[] | string {
    const idle = CHAT_IDLE_MINUTES * 60_000;
    for (const [other, member] of this.#members) {
      if (now - member.heard < idle) break;
      this.#members.delete(other);
    }
    const member = this.#members.get(key);
    if (member) this.#members.delete(key); // to the end: heard last
    else if (!this.#admit(now)) {
      return "the chat is full, or joins come too fast";
    }
    this.#members.set(key, { addr: from, heard: now });
    if (!this.#relays.take(key, now)) {
      return `more than ${RELAY_RATE} relays a second`;
    }
    const others = [];
    for (const [other, { addr }] of this.#members) {
      if (other !== key) others.push(addr);
    }
    return others;
  }

  /** Takes `key` out of the chat: relays to it fail. */
  leave(key: string) {
    this.#members.delete(key);
  }

  #admit(now: number): boolean {
    if (this.#members.size >= CHAT_MAX_MEMBERS) {
      const [oldest, { heard }] = this.#members.entries().next().value!;
      if (now - heard < CHAT_KEEP_MS) return false;
      if (!this.#joins.take("joins", now)) return false;
      this.#members.delete(oldest);
      return true;
    }
    return this.#joins.take("joins", now);
  }
}

/** A `Handler` that relays each datagram to the other members of `room`. */
export function chat(room: ChatRoom, warn: Warn): Handler {
  return async (data, from, conn) => {
    const key = formatAddress(from);
    const refused = refusal(conn.addr as Deno.NetAddr, from);
    if (refused) return warn("refused", `not relaying for ${key}: ${refused}`);
    if (RELAY_MARK.test(latin1(data.subarray(0, 64)))) return;
    const members = room.hear(key, from, performance.now());
    if (typeof members === "string") {
      return warn("relay", `not relaying for ${key}: ${members}`);
    }
    if (members.length === 0) return;
    const mark = encoder.encode(`<${key}> `);
    if (mark.length + data.length > MAX_DATAGRAM) {
      return warn(
        "long",
        `not relaying for ${key}: ${data.length} bytes and the ${mark.length}-byte mark are more than a datagram carries`,
      );
    }
    const marked = new Uint8Array(mark.length + data.length);
    marked.set(mark);
    marked.set(data, mark.length);
    // All at once, not one after another: a full chat is 49 sends.
    await Promise.all(members.map(async (member) => {
      const failed = await sendTo(conn, marked, member, warn);
      // Unreachable, or not allowed: out, so as not to fail again and again.
      if (failed && !isBusy(failed)) room.leave(formatAddress(member));
    }));
  };
}

/** The first bytes of `data` as text, one character per byte: enough to test a mark. */
function latin1(data: Uint8Array): string {
  return String.fromCharCode(...data);
}

// 5. Numbered datagrams: what UDP did on the way. UDP promises nothing: a
// datagram can be lost (a full queue anywhere drops it), duplicated, or
// overtaken by a later one, and the bytes alone do not show it. So the
// client's `--seq` numbers its datagrams, `#1 `, `#2 `, ..., and with
// `--stats` the server counts what the numbers tell: a gap is a loss, a
// number seen twice a duplicate, a number below one seen already came out of
// order. (TCP numbers its bytes for the same reason, and repairs what it
// finds.) Lost counts the gaps from the lowest number seen to the highest,
// not from #1: a server started late cannot know what was sent before. A gap
// that a late datagram fills is no loss: that datagram is out of order.

// Each sender's last SEQUENCE_WINDOW numbers are remembered, to tell a
// duplicate from a late arrival. A number further than that from the highest
// is a jump: a client started again, or a forged number. It starts a new run
// of numbers, and loss is counted within each run: one forged `#999999999`
// cannot claim a billion datagrams lost.
// At most MAX_SENDERS senders are followed, since forged sources have no end:
// the one heard longest ago makes room, and its counts go to the total.
const SEQUENCE_WINDOW = 1024;
const MAX_SENDERS = 1024;
// The senders named in the summary, busiest first.
const TOP_SENDERS = 5;
// The clock costs up to 1 us a read on Deno 2.0 (0.1 us on 2.9): it is read
// for a sender's first CLOCK_EVERY datagrams, then for one in CLOCK_EVERY.
const CLOCK_EVERY = 16;
// The longest number read: 999,999,999 fits the 32 bits of `Sender.seen`.
const MAX_DIGITS = 9;

/** What a sender's datagrams, or all of them, showed. */
export interface SequenceCounts {
  /** Datagrams received, numbered or not. */
  received: number;
  /** Those without a `#<n> ` prefix. */
  unnumbered: number;
  /** Numbers from the lowest to the highest seen, never received. */
  lost: number;
  /** Numbers from the lowest to the highest seen. */
  expected: number;
  /** Datagrams whose number had come already. */
  duplicated: number;
  /** Datagrams that came after a higher number. */
  outOfOrder: number;
  /** Datagrams numbered SEQUENCE_WINDOW or more from the highest: each starts a new run. */
  jumps: number;
  /** When the first datagram came, in ms. */
  first: number;
  /** When the last datagram that read the clock came. */
  last: number;
  /** How many had come by `last`. */
  timed: number;
}

/**
 * Follows the sequence numbers (`#<n> `, from the client's `--seq`) of each
 * sender, and sums up loss, duplication, order and rate.
 */
export class SequenceStats {
  // Heard longest ago first: Map keeps insertion order.
  #senders = new Map<string, Sender>();
  #last: { from: Deno.NetAddr; sender: Sender } | undefined;
  // The senders that made room for others, and all their counts.
  #forgotten = 0;
  #forgottenCounts = newCounts(0);
  #clock: () => number;

  /** Stats that read the time, in ms, from `clock` (default: `performance.now()`). */
  constructor(clock: () => number = () => performance.now()) {
    this.#clock = clock;
  }

  /** The `Handler` that counts a datagram. */
  count: Handler = (data, from) => {
    const sender = this.#sender(from);
    const counts = sender.counts;
    const received = counts.received++;
    if (received < CLOCK_EVERY || received % CLOCK_EVERY === 0) {
      counts.last = this.#clock();
      counts.timed = counts.received;
      if (counts.received === 1) counts.first = counts.last;
    }
    const n = sequenceNumber(data);
    if (n === 0) counts.unnumbered++;
    else sender.see(n);
  };

  /** One line for each of the busiest senders, then one for all; none if nothing came. */
  summary(): string[] {
    const senders = [...this.#senders].sort(([, a], [, b]) =>
      b.counts.received - a.counts.received
    );
    const total = { ...this.#forgottenCounts };
    for (const [, { counts }] of senders) add(total, counts);
    if (total.received === 0) return [];
    const lines = senders.slice(0, TOP_SENDERS).map(([key, { counts }]) =>
      `${key}: ${describe(counts)}`
    );
    const all = senders.length + this.#forgotten;
    if (all > 1) lines.push(`${plural(all, "sender")}: ${describe(total)}`);
    return lines;
  }

  #sender(from: Deno.NetAddr): Sender {
    // Most often, the sender of the datagram before: no key to make (26 ns
    // a datagram, against 170 with a key and a lookup, on Deno 2.9).
    const last = this.#last;
    if (last?.from.port === from.port && last.from.hostname === from.hostname) {
      return last.sender;
    }
    const key = formatAddress(from);
    let sender = this.#senders.get(key);
    if (sender) this.#senders.delete(key); // to the end: heard last
    else if (this.#senders.size >= MAX_SENDERS) {
      const [oldest, { counts }] = this.#senders.entries().next().value!;
      this.#senders.delete(oldest);
      add(this.#forgottenCounts, counts);
      this.#forgotten++;
    }
    sender ??= new Sender();
    this.#senders.set(key, sender);
    this.#last = { from, sender };
    return sender;
  }
}

/** One sender's counts, and its last SEQUENCE_WINDOW numbers. */
class Sender {
  counts: SequenceCounts = newCounts(0);
  // This run of numbers: lowest and highest, how many came; and the runs
  // before it.
  #lowest = 0;
  #highest = 0;
  #distinct = 0;
  #before = { expected: 0, lost: 0 };
  // Number n, once it came, at n % SEQUENCE_WINDOW: a ring that needs no
  // clearing as numbers grow, since each slot says which number it holds.
  #seen = new Uint32Array(SEQUENCE_WINDOW);

  /** Notes that number `n` (1 or more) came. */
  see(n: number) {
    const counts = this.counts;
    if (this.#highest > 0 && Math.abs(n - this.#highest) >= SEQUENCE_WINDOW) {
      counts.jumps++;
      this.#before = { expected: counts.expected, lost: counts.lost };
      this.#highest = this.#distinct = 0;
      this.#seen.fill(0);
    }
    const slot = n % SEQUENCE_WINDOW;
    if (this.#seen[slot] === n) {
      counts.duplicated++;
      return;
    }
    if (this.#highest === 0) this.#lowest = this.#highest = n;
    else if (n > this.#highest) this.#highest = n;
    else {
      counts.outOfOrder++;
      this.#lowest = Math.min(this.#lowest, n);
    }
    this.#seen[slot] = n;
    this.#distinct++;
    const expected = this.#highest - this.#lowest + 1;
    counts.expected = this.#before.expected + expected;
    counts.lost = this.#before.lost + expected - this.#distinct;
  }
}

/**
 * The number `n` of a datagram that starts `#<n> `, read from the bytes
 * without making a string; 0 if it has none. The client writes n in decimal
 * from 1, with no leading zero: any other spelling is not its prefix.
 */
export function sequenceNumber(data: Uint8Array): number {
  if (data[0] !== 0x23 || data[1] === 0x30) return 0; // "#", then not "0"
  let n = 0;
  let i = 1;
  for (; i <= MAX_DIGITS && data[i] >= 0x30 && data[i] <= 0x39; i++) {
    n = n * 10 + data[i] - 0x30;
  }
  return i > 1 && data[i] === 0x20 ? n : 0; // digits, then " "
}

function newCounts(first: number): SequenceCounts {
  return {
    received: 0,
    unnumbered: 0,
    lost: 0,
    expected: 0,
    duplicated: 0,
    outOfOrder: 0,
    jumps: 0,
    first,
    last: first,
    timed: 0,
  };
}

/** Adds `counts` to `total`: the numbers summed, the times widened. */
function add(total: SequenceCounts, counts: SequenceCounts) {
  if (total.received === 0 || counts.first < total.first) {
    total.first = counts.first;
  }
  total.last = Math.max(total.last, counts.last);
  total.timed += counts.timed;
  total.received += counts.received;
  total.unnumbered += counts.unnumbered;
  total.lost += counts.lost;
  total.expected += counts.expected;
  total.duplicated += counts.duplicated;
  total.outOfOrder += counts.outOfOrder;
  total.jumps += counts.jumps;
}

/** `9,620 received, 380 lost (3.8%), 0 duplicated, 12 out of order, 9,950/s` */
function describe(counts: SequenceCounts): string {
  const parts = [`${thousands(counts.received)} received`];
  // Without numbers (no --seq), loss and order cannot be told.
  if (counts.expected > 0) {
    const share = counts.lost * 100 / counts.expected;
    const percent = counts.lost > 0 && share < 0.1 ? "<0.1" : share.toFixed(1);
    parts.push(
      `${thousands(counts.lost)} lost (${percent}%)`,
      `${thousands(counts.duplicated)} duplicated`,
      `${thousands(counts.outOfOrder)} out of order`,
    );
  }
  if (counts.jumps > 0) parts.push(plural(counts.jumps, "jump"));
  if (counts.unnumbered > 0) {
    parts.push(`${thousands(counts.unnumbered)} unnumbered`);
  }
  // A rate needs two readings of the clock, some time apart.
  const seconds = (counts.last - counts.first) / 1000;
  if (seconds > 0) parts.push(`${thousands((counts.timed - 1) / seconds)}/s`);
  return parts.join(", ");
}

/** `9,620`: rounded, thousands separated, the same on every system. */
function thousands(value: number): string {
  return Math.round(value).toLocaleString("en-US");
}

/** A `Handler` that runs each of `handlers` on every datagram, and waits for those that return a promise. */
export function all(...handlers: Handler[]): Handler {
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

/**
 * Warnings on an `Output`, at most one line a second of each kind, with a
 * count of those held back: a flood of failures must not become a flood of
 * lines.
 */
export class Warnings {
  /** Warnings held back and not shown since. */
  held = 0;
  #output: Output;
  #kinds = new Map<string, { at: number; held: number }>();

  /** Warnings printed to `output`. */
  constructor(output: Output) {
    this.#output = output;
  }

  /** The `Warn` function that prints warnings here. */
  warn: Warn = (kind, text) => {
    const now = performance.now();
    const last = this.#kinds.get(kind) ?? { at: -Infinity, held: 0 };
    this.#kinds.set(kind, last);
    if (now - last.at < 1000) {
      last.held++;
      this.held++;
      return;
    }
    const held = last.held > 0 ? ` (and ${last.held} more like it before)` : "";
    this.#output.print(`warning: ${text}${held}`);
    this.held -= last.held;
    last.at = now;
    last.held = 0;
  };
}

/** An error's message as the end of a line: "Address already in use (os error 98)" becomes "address already in use". */
function reason(error: unknown): string {
  let text = error instanceof Error ? error.message : String(error);
  // Deno 2.0 adds the system's words again, "... (os error 98): Address
  // ...", and repeats some messages: "x: x".
  text = text.replace(/ \(os error \d+\).*$/s, "").replace(/^(.+): \1$/s, "$1");
  // parseArgs explains in more sentences: keep the first, and the one that
  // says what to type.
  if ((error as { code?: string }).code?.startsWith("ERR_PARSE_ARGS")) {
    const sentences = text.split(/(?<=[.?])\s+/);
    const todo = sentences.find((line) => line.startsWith("To specify an"));
    text = [sentences[0], todo && lowerFirst(todo)].filter(Boolean)
      .map((line) => line!.replace(/\.$/, "")).join(": ");
  }
  return printable(lowerFirst(text));
}

/** A plain first word loses its capital; a name such as "Deno.listen" keeps it. */
function lowerFirst(text: string): string {
  return /^[A-Z][a-z]* /.test(text)
    ? text[0].toLowerCase() + text.slice(1)
    : text;
}

const USAGE =
  `Usage: deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' server.ts [options]
   or, in this project (deno.json gives those flags): deno task server [options]

Prints every UDP datagram that arrives, one line each, with its sender.

Options:
  -H, --hostname <host>  address to listen on (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      port to listen on, 0 for any free one (default: ${DEFAULT_PORT})
      --hex              show each datagram's bytes in hex, with its length
      --stats            follow the numbers that \`client --seq\` puts first
                         (#1, #2, ...): say what was lost, duplicated or out of
                         order, and the rate, when stopped
      --echo             send every datagram back to its sender, at most
                         ${REPLY_RATE} a second to each; one that comes back within
                         ${LOOP_MS} ms of our reply of the same bytes is that reply,
                         reflected by an echo service: it is not answered
      --chat             relay every datagram to the other chat members: the
                         addresses that sent one in the last ${CHAT_IDLE_MINUTES} minutes
                         (at most ${CHAT_MAX_MEMBERS}; ${RELAY_RATE} relays a second each)
  -h, --help             show this help`;

// Exit codes: 0 stopped with every line written; 1 a failure, or lines that
// the output did not take within 0.6 s of the stop; 2 a usage error; 141
// the output's reader went away (128 + SIGPIPE, as for `yes | head`).
const EXIT_CLOSED = 141;
// On a stop, all is written within STOP_GRACE_MS, or given up: the lines
// still waiting until SUMMARY_GRACE_MS before it, then the summary. So the
// process ends within 1 s, whatever stdout and stderr do.
const STOP_GRACE_MS = 800;
const SUMMARY_GRACE_MS = 200;

class UsageError extends Error {}

function parseOptions(args: string[]) {
  // `deno task server -- --port 0` passes the `--` on; this command takes no
  // words, so it can only mean "options follow".
  if (args[0] === "--") args = args.slice(1);
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
  // Defaults here, not in parseArgs: the types of Deno 2.0 do not know that
  // an option with a default is always there.
  const text = values.port ?? String(DEFAULT_PORT);
  const port = Number(text);
  if (!/^\d+$/.test(text) || port > 65_535) {
    throw new UsageError(
      `--port must be an integer from 0 to 65535, not "${text}"`,
    );
  }
  if (values.echo && values.chat) {
    throw new UsageError("--echo and --chat cannot be used together");
  }
  const hostname = canonicalHost(values.hostname ?? DEFAULT_HOSTNAME);
  return { ...values, hostname, port };
}

/** `host` as Deno's permissions name it: lower case, IPv6 unbracketed and short. */
function canonicalHost(host: string): string {
  // 127.0.0.1:6789 or [::1]:6789: a port where only a host belongs.
  const [, name, port] = host.match(/^\[(.*)\]:(\d*)$/) ??
    host.match(/^([^:]*):(\d*)$/) ?? [];
  if (name !== undefined) {
    throw new UsageError(
      `--hostname takes no port: use --hostname ${name} --port ${port}`,
    );
  }
  const bare = host.replace(/^\[(.*)\]$/, "$1");
  try {
    // The URL parser knows every spelling: LOCALHOST, 0:0:0:0:0:0:0:1, 127.1.
    const url = new URL(`http://${bare.includes(":") ? `[${bare}]` : bare}/`);
    const canonical = url.hostname.replace(/^\[(.*)\]$/, "$1");
    // Deno's own check is stricter (no empty label, as in "a..b").
    Deno.permissions.querySync({ name: "net", host: bracketed(canonical) });
    return canonical;
  } catch {
    throw new UsageError(
      `--hostname must be a host name or an IP address, not "${host}"`,
    );
  }
}

/** Runs the server as the command line says, and returns the exit code. */
async function main(args: string[]): Promise<number> {
  // stdout failing (its reader went away) stops the server; stderr failing
  // loses only the diagnostics.
  const controller = new AbortController();
  const out = new Output(Deno.stdout, () => controller.abort());
  const err = new Output(Deno.stderr);
  const code = await run(args, { out, err, controller });
  // The last lines (an error, the help) get a little time, never so long as
  // to hang. (A server that ran has finished both already.)
  const until = performance.now() + SUMMARY_GRACE_MS;
  await Promise.all([out.finish(until), err.finish(until)]);
  return code;
}

async function run(
  args: string[],
  { out, err, controller }: {
    out: Output;
    err: Output;
    controller: AbortController;
  },
): Promise<number> {
  // Deno 1.x runs this file but differs in ways that matter (permissions,
  // unstable APIs): say so rather than fail in some odd way later.
  if (Number(Deno.version.deno.split(".")[0]) < 2) {
    err.print(
      `error: this needs Deno 2.0 or newer, not ${Deno.version.deno}: run deno upgrade`,
    );
    return 1;
  }
  let options;
  try {
    options = parseOptions(args);
  } catch (error) {
    err.print(`error: ${reason(error)} (see --help)`);
    return 2;
  }
  if (options.help) {
    out.print(USAGE);
    return 0;
  }
  // Without --unstable-net, Deno.listenDatagram is missing at run time,
  // although `deno check` finds nothing wrong.
  if (typeof Deno.listenDatagram !== "function") {
    err.print(
      "error: Deno.listenDatagram is unstable: run with --unstable-net",
    );
    return 1;
  }
  const { hostname, port } = options;
  // Ctrl+C may arrive twice (under `deno task`, from the terminal and again
  // from the task runner); aborting twice is harmless. The listeners go in
  // before the socket is bound, and stay until Deno.exit(): a SIGINT with no
  // listener would kill the process, summary and all.
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGINT", stop);
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", stop);
  const warnings = new Warnings(err);
  const printer = new Printer(out, {
    hex: options.hex,
    // At a terminal, read once: a line wider than it would wrap.
    columns: Deno.stdout.isTerminal()
      ? Deno.consoleSize().columns || Infinity // 0: not known
      : Infinity,
  });
  const room = options.chat ? new ChatRoom() : undefined;
  const stats = options.stats ? new SequenceStats() : undefined;
  // Replies first: they read the clock as the datagram comes, not after it
  // is printed.
  const handlers = [];
  if (options.echo) handlers.push(echo(warnings.warn));
  if (room) handlers.push(chat(room, warnings.warn));
  if (stats) handlers.push(stats.count);
  const handler = handlers.length === 0
    ? printer.print
    : all(...handlers, printer.print);
  const mode = options.echo ? " (echo)" : room ? " (chat)" : "";
  let listening = false;
  let code = 0;
  try {
    await serve({
      hostname,
      port,
      signal: controller.signal,
      onListen(addr) {
        listening = true;
        err.print(`Listening on ${formatAddress(addr)}${mode}; Ctrl+C stops`);
      },
    }, handler);
  } catch (error) {
    const where = formatAddress({ transport: "udp", hostname, port });
    const context = listening ? "" : `cannot listen on ${printable(where)}: `;
    err.print(`error: ${context}${reason(error)}`);
    if (!listening) return 1;
    code = 1;
  }
  // The stop: the lines still waiting get until shortly before the deadline,
  // the summary the rest. However stdout and stderr do, it ends within 1 s.
  const deadline = performance.now() + STOP_GRACE_MS;
  const unwritten = await out.finish(deadline - SUMMARY_GRACE_MS);
  const hidden = warnings.held + err.dropped;
  const summary = summarize(printer, { out, unwritten, hidden, room });
  for (const line of [...summary.lines, ...stats?.summary() ?? []]) {
    err.print(line);
  }
  await err.finish(deadline);
  return summary.code || code;
}

/** What the server says on stderr when it stops, and its exit code. */
function summarize(
  printer: Printer,
  { out, unwritten, hidden, room }: {
    out: Output;
    unwritten: number;
    hidden: number;
    room?: ChatRoom;
  },
): { lines: string[]; code: number } {
  const members = room ? `; ${plural(room.size, "chat member")}` : "";
  const notShown = hidden > 0 ? `; ${plural(hidden, "warning")} not shown` : "";
  const received = `Received ${plural(printer.datagrams, "datagram")}, ${
    plural(printer.bytes, "byte")
  }${members}${notShown}`;
  const lost = `${plural(unwritten, "line")} not written`;
  if (out.error instanceof Deno.errors.BrokenPipe) {
    return {
      lines: [`${received}; the output was closed, ${lost}`],
      code: EXIT_CLOSED,
    };
  }
  if (out.error) {
    const why = `error: cannot write the output: ${reason(out.error)}`;
    return { lines: [why, `${received}; ${lost}`], code: 1 };
  }
  if (unwritten > 0) {
    const late = `${received}; ${lost}: the output did not take them in time`;
    return { lines: [late], code: 1 };
  }
  return { lines: [received], code: 0 };
}

/** "1 datagram", "7,800 bytes". */
function plural(count: number, noun: string): string {
  return `${count.toLocaleString("en-US")} ${noun}${count === 1 ? "" : "s"}`;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
