// The outbox on a full disk, with the real gateway (CLI) keeping its data on a small tmpfs, local
// publishers (mqtt.js, MQTT 3.1.1 and 5) and mosquitto as the cloud: what is acknowledged, what is
// refused, how the outbox recovers when space comes back, and what a shutdown on a full disk says.
import assert from 'node:assert/strict';
import { after, describe, it, type TestContext } from 'node:test';
import mqtt from 'mqtt';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { assertExactly, CloudRecorder, deliveryReport, localTopicOf, payloadOf, range, SeqPublisher } from './helpers/cloud-clients.js';
import { GatewayProcess, LEVEL, testUplink, writeGatewayConfig, type GatewaySetup, type UplinkInput } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';
import { SmallDisk } from './helpers/small-disk.js';

/** Appends the outbox keeps in memory while the disk is full (src/cloud/outbox.ts MAX_PENDING_WHILE_FULL). */
const MEMORY_LIMIT = 100_000;

function smallDisk(t: TestContext, megabytes: number): SmallDisk | undefined {
  const disk = SmallDisk.mount(megabytes);
  if (!disk) {
    t.skip(`needs permission to mount a ${megabytes} MB tmpfs (run as root)`);
    return undefined;
  }
  t.after(() => disk.unmount());
  return disk;
}

/** A gateway whose data directory (outbox.db, retained.db) is on `disk`. */
async function gatewayOn(dir: string, disk: SmallDisk, uplink: UplinkInput): Promise<GatewaySetup> {
  return writeGatewayConfig(dir, uplink, { gateway: { name: 'gw', dataDir: disk.path, logLevel: 'info', shutdownTimeout: '20s' } });
}

/** Publishes `count` QoS 0 messages on a forwarded topic and waits until the gateway has them all. */
async function flood(gateway: GatewayProcess, url: string, count: number): Promise<void> {
  const before = (await gateway.outboxStatus()).appended;
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, clean: true });
  try {
    const payload = Buffer.from('{"flood":true}');
    for (let n = 0; n < count; n++) client.publish('line/flood', payload, { qos: 0 });
    await waitFor(async () => (await gateway.outboxStatus()).appended >= before + count, 60_000, 'the gateway to take the flood');
  } finally {
    await client.endAsync();
  }
}

/** Publishes seq from..from+count-1 at QoS 0 (no PUBACK to wait for) and waits until the gateway has them. */
async function publishQoS0(gateway: GatewayProcess, url: string, from: number, count: number): Promise<void> {
  const before = (await gateway.outboxStatus()).appended;
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, clean: true });
  try {
    for (let seq = from; seq < from + count; seq++) client.publish(localTopicOf(seq), payloadOf(seq), { qos: 0 });
    await waitFor(async () => (await gateway.outboxStatus()).appended >= before + count, 60_000, 'the gateway to take the messages');
  } finally {
    await client.endAsync();
  }
}

describe('outbox: a full disk', () => {
  const dir = makeTempDir('plc2mqtt-disk-full-');
  after(async () => {
    await killAllChildren();
    removeDir(dir);
  });

  it('recovers as soon as space comes back, with a backlog far larger than the space freed: all of it reaches the cloud', async (t) => {
    const disk = smallDisk(t, 4);
    if (!disk) return;
    const cloud = await Mosquitto.startNew(dir);
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: 'recorder-recovery', filters: ['up/#'] });
    t.after(() => recorder.close());
    const setup = await gatewayOn(dir, disk, testUplink(cloud.url));
    const gateway = GatewayProcess.start(setup);
    t.after(() => gateway.kill());
    await gateway.waitForLog(/^connected to the cloud broker/, 20_000);
    disk.fill();
    // About 2.5 MB in SQLite: more than the megabyte that is freed below, so it can only get
    // there in pieces, while the cloud takes what is written and frees room for the rest.
    const backlog = 70_000;
    await publishQoS0(gateway, setup.brokerUrl, 0, backlog);
    const full = await gateway.outboxStatus();
    assert.equal(full.diskFull, true, JSON.stringify(full));
    assert.ok(full.pending > 0, JSON.stringify(full));
    disk.release(1024 * 1024);
    let outbox = '';
    await waitFor(
      async () => {
        outbox = JSON.stringify(await gateway.outboxStatus());
        return recorder.uniqueCount() >= backlog;
      },
      120_000,
      () => `all ${backlog} messages on the cloud (have ${recorder.uniqueCount()}; outbox ${outbox})`,
    );
    assertExactly(deliveryReport(recorder.data()), range(0, backlog));
    // Delivered and deleted: the outbox is empty and writes again.
    await waitFor(
      async () => {
        outbox = JSON.stringify(await gateway.outboxStatus());
        const status = JSON.parse(outbox) as { messages: number; pending: number; diskFull: boolean };
        return status.messages === 0 && status.pending === 0 && !status.diskFull;
      },
      30_000,
      () => `an empty outbox that is no longer disk-full: ${outbox}`,
    );
    const status = await gateway.outboxStatus();
    assert.equal(status.dropped, 0, JSON.stringify(status));
    assert.equal(status.delivered, backlog);
    const lines = gateway
      .findLogs(/^outbox/)
      .map((line) => JSON.stringify(line))
      .join('\n');
    assert.ok(gateway.findLogs(/^outbox: disk space is back/).length >= 1, lines);
    assert.equal(gateway.findLogs(/^outbox: could not delete/).length, 0, lines);
  });

  it('SIGTERM with the disk full: a last write in pieces, then an error with the count of messages lost', async (t) => {
    const disk = smallDisk(t, 4);
    if (!disk) return;
    const cloud = await Mosquitto.create(dir); // down until the restart
    const setup = await gatewayOn(dir, disk, testUplink(cloud.url));
    const gateway = GatewayProcess.start(setup);
    t.after(() => gateway.kill());
    await gateway.outboxStatus();
    disk.fill();
    // About 1.4 MB in SQLite; half a megabyte is freed just before the shutdown.
    const waiting = 40_000;
    await publishQoS0(gateway, setup.brokerUrl, 0, waiting);
    assert.equal((await gateway.outboxStatus()).diskFull, true);
    disk.release(512 * 1024);
    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    const lostLines = gateway.findLogs(/^outbox: .* lost/);
    assert.equal(
      lostLines.length,
      1,
      gateway
        .findLogs(/^outbox/)
        .map((line) => JSON.stringify(line))
        .join('\n'),
    );
    const lostLine = lostLines[0]!;
    assert.equal(lostLine.level, LEVEL.error);
    const lost = lostLine.lost as number;
    const stored = stopped.outbox.messages;
    assert.ok(stored > 0, `the last write stored what fitted: ${JSON.stringify(stopped.outbox)}`);
    assert.ok(lost > 0, 'more than fitted was waiting');
    assert.equal(stored + lost, waiting, `stored ${stored} + lost ${lost}`);
    assert.equal(stopped.outbox.pending, 0);
    assert.equal(stopped.outbox.dropped, lost, 'the lost messages are counted as dropped');

    // What was stored is delivered after the restart (once someone made room on the disk).
    disk.release(Number.MAX_SAFE_INTEGER);
    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: 'recorder-shutdown', filters: ['up/#'] });
    t.after(() => recorder.close());
    const second = GatewayProcess.start(setup);
    t.after(() => second.kill());
    await waitFor(
      () => recorder.uniqueCount() >= stored,
      60_000,
      () => `${stored} messages on the cloud (have ${recorder.uniqueCount()})`,
    );
    const { stopped: stopped2 } = await second.stop();
    assert.equal(stopped2.outbox.messages, 0);
    assert.equal(recorder.uniqueCount(), stored);
  });

  for (const policy of ['drop-oldest', 'drop-newest'] as const) {
    it(`${policy}: beyond the in-memory limit, the messages dropped are refused (PUBACK 0x97), never acknowledged`, async (t) => {
      const disk = smallDisk(t, 4);
      if (!disk) return;
      const cloud = await Mosquitto.create(dir); // never started: the cloud is down throughout
      const setup = await gatewayOn(dir, disk, testUplink(cloud.url, { outbox: { policy } }));
      const gateway = GatewayProcess.start(setup);
      t.after(() => gateway.kill());
      await gateway.outboxStatus(); // up, outbox open
      disk.fill();
      const publisher = await SeqPublisher.connect(setup.brokerUrl, 20_000, { protocolVersion: 5 });
      t.after(() => publisher.close());
      let waiting: Promise<void> | undefined;
      if (policy === 'drop-oldest') {
        // Ten messages wait for the disk; the flood then pushes them out of memory, oldest first.
        waiting = publisher.publishRange(0, 10);
        await waitFor(async () => (await gateway.outboxStatus()).diskFull, 20_000, 'the outbox to find the disk full');
        await flood(gateway, setup.brokerUrl, MEMORY_LIMIT);
      } else {
        // The memory is full first; drop-newest then refuses each new message.
        await flood(gateway, setup.brokerUrl, 1000);
        await waitFor(async () => (await gateway.outboxStatus()).diskFull, 20_000, 'the outbox to find the disk full');
        await flood(gateway, setup.brokerUrl, MEMORY_LIMIT);
        waiting = publisher.publishRange(0, 10);
      }
      await waiting;
      assert.deepEqual(publisher.acked, [], 'not one of them is on disk: none may be acknowledged');
      assert.deepEqual(
        publisher.refused.map((refusal) => refusal.seq).sort((a, b) => a - b),
        range(0, 10),
      );
      assert.deepEqual([...new Set(publisher.refused.map((refusal) => refusal.reasonCode))], [0x97]);
      const status = await gateway.outboxStatus();
      assert.equal(status.diskFull, true);
      assert.equal(status.pending, MEMORY_LIMIT, JSON.stringify(status));
      assert.equal(status.dropped, status.appended - MEMORY_LIMIT, `every message beyond the limit is counted: ${JSON.stringify(status)}`);
    });
  }
});
