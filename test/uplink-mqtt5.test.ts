// MQTT 5 uplink against mosquitto (issue #4): data goes up, commands come down into the integrated
// broker under their local name, a message the cloud refuses (reason code ≥ 0x80) does not block the
// queue, and the retained birth/will status says "online" while running and "offline" after a hang
// (keepalive expiry), a SIGKILL and a graceful SIGTERM.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import {
  assertExactly,
  assertOrderPerTopic,
  cloudPublish,
  CloudRecorder,
  deliveryReport,
  range,
  SeqPublisher,
  subscriber,
  type Arrival,
} from './helpers/cloud-clients.js';
import { FORWARD_LINE, GatewayProcess, LEVEL, testUplink, writeGatewayConfig, type GatewaySetup } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

const STATUS = 'plc2mqtt/gw/status';
const V5 = { protocolVersion: 5 } as const;

describe('uplink: MQTT 5, downlink, birth and will', () => {
  const dir = makeTempDir('plc2mqtt-uplink-mqtt5-');
  const closers: Array<() => Promise<void>> = [];
  let cloud: Mosquitto;
  let setup: GatewaySetup;
  let gateway: GatewayProcess;
  let recorder: CloudRecorder;
  let status: { client: MqttClient; messages: Arrival[] };
  let local: { client: MqttClient; messages: Arrival[] };

  before(async () => {
    cloud = await Mosquitto.startNew(dir);
    recorder = await CloudRecorder.connect(cloud.url, { clientId: 'cloud-recorder', filters: ['up/#', 'echo/#'], mqtt: V5 });
    closers.push(() => recorder.close());
    status = await subscriber(cloud.url, [STATUS], V5);
    closers.push(() => status.client.endAsync(true));
    setup = await writeGatewayConfig(
      dir,
      testUplink(cloud.url, {
        protocolVersion: 5,
        keepalive: '2s',
        forward: [...FORWARD_LINE!, { topic: 'cmd/#', localPrefix: 'local/', remotePrefix: 'echo/', qos: 1 }],
        receive: [{ topic: 'cmd/#', remotePrefix: 'cloud/gw/', localPrefix: 'local/', qos: 1 }],
      }),
    );
    gateway = GatewayProcess.start(setup);
    local = await subscriber(setup.brokerUrl, ['local/#'], {}, 20_000);
    closers.push(() => local.client.endAsync(true));
  });

  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  const statusPayloads = () => status.messages.map((message) => message.payload);

  /** What a subscriber that arrives now sees on the status topic: the retained message. */
  async function retainedStatus(): Promise<Arrival> {
    const fresh = await subscriber(cloud.url, [STATUS], V5);
    try {
      await waitFor(() => fresh.messages.length > 0, 5000, 'the retained status');
      return fresh.messages[0]!;
    } finally {
      await fresh.client.endAsync(true);
    }
  }

  it('connects with MQTT 5, the configured keepalive and a persistent session; the cloud sees retained "online"', async () => {
    await gateway.waitForLog(/^connected to the cloud broker/, 10_000);
    await waitFor(() => /as plc2mqtt-test-gateway \(p5, c0, k2\)/.test(cloud.output()), 5000, 'mosquitto to log the gateway connection');
    await waitFor(() => statusPayloads().includes('online'), 5000, '"online" on the status topic');
    assert.deepEqual(await retainedStatus(), { topic: STATUS, payload: 'online', retain: true });
  });

  it('forwarded messages arrive in order', async () => {
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, 1000);
    await waitFor(() => recorder.uniqueCount() >= 1000, 10_000, 'the messages on the cloud');
    const report = deliveryReport(recorder.data());
    assertExactly(report, range(0, 1000));
    assertOrderPerTopic(report);
  });

  it('a command published on the cloud arrives in the integrated broker under its local name, and does not go back up', async () => {
    // The data above was sent after the gateway's SUBSCRIBE on the same connection, so the subscription is in place.
    await cloudPublish(cloud.url, 'cloud/gw/cmd/valve', 'open', V5);
    await waitFor(
      () => local.messages.some((message) => message.topic === 'local/cmd/valve'),
      10_000,
      'the command in the integrated broker',
    );
    assert.deepEqual(
      local.messages.filter((message) => message.topic === 'local/cmd/valve'),
      [{ topic: 'local/cmd/valve', payload: 'open', retain: false }],
    );
    // A local MQTT client publishing on the same local topic is forwarded (to "echo/…"): the command
    // would have been appended to the outbox before this one, so it would have arrived first.
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.client.publishAsync('local/cmd/control', 'from a local client', { qos: 1 });
    await waitFor(
      () => recorder.messages.some((message) => message.topic === 'echo/cmd/control'),
      10_000,
      'the local publish on the cloud',
    );
    assert.deepEqual(
      recorder.messages.filter((message) => message.topic.startsWith('echo/')).map((message) => message.topic),
      ['echo/cmd/control'],
      'the command from the cloud was not sent back up',
    );
  });

  it('a hung gateway (SIGSTOP): the cloud publishes the will "offline" when the keepalive expires', async () => {
    const before = status.messages.length;
    gateway.child.kill('SIGSTOP');
    try {
      await waitFor(
        () => status.messages.slice(before).some((message) => message.payload === 'offline'),
        15_000,
        'the will after the keepalive',
      );
    } finally {
      await gateway.kill('SIGKILL');
    }
    assert.deepEqual(await retainedStatus(), { topic: STATUS, payload: 'offline', retain: true });
  });

  it('restarted: "online" again; SIGKILL: the will "offline" at once', async () => {
    gateway = GatewayProcess.start(setup);
    const before = status.messages.length;
    await waitFor(
      () => status.messages.slice(before).some((message) => message.payload === 'online'),
      10_000,
      '"online" after the restart',
    );
    assert.deepEqual(await retainedStatus(), { topic: STATUS, payload: 'online', retain: true });
    const beforeKill = status.messages.length;
    await gateway.kill('SIGKILL');
    await waitFor(
      () => status.messages.slice(beforeKill).some((message) => message.payload === 'offline'),
      10_000,
      'the will after SIGKILL',
    );
    assert.deepEqual(await retainedStatus(), { topic: STATUS, payload: 'offline', retain: true });
  });

  it('restarted, then SIGTERM: "online", then a retained "offline" and exit 0', async () => {
    gateway = GatewayProcess.start(setup);
    const before = status.messages.length;
    await waitFor(
      () => status.messages.slice(before).some((message) => message.payload === 'online'),
      10_000,
      '"online" after the restart',
    );
    const beforeStop = status.messages.length;
    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    await waitFor(
      () => status.messages.slice(beforeStop).some((message) => message.payload === 'offline'),
      10_000,
      '"offline" after SIGTERM',
    );
    assert.deepEqual(await retainedStatus(), { topic: STATUS, payload: 'offline', retain: true });
    assert.equal(stopped.outbox.messages, 0, JSON.stringify(stopped.outbox));
    assert.deepEqual(
      gateway.logs().filter((line) => line.level >= LEVEL.error),
      [],
    );
  });
});

describe('uplink: MQTT 5, a message the cloud refuses', () => {
  const dir = makeTempDir('plc2mqtt-uplink-refused-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  // mosquitto 2.0.11 answers a PUBLISH its ACL denies with PUBACK 0x87 and then closes the connection
  // (MQTT 5 allows either). The refused message stays first in the outbox, so every reconnect sends
  // it first and is closed again: nothing behind it is ever delivered.
  it('is counted and dropped, and does not block the messages behind it', async () => {
    // Anonymous clients may use these topics only; "denied/…" is refused.
    const cloud = await Mosquitto.startNew(dir, { acl: ['topic readwrite up/#', 'topic readwrite plc2mqtt/#', ''].join('\n') });
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: 'cloud-recorder', filters: ['up/#'], mqtt: V5 });
    closers.push(() => recorder.close());
    const setup = await writeGatewayConfig(
      dir,
      testUplink(cloud.url, {
        protocolVersion: 5,
        forward: [...FORWARD_LINE!, { topic: '#', localPrefix: 'secret/', remotePrefix: 'denied/', qos: 1 }],
      }),
    );
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, 100);
    await publisher.publishRange(1000, 5, () => 'secret/x');
    await publisher.publishRange(2000, 100);
    try {
      await waitFor(() => recorder.uniqueCount() >= 200, 10_000, 'the messages behind the refused ones');
      assertExactly(deliveryReport(recorder.data()), [...range(0, 100), ...range(2000, 100)]);
      // mosquitto closes the connection right after its PUBACK 0x87; a reset may be logged first.
      await waitFor(
        () => gateway.findLogs('cloud broker connection error').some((line) => /refused a message on "denied\/x"/.test(String(line.error))),
        5000,
        'the refusal in the log',
      );
    } finally {
      const { stopped } = await gateway.stop();
      assert.equal(stopped.outbox.rejected, 5, `outbox: ${JSON.stringify(stopped.outbox)}; uplink: ${JSON.stringify(stopped.uplink)}`);
      assert.equal(stopped.outbox.messages, 0);
    }
  });
});
