// The outbox promises delivery in order, also across forward rules of different QoS: the uplink
// gathers a tick's QoS 1 PUBLISHes into one write, and any other packet (a QoS 0 PUBLISH) goes
// after them. Checked on the bytes the uplink writes (a TCP relay in front of a real mosquitto),
// so the broker's own delivery order plays no part.
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
import { payloadOf, range } from './helpers/cloud-clients.js';
import { startTcpLink } from './helpers/links.js';
import { waitFor } from './helpers/net.js';

const COUNT = 40;

it('messages of QoS 1 and QoS 0 forward rules go on the wire in outbox order', async (t) => {
  const dir = makeTempDir('plc2mqtt-wire-order-');
  t.after(async () => {
    await killAllChildren();
    removeDir(dir);
  });
  const cloud = await Mosquitto.startNew(dir);
  const relay = await startTcpLink(cloud.port);
  t.after(() => relay.stop());
  const log = pino({ level: 'silent' });
  const config = uplinkSection.parse({
    url: `mqtt://127.0.0.1:${relay.port}`,
    keepalive: '60s',
    reconnect: { initial: 100, max: 200 },
    inFlight: 100,
    forward: [
      { topic: '#', localPrefix: 'q1/', remotePrefix: 'up/q1/', qos: 1 },
      { topic: '#', localPrefix: 'q0/', remotePrefix: 'up/q0/', qos: 0 },
    ],
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
  uplink.start();
  await waitFor(() => uplink.stats.connected, 10_000, 'the uplink to connect');
  // Let the births and the status go first.
  await new Promise((resolve) => setTimeout(resolve, 300));

  // Alternating QoS 1 and QoS 0 messages, in one commit: the sender takes them in id order.
  for (const seq of range(0, COUNT)) {
    const route = uplink.route(`${seq % 2 === 0 ? 'q1' : 'q0'}/x`);
    assert.ok(route !== undefined && route.qos === (seq % 2 === 0 ? 1 : 0));
    uplink.enqueue(route, Buffer.from(payloadOf(seq)), false);
  }
  outbox.commit();
  await waitFor(
    () => outbox.stats.messages === 0,
    20_000,
    () => `the outbox to drain (${outbox.stats.messages} left)`,
  );

  const wire = relay.sent().toString('latin1');
  const positions = range(0, COUNT).map((seq) => wire.indexOf(payloadOf(seq)));
  assert.ok(
    positions.every((at) => at >= 0),
    'every message was written',
  );
  const order = range(0, COUNT).sort((a, b) => positions[a]! - positions[b]!);
  assert.deepEqual(order, range(0, COUNT), `wire order: ${order.join(',')}`);
});
