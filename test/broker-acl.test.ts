// ACL of the integrated broker with real mqtt.js clients: denied subscriptions get SUBACK 0x80
// (also through "#" and "+" wildcards) and the client stays; a denied publish disconnects the
// publisher and reaches nobody; %u rules; wills; denials logged once per client and topic,
// never with the payload.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import mqtt, { type MqttClient } from 'mqtt';
import { hashPassword } from '../src/broker/security.js';
import {
  BrokerUnderTest,
  CLIENT_DEFAULTS,
  closedWithin,
  connectClient,
  endAll,
  recordMessages,
  subscribeGranted,
  type Message,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const PASSWORDS = { admin: 'admin-pw', alice: 'alice-pw', bob: 'bob-pw' } as const;
type User = keyof typeof PASSWORDS;
const REFUSED = 0x80;

describe('ACL of the integrated broker', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];
  /** The admin sees everything ("#"): whatever a denied publish would have reached, it would see. */
  let watcher: MqttClient;
  let seen: Message[];
  let sequence = 0;

  const connectAs = async (user: User | undefined, extra: Parameters<typeof connectClient>[1] = {}): Promise<MqttClient> => {
    const credentials = user === undefined ? {} : { username: user, password: PASSWORDS[user] };
    const client = await connectClient(broker.url(), { ...credentials, ...extra });
    clients.push(client);
    return client;
  };

  /** Publishes a marker as admin and waits until `into` got it: everything published earlier by the same path has been routed. */
  const marker = async (into: Message[]): Promise<void> => {
    const text = `marker-${++sequence}`;
    const admin = watcher;
    await admin.publishAsync('public/marker', text, { qos: 1 });
    await waitFor(() => into.some((message) => message.payload === text), 3000, text);
  };

  before(async () => {
    const [admin, alice, bob] = await Promise.all([
      hashPassword(PASSWORDS.admin),
      hashPassword(PASSWORDS.alice),
      hashPassword(PASSWORDS.bob),
    ]);
    broker = await BrokerUnderTest.start({
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
      allowAnonymous: true,
      users: [
        { username: 'admin', passwordHash: admin },
        { username: 'alice', passwordHash: alice },
        { username: 'bob', passwordHash: bob },
      ],
      acl: [
        // "#" does not reach $SYS: a rule must name it.
        { user: 'admin', publish: ['#'], subscribe: ['#', '$SYS/#'] },
        { user: 'alice', publish: ['public/#', 'plant/line1/cmd/#'], subscribe: ['public/#', 'plant/#'] },
        { user: 'bob', subscribe: ['public/#'] },
        // Every client, anonymous ones too; %u only ever matches a logged-in user.
        { publish: ['users/%u/#'], subscribe: ['users/%u/#'] },
      ],
    });
    watcher = await connectAs('admin');
    seen = recordMessages(watcher);
    assert.deepEqual(await subscribeGranted(watcher, ['#']), [1]);
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  it('subscriptions: allowed filters granted, denied ones (also via "#" and "+") get 0x80 in the same SUBACK', async () => {
    const alice = await connectAs('alice');
    const filters = [
      'plant/+/temp',
      'secret/#',
      '#',
      '+/x',
      'users/alice/#',
      'users/+/inbox',
      'users/bob/#',
      'public/#',
      '+/+/temp',
      'plant/#',
    ];
    const granted = await subscribeGranted(alice, filters);
    assert.deepEqual(Object.fromEntries(filters.map((filter, index) => [filter, granted[index]])), {
      'plant/+/temp': 1,
      'secret/#': REFUSED,
      '#': REFUSED,
      '+/x': REFUSED,
      'users/alice/#': 1,
      'users/+/inbox': REFUSED,
      'users/bob/#': REFUSED,
      'public/#': 1,
      '+/+/temp': REFUSED,
      'plant/#': 1,
    });
    assert.equal(alice.connected, true, 'a refused subscription does not disconnect');
  });

  it('a client with refused wildcards receives only what its allowed filters cover', async () => {
    const alice = await connectAs('alice');
    const received = recordMessages(alice);
    assert.deepEqual(await subscribeGranted(alice, ['#', '+/x', 'users/+/inbox', 'plant/+/temp', 'users/alice/#', 'public/marker']), [
      REFUSED,
      REFUSED,
      REFUSED,
      1,
      1,
      1,
    ]);
    for (const topic of ['secret/a', 'other/x', 'users/bob/inbox', 'plant/line2/temp', 'users/alice/inbox'])
      await watcher.publishAsync(topic, `for ${topic}`, { qos: 1 });
    await marker(received);
    assert.deepEqual(
      received
        .filter((message) => message.topic !== 'public/marker')
        .map((message) => message.topic)
        .sort(),
      ['plant/line2/temp', 'users/alice/inbox'],
    );
  });

  it('a refused wildcard subscription does not deliver retained messages either', async () => {
    await watcher.publishAsync('secret/retained', 'RETAINED-SECRET', { qos: 1, retain: true });
    await watcher.publishAsync('public/retained', 'RETAINED-PUBLIC', { qos: 1, retain: true });
    const alice = await connectAs('alice');
    const received = recordMessages(alice);
    assert.deepEqual(await subscribeGranted(alice, ['#', '+/retained', 'secret/retained', 'public/retained', 'public/marker']), [
      REFUSED,
      REFUSED,
      REFUSED,
      1,
      1,
    ]);
    await waitFor(() => received.some((message) => message.payload === 'RETAINED-PUBLIC'), 3000, 'the allowed retained message');
    await marker(received);
    assert.ok(!received.some((message) => message.payload === 'RETAINED-SECRET'));
    await watcher.publishAsync('secret/retained', '', { qos: 1, retain: true });
    await watcher.publishAsync('public/retained', '', { qos: 1, retain: true });
  });

  it('allowed publishes go through (own rule, default %u rule)', async () => {
    const alice = await connectAs('alice');
    for (const topic of ['public/news', 'plant/line1/cmd/start', 'users/alice/status']) {
      await alice.publishAsync(topic, `from alice on ${topic}`, { qos: 1 });
      await waitFor(() => seen.some((message) => message.topic === topic && message.payload === `from alice on ${topic}`), 3000, topic);
    }
    assert.equal(alice.connected, true);
  });

  const deniedPublishes: Array<[who: User | undefined, topic: string, qos: 0 | 1, why: string]> = [
    ['alice', 'secret/plans', 1, 'no rule'],
    ['alice', 'plant/line2/cmd/start', 0, 'outside plant/line1/cmd/#, at QoS 0'],
    ['alice', 'plant/line1/temp', 1, 'subscribe-only'],
    ['alice', 'users/bob/status', 1, "another user's %u space"],
    ['bob', 'public/news', 1, 'bob may only subscribe there'],
    [undefined, 'users/undefined/status', 1, 'anonymous: %u never matches'],
    ['admin', '$SYS/fake', 1, '$SYS is reserved for the broker, even for "#"'],
  ];
  for (const [who, topic, qos, why] of deniedPublishes) {
    it(`a denied publish disconnects the publisher and reaches nobody: ${who ?? 'anonymous'} on "${topic}" (${why})`, async () => {
      const publisher = await connectAs(who);
      const payload = `DENIED-PAYLOAD-${topic}`;
      if (topic.startsWith('$SYS')) assert.deepEqual(await subscribeGranted(watcher, ['$SYS/fake']), [1]);
      publisher.publish(topic, payload, { qos }, () => undefined);
      assert.equal(await closedWithin(publisher, 3000), true, 'the publisher was disconnected');
      await marker(seen);
      assert.ok(
        !seen.some((message) => message.payload === payload),
        `delivered: ${JSON.stringify(seen.filter((message) => message.payload === payload))}`,
      );
      assert.equal(watcher.connected, true, 'the watcher is still there');
    });
  }

  it('a %u subscription for the own name only: bob reads users/bob/#, not users/alice/#', async () => {
    const bob = await connectAs('bob');
    const received = recordMessages(bob);
    assert.deepEqual(await subscribeGranted(bob, ['users/bob/#', 'users/alice/#', 'users/#', 'public/marker']), [1, REFUSED, REFUSED, 1]);
    await watcher.publishAsync('users/alice/inbox', 'for alice', { qos: 1 });
    await watcher.publishAsync('users/bob/inbox', 'for bob', { qos: 1 });
    await marker(received);
    assert.deepEqual(
      received.filter((message) => message.topic.startsWith('users/')).map((message) => message.payload),
      ['for bob'],
    );
  });

  it("taking over another user's persistent session (same client id) gives no access to its topics", async () => {
    const clientId = 'shared-session-id';
    const alice = await connectAs('alice', { clientId, clean: false });
    assert.deepEqual(await subscribeGranted(alice, ['plant/#']), [1]);
    await alice.endAsync();
    await watcher.publishAsync('plant/line1/while-away', 'QUEUED-FOR-ALICE', { qos: 1 });
    // Listening from the first byte: queued messages come right after the CONNACK.
    const bob = mqtt.connect(broker.url(), { ...CLIENT_DEFAULTS, username: 'bob', password: PASSWORDS.bob, clientId, clean: false });
    clients.push(bob);
    const received = recordMessages(bob);
    await new Promise<void>((resolve, reject) => {
      bob.once('connect', () => resolve());
      bob.once('error', reject);
    });
    assert.deepEqual(await subscribeGranted(bob, ['public/marker']), [1]);
    await watcher.publishAsync('plant/line1/live', 'LIVE-FOR-ALICE', { qos: 1 });
    await marker(received);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(
      received.filter((message) => message.topic.startsWith('plant/')).map((message) => message.payload),
      [],
    );
    await bob.endAsync();
    // Leave no persistent session behind for the other tests.
    await (await connectAs('alice', { clientId, clean: true })).endAsync();
  });

  it('an anonymous client gets nothing from the %u rule', async () => {
    const anonymous = await connectAs(undefined);
    assert.deepEqual(await subscribeGranted(anonymous, ['users/+/inbox', 'users/undefined/#', 'public/#']), [REFUSED, REFUSED, REFUSED]);
    assert.equal(anonymous.connected, true);
  });

  it('a will on a denied topic is not published; one on an allowed topic is', async () => {
    const denied = await connectAs('alice', { will: { topic: 'secret/will', payload: Buffer.from('WILL-SECRET'), qos: 1, retain: false } });
    const allowed = await connectAs('alice', {
      will: { topic: 'public/will', payload: Buffer.from('WILL-PUBLIC'), qos: 1, retain: false },
    });
    // Gone without a DISCONNECT: the broker publishes the wills (if the ACL lets it).
    denied.stream.destroy();
    allowed.stream.destroy();
    await waitFor(() => seen.some((message) => message.payload === 'WILL-PUBLIC'), 3000, 'the allowed will');
    await marker(seen);
    assert.ok(!seen.some((message) => message.payload === 'WILL-SECRET'));
    assert.ok(broker.logs.withMessage('publish denied by the ACL').some((record) => record.topic === 'secret/will'));
  });

  it('denials are logged once per client and topic, with client, user and topic, never with the payload', async () => {
    const clientId = 'alice-logging-test';
    const deniedBefore = broker.broker.stats.denied;
    // The same subscription refused twice on one connection, then once more on a new one.
    for (let attempt = 0; attempt < 3; attempt++) {
      const alice = await connectAs('alice', { clientId });
      assert.deepEqual(await subscribeGranted(alice, ['secret/#']), [REFUSED]);
      if (attempt < 2) assert.deepEqual(await subscribeGranted(alice, ['secret/#']), [REFUSED]);
      // The same denied publish, from the same client id, on each connection.
      alice.publish('secret/log-test', 'PAYLOAD-MUST-NOT-BE-LOGGED', { qos: 1 }, () => undefined);
      assert.equal(await closedWithin(alice, 3000), true);
    }
    // Another topic: logged on its own.
    const again = await connectAs('alice', { clientId });
    again.publish('secret/other-topic', 'PAYLOAD-MUST-NOT-BE-LOGGED', { qos: 0 });
    assert.equal(await closedWithin(again, 3000), true);

    const subscribeDenials = broker.logs.withMessage('subscribe denied by the ACL').filter((record) => record.clientId === clientId);
    assert.equal(subscribeDenials.length, 1, JSON.stringify(subscribeDenials));
    assert.equal(subscribeDenials[0]!.topic, 'secret/#');
    assert.equal(subscribeDenials[0]!.username, 'alice');
    assert.equal(subscribeDenials[0]!.level, 40);
    const publishDenials = broker.logs.withMessage('publish denied by the ACL').filter((record) => record.clientId === clientId);
    assert.deepEqual(publishDenials.map((record) => record.topic).sort(), ['secret/log-test', 'secret/other-topic']);
    assert.ok(publishDenials.every((record) => record.username === 'alice'));
    assert.equal(broker.broker.stats.denied - deniedBefore, 5 + 3 + 1, 'every denial is counted, logged or not');
    assert.ok(!broker.logs.text().includes('PAYLOAD-MUST-NOT-BE-LOGGED'), 'a payload reached the log');
    assert.ok(!broker.logs.text().includes('DENIED-PAYLOAD'), 'a payload reached the log');
  });

  it('statistics count messages in (allowed client publishes) and out (deliveries)', async () => {
    // Only the watcher and the client of this test are subscribed to anything.
    await endAll(clients.filter((client) => client !== watcher));
    await waitFor(() => broker.broker.clientCount === 1, 3000, 'the other clients to go');
    const { messagesIn, messagesOut } = broker.broker.stats;
    const alice = await connectAs('alice');
    const received = recordMessages(alice);
    assert.deepEqual(await subscribeGranted(alice, ['public/stats']), [1]);
    await alice.publishAsync('public/stats', 'x', { qos: 1 });
    await waitFor(() => received.length === 1 && seen.some((message) => message.topic === 'public/stats'), 3000, 'both deliveries');
    assert.equal(broker.broker.stats.messagesIn - messagesIn, 1);
    assert.equal(broker.broker.stats.messagesOut - messagesOut, 2, 'alice and the watcher');
  });
});
