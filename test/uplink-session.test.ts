// The uplink's persistent session (cleanSession: false, the default): a command published on the
// cloud while the gateway is offline is delivered into the integrated broker when it reconnects.
// The cloud is mosquitto with persistence, so the gateway's session survives the cloud's restart too.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { cloudPublish, SeqPublisher, subscriber } from './helpers/cloud-clients.js';
import { GatewayProcess, testUplink, writeGatewayConfig } from './helpers/cloud-gateway.js';
import { waitFor } from './helpers/net.js';

function sessionSuite(protocolVersion: 4 | 5): void {
  describe(`uplink: persistent session, MQTT ${protocolVersion === 5 ? '5' : '3.1.1'}`, () => {
    const dir = makeTempDir('plc2mqtt-uplink-session-');
    const closers: Array<() => Promise<void>> = [];
    after(async () => {
      for (const close of closers) await close().catch(() => undefined);
      await killAllChildren();
      removeDir(dir);
    });

    it('a command sent while the gateway was offline arrives in the integrated broker after it reconnects', async () => {
      const mqtt = { protocolVersion } as const;
      const cloud = await Mosquitto.startNew(dir, { persistence: true });
      const cloudData = await subscriber(cloud.url, ['up/#'], mqtt);
      closers.push(() => cloudData.client.endAsync(true));
      const setup = await writeGatewayConfig(
        dir,
        testUplink(cloud.url, { protocolVersion, receive: [{ topic: 'cmd/#', remotePrefix: 'cloud/gw/', localPrefix: 'local/', qos: 1 }] }),
      );

      // 1. The gateway connects and subscribes. A data message sent after its SUBSCRIBE (same
      //    connection, in order) has arrived: the subscription is in place.
      const first = GatewayProcess.start(setup);
      const publisher = await SeqPublisher.connect(setup.brokerUrl);
      await publisher.publishRange(0, 1);
      await publisher.close();
      await waitFor(() => cloudData.messages.length > 0, 10_000, 'a data message on the cloud');
      assert.equal((await first.stop()).code, 0);

      // 2. While it is offline, the cloud sends a command; then the cloud restarts (saving its sessions).
      await cloudPublish(cloud.url, 'cloud/gw/cmd/valve', 'close', mqtt);
      await cloud.kill('SIGTERM');

      // 3. The gateway starts (cloud down), a local client subscribes, the cloud comes back.
      const second = GatewayProcess.start(setup);
      const local = await subscriber(setup.brokerUrl, ['local/#'], {}, 20_000);
      closers.push(() => local.client.endAsync(true));
      await cloud.start();
      const connected = await second.waitForLog(/^connected to the cloud broker/, 10_000);
      try {
        assert.equal(connected.sessionPresent, true, `the cloud kept the gateway's session: ${JSON.stringify(connected)}`);
        await waitFor(
          () => local.messages.some((message) => message.topic === 'local/cmd/valve'),
          10_000,
          'the queued command in the integrated broker',
        );
        assert.deepEqual(
          local.messages.filter((message) => message.topic === 'local/cmd/valve'),
          [{ topic: 'local/cmd/valve', payload: 'close', retain: false }],
        );
      } finally {
        assert.equal((await second.stop()).code, 0);
      }
    });
  });
}

sessionSuite(4);
sessionSuite(5);
