// Fixed-rate polling. Every poll job fires on a grid `anchor + k * interval`, so timer lateness
// never accumulates into drift. A cycle still running when its next slot comes makes that slot
// an overrun: skipped and counted, never run in parallel. Each job has its own timer, so a slow
// or dead device never delays another.

export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** The first grid slot strictly after `now`. */
export function nextSlot(anchor: number, interval: number, now: number): number {
  if (now < anchor) return anchor;
  return anchor + (Math.floor((now - anchor) / interval) + 1) * interval;
}

/**
 * Offset of job `index` of `count` inside its interval, so 50 devices polled every second
 * start 20 ms apart instead of in the same millisecond.
 */
export function startPhase(index: number, count: number, interval: number): number {
  if (count <= 1) return 0;
  return Math.floor(((index % count) * interval) / count);
}

export interface PollJobStats {
  cycles: number;
  /** Slots skipped because the previous cycle was still running. */
  overruns: number;
  /** Slots skipped because the timer itself fired late (event loop blocked). */
  missed: number;
}

export interface PollJobOptions {
  interval: number;
  phase: number;
  run: (slot: number) => Promise<void>;
  onOverrun?: (stats: PollJobStats) => void;
  clock?: Clock;
}

export class PollJob {
  readonly stats: PollJobStats = { cycles: 0, overruns: 0, missed: 0 };
  private readonly options: PollJobOptions;
  private readonly clock: Clock;
  private anchor = 0;
  private slot = 0;
  private timer: unknown;
  private running: Promise<void> | undefined;
  private stopped = true;

  constructor(options: PollJobOptions) {
    this.options = options;
    this.clock = options.clock ?? systemClock;
  }

  start(): void {
    this.stopped = false;
    this.anchor = this.clock.now() + this.options.phase;
    this.slot = this.anchor;
    this.arm();
  }

  /** Stops the timer and waits for a cycle in progress to finish. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
    await this.running;
  }

  private arm(): void {
    if (this.stopped) return;
    this.timer = this.clock.setTimeout(() => this.fire(), Math.max(0, this.slot - this.clock.now()));
  }

  private fire(): void {
    if (this.stopped) return;
    const slot = this.slot;
    const now = this.clock.now();
    const next = nextSlot(this.anchor, this.options.interval, Math.max(now, slot));
    // Slots that passed between `slot` and `next` while the timer was late are missed, not queued.
    this.stats.missed += Math.max(0, Math.round((next - slot) / this.options.interval) - 1);
    this.slot = next;
    if (this.running) {
      this.stats.overruns++;
      this.options.onOverrun?.(this.stats);
    } else {
      this.stats.cycles++;
      this.running = this.options
        .run(slot)
        .catch(() => undefined)
        .finally(() => {
          this.running = undefined;
        });
    }
    this.arm();
  }
}
