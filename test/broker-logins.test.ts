// Failed logins to the integrated broker, limited per remote address: password checks (scrypt)
// run a few at a time, fairly between addresses; one address checks one login at a time, with a
// growing delay after its failures (a delay, never a lockout: a correct password still gets in);
// an address with too many logins waiting gets the excess refused without a check. Clients log in
// from 127.0.0.1 and from 127.0.0.2 (another address of the loopback net: another address key).
import assert from 'node:assert/strict';
import { connect as connectTcp } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { generate, parser, type Packet } from 'mqtt-packet';
import { LoginLimiter, MAX_WAITING_PER_ADDRESS } from '../src/broker/login-limit.js';
import { hashPassword, passwordChecks } from '../src/broker/security.js';
import { BrokerUnderTest } from './helpers/broker-harness.js';
import { waitFor } from './helpers/net.js';

const PASSWORD = 'the right one';
const TCP = [{ type: 'tcp' as const, host: '127.0.0.1', port: 0 }];

interface LoginOutcome {
  /** CONNACK return code; undefined when the connection closed without one. */
  code: number | undefined;
  ms: number;
}

/** The sockets of logins still waiting: hangUp() closes them (their checks are then dropped, not run). */
const open = new Set<import('node:net').Socket>();
const hangUp = () => {
  for (const socket of open) socket.destroy();
};

/** A CONNECT over a raw socket from `localAddress`; resolves with the CONNACK's code (the socket is then closed). */
function login(
  port: number,
  options: { localAddress: string; username: string; password: string; clientId?: string; timeoutMs?: number },
): Promise<LoginOutcome> {
  const started = Date.now();
  return new Promise((resolve) => {
    const socket = connectTcp({ port, host: '127.0.0.1', localAddress: options.localAddress });
    open.add(socket);
    const packets = parser({ protocolVersion: 4 });
    let settled = false;
    const done = (code: number | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      open.delete(socket);
      socket.destroy();
      resolve({ code, ms: Date.now() - started });
    };
    const timer = setTimeout(() => done(undefined), options.timeoutMs ?? 120_000);
    packets.on('packet', (packet: Packet) => {
      if (packet.cmd === 'connack') done(packet.returnCode);
    });
    packets.on('error', () => done(undefined));
    socket.on('data', (chunk: Buffer) => packets.parse(chunk));
    socket.on('error', () => done(undefined));
    socket.on('close', () => done(undefined));
    socket.once('connect', () =>
      socket.write(
        generate({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clean: true,
          keepalive: 60,
          clientId: options.clientId ?? `login-${Math.random().toString(36).slice(2, 10)}`,
          username: options.username,
          password: Buffer.from(options.password),
        }),
      ),
    );
  });
}

const codes = (outcomes: LoginOutcome[]) => {
  const counts = new Map<string, number>();
  for (const outcome of outcomes) counts.set(String(outcome.code), (counts.get(String(outcome.code)) ?? 0) + 1);
  return Object.fromEntries(counts);
};

describe('failed logins, limited per remote address', () => {
  let broker: BrokerUnderTest;
  let hash: string;

  before(async () => {
    hash = await hashPassword(PASSWORD);
  });

  after(async () => {
    hangUp();
    await broker?.close();
  });

  /** Resolves once `count` of the outcomes are in. */
  const settled = async (outcomes: Array<Promise<LoginOutcome>>, count: number) => {
    let done = 0;
    for (const outcome of outcomes) void outcome.then(() => done++);
    await waitFor(
      () => done >= count,
      60_000,
      () => `${count} outcomes (${done} in)`,
    );
  };

  const start = async () => {
    await broker?.close();
    broker = await BrokerUnderTest.start({
      listeners: TCP,
      users: [{ username: 'hmi', passwordHash: hash }],
      // Room for the flood and the real clients.
      limits: { maxConnections: 2000 },
    });
  };

  it('300 wrong passwords at once from 127.0.0.1: a correct login from 127.0.0.2 gets in promptly, never refused', async () => {
    await start();
    const port = broker.port();
    const flood = Array.from({ length: 300 }, (_, index) =>
      login(port, { localAddress: '127.0.0.1', username: index % 2 ? 'hmi' : 'nobody', password: `guess-${index}` }),
    );
    // Let the flood arrive first.
    await waitFor(() => passwordChecks() > 0, 10_000, 'the first password check of the flood');
    const real = await login(port, { localAddress: '127.0.0.2', username: 'hmi', password: PASSWORD, clientId: 'hmi-other-address' });
    // The excess is refused at once; the rest waits its turn, with growing delays: not worth waiting for.
    await settled(flood, 300 - MAX_WAITING_PER_ADDRESS - 1);
    hangUp();
    const outcomes = await Promise.all(flood);
    console.log(
      `correct login from 127.0.0.2 during a 300-login flood from 127.0.0.1: ${real.ms} ms; flood: ${JSON.stringify(codes(outcomes))}`,
    );
    assert.equal(real.code, 0, `the correct login got ${String(real.code)}`);
    // Promptly: a few password checks, not the flood's (300 checks take seconds here).
    assert.ok(real.ms < 3000, `the correct login took ${real.ms} ms`);
    assert.ok(
      outcomes.every((outcome) => outcome.code === 4 || outcome.code === 5 || outcome.code === undefined),
      JSON.stringify(codes(outcomes)),
    );
    assert.ok(
      outcomes.filter((outcome) => outcome.code === 5).length >= 300 - MAX_WAITING_PER_ADDRESS - 2,
      JSON.stringify(codes(outcomes)),
    );
  });

  it('a correct login from the same address as a flood still gets in (a delay, not a lockout)', async () => {
    await start();
    const port = broker.port();
    const flood = Array.from({ length: 100 }, (_, index) =>
      login(port, { localAddress: '127.0.0.1', username: 'hmi', password: `guess-${index}` }),
    );
    await waitFor(() => passwordChecks() > 0, 10_000, 'the first password check of the flood');
    // As an HMI does: try again after a refusal (the queue of this address may be full).
    const started = Date.now();
    let attempts = 0;
    let last: LoginOutcome | undefined;
    while (Date.now() - started < 90_000) {
      attempts++;
      last = await login(port, { localAddress: '127.0.0.1', username: 'hmi', password: PASSWORD, clientId: 'hmi-same-address' });
      if (last.code === 0) break;
      assert.equal(last.code, 5, 'refused only for the crowd, never as a wrong password');
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    const outcomes = await Promise.all(flood);
    console.log(
      `correct login from the flooding address: in after ${Date.now() - started} ms, ${attempts} attempt(s); flood: ${JSON.stringify(codes(outcomes))}`,
    );
    assert.equal(last?.code, 0, `never got in (${attempts} attempts)`);
  });

  it(`logins beyond ${MAX_WAITING_PER_ADDRESS} waiting from one address are refused without a password check, logged once`, async () => {
    await start();
    const port = broker.port();
    const before = passwordChecks();
    const attempts = Array.from({ length: 80 }, (_, index) =>
      login(port, { localAddress: '127.0.0.1', username: 'hmi', password: `guess-${index}` }),
    );
    // The refused ones and the first checked one.
    await settled(attempts, 80 - MAX_WAITING_PER_ADDRESS);
    // Those still waiting leave: their checks are dropped, not run (one may be running).
    hangUp();
    const outcomes = await Promise.all(attempts);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const checked = passwordChecks() - before;
    const wrong = outcomes.filter((outcome) => outcome.code === 4).length;
    const refused = outcomes.filter((outcome) => outcome.code === 5).length;
    console.log(`80 logins at once from one address: ${checked} password checks, ${JSON.stringify(codes(outcomes))}`);
    // Every CONNACK 4 had its check; no refused one had one (nor those that left, but one running then).
    const report = `${checked} checks for ${JSON.stringify(codes(outcomes))}`;
    assert.ok(wrong >= 1 && checked >= wrong && checked <= wrong + 1, report);
    assert.ok(checked <= 80 - refused, report);
    // The excess over the waiting ones (and the one being checked, and a few let in as the queue drained).
    assert.ok(refused >= 80 - MAX_WAITING_PER_ADDRESS - 4, JSON.stringify(codes(outcomes)));
    const warned = broker.logs.withMessage('mqtt logins refused: too many waiting for their password check from one address');
    assert.equal(warned.length, 1, broker.logs.text());
    assert.equal(warned[0]!.address, '127.0.0.1');
    assert.ok(broker.broker.stats.denied >= refused, `denied = ${broker.broker.stats.denied}`);
  });
});

describe('LoginLimiter.check (fair queue, fake clock)', () => {
  /** A limiter on a fake clock whose checks finish when the test says so. */
  const rig = () => {
    let now = 1_000_000;
    const limiter = new LoginLimiter(() => now);
    const running: Array<{ address: string; finish: (ok: boolean) => void }> = [];
    const check = (address: string) =>
      limiter.check(
        address,
        () =>
          new Promise<boolean>((resolve) => {
            running.push({ address, finish: resolve });
          }),
      );
    return {
      limiter,
      running,
      check,
      advance: (ms: number) => {
        now += ms;
      },
    };
  };
  const settle = () => new Promise((resolve) => setImmediate(resolve));

  it('runs at most two checks at once, one per address, taking addresses in turn', async () => {
    const { running, check } = rig();
    const a = Array.from({ length: 5 }, () => check('10.0.0.1'));
    const b = check('10.0.0.2');
    const c = check('10.0.0.3');
    await settle();
    assert.deepEqual(
      running.map((job) => job.address),
      ['10.0.0.1', '10.0.0.2'],
    );
    running[1]!.finish(true);
    await settle();
    assert.deepEqual((await b).outcome, 'checked');
    assert.deepEqual(
      running.map((job) => job.address),
      ['10.0.0.1', '10.0.0.2', '10.0.0.3'],
      '10.0.0.3 before the second of 10.0.0.1',
    );
    running[0]!.finish(true);
    running[2]!.finish(true);
    await c;
    await a[0];
    assert.equal(running.length, 4, 'the next of 10.0.0.1, without a delay after a success');
  });

  it('after failures the next check from that address waits, the longer the more failures; a success still gets in', async () => {
    const { limiter, running, check, advance } = rig();
    assert.equal(limiter.delayFor('10.0.0.1'), 0);
    const first = check('10.0.0.1');
    await settle();
    running[0]!.finish(false);
    assert.deepEqual(await first, { outcome: 'checked', ok: false });
    const delays = [limiter.delayFor('10.0.0.1')];
    assert.ok(delays[0]! > 0);
    // Not before its delay (the fake clock stands still)...
    const second = check('10.0.0.1');
    await settle();
    assert.equal(running.length, 1, 'checked before its delay');
    // ...but once it passed (the limiter's timer looks again: wait for it, bounded).
    advance(delays[0]!);
    await waitFor(() => running.length === 2, 10_000, 'the delayed check');
    running[1]!.finish(false);
    await second;
    for (let failure = 3; failure <= 100; failure++) {
      delays.push(limiter.delayFor('10.0.0.1'));
      advance(delays.at(-1)!);
      const next = check('10.0.0.1');
      await settle();
      assert.equal(running.length, failure, `check ${failure}`);
      running.at(-1)!.finish(false);
      assert.deepEqual(await next, { outcome: 'checked', ok: false });
    }
    assert.ok(delays[5]! > delays[0]!, `growing: ${delays.slice(0, 6).join(', ')}`);
    const capped = limiter.delayFor('10.0.0.1');
    assert.ok(capped >= 1000 && capped <= 5000, `delay after 100 failures: ${capped} ms`);
    // The right password, after the delay: in.
    advance(capped);
    const right = check('10.0.0.1');
    await settle();
    running.at(-1)!.finish(true);
    assert.deepEqual(await right, { outcome: 'checked', ok: true });
    assert.equal(limiter.delayFor('10.0.0.2'), 0, 'another address is not delayed');
    assert.equal(limiter.delayFor('::ffff:10.0.0.1'), capped, 'IPv4-mapped is the same address');
  });

  it('the delay decays after a quiet minute', async () => {
    const { limiter, running, check, advance } = rig();
    const first = check('2001:db8::1');
    await settle();
    running[0]!.finish(false);
    await first;
    assert.ok(limiter.delayFor('2001:db8::2') > 0, 'the same /64');
    advance(61_000);
    assert.equal(limiter.delayFor('2001:db8::1'), 0);
  });

  it(`refuses the logins beyond ${MAX_WAITING_PER_ADDRESS} waiting from one address at once, without checking them`, async () => {
    const { running, check } = rig();
    const all = Array.from({ length: MAX_WAITING_PER_ADDRESS + 5 }, () => check('10.0.0.9'));
    await settle();
    assert.equal(running.length, 1);
    const early = await Promise.race([Promise.all(all.slice(-4)), settle().then(() => 'pending')]);
    assert.deepEqual(
      early,
      Array.from({ length: 4 }, () => ({ outcome: 'refused' })),
    );
    running[0]!.finish(true);
  });

  it('a login whose client left while waiting is dropped without a check', async () => {
    const { limiter, running, check } = rig();
    const first = check('10.0.0.7');
    let gone = false;
    const second = limiter.check(
      '10.0.0.7',
      () => Promise.resolve(true),
      () => gone,
    );
    await settle();
    gone = true;
    running[0]!.finish(true);
    await first;
    assert.deepEqual(await second, { outcome: 'abandoned' });
  });
});
