// The outbox at its bounds and on a damaged file (issue #4, tests 4 and 6): with the cloud (mosquitto)
// down, more messages than the bound are published; when the cloud comes up exactly those the policy
// kept arrive, and the drops are counted and logged once. A corrupt outbox.db is moved aside loudly.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, readFileSync, writeSync, closeSync, writeFileSync, mkdirSync, statSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import type { IClientOptions } from 'mqtt';
import {
  assertComplete,
  assertExactly,
  assertOrderPerTopic,
  assertTopics,
  CloudRecorder,
  deliveryReport,
  PAYLOAD_SIZE,
  payloadOf,
  range,
  SeqPublisher,
} from './helpers/cloud-clients.js';
import { GatewayProcess, LEVEL, testUplink, writeGatewayConfig, type UplinkInput } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

const RECORDER = 'cloud-recorder';

function suite(name: string, body: (context: { dir: string; closers: Array<() => Promise<void>> }) => void): void {
  describe(name, () => {
    const dir = makeTempDir('plc2mqtt-uplink-outbox-');
    const closers: Array<() => Promise<void>> = [];
    after(async () => {
      for (const close of closers) await close().catch(() => undefined);
      await killAllChildren();
      removeDir(dir);
    });
    body({ dir, closers });
  });
}

/**
 * With the cloud down, publishes `published` messages into a gateway whose outbox has `outbox` bounds,
 * then brings the cloud up and returns what arrived once the gateway says it has nothing left.
 */
async function overflow(
  dir: string,
  closers: Array<() => Promise<void>>,
  outbox: UplinkInput['outbox'],
  published: number,
  expectedKept: number,
  publisherOptions: IClientOptions = {},
) {
  const cloud = await Mosquitto.create(dir, { persistence: true });
  await cloud.seedSession(RECORDER, ['up/#']);
  const setup = await writeGatewayConfig(dir, testUplink(cloud.url, { outbox }));
  const gateway = GatewayProcess.start(setup);
  const publisher = await SeqPublisher.connect(setup.brokerUrl, 20_000, publisherOptions);
  closers.push(() => publisher.close());
  await publisher.publishRange(0, published);
  const publisherClosed = publisher.isClosed;

  await cloud.start();
  const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
  closers.push(() => recorder.close());
  await waitFor(
    () => recorder.uniqueCount() >= expectedKept,
    20_000,
    `${expectedKept} messages on the cloud (have ${recorder.uniqueCount()})`,
  );
  const { code, stopped } = await gateway.stop();
  assert.equal(code, 0, gateway.output());
  // The gateway stopped after its outbox was empty: nothing more can arrive than what is here.
  assert.equal(stopped.outbox.messages, 0, `outbox at stop: ${JSON.stringify(stopped.outbox)}`);
  await waitFor(() => recorder.messages.length >= stopped.uplink.acknowledged, 5000, 'the last acknowledged messages at the recorder');
  return { gateway, stopped, recorder, report: deliveryReport(recorder.data()), publisher, publisherClosed };
}

const ascending = (seqs: readonly number[]): number[] => [...seqs].sort((a, b) => a - b);

suite('outbox bound: maxMessages with drop-oldest', ({ dir, closers }) => {
  it('keeps and delivers exactly the newest N; drops are counted and logged once', async () => {
    const bound = 1000;
    const extra = 500;
    const { gateway, stopped, recorder, report, publisher } = await overflow(
      dir,
      closers,
      { maxMessages: bound, policy: 'drop-oldest' },
      bound + extra,
      bound,
    );
    // drop-oldest takes every new message (acknowledged once on disk) and drops acknowledged old ones.
    assert.equal(publisher.acked.length, bound + extra, 'every publish is acknowledged');
    assertExactly(report, range(extra, bound));
    assertOrderPerTopic(report);
    assertTopics(recorder.data());
    assert.equal(report.duplicates, 0);

    const warnings = gateway.findLogs('outbox: dropping messages');
    assert.equal(warnings.length, 1, `one warning per episode: ${JSON.stringify(warnings)}`);
    assert.equal(warnings[0]!.level, LEVEL.warn);
    assert.match(warnings[0]!.msg, /drop-oldest/);
    const ended = gateway.findLogs('outbox: no longer dropping');
    assert.equal(ended.length, 1, 'the episode ends once the cloud drains the outbox');
    assert.equal(ended[0]!.dropped, extra, `the episode's count: ${JSON.stringify(ended[0])}`);
    assert.equal(stopped.outbox.dropped, extra, `stats at stop: ${JSON.stringify(stopped.outbox)}`);
    assert.equal(stopped.outbox.appended, bound + extra);
    assert.equal(stopped.outbox.delivered, bound);
    assert.equal(stopped.uplink.sent, bound, 'a dropped message is never sent');
  });
});

suite('outbox bound: maxMessages with drop-newest', ({ dir, closers }) => {
  it('MQTT 5 publisher: exactly the first N are acknowledged and delivered, the rest get PUBACK 0x97; drops are counted and logged once', async () => {
    const bound = 1000;
    const extra = 500;
    const { gateway, stopped, recorder, report, publisher, publisherClosed } = await overflow(
      dir,
      closers,
      { maxMessages: bound, policy: 'drop-newest' },
      bound + extra,
      bound,
      { protocolVersion: 5 },
    );
    assert.deepEqual(ascending(publisher.acked), range(0, bound), 'acknowledged: exactly the messages the outbox kept');
    assert.deepEqual(
      ascending(publisher.refused.map((refusal) => refusal.seq)),
      range(bound, extra),
      'refused: exactly the messages the outbox dropped',
    );
    assert.deepEqual([...new Set(publisher.refused.map((refusal) => refusal.reasonCode))], [0x97], 'PUBACK reason 0x97 quota exceeded');
    assert.equal(publisherClosed, false, 'the MQTT 5 publisher stays connected');
    assertExactly(report, range(0, bound));
    assertOrderPerTopic(report);
    assertTopics(recorder.data());
    assert.equal(report.duplicates, 0);

    const warnings = gateway.findLogs('outbox: dropping messages');
    assert.equal(warnings.length, 1, `one warning per episode: ${JSON.stringify(warnings)}`);
    assert.match(warnings[0]!.msg, /drop-newest/);
    const refusals = gateway.findLogs(/^publish refused/);
    assert.equal(refusals.length, 1, `one line per client: ${JSON.stringify(refusals)}`);
    assert.match(String(refusals[0]!.answer), /0x97/);
    assert.equal(stopped.outbox.dropped, extra, `stats at stop: ${JSON.stringify(stopped.outbox)}`);
    assert.equal(stopped.outbox.delivered, bound);
    assert.equal(stopped.uplink.sent, bound);
  });

  it('MQTT 3.1.1 publisher: no PUBACK for a dropped message (disconnected instead); every acknowledged message is delivered', async () => {
    const bound = 1000;
    const extra = 500;
    const { gateway, stopped, report, publisher, publisherClosed } = await overflow(
      dir,
      closers,
      { maxMessages: bound, policy: 'drop-newest' },
      bound + extra,
      bound,
    );
    assert.equal(publisherClosed, true, 'MQTT 3.1.1 has no negative PUBACK: the publisher is disconnected');
    const notKept = publisher.acked.filter((seq) => seq >= bound);
    assert.deepEqual(notKept, [], 'no message the outbox dropped is acknowledged');
    assertComplete(report, publisher.acked);
    assertExactly(report, range(0, bound));
    const refusals = gateway.findLogs(/^publish refused/);
    assert.equal(refusals.length, 1, JSON.stringify(refusals));
    assert.match(String(refusals[0]!.answer), /disconnected/);
    assert.equal(stopped.outbox.delivered, bound);
    assert.equal(stopped.outbox.dropped, stopped.outbox.appended - bound, `stats at stop: ${JSON.stringify(stopped.outbox)}`);
    assert.ok(stopped.outbox.dropped > 0);
  });
});

suite('outbox bound: maxBytes with drop-oldest', ({ dir, closers }) => {
  it('keeps exactly as many of the newest messages as fit in maxBytes (topic + payload)', async () => {
    const size = 'up/a'.length + PAYLOAD_SIZE;
    const fits = 800;
    const published = 1200;
    const { stopped, report } = await overflow(dir, closers, { maxBytes: fits * size, policy: 'drop-oldest' }, published, fits);
    assertExactly(report, range(published - fits, fits));
    assertOrderPerTopic(report);
    assert.equal(stopped.outbox.dropped, published - fits);
  });
});

suite('outbox bound: maxAge', ({ dir, closers }) => {
  it('drops (and counts) messages older than maxAge at the next start; newer ones are delivered', async () => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    await cloud.seedSession(RECORDER, ['up/#']);
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url, { outbox: { maxAge: '1s' } }));
    const first = GatewayProcess.start(setup);
    const publisher1 = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher1.close());
    await publisher1.publishRange(0, 300);
    assert.equal((await first.stop()).stopped.outbox.messages, 300);
    // Let them age past maxAge (the only wait on the clock in these tests; it does not assert a duration).
    await new Promise((resolve) => setTimeout(resolve, 1200));

    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
    closers.push(() => recorder.close());
    const second = GatewayProcess.start(setup);
    const dropped = await second.waitForLog('outbox: dropping messages', 10_000);
    assert.equal(dropped.dropped, 300, JSON.stringify(dropped));
    assert.match(dropped.msg, /older than maxAge/);
    const publisher2 = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher2.close());
    await publisher2.publishRange(1000, 100);
    await waitFor(() => recorder.uniqueCount() >= 100, 10_000, 'the new messages');
    const { stopped } = await second.stop();
    assert.equal(stopped.outbox.dropped, 300);
    assertExactly(deliveryReport(recorder.data()), range(1000, 100));
  });
});

suite('outbox bound: maxAge at send time', ({ dir, closers }) => {
  it('a message older than maxAge is not sent when the cloud comes back before the periodic check; it is counted as dropped', async () => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    await cloud.seedSession(RECORDER, ['up/#']);
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url, { outbox: { maxAge: '3s' } }));
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, 300);
    assert.equal(publisher.acked.length, 300);
    // Older than maxAge by the time the cloud is back (a wait on the clock; no duration is asserted).
    await new Promise((resolve) => setTimeout(resolve, 3500));
    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
    closers.push(() => recorder.close());
    await gateway.waitForLog(/^connected to the cloud broker/, 20_000);
    await publisher.publishRange(1000, 100);
    // Everything is accounted for: delivered, or dropped for its age.
    let outbox = '';
    await waitFor(
      async () => {
        const status = await gateway.outboxStatus();
        outbox = JSON.stringify(status);
        return status.messages === 0 && status.delivered + status.dropped === status.appended;
      },
      20_000,
      () => `an empty outbox: ${outbox}`,
    );
    const { stopped } = await gateway.stop();
    await waitFor(() => recorder.uniqueCount() >= stopped.outbox.delivered, 10_000, 'the delivered messages at the recorder');
    const arrived = deliveryReport(recorder.data());
    const tooOld = [...arrived.unique].filter((seq) => seq < 1000);
    assert.deepEqual(tooOld, [], `${tooOld.length} messages older than maxAge left the gateway`);
    assert.ok(stopped.outbox.dropped >= 300, JSON.stringify(stopped.outbox));
    assert.equal(stopped.outbox.delivered + stopped.outbox.dropped, stopped.outbox.appended);
    assert.equal(arrived.unique.size, stopped.outbox.delivered, 'what was not dropped arrived');
    const drops = gateway.findLogs('outbox: dropping messages');
    assert.ok(drops.length >= 1 && /maxAge/.test(drops[0]!.msg), JSON.stringify(drops));
  });
});

suite('outbox: a corrupt file at start', ({ dir, closers }) => {
  it('garbage bytes: logs an error naming the moved-aside file, starts a fresh outbox and works', async () => {
    const cloud = await Mosquitto.startNew(dir);
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
    closers.push(() => recorder.close());
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url));
    mkdirSync(setup.dataDir, { recursive: true });
    const garbage = randomBytes(64 * 1024);
    writeFileSync(setup.outboxFile, garbage);

    const gateway = GatewayProcess.start(setup);
    const damaged = await gateway.waitForLog(/^the outbox file is damaged/, 10_000);
    assert.equal(damaged.level, LEVEL.error);
    assert.equal(damaged.file, setup.outboxFile);
    const movedTo = damaged.movedTo as string;
    assert.match(movedTo, /outbox\.db\.corrupt-/);
    assert.ok(existsSync(movedTo), `the damaged file is kept at ${movedTo}`);
    assert.deepEqual(readFileSync(movedTo), garbage, 'moved, not rewritten');

    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, 500);
    await waitFor(() => recorder.uniqueCount() >= 500, 10_000, 'the messages on the cloud');
    const report = deliveryReport(recorder.data());
    assertExactly(report, range(0, 500));
    assertOrderPerTopic(report);
    const { code } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(gateway.findLogs(/^the outbox file is damaged/).length, 1);
    assert.equal(gateway.findLogs('gateway failed to start').length, 0);
  });

  it('bytes changed inside rows (quick_check cannot see it): those rows are not sent, logged and counted; the rest is delivered', async () => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    const recorderId = `${RECORDER}-damaged-rows`;
    await cloud.seedSession(recorderId, ['up/#']);
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url));
    const first = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, 3000);
    const { stopped } = await first.stop();
    assert.equal(stopped.outbox.messages, 3000);
    // Damage as a flash cell would: one digit of a value (still valid JSON), and garbage in another row.
    const file = readFileSync(setup.outboxFile);
    const digit = file.indexOf(Buffer.from(payloadOf(1234)));
    const garbage = file.indexOf(Buffer.from(payloadOf(2000)));
    assert.ok(digit > 0 && garbage > 0, 'both payloads are in outbox.db');
    file.write(payloadOf(7234), digit);
    file.write('\u0000\u00ff\u0013 not json', garbage, 'latin1');
    writeFileSync(setup.outboxFile, file);

    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: recorderId, filters: ['up/#'] });
    closers.push(() => recorder.close());
    const second = GatewayProcess.start(setup);
    await waitFor(async () => (await second.outboxStatus()).messages === 0, 20_000, 'the outbox to be sent');
    const status = await second.outboxStatus();
    assert.equal((status as { damaged?: number }).damaged, 2, JSON.stringify(status));
    const metrics = await (
      await fetch(`${(await second.waitForLog('operations endpoint listening', 10_000)).url as string}/metrics`)
    ).text();
    assert.match(metrics, /^plc2mqtt_outbox_damaged_total 2$/m);
    const { stopped: stopped2 } = await second.stop();
    await waitFor(() => recorder.messages.length >= stopped2.uplink.acknowledged - 2, 10_000, 'the acknowledged messages at the recorder');
    assert.equal(second.findLogs(/^the outbox file is damaged/).length, 0, 'quick_check passes: the file is not moved aside');
    const report = deliveryReport(recorder.data());
    assertExactly(
      report,
      range(0, 3000).filter((seq) => seq !== 1234 && seq !== 2000),
    );
    assert.equal(recorder.messages.filter((message) => message.payload.includes('not json')).length, 0);
    const damaged = second.findLogs(/^outbox: .*not what the gateway wrote/);
    assert.equal(damaged.length >= 1 ? damaged.reduce((sum, line) => sum + (line.count as number), 0) : 0, 2, JSON.stringify(damaged));
    assert.equal(damaged[0]!.level, LEVEL.error);
  });

  it('a real outbox damaged in the middle: moved aside, its messages are not sent, new ones are', async () => {
    const cloud = await Mosquitto.create(dir, { persistence: true });
    const recorderId = `${RECORDER}-2`;
    await cloud.seedSession(recorderId, ['up/#']);
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url));
    const first = GatewayProcess.start(setup);
    const publisher1 = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher1.close());
    await publisher1.publishRange(0, 3000);
    const { stopped } = await first.stop();
    assert.equal(stopped.outbox.messages, 3000);
    assert.equal(existsSync(`${setup.outboxFile}-wal`), false, 'a clean close leaves no WAL: everything is in outbox.db');
    // Keep the SQLite header (first page), overwrite the pages after it.
    const size = statSync(setup.outboxFile).size;
    assert.ok(size > 16 * 1024, `outbox.db has ${size} bytes`);
    const fd = openSync(setup.outboxFile, 'r+');
    writeSync(fd, randomBytes(size - 8192), 0, size - 8192, 4096);
    closeSync(fd);

    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: recorderId, filters: ['up/#'] });
    closers.push(() => recorder.close());
    const second = GatewayProcess.start(setup);
    const damaged = await second.waitForLog(/^the outbox file is damaged/, 10_000);
    assert.equal(damaged.level, LEVEL.error);
    assert.ok(existsSync(damaged.movedTo as string));
    const publisher2 = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher2.close());
    await publisher2.publishRange(5000, 100);
    await waitFor(() => recorder.uniqueCount() >= 100, 10_000, 'the new messages');
    const { code, stopped: stopped2 } = await second.stop();
    assert.equal(code, 0, second.output());
    assert.equal(stopped2.outbox.messages, 0);
    assertExactly(deliveryReport(recorder.data()), range(5000, 100));
  });
});
