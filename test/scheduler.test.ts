import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelay } from '../src/util/backoff.js';
import { nextSlot, PollJob, startPhase } from '../src/pipeline/scheduler.js';
import { FakeClock } from './helpers/fake-clock.js';

describe('grid arithmetic', () => {
  const cases: Array<[number, number, number, number]> = [
    // anchor, interval, now → next slot strictly after now
    [0, 1000, 0, 1000],
    [0, 1000, 1, 1000],
    [0, 1000, 999, 1000],
    [0, 1000, 1000, 2000],
    [0, 1000, 3500, 4000],
    [500, 1000, 0, 500],
    [500, 1000, 500, 1500],
  ];
  for (const [anchor, interval, now, expected] of cases) {
    it(`anchor ${anchor}, every ${interval}, now ${now} → ${expected}`, () => assert.equal(nextSlot(anchor, interval, now), expected));
  }

  it('spreads 50 jobs of 1 s over the second, 20 ms apart', () => {
    const phases = Array.from({ length: 50 }, (_, index) => startPhase(index, 50, 1000));
    assert.equal(new Set(phases).size, 50);
    assert.deepEqual(phases.slice(0, 3), [0, 20, 40]);
    assert.ok(phases.every((phase) => phase >= 0 && phase < 1000));
  });

  it('back-off grows, is capped and jittered', () => {
    assert.equal(
      backoffDelay(1, { initial: 1000, max: 30_000 }, () => 0),
      500,
    );
    assert.equal(
      backoffDelay(1, { initial: 1000, max: 30_000 }, () => 1),
      1000,
    );
    assert.equal(
      backoffDelay(4, { initial: 1000, max: 30_000 }, () => 1),
      8000,
    );
    assert.equal(
      backoffDelay(20, { initial: 1000, max: 30_000 }, () => 1),
      30_000,
    );
    assert.equal(
      backoffDelay(20, { initial: 1000, max: 30_000 }, () => 0),
      15_000,
    );
  });
});

describe('PollJob', () => {
  it('fires on the grid without drift even when every timer is late', async () => {
    const clock = new FakeClock(0);
    const slots: number[] = [];
    const job = new PollJob({ interval: 100, phase: 0, clock, run: async (slot) => void slots.push(slot) });
    job.start();
    await clock.advanceTo(1000, 7); // each timer fires 7 ms late
    await job.stop();
    assert.deepEqual(slots, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
    assert.equal(job.stats.overruns, 0);
  });

  it('starts at its phase', async () => {
    const clock = new FakeClock(10_000);
    const slots: number[] = [];
    const job = new PollJob({ interval: 1000, phase: 250, clock, run: async (slot) => void slots.push(slot) });
    job.start();
    await clock.advanceTo(12_500);
    await job.stop();
    assert.deepEqual(slots, [10_250, 11_250, 12_250]);
  });

  it('never overlaps: a cycle still running at the next slot skips it and counts an overrun', async () => {
    const clock = new FakeClock(0);
    let running = 0;
    let maxRunning = 0;
    const releases: Array<() => void> = [];
    const job = new PollJob({
      interval: 100,
      phase: 0,
      clock,
      run: () => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        return new Promise<void>((resolve) =>
          releases.push(() => {
            running--;
            resolve();
          }),
        );
      },
    });
    job.start();
    await clock.advanceTo(350); // slot 0 starts and hangs; 100, 200, 300 are overruns
    assert.equal(job.stats.cycles, 1);
    assert.equal(job.stats.overruns, 3);
    releases.shift()!();
    await clock.advanceTo(400); // slot 400 runs again
    assert.equal(job.stats.cycles, 2);
    assert.equal(maxRunning, 1);
    releases.shift()!();
    await job.stop();
  });

  it('a timer that fires very late skips the slots it missed instead of bursting', async () => {
    const clock = new FakeClock(0);
    const slots: number[] = [];
    const job = new PollJob({ interval: 100, phase: 0, clock, run: async (slot) => void slots.push(slot) });
    job.start();
    await clock.advanceTo(0);
    await clock.advanceTo(100, 350); // the 100 slot fires at 450: 200, 300, 400 are missed
    await clock.advanceTo(600);
    await job.stop();
    assert.deepEqual(slots, [0, 100, 500, 600]);
    assert.equal(job.stats.missed, 3);
  });

  it('stop() waits for the cycle in progress and fires nothing after', async () => {
    const clock = new FakeClock(0);
    let finished = false;
    let release: () => void = () => undefined;
    const job = new PollJob({
      interval: 100,
      phase: 0,
      clock,
      run: () =>
        new Promise<void>((resolve) => {
          release = () => {
            finished = true;
            resolve();
          };
        }),
    });
    job.start();
    await clock.advanceTo(0);
    const stopped = job.stop();
    release();
    await stopped;
    assert.ok(finished);
    await clock.advanceTo(1000);
    assert.equal(job.stats.cycles, 1);
  });
});
