// Adversarial sequences for the serial-line driver against scripted device servers (raw TCP): a
// device that streams and answers requests, replies cut across chunks, a streaming device that is
// written to, late replies on a shared line. Each peer is a plain net.Server whose script reacts to
// the bytes it receives, so every sequence is exactly the same on every run.
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { SerialDeviceConfig } from '../drivers/serial/config.js';
import { createDriver, type SerialDriver } from '../drivers/serial/index.js';
import type { TagReading } from '../src/pipeline/driver.js';
import { registeredSerialPorts } from '../src/pipeline/serial-ports.js';
import { cleanup, testLogger } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';
import { serialConfig, startDeviceServer } from './helpers/serial-devices.js';

/**
 * A scale behind the device server at `port` that streams its weight and answers "I4" with its
 * serial number (group "info", told apart by its reply pattern). `extra` adds to the connection
 * and sets other device fields.
 */
function streamingScale(port: number, extra: { connection?: Record<string, unknown>; [field: string]: unknown } = {}): SerialDeviceConfig {
  const { connection, ...rest } = extra;
  return serialConfig({
    connection: { transport: 'tcp', host: '127.0.0.1', port, ...connection },
    pollGroups: { info: { interval: 1000, request: 'I4\r\n', reply: '^I4 ' } },
    tags: [
      { name: 'weight', regex: '(?<value>\\d+\\.\\d+) kg' },
      { name: 'serial', type: 'string', group: 'info', regex: '"(?<value>[^"]*)"' },
    ],
    ...rest,
  });
}

function driverOf(t: TestContext, device: SerialDeviceConfig): SerialDriver {
  const driver = createDriver(device, { log: testLogger(), dataDir: '/nonexistent' });
  t.after(() => driver.close());
  return driver;
}

describe('serial adversarial: a device that streams and answers requests', () => {
  it('the tail of a streamed frame cut by a reply is not parsed as a frame of its own (no wrong good value)', async (t) => {
    const defer = cleanup(t);
    // The scale streams "S S     12.345 kg"; asked "I4" it answers, and its next streamed frame
    // starts in the same TCP segment as the answer and ends in the next one.
    const device = await startDeviceServer((socket, data) => {
      if (!data.includes('I4\r\n')) return;
      socket.write('I4 A "SN1"\r\nS S     1');
      setTimeout(() => socket.write('2.345 kg\r\n'), 40);
    });
    defer(() => device.close());
    const device_ = streamingScale(device.port);
    const driver = driverOf(t, device_);
    await driver.connect();
    const weight = driver.plan([device_.tags[0]!]);
    const delivered: TagReading[] = [];
    await driver.subscribe(weight, (readings) => delivered.push(...readings));
    const [serial] = await driver.read(driver.plan([device_.tags[1]!]));
    assert.equal(serial?.value, 'SN1');
    await sleep(150);
    // Was: {"tag":"weight","value":2.345,"quality":"good"}: "2.345 kg", the tail of "S S     12.345 kg".
    // The rest after the reply goes back to the stream, so the frame is whole again (or not reported).
    assert.deepEqual(
      delivered.filter((reading) => reading.quality === 'good' && reading.value !== 12.345).map((reading) => reading.value),
      [],
      `a wrong good value from the tail of a cut frame: ${JSON.stringify(delivered)}`,
    );
  });

  it('a streamed frame in the same chunk right after the reply is not lost', async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer((socket, data) => {
      if (data.includes('I4\r\n')) socket.write('I4 A "SN1"\r\nS S     12.345 kg\r\n');
    });
    defer(() => device.close());
    const device_ = streamingScale(device.port);
    const driver = driverOf(t, device_);
    await driver.connect();
    const delivered: TagReading[] = [];
    await driver.subscribe(driver.plan([device_.tags[0]!]), (readings) => delivered.push(...readings));
    await driver.read(driver.plan([device_.tags[1]!]));
    await sleep(100);
    assert.deepEqual(
      delivered.map((reading) => reading.value),
      [12.345],
    );
  });

  it('a reply preceded by more streamed frames than 2 × maxLength is still the reply', async (t) => {
    const defer = cleanup(t);
    // A GPS-like device at 115200 baud streams 3 kB per ~250 ms; its answer to "ID" comes after one burst.
    const frame = 'S D      1.000 kg\r\n';
    const device = await startDeviceServer((socket, data) => {
      if (!data.includes('ID\r\n')) return;
      socket.write(frame.repeat(160));
      setTimeout(() => socket.write('ID A "X1"\r\n'), 30);
    });
    defer(() => device.close());
    const device_ = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: device.port },
      framing: { type: 'delimiter', delimiter: '\r\n', maxLength: 100 },
      request: 'ID\r\n',
      reply: '^ID ',
      pollGroups: { weight: { interval: 1000 } },
      tags: [
        { name: 'id', type: 'string', regex: '"(?<value>[^"]*)"' },
        { name: 'weight', group: 'weight', regex: '(?<value>\\d+\\.\\d+) kg' },
      ],
    });
    const driver = driverOf(t, device_);
    await driver.connect();
    const [id] = await driver.read(driver.plan([device_.tags[0]!]));
    // Was (before the fix): bad-reply "bad reply: more than 264 bytes without a complete reply".
    assert.equal(id?.quality, 'good', JSON.stringify(id));
    assert.equal(id?.value, 'X1');
  });

  it('a write with ack to a device that streams takes the acknowledgement, not the streamed frame before it', async (t) => {
    const defer = cleanup(t);
    // A scale in continuous mode (SIR): a weight frame goes out just before the answer to "T".
    const device = await startDeviceServer((socket, data) => {
      if (data.includes('T\r\n')) socket.write('S S     12.345 kg\r\nT S      1.850 kg\r\n');
    });
    defer(() => device.close());
    const device_ = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: device.port },
      tags: [
        {
          name: 'weight',
          regex: '^S (?<status>[SD]) +(?<value>-?[0-9.]+) kg$',
          quality: { capture: 'status', good: ['S'], uncertain: ['D'] },
        },
        { name: 'tare', type: 'bool', read: false, writable: true, command: 'T\r\n', ack: '^T S' },
      ],
    });
    const driver = driverOf(t, device_);
    await driver.connect();
    // Was (before the fix): DriverError bad-reply 'the device did not acknowledge "T\r\n": it answered "S S     12.345 kg" (expected /^T S/)'.
    await driver.write(device_.tags[1]!, true);
  });

  it('frames streamed before the reply of a request go to the streaming tags, the reply to the request (holds)', async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer(
      (socket, data) => {
        if (!data.includes('I4\r\n')) return;
        socket.write('S S     1.');
        setTimeout(() => socket.write('500 kg\r\nS S     2.500 kg\r\nI4 A'), 20);
        setTimeout(() => socket.write(' "SN7"\r\n'), 40);
      },
      // The first frame after a connect may be the tail of one cut by it, and is dropped: this one
      // tells the driver where frames start.
      (socket) => socket.write('S S     0.500 kg\r\n'),
    );
    defer(() => device.close());
    const device_ = streamingScale(device.port);
    const driver = driverOf(t, device_);
    await driver.connect();
    const delivered: TagReading[] = [];
    await driver.subscribe(driver.plan([device_.tags[0]!]), (readings) => delivered.push(...readings));
    await sleep(50);
    const [serial] = await driver.read(driver.plan([device_.tags[1]!]));
    assert.equal(serial?.value, 'SN7');
    assert.deepEqual(
      delivered.map((reading) => reading.value),
      [1.5, 2.5],
    );
  });
});

describe('serial adversarial: late replies on a shared device-server line', () => {
  it('a late answer of one device is never the next device’s reply, and the other device keeps answering (holds)', async (t) => {
    const defer = cleanup(t);
    // Unit 01 answers after 150 ms (its timeout is 100 ms: the answer comes within the time the line waits for it); unit 02 at once. Both say who they are.
    const line = await startDeviceServer((socket, data) => {
      for (const request of data.split('\r\n')) {
        if (request === '01RD') setTimeout(() => socket.write('01,PV=111\r\n'), 150);
        if (request === '02RD') socket.write('02,PV=222\r\n');
      }
    });
    defer(() => line.close());
    const unit = (id: string, timeout: number) =>
      serialConfig({
        name: `unit-${id}`,
        connection: { transport: 'tcp', host: '127.0.0.1', port: line.port, timeout },
        request: `${id}RD\r\n`,
        tags: [{ name: 'pv', type: 'int32', regex: '^\\d\\d,PV=(?<value>\\d+)$' }],
      });
    const slow = unit('01', 100);
    const fast = unit('02', 1000);
    const slowDriver = driverOf(t, slow);
    const fastDriver = driverOf(t, fast);
    await slowDriver.connect();
    await fastDriver.connect();
    const slowPlan = slowDriver.plan(slow.tags);
    const fastPlan = fastDriver.plan(fast.tags);
    const values: unknown[] = [];
    for (let round = 0; round < 3; round++) {
      const [slowResult, fastResult] = await Promise.all([slowDriver.read(slowPlan), fastDriver.read(fastPlan)]);
      assert.equal(slowResult![0]?.code, 'timeout');
      values.push(fastResult![0]?.value);
    }
    assert.deepEqual(values, [222, 222, 222]);
    assert.equal(registeredSerialPorts(), 1);
  });
});

describe('serial adversarial: lifecycle', () => {
  it('close() while a request waits for a silent device ends it at once and unregisters the line (holds)', async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer(() => undefined);
    defer(() => device.close());
    const device_ = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: device.port, timeout: 60_000 },
      request: 'RD\r\n',
      tags: [{ name: 'pv' }],
    });
    const driver = driverOf(t, device_);
    await driver.connect();
    const reading = driver.read(driver.plan(device_.tags));
    await waitFor(() => device.received().includes('RD'), 2000, 'the request');
    await driver.close();
    const [result] = await reading;
    assert.equal(result?.quality, 'bad');
    assert.equal(result?.code, 'closed');
    assert.equal(registeredSerialPorts(), 0);
  });
});

describe('serial adversarial: floods', () => {
  it('a device server flooding garbage without delimiters and then valid frames at full speed: memory stays bounded, values keep coming (holds)', async (t) => {
    const defer = cleanup(t);
    const garbage = Buffer.alloc(64 * 1024, 'x');
    const frames = Buffer.from('W 1.250 kg\r\n'.repeat(5000));
    let phase: 'garbage' | 'frames' = 'garbage';
    let sent = 0;
    // Paused while memory is measured: what is in transit between the two ends then (a loaded
    // machine lets the sender run far ahead) is not what the gateway keeps.
    let paused = false;
    let resume: (() => void) | undefined;
    let server: Socket | undefined;
    const device = await startDeviceServer(
      () => undefined,
      (socket) => {
        server = socket;
        const pump = (): void => {
          while (!socket.destroyed) {
            if (paused) {
              resume = pump;
              return;
            }
            const chunk = phase === 'garbage' ? garbage : frames;
            sent += chunk.length;
            if (!socket.write(chunk)) {
              socket.once('drain', pump);
              return;
            }
          }
        };
        pump();
      },
    );
    defer(() => device.close());
    const device_ = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: device.port },
      framing: { type: 'delimiter', delimiter: '\r\n', maxLength: 256 },
      tags: [{ name: 'weight', regex: '(?<value>\\d+\\.\\d+) kg' }],
    });
    const driver = driverOf(t, device_);
    await driver.connect();
    let good = 0;
    await driver.subscribe(driver.plan(device_.tags), (readings) => {
      for (const reading of readings) if (reading.quality === 'good') good++;
    });
    // Memory that is still referenced after a full collection (received chunks are garbage at once).
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const live = async (): Promise<NodeJS.MemoryUsage> => {
      paused = true;
      // Until the sender's own buffer is handed to the kernel (received data is garbage at once).
      await waitFor(() => (server?.writableLength ?? 0) === 0, 10_000, "the sender's buffer to drain");
      gc();
      const usage = process.memoryUsage();
      paused = false;
      const next = resume;
      resume = undefined;
      next?.();
      return usage;
    };
    const baseline = await live();
    await waitFor(
      () => sent > 300 * 1024 * 1024,
      30_000,
      () => `300 MB of garbage sent (${sent})`,
    );
    assert.equal(good, 0);
    const afterGarbage = await live();
    phase = 'frames';
    await waitFor(
      () => good > 200_000,
      30_000,
      () => `200 000 frames (${good})`,
    );
    const afterFrames = await live();
    await driver.close();
    const grew = (from: NodeJS.MemoryUsage, to: NodeJS.MemoryUsage) => to.heapUsed + to.arrayBuffers - (from.heapUsed + from.arrayBuffers);
    // Unbounded buffering would hold hundreds of MB; the splitter keeps at most maxLength.
    assert.ok(grew(baseline, afterGarbage) < 64 * 1024 * 1024, JSON.stringify({ baseline, afterGarbage }));
    assert.ok(grew(baseline, afterFrames) < 64 * 1024 * 1024, JSON.stringify({ baseline, afterFrames }));
  });

  it('a device that streams every 5 ms and answers: with its "reply" pattern the answer is the reply, not a streamed frame (holds; without one validate refuses the config)', async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer(
      (socket, data) => {
        if (data.includes('I4\r\n')) setTimeout(() => socket.write('I4 A "SN1"\r\n'), 15);
      },
      (socket) => {
        const timer = setInterval(() => socket.write('S S     12.345 kg\r\n'), 5);
        socket.on('close', () => clearInterval(timer));
      },
    );
    defer(() => device.close());
    const device_ = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: device.port },
      pollGroups: { info: { interval: 1000, request: 'I4\r\n', reply: '^I4 ' } },
      tags: [
        { name: 'weight', regex: '^S [SD] +(?<value>-?[0-9.]+) kg$' },
        { name: 'serial', type: 'string', group: 'info', regex: '^I4 A "(?<value>[^"]*)"$' },
      ],
    });
    const driver = driverOf(t, device_);
    await driver.connect();
    const [serial] = await driver.read(driver.plan([device_.tags[1]!]));
    assert.equal(serial?.value, 'SN1', JSON.stringify(serial));
  });
});

describe('serial adversarial: review findings', () => {
  it('a bad streamed frame before the reply does not fail the request (it is counted as a bad streamed frame)', async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer((socket, data) => {
      if (data.includes('I4\r\n')) socket.write(`${'X'.repeat(80)}\r\nS S     3.000 kg\r\nI4 A "SN9"\r\n`);
    });
    defer(() => device.close());
    const device_ = streamingScale(device.port, { framing: { type: 'delimiter', delimiter: '\r\n', maxLength: 40 } });
    const driver = driverOf(t, device_);
    await driver.connect();
    const delivered: TagReading[] = [];
    await driver.subscribe(driver.plan([device_.tags[0]!]), (readings) => delivered.push(...readings));
    const [serial] = await driver.read(driver.plan([device_.tags[1]!]));
    assert.equal(serial?.quality, 'good', JSON.stringify(serial));
    assert.equal(serial?.value, 'SN9');
    assert.deepEqual(
      delivered.map((reading) => reading.value),
      [3],
    );
  });

  it("the first frame after a connect is kept when the line was quiet before it (a barcode reader's first scan)", async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer(
      () => undefined,
      (socket) => setTimeout(() => socket.write('4006381333931\r\n'), 300),
    );
    defer(() => device.close());
    const device_ = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: device.port },
      tags: [{ name: 'code', type: 'string' }],
    });
    const driver = driverOf(t, device_);
    await driver.connect();
    const delivered: TagReading[] = [];
    await driver.subscribe(driver.plan(device_.tags), (readings) => delivered.push(...readings));
    await waitFor(() => delivered.length > 0, 5000, 'the first scan');
    assert.equal(delivered[0]?.value, '4006381333931');
  });

  it('a device that streams but ignores a request is not taken for a hung connection (no renewal), only skipped', async (t) => {
    const defer = cleanup(t);
    const device = await startDeviceServer(
      () => undefined,
      (socket) => {
        const timer = setInterval(() => socket.write('S S     1.000 kg\r\n'), 10);
        socket.on('close', () => clearInterval(timer));
      },
    );
    defer(() => device.close());
    const device_ = streamingScale(device.port, { connection: { timeout: 100, backoffAfterTimeouts: 2 } });
    const driver = driverOf(t, device_);
    await driver.connect();
    await driver.subscribe(driver.plan([device_.tags[0]!]), () => undefined);
    const plan = driver.plan([device_.tags[1]!]);
    const codes: (string | undefined)[] = [];
    for (let poll = 0; poll < 3; poll++) codes.push((await driver.read(plan))[0]?.code);
    assert.deepEqual(codes, ['timeout', 'timeout', 'skipped']);
    assert.equal(device.connections, 1);
  });
});
