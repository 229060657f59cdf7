// Store-and-forward through cloud outages (issue #4, tests 1 and 2): the real gateway CLI, a real
// mosquitto as the cloud (started late, SIGKILLed mid-stream, restarted on the same port), numbered
// QoS 1 messages published into the integrated broker, and a persistent-session subscriber on the cloud.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import {
  assertComplete,
  assertExactly,
  assertOrderPerTopic,
  assertTopics,
  CloudRecorder,
  deliveryReport,
  range,
  SeqPublisher,
  subscriber,
  type Arrival,
} from './helpers/cloud-clients.js';
import {
  FORWARD_LINE,
  freezeGatewayAndSettle,
  GatewayProcess,
  LEVEL,
  outboxBytesOnDisk,
  testUplink,
  writeGatewayConfig,
} from './helpers/cloud-gateway.js';
import { freePort, waitFor } from './helpers/net.js';

const RECORDER = 'cloud-recorder';
/** Markers on the cloud (no "seq": not data) that tell when the recorder has caught up. */
const SYNC_TOPIC = 'up/sync';

describe('uplink: the cloud is down when the gateway starts', () => {
  const dir = makeTempDir('plc2mqtt-uplink-down-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('buffers every committed message, then delivers all of them in order once mosquitto comes up', async () => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    // The recorder's persistent session exists before the gateway can ever connect: nothing can be missed.
    await cloud.seedSession(RECORDER, ['up/#']);
    assert.equal(cloud.running, false, 'the cloud is down');

    const setup = await writeGatewayConfig(dir, testUplink(cloud.url));
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    const local = await subscriber(setup.brokerUrl, ['line/#', 'elsewhere/#']);
    closers.push(() => local.client.endAsync(true));

    await gateway.waitForLog('cloud broker connection error', 10_000);
    const diskBefore = outboxBytesOnDisk(setup);
    const buffered = 5000;
    await publisher.publishRange(0, buffered);
    assert.equal(publisher.acked.length, buffered, 'every message was acknowledged (= committed to the outbox) with the cloud down');
    // Not forwarded: no forward rule takes "elsewhere/…".
    await local.client.publishAsync('elsewhere/x', JSON.stringify({ seq: 999_999 }), { qos: 1 });
    assert.ok(outboxBytesOnDisk(setup) > diskBefore, 'the outbox on disk grew while buffering');
    await waitFor(() => local.messages.length >= buffered + 1, 10_000, 'local subscribers to see the messages too');

    await cloud.start();
    const connected = await gateway.waitForLog(/^connected to the cloud broker/, 10_000);
    assert.equal(connected.backlog, buffered, `the gateway replays exactly what it buffered: ${JSON.stringify(connected)}`);
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#', 'elsewhere/#'] });
    closers.push(() => recorder.close());
    await waitFor(() => recorder.uniqueCount() >= buffered, 20_000, `${buffered} messages on the cloud (have ${recorder.uniqueCount()})`);

    // Live data after the replay follows the same path.
    const live = 1000;
    await publisher.publishRange(buffered, live);
    await waitFor(() => recorder.uniqueCount() >= buffered + live, 20_000, 'the live messages on the cloud');

    const arrivals = recorder.data();
    const report = deliveryReport(arrivals);
    assertExactly(report, range(0, buffered + live));
    assertOrderPerTopic(report);
    assertTopics(arrivals);
    assert.equal(report.duplicates, 0, 'one connection, no outage: nothing is sent twice');

    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(stopped.outbox.messages, 0, `the outbox is empty: ${JSON.stringify(stopped.outbox)}`);
    assert.equal(stopped.outbox.dropped, 0);
    assert.equal(stopped.outbox.delivered, buffered + live);
    assert.equal(stopped.uplink.acknowledged, buffered + live);
    assert.deepEqual(
      gateway.logs().filter((line) => line.level >= LEVEL.error),
      [],
      'no errors logged',
    );
  });
});

/** "3-7, 12" for the numbers below `total` not in `seen`. */
function missingRanges(seen: ReadonlySet<number>, total: number): string {
  const ranges: string[] = [];
  for (let seq = 0; seq < total; seq++) {
    if (seen.has(seq)) continue;
    let end = seq;
    while (end + 1 < total && !seen.has(end + 1)) end++;
    ranges.push(end === seq ? `${seq}` : `${seq}-${end}`);
    seq = end;
  }
  return ranges.join(', ') || 'none';
}

interface TagPayload {
  value: number;
  quality: string;
  ts: number;
}

describe('uplink: the cloud is SIGKILLed mid-stream and restarted on the same port, twice', () => {
  const dir = makeTempDir('plc2mqtt-uplink-kill-cloud-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('loses nothing and keeps per-topic order; duplicates are only resends', async (t) => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    // A SIGKILLed mosquitto comes back with the sessions of its last save: this one.
    await cloud.seedSession(RECORDER, ['up/#', 'plant/#']);
    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#', 'plant/#'] });
    closers.push(() => recorder.close());

    // Besides the numbered messages, the built-in simulated PLC's polled tags go up too.
    const plcPort = await freePort();
    // A long keep-alive: kills are noticed by the closed socket, and a frozen gateway must not be
    // dropped by mosquitto for silence while the test waits for the recorder.
    const setup = await writeGatewayConfig(
      dir,
      testUplink(cloud.url, {
        keepalive: '60s',
        forward: [...FORWARD_LINE!, { topic: 'plc/#', localPrefix: 'plc2mqtt/gw/', remotePrefix: 'plant/', qos: 1 }],
      }),
      {
        simulators: [{ name: 'sim', type: 'modbus-tcp', host: '127.0.0.1', port: plcPort }],
        devices: [
          {
            name: 'plc',
            driver: 'modbus',
            connection: { transport: 'tcp', host: '127.0.0.1', port: plcPort, unitId: 1, timeout: '1s' },
            pollInterval: '100ms',
            tags: [
              { name: 'counter', address: '40003', type: 'uint32' },
              { name: 'ramp', address: '40002', type: 'uint16' },
            ],
          },
        ],
      },
    );
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    const local = await subscriber(setup.brokerUrl, ['plc2mqtt/gw/plc/#']);
    closers.push(() => local.client.endAsync(true));

    const total = 14_000;
    const publishing = publisher.publishRange(0, total);

    // Kill 1: in the middle of a live stream, with PUBACKs the gateway has not read yet.
    await waitFor(() => recorder.uniqueCount() >= 1500, 20_000, 'the stream to be flowing');
    await freezeGatewayAndSettle(gateway, cloud, recorder, SYNC_TOPIC);
    await cloud.kill('SIGKILL');
    gateway.thaw();
    const ackedAtKill = publisher.acked.length;
    const disconnected = await gateway.waitForLog(/^disconnected from the cloud broker/, 10_000);
    assert.equal(disconnected.level, LEVEL.warn);
    await waitFor(
      () => publisher.acked.length >= Math.min(total, ackedAtKill + 1500),
      20_000,
      'local publishing to go on while the cloud is down',
    );

    // Kill 2: while the backlog of the first outage is replayed, and with a full in-flight window:
    // mosquitto is frozen first (SIGSTOP), so the gateway's last messages are unacknowledged when
    // it dies. Those must be sent again.
    await cloud.start();
    const before2 = recorder.uniqueCount();
    await waitFor(() => recorder.uniqueCount() >= before2 + 500, 20_000, 'the replay to be under way');
    await freezeGatewayAndSettle(gateway, cloud, recorder, SYNC_TOPIC);
    cloud.signal('SIGSTOP');
    gateway.thaw();
    const ackedAtFreeze = publisher.acked.length;
    await waitFor(
      () => publisher.acked.length >= Math.min(total, ackedAtFreeze + 500),
      20_000,
      'local publishing to go on while the cloud hangs',
    );
    // On a loaded machine the gateway may still be filling its window: kill only once it is full.
    await waitFor(async () => (await gateway.uplinkStatus()).inFlight === 100, 20_000, 'the in-flight window to fill');
    await cloud.kill('SIGKILL');
    await waitFor(() => gateway.findLogs(/^disconnected from the cloud broker/).length >= 2, 10_000, 'the second disconnect');
    const frozen = gateway.findLogs(/^disconnected from the cloud broker/)[1]!;
    assert.equal(frozen.inFlight, 100, `the whole window was unacknowledged when the cloud died: ${JSON.stringify(frozen)}`);
    await cloud.start();

    await publishing;
    assert.equal(publisher.acked.length, total, 'the gateway acknowledged every local message throughout');
    await waitFor(
      () => recorder.uniqueCount() >= total,
      30_000,
      () => {
        const missing = missingRanges(new Set(recorder.seqs()), total);
        const uplinkLines = gateway.findLogs(/cloud broker/).map((line) => JSON.stringify(line));
        return `all ${total} messages on the cloud (have ${recorder.uniqueCount()}; missing ${missing}; recorder connected: ${recorder.client.connected})\n${uplinkLines.join('\n')}`;
      },
    );

    const arrivals = recorder.data();
    const report = deliveryReport(arrivals);
    assertExactly(report, range(0, total));
    assertOrderPerTopic(report);
    assertTopics(arrivals);
    // A disconnect flushes the acknowledgements it has: only the unacknowledged window is sent again.
    const disconnects = gateway.findLogs(/^disconnected from the cloud broker/);
    const resendable = disconnects.reduce((sum, line) => sum + (line.inFlight as number), 0);
    t.diagnostic(`${report.duplicates} duplicates; ${disconnects.length} disconnects with ${resendable} messages in flight`);
    assert.ok(
      report.duplicates <= resendable,
      `${report.duplicates} duplicates, but only ${resendable} messages were in flight at the disconnects`,
    );
    const replays = gateway.findLogs(/^connected to the cloud broker; replaying \d+ buffered messages/);
    assert.ok(replays.length >= 2, `a replay after each restart: ${replays.map((line) => line.msg).join(' | ')}`);

    // Polled tag values: everything local subscribers saw (up to now) reaches the cloud, in order per topic.
    const seenLocally = local.messages
      .filter((message) => !message.retain)
      .map((message) => ({ ...message, topic: message.topic.replace('plc2mqtt/gw/', 'plant/') }));
    assert.ok(seenLocally.length > 10, 'the simulated PLC was polled');
    const key = (message: Arrival) => `${message.topic} ${message.payload}`;
    await waitFor(
      () => {
        const onCloud = new Set(recorder.messages.map(key));
        return seenLocally.every((message) => onCloud.has(key(message)));
      },
      20_000,
      'every polled value on the cloud',
    );
    const firstSeen = new Map<string, TagPayload[]>();
    const seenPayloads = new Set<string>();
    for (const message of recorder.messages.filter((candidate) => candidate.topic.startsWith('plant/'))) {
      if (seenPayloads.has(key(message))) continue;
      seenPayloads.add(key(message));
      firstSeen.set(message.topic, [...(firstSeen.get(message.topic) ?? []), JSON.parse(message.payload) as TagPayload]);
    }
    for (const [topic, values] of firstSeen) {
      for (let index = 1; index < values.length; index++) {
        assert.ok(
          values[index]!.ts > values[index - 1]!.ts,
          `${topic}: timestamps out of order at ${index}: ${JSON.stringify(values.slice(index - 1, index + 1))}`,
        );
      }
    }
    const counters = firstSeen.get('plant/plc/counter') ?? [];
    assert.ok(
      counters.every((sample, index) => index === 0 || sample.value >= counters[index - 1]!.value),
      'the PLC counter never goes backwards on the cloud',
    );

    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(stopped.outbox.dropped, 0);
    assert.ok(stopped.uplink.reconnects >= 2, `reconnects counted: ${JSON.stringify(stopped.uplink)}`);
    assert.ok(stopped.uplink.sent >= stopped.uplink.acknowledged);
    assertComplete(report, publisher.acked);
  });
});
