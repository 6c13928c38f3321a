/**
 * A UDP client: the classic Python tutorial's `sendto`, in Deno.
 *
 * It sends "Hello, Server" (or the words given) to 127.0.0.1:6789, where
 * server.ts prints it. `--wait` then prints the reply; `--interactive` sends
 * each line of input and prints whatever comes back, which makes a chat with
 * `server.ts --chat`.
 *
 * ```sh
 * deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts
 * ```
 *
 * Permissions: `--allow-net` for the server's address, and for the local
 * address the client binds to send from: the server's own address if it is a
 * loopback one, else 0.0.0.0 (or :: for IPv6); quoted, because zsh takes an
 * unquoted `[::1]` for a pattern. `--no-prompt`: a host outside the list is
 * then an error that says which flag allows it, not a question that waits for
 * an answer. `--unstable-net` because `Deno.listenDatagram` is still
 * unstable.
 *
 * @example Send a datagram and wait for the reply
 * ```ts ignore
 * import { send } from "./client.ts";
 *
 * const reply = await send(new TextEncoder().encode("ping"), { wait: true });
 * console.log(new TextDecoder().decode(reply?.[0]));
 * ```
 *
 * @module
 */
import { parseArgs } from "node:util";

/** The tutorial's server address. */
export const DEFAULT_HOSTNAME = "127.0.0.1";
/** The tutorial's server port. */
export const DEFAULT_PORT = 6789;
/** The tutorial's message. */
export const DEFAULT_MESSAGE = "Hello, Server";
/** How long `--wait` waits for a reply, in milliseconds. */
export const DEFAULT_TIMEOUT = 2000;
/** The most a UDP datagram carries over IPv4: 65,535 minus the 20-byte IP and 8-byte UDP headers. */
export const MAX_MESSAGE = 65_507;

/**
 * The tutorial's client: sends `message` to the server as one datagram,
 * `count` times. With `wait`, then waits for one datagram to come back and
 * returns it with its sender.
 */
export async function send(
  message: Uint8Array,
  options: SendOptions = {},
): Promise<[Uint8Array, Deno.NetAddr] | undefined> {
  const { count = 1, wait = false, timeout = DEFAULT_TIMEOUT } = options;
  const server = address(options);
  // 1. A socket to send from (see open()).
  const conn = open(server.hostname);
  let timer;
  let timedOut = false;
  try {
    // 2. Send. UDP has no connection: every datagram names where it goes.
    for (let i = 0; i < count; i++) await conn.send(message, server);
    if (!wait) return undefined;
    // 3. Receive the reply, if one comes: nothing tells us that it was lost,
    // so we wait only so long. Closing the socket ends the receive().
    timer = setTimeout(() => {
      timedOut = true;
      conn.close();
    }, timeout);
    const [data, from] = await conn.receive();
    return [data, from as Deno.NetAddr];
  } catch (error) {
    if (!timedOut) throw error;
    throw new Deno.errors.TimedOut(
      `no reply from ${formatAddress(server)} within ${timeout} ms`,
    );
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

/** Where to send to. */
export interface Server {
  /** The server's address (default: `127.0.0.1`). */
  hostname?: string;
  /** The server's port (default: 6789). */
  port?: number;
}

/** How `send()` sends. */
export interface SendOptions extends Server {
  /** Send the message this many times (default: 1). */
  count?: number;
  /** Then wait for one reply and return it. */
  wait?: boolean;
  /** How long to wait, in milliseconds (default: 2000). */
  timeout?: number;
}

/** How `interactive()` talks. */
export interface InteractiveOptions extends Server {
  /**
   * After the end of input, go on printing what arrives until this many
   * milliseconds pass with nothing arriving (default: 0, stop at once).
   */
  linger?: number;
}

/**
 * A socket to send from. The server replies to the address and port a
 * datagram came from, so the client needs one too, like any sender: Python's
 * sendto() binds it without a word, Deno asks for it. Port 0 lets the system
 * pick a free port. A loopback server is talked to from loopback, so that
 * nothing beyond this machine can send to the client.
 */
function open(hostname: string): Deno.DatagramConn {
  return Deno.listenDatagram({
    transport: "udp",
    hostname: localAddress(hostname),
    port: 0,
  });
}

/** The address to send from to `hostname`: itself if it is loopback, else any. */
function localAddress(hostname: string): string {
  if (/^(localhost|127\.[\d.]+|::1)$/.test(hostname)) return hostname;
  return hostname.includes(":") ? "::" : "0.0.0.0";
}

// Interactive: lines of input out, datagrams in, both at once.

/**
 * Sends each line of `input` as one datagram, and prints every datagram that
 * arrives meanwhile, until `input` ends (and then `linger` ms of quiet).
 */
export async function interactive(
  input: ReadableStream<Uint8Array>,
  options: InteractiveOptions = {},
): Promise<void> {
  const server = address(options);
  const conn = open(server.hostname);
  const reader = input.getReader();
  let quiet: ReturnType<typeof setTimeout> | undefined;
  let ended = false;
  // Every datagram restarts the quiet period, once the input has ended.
  const heard = () => {
    clearTimeout(quiet);
    if (ended) quiet = setTimeout(() => closeQuietly(conn), options.linger);
  };
  // If printing fails (the output was closed), the input is not read on.
  const printing = printEach(conn, heard).catch((error) => {
    closeQuietly(conn);
    reader.cancel();
    throw error;
  });
  let sent = false;
  try {
    let number = 0;
    for await (const line of readLines(reader)) {
      number++;
      if (typeof line === "number") {
        console.error(`error: line ${number} is ${tooLong(line)}; not sent`);
        continue;
      }
      await conn.send(line, server);
    }
    sent = true;
  } finally {
    ended = true;
    if (sent && options.linger) heard();
    else closeQuietly(conn);
    await printing.finally(() => clearTimeout(quiet));
  }
}

/** Prints every datagram that arrives on `conn`, until it is closed. */
async function printEach(conn: Deno.DatagramConn, heard: () => void) {
  // A client receives little: the plain loop with a fresh buffer for each
  // datagram is fine here (server.ts shows why a busy server reuses one).
  while (true) {
    let data, from;
    try {
      [data, from] = await conn.receive();
    } catch (error) {
      if (error instanceof Deno.errors.BadResource) return;
      if (error instanceof Deno.errors.Interrupted) return;
      // Such as Windows' ConnectionReset after a datagram went to a closed
      // port: it concerns that datagram, not the ones to come.
      console.error(`warning: ${reason(error)}`);
      continue;
    }
    heard();
    await printLine(line(data, from as Deno.NetAddr));
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
  const line = new Uint8Array(MAX_MESSAGE + 1); // and a "\r" to strip
  let length = 0;
  let pending = false; // a line has begun
  while (true) {
    const { value: chunk, done } = await reader.read();
    if (done) break;
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      const end = newline === -1 ? chunk.length : newline;
      if (length + end - start <= line.length) {
        line.set(chunk.subarray(start, end), length);
      }
      length += end - start;
      pending = true;
      start = end + 1;
      if (newline === -1) break;
      yield whole(line, length);
      length = 0;
      pending = false;
    }
  }
  if (pending) yield whole(line, length);
}

/** The line of `length` bytes in `line`, less a final `\r`; or its length, if too long. */
function whole(line: Uint8Array, length: number): Uint8Array | number {
  if (length > 0 && length <= line.length && line[length - 1] === 0x0d) {
    length--;
  }
  return length > MAX_MESSAGE ? length : line.slice(0, length);
}

// Printing: what arrives is a stranger's bytes, made safe to print, and
// written so that a full or non-blocking stdout, or one whose reader went
// away, is handled rather than crashing the client.

const encoder = new TextEncoder();
// Not fatal: bytes that are not UTF-8 become U+FFFD instead of an error. And
// a leading byte order mark is kept, to be shown, not silently dropped.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });

/** A datagram as one line that is safe to print, its sender first. */
function line(data: Uint8Array, from: Deno.NetAddr): string {
  const text = printable(decoder.decode(data));
  return `Message from ${formatAddress(from)}: ${text}`;
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

const ESCAPES: Record<string, string> = {
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\\": "\\\\",
};
// Control characters, line separators, bidirectional controls, the byte order
// mark and the backslash (see server.ts).
const UNSAFE =
  /[\p{Cc}\\\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/gu;

/**
 * `text` made safe to print on one line: control characters are escaped as
 * `\n` or `\x1b`, line separators, bidirectional controls and U+FEFF as
 * `\u2028`, and a backslash is doubled (as in server.ts).
 */
export function printable(text: string): string {
  return text.replace(UNSAFE, (char) => ESCAPES[char] ?? escape(char));
}

function escape(char: string): string {
  const code = char.charCodeAt(0);
  const hex = code.toString(16);
  return code < 0x100
    ? `\\x${hex.padStart(2, "0")}`
    : `\\u${hex.padStart(4, "0")}`;
}

/** `127.0.0.1:6789`, or `[::1]:6789` for IPv6. */
function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return `${bracketed(hostname)}:${port}`;
}

/** `::1` as `[::1]`, the form that an address with a port and `--allow-net` take. */
function bracketed(hostname: string): string {
  return hostname.includes(":") ? `[${hostname}]` : hostname;
}

function address(server: Server): Deno.NetAddr {
  const { hostname = DEFAULT_HOSTNAME, port = DEFAULT_PORT } = server;
  return { transport: "udp", hostname, port };
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

function tooLong(length: number): string {
  return `${length} bytes, more than the ${MAX_MESSAGE} a UDP datagram can carry`;
}

/** An error's message as the end of a line: "Address already in use (os error 98)" becomes "address already in use". */
function reason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // Deno 2.0 adds the system's words again: "... (os error 98): Address ...";
  // parseArgs adds a long hint to "unknown option '--bogus'".
  const text = message.replace(/ \(os error \d+\).*$|\. To specify a .*$/s, "");
  // A plain first word loses its capital; a name such as "Deno.listen" keeps it.
  const line = /^[A-Z][a-z]* /.test(text)
    ? text[0].toLowerCase() + text.slice(1)
    : text;
  return printable(line);
}

// The command line.

const USAGE = `Usage: deno task client [options] [message...]
   or: deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts [options] [message...]

Sends the message (default: "${DEFAULT_MESSAGE}") as one UDP datagram.

Options:
  -H, --hostname <host>  server to send to (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      its port (default: ${DEFAULT_PORT})
  -c, --count <n>        send the message n times (default: 1)
  -w, --wait             then wait for one reply and print it
  -t, --timeout <ms>     how long --wait waits, and how long -i goes on
                         printing after piped input ends (default: ${DEFAULT_TIMEOUT})
  -i, --interactive      send each line of input, print every datagram that
                         arrives, until the end of input (Ctrl+D)
  -h, --help             show this help

Words after -- are the message, even if they start with a dash.`;

// Exit codes: 0 sent (and, with --wait, a reply printed); 1 a failure; 2 a
// usage error; 141 the output's reader went away (128 + SIGPIPE).
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
    return url.hostname.replace(/^\[(.*)\]$/, "$1");
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
      wait: { type: "boolean", short: "w" },
      timeout: { type: "string", short: "t" },
      interactive: { type: "boolean", short: "i" },
      help: { type: "boolean", short: "h" },
    },
  });
  // Defaults here, not in parseArgs: the types of Deno 2.0 do not know that
  // an option with a default is always there.
  const {
    hostname = DEFAULT_HOSTNAME,
    port = String(DEFAULT_PORT),
    count,
    timeout = String(DEFAULT_TIMEOUT),
  } = values;
  // `deno task client -- words` passes the `--` on, as a word.
  if (positionals[0] === "--") positionals.shift();
  const words = positionals.length > 0
    ? positionals.join(" ")
    : DEFAULT_MESSAGE;
  const message = encoder.encode(words);
  if (message.length > MAX_MESSAGE) {
    throw new UsageError(`message is ${tooLong(message.length)}`);
  }
  if (
    values.interactive &&
    (positionals.length > 0 || values.wait || count !== undefined)
  ) {
    throw new UsageError(
      "--interactive sends the lines of its input: give it no message, --count or --wait",
    );
  }
  return {
    ...values,
    typed: hostname,
    hostname: canonicalHost(hostname),
    message,
    port: integer("--port", port, 1, 65_535),
    count: integer("--count", count ?? "1", 1, Infinity),
    // The longest delay setTimeout() takes.
    timeout: integer("--timeout", timeout, 1, 2 ** 31 - 1),
  };
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
  const { message, count, hostname, port, timeout } = options;
  const server = formatAddress({ transport: "udp", hostname, port });
  const where = printable(server);
  // Ask first, to name the host as it was typed, and the flag that allows it
  // (IPv6 in brackets, as --allow-net takes it, and then quoted for zsh).
  const local = bracketed(localAddress(hostname));
  const denied = [server, local].some((host) =>
    Deno.permissions.querySync({ name: "net", host }).state !== "granted"
  );
  if (denied) {
    const hosts = [...new Set([bracketed(hostname), local])].join(",");
    const flag = hosts.includes("[")
      ? `'--allow-net=${hosts}'`
      : `--allow-net=${hosts}`;
    console.error(
      `error: not allowed to send to ${
        printable(options.typed)
      }: run client.ts with ${printable(flag)}`,
    );
    return 1;
  }
  try {
    if (options.interactive) {
      console.error(`Sending each line to ${where}; Ctrl+D ends`);
      // From a pipe or a file, the replies come after the last line is sent.
      const linger = Deno.stdin.isTerminal() ? 0 : timeout;
      await interactive(Deno.stdin.readable, { hostname, port, linger });
      return 0;
    }
    const times = count > 1 ? `, ${count} times` : "";
    const size = `${article(message.length)} ${message.length}-byte`;
    console.error(`Sending ${size} datagram to ${where}${times}`);
    const reply = await send(message, options);
    if (reply) await printLine(line(...reply));
    return 0;
  } catch (error) {
    if (error instanceof Deno.errors.BrokenPipe) return EXIT_CLOSED;
    const context = error instanceof Deno.errors.TimedOut
      ? ""
      : `cannot send to ${where}: `;
    console.error(`error: ${context}${reason(error)}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
