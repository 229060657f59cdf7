// The JSON wire format of samples: JSON per tag, or one JSON batch per poll cycle of a device; and the answers to writes.
import type { ScalarValue, TagValue } from '../../pipeline/driver.js';
import type { Sample } from '../../pipeline/normalize.js';
import type { CommandAnswer } from '../../commands/command-handler.js';

export type TimestampFormat = 'ms' | 'iso';

/** int64 values beyond 2^53 can't be JSON numbers without losing digits: they go out as strings. */
function jsonScalar(value: ScalarValue): number | boolean | string {
  if (typeof value === 'bigint')
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value.toString();
  return value;
}

export function jsonValue(value: TagValue | null): unknown {
  if (value === null) return null;
  return Array.isArray(value) ? value.map(jsonScalar) : jsonScalar(value);
}

function timestamp(ts: number, format: TimestampFormat): number | string {
  return format === 'iso' ? new Date(ts).toISOString() : ts;
}

export interface TagPayload {
  value: unknown;
  quality: Sample['quality'];
  ts: number | string;
  unit?: string;
  reason?: string;
}

export function tagPayloadObject(sample: Sample, format: TimestampFormat): TagPayload {
  const payload: TagPayload = { value: jsonValue(sample.value), quality: sample.quality, ts: timestamp(sample.ts, format) };
  if (sample.unit !== undefined) payload.unit = sample.unit;
  if (sample.reason !== undefined) payload.reason = sample.reason;
  return payload;
}

/** `{"value":21.5,"quality":"good","ts":1732345678901,"unit":"°C"}` */
export function encodeTagPayload(sample: Sample, format: TimestampFormat): string {
  return JSON.stringify(tagPayloadObject(sample, format));
}

/** `{"device":"press1","group":"default","ts":…,"values":{"speed":{"value":…,"quality":"good","ts":…}, …}}` */
export function encodeBatchPayload(
  device: string,
  group: string,
  cycleTs: number,
  samples: readonly Sample[],
  format: TimestampFormat,
): string {
  const values: Record<string, TagPayload> = {};
  for (const sample of samples) values[sample.tag] = tagPayloadObject(sample, format);
  return JSON.stringify({ device, group, ts: timestamp(cycleTs, format), values });
}

/** `{"ok":true,"device":"press1","tag":"speed","value":42,"ts":…}`: the answer to a write (bigints as strings). */
export function encodeAnswer(answer: CommandAnswer): string {
  return JSON.stringify(answer, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
}
