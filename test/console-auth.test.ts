// The console's login limit per remote address, as a unit: failures count before the password
// check, and a login that succeeds takes back only its own attempt, so a user cannot launder
// guesses at someone else's password by logging in as themselves between them.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { hashPassword } from '../src/broker/security.js';
import { ConsoleAuth, LOGIN_FAILURES } from '../src/console/auth.js';

describe('console login limit', () => {
  let users: Array<{ username: string; passwordHash: string; console?: 'viewer' | 'operator' }>;

  before(async () => {
    users = [
      { username: 'ops', passwordHash: await hashPassword('ops-secret'), console: 'operator' },
      { username: 'eve', passwordHash: await hashPassword('eve-secret'), console: 'viewer' },
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

  it('guesses sent at once are limited as if one after the other', async () => {
    const console = auth();
    const results = await Promise.all(Array.from({ length: 12 }, (_, index) => console.login('10.0.0.11', 'ops', `parallel-${index}`)));
    const checked = results.filter((result) => !result.ok && result.status === 401).length;
    assert.equal(checked, LOGIN_FAILURES);
    assert.equal(results.filter((result) => !result.ok && result.status === 429).length, 12 - LOGIN_FAILURES);
  });

  it('a user without a console role cannot log in, with the same message as a wrong password', async () => {
    users.push({ username: 'mqtt-only', passwordHash: await hashPassword('device-secret') });
    const console = auth();
    const noRole = await console.login('10.0.0.12', 'mqtt-only', 'device-secret');
    const wrong = await console.login('10.0.0.12', 'ops', 'nope');
    assert.ok(!noRole.ok && !wrong.ok);
    assert.equal(noRole.ok === false && noRole.error, wrong.ok === false && wrong.error);
  });
});
