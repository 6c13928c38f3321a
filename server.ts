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
 * `[::1]` for a pattern. `--unstable-net` because `Deno.listenDatagram` is
 * still unstable. `--no-prompt`: a reply to an address outside the allow list
 * then fails and is reported, instead of stopping the server at a prompt.
 *
 * @module
 */
import { parseArgs } from "node:util";

/** The tutorial's address: loopback, so only this machine can send to it. */
export const DEFAULT_HOSTNAME = "127.0.0.1";
/** The tutorial's port. */
export const DEFAULT_PORT = 6789;

/**
 * The tutorial's server: binds a UDP socket and prints every datagram that
 * arrives, one line each, until `signal` aborts or the output goes away.
 * Then it writes the lines still waiting and says what it received.
 *
 * @example Serve until Ctrl+C
 * ```ts ignore
 * const controller = new AbortController();
 * Deno.addSignalListener("SIGINT", () => controller.abort());
 * const { datagrams } = await serve({ port: 0, signal: controller.signal });
 * ```
 */
export async function serve(options: ServeOptions = {}): Promise<Summary> {
  const { hostname = DEFAULT_HOSTNAME, port = DEFAULT_PORT, signal } = options;
  // 1. Bind. There is no listen() or accept(): UDP has no connections, so
  // this one socket receives from every sender.
  const conn = Deno.listenDatagram({ transport: "udp", hostname, port });
  // Stopping closes the socket, once: when `signal` aborts, or the output fails.
  const stopped = Promise.withResolvers<void>();
  stopped.promise.then(() => conn.close());
  const stop = () => stopped.resolve();
  signal?.addEventListener("abort", stop);
  if (signal?.aborted) stop();
  const lines = new LinePrinter(options.output ?? Deno.stdout, {
    onError: stop,
  });
  const replies = new Replies(conn.addr as Deno.NetAddr);
  options.onListen?.(conn.addr as Deno.NetAddr);
  // 2. Loop on recvfrom(). The tutorial's recvfrom(1024) keeps 1024 bytes of
  // a datagram and drops the rest; 64 KiB holds the largest. One buffer
  // serves every datagram: a new one each time would make garbage, and the
  // collector's pauses would let the socket's queue overflow.
  const buffer = new Uint8Array(65_536);
  let datagrams = 0, bytes = 0;
  try {
    while (true) {
      let data: Uint8Array, from: Deno.NetAddr;
      try {
        // A UDP sender's address always has a hostname and a port.
        [data, from] = await conn.receive(buffer) as [Uint8Array, Deno.NetAddr];
      } catch (error) {
        if (isClosed(error)) break;
        skipReset(error);
        continue;
      }
      datagrams++;
      bytes += data.length;
      // 3. Print it: one line, its sender first, its bytes made safe to print.
      lines.print(from, data);
      if (options.echo) await echoBack(conn, data, from, replies);
      if (options.chat) await relay(conn, data, from, options.chat, replies);
      // Output far behind: read no more until it catches up. Meanwhile the
      // kernel queues what arrives, then drops it, as for any slow receiver.
      if (lines.full) await Promise.race([lines.room(), stopped.promise]);
    }
  } finally {
    stop();
    signal?.removeEventListener("abort", stop);
  }
  return { datagrams, bytes, ...await lines.finish(STOP_GRACE_MS) };
}

/**
 * Lets the receive loop go on after Windows' `ConnectionReset`: Windows fails
 * a receive after a reply went to a closed port, which concerns that reply,
 * not the datagrams to come. Any other error is thrown again.
 */
export function skipReset(error: unknown): void {
  if (!(error instanceof Deno.errors.ConnectionReset)) throw error;
  warn("reset", `warning: ${reason(error)}`);
}

/** How `serve()` listens and what it does with each datagram. */
export interface ServeOptions {
  /** The address to listen on (default: `127.0.0.1`). */
  hostname?: string;
  /** The port to listen on, 0 for any free one (default: 6789). */
  port?: number;
  /** Send every datagram back to its sender. */
  echo?: boolean;
  /** Relay every datagram to the other members of this chat. */
  chat?: ChatRoom;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
  /** Called once the socket is bound, with its address (and the port chosen for port 0). */
  onListen?: (addr: Deno.NetAddr) => void;
  /** Where the lines go (default: `Deno.stdout`). */
  output?: Output;
}

/** What `serve()` received, and what its output did not take. */
export interface Summary {
  /** Datagrams received. */
  datagrams: number;
  /** Bytes received. */
  bytes: number;
  /** Lines not written: the output failed, or did not take them within 0.75 s of the stop. */
  unwritten: number;
  /** Why the output failed, if it did: `BrokenPipe` when its reader went away. */
  outputError?: Error;
}

/** Where `serve()` writes its lines: `Deno.stdout`, or any writer like it. */
export interface Output {
  /** Writes some of `data`, and says how many bytes. */
  write(data: Uint8Array): Promise<number>;
}

// Printing: output must never hold up receiving. A UDP sender does not wait
// for the receiver: while the server waits for its output (a slow terminal, a
// pipe whose reader pauses), datagrams pile up in the socket's queue, and
// once it is full the kernel drops them. So lines are collected in chunks and
// written in the background, with Deno.stdout.write(), which Deno runs on a
// thread of its own: the receive loop, the signals and the stop carry on
// whatever the output does.

// The chunks waiting for the output take at most CHUNKS x CHUNK_SIZE bytes (1
// MiB): past that, the server stops reading its socket (see serve()).
const CHUNK_SIZE = 65_536;
const CHUNKS = 16;
// A line waits at most this long to be written, so that it shows promptly
// while lines arriving together still share one write.
const FLUSH_MS = 10;
// Another program on the same pipe may make it non-blocking: a write to a full
// pipe then fails with WouldBlock instead of waiting, and is tried again. Deno
// writes stdout through a line buffer, so that only a write of whole lines is
// either taken whole or not at all; and a pipe takes at most 4096 bytes
// (PIPE_BUF) all or nothing. So writes are of whole lines, 4096 bytes at most
// (a longer line goes in pieces of 4096 bytes). Even to a regular file, where
// a larger write would be safe: telling a file from a pipe takes node:fs, and
// loading it made each full garbage collection stop the receive loop 2-3 ms
// longer (about 100 more datagrams lost at 50,000/s), a far greater cost than
// the extra writes (see the README's "How fast is it?").
const PIECE_SIZE = 4096;
const RETRY_MS = 5;
// On a stop, the lines still waiting get this long to be written.
const STOP_GRACE_MS = 750;
// Each sender's line prefix is kept, to make no new string per datagram. At
// most this many, since forged source addresses have no end.
const PREFIXES = 1024;

/** How a `LinePrinter` writes. */
export interface LinePrinterOptions {
  /** Called once if the output fails. */
  onError?: () => void;
}

/** A chunk of lines waiting to be written. */
interface Chunk {
  bytes: Uint8Array;
  lines: number;
}

/**
 * Turns datagrams into lines, `Message from <sender>: <text>`, collects them
 * in chunks and writes the chunks in the background, in order.
 */
export class LinePrinter {
  #output: Output;
  #onError: () => void;
  #chunk: Uint8Array = new Uint8Array(CHUNK_SIZE);
  #length = 0;
  #lines = 0;
  #spare: Uint8Array[] = [];
  #queue: Chunk[] = [];
  #offset = 0; // how much of #queue[0] is written
  #writing: Promise<void> | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #room: PromiseWithResolvers<void> | undefined;
  #error: Error | undefined;
  #printed = 0;
  #written = 0;
  #prefixes = new Map<string, Map<number, Uint8Array>>();
  #prefixCount = 0;
  #last: { hostname: string; port: number; prefix: Uint8Array } | undefined;

  /** A printer that writes to `output`. */
  constructor(output: Output, options: LinePrinterOptions = {}) {
    this.#output = output;
    this.#onError = options.onError ?? (() => {});
  }

  /** Adds the line for `data` from `from`: written within 10 ms, or as soon as the output has taken the lines before it. */
  print(from: Deno.NetAddr, data: Uint8Array): void {
    const prefix = this.#prefix(from);
    // Printable ASCII, the common case, goes as it is: no string is made.
    const text = isPlain(data)
      ? data
      : encoder.encode(printable(decoder.decode(data)));
    const size = prefix.length + text.length + 1;
    if (this.#length + size > CHUNK_SIZE) this.#flush();
    // A line longer than a chunk (escapes make up to 4 bytes of one) is a
    // chunk of its own.
    const oversized = size > CHUNK_SIZE;
    const line = oversized ? new Uint8Array(size) : this.#chunk;
    const start = oversized ? 0 : this.#length;
    line.set(prefix, start);
    line.set(text, start + prefix.length);
    line[start + size - 1] = 0x0a; // "\n"
    this.#printed++;
    if (oversized) return this.#enqueue({ bytes: line, lines: 1 });
    this.#length += size;
    this.#lines++;
    // Written soon, in one write with the lines that come meanwhile; while a
    // write is under way, once that write is done.
    if (!this.#writing) {
      this.#timer ??= setTimeout(() => this.#flush(), FLUSH_MS);
    }
  }

  /** Whether CHUNKS chunks are waiting for the output. */
  get full(): boolean {
    return this.#queue.length >= CHUNKS;
  }

  /** Resolves when a chunk has been written. */
  room(): Promise<void> {
    this.#room ??= Promise.withResolvers();
    return this.#room.promise;
  }

  /**
   * Writes the lines still waiting, within `graceMs`; then says how many
   * lines were not written, and why the output failed, if it did.
   */
  async finish(graceMs: number): Promise<Omit<Summary, "datagrams" | "bytes">> {
    this.#flush();
    let timer;
    const late = new Promise((resolve) => timer = setTimeout(resolve, graceMs));
    await Promise.race([this.#writing, late]);
    clearTimeout(timer);
    // The whole lines of a chunk written in part count as written.
    const head = this.#queue[0]?.bytes.subarray(0, this.#offset) ??
      new Uint8Array();
    let partial = 0;
    for (let i = head.indexOf(0x0a); i >= 0; i = head.indexOf(0x0a, i + 1)) {
      partial++;
    }
    const unwritten = this.#printed - this.#written - partial;
    return { unwritten, outputError: this.#error };
  }

  /** `Message from 127.0.0.1:51610: `, made once per sender. */
  #prefix({ hostname, port }: Deno.NetAddr): Uint8Array {
    // Most often, the sender of the last datagram.
    const last = this.#last;
    if (last?.port === port && last.hostname === hostname) return last.prefix;
    let ports = this.#prefixes.get(hostname);
    let prefix = ports?.get(port);
    if (prefix) {
      this.#last = { hostname, port, prefix };
      return prefix;
    }
    if (this.#prefixCount >= PREFIXES) {
      this.#prefixes.clear();
      this.#prefixCount = 0;
      ports = undefined;
    }
    if (!ports) this.#prefixes.set(hostname, ports = new Map());
    const from = formatAddress({ transport: "udp", hostname, port });
    prefix = encoder.encode(`Message from ${from}: `);
    ports.set(port, prefix);
    this.#prefixCount++;
    this.#last = { hostname, port, prefix };
    return prefix;
  }

  /** Sends the chunk being filled to the output, and starts a new one. */
  #flush() {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#length === 0) return;
    const chunk = {
      bytes: this.#chunk.subarray(0, this.#length),
      lines: this.#lines,
    };
    this.#chunk = this.#spare.pop() ?? new Uint8Array(CHUNK_SIZE);
    this.#length = 0;
    this.#lines = 0;
    this.#enqueue(chunk);
  }

  #enqueue(chunk: Chunk) {
    this.#queue.push(chunk);
    this.#writing ??= this.#write();
  }

  /** Writes the queued chunks in order, until none is left or the output fails. */
  async #write() {
    try {
      while (this.#queue.length > 0 && !this.#error) await this.#writeFirst();
    } finally {
      this.#writing = undefined;
    }
    // The lines that came meanwhile go soon, in one write.
    if (this.#length > 0) {
      this.#timer ??= setTimeout(() => this.#flush(), FLUSH_MS);
    }
  }

  /** Writes some of the first chunk of the queue, and takes it off once written. */
  async #writeFirst() {
    const { bytes, lines } = this.#queue[0];
    try {
      const next = piece(bytes, this.#offset);
      this.#offset += await this.#output.write(next);
    } catch (error) {
      if (error instanceof Deno.errors.Interrupted) return;
      if (error instanceof Deno.errors.WouldBlock) {
        return await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
      }
      this.#error = error instanceof Error ? error : new Error(String(error));
      return this.#onError();
    }
    if (this.#offset < bytes.length) return;
    this.#queue.shift();
    this.#offset = 0;
    this.#written += lines;
    // Its buffer serves again, if it is one of ours.
    if (bytes.buffer.byteLength === CHUNK_SIZE && this.#spare.length < CHUNKS) {
      this.#spare.push(new Uint8Array(bytes.buffer));
    }
    this.#room?.resolve();
    this.#room = undefined;
  }
}

/** The next write of `bytes` from `start`: whole lines, at most PIECE_SIZE bytes. */
function piece(bytes: Uint8Array, start: number): Uint8Array {
  let end = Math.min(start + PIECE_SIZE, bytes.length);
  if (end < bytes.length) {
    const newline = bytes.lastIndexOf(0x0a, end - 1);
    if (newline >= start) end = newline + 1;
  }
  return bytes.subarray(start, end);
}

/** Whether every byte of `data` is printable ASCII other than a backslash. */
function isPlain(data: Uint8Array): boolean {
  for (let i = 0; i < data.length; i++) {
    const byte = data[i];
    if (byte < 0x20 || byte > 0x7e || byte === 0x5c) return false;
  }
  return true;
}

const encoder = new TextEncoder();
// Not fatal: bytes that are not UTF-8 become U+FFFD instead of an error. And
// a leading byte order mark is kept, to be shown, not silently dropped.
const decoder = new TextDecoder("utf-8", { ignoreBOM: true });
const ESCAPES: Record<string, string> = {
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\\": "\\\\",
};
// What must not reach a terminal or a reader of the output raw: control
// characters (C0, DEL, C1), which move the cursor, clear or retitle a
// terminal; U+2028 and U+2029, which some tools take for line breaks; the
// bidirectional controls, which reorder what a terminal shows (Trojan
// Source); the byte order mark, invisible; and the backslash, which starts
// every escape.
const UNSAFE =
  /[\p{Cc}\\\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/gu;

/**
 * `text` made safe to print on one line: control characters are escaped as
 * `\n` or `\x1b`, line separators, bidirectional controls and U+FEFF as
 * `\u2028`, and a backslash is doubled, so that no escape can be forged.
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
export function formatAddress({ hostname, port }: Deno.NetAddr): string {
  return hostname.includes(":")
    ? `[${hostname}]:${port}`
    : `${hostname}:${port}`;
}

// Echo and chat: replies to whoever a datagram claims to come from. UDP does
// not check that claim: anyone who can reach the port can forge the source
// address, and so choose where the server's replies go. The defences:
// - Some addresses are never replied to (see `Replies.refuses()`): the
//   server's own, which would make it answer itself for ever; port 0; and the
//   well-known ports below 1024, where the services live that answer every
//   datagram (echo 7, daytime 13, qotd 17, chargen 19, time 37) and those
//   that answer with more than they get (DNS 53, NTP 123, SNMP 161).
// - A loop with an echo service, or with another echo server, sends the same
//   bytes back and forth: a peer that twice in a row sends back exactly what
//   we last sent it is not answered until it sends something else.
// - A chat relay is marked `<sender> `: a datagram that already carries such a
//   mark comes from another chat server, and is not relayed again, which ends
//   any loop of chat servers.
// - Replies to any one address are rate-limited (a token bucket), and so are
//   the relays of any one chat member: a loop that escapes the rest, or a
//   forged flood, stays slow, and the server serves everyone else meanwhile.

// Replies to one address: REPLY_BURST at once, REPLY_RATE a second after that.
const REPLY_BURST = 100;
const REPLY_RATE = 50;
// How many times in a row a peer may send back exactly what we sent it.
const LOOP_LIMIT = 2;
// The peers remembered, silent longest forgotten first: forged sources have
// no end.
const PEERS = 4096;

/** What the server remembers of an address it replied to. */
interface Peer {
  tokens: number; // replies it may have now
  at: number; // when tokens were counted (ms)
  sent: number; // a hash of the last datagram sent to it
  repeats: number; // how many datagrams in a row it sent back as they went
}

/** Decides which replies the server sends, to keep it out of loops and floods. */
export class Replies {
  #self: Deno.NetAddr;
  #peers = new Map<string, Peer>();

  /** Replies from a server that listens on `self`. */
  constructor(self: Deno.NetAddr) {
    this.#self = self;
  }

  /** Why the server never replies to `to`, or `undefined` if it may. */
  refuses(to: Deno.NetAddr): string | undefined {
    const { hostname, port } = this.#self;
    const anywhere = hostname === "0.0.0.0" || hostname === "::";
    if (to.port === port && (anywhere || to.hostname === hostname)) {
      return "the server's own address";
    }
    if (to.port < 1024) return "a well-known port";
  }

  /**
   * Whether `data` from `from` is what we last sent it, come back again:
   * the mark of a loop with an echo service or another echo server.
   */
  loops(from: Deno.NetAddr, data: Uint8Array, now: number): boolean {
    const peer = this.#peer(from, now);
    peer.repeats = peer.sent === hash(data) ? peer.repeats + 1 : 0;
    return peer.repeats >= LOOP_LIMIT;
  }

  /** Whether `to` may be sent `data` now, within its rate; notes it if so. */
  take(to: Deno.NetAddr, data: Uint8Array, now: number): boolean {
    const peer = this.#peer(to, now);
    peer.tokens = Math.min(
      REPLY_BURST,
      peer.tokens + (now - peer.at) * REPLY_RATE / 1000,
    );
    peer.at = now;
    if (peer.tokens < 1) return false;
    peer.tokens--;
    peer.sent = hash(data);
    return true;
  }

  #peer(addr: Deno.NetAddr, now: number): Peer {
    const key = formatAddress(addr);
    let peer = this.#peers.get(key);
    if (peer) this.#peers.delete(key); // to the end: heard last
    else if (this.#peers.size >= PEERS) {
      this.#peers.delete(this.#peers.keys().next().value!);
    }
    peer ??= { tokens: REPLY_BURST, at: now, sent: -1, repeats: 0 };
    this.#peers.set(key, peer);
    return peer;
  }
}

/** A 32-bit FNV-1a hash: enough to tell whether bytes came back unchanged. */
function hash(data: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < data.length; i++) h = Math.imul(h ^ data[i], 0x01000193);
  return h >>> 0;
}

/** Echoes `data` to `from`, unless `replies` says not to. */
async function echoBack(
  conn: Deno.DatagramConn,
  data: Uint8Array,
  from: Deno.NetAddr,
  replies: Replies,
) {
  const now = Date.now();
  const refused = replies.refuses(from);
  const where = formatAddress(from);
  if (refused) {
    return warn("refused", `warning: not replying to ${where}: ${refused}`);
  }
  if (replies.loops(from, data, now)) {
    return warn(
      "loop",
      `warning: not replying to ${where}: it sends back what it is sent`,
    );
  }
  if (!replies.take(from, data, now)) {
    return warn(
      "rate",
      `warning: not replying to ${where}: more than ${REPLY_RATE} a second`,
    );
  }
  await reply(conn, data, from);
}

/** Relays `data` from `from`, marked with who said it, to the chat's other members. */
async function relay(
  conn: Deno.DatagramConn,
  data: Uint8Array,
  from: Deno.NetAddr,
  chat: ChatRoom,
  replies: Replies,
) {
  const now = Date.now();
  const refused = replies.refuses(from);
  if (refused) {
    return warn(
      "refused",
      `warning: not relaying for ${formatAddress(from)}: ${refused}`,
    );
  }
  // Relayed already, by another chat server: relaying it on would loop.
  if (isRelay(data)) return;
  const members = chat.hear(from, now);
  if (members.length === 0) return;
  const mark = encoder.encode(`<${formatAddress(from)}> `);
  const marked = new Uint8Array(mark.length + data.length);
  marked.set(mark);
  marked.set(data, mark.length);
  for (const member of members) {
    if (replies.refuses(member)) continue;
    if (replies.take(member, marked, now)) await reply(conn, marked, member);
    else {warn(
        "rate",
        `warning: not relaying to ${
          formatAddress(member)
        }: more than ${REPLY_RATE} a second`,
      );}
  }
}

/** Whether `data` begins with a relay mark, `<127.0.0.1:5> ` or `<[::1]:5> `. */
function isRelay(data: Uint8Array): boolean {
  if (data[0] !== 0x3c) return false; // "<"
  return /^<(\[[\d.:a-f]+\]|[\d.]+):\d+> /.test(
    decoder.decode(data.subarray(0, 64)),
  );
}

/**
 * Sends `data` to `to`. A failure concerns that peer only: it is reported,
 * and serving goes on. A socket closed meanwhile (the server stops) ends it
 * quietly: the receive loop then ends.
 */
export async function reply(
  conn: Deno.DatagramConn,
  data: Uint8Array,
  to: Deno.NetAddr,
): Promise<void> {
  try {
    await conn.send(data, to);
  } catch (error) {
    if (isClosed(error)) return;
    warn(
      "send",
      `warning: cannot send to ${formatAddress(to)}: ${reason(error)}`,
    );
  }
}

// Chat members who stay silent this long leave. The cap on members keeps
// forged senders from growing the table without end. Each member's datagrams
// are relayed RELAY_BURST at once, RELAY_RATE a second after that: the rest
// are printed, not relayed.
const CHAT_IDLE_MINUTES = 5;
const CHAT_MAX_MEMBERS = 100;
const RELAY_BURST = 40;
const RELAY_RATE = 20;

/**
 * The members of a chat: every address that sent a datagram lately. When the
 * table is full, a newcomer takes the place of the member silent longest, so
 * that forged joins cannot lock real members out for good.
 */
export class ChatRoom {
  /** The most members at once. */
  readonly maxMembers: number;
  /** How long a silent member stays, in milliseconds. */
  readonly idleMs: number;
  // Silent longest first: Map keeps insertion order.
  #members = new Map<string, Member>();

  /** A chat of at most `maxMembers` (100), who leave after `idleMs` (5 minutes) of silence. */
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
   * relay its words to: all others, or none if `from` has used up its
   * relays for now.
   */
  hear(from: Deno.NetAddr, now: number): Deno.NetAddr[] {
    for (const [key, member] of this.#members) {
      if (now - member.heard < this.idleMs) break;
      this.#members.delete(key);
    }
    const key = formatAddress(from);
    const member = this.#members.get(key) ??
      { addr: from, heard: now, tokens: RELAY_BURST };
    this.#members.delete(key);
    if (this.#members.size >= this.maxMembers) {
      this.#members.delete(this.#members.keys().next().value!);
    }
    member.tokens = Math.min(
      RELAY_BURST,
      member.tokens + (now - member.heard) * RELAY_RATE / 1000,
    );
    member.heard = now;
    this.#members.set(key, member);
    if (member.tokens < 1) return [];
    member.tokens--;
    return [...this.#members.values()]
      .filter((other) => other !== member)
      .map((other) => other.addr);
  }
}

/** A chat member: its address, when it last spoke, and the relays it has left. */
interface Member {
  addr: Deno.NetAddr;
  heard: number;
  tokens: number;
}

/** Whether `error` says that the socket was closed, which is how the loop ends. */
function isClosed(error: unknown): boolean {
  return error instanceof Deno.errors.BadResource ||
    error instanceof Deno.errors.Interrupted;
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

// Warnings of each kind: when the last was printed, and how many since were not.
const warnings = new Map<string, { at: number; held: number }>();

/**
 * Prints `line` on stderr, but at most one line a second of each `kind`, with
 * a count of those held back: a flood of failures must not become a flood of
 * lines.
 */
function warn(kind: string, line: string) {
  const now = Date.now();
  const last = warnings.get(kind) ?? { at: -Infinity, held: 0 };
  warnings.set(kind, last);
  if (now - last.at < 1000) {
    last.held++;
    return;
  }
  const held = last.held > 0 ? ` (and ${last.held} more like it before)` : "";
  console.error(`${line}${held}`);
  last.at = now;
  last.held = 0;
}

/** How many warnings were held back and never shown. */
function heldWarnings(): number {
  let held = 0;
  for (const kind of warnings.values()) held += kind.held;
  return held;
}

// The command line.

const USAGE = `Usage: deno task server [options]
   or: deno run --unstable-net --no-prompt '--allow-net=127.0.0.1,[::1],localhost' server.ts [options]

Prints every UDP datagram that arrives, one line each, with its sender.

Options:
  -H, --hostname <host>  address to listen on (default: ${DEFAULT_HOSTNAME})
  -p, --port <port>      port to listen on, 0 for any free one (default: ${DEFAULT_PORT})
      --echo             send every datagram back to its sender
      --chat             relay every datagram to the other chat members: the
                         addresses that sent one in the last ${CHAT_IDLE_MINUTES} minutes
                         (at most ${CHAT_MAX_MEMBERS} of them; ${RELAY_RATE} relays a second each)
  -h, --help             show this help`;

// Exit codes: 0 stopped with every line written; 1 a failure, or lines that
// the output did not take within 1 s of the stop; 2 a usage error; 141 the
// output's reader went away (128 + SIGPIPE, as for `yes | head`).
const EXIT_CLOSED = 141;

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
    return url.hostname.replace(/^\[(.*)\]$/, "$1");
  } catch {
    throw new UsageError(
      `--hostname must be a host name or an IP address, not "${host}"`,
    );
  }
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
  const { hostname, port, echo } = options;
  // Ctrl+C may arrive twice (under `deno task`, from the terminal and again
  // from the task runner); aborting twice is harmless. The listeners go in
  // before the socket is bound, and stay until Deno.exit(): a SIGINT with no
  // listener would kill the process, summary and all.
  const controller = new AbortController();
  const stop = () => controller.abort();
  Deno.addSignalListener("SIGINT", stop);
  if (Deno.build.os !== "windows") Deno.addSignalListener("SIGTERM", stop);
  const chat = options.chat ? new ChatRoom() : undefined;
  const mode = echo ? " (echo)" : chat ? " (chat)" : "";
  let listening = false;
  let summary;
  try {
    summary = await serve({
      hostname,
      port,
      echo,
      chat,
      signal: controller.signal,
      onListen(addr) {
        listening = true;
        console.error(
          `Listening on ${formatAddress(addr)}${mode}; Ctrl+C stops`,
        );
      },
    });
  } catch (error) {
    const where = printable(
      formatAddress({ transport: "udp", hostname, port }),
    );
    const context = listening ? "" : `cannot listen on ${where}: `;
    console.error(`error: ${context}${reason(error)}`);
    return 1;
  }
  const { datagrams, bytes, unwritten, outputError } = summary;
  const members = chat ? `; ${plural(chat.size, "chat member")}` : "";
  const held = heldWarnings();
  const hidden = held > 0 ? `; ${plural(held, "warning")} not shown` : "";
  const received = `Received ${plural(datagrams, "datagram")}, ${
    plural(bytes, "byte")
  }${members}${hidden}`;
  const lost = `${plural(unwritten, "line")} not written`;
  if (outputError instanceof Deno.errors.BrokenPipe) {
    console.error(`${received}; the output was closed, ${lost}`);
    return EXIT_CLOSED;
  }
  if (outputError) {
    console.error(`error: cannot write the output: ${reason(outputError)}`);
    console.error(`${received}; ${lost}`);
    return 1;
  }
  if (unwritten > 0) {
    console.error(`${received}; ${lost}: the output did not take them in time`);
    return 1;
  }
  console.error(received);
  return 0;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
