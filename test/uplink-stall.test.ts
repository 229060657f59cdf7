// A cloud that keeps the connection but acknowledges nothing (mosquitto frozen with SIGSTOP): the
// gateway says so once, with a warning, when messages have waited for a PUBACK longer than the
// stall threshold (the keep-alive, here 5 s), and says when PUBACKs come again. Nothing is lost.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { assertExactly, CloudRecorder, deliveryReport, range, SeqPublisher } from './helpers/cloud-clients.js';
import { GatewayProcess, LEVEL, testUplink, writeGatewayConfig } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

describe('uplink: a cloud that stops acknowledging', () => {
  const dir = makeTempDir('plc2mqtt-uplink-stall-');
  const closers: Array<() => Promise<void>> = [];
  after(async () => {
    for (const close of closers) await close().catch(() => undefined);
    await killAllChildren();
    removeDir(dir);
  });

  it('a frozen mosquitto: one warning once the full window waited longer than the threshold, one info line when PUBACKs come again', async () => {
    const cloud = await Mosquitto.startNew(dir);
    const recorder = await CloudRecorder.connect(cloud.url, { clientId: 'recorder-stall', filters: ['up/#'] });
    closers.push(() => recorder.close());
    const setup = await writeGatewayConfig(dir, testUplink(cloud.url, { keepalive: '5s', inFlight: 100 }));
    const gateway = GatewayProcess.start(setup);
    closers.push(async () => void (await gateway.kill()));
    const publisher = await SeqPublisher.connect(setup.brokerUrl);
    closers.push(() => publisher.close());
    await gateway.waitForLog(/^connected to the cloud broker/, 20_000);
    await publisher.publishRange(0, 500);
    await waitFor(() => recorder.uniqueCount() >= 500, 20_000, 'the first messages on the cloud');

    cloud.signal('SIGSTOP');
    try {
      const total = 3000;
      await publisher.publishRange(500, total - 500); // into the outbox; the window fills and waits
      const stalled = await gateway.waitForLog(/^the cloud broker has acknowledged nothing/, 60_000);
      assert.equal(stalled.level, LEVEL.warn);
      assert.equal(stalled.inFlight, 100, JSON.stringify(stalled));
      assert.equal(stalled.window, 100);
      cloud.signal('SIGCONT');
      const back = await gateway.waitForLog(/^the cloud broker acknowledges again/, 60_000);
      assert.equal(back.level, LEVEL.info);
      await waitFor(
        () => recorder.uniqueCount() >= total,
        60_000,
        () => `all ${total} messages on the cloud (have ${recorder.uniqueCount()})`,
      );
      assertExactly(deliveryReport(recorder.data()), range(0, total));
      assert.equal(gateway.findLogs(/^the cloud broker has acknowledged nothing/).length, 1, 'once per stall');
      assert.equal(gateway.findLogs(/^the cloud broker acknowledges again/).length, 1);
    } finally {
      cloud.signal('SIGCONT');
    }
  });
});
