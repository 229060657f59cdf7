// Adversarial sequences for serial-line devices as the gateway runs them (DeviceRunner) and as
// `plc2mqtt read` reads them: device servers that accept and drop, accept and never answer, a
// connection that is stuck, a device that is skipped, stop() with everything in flight.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import type { SerialDeviceConfig } from '../drivers/serial/config.js';
import { createDriver } from '../drivers/serial/index.js';
import { pollGroupsOf } from '../src/gateway.js';
import { DeviceRunner } from '../src/pipeline/device-runner.js';
import { DriverError, type TagReading } from '../src/pipeline/driver.js';
import { registeredSerialPorts } from '../src/pipeline/serial-ports.js';
import { cleanup, testLogger } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';
import { serialConfig, startDeviceServer } from './helpers/serial-devices.js';

function run(t: TestContext, device: SerialDeviceConfig): { runner: DeviceRunner; readings: TagReading[] } {
  const log = testLogger();
  const readings: TagReading[] = [];
  const runner = new DeviceRunner({
    name: device.name,
    driver: createDriver(device, { log, dataDir: '/nonexistent' }),
    groups: pollGroupsOf(device),
    log,
    phaseOf: () => 0,
    onReadings: (event) => readings.push(...event.readings),
  });
  runner.start();
  t.after(() => runner.stop());
  return { runner, readings };
}

describe('serial adversarial: device servers that misbehave', () => {
  it('a device server that accepts and drops every connection is not reconnected to on every tick (streaming group)', async (t) => {
    const defer = cleanup(t);
    // Accepts, then closes 30 ms later: the subscription succeeds each time, the line drops each time.
    const server = await startDeviceServer(
      () => undefined,
      (socket) => setTimeout(() => socket.destroy(), 30),
    );
    defer(() => server.close());
    run(
      t,
      serialConfig({
        connection: { transport: 'tcp', host: '127.0.0.1', port: server.port },
        pollInterval: 100,
        tags: [{ name: 'weight', regex: '(?<value>\\d+\\.\\d+) kg' }],
      }),
    );
    await sleep(3000);
    // A failed connect backs off 0.5–1 s, 1–2 s, …: a handful of connections in 3 s. Observed: ~15–30 (one per tick).
    assert.ok(server.connections <= 8, `${server.connections} connections in 3 s`);
  });

  it('the same device server with a request group backs off (holds: a failed read counts)', async (t) => {
    const defer = cleanup(t);
    const server = await startDeviceServer(
      () => undefined,
      (socket) => setTimeout(() => socket.destroy(), 30),
    );
    defer(() => server.close());
    run(
      t,
      serialConfig({
        connection: { transport: 'tcp', host: '127.0.0.1', port: server.port, timeout: 1000 },
        request: 'SI\r\n',
        pollInterval: 100,
        tags: [{ name: 'weight', regex: '(?<value>\\d+\\.\\d+) kg' }],
      }),
    );
    await sleep(3000);
    assert.ok(server.connections <= 8, `${server.connections} connections in 3 s`);
  });

  it('a stuck device-server connection (accepts, never answers) is renewed once before the device is skipped', async (t) => {
    const defer = cleanup(t);
    // The first connection is stuck (a device server whose TCP session hangs); a new one works.
    const server = await startDeviceServer((socket, data, connection) => {
      if (connection > 1 && data.includes('RD\r\n')) socket.write('PV=12.5\r\n');
    });
    defer(() => server.close());
    const device = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: server.port, timeout: 100, backoffAfterTimeouts: 2 },
      request: 'RD\r\n',
      tags: [{ name: 'pv', regex: 'PV=(?<value>[0-9.]+)' }],
    });
    const driver = createDriver(device, { log: testLogger(), dataDir: '/nonexistent' });
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(device.tags);
    const codes: (string | undefined)[] = [];
    for (let poll = 0; poll < 4; poll++) {
      if (!driver.connected) await driver.connect();
      try {
        const [reading] = await driver.read(plan);
        codes.push(reading?.quality === 'good' ? 'good' : reading?.code);
      } catch (error) {
        // What the DeviceRunner does with a lost connection: close, connect again.
        assert.ok(error instanceof DriverError && error.connectionLost, String(error));
        codes.push('renewed');
        await driver.close();
      }
    }
    // Was (before the fix): ["timeout", "timeout", "skipped", "skipped"], one connection.
    assert.ok(codes.includes('good'), `${JSON.stringify(codes)} over ${server.connections} connection(s)`);
  });

  it('a skipped device keeps one reason from poll to poll and probe to probe, so report-by-exception publishes it once', async (t) => {
    const defer = cleanup(t);
    const server = await startDeviceServer(() => undefined);
    defer(() => server.close());
    const device = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: server.port, timeout: 50, backoffAfterTimeouts: 1 },
      request: 'RD\r\n',
      tags: [{ name: 'pv' }],
    });
    const driver = createDriver(device, { log: testLogger(), dataDir: '/nonexistent' });
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(device.tags);
    // Times out, and nothing came back on the connection: it is renewed (as a lost connection).
    await assert.rejects(driver.read(plan), (error: unknown) => error instanceof DriverError && error.connectionLost);
    await driver.close();
    await driver.connect();
    await driver.read(plan); // times out on the new one: skipping starts
    const reasons = new Set<string | undefined>();
    const first = (await driver.read(plan))[0];
    assert.equal(first?.code, 'skipped');
    reasons.add(first?.reason);
    await waitFor(() => driver.nextTryAt === undefined, 10_000, 'the end of the first skip');
    reasons.add((await driver.read(plan))[0]?.reason); // the probe
    reasons.add((await driver.read(plan))[0]?.reason); // skipped again
    // Was: 3 reasons: "skipped after 1 polls …; next try at <t1>", "timeout: no reply within 50 ms …", "… next try at <t2>".
    assert.equal(reasons.size, 1, JSON.stringify([...reasons]));
  });
});

describe('serial adversarial: the gateway stops and writes', () => {
  it('stop() with a request pending and a stream subscribed leaves no line, socket or timer behind (holds)', async (t) => {
    const defer = cleanup(t);
    const resources = () => {
      const counts: Record<string, number> = {};
      for (const name of process.getActiveResourcesInfo()) counts[name] = (counts[name] ?? 0) + 1;
      return counts;
    };
    // Streams a frame every 5 ms; answers "RD" never.
    const server = await startDeviceServer(
      () => undefined,
      (socket) => {
        const timer = setInterval(() => socket.write('W 1.000 kg\r\n'), 5);
        socket.on('close', () => clearInterval(timer));
      },
    );
    defer(() => server.close());
    const before = resources();
    const device = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port: server.port, timeout: 60_000 },
      pollInterval: 100,
      staleAfter: 1000,
      pollGroups: { slow: { interval: 100, request: 'RD\r\n', reply: '^PV' } },
      tags: [
        { name: 'weight', regex: '(?<value>\\d+\\.\\d+) kg' },
        { name: 'pv', group: 'slow', regex: 'PV=(?<value>.*)' },
      ],
    });
    const { runner, readings } = run(t, device);
    await waitFor(() => readings.some((reading) => reading.tag === 'weight' && reading.quality === 'good'), 5000, 'a weight');
    await waitFor(() => server.received().includes('RD'), 5000, 'the request');
    await runner.stop();
    assert.equal(registeredSerialPorts(), 0);
    await waitFor(
      () => server.connections > 0 && (resources().TCPSocketWrap ?? 0) <= (before.TCPSocketWrap ?? 0),
      3000,
      () => JSON.stringify({ before, after: resources() }),
    );
    const after = resources();
    assert.ok((after.Timeout ?? 0) <= (before.Timeout ?? 0) + 1, JSON.stringify({ before, after }));
  });

  it('a write to a device whose device server refuses connections is refused at once as not-connected (holds)', async (t) => {
    const defer = cleanup(t);
    const server = await startDeviceServer(() => undefined);
    const port = server.port;
    await server.close(); // nothing listens there now
    const device = serialConfig({
      connection: { transport: 'tcp', host: '127.0.0.1', port, timeout: 10_000 },
      request: 'RD\r\n',
      tags: [{ name: 'sp', regex: '(?<value>.*)', writable: true, command: 'SP {value:.1f}\r\n', ack: 'OK' }],
    });
    const { runner } = run(t, device);
    defer(() => runner.stop());
    await waitFor(() => runner.health.connectAttempts > 0 && runner.health.state === 'disconnected', 5000, 'a failed connect');
    await assert.rejects(
      runner.write(device.tags[0]!, 1),
      (error: unknown) => error instanceof DriverError && error.code === 'not-connected',
    );
  });
});

describe('serial adversarial: plc2mqtt read', () => {
  const cli = fileURLToPath(new URL('../src/cli.js', import.meta.url));
  const read = (file: string, tag: string) =>
    new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile(process.execPath, [cli, 'read', '-c', file, 'dev', tag], { timeout: 20_000 }, (error, stdout, stderr) =>
        resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });

  async function setup(t: TestContext) {
    const defer = cleanup(t);
    const server = await startDeviceServer(
      (socket, data) => {
        if (data.includes('RD\r\n')) socket.write('PV=21.5\r\n');
        if (data.includes('T\r\n')) socket.write('T S\r\n');
      },
      (socket) => {
        const timer = setInterval(() => socket.write('W 3.250 kg\r\n'), 20);
        socket.on('close', () => clearInterval(timer));
      },
    );
    defer(() => server.close());
    const dir = mkdtempSync(join(tmpdir(), 'serial-adv-read-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'config.json');
    writeFileSync(
      file,
      JSON.stringify({
        gateway: { name: 'adv', dataDir: join(dir, 'data') },
        devices: [
          {
            name: 'dev',
            driver: 'serial',
            connection: { transport: 'tcp', host: '127.0.0.1', port: server.port },
            pollInterval: '1s',
            pollGroups: { pv: { interval: '1s', request: 'RD\r\n', reply: '^PV=' } },
            tags: [
              { name: 'weight', regex: '(?<value>\\d+\\.\\d+) kg', unit: 'kg' },
              { name: 'pv', group: 'pv', regex: 'PV=(?<value>.*)' },
              { name: 'tare', type: 'bool', read: false, writable: true, command: 'T\r\n', ack: '^T S' },
            ],
          },
        ],
      }),
    );
    return file;
  }

  it('reads a request tag and a streamed tag of a device that does both (holds)', async (t) => {
    const file = await setup(t);
    const pv = await read(file, 'pv');
    assert.match(pv.stdout, /dev\/pv = 21\.5 {2}quality=good/, pv.stderr);
    const weight = await read(file, 'weight');
    assert.match(weight.stdout, /dev\/weight = 3\.25 kg {2}quality=good/, weight.stderr);
  });

  it('says that a command-only tag is never read instead of "the driver returned nothing"', async (t) => {
    const file = await setup(t);
    const tare = await read(file, 'tare');
    // Was (before the fix): "dev/tare = -  quality=bad (the driver returned nothing)", exit 1.
    assert.match(`${tare.stdout}${tare.stderr}`, /command-only|"read": false|never read/);
  });
});
