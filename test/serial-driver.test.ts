// The serial-line driver against instruments simulated in their own process (Python, pyserial:
// test/helpers/serial-instrument.py) on real serial lines (socat pty pairs) and behind an emulated
// serial device server (TCP). Each test runs the driver the way the gateway does (DeviceRunner).
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { SerialPort } from 'serialport';
import { modbusDevice } from '../drivers/modbus/config.js';
import { createDriver as createModbusDriver } from '../drivers/modbus/index.js';
import type { SerialDeviceConfig } from '../drivers/serial/config.js';
import { createDriver } from '../drivers/serial/index.js';
import { pollGroupsOf } from '../src/gateway.js';
import { DeviceRunner } from '../src/pipeline/device-runner.js';
import type { DriverTag, TagReading } from '../src/pipeline/driver.js';
import { registeredSerialPorts } from '../src/pipeline/serial-ports.js';
import { cleanup, startPtyPair, startPymodbus, testLogger } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';
import { serialConfig } from './helpers/serial-devices.js';
import { startInstrument, startSerialLine, type Instrument } from './helpers/serial-instrument.js';

interface Delivery {
  group: string;
  readings: TagReading[];
}

interface Running {
  runner: DeviceRunner;
  deliveries: Delivery[];
  /** The latest reading of a tag, across groups. */
  last(tag: string): TagReading | undefined;
  /** Waits for a reading of `tag` (delivered after now) that satisfies `check`; returns it. */
  next(tag: string, check: (reading: TagReading) => boolean, timeoutMs?: number): Promise<TagReading>;
}

function run(defer: (fn: () => unknown) => void, device: SerialDeviceConfig): Running {
  const log = testLogger();
  const deliveries: Delivery[] = [];
  const runner = new DeviceRunner({
    name: device.name,
    driver: createDriver(device, { log, dataDir: '/nonexistent' }),
    groups: pollGroupsOf(device),
    log,
    phaseOf: () => 0,
    onReadings: (event) => deliveries.push({ group: event.group, readings: event.readings }),
  });
  runner.start();
  defer(() => runner.stop());
  const readingsOf = (tag: string, from = 0): TagReading[] =>
    deliveries.slice(from).flatMap((delivery) => delivery.readings.filter((reading) => reading.tag === tag));
  return {
    runner,
    deliveries,
    last: (tag) => readingsOf(tag).at(-1),
    next: async (tag, check, timeoutMs = 8000) => {
      const from = deliveries.length;
      let found: TagReading | undefined;
      await waitFor(
        () => (found = readingsOf(tag, from).find(check)) !== undefined,
        timeoutMs,
        () => `a reading of ${tag}; last: ${JSON.stringify(readingsOf(tag).at(-1))}`,
      );
      return found!;
    },
  };
}

const good = (reading: TagReading) => reading.quality === 'good';

const SCALE_TAGS = [
  {
    name: 'weight',
    regex: '^S (?<status>[SD]) +(?<value>-?[0-9.]+) kg$',
    unit: 'kg',
    quality: { capture: 'status', good: ['S'], uncertain: ['D'] },
  },
  { name: 'tare', type: 'bool', read: false, writable: true, command: 'T\r\n', ack: '^T S' },
];

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'serial-driver-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function scaleOnLine(t: TestContext, defer: (fn: () => unknown) => void) {
  const line = await startSerialLine(tempDir(t));
  defer(() => line.stop());
  const scale = await startInstrument({ kind: 'scale', pty: line.device });
  defer(() => scale.stop());
  return { line, scale };
}

describe('serial driver: a scale on a serial line (MT-SICS over a socat pty pair)', () => {
  it('request/response: stable weight is good, a moving one uncertain, overload bad with the frame in the reason', async (t) => {
    const defer = cleanup(t);
    const { line, scale } = await scaleOnLine(t, defer);
    const device = run(
      defer,
      serialConfig({ connection: { transport: 'serial', path: line.gateway }, request: 'SI\r\n', pollInterval: 100, tags: SCALE_TAGS }),
    );
    const stable = await device.next('weight', good);
    assert.equal(stable.value, 12.345);
    await scale.control({ set: { stable: false } });
    const moving = await device.next('weight', (reading) => reading.quality === 'uncertain');
    assert.equal(typeof moving.value, 'number');
    assert.match(moving.reason ?? '', /status "D"/);
    await scale.control({ set: { overload: true } });
    const overload = await device.next('weight', (reading) => reading.quality === 'bad');
    assert.equal(overload.code, 'bad-reply');
    assert.match(overload.reason ?? '', /"S \+"/);
    await scale.control({ set: { overload: false, stable: true, weight: 3.5 } });
    assert.equal((await device.next('weight', good)).value, 3.5);
    // The command-only tag is never read.
    assert.equal(device.last('tare'), undefined);
    assert.ok(scale.requests().every((request) => request === 'SI\r\n'));
  });

  it('writes: tare is acknowledged ("T S"), weights are net afterwards; an answer that is not the ack fails the write', async (t) => {
    const defer = cleanup(t);
    const { line, scale } = await scaleOnLine(t, defer);
    const device = serialConfig({
      connection: { transport: 'serial', path: line.gateway },
      request: 'SI\r\n',
      pollInterval: 200,
      tags: SCALE_TAGS,
    });
    const running = run(defer, device);
    await running.next('weight', good);
    const tare = device.tags.find((tag) => tag.name === 'tare')!;
    await running.runner.write(tare, true);
    await scale.waitForRequest((request) => request === 'T\r\n');
    assert.equal((await running.next('weight', good)).value, 0);
    await scale.control({ set: { busy: true } });
    await assert.rejects(running.runner.write(tare, true), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'bad-reply');
      assert.match(error.message, /did not acknowledge "T\\r\\n": it answered "T I" \(expected \/\^T S\/\)/);
      return true;
    });
    await assert.rejects(running.runner.write(tare, 'yes'), /not a bool/);
  });

  it('a frame split across many reads, garbage and noise once, a partial frame once: each costs one poll at most, then good again', async (t) => {
    const defer = cleanup(t);
    const { line, scale } = await scaleOnLine(t, defer);
    const device = run(
      defer,
      serialConfig({
        connection: { transport: 'serial', path: line.gateway, timeout: 300 },
        request: 'SI\r\n',
        pollInterval: 100,
        tags: SCALE_TAGS,
      }),
    );
    await device.next('weight', good);
    await scale.control({ mode: 'split' });
    assert.equal((await device.next('weight', good)).value, 12.345);
    await scale.control({ mode: 'normal' });
    await scale.control({ once: 'garbage' });
    const garbage = await device.next('weight', (reading) => reading.quality === 'bad');
    assert.match(garbage.reason ?? '', /does not match|unparsed/);
    await device.next('weight', good);
    await scale.control({ once: 'partial' });
    const partial = await device.next('weight', (reading) => reading.quality === 'bad');
    assert.equal(partial.code, 'timeout');
    assert.match(partial.reason ?? '', /no complete reply: "S S/);
    await device.next('weight', good);
    await scale.control({ once: 'noise' });
    await device.next('weight', (reading) => reading.quality === 'bad');
    assert.equal((await device.next('weight', good)).value, 12.345);
  });

  it('a device that floods without delimiters: bounded, bad with the reason, and good again when it behaves', async (t) => {
    const defer = cleanup(t);
    const { line, scale } = await scaleOnLine(t, defer);
    const device = run(
      defer,
      serialConfig({
        connection: { transport: 'serial', path: line.gateway, timeout: 300 },
        framing: { type: 'delimiter', delimiter: '\r\n', maxLength: 64 },
        request: 'SI\r\n',
        pollInterval: 100,
        tags: SCALE_TAGS,
      }),
    );
    await device.next('weight', good);
    await scale.control({ mode: 'flood' });
    const flooded = await device.next('weight', (reading) => reading.quality === 'bad' && /maxLength/.test(reading.reason ?? ''));
    assert.equal(flooded.code, 'bad-reply');
    assert.match(flooded.reason ?? '', /frame longer than maxLength 64 bytes/);
    await scale.control({ mode: 'normal' });
    assert.equal((await device.next('weight', good, 15_000)).value, 12.345);
  });

  it('a silent device: timeouts, then skipped with nextTryAt (back-off), then good again by itself', async (t) => {
    const defer = cleanup(t);
    const { line, scale } = await scaleOnLine(t, defer);
    const device = run(
      defer,
      serialConfig({
        connection: { transport: 'serial', path: line.gateway, timeout: 200, backoffAfterTimeouts: 2 },
        request: 'SI\r\n',
        pollInterval: 100,
        tags: SCALE_TAGS,
      }),
    );
    await device.next('weight', good);
    await scale.control({ mode: 'silent' });
    const timeout = await device.next('weight', (reading) => reading.code === 'timeout');
    assert.match(timeout.reason ?? '', /timeout: no reply within 200 ms to "SI\\r\\n"/);
    const skipped = await device.next('weight', (reading) => reading.code === 'skipped');
    assert.match(skipped.reason ?? '', /skipped: no answer to 2 requests in a row/);
    assert.ok(device.runner.health.nextTryAt !== undefined, 'nextTryAt is shown while skipped');
    await scale.control({ mode: 'normal' });
    await device.next('weight', good, 15_000);
    assert.equal(device.runner.health.nextTryAt, undefined);
  });

  it('the adapter unplugged (ptys gone) and plugged in again: bad while gone, reopened by the driver itself', async (t) => {
    const defer = cleanup(t);
    const dir = tempDir(t);
    const line = await startSerialLine(dir);
    defer(() => line.stop());
    let scale: Instrument = await startInstrument({ kind: 'scale', pty: line.device });
    defer(() => scale.stop());
    const device = run(
      defer,
      serialConfig({
        connection: { transport: 'serial', path: line.gateway, timeout: 300 },
        request: 'SI\r\n',
        pollInterval: 100,
        tags: SCALE_TAGS,
      }),
    );
    await device.next('weight', good);
    await scale.stop();
    await line.unplug();
    const lost = await device.next('weight', (reading) => reading.quality === 'bad' && reading.code === 'not-connected');
    assert.match(lost.reason ?? '', /gateway/);
    await line.replug();
    scale = await startInstrument({ kind: 'scale', pty: line.device });
    await scale.control({ set: { weight: 7.25 } });
    assert.equal((await device.next('weight', good, 20_000)).value, 7.25);
  });
});

describe('serial driver: streaming (an NMEA GPS receiver behind a serial device server)', () => {
  const NMEA = {
    // "$" … "*" with the XOR of the body in two hex digits; the CR LF after it is skipped as noise.
    framing: { type: 'stx-etx', start: '$', end: '*', checksum: { type: 'xor', format: 'hex', over: 'body' }, maxLength: 120 },
    pollInterval: 1000,
    staleAfter: 600,
    tags: [
      { name: 'latitude', match: '^GPGGA,', split: ',', index: 2, type: 'string' },
      { name: 'fix', match: '^GPGGA,', split: ',', index: 6, type: 'int32' },
      { name: 'speed', match: '^GPRMC,', split: ',', index: 7, unit: 'kn' },
    ],
  };

  it('each frame is parsed as it arrives (per sentence type); silence, or only bad frames, make the tags stale', async (t) => {
    const defer = cleanup(t);
    const gps = await startInstrument({ kind: 'nmea', tcp: 0, period: 50 });
    defer(() => gps.stop());
    await gps.control({ set: { speed: 12.5 } });
    const device = run(defer, serialConfig({ connection: { transport: 'tcp', host: '127.0.0.1', port: gps.port }, ...NMEA }));
    assert.equal((await device.next('latitude', good)).value, '4807.0380');
    assert.equal((await device.next('fix', good)).value, 1);
    assert.equal((await device.next('speed', good)).value, 12.5);
    // Frames come one by one: a GGA delivery carries no speed.
    const gga = device.deliveries.find((delivery) => delivery.readings.some((reading) => reading.tag === 'latitude'));
    assert.ok(gga && !gga.readings.some((reading) => reading.tag === 'speed'));
    // One bad sentence turns no tag bad (which tags it was for is unknown): the next ones are good.
    const beforeBad = device.deliveries.length;
    await gps.control({ once: 'bad-checksum' });
    await device.next('fix', good);
    await device.next('speed', good);
    const sinceBad = device.deliveries.slice(beforeBad).flatMap((delivery) => delivery.readings);
    assert.ok(sinceBad.every(good), JSON.stringify(sinceBad.filter((reading) => !good(reading))));
    // Silence makes the tags stale.
    await gps.control({ mode: 'silent' });
    const stale = await device.next('speed', (reading) => reading.quality === 'bad');
    assert.equal(stale.code, 'timeout');
    assert.match(stale.reason ?? '', /no new frame for this tag within 600 ms \(staleAfter\)$/);
    await gps.control({ mode: 'normal' });
    await device.next('speed', good);
    // Only bad sentences: stale, and the reason says why.
    await gps.control({ mode: 'silent' });
    await gps.control({ send: '$GPRMC,1*00\r\n' });
    const garbled = await device.next('speed', (reading) => reading.quality === 'bad');
    assert.equal(garbled.code, 'bad-reply');
    assert.match(
      garbled.reason ?? '',
      /within 600 ms \(staleAfter\); 1 bad frame since the last good one, the last: xor checksum mismatch/,
    );
    await gps.control({ mode: 'normal' });
    await device.next('speed', good);
    assert.equal(gps.clients(), 1);
  });

  it('deliver "interval": the latest value once per interval', async (t) => {
    const defer = cleanup(t);
    const gps = await startInstrument({ kind: 'nmea', tcp: 0, period: 20 });
    defer(() => gps.stop());
    const device = run(
      defer,
      serialConfig({
        connection: { transport: 'tcp', host: '127.0.0.1', port: gps.port },
        ...NMEA,
        deliver: 'interval',
        pollInterval: 300,
      }),
    );
    await device.next('fix', good);
    await waitFor(() => device.deliveries.length >= 4, 5000, 'four interval deliveries');
    // Every delivery carries every tag of the group, as a poll does.
    for (const delivery of device.deliveries.slice(1))
      assert.deepEqual(
        delivery.readings.map((reading) => reading.tag),
        ['latitude', 'fix', 'speed'],
      );
  });
});

describe('serial driver: an ASCII instrument with STX/ETX and a checksum (request/response, multi-drop)', () => {
  const ASCII = (port: number, unitId: string) =>
    serialConfig({
      name: `unit${unitId}`,
      connection: { transport: 'tcp', host: '127.0.0.1', port, timeout: 500 },
      framing: { type: 'stx-etx', checksum: { type: 'xor' } },
      unitId,
      request: '{unitId}RD',
      reply: '^\\d\\dRD ',
      pollInterval: 100,
      tags: [
        {
          name: 'temperature',
          regex: 'T=(?<value>[+-]\\d+\\.\\d+)',
          unit: '°C',
          quality: { regex: 'ST=(\\w+)', capture: 1, good: ['OK'], uncertain: ['ALARM'] },
        },
        { name: 'pressure', regex: 'P=(?<value>\\d+\\.\\d+)' },
        { name: 'setpoint', writable: true, read: false, command: '{unitId}SP={value:.1f}', ack: 'SP OK$', write: { min: 0, max: 100 } },
      ],
    });

  it('two units share one device-server connection; checksums verified both ways; setpoint writes acknowledged or refused', async (t) => {
    const defer = cleanup(t);
    const line = await startInstrument({ kind: 'ascii', tcp: 0, unitId: '01,02', checksum: 'xor' });
    defer(() => line.stop());
    const one = ASCII(line.port!, '01');
    const two = ASCII(line.port!, '02');
    const first = run(defer, one);
    const second = run(defer, two);
    await line.control({ set: { temperature: -5.5, status: 'ALARM' }, unit: '02' });
    assert.equal((await first.next('temperature', good)).value, 23.45);
    assert.equal((await first.next('pressure', good)).value, 1013.2);
    const alarm = await second.next('temperature', (reading) => reading.quality === 'uncertain');
    assert.equal(alarm.value, -5.5);
    assert.equal(line.clients(), 1, 'both devices on one connection');
    assert.equal(registeredSerialPorts(), 1);
    const setpoint = one.tags.find((tag) => tag.name === 'setpoint')!;
    await first.runner.write(setpoint, 42.5);
    assert.ok(line.requests().some((request) => request.startsWith('\x0201SP=42.5\x03')));
    await assert.rejects(first.runner.write(setpoint, 150), /it answered "01SP ERR" \(expected \/SP OK\$\/\)/);
    // The next reply of either unit goes out with a wrong checksum.
    await line.control({ once: 'bad-checksum' });
    const bad = await Promise.any([
      first.next('temperature', (reading) => reading.quality === 'bad'),
      second.next('temperature', (reading) => reading.quality === 'bad'),
    ]);
    assert.match(bad.reason ?? '', /xor checksum mismatch/);
    await first.next('temperature', good);
    await second.next('temperature', (reading) => reading.quality !== 'bad');
  });
});

describe('serial driver: one RS-485 line shared by two serial-line units and a Modbus RTU device', () => {
  /**
   * An RS-485 bus: what the gateway sends reaches every device, what any device sends reaches the
   * gateway. Three socat pty pairs joined here; the devices are pymodbus and the Python instrument.
   */
  async function bus(t: TestContext, defer: (fn: () => unknown) => void, dir: string) {
    const gatewaySide = await startPtyPair(join(dir, 'gw'));
    const modbusSide = await startPtyPair(join(dir, 'mb'));
    const asciiSide = await startPtyPair(join(dir, 'as'));
    for (const pair of [gatewaySide, modbusSide, asciiSide]) defer(() => pair.stop());
    const open = async (path: string) => {
      const port = new SerialPort({ path, baudRate: 9600, autoOpen: false });
      port.on('error', () => undefined);
      await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
      defer(() => new Promise<void>((resolve) => (port.isOpen ? port.close(() => resolve()) : resolve())));
      return port;
    };
    const hub = await open(gatewaySide.b);
    const devices = [await open(modbusSide.a), await open(asciiSide.a)];
    hub.on('data', (chunk: Buffer) => {
      for (const device of devices) device.write(chunk);
    });
    for (const device of devices) device.on('data', (chunk: Buffer) => hub.write(chunk));
    t.diagnostic(`bus: gateway ${gatewaySide.a}`);
    return { gateway: gatewaySide.a, modbus: modbusSide.b, ascii: asciiSide.b };
  }

  it('all three read good; a dead Modbus device costs the serial-line units only its own timeouts', async (t) => {
    const defer = cleanup(t);
    const dir = tempDir(t);
    for (const sub of ['gw', 'mb', 'as']) mkdirSync(join(dir, sub));
    const line = await bus(t, defer, dir);
    const pymodbus = await startPymodbus('rtu', { serialPath: line.modbus, units: [1] });
    defer(() => pymodbus.stop());
    const ascii = await startInstrument({ kind: 'ascii', pty: line.ascii, unitId: '01,02' });
    defer(() => ascii.stop());
    const serialUnit = (unitId: string) =>
      serialConfig({
        name: `unit${unitId}`,
        connection: { transport: 'serial', path: line.gateway, timeout: 300 },
        framing: { type: 'stx-etx', checksum: { type: 'xor' } },
        unitId,
        request: '{unitId}RD',
        pollInterval: 100,
        tags: [{ name: 'temperature', regex: 'T=(?<value>[+-]\\d+\\.\\d+)' }],
      });
    const log = testLogger();
    const modbusConfig = modbusDevice.parse({
      name: 'plc',
      driver: 'modbus',
      connection: { transport: 'rtu', path: line.gateway, unitId: 1, timeout: 300, backoffAfterTimeouts: 2 },
      tags: [{ name: 'word', address: '40001' }],
    });
    const plc: TagReading[][] = [];
    const modbusRunner = new DeviceRunner({
      name: 'plc',
      driver: createModbusDriver(modbusConfig, { log, dataDir: '/nonexistent' }),
      groups: [{ name: 'default', interval: 100, tags: modbusConfig.tags as DriverTag[] }],
      log,
      phaseOf: () => 0,
      onReadings: (event) => plc.push(event.readings),
    });
    modbusRunner.start();
    defer(() => modbusRunner.stop());
    const one = run(defer, serialUnit('01'));
    const two = run(defer, serialUnit('02'));
    await waitFor(() => plc.some((cycle) => cycle[0]?.quality === 'good'), 10_000, 'a good Modbus read');
    assert.equal(plc.find((cycle) => cycle[0]?.quality === 'good')![0]!.value, 0x1234);
    await one.next('temperature', good);
    await two.next('temperature', good);
    assert.equal(registeredSerialPorts(), 1, 'one owner of the port');
    // Ten more good cycles each, side by side: no reply was ever taken by the wrong device.
    const from = plc.length;
    const oneFrom = one.deliveries.length;
    await waitFor(() => plc.length - from >= 10 && one.deliveries.length - oneFrom >= 10, 15_000, 'ten cycles each');
    assert.ok(
      plc.slice(from).every((cycle) => cycle[0]?.quality === 'good'),
      JSON.stringify(plc.slice(from)),
    );
    assert.ok(one.deliveries.slice(oneFrom).every((delivery) => delivery.readings.every(good)));
    // The Modbus device dies: it times out and is skipped; the serial-line units keep reading good.
    await pymodbus.stop();
    await waitFor(() => plc.some((cycle) => cycle[0]?.code === 'skipped'), 10_000, 'the Modbus device skipped');
    const twoFrom = two.deliveries.length;
    await waitFor(() => two.deliveries.length - twoFrom >= 10, 10_000, 'ten more cycles of unit 02');
    assert.ok(
      two.deliveries.slice(twoFrom).every((delivery) => delivery.readings.every(good)),
      JSON.stringify(
        two.deliveries
          .slice(twoFrom)
          .flatMap((delivery) => delivery.readings)
          .filter((reading) => !good(reading)),
      ),
    );
  });
});

describe('serial driver: writes a command cannot carry are refused before anything is sent', () => {
  it('a value its format or the line cannot take is invalid-value (the command path answers it as a refusal)', async () => {
    const device = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: 1 },
      request: 'RD\r',
      tags: [
        { name: 'label', type: 'string', read: false, writable: true, command: 'N{value}\r' },
        { name: 'setpoint', read: false, writable: true, command: 'SP {value:.1f}\r' },
      ],
    });
    const driver = createDriver(device, { log: testLogger(), dataDir: '/nonexistent' });
    const [label, setpoint] = device.tags;
    await assert.rejects(driver.write(label!, '€'), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'invalid-value');
      assert.match(error.message, /"€" is not a single byte/);
      return true;
    });
    await assert.rejects(driver.write(setpoint!, 'abc'), (error: Error & { code?: string }) => error.code === 'invalid-value');
    await driver.close();
  });
});
