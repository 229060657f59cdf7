// The driver against pymodbus 3.0 (an independent implementation): Modbus TCP, RTU on a serial
// line (a socat pty pair) with two unit ids on one line, the same line shared with another driver
// through the serial-port registry, and RTU framing over TCP.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DriverError, type TagReading } from '../src/pipeline/driver.js';
import { acquireSerialPort } from '../src/pipeline/serial-ports.js';
import { createDriver, type ModbusDriver } from '../drivers/modbus/index.js';
import type { ModbusTag } from '../drivers/modbus/config.js';
import { rtuRequests, startSerialLink } from './helpers/links.js';
import { cleanup, device, startPtyPair, startPymodbus, testContext, withCrc } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

function values(readings: TagReading[]): Record<string, unknown> {
  return Object.fromEntries(readings.map((r) => [r.tag, r.quality === 'good' ? r.value : `BAD: ${r.reason}`]));
}

// The register map of test/helpers/modbus-pymodbus-server.py.
const TAGS = [
  { name: 'u16', address: '40001' },
  { name: 'f32', address: 1, area: 'holding', type: 'float32' },
  { name: 'i32cdab', address: 3, area: 'holding', type: 'int32', byteOrder: 'CDAB' },
  { name: 'u64', address: 5, area: 'holding', type: 'uint64' },
  { name: 'text', address: 9, area: 'holding', type: 'string', length: 4 },
  { name: 'bit2', address: '40014.2' },
  { name: 'bit15', address: '40014.15' },
  { name: 'in', address: '30001', type: 'float32' },
  { name: 'coils', address: 0, area: 'coil', count: 8 },
  { name: 'di7', address: '10008' },
];
const EXPECTED = {
  u16: 0x1234,
  f32: 1.5,
  i32cdab: -123456789,
  u64: 0x0102030405060708n,
  text: 'pymodbus',
  bit2: true,
  bit15: true,
  in: -2.25,
  coils: [true, false, true, true, false, false, false, true],
  di7: true,
};

describe('modbus driver against pymodbus', () => {
  it('tcp: reads typed tags, learns the end of the register map, writes', async (t) => {
    const defer = cleanup(t);
    const server = await startPymodbus('tcp');
    defer(() => server.stop());
    const config = device({
      connection: { transport: 'tcp', host: '127.0.0.1', port: server.port, timeout: 1000 },
      tags: [
        ...TAGS,
        { name: 'beyond', address: 48, area: 'holding', type: 'float64', writable: true },
        { name: 'w', address: 20, area: 'holding', type: 'int32', writable: true },
      ],
    });
    const driver = createDriver(config, testContext());
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(config.tags);
    const readings = await driver.read(plan);
    assert.deepEqual(values(readings), {
      ...EXPECTED,
      beyond: 'BAD: exception 2: illegal data address', // 48..51, the map ends at 49
      w: 0,
    });
    assert.match(plan.describe(), /not requested/);

    await driver.write(config.tags.find((tag) => tag.name === 'w')!, -42);
    await driver.write(config.tags.find((tag) => tag.name === 'coils')!, [false, true, false, false, false, false, false, false]);
    const again = values(await driver.read(plan));
    assert.equal(again.w, -42);
    assert.deepEqual(again.coils, [false, true, false, false, false, false, false, false]);
    assert.equal(again.u16, 0x1234);
  });

  it('rtu-over-tcp: raw RTU frames over a socket', async (t) => {
    const defer = cleanup(t);
    const server = await startPymodbus('rtu-over-tcp');
    defer(() => server.stop());
    const config = device({ connection: { transport: 'rtu-over-tcp', host: '127.0.0.1', port: server.port, timeout: 1000 }, tags: TAGS });
    const driver = createDriver(config, testContext());
    defer(() => driver.close());
    await driver.connect();
    assert.deepEqual(values(await driver.read(driver.plan(config.tags))), EXPECTED);
    const tag = config.tags.find((x) => x.name === 'u16')!;
    await driver.write({ ...tag, writable: true }, 777);
    assert.equal((await driver.read(driver.plan([tag])))[0]!.value, 777);
  });

  it('rtu on a serial line: two unit ids share it, the silent one times out and is skipped', async (t) => {
    const defer = cleanup(t);
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-rtu-'));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const pty = await startPtyPair(dir);
    defer(() => pty.stop());
    const server = await startPymodbus('rtu', { serialPath: pty.b, units: [1] });
    defer(() => server.stop());

    const serial = { transport: 'rtu', path: pty.a, baudRate: 9600 };
    const liveConfig = device({ name: 'live', connection: { ...serial, unitId: 1, timeout: 1000, interRequestDelay: 5 }, tags: TAGS });
    const silentConfig = device({
      name: 'silent',
      connection: { ...serial, unitId: 2, timeout: 200, retries: 1, backoffAfterTimeouts: 2 },
      tags: [{ name: 's', address: '40001' }],
    });
    const live = createDriver(liveConfig, testContext());
    const silent = createDriver(silentConfig, testContext());
    defer(async () => {
      await live.close();
      await silent.close();
    });
    await live.connect();
    await silent.connect();
    const livePlan = live.plan(liveConfig.tags);
    const silentPlan = silent.plan(silentConfig.tags);

    const silentReasons: string[] = [];
    for (let poll = 0; poll < 4; poll++) {
      const [liveReadings, silentReadings]: TagReading[][] = await Promise.all([live.read(livePlan), silent.read(silentPlan)]);
      assert.deepEqual(values(liveReadings), EXPECTED, `poll ${poll}`);
      assert.equal(silentReadings[0]!.quality, 'bad');
      silentReasons.push(silentReadings[0]!.reason!);
    }
    const skipped = 'device skipped: no reply in 2 polls in a row; tried again with growing pauses until it answers';
    assert.deepEqual(silentReasons, ['timeout: no response within 200 ms (2 attempts)', skipped, skipped, skipped]);

    // Every device on a serial line must agree on its settings.
    const other = createDriver(
      device({ name: 'other', connection: { ...serial, baudRate: 19200, unitId: 5 }, tags: [{ name: 'x', address: '40001' }] }),
      testContext(),
    );
    await assert.rejects(
      other.connect(),
      (error: unknown) => error instanceof DriverError && error.code === 'line-conflict' && /19200/.test(error.message),
    );

    // One line: the request counter is shared.
    assert.equal((live as ModbusDriver).lineRequestCount, (silent as ModbusDriver).lineRequestCount);

    // Writes and a register bit read-modify-write over RTU.
    const bit = device({ connection: { ...serial, unitId: 1 }, tags: [{ name: 'b1', address: '40014.1', writable: true }] })
      .tags[0]! as ModbusTag;
    await live.write(bit, true);
    const after = values(await live.read(live.plan([...liveConfig.tags, bit])));
    assert.equal(after.b1, true);
    assert.equal(after.bit2, true);
    assert.equal(after.bit15, true);
  });
  it('rtu on a serial line shared with another driver: each gets its own replies, requests never interleave on the wire', async (t) => {
    const defer = cleanup(t);
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-rtu-'));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    // The cable records every byte the gateway sends.
    const link = await startSerialLink(dir);
    defer(() => link.stop());
    const server = await startPymodbus('rtu', { serialPath: link.devicePath, units: [1] });
    defer(() => server.stop());

    const serial = { transport: 'rtu', path: link.path, baudRate: 9600 };
    const liveConfig = device({ name: 'live', connection: { ...serial, unitId: 1, timeout: 1000 }, tags: TAGS });
    const silentConfig = device({
      name: 'silent',
      connection: { ...serial, unitId: 2, timeout: 200, retries: 0, backoffAfterTimeouts: 100 },
      tags: [{ name: 's', address: '40001' }],
    });
    const live = createDriver(liveConfig, testContext());
    const silent = createDriver(silentConfig, testContext());
    defer(async () => {
      await live.close();
      await silent.close();
    });
    await live.connect();
    await silent.connect();

    // Another driver on the same port: raw requests through the registry, framed by itself.
    const other = acquireSerialPort(link.path, { baudRate: 9600, dataBits: 8, parity: 'none', stopBits: 1 }, { name: 'other driver' });
    defer(() => other.release());
    await other.open();
    const readU16 = withCrc(Buffer.from([1, 3, 0, 0, 0, 1])); // unit 1, FC3, holding 0, 1 register
    const expectedReply = withCrc(Buffer.from([1, 3, 2, 0x12, 0x34]));
    const replyOf7 = {
      timeout: 1000,
      frame: (received: Buffer) => (received.length >= 7 ? { reply: received.subarray(0, 7) } : ('more' as const)),
    };

    const livePlan = live.plan(liveConfig.tags);
    const silentPlan = silent.plan(silentConfig.tags);
    for (let round = 0; round < 3; round++) {
      const [liveReadings, silentReadings, ...replies] = await Promise.all([
        live.read(livePlan),
        silent.read(silentPlan),
        ...Array.from({ length: 5 }, () => other.transact(readU16, replyOf7)),
      ]);
      assert.deepEqual(values(liveReadings), EXPECTED, `round ${round}`);
      assert.equal(silentReadings[0]!.code, 'timeout');
      for (const reply of replies) assert.equal(reply.toString('hex'), expectedReply.toString('hex'));
    }
    const requests = rtuRequests(link.sent());
    assert.equal(requests.length, (live as ModbusDriver).lineRequestCount);
    assert.equal(requests.filter((frame) => frame.equals(readU16)).length, 15);
    assert.ok(
      requests.some((frame) => frame[0] === 2),
      'the silent unit was asked',
    );
  });
  it('rtu: the serial port disappears (adapter unplugged) and comes back: the loss is reported, the next connect reopens it', async (t) => {
    const defer = cleanup(t);
    const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-rtu-'));
    defer(() => rmSync(dir, { recursive: true, force: true }));
    const plug = async () => {
      const pty = await startPtyPair(dir);
      const server = await startPymodbus('rtu', { serialPath: pty.b, units: [1] });
      return async () => {
        await server.stop();
        await pty.stop();
      };
    };
    let unplug = await plug();
    defer(() => unplug());
    const config = device({ connection: { transport: 'rtu', path: `${dir}/ttyA`, baudRate: 9600, timeout: 500 }, tags: TAGS });
    const driver = createDriver(config, testContext());
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(config.tags);
    assert.deepEqual(values(await driver.read(plan)), EXPECTED);

    await unplug();
    await waitFor(() => !driver.connected, 5000, 'the driver to notice');
    // "serial …/ttyA (9600 8N1) lost: port closed: …" (or, read in the moment before the port's close event, "not connected to serial …").
    await assert.rejects(
      driver.read(plan),
      (error: unknown) => error instanceof DriverError && error.connectionLost && error.message.includes(`serial ${dir}/ttyA (9600 8N1)`),
    );
    await driver.close();
    await assert.rejects(driver.connect(), (error: unknown) => error instanceof DriverError && error.code === 'connect-failed');

    unplug = await plug();
    await driver.connect();
    assert.deepEqual(values(await driver.read(plan)), EXPECTED);
  });
});
