// The supervisor on its own, on a fake clock: start order and reverse stop, what a failed start
// means (fatal, retry with back-off, continue), stop groups, and removal during a retry.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Supervisor, type Feature } from '../src/app/supervisor.js';
import { CapturedLog } from './helpers/broker-harness.js';
import { FakeClock } from './helpers/fake-clock.js';

/** A feature that writes what happens to it into `journal`; `failures` starts fail first. */
function feature(
  name: string,
  journal: string[],
  options: { failures?: number; error?: string; stop?: () => Promise<void> } = {},
): Feature & { attempts: number } {
  let failures = options.failures ?? 0;
  const made = {
    name,
    attempts: 0,
    start: async () => {
      made.attempts++;
      await Promise.resolve();
      if (failures > 0) {
        failures--;
        journal.push(`${name} failed`);
        throw new Error(options.error ?? `${name} cannot start`);
      }
      journal.push(`${name} started`);
    },
    stop: async () => {
      journal.push(`${name} stopping`);
      await options.stop?.();
      journal.push(`${name} stopped`);
    },
  };
  return made;
}

function setup() {
  const clock = new FakeClock(0);
  const logs = new CapturedLog();
  // random() = 1: the back-off is its ceiling, 1 s, 2 s, 4 s, …
  const supervisor = new Supervisor({ log: logs.log, clock, backoff: { initial: 1000, max: 30_000 }, random: () => 1 });
  return { clock, logs, supervisor, journal: [] as string[] };
}

describe('Supervisor', () => {
  it('starts features in the order they were added and stops them in reverse', async () => {
    const { supervisor, journal } = setup();
    for (const name of ['a', 'b', 'c']) void supervisor.add(feature(name, journal));
    await supervisor.start();
    assert.deepEqual(journal.splice(0), ['a started', 'b started', 'c started']);
    assert.deepEqual(
      supervisor.list().map((status) => [status.name, status.state]),
      [
        ['a', 'running'],
        ['b', 'running'],
        ['c', 'running'],
      ],
    );
    await supervisor.stop();
    assert.deepEqual(journal, ['c stopping', 'c stopped', 'b stopping', 'b stopped', 'a stopping', 'a stopped']);
    assert.deepEqual(
      supervisor.list().map((status) => status.state),
      ['stopped', 'stopped', 'stopped'],
    );
  });

  it('a fatal failure stops what was started (and the failed one, to release what it left), in reverse, and rejects with its error', async () => {
    const { supervisor, journal } = setup();
    void supervisor.add(feature('a', journal));
    void supervisor.add(feature('b', journal, { failures: 1, error: 'port taken' }));
    void supervisor.add(feature('c', journal));
    await assert.rejects(supervisor.start(), /^Error: port taken$/);
    assert.deepEqual(journal, ['a started', 'b failed', 'b stopping', 'b stopped', 'a stopping', 'a stopped']);
    assert.equal(supervisor.status('c')?.state, 'idle', 'never started, never stopped');
  });

  it('"continue": logged and reported, the rest runs, no second attempt', async () => {
    const { supervisor, journal, logs, clock } = setup();
    const ops = feature('ops', journal, { failures: 5, error: 'EADDRINUSE' });
    void supervisor.add(feature('a', journal));
    void supervisor.add(ops, { onStartFailure: 'continue', failureMessage: 'no ops endpoint' });
    void supervisor.add(feature('c', journal));
    await supervisor.start();
    assert.deepEqual(journal.splice(0), ['a started', 'ops failed', 'c started']);
    assert.deepEqual(supervisor.status('ops'), { name: 'ops', state: 'failed', lastError: 'EADDRINUSE', attempts: 1 });
    assert.deepEqual(
      logs.withMessage('no ops endpoint').map((record) => [record.feature, record.error]),
      [['ops', 'EADDRINUSE']],
    );
    await clock.advanceTo(120_000);
    assert.equal(ops.attempts, 1);
  });

  it('"retry": tried again with growing back-off while the rest runs, logged when the reason changes, until it starts', async () => {
    const { supervisor, journal, logs, clock } = setup();
    const device = feature('device x', journal, { failures: 3, error: 'driver cannot be created' });
    const states: string[] = [];
    void supervisor.add(device, {
      onStartFailure: 'retry',
      failureMessage: 'device could not be started',
      onState: (status) => states.push(status.state),
    });
    void supervisor.add(feature('ops', journal));
    await supervisor.start();
    assert.deepEqual(journal.splice(0), ['device x failed', 'ops started']);
    assert.deepEqual(supervisor.status('device x'), {
      name: 'device x',
      state: 'failed',
      lastError: 'driver cannot be created',
      attempts: 1,
      nextTryAt: 1000,
    });
    await clock.advanceTo(999);
    assert.equal(device.attempts, 1);
    await clock.advanceTo(1000);
    assert.equal(device.attempts, 2);
    assert.equal(supervisor.status('device x')?.nextTryAt, 1000 + 2000);
    await clock.advanceTo(3000);
    assert.equal(device.attempts, 3);
    assert.equal(supervisor.status('device x')?.nextTryAt, 3000 + 4000);
    await clock.advanceTo(7000);
    assert.equal(device.attempts, 4);
    assert.deepEqual(supervisor.status('device x'), { name: 'device x', state: 'running', attempts: 4 });
    assert.deepEqual(states, ['starting', 'failed', 'starting', 'failed', 'starting', 'failed', 'starting', 'running']);
    // One line for the reason (it never changed), one when it finally started.
    assert.deepEqual(
      logs.withMessage('device could not be started').map((record) => [record.error, record.retryInMs]),
      [['driver cannot be created', 1000]],
    );
    assert.equal(logs.withMessage('device x started after 3 failed attempts').length, 1);
    await clock.advanceTo(100_000);
    assert.equal(device.attempts, 4, 'no more attempts once it runs');
  });

  it('stop() cancels retries; remove() stops one feature (failed or running) and forgets it', async () => {
    const { supervisor, journal, clock } = setup();
    const flaky = feature('flaky', journal, { failures: 100 });
    void supervisor.add(feature('a', journal));
    void supervisor.add(flaky, { onStartFailure: 'retry' });
    void supervisor.add(feature('b', journal));
    await supervisor.start();
    await supervisor.remove('flaky');
    assert.equal(supervisor.status('flaky'), undefined);
    await clock.advanceTo(60_000);
    assert.equal(flaky.attempts, 1, 'removed during its back-off: never tried again');
    assert.deepEqual(journal.splice(0), ['a started', 'flaky failed', 'b started', 'flaky stopping', 'flaky stopped']);
    // Added while running: started at once; a retry feature resolves false when its first start fails.
    const late = feature('late', journal, { failures: 100 });
    assert.equal(await supervisor.add(late, { onStartFailure: 'retry' }), false);
    assert.equal(await supervisor.add(feature('c', journal)), true);
    await supervisor.stop();
    await clock.advanceTo(120_000);
    assert.equal(late.attempts, 1, 'stop() cancelled its retry');
    assert.deepEqual(journal, [
      'late failed',
      'c started',
      'c stopping',
      'c stopped',
      'late stopping',
      'late stopped',
      'b stopping',
      'b stopped',
      'a stopping',
      'a stopped',
    ]);
  });

  it('a fatal feature added while running that fails is stopped, forgotten, and rejects', async () => {
    const { supervisor, journal } = setup();
    await supervisor.start();
    await assert.rejects(supervisor.add(feature('bad', journal, { failures: 1, error: 'nope' })), /nope/);
    assert.equal(supervisor.status('bad'), undefined);
    assert.deepEqual(journal, ['bad failed', 'bad stopping', 'bad stopped']);
    await supervisor.add(feature('a', journal));
    assert.throws(() => supervisor.add(feature('a', journal)), /already supervised/, 'names are unique');
  });

  it('features of one stop group stop together, where the last of them started comes in the stop order', async () => {
    const { supervisor, journal } = setup();
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    void supervisor.add(feature('broker', journal));
    void supervisor.add(feature('device 1', journal, { stop: () => gate }), { stopGroup: 'devices' });
    void supervisor.add(feature('device 2', journal, { stop: () => gate }), { stopGroup: 'devices' });
    void supervisor.add(feature('ops', journal));
    await supervisor.start();
    await supervisor.add(feature('device 3', journal, { stop: () => gate }), { stopGroup: 'devices' });
    journal.splice(0);
    const stopped = supervisor.stop();
    for (let turn = 0; turn < 10; turn++) await Promise.resolve();
    // Every device is stopping at once; nothing before them waits yet.
    assert.deepEqual(journal.splice(0), ['device 1 stopping', 'device 2 stopping', 'device 3 stopping']);
    release();
    await stopped;
    assert.deepEqual(journal, [
      'device 1 stopped',
      'device 2 stopped',
      'device 3 stopped',
      'ops stopping',
      'ops stopped',
      'broker stopping',
      'broker stopped',
    ]);
  });

  it('a stop waits for a start in progress; a feature that fails to stop is logged, the others still stop, and stop() rejects', async () => {
    const { supervisor, journal, logs } = setup();
    let finishStart: () => void = () => undefined;
    const slow: Feature = {
      name: 'slow',
      start: () => new Promise<void>((resolve) => (finishStart = resolve)).then(() => void journal.push('slow started')),
      stop: () => {
        journal.push('slow stop failed');
        throw new Error('socket would not close');
      },
    };
    void supervisor.add(feature('a', journal));
    await supervisor.start();
    const adding = supervisor.add(slow);
    for (let turn = 0; turn < 10; turn++) await Promise.resolve();
    const stopped = supervisor.stop();
    for (let turn = 0; turn < 10; turn++) await Promise.resolve();
    assert.deepEqual(journal, ['a started'], 'nothing stops while the start of "slow" is in progress');
    finishStart();
    assert.equal(await adding, true);
    await assert.rejects(stopped, /socket would not close/);
    assert.deepEqual(journal, ['a started', 'slow started', 'slow stop failed', 'a stopping', 'a stopped']);
    assert.deepEqual(
      logs.withMessage('slow did not stop cleanly').map((record) => record.error),
      ['socket would not close'],
    );
    assert.equal(supervisor.status('slow')?.state, 'stopped');
  });
});
