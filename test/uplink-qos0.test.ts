// QoS 0 to the cloud loses nothing when the connection dies (issue #15 needs it for Sparkplug B):
// a real mosquitto as the cloud behind a TCP relay that can swallow bytes, an uplink with a QoS 0
// forward rule, and a subscriber on mosquitto itself. Messages written into the cut link were
// never read by the broker; only a ping round trip (checkpoint.ts) would have proved they were,
// so they stay in the outbox and go again on the next connection.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { it } from 'node:test';
import { pino } from 'pino';
import { IntegratedBroker } from '../src/broker/broker.js';
import { Outbox } from '../src/cloud/outbox.js';
import { Uplink } from '../src/cloud/uplink.js';
import { brokerSection, uplinkSection } from '../src/config/schema.js';
import { JsonFormat } from '../src/northbound/json/format.js';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { assertComplete, assertTopics, CloudRecorder, deliveryReport, localTopicOf, payloadOf, range } from './helpers/cloud-clients.js';
import { startTcpLink } from './helpers/links.js';
import { waitFor } from './helpers/net.js';

const ROUNDS = 3;
const PER_ROUND = 200;
/** Written while the link is cut: fewer than the window, so all of them are written. */
const CUT = 50;

it('QoS 0: messages written into a link that dies before the broker read them are sent again; none is lost', async (t) => {
  const dir = makeTempDir('plc2mqtt-uplink-qos0-');
  t.after(async () => {
    await killAllChildren();
    removeDir(dir);
  });
  const cloud = await Mosquitto.startNew(dir);
  const recorder = await CloudRecorder.connect(cloud.url, { clientId: 'qos0-recorder', filters: ['up/#'] });
  t.after(() => recorder.close());
  const relay = await startTcpLink(cloud.port);
  t.after(() => relay.stop());

  const log = pino({ level: 'silent' });
  const config = uplinkSection.parse({
    url: `mqtt://127.0.0.1:${relay.port}`,
    // No keep-alive timeout while the link is cut: the test decides when the connection dies.
    keepalive: '60s',
    reconnect: { initial: 100, max: 200 },
    inFlight: 100,
    forward: [{ topic: '#', localPrefix: 'line/', remotePrefix: 'up/', qos: 0 }],
  });
  const outbox = Outbox.open(join(dir, 'outbox.db'), config.outbox, log);
  t.after(() => outbox.close());
  const broker = await IntegratedBroker.start(
    brokerSection.parse({ listeners: [{ type: 'tcp', port: 0 }], persistRetained: false }),
    log,
    dir,
  );
  const uplink = new Uplink(config, 'gw', new JsonFormat(config, 'gw', 'gw/status'), outbox, broker, log);
  t.after(async () => {
    await uplink.stop(500);
    await broker.close();
  });
  /** As a local client's messages on line/… arrive: through the QoS 0 forward rule into the outbox, committed. */
  const enqueue = (from: number, count: number): void => {
    for (const seq of range(from, count)) {
      const route = uplink.route(localTopicOf(seq));
      assert.ok(route !== undefined && route.qos === 0, 'a QoS 0 forward rule');
      uplink.enqueue(route, Buffer.from(payloadOf(seq)), false);
    }
    outbox.commit();
  };
  uplink.start();
  await waitFor(() => uplink.stats.connected, 10_000, 'the uplink to connect through the relay');

  let next = 0;
  for (let round = 0; round < ROUNDS; round++) {
    // Through a working link first: the connection carried data.
    enqueue(next, PER_ROUND);
    next += PER_ROUND;
    // Confirmed, not only written: a PINGRESP swallowed by the cut would leave them in the window.
    await waitFor(
      () => outbox.stats.messages === 0,
      20_000,
      () => `round ${round}: the outbox to drain (${outbox.stats.messages} left)`,
    );

    // The cable is cut: what the uplink writes now reaches the relay and goes no further.
    relay.cut();
    enqueue(next, CUT);
    next += CUT;
    const last = payloadOf(next - 1);
    await waitFor(
      () => relay.sent().includes(last),
      20_000,
      () => `round ${round}: the last message written into the cut link (${JSON.stringify(uplink.stats)})`,
    );
    // The connection dies with them unread; the cable works again for the next one.
    relay.restore();
    relay.drop();
    await waitFor(() => uplink.stats.reconnects > round && uplink.stats.connected, 20_000, `round ${round}: the uplink to reconnect`);
    await waitFor(
      () => outbox.stats.messages === 0,
      20_000,
      () => `round ${round}: the outbox to drain (${outbox.stats.messages} left)`,
    );
  }
  // Mosquitto delivers a connection's messages in order: after the marker, the recorder has all it will get.
  await recorder.sync(cloud.url, 'up/sync');

  const arrivals = recorder.data();
  const report = deliveryReport(arrivals);
  assertComplete(report, range(0, next), 'committed QoS 0 messages');
  assertTopics(arrivals);
  assert.equal(outbox.stats.rejected, 0);
  assert.equal(outbox.stats.dropped, 0);
});
