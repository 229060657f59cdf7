// Retained messages of the integrated broker survive a restart: in-process (persistRetained on
// and off, cleared topics, a damaged store) and through the real CLI on the demo config, stopped
// with SIGTERM and started again without the simulated PLC.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import type { MqttClient } from 'mqtt';
import {
  BrokerUnderTest,
  CapturedLog,
  connectClient,
  endAll,
  recordMessages,
  removeDir,
  ROOT,
  tempDir,
  type Message,
} from './helpers/broker-harness.js';
import { connectWhenUp, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import { Recorder } from './helpers/mqtt.js';
import { freePort, portIsFree, waitFor } from './helpers/net.js';

const TCP = [{ type: 'tcp' as const, host: '127.0.0.1', port: 0 }];

/** Subscribes a fresh client to `filter` and returns what arrives within `ms` (retained messages come at once). */
async function retainedAfterSubscribe(
  url: string,
  filter: string,
  expected: number,
  ms = 3000,
): Promise<{ client: MqttClient; messages: Message[] }> {
  const client = await connectClient(url);
  const messages = recordMessages(client);
  await client.subscribeAsync(filter, { qos: 1 });
  await waitFor(() => messages.length >= expected, ms, `${expected} retained messages`).catch(() => undefined);
  return { client, messages };
}

describe('retained messages across an in-process broker restart', () => {
  const dataDir = tempDir('plc2mqtt-retained-');
  const clients: MqttClient[] = [];

  after(async () => {
    await endAll(clients);
    removeDir(dataDir);
  });

  it('are written to dataDir/retained.db and restored: values, binary payloads, QoS; cleared topics stay cleared', async () => {
    const binary = Buffer.from([0x00, 0xff, 0x10, 0x80, 0x7f]);
    const first = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true }, { dataDir });
    try {
      const publisher = await connectClient(first.url());
      clients.push(publisher);
      await publisher.publishAsync('plant/line1/temp', '21.5', { qos: 1, retain: true });
      await publisher.publishAsync('plant/line1/temp', '22.5', { qos: 1, retain: true }); // the latest one counts
      await publisher.publishAsync('plant/line1/raw', binary, { qos: 0, retain: true });
      await publisher.publishAsync('plant/line1/gone', 'soon cleared', { qos: 1, retain: true });
      await publisher.publishAsync('plant/line1/gone', '', { qos: 1, retain: true });
      await publisher.publishAsync('plant/line1/live', 'not retained', { qos: 1, retain: false });
      // The gateway's own publishes (publishNow, as for the status topic) are kept too.
      await first.broker.publishNow('plc2mqtt/demo/status', 'online', { qos: 1, retain: true });
      await publisher.endAsync();
    } finally {
      await first.close();
    }
    assert.ok(existsSync(join(dataDir, 'retained.db')));

    const logs = new CapturedLog();
    const second = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true }, { dataDir, logs });
    try {
      const { client, messages } = await retainedAfterSubscribe(second.url(), '#', 3);
      clients.push(client);
      await new Promise((resolve) => setTimeout(resolve, 200)); // nothing else may come
      const byTopic = new Map(messages.map((message) => [message.topic, message]));
      assert.deepEqual([...byTopic.keys()].sort(), ['plant/line1/raw', 'plant/line1/temp', 'plc2mqtt/demo/status']);
      assert.equal(messages.length, 3);
      assert.ok(messages.every((message) => message.retain));
      assert.equal(byTopic.get('plant/line1/temp')!.payload, '22.5');
      assert.equal(byTopic.get('plant/line1/temp')!.qos, 1);
      assert.equal(byTopic.get('plc2mqtt/demo/status')!.payload, 'online');
      assert.equal(byTopic.get('plant/line1/raw')!.qos, 0);
      const raw = await new Promise<Buffer>((resolve) => {
        client.once('message', (_topic, payload) => resolve(payload));
        client.subscribe('plant/line1/raw', { qos: 0 });
      });
      assert.deepEqual(raw, binary, 'binary payload byte for byte');
      assert.ok(logs.withMessage('retained messages restored').some((record) => record.retained === 3));
    } finally {
      await second.close();
    }
  });

  it('with persistRetained false nothing is written or restored', async () => {
    const dir = tempDir('plc2mqtt-retained-off-');
    try {
      const first = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, persistRetained: false }, { dataDir: dir });
      try {
        const publisher = await connectClient(first.url());
        await publisher.publishAsync('volatile/value', 'gone after restart', { qos: 1, retain: true });
        await publisher.endAsync();
      } finally {
        await first.close();
      }
      assert.deepEqual(readdirSync(dir), []);
      const second = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, persistRetained: false }, { dataDir: dir });
      try {
        const { client, messages } = await retainedAfterSubscribe(second.url(), '#', 1, 500);
        clients.push(client);
        assert.deepEqual(messages, []);
      } finally {
        await second.close();
      }
    } finally {
      removeDir(dir);
    }
  });

  it('a damaged retained.db is moved aside, the broker starts empty and keeps persisting', async () => {
    const dir = tempDir('plc2mqtt-retained-bad-');
    try {
      writeFileSync(join(dir, 'retained.db'), Buffer.concat([Buffer.from('SQLite format 3\u0000'), Buffer.alloc(4096, 0xab)]));
      const first = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true }, { dataDir: dir });
      try {
        assert.ok(first.logs.withMessage('retained message store damaged: moved aside, starting empty').length === 1, first.logs.text());
        assert.ok(
          readdirSync(dir).some((name) => /^retained\.db\.corrupt-\d+$/.test(name)),
          readdirSync(dir).join(', '),
        );
        const publisher = await connectClient(first.url());
        await publisher.publishAsync('after/damage', 'fresh', { qos: 1, retain: true });
        await publisher.endAsync();
      } finally {
        await first.close();
      }
      const second = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true }, { dataDir: dir });
      try {
        const { client, messages } = await retainedAfterSubscribe(second.url(), '#', 1);
        clients.push(client);
        assert.deepEqual(
          messages.map((message) => [message.topic, message.payload]),
          [['after/damage', 'fresh']],
        );
      } finally {
        await second.close();
      }
    } finally {
      removeDir(dir);
    }
  });
});

interface DemoConfig {
  gateway: { dataDir: string; name: string };
  broker: { listeners: Array<{ port: number }>; allowAnonymous: boolean };
  simulators: Array<{ port: number }>;
  devices: Array<{ name: string; connection: { port: number }; tags: Array<{ name: string }> }>;
}

describe('plc2mqtt run: retained values survive a restart (SIGTERM, then started without the PLC)', () => {
  const folder = tempDir('plc2mqtt-restart-');
  const demo = JSON.parse(readFileSync(join(ROOT, 'config/demo.json'), 'utf8')) as DemoConfig;
  const tags = demo.devices[0]!.tags.map((tag) => tag.name);
  const topic = (tag: string) => `plc2mqtt/demo/demo-plc/${tag}`;
  const STATUS = 'plc2mqtt/demo/status';
  const running: RunningGateway[] = [];
  const recorders: Recorder[] = [];
  let brokerPort: number;
  /** The last payload of every tag the first run published, as the subscriber saw it. */
  const lastBeforeStop = new Map<string, string>();

  const writeConfig = (name: string, withPlc: boolean): string => {
    const config = structuredClone(demo);
    config.gateway.dataDir = join(folder, 'data');
    config.broker.listeners[0]!.port = brokerPort;
    config.broker.allowAnonymous = true;
    if (!withPlc) {
      config.simulators = [];
      config.devices = [];
    }
    const file = join(folder, name);
    // An ephemeral operations port: gateways of parallel tests must not meet on 9180.
    writeFileSync(file, JSON.stringify({ ...config, http: { port: 0 } }, null, 2));
    return file;
  };

  before(async () => {
    brokerPort = await freePort();
    const plcPort = await freePort();
    demo.simulators[0]!.port = plcPort;
    demo.devices[0]!.connection.port = plcPort;
    // The demo scale (and any later simulator) on a free port too, and the device that reads it.
    for (const simulator of demo.simulators.slice(1)) {
      const port = await freePort();
      for (const device of demo.devices) if (device.connection.port === simulator.port) device.connection.port = port;
      simulator.port = port;
    }
  });

  after(async () => {
    for (const recorder of recorders) await recorder.close().catch(() => undefined);
    for (const run of running) {
      if (run.child.exitCode === null && run.child.signalCode === null) {
        run.child.kill('SIGKILL');
        await run.exited;
      }
    }
    removeDir(folder);
  });

  it('first run with the simulated PLC: every tag is published retained; SIGTERM stops it cleanly', async () => {
    const gateway = runGateway(writeConfig('with-plc.json', true));
    running.push(gateway);
    const recorder = await connectWhenUp(`mqtt://127.0.0.1:${brokerPort}`, 'plc2mqtt/demo/#', 15_000);
    recorders.push(recorder);
    await waitFor(() => tags.every((tag) => recorder.topics().has(topic(tag))), 15_000, 'every demo tag');
    assert.equal((recorder.last(topic('banner')) as { value: unknown }).value, 'PLC2MQTT DEMO');
    gateway.child.kill('SIGTERM');
    assert.equal(await gateway.exited, 0, gateway.output());
    assert.ok(await portIsFree(brokerPort));
    for (const tag of tags) lastBeforeStop.set(tag, recorder.messages.findLast((message) => message.topic === topic(tag))!.payload);
    await recorder.close();
  });

  it('the retained values are on disk in dataDir/retained.db, with status "offline"', () => {
    const db = new Database(join(folder, 'data', 'retained.db'), { readonly: true });
    try {
      const rows = db.prepare('SELECT topic, payload FROM retained').all() as Array<{ topic: string; payload: Buffer }>;
      const stored = new Map(rows.map((row) => [row.topic, row.payload.toString()]));
      for (const tag of tags) assert.ok(stored.has(topic(tag)), `${tag} is not in retained.db`);
      assert.equal(stored.get(STATUS), 'offline');
      assert.equal((JSON.parse(stored.get(topic('banner'))!) as { value: unknown }).value, 'PLC2MQTT DEMO');
    } finally {
      db.close();
    }
  });

  it('second run without the PLC: a new subscriber at once gets the previous values and the status topic', async () => {
    const gateway = runGateway(writeConfig('without-plc.json', false));
    running.push(gateway);
    const recorder = await connectWhenUp(`mqtt://127.0.0.1:${brokerPort}`, 'plc2mqtt/demo/#', 15_000);
    recorders.push(recorder);
    await waitFor(
      () => tags.every((tag) => recorder.topics().has(topic(tag))) && recorder.topics().has(STATUS),
      2000,
      'the retained values, right after subscribing',
    );
    for (const tag of tags) {
      const message = recorder.messages.find((candidate) => candidate.topic === topic(tag))!;
      assert.equal(message.retain, true, `${tag} arrived as a retained message`);
      assert.equal(message.payload, lastBeforeStop.get(tag), `${tag}: the last value before the restart`);
    }
    const banner = recorder.last(topic('banner')) as { value: unknown; quality: string };
    assert.deepEqual([banner.value, banner.quality], ['PLC2MQTT DEMO', 'good']);
    assert.equal((recorder.last(topic('setpoint')) as { value: unknown }).value, 50);
    // The restored status is "offline" from the stop; the running gateway says "online".
    await waitFor(
      () => recorder.messages.some((message) => message.topic === STATUS && message.payload === 'online'),
      3000,
      'status online',
    );
    assert.match(gateway.output(), /retained messages restored/);
    const late = await Recorder.connect(`mqtt://127.0.0.1:${brokerPort}`, STATUS);
    recorders.push(late);
    await waitFor(() => late.messages.length > 0, 2000, 'the retained status');
    assert.deepEqual(
      late.messages.map((message) => [message.payload, message.retain]),
      [['online', true]],
    );
    gateway.child.kill('SIGTERM');
    assert.equal(await gateway.exited, 0, gateway.output());
  });
});
