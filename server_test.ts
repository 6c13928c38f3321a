// Tests for server.ts and client.ts: real sockets on loopback, port 0, and
// events (a line printed, a datagram received, a process ended), never sleeps.
// Behaviour is tested in process; the command lines by running the tasks.
import assert from "node:assert/strict";
import {
  all,
  chat,
  ChatRoom,
  echo,
  EchoLoops,
  escapeInto,
  type Handler,
  hexInto,
  MARKER_ROOM,
  MAX_EXPANSION,
  Output,
  printable,
  Printer,
  RateLimit,
  refusal,
  sequenceNumber,
  SequenceStats,
  serve,
  type Warn,
  Warnings,
  type Writer,
} from "./server.ts";
import {
  DEFAULT_MESSAGE,
  escapeInto as clientEscapeInto,
  hexInto as clientHexInto,
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
 * `promise`, or a failure after `ms` (10 s): a test that waits for something
 * that never comes fails instead of hanging. Nothing here waits for this timer.
 */
async function within<T>(
  what: string,
  promise: Promise<T>,
  ms = 10_000,
): Promise<T> {
  let timer;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`timed out waiting for ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** One turn of the event loop: every callback already due runs first. */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * A `Writer` that keeps what is written, and tells when lines arrive. It
 * takes at most `takes` bytes a write, and none while `held`.
 */
class Collector implements Writer {
  text = "";
  /** What each write was offered. */
  writes: Uint8Array[] = [];
  held: Promise<void> | undefined;
  #arrived = Promise.withResolvers<void>();

  constructor(readonly takes = Infinity) {}

  async write(data: Uint8Array): Promise<number> {
    this.writes.push(data.slice());
    await this.held;
    const taken = data.subarray(0, this.takes);
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

const udp = (hostname: string, port: number): Deno.NetAddr => ({
  transport: "udp",
  hostname,
  port,
});

/** A `Warn` that collects each warning as `kind: text`. */
function collectWarnings(): { warnings: string[]; warn: Warn } {
  const warnings: string[] = [];
  return { warnings, warn: (kind, text) => warnings.push(`${kind}: ${text}`) };
}

interface StartOptions {
  hostname?: string;
  /** Echo each datagram, as `--echo`. */
  echo?: boolean;
  /** Relay in this chat, as `--chat`. */
  chat?: ChatRoom;
  /** Where the lines go (default: a new `Collector`). */
  output?: Collector;
}

/**
 * Runs `serve()` on a free port with a `Printer` on a `Collector`, as main()
 * wires it; `stop()` aborts it, writes the lines and returns the counts.
 */
async function start(options: StartOptions = {}) {
  const controller = new AbortController();
  const collector = options.output ?? new Collector();
  const output = new Output(collector);
  const printer = new Printer(output);
  const { warnings, warn } = collectWarnings();
  const handlers = [printer.print];
  if (options.echo) handlers.push(echo(warn));
  if (options.chat) handlers.push(chat(options.chat, warn));
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const served = serve({
    hostname: options.hostname,
    port: 0,
    signal: controller.signal,
    onListen: listening.resolve,
  }, all(...handlers));
  const addr = await Promise.race([
    listening.promise,
    served.then(() => {
      throw new Error("serve() ended before it listened");
    }),
  ]);
  const stop = async () => {
    controller.abort();
    await within("serve() to end", served);
    const unwritten = await output.finish(performance.now() + 10_000);
    const { datagrams, bytes } = printer;
    return { datagrams, bytes, unwritten };
  };
  return { addr, port: addr.port, output: collector, warnings, stop };
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

/** `Message from 127.0.0.1:<port of conn>: `, the prefix of its lines. */
function prefixOf(conn: Deno.DatagramConn): string {
  return `Message from 127.0.0.1:${(conn.addr as Deno.NetAddr).port}: `;
}

/** `127.0.0.1:<port of conn>`, as marks and warnings name it. */
function keyOf(conn: Deno.DatagramConn): string {
  return `127.0.0.1:${(conn.addr as Deno.NetAddr).port}`;
}

// serve(): the tutorial's loop.

test("serve() prints the tutorial's message as a line that names its sender", async () => {
  const server = await start();
  const client = listen();
  try {
    await client.send(encoder.encode(DEFAULT_MESSAGE), server.addr);
    assert.deepEqual(await server.output.waitForLines(1), [
      `${prefixOf(client)}Hello, Server`,
    ]);
  } finally {
    client.close();
    assert.deepEqual(await server.stop(), {
      datagrams: 1,
      bytes: 13,
      unwritten: 0,
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
      const prefix = prefixOf(client);
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

test("serve() receives a 65,507-byte datagram whole", async () => {
  const server = await start();
  const client = listen();
  const text = "0123456789abcdef".repeat(4096).slice(0, 65_507);
  try {
    await client.send(encoder.encode(text), server.addr);
    assert.deepEqual(await server.output.waitForLines(1), [
      prefixOf(client) + text,
    ]);
  } finally {
    client.close();
    assert.deepEqual(await server.stop(), {
      datagrams: 1,
      bytes: 65_507,
      unwritten: 0,
    });
  }
});

test("serve() with Printer doubles a backslash, and escapes an ESC byte", async () => {
  const server = await start();
  const client = listen();
  try {
    await client.send(encoder.encode("C:\\temp"), server.addr);
    await client.send(encoder.encode("Hi\x1b[2J there"), server.addr);
    assert.deepEqual(await server.output.waitForLines(2), [
      `${prefixOf(client)}C:\\\\temp`,
      `${prefixOf(client)}Hi\\x1b[2J there`,
    ]);
  } finally {
    client.close();
    await server.stop();
  }
});

test("serve() ends when its signal aborts, and the port is free again", async () => {
  const server = await start();
  assert.deepEqual(await server.stop(), {
    datagrams: 0,
    bytes: 0,
    unwritten: 0,
  });
  const again = Deno.listenDatagram({
    transport: "udp",
    hostname: "127.0.0.1",
    port: server.port,
  });
  again.close();
});

test(
  "serve() with a signal aborted already binds, calls onListen, and ends at once",
  async () => {
    let port = 0;
    const handled: Uint8Array[] = [];
    await within(
      "serve() to end",
      serve({
        port: 0,
        signal: AbortSignal.abort(),
        onListen(addr) {
          port = addr.port;
        },
      }, (data) => void handled.push(data)),
      2000,
    );
    assert.notEqual(port, 0);
    assert.equal(handled.length, 0);
    Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port })
      .close();
  },
);

test("serve() closes its socket when onListen throws, and rethrows", async () => {
  let port = 0;
  await assert.rejects(
    within(
      "serve() to end",
      serve({
        port: 0,
        signal: new AbortController().signal,
        onListen(addr) {
          port = addr.port;
          throw new Error("onListen failed");
        },
      }, () => {}),
    ),
    new Error("onListen failed"),
  );
  // The resource sanitizer would also see a socket left open.
  Deno.listenDatagram({ transport: "udp", hostname: "127.0.0.1", port })
    .close();
});

test("serve() reads no further datagram while the handler's promise is pending", async () => {
  const controller = new AbortController();
  const release = Promise.withResolvers<void>();
  const handled: string[] = [];
  let arrived = Promise.withResolvers<void>();
  let receives = 0;
  const handler: Handler = (data, _from, conn) => {
    handled.push(decoder.decode(data));
    arrived.resolve();
    if (handled.length > 1) return;
    // Count the loop's next calls of receive() on the server's socket.
    const receive = conn.receive.bind(conn);
    conn.receive = (buffer) => {
      receives++;
      return receive(buffer);
    };
    return release.promise;
  };
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const served = serve({
    port: 0,
    signal: controller.signal,
    onListen: listening.resolve,
  }, handler);
  const client = listen();
  try {
    const addr = await within("onListen", listening.promise);
    await client.send(encoder.encode("one"), addr);
    await client.send(encoder.encode("two"), addr); // queued meanwhile
    await within("the first datagram", arrived.promise);
    arrived = Promise.withResolvers();
    // Had serve() not waited, it would have called receive() again at once,
    // and found "two" queued.
    for (let i = 0; i < 5; i++) await nextTurn();
    assert.equal(receives, 0, "receive() called while the handler was busy");
    assert.deepEqual(handled, ["one"]);
    release.resolve();
    await within("the second datagram", arrived.promise);
    assert.deepEqual(handled, ["one", "two"]);
    assert.ok(receives >= 1);
  } finally {
    client.close();
    release.resolve();
    controller.abort();
    await within("serve() to end", served);
  }
});

test(
  "serve() ends when its signal aborts, even while a full output holds it up",
  async () => {
    const collector = new Collector();
    const release = Promise.withResolvers<void>();
    collector.held = release.promise; // stdout stuck: nothing is written
    const output = new Output(collector);
    const printer = new Printer(output);
    const controller = new AbortController();
    let arrived = Promise.withResolvers<boolean>();
    const listening = Promise.withResolvers<Deno.NetAddr>();
    const served = serve({
      port: 0,
      signal: controller.signal,
      onListen: listening.resolve,
    }, (data, from, conn) => {
      const pending = printer.print(data, from, conn);
      arrived.resolve(pending !== undefined);
      return pending;
    });
    const client = listen();
    try {
      const addr = await within("onListen", listening.promise);
      const data = new Uint8Array(65_507).fill(0x61);
      let full = false;
      for (let i = 0; i < 40 && !full; i++) {
        await client.send(data, addr);
        full = await within("a datagram", arrived.promise);
        arrived = Promise.withResolvers();
      }
      assert.ok(full, "the output never became full");
      // As Ctrl+C does: the stop must not wait for the output.
      controller.abort();
      await within("serve() to end", served, 2000);
    } finally {
      client.close();
      controller.abort();
      release.resolve();
      await within("serve() to end", served);
      await finish(output);
    }
  },
);

test("serve() hands the handler a view into one buffer that the next datagram overwrites", async () => {
  // Documented: `data` is valid until the handler returns, or until the
  // promise it returns settles; a handler that keeps it must copy it.
  const controller = new AbortController();
  const views: Uint8Array[] = [];
  const copies: string[] = [];
  let arrived = Promise.withResolvers<void>();
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const served = serve({
    port: 0,
    signal: controller.signal,
    onListen: listening.resolve,
  }, (data) => {
    views.push(data);
    copies.push(decoder.decode(data));
    arrived.resolve();
  });
  const client = listen();
  try {
    const addr = await within("onListen", listening.promise);
    for (const text of ["first", "2nd"]) {
      await client.send(encoder.encode(text), addr);
      await within("a datagram", arrived.promise);
      arrived = Promise.withResolvers();
    }
    assert.deepEqual(copies, ["first", "2nd"]);
    assert.equal(views[0].buffer, views[1].buffer, "the same buffer");
    assert.equal(views[0].byteOffset, 0);
    assert.ok(views[0].buffer.byteLength >= 65_507, "room for the largest");
    // The old view now shows the new datagram's bytes: "2nd" over "fi".
    assert.equal(decoder.decode(views[0]), "2ndst");
  } finally {
    client.close();
    controller.abort();
    await within("serve() to end", served);
  }
});

// Output: lines written in the background, never blocking.

/** `count` numbered lines of 10 to 109 bytes, and all of them as written. */
function numbered(count: number) {
  const texts = Array.from(
    { length: count },
    (_, i) => `${i} ${"x".repeat(i % 100)}`,
  );
  return { texts, written: texts.map((text) => `${text}\n`).join("") };
}

/** Writes every line waiting, within 10 s: what `finish()` returns, the lines not written. */
function finish(output: Output): Promise<number> {
  return output.finish(performance.now() + 10_000);
}

test("Output writes whole lines, 4096 bytes at most, and the rest after a partial write", async () => {
  const collector = new Collector(1000); // takes 1000 bytes a write at most
  const output = new Output(collector);
  const { texts, written } = numbered(2000);
  for (const text of texts) output.print(text);
  assert.equal(await finish(output), 0);
  assert.equal(collector.text, written);
  for (const offered of collector.writes) {
    assert.ok(offered.length <= 4096, `${offered.length} bytes in one write`);
    assert.equal(offered.at(-1), 0x0a, "a write ends at a line's end");
  }
  assert.ok(collector.writes.length > written.length / 1000, "partial writes");
});

test("Output writes a line longer than a chunk whole, in pieces: up to 32 KiB without a line end, 4096 bytes with one", async () => {
  const collector = new Collector();
  const output = new Output(collector);
  const long = "0123456789".repeat(10_000); // 100,000 bytes
  output.print("before");
  output.print(long);
  output.print("after");
  assert.equal(await finish(output), 0);
  assert.equal(collector.text, `before\n${long}\nafter\n`);
  for (const offered of collector.writes) {
    const ends = offered.includes(0x0a);
    assert.ok(offered.length <= (ends ? 4096 : 32_768), `${offered.length}`);
    if (ends) {
      assert.equal(offered.at(-1), 0x0a, "a write ends at a line's end");
    }
  }
  // Not 25 pieces of 4096 bytes: a write costs a hand-over to another thread.
  assert.ok(collector.writes.length <= 8, `${collector.writes.length} writes`);
});

test("Output tries again after WouldBlock and Interrupted, and loses nothing", async () => {
  const collector = new Collector();
  let calls = 0;
  const output = new Output({
    write(data) {
      calls++;
      if (calls % 3 === 1) throw new Deno.errors.WouldBlock("would block");
      if (calls % 3 === 2) throw new Deno.errors.Interrupted("interrupted");
      return collector.write(data);
    },
  });
  const { texts, written } = numbered(3000);
  for (const text of texts) output.print(text);
  assert.equal(await finish(output), 0);
  assert.equal(collector.text, written);
  assert.equal(output.error, undefined);
  assert.ok(calls >= 3 * Math.ceil(written.length / 4096), `${calls} calls`);
});

test("Output stops at a broken pipe, and counts the lines not written", async () => {
  const collector = new Collector();
  const failures: Error[] = [];
  let after = 0;
  const output = new Output({
    write(data) {
      if (!collector.text) return collector.write(data);
      if (failures.length > 0) after++;
      throw new Deno.errors.BrokenPipe("Broken pipe (os error 32)");
    },
  }, (error) => failures.push(error));
  const { texts } = numbered(1000);
  for (const text of texts) output.print(text);
  const unwritten = await finish(output);
  assert.ok(output.error instanceof Deno.errors.BrokenPipe);
  assert.deepEqual(failures, [output.error]);
  assert.equal(after, 0, "no write after the failure");
  assert.ok(unwritten > 0);
  assert.equal(collector.lines.length + unwritten, 1000);
});

test("Output.finish() gives up at its deadline, and counts what is left", async () => {
  const collector = new Collector();
  collector.held = new Promise(() => {}); // a writer that never returns
  const output = new Output(collector);
  const { texts } = numbered(500);
  for (const text of texts) output.print(text);
  const started = performance.now();
  assert.equal(await output.finish(started + 50), 500);
  const took = performance.now() - started;
  assert.ok(took < 1000, `finish() took ${took} ms`);
});

test("Output writes nothing after finish(), and leaves no timer", async () => {
  // A writer that is always full: the output tries again and again. The op
  // sanitizer fails this test if a timer is left when it ends.
  let writes = 0;
  let wrote = Promise.withResolvers<void>();
  const output = new Output({
    write() {
      writes++;
      wrote.resolve();
      throw new Deno.errors.WouldBlock("would block");
    },
  });
  output.print("never written");
  for (let i = 0; i < 3; i++) {
    await within("a write", wrote.promise);
    wrote = Promise.withResolvers();
  }
  assert.equal(await output.finish(performance.now() + 20), 1);
  const count = writes;
  output.print("after the end"); // must not start anything either
  for (let i = 0; i < 5; i++) await nextTurn();
  assert.equal(writes, count, "a write after finish()");
});

test("Output is full at 1 MiB waiting, drops diagnostics then, and has room once a chunk is written", async () => {
  const collector = new Collector();
  const release = Promise.withResolvers<void>();
  collector.held = release.promise;
  const output = new Output(collector);
  // 262,144-byte lines, as a 65,507-byte datagram escaped 4x makes: full at
  // 1 MiB of bytes, not at so many chunks.
  const line = "a".repeat(262_144);
  let printed = 0;
  while (!output.full && printed < 100) {
    output.print(line);
    printed++;
  }
  // Four lines make 1 MiB: full after the fourth or the fifth (as chunks
  // fill), long before 16.
  assert.ok(printed === 4 || printed === 5, `full after ${printed} lines`);
  output.print("dropped");
  assert.equal(output.dropped, 1);
  const room = output.room();
  release.resolve();
  await within("room", room);
  assert.equal(output.full, false);
  assert.equal(await finish(output), 0);
  assert.deepEqual(
    collector.lines.map((text) => text.length),
    Array(printed).fill(262_144),
  );
});

test("Output writes a line within a moment, not when more lines come", async () => {
  const collector = new Collector();
  const output = new Output(collector);
  const started = performance.now();
  output.print("alone");
  await collector.waitForLines(1);
  const took = performance.now() - started;
  // 10 ms by design; 500 ms leaves room for a slow machine.
  assert.ok(took < 500, `written after ${took} ms`);
  assert.equal(await finish(output), 0);
});

// Printer: one line per datagram.

/** Prints each of `datagrams` (`[from, bytes]`) with a Printer, and returns the lines. */
async function printed(
  datagrams: [Deno.NetAddr, number[] | string][],
  options: { hex?: boolean } = {},
) {
  const collector = new Collector();
  const output = new Output(collector);
  const printer = new Printer(output, options);
  const conn = {} as Deno.DatagramConn; // not used to print
  for (const [from, data] of datagrams) {
    const bytes = typeof data === "string"
      ? encoder.encode(data)
      : new Uint8Array(data);
    assert.equal(printer.print(bytes, from, conn), undefined);
  }
  assert.equal(await finish(output), 0);
  return { lines: collector.lines, printer };
}

test("Printer prints each sender's prefix, also when senders alternate", async () => {
  const [a, b, v6] = [
    udp("127.0.0.1", 5),
    udp("127.0.0.1", 6),
    udp("::1", 5),
  ];
  const { lines, printer } = await printed([
    [a, "one"],
    [b, "two"],
    [a, "three"],
    [v6, "four"],
    [v6, "five"],
    [a, ""],
  ]);
  assert.deepEqual(lines, [
    "Message from 127.0.0.1:5: one",
    "Message from 127.0.0.1:6: two",
    "Message from 127.0.0.1:5: three",
    "Message from [::1]:5: four",
    "Message from [::1]:5: five",
    "Message from 127.0.0.1:5: ",
  ]);
  assert.equal(printer.datagrams, 6);
  assert.equal(printer.bytes, 19);
});

test("Printer with hex prints each byte in hex, and the length", async () => {
  const { lines, printer } = await printed([
    [udp("127.0.0.1", 5), [0xff, 0xfe, 0x00, 0x41]],
    [udp("127.0.0.1", 5), [0x5c]],
    [udp("::1", 6), []],
  ], { hex: true });
  assert.deepEqual(lines, [
    "Message from 127.0.0.1:5 (4 bytes): ff fe 00 41",
    "Message from 127.0.0.1:5 (1 byte): 5c",
    "Message from [::1]:6 (0 bytes): ",
  ]);
  assert.equal(printer.datagrams, 3);
  assert.equal(printer.bytes, 5);
});

test("Printer.print returns a promise only when the output is full, which resolves once it has room", async () => {
  const collector = new Collector();
  const release = Promise.withResolvers<void>();
  collector.held = release.promise;
  const output = new Output(collector);
  const printer = new Printer(output);
  const data = new Uint8Array(65_507).fill(0x61);
  const conn = {} as Deno.DatagramConn;
  let pending;
  let count = 0;
  while (!pending && count < 100) {
    pending = printer.print(data, udp("127.0.0.1", 5), conn);
    count++;
    assert.equal(output.full, pending !== undefined);
  }
  assert.ok(pending, "the output never became full");
  // 1 MiB is 16 lines of 65,534 bytes, and a little.
  assert.ok(count >= 16 && count <= 18, `${count} datagrams`);
  let settled = false;
  pending.then(() => settled = true);
  await nextTurn();
  assert.equal(settled, false, "resolved before any room was made");
  release.resolve();
  await within("room", pending);
  // Full a second time: a new wait, not the room of the first one.
  const again = Promise.withResolvers<void>();
  collector.held = again.promise;
  let second;
  for (let i = 0; !second && i < 100; i++) {
    second = printer.print(data, udp("127.0.0.1", 5), conn);
  }
  assert.ok(second, "the output never became full again");
  let settledAgain = false;
  second.then(() => settledAgain = true);
  await nextTurn();
  assert.equal(settledAgain, false, "the second wait resolved at once");
  again.resolve();
  await within("room again", second);
  assert.equal(await finish(output), 0);
});

// The defences of a server that replies: in process, with explicit clocks.

const SERVER = udp("127.0.0.1", 6789);
const REFUSED_PORT = "a port where services answer every datagram";
const OWN = "the server's own address";

/** The ports above 1023 in server.ts's REFLECTOR_PORTS, read from its text. */
async function reflectorPorts(): Promise<number[]> {
  const source = await Deno.readTextFile(new URL("server.ts", ROOT));
  const [, list] = source.match(/REFLECTOR_PORTS = new Set\(\[([^\]]*)\]/) ??
    [];
  assert.ok(list, "server.ts lists REFLECTOR_PORTS");
  return [...list.matchAll(/^\s*(\d+),/gm)].map(([, port]) => Number(port));
}

/** The number that server.ts gives its constant `name`, read from its text. */
async function constantOf(name: string): Promise<number> {
  const source = await Deno.readTextFile(new URL("server.ts", ROOT));
  const [, value] = source.match(new RegExp(`\\bconst ${name} = (\\w+);`)) ??
    [];
  assert.ok(value, `server.ts has ${name}`);
  // A number, or the name of another constant.
  return /^[\d_]+$/.test(value)
    ? Number(value.replaceAll("_", ""))
    : await constantOf(value);
}

test("refusal() refuses the server's own address, also on every address, and IPv4-mapped", () => {
  assert.equal(refusal(SERVER, SERVER), OWN);
  assert.equal(refusal(SERVER, udp("127.0.0.2", 6789)), undefined);
  assert.equal(refusal(SERVER, udp("127.0.0.1", 6790)), undefined);
  for (const anywhere of ["0.0.0.0", "::"]) {
    const self = udp(anywhere, 6789);
    for (const to of ["127.0.0.1", "10.0.0.5", "::1", "::ffff:127.0.0.1"]) {
      assert.equal(refusal(self, udp(to, 6789)), OWN, `${anywhere} ${to}`);
    }
  }
});

test("refusal() refuses port 0, ports below 1024 and the reflector ports above", async () => {
  const above = await reflectorPorts();
  // Those that issue 16 names, at least.
  for (const port of [1900, 3702, 5353, 10001, 11211]) {
    assert.ok(above.includes(port), `${port} is listed`);
  }
  for (const port of [0, 1, 7, 13, 17, 19, 37, 53, 123, 161, 1023, ...above]) {
    assert.equal(
      refusal(SERVER, udp("127.0.0.1", port)),
      REFUSED_PORT,
      `${port}`,
    );
  }
  for (const port of [1024, 6790, 51610, 65535]) {
    assert.equal(refusal(SERVER, udp("127.0.0.1", port)), undefined, `${port}`);
  }
});

test("RateLimit allows a burst at once, then its rate", () => {
  const limit = new RateLimit(100, 50);
  let taken = 0;
  for (let i = 0; i < 500; i++) taken += limit.take("a", 0) ? 1 : 0;
  assert.equal(taken, 100, "the burst");
  for (let i = 0; i < 500; i++) taken += limit.take("a", 1000) ? 1 : 0;
  assert.equal(taken, 150, "and 50 a second later");
  assert.equal(limit.take("a", 1010), false, "0.5 tokens in 10 ms");
  assert.equal(limit.take("a", 1020), true, "1 in 20 ms");
  assert.equal(limit.take("b", 1020), true, "others are not held back");
});

test("echo's rate lets a game's client at 60 datagrams a second get every echo, for a minute", async () => {
  const rate = new RateLimit(
    await constantOf("REPLY_BURST"),
    await constantOf("REPLY_RATE"),
  );
  let refused = 0;
  for (let i = 0; i < 3600; i++) {
    if (!rate.take("127.0.0.1:5000", i * 1000 / 60)) refused++;
  }
  assert.equal(refused, 0);
});

test("RateLimit keeps at most its bound of keys, however many come", () => {
  const limit = new RateLimit(1, 1, 64);
  let most = 0;
  for (let i = 0; i < 10_000; i++) {
    assert.equal(limit.take(`key ${i}`, 0), true);
    most = Math.max(most, limit.size);
  }
  assert.equal(most, 64);
  assert.equal(limit.take("key 9999", 0), false, "kept: its token is used");
  assert.equal(limit.take("key 0", 0), true, "forgotten: a full bucket");
  const byDefault = new RateLimit(1, 1);
  for (let i = 0; i < 10_000; i++) byDefault.take(`key ${i}`, 0);
  assert.ok(byDefault.size <= 4096, `${byDefault.size} keys`);
});

test("EchoLoops catches one, two, three and ten different datagrams in flight at once, the second time back", async () => {
  const limit = await constantOf("LOOP_LIMIT");
  for (const count of [1, 2, 3, 10]) {
    const loops = new EchoLoops();
    const data = Array.from(
      { length: count },
      (_, i) => encoder.encode(`forged ${i}`),
    );
    // Each is sent, and comes straight back 0.2 ms later, round after round:
    // answered until it has bounced LOOP_LIMIT times.
    let now = 0;
    data.forEach((bytes) => loops.sent("peer", bytes, now += 0.1, 0));
    for (let round = 1; round <= limit; round++) {
      for (const bytes of data) {
        const bounces = loops.bounces("peer", bytes, now += 0.1);
        assert.equal(bounces, round, `${count} in flight, round ${round}`);
        loops.sent("peer", bytes, now, bounces);
      }
    }
    assert.equal(loops.bounces("peer", encoder.encode("new"), now), 0);
    assert.equal(loops.bounces("other", data[0], now), 0, "another peer");
  }
});

test("EchoLoops lets a client repeat itself 60 times a second, or once a second", () => {
  const loops = new EchoLoops();
  const data = encoder.encode("keep-alive");
  for (let i = 0; i < 600; i++) {
    const now = i * 1000 / 60;
    assert.equal(loops.bounces("client", data, now), 0, `${i}`);
    loops.sent("client", data, now, 0);
  }
  assert.equal(loops.bounces("client", data, 11_000), 0, "a second later");
});

test("EchoLoops remembers a bounded number of peers and of datagrams each", () => {
  const loops = new EchoLoops();
  const data = encoder.encode("x");
  for (let i = 0; i < 10_000; i++) loops.sent(`peer ${i}`, data, 0, 0);
  assert.equal(loops.bounces("peer 9999", data, 1), 1);
  assert.equal(loops.bounces("peer 0", data, 1), 0, "forgotten");
  const many = Array.from({ length: 1000 }, (_, i) => encoder.encode(`${i}`));
  for (const bytes of many) loops.sent("one", bytes, 0, 0);
  assert.equal(loops.bounces("one", many[999], 1), 1);
  assert.equal(loops.bounces("one", many[0], 1), 0, "forgotten");
});

test("echo() refuses a port-0, own-address or low-port sender with a warning", async () => {
  const { warnings, warn } = collectWarnings();
  const handler = echo(warn);
  const server = listen();
  const client = listen();
  const self = server.addr as Deno.NetAddr;
  try {
    const data = encoder.encode("x");
    for (const to of [udp("127.0.0.1", 0), self, udp("127.0.0.1", 19)]) {
      await handler(data, to, server);
    }
    assert.deepEqual(warnings, [
      `refused: not replying to 127.0.0.1:0: ${REFUSED_PORT}`,
      `refused: not replying to 127.0.0.1:${self.port}: ${OWN}`,
      `refused: not replying to 127.0.0.1:19: ${REFUSED_PORT}`,
    ]);
    // An ordinary sender gets its echo.
    await handler(encoder.encode("ok"), client.addr as Deno.NetAddr, server);
    assert.equal(await receiveText(client), "ok");
  } finally {
    server.close();
    client.close();
  }
});

test("serve() with echo sends every datagram back byte for byte", async () => {
  const server = await start({ echo: true });
  const client = listen();
  const everyByte = Uint8Array.from({ length: 256 }, (_, i) => i);
  const largest = Uint8Array.from({ length: 65_507 }, (_, i) => i * 7);
  try {
    for (const data of [everyByte, new Uint8Array(), largest]) {
      await client.send(data, server.addr);
      const [echoed, from] = await receive(client);
      assertBytes(echoed, data);
      assert.equal((from as Deno.NetAddr).port, server.port);
    }
    assert.equal((await server.output.waitForLines(3)).length, 3);
  } finally {
    client.close();
    await server.stop();
  }
  assert.deepEqual(server.warnings, []);
});

test("serve() with echo answers a client that sends the same payload again at 60 a second", async () => {
  const server = await start({ echo: true });
  const client = listen();
  const data = encoder.encode("same state");
  try {
    for (let i = 0; i < 5; i++) {
      // The client's own pace, a game's 60 a second: not a wait for an
      // event, the behaviour under test. Sent again at once, it would be
      // what a reflector does (next test).
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, 17));
      await client.send(data, server.addr);
      assert.equal(await receiveText(client), "same state", `echo ${i}`);
    }
  } finally {
    client.close();
    await server.stop();
  }
  assert.deepEqual(server.warnings, []);
});

test("serve() with echo answers the same line sent three times at once twice, and says why not the third", async () => {
  const server = await start({ echo: true });
  const client = listen();
  try {
    for (let i = 0; i < 3; i++) {
      await client.send(encoder.encode("ok"), server.addr);
    }
    await client.send(encoder.encode("probe"), server.addr);
    const texts = [];
    while (texts.at(-1) !== "probe") texts.push(await receiveText(client));
    assert.deepEqual(texts, ["ok", "ok", "probe"]);
  } finally {
    client.close();
    await server.stop();
  }
  assert.deepEqual(
    server.warnings.filter((text) => text.startsWith("loop:")).map((text) =>
      text.replace(/:\d+:/, ":N:")
    ),
    [
      "loop: not replying to 127.0.0.1:N: what it sent came straight back 2 times (an echo loop)",
    ],
  );
});

test("serve() with echo stops answering a peer that sends back at once what it gets", async () => {
  const server = await start({ echo: true });
  // A reflector, as an echo service: every "loop" goes back at once. After
  // each, it sends a probe: the server handles datagrams in order, so once
  // the probe's echo comes, an echo of the "loop" before it would have come
  // first. No such echo, and the loop has died.
  const reflector = listen();
  let loops = 0;
  try {
    await reflector.send(encoder.encode("loop"), server.addr);
    while (true) {
      const text = await receiveText(reflector);
      if (text === "loop") {
        loops++;
        assert.ok(loops <= 5, "the loop goes on");
        await reflector.send(encoder.encode("loop"), server.addr);
        await reflector.send(encoder.encode(`probe ${loops}`), server.addr);
      } else if (text === `probe ${loops}`) break;
    }
  } finally {
    reflector.close();
    await server.stop();
  }
  assert.ok(
    server.warnings.some((text) =>
      text.startsWith("loop: not replying to 127.0.0.1:")
    ),
    server.warnings.join("\n"),
  );
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

/** `count` chat members' addresses and keys, from port `first` on. */
function members(count: number, first = 10_000) {
  return Array.from({ length: count }, (_, i) => {
    const addr = udp("127.0.0.1", first + i);
    return { addr, key: `127.0.0.1:${first + i}` };
  });
}

test("ChatRoom: a member's relay budget is its own, whatever the others send", async () => {
  const room = new ChatRoom();
  const [a, b] = members(2);
  const most = await constantOf("CHAT_MAX_MEMBERS");
  const flooders = members(Math.min(25, most - 2), 20_000);
  room.hear(a.key, a.addr, 0);
  room.hear(b.key, b.addr, 0);
  let heard = 0;
  // The others at 20 a second each, for 6 s; A speaks once a second.
  for (let now = 0; now < 6000; now += 50) {
    for (const flooder of flooders) room.hear(flooder.key, flooder.addr, now);
    if (now % 1000 === 0) {
      const to = room.hear(a.key, a.addr, now);
      assert.ok(Array.isArray(to), `${now}: ${to}`);
      if (to.some(({ port }) => port === b.addr.port)) heard++;
    }
  }
  assert.equal(heard, 6);
  assert.equal(room.size, flooders.length + 2);
});

test("ChatRoom: a full room never lets a newcomer push out a member heard recently", async () => {
  const room = new ChatRoom();
  const most = await constantOf("CHAT_MAX_MEMBERS");
  const keep = await constantOf("CHAT_KEEP_MS");
  const step = 1000 / await constantOf("JOIN_RATE");
  const all = members(most);
  all.forEach(({ key, addr }, i) => {
    assert.ok(Array.isArray(room.hear(key, addr, i * step)), `member ${i}`);
  });
  assert.equal(room.size, most);
  // Newcomers at 25 a second, until the first member was heard `keep` ago.
  let now = most * step;
  for (let port = 30_000; now < keep; port++, now += 40) {
    const to = room.hear(`127.0.0.1:${port}`, udp("127.0.0.1", port), now);
    assert.equal(typeof to, "string", `${now}`);
  }
  assert.equal(room.size, most);
  // The first member has been silent longer: its place may go.
  const late = udp("127.0.0.1", 29_999);
  const to = room.hear("127.0.0.1:29999", late, keep + 100);
  assert.ok(Array.isArray(to), `${to}`);
  assert.equal(to.length, most - 1);
  assert.ok(!to.some(({ port }) => port === all[0].addr.port), "0 left");
  assert.ok(to.some(({ port }) => port === all[1].addr.port), "1 stayed");
});

test("ChatRoom admits JOIN_BURST newcomers at once, then JOIN_RATE a second", async () => {
  const room = new ChatRoom();
  const burst = await constantOf("JOIN_BURST");
  const rate = await constantOf("JOIN_RATE");
  const most = await constantOf("CHAT_MAX_MEMBERS");
  const first = members(burst);
  for (const { key, addr } of first) room.hear(key, addr, 0);
  assert.equal(room.size, Math.min(burst, most));
  // Seats free, but the joins of this second are used up.
  for (const { key } of first.slice(0, 20)) room.leave(key);
  const later = members(20, 20_000);
  for (const { key, addr } of later) room.hear(key, addr, 0);
  assert.equal(room.size, burst - 20);
  for (const { key, addr } of later) room.hear(key, addr, 1000);
  assert.equal(room.size, burst - 20 + rate);
});

test("chat() drops a member whose relay fails, and warns", async () => {
  const { warnings, warn } = collectWarnings();
  const room = new ChatRoom();
  const handler = chat(room, warn);
  const server = listen();
  const [a, b] = [listen(), listen()];
  // An IPv6 member of an IPv4 socket: every send to it fails.
  const unreachable = udp("::1", 9999);
  try {
    await handler(encoder.encode("joins"), unreachable, server);
    await handler(
      encoder.encode("a joins"),
      a.addr as Deno.NetAddr,
      server,
    );
    assert.equal(room.size, 1, "the unreachable member left");
    assert.equal(warnings.length, 1, warnings.join("\n"));
    assert.match(warnings[0], /^send: cannot send to \[::1\]:9999: /);
    await handler(encoder.encode("b joins"), b.addr as Deno.NetAddr, server);
    assert.equal(await receiveText(a), `<${keyOf(b)}> b joins`);
    assert.equal(room.size, 2);
  } finally {
    for (const conn of [server, a, b]) conn.close();
  }
});

test("chat() does not relay a message too long for its mark, and says why", async () => {
  const { warnings, warn } = collectWarnings();
  const handler = chat(new ChatRoom(), warn);
  const server = listen();
  const [a, b] = [listen(), listen()];
  try {
    await handler(encoder.encode("a joins"), a.addr as Deno.NetAddr, server);
    await handler(encoder.encode("b joins"), b.addr as Deno.NetAddr, server);
    assert.equal(await receiveText(a), `<${keyOf(b)}> b joins`);
    await handler(new Uint8Array(65_500), a.addr as Deno.NetAddr, server);
    assert.deepEqual(warnings, [
      `long: not relaying for ${keyOf(a)}: 65500 bytes and the ${
        keyOf(a).length + 3
      }-byte mark are more than a datagram carries`,
    ]);
    // Had the long one gone to b, it would come first.
    await handler(encoder.encode("short"), a.addr as Deno.NetAddr, server);
    assert.equal(await receiveText(b), `<${keyOf(a)}> short`);
  } finally {
    for (const conn of [server, a, b]) conn.close();
  }
});

test("Warnings prints one line a second of each kind, and counts those held back", async () => {
  const collector = new Collector();
  const output = new Output(collector);
  const warnings = new Warnings(output);
  // Warnings reads performance.now(): set the clock here.
  const realNow = performance.now;
  let now = 1_000_000;
  performance.now = () => now;
  try {
    for (let i = 0; i < 5; i++) warnings.warn("rate", `rate ${i}`);
    warnings.warn("loop", "loop 0");
    assert.equal(warnings.held, 4);
    now += 999;
    warnings.warn("rate", "rate 5");
    assert.equal(warnings.held, 5);
    now += 1;
    warnings.warn("rate", "rate 6");
    assert.equal(warnings.held, 0);
    warnings.warn("loop", "loop 1");
    assert.equal(warnings.held, 0);
  } finally {
    performance.now = realNow;
  }
  assert.equal(await finish(output), 0);
  assert.deepEqual(collector.lines, [
    "warning: rate 0",
    "warning: loop 0",
    "warning: rate 6 (and 5 more like it before)",
    "warning: loop 1",
  ]);
});

// What the server shows: every byte, escaped so that it can be read back.

/** `escapeInto()` as a string: the text after `Message from ...: `. */
function escape(data: Uint8Array, columns?: number): string {
  const out = new Uint8Array(MAX_EXPANSION * data.length + MARKER_ROOM);
  return decoder.decode(out.subarray(0, escapeInto(data, out, 0, columns)));
}

const bytes = (...list: number[]) => new Uint8Array(list);

/** The bytes that `text` (an output of `escape()`) stands for: how a reader reads a line back. */
function unescape(text: string): Uint8Array {
  const out: number[] = [];
  const pattern =
    /\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|u\{([0-9a-f]{5,6})\}|(.))|([^\\]+)/gsuy;
  for (
    const [all, byte, bmp, astral, letter, plain] of text.matchAll(pattern)
  ) {
    if (byte) out.push(parseInt(byte, 16));
    else if (bmp || astral) {
      const char = String.fromCodePoint(parseInt(bmp ?? astral, 16));
      out.push(...encoder.encode(char));
    } else if (plain) out.push(...encoder.encode(plain));
    else {
      const short = { "\\": 0x5c, n: 0x0a, r: 0x0d, t: 0x09 }[letter];
      assert.ok(short !== undefined, `not an escape: ${all}`);
      out.push(short);
    }
  }
  const result = new Uint8Array(out);
  assert.equal(text, escape(result), "unescape() must read all of the text");
  return result;
}

/** Columns as escapeInto() counts them: 1 for ASCII, 2 for any other character. */
function width(text: string): number {
  let columns = 0;
  for (const char of text) columns += char.codePointAt(0)! < 0x80 ? 1 : 2;
  return columns;
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

/** Random datagrams: raw bytes, valid UTF-8 of every plane, and ASCII with fake escapes. */
function datagrams(count: number, seed = 17): Uint8Array[] {
  const next = random(seed);
  const planes = [[0, 0x80], [0x80, 0x800], [0x800, 0x10000], [
    0x10000,
    0x110000,
  ]];
  const pieces = ["\\", "\\x41", "\\u0041", "\\u{1f600}", "\\n", "a", " "];
  const list = [];
  for (let n = 0; n < count; n++) {
    const length = next(301);
    if (n % 3 === 0) {
      list.push(Uint8Array.from({ length }, () => next(256)));
      continue;
    }
    let text = "";
    while (text.length < length) {
      if (n % 3 === 2) text += pieces[next(pieces.length)];
      else {
        const [low, high] = planes[next(4)];
        const codePoint = low + next(high - low);
        if (codePoint < 0xd800 || codePoint > 0xdfff) {
          text += String.fromCodePoint(codePoint);
        }
      }
    }
    list.push(encoder.encode(text));
  }
  return list;
}

// What must never appear raw in a line.
const HIDDEN = /[\p{C}\p{Z}\p{Default_Ignorable_Code_Point}\ufffd]/u;

test("escapeInto() gives back the exact bytes of any datagram, with nothing hidden raw", () => {
  for (const data of datagrams(3000)) {
    const text = escape(data);
    assert.deepEqual(unescape(text), data);
    assert.ok(!HIDDEN.test(text.replaceAll(" ", "")), text);
    assert.ok(encoder.encode(text).length <= MAX_EXPANSION * data.length);
  }
});

test("escapeInto() shows bytes that are not UTF-8, controls and invisible characters as escapes", () => {
  const cases: [Uint8Array, string][] = [
    [bytes(0xff, 0xfe, 0x00, 0x41), "\\xff\\xfe\\x00A"],
    [bytes(0x80, 0x81), "\\x80\\x81"],
    [bytes(0xef, 0xbf, 0xbd), "\\ufffd"], // U+FFFD sent: not a decoding error
    [bytes(0xc2, 0x85), "\\u0085"], // C1 control NEL
    [bytes(0xc2, 0x9b), "\\u009b"], // C1 CSI: a terminal escape in itself
    [bytes(0xc0, 0xaf), "\\xc0\\xaf"], // overlong "/"
    [bytes(0xed, 0xa0, 0x80), "\\xed\\xa0\\x80"], // a surrogate
    [bytes(0xf4, 0x90, 0x80, 0x80), "\\xf4\\x90\\x80\\x80"], // > U+10FFFF
    [bytes(0x41, 0xe2, 0x82), "A\\xe2\\x82"], // cut short at the end
    [bytes(0xe2, 0x82, 0x41), "\\xe2\\x82A"], // cut short before more
    [encoder.encode("ad\u200bmin"), "ad\\u200bmin"],
    [
      encoder.encode("a\\x41\tb\r\n\x1b[2J\x7f"),
      "a\\\\x41\\tb\\r\\n\\x1b[2J\\x7f",
    ],
    [
      encoder.encode("\u00ad\u180e\u200b\u200c\u200d\u2060\u2062\u206a\u206f"),
      "\\u00ad\\u180e\\u200b\\u200c\\u200d\\u2060\\u2062\\u206a\\u206f",
    ],
    [
      encoder.encode("\ufff9\ufffb\u{e0001}\u{e007f}\ufe0f\u061c\u202e\u2066"),
      "\\ufff9\\ufffb\\u{e0001}\\u{e007f}\\ufe0f\\u061c\\u202e\\u2066",
    ],
    [
      encoder.encode("\ufeff\u00a0\u2000\u2028\u2029\u3000\u3164\ue000"),
      "\\ufeff\\u00a0\\u2000\\u2028\\u2029\\u3000\\u3164\\ue000",
    ],
    [encoder.encode("😀 漢字 café ñ مرحبا"), "😀 漢字 café ñ مرحبا"],
    [new Uint8Array(), ""],
  ];
  for (const [data, expected] of cases) {
    assert.equal(escape(data), expected);
    assert.deepEqual(unescape(expected), data);
  }
});

test("escapeInto() copies printable ASCII as it is, and writes only from `at`", () => {
  const data = Uint8Array.from({ length: 95 * 3 }, (_, i) => 0x20 + i % 95)
    .filter((byte) => byte !== 0x5c);
  const out = new Uint8Array(500).fill(0xee);
  assert.equal(escapeInto(data, out, 7), 7 + data.length);
  assert.deepEqual(out.subarray(7, 7 + data.length), data);
  assert.equal(out[6], 0xee);
  assert.equal(out[7 + data.length], 0xee);
  const worst = new Uint8Array(65_507).fill(0xff);
  const room = new Uint8Array(MAX_EXPANSION * worst.length + MARKER_ROOM);
  assert.equal(escapeInto(worst, room, 0), MAX_EXPANSION * worst.length);
});

test("escapeInto() cuts a line to the terminal's columns, with a marker no datagram can forge", () => {
  const next = random(5);
  for (const data of datagrams(3000, 99)) {
    const columns = 20 + next(200);
    const text = escape(data, columns);
    assert.ok(width(text) <= columns, `${width(text)} > ${columns}`);
    const [, shown, hidden] = text.match(/^(.*?)(?: \\\[\+(\d+) bytes\])?$/su)!;
    // Cut only between escapes and characters: what is shown reads back as
    // the first bytes of the datagram, and the count says how many follow.
    const head = unescape(shown);
    assert.deepEqual(head, data.subarray(0, head.length));
    assert.equal(data.length - head.length, Number(hidden ?? 0));
    if (hidden === undefined) assert.equal(text, escape(data));
  }
  const line = new Uint8Array(100).fill(0x61);
  assert.equal(escape(line, 100), "a".repeat(100));
  assert.equal(escape(line, 99), "a".repeat(85) + " \\[+15 bytes]");
  assert.equal(
    escape(encoder.encode("漢".repeat(20)), 39),
    "漢".repeat(13) + " \\[+21 bytes]",
  );
  assert.equal(escape(encoder.encode("x \\[+5 bytes]")), "x \\\\[+5 bytes]");
});

test("hexInto() writes each byte as two hex digits, and cuts as escapeInto() does", () => {
  const hex = (data: Uint8Array, columns?: number) => {
    const out = new Uint8Array(3 * data.length + MARKER_ROOM);
    return decoder.decode(out.subarray(0, hexInto(data, out, 0, columns)));
  };
  assert.equal(hex(bytes(0xff, 0xfe, 0x00, 0x41)), "ff fe 00 41");
  assert.equal(hex(new Uint8Array()), "");
  assert.equal(hex(new Uint8Array(10), 29), "00 00 00 00 00 00 00 00 00 00");
  assert.equal(hex(new Uint8Array(10), 28), "00 00 00 00 00 \\[+5 bytes]");
});

// --stats: what the sequence numbers tell.

/** Stats on a clock that moves on by `step` ms with each datagram. */
function statsWithClock(step = 1) {
  let now = 0;
  const stats = new SequenceStats(() => now);
  const from = udp("127.0.0.1", 5000);
  const count = (numbers: (number | string)[], sender = from) => {
    for (const n of numbers) {
      const text = typeof n === "number" ? `#${n} hello` : n;
      now += step;
      stats.count(encoder.encode(text), sender, undefined as never);
    }
  };
  return { stats, count };
}

test("sequenceNumber() reads `#<n> ` and nothing else", () => {
  const read = (text: string) => sequenceNumber(encoder.encode(text));
  assert.equal(read("#1 hi"), 1);
  assert.equal(read("#123456789 "), 123_456_789);
  for (
    const text of [
      "#0 x",
      "#01 x",
      "#1x",
      "#1",
      "# 1",
      "#-1 ",
      "#1.5 ",
      "1 ",
      "",
      "#1234567890 ",
    ]
  ) {
    assert.equal(read(text), 0, text);
  }
});

test("SequenceStats counts a gap as lost, a late number as out of order, a repeat as duplicated", () => {
  const { stats, count } = statsWithClock();
  count([1, 2, 4, 5, 3, 3, 7, 8, "plain", 10]);
  assert.deepEqual(stats.summary(), [
    "127.0.0.1:5000: 10 received, 2 lost (20.0%), 1 duplicated, 1 out of order, 1 unnumbered, 1,000/s",
  ]);
});

test("SequenceStats counts from the lowest number seen, and a clean run loses nothing", () => {
  const { stats, count } = statsWithClock(10);
  count(Array.from({ length: 1000 }, (_, i) => 501 + i));
  assert.match(
    stats.summary()[0],
    /^127\.0\.0\.1:5000: 1,000 received, 0 lost \(0\.0%\), 0 duplicated, 0 out of order, 100\/s$/,
  );
});

test("SequenceStats takes a number far from the others for a jump: one forged datagram cannot claim a billion lost", () => {
  const { stats, count } = statsWithClock();
  const real = Array.from({ length: 500 }, (_, i) => i + 1);
  count([...real.slice(0, 250), 999_999_999, ...real.slice(250)]);
  assert.match(
    stats.summary()[0],
    /: 501 received, 0 lost \(0\.0%\), 0 duplicated, 0 out of order, 2 jumps,/,
  );
  const clean = statsWithClock();
  clean.count([...Array.from({ length: 2000 }, (_, i) => i + 1), 2002]);
  assert.match(clean.stats.summary()[0], / 1 lost \(<0\.1%\),/);
});

test("SequenceStats: a number exactly a window behind is a jump, and does not take the highest's place", () => {
  const { stats, count } = statsWithClock();
  count([2000, 2000 - 1024, 2000]);
  assert.match(
    stats.summary()[0],
    /: 3 received, 0 lost \(0\.0%\), 0 duplicated, 0 out of order, 2 jumps,/,
  );
});

test("SequenceStats follows at most 1024 senders, the one heard longest ago forgotten, and keeps the total", () => {
  const { stats, count } = statsWithClock();
  const client = udp("127.0.0.1", 5000);
  for (let i = 0; i < 5000; i++) {
    count([i + 1], client); // the real client, still talking
    count(["#1 forged"], udp("127.0.0.2", 10_000 + i));
  }
  const lines = stats.summary();
  assert.equal(lines.length, 6);
  assert.match(lines[0], /^127\.0\.0\.1:5000: 5,000 received, 0 lost/);
  assert.match(lines[5], /^5,001 senders: 10,000 received, 0 lost/);
});

test("SequenceStats shows nothing when nothing came", () => {
  assert.deepEqual(new SequenceStats().summary(), []);
});

// The client.

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
  /** "hold": leave stderr unread, likewise. */
  stderr?: "read" | "hold";
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
    const {
      stdin = "null",
      stdout = "read",
      stderr = "read",
      wrapper = [],
    } = options;
    const [program, ...rest] = [...wrapper, Deno.execPath(), ...args];
    this.process = new Deno.Command(program, {
      args: rest,
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reading = [];
    if (stderr === "read") reading.push(this.#read("stderr"));
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

test("deno task server --help shows the deno run form, and lists every option with its default", async () => {
  const { code, stdout, stderr } = await run("server", "--help");
  assert.equal(code, 0);
  assert.equal(stderr, "");
  // First the form that works for a copy of the file alone, without deno.json.
  assert.ok(stdout.startsWith("Usage: deno run --unstable-net "), stdout);
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
      "--hex",
      "--echo",
      "--chat",
      `at most ${await constantOf("CHAT_MAX_MEMBERS")}`,
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
      "error: unexpected argument 'extra' (see --help)",
    ],
    [
      ["-H", "127.0.0.1:6789"],
      "error: --hostname takes no port: use --hostname 127.0.0.1 --port 6789 (see --help)",
    ],
    [
      ["--hostname=[::1]:6789"],
      "error: --hostname takes no port: use --hostname ::1 --port 6789",
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
  "deno task server --chat warns of a message too long to relay, keeps serving, stops on SIGTERM",
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
        new RegExp(
          `warning: not relaying for ${
            name(a)
          }: 65507 bytes and the 18-byte mark are more than a datagram carries\n`,
        ),
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
      /\nReceived 4 datagrams, 65,531 bytes; 2 chat members\n$/,
    );
  },
);

test(
  "deno task server --stats counts what client --seq numbered: received, lost, in order",
  {
    ignore: NO_SIGINT,
  },
  async () => {
    await using server = script("server", ["--port", "0", "--stats", "--hex"]);
    const port = String(await server.port());
    await using client = script("client", [
      "--port",
      port,
      "--count",
      "20",
      "--rate",
      "1000",
      "--seq",
      "tick",
    ]);
    const sent = await client.result();
    assert.equal(sent.code, 0);
    assert.match(
      sent.stderr,
      /\nSent 20 datagrams, 151 bytes in [\d.]+ s: [\d,]+\/s\n$/,
    );
    // #10 and #20 are the last of their lengths: all 20 have been printed.
    await server.waitFor("stdout", /\(8 bytes\): 23 32 30 20 74 69 63 6b\n/);
    server.process.kill("SIGINT");
    const { code, stdout, stderr } = await server.result();
    assert.equal(code, 0);
    assert.equal(stdout.split("\n").length, 21);
    assert.match(
      stdout,
      /^Message from 127\.0\.0\.1:\d+ \(7 bytes\): 23 31 20 74 69 63 6b\n/,
    );
    assert.match(
      stderr,
      /\nReceived 20 datagrams, 151 bytes\n127\.0\.0\.1:\d+: 20 received, 0 lost \(0\.0%\), 0 duplicated, 0 out of order, [\d,]+\/s\n$/,
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
  { long = false } = {},
): Promise<string[]> {
  const to = { transport: "udp", hostname: "127.0.0.1", port } as const;
  // 3,000 bytes each: 40 of them overfill a pipe (64 KiB), within the
  // echoes a peer gets at once (100). With `long`, every fifth is 20,000
  // control characters, an 80,000-byte line once escaped: written in pieces
  // (and all of them, 0.7 MiB, less than the server holds before it waits).
  const texts = Array.from(
    { length: count },
    (_, i) =>
      `line ${i} of ${count}: ${
        long && i % 5 === 4 ? "\x01".repeat(20_000) : "x".repeat(3000)
      }`,
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
      /\nReceived 40 datagrams, [\d,]+ bytes; (\d+) lines not written: the output did not take them in time\n$/,
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
      /^Listening on [^\n]*\nReceived 2 datagrams, 6,026 bytes; the output was closed, 1 line not written\n$/,
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
  "deno task server loses no line, long or short, when its stdout is non-blocking",
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
    // A slow reader, as a pager is: a little at a time, so that the pipe is
    // nearly full whenever the server writes, and writes are taken in part.
    const reader = server.process.stdout.getReader({ mode: "byob" });
    const decoder = new TextDecoder();
    let text = "";
    const reading = (async () => {
      while (text.split("\n").length <= 40) {
        const { value, done } = await reader.read(new Uint8Array(3000));
        if (done) break;
        text += decoder.decode(value, { stream: true });
        await new Promise((resolve) => setTimeout(resolve, 1)); // pacing
      }
    })();
    let texts;
    try {
      // 40 lines do not fit in the pipe: the writes meet a full pipe.
      texts = await sendEchoed(client, await server.port(), 40, { long: true });
      await within("40 lines", reading);
    } finally {
      client.close();
    }
    server.process.kill("SIGTERM");
    const { code, stderr } = await server.result();
    while (!(await reader.read(new Uint8Array(4096))).done) text += "(more)";
    assert.equal(code, 0, stderr);
    const from = `Message from 127.0.0.1:${
      (client.addr as Deno.NetAddr).port
    }: `;
    assert.equal(
      text,
      texts.map((line) => `${from}${printable(line)}\n`).join(""),
    );
    assert.match(stderr, /\nReceived 40 datagrams, [\d,]+ bytes\n$/);
  },
);

test(
  "deno task server keeps serving, and stops within 1 s, while its stderr is stuck",
  { ignore: NO_SIGINT || !PYTHON },
  async () => {
    // Another program on the server's stderr fills that pipe when told to
    // (a line on stdin), and nobody reads it: every write to stderr then
    // waits, as under `2>&1 | less` paused. It says "full" on stdout.
    const fill = [
      "import os, sys",
      "sys.stdin.readline()",
      "os.set_blocking(2, False)",
      "for size in (4096, 1):",
      "    try:",
      "        while True: os.write(2, b'.' * size)",
      "    except BlockingIOError: pass",
      "os.set_blocking(2, True)",
      "os.write(1, b'full\\n')",
    ].join("\n");
    await using server = script("server", ["--port", "0", "--echo"], {
      stdin: "piped",
      stderr: "hold",
      wrapper: [
        "sh",
        "-c",
        // A background command's stdin is /dev/null unless given another.
        `exec 3<&0; python3 -c "${fill}" <&3 & exec 3<&- "$0" "$@"`,
      ],
    });
    // Read as needed, never ahead (as pipeThrough() would): the rest stays
    // in the pipe.
    const errors = server.process.stderr.getReader();
    let stderr = "";
    while (!/^Listening on .*:\d+/m.test(stderr)) {
      const { value, done } = await within("Listening", errors.read());
      assert.ok(!done, stderr);
      stderr += decoder.decode(value);
    }
    const port = Number(stderr.match(/^Listening on .*:(\d+)/m)![1]);
    const input = server.process.stdin.getWriter();
    await input.write(encoder.encode("fill\n"));
    await input.close();
    await server.waitFor("stdout", /^full$/m);
    const to = udp("127.0.0.1", port);
    const [flood, probe] = [listen(), listen()];
    try {
      // More than the 100 echoes a peer gets at once: warnings, to stderr.
      for (let i = 0; i < 110; i++) {
        await flood.send(encoder.encode(`flood ${i}`), to);
      }
      // Sent after the flood, so handled after it, warnings and all.
      await probe.send(encoder.encode("probe"), to);
      assert.equal(await receiveText(probe), "probe");
    } finally {
      flood.close();
      probe.close();
    }
    await server.waitFor("stdout", /: probe\n/);
    const stopping = performance.now();
    server.process.kill("SIGINT");
    const { code, stdout } = await server.result();
    const took = performance.now() - stopping;
    assert.ok(took < 1000, `stopped in ${took} ms`);
    assert.equal(code, 0);
    assert.equal(stdout.split("\n").filter((line) => line).length, 112);
    // The pipe was stuck to the end: the summary (behind the warning that
    // waited) never got in.
    while (true) {
      const { value, done } = await within("stderr", errors.read());
      if (done) break;
      stderr += decoder.decode(value);
    }
    assert.match(stderr, /^Listening on [^\n]*\n\.{4096}/);
    assert.doesNotMatch(stderr, /Received/, stderr.slice(-300));
  },
);

test("deno task server may listen on loopback only, as deno.json grants", async () => {
  // 127.0.0.1, ::1 and localhost work (see the tests above); any other
  // address is refused by Deno, and the error names the flag to grant.
  for (const hostname of ["0.0.0.0", "::", "192.0.2.1"]) {
    const { code, stdout, stderr } = await run("server", "-H", hostname);
    assert.equal(code, 1, hostname);
    assert.equal(stdout, "");
    assert.match(stderr, /^error: cannot listen on [^\n]*--allow-net/);
  }
});

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

test("client.ts escapes and hex-dumps every datagram as server.ts does", () => {
  const hostile = "\x1b[2J\r\n\u2028\u2029\u202e\u2066\ufeff\\x1b \u0085 é";
  assert.equal(
    printable(hostile),
    "\\x1b[2J\\r\\n\\u2028\\u2029\\u202e\\u2066\\ufeff\\\\x1b \\u0085 é",
  );
  assert.equal(clientPrintable(hostile), printable(hostile));
  const next = random(3);
  for (const data of datagrams(1000, 7)) {
    const columns = next(2) ? Infinity : 20 + next(100);
    for (
      const [server, client] of [[escapeInto, clientEscapeInto], [
        hexInto,
        clientHexInto,
      ]]
    ) {
      const a = new Uint8Array(MAX_EXPANSION * data.length + MARKER_ROOM);
      const b = new Uint8Array(a.length);
      assert.deepEqual(
        b.subarray(0, client(data, b, 0, columns)),
        a.subarray(0, server(data, a, 0, columns)),
      );
    }
  }
});

test("the helpers client.ts copies from server.ts are the same code", async () => {
  const [server, client] = await Promise.all(
    ["server.ts", "client.ts"].map((file) =>
      Deno.readTextFile(new URL(file, ROOT))
    ),
  );
  // Each runs alone, so each has its own copy: they must not drift apart.
  const copied = [
    "escapeInto",
    "hexInto",
    "printable",
    "isHidden",
    "isPlain",
    "decode",
    "utf8Length",
    "writeShort",
    "writeByte",
    "writeCodePoint",
    "marker",
    "writeMarker",
    "formatAddress",
    "bracketed",
    "plural",
    "reason",
    "lowerFirst",
    "canonicalHost",
  ];
  const source = (text: string, name: string) => {
    const found = text.match(
      new RegExp(`^(?:export )?function ${name}\\b[^]*?^}$`, "m"),
    );
    assert.ok(found, `${name} is in both files`);
    return found[0].replace(/^export /, "");
  };
  for (const name of copied) {
    assert.equal(source(client, name), source(server, name), name);
  }
  // And the constants of the escaping.
  for (
    const name of [
      "MAX_EXPANSION",
      "MARKER_ROOM",
      "HIDDEN",
      "SHORT",
      "MIN_CODE_POINT",
    ]
  ) {
    const line = (text: string) =>
      text.match(new RegExp(`^(?:export )?const ${name} = .*$`, "m"))?.[0]
        .replace(/^export /, "");
    assert.equal(line(client), line(server), name);
  }
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

test("the README quotes the tutorial's code as it is in server.ts and client.ts", async () => {
  const [readme, server, client] = await Promise.all(
    ["README.md", "server.ts", "client.ts"].map((file) =>
      Deno.readTextFile(new URL(file, ROOT))
    ),
  );
  const start = readme.indexOf("## The Python tutorial beside the Deno code");
  const end = readme.indexOf("### Beyond the tutorial");
  assert.ok(start >= 0 && end > start, "the README has the walk-through");
  const blocks = [...readme.slice(start, end).matchAll(/```ts\n(.*?)```/gs)]
    .map(([, code]) => code)
    .filter((code) => !code.includes("import ")); // a program of yours
  assert.ok(blocks.length >= 5, `${blocks.length} blocks`);
  for (const block of blocks) {
    for (const line of block.split("\n").map((text) => text.trim())) {
      if (line) assert.ok(`${server}${client}`.includes(line), line);
    }
  }
});
