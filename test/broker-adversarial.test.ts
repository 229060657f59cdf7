// Adversarial tests of the integrated broker: hostile or careless MQTT clients, sequences rather
// than steady states (takeover storms, expiry races, refused QoS 2 flows reusing packet ids,
// forged acknowledgements, floods, frozen subscribers, edge packets crafted byte by byte).
// References are to the OASIS MQTT 5.0 standard (normative ids [MQTT-x.y.z-n], sections §x.y.z).
//
// The broker runs in this process: every test also checks that nothing was left unhandled
// (unhandledRejection / uncaughtException) while it ran.
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { IConnectPacket, IPublishPacket } from 'mqtt-packet';
import {
  BrokerUnderTest,
  type BrokerInput,
  CLIENT_DEFAULTS,
  connectClient,
  endAll,
  type Message,
  connectPacket,
  openRaw5,
  publishPacket,
  RawClient,
  recordMessages,
  roundTrip,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const TCP: NonNullable<BrokerInput>['listeners'] = [{ type: 'tcp', host: '127.0.0.1', port: 0 }];

// ---- process-wide watch: the broker is in-process -------------------------------------------------
const unhandled: string[] = [];
const onRejection = (reason: unknown) => unhandled.push(`unhandledRejection: ${String((reason as Error)?.stack ?? reason)}`);
const onException = (error: Error) => unhandled.push(`uncaughtException: ${error.stack ?? String(error)}`);
const warnings: string[] = [];
const onWarning = (warning: Error) => warnings.push(`${warning.name}: ${warning.message}`);
process.on('unhandledRejection', onRejection);
process.on('uncaughtException', onException);
process.on('warning', onWarning);

beforeEach(() => {
  unhandled.length = 0;
  warnings.length = 0;
});
afterEach(() => {
  assert.deepEqual(unhandled, [], 'nothing may be left unhandled in the broker process');
});
after(() => {
  process.off('unhandledRejection', onRejection);
  process.off('uncaughtException', onException);
  process.off('warning', onWarning);
});

// ---- helpers -------------------------------------------------------------------------------------

const rnd = () => Math.random().toString(36).slice(2, 10);

const connect5 = (connect: Partial<IConnectPacket> = {}): IConnectPacket => connectPacket(5, connect);
const connect4 = (connect: Partial<IConnectPacket> = {}): IConnectPacket => connectPacket(4, connect);

/** Raw MQTT 5 connection, CONNACK 0 required. */
const raw5 = (port: number, connect: Partial<IConnectPacket> = {}): Promise<RawClient> => openRaw5(port, connect5(connect));

/** The connection is still served: PINGREQ gets its PINGRESP. */
async function stillServed(raw: RawClient, what = 'connection'): Promise<void> {
  const before = raw.of('pingresp').length;
  raw.send({ cmd: 'pingreq' });
  await waitFor(() => raw.of('pingresp').length > before || raw.isClosed, 5000, `PINGRESP on the ${what}`);
  assert.equal(raw.isClosed, false, `the ${what} was closed`);
}

/** The broker closed the connection, telling why (DISCONNECT reason) if it did: the reason or undefined. */
async function cutWith(raw: RawClient, timeoutMs = 5000): Promise<number | undefined> {
  const closed = await raw.closedWithin(timeoutMs);
  assert.ok(closed, `the broker kept the connection open; got ${JSON.stringify(raw.packets.map((p) => p.cmd))}`);
  return raw.of('disconnect')[0]?.reasonCode;
}

function varInt(value: number): Buffer {
  const bytes: number[] = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    bytes.push(byte);
  } while (value > 0);
  return Buffer.from(bytes);
}

function utf8(text: string): Buffer {
  const body = Buffer.from(text);
  const length = Buffer.alloc(2);
  length.writeUInt16BE(body.length);
  return Buffer.concat([length, body]);
}

function u16(value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  return b;
}

function u32(value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
}

/** A whole packet from its first byte and its body (remaining length computed). */
function frame(first: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([first]), varInt(body.length), body]);
}

/** MQTT 5 properties block: its length then the bytes. */
function props(...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([varInt(body.length), body]);
}

/** mqtt.js v5 client recording deliveries with properties. */
interface Live {
  client: MqttClient;
  got: Array<Message & { properties?: IPublishPacket['properties'] }>;
  sessionPresent: boolean;
}

async function live(url: string, options: IClientOptions): Promise<Live> {
  const client = mqtt.connect(url, { ...CLIENT_DEFAULTS, ...options });
  const got: Live['got'] = [];
  client.on('message', (topic, payload, packet) =>
    got.push({ topic, payload: payload.toString(), qos: packet.qos, retain: packet.retain, properties: packet.properties }),
  );
  client.on('error', () => undefined);
  const connack = await new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('close', () => reject(new Error(`${String(options.clientId)}: closed before CONNACK`)));
  });
  return { client, got, sessionPresent: connack.sessionPresent };
}

// ==================================================================================================

describe('adversarial clients against the integrated broker', () => {
  let broker: BrokerUnderTest;
  let port: number;
  let url: string;
  /** A 3.1.1 observer subscribed to "#" and a v5 publisher, for everyone. */
  let observer: MqttClient;
  let seen: Message[];
  let pub: MqttClient;
  const raws: RawClient[] = [];
  const clients: MqttClient[] = [];
  const keep = <T extends RawClient | MqttClient>(c: T): T => {
    if (c instanceof RawClient) raws.push(c);
    else clients.push(c);
    return c;
  };

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      allowAnonymous: true,
      acl: [{ publish: ['#'], subscribe: ['#'], deny: { publish: ['denied/#'] } }],
      limits: { maxInflight: 5, maxQueued: 1000 },
    });
    port = broker.port();
    url = broker.url();
    observer = await connectClient(url, { clientId: 'observer', protocolVersion: 4 });
    seen = recordMessages(observer);
    // Not "#": the flood tests would cut it (maxInflight + maxQueued).
    await observer.subscribeAsync(['+/marker', 'race/+/marker', 'adv/reuse', 'denied/#', 'adv/will/#', 'adv/up/#'], { qos: 1 });
    pub = await connectClient(url, { clientId: 'publisher', protocolVersion: 5 });
  });

  afterEach(async () => {
    for (const raw of raws.splice(0)) raw.destroy();
    await endAll(clients.splice(0));
  });

  after(async () => {
    await endAll([observer, pub]);
    await broker?.close();
  });

  /** The broker still serves: a fresh v5 and 3.1.1 client each round-trip a message. */
  async function brokerServes(tag: string): Promise<void> {
    const sub = keep(await connectClient(url, { clientId: `check-${rnd()}`, protocolVersion: 5 }));
    const got = recordMessages(sub);
    await sub.subscribeAsync(`check/${tag}`, { qos: 1 });
    const p4 = keep(await connectClient(url, { clientId: `check4-${rnd()}`, protocolVersion: 4 }));
    await roundTrip(p4, got, `check/${tag}`, `alive-${tag}`, 10_000);
  }

  // ---- interleavings ---------------------------------------------------------------------------

  describe('takeover storms and expiry races (§3.1.4, [MQTT-3.1.4-3], §3.1.2.11)', () => {
    it('20 connections with one client id at once (3.1.1 and 5, Clean Start 0/1): one stays, the session is whole or absent, the broker serves', async () => {
      const id = `storm-${rnd()}`;
      for (let round = 0; round < 3; round++) {
        // A stored session with a subscription.
        const base = await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } });
        base.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${id}/t`, qos: 1 }] });
        await base.next('suback');
        base.destroy();
        await delay(100);

        const storm = await Promise.all(
          Array.from({ length: 20 }, async (_, i) => {
            const v5 = i % 2 === 1;
            const raw = keep(await RawClient.open(port, v5 ? 5 : 4));
            const clean = i % 4 === 2 || i % 4 === 3;
            raw.send(
              v5 ? connect5({ clientId: id, clean, properties: { sessionExpiryInterval: 300 } }) : connect4({ clientId: id, clean }),
            );
            return raw;
          }),
        );
        await waitFor(
          () => storm.filter((r) => !r.isClosed).length <= 1,
          15_000,
          () =>
            `at most one of the storm open; open: ${JSON.stringify(
              storm.flatMap((r, i) =>
                r.isClosed
                  ? []
                  : [
                      {
                        i,
                        packets: r.packets.map(
                          (p) =>
                            `${p.cmd}${'reasonCode' in p ? `:${String(p.reasonCode)}` : ''}${'returnCode' in p ? `:${String(p.returnCode)}` : ''}`,
                        ),
                      },
                    ],
              ),
            )}; aedes connected: ${broker.broker.aedes.connectedClients}`,
        );
        await delay(300);
        const open = storm.filter((r) => !r.isClosed);
        assert.equal(open.length, 1, `round ${round}: exactly one of the 20 connections stays`);
        await stillServed(open[0]!, 'survivor');
        assert.ok(broker.broker.aedes.connectedClients >= 1);
        // Every connection that was taken over and was MQTT 5 after its CONNACK was told 0x8E (or never got a CONNACK).
        for (const raw of storm) raw.destroy();
        await delay(200);

        // Whatever the order, the session is whole or gone: sessionPresent 1 ⇒ its subscriptions deliver.
        const check = keep(await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } }));
        const present = check.of('connack')[0]!.sessionPresent;
        await pub.publishAsync(`${id}/t`, `r${round}`, { qos: 1 });
        await pub.publishAsync(`${id}/marker`, `m${round}`, { qos: 1 });
        await waitFor(() => seen.some((m) => m.payload === `m${round}` && m.topic === `${id}/marker`), 5000, 'marker');
        await delay(300);
        const delivered = check.of('publish').some((p) => p.topic === `${id}/t` && p.payload.toString() === `r${round}`);
        if (present)
          assert.ok(delivered, `round ${round}: sessionPresent 1 but its subscription ${id}/t delivered nothing (a half-wiped session)`);
        check.destroy();
        await delay(100);
      }
      await brokerServes('storm');
    });

    it('a session with expiry 1 s taken up again around its expiry: sessionPresent matches what the session still delivers', async () => {
      const problems: string[] = [];
      const waits = [800, 900, 950, 980, 1000, 1010, 1020, 1050, 1100, 1200];
      for (const [index, wait] of waits.entries()) {
        const id = `race-${index}-${rnd()}`;
        const topic = `race/${index}`;
        const first = await live(url, { clientId: id, protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 1 } });
        await first.client.subscribeAsync(topic, { qos: 1, properties: { subscriptionIdentifier: 42 } });
        await first.client.endAsync();
        await delay(wait);
        const again = keep(await RawClient.open(port, 5));
        again.send(connect5({ clientId: id, clean: false, properties: { sessionExpiryInterval: 1 } }));
        const connack = await again.next('connack');
        await pub.publishAsync(topic, `p${index}`, { qos: 1 });
        await pub.publishAsync(`${topic}/marker`, 'm', { qos: 1 });
        await waitFor(() => seen.some((m) => m.topic === `${topic}/marker`), 5000, 'marker');
        await delay(200);
        const delivery = again.of('publish').find((p) => p.topic === topic);
        if (connack.sessionPresent && !delivery) problems.push(`after ${wait} ms: sessionPresent 1 but the subscription is gone`);
        if (!connack.sessionPresent && delivery) problems.push(`after ${wait} ms: sessionPresent 0 but the old subscription delivered`);
        if (delivery && delivery.properties?.subscriptionIdentifier !== 42)
          problems.push(`after ${wait} ms: delivered without its subscription identifier 42 (${JSON.stringify(delivery.properties)})`);
        again.destroy();
      }
      assert.deepEqual(problems, []);
    });

    it('3.1.1 and 5 alternating on one client id keep one session: subscriptions of both survive each handover', async () => {
      const id = `mix-${rnd()}`;
      const a = await live(url, { clientId: id, protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
      clients.push(a.client);
      await a.client.subscribeAsync(`${id}/a`, { qos: 1, properties: { subscriptionIdentifier: 5 } });
      await a.client.endAsync();
      const b = await live(url, { clientId: id, protocolVersion: 4, clean: false });
      clients.push(b.client);
      assert.equal(b.sessionPresent, true, '3.1.1 Clean Session 0 resumes the v5 session');
      await b.client.subscribeAsync(`${id}/b`, { qos: 1 });
      await pub.publishAsync(`${id}/a`, 'to-v3', { qos: 1 });
      await waitFor(() => b.got.some((m) => m.payload === 'to-v3'), 5000, 'v3 gets the v5 subscription');
      await b.client.endAsync();
      const c = await live(url, { clientId: id, protocolVersion: 5, clean: false, properties: { sessionExpiryInterval: 300 } });
      clients.push(c.client);
      assert.equal(c.sessionPresent, true);
      await pub.publishAsync(`${id}/a`, 'a2', { qos: 1 });
      await pub.publishAsync(`${id}/b`, 'b2', { qos: 1 });
      await waitFor(
        () => c.got.some((m) => m.payload === 'a2') && c.got.some((m) => m.payload === 'b2'),
        5000,
        'both subscriptions deliver',
      );
      const a2 = c.got.find((m) => m.payload === 'a2')!;
      assert.equal(a2.properties?.subscriptionIdentifier, 5, 'the identifier is session state [MQTT-3.8.2.1.2]');
      await c.client.endAsync();
    });
  });

  // ---- QoS 2 with refusals and forged acknowledgements --------------------------------------------

  describe('QoS 2 refusals and stray acknowledgements (§4.3.3, §3.6, §3.7)', () => {
    it('PUBREC 0x87 for a denied QoS 2 publish, then the same packet id reused for an allowed one: PUBREC 0, delivered once', async () => {
      const raw = keep(await raw5(port));
      for (let i = 0; i < 3; i++) {
        raw.send(publishPacket('denied/x', `d${i}`, 2, 77));
        await waitFor(() => raw.of('pubrec').length === 2 * i + 1 || raw.isClosed, 5000, 'PUBREC (refusal)');
        assert.equal(raw.of('pubrec')[2 * i]!.reasonCode, 0x87);
        raw.send(publishPacket('adv/reuse', `ok${i}`, 2, 77));
        await waitFor(() => raw.of('pubrec').length === 2 * i + 2 || raw.isClosed, 5000, 'PUBREC (allowed)');
        assert.equal(raw.of('pubrec')[2 * i + 1]!.reasonCode ?? 0, 0, 'the reused id starts a new flow [MQTT-4.3.3-?]');
        raw.send({ cmd: 'pubrel', messageId: 77 });
        await waitFor(() => raw.of('pubcomp').length === i + 1 || raw.isClosed, 5000, 'PUBCOMP');
      }
      await waitFor(() => seen.filter((m) => m.topic === 'adv/reuse').length >= 3, 5000, 'three deliveries');
      await delay(200);
      assert.deepEqual(
        seen.filter((m) => m.topic === 'adv/reuse').map((m) => m.payload),
        ['ok0', 'ok1', 'ok2'],
      );
      assert.equal(seen.filter((m) => m.topic === 'denied/x').length, 0);
      await stillServed(raw);
    });

    it("the subscriber's PUBREC 0x80 ends each delivery: no PUBREL for it, the window frees, the session does not resend it", async () => {
      const id = `rec80-${rnd()}`;
      const sub = keep(await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } }));
      sub.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'adv/rec80', qos: 2 }] });
      await sub.next('suback');
      // Refuse every delivery: twice the broker's maxInflight (5) must still all arrive.
      const refused = new Set<number>();
      sub.socket.on('data', () => {
        for (const p of sub.of('publish')) {
          if (p.messageId === undefined || refused.has(p.messageId)) continue;
          refused.add(p.messageId);
          sub.send({ cmd: 'pubrec', messageId: p.messageId, reasonCode: 0x80 });
        }
      });
      for (let i = 0; i < 12; i++) await pub.publishAsync('adv/rec80', `n${i}`, { qos: 2 });
      await waitFor(
        () => sub.of('publish').length >= 12,
        8000,
        () => `12 deliveries despite the refusals (got ${sub.of('publish').length})`,
      );
      await delay(300);
      assert.equal(sub.of('pubrel').length, 0, 'no PUBREL after a PUBREC ≥ 0x80 [MQTT-4.3.3-?] (§4.3.3: the flow ends)');
      sub.destroy();
      await delay(200);
      const back = keep(await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } }));
      await delay(800);
      const resent = back
        .of('publish')
        .filter((p) => p.topic === 'adv/rec80')
        .map((p) => p.payload.toString());
      assert.deepEqual(resent, [], 'refused deliveries are discarded, not resent to the session');
      assert.equal(back.of('pubrel').length, 0, 'nor their PUBREL');
      await stillServed(back);
    });

    it('PUBREL for packet ids never used (1000 of them): PUBCOMP 0x92 Packet Identifier not found, the connection stays', async () => {
      const raw = keep(await raw5(port));
      for (let id = 1; id <= 1000; id++) raw.send({ cmd: 'pubrel', messageId: id });
      await waitFor(() => raw.of('pubcomp').length >= 1000 || raw.isClosed, 10_000, 'a PUBCOMP per PUBREL');
      await stillServed(raw);
      const codes = new Set(raw.of('pubcomp').map((p) => p.reasonCode ?? 0));
      assert.deepEqual([...codes], [0x92], '§3.7.2.1: PUBCOMP for an unknown id says 0x92 Packet Identifier not found');
    });

    it("forged PUBACK/PUBCOMP for ids never sent do not widen the client's Receive Maximum [MQTT-3.3.4-9]", async () => {
      const sub = keep(await raw5(port, { properties: { receiveMaximum: 2 } }));
      sub.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'adv/rm/#', qos: 1 }] });
      await sub.next('suback');
      for (let i = 0; i < 10; i++) await pub.publishAsync(`adv/rm/${i}`, `m${i}`, { qos: 1 });
      await waitFor(() => sub.of('publish').length >= 2, 5000, 'two deliveries');
      await delay(500);
      assert.equal(sub.of('publish').length, 2, 'Receive Maximum 2 is honoured before anything is forged');
      // Acknowledgements for packet ids the broker never used.
      for (let id = 60_001; id <= 60_006; id++) sub.send({ cmd: 'puback', messageId: id, reasonCode: 0 });
      for (let id = 61_001; id <= 61_006; id++) sub.send({ cmd: 'pubcomp', messageId: id, reasonCode: 0 });
      await delay(1500);
      const unacked = sub.of('publish').length;
      assert.ok(unacked <= 2, `the broker sent ${unacked} QoS 1 messages unacknowledged to a client with Receive Maximum 2`);
    });
  });

  // ---- edge packets ---------------------------------------------------------------------------------

  describe('malformed and out-of-place packets on an MQTT 5 connection (§4.13)', () => {
    const cases: Array<{ name: string; bytes: () => Buffer; codes: number[] }> = [
      { name: 'AUTH without an agreed method', bytes: () => frame(0xf0, Buffer.from([0x18]), props()), codes: [0x82] },
      {
        name: 'a second CONNECT [MQTT-3.1.0-2]',
        bytes: () => frame(0x10, utf8('MQTT'), Buffer.from([5, 0x02]), u16(60), props(), utf8('again')),
        codes: [0x82],
      },
      {
        name: 'PUBLISH with QoS 3 [MQTT-3.3.1-4]',
        bytes: () => frame(0x36, utf8('adv/q3'), u16(1), props(), Buffer.from('x')),
        codes: [0x81],
      },
      { name: 'SUBSCRIBE without filters [MQTT-3.8.3-2]', bytes: () => frame(0x82, u16(9), props()), codes: [0x81, 0x82] },
      {
        name: 'PUBLISH with the Message Expiry Interval twice (§3.3.2.3.3: Protocol Error)',
        bytes: () =>
          frame(0x32, utf8('adv/dup-expiry'), u16(3), props(Buffer.from([0x02]), u32(10), Buffer.from([0x02]), u32(20)), Buffer.from('x')),
        codes: [0x81, 0x82],
      },
      {
        name: 'PUBLISH from a client with a Subscription Identifier ([MQTT-3.3.4-6], a Protocol Error)',
        bytes: () => frame(0x32, utf8('adv/with-subid'), u16(4), props(Buffer.from([0x0b]), varInt(7)), Buffer.from('x')),
        codes: [0x82],
      },
      {
        name: 'SUBSCRIBE with Subscription Identifier 0 (§3.8.2.1.2: Protocol Error)',
        bytes: () => frame(0x82, u16(5), props(Buffer.from([0x0b]), varInt(0)), utf8('adv/subid0'), Buffer.from([1])),
        codes: [0x82],
      },
      {
        name: 'SUBSCRIBE with two Subscription Identifiers (§3.8.2.1.2: Protocol Error)',
        bytes: () =>
          frame(0x82, u16(6), props(Buffer.from([0x0b]), varInt(3), Buffer.from([0x0b]), varInt(4)), utf8('adv/subid2'), Buffer.from([1])),
        codes: [0x81, 0x82],
      },
    ];
    for (const { name, bytes, codes } of cases) {
      it(`${name}: DISCONNECT ${codes.map((c) => `0x${c.toString(16)}`).join(' or ')}, then closed; others unaffected`, async () => {
        const raw = keep(await raw5(port));
        raw.write(bytes());
        const reason = await cutWith(raw);
        assert.ok(reason !== undefined && codes.includes(reason), `DISCONNECT reason ${String(reason)}, want ${codes.join('/')}`);
        await brokerServes(`edge-${rnd()}`);
      });
    }

    it('Subscription Identifier 268,435,455 (the largest) is kept and delivered', async () => {
      const raw = keep(await raw5(port));
      raw.send({
        cmd: 'subscribe',
        messageId: 1,
        properties: { subscriptionIdentifier: 268_435_455 },
        subscriptions: [{ topic: 'adv/bigid', qos: 1 }],
      });
      await raw.next('suback');
      await pub.publishAsync('adv/bigid', 'x', { qos: 1 });
      const delivery = await raw.next('publish');
      assert.equal(delivery.properties?.subscriptionIdentifier, 268_435_455);
      await stillServed(raw);
    });

    it('DISCONNECT with a Session Expiry Interval after a CONNECT with 0: DISCONNECT 0x82 [MQTT-3.14.2-2], the will is published, no session kept', async () => {
      const id = `disc-${rnd()}`;
      const raw = keep(
        await raw5(port, { clientId: id, will: { topic: `adv/will/${id}`, payload: Buffer.from('gone'), qos: 1, retain: false } }),
      );
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${id}/t`, qos: 1 }] });
      await raw.next('suback');
      raw.send({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 600 } });
      assert.equal(await cutWith(raw), 0x82);
      await waitFor(() => seen.some((m) => m.topic === `adv/will/${id}`), 5000, 'the will (the connection ended on a protocol error)');
      const back = keep(await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 10 } }));
      assert.equal(back.of('connack')[0]!.sessionPresent, false, 'the session ended with its connection');
    });

    it('DISCONNECT setting the Session Expiry Interval from 60 to 0 ends the session with the connection', async () => {
      const id = `disc0-${rnd()}`;
      const raw = keep(await raw5(port, { clientId: id, properties: { sessionExpiryInterval: 60 } }));
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${id}/t`, qos: 1 }] });
      await raw.next('suback');
      raw.send({ cmd: 'disconnect', reasonCode: 0, properties: { sessionExpiryInterval: 0 } });
      await raw.closedWithin(5000);
      await delay(200);
      await pub.publishAsync(`${id}/t`, 'queued?', { qos: 1 });
      const back = keep(await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 10 } }));
      assert.equal(back.of('connack')[0]!.sessionPresent, false);
      await delay(500);
      assert.equal(back.of('publish').length, 0);
    });
  });

  // ---- floods and memory --------------------------------------------------------------------------

  describe('floods and memory', () => {
    it('10,000 QoS 1 publishes from a client that never reads: memory bounded, others served, then it leaves while held', async () => {
      const heapBefore = process.memoryUsage().heapUsed;
      const flooder = keep(await raw5(port));
      flooder.socket.pause(); // never reads again: its PUBACKs pile up on the broker's side
      const payload = Buffer.alloc(1024, 0x61);
      const chunks: Buffer[] = [];
      const { generate } = await import('mqtt-packet');
      for (let i = 0; i < 10_000; i++)
        chunks.push(generate(publishPacket('adv/flood', payload, 1, (i % 65_535) + 1), { protocolVersion: 5 }));
      flooder.write(Buffer.concat(chunks));
      await delay(2000);
      await brokerServes('flood');
      const heapDuring = process.memoryUsage().heapUsed;
      assert.ok(heapDuring - heapBefore < 200 * 1024 * 1024, `heap grew ${Math.round((heapDuring - heapBefore) / 1e6)} MB`);
      flooder.destroy();
      await delay(500);
      await brokerServes('flood-after');
    });

    it('2,000 client ids with Session Expiry 0xFFFFFFFF and a subscription each, then gone: capped, bounded, serving', async () => {
      global.gc?.();
      const heapBefore = process.memoryUsage().heapUsed;
      for (let batch = 0; batch < 20; batch++) {
        const conns = await Promise.all(
          Array.from({ length: 100 }, async (_, i) => {
            const raw = await RawClient.open(port, 5);
            raw.send(connect5({ clientId: `many-${batch}-${i}`, clean: false, properties: { sessionExpiryInterval: 0xffff_ffff } }));
            const connack = await raw.next('connack', 10_000);
            assert.equal(connack.properties?.sessionExpiryInterval, 86_400, 'capped to maxSessionExpiry, and said so');
            raw.send({
              cmd: 'subscribe',
              messageId: 1,
              properties: { subscriptionIdentifier: 1 + batch * 100 + i },
              subscriptions: [{ topic: `many/${batch}/${i}/#`, qos: 1 }],
            });
            await raw.next('suback', 10_000);
            return raw;
          }),
        );
        for (const raw of conns) raw.destroy();
      }
      await delay(500);
      global.gc?.();
      const growth = process.memoryUsage().heapUsed - heapBefore;
      assert.ok(growth < 200 * 1024 * 1024, `heap grew ${Math.round(growth / 1e6)} MB`);
      await brokerServes('many');
    });

    it('a 60 KB user property and 2,000 user property pairs reach a v5 subscriber intact, a 3.1.1 one gets the payload', async () => {
      const sub = await live(url, { clientId: `up-${rnd()}`, protocolVersion: 5 });
      clients.push(sub.client);
      await sub.client.subscribeAsync('adv/up/#', { qos: 1 });
      const big = 'v'.repeat(60 * 1024);
      await pub.publishAsync('adv/up/big', 'p-big', { qos: 1, properties: { userProperties: { big } } });
      const many: Record<string, string> = {};
      for (let i = 0; i < 2000; i++) many[`k${i}`] = `v${i}`;
      await pub.publishAsync('adv/up/many', 'p-many', { qos: 1, properties: { userProperties: many } });
      await waitFor(() => sub.got.length >= 2, 5000, 'both deliveries');
      assert.equal((sub.got[0]!.properties?.userProperties as Record<string, string> | undefined)?.big, big);
      assert.equal(Object.keys(sub.got[1]!.properties?.userProperties ?? {}).length, 2000);
      await waitFor(() => seen.some((m) => m.payload === 'p-many'), 5000, '3.1.1 observer');
    });

    it('topic aliases 1–64 redefined 5,000 times on distinct topics: every message on its own topic', async () => {
      const raw = keep(await raw5(port));
      const sub = await live(url, { clientId: `alias-${rnd()}`, protocolVersion: 5 });
      clients.push(sub.client);
      await sub.client.subscribeAsync('adv/alias/#', { qos: 0 });
      for (let i = 0; i < 5000; i++) {
        const alias = (i % 64) + 1;
        raw.send(publishPacket(`adv/alias/${i}`, `a${i}`, 0, undefined, { topicAlias: alias }));
        raw.send(publishPacket('', `b${i}`, 0, undefined, { topicAlias: alias }));
      }
      await waitFor(
        () => sub.got.length >= 10_000,
        15_000,
        () => `10,000 deliveries (got ${sub.got.length})`,
      );
      const wrong = sub.got.filter((m) => m.topic !== `adv/alias/${m.payload.slice(1)}`);
      assert.deepEqual(wrong.slice(0, 3), []);
      await stillServed(raw);
    });

    it('a will with Will Delay 0xFFFFFFFF and Session Expiry 0 goes at once when the connection drops (the session ends first, §3.1.3.2.2)', async () => {
      const id = `will-${rnd()}`;
      const raw = keep(
        await raw5(port, {
          clientId: id,
          will: {
            topic: `adv/will/${id}`,
            payload: Buffer.from('now'),
            qos: 1,
            retain: false,
            properties: { willDelayInterval: 0xffff_ffff },
          },
        }),
      );
      raw.destroy();
      await waitFor(() => seen.some((m) => m.topic === `adv/will/${id}`), 3000, 'the will at once');
    });
  });

  describe('a frozen subscriber (socket never read) must not stall the broker for everyone', () => {
    it('while a QoS 0 "#" subscriber is frozen and 150 publishers write to it, an unrelated publish still arrives within 10 s', async () => {
      const frozen = keep(await RawClient.connect(port, { clientId: `frozen-${rnd()}` }));
      await frozen.next('connack');
      frozen.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'adv/fz/#', qos: 0 }] });
      await frozen.next('suback');
      frozen.socket.pause();
      // Fill the kernel buffers on the way to it: 40 MB.
      const bulk = keep(await connectClient(url, { clientId: `bulk-${rnd()}`, protocolVersion: 4 }));
      const block = Buffer.alloc(512 * 1024, 0x62);
      for (let i = 0; i < 80; i++) bulk.publish('adv/fz/bulk', block, { qos: 0 });
      await delay(1500);
      // Many publishers, each with one message for the frozen subscriber.
      const writers = await Promise.all(
        Array.from({ length: 150 }, async () => {
          const w = keep(await RawClient.connect(port, { clientId: `w-${rnd()}` }));
          await w.next('connack');
          w.send({ cmd: 'publish', topic: 'adv/fz/w', payload: Buffer.alloc(1024), qos: 0, retain: false, dup: false });
          return w;
        }),
      );
      await delay(500);
      const start = Date.now();
      const other = keep(await connectClient(url, { clientId: `other-${rnd()}`, protocolVersion: 4 }));
      const got = recordMessages(other);
      await other.subscribeAsync('adv/unrelated', { qos: 1 });
      const p = keep(await connectClient(url, { clientId: `p-${rnd()}`, protocolVersion: 4 }));
      p.publish('adv/unrelated', 'through', { qos: 1 });
      let stalled: Error | undefined;
      try {
        await waitFor(() => got.some((m) => m.payload === 'through'), 10_000, 'the unrelated message');
      } catch (error) {
        stalled = error as Error;
      } finally {
        for (const w of writers) w.destroy();
        frozen.destroy();
      }
      if (stalled) {
        // Diagnosis: does it come once the frozen subscriber is gone?
        const freed = await waitFor(() => got.some((m) => m.payload === 'through'), 10_000, 'x').then(
          () => `it arrived ${Date.now() - start} ms after the publish, once the frozen subscriber was cut`,
          () => 'it never arrived',
        );
        assert.fail(`the broker stalled for everyone behind one frozen subscriber: ${stalled.message}; ${freed}`);
      }
    });
  });
});

// ==================================================================================================

describe('broker.limits.maxSessionExpiry beyond 24.8 days (setTimeout holds 2^31-1 ms)', () => {
  let broker: BrokerUnderTest;
  let port: number;
  let watcher: MqttClient;
  let seen: Message[];

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { maxSessionExpiry: '30d' } });
    port = broker.port();
    watcher = await connectClient(broker.url(), { clientId: 'watcher', protocolVersion: 4 });
    seen = recordMessages(watcher);
    await watcher.subscribeAsync('#', { qos: 1 });
  });

  after(async () => {
    await endAll([watcher]);
    await broker?.close();
  });

  it('MQTT 5, Session Expiry 0xFFFFFFFF (cut to 30 days): the session is still there 1.5 s after the client left', async () => {
    const id = `long5-${rnd()}`;
    const raw = await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 0xffff_ffff } });
    assert.equal(raw.of('connack')[0]!.properties?.sessionExpiryInterval, 30 * 86_400);
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${id}/t`, qos: 1 }] });
    await raw.next('suback');
    raw.destroy();
    await delay(1500);
    const back = await raw5(port, { clientId: id, clean: false, properties: { sessionExpiryInterval: 0xffff_ffff } });
    try {
      assert.equal(back.of('connack')[0]!.sessionPresent, true, 'a 30-day session must not end after a moment');
    } finally {
      back.destroy();
    }
  });

  it('MQTT 3.1.1, Clean Session 0: the session is still there 1.5 s after the client left', async () => {
    const id = `long4-${rnd()}`;
    const raw = await RawClient.connect(port, { clientId: id, clean: false });
    await raw.next('connack');
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${id}/t`, qos: 1 }] });
    await raw.next('suback');
    raw.destroy();
    await delay(1500);
    const back = await RawClient.connect(port, { clientId: id, clean: false });
    try {
      assert.equal((await back.next('connack')).sessionPresent, true);
    } finally {
      back.destroy();
    }
  });

  it('a will with Will Delay 0xFFFFFFFF and Session Expiry 0xFFFFFFFF is not published 2 s after the drop', async () => {
    const id = `longwill-${rnd()}`;
    const raw = await raw5(port, {
      clientId: id,
      clean: false,
      properties: { sessionExpiryInterval: 0xffff_ffff },
      will: {
        topic: `longwill/${id}`,
        payload: Buffer.from('too early'),
        qos: 1,
        retain: false,
        properties: { willDelayInterval: 0xffff_ffff },
      },
    });
    raw.destroy();
    await delay(2000);
    await watcher.publishAsync('longwill/marker', 'm', { qos: 1 });
    await waitFor(() => seen.some((m) => m.topic === 'longwill/marker'), 5000, 'marker');
    assert.deepEqual(
      seen.filter((m) => m.topic === `longwill/${id}`).map((m) => m.payload),
      [],
      `the will went early (warnings: ${warnings.join('; ')})`,
    );
  });
});
