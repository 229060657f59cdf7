// The uplink over WebSockets (issue #4: URL schemes ws and wss): mosquitto with a second listener
// speaking MQTT over WebSockets; wss with mutual TLS like the mqtts test.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { killAllChildren, makePki, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { assertExactly, assertOrderPerTopic, CloudRecorder, deliveryReport, range, SeqPublisher } from './helpers/cloud-clients.js';
import { freezeGatewayAndSettle, GatewayProcess, testUplink, writeGatewayConfig } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

const RECORDER = 'cloud-recorder';

describe('uplink over WebSockets', () => {
  const dir = makeTempDir('plc2mqtt-uplink-ws-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('ws://: messages arrive in order, also across a SIGKILL and restart of the cloud', async () => {
    const cloud = await Mosquitto.create(dir, { websockets: true, persistence: true });
    await cloud.seedSession(RECORDER, ['up/#']);
    await cloud.start();
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: RECORDER, filters: ['up/#'] });
    closers.push(() => recorder.close());
    assert.match(cloud.websocketsUrl, /^ws:\/\//);
    const folder = join(dir, 'ws');
    mkdirSync(folder);
    // A long keep-alive: the kill is noticed by the closed socket, and a frozen gateway (below) must
    // not be dropped by mosquitto for silence while the test waits for the recorder.
    const setup = await writeGatewayConfig(folder, testUplink(cloud.websocketsUrl, { keepalive: '60s' }));
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());

    const publishing = publisher.publishRange(0, 6000);
    await waitFor(() => recorder.uniqueCount() >= 1000, 20_000, 'the stream to be flowing');
    // The cloud hangs and then dies with the gateway's whole window unacknowledged: all of it must be resent.
    await freezeGatewayAndSettle(gateway, cloud, recorder, 'up/sync');
    cloud.signal('SIGSTOP');
    gateway.thaw();
    const ackedAtFreeze = publisher.acked.length;
    await waitFor(() => publisher.acked.length >= ackedAtFreeze + 300, 20_000, 'local publishing to go on while the cloud hangs');
    // On a loaded machine the gateway may still be filling its window: kill only once it is full.
    await waitFor(async () => (await gateway.uplinkStatus()).inFlight === 100, 20_000, 'the in-flight window to fill');
    await cloud.kill('SIGKILL');
    const disconnected = await gateway.waitForLog(/^disconnected from the cloud broker/, 10_000);
    assert.equal(disconnected.inFlight, 100, `the whole window was unacknowledged when the cloud died: ${JSON.stringify(disconnected)}`);
    await cloud.start();
    await publishing;
    await waitFor(() => recorder.uniqueCount() >= 6000, 20_000, `all messages on the cloud (have ${recorder.uniqueCount()})`);
    const report = deliveryReport(recorder.data());
    assertExactly(report, range(0, 6000));
    assertOrderPerTopic(report);
    assert.ok(/New client connected from \S+ as plc2mqtt-test-gateway/.test(cloud.output()));
    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(stopped.outbox.messages, 0);
  });

  it('wss:// with mutual TLS (require_certificate true): messages arrive; without the client certificate they stay in the outbox', async () => {
    const pkiDir = join(dir, 'pki');
    mkdirSync(pkiDir);
    const pki = makePki(pkiDir);
    const cloud = await Mosquitto.startNew(dir, {
      websockets: true,
      tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireCertificate: true },
    });
    assert.match(cloud.websocketsUrl, /^wss:\/\//);
    const recorder = await CloudRecorder.connect(cloud.url, {
      clientId: `${RECORDER}-wss`,
      filters: ['up/#'],
      mqtt: { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) },
    });
    closers.push(() => recorder.close());

    const good = join(dir, 'wss');
    mkdirSync(good);
    const setup = await writeGatewayConfig(
      good,
      testUplink(cloud.websocketsUrl, { tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } }),
    );
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await publisher.publishRange(0, 300);
    await waitFor(() => recorder.uniqueCount() >= 300, 10_000, 'the messages over wss');
    assertExactly(deliveryReport(recorder.data()), range(0, 300));
    assert.equal((await gateway.stop()).code, 0);

    const bad = join(dir, 'wss-nocert');
    mkdirSync(bad);
    const badSetup = await writeGatewayConfig(bad, testUplink(cloud.websocketsUrl, { clientId: 'gw-nocert', tls: { ca: pki.ca } }));
    const refused = GatewayProcess.start(badSetup);
    const badPublisher = await SeqPublisher.connect(badSetup.brokerUrl);
    closers.push(() => badPublisher.close());
    await badPublisher.publishRange(1000, 50);
    await refused.waitForLog('cloud broker connection error', 10_000);
    const { stopped } = await refused.stop();
    assert.equal(stopped.uplink.acknowledged, 0, JSON.stringify(stopped.uplink));
    assert.equal(stopped.outbox.messages, 50);
    assert.equal(recorder.data().filter((arrival) => arrival.seq >= 1000).length, 0);
  });
});
