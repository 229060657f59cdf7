// The serial-port registry (src/pipeline/serial-ports.ts) on real serial lines: socat pty pairs,
// with a text instrument on the far end that answers "#<device> <n>\r" with "<device> <n> ok\r".
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { SerialPort } from 'serialport';
import { DriverError } from '../src/pipeline/driver.js';
import {
  acquireSerialPort,
  registeredSerialPorts,
  SerialLineError,
  type ReplyOptions,
  type SerialLineSettings,
  type SerialPortLease,
} from '../src/pipeline/serial-ports.js';
import { cleanup, sleep, startPtyPair, type PtyPair } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

const LINE: SerialLineSettings = { baudRate: 9600, dataBits: 8, parity: 'none', stopBits: 1 };

/** Replies end with a carriage return. */
const lineFraming = (timeout = 1000): ReplyOptions => ({
  timeout,
  frame: (received) => {
    const end = received.indexOf(0x0d);
    return end < 0 ? 'more' : { reply: received.subarray(0, end + 1) };
  },
});

const ask = (device: string, n: number): Buffer => Buffer.from(`#${device} ${n}\r`);

interface Instrument {
  /** Every byte that arrived, in order. */
  received: () => string;
  /** When each request arrived (ms), in order, with its device. */
  arrivals: { device: string; at: number }[];
  /** Devices that never answer. */
  silent: Set<string>;
  /** Devices answered only after this many ms. */
  late: Map<string, number>;
  /** Devices that get this instead of their reply. */
  garbage: Map<string, Buffer>;
  /** Sends bytes of its own accord (noise, an unsolicited frame). */
  send(bytes: Buffer): void;
  stop(): Promise<void>;
}

/** The far end of the line: several "devices" behind one port, answering after `delay` ms. */
async function instrument(path: string, delay = 2): Promise<Instrument> {
  const port = new SerialPort({ path, baudRate: 9600, autoOpen: false });
  port.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
  let all = '';
  let buffer = '';
  const result: Instrument = {
    received: () => all,
    arrivals: [],
    silent: new Set(),
    late: new Map(),
    garbage: new Map(),
    send: (bytes) => {
      if (port.isOpen) port.write(bytes);
    },
    stop: () => new Promise<void>((resolve) => (port.isOpen ? port.close(() => resolve()) : resolve())),
  };
  port.on('data', (chunk: Buffer) => {
    all += chunk.toString('latin1');
    buffer += chunk.toString('latin1');
    for (let end = buffer.indexOf('\r'); end >= 0; end = buffer.indexOf('\r')) {
      const request = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      const match = /^#(\w+) (\d+)$/.exec(request);
      if (!match) continue;
      const device = match[1]!;
      result.arrivals.push({ device, at: Date.now() });
      if (result.silent.has(device)) continue;
      const reply = result.garbage.get(device) ?? Buffer.from(`${device} ${match[2]} ok\r`);
      setTimeout(() => port.isOpen && port.write(reply), result.late.get(device) ?? delay);
    }
  });
  return result;
}

interface Line {
  pty: PtyPair;
  dir: string;
  far: Instrument;
  lease(
    name: string,
    options?: { interRequestDelay?: number; onPortLost?: (reason: string) => void; settings?: SerialLineSettings },
  ): SerialPortLease;
}

async function line(t: TestContext): Promise<Line> {
  const defer = cleanup(t);
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-serial-'));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  const pty = await startPtyPair(dir);
  defer(() => pty.stop());
  const far = await instrument(pty.b);
  defer(() => far.stop());
  return {
    pty,
    dir,
    far,
    lease: (name, options = {}) => {
      const user = { name, interRequestDelay: options.interRequestDelay ?? 0, onPortLost: options.onPortLost ?? (() => undefined) };
      const lease = acquireSerialPort(pty.a, options.settings ?? LINE, user);
      defer(() => lease.release());
      return lease;
    },
  };
}

const text = (reply: Buffer): string => reply.toString('latin1');

describe('serial-port registry', () => {
  it('two devices on one port: one open port, requests of both serialized, never a byte interleaved', async (t) => {
    const { far, lease } = await line(t);
    const before = registeredSerialPorts();
    const a = lease('a');
    const b = lease('b');
    assert.equal(registeredSerialPorts(), before + 1);
    assert.equal(a.userCount, 2);
    assert.equal(a.label, `serial ${a.path} (9600 8N1)`);
    await Promise.all([a.open(), b.open()]);
    assert.ok(a.isOpen && b.isOpen);

    const rounds = 40;
    const replies = await Promise.all(
      Array.from({ length: rounds }, (_, n) => [a.transact(ask('a', n), lineFraming()), b.transact(ask('b', n), lineFraming())]).flat(),
    );
    assert.deepEqual(replies.map(text), Array.from({ length: rounds }, (_, n) => [`a ${n} ok\r`, `b ${n} ok\r`]).flat());
    // On the wire: whole requests, one after another, in the order they were queued.
    const expected = Array.from({ length: rounds }, (_, n) => `#a ${n}\r#b ${n}\r`).join('');
    assert.equal(far.received(), expected);
    assert.equal(a.requestCount, 2 * rounds);
    assert.equal(b.requestCount, 2 * rounds);
  });

  it('an exclusive exchange of several requests is not split by another device', async (t) => {
    const { far, lease } = await line(t);
    const a = lease('a');
    const b = lease('b');
    await a.open();
    const inside = a.exclusive(async (exchange) => {
      const first = await exchange.transact(ask('a', 1), lineFraming());
      await sleep(50); // b's request is queued meanwhile
      const second = await exchange.transact(ask('a', 2), lineFraming());
      return [text(first), text(second)];
    });
    await sleep(10);
    const other = b.transact(ask('b', 1), lineFraming());
    assert.deepEqual(await inside, ['a 1 ok\r', 'a 2 ok\r']);
    assert.equal(text(await other), 'b 1 ok\r');
    assert.equal(far.received(), '#a 1\r#a 2\r#b 1\r');
  });

  it('a silent device times out without stalling the other; a late reply is never taken for the next request', async (t) => {
    const { far, lease } = await line(t);
    const live = lease('live');
    const dead = lease('dead');
    const slow = lease('slow');
    await live.open();
    far.silent.add('dead');
    far.late.set('slow', 150);

    // Queued alternately: the live device is served between the dead one's timeouts.
    const results = await Promise.allSettled(
      Array.from({ length: 3 }, (_, n) => [
        dead.transact(ask('dead', n), lineFraming(100)),
        live.transact(ask('live', n), lineFraming()),
      ]).flat(),
    );
    const liveResults = results.filter((_, i) => i % 2 === 1);
    assert.deepEqual(
      liveResults.map((result) => (result.status === 'fulfilled' ? text(result.value) : String(result.reason))),
      ['live 0 ok\r', 'live 1 ok\r', 'live 2 ok\r'],
    );
    for (const result of results.filter((_, i) => i % 2 === 0)) {
      assert.equal(result.status, 'rejected');
      const error = result.reason as unknown;
      assert.ok(error instanceof SerialLineError && error.code === 'timeout' && !error.connectionLost, String(error));
      assert.equal(error.message, 'timeout: no reply within 100 ms');
    }

    // "slow" answers after 150 ms, its timeout is 50: the answer arrives during live's request.
    await assert.rejects(
      slow.transact(ask('slow', 1), lineFraming(50)),
      (error: unknown) => error instanceof DriverError && error.code === 'timeout',
    );
    const next = live.exclusive(async (exchange) => {
      await sleep(120); // the late "slow 1 ok" arrives now, before live's request: dropped
      return exchange.transact(ask('live', 9), lineFraming());
    });
    assert.equal(text(await next), 'live 9 ok\r');
  });

  it('a late reply that arrives after the next request went out is dropped: the next request waits for it', async (t) => {
    const { far, lease } = await line(t);
    const slow = lease('slow');
    const live = lease('live');
    await slow.open();
    far.late.set('slow', 150);
    far.late.set('live', 80);
    // "slow 1 ok" comes 150 ms after its request, 50 ms after its timeout; live's request is
    // queued at once. Sent then, it would take "slow 1 ok" for its own reply.
    const timedOut = slow.transact(ask('slow', 1), lineFraming(100));
    const next = live.transact(ask('live', 1), lineFraming(200));
    await assert.rejects(timedOut, (error: unknown) => error instanceof DriverError && error.code === 'timeout');
    assert.equal(text(await next), 'live 1 ok\r');
    const [slowAsked, liveAsked] = far.arrivals;
    assert.ok(
      liveAsked!.at - slowAsked!.at >= 150,
      `live's request went out ${liveAsked!.at - slowAsked!.at} ms after slow's, before its late reply`,
    );

    // A device that never answers: the next request goes out once the line has been quiet for
    // another timeout after the timeout, and then has its full timeout.
    far.late.delete('slow');
    far.silent.add('slow');
    far.late.set('live', 150);
    const silent = slow.transact(ask('slow', 2), lineFraming(100));
    const after = live.transact(ask('live', 2), lineFraming(200));
    await assert.rejects(silent, (error: unknown) => error instanceof DriverError && error.code === 'timeout');
    assert.equal(text(await after), 'live 2 ok\r');
    const [silentAsked, afterAsked] = far.arrivals.slice(2);
    assert.ok(
      afterAsked!.at - silentAsked!.at >= 190,
      `live's request went out ${afterAsked!.at - silentAsked!.at} ms after the silent one`,
    );
  });

  it('bytes that arrive while no exchange is in progress are dropped', async (t) => {
    const { far, lease } = await line(t);
    const dev = lease('dev');
    await dev.open();
    assert.equal(text(await dev.transact(ask('dev', 1), lineFraming())), 'dev 1 ok\r');
    far.send(Buffer.from('dev 0 ok\r')); // unsolicited, in the very format of a reply
    await sleep(50);
    assert.equal(text(await dev.transact(ask('dev', 2), lineFraming())), 'dev 2 ok\r');
  });

  it('a line that never goes quiet after a timeout holds the next request back for at most twice the timeout', async (t) => {
    const { far, lease } = await line(t);
    const dev = lease('dev');
    await dev.open();
    far.silent.add('dev');
    const started = Date.now();
    await assert.rejects(
      dev.transact(ask('dev', 1), lineFraming(100)),
      (error: unknown) => error instanceof DriverError && error.code === 'timeout',
    );
    const noise = setInterval(() => far.send(Buffer.from('~')), 5);
    t.after(() => clearInterval(noise));
    far.silent.delete('dev');
    far.late.set('dev', 50);
    const reply = dev.transact(ask('dev', 2), lineFraming(300));
    await waitFor(() => far.arrivals.length === 2, 2000, 'the second request');
    clearInterval(noise);
    const sentAfter = far.arrivals[1]!.at - started;
    assert.ok(sentAfter >= 290 && sentAfter < 600, `sent ${sentAfter} ms after the first request`);
    // The noise before the reply is part of what the framing sees, not a reply of its own.
    assert.match(text(await reply), /dev 2 ok\r$/);
  });

  it('bad replies: the framing says so, or a reply grows past maxBytes (bounded memory)', async (t) => {
    const { far, lease } = await line(t);
    const dev = lease('dev');
    await dev.open();
    far.garbage.set('dev', Buffer.from('?!\r'));
    const strict: ReplyOptions = {
      timeout: 1000,
      frame: (received) => {
        const end = received.indexOf(0x0d);
        if (end < 0) return 'more';
        return received.subarray(0, 3).toString() === 'dev'
          ? { reply: received.subarray(0, end + 1) }
          : { problem: `unexpected "${received.subarray(0, end).toString()}"` };
      },
    };
    await assert.rejects(dev.transact(ask('dev', 1), strict), (error: unknown) => {
      assert.ok(error instanceof SerialLineError);
      assert.equal(error.code, 'bad-reply');
      assert.equal(error.message, 'bad reply: unexpected "?!"');
      assert.equal(error.received.toString(), '?!\r');
      return true;
    });
    far.garbage.set('dev', Buffer.alloc(300, 0x41)); // no delimiter at all
    await assert.rejects(
      dev.transact(ask('dev', 2), { ...lineFraming(), maxBytes: 100 }),
      (error: unknown) =>
        error instanceof DriverError &&
        error.code === 'bad-reply' &&
        error.message === 'bad reply: more than 100 bytes without a complete reply',
    );
    far.garbage.delete('dev');
    assert.equal(text(await dev.transact(ask('dev', 3), lineFraming())), 'dev 3 ok\r');
  });

  it('the quiet time of the slowest device is kept between any two exchanges', async (t) => {
    const { far, lease } = await line(t);
    const fast = lease('fast');
    lease('needs-quiet', { interRequestDelay: 60 });
    await fast.open();
    for (let n = 0; n < 4; n++) await fast.transact(ask('fast', n), lineFraming());
    const gaps = far.arrivals.slice(1).map((arrival, i) => arrival.at - far.arrivals[i]!.at);
    assert.ok(
      gaps.every((gap) => gap >= 50),
      `gaps ${gaps.join(', ')} ms`,
    );
  });

  it('other line settings on the same port are refused, naming the path, both settings and the devices', async (t) => {
    const { pty, lease } = await line(t);
    lease('meter-1');
    assert.throws(
      () => acquireSerialPort(pty.a, { ...LINE, baudRate: 19200, parity: 'even' }, { name: 'scale' }),
      (error: unknown) =>
        error instanceof DriverError &&
        error.code === 'line-conflict' &&
        error.message ===
          `serial port ${pty.a} is in use at 9600 8N1 by "meter-1"; "scale" asks for 19200 8E1. All devices on one serial port must use the same line settings`,
    );
    // The same settings are welcome.
    assert.equal(lease('meter-2').userCount, 2);
  });

  it("release: fails only that device's request in flight, at once; the last one closes the port", async (t) => {
    const { far, lease } = await line(t);
    const before = registeredSerialPorts();
    const a = lease('a');
    const b = lease('b');
    await a.open();
    far.silent.add('a');
    const started = Date.now();
    const pending = a.transact(ask('a', 1), lineFraming(1000));
    const queued = b.transact(ask('b', 1), lineFraming());
    await sleep(50);
    await a.release();
    await assert.rejects(pending, (error: unknown) => error instanceof DriverError && error.code === 'closed');
    assert.ok(Date.now() - started < 500, 'the release did not wait for the timeout');
    assert.equal(text(await queued), 'b 1 ok\r');
    // a's reply could still have come within its timeout: b's request waited for a quiet line.
    const [aAsked, bAsked] = far.arrivals;
    assert.ok(bAsked!.at - aAsked!.at >= 1000, `b's request went out ${bAsked!.at - aAsked!.at} ms after a's`);
    assert.equal(a.isOpen, false);
    await assert.rejects(
      a.transact(ask('a', 2), lineFraming()),
      (error: unknown) => error instanceof DriverError && error.code === 'closed',
    );
    assert.equal(registeredSerialPorts(), before + 1);
    await b.release();
    assert.equal(registeredSerialPorts(), before);
    assert.equal(b.isOpen, false);
  });

  it('the port disappearing (pty closed) fails the request in flight and tells every device; open() brings it back', async (t) => {
    const defer = cleanup(t);
    const setup = await line(t);
    const lost: string[] = [];
    const a = setup.lease('a', { onPortLost: (reason) => lost.push(`a: ${reason}`) });
    const b = setup.lease('b', { onPortLost: (reason) => lost.push(`b: ${reason}`) });
    await a.open();
    assert.equal(text(await a.transact(ask('a', 1), lineFraming())), 'a 1 ok\r');
    setup.far.silent.add('a');
    const pending = a.transact(ask('a', 2), lineFraming(5000));
    await sleep(50);
    await setup.far.stop();
    await setup.pty.stop(); // the "USB adapter" is unplugged
    await assert.rejects(
      pending,
      (error: unknown) => error instanceof DriverError && error.code === 'connection-lost' && error.connectionLost,
    );
    await waitFor(() => lost.length === 2, 5000, 'both devices told');
    assert.match(lost[0]!, new RegExp(`^a: serial ${setup.pty.a} \\(9600 8N1\\) lost: port closed`));
    assert.equal(a.isOpen || b.isOpen, false);
    await assert.rejects(
      b.transact(ask('b', 1), lineFraming()),
      (error: unknown) => error instanceof DriverError && error.code === 'not-connected' && error.connectionLost,
    );
    await assert.rejects(
      b.open(),
      (error: unknown) =>
        error instanceof DriverError &&
        error.code === 'connect-failed' &&
        error.message.startsWith(`cannot open serial ${setup.pty.a} (9600 8N1): `),
    );

    // Plugged in again: same path, a new pty behind it.
    const pty = await startPtyPair(setup.dir);
    defer(() => pty.stop());
    const far = await instrument(pty.b);
    defer(() => far.stop());
    await b.open();
    assert.ok(a.isOpen && b.isOpen);
    assert.equal(text(await a.transact(ask('a', 3), lineFraming())), 'a 3 ok\r');
    assert.equal(text(await b.transact(ask('b', 3), lineFraming())), 'b 3 ok\r');
  });

  it('a port that does not exist fails to open with a readable error', async (t) => {
    const defer = cleanup(t);
    const lease = acquireSerialPort('/dev/plc2mqtt-no-such-port', LINE, { name: 'ghost' });
    defer(() => lease.release());
    await assert.rejects(lease.open(), (error: unknown) => {
      assert.ok(error instanceof DriverError);
      assert.equal(error.code, 'connect-failed');
      assert.match(
        error.message,
        /^cannot open serial \/dev\/plc2mqtt-no-such-port \(9600 8N1\): No such file or directory, cannot open \/dev\/plc2mqtt-no-such-port$/,
      );
      return true;
    });
  });
});
