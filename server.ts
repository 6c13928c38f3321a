/**
 * A UDP server: the classic Python tutorial's `recvfrom` loop, in Deno.
 *
 * It binds 127.0.0.1:6789 and prints every datagram that arrives as one line,
 * `Message from <sender>: <text>`. With `--echo` it sends each datagram back;
 * with `--chat` it relays each one to everyone else who has spoken lately.
 *
 * ```sh
 * deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' server.ts
 * ```
 *
 * Permissions: `--allow-net` for the address it listens on and for the senders
 * it replies to (`--echo`, `--chat`); quoted, because zsh takes an unquoted
 * `[::1]` for a pattern. `--unstable-net` because
 * `Deno.listenDatagram` is still unstable. `--no-prompt`: a reply to an address
 * outside the allow list then fails and is reported, instead of stopping the
 * server at a permission prompt.
 *
 * @module
 */
import { parseArgs } from "node:util";

export const DEFAULT_HOSTNAME = "127.0.0.1";
export const DEFAULT_PORT = 6789;
// Chat members who stay silent this long leave. The cap on members keeps
// spoofed senders from growing the table without end.
const CHAT_IDLE_MINUTES = 5;
const CHAT_MAX_MEMBERS = 100;
// A UDP datagram carries at most 65,507 bytes over IPv4 (65,535 minus the
// 20-byte IP and 8-byte UDP headers), 65,527 over IPv6: 64 KiB holds either.
const BUFFER_SIZE = 65_536;
// Output is written in batches of up to this many characters.
const BATCH_SIZE = 65_536;

const USAGE = `Usage: deno task server [options]

Prints every UDP datagram that arrives, one line each, with its sender.

Options:
  -H, --hostname <host>  address to listen on (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      port to listen on, 0 for any free one (default: ${DEFAULT_PORT})
      --echo             send every datagram back to its sender
      --chat             relay every datagram to the other chat members: the
                         addresses that sent one in the last ${CHAT_IDLE_MINUTES} minutes
                         (at most ${CHAT_MAX_MEMBERS} of them)
  -h, --help             show this help`;

/** Where `serve()` writes its lines, such as `Deno.stdout`. */
export interface Output {
  writeSync(data: Uint8Array): number;
}

export interface ServeOptions {
  /** Send every datagram back to its sender. */
  echo?: boolean;
  /** Relay every datagram to the other members of this chat. */
  chat?: ChatRoom;
  /** Where the lines go (default: `Deno.stdout`). */
  output?: Output;
}

/** What `serve()` received before its socket was closed. */
export interface Summary {
  datagrams: number;
  bytes: number;
}

/**
 * Prints every datagram that arrives on `conn`, one line each, until `conn` is
 * closed; then prints the lines still waiting and returns what it received.
 */
export async function serve(
  conn: Deno.DatagramConn,
  options: ServeOptions = {},
): Promise<Summary> {
  const { echo = false, chat, output = Deno.stdout } = options;
  const lines = new LineWriter(output);
  const summary = { datagrams: 0, bytes: 0 };
  // The tutorial's recvfrom(1024) takes at most 1024 bytes of a datagram and
  // silently drops the rest. This buffer holds any datagram whole, and it is
  // reused for every receive, as recvfrom(bufsize) fills one buffer. Without
  // it, every receive() allocates a fresh 64 KiB buffer, and under load the
  // garbage collector's pauses let the socket's queue overflow.
  const buffer = new Uint8Array(BUFFER_SIZE);
  try {
    while (true) {
      try {
        // There is no accept(): one socket receives from every sender, and
        // each datagram says who sent it.
        const [data, addr] = await conn.receive(buffer);
        const from = addr as Deno.NetAddr;
        summary.datagrams++;
        summary.bytes += data.length;
        const text = printable(decoder.decode(data));
        lines.write(`Message from ${formatAddress(from)}: ${text}\n`);
        if (echo) await reply(conn, data, from);
        if (chat) await relay(conn, data, from, chat.hear(from, Date.now()));
      } catch (error) {
        if (isClosed(error)) break;
        // On Windows, a receive fails after a reply went to a closed port.
        if (!(error instanceof Deno.errors.ConnectionReset)) throw error;
        console.error(`warning: ${reason(error)}`);
      }
    }
  } finally {
    lines.flush();
  }
  return summary;
}

/**
 * The members of a chat: every address that sent a datagram lately. A
 * newcomer who finds it full is not admitted, and its datagrams are printed
 * but not relayed, until a member has been silent long enough to leave.
 */
export class ChatRoom {
  readonly maxMembers: number;
  readonly idleMs: number;
  // Least recently heard first: Map keeps insertion order.
  #members = new Map<string, { addr: Deno.NetAddr; heard: number }>();

  constructor(
    { maxMembers = CHAT_MAX_MEMBERS, idleMs = CHAT_IDLE_MINUTES * 60_000 } = {},
  ) {
    this.maxMembers = maxMembers;
    this.idleMs = idleMs;
  }

  /** How many members there are now. */
  get size(): number {
    return this.#members.size;
  }

  /**
   * Notes that `from` spoke at time `now` (ms) and returns the members to
   * relay its words to: all others, or none if `from` was not admitted.
   */
  hear(from: Deno.NetAddr, now: number): Deno.NetAddr[] {
    for (const [key, member] of this.#members) {
      if (now - member.heard < this.idleMs) break;
      this.#members.delete(key);
    }
    const key = formatAddress(from);
    const known = this.#members.delete(key);
    if (!known && this.#members.size >= this.maxMembers) return [];
    const others = [...this.#members.values()].map((member) => member.addr);
    this.#members.set(key, { addr: from, heard: now });
    return others;
  }
}

/**
 * Collects lines and writes them in batches: one system call for all the lines
 * that arrive within a timer tick, where `console.log` makes one per line.
 * A slow output (a terminal, a full pipe) blocks `write()`, and so slows the
 * server down instead of piling up lines in memory.
 */
export class LineWriter {
  #output: Output;
  #lines: string[] = [];
  #size = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #error: unknown;

  constructor(output: Output) {
    this.#output = output;
  }

  /** Queues `line`; it is written soon, or at once if the batch is full. */
  write(line: string): void {
    if (this.#error) throw this.#error;
    this.#lines.push(line);
    this.#size += line.length;
    if (this.#size >= BATCH_SIZE) return this.flush();
    this.#timer ??= setTimeout(() => {
      try {
        this.flush();
      } catch (error) {
        this.#error = error; // thrown by the next write()
      }
    });
  }

  /** Writes every queued line now. */
  flush(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#error) throw this.#error;
    let bytes = encoder.encode(this.#lines.join(""));
    this.#lines = [];
    this.#size = 0;
    while (bytes.length > 0) {
      bytes = bytes.subarray(this.#output.writeSync(bytes));
    }
  }
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
 * `text` made safe to print: control characters (C0, DEL, C1: ESC, BEL, CR,
 * LF, NUL, U+009B, ...) are escaped as `\n` or `\x1b`, so that no datagram
 * can move the cursor, retitle or clear a terminal, or split its line. A
 * backslash is doubled, so that an escape cannot be forged either.
 */
export function printable(text: string): string {
  return text.replace(/[\p{Cc}\\]/gu, (char) =>
    ESCAPES[char] ??
      `\\x${char.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/** `127.0.0.1:6789`, or `[::1]:6789` for IPv6. */
export function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return hostname.includes(":")
    ? `[${hostname}]:${port}`
    : `${hostname}:${port}`;
}

/** Sends `data` to `to`. A failure concerns that peer only: it is reported, and serving goes on. */
async function reply(
  conn: Deno.DatagramConn,
  data: Uint8Array,
  to: Deno.NetAddr,
) {
  try {
    await conn.send(data, to);
  } catch (error) {
    if (isClosed(error)) throw error;
    console.error(
      `warning: cannot send to ${formatAddress(to)}: ${reason(error)}`,
    );
  }
}

/** Sends `data` from `from`, marked with who said it, to each of `members`. */
async function relay(
  conn: Deno.DatagramConn,
  data: Uint8Array,
  from: Deno.NetAddr,
  members: Deno.NetAddr[],
) {
  if (members.length === 0) return;
  const mark = encoder.encode(`<${formatAddress(from)}> `);
  const marked = new Uint8Array(mark.length + data.length);
  marked.set(mark);
  marked.set(data, mark.length);
  for (const member of members) await reply(conn, marked, member);
}

/** Whether `error` says that the socket was closed, which is how the loop ends. */
function isClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
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

function parseOptions(args: string[]) {
  // `deno task server -- --port 0` passes the `--` on; this command takes no
  // words, so it can only mean "options follow".
  if (args[0] === "--") args = args.slice(1);
  const { values } = parseArgs({
    args,
    options: {
      hostname: { type: "string", short: "H" },
      port: { type: "string", short: "p" },
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
  // Accept [::1], the form in which IPv6 addresses are printed, as well as ::1.
  const hostname = (values.hostname ?? DEFAULT_HOSTNAME).replace(
    /^\[(.*)\]$/,
    "$1",
  );
  return { ...values, hostname, port };
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
  const { hostname, port, echo } = options;
  let conn: Deno.DatagramConn;
  try {
    conn = Deno.listenDatagram({ transport: "udp", hostname, port });
  } catch (error) {
    const where = printable(
      formatAddress({ transport: "udp", hostname, port }),
    );
    console.error(`error: cannot listen on ${where}: ${reason(error)}`);
    return 1;
  }
  // Ctrl+C may arrive twice (under `deno task`, from the terminal and again
  // from the task runner), so stopping must be idempotent. The listeners go
  // in before we say that we listen, and stay until Deno.exit(): a SIGINT
  // with no listener would kill the process, summary and all.
  let stopped = false;
  const stop = () => {
    if (!stopped) conn.close();
    stopped = true;
  };
  Deno.addSignalListener("SIGINT", stop);
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", stop);
  const chat = options.chat ? new ChatRoom() : undefined;
  const mode = echo ? " (echo)" : chat ? " (chat)" : "";
  const here = formatAddress(conn.addr as Deno.NetAddr);
  console.error(`Listening on ${here}${mode}; Ctrl+C stops`);
  try {
    const { datagrams, bytes } = await serve(conn, { echo, chat });
    const members = chat ? `; ${plural(chat.size, "chat member")}` : "";
    console.error(
      `Received ${plural(datagrams, "datagram")}, ${
        plural(bytes, "byte")
      }${members}`,
    );
    return 0;
  } catch (error) {
    console.error(`error: ${reason(error)}`);
    return 1;
  } finally {
    stop();
  }
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
