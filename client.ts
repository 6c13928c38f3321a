/**
 * A UDP client: the classic Python tutorial's `sendto`, in Deno. It sends
 * "Hello, Server" to 127.0.0.1:6789; `--wait` prints the reply, `-i` chats.
 * It needs the server's host in `--allow-net`; run it so:
 * `deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts`
 * (`send()` below is the tutorial; the rest makes it robust).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { lookup } from "node:dns/promises";
import { createInterface } from "node:readline";
import process from "node:process";

/**
 * The tutorial's client: sends `message` to the server as one datagram,
 * `count` times. With `wait`, then waits for the server's reply.
 */
export async function send(
  message: Uint8Array,
  options: SendOptions = {},
): Promise<SendResult> {
  const { count = 1, rate, seq, onSent } = options;
  const server = await resolve(options); // its address, looked up once
  // 1. A socket to send from: the server replies to its address and port.
  // Python's sendto() binds one without a word; port 0: any free port.
  const conn = Deno.listenDatagram({
    transport: "udp",
    hostname: localAddress(server.address),
    port: 0,
  });
  const result: SendResult = { sent: 0, bytes: 0, seconds: 0, ignored: 0 };
  const start = performance.now();
  try {
    for (let n = 1; n <= count; n++) {
      if (rate) await sleepUntil(start + (n - 1) * 1000 / rate);
      // 2. Send. UDP has no connection: every datagram names where it goes.
      const datagram = seq ? numbered(message, n, count) : message;
      await conn.send(datagram, server);
      result.sent = n;
      result.bytes += datagram.length;
      onSent?.(n);
    }
    result.seconds = (performance.now() - start) / 1000;
    if (options.wait) await waitForReply(conn, server, result, options.timeout);
    return result;
  } finally {
    closeQuietly(conn);
  }
}

// ---------------------------------------------------------------------------
// Beyond the tutorial: what a client needs on a real network, each part behind
// the problem it solves; the command line last.
// ---------------------------------------------------------------------------

/** The tutorial's server address. */
export const DEFAULT_HOSTNAME = "127.0.0.1";
/** The tutorial's server port. */
export const DEFAULT_PORT = 6789;

/** How `send()` sends: to `hostname` and `port` (default: the tutorial's). */
export interface SendOptions {
  /** The server's address or host name. */
  hostname?: string;
  /** Its port. */
  port?: number;
  /** Send the message this many times (default: 1). */
  count?: number;
  /** Datagrams a second (default: as fast as it can). */
  rate?: number;
  /** Start each datagram with `#n/count `: `#1/10 `, ... */
  seq?: boolean;
  /** Then wait for the server's reply. */
  wait?: boolean;
  /** How long to wait, in milliseconds (default: 2000). */
  timeout?: number;
  /** Called after each datagram, with how many are sent. */
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
  /** With `wait`: the server's reply, and who sent it. */
  reply?: [Uint8Array, Deno.NetAddr];
  /** How many datagrams from others it ignored. */
  ignored: number;
}

// Whom to trust: anyone can send to the client's port, claiming to be anyone,
// so only datagrams from the address and port sent to are replies.
type Peer = Deno.NetAddr & { address: string }; // the address replies come from
type Conn = Deno.DatagramConn;
type Counts = { ignored: number }; // datagrams from others

// The host is looked up once: replies must come from that address.
async function resolve(options: SendOptions): Promise<Peer> {
  const { hostname = DEFAULT_HOSTNAME, port = DEFAULT_PORT } = options;
  let address = hostname;
  // A name of this machine (localhost) is looked up as Deno's sockets do, by
  // binding to it, which needs no other permission; another's by node:dns.
  if (!/:|^[\d.]+$/.test(hostname)) {
    try {
      const probe = bind(hostname);
      address = (probe.addr as Deno.NetAddr).hostname;
      probe.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrNotAvailable)) throw error;
      address = (await lookup(hostname)).address;
    }
  }
  // To the address if allowed: to a name, Deno would look it up again for
  // every datagram, and might find another address.
  const to = permission(address) === "granted" ? address : hostname;
  return { transport: "udp", hostname: to, port, address: canonical(address) };
}

// One spelling of a host, the URL parser's (`::1` for `0:0::1`, lower case):
// addresses are compared only so, both sides.
function canonical(host: string): string {
  const url = URL.parse(`http://${bracketed(host.replace(/^\[|\]$/g, ""))}`);
  return url?.hostname.replace(/^\[|\]$/g, "") ?? host; // not fe80::1%eth0
}

// Deno's permission to send to `host`, or "invalid" if it is not a host.
function permission(host: string): string {
  const query = { name: "net", host: bracketed(host) } as const;
  try {
    return Deno.permissions.querySync(query).state;
  } catch {
    return "invalid";
  }
}

// A socket on `hostname`, at any free port.
function bind(hostname: string): Conn {
  return Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
}

// The address to send from: the server's if it is loopback (127.x, ::1, or
// 127.x mapped into IPv6), so that only this machine can reach the client.
function localAddress(address: string): string {
  if (/^(127\.|::1$|::ffff:7f[\da-f]{2}:)/.test(address)) return address;
  return address.includes(":") ? "::" : "0.0.0.0";
}

/** The datagrams from the server, until `conn` closes; counts the others. */
async function* fromServer(conn: Conn, server: Peer, counts: Counts) {
  const where = formatAddress(server);
  for (let resets = 0;;) {
    let received;
    try {
      received = await conn.receive();
      resets = 0;
    } catch (error) {
      if (isClosed(error)) return;
      // Windows reports the ICMP "port unreachable" that answered a datagram
      // as a failed receive (others say nothing): go on, for a while.
      if (!(error instanceof Deno.errors.ConnectionReset)) throw error;
      const nobody = "nothing is listening";
      if (++resets > 10) throw new Failure(`no reply from ${where}: ${nobody}`);
      await writeLine("stderr", `warning: ${nobody} at ${where}`);
      continue;
    }
    const [data, from] = received as [Uint8Array, Deno.NetAddr];
    const { hostname, port } = from;
    if (canonical(hostname) === server.address && port === server.port) {
      yield [data, from] as const;
    } else counts.ignored++;
  }
}

function isClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
}

// UDP never says that a datagram was lost: the client waits only so long.
async function waitForReply(
  conn: Conn,
  server: Peer,
  result: SendResult,
  timeout = 2000,
) {
  const timer = later(() => closeQuietly(conn), timeout);
  try {
    for await (const reply of fromServer(conn, server, result)) {
      result.reply = [...reply];
      return;
    }
  } finally {
    clearTimeout(timer);
  }
  const where = formatAddress(server), n = plural(result.ignored, "datagram");
  const only = `within ${timeout} ms (only server --echo replies)`;
  const ignored = result.ignored ? `; ignored ${n} not from ${where}` : "";
  throw new Failure(`no reply from ${where} ${only}${ignored}`);
}

// Pacing: a game sends at its tick rate. Each datagram is due at its time from
// the start, on performance.now(), which never steps: a late wake-up is made
// up, and the rate never drifts. A timer may fire early: then it looks again.
async function sleepUntil(time: number) {
  for (let left; (left = time - performance.now()) > 0;) await delay(left);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => later(resolve, ms));
}

// setTimeout() takes 0 to 2^31-1 ms: past that, it fires at once, and Deno
// warns below 0.
function later(callback: () => void, ms: number) {
  return setTimeout(callback, Math.min(Math.max(0, ms), 2 ** 31 - 1));
}
type Timer = ReturnType<typeof later>;

// `#7/10000 ` and then `message`: the count tells the server what to expect.
function numbered(message: Uint8Array, n: number, count: number): Uint8Array {
  const mark = encoder.encode(`#${n}/${count} `);
  const datagram = new Uint8Array(mark.length + message.length);
  datagram.set(mark);
  datagram.set(message, mark.length);
  return datagram;
}

// Size: one IP packet's 16-bit length leaves 65,507 bytes after the IPv4 and
// UDP headers (taken for IPv6 too); macOS sends less by default.
const MAX_DATAGRAM = 65_507;
const MACOS = "macOS sends by default: raise it with sudo sysctl -w " +
  "net.inet.udp.maxdgram=65535";
const LIMITS = [ // bytes, system ("" for all), exit code, what it is
  [MAX_DATAGRAM, "", 2, "a UDP datagram can carry"],
  [9216, "darwin", 1, MACOS],
] as const;

// The error to give for `what` of `length` bytes, if it is too long to send.
function tooLong(what: string, length: number): Failure | undefined {
  for (const [bytes, os, code, says] of LIMITS) {
    if (length <= bytes || (os && os !== Deno.build.os)) continue;
    const text = `${what} is ${length} bytes, more than the ${bytes} ${says}`;
    return new Failure(text, code);
  }
}

// Interactive: lines of input out and datagrams in, both at once.

/**
 * Sends each of `lines` as one datagram (a number is the length of a line
 * too long to send) and prints each datagram from the server meanwhile, with
 * `print` (default: to stdout), in hex with `hex`. After the lines, it prints
 * on until `linger` ms pass with nothing from the server (default: 0), and 5
 * times that at most. Returns how many datagrams from others it ignored.
 */
export async function interactive(
  lines: AsyncIterable<Uint8Array | string | number>,
  options: Pick<SendOptions, "hostname" | "port"> & {
    linger?: number;
    hex?: boolean;
    print?: (text: string) => unknown;
  } = {},
): Promise<{ ignored: number }> {
  const { linger = 0, print = (text) => writeLine("stdout", text) } = options;
  const server = await resolve(options);
  const conn = bind(localAddress(server.address));
  const stop = () => closeQuietly(conn);
  const result = { ignored: 0 };
  let ended = false, quiet: Timer | undefined, cutOff: Timer | undefined;
  // After the lines, only the server's datagrams restart the quiet time: a
  // stranger cannot keep the client going.
  const printing = (async () => {
    for await (const [data, from] of fromServer(conn, server, result)) {
      if (ended) { // the quiet time starts again
        clearTimeout(quiet);
        quiet = later(stop, linger);
      }
      await print(formatMessage(data, from, options.hex));
    }
  })();
  // If printing fails (its reader went away), no more lines are read, and
  // the read under way is given up. Each read races a promise of its own: a
  // promise that never settles would keep the handlers of every race.
  let failure: { error: unknown } | undefined, giveUp = () => {};
  printing.catch((error) => {
    failure = { error };
    giveUp();
  });
  const iterator = lines[Symbol.asyncIterator]();
  try {
    for (let n = 1;; n++) {
      if (failure) throw failure.error;
      const next = iterator.next();
      next.catch(() => {}); // if it fails after printing did, nobody waits
      const failed = new Promise<never>((_, reject) => {
        giveUp = () => reject(failure!.error);
      });
      const { done, value } = await Promise.race([next, failed]);
      giveUp = () => {};
      if (done) break;
      const line = typeof value === "string" ? encoder.encode(value) : value;
      const size = typeof line === "number" ? line : line.length;
      const error = tooLong(`line ${n}`, size);
      if (error) await writeLine("stderr", `error: ${error.message}; not sent`);
      else await conn.send(line as Uint8Array, server);
    }
    ended = true;
    quiet = later(stop, linger);
    cutOff = later(stop, 5 * linger); // however long the server talks on
  } finally {
    if (!ended) stop();
    await printing.finally(() => {
      clearTimeout(quiet);
      clearTimeout(cutOff);
    });
  }
  return result;
}

/**
 * The lines of `reader` as bytes, without their line ends (`\n`, `\r\n`, or
 * none at the end): a datagram carries bytes, not text. Of a line too long
 * for a datagram comes only its length, so memory stays bounded.
 */
export async function* readLines(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): AsyncGenerator<Uint8Array | number> {
  let parts: Uint8Array[] = [], length = 0; // the line so far, while it fits
  for (let read; !(read = await reader.read()).done;) {
    let chunk = read.value;
    for (let end; (end = chunk.indexOf(0x0a)) !== -1;) {
      yield joinLine([...parts, chunk.subarray(0, end)], length + end);
      [parts, length, chunk] = [[], 0, chunk.subarray(end + 1)];
    }
    if (length + chunk.length <= MAX_DATAGRAM + 1) parts.push(chunk);
    length += chunk.length;
  }
  if (length > 0) yield joinLine(parts, length);
}

// The line of `length` bytes in `parts` less a last "\r", or its length.
function joinLine(parts: Uint8Array[], length: number): Uint8Array | number {
  if (length > MAX_DATAGRAM + 1) return length; // one more for a "\r"
  const line = new Uint8Array(length);
  parts.reduce((at, part) => (line.set(part, at), at + part.length), 0);
  const end = line[length - 1] === 0x0d ? length - 1 : length;
  return end > MAX_DATAGRAM ? end : line.subarray(0, end);
}

// Printing: what arrives is a stranger's bytes, escaped as the server escapes
// them, so that none can move the cursor, forge a line or hide text.

// A datagram as one line, its sender first, as server.ts prints it; at a
// terminal, cut to its width (0: unknown, so 80), so that no tail wraps.
function formatMessage(data: Uint8Array, from: Deno.NetAddr, hex?: boolean) {
  const size = hex ? ` (${plural(data.length, "byte")})` : "";
  const prefix = `Message from ${formatAddress(from)}${size}: `;
  const tty = Deno.stdout.isTerminal();
  const width = tty ? Deno.consoleSize().columns || 80 : Infinity;
  return prefix + escaped(data, width - prefix.length, hex);
}

// `data` escaped (in hex with `hex`), cut to `columns`: error messages too.
function escaped(data: Uint8Array, columns = Infinity, hex = false): string {
  const out = new Uint8Array(MAX_EXPANSION * data.length + MARKER_ROOM);
  const end = (hex ? hexInto : escapeInto)(data, out, 0, columns);
  return new TextDecoder().decode(out.subarray(0, end));
}

// One line at a time, stdout's and stderr's alike: with `2>&1` they are one
// file, where a line written between two pieces of another would split it.
let lastLine: Promise<void> = Promise.resolve();

function writeLine(name: "stdout" | "stderr", text: string): Promise<void> {
  const line = lastLine.catch(() => {}).then(() => writeAll(name, text));
  lastLine = line;
  return line;
}

// Writes `text` and a line end in pieces of 4096 bytes, which a pipe takes
// whole or not at all: so a full non-blocking one can be tried again.
async function writeAll(name: "stdout" | "stderr", text: string) {
  for (let bytes = encoder.encode(`${text}\n`); bytes.length;) {
    try {
      bytes = bytes.subarray(await Deno[name].write(bytes.subarray(0, 4096)));
    } catch (error) {
      if (error instanceof Deno.errors.WouldBlock) await delay(5);
      else if (error instanceof Deno.errors.BrokenPipe) throw error;
      else throw new Failure(`cannot write to ${name}: ${reason(error)}`);
    }
  }
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

function closeQuietly(conn: Conn) {
  try {
    conn.close();
  } catch { /* closed already */ }
}

/** "1 datagram", "7,800 bytes". */
function plural(count: number, noun: string): string {
  return `${count.toLocaleString("en-US")} ${noun}${count === 1 ? "" : "s"}`;
}

// An error as the end of a line: "Address already in use (os error 98)"
// becomes "address already in use", and "x: x" becomes "x".
function reason(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.replace(/ \(os error \d+\).*$/s, "").replace(/^(.+): \1$/s, "$1")
    .replace(/^[A-Z](?=[a-z]* )/, (first) => first.toLowerCase());
}

// The command line. Exit codes: 0 sent, 1 failed, 2 usage error, 130 Ctrl+C
// in -i, 141 the output's reader went away (128 + SIGPIPE, as `yes | head`).
const EXIT_USAGE = 2;
const EXIT_INTERRUPTED = 130;
const EXIT_CLOSED = 141;

class Failure extends Error {
  constructor(message: string, readonly code = 1) {
    super(message);
  }
}

const USAGE =
  `Usage: deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts [options] [message...]
   or, in this project (deno.json gives those flags): deno task client [options] [message...]

Sends the message (default: "Hello, Server") as one UDP datagram. Words
after -- are the message, even if they start with a dash.

Options:
  -H, --hostname <host>  server to send to (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      its port (default: ${DEFAULT_PORT})
  -c, --count <n>        send the message n times, up to 999999999 (default: 1)
  -r, --rate <n>         send n datagrams a second (default: as fast as it can)
  -s, --seq              start each datagram with its number: "#1/10 ", ...
  -w, --wait             then wait for the server's reply, and print it
  -t, --timeout <ms>     how long --wait waits, and -i listens on after piped
                         input ends, 5 times that at most (default: 2000)
  -i, --interactive      send each line of input (Ctrl+D ends), and print
                         every datagram that the server sends meanwhile
  -x, --hex              print what arrives as bytes in hexadecimal
  -h, --help             show this help

Only the server's datagrams are printed: others are counted, and ignored.`;

const OPTIONS = {
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
} as const;
// The options that take a value, as typed: `--count` and `-c`.
const VALUED = Object.entries(OPTIONS).flatMap(([name, { type, short }]) =>
  type === "string" ? [`--${name}`, `-${short}`] : []
);
// The greatest value of each number (the least is 1); --count: --seq's
// numbers have 9 digits at most (server.ts reads no more).
const MAX = {
  port: 65_535,
  count: 999_999_999,
  rate: 1e6,
  timeout: 2 ** 31 - 1,
};

type Options = ReturnType<typeof parseOptions>;

function parseOptions(args: string[]) {
  // parseArgs takes `--count -1` for two options: a value is meant, and its
  // own check says what is wrong with it.
  args = [...args];
  for (let i = 0; i < args.length && args[i] !== "--"; i++) {
    if (!VALUED.includes(args[i]) || !args[i + 1]?.startsWith("-")) continue;
    args.splice(i, 2, args[i] + (args[i][1] === "-" ? "=" : "") + args[i + 1]);
  }
  let parsed;
  try {
    parsed = parseArgs({ args, allowPositionals: true, options: OPTIONS });
  } catch (error) {
    const [first] = reason(error).split(/\.(?:\s|$)/); // parseArgs says more
    const dash = ": to send words that start with -, put -- before them";
    const unknown = /^unknown/.test(first);
    throw new Failure(first + (unknown ? dash : ""), EXIT_USAGE);
  }
  const { values, positionals } = parsed;
  if (positionals[0] === "--") positionals.shift(); // deno task client -- -- -v
  const count = integer("count", values.count ?? "1");
  const words = positionals.length ? positionals.join(" ") : "Hello, Server";
  const message = encoder.encode(words);
  // The largest number makes the longest datagram.
  const mark = values.seq ? `#${count}/${count} `.length : 0;
  const what = mark ? "message with its number" : "message";
  const error = tooLong(what, message.length + mark);
  if (error) throw error;
  const { interactive, wait, rate, seq } = values;
  if (
    interactive && (positionals.length || wait || values.count || rate || seq)
  ) {
    const text = "--interactive sends the lines of its input: give it no " +
      "message, --count, --rate, --seq or --wait";
    throw new Failure(text, EXIT_USAGE);
  }
  const typed = values.hostname ?? DEFAULT_HOSTNAME;
  const hostname = parseHost(typed);
  const port = integer("port", values.port ?? `${DEFAULT_PORT}`);
  return {
    ...values,
    typed,
    hostname,
    port,
    count,
    message,
    rate: rate === undefined ? undefined : integer("rate", rate),
    timeout: integer("timeout", values.timeout ?? "2000"),
    where: formatAddress({ transport: "udp", hostname, port }),
  };
}

function integer(name: keyof typeof MAX, text: string): number {
  if (/^\d+$/.test(text) && +text >= 1 && +text <= MAX[name]) return +text;
  const range = `an integer from 1 to ${MAX[name]}`;
  throw new Failure(`--${name} must be ${range}, not "${text}"`, EXIT_USAGE);
}

// `--hostname` as Deno's permissions name it: lower case, IPv6 short and
// unbracketed. A port in it is a usage error that says what to type instead.
function parseHost(typed: string): string {
  const [, name, port] = typed.match(/^\[(.*)\]:(\d+)$/) ??
    typed.match(/^(.*):(\d+)$/) ?? [];
  // "::1:6789" is an IPv6 address too: it is taken for a host and a port
  // only if the part before the last colon is allowed and the whole is not.
  const v6 = name?.includes(":") && !typed.startsWith("[");
  const allowed = (host: string) => permission(host) === "granted";
  if (name !== undefined && (!v6 || allowed(name) && !allowed(typed))) {
    const use = name ? `--hostname ${name} --port ${port}` : `--port ${port}`;
    throw new Failure(`--hostname takes no port: use ${use}`, EXIT_USAGE);
  }
  // Deno's check is stricter than the URL parser's ("a..b"), and a label
  // cannot start or end with a dash ("-bad").
  const host = canonical(typed);
  if (permission(host) === "invalid" || /(^|\.)-|-($|\.)/.test(host)) {
    const text = "--hostname must be a host name or an IP address";
    throw new Failure(`${text}, not "${typed}"`, EXIT_USAGE);
  }
  return host;
}

async function runSend(options: Options) {
  const { message: { length }, count, where } = options;
  const sizes = [1, count].map((n) => length + `#${n}/${count} `.length);
  const range = sizes[0] < sizes[1] ? sizes.join(" to ") : sizes[0];
  const a = /^8|^1[18](\d{3})*$/.test(`${length}`) ? "an" : "a";
  const times = count > 1 ? `, ${count} times` : "";
  const numbered = `${plural(count, "numbered datagram")} of ${range} bytes`;
  const what = options.seq ? numbered : `${a} ${length}-byte datagram${times}`;
  await writeLine("stderr", `Sending ${what} to ${where}`);
  // Progress of a long send, at a terminal only, drawn again in place at
  // most 4 times a second.
  const tty = count > 1 && Deno.stderr.isTerminal();
  let shown = performance.now();
  const onSent = (sent: number) => {
    if (!tty || performance.now() - shown < 250) return;
    shown = performance.now();
    const of = `${plural(sent, "datagram")} of ${
      count.toLocaleString("en-US")
    }`;
    Deno.stderr.writeSync(encoder.encode(`\rSent ${of}`));
  };
  let result;
  try {
    result = await send(options.message, { ...options, onSent });
  } finally {
    if (tty) Deno.stderr.writeSync(encoder.encode("\r\x1b[K")); // gone
  }
  const { sent, bytes, seconds, reply } = result;
  if (count > 1 || options.rate) {
    const time = seconds.toFixed(seconds < 1 ? 3 : 1);
    const each = Math.round(sent / seconds).toLocaleString("en-US");
    const all = `${plural(sent, "datagram")}, ${plural(bytes, "byte")}`;
    const rate = seconds ? `: ${each}/s` : "";
    await writeLine("stderr", `Sent ${all} in ${time} s${rate}`);
  }
  if (reply) await writeLine("stdout", formatMessage(...reply, options.hex));
  return { ...result, code: 0 };
}

async function runInteractive(options: Options) {
  const { hostname, port, hex, timeout: linger, where } = options;
  await writeLine("stderr", `Sending each line to ${where}; Ctrl+D ends`);
  // Readline's prompt and redrawing only when both ends are the terminal:
  // never into a file or a pipe. From a pipe, replies come after the input.
  if (!Deno.stdin.isTerminal() || !Deno.stdout.isTerminal()) {
    const lines = readLines(Deno.stdin.readable.getReader());
    const result = await interactive(lines, { hostname, port, hex, linger });
    return { ...result, code: 0 };
  }
  // At a terminal, a datagram must not split the line being typed: readline
  // prints it above, then draws the prompt and the typed text again below.
  const output = process.stdout;
  const rl = createInterface({ input: process.stdin, output, prompt: "> " });
  // Each prompt at once, before the keys typed after Enter: drawn later, it
  // would put the cursor back to the start of the line, before them.
  rl.on("line", () => rl.prompt());
  rl.prompt();
  const print = (text: string) => {
    output.write(`\r\x1b[K${text}\n`);
    rl.prompt(true); // the cursor where it was
  };
  let code = 0;
  rl.on("SIGINT", () => {
    code = EXIT_INTERRUPTED;
    rl.close();
  });
  try {
    return { ...await interactive(rl, { hostname, port, hex, print }), code };
  } finally {
    rl.close(); // the terminal as it was, the shell's prompt on a new line
    output.write("\n");
  }
}

async function main(args: string[]): Promise<number> {
  let options;
  try {
    // Deno 1.x runs this file but differs in ways that matter: say so.
    const deno = Deno.version.deno, upgrade = "run deno upgrade";
    const old = `this needs Deno 2.0 or newer, not ${deno}: ${upgrade}`;
    if (parseInt(deno) < 2) throw new Failure(old);
    options = parseOptions(args);
    if (options.help) {
      await writeLine("stdout", USAGE);
      return 0;
    }
    // Without --unstable-net it is missing at run time; `deno check` passes.
    const unstable = "Deno.listenDatagram is unstable: run with --unstable-net";
    if (typeof Deno.listenDatagram !== "function") throw new Failure(unstable);
    const run = options.interactive ? runInteractive : runSend;
    const { ignored, code } = await run(options);
    const not = `${plural(ignored, "datagram")} not from ${options.where}`;
    if (ignored) await writeLine("stderr", `Ignored ${not}`);
    return code;
  } catch (error) {
    if (error instanceof Deno.errors.BrokenPipe) return EXIT_CLOSED;
    const failure = explain(error, options);
    const help = failure.code === EXIT_USAGE ? " (see --help)" : "";
    const line = `error: ${escaped(encoder.encode(failure.message))}${help}`;
    try {
      await writeLine("stderr", line);
      return failure.code;
    } catch (error) {
      return error instanceof Deno.errors.BrokenPipe ? EXIT_CLOSED : 1;
    }
  }
}

// What failed, as one line that says what to do.
function explain(error: unknown, options?: Options): Failure {
  if (error instanceof Failure) return error;
  if (!options) return new Failure(reason(error));
  if (!(error instanceof Deno.errors.NotCapable)) {
    return new Failure(`cannot send to ${options.where}: ${reason(error)}`);
  }
  // The flag that allows the server's host, and the address to send from if
  // that was denied too; quoted for zsh, which takes `[::1]` for a pattern.
  const denied = error.message.match(/access to "(.*):\d+"/)?.[1] ?? "";
  const hosts = new Set([bracketed(options.hostname), denied].filter(Boolean));
  const flag = `--allow-net=${[...hosts].join(",")}`;
  const quoted = flag.includes("[") ? `'${flag}'` : flag;
  const todo = `run client.ts with ${quoted}`;
  return new Failure(`not allowed to send to ${options.typed}: ${todo}`);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
