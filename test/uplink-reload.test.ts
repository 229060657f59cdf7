// The uplink changed by a reload (SIGHUP) while data flows: a new cloud URL moves the gateway to
// the other broker with nothing lost; certificate files rewritten in place (rotation) are used by
// a new connection although the config is the same; a SIGHUP that changes nothing leaves the
// connection alone. The real CLI, real mosquitto brokers with persistent-session recorders.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { killAllChildren, makePki, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { assertOrderPerTopic, CloudRecorder, deliveryReport, range, SeqPublisher, assertExactly } from './helpers/cloud-clients.js';
import { GatewayProcess, rewriteUplink, testUplink, writeGatewayConfig, type LogLine } from './helpers/cloud-gateway.js';
import { freePort, waitFor } from './helpers/net.js';

const STATUS = 'plc2mqtt/gw/status';

/** Sends SIGHUP and returns the next "config reloaded" line. */
async function reload(gateway: GatewayProcess): Promise<LogLine> {
  const before = gateway.findLogs('config reloaded').length;
  gateway.child.kill('SIGHUP');
  await waitFor(() => gateway.findLogs('config reloaded').length > before, 10_000, 'the reload');
  return gateway.findLogs('config reloaded')[before]!;
}

describe('uplink reload', () => {
  const dir = makeTempDir('plc2mqtt-uplink-reload-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('a new URL: the gateway moves to the other cloud broker mid-stream; nothing is lost; the old one hears "offline"', async () => {
    const cloudA = await Mosquitto.startNew(dir);
    const cloudB = await Mosquitto.startNew(dir);
    const recorderA = await CloudRecorder.connect(cloudA.url, { clientId: 'recorder-a', filters: ['up/#', STATUS] });
    const recorderB = await CloudRecorder.connect(cloudB.url, { clientId: 'recorder-b', filters: ['up/#', STATUS] });
    closers.push(
      () => recorderA.close(),
      () => recorderB.close(),
    );
    const setup = await writeGatewayConfig(dir, testUplink(cloudA.url));
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());

    const total = 6000;
    const publishing = publisher.publishRange(0, total);
    await waitFor(() => recorderA.uniqueCount() >= 1000, 20_000, 'the stream to be flowing to A');
    rewriteUplink(setup, testUplink(cloudB.url));
    const reloaded = await reload(gateway);
    assert.deepEqual([reloaded.applied, reloaded.notApplied], [['uplink'], []]);
    await publishing;
    const union = () => new Set([...recorderA.seqs(), ...recorderB.seqs()]).size;
    await waitFor(
      () => union() >= total,
      20_000,
      () => `all ${total} messages on A or B (have ${union()})`,
    );

    const arrivals = [...recorderA.data(), ...recorderB.data()];
    const report = deliveryReport(arrivals);
    assertExactly(report, range(0, total));
    assert.ok(
      recorderB.uniqueCount() > 0 && recorderA.uniqueCount() >= 1000,
      `both brokers got messages: A ${recorderA.uniqueCount()}, B ${recorderB.uniqueCount()}`,
    );
    // B gets what A had not acknowledged, in order; at most the in-flight window went to both.
    assertOrderPerTopic(deliveryReport(recorderB.data()));
    assert.ok(report.duplicates <= 100, `${report.duplicates} duplicates, more than the in-flight window`);
    // The gateway said goodbye to A and hello to B (retained status, last value per broker).
    await waitFor(
      () => recorderA.messages.filter((message) => message.topic === STATUS).at(-1)?.payload === 'offline',
      5000,
      'A to hear "offline"',
    );
    assert.equal(recorderB.messages.filter((message) => message.topic === STATUS).at(-1)?.payload, 'online');

    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.deepEqual([stopped.outbox.messages, stopped.outbox.dropped], [0, 0]);
    // The counters went on across the new connection (metrics stay monotonic).
    assert.ok(stopped.uplink.acknowledged >= total, JSON.stringify(stopped.uplink));
  });

  it('certificate files rewritten in place: a SIGHUP with the same config reconnects with the new certificate; a SIGHUP with nothing new does not', async () => {
    const pkiDir = join(dir, 'pki');
    const folder = join(dir, 'tls');
    mkdirSync(pkiDir);
    mkdirSync(folder);
    const pki = makePki(pkiDir);
    const cloud = await Mosquitto.startNew(dir, {
      tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireCertificate: true },
    });
    const recorder = await CloudRecorder.connect(cloud.url, {
      clientId: 'recorder-tls',
      filters: ['up/#', STATUS],
      mqtt: { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) },
    });
    closers.push(() => recorder.close());
    // The gateway's certificate has expired, say: here, one the broker refuses for client authentication.
    const gatewayCert = join(folder, 'gateway.crt');
    const gatewayKey = join(folder, 'gateway.key');
    copyFileSync(pki.serverCert, gatewayCert);
    copyFileSync(pki.serverKey, gatewayKey);
    const setup = await writeGatewayConfig(folder, testUplink(cloud.url, { tls: { ca: pki.ca, cert: gatewayCert, key: gatewayKey } }));
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await gateway.waitForLog('cloud broker connection error', 10_000);
    await publisher.publishRange(0, 500);
    assert.equal(recorder.uniqueCount(), 0, 'nothing gets through with the refused certificate');

    // Nothing changed: no new connection.
    const attempts = gateway.findLogs('connecting to the cloud broker').length;
    const unchanged = await reload(gateway);
    assert.deepEqual([unchanged.applied, unchanged.notApplied], [[], []]);
    assert.equal(gateway.findLogs('connecting to the cloud broker').length, attempts);

    // The renewed certificate and key are written over the old files; the config stays the same.
    copyFileSync(pki.clientCert, gatewayCert);
    copyFileSync(pki.clientKey, gatewayKey);
    const rotated = await reload(gateway);
    assert.deepEqual([rotated.applied, rotated.notApplied], [['uplink'], []]);
    await waitFor(
      () => recorder.uniqueCount() >= 500,
      20_000,
      () => `the buffered messages on the cloud (have ${recorder.uniqueCount()})`,
    );
    assertExactly(deliveryReport(recorder.data()), range(0, 500));

    // A botched rotation (the new certificate with the old key) is refused; the working connection stays.
    copyFileSync(pki.serverKey, gatewayKey);
    const botched = await reload(gateway);
    assert.deepEqual([botched.applied, botched.notApplied], [[], ['uplink']]);
    const refusal = gateway.findLogs('the new uplink settings cannot be used; the cloud connection stays as it was')[0]!;
    assert.match(String(refusal.error), /gateway\.crt .*gateway\.key: .*key values mismatch/);
    await publisher.publishRange(500, 100);
    await waitFor(
      () => recorder.uniqueCount() >= 600,
      20_000,
      () => `the messages after the refused rotation (have ${recorder.uniqueCount()})`,
    );
    assertExactly(deliveryReport(recorder.data()), range(0, 600));
    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(stopped.outbox.messages, 0);
  });

  it('new forward rules: tag values of running devices go up at once, no device restarts; the status says offline, then online', async () => {
    const cloud = await Mosquitto.startNew(dir);
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: 'recorder-rules', filters: ['plant/#', STATUS] });
    closers.push(() => recorder.close());
    const folder = join(dir, 'rules');
    mkdirSync(folder);
    const plcPort = await freePort();
    const setup = await writeGatewayConfig(folder, testUplink(cloud.url), {
      simulators: [{ name: 'sim', type: 'modbus-tcp', host: '127.0.0.1', port: plcPort }],
      devices: [
        {
          name: 'plc',
          driver: 'modbus',
          connection: { transport: 'tcp', host: '127.0.0.1', port: plcPort, unitId: 1, timeout: '1s' },
          pollInterval: '100ms',
          tags: [{ name: 'counter', address: '40003', type: 'uint32' }],
        },
      ],
    });
    const gateway = GatewayProcess.start(setup);
    await gateway.waitForLog(/^connected to the cloud broker/, 10_000);
    await new Promise((resolve) => setTimeout(resolve, 500));
    assert.equal(recorder.messages.filter((message) => message.topic.startsWith('plant/')).length, 0, 'no rule forwards the tags yet');

    rewriteUplink(
      setup,
      testUplink(cloud.url, { forward: [{ topic: '#', localPrefix: 'plc2mqtt/gw/plc/', remotePrefix: 'plant/plc/', qos: 1 }] }),
    );
    const reloaded = await reload(gateway);
    assert.deepEqual([reloaded.applied, reloaded.restarted, reloaded.notApplied], [['uplink'], [], []]);
    await waitFor(() => recorder.messages.some((message) => message.topic === 'plant/plc/counter'), 10_000, 'the counter on the cloud');
    const statuses = () => recorder.messages.filter((message) => message.topic === STATUS).map((message) => message.payload);
    await waitFor(
      () => statuses().length >= 3 && statuses().at(-1) === 'online',
      5000,
      () => `"online" again: ${statuses().join(', ')}`,
    );
    // (The goodbye comes twice: the old connection's own "offline", then its will as it closes.)
    assert.deepEqual([...new Set(statuses())], ['online', 'offline'], 'the old connection said goodbye before the new one said hello');
    assert.equal(statuses().indexOf('offline') > 0 && statuses().lastIndexOf('offline') < statuses().length - 1, true);
    const { code } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
  });
});
