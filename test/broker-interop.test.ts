// Interoperability of the integrated broker: Debian's mosquitto_pub/mosquitto_sub (with -u/-P)
// and mqtt.js (MQTT 3.1.1, 3.1 and 5) exchange messages through it. aedes speaks 3.1/3.1.1 only;
// MQTT 5 clients go through the protocol adapter (src/broker/mqtt5.ts, tested in depth in
// broker-mqtt5.test.ts).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Client } from 'aedes';
import type { MqttClient } from 'mqtt';
import { hashPassword } from '../src/broker/security.js';
import {
  BrokerUnderTest,
  connectClient,
  endAll,
  MOSQUITTO_PUB,
  MOSQUITTO_SUB,
  recordMessages,
  roundTrip,
  run,
  subscribeGranted,
  tryConnect,
  type Message,
} from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const USER = { username: 'hmi', password: 'hmi password with spaces' };

describe('interoperability: mosquitto clients and mqtt.js', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];
  let listener: MqttClient;
  let seen: Message[];
  /** Client ids that have subscribed, in order (to know when a spawned mosquitto_sub is ready). */
  const subscribed: string[] = [];

  const hostArgs = () => ['-h', '127.0.0.1', '-p', String(broker.port())];
  const credentials = ['-u', USER.username, '-P', USER.password];

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
      users: [{ username: USER.username, passwordHash: await hashPassword(USER.password) }],
    });
    broker.broker.aedes.on('subscribe', (_subscriptions, client: Client) => subscribed.push(client.id));
    listener = await connectClient(broker.url(), { ...USER, protocolVersion: 4, clientId: 'mqttjs-listener' });
    clients.push(listener);
    seen = recordMessages(listener);
    assert.deepEqual(await subscribeGranted(listener, ['interop/#']), [1]);
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  it('mosquitto_pub -u/-P (QoS 0 and 1) → mqtt.js 3.1.1 subscriber', async () => {
    for (const qos of ['0', '1']) {
      const result = await run(MOSQUITTO_PUB, [
        ...hostArgs(),
        ...credentials,
        '-t',
        `interop/from-mosquitto/${qos}`,
        '-m',
        `hello at QoS ${qos} – ünïcödé`,
        '-q',
        qos,
      ]);
      assert.equal(result.code, 0, result.stderr);
    }
    await waitFor(() => seen.filter((message) => message.topic.startsWith('interop/from-mosquitto/')).length === 2, 3000, 'both messages');
    assert.deepEqual(
      seen
        .filter((message) => message.topic.startsWith('interop/from-mosquitto/'))
        .map((message) => [message.topic, message.payload, message.qos]),
      [
        ['interop/from-mosquitto/0', 'hello at QoS 0 – ünïcödé', 0],
        ['interop/from-mosquitto/1', 'hello at QoS 1 – ünïcödé', 1],
      ],
    );
  });

  it('mqtt.js 3.1.1 publishes retained → mosquitto_sub -u/-P receives it', async () => {
    await listener.publishAsync('interop/retained', 'retained from mqtt.js', { qos: 1, retain: true });
    const result = await run(MOSQUITTO_SUB, [...hostArgs(), ...credentials, '-t', 'interop/retained', '-C', '1', '-W', '10', '-v']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, 'interop/retained retained from mqtt.js\n');
  });

  it('mqtt.js 3.1.1 publishes live → a running mosquitto_sub -q 1 receives every message in order', async () => {
    // Running while the test publishes; it exits by itself after 5 messages (or -W 10 s).
    const receiving = run(MOSQUITTO_SUB, [
      ...hostArgs(),
      ...credentials,
      '-i',
      'mosquitto-live',
      '-q',
      '1',
      '-t',
      'interop/live/#',
      '-C',
      '5',
      '-W',
      '10',
      '-v',
    ]);
    await waitFor(() => subscribed.includes('mosquitto-live'), 5000, 'mosquitto_sub to subscribe');
    for (let index = 1; index <= 5; index++)
      await listener.publishAsync(`interop/live/${index}`, `message ${index}`, { qos: index % 2 === 0 ? 0 : 1 });
    const { code, stdout, stderr } = await receiving;
    assert.equal(code, 0, stderr);
    assert.equal(stdout, [1, 2, 3, 4, 5].map((index) => `interop/live/${index} message ${index}\n`).join(''));
  });

  it('mosquitto_pub -r (retained) → a new mqtt.js subscriber gets it with the retain flag', async () => {
    const result = await run(MOSQUITTO_PUB, [
      ...hostArgs(),
      ...credentials,
      '-t',
      'interop/mosquitto-retained',
      '-m',
      'kept',
      '-q',
      '1',
      '-r',
    ]);
    assert.equal(result.code, 0, result.stderr);
    const late = await connectClient(broker.url(), { ...USER, protocolVersion: 4 });
    clients.push(late);
    const lateSeen = recordMessages(late);
    await late.subscribeAsync('interop/mosquitto-retained', { qos: 1 });
    await waitFor(() => lateSeen.length === 1, 3000, 'the retained message');
    assert.deepEqual(lateSeen[0], { topic: 'interop/mosquitto-retained', payload: 'kept', qos: 1, retain: true });
  });

  it('mqtt.js speaking MQTT 3.1 (MQIsdp) also works', async () => {
    const old = await connectClient(broker.url(), { ...USER, protocolId: 'MQIsdp', protocolVersion: 3, clientId: 'mqtt31-client' });
    clients.push(old);
    await roundTrip(old, seen, 'interop/mqtt31', 'from an MQTT 3.1 client');
  });

  it('mosquitto clients with a wrong password, or none, are refused with the right CONNACK (exit codes 4 and 5)', async () => {
    const wrong = await run(MOSQUITTO_SUB, [...hostArgs(), '-u', USER.username, '-P', 'wrong', '-t', 'x', '-C', '1', '-W', '5']);
    assert.equal(wrong.code, 4);
    assert.match(wrong.stderr, /bad user name or password/);
    const anonymous = await run(MOSQUITTO_PUB, [...hostArgs(), '-t', 'interop/anon', '-m', 'x']);
    assert.equal(anonymous.code, 5);
    assert.match(anonymous.stderr, /not authorised/);
  });

  describe('MQTT 5 (aedes speaks 3.1.1: src/broker/mqtt5.ts translates for MQTT 5 clients)', () => {
    it('mqtt.js with protocolVersion 5 connects and exchanges messages with 3.1.1 clients both ways', async () => {
      const client5 = await connectClient(broker.url(), { ...USER, protocolVersion: 5, clientId: 'mqttjs-v5' });
      clients.push(client5);
      const got5 = recordMessages(client5);
      assert.deepEqual(await subscribeGranted(client5, ['interop/to-v5/#']), [1]);
      await roundTrip(client5, seen, 'interop/from-v5', 'hello from MQTT 5');
      await roundTrip(listener, got5, 'interop/to-v5/x', 'hello to MQTT 5');
    });

    it('mqtt.js v5 with a wrong password, or none, is refused with the MQTT 5 CONNACK reason (0x86, 0x87)', async () => {
      const wrong = await tryConnect(broker.url(), { username: USER.username, password: 'wrong', protocolVersion: 5 });
      assert.equal(!wrong.ok && wrong.code, 0x86, JSON.stringify(wrong));
      const anonymous = await tryConnect(broker.url(), { protocolVersion: 5 });
      assert.equal(!anonymous.ok && anonymous.code, 0x87, JSON.stringify(anonymous));
    });

    it('mosquitto_sub -V mqttv5 receives a retained message; mosquitto_pub -V mqttv5 publishes to a 3.1.1 subscriber', async () => {
      await listener.publishAsync('interop/v5-retained', 'retained for mosquitto v5', { qos: 1, retain: true });
      const sub = await run(MOSQUITTO_SUB, [
        ...hostArgs(),
        ...credentials,
        '-V',
        'mqttv5',
        '-t',
        'interop/v5-retained',
        '-C',
        '1',
        '-W',
        '10',
        '-v',
      ]);
      assert.equal(sub.code, 0, sub.stderr);
      assert.equal(sub.stdout, 'interop/v5-retained retained for mosquitto v5\n');
      const pub = await run(MOSQUITTO_PUB, [
        ...hostArgs(),
        ...credentials,
        '-V',
        'mqttv5',
        '-t',
        'interop/from-mosquitto-v5',
        '-m',
        'hello from mosquitto v5',
        '-q',
        '1',
      ]);
      assert.equal(pub.code, 0, pub.stderr);
      await waitFor(
        () => seen.some((message) => message.topic === 'interop/from-mosquitto-v5' && message.payload === 'hello from mosquitto v5'),
        3000,
        'the mosquitto v5 message',
      );
    });

    it('mosquitto clients -V mqttv5 with a wrong password, or none, are refused (exit codes 134 and 135)', async () => {
      const wrong = await run(MOSQUITTO_SUB, [
        ...hostArgs(),
        '-u',
        USER.username,
        '-P',
        'wrong',
        '-V',
        'mqttv5',
        '-t',
        'x',
        '-C',
        '1',
        '-W',
        '5',
      ]);
      assert.equal(wrong.code, 0x86, wrong.stderr);
      const anonymous = await run(MOSQUITTO_PUB, [...hostArgs(), '-V', 'mqttv5', '-t', 'interop/anon', '-m', 'x']);
      assert.equal(anonymous.code, 0x87, anonymous.stderr);
    });

    it('after the MQTT 5 clients the broker still serves 3.1.1 clients', async () => {
      const fresh = await connectClient(broker.url(), { ...USER, protocolVersion: 4 });
      clients.push(fresh);
      await roundTrip(fresh, seen, 'interop/after-v5', 'still serving');
      const result = await run(MOSQUITTO_PUB, [...hostArgs(), ...credentials, '-t', 'interop/after-v5-mosquitto', '-m', 'ok']);
      assert.equal(result.code, 0, result.stderr);
      await waitFor(() => seen.some((message) => message.topic === 'interop/after-v5-mosquitto'), 3000, 'the mosquitto message');
    });
  });
});
