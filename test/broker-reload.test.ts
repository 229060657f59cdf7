// Users, passwords, ACL rules and anonymous access reloaded into the running integrated broker
// (what SIGHUP does, like mosquitto's password and ACL files): a new user logs in at once; a user
// who is removed or gets a new password is disconnected and the old password no longer works;
// anonymous clients go when anonymous access is turned off; everyone else stays connected and
// their existing subscriptions deliver only what the new rules allow.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { hashPassword } from '../src/broker/security.js';
import { brokerSection } from '../src/config/schema.js';
import {
  BrokerUnderTest,
  closedWithin,
  connectClient,
  endAll,
  recordMessages,
  subscribeGranted,
  tryConnect,
  type BrokerInput,
  type Message,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const BAD_CREDENTIALS = 4;
const NOT_AUTHORIZED = 5;
const REFUSED = 0x80;

describe('integrated broker: users and ACL rules reloaded without a restart', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];
  const hashes: Record<string, string> = {};
  let sequence = 0;

  const connect = async (username?: string, password?: string, clientId?: string): Promise<MqttClient> => {
    const client = await connectClient(broker.url(), {
      ...(username === undefined ? {} : { username, password }),
      ...(clientId === undefined ? {} : { clientId }),
    });
    clients.push(client);
    return client;
  };
  const outcome = async (username?: string, password?: string) => {
    const result = await tryConnect(broker.url(), username === undefined ? {} : { username, password });
    if (result.ok) clients.push(result.client);
    return result.ok ? 'connected' : result.code;
  };
  /** The admin publishes on `topic` and then on a marker topic `into` also receives: afterwards `into` has all it will get of `topic`. */
  const publishAndSettle = async (admin: MqttClient, topic: string, into: Message[]): Promise<void> => {
    const marker = `marker-${++sequence}`;
    await admin.publishAsync(topic, `on ${topic}`, { qos: 1 });
    await admin.publishAsync('public/marker', marker, { qos: 1 });
    await waitFor(() => into.some((message) => message.payload === marker), 3000, marker);
  };

  const config = (overrides: Partial<BrokerInput>): BrokerInput => ({
    listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
    allowAnonymous: true,
    users: [
      { username: 'admin', passwordHash: hashes.admin! },
      { username: 'alice', passwordHash: hashes.alice! },
      { username: 'bob', passwordHash: hashes.bob! },
    ],
    acl: [
      { user: 'admin', publish: ['#'], subscribe: ['#'] },
      { user: 'alice', subscribe: ['plant/#', 'public/#'] },
      { user: 'bob', subscribe: ['plant/#', 'public/#'] },
      { subscribe: ['public/#'] },
    ],
    ...overrides,
  });
  /** Only the access settings, as the gateway hands them over on a reload. */
  const access = (input: BrokerInput) => {
    const { users, acl, allowAnonymous } = brokerSection.parse(input);
    return { users, acl, allowAnonymous };
  };

  before(async () => {
    for (const name of ['admin', 'alice', 'bob', 'bob-new', 'carol']) hashes[name] = await hashPassword(`${name}-pw`);
    broker = await BrokerUnderTest.start(config({}));
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  it('applies new users, passwords, rules and anonymous access to the running broker', async () => {
    const admin = await connect('admin', 'admin-pw', 'admin');
    const alice = await connect('alice', 'alice-pw', 'alice');
    const bob = await connect('bob', 'bob-pw', 'bob');
    const anonymous = await connect(undefined, undefined, 'anonymous');
    const aliceSees = recordMessages(alice);
    assert.deepEqual(await subscribeGranted(alice, ['plant/#', 'public/#']), [1, 1]);
    assert.deepEqual(await subscribeGranted(anonymous, ['public/#']), [1]);
    assert.equal(await outcome('carol', 'carol-pw'), BAD_CREDENTIALS, 'carol is not a user yet');
    await publishAndSettle(admin, 'plant/line2/temp', aliceSees);
    assert.ok(
      aliceSees.some((message) => message.topic === 'plant/line2/temp'),
      'alice sees line 2 under the old rules',
    );

    const disconnected = broker.broker.reloadAccess(
      access(
        config({
          allowAnonymous: false,
          users: [
            { username: 'admin', passwordHash: hashes.admin! },
            { username: 'alice', passwordHash: hashes.alice! },
            { username: 'bob', passwordHash: hashes['bob-new']! },
            { username: 'carol', passwordHash: hashes.carol! },
          ],
          acl: [
            { user: 'admin', publish: ['#'], subscribe: ['#'] },
            { user: 'alice', subscribe: ['plant/line1/#', 'public/#'] },
            { user: 'bob', subscribe: ['plant/#', 'public/#'] },
            { user: 'carol', subscribe: ['plant/#'] },
          ],
        }),
      ),
    );

    // bob's password changed and anonymous access is off: both are cut; admin and alice stay.
    assert.deepEqual(disconnected.sort(), ['anonymous', 'bob']);
    assert.equal(await closedWithin(bob, 3000), true, 'bob is disconnected');
    assert.equal(await closedWithin(anonymous, 3000), true, 'the anonymous client is disconnected');
    assert.equal(await closedWithin(alice, 300), false, 'alice stays connected');
    assert.equal(admin.connected, true);
    assert.ok(
      broker.logs
        .records()
        .some((record) => record.msg === 'mqtt client disconnected by the reloaded broker users' && record.clientId === 'bob'),
    );
    assert.ok(!broker.logs.lines.join('\n').includes('bob-pw'), 'no password in the log');

    // Logins follow the new users at once.
    assert.equal(await outcome('carol', 'carol-pw'), 'connected', 'the new user logs in without a restart');
    assert.equal(await outcome('bob', 'bob-pw'), BAD_CREDENTIALS, "bob's old password no longer works");
    assert.equal(await outcome('bob', 'bob-new-pw'), 'connected', "bob's new password works");
    assert.equal(await outcome(), NOT_AUTHORIZED, 'anonymous access is off');

    // alice's existing "plant/#" subscription now delivers only what her new rule allows.
    await publishAndSettle(admin, 'plant/line1/temp', aliceSees);
    const before = aliceSees.length;
    await publishAndSettle(admin, 'plant/line2/temp', aliceSees);
    assert.deepEqual(
      aliceSees.slice(before).map((message) => message.topic),
      ['public/marker'],
      'line 2 no longer reaches alice',
    );
    assert.ok(
      aliceSees.some((message) => message.topic === 'plant/line1/temp'),
      'line 1 still does',
    );
    // And a new subscription is checked against the new rules.
    assert.deepEqual(await subscribeGranted(alice, ['plant/line2/#', 'plant/line1/#']), [REFUSED, 1]);
  });

  it('a reload that leaves every login as it was disconnects nobody', async () => {
    const carol = await connect('carol', 'carol-pw', 'carol-2');
    const sameUsers = [
      { username: 'admin', passwordHash: hashes.admin! },
      { username: 'alice', passwordHash: hashes.alice! },
      { username: 'bob', passwordHash: hashes['bob-new']! },
      { username: 'carol', passwordHash: hashes.carol! },
    ];
    assert.deepEqual(await subscribeGranted(carol, ['#']), [REFUSED]);
    const disconnected = broker.broker.reloadAccess(
      access(config({ allowAnonymous: false, users: sameUsers, acl: [{ user: 'carol', subscribe: ['#'] }] })),
    );
    assert.deepEqual(disconnected, []);
    assert.equal(await closedWithin(carol, 300), false, 'carol keeps her connection');
    assert.deepEqual(await subscribeGranted(carol, ['#']), [1], 'and has her new rights');
  });
});

describe('integrated broker: a reload while a client is logging in', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];
  const hashes: Record<string, string> = {};
  const users = (...names: string[]) => names.map((username) => ({ username, passwordHash: hashes[username]! }));
  const access = (names: string[]) => {
    const {
      users: parsed,
      acl,
      allowAnonymous,
    } = brokerSection.parse({ listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], allowAnonymous: true, users: users(...names) });
    return { users: parsed, acl, allowAnonymous };
  };

  before(async () => {
    for (const name of ['admin', 'bob', 'carol']) hashes[name] = await hashPassword(`${name}-pw`);
    broker = await BrokerUnderTest.start({
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
      allowAnonymous: true,
      users: users('admin', 'bob', 'carol'),
    });
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  it('a user removed after the password check, while aedes restores the session, is disconnected once registered; no will', async () => {
    const admin = await connectClient(broker.url(), { username: 'admin', password: 'admin-pw' });
    clients.push(admin);
    const adminSees = recordMessages(admin);
    await admin.subscribeAsync('wills/#', { qos: 1 });
    // bob has a persistent MQTT 5 session with a subscription: aedes restores it across event-loop turns.
    const session = {
      protocolVersion: 5 as const,
      clean: false,
      clientId: 'bob-session',
      username: 'bob',
      password: 'bob-pw',
      properties: { sessionExpiryInterval: 3600 },
    };
    const seeded = await connectClient(broker.url(), session);
    await seeded.subscribeAsync('x/#', { qos: 1 });
    await seeded.endAsync();

    // aedes' hooks (public fields of the instance), replaced for one connection to reload at a chosen moment.
    const hooks = broker.broker.aedes;
    const authenticate = hooks.authenticate;
    let reloadedEarly: string[] | undefined;
    hooks.authenticate = (client, username, password, callback) =>
      authenticate(client, username, password, (error, ok) => {
        callback(error, ok);
        // The login is through; bob is not among aedes' clients yet.
        if (!error && ok) setImmediate(() => (reloadedEarly = broker.broker.reloadAccess(access(['admin', 'carol']))));
      });
    const outcome = await tryConnect(broker.url(), {
      ...session,
      will: { topic: 'wills/bob', payload: Buffer.from('bob gone'), qos: 1, retain: false },
    });
    hooks.authenticate = authenticate;
    if (outcome.ok) {
      clients.push(outcome.client);
      assert.equal(await closedWithin(outcome.client, 3000), true, 'bob is disconnected once registered');
    }
    assert.deepEqual(reloadedEarly, [], 'the reload itself could not see bob yet');
    assert.ok(
      broker.logs
        .records()
        .some(
          (record) =>
            record.msg === 'mqtt client disconnected by the reloaded broker users' &&
            record.clientId === 'bob-session' &&
            record.when === 'reloaded while logging in',
        ),
    );
    await admin.publishAsync('wills/marker', 'marker', { qos: 1 });
    await waitFor(() => adminSees.some((message) => message.payload === 'marker'), 3000, 'the marker');
    assert.ok(!adminSees.some((message) => message.topic === 'wills/bob'), 'the will of a revoked login is not published');
  });

  it('a user removed while the password hash is being checked is refused', async () => {
    broker.broker.reloadAccess(access(['admin', 'carol']));
    const hooks = broker.broker.aedes;
    const preConnect = hooks.preConnect;
    // preConnect runs just before authenticate; scrypt then takes tens of milliseconds on the thread pool.
    hooks.preConnect = (...args) => {
      preConnect(...args);
      setImmediate(() => broker.broker.reloadAccess(access(['admin'])));
    };
    const outcome = await tryConnect(broker.url(), { username: 'carol', password: 'carol-pw' });
    hooks.preConnect = preConnect;
    if (outcome.ok) clients.push(outcome.client);
    assert.equal(outcome.ok ? 'connected' : outcome.code, BAD_CREDENTIALS);
  });
});
