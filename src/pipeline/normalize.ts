// Normalization: a driver's raw reading → a typed, scaled sample with quality and timestamp,
// and the report-by-exception decision (deadband, quality change, maxSilence heartbeat).
import type { Quality, ScalarValue, TagReading, TagValue } from './driver.js';
import type { Deadband } from '../config/common.js';

export interface Sample {
  device: string;
  group: string;
  tag: string;
  /** Typed, scaled value; null when the tag could not be read. */
  value: TagValue | null;
  quality: Quality;
  reason?: string;
  unit?: string;
  /** Source time when the device stamps values, gateway time otherwise (ms since the epoch). */
  ts: number;
}

export interface TagNormalizerOptions {
  device: string;
  group: string;
  tag: string;
  scale?: number | undefined;
  offset?: number | undefined;
  unit?: string | undefined;
  deadband?: Deadband | undefined;
  report: 'change' | 'always';
  /** Heartbeat in ms: republish an unchanged value after this long. 0 = never. */
  maxSilence: number;
}

/** One per tag: turns readings into samples and remembers what was last reported. */
export class TagNormalizer {
  private readonly options: TagNormalizerOptions;
  private readonly absoluteDeadband: number;
  private readonly percentDeadband: number | undefined;
  private last: { value: TagValue | null; quality: Quality; reason: string | undefined; at: number } | undefined;

  constructor(options: TagNormalizerOptions) {
    this.options = options;
    const deadband = options.deadband;
    this.absoluteDeadband = typeof deadband === 'number' ? deadband : deadband && 'absolute' in deadband ? deadband.absolute : 0;
    this.percentDeadband = deadband && typeof deadband === 'object' && 'percent' in deadband ? deadband.percent : undefined;
  }

  /** The sample this reading stands for (always computed, whether or not it will be published). */
  normalize(reading: TagReading, now: number): Sample {
    const { device, group, tag, unit } = this.options;
    const ts = reading.sourceTs ?? now;
    const sample: Sample = { device, group, tag, value: null, quality: reading.quality, ts };
    if (unit !== undefined) sample.unit = unit;
    if (reading.value === undefined || reading.quality === 'bad') {
      sample.quality = 'bad';
      sample.reason = reading.reason ?? 'no value';
      return sample;
    }
    const value = this.scaleValue(reading.value);
    if (!allFinite(value)) {
      sample.quality = 'bad';
      sample.reason = 'the device returned NaN or infinity';
      return sample;
    }
    sample.value = value;
    if (reading.reason !== undefined && reading.quality !== 'good') sample.reason = reading.reason;
    return sample;
  }

  /** Report-by-exception: should this sample go out? Records it as reported when it should. */
  shouldReport(sample: Sample, now: number): boolean {
    const last = this.last;
    const report =
      last === undefined ||
      this.options.report === 'always' ||
      sample.quality !== last.quality ||
      sample.reason !== last.reason ||
      (this.options.maxSilence > 0 && now - last.at >= this.options.maxSilence) ||
      this.changed(last.value, sample.value);
    if (!report) return false;
    // Updated in place: a new object per tag and poll would live a whole interval, long enough
    // for V8 to move it to the old generation, where dead objects cost RSS until a full GC.
    if (last === undefined) this.last = { value: sample.value, quality: sample.quality, reason: sample.reason, at: now };
    else {
      last.value = sample.value;
      last.quality = sample.quality;
      last.reason = sample.reason;
      last.at = now;
    }
    return true;
  }

  private scaleValue(value: TagValue): TagValue {
    const { scale, offset } = this.options;
    if (scale === undefined && offset === undefined) return value;
    const apply = (item: ScalarValue): ScalarValue => {
      if (typeof item === 'number') return engineering(item * (scale ?? 1) + (offset ?? 0));
      // int64 with scaling: precision beyond 2^53 is given up for an engineering value.
      if (typeof item === 'bigint') return engineering(Number(item) * (scale ?? 1) + (offset ?? 0));
      return item;
    };
    return Array.isArray(value) ? value.map(apply) : apply(value);
  }

  private changed(previous: TagValue | null, next: TagValue | null): boolean {
    if (previous === null || next === null) return previous !== next;
    if (Array.isArray(previous) || Array.isArray(next)) {
      if (!Array.isArray(previous) || !Array.isArray(next) || previous.length !== next.length) return true;
      return previous.some((item, index) => this.scalarChanged(item, next[index]!));
    }
    return this.scalarChanged(previous, next);
  }

  private scalarChanged(previous: ScalarValue, next: ScalarValue): boolean {
    if (typeof previous === 'number' && typeof next === 'number') {
      const delta = Math.abs(next - previous);
      if (this.percentDeadband !== undefined) {
        return previous === 0 ? delta > 0 : delta > (Math.abs(previous) * this.percentDeadband) / 100;
      }
      return this.absoluteDeadband > 0 ? delta > this.absoluteDeadband : delta > 0;
    }
    if (typeof previous === 'bigint' && typeof next === 'bigint' && this.absoluteDeadband > 0) {
      return Math.abs(Number(next - previous)) > this.absoluteDeadband;
    }
    return previous !== next;
  }
}

/** 107 × 0.1 is 10.700000000000001 in binary floating point; 15 significant digits give back 10.7. */
function engineering(value: number): number {
  return Number.isFinite(value) ? Number(value.toPrecision(15)) : value;
}

function allFinite(value: TagValue): boolean {
  if (Array.isArray(value)) return value.every((item) => typeof item !== 'number' || Number.isFinite(item));
  return typeof value !== 'number' || Number.isFinite(value);
}
