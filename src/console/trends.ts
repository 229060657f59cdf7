// The last minutes of every numeric or boolean tag, for the console's trend, kept in memory: one
// point per second at most (the latest sample of that second), 12 bytes each (seconds as Uint32,
// value as Float64), in a ring per tag that grows as it fills up to `minutes` of points. Points are
// taken by sampling the tags' latest values once a second, not from the event bus, so the poll
// path pays nothing for them; and only while a console is open (see live.ts).
import type { TagValue } from '../pipeline/driver.js';

const INITIAL_CAPACITY = 16;

class Ring {
  private seconds: Uint32Array;
  private values: Float64Array;
  private start = 0;
  private length = 0;

  constructor(private readonly capacity: number) {
    const size = Math.min(INITIAL_CAPACITY, capacity);
    this.seconds = new Uint32Array(size);
    this.values = new Float64Array(size);
  }

  /** The second of the newest point, or -1. */
  get lastSecond(): number {
    return this.length === 0 ? -1 : this.seconds[(this.start + this.length - 1) % this.seconds.length]!;
  }

  push(second: number, value: number): void {
    // Points only go forward (a clock set back must not fold the trend).
    if (this.length > 0 && second < this.lastSecond) return;
    if (this.length > 0 && this.lastSecond === second) {
      this.values[(this.start + this.length - 1) % this.values.length] = value;
      return;
    }
    if (this.length === this.seconds.length && this.length < this.capacity) this.grow();
    const size = this.seconds.length;
    if (this.length < size) {
      const at = (this.start + this.length) % size;
      this.seconds[at] = second;
      this.values[at] = value;
      this.length++;
    } else {
      this.seconds[this.start] = second;
      this.values[this.start] = value;
      this.start = (this.start + 1) % size;
    }
  }

  /** [ms, value] pairs, oldest first, from `sinceSecond` on. */
  points(sinceSecond: number): Array<[number, number]> {
    const result: Array<[number, number]> = [];
    const size = this.seconds.length;
    for (let index = 0; index < this.length; index++) {
      const at = (this.start + index) % size;
      const second = this.seconds[at]!;
      if (second >= sinceSecond) result.push([second * 1000, this.values[at]!]);
    }
    return result;
  }

  private grow(): void {
    const size = Math.min(this.capacity, this.seconds.length * 2);
    const seconds = new Uint32Array(size);
    const values = new Float64Array(size);
    for (let index = 0; index < this.length; index++) {
      const at = (this.start + index) % this.seconds.length;
      seconds[index] = this.seconds[at]!;
      values[index] = this.values[at]!;
    }
    this.seconds = seconds;
    this.values = values;
    this.start = 0;
  }
}

/** A value a trend can draw: numbers, bigints (as numbers) and booleans (0/1). */
export function trendValue(value: TagValue | null | undefined): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value : undefined;
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'boolean') return value ? 1 : 0;
  return undefined;
}

export class Trends {
  private readonly rings = new Map<string, Ring>();
  private readonly seconds: number;

  constructor(minutes: number) {
    this.seconds = minutes * 60;
  }

  /** Notes a tag's latest sample (called once a second per tag); non-numeric values are skipped. */
  record(key: string, ts: number, value: TagValue | null | undefined): void {
    const number = trendValue(value);
    if (number === undefined) return;
    let ring = this.rings.get(key);
    if (!ring) this.rings.set(key, (ring = new Ring(this.seconds)));
    ring.push(Math.floor(ts / 1000), number);
  }

  /** The points of the last `minutes` (all kept when not given), as [ms, value]. */
  points(key: string, now = Date.now()): Array<[number, number]> {
    return this.rings.get(key)?.points(Math.floor(now / 1000) - this.seconds) ?? [];
  }

  /** Drops every ring (their memory too). */
  clear(): void {
    this.rings.clear();
  }
}

/** A ring of numbers sampled at a fixed period (the outbox depth over the last hour). */
export class History {
  private readonly points: Array<[number, number]> = [];

  constructor(private readonly size: number) {}

  add(ts: number, value: number): void {
    this.points.push([ts, value]);
    if (this.points.length > this.size) this.points.shift();
  }

  all(): Array<[number, number]> {
    return [...this.points];
  }
}
