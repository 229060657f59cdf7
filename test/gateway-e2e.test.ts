// End to end: the real CLI process runs the demo config (simulated Modbus PLC, integrated broker)
// on ephemeral ports; a real mqtt.js client subscribes and checks what arrives.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connectWhenUp, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import { Recorder } from './helpers/mqtt.js';
import { freePort, portIsFree, waitFor } from './helpers/net.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The demo config with its ports moved to free ephemeral ones and its data in a temp folder. */
async function demoConfig(folder: string, extraDevices: unknown[] = []): Promise<{ file: string; brokerPort: number; plcPort: number }> {
  const config = JSON.parse(readFileSync(join(ROOT, 'config/demo.json'), 'utf8')) as {
    gateway: { dataDir: string };
    broker: { listeners: Array<{ port: number }> };
    simulators: Array<{ port: number }>;
    devices: Array<{ connection: { port: number } }>;
  };
  const brokerPort = await freePort();
  const plcPort = await freePort();
  config.gateway.dataDir = join(folder, 'data');
  config.broker.listeners[0]!.port = brokerPort;
  config.simulators[0]!.port = plcPort;
  config.devices[0]!.connection.port = plcPort;
  // The demo scale (and any later simulator) on a free port too, and the device that reads it.
  for (const simulator of config.simulators.slice(1)) {
    const port = await freePort();
    for (const device of config.devices) if (device.connection.port === simulator.port) device.connection.port = port;
    simulator.port = port;
  }
  config.devices.push(...(extraDevices as typeof config.devices));
  // An ephemeral operations port: gateways of parallel tests must not meet on 9180.
  const file = join(folder, 'gateway.json');
  writeFileSync(file, JSON.stringify({ ...config, http: { port: 0 } }, null, 2));
  return { file, brokerPort, plcPort };
}

interface TagMessage {
  value: unknown;
  quality: string;
  ts: number;
  unit?: string;
  reason?: string;
}

describe('gateway on the demo config', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-e2e-'));
  let gateway: RunningGateway;
  let recorder: Recorder;
  let ports: { brokerPort: number; plcPort: number };

  before(async () => {
    const { file, ...rest } = await demoConfig(folder, [
      // A device nobody answers for: it must go bad with a reason and never hold up the demo PLC.
      {
        name: 'dead-plc',
        driver: 'modbus',
        connection: { transport: 'tcp', host: '127.0.0.1', port: await freePort(), timeout: 300 },
        pollInterval: '200ms',
        tags: [{ name: 'level', address: '40001' }],
      },
    ]);
    ports = rest;
    gateway = runGateway(file);
    recorder = await connectWhenUp(`mqtt://127.0.0.1:${ports.brokerPort}`);
  });

  after(async () => {
    await recorder?.close();
    if (gateway.child.exitCode === null) gateway.child.kill('SIGKILL');
    rmSync(folder, { recursive: true, force: true });
  });

  const topic = (tag: string, device = 'demo-plc') => `plc2mqtt/demo/${device}/${tag}`;
  const demoTags = [
    'sine',
    'ramp',
    'counter',
    'temperature',
    'high_temp_alarm',
    'blink',
    'setpoint',
    'banner',
    'pressure',
    'motor_running',
    'flag',
    'door_open',
  ];

  it('publishes every demo tag with the right type, unit and good quality', async () => {
    await waitFor(() => demoTags.every((tag) => recorder.topics().has(topic(tag))), 20_000, 'all demo tags');
    const message = (tag: string) => recorder.last(topic(tag)) as TagMessage;
    for (const tag of demoTags) {
      assert.equal(message(tag).quality, 'good', `${tag}: ${JSON.stringify(message(tag))}`);
      assert.equal(typeof message(tag).ts, 'number');
      assert.ok(Math.abs(message(tag).ts - Date.now()) < 60_000, `${tag} ts is gateway time`);
    }
    const numberIn = (tag: string, low: number, high: number) => {
      const value = message(tag).value;
      assert.equal(typeof value, 'number', `${tag} is a number`);
      assert.ok((value as number) >= low && (value as number) <= high, `${tag} = ${String(value)} within ${low}..${high}`);
    };
    numberIn('sine', -100, 100);
    numberIn('ramp', 0, 999);
    numberIn('counter', 0, 2 ** 32 - 1);
    numberIn('temperature', 14.9, 25.1);
    numberIn('pressure', 3.49, 4.51);
    assert.ok(Number.isInteger(message('ramp').value) && Number.isInteger(message('counter').value));
    assert.equal(message('setpoint').value, 50); // 500 × scale 0.1
    assert.equal(message('banner').value, 'PLC2MQTT DEMO');
    for (const tag of ['high_temp_alarm', 'blink', 'motor_running', 'flag', 'door_open'])
      assert.equal(typeof message(tag).value, 'boolean', tag);
    assert.equal(message('flag').value, false);
    assert.equal(message('temperature').unit, '°C');
    assert.equal(message('pressure').unit, 'bar');
  });

  it('values change over time (ramp and counter of the fast group)', async () => {
    const firstCounter = (recorder.last(topic('counter')) as TagMessage).value as number;
    await waitFor(() => ((recorder.last(topic('counter')) as TagMessage).value as number) > firstCounter, 10_000, 'the counter to advance');
  });

  it('retains last values: a new subscriber sees the current state at once', async () => {
    const late = await Recorder.connect(`mqtt://127.0.0.1:${ports.brokerPort}`, 'plc2mqtt/demo/#');
    try {
      await waitFor(() => late.topics().has(topic('banner')) && late.topics().has('plc2mqtt/demo/status'), 5_000, 'retained messages');
      assert.ok(late.messages.some((message) => message.topic === topic('banner') && message.retain));
      assert.equal(late.messages.find((message) => message.topic === 'plc2mqtt/demo/status')?.payload, 'online');
    } finally {
      await late.close();
    }
  });

  it('a dead device goes bad with a reason while the live one keeps publishing', async () => {
    await waitFor(() => recorder.topics().has(topic('level', 'dead-plc')), 20_000, 'the dead device to report');
    const dead = recorder.last(topic('level', 'dead-plc')) as TagMessage;
    assert.equal(dead.quality, 'bad');
    assert.equal(dead.value, null);
    assert.match(dead.reason ?? '', /not connected: .*(ECONNREFUSED|refused)/i);
    const before = recorder.messages.filter((message) => message.topic === topic('counter')).length;
    await waitFor(
      () => recorder.messages.filter((message) => message.topic === topic('counter')).length > before + 2,
      10_000,
      'more counter values',
    );
  });

  it('the first log lines say where to look', () => {
    assert.match(gateway.output(), new RegExp(`mosquitto_sub -h 127.0.0.1 -p ${ports.brokerPort} -t '#' -v`));
  });

  it('shuts down gracefully on SIGTERM: says offline, exits 0, leaves no open port', async () => {
    gateway.child.kill('SIGTERM');
    const code = await gateway.exited;
    assert.equal(code, 0, gateway.output());
    assert.ok(recorder.messages.some((message) => message.topic === 'plc2mqtt/demo/status' && message.payload === 'offline'));
    assert.ok(await portIsFree(ports.brokerPort), 'broker port released');
    assert.ok(await portIsFree(ports.plcPort), 'simulator port released');
    assert.match(gateway.output(), /gateway stopped/);
  });
});

describe('plc2mqtt run: startup failures are clear', () => {
  it('a port already in use is one readable line and exit 1', async () => {
    const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-e2e-'));
    const blocker = (await import('node:net')).createServer();
    const port = await freePort();
    await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
    try {
      const file = join(folder, 'gw.json');
      writeFileSync(
        file,
        JSON.stringify({
          gateway: { dataDir: join(folder, 'data') },
          broker: { listeners: [{ type: 'tcp', port }], allowAnonymous: true },
          http: { port: 0 },
        }),
      );
      const run = runGateway(file);
      assert.equal(await run.exited, 1);
      assert.match(run.output(), /integrated broker cannot listen on 127\.0\.0\.1:\d+: EADDRINUSE/);
      assert.doesNotMatch(run.output(), /\n\s+at /);
    } finally {
      blocker.close();
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
