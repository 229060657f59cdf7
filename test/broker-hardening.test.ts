// Hardening of the integrated broker against careless and hostile clients (issue 17), at MQTT
// 3.1.1 and 5: client ids that cannot name a session; ill-formed UTF-8 and U+0000 in topic names,
// filters and will topics; ACL deny rules; $SYS only for clients a rule grants it. Raw sockets (mqtt-packet) send what mqtt.js
// would refuse to.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { generate, type IConnectPacket, type Packet } from 'mqtt-packet';
import { hashPassword } from '../src/broker/security.js';
import {
  BrokerUnderTest,
  closedWithin,
  connectClient,
  endAll,
  RawClient,
  recordMessages,
  subscribeGranted,
  type Message,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

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

/** Ill-formed UTF-8: a lead byte without its continuation, a UTF-16 surrogate encoded as UTF-8, a stray continuation byte. */
const ILL_FORMED: Array<[name: string, bytes: Buffer]> = [
  ['a truncated sequence (C3 28)', Buffer.from([0xc3, 0x28])],
  ['an encoded surrogate (ED A0 80)', Buffer.from([0xed, 0xa0, 0x80])],
  ['a lone continuation byte (80)', Buffer.from([0x80])],
];
/** Stands for bad bytes while mqtt-packet encodes (it only encodes well-formed strings): '§' is C2 A7. */
const MARK = '\u00a7';

/** The placeholder for `bytes` in a string: as many MARKs as their 2 bytes each need. */
function placeholder(bytes: Buffer): string {
  return MARK.repeat(Math.ceil(bytes.length / 2));
}

/** `packet` encoded, with the placeholder for `bytes` in its strings replaced by them (padded with 'x' to its length). */
function encodeWith(packet: Packet, level: 4 | 5, bytes: Buffer): Buffer {
  const encoded = generate(packet, { protocolVersion: level });
  const marks = Buffer.from(placeholder(bytes));
  const at = encoded.indexOf(marks);
  assert.ok(at > 0, 'the packet has the placeholder');
  Buffer.concat([bytes, Buffer.from('x')]).copy(encoded, at, 0, marks.length);
  return encoded;
}

/** Opens a raw connection at protocol level 4 or 5 and waits for a successful CONNACK. */
async function rawConnect(port: number, level: 4 | 5): Promise<RawClient> {
  const raw = await RawClient.open(port, level);
  raw.send({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: level,
    keepalive: 60,
    clean: true,
    clientId: `raw-${level}-${Math.random()}`,
  });
  const connack = await raw.next('connack');
  assert.equal(level === 5 ? connack.reasonCode : connack.returnCode, 0);
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

  describe('ill-formed UTF-8 and U+0000 in topics close the connection; nothing is delivered or retained', () => {
    let watcher: MqttClient;
    let seen: Message[];
    /** Topics of every message that reached aedes (each retained one would go to retained.db from there). */
    const published: string[] = [];
    let marker = 0;

    before(async () => {
      broker.broker.aedes.on('publish', (packet) => void published.push(packet.topic));
      watcher = await connectClient(broker.url(), { clientId: 'utf8-watcher' });
      clients.push(watcher);
      seen = recordMessages(watcher);
      await watcher.subscribeAsync('#', { qos: 1 });
    });

    /** Everything sent before has been routed once a marker went round; then nothing odd arrived or was kept. */
    const assertNothingGotThrough = async (): Promise<void> => {
      const text = `marker-${++marker}`;
      await watcher.publishAsync('hardening/marker', text, { qos: 1 });
      await waitFor(() => seen.some((message) => message.payload === text), 3000, text);
      const odd = (topic: string) => topic.startsWith('bad');
      assert.deepEqual(
        seen.filter((message) => odd(message.topic)),
        [],
      );
      assert.deepEqual(published.filter(odd), []);
      // A new subscriber gets every retained message: none from the refused publishes.
      const late = await connectClient(broker.url(), { clientId: `late-${marker}` });
      const retained = recordMessages(late);
      await late.subscribeAsync('#', { qos: 1 });
      await waitFor(() => retained.some((message) => message.topic === 'hardening/retained-marker'), 3000, 'the retained marker');
      await late.endAsync();
      assert.deepEqual(
        retained.filter((message) => odd(message.topic)),
        [],
      );
    };

    before(async () => {
      await watcher.publishAsync('hardening/retained-marker', 'here', { qos: 1, retain: true });
    });

    /** The connection was closed for the bad packet: without an answer to it (MQTT 5: DISCONNECT 0x81 first). */
    const assertClosed = async (raw: RawClient, level: 4 | 5, answer: Packet['cmd']): Promise<void> => {
      raw.send({ cmd: 'pingreq' });
      assert.equal(await raw.closedWithin(3000), true, 'the broker closes the connection');
      assert.deepEqual(raw.of(answer), []);
      if (level === 5) assert.equal(raw.of('disconnect')[0]?.reasonCode, 0x81, 'MQTT 5: DISCONNECT 0x81 Malformed Packet');
    };

    for (const level of [4, 5] as const) {
      const spec = level === 4 ? '[MQTT-1.5.3-1]' : '[MQTT-1.5.4-1]';
      const specNul = level === 4 ? '[MQTT-1.5.3-2]' : '[MQTT-1.5.4-2]';
      for (const [name, bytes] of ILL_FORMED) {
        it(`MQTT ${level === 4 ? '3.1.1' : '5'}: PUBLISH (QoS 1, retained) with ${name} in its topic ${spec}`, async () => {
          const raw = keep(await rawConnect(broker.port(), level));
          raw.write(
            encodeWith(
              {
                cmd: 'publish',
                topic: `bad/${placeholder(bytes)}/pub`,
                payload: Buffer.from('x'),
                qos: 1,
                retain: true,
                dup: false,
                messageId: 1,
              },
              level,
              bytes,
            ),
          );
          await assertClosed(raw, level, 'puback');
          await assertNothingGotThrough();
        });
      }

      it(`MQTT ${level === 4 ? '3.1.1' : '5'}: PUBLISH (QoS 0, retained) with U+0000 in its topic ${specNul}`, async () => {
        const raw = keep(await rawConnect(broker.port(), level));
        raw.send({ cmd: 'publish', topic: 'bad/\u0000/pub', payload: Buffer.from('x'), qos: 0, retain: true, dup: false });
        await assertClosed(raw, level, 'pingresp');
        await assertNothingGotThrough();
      });

      it(`MQTT ${level === 4 ? '3.1.1' : '5'}: SUBSCRIBE with ill-formed UTF-8 or U+0000 in a filter ${spec} ${specNul}`, async () => {
        for (const bytes of [ILL_FORMED[0]![1], Buffer.from([0])]) {
          const raw = keep(await rawConnect(broker.port(), level));
          raw.write(
            encodeWith(
              {
                cmd: 'subscribe',
                messageId: 2,
                subscriptions: [
                  { topic: 'ok/#', qos: 1 },
                  { topic: `bad/${placeholder(bytes)}/#`, qos: 1 },
                ],
              },
              level,
              bytes,
            ),
          );
          await assertClosed(raw, level, 'suback');
        }
        assert.equal(
          broker.broker.clients().every((client) => client.id.startsWith('utf8-watcher') || client.subscriptions === 0),
          true,
        );
      });

      it(`MQTT ${level === 4 ? '3.1.1' : '5'}: UNSUBSCRIBE with ill-formed UTF-8 or U+0000 in a filter ${spec} ${specNul}`, async () => {
        for (const bytes of [ILL_FORMED[1]![1], Buffer.from([0])]) {
          const raw = keep(await rawConnect(broker.port(), level));
          raw.write(encodeWith({ cmd: 'unsubscribe', messageId: 3, unsubscriptions: [`bad/${placeholder(bytes)}`] }, level, bytes));
          await assertClosed(raw, level, 'unsuback');
        }
      });

      it(`MQTT ${level === 4 ? '3.1.1' : '5'}: a will topic with ill-formed UTF-8 or U+0000 refuses the CONNECT; no will is published ${spec} ${specNul}`, async () => {
        for (const bytes of [ILL_FORMED[2]![1], Buffer.from([0])]) {
          const raw = keep(await RawClient.open(broker.port(), level));
          raw.write(
            encodeWith(
              {
                cmd: 'connect',
                protocolId: 'MQTT',
                protocolVersion: level,
                keepalive: 60,
                clean: true,
                clientId: `will-${level}-${bytes.length}`,
                will: { topic: `bad/${placeholder(bytes)}/will`, payload: Buffer.from('gone'), qos: 1, retain: true },
              },
              level,
              bytes,
            ),
          );
          assert.equal(await raw.closedWithin(3000), true);
          const connack = raw.of('connack')[0];
          // MQTT 3.1.1: closed without a CONNACK; MQTT 5: CONNACK 0x81 Malformed Packet.
          if (level === 4) assert.equal(connack, undefined);
          else assert.equal(connack?.reasonCode, 0x81);
        }
        await assertNothingGotThrough();
      });

      it(`MQTT ${level === 4 ? '3.1.1' : '5'}: a topic with a real U+FFFD (well-formed) is accepted and delivered`, async () => {
        const raw = keep(await rawConnect(broker.port(), level));
        raw.send({
          cmd: 'publish',
          topic: `ok/\uFFFD/${level}`,
          payload: Buffer.from('fine'),
          qos: 1,
          retain: false,
          dup: false,
          messageId: 4,
        });
        assert.equal((await raw.next('puback')).messageId, 4);
        await waitFor(() => seen.some((message) => message.topic === `ok/\uFFFD/${level}`), 3000, 'the U+FFFD topic');
        raw.send({ cmd: 'disconnect' });
      });
    }
  });

  describe('$SYS without an acl', () => {
    for (const level of [4, 5] as const) {
      it(`MQTT ${level === 4 ? '3.1.1' : '5'}: $SYS subscriptions are refused; "#" never delivers $SYS [MQTT-4.7.2-1]`, async () => {
        const client = await connectClient(broker.url(), { protocolVersion: level, clientId: `sys-${level}` });
        clients.push(client);
        const seen = recordMessages(client);
        const refused = level === 4 ? 0x80 : 0x87;
        assert.deepEqual(await subscribeGranted(client, ['$SYS/#', '$SYS/+/new/clients', '#']), [refused, refused, 1]);
        // aedes announces every new client on $SYS/<broker id>/new/clients (its id in the payload).
        const other = await connectClient(broker.url(), { clientId: `sys-other-${level}` });
        await other.publishAsync('sys/marker', `after-${level}`, { qos: 1 });
        await waitFor(() => seen.some((message) => message.payload === `after-${level}`), 3000, 'the marker');
        await other.endAsync();
        assert.deepEqual(
          seen.filter((message) => message.topic.startsWith('$')),
          [],
        );
      });
    }
  });
});

describe('ACL deny rules', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];
  let admin: MqttClient;
  let adminSeen: Message[];
  let sequence = 0;
  const PASSWORDS = { admin: 'admin-pw', alice: 'alice-pw' } as const;

  before(async () => {
    const [adminHash, aliceHash] = await Promise.all([hashPassword(PASSWORDS.admin), hashPassword(PASSWORDS.alice)]);
    broker = await BrokerUnderTest.start({
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
      users: [
        { username: 'admin', passwordHash: adminHash },
        { username: 'alice', passwordHash: aliceHash },
      ],
      acl: [
        { user: 'admin', publish: ['#'], subscribe: ['#', '$SYS/#'] },
        {
          user: 'alice',
          publish: ['plant/#'],
          subscribe: ['plant/#'],
          deny: { publish: ['plant/secret/#'], subscribe: ['plant/secret/#'] },
        },
      ],
    });
    admin = await connectClient(broker.url(), { username: 'admin', password: PASSWORDS.admin, clientId: 'deny-admin' });
    clients.push(admin);
    adminSeen = recordMessages(admin);
    await admin.subscribeAsync('#', { qos: 1 });
    await admin.publishAsync('plant/secret/retained', 'hidden', { qos: 1, retain: true });
    await admin.publishAsync('plant/open/retained', 'visible', { qos: 1, retain: true });
  });

  after(async () => {
    await endAll(clients);
    await broker.close();
  });

  const alice = async (protocolVersion: 4 | 5): Promise<MqttClient> => {
    const client = await connectClient(broker.url(), {
      username: 'alice',
      password: PASSWORDS.alice,
      protocolVersion,
      clientId: `deny-alice-${protocolVersion}-${++sequence}`,
    });
    clients.push(client);
    return client;
  };

  for (const level of [4, 5] as const) {
    const version = level === 4 ? '3.1.1' : '5';
    // MQTT 5 says 0x87 Not authorized where 3.1.1 has only 0x80 Failure.
    const refused = level === 4 ? 0x80 : 0x87;

    it(`MQTT ${version}: a subscription inside a denied filter is refused, one around it granted`, async () => {
      const client = await alice(level);
      assert.deepEqual(await subscribeGranted(client, ['plant/secret/#', 'plant/secret/key', 'plant/#']), [refused, refused, 1]);
      assert.equal(client.connected, true);
    });

    it(`MQTT ${version}: through a granted wildcard, messages and retained messages on denied topics are not delivered`, async () => {
      const client = await alice(level);
      const seen = recordMessages(client);
      assert.deepEqual(await subscribeGranted(client, ['plant/#']), [1]);
      await waitFor(() => seen.some((message) => message.topic === 'plant/open/retained'), 3000, 'the open retained message');
      const marker = `marker-${level}`;
      await admin.publishAsync('plant/secret/live', 'hidden', { qos: 1 });
      await admin.publishAsync('plant/open/live', marker, { qos: 1 });
      await waitFor(() => seen.some((message) => message.payload === marker), 3000, marker);
      assert.deepEqual(
        seen.filter((message) => message.topic.startsWith('plant/secret')),
        [],
      );
    });

    it(`MQTT ${version}: a publish on a denied topic inside an allowed one is refused and reaches nobody`, async () => {
      const allowed = await alice(level);
      await allowed.publishAsync('plant/open/from-alice', `ok-${level}`, { qos: 1 });
      await waitFor(() => adminSeen.some((message) => message.payload === `ok-${level}`), 3000, 'the allowed publish');
      const client = await alice(level);
      let refusal: number | undefined;
      client.publish('plant/secret/from-alice', `leak-${level}`, { qos: 1 }, (error) => {
        refusal = (error as { code?: number } | undefined)?.code;
      });
      if (level === 5) {
        // MQTT 5: PUBACK 0x87 Not authorized, and the publisher stays [3.4.2.1].
        await waitFor(() => refusal !== undefined, 3000, 'PUBACK 0x87');
        assert.equal(refusal, 0x87);
        assert.equal(client.connected, true);
      } else {
        // MQTT 3.1.1 has no negative PUBACK: the publisher is disconnected.
        assert.equal(await closedWithin(client, 3000), true);
      }
      await admin.publishAsync('plant/open/after', `after-${level}`, { qos: 1 });
      await waitFor(() => adminSeen.some((message) => message.payload === `after-${level}`), 3000, 'the marker');
      assert.deepEqual(
        adminSeen.filter((message) => message.payload === `leak-${level}`),
        [],
      );
    });

    it(`MQTT ${version}: $SYS only for a user whose rule names it, not through alice's "plant/#" or admin's "#"`, async () => {
      const client = await alice(level);
      assert.deepEqual(await subscribeGranted(client, ['$SYS/#']), [refused]);
      const sys = await connectClient(broker.url(), {
        username: 'admin',
        password: PASSWORDS.admin,
        protocolVersion: level,
        clientId: `deny-sys-${level}`,
      });
      clients.push(sys);
      const seen = recordMessages(sys);
      assert.deepEqual(await subscribeGranted(sys, ['$SYS/+/new/clients']), [1]);
      const newcomer = await alice(level);
      await waitFor(
        () => seen.some((message) => message.topic.endsWith('/new/clients') && message.payload === newcomer.options.clientId),
        3000,
        'the $SYS announcement of the new client',
      );
    });
  }
});
