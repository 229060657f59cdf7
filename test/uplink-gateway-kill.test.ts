// The gateway process SIGKILLed (issue #4, test 3): while it buffers with the cloud down, and while
// it drains a large backlog into a live mosquitto. Restarted with the same dataDir, it must deliver
// every message it acknowledged to its local publisher, in order per topic; duplicates only for
// what was in flight at the kill.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
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
  type DeliveryReport,
} from './helpers/cloud-clients.js';
import { GatewayProcess, testUplink, writeGatewayConfig, type GatewaySetup } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

const RECORDER = 'cloud-recorder';

describe('uplink: the gateway is SIGKILLed while buffering (cloud down), then restarted', () => {
  const dir = makeTempDir('plc2mqtt-uplink-kill-buffering-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('every message acknowledged before the kill is delivered after the restart, in order, exactly once', async (t) => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    await cloud.seedSession(RECORDER, ['up/#']);
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url));

    // Phase 1: publish as fast as the gateway takes it, kill it in the middle.
    const first = GatewayProcess.start(setup);
    const publisher1 = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher1.close());
    const publishing1 = publisher1.publishRange(0, 100_000);
    await waitFor(() => publisher1.acked.length >= 3000, 20_000, '3000 acknowledged messages');
    await first.kill('SIGKILL');
    await publishing1;
    const acked1 = [...publisher1.acked];
    const sent1 = publisher1.sent;
    assert.ok(sent1 < 100_000, 'the kill cut the stream');
    t.diagnostic(`phase 1: ${sent1} published, ${acked1.length} acknowledged before the SIGKILL`);

    // Phase 2: the same dataDir; what was committed is still there.
    const second = GatewayProcess.start(setup);
    const reopened = await second.waitForLog('outbox holds messages from before the restart', 10_000);
    const kept = reopened.messages as number;
    assert.ok(
      kept >= acked1.length && kept <= sent1,
      `the outbox kept ${kept} messages: at least the ${acked1.length} acknowledged, at most the ${sent1} published`,
    );
    const publisher2 = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher2.close());
    await publisher2.publishRange(sent1, 2000);
    assert.equal(publisher2.acked.length, 2000);

    // Phase 3: the cloud comes up.
    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
    closers.push(() => recorder.close());
    await waitFor(
      () => recorder.uniqueCount() >= kept + 2000,
      20_000,
      `${kept + 2000} messages on the cloud (have ${recorder.uniqueCount()})`,
    );

    const arrivals = recorder.data();
    const report = deliveryReport(arrivals);
    // What was committed before the kill is a prefix of what was published (appends keep publish order).
    assertExactly(report, [...range(0, kept), ...range(sent1, 2000)]);
    assertComplete(report, acked1, 'messages acknowledged before the kill');
    assertOrderPerTopic(report);
    assertTopics(arrivals);
    assert.equal(report.duplicates, 0, 'nothing was ever sent before, so nothing is sent twice');

    const { code, stopped } = await second.stop();
    assert.equal(code, 0, second.output());
    assert.equal(stopped.outbox.messages, 0);
    assert.equal(stopped.outbox.dropped, 0);
  });
});

describe('uplink: the gateway is SIGKILLed while draining a 20k backlog, then restarted', () => {
  const dir = makeTempDir('plc2mqtt-uplink-kill-draining-');
  const closers: Array<() => Promise<void>> = [];
  const backlog = 20_000;
  const inFlight = 50;
  let setup: GatewaySetup;
  let recorder: CloudRecorder;
  let publisher: SeqPublisher;
  let report: DeliveryReport;
  /** Arrivals (duplicates included) when the gateway was killed. */
  let arrivedAtKill = 0;
  let keptAtRestart = 0;

  before(async () => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    await cloud.seedSession(RECORDER, ['up/#']);
    setup = await writeGatewayConfig(dir, testUplink(cloud.url, { inFlight }));
    const first = GatewayProcess.start(setup);
    publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, backlog, undefined, 1000);

    await cloud.start();
    recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
    closers.push(() => recorder.close());
    await waitFor(() => recorder.uniqueCount() >= 2000, 20_000, 'the drain to be under way');
    await first.kill('SIGKILL');
    arrivedAtKill = recorder.data().length;

    const second = GatewayProcess.start(setup);
    closers.push(async () => void (await second.stop()));
    const reopened = await second.waitForLog('outbox holds messages from before the restart', 10_000);
    keptAtRestart = reopened.messages as number;
    await waitFor(() => recorder.uniqueCount() >= backlog, 30_000, `all ${backlog} messages on the cloud (have ${recorder.uniqueCount()})`);
    report = deliveryReport(recorder.data());
  });

  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('the kill happened mid-drain (the restarted gateway found a backlog)', () => {
    assert.ok(publisher.acked.length === backlog, 'the whole backlog was committed');
    assert.ok(keptAtRestart > 0 && keptAtRestart < backlog, `the outbox held ${keptAtRestart} of ${backlog} at the restart`);
  });

  it('every message arrives, in order per topic after removing duplicates', () => {
    assertExactly(report, range(0, backlog));
    assertOrderPerTopic(report);
    assertTopics(recorder.data());
  });

  it('duplicates are only resends after the restart', (t) => {
    t.diagnostic(
      `${report.duplicates} duplicates; ${arrivedAtKill} arrivals before the kill; ${keptAtRestart} messages kept in the outbox`,
    );
    const arrivals = recorder.data();
    const seen = new Set<number>();
    arrivals.forEach((arrival, index) => {
      if (seen.has(arrival.seq)) assert.ok(index >= arrivedAtKill, `seq ${arrival.seq} arrived twice before the kill (arrival ${index})`);
      seen.add(arrival.seq);
    });
  });

  // Acknowledged ids are deleted from the outbox in batches (ACK_FLUSH_SIZE 500 / ACK_FLUSH_INTERVAL_MS
  // 20 in src/cloud/sender.ts), so at a kill up to 499 messages the cloud already acknowledged are still in
  // the outbox and are sent again on top of the in-flight window.
  it(`duplicates are bounded by the in-flight window (${inFlight})`, () => {
    assert.ok(report.duplicates <= inFlight, `${report.duplicates} duplicates, more than inFlight = ${inFlight}`);
  });
});
