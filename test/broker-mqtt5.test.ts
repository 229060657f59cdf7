// MQTT 5 on the integrated broker: aedes speaks 3.1.1, src/broker/mqtt5.ts translates for MQTT 5
// clients. Real mqtt.js clients (protocolVersion 5 and 4), Debian's mosquitto_sub/mosquitto_pub
// with -V mqttv5, and a raw MQTT 5 socket for what clients don't normally send (topic aliases,
// malformed packets, a CONNECT in pieces). Plus the two side channels of the command path.
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Client } from 'aedes';
import mqtt, { type IClientOptions, type IConnackPacket as MqttJsConnack, type MqttClient } from 'mqtt';
import { generate, type IConnectPacket, type IPublishPacket } from 'mqtt-packet';
import { connectProtocolLevel, handleConnection } from '../src/broker/mqtt5.js';
import { hashPassword } from '../src/broker/security.js';
import type { CommandOrigin } from '../src/commands/command-handler.js';
import {
  BrokerUnderTest,
  CLIENT_DEFAULTS,
  connectClient,
  connectPacket,
  endAll,
  MOSQUITTO_PUB,
  MOSQUITTO_SUB,
  RawClient,
  recordMessages,
  roundTrip,
  run,
  subscribeGranted,
  tryConnect,
  type Message,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const PASSWORDS = { admin: 'admin-pw', alice: 'alice-pw' } as const;
const ADMIN = { username: 'admin', password: PASSWORDS.admin };
const ALICE = { username: 'alice', password: PASSWORDS.alice };
const V5: IClientOptions = { protocolVersion: 5 };
const MAX_PACKET_SIZE = 64 * 1024;
const MAX_INFLIGHT = 50;

/** MQTT 5 by hand (RawClient at protocol level 5), as admin unless the CONNECT says otherwise. */
const RawV5 = {
  open: (port: number): Promise<RawClient> => RawClient.open(port, 5),

  connectPacket(connect: Partial<IConnectPacket> = {}): IConnectPacket {
    return connectPacket(5, { ...ADMIN, password: Buffer.from(ADMIN.password), ...connect });
  },

  /** Opens a socket, sends an MQTT 5 CONNECT and waits for the CONNACK. */
  async connect(port: number, connect: Partial<IConnectPacket> = {}): Promise<RawClient> {
    const raw = await RawClient.open(port, 5);
    raw.send(RawV5.connectPacket(connect));
    await raw.next('connack');
    return raw;
  },
};

/** mqtt.js with its message log and CONNACK recorded from the start (queued messages come right after the CONNACK). */
async function connectRecording(
  url: string,
  options: IClientOptions,
): Promise<{ client: MqttClient; messages: Message[]; connack: MqttJsConnack }> {
  const client = mqtt.connect(url, { ...CLIENT_DEFAULTS, ...options });
  const messages = recordMessages(client);
  client.on('error', () => undefined);
  const connack = await new Promise<MqttJsConnack>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
  return { client, messages, connack };
}

describe('MQTT 5 clients on the integrated broker (protocol adapter in front of aedes)', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];
  const raws: RawClient[] = [];
  /** admin on 3.1.1, subscribed to everything. */
  let watcher: MqttClient;
  let seen: Message[];
  /** Client ids that have subscribed (to know when a spawned mosquitto_sub is ready). */
  const subscribed: string[] = [];
  /** Client ids aedes has accepted. */
  const connected: string[] = [];
  let sequence = 0;

  const keep = <T extends MqttClient>(client: T): T => {
    clients.push(client);
    return client;
  };
  const keepRaw = (raw: RawClient): RawClient => {
    raws.push(raw);
    return raw;
  };
  const v5 = async (options: IClientOptions = {}) => keep(await connectClient(broker.url(), { ...ADMIN, ...V5, ...options }));
  const v4 = async (options: IClientOptions = {}) => keep(await connectClient(broker.url(), { ...ADMIN, protocolVersion: 4, ...options }));
  /** Publishes a marker and waits until `into` has it: what was published before it has been routed. */
  const marker = async (into: Message[]): Promise<void> => {
    const text = `marker-${++sequence}`;
    await watcher.publishAsync('marker', text, { qos: 1 });
    await waitFor(() => into.some((message) => message.payload === text), 3000, text);
  };

  /** What the broker's command handler (given at start) passes each command to, while a test wants them. */
  let onCommand: ((topic: string, origin: CommandOrigin) => void) | undefined;

  before(async () => {
    const [admin, alice] = await Promise.all([hashPassword(PASSWORDS.admin), hashPassword(PASSWORDS.alice)]);
    broker = await BrokerUnderTest.start(
      {
        listeners: [
          { type: 'tcp', host: '127.0.0.1', port: 0 },
          { type: 'ws', host: '127.0.0.1', port: 0 },
        ],
        users: [
          { username: 'admin', passwordHash: admin },
          { username: 'alice', passwordHash: alice },
        ],
        acl: [
          { user: 'admin', publish: ['#'], subscribe: ['#'] },
          { user: 'alice', publish: ['public/#'], subscribe: ['public/#', 'marker'] },
        ],
        limits: { maxPacketSize: MAX_PACKET_SIZE, maxInflight: MAX_INFLIGHT },
      },
      { handlers: { command: (topic, _payload, _retain, origin) => onCommand?.(topic, origin) } },
    );
    broker.broker.aedes.on('subscribe', (_subscriptions, client: Client) => subscribed.push(client.id));
    broker.broker.aedes.on('client', (client: Client) => connected.push(client.id));
    watcher = await v4({ clientId: 'watcher' });
    seen = recordMessages(watcher);
    assert.deepEqual(await subscribeGranted(watcher, ['#'], 1), [1]);
  });

  after(async () => {
    for (const raw of raws) raw.destroy();
    await endAll(clients);
    await broker?.close();
  });

  it('mqtt.js v5 and 3.1.1 clients exchange messages both ways at QoS 0, 1 and 2', async () => {
    const client5 = await v5();
    const client4 = await v4();
    const got5 = recordMessages(client5);
    const got4 = recordMessages(client4);
    await client5.subscribeAsync('both/#', { qos: 2 });
    await client4.subscribeAsync('both/#', { qos: 2 });
    for (const qos of [0, 1, 2] as const) {
      await client5.publishAsync(`both/from5/${qos}`, `v5 at QoS ${qos}`, { qos });
      await client4.publishAsync(`both/from4/${qos}`, `v4 at QoS ${qos}`, { qos });
    }
    const expected = [0, 1, 2].flatMap((qos) => [`both/from5/${qos} v5 at QoS ${qos} ${qos}`, `both/from4/${qos} v4 at QoS ${qos} ${qos}`]);
    const text = (messages: Message[]) => messages.map((message) => `${message.topic} ${message.payload} ${message.qos}`);
    await waitFor(() => got5.length === 6 && got4.length === 6, 3000, 'six messages on each side');
    assert.deepEqual(text(got5).sort(), [...expected].sort(), 'the v5 client');
    assert.deepEqual(text(got4).sort(), [...expected].sort(), 'the 3.1.1 client');
    // Per publisher, order is kept.
    assert.deepEqual(
      text(got4).filter((line) => line.startsWith('both/from5/')),
      expected.filter((line) => line.startsWith('both/from5/')),
    );
  });

  it('over WebSocket too', async () => {
    const client = keep(await connectClient(broker.url('ws'), { ...ADMIN, ...V5 }));
    const got = recordMessages(client);
    await client.subscribeAsync('ws5/#', { qos: 1 });
    await roundTrip(client, seen, 'ws5/out', 'from a v5 client over ws');
    await watcher.publishAsync('ws5/in', 'to a v5 client over ws', { qos: 1 });
    await waitFor(() => got.some((message) => message.topic === 'ws5/in'), 3000, 'the message over ws');
  });

  it('retained: a v5 publish is retained for later v5 and 3.1.1 subscribers, and a 3.1.1 one for v5 subscribers', async () => {
    const client5 = await v5();
    await client5.publishAsync('retained/from5', 'kept by v5', { qos: 1, retain: true });
    await watcher.publishAsync('retained/from4', 'kept by v4', { qos: 1, retain: true });
    for (const late of [await v5(), await v4()]) {
      const got = recordMessages(late);
      await late.subscribeAsync('retained/#', { qos: 1 });
      await waitFor(() => got.length === 2, 3000, 'both retained messages');
      assert.deepEqual(got.map((message) => [message.topic, message.payload, message.retain]).sort(), [
        ['retained/from4', 'kept by v4', true],
        ['retained/from5', 'kept by v5', true],
      ]);
    }
  });

  it('CONNACK properties announce what the broker does', async () => {
    const { client, connack } = await connectRecording(broker.url(), { ...ADMIN, ...V5 });
    keep(client);
    assert.equal(connack.reasonCode, 0);
    assert.equal(connack.sessionPresent, false);
    assert.deepEqual(connack.properties, {
      maximumPacketSize: MAX_PACKET_SIZE,
      receiveMaximum: MAX_INFLIGHT,
      topicAliasMaximum: 64,
      retainAvailable: true,
      wildcardSubscriptionAvailable: true,
      subscriptionIdentifiersAvailable: true,
      sharedSubscriptionAvailable: false,
    });
  });

  it('a wrong password gets CONNACK 0x86 (mqtt.js error code 134); the broker keeps serving', async () => {
    const outcome = await tryConnect(broker.url(), { ...V5, username: 'alice', password: 'wrong' });
    if (outcome.ok) keep(outcome.client);
    assert.equal(outcome.ok, false);
    assert.equal(!outcome.ok && outcome.code, 0x86, JSON.stringify(outcome));
    const unknown = await tryConnect(broker.url(), { ...V5, username: 'nobody', password: 'x' });
    assert.equal(!unknown.ok && unknown.code, 0x86);
    await roundTrip(await v5(), seen, 'after/wrong-password', 'still serving');
  });

  it('ACL: a denied subscription gets SUBACK 0x87 (not authorized) and the client stays connected', async () => {
    const alice = await v5(ALICE);
    assert.deepEqual(await subscribeGranted(alice, ['public/#', 'secret/#', '#'], 1), [1, 0x87, 0x87]);
    assert.equal(alice.connected, true);
    const got = recordMessages(alice);
    await watcher.publishAsync('public/news', 'for alice', { qos: 1 });
    await waitFor(() => got.some((message) => message.topic === 'public/news'), 3000, 'the allowed message');
  });

  it('ACL: a denied publish gets PUBACK 0x87 (QoS 1) or nothing (QoS 0), reaches nobody, and the v5 publisher stays [3.4.2.1]', async () => {
    const alice = await v5(ALICE);
    const acked = await alice.publishAsync('secret/plans', 'denied', { qos: 1 }).then(
      () => 'acknowledged',
      (error: { code?: number }) => `refused ${error.code}`,
    );
    assert.equal(acked, 'refused 135');
    alice.publish('secret/plans', 'denied at QoS 0', { qos: 0 });
    await marker(seen);
    assert.equal(
      seen.some((message) => message.topic === 'secret/plans'),
      false,
    );
    assert.equal(alice.connected, true, 'the publisher stays connected');
    await roundTrip(alice, seen, 'public/after-denial', 'still serving');
  });

  it('persistent session: with sessionExpiryInterval > 0, messages published while offline arrive on reconnect', async () => {
    const session = { ...ADMIN, ...V5, clientId: 'v5-persistent', clean: false, properties: { sessionExpiryInterval: 300 } };
    const first = await connectRecording(broker.url(), session);
    assert.equal(first.connack.sessionPresent, false);
    await first.client.subscribeAsync('session/persistent/#', { qos: 1 });
    await first.client.endAsync();
    for (let index = 1; index <= 3; index++)
      await watcher.publishAsync(`session/persistent/${index}`, `while offline ${index}`, { qos: 1 });
    const second = await connectRecording(broker.url(), session);
    keep(second.client);
    assert.equal(second.connack.sessionPresent, true);
    await waitFor(() => second.messages.length === 3, 3000, 'the queued messages');
    assert.deepEqual(
      second.messages.map((message) => message.payload),
      ['while offline 1', 'while offline 2', 'while offline 3'],
    );
  });

  it('without a session expiry (MQTT 5 default 0) the session ends with the connection, even with Clean Start off', async () => {
    const session = { ...ADMIN, ...V5, clientId: 'v5-ephemeral', clean: false };
    const first = await connectRecording(broker.url(), session);
    await first.client.subscribeAsync('session/ephemeral/#', { qos: 1 });
    await first.client.endAsync();
    await watcher.publishAsync('session/ephemeral/1', 'nobody keeps this', { qos: 1 });
    const second = await connectRecording(broker.url(), session);
    keep(second.client);
    assert.equal(second.connack.sessionPresent, false);
    await second.client.subscribeAsync('marker', { qos: 1 });
    await marker(second.messages);
    assert.deepEqual(
      second.messages.map((message) => message.topic),
      ['marker'],
    );
  });

  it('will: published when a v5 client drops the connection or disconnects with reason 0x04, not on a normal DISCONNECT', async () => {
    const will = (name: string) => ({
      ...ADMIN,
      ...V5,
      will: { topic: `will/${name}`, payload: Buffer.from(`${name} is gone`), qos: 1 as const, retain: false },
    });
    const dropped = await v5(will('dropped'));
    dropped.stream.destroy();
    await waitFor(() => seen.some((message) => message.topic === 'will/dropped'), 3000, 'the will of the dropped client');
    const withWill = await v5(will('with-will'));
    await new Promise<void>((resolve) => withWill.end(false, { reasonCode: 0x04 }, () => resolve()));
    await waitFor(() => seen.some((message) => message.topic === 'will/with-will'), 3000, 'the will after DISCONNECT 0x04');
    const normal = await v5(will('normal'));
    await normal.endAsync();
    await marker(seen);
    assert.equal(
      seen.some((message) => message.topic === 'will/normal'),
      false,
    );
    assert.deepEqual(
      seen.find((message) => message.topic === 'will/dropped'),
      { topic: 'will/dropped', payload: 'dropped is gone', qos: 1, retain: false },
    );
  });

  it('topic aliases from the client are resolved; an alias without a topic gets DISCONNECT 0x82', async () => {
    const raw = keepRaw(await RawV5.connect(broker.port()));
    const publish = (topic: string, payload: string, properties: IPublishPacket['properties']): IPublishPacket => ({
      cmd: 'publish',
      topic,
      payload: Buffer.from(payload),
      qos: 0,
      retain: false,
      dup: false,
      properties,
    });
    raw.send(publish('alias/first', 'set alias 1', { topicAlias: 1 }));
    raw.send(publish('', 'used alias 1', { topicAlias: 1 }));
    raw.send(publish('alias/second', 'alias 1 redefined', { topicAlias: 1 }));
    raw.send(publish('', 'used alias 1 again', { topicAlias: 1 }));
    await waitFor(() => seen.filter((message) => message.topic.startsWith('alias/')).length === 4, 3000, 'four aliased messages');
    assert.deepEqual(
      seen.filter((message) => message.topic.startsWith('alias/')).map((message) => `${message.topic}: ${message.payload}`),
      ['alias/first: set alias 1', 'alias/first: used alias 1', 'alias/second: alias 1 redefined', 'alias/second: used alias 1 again'],
    );
    raw.send(publish('', 'unknown alias', { topicAlias: 2 }));
    assert.equal((await raw.next('disconnect')).reasonCode, 0x82);
    assert.equal(await raw.closedWithin(3000), true);
    const noTopic = keepRaw(await RawV5.connect(broker.port()));
    noTopic.send(publish('', 'neither topic nor alias', undefined));
    assert.equal((await noTopic.next('disconnect')).reasonCode, 0x82);
    assert.equal(await noTopic.closedWithin(3000), true);
  });

  it('UNSUBACK carries one reason code per filter, and the filters stop delivering', async () => {
    const raw = keepRaw(await RawV5.connect(broker.port()));
    raw.send({
      cmd: 'subscribe',
      messageId: 7,
      subscriptions: [
        { topic: 'unsub/a', qos: 1 },
        { topic: 'unsub/b', qos: 0 },
      ],
    });
    assert.deepEqual((await raw.next('suback')).granted, [1, 0]);
    raw.send({ cmd: 'unsubscribe', messageId: 8, unsubscriptions: ['unsub/a', 'unsub/b'] });
    const unsuback = await raw.next('unsuback');
    assert.equal(unsuback.messageId, 8);
    assert.deepEqual(unsuback.granted, [0, 0]);
    await watcher.publishAsync('unsub/a', 'after unsubscribe', { qos: 1 });
    raw.send({ cmd: 'pingreq' });
    await raw.next('pingresp');
    assert.deepEqual(raw.of('publish'), []);
  });

  it('an empty client id gets an Assigned Client Identifier', async () => {
    const raw = keepRaw(await RawV5.connect(broker.port(), { clientId: '' }));
    const connack = await raw.next('connack');
    assert.equal(connack.reasonCode, 0);
    const assigned = connack.properties?.assignedClientIdentifier;
    assert.ok(assigned && assigned.length > 0, JSON.stringify(connack));
    await waitFor(() => connected.includes(assigned), 3000, 'aedes to know the client by its assigned id');
  });

  it('enhanced authentication (authenticationMethod) is refused with CONNACK 0x8C', async () => {
    const raw = keepRaw(
      await RawV5.connect(broker.port(), { properties: { authenticationMethod: 'SCRAM-SHA-1', authenticationData: Buffer.from('x') } }),
    );
    assert.equal((await raw.next('connack')).reasonCode, 0x8c);
    assert.equal(await raw.closedWithin(3000), true);
  });

  it("the client's Maximum Packet Size: bigger deliveries are dropped for it (QoS 0, 1 and 2), the rest still arrive", async () => {
    const small = await v5({ properties: { maximumPacketSize: 200 } });
    const got = recordMessages(small);
    await small.subscribeAsync('maxsize/#', { qos: 2 });
    for (const qos of [0, 1, 2] as const) {
      await watcher.publishAsync(`maxsize/big/${qos}`, 'x'.repeat(500), { qos: qos === 0 ? 0 : 1 });
      await watcher.publishAsync(`maxsize/small/${qos}`, 'fits', { qos: qos === 0 ? 0 : 1 });
    }
    // QoS 2 from a v5 publisher too, so the broker's PUBREL for a dropped delivery is answered.
    const publisher = await v5();
    await publisher.publishAsync('maxsize/big/2b', 'y'.repeat(500), { qos: 2 });
    await publisher.publishAsync('maxsize/small/2b', 'fits', { qos: 2 });
    await waitFor(() => got.length === 4, 3000, 'the four small messages');
    assert.deepEqual(
      got.map((message) => message.topic),
      ['maxsize/small/0', 'maxsize/small/1', 'maxsize/small/2', 'maxsize/small/2b'],
    );
    assert.equal(small.connected, true);
    await roundTrip(small, got, 'maxsize/after', 'still flowing');
  });

  it('limits.maxPacketSize still cuts a v5 client; the others keep working', async () => {
    const raw = keepRaw(await RawV5.connect(broker.port()));
    // PUBLISH announcing 256 MB, and not one byte of it.
    raw.socket.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]));
    assert.equal(await raw.closedWithin(3000), true);
    const big = await v5();
    // mqtt.js would refuse to send more than the CONNACK's Maximum Packet Size itself: write raw bytes.
    const raw2 = keepRaw(await RawV5.connect(broker.port()));
    raw2.send({ cmd: 'publish', topic: 'size/v5', payload: Buffer.alloc(MAX_PACKET_SIZE + 10, 0x61), qos: 0, retain: false, dup: false });
    assert.equal(await raw2.closedWithin(3000), true);
    await roundTrip(big, seen, 'size/after-v5', 'still serving');
    const logged = broker.logs.withMessage('mqtt packet larger than broker.limits.maxPacketSize: client disconnected');
    assert.ok(logged.length > 0);
  });

  it('a malformed v5 packet gets DISCONNECT 0x81 and closes only that connection', async () => {
    const bystander = await v5();
    const raw = keepRaw(await RawV5.connect(broker.port()));
    // PUBLISH, topic "a", property length 2, property id 0x7f (no such property).
    raw.socket.write(Buffer.from([0x30, 0x06, 0x00, 0x01, 0x61, 0x02, 0x7f, 0x00]));
    assert.equal((await raw.next('disconnect')).reasonCode, 0x81);
    assert.equal(await raw.closedWithin(3000), true);
    assert.equal(bystander.connected, true);
    await roundTrip(bystander, seen, 'after/malformed', 'still serving');
  });

  it('a CONNECT that arrives byte by byte is recognised (3.1.1 and 5)', async () => {
    for (const protocolVersion of [4, 5] as const) {
      const raw = keepRaw(await RawV5.open(broker.port()));
      const bytes = generate(RawV5.connectPacket({ protocolVersion }), { protocolVersion });
      for (const byte of bytes) {
        raw.socket.write(Buffer.from([byte]));
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      // Both answers parse the same way at this size: a CONNACK with code 0.
      const connack = await raw.next('connack');
      assert.equal(connack.reasonCode ?? connack.returnCode, 0, `protocol ${protocolVersion}`);
    }
  });

  it('mosquitto_sub -V mqttv5 receives and mosquitto_pub -V mqttv5 publishes (QoS 0/1/2, retained)', async () => {
    const hostArgs = ['-h', '127.0.0.1', '-p', String(broker.port()), '-u', ADMIN.username, '-P', ADMIN.password, '-V', 'mqttv5'];
    for (const qos of ['0', '1', '2']) {
      const result = await run(MOSQUITTO_PUB, [
        ...hostArgs,
        '-t',
        `mosq5/pub/${qos}`,
        '-m',
        `from mosquitto_pub v5 at QoS ${qos}`,
        '-q',
        qos,
      ]);
      assert.equal(result.code, 0, result.stderr);
    }
    await waitFor(
      () => seen.filter((message) => message.topic.startsWith('mosq5/pub/')).length === 3,
      3000,
      'the three mosquitto_pub messages',
    );
    assert.deepEqual(
      seen.filter((message) => message.topic.startsWith('mosq5/pub/')).map((message) => message.payload),
      ['from mosquitto_pub v5 at QoS 0', 'from mosquitto_pub v5 at QoS 1', 'from mosquitto_pub v5 at QoS 2'],
    );
    const retained = await run(MOSQUITTO_PUB, [...hostArgs, '-t', 'mosq5/retained', '-m', 'retained by mosquitto_pub v5', '-q', '1', '-r']);
    assert.equal(retained.code, 0, retained.stderr);
    // Running while the test publishes; it exits by itself after 4 messages (or -W 10 s).
    const receiving = run(MOSQUITTO_SUB, [...hostArgs, '-i', 'mosquitto-v5', '-q', '2', '-t', 'mosq5/#', '-C', '4', '-W', '10', '-v']);
    await waitFor(() => subscribed.includes('mosquitto-v5'), 5000, 'mosquitto_sub to subscribe');
    const client5 = await v5();
    for (const qos of [0, 1, 2] as const) await client5.publishAsync(`mosq5/live/${qos}`, `live ${qos}`, { qos });
    const live = await receiving;
    assert.equal(live.code, 0, live.stderr);
    assert.equal(
      live.stdout,
      ['mosq5/retained retained by mosquitto_pub v5', 'mosq5/live/0 live 0', 'mosq5/live/1 live 1', 'mosq5/live/2 live 2']
        .map((line) => `${line}\n`)
        .join(''),
    );
  });

  it("a client's Receive Maximum below broker.limits.maxInflight bounds what it gets unacknowledged", async () => {
    const raw = keepRaw(await RawV5.connect(broker.port(), { properties: { receiveMaximum: 2 } }));
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'recvmax/#', qos: 1 }] });
    await raw.next('suback');
    const publisher = await v4();
    for (let index = 0; index < 6; index++) await publisher.publishAsync(`recvmax/${index}`, String(index), { qos: 1 });
    await waitFor(() => raw.of('publish').length >= 2, 3000, 'two deliveries');
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(raw.of('publish').length, 2, "no more than the client's Receive Maximum unacknowledged");
    // Acknowledging lets the rest through, in order.
    const acked = new Set<number>();
    const ackAll = () => {
      for (const packet of raw.of('publish')) {
        if (packet.messageId !== undefined && !acked.has(packet.messageId)) {
          acked.add(packet.messageId);
          raw.send({ cmd: 'puback', messageId: packet.messageId });
        }
      }
    };
    await waitFor(
      () => {
        ackAll();
        return raw.of('publish').length === 6;
      },
      5000,
      'all six after acknowledging',
    );
    assert.deepEqual(
      raw.of('publish').map((packet) => packet.payload.toString()),
      ['0', '1', '2', '3', '4', '5'],
    );
  });

  it('the broker takes the properties of each v5 PUBLISH in order: the command hook sees response topic and correlation data', async () => {
    const origins: Array<{ topic: string; origin: CommandOrigin }> = [];
    onCommand = (topic, origin) => {
      if (topic.startsWith('props/')) origins.push({ topic, origin });
    };
    try {
      const requester = await v5();
      await requester.publishAsync('props/request', 'do it', {
        qos: 1,
        properties: {
          responseTopic: 'props/response',
          correlationData: Buffer.from('id-42'),
          contentType: 'text/plain',
          userProperties: { origin: 'test' },
        },
      });
      await requester.publishAsync('props/plain', 'nothing attached', { qos: 0 });
      await requester.publishAsync('props/second', 'again', {
        qos: 2,
        properties: { responseTopic: 'props/response-2', correlationData: Buffer.from('id-43') },
      });
      const old = await v4();
      await old.publishAsync('props/old', 'from 3.1.1', { qos: 1 });
      await waitFor(() => origins.length === 4, 3000, 'four publishes');
      const seen = origins.map(({ topic, origin }) => [topic, origin.responseTopic, origin.correlationData?.toString()]);
      assert.deepEqual(seen, [
        ['props/request', 'props/response', 'id-42'],
        ['props/plain', undefined, undefined],
        ['props/second', 'props/response-2', 'id-43'],
        ['props/old', undefined, undefined],
      ]);
    } finally {
      onCommand = undefined;
    }
  });

  it("the gateway's own publishes carry their properties to v5 subscribers only (an answer's correlation data)", async () => {
    const responder5 = recordPackets(await v5());
    const old = await v4();
    const oldGot = recordMessages(old);
    await responder5.client.subscribeAsync('reply/#', { qos: 1 });
    await old.subscribeAsync('reply/#', { qos: 1 });
    broker.broker.publish('reply/1', 'answer', {
      qos: 1,
      retain: false,
      properties: { correlationData: Buffer.from('id-42'), contentType: 'application/json' },
    });
    broker.broker.publish('reply/1', 'another answer', { qos: 1, retain: false });
    await waitFor(() => responder5.packets.length === 2 && oldGot.length === 2, 3000, 'two deliveries each');
    assert.deepEqual(
      responder5.packets.map((packet) => [
        packet.topic,
        packet.payload.toString(),
        packet.properties?.correlationData?.toString(),
        packet.properties?.contentType,
      ]),
      [
        ['reply/1', 'answer', 'id-42', 'application/json'],
        ['reply/1', 'another answer', undefined, undefined],
      ],
    );
    assert.deepEqual(
      oldGot.map((message) => message.payload),
      ['answer', 'another answer'],
    );
  });

  it('closed v5 connections leave no client behind in aedes (DISCONNECT, DISCONNECT 0x04, dropped, refused)', async () => {
    const baseline = broker.broker.clientCount;
    const [normal, withWill, dropped] = [await v5(), await v5(), await v5()];
    assert.equal(broker.broker.clientCount, baseline + 3);
    await normal.endAsync();
    await new Promise<void>((resolve) => withWill.end(false, { reasonCode: 0x04 }, () => resolve()));
    dropped.stream.destroy();
    const refused = await tryConnect(broker.url(), { ...V5, username: 'admin', password: 'wrong' });
    assert.equal(refused.ok, false);
    await waitFor(() => broker.broker.clientCount === baseline, 3000, `aedes back to ${baseline} clients`);
  });

  it('after all this the broker still serves 3.1.1 and v5 clients', async () => {
    await roundTrip(await v4(), seen, 'final/v4', 'ok');
    await roundTrip(await v5(), seen, 'final/v5', 'ok');
    assert.equal(watcher.connected, true);
  });
});

/** The raw PUBLISH packets an mqtt.js client receives (with their MQTT 5 properties). */
function recordPackets(client: MqttClient): {
  client: MqttClient;
  packets: Array<{ topic: string; payload: Buffer; properties?: IPublishPacket['properties'] }>;
} {
  const packets: Array<{ topic: string; payload: Buffer; properties?: IPublishPacket['properties'] }> = [];
  client.on('message', (topic, payload, packet) => packets.push({ topic, payload, properties: packet.properties }));
  return { client, packets };
}

describe('handleConnection on its own', () => {
  it('recognises the protocol level from the first bytes of a CONNECT', () => {
    const v5 = generate(RawV5.connectPacket({ protocolVersion: 5 }), { protocolVersion: 5 });
    const v4 = generate(RawV5.connectPacket({ protocolVersion: 4 }), { protocolVersion: 4 });
    const v3 = generate(RawV5.connectPacket({ protocolVersion: 3, protocolId: 'MQIsdp' }), { protocolVersion: 3 });
    assert.equal(connectProtocolLevel(v5), 5);
    assert.equal(connectProtocolLevel(v4), 4);
    assert.equal(connectProtocolLevel(v3), 3);
    for (let length = 0; length < 9; length++) assert.equal(connectProtocolLevel(v5.subarray(0, length)), 'more', `${length} bytes`);
    assert.equal(connectProtocolLevel(Buffer.from('GET / HTTP/1.1\r\n')), undefined);
  });

  it('a socket that never sends a whole CONNECT header is closed after connectTimeoutMs, without reaching aedes', async () => {
    let handled = 0;
    const fakeAedes = {
      handle: () => {
        handled++;
        return {} as Client;
      },
    };
    const server = createServer((socket) => handleConnection(fakeAedes, socket, { maxPacketSize: 1024, connectTimeoutMs: 200 }));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as { port: number }).port;
    try {
      for (const sent of [Buffer.alloc(0), Buffer.from([0x10, 0x10, 0x00])]) {
        const raw = await RawV5.open(port);
        if (sent.length > 0) raw.socket.write(sent);
        const closed = await raw.closedWithin(5000);
        raw.destroy();
        assert.equal(closed, true, `after ${sent.length} bytes`);
      }
      assert.equal(handled, 0);
    } finally {
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
