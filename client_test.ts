// Tests for client.ts: a plain socket in the server's place, the command line
// run as a child process, and events (a datagram, a line, an exit), no sleeps.
import assert from "node:assert/strict";
import { interactive, readLines, send } from "./client.ts";

// --- helpers ---

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

/** A plain UDP socket on a free port: the server's stand-in, or a stranger. */
function listen(hostname = "127.0.0.1") {
  const conn = Deno.listenDatagram({ transport: "udp", hostname, port: 0 });
  return Object.assign(conn, {
    port: (conn.addr as Deno.NetAddr).port,
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

// `wrapper` runs the command (python3: at a terminal; sh: for `>`); `hold`
// leaves stdout for the test; `allow`: hosts for client(), not the task's.
type ChildOptions = { wrapper?: string[]; hold?: boolean; allow?: string };

/**
 * `deno ...args`, running, with what it printed so far. On dispose it is
 * killed (if it still runs) and awaited, and its output read to the end.
 */
class Child implements AsyncDisposable {
  readonly process: Deno.ChildProcess;
  readonly output = { stdout: "", stderr: "" };
  readonly input: WritableStreamDefaultWriter<Uint8Array>;
  #printed = Promise.withResolvers<void>();
  #ended: Promise<Deno.CommandStatus>;

  constructor(args: string[], options: ChildOptions = {}) {
    const { wrapper = [], hold = false } = options;
    const [program, ...rest] = [...wrapper, Deno.execPath(), ...args];
    this.process = new Deno.Command(program, {
      args: rest,
      cwd: ROOT,
      env: { NO_COLOR: "1" },
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.input = this.process.stdin.getWriter();
    const reading = [this.#read("stderr")];
    if (!hold) reading.push(this.#read("stdout"));
    this.#ended = Promise.all(reading).then(() => this.process.status);
  }

  async #read(name: "stdout" | "stderr") {
    const stream = this.process[name].pipeThrough(new TextDecoderStream());
    for await (const text of stream) {
      this.output[name] += text;
      this.#printed.resolve();
      this.#printed = Promise.withResolvers();
    }
  }

  /** Waits until `name` matches `pattern`; fails if the child ends first. */
  waitFor(name: "stdout" | "stderr", pattern: RegExp) {
    return within(`${name} to match ${pattern}`, this.#waitFor(name, pattern));
  }

  async #waitFor(name: "stdout" | "stderr", pattern: RegExp) {
    for (let ended = false; !pattern.test(this.output[name]);) {
      const output = JSON.stringify(this.output);
      if (ended) throw new Error(`${name} never matched ${pattern}: ${output}`);
      ended = await Promise.race([
        this.#printed.promise.then(() => false),
        this.#ended.then(() => true),
      ]);
    }
    return this.output[name].match(pattern)!;
  }

  /** Waits for the end; returns the exit code and everything printed. */
  async result() {
    const { code } = await within("the command to end", this.#ended);
    return { code, ...this.output };
  }

  async [Symbol.asyncDispose]() {
    await this.input.close().catch(() => {}); // closed already
    try {
      this.process.kill();
    } catch {
      // ended already
    }
    await within("the command to end", this.#ended);
  }
}

/** `client.ts ...args`, run alone with the flags that the task gives it. */
function client(args: string[], options: ChildOptions = {}): Child {
  const { allow = "127.0.0.1,[::1],localhost" } = options;
  const flags = ["--unstable-net", "--no-prompt", `--allow-net=${allow}`];
  return new Child(["run", ...flags, "client.ts", ...args], options);
}

/** Runs `client.ts ...args` to its end. */
async function run(...args: string[]) {
  await using child = client(args);
  return await child.result();
}

// A terminal for the client: python3's pty module, where there is one.
const NO_PTY = Deno.build.os === "windows" ||
  !(await new Deno.Command("python3", { args: ["-c", "import pty"] }).output()
    .then(({ success }) => success, () => false));

// Runs a command at a pty `columns` wide, for 10 s at most, in steps: wait
// "until" the screen shows a text, "type", or "say" a word to the test and
// wait for a line back. Mode "all": the pty is stdin, stdout and stderr, and
// the script prints the exit code and the screen as JSON; mode "stdin": the
// pty is stdin only, and the script exits as the command does.
const PTY = `
import fcntl, json, os, pty, select, struct, subprocess, sys, termios, time
mode, columns, steps, *command = sys.argv[1:]
master, slave = pty.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("4H", 24, int(columns), 0, 0))
out = slave if mode == "all" else None
child = subprocess.Popen(command, stdin=slave, stdout=out, stderr=out,
    start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
os.close(slave)
screen, end = b"", time.monotonic() + 10
def read():
    global screen
    left = max(0, end - time.monotonic())
    try:
        data = os.read(master, 4096) if select.select([master], [], [], left)[0] else b""
    except OSError:
        data = b""  # the command has ended
    screen += data
    return data
for kind, text in json.loads(steps):
    if kind == "until":
        while text.encode() not in screen and read():
            pass
    elif kind == "type":
        os.write(master, text.encode())
    else:
        print(text, flush=True)
        sys.stdin.readline()
while mode == "all" and read():
    pass
code = child.wait(10)
if mode == "stdin":
    sys.exit(code)
print(json.dumps({"code": code, "screen": screen.decode()}))
`;

/** `client.ts ...args` at a terminal, as `PTY` runs it. */
function atTerminal(
  args: string[],
  steps: ["until" | "type" | "say", string][],
  { mode = "all", columns = 80 } = {},
): Child {
  const wrapper = ["python3", "-c", PTY, mode, `${columns}`];
  wrapper.push(JSON.stringify(steps));
  return client(args, { wrapper });
}

/** The exit code and the screen that `PTY` printed, in mode "all". */
async function screenOf(
  child: Child,
): Promise<{ code: number; screen: string }> {
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

/**
 * Sends `text` from `conn` to `to`, paced 5 ms apart, until `done` settles;
 * returns how many. Bounded: 2,000 datagrams, 10 s at most.
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

// --- end of helpers ---

// The exports: send(), and the parts of -i, readLines() and interactive().

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

// The command line: what a user types, and what comes back.

test("client.ts --help lists every option with its default, on stdout", async () => {
  const { code, stdout, stderr } = await run("-h");
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
    '--count must be a positive integer, not "-1"',
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
    assert.deepEqual(await run(...cases[i] as readonly string[]), {
      code: 2,
      stdout: "",
      stderr: `error: ${cases[i + 1]} (see --help)\n`,
    });
  }
  // Just under the limit, the same is sent.
  using server = listen();
  const port = `${server.port}`;
  const fits = await run("-p", port, "-s", "-c", "2", "x".repeat(65_502));
  assert.equal(fits.code, 0, fits.stderr);
  assert.equal((await server.next())[0].length, 65_507);
});

test("client.ts sends its words, after -- too, and --wait prints the reply, escaped", async () => {
  await using server = echoing();
  const port = `${server.port}`;
  const from = `Message from 127.0.0.1:${port}: `;
  assert.deepEqual(await run("-p", port, "-w", "some", "words\x1b[2J"), {
    code: 0,
    stdout: `${from}some words\\x1b[2J\n`,
    stderr: `Sending a 14-byte datagram to 127.0.0.1:${port}\n`,
  });
  const { stderr } = await run("-p", port, "8 bytes!");
  assert.equal(stderr, `Sending an 8-byte datagram to 127.0.0.1:${port}\n`);
  for (const dashes of [["--"], ["--", "--"]]) { // deno task client -- -- -v
    const dashed = await run("-p", port, "--wait", ...dashes, "-v", "words");
    assert.equal(dashed.stdout, `${from}-v words\n`);
  }
});

test("client.ts --seq numbers #n/count, says the sizes it sends, paces without drift, and sums up", async () => {
  using server = listen();
  const port = `${server.port}`;
  const { code, stdout, stderr } = await run(
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
    await using child = client(["-p", `${server.port}`, "-w", "-x"]);
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
  await using child = client(["-p", `${server.port}`, "-w", "-t", "300"]);
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
  if (!bound) return console.log(`skipped: ${server.output.stderr.trim()}`);
  const port = bound[1];
  // Older Deno allows an IPv4-mapped address only by name.
  const allow = "[::ffff:127.0.0.1],[::ffff:7f00:1]";
  const args = ["-H", "::ffff:127.0.0.1", "-p", port, "-w"];
  await using child = client(args, { allow });
  assert.deepEqual(await child.result(), {
    code: 0,
    stdout: `Message from [::ffff:127.0.0.1]:${port}: Hello, Server\n`,
    stderr: `Sending a 13-byte datagram to [::ffff:7f00:1]:${port}\n`,
  });
  assert.equal((await server.result()).stdout, `${port}\n::ffff:127.0.0.1\n`);
});

test("client.ts -i from a pipe sends lines as bytes, skips one too long, prints replies that come after the input", async () => {
  await using server = echoing();
  const port = `${server.port}`;
  await using child = client(["-i", "-p", port, "-t", "500"]);
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
  await using child = client(["-i", "-p", port, "-t", "500000000"]);
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
  await using child = client(["-i", "-p", `${server.port}`, "-t", "200"]);
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

test("client.ts: a closed output is exit code 141, a write that fails one line and 1", async () => {
  const sending = (port: number) =>
    `Sending a 13-byte datagram to 127.0.0.1:${port}\n`;
  {
    // The reader of stdout goes away before the reply comes.
    using server = listen();
    await using child = client(["-p", `${server.port}`, "-w"], { hold: true });
    const [data, from] = await server.next();
    await child.process.stdout.cancel();
    await server.send(encoder.encode(data), from);
    const result = { code: 141, stdout: "", stderr: sending(server.port) };
    assert.deepEqual(await child.result(), result);
  }
  const test = new Deno.Command("sh", { args: ["-c", "test -c /dev/full"] });
  if (!await test.output().then(({ success }) => success, () => false)) {
    return console.log("skipped: no /dev/full here");
  }
  // `exec` in sh: the redirection, and then the client in sh's place.
  const redirected = async (redirection: string, ...args: string[]) => {
    const wrapper = ["sh", "-c", `exec "$0" "$@" ${redirection}`];
    await using child = client(args, { wrapper });
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
  assert.deepEqual(await run("-H", "NoSuch.invalid"), {
    code: 1,
    stdout: "",
    stderr: "Sending a 13-byte datagram to nosuch.invalid:6789\n" +
      "error: not allowed to send to NoSuch.invalid: run client.ts with --allow-net=nosuch.invalid\n",
  });
  // IPv6 in brackets, as --allow-net takes it, quoted for zsh; and the
  // address to send from.
  assert.deepEqual(await run("-H", "2001:DB8::1"), {
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

// At a terminal: python3's pty module gives the client a real one.

test("client.ts -i at a terminal prints what arrives above the line being typed", async () => {
  if (NO_PTY) return console.log("skipped: no pty here");
  using server = listen();
  const port = server.port;
  // Text typed right after Enter lands after the next prompt, and the cursor
  // stays at its end.
  await using typist = atTerminal(["-i", "-p", `${port}`], [
    ["until", "> "],
    ["type", "first\rhalf typed"],
    ["until", "half typed"],
    ["say", "typed"],
    ["until", "incoming"],
    ["type", "!\r"],
    ["say", "entered"],
    ["type", "\x03"],
  ]);
  const [first, from] = await server.next();
  assert.equal(first, "first");
  await typist.waitFor("stdout", /^typed\n/m);
  await server.send(encoder.encode("incoming"), from);
  await typist.input.write(encoder.encode("\n"));
  // Enter sends what was typed, whole, in the order typed.
  assert.equal((await server.next())[0], "half typed!");
  await typist.waitFor("stdout", /^entered\n/m);
  await typist.input.write(encoder.encode("\n"));
  // Ctrl+C ends it at once, with exit code 130.
  const { code, screen } = await screenOf(typist);
  assert.equal(code, 130, screen);
  const lines = render(screen);
  const at = lines.findIndex((line) => line.includes("incoming"));
  assert.equal(lines[at], `Message from 127.0.0.1:${port}: incoming`, screen);
  assert.equal(lines[at + 1], "> half typed!", screen);
  assert.deepEqual(lines.slice(-2), ["> ", ""], screen);
});

test("client.ts -i with stdin a terminal and stdout a pipe prints no prompt and no escapes", async () => {
  if (NO_PTY) return console.log("skipped: no pty here");
  await using server = echoing();
  const port = server.port;
  // Ctrl+D, after a line end: the end of input.
  await using typist = atTerminal(["-i", "-p", `${port}`, "-t", "300"], [
    ["type", "one\n"],
    ["say", "typed"],
    ["type", "\x04"],
  ], { mode: "stdin" });
  await typist.waitFor("stdout", /: one\n/);
  await typist.input.write(encoder.encode("\n"));
  assert.deepEqual(await typist.result(), {
    code: 0,
    stdout: `typed\nMessage from 127.0.0.1:${port}: one\n`,
    stderr: `Sending each line to 127.0.0.1:${port}; Ctrl+D ends\n`,
  });
});

test("client.ts at a terminal cuts a reply to the width, its prefix counted", async () => {
  if (NO_PTY) return console.log("skipped: no pty here");
  await using server = echoing();
  const port = server.port;
  const args = ["-p", `${port}`, "-w", "a".repeat(100)];
  await using child = atTerminal(args, [], { columns: 60 });
  const { code, screen } = await screenOf(child);
  assert.equal(code, 0, screen);
  // 60 columns: the prefix, then as much as leaves room for the marker.
  const prefix = `Message from 127.0.0.1:${port}: `;
  const kept = 60 - prefix.length - " \\[+100 bytes]".length;
  const line = `${prefix}${"a".repeat(kept)} \\[+${100 - kept} bytes]`;
  assert.ok(line.length <= 60);
  assert.deepEqual(render(screen).slice(-2), [line, ""]);
});

test("client.ts at a terminal shows the progress of a long send on one line", async () => {
  if (NO_PTY) return console.log("skipped: no pty here");
  using server = listen();
  const args = ["-p", `${server.port}`, "-c", "300", "-r", "500"];
  await using child = atTerminal(args, []);
  const { code, screen } = await screenOf(child);
  assert.equal(code, 0, screen);
  // Drawn again in place, at most 4 times a second: 0.6 s, so 1 or 2 times.
  const shown = screen.match(/\rSent \d+ of 300/g) ?? [];
  assert.ok(shown.length >= 1 && shown.length <= 3, screen);
  assert.match(
    render(screen).at(-2)!,
    /^Sent 300 datagrams, 3,900 bytes in 0\.\d{3} s: [\d,]+\/s$/,
  );
});
