// Backlog replay must not starve live data (issue #4, "a configurable replay rate or share"):
// with liveShare 0.5, messages committed after the reconnect get half of the in-flight window and
// arrive long before a 20k backlog is through. With the default 0, replay is strict FIFO.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { assertExactly, assertOrderPerTopic, CloudRecorder, deliveryReport, range, SeqPublisher } from './helpers/cloud-clients.js';
import { GatewayProcess, testUplink, writeGatewayConfig } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

const RECORDER = 'cloud-recorder';
const BACKLOG = 20_000;
const LIVE = 300;
const LIVE_FROM = 100_000;

/**
 * Buffers BACKLOG messages with the cloud down, brings the cloud up, freezes it (SIGSTOP) as soon as
 * the gateway is connected, publishes LIVE messages (committed after the connect: "live"), lets the
 * cloud go on (SIGCONT) and returns the order in which everything arrived.
 */
async function replayWithLiveData(dir: string, closers: Array<() => Promise<void>>, liveShare: number) {
  const cloud = await Mosquitto.create(dir, { persistence: true });
  await cloud.seedSession(RECORDER, ['up/#']);
  const setup = await writeGatewayConfig(dir, testUplink(cloud.url, { inFlight: 100, liveShare }));
  const gateway = GatewayProcess.start(setup);
  const publisher = await SeqPublisher.connect(setup.brokerUrl);
  closers.push(() => publisher.close());
  await publisher.publishRange(0, BACKLOG, undefined, 1000);

  await cloud.start();
  await gateway.waitForLog(/^connected to the cloud broker; replaying/, 10_000);
  cloud.signal('SIGSTOP');
  try {
    await publisher.publishRange(LIVE_FROM, LIVE);
  } finally {
    cloud.signal('SIGCONT');
  }
  const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
  closers.push(() => recorder.close());
  await waitFor(() => recorder.uniqueCount() >= BACKLOG + LIVE, 30_000, `all messages on the cloud (have ${recorder.uniqueCount()})`);
  const { code } = await gateway.stop();
  assert.equal(code, 0, gateway.output());
  const seqs = recorder.seqs();
  const report = deliveryReport(recorder.data());
  assertExactly(report, [...range(0, BACKLOG), ...range(LIVE_FROM, LIVE)]);
  return {
    gateway,
    recorder,
    report,
    lastLive: seqs.findLastIndex((seq) => seq >= LIVE_FROM),
    lastBacklog: seqs.findLastIndex((seq) => seq < LIVE_FROM),
    firstLive: seqs.findIndex((seq) => seq >= LIVE_FROM),
  };
}

describe('uplink: live data during a backlog replay', () => {
  const dir = makeTempDir('plc2mqtt-uplink-live-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('liveShare 0.5: live messages are not held up behind the backlog', async (t) => {
    const { gateway, recorder, report, lastLive, lastBacklog, firstLive } = await replayWithLiveData(dir, closers, 0.5);
    t.diagnostic(`live arrivals: first at ${firstLive}, last at ${lastLive}; last backlog arrival at ${lastBacklog}`);
    assert.ok(
      lastLive < lastBacklog,
      `every live message arrived before the backlog was through (last live at ${lastLive}, last backlog at ${lastBacklog})`,
    );
    assert.ok(
      lastLive < BACKLOG / 2,
      `live messages got their share of the window: the last one arrived at position ${lastLive} of ${BACKLOG + LIVE}`,
    );
    // Live messages may overtake replayed ones (documented), but within each class the order holds.
    assertOrderPerTopic(deliveryReport(recorder.data().filter((arrival) => arrival.seq < LIVE_FROM)));
    assertOrderPerTopic(deliveryReport(recorder.data().filter((arrival) => arrival.seq >= LIVE_FROM)));
    assert.equal(report.duplicates, 0);
    assert.equal(gateway.findLogs('backlog replayed').length, 1);
  });

  it('liveShare 0 (default): strict FIFO, live messages after the whole backlog', async () => {
    const sub = makeTempDir('plc2mqtt-uplink-live-fifo-');
    closers.push(async () => removeDir(sub));
    const { report, firstLive, lastBacklog } = await replayWithLiveData(sub, closers, 0);
    assert.ok(firstLive > lastBacklog, `first live at ${firstLive}, last backlog at ${lastBacklog}`);
    assertOrderPerTopic(report);
  });
});
