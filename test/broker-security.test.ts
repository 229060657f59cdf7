// Table tests of the integrated broker's pure security pieces: subscription filter coverage,
// ACL rules (per user, default, %u/%c), scrypt password hashes and the MQTT packet size guard.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { generate, type Packet } from 'mqtt-packet';
import { PacketSizeGuard } from '../src/broker/broker.js';
import { Acl, filterCovers, hashPassword, verifyPassword, type Identity } from '../src/broker/security.js';
import { brokerSection } from '../src/config/schema.js';
import { topicMatches } from '../src/northbound/topics.js';

describe('filterCovers(allowed, requested)', () => {
  const table: Array<[allowed: string, requested: string, covered: boolean]> = [
    ['#', '#', true],
    ['#', 'a/b/c', true],
    ['#', '+/x', true],
    ['plant/#', 'plant/+/temp', true],
    ['plant/#', 'plant/line1/#', true],
    ['plant/#', 'plant', true], // "#" includes the parent level
    ['plant/#', 'plant/#', true],
    ['plant/#', '#', false],
    ['plant/#', '+/temp', false],
    ['plant/#', '+/#', false],
    ['plant/#', 'plants/x', false],
    ['plant/+/temp', 'plant/+/temp', true],
    ['plant/+/temp', 'plant/line1/temp', true],
    ['plant/+/temp', 'plant/#', false],
    ['plant/+/temp', 'plant/line1/+', false],
    ['plant/+/temp', 'plant/line1/#', false],
    ['plant/+/temp', 'plant/line1/temp/x', false],
    ['plant/+/temp', 'plant/line1', false],
    ['plant/+/temp', '+/line1/temp', false],
    ['a/b', 'a/b', true],
    ['a/b', 'a/+', false],
    ['a/b', 'a/#', false],
    ['a/b', 'a', false],
    ['a/b', 'a/b/c', false],
    ['+', 'x', true],
    ['+', '+', true],
    ['+', '#', false],
    ['+', 'x/y', false],
    ['a/+/#', 'a/b', true],
    ['a/+/#', 'a/+', true],
    ['a/+/#', 'a/+/#', true],
    ['a/+/#', 'a/#', false], // a/# also reaches "a" itself, which a/+/# does not
    ['users/alice/#', 'users/+/inbox', false],
    ['users/alice/#', 'users/alice/inbox', true],
  ];
  for (const [allowed, requested, covered] of table) {
    it(`${covered ? 'covers' : 'does not cover'}: allowed "${allowed}", requested "${requested}"`, () => {
      assert.equal(filterCovers(allowed, requested), covered);
    });
  }

  it('is sound: whenever it says "covered", every topic the request matches is matched by the allowed filter', () => {
    const levels = ['a', 'b', 'plant', 'line1', 'temp'];
    const topics: string[] = [];
    const grow = (prefix: string[], depth: number) => {
      if (prefix.length > 0) topics.push(prefix.join('/'));
      if (depth === 0) return;
      for (const level of levels) grow([...prefix, level], depth - 1);
    };
    grow([], 4);
    const filters = [...new Set(table.flatMap(([allowed, requested]) => [allowed, requested]))];
    let checkedPairs = 0;
    for (const allowed of filters) {
      for (const requested of filters) {
        if (!filterCovers(allowed, requested)) continue;
        checkedPairs++;
        for (const topic of topics) {
          if (topicMatches(requested, topic))
            assert.ok(topicMatches(allowed, topic), `"${allowed}" claims to cover "${requested}" but not topic "${topic}"`);
        }
      }
    }
    assert.ok(checkedPairs > 30, `checked ${checkedPairs} covered pairs`);
  });
});

describe('Acl', () => {
  const rules = brokerSection.parse({
    acl: [
      { user: 'admin', publish: ['#'], subscribe: ['#'] },
      { user: 'alice', publish: ['plant/line1/cmd/#'], subscribe: ['plant/#'] },
      // The default rule: every client, anonymous ones too.
      { publish: ['users/%u/#', 'devices/%c/out'], subscribe: ['users/%u/#', 'public/#', 'devices/%c/in'] },
    ],
  }).acl;
  const acl = new Acl(rules);
  const who = (username: string | undefined, clientId = 'client-1'): Identity => ({ username, clientId });

  const publishTable: Array<[Identity, string, boolean, string]> = [
    [who('admin'), 'anything/at/all', true, 'admin rule "#"'],
    [who('alice'), 'plant/line1/cmd/start', true, 'alice rule'],
    [who('alice'), 'plant/line2/cmd/start', false, 'outside alice rule'],
    [who('alice'), 'plant/line1/temp', false, 'alice may subscribe there, not publish'],
    [who('alice'), 'users/alice/status', true, 'default %u rule'],
    [who('alice'), 'users/bob/status', false, "another user's %u space"],
    [who('bob'), 'users/bob/status', true, 'default %u rule for a user without own rule'],
    [who('bob'), 'plant/line1/cmd/start', false, "alice's rule is not bob's"],
    [who(undefined), 'users/undefined/x', false, 'anonymous: %u never matches'],
    [who(undefined), 'users//x', false, 'anonymous: %u is not the empty string'],
    [who(undefined, 'dev-7'), 'devices/dev-7/out', true, 'anonymous with %c'],
    [who('bob', 'dev-7'), 'devices/dev-7/out', true, '%c for a user'],
    [who('bob', 'dev-7'), 'devices/dev-8/out', false, "another client's %c"],
    [who('a/b'), 'users/a/b/x', false, 'a username with "/" cannot widen %u'],
    [who('x', 'a/b'), 'devices/a/b/out', false, 'a client id with "/" cannot widen %c'],
    [who(undefined, 'x+'), 'devices/x+/out', false, 'a client id with "+" never matches'],
  ];
  for (const [identity, topic, allowed, why] of publishTable) {
    it(`publish ${allowed ? 'allowed' : 'denied'}: ${identity.username ?? '(anonymous)'}/${identity.clientId} on "${topic}" (${why})`, () => {
      assert.equal(acl.mayPublish(identity, topic), allowed);
    });
  }

  const subscribeTable: Array<[Identity, string, boolean, string]> = [
    [who('admin'), '#', true, 'admin rule "#"'],
    [who('alice'), 'plant/+/temp', true, 'inside plant/#'],
    [who('alice'), 'plant/#', true, 'exactly the rule'],
    [who('alice'), '#', false, '"#" would widen plant/#'],
    [who('alice'), '+/line1/temp', false, '"+" at the first level would widen plant/#'],
    [who('alice'), 'users/alice/#', true, 'default %u rule'],
    [who('alice'), 'users/+/inbox', false, 'a wildcard over other users'],
    [who('alice'), 'users/#', false, 'all users'],
    [who('bob'), 'users/bob/inbox', true, 'own %u space'],
    [who('bob'), 'plant/#', false, "alice's rule is not bob's"],
    [who('bob'), 'public/news', true, 'default rule for every client'],
    [who(undefined), 'public/#', true, 'default rule applies to anonymous clients'],
    [who(undefined), 'users/+/x', false, 'anonymous: %u rule skipped'],
    [who(undefined), '#', false, 'anonymous: nothing beyond the default rule'],
    [who(undefined, 'dev-7'), 'devices/dev-7/in', true, '%c'],
    [who(undefined, 'dev-7'), 'devices/+/in', false, '%c does not allow a wildcard over other clients'],
    [who(undefined, '+'), 'devices/+/in', false, 'client id "+" is no wildcard'],
    [who('#'), 'users/#', false, 'username "#" is no wildcard'],
  ];
  for (const [identity, filter, allowed, why] of subscribeTable) {
    it(`subscribe ${allowed ? 'allowed' : 'denied'}: ${identity.username ?? '(anonymous)'}/${identity.clientId} to "${filter}" (${why})`, () => {
      assert.equal(acl.maySubscribe(identity, filter), allowed);
    });
  }

  it('without rules everything is allowed (anonymous clients too)', () => {
    const open = new Acl(undefined);
    assert.equal(open.mayPublish(who(undefined), 'a/b'), true);
    assert.equal(open.maySubscribe(who(undefined), '#'), true);
    assert.equal(open.maySubscribe(who('x'), 'a/#'), true);
  });

  it('$SYS only for a rule that names it: never without rules, never through a wildcard', () => {
    const open = new Acl(undefined);
    for (const asked of ['$SYS/#', '$SYS', '$SYS/broker/clients']) {
      assert.equal(open.maySubscribe(who('admin'), asked), false, asked);
      assert.equal(open.maySubscribe(who(undefined), asked), false, asked);
    }
    const rules = new Acl(
      brokerSection.parse({
        acl: [
          { user: 'admin', subscribe: ['#', '+/#', '$SYS/#'] },
          { user: 'ops', subscribe: ['#', '+/broker/#'] },
        ],
      }).acl,
    );
    assert.equal(rules.maySubscribe(who('admin'), '$SYS/#'), true);
    assert.equal(rules.maySubscribe(who('admin'), '$SYS/x/new/clients'), true);
    assert.equal(rules.maySubscribe(who('ops'), '$SYS/#'), false);
    assert.equal(rules.maySubscribe(who('ops'), '$SYS/broker/x'), false);
    assert.equal(rules.maySubscribe(who('ops'), 'plant/broker/x'), true);
  });

  it('an empty rule list denies everything', () => {
    const closed = new Acl(brokerSection.parse({ acl: [] }).acl);
    assert.equal(closed.mayPublish(who('admin'), 'a/b'), false);
    assert.equal(closed.maySubscribe(who('admin'), 'a/b'), false);
  });

  describe('deny rules (evaluated before allows)', () => {
    const denying = new Acl(
      brokerSection.parse({
        acl: [
          { user: 'admin', publish: ['#'], subscribe: ['#'] },
          {
            user: 'alice',
            publish: ['plant/#'],
            subscribe: ['plant/#'],
            deny: { publish: ['plant/secret/#', 'plant/+/stop'], subscribe: ['plant/secret/#'] },
          },
          // For every client, admin included.
          { subscribe: ['public/#'], deny: { subscribe: ['public/private'] } },
        ],
      }).acl,
    );
    const table: Array<[action: 'publish' | 'subscribe', Identity, string, boolean, string]> = [
      ['publish', who('alice'), 'plant/line1/temp', true, 'allowed, not denied'],
      ['publish', who('alice'), 'plant/secret/key', false, 'inside the denied filter'],
      ['publish', who('alice'), 'plant/secret', false, '"#" includes the parent level'],
      ['publish', who('alice'), 'plant/line1/stop', false, 'a "+" deny'],
      ['publish', who('alice'), 'plant/secrets/x', true, 'only a prefix alike'],
      ['publish', who('admin'), 'plant/secret/key', true, "alice's deny is not admin's"],
      ['subscribe', who('alice'), 'plant/#', true, 'overlaps the deny: granted, deliveries filtered'],
      ['subscribe', who('alice'), 'plant/+/key', true, 'overlaps the deny'],
      ['subscribe', who('alice'), 'plant/secret/#', false, 'exactly the deny'],
      ['subscribe', who('alice'), 'plant/secret/+', false, 'inside the deny'],
      ['subscribe', who('alice'), 'plant/secret/key', false, 'a topic inside the deny (also how deliveries are checked)'],
      ['subscribe', who('alice'), 'plant/line1/stop', true, 'the publish deny does not deny subscribing'],
      ['subscribe', who('admin'), 'public/private', false, 'a deny without user applies to everyone, admin too'],
      ['subscribe', who('admin'), 'public/#', true, 'overlapping the deny'],
      ['subscribe', who(undefined), 'public/news', true, 'the default rule'],
      ['subscribe', who(undefined), 'public/private', false, 'the default deny'],
    ];
    for (const [action, identity, topic, allowed, why] of table) {
      it(`${action} ${allowed ? 'allowed' : 'denied'}: ${identity.username ?? '(anonymous)'} on "${topic}" (${why})`, () => {
        assert.equal(action === 'publish' ? denying.mayPublish(identity, topic) : denying.maySubscribe(identity, topic), allowed);
      });
    }

    it('deny patterns take no %u or %c', () => {
      for (const pattern of ['users/%u/secret', 'devices/%c/#']) {
        const result = brokerSection.safeParse({ acl: [{ deny: { publish: [pattern] } }] });
        assert.equal(result.success, false, pattern);
      }
    });
  });

  it('a rule for a user never applies to an anonymous client', () => {
    const userOnly = new Acl(brokerSection.parse({ acl: [{ user: 'alice', publish: ['#'], subscribe: ['#'] }] }).acl);
    assert.equal(userOnly.mayPublish(who('alice'), 'x'), true);
    assert.equal(userOnly.mayPublish(who(undefined), 'x'), false);
    assert.equal(userOnly.maySubscribe(who(undefined), 'x'), false);
  });
});

describe('hashPassword / verifyPassword', () => {
  it('hashes in the documented format, accepted by the config schema, with a fresh salt each time', async () => {
    const [first, second] = await Promise.all([hashPassword('s3cret'), hashPassword('s3cret')]);
    assert.match(first, /^scrypt\$16384\$8\$1\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/);
    assert.notEqual(first, second);
    assert.equal(Buffer.from(first.split('$')[5]!, 'base64').length, 32);
    const parsed = brokerSection.parse({ users: [{ username: 'u', passwordHash: first }] });
    assert.equal(parsed.users[0]!.passwordHash, first);
  });

  const verifyTable: Array<[password: string, stored: string, expected: boolean]> = [
    ['s3cret', 's3cret', true],
    ['s3cret', 'S3cret', false],
    ['s3cret ', 's3cret', false],
    ['', 's3cret', false],
    ['pässwörd 🔑', 'pässwörd 🔑', true],
    ['pässwörd 🔑', 'password 🔑', false],
  ];
  for (const [given, stored, expected] of verifyTable) {
    it(`verify ${JSON.stringify(given)} against the hash of ${JSON.stringify(stored)} → ${expected}`, async () => {
      assert.equal(await verifyPassword(given, await hashPassword(stored)), expected);
    });
  }

  it('malformed hashes never verify', async () => {
    const good = await hashPassword('pw');
    const [, N, r, p, salt, key] = good.split('$');
    const tamperedKey = Buffer.from(key!, 'base64');
    tamperedKey[0] = tamperedKey[0]! ^ 1;
    for (const hash of [
      '',
      'pw',
      `bcrypt$${N}$${r}$${p}$${salt}$${key}`,
      `scrypt$${N}$${r}$${p}$${salt}`,
      `scrypt$${N}$${r}$${p}$$${key}`,
      `scrypt$${N}$${r}$${p}$${salt}$${tamperedKey.toString('base64')}`,
    ]) {
      assert.equal(await verifyPassword('pw', hash), false, hash);
    }
  });

  it('a hash with an empty key is refused by the config schema and never verifies a password', async () => {
    const hash = 'scrypt$16384$8$1$c2FsdHNhbHRzYWx0$=';
    assert.equal(brokerSection.safeParse({ users: [{ username: 'u', passwordHash: hash }] }).success, false, 'the schema refuses it');
    assert.equal(await verifyPassword('any password at all', hash), false);
  });
});

describe('PacketSizeGuard', () => {
  const bytes = (...values: number[]) => Buffer.from(values);
  /** Feeds chunks in order; the index of the chunk that reported, and what it reported. */
  const feedAll = (max: number, chunks: Buffer[]): { chunk: number; size: number } | undefined => {
    const guard = new PacketSizeGuard(max);
    for (let index = 0; index < chunks.length; index++) {
      const size = guard.feed(chunks[index]!);
      if (size !== undefined) return { chunk: index, size };
    }
    return undefined;
  };
  const oneByOne = (buffer: Buffer) => [...buffer].map((byte) => Buffer.from([byte]));
  const publish = (payloadBytes: number, payloadByte = 0xff): Buffer =>
    generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(payloadBytes, payloadByte), qos: 0, retain: false, dup: false } as Packet);

  it('zero-length packets (PINGREQ, DISCONNECT) back to back keep the framing', () => {
    assert.equal(feedAll(10, [bytes(0xc0, 0x00, 0xc0, 0x00, 0xe0, 0x00)]), undefined);
    assert.deepEqual(feedAll(10, [bytes(0xc0, 0x00, 0xc0, 0x00), bytes(0x30, 11)]), { chunk: 1, size: 11 });
  });

  it('the limit is on the remaining length: equal passes, one more is reported', () => {
    assert.equal(feedAll(100, [bytes(0x30, 100)]), undefined);
    assert.deepEqual(feedAll(100, [bytes(0x30, 101)]), { chunk: 0, size: 101 });
  });

  it('a fixed header split after its first byte', () => {
    assert.deepEqual(feedAll(100, [bytes(0x30), bytes(101)]), { chunk: 1, size: 101 });
  });

  const multiByte: Array<[label: string, lengthBytes: number[], size: number]> = [
    ['2 bytes (321)', [0xc1, 0x02], 321],
    ['2 bytes (16383, the largest)', [0xff, 0x7f], 16_383],
    ['3 bytes (16384, the smallest)', [0x80, 0x80, 0x01], 16_384],
    ['3 bytes (2097151)', [0xff, 0xff, 0x7f], 2_097_151],
    ['4 bytes (268435455, the MQTT maximum)', [0xff, 0xff, 0xff, 0x7f], 268_435_455],
  ];
  for (const [label, lengthBytes, size] of multiByte) {
    it(`multi-byte remaining length, ${label}: in one chunk and split between every byte`, () => {
      assert.deepEqual(feedAll(320, [bytes(0x30, ...lengthBytes)]), { chunk: 0, size });
      assert.deepEqual(
        feedAll(320, oneByOne(bytes(0x30, ...lengthBytes))),
        { chunk: lengthBytes.length, size },
        'reported on the last length byte',
      );
      assert.equal(feedAll(size, [bytes(0x30, ...lengthBytes)]), undefined, 'not reported when exactly at the limit');
    });
  }

  it('payload bytes that look like a header are not read as one (valid stream fed byte by byte)', () => {
    const stream = Buffer.concat([
      generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30, clientId: 'c' }),
      generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/#', qos: 1 }] }),
      publish(300, 0xff),
      publish(900, 0x80),
      generate({ cmd: 'pingreq' }),
    ]);
    assert.equal(feedAll(1000, oneByOne(stream)), undefined);
    assert.equal(feedAll(1000, [stream]), undefined);
  });

  it('reports a big packet after small ones, as soon as its length is known and before its body', () => {
    const small = Buffer.concat([publish(300), generate({ cmd: 'pingreq' })]);
    const big = publish(2000);
    const headerBytes = 3; // 0x30 + 2 length bytes for 2000 + topic
    const chunks = [...oneByOne(small), ...oneByOne(big)];
    const reported = feedAll(1000, chunks);
    assert.ok(reported, 'reported');
    assert.equal(reported.chunk, small.length + headerBytes - 1, 'on the last length byte of the big packet');
    assert.equal(reported.size, big.length - headerBytes);
  });

  it('a big packet in the middle of a chunk', () => {
    const chunk = Buffer.concat([publish(10), publish(10), bytes(0x30, 0x80, 0x10)]);
    assert.deepEqual(feedAll(1000, [chunk]), { chunk: 0, size: 2048 });
  });
});
