// Tests for server.ts and client.ts: real sockets on loopback, port 0, and
// events (a line printed, a datagram received, a process ended), never sleeps.
// Behaviour is tested in process; the command lines by running the tasks.
import assert from "node:assert/strict";
import {
  ChatRoom,
  LinePrinter,
  type Output,
  printable,
  Replies,
  reply,
  serve,
  type ServeOptions,
  skipReset,
} from "./server.ts";
import {
  DEFAULT_MESSAGE,
  printable as clientPrintable,
  readLines,
  send,
} from "./client.ts";
import config from "./deno.json" with { type: "json" };

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const ROOT = new URL(".", import.meta.url);

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
  Deno.test({
    name,
    ...options,
    sanitizeOps: true,
    sanitizeResources: true,
    fn,
  });
}

/**
 * `promise`, or a failure after 10 s: a test that waits for something that
 * never comes fails instead of hanging. Nothing here waits for this timer.
 */
async function within<T>(what: string, promise: Promise<T>): Promise<T> {
  let timer;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out waiting for ${what}`)),
      10_000,
    );
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * An `Output` that keeps what is written, and tells when lines arrive. It
 * takes at most `takes` bytes a write, and none while `held`.
 */
class Collector implements Output {
  text = "";
  writes: number[] = [];
  held: Promise<void> | undefined;
  #arrived = Promise.withResolvers<void>();

  constructor(readonly takes = Infinity) {}

  async write(data: Uint8Array): Promise<number> {
    await this.held;
    const taken = data.subarray(0, this.takes);
    this.writes.push(data.length);
    this.text += decoder.decode(taken);
    this.#arrived.resolve();
    this.#arrived = Promise.withResolvers();
    return taken.length;
  }

  get lines(): string[] {
    return this.text.split("\n").slice(0, -1);
  }

  /** Waits until at least `count` lines have been written. */
  waitForLines(count: number): Promise<string[]> {
    return within(`${count} lines`, this.#waitForLines(count));
  }

  async #waitForLines(count: number): Promise<string[]> {
    while (this.lines.length < count) await this.#arrived.promise;
    return this.lines;
  }
}

function listen(hostname = "127.0.0.1"): Deno.DatagramConn {
  return Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
}

/** Runs `serve()` on a free port; `stop()` aborts it and returns its summary. */
async function start(options: ServeOptions = {}) {
  const controller = new AbortController();
  const output = options.output as Collector ?? new Collector();
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const served = serve({
    port: 0,
    output,
    signal: controller.signal,
    onListen: listening.resolve,
    ...options,
  });
  const addr = await Promise.race([
    listening.promise,
    served.then(() => {
      throw new Error("serve() ended before it listened");
    }),
  ]);
  const stop = () => {
    controller.abort();
    return served;
  };
  return { addr, port: addr.port, output, stop };
}

/** Like assert.deepEqual, but fast to fail on 64 KiB: it names the first difference. */
function assertBytes(actual: Uint8Array, expected: Uint8Array) {
  assert.equal(actual.length, expected.length, "length");
  const at = actual.findIndex((byte, i) => byte !== expected[i]);
  assert.equal(at, -1, `first difference at byte ${at}`);
}

function receive(conn: Deno.DatagramConn) {
  return within("a datagram", conn.receive());
}

async function receiveText(conn: Deno.DatagramConn): Promise<string> {
  const [data] = await receive(conn);
  return decoder.decode(data);
}

const NOTHING_LOST = { unwritten: 0, outputError: undefined };

test("serve() prints the tutorial's message as a line that names its sender", async () => {
  const server = await start();
  try {
    await send(encoder.encode(DEFAULT_MESSAGE), { port: server.port });
    const [line] = await server.output.waitForLines(1);
    const [, port] =
      line.match(/^Message from 127\.0\.0\.1:(\d+): Hello, Server$/) ?? [];
    assert.ok(port, line);
    assert.notEqual(Number(port), server.port);
  } finally {
    assert.deepEqual(await server.stop(), {
      datagrams: 1,
      bytes: 13,
      ...NOTHING_LOST,
    });
  }
  assert.equal(server.output.lines.length, 1);
});

test("serve() prints every datagram of several clients, each client's in order", async () => {
  const server = await start();
  const clients = [listen(), listen(), listen()];
  try {
    // 150 datagrams fit in the socket's queue even if the server read none yet.
    for (let i = 0; i < 50; i++) {
      for (const [n, client] of clients.entries()) {
        await client.send(encoder.encode(`client ${n} says ${i}`), server.addr);
      }
    }
    const lines = await server.output.waitForLines(150);
    for (const [n, client] of clients.entries()) {
      const prefix = `Message from 127.0.0.1:${
        (client.addr as Deno.NetAddr).port
      }: `;
      const mine = lines.filter((line) => line.startsWith(prefix));
      const expected = Array.from(
        { length: 50 },
        (_, i) => `${prefix}client ${n} says ${i}`,
      );
      assert.deepEqual(mine, expected);
    }
  } finally {
    for (const client of clients) client.close();
    assert.equal((await server.stop()).datagrams, 150);
  }
  assert.equal(server.output.lines.length, 150);
});

test("serve() prints empty, invalid UTF-8, control and format characters visibly", async () => {
  const server = await start();
  const client = listen();
  const from = `Message from 127.0.0.1:${(client.addr as Deno.NetAddr).port}: `;
  const datagrams = [
    new Uint8Array(),
    new Uint8Array([0xff, 0x41, 0xc3]), // not UTF-8
    encoder.encode(
      "\x1b]0;title\x07\x1b[2J\r\nfake line\0\t\x7f\u009b1m\\x1b end",
    ),
    // Line and paragraph separators, bidi controls (Trojan Source), and a
    // leading BOM, which a decoder drops unless told not to.
    encoder.encode(
      "\ufeffA\u2028Message from 127.0.0.1:6789: forged\u2029\u202eevil\u202c\u2066\u2069\u200f é",
    ),
  ];
  try {
    for (const data of datagrams) await client.send(data, server.addr);
    assert.deepEqual(await server.output.waitForLines(4), [
      from,
      `${from}\ufffdA\ufffd`,
      `${from}\\x1b]0;title\\x07\\x1b[2J\\r\\nfake line\\x00\\t\\x7f\\x9b1m\\\\x1b end`,
      `${from}\\ufeffA\\u2028Message from 127.0.0.1:6789: forged\\u2029\\u202eevil\\u202c\\u2066\\u2069\\u200f é`,
    ]);
    // Nothing raw reaches the output: no C0, DEL, C1, separator, bidi
    // control or BOM but the line ends.
    assert.doesNotMatch(
      server.output.text.replaceAll("\n", ""),
      /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\ufeff]/u,
    );
  } finally {
    client.close();
    await server.stop();
  }
});

test("serve() receives a 65,507-byte datagram whole", async () => {
  const server = await start();
  const client = listen();
  const text = "0123456789abcdef".repeat(4096).slice(0, 65_507);
  try {
    await client.send(encoder.encode(text), server.addr);
    const [line] = await server.output.waitForLines(1);
    assert.equal(line.slice(line.indexOf(": ") + 2), text);
  } finally {
    client.close();
    assert.deepEqual(await server.stop(), {
      datagrams: 1,
      bytes: 65_507,
      ...NOTHING_LOST,
    });
  }
});

test("serve() with echo sends every datagram back byte for byte", async () => {
  const server = await start({ echo: true });
  const client = listen();
  const everyByte = Uint8Array.from({ length: 256 }, (_, i) => i);
  const largest = Uint8Array.from({ length: 65_507 }, (_, i) => i * 7);
  try {
    const zeros = new Uint8Array(65_507);
    for (const data of [everyByte, new Uint8Array(), largest, zeros]) {
      await client.send(data, server.addr);
      const [echoed, from] = await receive(client);
      assertBytes(echoed, data);
      assert.equal((from as Deno.NetAddr).port, server.port);
    }
    // 65,507 NULs, escaped, make a line four times as long as a chunk of
    // output: it is written whole all the same.
    const lines = await server.output.waitForLines(4);
    assert.equal(
      lines[3].slice(lines[3].indexOf(": ") + 2),
      "\\x00".repeat(65_507),
    );
  } finally {
    client.close();
    await server.stop();
  }
});

test("serve() with a chat relays each message to the others, not to its sender", async () => {
  const server = await start({ chat: new ChatRoom() });
  const [a, b, c] = [listen(), listen(), listen()];
  const name = (conn: Deno.DatagramConn) =>
    `<127.0.0.1:${(conn.addr as Deno.NetAddr).port}>`;
  try {
    await a.send(encoder.encode("a joins"), server.addr); // nobody to hear it
    await b.send(encoder.encode("b joins"), server.addr);
    assert.equal(await receiveText(a), `${name(b)} b joins`);
    await c.send(encoder.encode("c joins"), server.addr);
    assert.equal(await receiveText(a), `${name(c)} c joins`);
    assert.equal(await receiveText(b), `${name(c)} c joins`);
    await a.send(encoder.encode("hi"), server.addr);
    assert.equal(await receiveText(b), `${name(a)} hi`);
    assert.equal(await receiveText(c), `${name(a)} hi`);
    // Had `a` been sent its own "hi", it would arrive before this.
    await b.send(encoder.encode("bye"), server.addr);
    assert.equal(await receiveText(a), `${name(b)} bye`);
    assert.equal(await receiveText(c), `${name(b)} bye`);
  } finally {
    for (const conn of [a, b, c]) conn.close();
    assert.equal((await server.stop()).datagrams, 5);
  }
  assert.equal(server.output.lines.length, 5);
});

test("serve() with a full chat lets a newcomer in, in place of the member silent longest", async () => {
  const chat = new ChatRoom({ maxMembers: 2 });
  const server = await start({ chat });
  const [a, b, c] = [listen(), listen(), listen()];
  const name = (conn: Deno.DatagramConn) =>
    `<127.0.0.1:${(conn.addr as Deno.NetAddr).port}>`;
  try {
    await a.send(encoder.encode("a joins"), server.addr);
    await b.send(encoder.encode("b joins"), server.addr);
    assert.equal(await receiveText(a), `${name(b)} b joins`);
    await c.send(encoder.encode("c joins"), server.addr); // a leaves
    assert.equal(await receiveText(b), `${name(c)} c joins`);
    await b.send(encoder.encode("b again"), server.addr);
    assert.equal(await receiveText(c), `${name(b)} b again`);
    await a.send(encoder.encode("a is back"), server.addr); // c leaves
    assert.equal(await receiveText(b), `${name(a)} a is back`);
    await b.send(encoder.encode("b third"), server.addr);
    // Had a heard "c joins" or "b again", they would arrive first.
    assert.equal(await receiveText(a), `${name(b)} b third`);
  } finally {
    for (const conn of [a, b, c]) conn.close();
    await server.stop();
  }
  assert.equal(chat.size, 2);
});

test("ChatRoom admits a newcomer in place of the member silent longest, and lets silent ones expire", () => {
  const chat = new ChatRoom({ maxMembers: 2, idleMs: 1000 });
  const at = (port: number): Deno.NetAddr => ({
    transport: "udp",
    hostname: "127.0.0.1",
    port,
  });
  assert.deepEqual(chat.hear(at(1), 0), []);
  assert.deepEqual(chat.hear(at(2), 10), [at(1)]);
  assert.deepEqual(
    chat.hear(at(3), 20),
    [at(2)],
    "full: 1, silent longest, leaves",
  );
  assert.equal(chat.size, 2);
  assert.deepEqual(chat.hear(at(2), 900), [at(3)], "2 speaks again");
  assert.deepEqual(
    chat.hear(at(1), 1010),
    [at(2)],
    "3 has been silent longest",
  );
  assert.deepEqual(
    chat.hear(at(2), 5000),
    [],
    "everyone else left: 2 is alone",
  );
  assert.equal(chat.size, 1);
});

test("ChatRoom relays 40 datagrams of a member at once, then 20 a second", () => {
  const chat = new ChatRoom();
  const at = (port: number): Deno.NetAddr => ({
    transport: "udp",
    hostname: "127.0.0.1",
    port,
  });
  chat.hear(at(1), 0);
  let relayed = 0;
  for (let i = 0; i < 500; i++) relayed += chat.hear(at(2), 0).length;
  assert.equal(relayed, 40, "a burst of 500 at once");
  for (let i = 0; i < 500; i++) relayed += chat.hear(at(2), 1000).length;
  assert.equal(relayed, 60, "and 20 a second later");
  assert.deepEqual(
    chat.hear(at(1), 1000),
    [at(2)],
    "the other member is not held back",
  );
});

test("serve() ends when its signal aborts, and the port is free again", async () => {
  const server = await start();
  assert.deepEqual(await server.stop(), {
    datagrams: 0,
    bytes: 0,
    ...NOTHING_LOST,
  });
  const again = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: server.port,
  });
  again.close();
  // Aborted before it starts: it binds, then stops at once.
  const controller = new AbortController();
  controller.abort();
  const summary = await serve({ port: 0, signal: controller.signal });
  assert.equal(summary.datagrams, 0);
});

test("serve() writes every line it read when stopped, in order", async () => {
  // The output takes nothing until released: at the stop, every line of the
  // burst is still waiting, and must be written then.
  const output = new Collector();
  const release = Promise.withResolvers<void>();
  output.held = release.promise;
  const server = await start({ output, echo: true });
  const client = listen();
  const sent = Array.from({ length: 50 }, (_, i) => `burst ${i}`);
  try {
    for (const text of sent) {
      await client.send(encoder.encode(text), server.addr);
      await receive(client); // the echo: the server has read it
    }
  } finally {
    client.close();
  }
  const stopped = server.stop();
  release.resolve();
  const summary = await stopped;
  assert.deepEqual(summary, {
    datagrams: 50,
    bytes: sent.join("").length,
    ...NOTHING_LOST,
  });
  const from = `Message from 127.0.0.1:${(client.addr as Deno.NetAddr).port}: `;
  assert.deepEqual(output.lines, sent.map((text) => from + text));
});

const FROM: Deno.NetAddr = { transport: "udp", hostname: "127.0.0.1", port: 5 };

/** Lines of 10 to 109 bytes, numbered; as printed from FROM. */
function numbered(count: number) {
  const texts = Array.from(
    { length: count },
    (_, i) => `${i} ${"x".repeat(i % 100)}`,
  );
  const printed = texts.map((text) => `Message from 127.0.0.1:5: ${text}\n`)
    .join("");
  return { data: texts.map((text) => encoder.encode(text)), printed };
}

test("LinePrinter writes whole lines, 4096 bytes at most, and the rest after a partial write", async () => {
  const output = new Collector(1000); // takes 1000 bytes a write at most
  const lines = new LinePrinter(output);
  const { data, printed } = numbered(2000);
  for (const datagram of data) lines.print(FROM, datagram);
  assert.deepEqual(await lines.finish(10_000), NOTHING_LOST);
  assert.equal(output.text, printed);
  assert.ok(output.writes.every((size) => size <= 4096), "4096 at most");
});

test("LinePrinter tries again after WouldBlock and Interrupted, and loses nothing", async () => {
  const collector = new Collector();
  let calls = 0;
  const lines = new LinePrinter({
    write(data) {
      calls++;
      if (calls % 3 === 1) throw new Deno.errors.WouldBlock("would block");
      if (calls % 3 === 2) throw new Deno.errors.Interrupted("interrupted");
      return collector.write(data);
    },
  });
  const { data, printed } = numbered(3000);
  for (const datagram of data) lines.print(FROM, datagram);
  assert.deepEqual(await lines.finish(10_000), NOTHING_LOST);
  assert.equal(collector.text, printed);
  assert.ok(calls > 3 * 50, `${calls} calls`);
});

test("LinePrinter stops at a broken pipe, and counts the lines not written", async () => {
  const collector = new Collector();
  let failures = 0;
  const lines = new LinePrinter({
    write(data) {
      if (collector.text) {
        throw new Deno.errors.BrokenPipe("Broken pipe (os error 32)");
      }
      return collector.write(data);
    },
  }, { onError: () => failures++ });
  const { data } = numbered(1000);
  for (const datagram of data) lines.print(FROM, datagram);
  const { unwritten, outputError } = await lines.finish(10_000);
  assert.ok(outputError instanceof Deno.errors.BrokenPipe);
  assert.equal(failures, 1);
  assert.equal(collector.lines.length + unwritten, 1000);
  assert.ok(unwritten > 0);
});

test("LinePrinter.finish() gives up after its grace, and counts what is left", async () => {
  const output = new Collector();
  output.held = new Promise(() => {}); // an output that never takes anything
  const lines = new LinePrinter(output);
  const { data } = numbered(500);
  for (const datagram of data) lines.print(FROM, datagram);
  const started = Date.now();
  assert.deepEqual(await lines.finish(50), {
    unwritten: 500,
    outputError: undefined,
  });
  assert.ok(Date.now() - started < 1000);
});

test("LinePrinter is full at 16 chunks waiting, and has room once one is written", async () => {
  const output = new Collector();
  const release = Promise.withResolvers<void>();
  output.held = release.promise;
  const lines = new LinePrinter(output);
  const line = new Uint8Array(30_000).fill(0x61); // two lines a 64 KiB chunk
  let printed = 0;
  while (!lines.full) {
    lines.print(FROM, line);
    printed++;
  }
  assert.equal(
    printed,
    33,
    "16 chunks of 2 lines, and the line that began the next",
  );
  const room = lines.room();
  release.resolve();
  await within("room", room);
  assert.equal(lines.full, false);
  assert.deepEqual(await lines.finish(10_000), NOTHING_LOST);
  assert.equal(output.lines.length, 33);
});

// The client's tests use a plain socket in the server's place: they test
// the client alone, and a second socket can send as a stranger.

/** A plain UDP socket in the server's place: it keeps what arrives and, with `echo`, sends it back. */
class FakeServer implements AsyncDisposable {
  readonly conn: Deno.DatagramConn;
  readonly texts: string[] = [];
  #arrived = Promise.withResolvers<void>();
  #loop: Promise<void>;

  constructor({ hostname = "127.0.0.1", echo = true } = {}) {
    this.conn = listen(hostname);
    this.#loop = this.#serve(echo);
  }

  get port(): number {
    return (this.conn.addr as Deno.NetAddr).port;
  }

  get hostname(): string {
    return (this.conn.addr as Deno.NetAddr).hostname;
  }

  async #serve(echo: boolean) {
    try {
      while (true) {
        const [data, from] = await this.conn.receive();
        this.texts.push(decoder.decode(data));
        this.#arrived.resolve();
        this.#arrived = Promise.withResolvers();
        if (echo) await this.conn.send(data, from);
      }
    } catch {
      // closed
    }
  }

  /** Waits until `count` datagrams have arrived. */
  waitFor(count: number): Promise<string[]> {
    return within(`${count} datagrams`, this.#waitFor(count));
  }

  async #waitFor(count: number): Promise<string[]> {
    while (this.texts.length < count) await this.#arrived.promise;
    return this.texts;
  }

  async [Symbol.asyncDispose]() {
    this.conn.close();
    await this.#loop;
  }
}

test("send() sends the message count times", async () => {
  await using server = new FakeServer({ echo: false });
  const result = await send(encoder.encode("again"), {
    port: server.port,
    count: 5,
  });
  assert.equal(result.sent, 5);
  assert.equal(result.bytes, 25);
  assert.deepEqual(await server.waitFor(5), Array(5).fill("again"));
});

test("send() with wait returns the reply and who sent it", async () => {
  await using server = new FakeServer();
  const { reply, ignored } = await send(encoder.encode("ping"), {
    port: server.port,
    wait: true,
  });
  assert.ok(reply);
  const [data, from] = reply;
  assert.equal(decoder.decode(data), "ping");
  assert.deepEqual({ ...from }, udp("127.0.0.1", server.port));
  assert.equal(ignored, 0);
});

test("send() with wait takes the server's reply, not a stranger's datagram that comes first", async () => {
  const server = listen();
  const stranger = listen();
  try {
    const port = (server.addr as Deno.NetAddr).port;
    const sending = send(encoder.encode("ping"), { port, wait: true });
    const [, client] = await receive(server);
    await stranger.send(encoder.encode("I am the server"), client);
    await stranger.send(encoder.encode("believe me"), client);
    await server.send(encoder.encode("pong"), client);
    const { reply, ignored } = await within("the reply", sending);
    assert.equal(decoder.decode(reply?.[0]), "pong");
    assert.equal(ignored, 2);
  } finally {
    server.close();
    stranger.close();
  }
});

test("send() with wait gives up after the timeout", async () => {
  const silent = listen();
  const port = (silent.addr as Deno.NetAddr).port;
  try {
    await assert.rejects(
      send(encoder.encode("anyone?"), { port, wait: true, timeout: 50 }),
      { message: `no reply from 127.0.0.1:${port} within 50 ms` },
    );
    assert.equal(await receiveText(silent), "anyone?");
  } finally {
    silent.close();
  }
});

test("send() works over IPv6 and by host name", async () => {
  for (const hostname of ["::1", "0:0:0:0:0:0:0:1", "localhost"]) {
    await using server = new FakeServer({
      hostname: hostname === "localhost" ? hostname : "::1",
    });
    const { reply } = await send(encoder.encode("hi"), {
      hostname,
      port: server.port,
      wait: true,
    });
    assert.equal(decoder.decode(reply?.[0]), "hi");
    assert.equal(reply?.[1].hostname, server.hostname);
  }
});

test("send() with seq numbers each datagram, and with rate paces them", async () => {
  await using server = new FakeServer({ echo: false });
  const start = performance.now();
  const { sent, bytes } = await send(encoder.encode("tick"), {
    port: server.port,
    count: 50,
    rate: 100,
    seq: true,
  });
  const took = performance.now() - start;
  // Datagram 50 is due 49 / 100 s after the first.
  assert.ok(took >= 490 && took < 1500, `took ${took} ms`);
  assert.equal(sent, 50);
  const texts = await server.waitFor(50);
  assert.deepEqual(texts, texts.map((_, i) => `#${i + 1} tick`));
  assert.equal(bytes, texts.join("").length);
});

test("send() with rate does not drift: 1,000 datagrams at 2,000 a second take 0.5 s", async () => {
  await using server = new FakeServer({ echo: false });
  const { seconds } = await send(encoder.encode("x"), {
    port: server.port,
    count: 1000,
    rate: 2000,
  });
  // Datagram 1,000 is due 999 / 2,000 s after the first. A pace that slept
  // 0.5 ms after each send would take twice that or more.
  assert.ok(seconds >= 0.499 && seconds < 0.75, `took ${seconds} s`);
  assert.equal((await server.waitFor(1000)).length, 1000);
});

// The command lines, run as a user runs them: `deno task server ...`.

/** `deno task -q <name> <args>`, as a user types it. */
function task(
  name: "server" | "client",
  args: string[],
  stdin: "piped" | "null" = "null",
) {
  return new Task(["task", "-q", name, ...args], { stdin });
}

/**
 * The command line of task `name` in deno.json, run without the task runner,
 * so that a signal reaches the script itself. For a server that must be
 * stopped: the task runner of Deno 2.0 passes no signal on (denoland/deno#18445),
 * and would leave the script running.
 */
function script(
  name: "server" | "client",
  args: string[],
  options: TaskOptions = {},
) {
  return new Task([...taskArgs(name), ...args], options);
}

/** The arguments that task `name` gives `deno`: `run`, its flags, its file. */
function taskArgs(name: "server" | "client"): string[] {
  const [, ...words] = config.tasks[name].match(/'[^']*'|\S+/g) ?? [];
  return words.map((word) => word.replace(/^'(.*)'$/, "$1"));
}

interface TaskOptions {
  stdin?: "piped" | "null";
  /** "hold": leave stdout unread, for the test to read (or close) itself. */
  stdout?: "read" | "hold";
  /** Run `deno` through this, as in `sh -c '...; exec "$0" "$@"' deno ...`. */
  wrapper?: string[];
}

/** A running `deno` command, with what it printed so far. */
class Task implements AsyncDisposable {
  readonly process: Deno.ChildProcess;
  readonly output = { stdout: "", stderr: "" };
  #printed = Promise.withResolvers<void>();
  #ended: Promise<Deno.CommandStatus>;

  constructor(args: string[], options: TaskOptions = {}) {
    const { stdin = "null", stdout = "read", wrapper = [] } = options;
    const [program, ...rest] = [...wrapper, Deno.execPath(), ...args];
    this.process = new Deno.Command(program, {
      args: rest,
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reading = [this.#read("stderr")];
    if (stdout === "read") reading.push(this.#read("stdout"));
    this.#ended = Promise.all(reading).then(() => this.process.status);
  }

  async #read(name: "stdout" | "stderr") {
    for await (
      const text of this.process[name].pipeThrough(new TextDecoderStream())
    ) {
      this.output[name] += text;
      this.#printed.resolve();
      this.#printed = Promise.withResolvers();
    }
  }

  /** Waits until `name` matches `pattern`; fails if the task ends first. */
  waitFor(name: "stdout" | "stderr", pattern: RegExp) {
    return within(`${name} to match ${pattern}`, this.#waitFor(name, pattern));
  }

  async #waitFor(name: "stdout" | "stderr", pattern: RegExp) {
    let ended = false;
    while (true) {
      const match = this.output[name].match(pattern);
      if (match) return match;
      if (ended) {
        throw new Error(
          `${name} never matched ${pattern}: ${JSON.stringify(this.output)}`,
        );
      }
      ended = await Promise.race([
        this.#printed.promise.then(() => false),
        this.#ended.then(() => true),
      ]);
    }
  }

  /** Waits until the server says where it listens. */
  async port(): Promise<number> {
    const [, port] = await this.waitFor("stderr", /^Listening on .*:(\d+)/m);
    return Number(port);
  }

  /** Waits for the task to end; returns its exit code and output. */
  async result() {
    const { code } = await within("the task to end", this.#ended);
    return { code, ...this.output };
  }

  async [Symbol.asyncDispose]() {
    // SIGTERM, which `deno task` passes on to the script. It cannot pass on a
    // SIGKILL: the script would live on, holding the pipes open.
    try {
      this.process.kill("SIGTERM");
    } catch {
      // It has ended already.
    }
    await within("the task to end", this.#ended);
  }
}

// Windows has no way to send a process SIGINT.
const NO_SIGINT = Deno.build.os === "windows";
// The task runner passes signals on to the script from Deno 2.1.2
// (denoland/deno#27141); before, it ends and leaves the script running. In a
// terminal, Ctrl+C reaches the script all the same.
const [major, minor, patch] = Deno.version.deno.split(".").map(Number);
const TASK_PASSES_SIGNALS = major > 2 || minor > 1 || minor === 1 && patch >= 2;

/** Checks that `deno task <args>` fails with exit code 2 and one line that starts with `message`. */
async function assertUsageError(
  name: "server" | "client",
  args: readonly string[],
  message: string,
) {
  const { code, stdout, stderr } = await run(name, ...args);
  assert.equal(code, 2, args.join(" ").slice(0, 40));
  assert.equal(stdout, "");
  assert.ok(stderr.startsWith(message), stderr);
  assert.equal(stderr.split("\n").length, 2, "one line");
}

async function run(name: "server" | "client", ...args: string[]) {
  await using child = task(name, args);
  return await child.result();
}

/** Runs `deno run <args>` itself, not a task: to leave out flags that the tasks always give. */
async function runDeno(...args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["run", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
  }).output();
  return {
    code,
    stdout: decoder.decode(stdout),
    stderr: decoder.decode(stderr),
  };
}

test("deno task server --help lists every option with its default", async () => {
  const { code, stdout, stderr } = await run("server", "--help");
  assert.equal(code, 0);
  assert.equal(stderr, "");
  // `deno task server -- --help` passes the `--` on.
  assert.deepEqual(await run("server", "--", "--help"), {
    code,
    stdout,
    stderr,
  });
  for (
    const text of [
      "-H, --hostname",
      "127.0.0.1",
      "-p, --port",
      "6789",
      "--echo",
      "--chat",
      "5 minutes",
      "100",
      "-h, --help",
    ]
  ) {
    assert.ok(stdout.includes(text), `--help mentions ${text}`);
  }
});

test("deno task client --help lists every option with its default", async () => {
  const { code, stdout, stderr } = await run("client", "-h");
  assert.equal(code, 0);
  assert.equal(stderr, "");
  for (
    const text of [
      "Hello, Server",
      "-H, --hostname",
      "127.0.0.1",
      "-p, --port",
      "6789",
      "-c, --count",
      "-w, --wait",
      "-t, --timeout",
      "2000",
      "-i, --interactive",
      "-r, --rate",
      "-s, --seq",
      "-x, --hex",
      "-h, --help",
    ]
  ) {
    assert.ok(stdout.includes(text), `--help mentions ${text}`);
  }
});

test("deno task server: a usage error is one line and exit code 2", async () => {
  const cases = [
    [["--bogus"], "error: unknown option '--bogus'"],
    [
      ["--port", "65536"],
      'error: --port must be an integer from 0 to 65535, not "65536"',
    ],
    [
      ["-p", "80x"],
      'error: --port must be an integer from 0 to 65535, not "80x"',
    ],
    [["--port"], "error: option '-p, --port <value>' argument missing"],
    [["--echo", "--chat"], "error: --echo and --chat cannot be used together"],
    [
      ["extra"],
      "error: unexpected argument 'extra'. This command does not take positional arguments",
    ],
  ] as const;
  for (const [args, message] of cases) {
    await assertUsageError("server", args, message);
  }
});

test("deno task client: a usage error is one line and exit code 2", async () => {
  const cases = [
    [["--count", "0"], 'error: --count must be a positive integer, not "0"'],
    [["-c", "1.5"], 'error: --count must be a positive integer, not "1.5"'],
    [
      ["--port", "0"],
      'error: --port must be an integer from 1 to 65535, not "0"',
    ],
    [
      ["--timeout", "soon"],
      'error: --timeout must be an integer from 1 to 2147483647, not "soon"',
    ],
    [["-i", "words"], "error: --interactive sends the lines of its input"],
    [["-i", "-c", "2"], "error: --interactive sends the lines of its input"],
    [["--bogus"], "error: unknown option '--bogus' (see --help)"],
    [
      ["x".repeat(65_508)],
      "error: message is 65508 bytes, more than the 65507 a UDP datagram can carry",
    ],
    [
      ["--port", "\x1b[2J"],
      'error: --port must be an integer from 1 to 65535, not "\\x1b[2J"',
    ],
  ] as const;
  for (const [args, message] of cases) {
    await assertUsageError("client", args, message);
  }
});

test("deno task server: an address in use is exit code 1 and one line", async () => {
  const taken = listen();
  try {
    const { port } = taken.addr as Deno.NetAddr;
    const { code, stdout, stderr } = await run(
      "server",
      "--port",
      String(port),
    );
    assert.equal(code, 1);
    assert.equal(stdout, "");
    assert.equal(
      stderr,
      `error: cannot listen on 127.0.0.1:${port}: address already in use\n`,
    );
  } finally {
    taken.close();
  }
});

test("server.ts without --allow-net names the permission to grant", async () => {
  const { code, stderr } = await runDeno(
    "--unstable-net",
    "--no-prompt",
    "server.ts",
    "--port",
    "0",
  );
  assert.equal(code, 1);
  assert.match(
    stderr,
    /^error: cannot listen on 127\.0\.0\.1:0: .*--allow-net/,
  );
});

test("server.ts and client.ts without --unstable-net say that they need it", async () => {
  for (const script of ["server.ts", "client.ts"]) {
    // --no-config: else deno.json's "unstable" would supply the flag.
    const { code, stdout, stderr } = await runDeno(
      "--no-config",
      "--allow-net=127.0.0.1",
      script,
    );
    assert.equal(code, 1);
    assert.equal(stdout, "");
    assert.equal(
      stderr,
      "error: Deno.listenDatagram is unstable: run with --unstable-net\n",
    );
  }
});

test(
  "deno task server prints what it read and a summary on SIGINT, even twice",
  { ignore: NO_SIGINT },
  async () => {
    // Ctrl+C signals the script, and under `deno task` (from Deno 2.1.2) the
    // task runner passes it on as well: the script may get it twice.
    for (const launch of TASK_PASSES_SIGNALS ? [script, task] : [script]) {
      await using server = launch("server", ["--port", "0", "--echo"]);
      const port = await server.port();
      const client = listen();
      try {
        for (const text of ["one", "two", "three"]) {
          await client.send(encoder.encode(text), {
            transport: "udp",
            hostname: "127.0.0.1",
            port,
          });
          assert.equal(await receiveText(client), text); // so the server has read it
        }
      } finally {
        client.close();
      }
      server.process.kill("SIGINT");
      server.process.kill("SIGINT");
      const { code, stdout, stderr } = await server.result();
      assert.equal(code, 0, launch.name);
      const from = `Message from 127.0.0.1:${
        (client.addr as Deno.NetAddr).port
      }: `;
      assert.equal(stdout, `${from}one\n${from}two\n${from}three\n`);
      assert.equal(
        stderr,
        `Listening on 127.0.0.1:${port} (echo); Ctrl+C stops\nReceived 3 datagrams, 11 bytes\n`,
      );
    }
  },
);

test(
  "deno task server --chat reports a failed relay, keeps serving, stops on SIGTERM",
  { ignore: NO_SIGINT },
  async () => {
    await using server = script("server", ["--port", "0", "--chat"]);
    const to = {
      transport: "udp",
      hostname: "127.0.0.1",
      port: await server.port(),
    } as const;
    const [a, b] = [listen(), listen()];
    const name = (conn: Deno.DatagramConn) =>
      `127.0.0.1:${(conn.addr as Deno.NetAddr).port}`;
    try {
      await a.send(encoder.encode("a joins"), to);
      await b.send(encoder.encode("b joins"), to);
      assert.equal(await receiveText(a), `<${name(b)}> b joins`);
      // The mark makes the largest datagram too large to relay.
      await a.send(new Uint8Array(65_507), to);
      await server.waitFor(
        "stderr",
        new RegExp(`warning: cannot send to ${name(b)}: message too long\n`),
      );
      await a.send(encoder.encode("still here"), to);
      assert.equal(await receiveText(b), `<${name(a)}> still here`);
    } finally {
      a.close();
      b.close();
    }
    server.process.kill("SIGTERM");
    const { code, stdout, stderr } = await server.result();
    assert.equal(code, 0);
    assert.equal(stdout.split("\n").length, 5);
    assert.match(
      stderr,
      /\nReceived 4 datagrams, 65531 bytes; 2 chat members\n$/,
    );
  },
);

test("deno task server serves IPv6 loopback and localhost, and replies there", {
  ignore: NO_SIGINT,
}, async () => {
  for (
    const [typed, hostname] of [["[::1]", "::1"], ["localhost", "localhost"]]
  ) {
    await using server = script("server", ["-H", typed, "-p", "0", "--echo"]);
    const port = await server.port();
    const client = listen(hostname);
    try {
      await client.send(encoder.encode(hostname), {
        transport: "udp",
        hostname,
        port,
      });
      assert.equal(await receiveText(client), hostname);
    } finally {
      client.close();
    }
    server.process.kill("SIGINT");
    assert.equal((await server.result()).code, 0);
  }
});

test("deno task client sends its words, after -- too, and --wait prints the reply", async () => {
  await using server = new FakeServer();
  const port = String(server.port);
  {
    const plain = await run("client", "-p", port, "-w", "some", "words\x1b[2J");
    assert.equal(plain.code, 0);
    assert.equal(
      plain.stdout,
      `Message from 127.0.0.1:${port}: some words\\x1b[2J\n`,
    );
    assert.equal(
      plain.stderr,
      `Sending a 14-byte datagram to 127.0.0.1:${port}\n`,
    );
    const eight = await run("client", "-p", port, "8 bytes!");
    assert.equal(
      eight.stderr,
      `Sending an 8-byte datagram to 127.0.0.1:${port}\n`,
    );
    const dashed = await run(
      "client",
      "-p",
      port,
      "--wait",
      "--",
      "-v",
      "words",
    );
    assert.equal(dashed.code, 0);
    assert.equal(dashed.stdout, `Message from 127.0.0.1:${port}: -v words\n`);
    assert.deepEqual(server.texts, [
      "some words\x1b[2J",
      "8 bytes!",
      "-v words",
    ]);
  }
});

test("deno task client --wait with no reply is exit code 1 and one line", async () => {
  const silent = listen();
  try {
    const port = (silent.addr as Deno.NetAddr).port;
    const { code, stdout, stderr } = await run(
      "client",
      "-p",
      String(port),
      "-w",
      "-t",
      "100",
    );
    assert.equal(code, 1);
    assert.equal(stdout, "");
    assert.equal(
      stderr,
      `Sending a 13-byte datagram to 127.0.0.1:${port}\nerror: no reply from 127.0.0.1:${port} within 100 ms\n`,
    );
  } finally {
    silent.close();
  }
});

test("deno task client --interactive sends each line and prints what arrives", async () => {
  await using server = new FakeServer();
  {
    await using client = task("client", [
      "--interactive",
      "-p",
      String(server.port),
    ], "piped");
    const input = client.process.stdin.getWriter();
    const from = `Message from 127.0.0.1:${server.port}: `;
    await input.write(encoder.encode("one\n"));
    await client.waitFor("stdout", /: one\n/);
    await input.write(encoder.encode("\x1b[2J two\r\n"));
    await client.waitFor("stdout", /: \\x1b\[2J two\n/);
    await input.write(encoder.encode("three")); // the last line has no line end
    await input.close();
    const { code, stdout } = await client.result();
    assert.equal(code, 0);
    assert.ok(stdout.startsWith(`${from}one\n${from}\\x1b[2J two\n`), stdout);
    assert.deepEqual(await server.waitFor(3), ["one", "\x1b[2J two", "three"]);
  }
});

// The output path, with real processes and pipes.

/**
 * Sends `count` numbered datagrams from `client` to the server on `port`,
 * each after the echo of the one before: when this returns, the server has
 * read them all. Returns what was sent.
 */
async function sendEchoed(
  client: Deno.DatagramConn,
  port: number,
  count: number,
): Promise<string[]> {
  const to = { transport: "udp", hostname: "127.0.0.1", port } as const;
  // 3,000 bytes each: 40 of them overfill a pipe (64 KiB), within the
  // echoes a peer gets at once (100).
  const texts = Array.from(
    { length: count },
    (_, i) => `line ${i} of ${count}: ${"x".repeat(3000)}`,
  );
  for (const text of texts) {
    await client.send(encoder.encode(text), to);
    await receive(client);
  }
  return texts;
}

async function readAll(stream: ReadableStream<Uint8Array>): Promise<string> {
  let text = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    text += chunk;
  }
  return text;
}

test(
  "deno task server stops within 1 s while its output is stuck, and counts the lines not written",
  { ignore: NO_SIGINT },
  async () => {
    // Nobody reads the server's stdout: once the pipe is full, a write waits
    // for ever. The stop must not.
    await using server = script("server", ["--port", "0", "--echo"], {
      stdout: "hold",
    });
    const client = listen();
    let texts;
    try {
      texts = await sendEchoed(client, await server.port(), 40);
    } finally {
      client.close();
    }
    const stopping = performance.now();
    server.process.kill("SIGTERM");
    const { code, stderr } = await server.result();
    const took = performance.now() - stopping;
    assert.ok(took < 1000, `stopped in ${took} ms`);
    assert.equal(code, 1);
    const [, unwritten] = stderr.match(
      /\nReceived 40 datagrams, \d+ bytes; (\d+) lines not written: the output did not take them in time\n$/,
    ) ?? [];
    assert.ok(unwritten, stderr);
    // The lines in the pipe and the lines not written make up every line.
    const lines = (await readAll(server.process.stdout)).split("\n");
    assert.equal(lines.pop(), "");
    assert.equal(lines.length + Number(unwritten), 40);
    const from = `Message from 127.0.0.1:${
      (client.addr as Deno.NetAddr).port
    }: `;
    assert.deepEqual(
      lines,
      texts.slice(0, lines.length).map((text) => from + text),
    );
  },
);

test(
  "deno task server stops when the reader of its output goes away: a summary and exit code 141",
  { ignore: NO_SIGINT },
  async () => {
    await using server = script("server", ["--port", "0", "--echo"], {
      stdout: "hold",
    });
    const port = await server.port();
    const client = listen();
    const output = server.process.stdout.getReader();
    try {
      await sendEchoed(client, port, 1);
      const { value } = await within("a line", output.read());
      assert.match(decoder.decode(value), /^Message from .*: line 0 /);
      await output.cancel(); // the reader goes, as `head -n 1` does
      await sendEchoed(client, port, 1);
    } finally {
      client.close();
    }
    const { code, stderr } = await server.result();
    assert.equal(code, 141);
    assert.match(
      stderr,
      /^Listening on [^\n]*\nReceived 2 datagrams, 6026 bytes; the output was closed, 1 line not written\n$/,
    );
  },
);

// Whether python3 is here, to make a pipe non-blocking.
const PYTHON = await new Deno.Command("python3", {
  args: ["-c", ""],
  stdout: "null",
  stderr: "null",
}).output().then(({ success }) => success, () => false);

test(
  "deno task server loses no line when its stdout is non-blocking",
  { ignore: NO_SIGINT || !PYTHON },
  async () => {
    // The non-blocking flag belongs to the pipe, shared by every process
    // that writes to it: here python3 sets it before the server starts, as
    // another program on the same pipe might. A full pipe then fails a write
    // with WouldBlock instead of making it wait.
    const nonBlocking = 'python3 -c "import os; os.set_blocking(1, False)"';
    await using server = script("server", ["--port", "0", "--echo"], {
      stdout: "hold",
      wrapper: ["sh", "-c", `${nonBlocking} && exec "$0" "$@"`],
    });
    const client = listen();
    let texts;
    try {
      // 40 lines do not fit in the pipe: the writes meet a full pipe.
      texts = await sendEchoed(client, await server.port(), 40);
    } finally {
      client.close();
    }
    const reader = server.process.stdout
      .pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    while (text.split("\n").length <= 40) {
      const { value, done } = await within("40 lines", reader.read());
      if (done) break;
      text += value;
    }
    server.process.kill("SIGTERM");
    const { code, stderr } = await server.result();
    while (!(await reader.read()).done) text += "(more)";
    assert.equal(code, 0, stderr);
    const from = `Message from 127.0.0.1:${
      (client.addr as Deno.NetAddr).port
    }: `;
    assert.equal(text, texts.map((line) => `${from}${line}\n`).join(""));
    assert.match(stderr, /\nReceived 40 datagrams, \d+ bytes\n$/);
  },
);

// The client, as people type and pipe into it.

/** A stream that gives `chunks`, one read each. */
function streamOf(...chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return ReadableStream.from(chunks);
}

test("readLines() splits bytes into lines, strips line ends, keeps other bytes, skips lines too long", async () => {
  const long = new Uint8Array(70_000).fill(0x62);
  const input = streamOf(
    encoder.encode("one\ntw"), // a line across two reads
    encoder.encode("o\r\n\n"), // \r\n, then an empty line
    new Uint8Array([0xff, 0xc3, 0x0a]), // not UTF-8: sent as it is
    long.subarray(0, 40_000), // too long, across two reads
    long.subarray(40_000),
    encoder.encode(`\n${"c".repeat(65_507)}\r\n`), // the longest, and \r\n
    encoder.encode(`${"d".repeat(65_508)}\nlast\r`), // one too long; a last \r
  );
  const lines = [];
  for await (const line of readLines(input.getReader())) {
    lines.push(typeof line === "number" ? line : [...line]);
  }
  const bytes = (text: string) => [...encoder.encode(text)];
  assert.deepEqual(lines, [
    bytes("one"),
    bytes("two"),
    [],
    [0xff, 0xc3],
    70_000,
    bytes("c".repeat(65_507)),
    65_508,
    bytes("last"),
  ]);
});

test("deno task client takes every spelling of a loopback host, in any case", async () => {
  const cases = [
    ["localhost", ["LOCALHOST", "Localhost"]],
    ["::1", ["::1", "[::1]", "0:0:0:0:0:0:0:1", "[0:0::1]"]],
  ] as const;
  for (const [hostname, spellings] of cases) {
    await using server = new FakeServer({ hostname });
    {
      for (const typed of spellings) {
        const port = String(server.port);
        const { code, stdout, stderr } = await run(
          "client",
          ...["-H", typed, "-p", port, "-w", typed],
        );
        assert.equal(code, 0, `${typed}: ${stderr}`);
        assert.ok(stdout.endsWith(`:${port}: ${typed}\n`), stdout);
      }
    }
  }
});

test("deno task client: a host with a port, or not allowed, is one line that says what to do", async () => {
  await assertUsageError(
    "client",
    ["-H", "127.0.0.1:6789"],
    "error: --hostname takes no port: use --hostname 127.0.0.1 --port 6789 (see --help)",
  );
  await assertUsageError(
    "client",
    ["--hostname=[::1]:6789"],
    "error: --hostname takes no port: use --hostname ::1 --port 6789",
  );
  const { code, stdout, stderr } = await run("client", "-H", "NoSuch.invalid");
  assert.equal(code, 1);
  assert.equal(stdout, "");
  assert.equal(
    stderr,
    "Sending a 13-byte datagram to nosuch.invalid:6789\n" +
      "error: not allowed to send to NoSuch.invalid: run client.ts with --allow-net=nosuch.invalid\n",
  );
  // IPv6 in brackets, as --allow-net takes it, quoted for zsh.
  const v6 = await run("client", "-H", "2001:DB8::1");
  assert.equal(v6.code, 1);
  assert.equal(
    v6.stderr,
    "Sending a 13-byte datagram to [2001:db8::1]:6789\n" +
      "error: not allowed to send to 2001:DB8::1: run client.ts with '--allow-net=[2001:db8::1],[::]'\n",
  );
  // Neither task ever asks: a question at a terminal would wait for ever.
  assert.match(config.tasks.client, / --no-prompt /);
  assert.match(config.tasks.server, / --no-prompt /);
});

test("deno task client -i from a pipe prints the replies that come after the input ends", async () => {
  await using server = new FakeServer();
  {
    await using client = task("client", [
      "-i",
      "-p",
      String(server.port),
      "-t",
      "500",
    ], "piped");
    const input = client.process.stdin.getWriter();
    await input.write(new Uint8Array(70_000).fill(0x61)); // too long
    await input.write(encoder.encode("\none\ntwo\r\nthree\r"));
    await input.close();
    const { code, stdout, stderr } = await client.result();
    assert.equal(code, 0, stderr);
    const from = `Message from 127.0.0.1:${server.port}: `;
    assert.equal(stdout, `${from}one\n${from}two\n${from}three\n`);
    assert.equal(
      stderr,
      `Sending each line to 127.0.0.1:${server.port}; Ctrl+D ends\n` +
        "error: line 1 is 70000 bytes, more than the 65507 a UDP datagram can carry; not sent\n",
    );
  }
});

test("deno task client --wait prints the server's reply, not a stranger's, and counts what it ignored", async () => {
  const server = listen();
  const stranger = listen();
  try {
    const port = (server.addr as Deno.NetAddr).port;
    await using client = task("client", ["-p", String(port), "-w", "-x"]);
    const [, from] = await receive(server);
    await stranger.send(encoder.encode("fake"), from);
    await stranger.send(new Uint8Array(), from);
    await server.send(new Uint8Array([0xff, 0xfe, 0x00, 0x41]), from);
    const { code, stdout, stderr } = await client.result();
    assert.equal(code, 0, stderr);
    assert.equal(
      stdout,
      `Message from 127.0.0.1:${port} (4 bytes): ff fe 00 41\n`,
    );
    assert.equal(
      stderr,
      `Sending a 13-byte datagram to 127.0.0.1:${port}\n` +
        `Ignored 2 datagrams not from 127.0.0.1:${port}\n`,
    );
  } finally {
    server.close();
    stranger.close();
  }
});

/** Sends `text` from `conn` to `to` every few ms until `done` settles; returns how many. */
async function keepSending(
  conn: Deno.DatagramConn,
  to: Deno.Addr,
  text: string,
  done: Promise<unknown>,
): Promise<number> {
  let sent = 0;
  let finished = false;
  done.finally(() => finished = true);
  // Bounded: 10 s at most, as within() allows.
  while (!finished && sent < 2000) {
    await conn.send(encoder.encode(text), to);
    sent++;
    let timer;
    await Promise.race([
      done,
      new Promise((resolve) => timer = setTimeout(resolve, 5)),
    ]);
    clearTimeout(timer);
  }
  return sent;
}

test("deno task client -i ignores a stranger: not printed, and it does not prolong the wait", async () => {
  const server = listen();
  const stranger = listen();
  try {
    const port = (server.addr as Deno.NetAddr).port;
    await using client = task(
      "client",
      ["-i", "-p", String(port), "-t", "200"],
      "piped",
    );
    const input = client.process.stdin.getWriter();
    await input.write(encoder.encode("one\n"));
    const [data, from] = await receive(server);
    assert.equal(decoder.decode(data), "one");
    const ended = client.result();
    const strangers = keepSending(stranger, from, "noise", ended);
    await server.send(encoder.encode("reply"), from);
    const closed = performance.now();
    await input.close();
    const { code, stdout, stderr } = await ended;
    const took = performance.now() - closed;
    const count = await strangers;
    assert.equal(code, 0, stderr);
    // 200 ms of quiet from the server: the stranger's datagrams do not count.
    assert.ok(took < 900, `took ${took} ms`);
    assert.equal(stdout, `Message from 127.0.0.1:${port}: reply\n`);
    const [, ignored] = stderr.match(/\nIgnored (\d+) datagrams? not from /) ??
      [];
    assert.ok(Number(ignored) >= 1 && Number(ignored) <= count, stderr);
  } finally {
    server.close();
    stranger.close();
  }
});

test("deno task client -i stops 5 x --timeout after the input ends, however long the server talks", async () => {
  const server = listen();
  try {
    const port = (server.addr as Deno.NetAddr).port;
    await using client = task(
      "client",
      ["-i", "-p", String(port), "-t", "200"],
      "piped",
    );
    const input = client.process.stdin.getWriter();
    await input.write(encoder.encode("talk\n"));
    const [, from] = await receive(server);
    const ended = client.result();
    const talking = keepSending(server, from, "more", ended);
    const closed = performance.now();
    await input.close();
    const { code, stdout } = await ended;
    const took = performance.now() - closed;
    const count = await talking;
    assert.equal(code, 0);
    assert.ok(took >= 950 && took < 2500, `took ${took} ms`);
    const lines = stdout.split("\n").slice(0, -1);
    assert.ok(lines.length >= 10 && lines.length <= count, `${lines.length}`);
    assert.ok(lines.every((line) => line.endsWith(": more")));
  } finally {
    server.close();
  }
});

test("deno task client --rate --seq paces, numbers, and sums up on stderr, without progress when piped", async () => {
  await using server = new FakeServer({ echo: false });
  const port = String(server.port);
  const start = performance.now();
  const { code, stdout, stderr } = await run(
    "client",
    ...["-p", port, "--count", "50", "--rate", "100", "--seq", "tick"],
  );
  const took = performance.now() - start;
  assert.equal(code, 0, stderr);
  assert.equal(stdout, "");
  assert.ok(took >= 490, `took ${took} ms`);
  const [, seconds] = stderr.match(
    new RegExp(
      `^Sending a 4-byte datagram to 127\\.0\\.0\\.1:${port}, 50 times\n` +
        "Sent 50 datagrams, 391 bytes in (0\\.\\d{3}|1\\.\\d) s: \\d+/s\n$",
    ),
  ) ?? [];
  assert.ok(seconds, stderr);
  assert.ok(Number(seconds) >= 0.49 && Number(seconds) < 1.5, seconds);
  const texts = await server.waitFor(50);
  assert.deepEqual(texts, texts.map((_, i) => `#${i + 1} tick`));
});

test("deno task client -H: a name that is not a host is a usage error, in one line", async () => {
  const cases = [
    [
      "nonsense..host",
      '--hostname must be a host name or an IP address, not "nonsense..host"',
    ],
    [".x", '--hostname must be a host name or an IP address, not ".x"'],
  ];
  for (const [host, message] of cases) {
    await assertUsageError(
      "client",
      ["-H", host],
      `error: ${message} (see --help)`,
    );
  }
  // parseArgs' hint, on one line: no escaped line ends.
  for (const args of [["--count", "-1"], ["-H", "-bad"]]) {
    const { code, stderr } = await run("client", ...args);
    assert.equal(code, 2);
    assert.match(
      stderr,
      /^error: option '[^']*' argument is ambiguous: to specify an option argument starting with a dash use '--[a-z]+=-XYZ'.* \(see --help\)\n$/,
    );
    assert.doesNotMatch(stderr, /\\n/);
  }
});

test("deno task client --help shows first the command that works for a copied file", async () => {
  const { stdout } = await run("client", "--help");
  assert.match(
    stdout,
    /^Usage: deno run --unstable-net --no-prompt '--allow-net=[^']*' client\.ts /,
  );
});

test(
  "deno task client on macOS refuses a message over 9,216 bytes, and names the sysctl",
  {
    ignore: Deno.build.os !== "darwin",
  },
  async () => {
    const { code, stderr } = await run("client", "x".repeat(9217));
    assert.equal(code, 1);
    assert.match(
      stderr,
      /error: .*9217 bytes, more than the 9216 macOS sends by default: raise it with sudo sysctl -w net\.inet\.udp\.maxdgram=65535\n$/,
    );
  },
);

// At a terminal: python3's pty module gives the client a real terminal, and
// types into it. Lines go from the script to the test on its stdout.
const PTY_SCRIPT = `
import os, pty, sys, time, select, json
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
screen = b""
def until(pattern):
    global screen
    end = time.monotonic() + 10
    while pattern not in screen:
        left = end - time.monotonic()
        ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        data = os.read(fd, 4096) if ready else b""
        if not data:
            print(json.dumps({"error": repr(pattern), "screen": screen.decode()}))
            sys.exit(1)
        screen += data
def say(word):
    print(word, flush=True)
    sys.stdin.readline()
until(b"> ")
os.write(fd, b"first\\r")
until(b"first")
os.write(fd, b"half typed")
until(b"half typed")
say("typed")
until(b"incoming")
say("printed")
os.write(fd, b"\\r")
say("entered")
os.write(fd, b"\\x04")
try:
    while data := os.read(fd, 4096):
        screen += data
except OSError:
    pass
status = os.waitpid(pid, 0)[1]
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "screen": screen.decode()}))
`;

/** The lines a terminal shows for `output`: \r, \x1b[K, \x1b[0J and \x1b[nG (and \x1b[nC) applied. */
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
      else if (command === "C") column += Number(number || 1);
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

test(
  "deno task client -i at a terminal prints what arrives above the line being typed",
  {
    ignore: !PYTHON || Deno.build.os === "windows",
  },
  async () => {
    const server = listen();
    try {
      const port = (server.addr as Deno.NetAddr).port;
      await using typist = new Task([
        ...taskArgs("client"),
        ...["-i", "-p", String(port)],
      ], { stdin: "piped", wrapper: ["python3", "-c", PTY_SCRIPT] });
      const answer = typist.process.stdin.getWriter();
      const [first, from] = await receive(server);
      assert.equal(decoder.decode(first), "first");
      await typist.waitFor("stdout", /^typed\n/m);
      await answer.write(encoder.encode("\n"));
      await server.send(encoder.encode("incoming"), from);
      await typist.waitFor("stdout", /^printed\n/m);
      await answer.write(encoder.encode("\n"));
      // Enter sends what was typed, whole.
      assert.equal(await receiveText(server), "half typed");
      await typist.waitFor("stdout", /^entered\n/m);
      await answer.write(encoder.encode("\n"));
      await answer.close();
      const { stdout } = await typist.result();
      const { code, screen } = JSON.parse(stdout.split("\n").at(-2)!);
      assert.equal(code, 0, screen);
      const lines = render(screen);
      const at = lines.findIndex((line) => line.includes("incoming"));
      assert.equal(
        lines[at],
        `Message from 127.0.0.1:${port}: incoming`,
        screen,
      );
      assert.equal(lines[at + 1], "> half typed", screen);
      assert.deepEqual(lines.slice(-2), ["> ", ""], screen);
    } finally {
      server.close();
    }
  },
);

// Runs a command in a pseudo-terminal; prints its exit code and screen.
const PTY_RUN = `
import os, pty, sys, json
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
screen = b""
try:
    while data := os.read(fd, 4096):
        screen += data
except OSError:
    pass
status = os.waitpid(pid, 0)[1]
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "screen": screen.decode()}))
`;

test(
  "deno task client at a terminal shows the progress of a long send on one line",
  {
    ignore: !PYTHON || Deno.build.os === "windows",
  },
  async () => {
    await using server = new FakeServer({ echo: false });
    await using child = new Task([
      ...taskArgs("client"),
      ...["-p", String(server.port), "-c", "300", "-r", "500"],
    ], { wrapper: ["python3", "-c", PTY_RUN] });
    const { stdout } = await child.result();
    const { code, screen } = JSON.parse(stdout);
    assert.equal(code, 0, screen);
    // Redrawn in place, at most 4 times a second: 0.6 s, so 1 or 2 times.
    const shown = screen.match(/\rSent \d+ of 300/g) ?? [];
    assert.ok(shown.length >= 1 && shown.length <= 3, screen);
    const lines = render(screen);
    assert.match(
      lines.at(-2)!,
      /^Sent 300 datagrams, 3,900 bytes in 0\.\d{3} s: \d+\/s$/,
    );
    assert.equal((await server.waitFor(300)).length, 300);
  },
);

test("deno task client ends with exit code 141 when the reader of its output goes away", async () => {
  const server = listen();
  try {
    const port = String((server.addr as Deno.NetAddr).port);
    await using client = script("client", ["-p", port, "-w"], {
      stdout: "hold",
    });
    const [data, from] = await receive(server);
    await client.process.stdout.cancel(); // before the reply comes
    await server.send(data, from);
    const { code, stderr } = await client.result();
    assert.equal(code, 141);
    assert.equal(stderr, `Sending a 13-byte datagram to 127.0.0.1:${port}\n`);
  } finally {
    server.close();
  }
});

// A hostile network: any bytes, from any claimed address.

const udp = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "udp",
  hostname,
  port,
});

test("Replies refuses the server's own address, port 0 and the well-known ports", () => {
  const replies = new Replies(udp("127.0.0.1", 6789));
  assert.equal(
    replies.refuses(udp("127.0.0.1", 6789)),
    "the server's own address",
  );
  for (const port of [0, 7, 13, 17, 19, 37, 53, 123, 1023]) {
    assert.equal(
      replies.refuses(udp("127.0.0.1", port)),
      "a well-known port",
      `${port}`,
    );
  }
  assert.equal(replies.refuses(udp("127.0.0.1", 1024)), undefined);
  assert.equal(
    replies.refuses(udp("127.0.0.2", 6789)),
    undefined,
    "another host",
  );
  // On every address, 6789 is its own on each of them.
  const anywhere = new Replies(udp("0.0.0.0", 6789));
  assert.equal(
    anywhere.refuses(udp("10.0.0.5", 6789)),
    "the server's own address",
  );
  assert.equal(
    new Replies(udp("::", 6789)).refuses(udp("::1", 6789)),
    "the server's own address",
  );
});

test("Replies allows 100 replies to an address at once, then 50 a second", () => {
  const replies = new Replies(udp("127.0.0.1", 6789));
  const data = new Uint8Array([1]);
  const to = udp("127.0.0.1", 5000);
  let sent = 0;
  for (let i = 0; i < 500; i++) sent += replies.take(to, data, 0) ? 1 : 0;
  assert.equal(sent, 100);
  for (let i = 0; i < 500; i++) sent += replies.take(to, data, 1000) ? 1 : 0;
  assert.equal(sent, 150);
  assert.ok(
    replies.take(udp("127.0.0.1", 5001), data, 1000),
    "others are not held back",
  );
});

test("serve() with echo stops answering a peer that sends back what it was sent: an echo loop", async () => {
  const server = await start({ echo: true });
  // An echo service: it sends back every datagram it gets.
  const service = listen();
  try {
    await service.send(encoder.encode("loop"), server.addr);
    for (let i = 0; i < 2; i++) {
      const [data] = await receive(service);
      assert.equal(decoder.decode(data), "loop");
      await service.send(data, server.addr);
    }
    // Something new is answered again; had the loop gone on, a third "loop"
    // would arrive first.
    await service.send(encoder.encode("new"), server.addr);
    assert.equal(await receiveText(service), "new");
    assert.equal((await server.output.waitForLines(4)).length, 4);
  } finally {
    service.close();
    await server.stop();
  }
});

test("serve() with a chat does not relay a datagram that is a relay already", async () => {
  const server = await start({ chat: new ChatRoom() });
  const [member, other] = [listen(), listen()];
  try {
    await member.send(encoder.encode("here"), server.addr);
    // As another chat server relays: marked. Relayed again, it would loop.
    await other.send(encoder.encode("<127.0.0.1:5> relayed"), server.addr);
    await other.send(encoder.encode("<[::1]:5> relayed"), server.addr);
    await other.send(encoder.encode("plain"), server.addr);
    const port = (other.addr as Deno.NetAddr).port;
    assert.equal(await receiveText(member), `<127.0.0.1:${port}> plain`);
    const lines = await server.output.waitForLines(4);
    assert.match(
      lines[1],
      /: <127\.0\.0\.1:5> relayed$/,
      "printed all the same",
    );
  } finally {
    member.close();
    other.close();
    await server.stop();
  }
});

test("printable() of client.ts escapes as server.ts does", () => {
  const hostile = "\x1b[2J\r\n\u2028\u2029\u202e\u2066\ufeff\\x1b \u0085 é";
  assert.equal(
    printable(hostile),
    "\\x1b[2J\\r\\n\\u2028\\u2029\\u202e\\u2066\\ufeff\\\\x1b \\x85 é",
  );
  assert.equal(clientPrintable(hostile), printable(hostile));
});

test("deno task server: a hostile host name is printed escaped, on one line", async () => {
  const { code, stdout, stderr } = await run(
    "server",
    "-H",
    "\x1b[2J\nhost",
  );
  assert.equal(code, 2);
  assert.equal(stdout, "");
  assert.equal(stderr.split("\n").length, 2, stderr);
  assert.ok(stderr.includes("\\x1b[2J\\nhost"), stderr);
  assert.doesNotMatch(stderr.slice(0, -1), /\p{Cc}/u);
});

// What the help and the README promise, pinned.

/** Runs `fn` with console.error collected instead of printed. */
async function collectErrors(fn: () => unknown): Promise<string[]> {
  const errors: string[] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => errors.push(args.join(" "));
  try {
    await fn();
  } finally {
    console.error = original;
  }
  return errors;
}

test("skipReset() lets the loop go on after Windows' ConnectionReset, and nothing else", async () => {
  const errors = await collectErrors(() =>
    skipReset(
      new Deno.errors.ConnectionReset("Connection reset (os error 10054)"),
    )
  );
  assert.equal(errors.length, 1);
  assert.match(errors[0], /^warning: connection reset/);
  assert.throws(
    () => skipReset(new Deno.errors.PermissionDenied("no")),
    Deno.errors.PermissionDenied,
  );
});

test("reply() ends quietly on a closed socket, and reports any other failure", async () => {
  const failing = (error: Error) =>
    ({ send: () => Promise.reject(error) }) as unknown as Deno.DatagramConn;
  const to = udp("127.0.0.1", 5000);
  const data = new Uint8Array(1);
  assert.deepEqual(
    await collectErrors(() =>
      reply(failing(new Deno.errors.BadResource("closed")), data, to)
    ),
    [],
  );
  const errors = await collectErrors(() =>
    reply(
      failing(new Deno.errors.NotCapable('Requires net access to "x"')),
      data,
      to,
    )
  );
  assert.equal(errors.length, 1);
  assert.match(
    errors[0],
    /^warning: cannot send to 127\.0\.0\.1:5000: requires net access/,
  );
});

test("deno task server and client take port 65535, and not 65536", async () => {
  for (const name of ["server", "client"] as const) {
    assert.equal((await run(name, "-p", "65535", "-h")).code, 0, name);
    assert.equal((await run(name, "-p", "65536", "-h")).code, 2, name);
  }
});

test(
  "the run line in each file's header works for the file alone, as the help says",
  {
    ignore: NO_SIGINT,
  },
  async () => {
    const server = await start({ echo: true });
    try {
      for (const name of ["server", "client"] as const) {
        const source = await Deno.readTextFile(new URL(`${name}.ts`, ROOT));
        const [line] = source.match(/deno run --unstable-net [^\n]*\.ts/) ?? [];
        assert.ok(line, `${name}.ts has a run line`);
        const help = await run(name, "--help");
        assert.ok(
          help.stdout.includes(line),
          `--help of ${name} shows ${line}`,
        );
        const [, ...args] = line.match(/'[^']*'|\S+/g)!.map((word) =>
          word.replace(/^'(.*)'$/, "$1")
        );
        // --no-config: as a copy of the file alone, without deno.json.
        args.splice(1, 0, "--no-config");
        if (name === "client") {
          const { code, stdout } = await runDeno(
            ...args.slice(1),
            "-p",
            String(server.port),
            "-w",
          );
          assert.equal(code, 0);
          assert.match(stdout, /: Hello, Server\n$/);
        } else {
          await using copy = new Task([...args, "-p", "0", "--echo"]);
          const port = await copy.port();
          const client = listen();
          try {
            await client.send(encoder.encode("copied"), udp("127.0.0.1", port));
            assert.equal(await receiveText(client), "copied");
          } finally {
            client.close();
          }
          copy.process.kill("SIGINT");
          assert.equal((await copy.result()).code, 0);
        }
      }
    } finally {
      await server.stop();
    }
  },
);
