// Early readings (Driver.read's `early`): a Modbus poll hands over each block's tags as its reply
// comes, the DeviceRunner turns them into several events of one cycle, and the gateway publishes
// per-tag devices block by block. Every test holds a reply back until it has seen what must already
// be there, so none of them could pass if the readings only came at the poll's end.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ModbusTag } from '../drivers/modbus/config.js';
import { createDriver } from '../drivers/modbus/index.js';
import { DeviceRunner, type ReadingsEvent } from '../src/pipeline/device-runner.js';
import type { Driver, DriverErrorCode, DriverTag, TagReading } from '../src/pipeline/driver.js';
import { connectWhenUp, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import {
  cleanup,
  device,
  type PymodbusServer,
  RawModbusServer,
  startPymodbus,
  TcpTestServer,
  testContext,
  testLogger,
} from './helpers/modbus-servers.js';
import type { Recorder } from './helpers/mqtt.js';
import { freePort, waitFor } from './helpers/net.js';

/** `n` uint16 holding registers 0..n-1, one tag each: r0, r1, … */
function registerTags(n: number, prefix = 'r'): Record<string, unknown>[] {
  return Array.from({ length: n }, (_, a) => ({ name: `${prefix}${a}`, address: a, area: 'holding', type: 'uint16' }));
}

function tcp(port: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { transport: 'tcp', host: '127.0.0.1', port, timeout: 30_000, retries: 0, ...extra };
}

const tagNumber = (name: string): number => Number(name.replace(/^\D+/, ''));

/** Every reading's tag name, asserting none comes twice. */
function onceEach(readings: readonly TagReading[]): Set<string> {
  const names = new Set<string>();
  for (const reading of readings) {
    assert.ok(!names.has(reading.tag), `${reading.tag} handed over twice`);
    names.add(reading.tag);
  }
  return names;
}

function range(from: number, to: number, prefix = 'r'): string[] {
  return Array.from({ length: to - from }, (_, i) => `${prefix}${from + i}`);
}

/** RawModbusServer's holding register a holds 1000 + a. */
function assertRawValues(readings: readonly TagReading[]): void {
  for (const reading of readings) {
    assert.equal(reading.quality, 'good', `${reading.tag}: ${reading.reason}`);
    assert.equal(reading.value, 1000 + tagNumber(reading.tag), reading.tag);
  }
}

async function openDriver(defer: (fn: () => unknown) => void, port: number, tags: number, extra: Record<string, unknown> = {}) {
  const config = device({ connection: tcp(port, extra), tags: registerTags(tags) });
  const driver = createDriver(config, testContext());
  defer(() => driver.close());
  await driver.connect();
  return { driver, plan: driver.plan(config.tags as ModbusTag[]) };
}

describe('Modbus driver: early readings', () => {
  it('hands over block 1 while request 2 is held; the union of parts and result is every tag once', async (t) => {
    const defer = cleanup(t);
    const server = new RawModbusServer('mbap');
    await server.start();
    defer(() => server.stop());
    const { driver, plan } = await openDriver(defer, server.port, 300);
    assert.equal(plan.describe(), '3 requests: holding 0..124 (125 regs), holding 125..249 (125 regs), holding 250..299 (50 regs)');
    const held = server.hold((request) => request.n === 2);
    const parts: TagReading[][] = [];
    let done = false;
    const reading = driver.read(plan, (part) => parts.push(part)).finally(() => (done = true));

    const second = await held.seen;
    assert.equal(second.start, 125);
    await waitFor(() => parts.length >= 1, 10_000, 'block 1 handed over');
    assert.equal(done, false, 'read() still pending while request 2 is held');
    assert.equal(parts.length, 1);
    assert.deepEqual([...onceEach(parts[0]!)], range(0, 125));
    assertRawValues(parts[0]!);

    held.release();
    const rest = await reading;
    const all = [...parts.flat(), ...rest];
    assert.deepEqual([...onceEach(all)].sort(), range(0, 300).sort());
    assertRawValues(all);
    assert.equal(all.length, 300);
    assert.equal(server.requests.length, 3);
  });

  it('a consumer that throws while taking a part fails the read with its error (the process goes on)', async (t) => {
    const defer = cleanup(t);
    const server = new RawModbusServer('mbap');
    await server.start();
    defer(() => server.stop());
    const { driver, plan } = await openDriver(defer, server.port, 300);
    let parts = 0;
    await assert.rejects(
      driver.read(plan, () => {
        parts++;
        throw new Error('the consumer broke');
      }),
      /the consumer broke/,
    );
    assert.ok(parts >= 1);
    // The driver still reads.
    const rest = await driver.read(plan);
    assert.equal(rest.length, 300);
  });

  it('a timed-out 3rd request: blocks 1 and 2 came early, the result is block 3 bad with code timeout', async (t) => {
    const defer = cleanup(t);
    const server = new RawModbusServer('mbap');
    let handedOverAtRequest3 = -1;
    const parts: TagReading[][] = [];
    server.misbehave = (request) => {
      if (request.n !== 3) return undefined;
      handedOverAtRequest3 = parts.flat().length; // the driver asks for block 3 only after handing over block 2
      return null;
    };
    await server.start();
    defer(() => server.stop());
    const { driver, plan } = await openDriver(defer, server.port, 300, { timeout: 300 });
    const rest = await driver.read(plan, (part) => parts.push(part));
    assert.equal(handedOverAtRequest3, 250, 'blocks 1 and 2 handed over before request 3 was sent');
    assert.deepEqual(
      parts.map((part) => part.length),
      [125, 125],
    );
    assertRawValues(parts.flat());
    assert.deepEqual(
      rest.map((r) => r.tag),
      range(250, 300),
    );
    for (const reading of rest) {
      assert.equal(reading.quality, 'bad');
      assert.equal(reading.code, 'timeout', JSON.stringify(reading));
    }
    assert.deepEqual([...onceEach([...parts.flat(), ...rest])].sort(), range(0, 300).sort());
  });

  it('an exception 2 in block 2: blocks 1 and 3 early, block 2 (bisected) in the result, each tag once', async (t) => {
    const defer = cleanup(t);
    const server = new TcpTestServer();
    for (let a = 0; a < 300; a++) server.holding[a] = 5000 + a;
    server.illegal.set('holding', new Set([200]));
    await server.start();
    defer(() => server.stop());
    const { driver, plan } = await openDriver(defer, server.port, 300);
    for (const pass of [1, 2]) {
      const parts: TagReading[][] = [];
      const rest = await driver.read(plan, (part) => parts.push(part));
      const early = parts.flat();
      const what = `pass ${pass}`;
      if (pass === 1) {
        // Block 1 before the bisection's requests, block 3 after: two parts.
        assert.deepEqual(
          parts.map((part) => part.map((r) => r.tag)),
          [range(0, 125), range(250, 300)],
          what,
        );
      } else {
        // The plan now goes around register 200: 125..199 and 201..249 read fine, r200 is not requested.
        assert.deepEqual([...onceEach(early)].sort(), [...range(0, 200), ...range(201, 300)].sort(), what);
      }
      for (const reading of early) {
        assert.equal(reading.quality, 'good', `${what}: ${reading.tag}`);
        assert.equal(reading.value, 5000 + tagNumber(reading.tag));
      }
      assert.deepEqual([...onceEach([...early, ...rest])].sort(), range(0, 300).sort(), what);
      for (const reading of rest) {
        if (reading.tag === 'r200') {
          assert.equal(reading.quality, 'bad', what);
          assert.equal(reading.code, pass === 1 ? 'exception-2' : 'known-illegal-address', what);
        } else {
          assert.equal(reading.quality, 'good', `${what}: ${reading.tag} ${reading.reason}`);
          assert.equal(reading.value, 5000 + tagNumber(reading.tag));
        }
      }
      if (pass === 1) assert.deepEqual([...onceEach(rest)].sort(), range(125, 250).sort());
      else
        assert.deepEqual(
          rest.map((r) => r.tag),
          ['r200'],
        );
    }
  });

  it('without `early`, read() returns every tag as before', async (t) => {
    const defer = cleanup(t);
    const server = new RawModbusServer('mbap');
    await server.start();
    defer(() => server.stop());
    const { driver, plan } = await openDriver(defer, server.port, 300);
    const readings = await driver.read(plan);
    assert.deepEqual(
      readings.map((r) => r.tag),
      range(0, 300),
    );
    assertRawValues(readings);
  });
});

function runner(defer: (fn: () => unknown) => void, port: number, onReadings: (event: ReadingsEvent, runner: DeviceRunner) => void) {
  const config = device({ connection: tcp(port), tags: registerTags(300) });
  const log = testLogger();
  const created: DeviceRunner = new DeviceRunner({
    name: 'dev',
    driver: createDriver(config, { log, dataDir: '/nonexistent' }),
    groups: [{ name: 'default', interval: 50, tags: config.tags as DriverTag[] }],
    log,
    phaseOf: () => 0,
    early: () => true,
    onReadings: (event) => onReadings(event, created),
  });
  created.start();
  defer(() => created.stop());
  return created;
}

describe('DeviceRunner with early: true', () => {
  it('connection lost at request 2: block 1 good, then only the other tags bad; the cycle counts one error', async (t) => {
    const defer = cleanup(t);
    const server = new RawModbusServer('mbap');
    await server.start();
    defer(() => server.stop());
    const held = server.hold((request) => request.n === 2);
    const events: { event: ReadingsEvent; pollErrors: number; errorsByCode: Record<string, number> }[] = [];
    const deviceRunner = runner(defer, server.port, (event, r) =>
      events.push({ event, pollErrors: r.health.pollErrors, errorsByCode: { ...r.health.errorsByCode } }),
    );
    await held.seen;
    await waitFor(() => events.length >= 1, 10_000, 'block 1 as an event');
    const [first] = events;
    assert.equal(events.length, 1, 'nothing else while request 2 is held');
    assert.deepEqual([...onceEach(first!.event.readings)], range(0, 125));
    assertRawValues(first!.event.readings);
    assert.equal(first!.pollErrors, 0);

    held.cut();
    await waitFor(() => events.length >= 2, 10_000, 'the rest of the cycle');
    const second = events[1]!;
    assert.equal(second.event.cycleTs, first!.event.cycleTs, 'same cycle');
    assert.deepEqual([...onceEach(second.event.readings)].sort(), range(125, 300).sort());
    const codes = new Set(second.event.readings.map((r) => `${r.quality}:${r.code}`));
    assert.deepEqual([...codes], ['bad:connection-lost']);
    assert.equal(second.pollErrors, 1, 'the cycle counted once');
    assert.deepEqual(second.errorsByCode, { 'connection-lost': 1 });
    // Later cycles (after the reconnect) are whole again.
    await waitFor(
      () => events.some((e) => e.event.cycleTs > first!.event.cycleTs && e.event.readings.some((r) => r.quality === 'good')),
      10_000,
      'a good cycle after the reconnect',
    );
    assert.ok(deviceRunner.health.connectAttempts >= 2);
  });

  it('a healthy device: every cycle is three events, one per block, covering each tag once', async (t) => {
    const defer = cleanup(t);
    const server = new RawModbusServer('mbap');
    await server.start();
    defer(() => server.stop());
    // Request 2 held: the first cycle's block 1 must be an event of its own before block 2 exists.
    const held = server.hold((request) => request.n === 2);
    const events: ReadingsEvent[] = [];
    const deviceRunner = runner(defer, server.port, (event) => events.push(event));
    await held.seen;
    await waitFor(() => events.length >= 1, 10_000, 'block 1 of cycle 1');
    assert.equal(events.length, 1);
    held.release();
    await waitFor(() => new Set(events.map((e) => e.cycleTs)).size >= 6, 20_000, 'six cycles');
    await deviceRunner.stop();
    const cycles = new Map<number, ReadingsEvent[]>();
    for (const event of events) cycles.set(event.cycleTs, [...(cycles.get(event.cycleTs) ?? []), event]);
    // The last cycle may have been cut short by stop().
    const last = Math.max(...cycles.keys());
    for (const [cycleTs, parts] of cycles) {
      if (cycleTs === last) continue;
      assert.deepEqual(
        parts.map((part) => part.readings.length),
        [125, 125, 50],
        `cycle ${cycleTs}`,
      );
      const readings = parts.flatMap((part) => part.readings);
      assert.deepEqual([...onceEach(readings)].sort(), range(0, 300).sort());
      assertRawValues(readings);
    }
    assert.equal(deviceRunner.health.pollErrors, 0);
  });

  it("a cycle's bad readings, in early parts and in the result, count as one poll error", async (t) => {
    const defer = cleanup(t);
    const tags: DriverTag[] = ['a', 'b', 'c', 'd'].map((name) => ({ name }));
    const bad = (tag: string, code: DriverErrorCode): TagReading => ({ tag, quality: 'bad', reason: code, code });
    const good = (tag: string): TagReading => ({ tag, quality: 'good', value: 1 });
    let reads = 0;
    // A driver that hands over parts as the interface allows: the first read has failures in two
    // parts and in its result, the later ones hand over everything early.
    const driver: Driver = {
      connected: true,
      connect: async () => undefined,
      close: async () => undefined,
      plan: () => ({ describe: () => 'fake' }),
      write: async () => undefined,
      read: async (_plan, early) => {
        assert.ok(early, 'the runner passes `early`');
        if (++reads === 1) {
          early([bad('a', 'timeout')]);
          early([bad('b', 'timeout'), good('c')]);
          return [bad('d', 'exception-2')];
        }
        early([good('a'), good('b')]);
        early([good('c'), good('d')]);
        return [];
      },
    };
    const events: { event: ReadingsEvent; pollErrors: number; errorsByCode: Record<string, number> }[] = [];
    const deviceRunner: DeviceRunner = new DeviceRunner({
      name: 'fake',
      driver,
      groups: [{ name: 'default', interval: 20, tags }],
      log: testLogger(),
      phaseOf: () => 0,
      early: () => true,
      onReadings: (event) =>
        events.push({ event, pollErrors: deviceRunner.health.pollErrors, errorsByCode: { ...deviceRunner.health.errorsByCode } }),
    });
    deviceRunner.start();
    defer(() => deviceRunner.stop());
    await waitFor(() => new Set(events.map((e) => e.event.cycleTs)).size >= 4, 10_000, 'four cycles');
    await deviceRunner.stop();
    const cycles = [...new Set(events.map((e) => e.event.cycleTs))];
    const first = events.filter((e) => e.event.cycleTs === cycles[0]);
    assert.deepEqual(
      first.map((e) => e.event.readings.map((r) => r.tag)),
      [['a'], ['b', 'c'], ['d']],
    );
    assert.equal(first.at(-1)!.pollErrors, 1, 'one cycle, one poll error');
    assert.deepEqual(first.at(-1)!.errorsByCode, { timeout: 1, 'exception-2': 1 });
    for (const cycleTs of cycles.slice(1, -1)) {
      const parts = events.filter((e) => e.event.cycleTs === cycleTs);
      assert.deepEqual(
        parts.map((e) => e.event.readings.length),
        [2, 2],
        'no empty final event when everything came early',
      );
    }
    assert.equal(deviceRunner.health.pollErrors, 1);
  });
});

interface TagMessage {
  value: unknown;
  quality: string;
  ts: number;
  reason?: string;
}

/** pymodbus-server.py's holding registers 0..49 (the rest is 0). */
const PYMODBUS_HOLDING: Record<number, number> = {
  0: 0x1234,
  1: 0x3fc0,
  2: 0x0000,
  3: 0x32eb,
  4: 0xf8a4,
  5: 0x0102,
  6: 0x0304,
  7: 0x0506,
  8: 0x0708,
  9: 0x7079,
  10: 0x6d6f,
  11: 0x6462,
  12: 0x7573,
  13: 0x8005,
};

describe('gateway: per-tag devices publish block by block', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-early-'));
  const perTagServer = new RawModbusServer('mbap');
  const batchServer = new RawModbusServer('mbap');
  let pymodbus: PymodbusServer;
  let gateway: RunningGateway;
  let recorder: Recorder;
  const perTagHold = perTagServer.hold((request) => request.start === 125);
  const batchHold = batchServer.hold((request) => request.start === 125);

  before(async () => {
    await perTagServer.start();
    await batchServer.start();
    pymodbus = await startPymodbus('tcp');
    const brokerPort = await freePort();
    const file = join(folder, 'gateway.json');
    writeFileSync(
      file,
      JSON.stringify({
        gateway: { name: 'early', dataDir: join(folder, 'data') },
        broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
        http: { host: '127.0.0.1', port: await freePort() },
        topics: { retain: true, qos: 1 },
        devices: [
          {
            name: 'pertag',
            driver: 'modbus',
            connection: tcp(perTagServer.port, { timeout: 60_000 }),
            pollInterval: 500,
            report: 'always',
            tags: registerTags(300),
          },
          {
            name: 'batched',
            driver: 'modbus',
            connection: tcp(batchServer.port, { timeout: 60_000 }),
            pollInterval: 500,
            report: 'always',
            publish: 'batch',
            tags: registerTags(300),
          },
          {
            name: 'big',
            driver: 'modbus',
            // 1,000 tags on pymodbus's 50 registers, 20 on each: five blocks of 10 registers.
            connection: tcp(pymodbus.port, { timeout: 5_000, maxRegistersPerRequest: 10, maxGap: 0 }),
            pollInterval: 300,
            report: 'always',
            tags: Array.from({ length: 1000 }, (_, i) => ({ name: `p${i}`, address: i % 50, area: 'holding', type: 'uint16' })),
          },
        ],
      }),
    );
    gateway = runGateway(file);
    recorder = await connectWhenUp(`mqtt://127.0.0.1:${brokerPort}`);
  });

  after(async () => {
    perTagHold.release();
    batchHold.release();
    await recorder?.close();
    if (gateway && gateway.child.exitCode === null) {
      gateway.child.kill('SIGTERM');
      await gateway.exited;
    }
    await pymodbus?.stop();
    await perTagServer.stop();
    await batchServer.stop();
    rmSync(folder, { recursive: true, force: true });
  });

  const topic = (device: string, tag: string) => `plc2mqtt/early/${device}/${tag}`;
  const received = (t: string) => recorder.messages.filter((message) => message.topic === t);

  it('block 1 of a per-tag device arrives while request 2 is held; a batch device waits for the whole cycle', async () => {
    await perTagHold.seen;
    await batchHold.seen;
    await waitFor(
      () => range(0, 125).every((tag) => received(topic('pertag', tag)).length > 0),
      20_000,
      () => `block 1 of pertag; ${recorder.messages.length} messages, output:\n${gateway.output().slice(-3000)}`,
    );
    for (const tag of range(0, 125)) {
      const messages = received(topic('pertag', tag));
      assert.equal(messages.length, 1, tag);
      const message = JSON.parse(messages[0]!.payload) as TagMessage;
      assert.equal(message.quality, 'good');
      assert.equal(message.value, 1000 + tagNumber(tag));
    }
    for (const tag of range(125, 300)) assert.equal(received(topic('pertag', tag)).length, 0, `${tag} before its reply`);
    const batchTopic = 'plc2mqtt/early/batched/default';
    assert.equal(received(batchTopic).length, 0, 'no batch while its request 2 is held');
    assert.equal(
      recorder.messages.filter((message) => message.topic.startsWith('plc2mqtt/early/batched/')).length,
      0,
      'nothing at all from the batch device',
    );

    // A sample's ts is when its part arrived: block 1's before the release, the others' after it.
    const releasedAt = Date.now();
    perTagHold.release();
    batchHold.release();
    await waitFor(
      () => range(125, 300).every((tag) => received(topic('pertag', tag)).length > 0) && received(batchTopic).length > 0,
      20_000,
      'the rest of pertag and the batch',
    );
    const firstTs = (tag: string) => (JSON.parse(received(topic('pertag', tag))[0]!.payload) as TagMessage).ts;
    for (const tag of range(0, 125)) assert.ok(firstTs(tag) <= releasedAt, `${tag}: ts ${firstTs(tag)} before the release ${releasedAt}`);
    for (const tag of range(125, 300)) assert.ok(firstTs(tag) >= releasedAt, `${tag}: ts ${firstTs(tag)} after the release ${releasedAt}`);
    const batch = JSON.parse(received(batchTopic)[0]!.payload) as { values: Record<string, TagMessage> };
    assert.deepEqual(Object.keys(batch.values).sort(), range(0, 300).sort());
    for (const [tag, value] of Object.entries(batch.values)) {
      assert.equal(value.quality, 'good');
      assert.equal(value.value, 1000 + tagNumber(tag));
    }
  });

  it('pymodbus, 1,000 per-tag tags: each cycle publishes every tag exactly once', async () => {
    // Live (not retained) messages of "big" in order; a cycle starts with p0 (block 1's first tag).
    const live = () => recorder.messages.filter((m) => !m.retain && m.topic.startsWith('plc2mqtt/early/big/'));
    const cyclesSeen = () => {
      const stream = live();
      const start = stream.findIndex((m) => m.topic === topic('big', 'p0'));
      return start < 0 ? 0 : Math.floor((stream.length - start) / 1000);
    };
    await waitFor(
      () => cyclesSeen() >= 4,
      60_000,
      () => `four whole cycles of big (${live().length} messages)`,
    );
    const stream = live();
    const start = stream.findIndex((m) => m.topic === topic('big', 'p0'));
    const all = Array.from({ length: 1000 }, (_, i) => topic('big', `p${i}`)).sort();
    for (let cycle = 0; cycle < 4; cycle++) {
      const chunk = stream.slice(start + cycle * 1000, start + (cycle + 1) * 1000);
      assert.equal(chunk[0]!.topic, topic('big', 'p0'), `cycle ${cycle} starts with p0`);
      const topics = chunk.map((m) => m.topic);
      assert.equal(new Set(topics).size, 1000, `cycle ${cycle}: no tag twice`);
      assert.deepEqual([...topics].sort(), all, `cycle ${cycle}: every tag`);
      for (const message of chunk) {
        const payload = JSON.parse(message.payload) as TagMessage;
        assert.equal(payload.quality, 'good', `${message.topic}: ${payload.reason}`);
        const address = tagNumber(message.topic.split('/').at(-1)!) % 50;
        assert.equal(payload.value, PYMODBUS_HOLDING[address] ?? 0, message.topic);
      }
    }
  });
});
