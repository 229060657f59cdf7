// Sessions under a failed login and under races between an old connection and its successor:
// a login that fails changes no session, and a session being taken up is not ended or willed away.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { hashPassword } from '../src/broker/security.js';
import { BrokerUnderTest, CLIENT_DEFAULTS, tryConnect } from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const PASSWORD = 'right-password';
const TCP = [{ type: 'tcp' as const, host: '127.0.0.1', port: 0 }];

interface Session {
  client: MqttClient;
  got: Array<{ topic: string; payload: string }>;
  connack: IConnackPacket;
}

async function open(url: string, options: IClientOptions): Promise<Session> {
  const client = mqtt.connect(url, { ...CLIENT_DEFAULTS, ...options });
  const got: Session['got'] = [];
  client.on('message', (topic, payload) => got.push({ topic, payload: payload.toString() }));
  client.on('error', () => undefined);
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    client.once('connect', resolve);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
  return { client, got, connack };
}

describe('sessions, failed logins and successors', () => {
  let broker: BrokerUnderTest;
  let url: string;
  const clients: MqttClient[] = [];
  const user = { username: 'u', password: PASSWORD };
  const v5 = async (clientId: string, options: IClientOptions) => {
    const session = await open(url, { protocolVersion: 5, clientId, ...user, ...options });
    clients.push(session.client);
    return session;
  };

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      allowAnonymous: false,
      users: [{ username: 'u', passwordHash: await hashPassword(PASSWORD) }],
      acl: [{ publish: ['#'], subscribe: ['#'] }],
    });
    url = broker.url();
  });

  after(async () => {
    await Promise.all(clients.map((client) => client.endAsync(true).catch(() => undefined)));
    await broker?.close();
  });

  it('a CONNECT that fails authentication (Clean Start 1, Session Expiry > 0) must not end the stored session of that client id', async () => {
    const first = await v5('victim-a', { clean: false, properties: { sessionExpiryInterval: 300 } });
    await first.client.subscribeAsync('victim-a/#', { qos: 1 });
    await first.client.endAsync();
    const pub = await v5('pub-a', {});
    await pub.client.publishAsync('victim-a/1', 'kept for the session', { qos: 1 });
    // Unauthenticated: wrong password, CONNACK 0x86.
    const attack = await tryConnect(url, {
      protocolVersion: 5,
      clientId: 'victim-a',
      clean: true,
      properties: { sessionExpiryInterval: 10 },
      username: 'u',
      password: 'wrong',
    });
    assert.equal(attack.ok, false);
    await delay(100);
    const back = await v5('victim-a', { clean: false, properties: { sessionExpiryInterval: 300 } });
    assert.equal(back.connack.sessionPresent, true, 'the session survives a failed login');
    await waitFor(() => back.got.some((m) => m.topic === 'victim-a/1'), 3000, 'the queued message');
  });

  it('a CONNECT that fails authentication must not cancel the expiry of a stored session (it would never end)', async () => {
    const first = await v5('victim-b', { clean: false, properties: { sessionExpiryInterval: 1 } });
    await first.client.subscribeAsync('victim-b/#', { qos: 1 });
    await first.client.endAsync();
    await delay(50);
    // Unauthenticated, Clean Start 0: preConnect cancels the expiry timer, then authentication fails.
    const attack = await tryConnect(url, { protocolVersion: 4, clientId: 'victim-b', clean: false, username: 'u', password: 'wrong' });
    assert.equal(attack.ok, false);
    await delay(1_800);
    const back = await v5('victim-b', { clean: false, properties: { sessionExpiryInterval: 300 } });
    assert.equal(back.connack.sessionPresent, false, 'the session expired after 1 s');
  });

  it('a CONNECT that fails authentication must not publish the delayed will of an offline session', async () => {
    const watcher = await v5('watcher-c', {});
    await watcher.client.subscribeAsync('wills/c', { qos: 1 });
    const first = await v5('victim-c', {
      clean: false,
      properties: { sessionExpiryInterval: 300 },
      will: { topic: 'wills/c', payload: Buffer.from('gone'), qos: 1, retain: false, properties: { willDelayInterval: 120 } },
    });
    first.client.stream.destroy(); // connection lost: the will waits 120 s
    await delay(200);
    const attack = await tryConnect(url, { protocolVersion: 4, clientId: 'victim-c', clean: true, username: 'u', password: 'wrong' });
    assert.equal(attack.ok, false);
    await delay(300);
    assert.deepEqual(
      watcher.got.filter((m) => m.topic === 'wills/c'),
      [],
      'no will 120 s early from a failed login',
    );
  });

  it('a failed Clean Start 0 login over a live clean session leaves no persistent session behind (subscriptions, queue, no expiry)', async () => {
    const live = await open(url, { protocolVersion: 4, clientId: 'victim-d', clean: true, ...user });
    clients.push(live.client);
    await live.client.subscribeAsync('ph/#', { qos: 1 });
    const attack = await tryConnect(url, { protocolVersion: 5, clientId: 'victim-d', clean: false, username: 'u', password: 'wrong' });
    assert.equal(attack.ok, false);
    const pub = await v5('pub-d', {});
    await pub.client.publishAsync('ph/1', 'for the live clean client', { qos: 1 });
    await waitFor(() => live.got.length === 1, 3000, 'delivery to the live client');
    await live.client.endAsync();
    await delay(100);
    await pub.client.publishAsync('ph/2', 'nobody has a session for this', { qos: 1 });
    const store = (broker.broker as unknown as { sessions: { store: { queued(id: string): number } } }).sessions.store;
    assert.equal(store.queued('victim-d'), 0, 'nothing queued for a clean session that ended');
    const back = await v5('victim-d', { clean: false, properties: { sessionExpiryInterval: 300 } });
    assert.equal(back.connack.sessionPresent, false, 'the clean session ended with its connection');
  });

  it('the old connection dying while its successor (Clean Start 0) logs in: its delayed will is not published during the resumed session', async () => {
    const watcher = await v5('watcher-4', {});
    await watcher.client.subscribeAsync('wills/4', { qos: 1 });
    const old = await v5('victim-4', {
      clean: false,
      properties: { sessionExpiryInterval: 300 },
      will: { topic: 'wills/4', payload: Buffer.from('gone'), qos: 1, retain: false, properties: { willDelayInterval: 1 } },
    });
    const next = mqtt.connect(url, {
      ...CLIENT_DEFAULTS,
      protocolVersion: 5,
      clientId: 'victim-4',
      clean: false,
      properties: { sessionExpiryInterval: 300 },
      ...user,
    });
    next.on('error', () => undefined);
    clients.push(next);
    // The new CONNECT is in preConnect / the scrypt check when the old connection goes.
    await delay(15);
    old.client.stream.destroy();
    await new Promise((resolve) => next.once('connect', resolve));
    await delay(1_500);
    assert.equal(next.connected, true);
    assert.deepEqual(
      watcher.got.filter((m) => m.topic === 'wills/4'),
      [],
      'no will while the session is resumed [MQTT-3.1.3-9]',
    );
  });

  it('Retain Handling 2 on a new subscription holds beside an older overlapping subscription with Retain Handling 0', async () => {
    const pub = await v5('pub-f2', {});
    await pub.client.publishAsync('rh/a/b', 'retained', { qos: 1, retain: true });
    const sub = await v5('sub-f2', {});
    await sub.client.subscribeAsync('rh/a/#', { qos: 1, rh: 0 });
    await waitFor(() => sub.got.length === 1, 3000, 'retained for rh 0');
    await sub.client.subscribeAsync('rh/a/b', { qos: 1, rh: 2 });
    await pub.client.publishAsync('rh/marker', 'm', { qos: 1 });
    await sub.client.subscribeAsync('rh/marker', { qos: 1 });
    await delay(300);
    assert.equal(sub.got.filter((m) => m.topic === 'rh/a/b').length, 1, '[MQTT-3.8.4-?] rh 2: no retained at subscribe time');
  });

  it('refused subscriptions leave no Subscription Identifier behind (the map does not grow with refusals)', async () => {
    const sub = await v5('sub-f3', {});
    await sub.client.subscribeAsync('sid/#', { qos: 1, properties: { subscriptionIdentifier: 1 } });
    for (let n = 0; n < 200; n++)
      await sub.client
        .subscribeAsync(`$share/g/sid/${n}`, { qos: 1, properties: { subscriptionIdentifier: 2 + n } })
        .catch(() => undefined);
    const ids = (broker.broker as unknown as { sessions: { subscriptionIds: Map<string, Map<string, number>> } }).sessions.subscriptionIds;
    assert.equal(ids.get('sub-f3')?.size, 1, 'only the granted subscription has an identifier');
  });
});
