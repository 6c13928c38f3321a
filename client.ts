/**
 * A UDP client: the classic Python tutorial's `sendto`, in Deno. It sends
 * "Hello, Server" to 127.0.0.1:6789; `--wait` prints the reply, `-i` chats.
 * Run it with the server's address allowed (see the README):
 * `deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts`
 * (`send()` below is the tutorial; the rest makes it robust).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { lookup } from "node:dns/promises";
import { createInterface, type Interface } from "node:readline";
import process from "node:process";

/** The tutorial's server address. */
export const DEFAULT_HOSTNAME = "127.0.0.1";
/** The tutorial's server port. */
export const DEFAULT_PORT = 6789;
/** The tutorial's message. */
export const DEFAULT_MESSAGE = "Hello, Server";

/**
 * The tutorial's client: sends `message` to the server as one datagram,
 * `count` times. With `wait`, then waits for the server's reply.
 */
export async function send(
  message: Uint8Array,
  options: SendOptions = {},
): Promise<SendResult> {
  const { count = 1, rate, onSent } = options;
  const server = await resolve(options); // its address, found once
  // 1. A socket to send from: the server replies to its address and port.
  // Python's sendto() binds one without a word; port 0: any free port.
  const conn = Deno.listenDatagram({
    transport: "udp",
    hostname: localAddress(server.address),
    port: 0,
  });
  try {
    const start = performance.now();
    let bytes = 0;
    for (let i = 0; i < count; i++) {
      if (rate) await sleepUntil(start + i * 1000 / rate); // see sleepUntil()
      // 2. Send. UDP has no connection: every datagram names where it goes.
      const datagram = options.seq ? numbered(i + 1, message) : message;
      await conn.send(datagram, server);
      bytes += datagram.length;
      onSent?.(i + 1);
    }
    const seconds = (performance.now() - start) / 1000;
    const result = { sent: count, bytes, seconds, ignored: 0 };
    if (!options.wait) return result;
    return await waitForReply(conn, server, options.timeout, result);
  } finally {
    closeQuietly(conn);
  }
}

// Beyond the tutorial: what a client needs on a real network, each part
// behind the problem it solves; the command line last.

/** How long `--wait` waits for a reply, in milliseconds. */
export const DEFAULT_TIMEOUT = 2000;

/** Where to send to. */
export interface Server {
  /** The server's address or host name (default: `127.0.0.1`). */
  hostname?: string;
  /** The server's port (default: 6789). */
  port?: number;
}

/** How `send()` sends. */
export interface SendOptions extends Server {
  /** Send the message this many times (default: 1). */
  count?: number;
  /** Send this many datagrams a second (default: as fast as it can). */
  rate?: number;
  /** Start each datagram with its number, `#1 `, `#2 `... */
  seq?: boolean;
  /** Then wait for the server's reply and return it. */
  wait?: boolean;
  /** How long to wait, in milliseconds (default: 2000). */
  timeout?: number;
  /** Called after each datagram sent, with how many are sent so far. */
  onSent?: (sent: number) => void;
}

/** What `send()` did. */
export interface SendResult {
  /** How many datagrams it sent. */
  sent: number;
  /** How many bytes, in all. */
  bytes: number;
  /** How long the sending took. */
  seconds: number;
  /** The server's reply and its address, with `wait`. */
  reply?: [Uint8Array, Deno.NetAddr];
  /** How many datagrams came from others than the server, and were ignored. */
  ignored: number;
}

/** The server, with the address its name stood for when looked up. */
interface Peer extends Deno.NetAddr {
  address: string;
}

// Whom to trust. Anyone can send a datagram to the client's port, and claim
// to be anyone: a reply is a datagram from the address the client sent to,
// and all else is ignored (and counted). So the host name is looked up once,
// here, to know the address that a reply comes from.

/**
 * The server, and the address that its name stands for. A name is looked up
 * as Deno's own sockets do (getaddrinfo, which reads /etc/hosts): by binding
 * a socket to it, which works for a name of this machine (`localhost`,
 * `ip6-localhost`) and needs no other permission than the name's. Another
 * name is looked up with node:dns.
 */
async function resolve(options: Server): Promise<Peer> {
  const { hostname = DEFAULT_HOSTNAME, port = DEFAULT_PORT } = options;
  if (isAddress(hostname)) {
    return {
      transport: "udp",
      hostname,
      port,
      address: canonicalAddress(hostname),
    };
  }
  let address;
  try {
    const probe = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
    closeQuietly(probe);
    address = (probe.addr as Deno.NetAddr).hostname;
  } catch (error) {
    // A name of another machine: this one has no such address to bind.
    if (!(error instanceof Deno.errors.AddrNotAvailable)) throw error;
    // Deno 2.9 looks up with getaddrinfo; Deno 2.0 asks the name server
    // itself, which needs its address in --allow-net (or --allow-net for all).
    address = (await lookup(hostname)).address;
  }
  // Sent to by address if that is allowed: by name, Deno would look the name
  // up again for every datagram, and might find another address.
  const host = bracketed(address);
  const allowed = Deno.permissions.querySync({ name: "net", host }).state;
  const to = allowed === "granted" ? address : hostname;
  return { transport: "udp", hostname: to, port, address };
}

/** An IP address as a datagram's source gives it: `::1`, not `0:0::1`. */
function canonicalAddress(address: string): string {
  try {
    return new URL(`http://${bracketed(address)}/`).hostname
      .replace(/^\[(.*)\]$/, "$1");
  } catch {
    return address; // such as fe80::1%eth0, which the URL parser rejects
  }
}

function isAddress(hostname: string): boolean {
  return hostname.includes(":") || /^\d+\.\d+\.\d+\.\d+$/.test(hostname);
}

/**
 * The address to send from, to `address`: itself if it is loopback, so that
 * nothing beyond this machine can send to the client, else any of the same
 * family (a socket of one family cannot send to the other).
 */
function localAddress(address: string): string {
  if (/^(127\.[\d.]+|::1)$/.test(address)) return address;
  return address.includes(":") ? "::" : "0.0.0.0";
}

/** Whether `from` is the server: its address and port. */
function isFrom(from: Deno.NetAddr, server: Peer): boolean {
  return from.hostname === server.address && from.port === server.port;
}

/**
 * Waits for the first datagram from the server, up to `timeout` ms, and
 * counts the others. Nothing tells the client that a datagram was lost, so it
 * waits only so long: closing the socket ends the receive().
 */
async function waitForReply(
  conn: Deno.DatagramConn,
  server: Peer,
  timeout = DEFAULT_TIMEOUT,
  result: SendResult,
): Promise<SendResult> {
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    conn.close();
  }, timeout);
  try {
    while (true) {
      const [data, from] = await conn.receive();
      if (isFrom(from as Deno.NetAddr, server)) {
        return { ...result, reply: [data, from as Deno.NetAddr] };
      }
      result.ignored++;
    }
  } catch (error) {
    const where = formatAddress(server);
    const ignored = result.ignored > 0
      ? `; ${ignoredText(result.ignored, where)}`
      : "";
    if (timedOut) {
      throw new NoReply(
        `no reply from ${where} within ${timeout} ms${ignored}`,
      );
    }
    // Windows reports the ICMP "port unreachable" that answered the datagram
    // as a failed receive; other systems say nothing and time out.
    if (error instanceof Deno.errors.ConnectionReset) {
      throw new NoReply(`no reply from ${where}: nothing is listening there`);
    }
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** No reply came: the send worked, but nobody answered. */
class NoReply extends Error {}

/** "ignored 2 datagrams not from 127.0.0.1:6789" */
function ignoredText(ignored: number, where: string): string {
  return `ignored ${plural(ignored, "datagram")} not from ${where}`;
}

// Pacing: a game sends at its tick rate, say 60 datagrams a second. Each
// datagram has its time, counted from the start (`start + k / rate`), so a
// late wake-up is made up by the next ones, and the rate does not drift.

/** Sleeps until `performance.now()` reaches `time` (a monotonic clock: it does not step). */
async function sleepUntil(time: number) {
  // A timer may fire a fraction of a millisecond early: look again.
  for (let wait; (wait = time - performance.now()) > 0;) {
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

/** `#7 ` and then `message`: a receiver sees what was lost or reordered. */
function numbered(n: number, message: Uint8Array): Uint8Array {
  const mark = encoder.encode(`#${n} `);
  const datagram = new Uint8Array(mark.length + message.length);
  datagram.set(mark);
  datagram.set(message, mark.length);
  return datagram;
}

// Size: a UDP datagram carries at most 65,507 bytes over IPv4 (65,535 less
// the 20-byte IP and 8-byte UDP headers). IPv6 would allow 65,527, but the
// client takes the same limit for both. macOS sends only 9,216 by default
// (its sysctl net.inet.udp.maxdgram), so there the client refuses more
// before sending, with a line that says what to change.

/** The most a UDP datagram carries over IPv4: 65,535 minus the 20-byte IP and 8-byte UDP headers. */
export const MAX_MESSAGE = 65_507;
const MACOS_MAX = 9216;
const IS_MACOS = Deno.build.os === "darwin";

/** Why `length` bytes cannot go in one datagram, or undefined if they can. */
function tooLong(length: number): string | undefined {
  if (length > MAX_MESSAGE) {
    return `${length} bytes, more than the ${MAX_MESSAGE} a UDP datagram can carry`;
  }
  if (IS_MACOS && length > MACOS_MAX) return `${length} bytes, ${MACOS_TEXT}`;
}

const MACOS_TEXT =
  `more than the ${MACOS_MAX} macOS sends by default: raise it with sudo sysctl -w net.inet.udp.maxdgram=65535`;

/** Whether `error` is EMSGSIZE, the system's "message too long". */
function isMessageTooLong(error: unknown): boolean {
  const errno =
    { darwin: 40, linux: 90, windows: 10040 }[Deno.build.os as string];
  return error instanceof Error &&
    error.message.includes(`(os error ${errno})`);
}

// Interactive: lines of input out, datagrams in, both at once.

/** How `interactive()` talks. */
export interface InteractiveOptions extends Server {
  /**
   * After the end of input, go on printing what the server sends until this
   * many milliseconds pass without any, and 5 times as long at most
   * (default: 0, stop at once).
   */
  linger?: number;
  /** Print what arrives as bytes in hexadecimal. */
  hex?: boolean;
  /** Prints one line (default: to stdout). */
  print?: (text: string) => void | Promise<void>;
}

/**
 * Sends each line of `lines` as one datagram (a number is the length of a
 * line too long to send), and prints every datagram that the server sends
 * meanwhile, until the lines end (and then `linger`). Returns how many
 * datagrams from others it ignored.
 */
export async function interactive(
  lines: AsyncIterable<Uint8Array | number>,
  options: InteractiveOptions = {},
): Promise<{ ignored: number }> {
  const { linger = 0, print = printLine } = options;
  const server = await resolve(options);
  const conn = Deno.listenDatagram({
    transport: "udp",
    hostname: localAddress(server.address),
    port: 0,
  });
  const stop = () => closeQuietly(conn);
  let quiet: ReturnType<typeof setTimeout> | undefined;
  let cutOff: ReturnType<typeof setTimeout> | undefined;
  let ended = false;
  const counts = { ignored: 0 };
  // Only the server's datagrams are printed, and restart the quiet period
  // once the input has ended: another sender cannot keep the client going.
  const printing = receiveEach(conn, server, counts, async (data, from) => {
    clearTimeout(quiet);
    if (ended) quiet = setTimeout(stop, linger);
    await print(formatMessage(data, from, options));
  });
  // If printing fails (the output was closed), the input is not read on.
  const failure = printing.then(() => new Promise<never>(() => {}));
  failure.catch(() => {}); // raced below
  const iterator = lines[Symbol.asyncIterator]();
  let sent = false;
  try {
    for (let number = 1;; number++) {
      const next = await Promise.race([iterator.next(), failure]);
      if (next.done) break;
      const line = next.value;
      const problem = tooLong(typeof line === "number" ? line : line.length);
      if (problem) {
        console.error(`error: line ${number} is ${problem}; not sent`);
      } else if (typeof line !== "number") await conn.send(line, server);
    }
    sent = true;
  } finally {
    ended = true;
    if (sent && linger > 0) {
      quiet = setTimeout(stop, linger);
      // However long the server keeps talking.
      cutOff = setTimeout(stop, 5 * linger);
    } else stop();
    await printing.finally(() => {
      clearTimeout(quiet);
      clearTimeout(cutOff);
    });
  }
  return counts;
}

/**
 * Hands every datagram from the server on `conn` to `handle`, until the
 * socket is closed; counts the others.
 */
async function receiveEach(
  conn: Deno.DatagramConn,
  server: Peer,
  counts: { ignored: number },
  handle: (data: Uint8Array, from: Deno.NetAddr) => Promise<void>,
) {
  // A client receives little: a fresh buffer for each datagram is fine here.
  let errors = 0;
  while (true) {
    let data, from;
    try {
      [data, from] = await conn.receive();
      errors = 0;
    } catch (error) {
      if (error instanceof Deno.errors.BadResource) return;
      if (error instanceof Deno.errors.Interrupted) return;
      // Windows' ConnectionReset after a datagram went to a closed port
      // concerns that datagram, not the ones to come. But an error that
      // lasts would loop for ever: 10 in a row end the client.
      if (!(error instanceof Deno.errors.ConnectionReset) || ++errors > 10) {
        throw error;
      }
      console.error(
        `warning: nothing is listening at ${formatAddress(server)}`,
      );
      continue;
    }
    if (isFrom(from as Deno.NetAddr, server)) {
      await handle(data, from as Deno.NetAddr);
    } else counts.ignored++;
  }
}

/**
 * The lines of `input` as bytes, without their line endings (`\n`, `\r\n`,
 * or a last line with none). Bytes go as they are: a datagram carries bytes,
 * not text. A line too long for a datagram is not kept: its length comes
 * instead. So memory stays bounded and the time linear, whatever the input.
 */
export async function* readLines(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): AsyncGenerator<Uint8Array | number> {
  const buffer = new Uint8Array(MAX_MESSAGE + 1); // and a "\r" to strip
  let length = 0;
  let pending = false; // a line has begun
  while (true) {
    const { value: chunk, done } = await reader.read();
    if (done) break;
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline === -1 ? chunk.length : newline;
      if (length + end - start <= buffer.length) {
        buffer.set(chunk.subarray(start, end), length);
      }
      length += end - start;
      pending = true;
      start = end + 1;
      if (newline === -1) break;
      yield completeLine(buffer, length);
      length = 0;
      pending = false;
    }
  }
  if (pending) yield completeLine(buffer, length);
}

/** The line of `length` bytes in `buffer`, less a final `\r`; or its length, if too long. */
function completeLine(buffer: Uint8Array, length: number): Uint8Array | number {
  if (length > 0 && length <= buffer.length && buffer[length - 1] === 0x0d) {
    length--;
  }
  return length > MAX_MESSAGE ? length : buffer.slice(0, length);
}

// At a terminal: what arrives must not split what is being typed. Node's
// readline keeps the typed line apart: the incoming line is printed above
// it, and the prompt and the typed text are drawn again below.

/** The lines typed at the terminal, with readline's line editing. */
async function* typedLines(rl: Interface): AsyncGenerator<Uint8Array> {
  for await (const text of rl) {
    yield encoder.encode(text);
    rl.prompt();
  }
}

/** Prints `text` above the line being typed, and redraws that line. */
function printAbove(rl: Interface, text: string) {
  // Back to the line's start, clear it, print; then the prompt and the
  // typed text again, the cursor where it was.
  process.stdout.write(`\r\x1b[K${text}\n`);
  rl.prompt(true);
}

// Printing: what arrives is a stranger's bytes, made safe to print, and
// written so that a full or non-blocking stdout, or one whose reader went
// away, is handled rather than crashing the client.

/**
 * A datagram as one line that is safe to print, its sender first, as
 * server.ts prints it (see there); with `hex`, its bytes in hexadecimal,
 * `ff fe 00 41`. At a terminal, cut to its width, as server.ts does.
 */
function formatMessage(
  data: Uint8Array,
  from: Deno.NetAddr,
  options: { hex?: boolean } = {},
): string {
  const prefix = options.hex
    ? `Message from ${formatAddress(from)} (${plural(data.length, "byte")}): `
    : `Message from ${formatAddress(from)}: `;
  const columns = Deno.stdout.isTerminal()
    ? (Deno.consoleSize().columns || Infinity) - prefix.length
    : Infinity;
  const out = new Uint8Array(MAX_EXPANSION * data.length + MARKER_ROOM);
  const end = options.hex
    ? hexInto(data, out, 0, columns)
    : escapeInto(data, out, 0, columns);
  return prefix + decoder.decode(out.subarray(0, end));
}

/**
 * Writes `text` and a line end to stdout, whole. A non-blocking stdout that
 * is full says WouldBlock: wait, and try again. Pieces of 4096 bytes at most
 * are taken whole or not at all by a pipe, so nothing is written twice (see
 * server.ts). A reader that went away is a `BrokenPipe` error.
 */
async function printLine(text: string) {
  let bytes = encoder.encode(`${text}\n`);
  while (bytes.length > 0) {
    try {
      bytes = bytes.subarray(await Deno.stdout.write(bytes.subarray(0, 4096)));
    } catch (error) {
      if (!(error instanceof Deno.errors.WouldBlock)) throw error;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }
}

// Escaping: a copy of server.ts's, so that each file runs alone.

/** The most output bytes one input byte can make: a byte becomes `\xNN`. */
const MAX_EXPANSION = 4;
/** Room for the cut marker, ` \[+65507 bytes]`, beyond `MAX_EXPANSION` bytes per input byte. */
const MARKER_ROOM = 32;

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
function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return `${bracketed(hostname)}:${port}`;
}

/** `::1` as `[::1]`, the form that an address with a port and `--allow-net` take. */
function bracketed(hostname: string): string {
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

/** Closes `conn` unless it is closed already. */
function closeQuietly(conn: Deno.DatagramConn) {
  try {
    conn.close();
  } catch {
    // closed already
  }
}

/** "an" before 8, 11, 18, 80, 11000...: numbers read as "eight...", "eleven...". */
function article(count: number): string {
  const digits = String(count);
  const lead = digits.slice(0, (digits.length - 1) % 3 + 1); // before the thousands
  return /^(8|11|18)$/.test(lead) || lead.startsWith("8") ? "an" : "a";
}

/** "1 datagram", "7,800 bytes". */
function plural(count: number, noun: string): string {
  return `${count.toLocaleString("en-US")} ${noun}${count === 1 ? "" : "s"}`;
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

// The command line.

const USAGE =
  `Usage: deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts [options] [message...]
   or, in this project (deno.json gives those flags): deno task client [options] [message...]

Sends the message (default: "${DEFAULT_MESSAGE}") as one UDP datagram.

Options:
  -H, --hostname <host>  server to send to (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      its port (default: ${DEFAULT_PORT})
  -c, --count <n>        send the message n times (default: 1)
  -r, --rate <n>         send n datagrams a second (default: as fast as it can)
  -s, --seq              start each datagram with its number: "#1 ", "#2 "...
  -w, --wait             then wait for the server's reply and print it
  -t, --timeout <ms>     how long --wait waits, and how long -i goes on
                         printing after piped input ends (default: ${DEFAULT_TIMEOUT};
                         5 times as long at most, if the server keeps talking)
  -i, --interactive      send each line of input, print every datagram that
                         the server sends, until the end of input (Ctrl+D)
  -x, --hex              print what arrives as bytes in hexadecimal
  -h, --help             show this help

Only the server's datagrams are taken: those from other addresses are
counted, and ignored. Words after -- are the message, even if they start with
a dash.`;

// Exit codes: 0 sent (and, with --wait, a reply printed); 1 a failure; 2 a
// usage error; 130 Ctrl+C; 141 the output's reader went away (128 + SIGPIPE).
const EXIT_INTERRUPTED = 130;
const EXIT_CLOSED = 141;

class UsageError extends Error {}

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

function integer(name: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (/^\d+$/.test(text) && value >= min && value <= max) return value;
  const range = max === Infinity
    ? "a positive integer"
    : `an integer from ${min} to ${max}`;
  throw new UsageError(`${name} must be ${range}, not "${text}"`);
}

function parseOptions(args: string[]) {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      hostname: { type: "string", short: "H" },
      port: { type: "string", short: "p" },
      count: { type: "string", short: "c" },
      rate: { type: "string", short: "r" },
      seq: { type: "boolean", short: "s" },
      wait: { type: "boolean", short: "w" },
      timeout: { type: "string", short: "t" },
      interactive: { type: "boolean", short: "i" },
      hex: { type: "boolean", short: "x" },
      help: { type: "boolean", short: "h" },
    },
  });
  // Defaults here, not in parseArgs: the types of Deno 2.0 do not know that
  // an option with a default is always there.
  const {
    hostname = DEFAULT_HOSTNAME,
    port = String(DEFAULT_PORT),
    count,
    rate,
    timeout = String(DEFAULT_TIMEOUT),
  } = values;
  // `deno task client -- words` passes the `--` on, as a word.
  if (positionals[0] === "--") positionals.shift();
  const words = positionals.length > 0
    ? positionals.join(" ")
    : DEFAULT_MESSAGE;
  const message = encoder.encode(words);
  const times = integer("--count", count ?? "1", 1, Infinity);
  // The longest datagram: the message and the largest number's mark.
  const longest = message.length + (values.seq ? `#${times} `.length : 0);
  if (longest > MAX_MESSAGE) {
    throw new UsageError(`message is ${tooLong(longest)}`);
  }
  if (
    values.interactive &&
    (positionals.length > 0 || values.wait || count !== undefined ||
      rate !== undefined || values.seq)
  ) {
    throw new UsageError(
      "--interactive sends the lines of its input: give it no message, --count, --rate, --seq or --wait",
    );
  }
  return {
    ...values,
    hostname: canonicalHost(hostname),
    typedHostname: hostname,
    message,
    longest,
    port: integer("--port", port, 1, 65_535),
    count: times,
    rate: rate === undefined ? undefined : integer("--rate", rate, 1, 1e6),
    // The longest delay setTimeout() takes.
    timeout: integer("--timeout", timeout, 1, 2 ** 31 - 1),
  };
}

/**
 * Progress of a long send, on one line of a terminal, redrawn in place at
 * most 4 times a second; nothing when stderr is a pipe or a file.
 */
function progress(count: number): ((sent: number) => void) | undefined {
  if (count < 2 || !Deno.stderr.isTerminal()) return undefined;
  let shown = performance.now();
  return (sent) => {
    const now = performance.now();
    if (now - shown < 250) return;
    shown = now;
    Deno.stderr.writeSync(encoder.encode(`\rSent ${sent} of ${count}`));
  };
}

/** "Sent 600 datagrams, 7,800 bytes in 10.0 s: 60/s" */
function summary(sent: number, bytes: number, seconds: number): string {
  const time = seconds.toFixed(seconds < 1 ? 3 : 1);
  const rate = seconds > 0
    ? `: ${Math.round(sent / seconds).toLocaleString("en-US")}/s`
    : "";
  return `Sent ${plural(sent, "datagram")}, ${
    plural(bytes, "byte")
  } in ${time} s${rate}`;
}

/** Says once, at the end, how many datagrams came from others than the server. */
function reportIgnored(ignored: number, where: string) {
  if (ignored > 0) console.error(`I${ignoredText(ignored, where).slice(1)}`);
}

/** Deno's "Requires net access to "[::1]:6789"" as the flag that allows it. */
function allowFlag(server: string, error: Error): string {
  const [, denied = ""] = error.message.match(/access to "(.*):\d+"/) ?? [];
  const hosts = [...new Set([bracketed(server), denied].filter(Boolean))].join(
    ",",
  );
  // Quoted for zsh, which takes an unquoted `[::1]` for a pattern.
  return hosts.includes("[")
    ? `'--allow-net=${hosts}'`
    : `--allow-net=${hosts}`;
}

async function main(args: string[]): Promise<number> {
  // Deno 1.x runs this file but differs in ways that matter (permissions,
  // unstable APIs): say so rather than fail in some odd way later.
  if (Number(Deno.version.deno.split(".")[0]) < 2) {
    console.error(
      `error: this needs Deno 2.0 or newer, not ${Deno.version.deno}: run deno upgrade`,
    );
    return 1;
  }
  let options;
  try {
    options = parseOptions(args);
  } catch (error) {
    console.error(`error: ${reason(error)} (see --help)`);
    return 2;
  }
  if (options.help) {
    console.log(USAGE);
    return 0;
  }
  // Without --unstable-net, Deno.listenDatagram is missing at run time,
  // although `deno check` finds nothing wrong.
  if (typeof Deno.listenDatagram !== "function") {
    console.error(
      "error: Deno.listenDatagram is unstable: run with --unstable-net",
    );
    return 1;
  }
  const { message, count, hostname, port, hex } = options;
  const where = printable(formatAddress({ transport: "udp", hostname, port }));
  try {
    if (options.interactive) {
      return await runInteractive(options, where);
    }
    const problem = tooLong(options.longest);
    if (problem) throw new Error(`message is ${problem}`);
    const times = count > 1 ? `, ${count} times` : "";
    const size = `${article(message.length)} ${message.length}-byte`;
    console.error(`Sending ${size} datagram to ${where}${times}`);
    const onSent = progress(count);
    let result;
    try {
      result = await send(message, { ...options, onSent });
    } finally {
      if (onSent) Deno.stderr.writeSync(encoder.encode("\r\x1b[K")); // gone
    }
    if (count > 1 || options.rate) {
      console.error(summary(result.sent, result.bytes, result.seconds));
    }
    if (result.reply) await printLine(formatMessage(...result.reply, { hex }));
    reportIgnored(result.ignored, where);
    return 0;
  } catch (error) {
    if (error instanceof Deno.errors.BrokenPipe) return EXIT_CLOSED;
    if (error instanceof NoReply) {
      console.error(`error: ${error.message}`);
      return 1;
    }
    if (error instanceof Deno.errors.NotCapable) {
      const typed = printable(options.typedHostname);
      const flag = printable(allowFlag(hostname, error));
      console.error(
        `error: not allowed to send to ${typed}: run client.ts with ${flag}`,
      );
      return 1;
    }
    const text = isMessageTooLong(error)
      ? `the message is too long for this system${
        IS_MACOS ? ` (${MACOS_TEXT})` : ""
      }`
      : reason(error);
    console.error(`error: cannot send to ${where}: ${text}`);
    return 1;
  }
}

/** `--interactive`: at a terminal with readline, else from the pipe or file as it is. */
async function runInteractive(
  options: ReturnType<typeof parseOptions>,
  where: string,
): Promise<number> {
  const { hostname, port, hex, timeout } = options;
  console.error(`Sending each line to ${where}; Ctrl+D ends`);
  const server = { hostname, port };
  let result;
  // Both ends at the terminal: readline's prompt and redrawing must not go
  // into a file or a pipe.
  if (Deno.stdin.isTerminal() && Deno.stdout.isTerminal()) {
    const rl = createInterface({
      input: process.stdin,
      output: process.stdout,
      prompt: "> ",
    });
    let interrupted = false;
    rl.on("SIGINT", () => {
      interrupted = true;
      rl.close();
    });
    rl.prompt();
    try {
      result = await interactive(typedLines(rl), {
        ...server,
        hex,
        print: (text) => printAbove(rl, text),
      });
    } finally {
      // The terminal as it was: line mode again, and the shell's prompt on a
      // line of its own.
      rl.close();
      process.stdout.write("\n");
    }
    if (interrupted) return EXIT_INTERRUPTED;
  } else {
    // From a pipe or a file, the replies come after the last line is sent.
    const reader = Deno.stdin.readable.getReader();
    try {
      result = await interactive(readLines(reader), {
        ...server,
        hex,
        linger: timeout,
      });
    } finally {
      reader.cancel().catch(() => {});
    }
  }
  reportIgnored(result.ignored, where);
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
