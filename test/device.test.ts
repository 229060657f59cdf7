// DeviceRunner against a real Modbus TCP server: a device that is down reports bad quality (never
// silence), the runner reconnects on its own, and failures are counted per device by code.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createDriver } from '../drivers/modbus/index.js';
import { DeviceRunner, type ReadingsEvent } from '../src/pipeline/device-runner.js';
import type { DriverTag } from '../src/pipeline/driver.js';
import { cleanup, device, freePort, TcpTestServer, testContext, testLogger } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

describe('DeviceRunner', () => {
  it('reports a dead device as bad, reconnects when it comes back, and again after it drops', async (t) => {
    const defer = cleanup(t);
    const port = await freePort();
    const config = device({
      connection: { transport: 'tcp', host: '127.0.0.1', port, timeout: 200 },
      tags: [{ name: 'level', address: '40001' }],
    });
    const events: ReadingsEvent[] = [];
    const runner = new DeviceRunner({
      name: 'dev',
      driver: createDriver(config, testContext()),
      groups: [{ name: 'default', interval: 50, tags: config.tags as DriverTag[] }],
      log: testLogger(),
      phaseOf: () => 0,
      onReadings: (event) => events.push(event),
    });
    runner.start();
    defer(() => runner.stop());
    const latest = () => events.at(-1)?.readings[0];

    // 1. Nobody listens yet: every cycle still reports, bad with the reason.
    await waitFor(() => events.length >= 2, 5_000, 'cycles while the device is down');
    assert.equal(latest()?.quality, 'bad');
    assert.match(latest()?.reason ?? '', /^not connected: .*ECONNREFUSED/);
    assert.equal(latest()?.code, 'not-connected');
    assert.ok((runner.health.errorsByCode['not-connected'] ?? 0) >= 2);
    assert.equal(runner.health.state, 'disconnected');

    // 2. The device comes up: the runner connects by itself (back-off ≤ 1 s for the first retry).
    const server = new TcpTestServer();
    server.holding[0] = 1234;
    await server.start(port);
    defer(() => server.stop());
    await waitFor(() => latest()?.quality === 'good', 10_000, 'good values after the device came up');
    assert.equal(latest()?.value, 1234);
    assert.equal(runner.health.state, 'connected');

    // 3. It drops mid-run: bad with a connection reason, then back once it returns.
    await server.stop();
    await waitFor(() => latest()?.quality === 'bad', 10_000, 'bad quality after the device dropped');
    assert.match(latest()?.reason ?? '', /connection|not connected/);
    server.holding[0] = 4321;
    await server.start(port);
    await waitFor(() => latest()?.value === 4321, 10_000, 'values after the device returned');
    assert.equal(latest()?.quality, 'good');
    assert.ok(runner.health.connectAttempts >= 2);
  });

  it('stop() waits for the cycle in progress and closes the connection', async (t) => {
    const defer = cleanup(t);
    const server = new TcpTestServer();
    await server.start();
    defer(() => server.stop());
    const config = device({
      connection: { transport: 'tcp', host: '127.0.0.1', port: server.port },
      tags: [{ name: 'a', address: '40001' }],
    });
    let cycles = 0;
    const runner = new DeviceRunner({
      name: 'dev',
      driver: createDriver(config, testContext()),
      groups: [{ name: 'default', interval: 20, tags: config.tags as DriverTag[] }],
      log: testLogger(),
      phaseOf: () => 0,
      onReadings: () => cycles++,
    });
    runner.start();
    await waitFor(() => cycles >= 3 && server.connections === 1, 5_000, 'a few cycles');
    await runner.stop();
    const after = cycles;
    await waitFor(() => server.connections === 0, 5_000, 'the connection to close');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(cycles, after, 'no cycle after stop()');
    assert.equal(runner.health.state, 'stopped');
  });
});
