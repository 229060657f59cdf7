// A link that dies under every connection (CONNACK, then no PUBACK and a dropped socket) is not a
// poison message: nothing may be set aside or deleted, however long it flaps. The "cloud" here is
// a fault-injecting MQTT peer (mqtt-packet framing), since no real broker can be told to behave so.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it, type TestContext } from 'node:test';
import mqttPacket from 'mqtt-packet';
import { pino } from 'pino';
import { IntegratedBroker } from '../src/broker/broker.js';
import { brokerSection, uplinkSection } from '../src/config/schema.js';
import { Outbox } from '../src/cloud/outbox.js';
import { Uplink } from '../src/cloud/uplink.js';
import { JsonFormat } from '../src/northbound/json/format.js';
import { waitFor } from './helpers/net.js';

/**
 * A fault-injecting cloud: CONNACKs, then drops each connection after `lifetimeMs`. `ack` decides
 * which PUBLISHes get a PUBACK before that. Records the data payloads it acknowledged.
 */
async function flakyCloud(t: TestContext, lifetimeMs: () => number, ack: (topic: string) => boolean) {
  const state = { connections: 0, acknowledged: new Set<string>() };
  const sockets = new Set<Socket>();
  const cloud = createServer((socket) => {
    state.connections++;
    sockets.add(socket);
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    parser.on('packet', (packet) => {
      if (packet.cmd === 'connect') socket.write(mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: false }));
      if (packet.cmd === 'publish' && packet.messageId !== undefined && ack(packet.topic)) {
        socket.write(mqttPacket.generate({ cmd: 'puback', messageId: packet.messageId }));
        if (packet.topic !== 'gw/status') state.acknowledged.add(packet.payload.toString());
      }
    });
    socket.on('data', (data: Buffer) => parser.parse(data));
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
    setTimeout(() => socket.destroy(), lifetimeMs());
  });
  await new Promise<void>((resolve) => cloud.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    cloud.close();
  });
  return { port: (cloud.address() as { port: number }).port, state };
}

async function uplinkTo(t: TestContext, port: number, messages: number) {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-flaky-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const log = pino({ level: 'silent' });
  const config = uplinkSection.parse({ url: `mqtt://127.0.0.1:${port}`, inFlight: 20, reconnect: { initial: 100, max: 200 } });
  const outbox = Outbox.open(join(dir, 'outbox.db'), config.outbox, log);
  for (let n = 0; n < messages; n++) outbox.append({ topic: 't/a', payload: Buffer.from(`m${n}`), qos: 1, retain: false });
  outbox.commit();
  const broker = await IntegratedBroker.start(
    brokerSection.parse({ listeners: [{ type: 'tcp', port: 0 }], persistRetained: false }),
    log,
    dir,
  );
  const uplink = new Uplink(config, 'gw', new JsonFormat(config, 'gw', 'gw/status'), outbox, broker, log);
  uplink.start();
  const stop = async () => {
    await uplink.stop(500);
    await broker.close();
  };
  return { outbox, uplink, stop };
}

it('a dead link (no PUBACK at all, dropped every 300 ms) loses nothing and sets nothing aside', async (t) => {
  const cloud = await flakyCloud(
    t,
    () => 300,
    () => false,
  );
  const { outbox, uplink, stop } = await uplinkTo(t, cloud.port, 10);
  try {
    await waitFor(() => cloud.state.connections >= 12, 20_000, 'a dozen connections');
  } finally {
    await stop();
  }
  assert.equal(outbox.stats.rejected, 0);
  assert.equal(uplink.stats.rejected, 0);
  assert.deepEqual(
    outbox.peek(0, 100).map((row) => row.payload.toString()),
    Array.from({ length: 10 }, (_, n) => `m${n}`),
  );
  outbox.close();
});

it('a link that works but drops at random moments delivers everything and sets nothing aside', async (t) => {
  let seed = 7;
  const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
  const cloud = await flakyCloud(
    t,
    () => 10 + Math.floor(random() * 40),
    () => true,
  );
  const { outbox, uplink, stop } = await uplinkTo(t, cloud.port, 5000);
  try {
    await waitFor(() => outbox.stats.messages === 0, 30_000, 'the outbox to drain over a flapping link');
  } finally {
    await stop();
  }
  assert.equal(outbox.stats.rejected, 0);
  assert.equal(uplink.stats.rejected, 0);
  assert.equal(cloud.state.acknowledged.size, 5000);
  assert.ok(cloud.state.connections > 3, `the link really flapped (${cloud.state.connections} connections)`);
  outbox.close();
});

it('a cloud slower than the plant: the backlog stays in SQLite, and what the outbox bound drops is never sent', async (t) => {
  // Acknowledges each data message 10 ms after it arrives: with inFlight 20 about 2,000 msg/s.
  const acknowledged: string[] = [];
  const sockets = new Set<Socket>();
  const cloud = createServer((socket) => {
    sockets.add(socket);
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    parser.on('packet', (packet) => {
      if (packet.cmd === 'connect') socket.write(mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: false }));
      if (packet.cmd === 'publish' && packet.messageId !== undefined) {
        const { messageId, topic, payload } = packet;
        setTimeout(
          () => {
            if (socket.destroyed) return;
            socket.write(mqttPacket.generate({ cmd: 'puback', messageId }));
            if (topic !== 'gw/status') acknowledged.push(payload.toString());
          },
          topic === 'gw/status' ? 0 : 10,
        );
      }
    });
    socket.on('data', (data: Buffer) => parser.parse(data));
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => cloud.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    cloud.close();
  });
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-slow-cloud-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const log = pino({ level: 'silent' });
  const config = uplinkSection.parse({
    url: `mqtt://127.0.0.1:${(cloud.address() as { port: number }).port}`,
    inFlight: 20,
    outbox: { maxMessages: 5000, policy: 'drop-oldest' },
  });
  const outbox = Outbox.open(join(dir, 'outbox.db'), config.outbox, log);
  const broker = await IntegratedBroker.start(
    brokerSection.parse({ listeners: [{ type: 'tcp', port: 0 }], persistRetained: false }),
    log,
    dir,
  );
  const uplink = new Uplink(config, 'gw', new JsonFormat(config, 'gw', 'gw/status'), outbox, broker, log);
  uplink.start();
  try {
    await waitFor(() => uplink.stats.connected, 10_000, 'connected');
    // 50,000 messages in 100 commits, far faster than the cloud takes them: the bound drops the oldest.
    for (let commit = 0; commit < 100; commit++) {
      for (let n = 0; n < 500; n++) outbox.append({ topic: 't/a', payload: Buffer.from(`m${commit * 500 + n}`), qos: 1, retain: false });
      outbox.commit();
      await new Promise((resolve) => setImmediate(resolve));
    }
    await waitFor(() => acknowledged.length >= 2000, 20_000, '2,000 acknowledgements');
  } finally {
    await uplink.stop(500);
    await broker.close();
  }
  // Every acknowledgement deleted a message that was still in the outbox: the bound dropped only
  // messages nobody was sending, so "dropped" counts exactly what the cloud never got.
  assert.ok(outbox.stats.dropped >= 44_000, `dropped ${outbox.stats.dropped}`);
  // A PUBACK the cloud wrote while the uplink was already leaving is not read (stop forgets what is
  // in flight): that message stays in the outbox and is sent again, never lost. So at most the
  // window (inFlight 20) is acknowledged without being counted delivered.
  const unread = acknowledged.length - outbox.stats.delivered;
  assert.ok(unread >= 0 && unread <= 20, `delivered ${outbox.stats.delivered} of ${acknowledged.length} acknowledged`);
  assert.equal(
    outbox.stats.dropped + outbox.stats.delivered + outbox.stats.messages,
    50_000 + 0,
    'every message is dropped, delivered or still waiting',
  );
  outbox.close();
});
