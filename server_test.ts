// Tests for server.ts and client.ts: their exports on real sockets (loopback,
// port 0, a plain socket in the other's place), and their command lines run as
// child processes. They wait for events (a datagram, a line, a process's end),
// never for time to pass (one bounded load loop paces what it sends): the
// rules that keep time get a fake clock.
import assert from "node:assert/strict";
import {
  all,
  ChatRoom,
  DEFAULT_HOSTNAME,
  DEFAULT_PORT,
  echo,
  escapeInto,
  type Handler,
  Output,
  Printer,
  SequenceStats,
  serve,
  type ServeOptions,
} from "./server.ts";
import { interactive, readLines, send } from "./client.ts";

// Helpers.

const encoder = new TextEncoder();
const decoder = new TextDecoder();

type TestFn = () => void | Promise<void>;

/**
 * `Deno.test` with the op and resource sanitizers on: they are off by default
 * from Deno 2.8, and deno.json's "test" section rejects them before 2.8, so
 * each test asks for them itself, which works on every Deno 2.
 */
function test(
  name: string,
  ...args: [TestFn] | [{ ignore?: boolean }, TestFn]
) {
  const [options, fn] = args.length === 1 ? [{}, args[0]] : args;
  const sanitizers = { sanitizeOps: true, sanitizeResources: true };
  Deno.test({ name, ...options, ...sanitizers, fn });
}

/**
 * `promise`, or a failure after `ms` (10 s): a test that waits for something
 * that never comes fails instead of hanging. Nothing here waits for this timer.
 */
async function within<T>(
  what: string,
  promise: Promise<T>,
  ms = 10_000,
): Promise<T> {
  let timer;
  const error = new Error(`timed out waiting for ${what}`);
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(error), ms);
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

function nextTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** A writer like `Deno.stdout` that keeps what it takes: `takes` bytes a write at most, none while `held`. */
class Collector {
  text = "";
  writes: Uint8Array[] = []; // what each write was offered
  held: Promise<void> | undefined;
  #more = Promise.withResolvers<void>();
  constructor(readonly takes = Infinity) {}
  async write(data: Uint8Array): Promise<number> {
    this.writes.push(data.slice());
    await this.held;
    const taken = data.subarray(0, this.takes);
    this.text += decoder.decode(taken);
    this.#more.resolve();
    this.#more = Promise.withResolvers();
    return taken.length;
  }
  get lines(): string[] {
    return this.text.split("\n").slice(0, -1);
  }
  async waitForLines(count: number): Promise<string[]> {
    while (this.lines.length < count) await within("line", this.#more.promise);
    return this.lines;
  }
}

/**
 * A plain socket on loopback (port 0: a free one), closed at the end of its
 * `using` block: a client, the server's stand-in, or a stranger.
 */
function listen(hostname = "127.0.0.1", port = 0) {
  const conn = Deno.listenDatagram({ transport: "udp", hostname, port });
  port = (conn.addr as Deno.NetAddr).port;
  return Object.assign(conn, {
    port,
    key: `${hostname}:${port}`, // as serve() names a sender, without brackets
    /** The next datagram, as text, and who sent it. */
    async next(): Promise<[string, Deno.NetAddr]> {
      const [data, from] = await within("a datagram", conn.receive());
      return [decoder.decode(data), from as Deno.NetAddr];
    },
    [Symbol.dispose]: () => conn.close(),
  });
}

/** A socket that echoes each datagram to its sender, as server --echo does. */
function echoing(hostname?: string) {
  const conn = listen(hostname);
  const loop = (async () => {
    for await (const [data, from] of conn) await conn.send(data, from);
  })().catch(() => {}); // closed
  const dispose = () => (conn.close(), loop);
  return Object.assign(conn, { [Symbol.asyncDispose]: dispose });
}

function udp(hostname: string, port: number): Deno.NetAddr {
  return { transport: "udp", hostname, port };
}

function fakes() {
  const list: string[] = [];
  const warn = (kind: string, text: string) => list.push(`${kind}: ${text}`);
  const clock = { now: 0, read: () => clock.now };
  return { list, warn, clock };
}

/** A socket at `addr` that sends nothing: it keeps what it is given, unless its buffer is `full` for a port. */
function fakeConn(addr?: Deno.NetAddr, full = (_port: number) => false) {
  const sent: [to: string, text: string][] = [];
  const send = (data: Uint8Array, to: Deno.NetAddr) => {
    if (full(to.port)) return Promise.reject(new Deno.errors.WouldBlock(""));
    sent.push([`${to.hostname}:${to.port}`, decoder.decode(data)]);
    return Promise.resolve(data.length);
  };
  addr ??= udp("127.0.0.1", 6789);
  const conn = { addr, send } as unknown as Deno.DatagramConn;
  const texts = (to?: string) =>
    sent.filter(([key]) => !to || key === to).map(([, text]) => text);
  return { conn, sent, texts };
}

/**
 * `serve()` on a free port, with a `Printer` on a `Collector` after `handler`
 * (as main() wires them); `stop()`, or the end of its `await using` block,
 * stops it and says what it printed.
 */
async function start(handler?: Handler) {
  const controller = new AbortController();
  const [output, listening] = [new Collector(), Promise.withResolvers()];
  const lines = new Output(output);
  const printer = new Printer(lines, {});
  const options: ServeOptions = { port: 0, signal: controller.signal };
  options.onListen = listening.resolve;
  const print = printer.print;
  const served = serve(options, handler ? all(handler, print) : print);
  const stop = async () => {
    controller.abort();
    await within("serve() to end", served);
    const unwritten = await lines.finish(performance.now() + 10_000);
    return { datagrams: printer.datagrams, bytes: printer.bytes, unwritten };
  };
  const addr = await within("onListen", listening.promise) as Deno.NetAddr;
  const dispose = () => stop().then(() => {});
  return { addr, output, stop, [Symbol.asyncDispose]: dispose };
}

/**
 * Sends `text` from `conn` to `to`, paced 5 ms apart, until `done` settles;
 * returns how many. A server that talks on while the client ends on its own
 * clock: no event paces it, and unpaced it would only flood the client's
 * queue. Bounded: 2,000 datagrams, 10 s at most.
 */
async function keepSending(
  conn: Deno.DatagramConn,
  to: Deno.Addr,
  text: string,
  done: Promise<unknown>,
): Promise<number> {
  let sent = 0, finished = false, timer;
  done.finally(() => finished = true);
  for (; !finished && sent < 2000; sent++) {
    await conn.send(encoder.encode(text), to);
    const pace = new Promise((resolve) => timer = setTimeout(resolve, 5));
    await Promise.race([done, pace]);
    clearTimeout(timer);
  }
  return sent;
}

// The command lines, as their --help gives them (the tasks "server", "client").
const NET = "--allow-net=127.0.0.1,[::1],localhost";
const SERVER = ["run", "--unstable-net", "--no-prompt", NET, "server.ts"];
const CLIENT = ["run", "--unstable-net", "--no-prompt", NET, "client.ts"];

/**
 * A running `deno <args>`, through `wrapper` if given (sh for a redirection,
 * python3 for a terminal); its stdin is `input`. What it prints is read only
 * when asked for, so that a pipe not asked for fills up. The end of its
 * `await using` block kills it, closes its stdin, cancels what is unread and
 * waits for its end.
 */
class Child {
  readonly process: Deno.ChildProcess;
  readonly input: WritableStreamDefaultWriter<Uint8Array>;
  readonly output = { stdout: "", stderr: "" };
  #readers;
  #text = { stdout: new TextDecoder(), stderr: new TextDecoder() };
  constructor(args: string[], { wrapper = [] as string[] } = {}) {
    const [program, ...rest] = [...wrapper, Deno.execPath(), ...args];
    this.process = new Deno.Command(program, {
      args: rest,
      cwd: new URL(".", import.meta.url),
      env: { NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.input = this.process.stdin.getWriter();
    const { stdout, stderr } = this.process;
    this.#readers = { stdout: stdout.getReader(), stderr: stderr.getReader() };
  }
  /** Reads `name` until it matches `pattern` (fails if it ends first), or to its end. */
  async waitFor(name: "stdout" | "stderr", pattern?: RegExp) {
    const reader = this.#readers[name];
    while (!pattern?.test(this.output[name])) {
      const read = await within(`${pattern ?? name}`, reader.read());
      if (read.done && !pattern) return [];
      if (read.done) {
        throw new Error(
          `${name} never matched ${pattern}: ${this.output[name]}`,
        );
      }
      const text = this.#text[name].decode(read.value, { stream: true });
      this.output[name] += text;
    }
    return pattern.exec(this.output[name])!;
  }
  async port(): Promise<number> {
    return Number((await this.waitFor("stderr", /^Listening on .*:(\d+)/m))[1]);
  }
  close(name: "stdout" | "stderr") {
    return this.#readers[name].cancel();
  }
  /** Reads both to their end, and waits for the exit code. */
  async result() {
    await Promise.all([this.waitFor("stdout"), this.waitFor("stderr")]);
    const { code } = await within("the process to end", this.process.status);
    return { code, ...this.output };
  }
  async [Symbol.asyncDispose]() {
    const kill = () => this.process.kill("SIGKILL");
    await Promise.resolve().then(kill).catch(() => {}); // if not ended yet
    await this.input.close().catch(() => {}); // if closed already
    await Promise.all([this.close("stdout"), this.close("stderr")]);
    await within("the process to end", this.process.status);
  }
}

async function runServer(args: string[], flags = SERVER.slice(0, -1)) {
  await using child = new Child([...flags, "server.ts", ...args]);
  return await child.result();
}

async function runClient(...args: string[]) {
  await using child = new Child([...CLIENT, ...args]);
  return await child.result();
}

// Runs a command at a pty `columns` wide, for 10 s at most, in the steps that
// come on its stdin as JSON lines (see drive()). Mode "all": the pty is stdin,
// stdout and stderr, and at the end of its stdin the script prints the exit
// code and the screen as JSON; mode "stdin": the pty is stdin only, and the
// script exits as the command does.
const PTY = `
import fcntl, json, os, pty, re, select, signal, struct, subprocess, sys, termios, time
mode, columns, *command = sys.argv[1:]
def resize(fd, columns):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("4H", 24, int(columns), 0, 0))
master, slave = pty.openpty()
resize(slave, columns)
out = slave if mode == "all" else None
child = subprocess.Popen(command, stdin=slave, stdout=out, stderr=out,
    start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
os.close(slave)
screen, end, match = b"", time.monotonic() + 10, None
def read():
    global screen
    left = max(0, end - time.monotonic())
    try:
        data = os.read(master, 4096) if select.select([master], [], [], left)[0] else b""
    except OSError:
        data = b""  # the command has ended
    screen += data
    return data
for kind, text in map(json.loads, iter(sys.stdin.readline, "")):
    if kind == "until":
        while not (match := re.search(text.encode(), screen)) and read():
            pass
    elif kind == "type":
        os.write(master, text.encode())
    elif kind == "columns":
        resize(master, text)
    elif kind == "signal":
        child.send_signal(getattr(signal, text))
    else:
        print(match.expand(text.encode()).decode() if match else text, flush=True)
while mode == "all" and read():
    pass
code = child.wait(10)
if mode == "stdin":
    sys.exit(code)
print(json.dumps({"code": code, "screen": screen.decode()}))
`;

/** `deno ...args` at a terminal, as `PTY` runs it; drive() gives it steps. */
function atTerminal(args: string[], { mode = "all", columns = 80 } = {}) {
  return new Child(args, {
    wrapper: ["python3", "-c", PTY, mode, `${columns}`],
  });
}

/**
 * Steps for a child of atTerminal(), run in order: wait "until" the screen
 * matches a regex, "type", resize to "columns", send a "signal", or "say" a
 * line to the test on stdout (`\1`: the last match's group 1).
 */
function drive(
  child: Child,
  ...steps: ["until" | "type" | "columns" | "signal" | "say", string][]
) {
  const lines = steps.map((step) => `${JSON.stringify(step)}\n`).join("");
  return child.input.write(encoder.encode(lines));
}

/** The exit code and the screen that `PTY` prints, in mode "all", once the steps end. */
async function screenOf(
  child: Child,
): Promise<{ code: number; screen: string }> {
  await child.input.close();
  const { stdout } = await child.result();
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

/** The lines a terminal shows for `output`: \r, \x1b[K, \x1b[0J and \x1b[nG applied. */
function render(output: string): string[] {
  const lines: string[] = [];
  for (const raw of output.split("\n")) {
    let line = "";
    let column = 0;
    // deno-lint-ignore no-control-regex -- terminal escapes, on purpose
    const re = /\x1b\[(\d*)([A-Za-z])|\r|[^\x1b\r]/gu;
    for (const [token, number, command] of raw.matchAll(re)) {
      if (token === "\r") column = 0;
      else if (command === "G") column = Number(number || 1) - 1;
      else if (command === "K" || command === "J") line = line.slice(0, column);
      else if (!command) {
        line = line.padEnd(column).slice(0, column) + token +
          line.slice(column + 1);
        column++;
      }
    }
    lines.push(line);
  }
  return lines;
}

function testIf(available: boolean) {
  return (name: string, fn: TestFn) => test(name, { ignore: !available }, fn);
}

async function has(script: string): Promise<boolean> {
  const command = new Deno.Command("bash", { args: ["-c", script] });
  return await command.output().then((o) => o.success, () => false);
}

// Windows has no SIGINT to send, no pseudo-terminal and no /dev/full.
const POSIX = Deno.build.os !== "windows";
const DEV_FULL = POSIX && await has("test -w /dev/full");
test.posix = testIf(POSIX);
test.python = testIf(POSIX && await has("python3 -c 'import pty'"));
test.devFull = testIf(DEV_FULL);

// Tutorial: serve(), and the client's send().

test("serve() prints the tutorial's message as a line that names its sender, every datagram of several clients in order, and 65,507 bytes whole", async () => {
  assert.deepEqual([DEFAULT_HOSTNAME, DEFAULT_PORT], ["127.0.0.1", 6789]);
  await using server = await start();
  using a = listen(), b = listen(), c = listen();
  const largest = "0123456789abcdef".repeat(4096).slice(0, 65_507);
  const texts = ["Hello, Server", "C:\\temp\x1b[2J", largest];
  for (const text of texts) await a.send(encoder.encode(text), server.addr);
  const shown = ["Hello, Server", "C:\\\\temp\\x1b[2J", largest];
  const first = shown.map((text) => `Message from ${a.key}: ${text}`);
  assert.deepEqual(await server.output.waitForLines(3), first);
  // 150 datagrams fit in the socket's queue even if the server read none yet.
  for (let i = 0; i < 50; i++) {
    for (const [n, client] of [a, b, c].entries()) {
      await client.send(encoder.encode(`client ${n} says ${i}`), server.addr);
    }
  }
  const lines = (await server.output.waitForLines(153)).slice(3);
  for (const [n, client] of [a, b, c].entries()) {
    const prefix = `Message from ${client.key}: `;
    const mine = lines.filter((line) => line.startsWith(prefix));
    const said = (_: unknown, i: number) => `${prefix}client ${n} says ${i}`;
    assert.deepEqual(mine, Array.from({ length: 50 }, said));
  }
  const counts = { datagrams: 153, bytes: 24 + 65_507 + 2370, unwritten: 0 };
  assert.deepEqual(await server.stop(), counts);
  assert.equal(server.output.lines.length, 153);
});

test("serve() ends and frees its port when aborted, and when onListen throws; waits for a handler's pending promise to read on, and hands it a view into one reused buffer", async () => {
  const idle = await start();
  assert.deepEqual(await idle.stop(), { datagrams: 0, bytes: 0, unwritten: 0 });
  Deno.listenDatagram({ ...idle.addr, transport: "udp" }).close();
  let bound = udp("", 0);
  const fails = (addr: Deno.NetAddr) => {
    bound = addr;
    throw new Error("onListen failed");
  };
  const failed = serve({ port: 0, onListen: fails }, () => {});
  await assert.rejects(within("serve()", failed), new Error("onListen failed"));
  assert.equal(bound.hostname, DEFAULT_HOSTNAME);
  Deno.listenDatagram({ ...bound, transport: "udp" }).close(); // closed
  const [views, handled] = [[] as Uint8Array[], [] as string[]];
  let [receives, release] = [0, Promise.withResolvers<void>()];
  await using server = await start((data, _from, conn) => {
    views.push(data);
    if (handled.push(decoder.decode(data)) > 1) return;
    const receive = conn.receive.bind(conn);
    conn.receive = (buffer) => (receives++, receive(buffer));
    return release.promise;
  });
  using client = listen();
  await client.send(encoder.encode("first"), server.addr);
  await client.send(encoder.encode("2nd"), server.addr); // queued meanwhile
  await server.output.waitForLines(1);
  // Had serve() not waited, it would have found "2nd" queued at once.
  for (let i = 0; i < 5; i++) await nextTurn();
  assert.deepEqual([receives, handled], [0, ["first"]]);
  release.resolve();
  await server.output.waitForLines(2);
  assert.deepEqual(handled, ["first", "2nd"]);
  assert.equal(views[0].buffer, views[1].buffer, "the same buffer");
  assert.ok(views[0].buffer.byteLength >= 65_507, "room for the largest");
  // The old view now shows the new datagram's bytes: "2nd" over "fi".
  assert.equal(decoder.decode(views[0]), "2ndst");
});

test("send() reaches IPv6 loopback and localhost, in any spelling", async () => {
  for (const hostname of ["::1", "0:0:0:0:0:0:0:1", "LocalHost"]) {
    const on = hostname.includes(":") ? "::1" : "localhost";
    await using server = echoing(on);
    const { port } = server;
    const { reply } = await send(encoder.encode(hostname), {
      hostname,
      port,
      wait: true,
    });
    assert.equal(decoder.decode(reply?.[0]), hostname);
    assert.deepEqual({ ...reply?.[1] }, { ...server.addr });
  }
});

// Output: lines written in the background, never blocking.

function numbered(count: number) {
  const text = (_: unknown, i: number) => `${i} ${"x".repeat(i % 100)}`;
  const texts = Array.from({ length: count }, text);
  return { texts, written: texts.map((text) => `${text}\n`).join("") };
}

function finish(output: Output): Promise<number> {
  return output.finish(performance.now() + 10_000);
}

/** stdout and stderr as two `Output`s on `Collector`s, stderr beside stdout. */
function outputs() {
  const [outFile, errFile] = [new Collector(), new Collector()];
  const out = new Output(outFile), err = new Output(errFile, { beside: out });
  return { out, err, outFile, errFile };
}

test("Output writes whole lines, 4096 bytes at most, the rest after a partial write, and tries again after WouldBlock and Interrupted", async () => {
  const collector = new Collector(1000); // takes 1000 bytes a write at most
  let calls = 0;
  const output = new Output({
    write(data) {
      if (++calls % 3 === 1) throw new Deno.errors.WouldBlock("would block");
      if (calls % 3 === 2) throw new Deno.errors.Interrupted("interrupted");
      return collector.write(data);
    },
  });
  const { texts, written } = numbered(2000);
  for (const text of texts) output.print(text);
  assert.equal(await finish(output), 0);
  assert.deepEqual([collector.text, output.error], [written, undefined]);
  for (const offered of collector.writes) {
    assert.ok(offered.length <= 4096, `${offered.length} bytes in one write`);
    assert.equal(offered.at(-1), 0x0a, "a write ends at a line's end");
  }
  assert.ok(collector.writes.length > written.length / 1000, "partial writes");
});

test("Output writes a line within a moment, and one longer than a chunk whole: pieces of 32 KiB without a line end, 4096 bytes with one", async () => {
  const collector = new Collector();
  const output = new Output(collector);
  const [long, started] = ["0123456789".repeat(10_000), performance.now()];
  output.print("before");
  await collector.waitForLines(1); // not only when more lines come
  const took = performance.now() - started;
  assert.ok(took < 500, `written after ${took} ms`); // 10 ms, or a slow machine
  // Line ends beyond a 32 KiB piece, and within one.
  for (const text of [long, long.slice(0, 50_000), "after"]) output.print(text);
  assert.equal(await finish(output), 0);
  const written = `before\n${long}\n${long.slice(0, 50_000)}\nafter\n`;
  assert.equal(collector.text, written);
  for (const offered of collector.writes) {
    const ends = offered.includes(0x0a);
    assert.ok(offered.length <= (ends ? 4096 : 32_768), `${offered.length}`);
    if (ends) assert.equal(offered.at(-1), 0x0a, "a write ends at a line end");
  }
  // Not 25 pieces of 4096 bytes: a write costs a hand-over to another thread.
  assert.ok(collector.writes.length <= 8, `${collector.writes.length} writes`);
});

test("Output beside another on one file (stderr beside stdout, as 2>&1 makes them) takes turns, and never writes inside the other's long line", async () => {
  const file = new Collector(1000); // one pipe for both, 1000 bytes a write
  const out = new Output(file), err = new Output(file, { beside: out });
  const long = "Message from 127.0.0.1:40000: " + "a".repeat(70_000);
  out.print(long);
  err.print("warning: not replying to 127.0.0.1:1000");
  out.print("Message from 127.0.0.1:40000: after");
  assert.deepEqual(await Promise.all([finish(out), finish(err)]), [0, 0]);
  assert.ok(file.lines.includes(long), "the long line whole, on its own");
  assert.deepEqual(file.lines.filter((line) => line !== long).sort(), [
    "Message from 127.0.0.1:40000: after",
    "warning: not replying to 127.0.0.1:1000",
  ]);
});

test("Output beside another begins no long line while the other's write is under way", async () => {
  const { out, err, outFile, errFile } = outputs();
  const release = Promise.withResolvers<void>();
  errFile.held = release.promise;
  err.print("warning: held");
  while (errFile.writes.length === 0) await within("a write", nextTurn());
  const long = "a".repeat(70_000);
  out.print(long);
  out.print("short");
  for (let i = 0; i < 5; i++) await nextTurn();
  assert.equal(outFile.writes.length, 0, "begun while stderr was writing");
  release.resolve();
  assert.deepEqual(await Promise.all([finish(out), finish(err)]), [0, 0]);
  assert.deepEqual([outFile.text, errFile.text], [
    `${long}\nshort\n`,
    "warning: held\n",
  ]);
});

test("Output beside one stopped mid-line writes on, after ending that line: a write that lands after finish() is no turn", async () => {
  const { out, err, outFile, errFile } = outputs();
  const release = Promise.withResolvers<void>();
  outFile.held = release.promise;
  out.print("a".repeat(100_000));
  while (outFile.writes.length === 0) await within("a write", nextTurn());
  assert.equal(await out.finish(performance.now()), 1);
  release.resolve();
  await nextTurn(); // the piece under way lands
  err.print("Received 1 datagram, 100,000 bytes");
  assert.equal(await finish(err), 0);
  assert.equal(errFile.text, "\nReceived 1 datagram, 100,000 bytes\n");
});

test("Output beside another takes its turn between two long lines of the other: a stdout far behind holds up no warning", async () => {
  let [offered, step, free, atWarning] = [0, () => {}, false, -1];
  const out = new Output({
    write: (data) =>
      new Promise((resolve) => {
        offered += data.length;
        step = () => resolve(data.length);
        if (free) step();
      }),
  });
  const errFile = new Collector();
  const err = new Output({
    write: (data) => {
      if (atWarning < 0) atWarning = offered;
      return errFile.write(data);
    },
  }, { beside: out });
  const [long, warning] = ["a".repeat(70_000), `warning: ${"b".repeat(5000)}`];
  out.print(long);
  out.print(long);
  while (offered === 0) await within("a write", nextTurn());
  err.print(warning);
  for (let i = 0; i < 100 && atWarning < 0; i++) {
    step();
    await within("a write", nextTurn());
  }
  assert.equal(atWarning, 70_001, "not at the end of the first long line");
  free = true;
  step();
  assert.deepEqual(await Promise.all([finish(out), finish(err)]), [0, 0]);
  assert.equal(errFile.text, `${warning}\n`);
});

test("Output beside a stalled one still writes its whole lines: a stderr nobody reads holds up no stdout", async () => {
  const stalled = { write: () => new Promise<number>(() => {}) };
  const file = new Collector();
  const out = new Output(file), err = new Output(stalled, { beside: out });
  err.print("warning: nobody reads this");
  await nextTurn();
  const { texts, written } = numbered(100);
  for (const text of texts) out.print(text);
  assert.equal(await finish(out), 0);
  assert.equal(file.text, written);
  assert.equal(await err.finish(performance.now()), 1);
});

test("Output stops at a broken pipe: append(), room() and finish() report it, and nothing is written after", async () => {
  const collector = new Collector();
  let after = 0;
  const output = new Output({
    write(data) {
      if (!collector.text) return collector.write(data);
      after += output.error ? 1 : 0;
      throw new Deno.errors.BrokenPipe("Broken pipe (os error 32)");
    },
  });
  for (const text of numbered(100).texts) output.print(text);
  for (let i = 0; i < 4; i++) output.print("a".repeat(262_144));
  assert.ok(output.full);
  await assert.rejects(within("room()", output.room()), Deno.errors.BrokenPipe);
  const error = output.error;
  assert.ok(error instanceof Deno.errors.BrokenPipe);
  assert.throws(() => output.append(encoder.encode("more\n")), error);
  await assert.rejects(output.room(), error);
  output.print("a diagnostic");
  const [unwritten, lines] = [await finish(output), collector.lines.length];
  assert.ok(lines > 0 && unwritten > 4);
  // The line whose append() threw counts as not written too.
  assert.deepEqual([lines + unwritten, output.dropped], [105, 1]);
  assert.equal(after, 0, "a write after the failure");
});

test("Output.finish() gives up at its deadline, and then writes nothing more and leaves no timer", async () => {
  // A writer always full: tried again and again. The op sanitizer sees a timer.
  const wrote = Promise.withResolvers<unknown>();
  let writes = 0;
  const output = new Output({
    write: () => {
      wrote.resolve(writes++);
      throw new Deno.errors.WouldBlock("would block");
    },
  });
  for (const text of numbered(500).texts) output.print(text);
  await within("a write", wrote.promise); // and a retry's timer
  const started = performance.now();
  assert.equal(await output.finish(started + 50), 500);
  const took = performance.now() - started;
  assert.ok(took >= 45 && took < 1000, `finish() took ${took} ms`);
  const count = writes;
  output.print("after the end"); // must not start anything either
  output.append(encoder.encode("nor this\n"));
  for (let i = 0; i < 5; i++) await nextTurn();
  assert.equal(writes, count, "a write after finish()");
});

test("Printer.print waits at 1 MiB, until less waits: never more than 1 MiB and a line; print() drops meanwhile", async () => {
  // A writer that takes 4096 bytes when the test says, and not before.
  let [taken, offered, take] = [0, Promise.withResolvers<void>(), () => {}];
  const output = new Output({
    write: (data) =>
      new Promise((resolve) => {
        const size = Math.min(4096, data.length);
        take = () => resolve((taken += size, size));
        offered.resolve();
      }),
  });
  const printer = new Printer(output, {});
  const data = new Uint8Array(65_507).fill(0x01); // "\x01" each: 4 bytes
  const line = "Message from 127.0.0.1:40000: ".length + 4 * 65_507 + 1;
  const [MiB, from, conn] = [1_048_576, udp("127.0.0.1", 40000), fakeConn()];
  let [appended, lines, waits, resolved] = [0, 0, 0, false];
  const printUntilFull = () => {
    for (let i = 0; i < 10; i++) {
      const pending = printer.print(data, from, conn.conn);
      [appended, lines] = [appended + line, lines + 1];
      const full = appended - taken >= MiB; // and never more than a line more
      assert.ok(appended - taken < MiB + line, `${appended - taken} waiting`);
      assert.deepEqual([pending !== undefined, output.full], [full, full]);
      if (pending) return void pending.then(() => resolved = true);
    }
  };
  printUntilFull();
  assert.equal(lines, 5, "262,055-byte lines: 1 MiB with the fifth");
  output.print("a diagnostic");
  assert.equal(output.dropped, 1);
  for (let i = 0; i < 5000 && lines < 10; i++) {
    await within("a write", offered.promise);
    offered = Promise.withResolvers();
    take();
    await nextTurn();
    const waiting = appended - taken;
    assert.equal(resolved, waiting < MiB, `${waiting} bytes waiting`);
    if (resolved) [resolved, waits] = [false, waits + 1];
    if (waiting < MiB) printUntilFull();
  }
  assert.equal(waits, 5);
  const unwritten = await output.finish(performance.now());
  assert.equal(unwritten, 10 - Math.floor(taken / line));
});

// Escaping and printing: every byte shown, so that it can be read back.

/** `escapeInto()` as a string: the text after `Message from ...: `. */
function escape(data: Uint8Array | string, columns?: number): string {
  if (typeof data === "string") data = encoder.encode(data);
  const out = new Uint8Array(4 * data.length + 32); // the room it asks for
  return decoder.decode(out.subarray(0, escapeInto(data, out, 0, columns)));
}

// The README's decoder ("What the server shows"), as it is there.
function unescape(text: string): Uint8Array {
  const out: number[] = [];
  const encoder = new TextEncoder();
  const escape = /\\(?:x(..)|u\{(\w+)\}|u(\w{4})|(.))|[^\\]+/gsu;
  for (const [all, byte, astral, bmp, letter] of text.matchAll(escape)) {
    const short = { "\\": 92, n: 10, r: 13, t: 9 }[letter ?? ""];
    if (byte) out.push(parseInt(byte, 16));
    else if (astral ?? bmp) {
      out.push(
        ...encoder.encode(String.fromCodePoint(parseInt(astral ?? bmp, 16))),
      );
    } else if (short !== undefined) out.push(short);
    else out.push(...encoder.encode(all));
  }
  return new Uint8Array(out);
}

function width(text: string): number {
  return [...text].reduce((sum, char) => sum + (char < "\x80" ? 1 : 2), 0);
}

/** A seeded pseudo-random generator (mulberry32): the same cases every run. */
function random(seed: number): (below: number) => number {
  return (below) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t ^= t + Math.imul(t ^ (t >>> 7), 61 | t);
    return Math.floor(((t ^ (t >>> 14)) >>> 0) / 2 ** 32 * below);
  };
}

/** Random datagrams: raw bytes, UTF-8 of every plane, and ASCII with fake escapes. */
function datagrams(count: number, seed = 17): Uint8Array[] {
  const next = random(seed);
  const planes = [0, 0x80, 0x800, 0x10000, 0x110000];
  const pieces = ["\\", "\\x41", "\\u0041", "\\u{1f600}", "\\n", "a", " "];
  return Array.from({ length: count }, (_, n) => {
    const length = next(301);
    if (n % 3 === 0) return Uint8Array.from({ length }, () => next(256));
    let text = "";
    while (text.length < length) {
      const plane = next(4), low = planes[plane];
      const codePoint = low + next(planes[plane + 1] - low);
      if (n % 3 === 2) text += pieces[next(pieces.length)];
      else if (codePoint < 0xd800 || codePoint > 0xdfff) {
        text += String.fromCodePoint(codePoint);
      }
    }
    return encoder.encode(text);
  });
}

test("escapeInto() escapes bytes that are not UTF-8, controls and invisible characters, copies printable ASCII, and writes only from `at`", () => {
  const cases: [number[] | string, string][] = [
    [[0xff, 0xfe, 0x00, 0x41, 0x80], "\\xff\\xfe\\x00A\\x80"],
    [[0xc0, 0xaf, 0xe0, 0x80, 0xaf], "\\xc0\\xaf\\xe0\\x80\\xaf"], // overlong
    [[0xed, 0xa0, 0x80], "\\xed\\xa0\\x80"], // a surrogate
    [[0xf4, 0x90, 0x80, 0x80], "\\xf4\\x90\\x80\\x80"], // above U+10FFFF
    [[0xe2, 0x82, 0x41, 0xe2, 0x82], "\\xe2\\x82A\\xe2\\x82"], // cut short
    ["\x00\x01\x1b\x1f\x7f\t\n\r\\", "\\x00\\x01\\x1b\\x1f\\x7f\\t\\n\\r\\\\"],
    ["\u0085\u009b", "\\u0085\\u009b"], // C1
    ["ad\u200bmin\u202e\u00a0", "ad\\u200bmin\\u202e\\u00a0"],
    ["\u{e0001}\ufffd\u2028\u3164", "\\u{e0001}\\ufffd\\u2028\\u3164"],
    ["😀 漢字 café مرحبا", "😀 漢字 café مرحبا"],
    ["x \\[+5 bytes]", "x \\\\[+5 bytes]"], // no forged marker
    ["", ""],
  ];
  for (const [data, expected] of cases) {
    const raw = typeof data === "string" ? encoder.encode(data) : data;
    assert.equal(escape(new Uint8Array(raw)), expected);
    assert.deepEqual(unescape(expected), new Uint8Array(raw));
  }
  const ascii = Uint8Array.from({ length: 95 * 3 }, (_, i) => 0x20 + i % 95)
    .filter((byte) => byte !== 0x5c);
  const out = new Uint8Array(500).fill(0xee);
  assert.equal(escapeInto(ascii, out, 7), 7 + ascii.length);
  assert.deepEqual(out.subarray(7, 7 + ascii.length), ascii);
  assert.deepEqual([out[6], out[7 + ascii.length]], [0xee, 0xee]);
  assert.equal(escape(new Uint8Array(65_507).fill(0xff)).length, 4 * 65_507);
});

test("escapeInto() shows any datagram so that the README's decoder gives back its bytes; cut to `columns`, with a marker that counts the bytes not shown", () => {
  const hidden = /[\p{C}\p{Z}\p{Default_Ignorable_Code_Point}\ufffd]/u;
  const next = random(5);
  let [cut, whole] = [0, 0];
  for (const data of datagrams(3000)) {
    const all = escape(data), marker = ` \\[+${data.length} bytes]`;
    assert.deepEqual(unescape(all), data);
    assert.ok(!hidden.test(all.replaceAll(" ", "")), all);
    assert.ok(encoder.encode(all).length <= 4 * data.length);
    const columns = marker.length - 1 + next(300); // from one less than it
    const text = escape(data, columns);
    if (width(all) <= columns) {
      assert.equal(text, all, "a line that fits is not cut");
      whole++;
    } else if (columns < marker.length) {
      assert.equal(text, marker, "the marker alone");
    } else {
      assert.ok(width(text) <= columns, `${width(text)} > ${columns}`);
      const [, shown, rest] = text.match(/^(.*) \\\[\+(\d+) bytes\]$/s)!;
      // Cut between escapes: what shows reads back as the datagram's start.
      const head = unescape(shown);
      assert.deepEqual(head, data.subarray(0, head.length));
      assert.equal(Number(rest), data.length - head.length);
      cut++;
    }
  }
  assert.ok(cut > 1000 && whole > 500, `${cut} cut, ${whole} whole`);
  const line = "a".repeat(100);
  assert.equal(escape(line, 100), line);
  assert.equal(escape(line, 99), "a".repeat(85) + " \\[+15 bytes]");
  assert.equal(escape(line, 13), " \\[+100 bytes]");
  assert.equal(escape("漢".repeat(20), 39), "漢".repeat(13) + " \\[+21 bytes]");
});

test("Printer prints each sender's prefix, also when senders alternate; in hex, the length; cut to columns that may change, prefix included", async () => {
  const [v6, zeros, I] = [udp("::1", 40000), Array(10).fill(0), Infinity];
  const ten = "127.0.0.1:40000 (10 bytes): "; // 41 columns with "Message from "
  const a30 = "127.0.0.1:40000: " + "a".repeat(30); // 60 columns likewise
  // [from: port or address, bytes, the printer's columns, the line it prints]
  const rows: [number | Deno.NetAddr, number[] | string, number, string][] = [
    [40000, "one", I, "127.0.0.1:40000: one"],
    [40001, "two", I, "127.0.0.1:40001: two"],
    [40000, "three", I, "127.0.0.1:40000: three"],
    [v6, "four", I, "[::1]:40000: four"],
    [v6, "five", I, "[::1]:40000: five"],
    [40000, "", I, "127.0.0.1:40000: "],
    [40000, "a".repeat(30), 60, a30],
    [40000, "a".repeat(31), 60, a30.slice(0, -13) + " \\[+14 bytes]"],
    [40000, "a".repeat(31), 61, a30 + "a"],
    [40000, "a".repeat(31), 40, "127.0.0.1:40000:  \\[+31 bytes]"],
    [40000, [0xff, 0xfe, 0, 0x41], I, "127.0.0.1:40000 (4 bytes): ff fe 00 41"],
    [40001, [0x5c], I, "127.0.0.1:40001 (1 byte): 5c"],
    [v6, [], I, "[::1]:40000 (0 bytes): "],
    [40000, zeros, 41 + 29, ten + "00 00 00 00 00 00 00 00 00 00"],
    [40000, zeros, 41 + 28, ten + "00 00 00 00 00 \\[+5 bytes]"],
  ];
  for (const hex of [false, true]) {
    const collector = new Collector();
    const output = new Output(collector);
    const [printer, conn] = [new Printer(output, { hex }), fakeConn().conn];
    const mine = rows.filter(([, data]) => typeof data !== "string" === hex);
    for (const [from, data, columns] of mine) {
      printer.columns = columns; // as a terminal is resized
      const raw = typeof data === "string" ? encoder.encode(data) : data;
      const addr = typeof from === "number" ? udp("127.0.0.1", from) : from;
      assert.equal(printer.print(new Uint8Array(raw), addr, conn), undefined);
    }
    assert.equal(await finish(output), 0);
    const lines = mine.map(([, , , line]) => `Message from ${line}`);
    const bytes = mine.reduce((sum, [, data]) => sum + data.length, 0);
    assert.deepEqual(collector.lines, lines);
    assert.deepEqual([printer.datagrams, printer.bytes], [mine.length, bytes]);
  }
});

test("client.ts prints each datagram from the server as server.ts does: escaped as escapeInto(), and with -x as a Printer with hex", async () => {
  using server = listen();
  const sent = datagrams(200, 23);
  for (const hex of [false, true]) {
    const args = ["-i", "-p", `${server.port}`, "-t", "100"];
    await using child = new Child([...CLIENT, ...args, ...hex ? ["-x"] : []]);
    await child.input.write(encoder.encode("hello\n"));
    const [, from] = await server.next();
    // One at a time, each printed before the next: none lost in a full queue.
    for (const [i, data] of sent.entries()) {
      await server.send(data, from);
      await child.waitFor("stdout", new RegExp(`^(?:.*\\n){${i + 1}}`));
    }
    await child.input.close();
    const { code, stdout, stderr } = await child.result();
    const sending = `Sending each line to ${server.key}; Ctrl+D ends\n`;
    assert.deepEqual([code, stderr], [0, sending]);
    // The server's lines for the same bytes from the same address.
    const prefix = `Message from ${server.key}: `;
    let expected = sent.map((data) => prefix + escape(data));
    if (hex) {
      const collector = new Collector();
      const output = new Output(collector);
      const printer = new Printer(output, { hex: true });
      const addr = server.addr as Deno.NetAddr;
      for (const data of sent) {
        printer.print(data, addr, fakeConn().conn);
      }
      assert.equal(await finish(output), 0);
      expected = collector.lines;
    }
    assert.deepEqual(stdout.split("\n").slice(0, -1), expected);
  }
});

// Echo: every datagram back to its sender, unless a rule says not to.

test("serve() with echo sends every datagram back byte for byte; the same line three times at once twice, and says why not the third", async () => {
  const { list, warn } = fakes();
  await using server = await start(echo(warn, { clock: () => 0 }));
  using client = listen();
  const everyByte = Uint8Array.from({ length: 256 }, (_, i) => i);
  const largest = Uint8Array.from({ length: 65_507 }, (_, i) => i * 7);
  for (const data of [everyByte, new Uint8Array(), largest]) {
    await client.send(data, server.addr);
    const [echoed, from] = await within("an echo", client.receive());
    assert.deepEqual([echoed, from], [data, server.addr]);
  }
  for (const text of ["ok", "ok", "ok", "probe"]) {
    await client.send(encoder.encode(text), server.addr);
  }
  for (const expected of ["ok", "ok", "probe"]) {
    assert.equal((await client.next())[0], expected);
  }
  const why = "an echo loop (back 2 times)";
  assert.deepEqual(list, [`echo: not replying to ${client.key}: ${why}`]);
  assert.equal((await server.stop()).datagrams, 7);
});

test("echo() and ChatRoom never reply to the server's own address, to ports below 32768 or of known services", async () => {
  for (const self of [udp("127.0.0.1", 40000), udp("0.0.0.0", 40000)]) {
    const [{ list, warn }, { conn, sent }] = [fakes(), fakeConn(self)];
    const [handler, room] = [echo(warn), new ChatRoom(warn)];
    const send = async (to: string, relay = true) => {
      const from = udp(to.split(":")[0], Number(to.split(":")[1]));
      await handler(new Uint8Array(1), from, conn);
      if (relay) await room.relay(new Uint8Array(1), from, conn);
    };
    const refused = [0, 1, 53, 5000, 32767, 33848, 41794, 53413];
    for (const port of refused) await send(`127.0.0.1:${port}`);
    // Bound to 0.0.0.0, every local address is its own.
    const own = self.hostname === "0.0.0.0" ? "10.0.0.5" : "127.0.0.1";
    await send(`${own}:40000`);
    const answered = ["127.0.0.1:32768", "127.0.0.1:40001", "127.0.0.1:60000"];
    if (own === "127.0.0.1") answered.push("127.0.0.2:40000");
    for (const to of answered) await send(to, false);
    assert.deepEqual([sent.map(([to]) => to), room.size], [answered, 0]);
    const why = (p: number) =>
      `127.0.0.1:${p}: port ${p} is no client's (services listen there)`;
    const mine = `${own}:40000: the server's own address`;
    const warned = [...refused.map(why), mine].flatMap((text) => [
      `echo: not replying to ${text}`,
      `chat: not relaying for ${text}`,
    ]);
    assert.deepEqual(list, warned);
  }
});

test("echo() answers an address 100 datagrams at once, then 100 a second, a game's 60 a second too, bounced datagrams twice; a spent budget is never forgotten", async () => {
  const [{ list, warn, clock }, conn] = [fakes(), fakeConn()];
  const handler = echo(warn, { clock: clock.read });
  const [a, b] = [udp("127.0.0.1", 40000), udp("127.0.0.1", 40001)];
  const burst = async (from: Deno.NetAddr, count: number) => {
    const before = conn.sent.length; // different datagrams, not a loop
    for (let i = 0; i < count; i++) {
      await handler(encoder.encode(`${i} of ${before}`), from, conn.conn);
    }
    return conn.sent.length - before;
  };
  assert.equal(await burst(a, 150), 100);
  assert.equal(await burst(b, 10), 10, "others not held back");
  clock.now = 10;
  assert.equal(await burst(a, 5), 1, "1 in 10 ms");
  const why = "echo: not replying to 127.0.0.1:40000: over 100 a second";
  assert.deepEqual(list, Array(54).fill(why));
  clock.now = 100; // B's budget full again, A's not (9 of 100)
  for (let i = 0; i < 5000; i++) { // others: B forgotten, A's budget never
    await burst(udp(`10.0.${i >> 8}.${i & 255}`, 40000), 1);
  }
  assert.equal(await burst(a, 100), 9, "budget forgotten");
  assert.equal(await burst(b, 20), 0, "B, forgotten, waits as a newcomer");
  clock.now = 1100;
  assert.equal(await burst(a, 150), 100, "100 a second later");
  const before = conn.sent.length;
  for (let i = 0; i < 600; i++) { // a game: the same state 60 times a second
    clock.now = 2000 + i * 1000 / 60;
    await handler(encoder.encode("same state"), b, conn.conn);
  }
  assert.equal(conn.sent.length - before, 600);
  // Bounced straight back, 1, 2, 3 or 10 at once: answered twice in all.
  for (const count of [1, 2, 3, 10]) {
    const [{ list, warn, clock }, { conn, sent }] = [fakes(), fakeConn()];
    const handler = echo(warn, { clock: clock.read });
    const peer = udp("127.0.0.1", 40000);
    const data = [...Array(count).keys()].map((i) => encoder.encode(`${i}`));
    // Each comes back 0.1 ms after its echo, as from another echo server.
    for (let round = 0; round < 4; round++) {
      for (const bytes of data) {
        clock.now += 0.1;
        await handler(bytes, peer, conn);
      }
    }
    assert.equal(sent.length, 2 * count, `${count} at once`);
    const loop = "not replying to 127.0.0.1:40000: an echo loop (back 2 times)";
    assert.deepEqual(list, Array(2 * count).fill(`echo: ${loop}`));
    await handler(data[0], udp("127.0.0.1", 40001), conn);
    await handler(encoder.encode("new"), peer, conn);
    assert.equal(sent.length, 2 * count + 2, "another peer, another datagram");
  }
});

// Chat: each datagram to every other member, marked with its sender.

/** A chat on a fake clock; `say(port, text)` sends it a datagram from 127.0.0.1:port (or `host`), on `conn`, else a fake that keeps what is sent. */
function chatRoom(conn?: Deno.DatagramConn) {
  const [{ list, warn, clock }, fake] = [fakes(), fakeConn()];
  const room = new ChatRoom(warn, { clock: clock.read });
  const say = (port: number, text: string | Uint8Array, host = "127.0.0.1") => {
    const data = typeof text === "string" ? encoder.encode(text) : text;
    return room.relay(data, udp(host, port), conn ?? fake.conn);
  };
  return { room, clock, warnings: list, say, ...fake };
}

test("ChatRoom relays each message to the others, marked, not to its sender, nor one marked already", async () => {
  const { say, clock, sent } = chatRoom();
  for (const port of [40000, 40001, 40002]) await say(port, `${port} joins`);
  clock.now = 1000;
  await say(40000, "hi");
  // As another chat server relays: marked. Relayed again, it would loop.
  await say(40001, "<127.0.0.1:5> relayed");
  await say(40001, "<[::1]:5> relayed");
  assert.deepEqual(sent.map(([to, text]) => `${to} ${text}`), [
    "127.0.0.1:40000 <127.0.0.1:40001> 40001 joins",
    "127.0.0.1:40000 <127.0.0.1:40002> 40002 joins",
    "127.0.0.1:40001 <127.0.0.1:40002> 40002 joins",
    "127.0.0.1:40001 <127.0.0.1:40000> hi",
    "127.0.0.1:40002 <127.0.0.1:40000> hi",
  ]);
});

test("ChatRoom relays a member's messages on its own budget, whatever the others send, and spends none on a message too long for its mark", async () => {
  const { say, clock, room, warnings, texts } = chatRoom();
  await say(40000, "a joins");
  await say(40001, "b joins");
  clock.now = 5000; // A's budget is full: 10
  for (let i = 0; i < 20; i++) await say(40000, new Uint8Array(65_500));
  await say(40000, new Uint8Array(65_489)); // with its mark, 65,507 bytes
  for (let i = 1; i <= 10; i++) await say(40000, `${i}`);
  const toB = texts("127.0.0.1:40001").map((text) => text.length);
  assert.deepEqual(toB, [65_507, ...Array(9).fill(19)]);
  const why = "65500 bytes and the mark do not fit in a datagram";
  assert.deepEqual(warnings, [
    ...Array(20).fill(`chat: not relaying for 127.0.0.1:40000: ${why}`),
    "chat: not relaying for 127.0.0.1:40000: over 2 a second",
  ]);
  // 25 others at 20 a second each for 6 s; A speaks each second.
  for (clock.now = 10_000; clock.now <= 16_000; clock.now += 50) {
    for (let port = 50000; port < 50025; port++) await say(port, "flood");
    if (clock.now % 1000 === 0) await say(40000, `a at ${clock.now}`);
  }
  const fromA = texts("127.0.0.1:40001").filter((t) => t.includes("a at"));
  assert.deepEqual([fromA.length, room.size], [7, 27]);
  const flood = texts("127.0.0.1:40000").filter((t) => t.endsWith("flood"));
  assert.ok(flood.length <= 25 * (1 + 2 * 6), `${flood.length}`);
});

test("ChatRoom: a full room never lets a newcomer push out a member heard in the last minute", async () => {
  const { say, clock, room, warnings, texts } = chatRoom();
  for (let i = 0; i < 50; i++) {
    clock.now = i * 100;
    await say(40000 + i, "hi");
  }
  clock.now = 30_000;
  await say(40000, "still here"); // heard last now: member 1 is the oldest
  let port = 50000;
  for (; clock.now < 60_100; port++, clock.now += 40) await say(port, "me");
  const why = "the chat is full, or joins come too fast";
  const refused = (_: unknown, i: number) =>
    `chat: not relaying for 127.0.0.1:${50000 + i}: ${why}`;
  assert.deepEqual(warnings, Array.from({ length: port - 50000 }, refused));
  // Member 1 has been silent 60 s: its place may go, and only its.
  clock.now = 60_100;
  await say(60000, "in");
  await say(60001, "not in");
  assert.equal(room.size, 50);
  const got = (port: number) =>
    texts(`127.0.0.1:${port}`).includes("<127.0.0.1:60000> in");
  const members = Array.from({ length: 50 }, (_, i) => 40000 + i);
  assert.deepEqual(members.filter(got), members.filter((p) => p !== 40001));
  assert.ok(!texts().some((text) => text.includes("not in")));
});

test("ChatRoom: members silent 5 minutes leave, and 4:59 stay", async () => {
  const { say, clock, room, texts } = chatRoom();
  for (const port of [40000, 40001, 40002]) await say(port, "joins");
  clock.now = 299_000;
  await say(40001, "4:59");
  assert.equal(texts("127.0.0.1:40000").at(-1), "<127.0.0.1:40001> 4:59");
  assert.equal(texts("127.0.0.1:40002").at(-1), "<127.0.0.1:40001> 4:59");
  clock.now = 300_000;
  await say(40002, "5:00");
  const to = texts().filter((text) => text.endsWith("5:00"));
  assert.deepEqual(to, ["<127.0.0.1:40002> 5:00"]);
  const last = texts("127.0.0.1:40001").at(-1);
  assert.deepEqual([last, room.size], ["<127.0.0.1:40002> 5:00", 2]);
});

test("ChatRoom drops a member whose relay fails for good, not one whose buffer was full; admits 50 newcomers at once, then 5 a second", async () => {
  using conn = listen(), b = listen(), c = listen();
  const { say, clock, room, warnings } = chatRoom(conn);
  await say(40000, "joins", "127.0.0.9"); // not allowed: a send fails
  await say(b.port, "b joins");
  assert.equal(room.size, 1, "the undeliverable member left");
  const flag = "not allowed: run server.ts with --allow-net=127.0.0.9";
  const cannot = `chat: cannot relay to 127.0.0.9:40000: ${flag}`;
  assert.deepEqual(warnings, [cannot]);
  await say(c.port, "c joins");
  assert.equal((await b.next())[0], `<${c.key}> c joins`);
  assert.equal(room.size, 2);
  // Newcomers that cannot be sent to leave at the next relay: joins stay used.
  const refused = () =>
    warnings.filter((text) => text.endsWith("joins come too fast")).length;
  for (let i = 0; i < 60; i++) await say(41000 + i, "hi", "127.0.0.9");
  assert.equal(refused(), 60 - 47); // 50 at once, 3 of them above
  clock.now = 1000;
  for (let i = 0; i < 10; i++) await say(42000 + i, "hi", "127.0.0.9");
  assert.deepEqual([refused(), room.size], [13 + 5, 3]); // b, c, the last
  const busy = chatRoom(fakeConn(undefined, (port) => port === 40000).conn);
  await busy.say(40000, "joins");
  await busy.say(40001, "joins"); // WouldBlock, to 40000
  assert.equal(busy.room.size, 2, "a full buffer is for a moment");
});

test("ChatRoom keeps relays within the members' budgets while newcomers come and go", async () => {
  // 10 members speak every 0.1 s; 2 newcomers come every 0.4 s, and go.
  using conn = listen();
  const members = Array.from({ length: 10 }, () => listen());
  let [relays, newcomers] = [0, 0]; // relays that reached a member
  const send = conn.send.bind(conn);
  conn.send = (data, to) => send(data, to).then((sent) => (relays++, sent));
  const { say, clock } = chatRoom(conn);
  for (let step = 0; step <= 120; step++) {
    clock.now = step * 100;
    for (const member of members) await say(member.port, "hi");
    for (let i = 0; step % 4 === 0 && i < 2; i++) {
      await say(40000 + newcomers++, "hi", "127.0.0.9");
    }
  }
  for (const member of members) member.close();
  // Members: first words, then 2 a second, to 9; newcomers: first, to 10.
  const bound = 10 * (1 + 2 * 12) * 9 + newcomers * 10;
  assert.equal(newcomers, 62);
  assert.ok(relays <= bound && relays > bound - 10 * 9, `${relays} relays`);
  // Were budgets reset as newcomers come, every word would be relayed.
  assert.ok(3 * bound < 121 * 10 * 9);
});

// Stats: what the numbers of `client --seq` tell.

function statsOn(step = 1) {
  const { clock } = fakes();
  const stats = new SequenceStats({ clock: clock.read });
  const send = (texts: string[], from = udp("127.0.0.1", 40000)) => {
    for (const text of texts) {
      stats.count(encoder.encode(text), from, fakeConn().conn);
      clock.now += step;
    }
  };
  return { stats, send, clock };
}

function run(first: number, last: number, count?: number): string[] {
  const end = count ? `/${count} x` : " x";
  return [...Array(last - first + 1).keys()].map((i) => `#${first + i}${end}`);
}

const FROM = "127.0.0.1:40000: ";

test("SequenceStats counts gaps, long ones and at the end, as lost; late and forged numbers are no gap; `#<n> ` alone too", () => {
  const gaps = statsOn();
  gaps.send([...run(1, 99, 5000), ...run(110, 1999, 5000)]);
  gaps.send(run(3500, 4900, 5000));
  assert.deepEqual(gaps.stats.summary(), [
    `${FROM}5,000 expected, 3,390 received, 1,610 lost (32.2%), 0 duplicated, 0 out of order, 1,000/s`,
  ]);
  let { stats, send } = statsOn();
  send([...run(1, 1200, 3000), ...run(2601, 2800, 3000), "#5/3000 late"]);
  send(["#999999999/3000 forged", "#999999999 forged"]);
  send(run(2801, 3000, 3000));
  assert.deepEqual(stats.summary(), [
    `${FROM}3,000 expected, 1,603 received, 1,400 lost (46.7%), 1 duplicated, 0 out of order, 2 stray, 1,000/s`,
  ]);
  // `#<n> ` alone: from the first number to the highest; and no numbers.
  ({ stats, send } = statsOn(10));
  send(["#1 a", "#2 a", "#4 a", "#5 a", "#3 a", "#3 a", "#7 a", "#8 a"]);
  send(["plain", "#10 a", "#0 x", "#01 x", "#1x", "#1", "# 1", "#-1 "]);
  send(["#1.5 ", "1 ", "", "#1234567890 "]);
  assert.deepEqual(stats.summary(), [
    `${FROM}10 expected, 20 received, 2 lost (20.0%), 1 duplicated, 1 out of order, 11 unnumbered, 100/s`,
  ]);
});

test("SequenceStats: forged numbers can neither hide a loss nor claim one beyond themselves", () => {
  const hide = statsOn();
  for (let n = 1; n <= 1000; n++) {
    if (n % 10 !== 0) hide.send([`#${n} real`, "#999999999 forged"]);
  }
  assert.deepEqual(hide.stats.summary(), [
    `${FROM}999 expected, 1,800 received, 99 lost (9.9%), 0 duplicated, 0 out of order, 900 stray, 1,000/s`,
  ]);
  const { stats, send } = statsOn();
  const real = run(1, 3000, 3000).filter((_, i) => i % 10 !== 9);
  for (const [i, text] of real.entries()) {
    send([text]);
    if (i % 270 === 269) send([`#${3001 + 1023 * (i - 269) / 270}/3000 x`]);
  }
  assert.deepEqual(stats.summary(), [
    `${FROM}3,000 expected, 2,710 received, 300 lost (10.0%), 0 duplicated, 0 out of order, 10 stray, 1,000/s`,
  ]);
  // 100,000 more, forged, half from addresses of their own: the victim's
  // line holds; they can claim loss only about themselves, each for its own
  // address, and the total sums no claims.
  const next = random(7), big = () => 1 + next(999_999_999);
  const forms = [() => "/3000", () => `/${big()}`, () => ""];
  for (let i = 0; i < 100_000; i++) {
    const from = udp(`10.0.${next(256)}.${next(256)}`, 40000);
    send([`#${big()}${forms[i % 3]()} x`], i % 2 ? from : undefined);
  }
  const [mine] = stats.summary();
  assert.match(mine, /^127.0.0.1:40000: 3,000 expected, 52,710 received, 300 /);
  const all = stats.summary().find((line) => line.includes(" senders: "))!;
  assert.doesNotMatch(all, / lost /);
});

test("SequenceStats follows 1,024 senders at once: a quiet one is forgotten into the total, a busy one never; no lines when nothing came", () => {
  const { stats, send, clock } = statsOn(0);
  assert.deepEqual(stats.summary(), []);
  const sender = (i: number) => udp(`10.0.${i >> 8}.${i & 255}`, 40000);
  for (let i = 0; i < 1024; i++) {
    clock.now = i;
    send(["#1/2 x"], sender(i));
  }
  clock.now = 5_000; // sender 0 quiet 5 s; sender 1, 4,999 ms
  send(["#1/2 x"], sender(5000));
  send(["#1/2 x", "#2/2 x"], sender(5001));
  const half = "2 expected, 1 received, 1 lost (50.0%), 0 duplicated";
  assert.deepEqual(stats.summary(), [
    ...[1, 2, 3, 4, 5].map((i) => `10.0.0.${i}:40000: ${half}, 0 out of order`),
    "1,025 senders: 1,025 received, 205/s",
    "2 datagrams not followed: too many senders",
  ]);
});

// Client: what it sends, whose reply it trusts, its pace, its sizes.

test("client.ts sends its words, after -- too, and --wait prints the reply, escaped", async () => {
  await using server = echoing();
  const port = `${server.port}`;
  const from = `Message from 127.0.0.1:${port}: `;
  assert.deepEqual(await runClient("-p", port, "-w", "some", "words\x1b[2J"), {
    code: 0,
    stdout: `${from}some words\\x1b[2J\n`,
    stderr: `Sending a 14-byte datagram to 127.0.0.1:${port}\n`,
  });
  const { stderr } = await runClient("-p", port, "8 bytes!");
  assert.equal(stderr, `Sending an 8-byte datagram to 127.0.0.1:${port}\n`);
  for (const dashes of [["--"], ["--", "--"]]) { // deno task client -- -- -v
    const dashed = await runClient(
      "-p",
      port,
      "--wait",
      ...dashes,
      "-v",
      "words",
    );
    assert.equal(dashed.stdout, `${from}-v words\n`);
  }
});

test("client.ts --seq numbers #n/count, says the sizes it sends, paces without drift, and sums up", async () => {
  using server = listen();
  const port = `${server.port}`;
  const { code, stdout, stderr } = await runClient(
    ...["-p", port, "--count", "100", "--rate", "200", "--seq", "tick"],
  );
  assert.equal(code, 0, stderr);
  assert.equal(stdout, "");
  // "#1/100 tick" is 11 bytes, "#100/100 tick" 13: 1,192 in all.
  const [, seconds] = stderr.match(
    new RegExp(
      `^Sending 100 numbered datagrams of 11 to 13 bytes to 127\\.0\\.0\\.1:${port}\n` +
        "Sent 100 datagrams, 1,192 bytes in (0\\.\\d{3}) s: [\\d,]+/s\n$",
    ),
  ) ?? [];
  // Datagram 100 is due 99 / 200 s after the first: a pace that slept 5 ms
  // after each send would take longer.
  assert.ok(Number(seconds) >= 0.495 && Number(seconds) < 0.75, stderr);
  for (let n = 1; n <= 100; n++) {
    assert.equal((await server.next())[0], `#${n}/100 tick`);
  }
});

test("client.ts --wait prints the server's reply, not a stranger's, or says after --timeout ms that none came", async () => {
  using server = listen();
  using stranger = listen();
  const where = `127.0.0.1:${server.port}`;
  const sending = `Sending a 13-byte datagram to ${where}\n`;
  {
    await using child = new Child([
      ...CLIENT,
      "-p",
      `${server.port}`,
      "-w",
      "-x",
    ]);
    const [, from] = await server.next();
    await stranger.send(encoder.encode("I am the server"), from);
    await stranger.send(new Uint8Array(), from);
    await server.send(new Uint8Array([0xff, 0xfe, 0x00, 0x41]), from);
    assert.deepEqual(await child.result(), {
      code: 0,
      stdout: `Message from ${where} (4 bytes): ff fe 00 41\n`,
      stderr: `${sending}Ignored 2 datagrams not from ${where}\n`,
    });
  }
  const start = performance.now();
  await using child = new Child([
    ...CLIENT,
    "-p",
    `${server.port}`,
    "-w",
    "-t",
    "300",
  ]);
  const [, from] = await server.next();
  await stranger.send(encoder.encode("not me"), from);
  const { code, stdout, stderr } = await child.result();
  const took = performance.now() - start;
  assert.deepEqual({ code, stdout }, { code: 1, stdout: "" });
  assert.equal(
    stderr,
    `${sending}error: no reply from ${where} within 300 ms (only server ` +
      `--echo replies); ignored 1 datagram not from ${where}\n`,
  );
  // Less than the default 2,000 ms, start-up included.
  assert.ok(took >= 300 && took < 1900, `took ${took} ms`);
});

// A socket on `::` that echoes once, in a child: the tests may not bind `::`.
const ECHO_ON_ANY = `
const conn = Deno.listenDatagram({ transport: "udp", hostname: "::", port: 0 });
console.log(conn.addr.port);
const [data, from] = await conn.receive();
await conn.send(data, from);
console.log(from.hostname);
`;

test("client.ts --wait takes the reply of an IPv4-mapped server as the server's", async () => {
  await using server = new Child(["eval", "--unstable-net", ECHO_ON_ANY]);
  const bound = await server.waitFor("stdout", /^(\d+)\n/).catch(() => {});
  if (!bound) {
    return console.log(`skipped: ${(await server.result()).stderr.trim()}`);
  }
  const port = bound[1];
  // Older Deno allows an IPv4-mapped address only by name.
  const allow = "--allow-net=[::ffff:127.0.0.1],[::ffff:7f00:1]";
  const args = ["-H", "::ffff:127.0.0.1", "-p", port, "-w"];
  const flags = [...CLIENT.slice(0, 3), allow, "client.ts"];
  await using child = new Child([...flags, ...args]);
  assert.deepEqual(await child.result(), {
    code: 0,
    stdout: `Message from [::ffff:127.0.0.1]:${port}: Hello, Server\n`,
    stderr: `Sending a 13-byte datagram to [::ffff:7f00:1]:${port}\n`,
  });
  assert.equal((await server.result()).stdout, `${port}\n::ffff:127.0.0.1\n`);
});

// Interactive: -i, readLines(), interactive(), from a pipe and at a terminal.

test("readLines() splits bytes into lines, strips line ends, keeps other bytes, skips lines too long", async () => {
  const long = new Uint8Array(70_000).fill(0x62);
  const input = ReadableStream.from([
    encoder.encode("one\ntw"), // a line across two reads
    encoder.encode("o\r\n\n"), // \r\n, then an empty line
    new Uint8Array([0xff, 0xc3, 0x0a]), // not UTF-8: sent as it is
    long.subarray(0, 40_000), // too long, across two reads
    long.subarray(40_000),
    encoder.encode(`\n${"c".repeat(65_507)}\r\n`), // the longest, and \r\n
    encoder.encode(`${"d".repeat(65_508)}\nlast\r`), // one too long; a last \r
  ]);
  const lines = [];
  for await (const line of readLines(input.getReader())) {
    lines.push(typeof line === "number" ? line : decoder.decode(line));
  }
  assert.deepEqual(lines, [
    ...["one", "two", "", "\ufffd\ufffd", 70_000],
    ...["c".repeat(65_507), 65_508, "last"],
  ]);
});

test("interactive() prints only the server's datagrams, escaped; a stranger does not keep it going", async () => {
  using server = listen();
  using stranger = listen();
  const printed: string[] = [];
  const arrived = Promise.withResolvers<void>();
  const finished = Promise.withResolvers<void>();
  let ended = 0, strangers = Promise.resolve(0);
  const lines = (async function* () {
    yield encoder.encode("one");
    const [, from] = await server.next();
    await stranger.send(encoder.encode("fake"), from);
    await server.send(encoder.encode("real\x1b[2J"), from);
    await within("the reply to be printed", arrived.promise);
    yield "two";
    strangers = keepSending(stranger, from, "noise", finished.promise);
    ended = performance.now();
  })();
  const { ignored } = await within(
    "interactive() to end",
    interactive(lines, {
      port: server.port,
      linger: 200,
      print: (text) => (printed.push(text), arrived.resolve()),
    }),
  );
  finished.resolve();
  const took = performance.now() - ended;
  // 200 ms of quiet from the server: the stranger's datagrams do not count.
  assert.ok(took >= 199 && took < 900, `took ${took} ms`);
  assert.deepEqual(printed, [
    `Message from 127.0.0.1:${server.port}: real\\x1b[2J`,
  ]);
  const noise = await strangers;
  assert.ok(ignored >= 2 && ignored <= noise + 1, `${ignored} of ${noise}`);
  assert.equal((await server.next())[0], "two");
});

test("interactive() rejects with what print threw, even null, and reads no further", async () => {
  using server = listen();
  let read = 0;
  const lines = (async function* () {
    yield encoder.encode("one");
    read++;
    const [, from] = await server.next();
    await server.send(encoder.encode("reply"), from);
    yield* readLines(new ReadableStream<Uint8Array>().getReader()); // no end
  })();
  const failing = interactive(lines, {
    port: server.port,
    print: () => Promise.reject(null),
  });
  await assert.rejects(
    within("it to fail", failing),
    (error) => error === null,
  );
  assert.equal(read, 1);
});

test("client.ts -i from a pipe sends lines as bytes, skips one too long, prints replies that come after the input", async () => {
  await using server = echoing();
  const port = `${server.port}`;
  await using child = new Child([...CLIENT, "-i", "-p", port, "-t", "500"]);
  await child.input.write(new Uint8Array(70_000).fill(0x61)); // too long
  await child.input.write(encoder.encode("\none\ntwo\r\n"));
  await child.input.write(new Uint8Array([0xff])); // not UTF-8: as it is
  await child.input.write(encoder.encode(" three\r"));
  await child.input.close();
  const from = `Message from 127.0.0.1:${port}: `;
  assert.deepEqual(await child.result(), {
    code: 0,
    stdout: `${from}one\n${from}two\n${from}\\xff three\n`,
    stderr: `Sending each line to 127.0.0.1:${port}; Ctrl+D ends\n` +
      "error: line 1 is 70000 bytes, more than the 65507 a UDP datagram can carry; not sent\n",
  });
});

test("client.ts -i with a --timeout too long for setTimeout keeps listening after the input ends", async () => {
  using server = listen();
  const port = `${server.port}`;
  // 5 x 500,000,000 ms is past setTimeout's 2^31-1: unclamped, it fired
  // after 1 ms, with a warning.
  await using child = new Child([
    ...CLIENT,
    "-i",
    "-p",
    port,
    "-t",
    "500000000",
  ]);
  await child.input.write(encoder.encode("hello\n"));
  const [, from] = await server.next();
  // A line too long, without a line end: reported once the input has ended.
  await child.input.write(new Uint8Array(65_508).fill(0x61));
  await child.input.close();
  await child.waitFor("stderr", /; not sent\n/);
  await server.send(encoder.encode("late"), from);
  await child.waitFor("stdout", /: late\n/);
  child.process.kill("SIGTERM");
  const { code, stderr } = await child.result();
  assert.equal(code, 143); // still running when killed
  assert.equal(
    stderr,
    `Sending each line to 127.0.0.1:${port}; Ctrl+D ends\n` +
      "error: line 2 is 65508 bytes, more than the 65507 a UDP datagram can carry; not sent\n",
  );
});

test("client.ts -i stops 5 x --timeout after the input ends, however long the server talks", async () => {
  using server = listen();
  await using child = new Child([
    ...CLIENT,
    "-i",
    "-p",
    `${server.port}`,
    "-t",
    "200",
  ]);
  await child.input.write(encoder.encode("talk\n"));
  const [, from] = await server.next();
  const ended = child.result();
  const talking = keepSending(server, from, "more", ended);
  const closed = performance.now();
  await child.input.close();
  const { code, stdout } = await ended;
  const took = performance.now() - closed;
  const count = await talking;
  assert.equal(code, 0);
  assert.ok(took >= 950 && took < 2500, `took ${took} ms`);
  const lines = stdout.split("\n").slice(0, -1);
  assert.ok(lines.length >= 10 && lines.length <= count, `${lines.length}`);
  assert.ok(lines.every((line) => line.endsWith(": more")));
});

test.python("client.ts -i at a terminal prints what arrives above the line being typed", async () => {
  using server = listen();
  const port = server.port;
  await using typist = atTerminal([...CLIENT, "-i", "-p", `${port}`]);
  // Text typed right after Enter lands after the next prompt, and the cursor
  // stays at its end.
  await drive(typist, ["until", "> "], ["type", "first\rhalf typed"]);
  await drive(typist, ["until", "half typed"], ["say", "typed"]);
  const [first, from] = await server.next();
  assert.equal(first, "first");
  await typist.waitFor("stdout", /^typed\n/m);
  await server.send(encoder.encode("incoming"), from);
  await drive(typist, ["until", "incoming"], ["type", "!\r"]);
  // Enter sends what was typed, whole, in the order typed.
  assert.equal((await server.next())[0], "half typed!");
  // Ctrl+C ends it at once, with exit code 130.
  await drive(typist, ["type", "\x03"]);
  const { code, screen } = await screenOf(typist);
  assert.equal(code, 130, screen);
  const lines = render(screen);
  const at = lines.findIndex((line) => line.includes("incoming"));
  assert.equal(lines[at], `Message from 127.0.0.1:${port}: incoming`, screen);
  assert.equal(lines[at + 1], "> half typed!", screen);
  assert.deepEqual(lines.slice(-2), ["> ", ""], screen);
});

test.python("client.ts -i with stdin a terminal and stdout a pipe prints no prompt and no escapes", async () => {
  await using server = echoing();
  const port = server.port;
  const args = [...CLIENT, "-i", "-p", `${port}`, "-t", "300"];
  await using typist = atTerminal(args, { mode: "stdin" });
  await drive(typist, ["type", "one\n"], ["say", "typed"]);
  await typist.waitFor("stdout", /: one\n/);
  // Ctrl+D, after a line end: the end of input.
  await drive(typist, ["type", "\x04"]);
  await typist.input.close();
  assert.deepEqual(await typist.result(), {
    code: 0,
    stdout: `typed\nMessage from 127.0.0.1:${port}: one\n`,
    stderr: `Sending each line to 127.0.0.1:${port}; Ctrl+D ends\n`,
  });
});

test.python("client.ts at a terminal cuts a reply to the width, its prefix counted", async () => {
  await using server = echoing();
  const port = server.port;
  const args = [...CLIENT, "-p", `${port}`, "-w", "a".repeat(100)];
  await using child = atTerminal(args, { columns: 60 });
  const { code, screen } = await screenOf(child);
  assert.equal(code, 0, screen);
  // 60 columns: the prefix, then as much as leaves room for the marker.
  const prefix = `Message from 127.0.0.1:${port}: `;
  const kept = 60 - prefix.length - " \\[+100 bytes]".length;
  const line = `${prefix}${"a".repeat(kept)} \\[+${100 - kept} bytes]`;
  assert.ok(line.length <= 60);
  assert.deepEqual(render(screen).slice(-2), [line, ""]);
});

test.python("client.ts at a terminal shows the progress of a long send on one line", async () => {
  using server = listen();
  const args = [...CLIENT, "-p", `${server.port}`, "-c", "300", "-r", "500"];
  await using child = atTerminal(args);
  const { code, screen } = await screenOf(child);
  assert.equal(code, 0, screen);
  // Drawn again in place, at most 4 times a second: 0.6 s, so 1 or 2 times.
  const shown = screen.match(/\rSent \d+ datagrams? of 300/g) ?? [];
  assert.ok(shown.length >= 1 && shown.length <= 3, screen);
  assert.doesNotMatch(screen, /Warning/); // a timer set below 0 ms
  assert.match(
    render(screen).at(-2)!,
    /^Sent 300 datagrams, 3,900 bytes in 0\.\d{3} s: [\d,]+\/s$/,
  );
});

// Command lines: server.ts's, then client.ts's.

test("server.ts --help lists every option, the deno run form first", async () => {
  const { code, stdout, stderr } = await runServer(["--help"]);
  assert.deepEqual([code, stderr], [0, ""]);
  const form = `deno ${SERVER.slice(0, 3).join(" ")} '${SERVER[3]}' server.ts`;
  assert.ok(stdout.startsWith(`Usage: ${form} [options]\n`), stdout);
  const options = "-H, --hostname <host>|127.0.0.1)|-p, --port <port>|6789)";
  const texts = `${options}|--hex|--stats|--echo|--chat|-h, --help|(32768`;
  for (const text of texts.split("|")) assert.ok(stdout.includes(text), text);
  for (const args of [["-h"], ["--", "--help"], ["-p", "65535", "-h"]]) {
    assert.deepEqual(await runServer(args), { code, stdout, stderr });
  }
});

test.devFull("server.ts --help to a full disk says so in one line, exit code 1", async () => {
  const wrapper = ["bash", "-c", 'exec "$0" "$@" > /dev/full'];
  await using child = new Child([...SERVER, "--help"], { wrapper });
  const stderr = "error: cannot write the output: no space left on device\n";
  assert.deepEqual(await child.result(), { code: 1, stdout: "", stderr });
});

test("server.ts: a usage error is one line that ends (see --help), exit code 2; a failure to listen, one line, exit code 1", async () => {
  using taken = listen();
  const port = "--port must be an integer from 0 to 65535, not";
  const typo = "--hostname takes no port: use -H";
  const inUse = `cannot listen on ${taken.key}: address already in use`;
  const no = (host: string, flag = `--allow-net=${host}`) =>
    `cannot listen on ${host}:6789: not allowed: run server.ts with ${flag}`;
  const stable = ["run", "--no-config", "--allow-net=127.0.0.1"]; // no unstable
  const cases: [string[], number, string, string[]?][] = [
    [["--bogus"], 2, "unknown option '--bogus'"],
    [["--port", "65536"], 2, `${port} "65536"`],
    [["-p", "\x1b[2J"], 2, `${port} "\\x1b[2J"`],
    [["--port"], 2, "option '-p, --port <value>' argument missing"],
    [["--echo", "--chat"], 2, "--echo and --chat cannot be used together"],
    [["-H", "127.0.0.1:6789"], 2, `${typo} 127.0.0.1 -p 6789`],
    [["--hostname=[::1]:6789"], 2, `${typo} ::1 -p 6789`],
    [["-p", `${taken.port}`], 1, inUse],
    [["-H", "0.0.0.0"], 1, no("0.0.0.0")],
    [["-H", "::"], 1, no("[::]", "'--allow-net=[::]'")],
    [[], 1, "Deno.listenDatagram is unstable: run with --unstable-net", stable],
  ];
  for (const [args, code, message, flags] of cases) {
    const stderr = `error: ${message}${code === 2 ? " (see --help)" : ""}\n`;
    const expected = { code, stdout: "", stderr };
    assert.deepEqual(await runServer(args, flags), expected);
  }
  const hostile = await runServer(["-H", "\x1b[2J\nhost"]);
  const start = "error: cannot listen on \\x1b[2j\\nhost:6789: ";
  assert.ok(hostile.stderr.startsWith(start), hostile.stderr);
  assert.equal(hostile.code, 1);
  assert.doesNotMatch(hostile.stderr, /\p{Cc}.*\n/su);
});

test.posix("server.ts -H ::1 --echo --stats echoes, prints, warns once a second, and sums up on SIGINT, even twice", async () => {
  // A client below port 32768, where services listen: never answered.
  let low;
  for (let port = 20000; !low && port < 20100; port++) {
    try {
      low = listen("::1", port);
    } catch {
      // Taken: the next.
    }
  }
  assert.ok(low, "no free port below 32768");
  using quiet = low;
  const args = [...SERVER, "-H", "::1", "-p", "0", "--echo", "--stats"];
  await using server = new Child(args);
  const to = udp("::1", await server.port());
  using client = listen("::1");
  for (let i = 0; i < 5; i++) await quiet.send(encoder.encode(`${i}`), to);
  for (const text of ["#1/4 x", "#3/4 x", "#2/4 x", "#2/4 x", "plain"]) {
    await client.send(encoder.encode(text), to); // handled after those
    assert.equal((await client.next())[0], text);
  }
  server.process.kill("SIGINT");
  server.process.kill("SIGINT");
  const { code, stdout, stderr } = await server.result();
  const [mine, theirs] = [`[::1]:${client.port}`, `[::1]:${quiet.port}`];
  const from = `Message from ${mine}: `;
  assert.deepEqual([code, stdout.split("\n").length], [0, 11]);
  assert.ok(stdout.endsWith(`\n${from}#2/4 x\n${from}#2/4 x\n${from}plain\n`));
  const lost = "1 lost (25.0%), 1 duplicated, 1 out of order";
  const why = `port ${quiet.port} is no client's (services listen there)`;
  assert.deepEqual(stderr.replace(/, [\d,]+\/s\n/g, "\n").split("\n"), [
    `Listening on [::1]:${to.port} (echo); Ctrl+C stops`,
    `warning: not replying to ${theirs}: ${why}`,
    "Received 10 datagrams, 34 bytes; 4 warnings not shown",
    `${theirs}: 5 received, 5 unnumbered`,
    `${mine}: 4 expected, 5 received, ${lost}, 1 unnumbered`,
    "2 senders: 10 received, 6 unnumbered",
    "",
  ]);
});

test.posix("server.ts ends when the reader of its output goes away: a summary and exit code 141", async () => {
  await using server = new Child([...SERVER, "-p", "0", "--echo"]);
  const to = udp("127.0.0.1", await server.port());
  using client = listen();
  await client.send(encoder.encode("one"), to);
  await server.waitFor("stdout", /: one\n/);
  await server.close("stdout"); // the reader goes, as `head -n 1` does
  await client.send(encoder.encode("two"), to);
  assert.equal((await client.next())[0], "one");
  assert.equal((await client.next())[0], "two");
  const { code, stderr } = await server.result();
  const said = "Received 2 datagrams, 6 bytes; the output was closed";
  assert.equal(stderr.replace(/^.*\n/, ""), `${said}, 1 line not written\n`);
  assert.equal(code, 141);
});

test.posix("server.ts ends within 1.5 s of SIGINT while its stdout and stderr are both stuck in a flood", async () => {
  // Told to by a line on stdin, another program fills the server's stderr
  // pipe, then says "full" on stdout. Nobody reads them meanwhile. (Its
  // stdin is given to it: a background command's is /dev/null.)
  const fill = (bs: number) =>
    `dd if=/dev/zero of=/dev/fd/4 bs=${bs} oflag=nonblock 4>&2 2>/dev/null`;
  const filler = `read x; ${fill(4096)}; ${fill(1)}; echo full`;
  const sh = `exec 3<&0; (${filler}) <&3 & exec 3<&- "$0" "$@"`;
  const wrapper = ["sh", "-c", sh];
  await using server = new Child([...SERVER, "-p", "0", "--echo"], { wrapper });
  const to = udp("127.0.0.1", await server.port());
  await server.input.write(encoder.encode("fill\n"));
  await server.input.close();
  await server.waitFor("stdout", /^full$/m);
  using client = listen();
  // 262,028-byte lines: the pipe takes 64 KiB, the server 1 MiB more.
  for (let i = 0; i < 60; i++) {
    const data = new Uint8Array(65_507).fill(1).fill(48 + i % 10, 0, 1);
    await client.send(data, to);
    if (i < 5) await within("an echo", client.receive());
  }
  const stopping = performance.now();
  server.process.kill("SIGINT");
  const { code } = await within("the end", server.process.status);
  const took = performance.now() - stopping;
  assert.ok(took < 1500, `stopped in ${took} ms`);
  assert.equal(code, 1);
});

test.python("server.ts at a terminal cuts a line to the terminal's width, and follows a resize", async () => {
  await using server = atTerminal([...SERVER, "-p", "0"], { columns: 200 });
  const listening = "Listening on 127.0.0.1:(\\d+)";
  await drive(server, ["until", listening], ["say", "\\1"]);
  const [, port] = await server.waitFor("stdout", /^(\d+)\n/);
  const to = udp("127.0.0.1", Number(port));
  using client = listen();
  // A datagram at 200 columns; then at 80, the same until a line is cut: no
  // event says when the server has the new width. Each step: the last line.
  let last = "";
  for (let count = 1; count < 50 && !last.endsWith("bytes]"); count++) {
    if (count === 2) {
      await drive(server, ["columns", "80"], ["signal", "SIGWINCH"]);
    }
    await client.send(encoder.encode("a".repeat(150)), to);
    const shown = `(?:Message .*\\r\\n){${count - 1}}(Message .*)\\r\\n`;
    await drive(server, ["until", shown], ["say", "\\1"]);
    const said = new RegExp(`^(?:.*\\n){${count}}(.*)\\n`);
    last = (await server.waitFor("stdout", said))[1];
  }
  await drive(server, ["signal", "SIGINT"], ["until", "Received"]);
  const { code, screen } = await screenOf(server);
  assert.equal(code, 0, screen);
  const prefix = `Message from ${client.key}: `;
  const lines = screen.split("\r\n").filter((line: string) => line[0] === "M");
  const cut = prefix + "a".repeat(80 - prefix.length - 14) + " \\[+114 bytes]";
  const whole = prefix + "a".repeat(150);
  assert.deepEqual(lines, [...Array(lines.length - 1).fill(whole), cut]); // 80
});

test("client.ts --help lists every option with its default, on stdout", async () => {
  const { code, stdout, stderr } = await runClient("-h");
  assert.equal(code, 0);
  assert.equal(stderr, "");
  assert.match(stdout, /^Usage: deno run --unstable-net --no-prompt '--allow/);
  const texts =
    "Hello, Server|-H, --hostname <host>|127.0.0.1|-p, --port|6789|" +
    '-c, --count|-r, --rate|-s, --seq|"#1/10 "|-w, --wait|-t, --timeout|2000|' +
    "-i, --interactive|-x, --hex|-h, --help";
  for (const text of texts.split("|")) {
    assert.ok(stdout.includes(text), `--help mentions ${text}`);
  }
});

test("client.ts: a usage error is one line that says what to do, exit code 2", async () => {
  const cases = [
    ["--count", "-1"],
    '--count must be an integer from 1 to 999999999, not "-1"',
    ["--port", "0"],
    '--port must be an integer from 1 to 65535, not "0"',
    ["-p", "65536", "-h"],
    '--port must be an integer from 1 to 65535, not "65536"',
    ["--timeout", "\x1b[2J"],
    '--timeout must be an integer from 1 to 2147483647, not "\\x1b[2J"',
    ["-hello"],
    "unknown option '-e': to send words that start with -, put -- before them",
    ["-H", "::1:6789"],
    "--hostname takes no port: use --hostname ::1 --port 6789",
    ["-H", "localhost:6789"],
    "--hostname takes no port: use --hostname localhost --port 6789",
    ["-H", "127.0.0.1:6789"],
    "--hostname takes no port: use --hostname 127.0.0.1 --port 6789",
    ["--hostname=[::1]:6789"],
    "--hostname takes no port: use --hostname ::1 --port 6789",
    ["-H", "-bad"],
    '--hostname must be a host name or an IP address, not "-bad"',
    ["-H", "nonsense..host"],
    '--hostname must be a host name or an IP address, not "nonsense..host"',
    ["-i", "words"],
    "--interactive sends the lines of its input: give it no message, --count, --rate, --seq or --wait",
    ["x".repeat(65_508)],
    "message is 65508 bytes, more than the 65507 a UDP datagram can carry",
    // The largest number's prefix, "#10000/10000 ", counts too.
    ["-s", "-c", "10000", "x".repeat(65_495)],
    "message with its number is 65508 bytes, more than the 65507 a UDP datagram can carry",
    ["-c"],
    "option '-c, --count <value>' argument missing",
  ] as const;
  for (let i = 0; i < cases.length; i += 2) {
    assert.deepEqual(await runClient(...cases[i] as readonly string[]), {
      code: 2,
      stdout: "",
      stderr: `error: ${cases[i + 1]} (see --help)\n`,
    });
  }
  // Just under the limit, the same is sent.
  using server = listen();
  const port = `${server.port}`;
  const fits = await runClient("-p", port, "-s", "-c", "2", "x".repeat(65_502));
  assert.equal(fits.code, 0, fits.stderr);
  assert.equal((await server.next())[0].length, 65_507);
});

test("client.ts: a closed output is exit code 141, a write that fails one line and 1", async () => {
  const sending = (port: number) =>
    `Sending a 13-byte datagram to 127.0.0.1:${port}\n`;
  {
    // The reader of stdout goes away before the reply comes.
    using server = listen();
    await using child = new Child([...CLIENT, "-p", `${server.port}`, "-w"]);
    const [data, from] = await server.next();
    await child.close("stdout");
    await server.send(encoder.encode(data), from);
    const result = { code: 141, stdout: "", stderr: sending(server.port) };
    assert.deepEqual(await child.result(), result);
  }
  if (!DEV_FULL) return console.log("skipped: no /dev/full here");
  // `exec` in sh: the redirection, and then the client in sh's place.
  const redirected = async (redirection: string, ...args: string[]) => {
    const wrapper = ["sh", "-c", `exec "$0" "$@" ${redirection}`];
    await using child = new Child([...CLIENT, ...args], { wrapper });
    return await child.result();
  };
  const full = "error: cannot write to stdout: no space left on device\n";
  assert.deepEqual(await redirected(">/dev/full", "--help"), {
    code: 1,
    stdout: "",
    stderr: full,
  });
  await using server = echoing();
  const port = `${server.port}`;
  assert.deepEqual(await redirected(">/dev/full", "-p", port, "-w"), {
    code: 1,
    stdout: "",
    stderr: sending(server.port) + full,
  });
  // stderr full too: nothing can be said, and it still ends, with 1.
  const both = await redirected(">/dev/full 2>&1", "-p", port, "-w");
  assert.deepEqual(both, { code: 1, stdout: "", stderr: "" });
});

test("client.ts: a host not allowed, or --unstable-net missing, is one line that says what to do", async () => {
  assert.deepEqual(await runClient("-H", "NoSuch.invalid"), {
    code: 1,
    stdout: "",
    stderr: "Sending a 13-byte datagram to nosuch.invalid:6789\n" +
      "error: not allowed to send to NoSuch.invalid: run client.ts with --allow-net=nosuch.invalid\n",
  });
  // IPv6 in brackets, as --allow-net takes it, quoted for zsh; and the
  // address to send from.
  assert.deepEqual(await runClient("-H", "2001:DB8::1"), {
    code: 1,
    stdout: "",
    stderr: "Sending a 13-byte datagram to [2001:db8::1]:6789\n" +
      "error: not allowed to send to 2001:DB8::1: run client.ts with '--allow-net=[2001:db8::1],[::]'\n",
  });
  // --no-config: else deno.json's "unstable" would supply the flag.
  const args = ["run", "--no-config", "--allow-net=127.0.0.1", "client.ts"];
  await using child = new Child(args);
  assert.deepEqual(await child.result(), {
    code: 1,
    stdout: "",
    stderr: "error: Deno.listenDatagram is unstable: run with --unstable-net\n",
  });
});
