// A device whose driver cannot be created or loaded at start no longer stops the gateway: the
// gateway (in-process, with its operations endpoint) starts, the healthy Modbus device publishes
// from a real Modbus server, the failed devices are reported ("failed" with the error in
// /api/status, /metrics, on the event bus, their tags bad on MQTT) and tried again with back-off;
// once the cause is gone the device runs. Also the other events of the bus: samples, polls,
// writes, the uplink's state and the outbox's depth.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt from 'mqtt';
import type { GatewayEvents } from '../src/app/events.js';
import { parseConfigText } from '../src/config/load.js';
import type { DeviceConfig } from '../src/config/schema.js';
import { Gateway } from '../src/gateway.js';
import { DRIVERS, type DriverModule } from '../src/pipeline/registry.js';
import { CapturedLog } from './helpers/broker-harness.js';
import { makeTempDir, removeDir } from './helpers/cloud-broker.js';
import { TcpTestServer } from './helpers/modbus-servers.js';
import { Recorder } from './helpers/mqtt.js';
import { freePort, waitFor } from './helpers/net.js';

interface DeviceStatus {
  name: string;
  state: string;
  lastError: string | null;
  nextTryAt: string | null;
  tags: number;
  samples: number;
}

interface Status {
  devices: DeviceStatus[];
  tags: Array<{ device: string; tag: string; value?: unknown; quality?: string; reason?: string }>;
  broker: Record<string, unknown>;
}

describe('a device that cannot start, beside a healthy one', () => {
  const dir = makeTempDir('plc2mqtt-device-start-');
  const modbus = new TcpTestServer();
  /** The file the "press" driver needs at creation (think: a certificate); absent at first. */
  const pressFile = join(dir, 'press.pem');
  const logs = new CapturedLog('info');
  const loads: Record<string, number> = { press: 0, ua: 0 };
  const events: { [Type in keyof GatewayEvents]: GatewayEvents[Type][] } = {
    sample: [],
    'device-state': [],
    poll: [],
    'uplink-state': [],
    'outbox-depth': [],
    write: [],
  };
  let gateway: Gateway;
  let recorder: Recorder;
  let base = '';
  /** The config as written (before parsing), for the reload. */
  let raw: { devices: Array<Record<string, unknown> & { name: string }> } & Record<string, unknown>;

  /** The real registry, except: "press" reads its file when its driver is created; "ua" cannot be loaded at all. */
  const loadDriver = async (device: DeviceConfig): Promise<DriverModule<DeviceConfig>> => {
    if (device.name === 'ua') {
      loads.ua++;
      throw new Error(`Cannot find package 'node-opcua-client' imported from ${join(dir, 'drivers/opcua/index.js')}`);
    }
    const real = (await DRIVERS[device.driver].load()) as DriverModule<DeviceConfig>;
    if (device.name !== 'press') return real;
    return {
      createDriver: (config, context) => {
        loads.press++;
        readFileSync(pressFile);
        return real.createDriver(config, context);
      },
    };
  };

  const status = async (query = ''): Promise<Status> => (await (await fetch(`${base}/api/status${query}`)).json()) as Status;
  const device = async (name: string) => (await status()).devices.find((entry) => entry.name === name)!;

  before(async () => {
    await modbus.start();
    modbus.holding[0] = 1234;
    modbus.holding[1] = 77;
    const httpPort = await freePort();
    const deadCloud = await freePort();
    const connection = { transport: 'tcp', host: '127.0.0.1', port: modbus.port, unitId: 1, timeout: '500ms' };
    raw = {
      gateway: { name: 'sup', dataDir: join(dir, 'data') },
      broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], allowAnonymous: true },
      http: { host: '127.0.0.1', port: httpPort },
      // A cloud that is down: the uplink is disconnected and the outbox fills.
      uplink: { url: `mqtt://127.0.0.1:${deadCloud}`, reconnect: { initial: 100, max: 400 } },
      devices: [
        {
          name: 'good',
          driver: 'modbus',
          connection,
          pollInterval: '100ms',
          report: 'always',
          tags: [{ name: 'level', area: 'holding', address: 0, type: 'uint16', writable: true }],
        },
        {
          name: 'press',
          driver: 'modbus',
          connection,
          pollInterval: '100ms',
          tags: [{ name: 'speed', area: 'holding', address: 1, type: 'uint16' }],
        },
        {
          name: 'ua',
          driver: 'opcua',
          connection: { endpointUrl: 'opc.tcp://127.0.0.1:4840' },
          pollInterval: '100ms',
          tags: [{ name: 'temp', nodeId: 'ns=1;s=Temp' }],
        },
      ],
    };
    const config = parseConfigText(JSON.stringify(raw));
    gateway = await Gateway.start({ file: '<test>', config, dataDir: config.gateway.dataDir }, logs.log, {
      ops: true,
      version: '9.9.9',
      loadDriver,
      deviceRetry: { initial: 200, max: 400 },
    });
    for (const type of Object.keys(events) as Array<keyof GatewayEvents>) {
      gateway.bus.on(type, (event: GatewayEvents[typeof type]) => void (events[type] as unknown[]).push(event));
    }
    base = String(logs.withMessage('operations endpoint listening')[0]!.url);
    recorder = await Recorder.connect(gateway.broker.addresses()[0]!.url, 'plc2mqtt/sup/#');
  });

  after(async () => {
    await recorder?.close();
    await gateway?.stop();
    await modbus.stop();
    removeDir(dir);
  });

  it('the gateway starts; the healthy device publishes from the real Modbus server', async () => {
    await waitFor(
      () => (recorder.last('plc2mqtt/sup/good/level') as { value?: number } | undefined)?.value === 1234,
      10_000,
      'good/level = 1234',
    );
    assert.deepEqual(
      logs.withMessage('polling started').map((record) => [record.devices, record.failed]),
      [[3, ['press', 'ua']]],
    );
    assert.equal(logs.withMessage('gateway failed to start').length, 0);
  });

  it('the failed devices are in /api/status as "failed" with the error and when they are tried next, their tags bad', async () => {
    const current = await status();
    const press = current.devices.find((entry) => entry.name === 'press')!;
    const ua = current.devices.find((entry) => entry.name === 'ua')!;
    assert.equal(current.devices.find((entry) => entry.name === 'good')!.state, 'connected');
    for (const failed of [press, ua]) {
      // Between two attempts it is "failed"; during one, "starting".
      assert.match(failed.state, /^(failed|starting)$/);
      assert.equal(failed.tags, 1);
    }
    assert.match((await waitForFailed('press')).lastError!, /ENOENT: no such file or directory, open '.*press\.pem'/);
    const uaNow = await waitForFailed('ua');
    assert.match(uaNow.lastError!, /Cannot find package 'node-opcua-client'/);
    assert.ok(Date.parse(uaNow.nextTryAt!) > Date.now() - 1000, 'when it is tried again');
    // Its tags are listed, bad, with the reason: on MQTT too (a retained "good" from before would lie).
    const temp = current.tags.find((tag) => tag.device === 'ua')!;
    assert.deepEqual([temp.tag, temp.quality, temp.value], ['temp', 'bad', null]);
    assert.match(temp.reason!, /^the device could not be started: Cannot find package/);
    const message = recorder.last('plc2mqtt/sup/ua/temp') as { quality: string; reason: string };
    assert.equal(message.quality, 'bad');
    assert.match(message.reason, /^the device could not be started: Cannot find package/);
    // /api/status keeps its shape: the broker's queue is for the metrics only.
    assert.deepEqual(Object.keys(current.broker), [
      'clients',
      'listeners',
      'published',
      'dropped',
      'errors',
      'messagesIn',
      'messagesOut',
      'denied',
      'sessionDropped',
      'qos0Dropped',
    ]);
  });

  const waitForFailed = async (name: string): Promise<DeviceStatus> => {
    let found: DeviceStatus | undefined;
    await waitFor(async () => (found = await device(name)).state === 'failed', 5000, `${name} failed`);
    return found!;
  };

  it('/metrics reads the same snapshot: device states with "failed", poll durations from the bus', async () => {
    const text = await (await fetch(`${base}/metrics`)).text();
    const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? Number.NaN);
    assert.equal(value(/^plc2mqtt_device_connected\{device="good"\} (\S+)$/m), 1);
    assert.equal(value(/^plc2mqtt_device_state\{device="good",state="connected"\} (\S+)$/m), 1);
    assert.equal(value(/^plc2mqtt_device_state\{device="ua",state="connected"\} (\S+)$/m), 0);
    assert.equal(
      value(/^plc2mqtt_device_state\{device="ua",state="failed"\} (\S+)$/m) +
        value(/^plc2mqtt_device_state\{device="ua",state="starting"\} (\S+)$/m),
      1,
    );
    assert.ok(value(/^plc2mqtt_poll_duration_seconds_count\{device="good",group="default",outcome="ok"\} (\S+)$/m) > 0);
    assert.ok(value(/^plc2mqtt_samples_total\{device="good"\} (\S+)$/m) > 0);
    assert.equal(value(/^plc2mqtt_uplink_connected (\S+)$/m), 0);
  });

  it('the failed device is tried again with back-off and runs once its cause is gone; the others never stopped', async () => {
    await waitFor(() => loads.press >= 3 && loads.ua >= 3, 10_000, 'a few attempts of each');
    const failures = logs.withMessage(
      'device could not be started (its driver failed to load or to be created); trying again with back-off',
    );
    // Logged once per device (its reason did not change), not at every attempt.
    assert.deepEqual(failures.map((record) => record.feature).sort(), ['device press', 'device ua']);
    const goodSamples = (await device('good')).samples;
    writeFileSync(pressFile, 'certificate');
    await waitFor(async () => (await device('press')).state === 'connected', 10_000, 'press connected');
    await waitFor(
      () => (recorder.last('plc2mqtt/sup/press/speed') as { value?: number } | undefined)?.value === 77,
      10_000,
      'press/speed = 77',
    );
    assert.ok((await device('good')).samples > goodSamples, 'good kept polling');
    assert.ok(logs.records().some((record) => /^device press started after \d+ failed attempts$/.test(record.msg)));
    // The bus told the story: starting, failed, …, starting, then the runner's connection states.
    const press = events['device-state'].filter((event) => event.device === 'press').map((event) => event.state);
    assert.equal(press[0], 'starting');
    assert.ok(press.includes('failed'));
    assert.equal(press.at(-1), 'connected');
    assert.ok(
      events['device-state'].some(
        (event) => event.device === 'ua' && event.state === 'failed' && /node-opcua-client/.test(event.lastError ?? ''),
      ),
    );
    // "ua" keeps failing, alone.
    assert.equal((await waitForFailed('ua')).lastError !== null, true);
  });

  it('the bus carries samples, polls, writes (with their origin), the uplink state and the outbox depth', async () => {
    await waitFor(() => events['outbox-depth'].length > 0 && events['uplink-state'].length > 0, 5000, 'the cloud watch (once a second)');
    assert.deepEqual(events['uplink-state'][0]!.state, 'disconnected');
    assert.match(events['uplink-state'][0]!.reason ?? '', /ECONNREFUSED|connect/);
    assert.ok(events['outbox-depth'].at(-1)!.messages > 0, 'the cloud is down: the outbox fills');
    const sample = events.sample.find((event) => event.device === 'good' && event.tag === 'level')!;
    assert.deepEqual(
      [sample.topic, sample.sample.value, sample.sample.quality, sample.reported],
      ['plc2mqtt/sup/good/level', 1234, 'good', true],
    );
    assert.ok(events.poll.some((event) => event.device === 'good' && event.group === 'default' && event.ok));

    const client = await mqtt.connectAsync(gateway.broker.addresses()[0]!.url, { reconnectPeriod: 0, clientId: 'hmi-7' });
    try {
      await client.publishAsync('plc2mqtt/sup/good/level/set', '42', { qos: 1 });
      await waitFor(() => events.write.length > 0, 5000, 'the write event');
    } finally {
      await client.endAsync(true);
    }
    const [write] = events.write;
    assert.deepEqual(
      [
        write!.topic,
        write!.answer.ok,
        write!.answer.device,
        write!.answer.tag,
        write!.answer.value,
        write!.origin.source,
        write!.origin.clientId,
      ],
      ['plc2mqtt/sup/good/level/set', true, 'good', 'level', 42, 'local', 'hmi-7'],
    );
    assert.equal(modbus.holding[0], 42);
  });

  it('a reload that removes the failed device stops its attempts; stop() ends the rest', async () => {
    const next = parseConfigText(JSON.stringify({ ...raw, devices: raw.devices.filter((entry) => entry.name !== 'ua') }));
    const result = await gateway.reload({ file: '<test>', config: next, dataDir: next.gateway.dataDir });
    assert.deepEqual([result.removed, result.failed, result.unchanged], [['ua'], [], 2]);
    const attempts = loads.ua;
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(loads.ua, attempts, 'no attempt after the removal');
    assert.deepEqual(
      (await status()).devices.map((entry) => entry.name),
      ['good', 'press'],
    );
    assert.deepEqual(
      gateway.features().map((feature) => `${feature.name}: ${feature.state}`),
      [
        'outbox: running',
        'broker: running',
        'uplink: running',
        'commands: running',
        'status topic: running',
        'device good: running',
        'device press: running',
        'operations endpoint: running',
      ],
    );
    assert.ok(existsSync(join(dir, 'data', 'outbox.db')));
  });
});
