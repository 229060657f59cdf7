// Replies that do not fit their request, from raw-socket devices that misbehave once and then
// behave: the device must come back by itself within a few cycles with nothing of the broken
// stream read again (Modbus TCP: on a new connection; RTU over TCP: on the same connection, which
// other devices behind the device server may share, once the line has been quiet), and every
// reply that is wrong must be bad with a reason naming the fault.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import pino from 'pino';
import type { DeviceRunner } from '../src/pipeline/device-runner.js';
import type { TagReading } from '../src/pipeline/driver.js';
import { cleanup, device, pollDevice, RawModbusServer, withCrc, type RawRequest } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

interface LogLine {
  level: number;
  msg: string;
}

interface Run {
  cycles: TagReading[][];
  runner: DeviceRunner;
  logs: LogLine[];
}

/** A DeviceRunner (what the gateway runs) polling the device every 100 ms, its log kept. */
function run(t: TestContext, connection: Record<string, unknown>, tags: Record<string, unknown>[]): Run {
  const defer = cleanup(t);
  const logs: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  const log = pino({ level: 'debug' }, sink);
  const { cycles, runner } = pollDevice(defer, device({ connection: { timeout: 300, ...connection }, tags }), log);
  return { cycles, runner, logs };
}

const good = (cycle: TagReading[]): boolean => cycle.every((reading) => reading.quality === 'good');
const show = (cycles: TagReading[][]): string =>
  cycles.map((cycle) => cycle.map((r) => (r.quality === 'good' ? String(r.value) : `${r.code}: ${r.reason}`)).join(' | ')).join('\n');

/**
 * Waits for the bad cycle(s) the misbehaviour causes and then five good cycles in a row; returns
 * the first bad reading. At most `maxBad` cycles in between may be bad.
 */
async function recovers(device: Run, maxBad = 3): Promise<TagReading> {
  const firstBad = (): number => device.cycles.findIndex((cycle) => !good(cycle));
  await waitFor(
    () => {
      const bad = firstBad();
      if (bad < 0) return false;
      const after = device.cycles.slice(bad);
      const back = after.findIndex(good);
      return back >= 0 && after.slice(back, back + 5).filter(good).length === 5;
    },
    15_000,
    () =>
      `a bad cycle and then 5 good ones; cycles so far:\n${show(device.cycles.slice(-20))}\nhealth ${JSON.stringify(device.runner.health)}`,
  );
  const bad = firstBad();
  assert.ok(bad > 0, 'the device read good before it misbehaved');
  const badCycles = device.cycles.slice(bad).findIndex(good);
  assert.ok(badCycles <= maxBad, `${badCycles} bad cycles:\n${show(device.cycles)}`);
  return device.cycles[bad]!.find((reading) => reading.quality === 'bad')!;
}

/** The reply to the second request is replaced by `bytes(request, proper)`; every other reply is correct. */
async function server(
  t: TestContext,
  framing: 'mbap' | 'rtu',
  bytes: (request: RawRequest, proper: Buffer) => Buffer,
): Promise<RawModbusServer> {
  const defer = cleanup(t);
  const raw = new RawModbusServer(framing);
  raw.misbehave = (request, proper) => (request.n === 2 ? bytes(request, proper) : undefined);
  await raw.start();
  defer(() => raw.stop());
  return raw;
}

const TWO_REGISTERS = [
  { name: 'a', address: '40001' },
  { name: 'b', address: '40002' },
];
const tcp = (port: number, extra: Record<string, unknown> = {}) => ({ transport: 'tcp', host: '127.0.0.1', port, ...extra });
const rtuOverTcp = (port: number, extra: Record<string, unknown> = {}) => ({
  transport: 'rtu-over-tcp',
  host: '127.0.0.1',
  port,
  ...extra,
});

describe('one malformed reply does not desynchronize the device', () => {
  const cases: { name: string; framing: 'mbap' | 'rtu'; bytes: (request: RawRequest, proper: Buffer) => Buffer; reason: RegExp }[] = [
    {
      name: 'tcp: a reply cut after 5 bytes',
      framing: 'mbap',
      bytes: (_, proper) => proper.subarray(0, 5),
      reason: /^bad reply: incomplete reply: 5 bytes, then nothing until the timeout$/,
    },
    {
      name: 'tcp: random bytes',
      framing: 'mbap',
      bytes: () => Buffer.from('1337deadbeef0102030405', 'hex'),
      reason: /^bad reply: MBAP protocol id 0xdead instead of 0$/,
    },
    {
      name: 'tcp: a huge MBAP length field',
      framing: 'mbap',
      bytes: (_, proper) => {
        const mangled = Buffer.from(proper);
        mangled.writeUInt16BE(60000, 4);
        return mangled;
      },
      reason: /^bad reply: MBAP length field 60000, more than the 254 bytes a Modbus reply can have$/,
    },
    // (RTU over TCP without retries: a retry would hide the bad reply behind a good second answer.)
    {
      name: 'rtu over tcp: a reply cut after 5 bytes',
      framing: 'rtu',
      bytes: (_, proper) => proper.subarray(0, 5),
      reason: /^bad reply: incomplete reply: 5 bytes, then nothing until the timeout$/,
    },
    {
      name: 'rtu over tcp: random bytes',
      framing: 'rtu',
      bytes: () => Buffer.from('1337deadbeef0102030405', 'hex'),
      reason: /^bad reply: unit id 19 in a reply to unit 1$/,
    },
  ];
  for (const { name, framing, bytes, reason } of cases) {
    const after = framing === 'mbap' ? 'on a new connection' : 'on the same connection';
    it(`${name}: bad for a cycle or two, then good again ${after}`, async (t) => {
      const raw = await server(t, framing, bytes);
      const connection = framing === 'mbap' ? tcp(raw.port) : rtuOverTcp(raw.port, { retries: 0 });
      const device = run(t, connection, TWO_REGISTERS);
      const bad = await recovers(device);
      assert.equal(bad.code, 'bad-reply');
      assert.match(bad.reason ?? '', reason);
      if (framing === 'mbap') {
        assert.ok(raw.accepted >= 2, `reconnected (${raw.accepted} connections)`);
        assert.ok(device.runner.health.connectAttempts >= 2);
      } else {
        assert.equal(raw.accepted, 1, 'the connection was kept');
        assert.equal(device.runner.health.connectAttempts, 1);
      }
      assert.deepEqual(device.cycles.at(-1), [
        { tag: 'a', value: 1000, quality: 'good' },
        { tag: 'b', value: 1001, quality: 'good' },
      ]);
      // It answered, however badly: the log names the bad reply and never claims silence.
      const messages = device.logs.map((line) => line.msg);
      const logged = (msg: string): boolean =>
        framing === 'mbap'
          ? /^bad reply from unit 1 on .*; connection closed so the next one starts clean$/.test(msg)
          : msg === `bad reply from unit 1 on rtu-over-tcp 127.0.0.1:${raw.port}: ${(bad.reason ?? '').replace(/^bad reply: /, '')}`;
      assert.ok(messages.some(logged), messages.join('\n'));
      assert.ok(!messages.some((msg) => /did not answer|no response/.test(msg)), messages.join('\n'));
    });
  }
});

/** Copies a frame and lets `edit` change it. */
const edited = (frame: Buffer, edit: (copy: Buffer) => void): Buffer => {
  const copy = Buffer.from(frame);
  edit(copy);
  return copy;
};

describe('a reply that does not fit its request is bad, and says why', () => {
  const cases: {
    name: string;
    framing: 'mbap' | 'rtu';
    tags?: Record<string, unknown>[];
    bytes: (request: RawRequest, proper: Buffer) => Buffer;
    reason: string;
  }[] = [
    {
      name: 'tcp: a byte count 2 larger than the data sent',
      framing: 'mbap',
      bytes: (_, proper) => edited(proper, (copy) => (copy[8] = copy[8]! + 2)),
      reason: 'bad reply: byte count 6 for 2 registers asked (expected 4)',
    },
    {
      name: 'tcp: an MBAP protocol id other than 0',
      framing: 'mbap',
      bytes: (_, proper) => edited(proper, (copy) => copy.writeUInt16BE(1, 2)),
      reason: 'bad reply: MBAP protocol id 0x0001 instead of 0',
    },
    {
      name: 'tcp: a transaction id that was never sent',
      framing: 'mbap',
      bytes: (request, proper) => edited(proper, (copy) => copy.writeUInt16BE(request.transactionId + 100, 0)),
      reason: 'bad reply: transaction id 0x0066 in the reply to 0x0002',
    },
    {
      name: 'tcp: another unit id',
      framing: 'mbap',
      bytes: (_, proper) => edited(proper, (copy) => (copy[6] = 7)),
      reason: 'bad reply: unit id 7 in a reply to unit 1',
    },
    {
      name: 'tcp: an MBAP length that does not match the byte count',
      framing: 'mbap',
      bytes: (_, proper) => edited(Buffer.concat([proper, Buffer.from([0, 0])]), (copy) => copy.writeUInt16BE(copy.readUInt16BE(4) + 2, 4)),
      reason: 'bad reply: MBAP length field 9 does not match byte count 4 (expected 7)',
    },
    {
      name: 'tcp: coils with a byte count 1 larger than the data sent',
      framing: 'mbap',
      tags: [{ name: 'coils', address: 0, area: 'coil', count: 8 }],
      bytes: (_, proper) => edited(proper, (copy) => (copy[8] = 2)),
      reason: 'bad reply: byte count 2 for 8 bits asked (expected 1)',
    },
    {
      name: 'rtu over tcp: a byte count 2 larger than the data sent (CRC right)',
      framing: 'rtu',
      bytes: (_, proper) => withCrc(edited(proper.subarray(0, -2), (copy) => (copy[2] = copy[2]! + 2))),
      reason: 'bad reply: byte count 6 for 2 registers asked (expected 4)',
    },
  ];
  for (const { name, framing, tags, bytes, reason } of cases) {
    it(name, async (t) => {
      const raw = await server(t, framing, bytes);
      const device = run(t, framing === 'mbap' ? tcp(raw.port) : rtuOverTcp(raw.port, { retries: 0 }), tags ?? TWO_REGISTERS);
      const bad = await recovers(device);
      assert.deepEqual({ code: bad.code, reason: bad.reason }, { code: 'bad-reply', reason });
    });
  }

  it('rtu on a serial line: a byte count 2 larger than the data sent (CRC right)', async (t) => {
    const defer = cleanup(t);
    const raw = await server(t, 'rtu', (_, proper) => withCrc(edited(proper.subarray(0, -2), (copy) => (copy[2] = copy[2]! + 2))));
    // The serial line: socat links a pseudo terminal to the raw device's socket.
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-rtu-'));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'tty');
    const socat = spawn('/usr/bin/socat', [`pty,raw,echo=0,link=${path}`, `tcp:127.0.0.1:${raw.port}`], { stdio: 'ignore' });
    defer(() => socat.kill());
    await waitFor(() => existsSync(path), 10_000, 'the socat pty');
    const device = run(t, { transport: 'rtu', path, baudRate: 9600, retries: 0 }, TWO_REGISTERS);
    const bad = await recovers(device);
    assert.deepEqual(
      { code: bad.code, reason: bad.reason },
      { code: 'bad-reply', reason: 'bad reply: byte count 6 for 2 registers asked (expected 4)' },
    );
    assert.equal(device.runner.health.connectAttempts, 1, 'a serial line is not reopened for a bad reply');
  });
});

describe('a TCP connection on which nothing answers any more', () => {
  for (const framing of ['mbap', 'rtu'] as const) {
    const name = framing === 'mbap' ? 'tcp' : 'rtu over tcp, the device alone on the connection';
    it(`${name}: is renewed after backoffAfterTimeouts silent polls, and the device reads good on the new one`, async (t) => {
      const defer = cleanup(t);
      // A peer that stops answering on its first connection (half-open, or it lost track of it) but
      // serves new connections fine.
      const raw = new RawModbusServer(framing);
      raw.misbehave = (request) => (request.connection === 1 && request.n >= 3 ? null : undefined);
      await raw.start();
      defer(() => raw.stop());
      const settings = { timeout: 200, backoffAfterTimeouts: 3 };
      const device = run(t, framing === 'mbap' ? tcp(raw.port, settings) : rtuOverTcp(raw.port, settings), TWO_REGISTERS);
      const bad = await recovers(device, 3);
      assert.deepEqual(
        { code: bad.code, reason: bad.reason },
        { code: 'timeout', reason: 'timeout: no response within 200 ms (2 attempts)' },
      );
      assert.equal(raw.accepted, 2);
      const messages = device.logs.map((line) => line.msg);
      assert.ok(
        messages.some((msg) => /: no reply at all in 3 polls of unit 1; reconnecting in case the connection is stuck$/.test(msg)),
        messages.join('\n'),
      );
    });
  }
});
