// A manual clock for testing timing *logic* (which slot fires, what is skipped) without sleeping.
import type { Clock } from '../../src/pipeline/scheduler.js';

export class FakeClock implements Clock {
  private time: number;
  private timers: Array<{ at: number; callback: () => void; id: number }> = [];
  private nextId = 1;

  constructor(start = 0) {
    this.time = start;
  }

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.time + ms, callback, id });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((timer) => timer.id !== handle);
  }

  /** Moves time forward to `target`, firing due timers in order; lets promises settle between them. */
  async advanceTo(target: number, lateBy = 0): Promise<void> {
    for (;;) {
      await flush();
      this.timers.sort((a, b) => a.at - b.at);
      const due = this.timers[0];
      if (!due || due.at > target) break;
      this.timers.shift();
      this.time = Math.max(this.time, due.at + lateBy);
      due.callback();
      await flush();
    }
    this.time = Math.max(this.time, target);
    await flush();
  }
}

async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}
