// Mutual TLS against mosquitto with require_certificate true (issue #4, test 5): a CA, a server
// certificate for 127.0.0.1/localhost and a client certificate made with openssl in a temp folder.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { killAllChildren, makePki, makeTempDir, Mosquitto, removeDir, type Pki } from './helpers/cloud-broker.js';
import { assertExactly, assertOrderPerTopic, CloudRecorder, deliveryReport, range, SeqPublisher } from './helpers/cloud-clients.js';
import {
  GatewayProcess,
  LEVEL,
  rewriteUplink,
  testUplink,
  writeGatewayConfig,
  type GatewaySetup,
  type UplinkInput,
} from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

describe('uplink: mutual TLS against mosquitto with require_certificate true', () => {
  const dir = makeTempDir('plc2mqtt-uplink-tls-');
  const closers: Array<() => Promise<void>> = [];
  let pki: Pki;
  let cloud: Mosquitto;
  let recorder: CloudRecorder;
  /** Sequence numbers are unique across the tests of this file; each test checks its own range. */
  let nextSeq = 0;

  before(async () => {
    pki = makePki(dir);
    cloud = await Mosquitto.startNew(dir, { tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireCertificate: true } });
    assert.match(cloud.url, /^mqtts:/);
    recorder = await CloudRecorder.connect(cloud.url, {
      clientId: 'cloud-recorder',
      filters: ['up/#'],
      mqtt: { ca: readFileSync(pki.ca), cert: readFileSync(pki.clientCert), key: readFileSync(pki.clientKey) },
    });
    closers.push(() => recorder.close());
  });

  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  async function gatewayWith(
    name: string,
    tls: UplinkInput['tls'],
  ): Promise<{ setup: GatewaySetup; gateway: GatewayProcess; publisher: SeqPublisher }> {
    const folder = join(dir, name);
    mkdirSync(folder);
    const setup = await writeGatewayConfig(folder, testUplink(cloud.url, { clientId: `gw-${name}`, tls }));
    const gateway = GatewayProcess.start(setup);
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    return { setup, gateway, publisher };
  }

  function arrivedIn(from: number, count: number) {
    return deliveryReport(recorder.data().filter((arrival) => arrival.seq >= from && arrival.seq < from + count));
  }

  it('with the CA, a client certificate and its key, messages arrive', async () => {
    const { gateway, publisher } = await gatewayWith('cert', { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey });
    const from = nextSeq;
    nextSeq += 500;
    await publisher.publishRange(from, 500);
    await waitFor(() => arrivedIn(from, 500).unique.size >= 500, 10_000, 'the messages over TLS');
    const report = arrivedIn(from, 500);
    assertExactly(report, range(from, 500));
    assertOrderPerTopic(report);
    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(stopped.outbox.messages, 0);
    assert.equal(stopped.uplink.acknowledged, 500);
  });

  it('an encrypted client key with its passphrase works too', async () => {
    const { gateway, publisher } = await gatewayWith('passphrase', {
      ca: pki.ca,
      cert: pki.clientCert,
      key: pki.clientKeyEncrypted,
      passphrase: pki.passphrase,
    });
    const from = nextSeq;
    nextSeq += 200;
    await publisher.publishRange(from, 200);
    await waitFor(() => arrivedIn(from, 200).unique.size >= 200, 10_000, 'the messages over TLS');
    assertExactly(arrivedIn(from, 200), range(from, 200));
    const { code } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.doesNotMatch(gateway.output(), new RegExp(pki.passphrase), 'the passphrase is never logged');
  });

  it('without a client certificate nothing is delivered, an error is logged, and the messages stay in the outbox until the config is fixed', async () => {
    const { setup, gateway, publisher } = await gatewayWith('nocert', { ca: pki.ca });
    const from = nextSeq;
    nextSeq += 300;
    await publisher.publishRange(from, 300);
    assert.equal(publisher.acked.length, 300, 'committed locally');
    const error = await gateway.waitForLog('cloud broker connection error', 10_000);
    // A certificate problem needs a person: it is an error, not a warning.
    assert.ok(error.level >= LEVEL.error, JSON.stringify(error));
    assert.match(String(error.error), /certificate/i, `the log says why: ${JSON.stringify(error)}`);
    const { code, stopped } = await gateway.stop();
    assert.equal(code, 0, gateway.output());
    assert.equal(stopped.uplink.acknowledged, 0, `nothing was acknowledged by the cloud: ${JSON.stringify(stopped.uplink)}`);
    assert.equal(stopped.outbox.messages, 300, 'everything is still in the outbox');
    // The connection is retried with back-off; each distinct error is logged once per outage, not per attempt.
    const errors = gateway.findLogs('cloud broker connection error').map((line) => String(line.error));
    assert.equal(new Set(errors).size, errors.length, `an error repeated in the log: ${JSON.stringify(errors)}`);
    assert.equal(arrivedIn(from, 300).total, 0, 'nothing arrived on the cloud');

    // The same dataDir with the certificate: the buffered messages go out.
    rewriteUplink(setup, testUplink(cloud.url, { clientId: 'gw-nocert', tls: { ca: pki.ca, cert: pki.clientCert, key: pki.clientKey } }));
    const fixed = GatewayProcess.start(setup);
    await waitFor(() => arrivedIn(from, 300).unique.size >= 300, 10_000, 'the buffered messages after the fix');
    assertExactly(arrivedIn(from, 300), range(from, 300));
    assert.equal((await fixed.stop()).code, 0);
  });

  it('a broker certificate signed by another CA is refused', async () => {
    const { gateway, publisher } = await gatewayWith('wrongca', { ca: pki.otherCa, cert: pki.clientCert, key: pki.clientKey });
    const from = nextSeq;
    nextSeq += 50;
    await publisher.publishRange(from, 50);
    const error = await gateway.waitForLog('cloud broker connection error', 10_000);
    assert.match(String(error.error), /certificate|self.signed|unable to verify/i, JSON.stringify(error));
    const { stopped } = await gateway.stop();
    assert.equal(stopped.uplink.acknowledged, 0);
    assert.equal(stopped.outbox.messages, 50);
    assert.equal(arrivedIn(from, 50).total, 0);
  });
});
