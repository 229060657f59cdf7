// The console's login limit per remote address, as a unit: failures count before the password
// check, and a login that succeeds takes back only its own attempt, so a user cannot launder
// guesses at someone else's password by logging in as themselves between them. And the trends,
// which cost nothing until someone opens the console.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { before, describe, it } from 'node:test';
import { hashPassword, verifyPassword } from '../src/broker/security.js';
import pino from 'pino';
import { EventBus } from '../src/app/event-bus.js';
import type { GatewayEvents } from '../src/app/events.js';
import { addressKey, ConsoleAuth, LOGIN_FAILURES } from '../src/console/auth.js';
import { ConsoleLive, tagKey } from '../src/console/live.js';
import type { Sample } from '../src/pipeline/normalize.js';

describe('console login limit', () => {
  let users: Array<{ username: string; passwordHash: string; console?: 'viewer' | 'operator' }>;

  before(async () => {
    users = [
      { username: 'ops', passwordHash: await hashPassword('ops-secret'), console: 'operator' },
      { username: 'eve', passwordHash: await hashPassword('eve-secret'), console: 'viewer' },
      { username: 'mqtt-only', passwordHash: await hashPassword('device-secret') },
    ];
  });

  const auth = () => new ConsoleAuth({ loginRequired: true, secure: false, users: () => users });

  it('a success of one user does not clear the failed guesses at another from the same address', async () => {
    const console = auth();
    for (let guess = 1; guess < LOGIN_FAILURES; guess++) assert.equal((await console.login('10.0.0.9', 'ops', `guess-${guess}`)).ok, false);
    assert.equal((await console.login('10.0.0.9', 'eve', 'eve-secret')).ok, true);
    const last = await console.login('10.0.0.9', 'ops', 'guess-last');
    assert.deepEqual([last.ok, !last.ok && last.status], [false, 401]);
    const limited = await console.login('10.0.0.9', 'ops', 'ops-secret');
    assert.deepEqual([limited.ok, !limited.ok && limited.status], [false, 429], 'the right password is refused while limited');
    const elsewhere = await console.login('10.0.0.10', 'ops', 'ops-secret');
    assert.equal(elsewhere.ok, true, 'another address is not limited');
  });

  it('guesses sent at once: two password checks at a time, and five checked guesses per address in all', async () => {
    const console = auth();
    const results = await Promise.all(Array.from({ length: 12 }, (_, index) => console.login('10.0.0.11', 'ops', `parallel-${index}`)));
    let checked = results.filter((result) => !result.ok && result.status === 401).length;
    assert.equal(checked, 2, 'two scrypt checks at once; the rest "too many logins at once"');
    for (let guess = 0; guess < 10; guess++) {
      const result = await console.login('10.0.0.11', 'ops', `after-${guess}`);
      if (!result.ok && result.status === 401) checked++;
    }
    assert.equal(checked, LOGIN_FAILURES);
  });

  it('IPv6 addresses count by their /64, IPv4-mapped ones as IPv4', () => {
    assert.equal(addressKey('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(addressKey('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
    assert.equal(addressKey('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(addressKey('192.0.2.7'), '192.0.2.7');
    assert.equal(addressKey('::1'), '0:0:0:0::/64');
  });

  it('an unknown user, or one without a console role, costs a password check as a known one does (the answer time tells no user names)', async () => {
    const hashes: string[] = [];
    const console = new ConsoleAuth({
      loginRequired: true,
      secure: false,
      users: () => users,
      verify: async (password, hash) => {
        hashes.push(hash);
        return verifyPassword(password, hash);
      },
    });
    await console.login('10.0.0.13', 'nobody-here', 'x');
    await console.login('10.0.0.13', 'mqtt-only', 'device-secret');
    await console.login('10.0.0.13', 'ops', 'wrong');
    assert.equal(hashes.length, 3);
    assert.match(hashes[0]!, /^scrypt\$16384\$8\$1\$/, 'the same scrypt cost as a real hash');
    assert.equal(hashes[0], hashes[1], 'one dummy hash for every name that cannot log in');
  });

  it('a user without a console role cannot log in, with the same message as a wrong password', async () => {
    const console = auth();
    const noRole = await console.login('10.0.0.12', 'mqtt-only', 'device-secret');
    const wrong = await console.login('10.0.0.12', 'ops', 'nope');
    assert.ok(!noRole.ok && !wrong.ok);
    assert.equal(noRole.ok === false && noRole.error, wrong.ok === false && wrong.error);
  });
});

describe('console trends', () => {
  it('are sampled only from the first browser on, and dropped trendMinutes after the last one left', async () => {
    let value = 0;
    const source = {
      bus: new EventBus<GatewayEvents>(),
      eachTag: (visit: (device: string, tag: string, last: Sample | undefined) => void) =>
        visit('plc', 'level', { device: 'plc', group: 'default', tag: 'level', value: value++, quality: 'good', ts: Date.now() }),
      overview: () => ({}),
      outboxDepth: () => undefined,
    };
    const live = new ConsoleLive(source, { updateInterval: 1000, trendMinutes: 1 }, pino({ level: 'silent' }));
    live.start();
    try {
      await new Promise((resolve) => setTimeout(resolve, 1200));
      assert.deepEqual(live.trends.points(tagKey('plc', 'level')), [], 'nobody looked: nothing sampled');
      // A browser: a request/response pair as node:http gives them (what attach uses of them).
      const socket = { setTimeout: () => undefined, setNoDelay: () => undefined };
      const response = Object.assign(new EventEmitter(), {
        writableLength: 0,
        writeHead: () => undefined,
        write: () => true,
        end: () => undefined,
        destroy: () => undefined,
      });
      live.attach({ socket } as never, response as never, () => true);
      assert.equal(live.trends.points(tagKey('plc', 'level')).length, 1, 'sampled at once when a browser connects');
    } finally {
      live.stop();
    }
    assert.deepEqual(live.trends.points(tagKey('plc', 'level')), [], 'stopped: the rings are gone');
  });
});
