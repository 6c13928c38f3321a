/**
 * A UDP client: the classic Python tutorial's `sendto`, in Deno.
 *
 * It sends "Hello, Server" (or the words given) to 127.0.0.1:6789, where
 * server.ts prints it. `--wait` then prints the reply; `--interactive` sends
 * each line typed and prints whatever comes back, which makes a chat with
 * `server.ts --chat`.
 *
 * ```sh
 * deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' client.ts
 * ```
 *
 * Permissions: `--allow-net` for the server's address, and for the local
 * address the client binds to send from: the server's own address if it is a
 * loopback one, else 0.0.0.0 (or :: for IPv6). `--unstable-net` because
 * `Deno.listenDatagram` is still unstable.
 *
 * @module
 */
import { parseArgs } from "node:util";

export const DEFAULT_HOSTNAME = "127.0.0.1";
export const DEFAULT_PORT = 6789;
export const DEFAULT_MESSAGE = "Hello, Server";
export const DEFAULT_TIMEOUT = 2000;
/** The most a UDP datagram carries over IPv4: 65,535 minus the 20-byte IP and 8-byte UDP headers. */
export const MAX_MESSAGE = 65_507;

const USAGE = `Usage: deno task client [options] [message...]

Sends the message (default: "${DEFAULT_MESSAGE}") as one UDP datagram.

Options:
  -H, --hostname <host>  server to send to (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      its port (default: ${DEFAULT_PORT})
  -c, --count <n>        send the message n times (default: 1)
  -w, --wait             then wait for one reply and print it
  -t, --timeout <ms>     how long --wait waits (default: ${DEFAULT_TIMEOUT})
  -i, --interactive      send each line of input, print every datagram that
                         arrives, until the end of input (Ctrl+D)
  -h, --help             show this help

Words after -- are the message, even if they start with a dash.`;

/** Where to send to. */
export interface Server {
  hostname?: string;
  port?: number;
}

export interface SendOptions extends Server {
  /** Send the message this many times (default: 1). */
  count?: number;
  /** Then wait for one reply and return it. */
  wait?: boolean;
  /** How long to wait, in milliseconds (default: 2000). */
  timeout?: number;
}

/**
 * Sends `message` to the server as one datagram, `count` times. With `wait`,
 * then waits for one datagram to come back and returns it with its sender.
 */
export async function send(
  message: Uint8Array,
  options: SendOptions = {},
): Promise<[Uint8Array, Deno.NetAddr] | undefined> {
  const { count = 1, wait = false, timeout = DEFAULT_TIMEOUT } = options;
  const server = address(options);
  const conn = open(server.hostname);
  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    // UDP has no connection: every datagram names where it goes.
    for (let i = 0; i < count; i++) await conn.send(message, server);
    if (!wait) return undefined;
    // Nothing tells us that a reply was lost, so we only wait so long:
    // closing the socket ends the receive() that waits.
    timer = setTimeout(() => {
      timedOut = true;
      conn.close();
    }, timeout);
    const [data, from] = await conn.receive();
    return [data, from as Deno.NetAddr];
  } catch (error) {
    if (!timedOut) throw error;
    const where = formatAddress(server);
    throw new Deno.errors.TimedOut(
      `no reply from ${where} within ${timeout} ms`,
    );
  } finally {
    clearTimeout(timer);
    if (!timedOut) conn.close();
  }
}

/**
 * Sends each line of `input` as one datagram, and prints every datagram that
 * arrives meanwhile, until `input` ends.
 */
export async function interactive(
  input: ReadableStream<Uint8Array>,
  options: Server = {},
): Promise<void> {
  const server = address(options);
  const conn = open(server.hostname);
  const printing = print(conn);
  try {
    for await (const line of lines(input)) {
      const data = encoder.encode(line);
      if (data.length > MAX_MESSAGE) {
        console.error(`error: ${tooLong(data)}; not sent`);
        continue;
      }
      await conn.send(data, server);
    }
  } finally {
    conn.close();
    await printing;
  }
}

/**
 * A socket to send from. The server replies to the address and port a
 * datagram came from, so the client needs one too, like any sender: Python's
 * sendto() binds it without a word, Deno asks for it. Port 0 lets the system
 * pick a free port. A loopback server is talked to from loopback, so that
 * nothing beyond this machine can send to the client.
 */
function open(hostname: string): Deno.DatagramConn {
  const loopback = /^(localhost|127\.[\d.]+|::1)$/.test(hostname);
  const anywhere = hostname.includes(":") ? "::" : "0.0.0.0";
  const local = loopback ? hostname : anywhere;
  return Deno.listenDatagram({ transport: "udp", hostname: local, port: 0 });
}

/** Prints every datagram that arrives on `conn`, until it is closed. */
async function print(conn: Deno.DatagramConn): Promise<void> {
  // A client receives little: the plain loop with a fresh buffer for each
  // datagram is fine here (server.ts shows why a busy server reuses one).
  while (true) {
    try {
      const [data, from] = await conn.receive();
      console.log(line(data, from as Deno.NetAddr));
    } catch (error) {
      if (error instanceof Deno.errors.BadResource) return;
      if (error instanceof Deno.errors.Interrupted) return;
      // Such as Windows' ConnectionReset after a datagram went to a closed
      // port: it concerns that datagram, not the ones to come.
      console.error(`warning: ${reason(error)}`);
    }
  }
}

/** The lines of `input`, without their line endings. */
async function* lines(input: ReadableStream<Uint8Array>) {
  let rest = "";
  for await (const chunk of input.pipeThrough(new TextDecoderStream())) {
    const parts = (rest + chunk).split("\n");
    rest = parts.pop() ?? "";
    for (const part of parts) yield part.replace(/\r$/, "");
  }
  if (rest) yield rest;
}

const encoder = new TextEncoder();
// Not fatal: bytes that are not UTF-8 become U+FFFD instead of an error.
const decoder = new TextDecoder();
const ESCAPES: Record<string, string> = {
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\\": "\\\\",
};

/**
 * `text` made safe to print: control characters (C0, DEL, C1) are escaped as
 * `\n` or `\x1b`, and a backslash is doubled (as in server.ts).
 */
export function printable(text: string): string {
  return text.replace(/[\p{Cc}\\]/gu, (char) =>
    ESCAPES[char] ??
      `\\x${char.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

function address(server: Server): Deno.NetAddr {
  const { hostname = DEFAULT_HOSTNAME, port = DEFAULT_PORT } = server;
  return { transport: "udp", hostname, port };
}

/** A datagram as one line that is safe to print, its sender first. */
function line(data: Uint8Array, from: Deno.NetAddr): string {
  const text = printable(decoder.decode(data));
  return `Message from ${formatAddress(from)}: ${text}`;
}

/** `127.0.0.1:6789`, or `[::1]:6789` for IPv6. */
function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return hostname.includes(":")
    ? `[${hostname}]:${port}`
    : `${hostname}:${port}`;
}

function tooLong(data: Uint8Array): string {
  return `message is ${data.length} bytes, more than the ${MAX_MESSAGE} a UDP datagram can carry`;
}

/** An error's message as the end of a line: "Address already in use (os error 98)" becomes "address already in use". */
function reason(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  // Deno 2.0 adds the system's words again: "... (os error 98): Address ...".
  const text = message.replace(/ \(os error \d+\).*$/s, "");
  // A plain first word loses its capital; a name such as "Deno.listen" keeps it.
  return /^[A-Z][a-z]* /.test(text)
    ? text[0].toLowerCase() + text.slice(1)
    : text;
}

class UsageError extends Error {}

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
    count = "1",
    timeout = String(DEFAULT_TIMEOUT),
  } = values;
  const words = positionals.length > 0
    ? positionals.join(" ")
    : DEFAULT_MESSAGE;
  const message = encoder.encode(words);
  if (message.length > MAX_MESSAGE) throw new UsageError(tooLong(message));
  const alone = positionals.length === 0 && !values.wait &&
    count === "1";
  if (values.interactive && !alone) {
    throw new UsageError(
      "--interactive sends the lines of its input: give it no message, --count or --wait",
    );
  }
  return {
    ...values,
    // Accept [::1], the form in which IPv6 addresses are printed, as well as ::1.
    hostname: hostname.replace(/^\[(.*)\]$/, "$1"),
    message,
    port: integer("--port", port, 1, 65_535),
    count: integer("--count", count, 1, Infinity),
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
    console.error(`error: ${printable(reason(error))}`);
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
  const { message, count, hostname, port } = options;
  const where = printable(formatAddress({ transport: "udp", hostname, port }));
  try {
    if (options.interactive) {
      console.error(`Sending each line to ${where}; Ctrl+D ends`);
      await interactive(Deno.stdin.readable, options);
      return 0;
    }
    const times = count > 1 ? `, ${count} times` : "";
    console.error(
      `Sending a ${message.length}-byte datagram to ${where}${times}`,
    );
    const reply = await send(message, options);
    if (reply) console.log(line(...reply));
    return 0;
  } catch (error) {
    const context = error instanceof Deno.errors.TimedOut
      ? ""
      : `cannot send to ${where}: `;
    console.error(`error: ${context}${printable(reason(error))}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
