// Authentication of the integrated broker with real clients: anonymous access off by default
// (CONNACK 5), unknown users and wrong passwords refused (CONNACK 4), the right password — hashed
// by the real `plc2mqtt passwd` — accepted; allowAnonymous; refusals logged without the password.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { MqttClient } from 'mqtt';
import { hashPassword, verifyPassword } from '../src/broker/security.js';
import { brokerSection } from '../src/config/schema.js';
import {
  BrokerUnderTest,
  CLI,
  connectClient,
  endAll,
  passwdHash,
  RawClient,
  recordMessages,
  roundTrip,
  run,
  tryConnect,
} from './helpers/broker-harness.js';

const ALICE_PASSWORD = 'correct horse battery staple';
const BOB_PASSWORD = 'Tr0ub4dor&3 – ünïcödé';

describe('plc2mqtt passwd', () => {
  it('prints a scrypt hash of the password read from stdin, which the schema accepts and verifies', async () => {
    const hash = await passwdHash(ALICE_PASSWORD);
    assert.match(hash, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    assert.equal(brokerSection.parse({ users: [{ username: 'alice', passwordHash: hash }] }).users[0]!.passwordHash, hash);
    assert.equal(await verifyPassword(ALICE_PASSWORD, hash), true);
    assert.equal(await verifyPassword(`${ALICE_PASSWORD}x`, hash), false);
  });

  it('uses the first line only (a trailing CRLF is not part of the password)', async () => {
    const result = await run(process.execPath, [CLI, 'passwd'], { input: 'pw-line-1\r\nsecond line\n' });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(await verifyPassword('pw-line-1', result.stdout.trim()), true);
  });

  it('refuses an empty password (exit 1, no hash printed)', async () => {
    const result = await run(process.execPath, [CLI, 'passwd'], { input: '\n' });
    assert.equal(result.code, 1);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /empty password/);
  });
});

describe('authentication, anonymous access off (the default)', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
      users: [
        { username: 'alice', passwordHash: await passwdHash(ALICE_PASSWORD) },
        { username: 'bob', passwordHash: await hashPassword(BOB_PASSWORD) },
      ],
    });
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  it('the default config has allowAnonymous false', () => {
    assert.equal(brokerSection.parse({}).allowAnonymous, false);
  });

  it('an anonymous client is refused with CONNACK 5 (not authorized)', async () => {
    const outcome = await tryConnect(broker.url());
    assert.equal(outcome.ok, false);
    assert.equal(!outcome.ok && outcome.code, 5, JSON.stringify(outcome));
  });

  it('the refusal is a CONNACK on the wire, then the broker closes the connection', async () => {
    const raw = await RawClient.connect(broker.port());
    try {
      const connack = await raw.next('connack');
      assert.equal(connack.returnCode, 5);
      assert.equal(await raw.closedWithin(2000), true, 'closed after the CONNACK');
    } finally {
      raw.destroy();
    }
  });

  const refusals: Array<[label: string, username: string, password: string | undefined]> = [
    ['an unknown user', 'mallory', ALICE_PASSWORD],
    ['a wrong password', 'alice', 'wrong-password-4711'],
    ["another user's password", 'alice', BOB_PASSWORD],
    ['a username without a password', 'alice', undefined],
    ['a password differing in case', 'alice', ALICE_PASSWORD.toUpperCase()],
  ];
  for (const [label, username, password] of refusals) {
    it(`${label} is refused with CONNACK 4 (bad user name or password)`, async () => {
      const outcome = await tryConnect(broker.url(), password === undefined ? { username } : { username, password });
      assert.equal(outcome.ok, false);
      assert.equal(!outcome.ok && outcome.code, 4, JSON.stringify(outcome));
    });
  }

  it('the right passwords are accepted (hash from `plc2mqtt passwd` and from hashPassword) and the clients talk', async () => {
    const alice = await connectClient(broker.url(), { username: 'alice', password: ALICE_PASSWORD });
    clients.push(alice);
    const bob = await connectClient(broker.url(), { username: 'bob', password: BOB_PASSWORD });
    clients.push(bob);
    const received = recordMessages(bob);
    await bob.subscribeAsync('auth/test', { qos: 1 });
    await roundTrip(alice, received, 'auth/test', 'hello bob');
    assert.equal(broker.broker.clientCount, 2);
  });

  it('a user whose configured hash has an empty key is a config error, not an open door', async () => {
    await assert.rejects(
      BrokerUnderTest.start({
        listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
        users: [{ username: 'typo', passwordHash: 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0$=' }],
      }),
      /passwordHash/,
    );
  });

  it('refusals are counted and logged with the username, never with the password', () => {
    assert.ok(broker.broker.stats.denied >= refusals.length + 2, `denied = ${broker.broker.stats.denied}`);
    const failures = broker.logs.withMessage('mqtt client authentication failed');
    assert.ok(
      failures.some((record) => record.username === 'mallory' && record.why === 'unknown user or no password'),
      JSON.stringify(failures),
    );
    assert.ok(
      failures.some((record) => record.username === 'alice' && record.why === 'wrong password'),
      JSON.stringify(failures),
    );
    const text = broker.logs.text();
    for (const secret of ['wrong-password-4711', ALICE_PASSWORD, BOB_PASSWORD, ALICE_PASSWORD.toUpperCase()])
      assert.ok(!text.includes(secret), `the log contains "${secret}"`);
  });
});

describe('authentication with allowAnonymous', () => {
  let broker: BrokerUnderTest;
  const clients: MqttClient[] = [];

  before(async () => {
    broker = await BrokerUnderTest.start({
      listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }],
      allowAnonymous: true,
      users: [{ username: 'alice', passwordHash: await hashPassword(ALICE_PASSWORD) }],
    });
  });

  after(async () => {
    await endAll(clients);
    await broker?.close();
  });

  it('an anonymous client connects, publishes and subscribes', async () => {
    const anonymous = await connectClient(broker.url());
    clients.push(anonymous);
    const received = recordMessages(anonymous);
    await anonymous.subscribeAsync('anon/#', { qos: 1 });
    await roundTrip(anonymous, received, 'anon/echo', 'hi');
  });

  it('a client that does give a username still needs the right password (CONNACK 4)', async () => {
    const wrong = await tryConnect(broker.url(), { username: 'alice', password: 'nope' });
    assert.equal(!wrong.ok && wrong.code, 4, JSON.stringify(wrong));
    const unknown = await tryConnect(broker.url(), { username: 'nobody', password: 'nope' });
    assert.equal(!unknown.ok && unknown.code, 4, JSON.stringify(unknown));
    const right = await connectClient(broker.url(), { username: 'alice', password: ALICE_PASSWORD });
    clients.push(right);
  });
});
