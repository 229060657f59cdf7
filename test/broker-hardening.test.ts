// Hardening of the integrated broker against careless and hostile clients (issue 17), at MQTT
// 3.1.1 and 5: client ids that cannot name a session. Raw sockets (mqtt-packet) send what mqtt.js
// would refuse to.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { generate, type IConnectPacket } from 'mqtt-packet';
import { BrokerUnderTest, connectClient, endAll, RawClient } from './helpers/broker-harness.js';

/** What aedes' persistence reports about sessions kept for clients that are gone. */
interface OfflineCount {
  subsCount: number;
  clientsCount: number;
}

function offline(broker: BrokerUnderTest): Promise<OfflineCount> {
  const aedes = broker.broker.aedes as unknown as { persistence: { countOffline(): Promise<OfflineCount> } };
  return aedes.persistence.countOffline();
}

/** A raw CONNECT at protocol level 4 or 5, followed at once (same write) by a SUBSCRIBE that a session would keep. */
async function connectAndSubscribe(port: number, level: 4 | 5, connect: Partial<IConnectPacket>): Promise<RawClient> {
  const raw = await RawClient.open(port, level);
  const packet: IConnectPacket = { cmd: 'connect', protocolId: 'MQTT', protocolVersion: level, keepalive: 60, clientId: 'x', ...connect };
  // mqtt-packet refuses to encode an empty id with Clean Session 0: encoded with 1, then the bit cleared.
  const bytes = generate({ ...packet, clean: true }, { protocolVersion: level });
  if (packet.clean === false) {
    const lengthBytes = bytes.subarray(1).findIndex((byte) => (byte & 0x80) === 0) + 1;
    // fixed header, protocol name "MQTT" (2 + 4), protocol level, then the connect flags.
    bytes[1 + lengthBytes + 6 + 1]! &= ~0x02;
  }
  raw.write(bytes);
  raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'orphan/#', qos: 1 }] });
  return raw;
}

describe('integrated broker hardening', () => {
  let broker: BrokerUnderTest;
  const raws: RawClient[] = [];
  const clients: MqttClient[] = [];
  const keep = (raw: RawClient): RawClient => {
    raws.push(raw);
    return raw;
  };

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], allowAnonymous: true });
  });

  after(async () => {
    for (const raw of raws) raw.destroy();
    await endAll(clients);
    await broker.close();
  });

  describe('empty client id', () => {
    it('MQTT 3.1.1, Clean Session 0: CONNACK 2 identifier rejected, closed, no session stored [MQTT-3.1.3-8]', async () => {
      const raw = keep(await connectAndSubscribe(broker.port(), 4, { clientId: '', clean: false }));
      const connack = await raw.next('connack');
      assert.equal(connack.returnCode, 2);
      assert.equal(connack.sessionPresent, false);
      assert.equal(await raw.closedWithin(3000), true);
      assert.deepEqual(raw.of('suback'), []);
      assert.deepEqual(await offline(broker), { subsCount: 0, clientsCount: 0 });
      assert.equal(broker.broker.clientCount, 0);
    });

    it('MQTT 5, Clean Start 0: CONNACK 0x85 Client Identifier not valid, closed, no session stored [MQTT-3.1.3-8]', async () => {
      const raw = keep(
        await connectAndSubscribe(broker.port(), 5, { clientId: '', clean: false, properties: { sessionExpiryInterval: 3600 } }),
      );
      const connack = await raw.next('connack');
      assert.equal(connack.reasonCode, 0x85);
      assert.equal(await raw.closedWithin(3000), true);
      assert.deepEqual(raw.of('suback'), []);
      assert.deepEqual(await offline(broker), { subsCount: 0, clientsCount: 0 });
    });

    it('MQTT 3.1.1, Clean Session 1: accepted with an id the broker assigns [MQTT-3.1.3-6] [MQTT-3.1.3-7]', async () => {
      const raw = keep(await connectAndSubscribe(broker.port(), 4, { clientId: '', clean: true }));
      assert.equal((await raw.next('connack')).returnCode, 0);
      assert.deepEqual((await raw.next('suback')).granted, [1]);
      assert.equal(broker.broker.clients().length, 1);
      assert.ok((broker.broker.clients()[0]?.id.length ?? 0) > 0);
      raw.send({ cmd: 'disconnect' });
      assert.equal(await raw.closedWithin(3000), true);
    });

    it('MQTT 5, Clean Start 1: accepted with an Assigned Client Identifier', async () => {
      const raw = keep(await connectAndSubscribe(broker.port(), 5, { clientId: '', clean: true }));
      const connack = await raw.next('connack');
      assert.equal(connack.reasonCode, 0);
      assert.ok((connack.properties?.assignedClientIdentifier?.length ?? 0) > 0);
      raw.send({ cmd: 'disconnect' });
      assert.equal(await raw.closedWithin(3000), true);
    });

    it('a named client with Clean Session 0 still gets its session', async () => {
      const client = await connectClient(broker.url(), { clientId: 'named-persistent', clean: false });
      clients.push(client);
      assert.equal(client.connected, true);
    });
  });
});
