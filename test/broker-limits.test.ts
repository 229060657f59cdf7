// Limits of the integrated broker with real clients: max packet size, max connections,
// keep-alive bounds and max in-flight QoS 1 messages per client. A client over a limit goes;
// the broker keeps serving the others.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { hashPassword } from '../src/broker/security.js';
import {
  BrokerUnderTest,
  closedWithin,
  connectClient,
  endAll,
  RawClient,
  recordMessages,
  roundTrip,
  subscribeGranted,
  tryConnect,
  type Message,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const TCP = [{ type: 'tcp' as const, host: '127.0.0.1', port: 0 }];

/** Sets up a subscriber to everything and hands out clients that are all ended after the suite. */
function clientPool() {
  const clients: MqttClient[] = [];
  const raws: RawClient[] = [];
  return {
    keep<T extends MqttClient>(client: T): T {
      clients.push(client);
      return client;
    },
    raw(client: RawClient): RawClient {
      raws.push(client);
      return client;
    },
    async end(): Promise<void> {
      for (const raw of raws) raw.destroy();
      await endAll(clients);
    },
  };
}

describe('limits.maxPacketSize', () => {
  const MAX = 1024;
  let broker: BrokerUnderTest;
  const pool = clientPool();
  let subscriber: MqttClient;
  let seen: Message[];

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: [...TCP, { type: 'ws', host: '127.0.0.1', port: 0 }],
      allowAnonymous: true,
      limits: { maxPacketSize: MAX },
    });
    subscriber = pool.keep(await connectClient(broker.url()));
    seen = recordMessages(subscriber);
    assert.deepEqual(await subscribeGranted(subscriber, ['size/#']), [1]);
  });

  after(async () => {
    await pool.end();
    await broker?.close();
  });

  it('a packet under the limit goes through', async () => {
    const publisher = pool.keep(await connectClient(broker.url()));
    await roundTrip(publisher, seen, 'size/ok', 'x'.repeat(MAX - 100));
    assert.equal(publisher.connected, true);
  });

  it('a bigger packet disconnects its publisher; the others keep working', async () => {
    const publisher = pool.keep(await connectClient(broker.url()));
    const bystander = pool.keep(await connectClient(broker.url()));
    publisher.publish('size/big', Buffer.alloc(MAX * 2, 0x61), { qos: 1 }, () => undefined);
    assert.equal(await closedWithin(publisher, 3000), true, 'the publisher was disconnected');
    await roundTrip(bystander, seen, 'size/after', 'bystander still works');
    assert.equal(subscriber.connected, true);
    const logged = broker.logs.withMessage('mqtt packet larger than broker.limits.maxPacketSize: client disconnected');
    // The remaining length: topic length field, topic, message id, payload.
    assert.ok(
      logged.some((record) => record.max === MAX && record.bytes === 2 + 'size/big'.length + 2 + MAX * 2),
      JSON.stringify(logged),
    );
  });

  it('a bigger packet that arrives in one piece (TCP, WebSocket) is not delivered to anyone (nor retained)', async () => {
    const late = pool.keep(await connectClient(broker.url()));
    const lateSeen = recordMessages(late);
    for (const listener of ['tcp', 'ws'] as const) {
      const publisher = pool.keep(await connectClient(broker.url(listener)));
      publisher.publish(`size/big-retained/${listener}`, Buffer.alloc(MAX * 4, 0x62), { qos: 1, retain: true }, () => undefined);
      assert.equal(await closedWithin(publisher, 3000), true, `the ${listener} publisher was disconnected`);
    }
    await roundTrip(pool.keep(await connectClient(broker.url())), seen, 'size/after-retained', 'marker');
    assert.deepEqual(await subscribeGranted(late, ['size/big-retained/#']), [1]);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(
      seen
        .filter((message) => message.topic.startsWith('size/big-retained/'))
        .map((message) => `${message.topic}: ${message.payload.length} bytes`),
      [],
      'delivered live',
    );
    assert.deepEqual(
      lateSeen.map((message) => message.topic),
      [],
      'retained',
    );
  });

  it('a header announcing 256 MB is cut at once, without waiting for the body', async () => {
    const raw = pool.raw(await RawClient.connect(broker.port()));
    assert.equal((await raw.next('connack')).returnCode, 0);
    // PUBLISH, remaining length 268435455 (0xff 0xff 0xff 0x7f), and not one byte of it.
    raw.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f]));
    assert.equal(await raw.closedWithin(1000), true);
  });

  it('the limit applies before CONNECT is accepted and to every packet type', async () => {
    const early = pool.raw(await RawClient.open(broker.port()));
    early.write(Buffer.from([0x10, 0x80, 0x80, 0x01])); // CONNECT announcing 16384 bytes
    assert.equal(await early.closedWithin(1000), true, 'oversize CONNECT');
    const subscribing = pool.keep(await connectClient(broker.url()));
    subscribing.subscribe(
      Array.from({ length: 100 }, (_, index) => `size/many/filters/${index}`),
      { qos: 0 },
      () => undefined,
    );
    assert.equal(await closedWithin(subscribing, 3000), true, 'oversize SUBSCRIBE');
  });

  it('the counter of refusals went up and the broker still serves', async () => {
    assert.ok(broker.broker.stats.denied >= 4, `denied = ${broker.broker.stats.denied}`);
    const late = pool.keep(await connectClient(broker.url()));
    await roundTrip(late, seen, 'size/late', 'late client');
  });
});

describe('limits.maxConnections', () => {
  const MAX = 3;
  let broker: BrokerUnderTest;
  const pool = clientPool();

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { maxConnections: MAX } });
  });

  after(async () => {
    await pool.end();
    await broker?.close();
  });

  it(`the ${MAX + 1}th client is not let in; the ${MAX} others keep working; a freed slot can be used again`, async () => {
    const connected: MqttClient[] = [];
    for (let index = 0; index < MAX; index++) connected.push(pool.keep(await connectClient(broker.url(), { clientId: `member-${index}` })));
    assert.equal(broker.broker.clientCount, MAX);
    const extra = await tryConnect(broker.url(), { clientId: 'one-too-many', connectTimeout: 1500 });
    if (extra.ok) pool.keep(extra.client);
    assert.equal(extra.ok, false, 'the extra client got in');
    assert.equal(broker.broker.clientCount, MAX);
    // Logged as a warning that names the limit (whatever the exact wording).
    const refused = broker.logs.records().filter((record) => record.level >= 40 && /maxConnections/.test(JSON.stringify(record)));
    assert.ok(refused.length > 0, broker.logs.text());

    const seen = recordMessages(connected[0]!);
    assert.deepEqual(await subscribeGranted(connected[0]!, ['conn/#']), [1]);
    await roundTrip(connected[1]!, seen, 'conn/still', 'the others keep working');
    await roundTrip(connected[2]!, seen, 'conn/still', 'all of them');

    await connected[2]!.endAsync();
    await waitFor(() => broker.broker.clientCount === MAX - 1, 3000, 'the slot to be freed');
    // The broker may notice the closed socket a moment after the client count drops: retry, bounded.
    let next: MqttClient | undefined;
    await waitFor(
      async () => {
        const outcome = await tryConnect(broker.url(), { clientId: 'next-in-line', connectTimeout: 500 });
        if (outcome.ok) next = pool.keep(outcome.client);
        return outcome.ok;
      },
      5000,
      'a connection in the freed slot',
    );
    await roundTrip(next!, seen, 'conn/next', 'in the freed slot');
  });

  it(`the ${MAX + 1}th client is refused promptly: a CONNACK with a refusal code, or the connection closed`, async () => {
    await waitFor(() => broker.broker.clientCount <= MAX, 3000, 'at most MAX clients');
    while (broker.broker.clientCount < MAX) pool.keep(await connectClient(broker.url()));
    const raw = pool.raw(await RawClient.connect(broker.port(), { clientId: 'refused-raw' }));
    const answered = await Promise.race([
      raw.next('connack', 2000).then(
        (connack) => connack.returnCode !== 0,
        () => false,
      ),
      raw.closed.then(() => true),
    ]);
    assert.equal(answered || (await raw.closedWithin(0)), true, 'neither a CONNACK nor a close within 2 s');
  });
});

describe('limits.maxConnections with password authentication', () => {
  const MAX = 3;
  let broker: BrokerUnderTest;
  const pool = clientPool();

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      users: [{ username: 'u', passwordHash: await hashPassword('p') }],
      limits: { maxConnections: MAX },
    });
  });

  after(async () => {
    await pool.end();
    await broker?.close();
  });

  it(`one after the other: the ${MAX + 1}th authenticated client is not let in`, async () => {
    for (let index = 0; index < MAX; index++) pool.keep(await connectClient(broker.url(), { username: 'u', password: 'p' }));
    const extra = await tryConnect(broker.url(), { username: 'u', password: 'p', connectTimeout: 1500 });
    if (extra.ok) pool.keep(extra.client);
    assert.equal(extra.ok, false);
    await pool.end();
    await waitFor(() => broker.broker.clientCount === 0, 3000, 'everyone gone');
  });

  it(`a burst of ${3 * MAX} clients connecting at once: at most ${MAX} get in`, async () => {
    const outcomes = await Promise.all(
      Array.from({ length: 3 * MAX }, () => tryConnect(broker.url(), { username: 'u', password: 'p', connectTimeout: 2000 })),
    );
    for (const outcome of outcomes) if (outcome.ok) pool.keep(outcome.client);
    const connected = outcomes.filter((outcome) => outcome.ok).length;
    assert.ok(connected >= 1, 'nobody got in');
    assert.ok(
      connected <= MAX && broker.broker.clientCount <= MAX,
      `${connected} clients connected (clientCount ${broker.broker.clientCount}) with maxConnections ${MAX}`,
    );
  });
});

describe('limits.keepAlive', () => {
  let broker: BrokerUnderTest;
  const pool = clientPool();

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { keepAlive: { min: '5s', max: '2m' } } });
  });

  after(async () => {
    await pool.end();
    await broker?.close();
  });

  it('a keep-alive within the bounds is accepted (5 s and 120 s inclusive)', async () => {
    for (const keepalive of [5, 60, 120]) pool.keep(await connectClient(broker.url(), { keepalive }));
  });

  const refused: Array<[keepalive: number, why: string, reason: RegExp]> = [
    [121, 'above max', /keepAlive\.max/],
    [3600, 'far above max', /keepAlive\.max/],
    [4, 'below min', /keepAlive\.min/],
    [0, 'none at all while min > 0', /keepAlive\.min/],
  ];
  for (const [keepalive, why, reason] of refused) {
    it(`keep-alive ${keepalive} s (${why}) is not let in, and the reason is logged`, async () => {
      const clientId = `keepalive-${keepalive}`;
      const outcome = await tryConnect(broker.url(), { keepalive, clientId, connectTimeout: 1500 });
      if (outcome.ok) pool.keep(outcome.client);
      assert.equal(outcome.ok, false);
      const logged = broker.logs.records().filter((record) => record.level >= 40 && JSON.stringify(record).includes(clientId));
      assert.ok(
        logged.some((record) => reason.test(JSON.stringify(record))),
        broker.logs.text(),
      );
    });
  }

  it('keep-alive above max is refused promptly: a CONNACK with a refusal code, or the connection closed', async () => {
    const raw = pool.raw(await RawClient.connect(broker.port(), { keepalive: 3600 }));
    const answered = await Promise.race([
      raw.next('connack', 2000).then(
        (connack) => connack.returnCode !== 0,
        () => false,
      ),
      raw.closed.then(() => true),
    ]);
    assert.equal(answered || (await raw.closedWithin(0)), true, 'neither a CONNACK nor a close within 2 s');
  });

  it('clients refused for their keep-alive do not keep holding connection slots', async () => {
    const small = await BrokerUnderTest.start({
      listeners: TCP,
      allowAnonymous: true,
      limits: { maxConnections: 2, keepAlive: { max: '1m' } },
    });
    const raws: RawClient[] = [];
    try {
      for (let index = 0; index < 2; index++) raws.push(await RawClient.connect(small.port(), { keepalive: 3600 }));
      await new Promise((resolve) => setTimeout(resolve, 2000));
      const outcome = await tryConnect(small.url(), { connectTimeout: 2000 });
      if (outcome.ok) await outcome.client.endAsync(true);
      assert.equal(outcome.ok, true, `a well-behaved client was refused: ${outcome.ok ? '' : outcome.message}`);
    } finally {
      for (const raw of raws) raw.destroy();
      await small.close();
    }
  });

  it('with the defaults (min 0 = "allows clients without keep-alive") a client without keep-alive is accepted', async () => {
    const open = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true });
    try {
      const outcome = await tryConnect(open.url(), { keepalive: 0 });
      if (outcome.ok) await outcome.client.endAsync(true);
      assert.equal(outcome.ok, true, JSON.stringify(outcome));
    } finally {
      await open.close();
    }
  });

  it('with the defaults a keep-alive of exactly 1 h (keepAlive.max) is accepted', async () => {
    const open = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true });
    try {
      const client = await connectClient(open.url(), { keepalive: 3600 });
      await client.endAsync(true);
    } finally {
      await open.close();
    }
  });
});

describe('limits.maxInflight', () => {
  const MAX = 5;
  /** Bigger than the bursts below, so a client that acknowledges is never cut. */
  const QUEUED = 200;
  let broker: BrokerUnderTest;
  const pool = clientPool();
  let publisher: MqttClient;

  before(async () => {
    broker = await BrokerUnderTest.start({ listeners: TCP, allowAnonymous: true, limits: { maxInflight: MAX, maxQueued: QUEUED } });
    publisher = pool.keep(await connectClient(broker.url(), { clientId: 'publisher' }));
  });

  after(async () => {
    await pool.end();
    await broker?.close();
  });

  it('a client that leaves more than maxInflight QoS 2 messages waiting for PUBREL is disconnected (as documented); the others stay', async () => {
    const watcher = pool.keep(await connectClient(broker.url(), { clientId: 'qos2-watcher' }));
    const seen = recordMessages(watcher);
    assert.deepEqual(await subscribeGranted(watcher, ['inflight/qos2/#']), [1]);
    const raw = pool.raw(await RawClient.connect(broker.port(), { clientId: 'never-sends-pubrel' }));
    assert.equal((await raw.next('connack')).returnCode, 0);
    for (let index = 1; index <= MAX; index++)
      raw.send({
        cmd: 'publish',
        topic: `inflight/qos2/${index}`,
        payload: Buffer.from(String(index)),
        qos: 2,
        messageId: index,
        retain: false,
        dup: false,
      });
    await waitFor(() => raw.of('pubrec').length === MAX, 3000, `${MAX} PUBRECs`);
    assert.equal(raw.isClosed, false, `${MAX} waiting messages are allowed`);
    raw.send({
      cmd: 'publish',
      topic: 'inflight/qos2/over',
      payload: Buffer.from('over'),
      qos: 2,
      messageId: MAX + 1,
      retain: false,
      dup: false,
    });
    assert.equal(await raw.closedWithin(3000), true, 'disconnected at maxInflight + 1');
    await roundTrip(publisher, seen, 'inflight/qos2/after', 'the others stay');
    assert.ok(!seen.some((message) => message.topic === 'inflight/qos2/over'));
  });

  it('a QoS 1 subscriber that never acknowledges gets maxInflight messages, then is disconnected once maxQueued more wait for it', async () => {
    const slow = pool.raw(await RawClient.connect(broker.port(), { clientId: 'never-acks' }));
    assert.equal((await slow.next('connack')).returnCode, 0);
    slow.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'inflight/slow/#', qos: 1 }] });
    assert.deepEqual((await slow.next('suback')).granted, [1]);
    const good = pool.keep(await connectClient(broker.url(), { clientId: 'acks-everything' }));
    const goodSeen = recordMessages(good);
    assert.deepEqual(await subscribeGranted(good, ['inflight/slow/#']), [1]);

    const count = MAX + QUEUED + 1;
    for (let index = 0; index < count; index++) {
      await publisher.publishAsync(`inflight/slow/${index}`, `m${index}`, { qos: 1 });
      // The acknowledging subscriber shares this process's event loop with the publisher: without
      // this it would read nothing until the loop ends, and fall behind as far as the silent one.
      await waitFor(() => goodSeen.length > index, 5000, `m${index} at the good subscriber`);
    }
    // Everyone else carries on: the acknowledging subscriber gets all of them, the publisher stays connected.
    await waitFor(
      () => goodSeen.length === count,
      10_000,
      () => {
        const payloads = goodSeen.map((message) => message.payload);
        const missing = Array.from({ length: count }, (_, index) => `m${index}`).filter((payload) => !payloads.includes(payload));
        return `every message at the good subscriber (have ${goodSeen.length} of ${count}; missing ${missing.slice(0, 10).join(' ')}; slow got ${slow.of('publish').length}, closed ${String(slow.isClosed)})`;
      },
    );
    assert.equal(good.connected && publisher.connected, true);
    assert.equal(
      await slow.closedWithin(3000),
      true,
      `the slow client is still connected with ${slow.of('publish').length} unacknowledged messages`,
    );
    assert.equal(slow.of('publish').length, MAX, 'no more than maxInflight unacknowledged messages were sent to it');
  });

  it('a persistent session cut for falling behind gets every message when it comes back', async () => {
    const slow = pool.raw(await RawClient.connect(broker.port(), { clientId: 'persistent-slow', clean: false }));
    assert.equal((await slow.next('connack')).returnCode, 0);
    slow.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'inflight/session/#', qos: 1 }] });
    assert.deepEqual((await slow.next('suback')).granted, [1]);
    const count = MAX + QUEUED + 1;
    for (let index = 0; index < count; index++) await publisher.publishAsync(`inflight/session/${index}`, String(index), { qos: 1 });
    assert.equal(await slow.closedWithin(3000), true, 'cut for falling behind');

    const back = pool.keep(await connectClient(broker.url(), { clientId: 'persistent-slow', clean: false }));
    const seen = recordMessages(back);
    // The session holds what the window let wait (maxInflight + maxQueued); the message that
    // overflowed it, and cut the client, was not kept (counted).
    const kept = MAX + QUEUED;
    await waitFor(() => new Set(seen.map((message) => message.payload)).size === kept, 5000, `all ${kept} messages after the reconnect`);
    // Unacknowledged ones may come twice (QoS 1), but none is missing and the order holds.
    const first = seen.map((message) => Number(message.payload)).filter((value, index, all) => all.indexOf(value) === index);
    assert.deepEqual(
      first,
      Array.from({ length: kept }, (_, index) => index),
    );
    assert.equal(broker.broker.stats.sessionDropped, count - kept);
  });

  it('QoS 0 deliveries wait behind queued QoS 1 ones (aedes would drop anything they overtook)', async () => {
    const raw = pool.raw(await RawClient.connect(broker.port(), { clientId: 'mixed-qos' }));
    assert.equal((await raw.next('connack')).returnCode, 0);
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'inflight/mixed/#', qos: 1 }] });
    await raw.next('suback');
    // MAX in flight, 3 queued, then QoS 0 ones that must not overtake them, then QoS 1 again.
    const sent: string[] = [];
    const publish = async (qos: 0 | 1) => {
      const text = `m${sent.length}-q${qos}`;
      sent.push(text);
      await publisher.publishAsync(`inflight/mixed/${sent.length}`, text, { qos });
    };
    for (let index = 0; index < MAX + 3; index++) await publish(1);
    for (let index = 0; index < 2; index++) await publish(0);
    for (let index = 0; index < 2; index++) await publish(1);
    await waitFor(() => raw.of('publish').length >= MAX, 3000, 'the first deliveries');
    const acked = new Set<number>();
    await waitFor(
      () => {
        for (const packet of raw.of('publish')) {
          if (packet.qos === 1 && packet.messageId !== undefined && !acked.has(packet.messageId)) {
            acked.add(packet.messageId);
            raw.send({ cmd: 'puback', messageId: packet.messageId });
          }
        }
        return raw.of('publish').length === sent.length;
      },
      5000,
      `all ${sent.length} messages`,
    );
    assert.deepEqual(
      raw.of('publish').map((packet) => packet.payload.toString()),
      sent,
    );
  });

  it('a subscriber that acknowledges gets far more than maxInflight messages and stays', async () => {
    const good = pool.keep(await connectClient(broker.url(), { clientId: 'fast-acker' }));
    const seen = recordMessages(good);
    assert.deepEqual(await subscribeGranted(good, ['inflight/many/#']), [1]);
    const count = 20 * MAX;
    await Promise.all(
      Array.from({ length: count }, (_, index) => publisher.publishAsync(`inflight/many/${index}`, String(index), { qos: 1 })),
    );
    await waitFor(() => seen.length === count, 5000, `${count} messages`);
    assert.equal(good.connected, true);
  });

  it('a raw subscriber that acknowledges each message stays connected past maxInflight', async () => {
    const raw = pool.raw(await RawClient.connect(broker.port(), { clientId: 'raw-acker' }));
    assert.equal((await raw.next('connack')).returnCode, 0);
    const acked = new Set<number>();
    const ackAll = () => {
      for (const packet of raw.of('publish')) {
        if (packet.messageId === undefined || acked.has(packet.messageId)) continue;
        acked.add(packet.messageId);
        raw.send({ cmd: 'puback', messageId: packet.messageId });
      }
    };
    // After the parser (the first "data" listener) has recorded this chunk's packets.
    raw.socket.on('data', () => setImmediate(ackAll));
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'inflight/raw/#', qos: 1 }] });
    await raw.next('suback');
    for (let index = 0; index < 4 * MAX; index++) await publisher.publishAsync(`inflight/raw/${index}`, String(index), { qos: 1 });
    await waitFor(() => raw.of('publish').length === 4 * MAX, 3000, 'every message');
    assert.ok(raw.of('publish').every((packet) => packet.qos === 1));
    assert.equal(raw.isClosed, false);
  });

  it('a QoS 0 subscriber receiving QoS 1 publishes (nothing to acknowledge) is not disconnected', async () => {
    const dashboard = pool.keep(await connectClient(broker.url(), { clientId: 'qos0-dashboard' }));
    const seen = recordMessages(dashboard);
    assert.deepEqual(await subscribeGranted(dashboard, ['inflight/qos0/#'], 0), [0]);
    const count = 4 * MAX;
    for (let index = 0; index < count; index++) await publisher.publishAsync(`inflight/qos0/${index}`, String(index), { qos: 1 });
    await waitFor(() => seen.length === count || !dashboard.connected, 3000, 'all messages or a disconnect');
    assert.equal(dashboard.connected, true, `disconnected after ${seen.length} messages`);
    assert.equal(seen.length, count);
    assert.ok(seen.every((message) => message.qos === 0));
  });
});
