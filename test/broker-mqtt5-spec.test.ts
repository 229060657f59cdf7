// MQTT 5 conformance of the integrated broker, test by test against the OASIS MQTT 5.0 standard
// (2019; normative ids [MQTT-x.y.z-n], sections as §x.y.z) and, where a behaviour has one, its
// MQTT 3.1.1 counterpart. Written independently of src/broker/mqtt5.ts as its yardstick: mqtt.js
// v5 clients, raw mqtt-packet sockets (exact reason codes and properties), Debian's paho-mqtt as
// a second implementation (test/helpers/mqtt5-peer.py) and mosquitto_sub -V mqttv5.
//
// "Not delivered" is never a sleep: a marker is published after the forbidden message, on a topic
// the same client receives, and the assertion runs once the marker is in.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import type { Client } from 'aedes';
import mqtt, { type IClientOptions, type IClientSubscribeOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import type { IConnectPacket, IPublishPacket } from 'mqtt-packet';
import {
  BrokerUnderTest,
  type BrokerInput,
  CLIENT_DEFAULTS,
  closedWithin,
  MOSQUITTO_SUB,
  ROOT,
  connectPacket,
  openRaw5,
  publishPacket,
  RawClient,
  run,
  subscribeGranted,
  tryConnect,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const MAX_PACKET_SIZE = 64 * 1024;
const MAX_INFLIGHT = 5;
/** Everyone may do everything but publish under denied/. */
const ACL: NonNullable<BrokerInput>['acl'] = [{ publish: ['#'], subscribe: ['#'], deny: { publish: ['denied/#'] } }];
const TCP: NonNullable<BrokerInput>['listeners'] = [{ type: 'tcp', host: '127.0.0.1', port: 0 }];

// MQTT 5 reason codes (§2.4).
const RC = {
  notAuthorized: 0x87,
  sessionTakenOver: 0x8e,
  receiveMaximumExceeded: 0x93,
  topicAliasInvalid: 0x94,
  packetTooLarge: 0x95,
  sharedSubscriptionsNotSupported: 0x9e,
} as const;

type PublishProperties = NonNullable<IPublishPacket['properties']>;

/** One PUBLISH as a client received it, with its MQTT 5 properties. */
interface Delivery {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  properties: PublishProperties | undefined;
}

interface Session {
  client: MqttClient;
  got: Delivery[];
  connack: IConnackPacket;
}

/** mqtt.js, recording deliveries from before the CONNACK (queued messages follow it at once). */
async function open(url: string, options: IClientOptions): Promise<Session> {
  const client = mqtt.connect(url, { ...CLIENT_DEFAULTS, ...options });
  const got: Delivery[] = [];
  client.on('message', (topic, payload, packet) =>
    got.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, properties: packet.properties }),
  );
  client.on('error', () => undefined);
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('close', () => reject(new Error(`${String(options.clientId)}: closed before CONNACK`)));
  });
  return { client, got, connack };
}

/** Subscription identifiers of one delivery (mqtt-packet gives a number for one, an array for several). */
function subscriptionIds(delivery: Delivery): number[] {
  const ids = delivery.properties?.subscriptionIdentifier;
  return ids === undefined ? [] : ([] as number[]).concat(ids);
}

const payloads = (got: Delivery[], prefix: string) => got.filter((d) => d.topic.startsWith(prefix)).map((d) => d.payload);

/** Raw MQTT 5 CONNECT (anonymous). */
const connect5 = (connect: Partial<IConnectPacket> = {}): IConnectPacket => connectPacket(5, connect);

const raw5 = (port: number, connect: Partial<IConnectPacket> = {}): Promise<RawClient> => openRaw5(port, connect5(connect));
const rawPublish = publishPacket;

/** The connection is still served: PINGREQ gets its PINGRESP. */
async function stillServed(raw: RawClient): Promise<void> {
  const before = raw.of('pingresp').length;
  raw.send({ cmd: 'pingreq' });
  await waitFor(() => raw.of('pingresp').length > before || raw.isClosed, 3000, 'PINGRESP');
  assert.equal(raw.isClosed, false, 'the connection was closed');
}

// ---------------------------------------------------------------------------------------------
// Debian's paho-mqtt as an independent MQTT 5 client (JSON lines over stdio).

const PEER_SCRIPT = join(ROOT, 'test/helpers/mqtt5-peer.py');

interface PeerEvent {
  ev: string;
  [field: string]: unknown;
}

interface PeerMessage {
  topic: string;
  payload: string;
  qos: number;
  retain: boolean;
  properties: {
    userProperties?: Array<[string, string]>;
    contentType?: string;
    payloadFormatIndicator?: number;
    responseTopic?: string;
    correlationData?: string;
    messageExpiryInterval?: number;
    subscriptionIdentifiers?: number[];
  };
}

class PahoPeer {
  readonly events: PeerEvent[] = [];
  private readonly child: ChildProcess;
  private stderr = '';

  constructor() {
    this.child = spawn('/usr/bin/python3', [PEER_SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => this.events.push(JSON.parse(line) as PeerEvent));
    this.child.stderr!.on('data', (chunk: Buffer) => (this.stderr += chunk.toString()));
    this.child.stdin!.on('error', () => undefined);
  }

  private send(command: Record<string, unknown>): void {
    this.child.stdin!.write(`${JSON.stringify(command)}\n`);
  }

  private async expect(match: (event: PeerEvent) => boolean, what: string, from = 0): Promise<PeerEvent> {
    await waitFor(
      () => this.events.slice(from).some(match),
      10_000,
      () => `paho: ${what} (events ${JSON.stringify(this.events)}; stderr ${this.stderr})`,
    );
    const found = this.events.slice(from).find(match)!;
    if (found.ev === 'error') throw new Error(`paho: ${String(found.message)}`);
    return found;
  }

  async connect(port: number, options: { clientId: string; cleanStart?: boolean; sessionExpiry?: number }): Promise<PeerEvent> {
    const from = this.events.length;
    this.send({ op: 'connect', port, ...options });
    return this.expect((event) => event.ev === 'connack' || event.ev === 'error', 'CONNACK', from);
  }

  async subscribe(options: {
    topic: string;
    qos?: number;
    noLocal?: boolean;
    retainAsPublished?: boolean;
    retainHandling?: number;
    subscriptionIdentifier?: number;
  }): Promise<number[]> {
    const from = this.events.length;
    this.send({ op: 'subscribe', ...options });
    const sent = await this.expect((event) => event.ev === 'subscribing' || event.ev === 'error', 'SUBSCRIBE sent', from);
    const suback = await this.expect((event) => event.ev === 'suback' && event.mid === sent.mid, 'SUBACK', from);
    return suback.reasonCodes as number[];
  }

  async publish(topic: string, payload: string, qos: 0 | 1, properties: Record<string, unknown> = {}, retain = false): Promise<void> {
    const from = this.events.length;
    this.send({ op: 'publish', topic, payload, qos, retain, properties });
    const sent = await this.expect((event) => event.ev === 'publishing' || event.ev === 'error', 'PUBLISH sent', from);
    await this.expect((event) => event.ev === 'published' && event.mid === sent.mid, 'PUBLISH done', from);
  }

  messages(): PeerMessage[] {
    return this.events.filter((event) => event.ev === 'message') as unknown as PeerMessage[];
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.send({ op: 'disconnect' });
    this.child.stdin!.end();
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------

/** Clients opened by a describe block, all closed in its after(). */
class Pool {
  readonly clients: MqttClient[] = [];
  readonly raws: RawClient[] = [];
  readonly peers: PahoPeer[] = [];

  keep(session: Session): Session {
    this.clients.push(session.client);
    return session;
  }

  raw(raw: RawClient): RawClient {
    this.raws.push(raw);
    return raw;
  }

  peer(): PahoPeer {
    const peer = new PahoPeer();
    this.peers.push(peer);
    return peer;
  }

  async close(): Promise<void> {
    for (const raw of this.raws) raw.destroy();
    await Promise.all(this.peers.map((peer) => peer.close().catch(() => undefined)));
    await Promise.all(this.clients.map((client) => client.endAsync(true).catch(() => undefined)));
  }
}

/** Publishes a marker on `topic` and waits until `got` has it: what was published before it for this client has been routed. */
async function marker(publisher: MqttClient, got: Delivery[], topic: string): Promise<void> {
  const text = `marker-${Math.random().toString(36).slice(2)}`;
  await publisher.publishAsync(topic, text, { qos: 1 });
  await waitFor(() => got.some((d) => d.topic === topic && d.payload === text), 5000, `marker on ${topic}`);
}

describe('MQTT 5 conformance of the integrated broker', () => {
  let broker: BrokerUnderTest;
  const pool = new Pool();
  let url: string;
  let port: number;
  /** A v5 publisher for everyone. */
  let pub: MqttClient;
  const subscribedIds: string[] = [];

  const v5 = async (clientId: string, options: IClientOptions = {}) =>
    pool.keep(await open(url, { protocolVersion: 5, clientId, ...options }));
  const v4 = async (clientId: string, options: IClientOptions = {}) =>
    pool.keep(await open(url, { protocolVersion: 4, clientId, ...options }));
  /** Clean Start 0 with a Session Expiry Interval (seconds). */
  const persistent = (sessionExpiryInterval: number): IClientOptions => ({ clean: false, properties: { sessionExpiryInterval } });

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      allowAnonymous: true,
      acl: ACL,
      limits: { maxPacketSize: MAX_PACKET_SIZE, maxInflight: MAX_INFLIGHT },
    });
    broker.broker.aedes.on('subscribe', (_subscriptions, client: Client) => subscribedIds.push(client.id));
    url = broker.url();
    port = broker.port();
    pub = (await v5('publisher')).client;
  });

  after(async () => {
    await pool.close();
    await broker?.close();
  });

  describe('Clean Start and Session Expiry are independent (§3.1.2.4, §3.1.2.11, §3.2.2.1.1)', () => {
    it('[MQTT-3.1.2-5][MQTT-3.1.4-3] takeover: a second connection with Clean Start 0, expiry 0 while the id is connected (with expiry 300) resumes the session (sessionPresent 1, its subscription delivers), which then ends with that connection', async () => {
      const first = await v5('cs-takeover', persistent(300));
      await first.client.subscribeAsync('cs/takeover/#', { qos: 1 });
      const second = await v5('cs-takeover', persistent(0));
      assert.equal(second.connack.sessionPresent, true, 'sessionPresent on takeover');
      await pub.publishAsync('cs/takeover/1', 'to the taken-over session', { qos: 1 });
      await waitFor(() => second.got.some((d) => d.topic === 'cs/takeover/1'), 5000, 'delivery without re-subscribing');
      await second.client.endAsync();
      await pub.publishAsync('cs/takeover/2', 'nobody keeps this', { qos: 1 });
      const third = await v5('cs-takeover', persistent(300));
      assert.equal(third.connack.sessionPresent, false, 'the expiry-0 session ended with its connection');
      await third.client.subscribeAsync('cs/marker/takeover', { qos: 1 });
      await marker(pub, third.got, 'cs/marker/takeover');
      assert.deepEqual(payloads(third.got, 'cs/takeover/'), []);
    });

    it('[MQTT-3.1.4-3] the connection that was taken over gets DISCONNECT 0x8E (Session taken over)', async () => {
      const old = pool.raw(await raw5(port, { clientId: 'cs-takeover-raw', clean: false }));
      await v5('cs-takeover-raw', persistent(0));
      const disconnect = await old.next('disconnect', 5000);
      assert.equal(disconnect.reasonCode, RC.sessionTakenOver);
      assert.equal(await old.closedWithin(3000), true);
    });

    it('[MQTT-3.1.2-5][MQTT-3.2.2-3] Clean Start 0, expiry 0 with a stored session (expiry > 0 before): resumed with its queue, then gone after this connection', async () => {
      const first = await v5('cs-stored', persistent(300));
      assert.equal(first.connack.sessionPresent, false);
      await first.client.subscribeAsync('cs/stored/#', { qos: 1 });
      await first.client.endAsync();
      await pub.publishAsync('cs/stored/1', 'queued while offline', { qos: 1 });
      const second = await v5('cs-stored', persistent(0));
      assert.equal(second.connack.sessionPresent, true);
      await pub.publishAsync('cs/stored/2', 'live', { qos: 1 });
      await waitFor(() => payloads(second.got, 'cs/stored/').length === 2, 5000, 'queued and live message');
      assert.deepEqual(payloads(second.got, 'cs/stored/'), ['queued while offline', 'live']);
      await second.client.endAsync();
      await pub.publishAsync('cs/stored/3', 'after the expiry-0 connection', { qos: 1 });
      const third = await v5('cs-stored', persistent(300));
      assert.equal(third.connack.sessionPresent, false, 'the session ended with the expiry-0 connection');
      await third.client.subscribeAsync('cs/marker/stored', { qos: 1 });
      await marker(pub, third.got, 'cs/marker/stored');
      assert.deepEqual(payloads(third.got, 'cs/stored/'), []);
    });

    it('[MQTT-3.1.2-4][MQTT-3.2.2-2] Clean Start 1 with expiry > 0: the old session is discarded, the new one outlives its connection', async () => {
      const old = await v5('cs-fresh', persistent(300));
      await old.client.subscribeAsync('cs/fresh/old/#', { qos: 1 });
      await old.client.endAsync();
      await pub.publishAsync('cs/fresh/old/1', 'queued for the old session', { qos: 1 });
      const fresh = await v5('cs-fresh', { clean: true, properties: { sessionExpiryInterval: 300 } });
      assert.equal(fresh.connack.sessionPresent, false);
      await fresh.client.subscribeAsync('cs/fresh/new/#', { qos: 1 });
      await pub.publishAsync('cs/fresh/old/2', 'for the old subscription', { qos: 1 });
      await marker(pub, fresh.got, 'cs/fresh/new/marker');
      assert.deepEqual(payloads(fresh.got, 'cs/fresh/old/'), [], 'nothing of the old session');
      await fresh.client.endAsync();
      await pub.publishAsync('cs/fresh/new/offline', 'while the new session is offline', { qos: 1 });
      const back = await v5('cs-fresh', persistent(300));
      assert.equal(back.connack.sessionPresent, true, 'the new session survived its connection');
      await waitFor(() => back.got.some((d) => d.topic === 'cs/fresh/new/offline'), 5000, 'the message queued for the new session');
      assert.deepEqual(payloads(back.got, 'cs/fresh/old/'), []);
    });

    it('[MQTT-3.1.2-6][MQTT-3.2.2-3] Clean Start 0 with expiry > 0 and no session yet: sessionPresent 0', async () => {
      const first = await v5('cs-first-time', persistent(300));
      assert.equal(first.connack.sessionPresent, false);
      assert.equal(first.connack.reasonCode, 0);
    });
  });

  describe('Session Expiry Interval (§3.1.2.11.2)', () => {
    it('a session with expiry 2 s is present within the interval and gone (no queued messages) after 3.5 s offline', async () => {
      const first = await v5('sx-2s', persistent(2));
      await first.client.subscribeAsync('sx/two/#', { qos: 1 });
      await first.client.endAsync();
      await pub.publishAsync('sx/two/0', 'within the interval', { qos: 1 });
      const within = await v5('sx-2s', persistent(2));
      assert.equal(within.connack.sessionPresent, true, 'present within the interval');
      await waitFor(() => payloads(within.got, 'sx/two/').length === 1, 5000, 'the queued message');
      await within.client.endAsync();
      await pub.publishAsync('sx/two/1', 'expires with the session', { qos: 1 });
      await delay(3500);
      const late = await v5('sx-2s', persistent(300));
      assert.equal(late.connack.sessionPresent, false, 'expired after 2 s');
      await late.client.subscribeAsync('sx/marker', { qos: 1 });
      await marker(pub, late.got, 'sx/marker');
      assert.deepEqual(payloads(late.got, 'sx/two/'), []);
    });
  });

  describe('Message Expiry Interval (§3.3.2.3.3)', () => {
    it('[MQTT-3.3.2-5] a queued QoS 1 message with expiry 2 s is not delivered after 3.5 s; one with 60 s is, with the remaining interval (0 < n ≤ 60)', async () => {
      const first = await v5('mexp-queue', persistent(300));
      await first.client.subscribeAsync('mexp/queue/#', { qos: 1 });
      await first.client.endAsync();
      await pub.publishAsync('mexp/queue/short', 'expires', { qos: 1, properties: { messageExpiryInterval: 2 } });
      await pub.publishAsync('mexp/queue/long', 'kept', { qos: 1, properties: { messageExpiryInterval: 60 } });
      await delay(3500);
      const back = await v5('mexp-queue', persistent(300));
      assert.equal(back.connack.sessionPresent, true);
      await marker(pub, back.got, 'mexp/queue/marker');
      assert.deepEqual(payloads(back.got, 'mexp/queue/').slice(0, -1), ['kept']);
      const interval = back.got.find((d) => d.topic === 'mexp/queue/long')?.properties?.messageExpiryInterval;
      assert.ok(interval !== undefined && interval > 0 && interval <= 60, `remaining interval ${String(interval)}`);
    });

    it('[MQTT-3.3.2-5] a retained message with expiry 2 s is not sent to a subscriber that comes 3.5 s later', async () => {
      await pub.publishAsync('mexp/retained/short', 'expires', { qos: 1, retain: true, properties: { messageExpiryInterval: 2 } });
      await pub.publishAsync('mexp/retained/kept', 'no expiry', { qos: 1, retain: true });
      await delay(3500);
      const late = await v5('mexp-retained');
      await late.client.subscribeAsync('mexp/retained/#', { qos: 1 });
      await marker(pub, late.got, 'mexp/retained/marker');
      assert.deepEqual(payloads(late.got, 'mexp/retained/').slice(0, -1), ['no expiry']);
    });

    it('[MQTT-3.3.2-6] a live delivery carries the Message Expiry Interval (0 < n ≤ sent)', async () => {
      const sub = await v5('mexp-live');
      await sub.client.subscribeAsync('mexp/live', { qos: 1 });
      await pub.publishAsync('mexp/live', 'x', { qos: 1, properties: { messageExpiryInterval: 30 } });
      await waitFor(() => sub.got.length === 1, 5000, 'the delivery');
      const interval = sub.got[0]!.properties?.messageExpiryInterval;
      assert.ok(interval !== undefined && interval > 0 && interval <= 30, `interval ${String(interval)}`);
    });
  });

  describe('PUBLISH properties between clients (§3.3.2.3)', () => {
    const properties: PublishProperties = {
      payloadFormatIndicator: true,
      contentType: 'application/json',
      responseTopic: 'props/reply',
      correlationData: Buffer.from([0x00, 0x01, 0xfe, 0xff]),
      userProperties: { first: '1', dup: ['a', 'b'], last: 'z' },
    };
    const expectProperties = (got: PublishProperties | undefined) => {
      assert.equal(got?.payloadFormatIndicator, true);
      assert.equal(got?.contentType, 'application/json');
      assert.equal(got?.responseTopic, 'props/reply');
      assert.deepEqual(got?.correlationData, Buffer.from([0x00, 0x01, 0xfe, 0xff]));
      assert.deepEqual({ ...got?.userProperties }, { first: '1', dup: ['a', 'b'], last: 'z' });
      assert.deepEqual(Object.keys(got?.userProperties ?? {}), ['first', 'dup', 'last'], 'order of user properties');
    };

    it('[MQTT-3.3.2-4][MQTT-3.3.2-15][MQTT-3.3.2-16][MQTT-3.3.2-17][MQTT-3.3.2-18][MQTT-3.3.2-20] v5 → v5 on any topic: user properties, payload format, content type, response topic, correlation data unchanged; a 3.1.1 subscriber gets the message without them', async () => {
      const sub5 = await v5('props-sub5');
      const sub4 = await v4('props-sub4');
      await sub5.client.subscribeAsync('plant/line1/#', { qos: 1 });
      await sub4.client.subscribeAsync('plant/line1/#', { qos: 1 });
      await pub.publishAsync('plant/line1/temp', '{"t":21}', { qos: 1, properties });
      await waitFor(() => sub5.got.length === 1 && sub4.got.length === 1, 5000, 'both deliveries');
      expectProperties(sub5.got[0]!.properties);
      assert.equal(sub5.got[0]!.payload, '{"t":21}');
      assert.equal(sub4.got[0]!.payload, '{"t":21}');
      assert.equal(sub4.got[0]!.properties, undefined);
    });

    it('[MQTT-3.3.1-5] a retained message keeps its properties for a later v5 subscriber', async () => {
      await pub.publishAsync('plant/retained/props', 'kept', { qos: 1, retain: true, properties });
      const late = await v5('props-late');
      await late.client.subscribeAsync('plant/retained/#', { qos: 1 });
      await waitFor(() => late.got.length === 1, 5000, 'the retained message');
      assert.equal(late.got[0]!.retain, true);
      expectProperties(late.got[0]!.properties);
    });

    it('paho → paho and mqtt.js: user properties keep duplicate names and their order per name, the other properties arrive unchanged', async () => {
      const publisher = pool.peer();
      const subscriber = pool.peer();
      assert.equal((await publisher.connect(port, { clientId: 'paho-props-pub' })).reasonCode, 0);
      assert.equal((await subscriber.connect(port, { clientId: 'paho-props-sub' })).reasonCode, 0);
      assert.deepEqual(await subscriber.subscribe({ topic: 'paho/props/#', qos: 1 }), [1]);
      const js = await v5('paho-props-js');
      await js.client.subscribeAsync('paho/props/#', { qos: 1 });
      const userProperties = [
        ['k', '1'],
        ['a', 'x'],
        ['k', '2'],
      ];
      await publisher.publish('paho/props/1', 'hello', 1, {
        userProperties,
        contentType: 'text/plain',
        payloadFormatIndicator: 1,
        responseTopic: 'paho/props/reply',
        correlationData: 'cafe01',
      });
      await waitFor(() => subscriber.messages().length === 1 && js.got.length === 1, 5000, 'paho and mqtt.js deliveries');
      const got = subscriber.messages()[0]!;
      assert.equal(got.payload, 'hello');
      // Every pair arrives, and pairs of one name keep their order. Across names the order is
      // regrouped by name: mqtt-packet (the parser of aedes and mqtt.js) holds user properties as
      // an object of name → value(s). A documented limit of [MQTT-3.3.2-18].
      assert.deepEqual(got.properties.userProperties, [
        ['k', '1'],
        ['k', '2'],
        ['a', 'x'],
      ]);
      assert.equal(got.properties.contentType, 'text/plain');
      assert.equal(got.properties.payloadFormatIndicator, 1);
      assert.equal(got.properties.responseTopic, 'paho/props/reply');
      assert.equal(got.properties.correlationData, 'cafe01');
      assert.deepEqual({ ...js.got[0]!.properties?.userProperties }, { k: ['1', '2'], a: 'x' });
      assert.deepEqual(js.got[0]!.properties?.correlationData, Buffer.from('cafe01', 'hex'));
    });

    it('mqtt.js v5 → mosquitto_sub -V mqttv5 (%P %C %D %R) and a 3.1.1 subscriber, together', async () => {
      const sub4 = await v4('mosq-props-v4');
      await sub4.client.subscribeAsync('mosq/props/#', { qos: 1 });
      const receiving = run(
        MOSQUITTO_SUB,
        [
          '-h',
          '127.0.0.1',
          '-p',
          String(port),
          '-V',
          'mqttv5',
          '-i',
          'mosq-props',
          '-q',
          '1',
          '-t',
          'mosq/props/#',
          '-C',
          '1',
          '-W',
          '15',
        ].concat(['-F', '%t|%p|%P|%C|%D|%R']),
        { timeoutMs: 20_000 },
      );
      await waitFor(() => subscribedIds.includes('mosq-props'), 10_000, 'mosquitto_sub to subscribe');
      await pub.publishAsync('mosq/props/1', 'hello', {
        qos: 1,
        properties: {
          userProperties: { origin: 'test' },
          contentType: 'text/plain',
          correlationData: Buffer.from('id-42'),
          responseTopic: 'mosq/reply',
        },
      });
      const result = await receiving;
      assert.equal(result.code, 0, result.stderr);
      assert.equal(result.stdout, 'mosq/props/1|hello|origin:test|text/plain|id-42|mosq/reply\n');
      await waitFor(() => sub4.got.length === 1, 5000, 'the 3.1.1 delivery');
      assert.equal(sub4.got[0]!.payload, 'hello');
    });
  });

  describe('Subscription Identifiers (§3.8.2.1.2, §3.3.2.3.8)', () => {
    it('§3.2.2.3.12: CONNACK does not say Subscription Identifiers Available = 0', async () => {
      const session = await v5('sid-connack');
      assert.notEqual(session.connack.properties?.subscriptionIdentifiersAvailable, false);
    });

    it('[MQTT-3.3.4-3][MQTT-3.3.4-4] ids 7 and 9 on overlapping filters both reach the client, an id-less subscription adds none', async () => {
      const sub = await v5('sid-overlap');
      await sub.client.subscribeAsync('sid/a/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
      await sub.client.subscribeAsync('sid/+/x', { qos: 1, properties: { subscriptionIdentifier: 9 } });
      await sub.client.subscribeAsync('sid/none/#', { qos: 1 });
      await pub.publishAsync('sid/a/x', 'both', { qos: 1 });
      await pub.publishAsync('sid/a/y', 'seven', { qos: 1 });
      await pub.publishAsync('sid/none/y', 'none', { qos: 1 });
      await marker(pub, sub.got, 'sid/a/marker');
      const both = sub.got.filter((d) => d.topic === 'sid/a/x');
      assert.ok(both.length === 1 || both.length === 2, `one or two copies, got ${both.length}`);
      assert.deepEqual(both.flatMap(subscriptionIds).sort(), [7, 9]);
      assert.deepEqual(sub.got.filter((d) => d.topic === 'sid/a/y').map(subscriptionIds), [[7]]);
      assert.deepEqual(sub.got.filter((d) => d.topic === 'sid/none/y').map(subscriptionIds), [[]]);
    });

    it('the identifier survives a session resume', async () => {
      const first = await v5('sid-resume', persistent(300));
      await first.client.subscribeAsync('sid/resume/#', { qos: 1, properties: { subscriptionIdentifier: 7 } });
      await first.client.endAsync();
      await pub.publishAsync('sid/resume/offline', 'queued', { qos: 1 });
      const back = await v5('sid-resume', persistent(300));
      assert.equal(back.connack.sessionPresent, true);
      await pub.publishAsync('sid/resume/live', 'live', { qos: 1 });
      await waitFor(() => payloads(back.got, 'sid/resume/').length === 2, 5000, 'queued and live');
      assert.deepEqual(back.got.map(subscriptionIds), [[7], [7]]);
    });

    it('paho subscribes with id 11 and gets it on the delivery', async () => {
      const peer = pool.peer();
      await peer.connect(port, { clientId: 'paho-sid' });
      assert.deepEqual(await peer.subscribe({ topic: 'paho/sid/#', qos: 1, subscriptionIdentifier: 11 }), [1]);
      await pub.publishAsync('paho/sid/1', 'x', { qos: 1 });
      await waitFor(() => peer.messages().length === 1, 5000, 'the delivery');
      assert.deepEqual(peer.messages()[0]!.properties.subscriptionIdentifiers, [11]);
    });
  });

  describe('Subscription Options (§3.8.3.1)', () => {
    it("[MQTT-3.8.3-3] No Local: the client does not get its own publishes, but gets others'", async () => {
      const sub = await v5('nl-js');
      await sub.client.subscribeAsync('nl/js/#', { qos: 1, nl: true });
      await sub.client.publishAsync('nl/js/self', 'own', { qos: 1 });
      await marker(pub, sub.got, 'nl/js/other');
      assert.deepEqual(
        sub.got.map((d) => d.topic),
        ['nl/js/other'],
      );
    });

    it('[MQTT-3.8.3-3] No Local with paho', async () => {
      const peer = pool.peer();
      await peer.connect(port, { clientId: 'paho-nl' });
      assert.deepEqual(await peer.subscribe({ topic: 'paho/nl/#', qos: 1, noLocal: true }), [1]);
      await peer.publish('paho/nl/self', 'own', 1);
      await pub.publishAsync('paho/nl/other', 'theirs', { qos: 1 });
      await waitFor(() => peer.messages().some((m) => m.topic === 'paho/nl/other'), 5000, 'the other client’s message');
      assert.deepEqual(
        peer.messages().map((m) => m.topic),
        ['paho/nl/other'],
      );
    });

    it('[MQTT-3.3.1-12][MQTT-3.3.1-13] Retain As Published: rap 0 forwards a live retained publish with RETAIN 0, rap 1 with RETAIN 1', async () => {
      const sub = await v5('rap');
      await sub.client.subscribeAsync('rap/off/#', { qos: 1, rap: false });
      await sub.client.subscribeAsync('rap/on/#', { qos: 1, rap: true });
      await pub.publishAsync('rap/off/1', 'a', { qos: 1, retain: true });
      await pub.publishAsync('rap/on/1', 'b', { qos: 1, retain: true });
      await waitFor(() => sub.got.length === 2, 5000, 'two live deliveries');
      assert.deepEqual(sub.got.map((d) => [d.topic, d.retain]).sort(), [
        ['rap/off/1', false],
        ['rap/on/1', true],
      ]);
    });

    it('[MQTT-3.3.1-9][MQTT-3.3.1-10][MQTT-3.3.1-11] Retain Handling 0: on every subscribe; 1: only for a new subscription; 2: never', async () => {
      for (const rh of [0, 1, 2]) await pub.publishAsync(`rh/${rh}/x`, `retained ${rh}`, { qos: 1, retain: true });
      const sub = await v5('rh');
      for (const rh of [0, 1, 2] as const) await sub.client.subscribeAsync(`rh/${rh}/#`, { qos: 1, rh });
      await marker(pub, sub.got, 'rh/2/marker');
      for (const rh of [0, 1, 2] as const) await sub.client.subscribeAsync(`rh/${rh}/#`, { qos: 1, rh });
      await marker(pub, sub.got, 'rh/2/marker');
      const count = (rh: number) => sub.got.filter((d) => d.topic === `rh/${rh}/x`).length;
      assert.deepEqual([count(0), count(1), count(2)], [2, 1, 0], 'retained deliveries for rh 0, 1, 2 after subscribing twice');
    });
  });

  describe('Will Delay Interval (§3.1.3.2.2)', () => {
    const willClient = (clientId: string): IClientOptions => ({
      ...persistent(300),
      will: {
        topic: `willd/${clientId}`,
        payload: Buffer.from(`${clientId} is gone`),
        qos: 1,
        retain: false,
        properties: { willDelayInterval: 2, contentType: 'text/plain', userProperties: { why: 'dropped' } },
      },
    });

    it('§3.1.3.2.2, [MQTT-3.1.2-8]: a will with delay 2 s is not published at once, but after the delay, with its publish properties and without willDelayInterval', async () => {
      const watcher = await v5('willd-watcher-1');
      await watcher.client.subscribeAsync('willd/#', { qos: 1 });
      const dying = await v5('willd-late', willClient('willd-late'));
      const droppedAt = Date.now();
      dying.client.stream.destroy();
      await marker(pub, watcher.got, 'willd/marker-1');
      assert.equal(
        watcher.got.some((d) => d.topic === 'willd/willd-late'),
        false,
        'not published at once',
      );
      await waitFor(() => watcher.got.some((d) => d.topic === 'willd/willd-late'), 10_000, 'the delayed will');
      assert.ok(Date.now() - droppedAt >= 1500, `published ${Date.now() - droppedAt} ms after the drop`);
      const will = watcher.got.find((d) => d.topic === 'willd/willd-late')!;
      assert.equal(will.payload, 'willd-late is gone');
      assert.equal(will.properties?.contentType, 'text/plain');
      assert.deepEqual({ ...will.properties?.userProperties }, { why: 'dropped' });
      assert.equal((will.properties as Record<string, unknown> | undefined)?.willDelayInterval, undefined);
    });

    it('[MQTT-3.1.3-9] a client back (same id, session kept) within the delay: the will is never published', async () => {
      const watcher = await v5('willd-watcher-2');
      await watcher.client.subscribeAsync('willd/#', { qos: 1 });
      const dying = await v5('willd-back', willClient('willd-back'));
      await dying.client.subscribeAsync('willd-back/own', { qos: 1 });
      dying.client.stream.destroy();
      await waitFor(() => dying.client.connected === false, 3000, 'the drop');
      const back = await v5('willd-back', persistent(300));
      assert.equal(back.connack.sessionPresent, true);
      await delay(3500);
      await marker(pub, watcher.got, 'willd/marker-2');
      assert.equal(
        watcher.got.some((d) => d.topic === 'willd/willd-back'),
        false,
      );
    });
  });

  describe('Shared Subscriptions (§4.8.2)', () => {
    it('§3.2.2.3.13, [MQTT-3.8.3-4]: CONNACK says Shared Subscription Available = 0 and $share/g/plant/# gets SUBACK 0x9E', async () => {
      const session = await v5('share-js');
      assert.equal(session.connack.properties?.sharedSubscriptionAvailable, false);
      assert.deepEqual(await subscribeGranted(session.client, ['$share/g/plant/#', 'share/plain'], 1), [
        RC.sharedSubscriptionsNotSupported,
        1,
      ]);
      assert.equal(session.client.connected, true);
    });

    it('paho sees Shared Subscription Available = 0 and SUBACK 0x9E', async () => {
      const peer = pool.peer();
      const connack = await peer.connect(port, { clientId: 'paho-share' });
      assert.equal((connack.properties as Record<string, unknown>).sharedSubscriptionAvailable, 0);
      assert.deepEqual(await peer.subscribe({ topic: '$share/g/plant/#', qos: 1 }), [RC.sharedSubscriptionsNotSupported]);
    });

    it('3.1.1: $share/g/x gets SUBACK 0x80, never a grant that delivers nothing', async () => {
      const session = await v4('share-v4');
      assert.deepEqual(await subscribeGranted(session.client, ['$share/g/x'], 1), [0x80]);
    });
  });

  describe('Negative acknowledgements of a denied PUBLISH (§3.4.2.1, §3.5.2.1, §4.3.3)', () => {
    it('[MQTT-3.4.2-1] QoS 1 denied: PUBACK 0x87, the connection stays and later allowed messages are delivered', async () => {
      const sub = await v5('deny-watch-1');
      await sub.client.subscribeAsync('#', { qos: 1 });
      const raw = pool.raw(await raw5(port, { clientId: 'deny-q1' }));
      raw.send(rawPublish('denied/q1', 'no', 1, 11));
      const puback = await raw.next('puback');
      assert.deepEqual([puback.messageId, puback.reasonCode], [11, RC.notAuthorized]);
      raw.send(rawPublish('allowed/q1', 'yes', 1, 12));
      await waitFor(() => sub.got.some((d) => d.topic === 'allowed/q1'), 5000, 'the allowed message');
      assert.equal(
        sub.got.some((d) => d.topic === 'denied/q1'),
        false,
      );
      await stillServed(raw);
    });

    it('§3.5.2.1, [MQTT-4.3.3-4]: QoS 2 denied: PUBREC 0x87 ends the flow (no PUBREL needed), the connection stays', async () => {
      const sub = await v5('deny-watch-2');
      await sub.client.subscribeAsync('#', { qos: 1 });
      const raw = pool.raw(await raw5(port, { clientId: 'deny-q2' }));
      raw.send(rawPublish('denied/q2', 'no', 2, 21));
      const pubrec = await raw.next('pubrec');
      assert.deepEqual([pubrec.messageId, pubrec.reasonCode], [21, RC.notAuthorized]);
      // The same id again, as a new message: allowed this time.
      raw.send(rawPublish('allowed/q2', 'yes', 2, 21));
      await waitFor(() => raw.of('pubrec').length === 2 || raw.isClosed, 5000, 'the second PUBREC');
      assert.equal(raw.of('pubrec')[1]?.reasonCode, 0);
      raw.send({ cmd: 'pubrel', messageId: 21 });
      await raw.next('pubcomp');
      await waitFor(() => sub.got.some((d) => d.topic === 'allowed/q2'), 5000, 'the allowed message');
      assert.equal(
        sub.got.some((d) => d.topic === 'denied/q2'),
        false,
      );
      await stillServed(raw);
    });

    it('QoS 0 denied: dropped silently, the connection stays', async () => {
      const sub = await v5('deny-watch-0');
      await sub.client.subscribeAsync('#', { qos: 1 });
      const raw = pool.raw(await raw5(port, { clientId: 'deny-q0' }));
      raw.send(rawPublish('denied/q0', 'no', 0));
      raw.send(rawPublish('allowed/q0', 'yes', 0));
      await waitFor(() => sub.got.some((d) => d.topic === 'allowed/q0'), 5000, 'the allowed message');
      assert.equal(
        sub.got.some((d) => d.topic === 'denied/q0'),
        false,
      );
      await stillServed(raw);
      assert.deepEqual(raw.of('disconnect'), []);
    });

    it('3.1.1: a denied QoS 1 publish disconnects (3.1.1 has no negative acknowledgement)', async () => {
      const session = await v4('deny-v4');
      session.client.publish('denied/v4', 'no', { qos: 1 }, () => undefined);
      assert.equal(await closedWithin(session.client, 5000), true);
    });
  });

  describe('Receive Maximum (§3.2.2.3.3, §4.9)', () => {
    it('§4.9: CONNACK Receive Maximum = limits.maxInflight; a 6th unreleased QoS 2 PUBLISH gets DISCONNECT 0x93', async () => {
      const raw = pool.raw(await RawClient.open(port, 5));
      raw.send(connect5({ clientId: 'recv-max' }));
      const connack = await raw.next('connack');
      assert.equal(connack.properties?.receiveMaximum, MAX_INFLIGHT);
      for (let id = 1; id <= MAX_INFLIGHT; id++) raw.send(rawPublish('recvmax/x', String(id), 2, id));
      await waitFor(() => raw.of('pubrec').length === MAX_INFLIGHT || raw.isClosed, 5000, 'five PUBRECs');
      await stillServed(raw);
      raw.send(rawPublish('recvmax/x', 'one too many', 2, MAX_INFLIGHT + 1));
      const disconnect = await raw.next('disconnect', 5000);
      assert.equal(disconnect.reasonCode, RC.receiveMaximumExceeded);
      assert.equal(await raw.closedWithin(3000), true);
    });

    it('QoS 1 beyond the Receive Maximum (mqtt.js 5 does not honour it) is read as PUBACKs go out: all acknowledged, in order, the client stays', async () => {
      const burst = await v5('recv-max-qos1');
      const sub = await v5('recv-max-qos1-sub');
      await sub.client.subscribeAsync('recvmax/burst/#', { qos: 1 });
      const count = 60 * MAX_INFLIGHT;
      // All at once: far more unacknowledged than CONNACK's Receive Maximum allows.
      await Promise.all(
        Array.from({ length: count }, (_, index) => burst.client.publishAsync('recvmax/burst/x', String(index), { qos: 1 })),
      );
      await waitFor(() => payloads(sub.got, 'recvmax/burst/').length === count, 10_000, 'every message delivered');
      assert.deepEqual(
        payloads(sub.got, 'recvmax/burst/'),
        Array.from({ length: count }, (_, index) => String(index)),
      );
      assert.equal(burst.client.connected, true);
    });
  });

  describe('Topic Alias Maximum (§3.2.2.3.8, §3.3.2.3.4)', () => {
    let maximum = 0;

    it('CONNACK Topic Alias Maximum > 0; an alias defined then used alone delivers on its topic', async () => {
      const sub = await v5('alias-watch');
      await sub.client.subscribeAsync('alias/#', { qos: 1 });
      const raw = pool.raw(await RawClient.open(port, 5));
      raw.send(connect5({ clientId: 'alias-ok' }));
      maximum = (await raw.next('connack')).properties?.topicAliasMaximum ?? 0;
      assert.ok(maximum > 0, `topicAliasMaximum ${maximum}`);
      raw.send(rawPublish('alias/one', 'defined', 1, 1, { topicAlias: maximum }));
      raw.send(rawPublish('', 'used', 1, 2, { topicAlias: maximum }));
      await waitFor(() => sub.got.length === 2, 5000, 'two deliveries');
      assert.deepEqual(
        sub.got.map((d) => `${d.topic} ${d.payload}`),
        ['alias/one defined', 'alias/one used'],
      );
    });

    it('[MQTT-3.3.2-9] an alias above the maximum gets DISCONNECT 0x94', async () => {
      const raw = pool.raw(await raw5(port, { clientId: 'alias-above' }));
      const announced = raw.of('connack')[0]!.properties?.topicAliasMaximum ?? 0;
      raw.send(rawPublish('alias/above', 'x', 0, undefined, { topicAlias: announced + 1 }));
      assert.equal((await raw.next('disconnect')).reasonCode, RC.topicAliasInvalid);
      assert.equal(await raw.closedWithin(3000), true);
    });

    it('[MQTT-3.3.2-8] alias 0 gets DISCONNECT 0x94 (or 0x82)', async () => {
      const raw = pool.raw(await raw5(port, { clientId: 'alias-zero' }));
      // PUBLISH QoS 0, topic "a/b", properties: Topic Alias (0x23) = 0, payload "x".
      raw.write(Buffer.from([0x30, 0x0a, 0x00, 0x03, 0x61, 0x2f, 0x62, 0x03, 0x23, 0x00, 0x00, 0x78]));
      // §3.3.2.3.4 forbids alias 0 without naming the reason code: 0x94 (Topic Alias invalid) or 0x82 (Protocol Error).
      assert.ok([RC.topicAliasInvalid, 0x82].includes((await raw.next('disconnect')).reasonCode as 0x94));
      assert.equal(await raw.closedWithin(3000), true);
    });
  });

  describe('Maximum Packet Size (§3.1.2.11.4, §3.2.2.3.6)', () => {
    it('[MQTT-3.2.2-15] CONNACK Maximum Packet Size = limits.maxPacketSize; a bigger PUBLISH gets DISCONNECT 0x95, then the close', async () => {
      const raw = pool.raw(await raw5(port, { clientId: 'size-v5' }));
      assert.equal(raw.of('connack')[0]!.properties?.maximumPacketSize, MAX_PACKET_SIZE);
      raw.send(rawPublish('size/big', Buffer.alloc(MAX_PACKET_SIZE + 10, 0x61), 0));
      assert.equal((await raw.next('disconnect')).reasonCode, RC.packetTooLarge);
      assert.equal(await raw.closedWithin(3000), true);
    });

    it('3.1.1: a bigger PUBLISH closes the connection', async () => {
      const raw = pool.raw(await RawClient.connect(port, { clientId: 'size-v4' }));
      await raw.next('connack');
      raw.send({ cmd: 'publish', topic: 'size/big', payload: Buffer.alloc(MAX_PACKET_SIZE + 10, 0x61), qos: 0, retain: false, dup: false });
      assert.equal(await raw.closedWithin(3000), true);
    });

    it("[MQTT-3.1.2-24] a delivery bigger than the client's Maximum Packet Size is not sent to it", async () => {
      const small = await v5('size-small', { properties: { maximumPacketSize: 200 } });
      await small.client.subscribeAsync('size/deliver/#', { qos: 1 });
      await pub.publishAsync('size/deliver/big', 'x'.repeat(500), { qos: 1 });
      await marker(pub, small.got, 'size/deliver/marker');
      assert.deepEqual(
        small.got.map((d) => d.topic),
        ['size/deliver/marker'],
      );
    });
  });
});

describe('Session expiry capped by broker.limits.maxSessionExpiry (§3.2.2.3.2)', () => {
  let broker: BrokerUnderTest;
  const pool = new Pool();
  let pub: MqttClient;

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      allowAnonymous: true,
      limits: { maxSessionExpiry: '2s' },
    } as BrokerInput);
    pub = pool.keep(await open(broker.url(), { protocolVersion: 5, clientId: 'cap-pub' })).client;
  });

  after(async () => {
    await pool.close();
    await broker?.close();
  });

  it('§3.2.2.3.2: a client asking 0xFFFFFFFF gets CONNACK sessionExpiryInterval 2, and its session ends 2 s after it leaves', async () => {
    const first = pool.keep(
      await open(broker.url(), { protocolVersion: 5, clientId: 'cap-v5', clean: false, properties: { sessionExpiryInterval: 0xffffffff } }),
    );
    assert.equal(first.connack.properties?.sessionExpiryInterval, 2);
    await first.client.subscribeAsync('cap/v5/#', { qos: 1 });
    await first.client.endAsync();
    await pub.publishAsync('cap/v5/1', 'expires with the session', { qos: 1 });
    await delay(3500);
    const back = pool.keep(
      await open(broker.url(), { protocolVersion: 5, clientId: 'cap-v5', clean: false, properties: { sessionExpiryInterval: 0xffffffff } }),
    );
    assert.equal(back.connack.sessionPresent, false);
    await back.client.subscribeAsync('cap/marker', { qos: 1 });
    await marker(pub, back.got, 'cap/marker');
    assert.deepEqual(payloads(back.got, 'cap/v5/'), []);
  });

  it('3.1.1: a Clean Session 0 session ends after maxSessionExpiry offline too', async () => {
    const first = pool.keep(await open(broker.url(), { protocolVersion: 4, clientId: 'cap-v4', clean: false }));
    await first.client.subscribeAsync('cap/v4/#', { qos: 1 });
    await first.client.endAsync();
    await pub.publishAsync('cap/v4/1', 'expires with the session', { qos: 1 });
    const within = pool.keep(await open(broker.url(), { protocolVersion: 4, clientId: 'cap-v4', clean: false }));
    assert.equal(within.connack.sessionPresent, true, 'present within the cap');
    await waitFor(() => within.got.length === 1, 5000, 'the queued message');
    await within.client.endAsync();
    await pub.publishAsync('cap/v4/2', 'expires with the session', { qos: 1 });
    await delay(3500);
    const back = pool.keep(await open(broker.url(), { protocolVersion: 4, clientId: 'cap-v4', clean: false }));
    assert.equal(back.connack.sessionPresent, false);
    await back.client.subscribeAsync('cap/marker4', { qos: 1 });
    await marker(pub, back.got, 'cap/marker4');
    assert.deepEqual(payloads(back.got, 'cap/v4/'), []);
  });
});

describe('Server Keep Alive (§3.2.2.3.14)', () => {
  const pool = new Pool();
  const brokers: BrokerUnderTest[] = [];

  after(async () => {
    await pool.close();
    await Promise.all(brokers.map((broker) => broker.close()));
  });

  const start = async (keepAlive: { min?: string; max?: string }) => {
    const broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { keepAlive } });
    brokers.push(broker);
    return broker;
  };

  it('[MQTT-3.2.2-21] keepAlive.max 30 s: a v5 client asking 300 is accepted with Server Keep Alive 30; below min 5 s (0) it gets 5', async () => {
    const broker = await start({ min: '5s', max: '30s' });
    const long = pool.keep(await open(broker.url(), { protocolVersion: 5, clientId: 'ka-300', keepalive: 300 }));
    assert.equal(long.connack.properties?.serverKeepAlive, 30);
    const none = pool.raw(await raw5(broker.port(), { clientId: 'ka-0', keepalive: 0 }));
    assert.equal(none.of('connack')[0]!.properties?.serverKeepAlive, 5);
    const fine = pool.raw(await raw5(broker.port(), { clientId: 'ka-10', keepalive: 10 }));
    const told = fine.of('connack')[0]!.properties?.serverKeepAlive;
    assert.ok(told === undefined || told === 10, `serverKeepAlive ${String(told)} for a keep-alive within the limits`);
  });

  it('3.1.1: a keep-alive above keepAlive.max is still refused', async () => {
    const broker = await start({ max: '30s' });
    const outcome = await tryConnect(broker.url(), { protocolVersion: 4, clientId: 'ka-v4', keepalive: 300, connectTimeout: 3000 });
    if (outcome.ok) pool.keep({ client: outcome.client, got: [], connack: {} as IConnackPacket });
    assert.equal(outcome.ok, false);
  });

  it('[MQTT-3.1.2-22] the server enforces 1.5 × its Server Keep Alive: a silent client told 2 s is closed within 10 s', async () => {
    const broker = await start({ max: '2s' });
    const raw = pool.raw(await raw5(broker.port(), { clientId: 'ka-silent', keepalive: 300 }));
    assert.equal(raw.of('connack')[0]!.properties?.serverKeepAlive, 2);
    assert.equal(await raw.closedWithin(10_000), true);
  });
});

describe('Offline queue of a persistent session is bounded by broker.limits.maxInflight + maxQueued (both levels)', () => {
  const MAX_QUEUED = 50;
  let broker: BrokerUnderTest;
  const pool = new Pool();
  let pub: MqttClient;

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      allowAnonymous: true,
      limits: { maxQueued: MAX_QUEUED, maxInflight: MAX_INFLIGHT },
    });
    pub = pool.keep(await open(broker.url(), { protocolVersion: 5, clientId: 'queue-pub' })).client;
  });

  after(async () => {
    await pool.close();
    await broker?.close();
  });

  const cases: Array<[name: string, options: IClientOptions]> = [
    ['3.1.1 clean=false', { protocolVersion: 4, clean: false }],
    ['v5 expiry 300', { protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } }],
  ];
  for (const [name, options] of cases) {
    it(`${name}: 80 QoS 1 messages while offline, at most maxInflight + maxQueued kept; a warning names the client`, async () => {
      const clientId = `queue-${options.protocolVersion}`;
      const prefix = `queue/${options.protocolVersion}/`;
      const first = pool.keep(await open(broker.url(), { ...options, clientId }));
      await first.client.subscribeAsync(`${prefix}#`, { qos: 1 } as IClientSubscribeOptions);
      await first.client.endAsync();
      for (let index = 0; index < 80; index++) await pub.publishAsync(`${prefix}${index}`, String(index), { qos: 1 });
      const back = pool.keep(await open(broker.url(), { ...options, clientId }));
      assert.equal(back.connack.sessionPresent, true);
      // The session's queue is delivered as its client acknowledges, and a new message may overtake
      // it: wait for the queue, then a marker published after it shows that nothing more comes.
      const queuedNow = () => back.got.filter((d) => !d.topic.startsWith(`${prefix}marker`)).length;
      await waitFor(
        () => queuedNow() >= MAX_INFLIGHT + MAX_QUEUED,
        10_000,
        () => `the queued messages (${queuedNow()} so far)`,
      );
      await marker(pub, back.got, `${prefix}marker`);
      const queued = queuedNow();
      // A session keeps what the flow control lets wait for a connected client: maxInflight + maxQueued.
      assert.equal(queued, MAX_INFLIGHT + MAX_QUEUED, `${queued} queued messages delivered`);
      assert.equal(broker.broker.stats.sessionDropped > 0, true);
      const warned = broker.logs.records().filter((record) => record.level >= 40 && JSON.stringify(record).includes(clientId));
      assert.ok(warned.length > 0, 'a warning names the client id');
    });
  }
});
