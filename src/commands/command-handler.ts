// The write path: MQTT command (or a direct write: Sparkplug DCMD, the console) → checks →
// driver.write → answer + audit line.
//
// A tag's command topic is its data topic plus topics.command ("/set"). Whoever may publish there
// (the broker's ACL decides for local clients, the uplink's receive rules for the cloud) can ask
// for a write; this module decides whether it happens: the tag must be writable, the value must
// parse, fit the tag's type and its write checks, and the rate limit must allow it. A refused
// write writes nothing. Every attempt, refused or not, is answered (the MQTT 5 response topic, or
// the command topic plus "/result", see northbound/json/topics.ts) and leaves one audit line in the log.
import type { Logger } from 'pino';
import { errorMessage } from '../util/errors.js';
import { DriverError, type ScalarValue, type TagReading, type TagValue } from '../pipeline/driver.js';
import type { TagConfig } from '../config/schema.js';
import { topicMatches } from '../northbound/topics.js';
import { RESULT_SUFFIX } from '../northbound/json/topics.js';

/** Who asked for a write, for the audit line and the answer. */
export interface CommandOrigin {
  /**
   * "local": an MQTT client of the integrated broker; "cloud": the uplink's downlink (a JSON
   * command topic); "sparkplug": a Sparkplug DCMD; "console": an operator in the web console.
   */
  source: 'local' | 'cloud' | 'sparkplug' | 'console';
  clientId: string;
  username?: string | undefined;
  /** MQTT 5 request/response: where to answer, and what to echo. */
  responseTopic?: string | undefined;
  correlationData?: Buffer | undefined;
}

/**
 * A device as the write path sees it: the gateway's compiled device. The handler keeps one entry
 * per tag (its config, under its topic) and asks the device when a command arrives, so a device
 * of 10,000 tags costs no closures per tag (they were 0.5 KB a tag).
 */
export interface CommandDevice {
  readonly name: string;
  /** A tag's config by name (direct writes), undefined when the device has none of that name. */
  tag(name: string): TagConfig | undefined;
  /** The value last read, in engineering units (undefined before the first read). */
  previous(tag: TagConfig): TagValue | null | undefined;
  /** Writes a raw (unscaled) value through the device's runner. */
  write(tag: TagConfig, raw: TagValue): Promise<void>;
  /** Reads the tag again and returns it in engineering units (read-back). */
  readBack(tag: TagConfig): Promise<{ reading: TagReading; value: TagValue | null }>;
}

/** One tag of a device: what a command topic leads to. */
class CommandTarget {
  constructor(
    readonly owner: CommandDevice,
    readonly tag: TagConfig,
  ) {}

  get device(): string {
    return this.owner.name;
  }
}

export interface CommandAnswer {
  ok: boolean;
  device?: string;
  tag?: string;
  value?: TagValue;
  readBack?: TagValue | null;
  error?: string;
  ts: number;
}

/** writes section of the config. */
export interface WriteLimits {
  maxAge: number;
  maxWaiting: number;
  waitTimeout: number;
}

export interface CommandStats {
  received: number;
  written: number;
  rejected: number;
  failed: number;
}

/** Refused before anything was written. */
class Rejected extends Error {}

/** Payloads are small commands: anything longer is refused without parsing. */
const MAX_PAYLOAD = 64 * 1024;

export class CommandHandler {
  readonly stats: CommandStats = { received: 0, written: 0, rejected: 0, failed: 0 };
  /** By tag topic (the command topic without the suffix: no joined string per tag). */
  private readonly targets = new Map<string, CommandTarget>();
  /** The devices by name (direct writes). */
  private readonly devices = new Map<string, CommandDevice>();
  /** Writes to one tag run one after the other, in arrival order: the tail of each tag's chain and how many wait in it. */
  private readonly queues = new Map<string, { tail: Promise<void>; pending: number }>();
  /** When a write last went out to each tag (performance.now(): immune to clock steps). */
  private readonly lastWritten = new Map<string, number>();
  private limits: WriteLimits;
  private readonly suffix: string;
  /** Topics that look like a command for a tag we don't know ("+" for each placeholder). */
  private readonly unknownFilters: string[];
  private readonly log: Logger;
  private readonly answer: (topic: string, answer: CommandAnswer, origin: CommandOrigin) => void;

  constructor(options: {
    suffix: string;
    tagTopicFilters: string[];
    limits: WriteLimits;
    log: Logger;
    answer: (topic: string, answer: CommandAnswer, origin: CommandOrigin) => void;
  }) {
    this.suffix = options.suffix;
    this.limits = options.limits;
    this.unknownFilters = [...new Set(options.tagTopicFilters)].map((filter) => filter + options.suffix);
    this.log = options.log;
    this.answer = options.answer;
  }

  /**
   * Makes `topic + suffix` the command topic of each of a device's tags (writable or not: others
   * get a clear refusal), replacing a device of the same name.
   */
  register(device: CommandDevice, tags: Iterable<readonly [topic: string, tag: TagConfig]>): void {
    this.devices.set(device.name, device);
    for (const [topic, tag] of tags) this.targets.set(topic, new CommandTarget(device, tag));
  }

  /** New writes limits (a reload); commands already waiting keep the wait they started with. */
  setLimits(limits: WriteLimits): void {
    this.limits = limits;
  }

  /**
   * A device's command topics are gone (it was removed or is being restarted by a reload). Only
   * what this device registered: a device of the same name registered since keeps its own.
   */
  unregister(device: CommandDevice, topics: Iterable<string>): void {
    for (const topic of topics) if (this.targets.get(topic)?.owner === device) this.targets.delete(topic);
    if (this.devices.get(device.name) === device) this.devices.delete(device.name);
  }

  /** The tag a command topic is for. */
  private targetOf(topic: string): CommandTarget | undefined {
    return topic.endsWith(this.suffix) ? this.targets.get(topic.slice(0, topic.length - this.suffix.length)) : undefined;
  }

  /** True for a command topic, known or not: the caller passes it on to handle(). */
  isCommand(topic: string): boolean {
    return (
      this.targetOf(topic) !== undefined ||
      (topic.endsWith(this.suffix) && this.unknownFilters.some((filter) => topicMatches(filter, topic)))
    );
  }

  /** Handles one command message; never throws, always answers. Resolves when the answer is out. */
  handle(topic: string, payload: Buffer, retain: boolean, origin: CommandOrigin): Promise<void> {
    this.stats.received++;
    const target = this.targetOf(topic);
    return this.enqueue(target ? keyOf(target.device, target.tag.name) : topic, async (refusal) => {
      const answer = await this.execute(
        { target, unknown: `no tag has the command topic ${topic}`, input: { payload, retain }, origin },
        refusal,
      );
      this.answer(topic + RESULT_SUFFIX, answer, origin);
    });
  }

  /**
   * Writes `value` (engineering units) to a tag directly, not from a command topic (Sparkplug DCMD,
   * the console): the same queue, checks, rate limits and audit line as an MQTT command. Never
   * throws; resolves with the answer.
   */
  write(device: string, tag: string, value: TagValue, origin: CommandOrigin): Promise<CommandAnswer> {
    this.stats.received++;
    const key = keyOf(device, tag);
    const owner = this.devices.get(device);
    const config = owner?.tag(tag);
    const target = owner && config ? new CommandTarget(owner, config) : undefined;
    let result: CommandAnswer | undefined;
    return this.enqueue(key, async (refusal) => {
      result = await this.execute({ target, unknown: `no tag "${tag}" in device "${device}"`, input: { value }, origin }, refusal);
    }).then(() => result ?? { ok: false, error: 'the write was not carried out', ts: Date.now() });
  }

  /**
   * Runs `work` after the writes to the same tag that arrived before it, in arrival order, with the
   * reason it must be refused (too many waiting, or it waited too long) or undefined.
   */
  private enqueue(key: string, work: (refusal: string | undefined) => Promise<void>): Promise<void> {
    const queue = this.queues.get(key) ?? { tail: Promise.resolve(), pending: 0 };
    // One runs, the others wait behind it.
    if (queue.pending > this.limits.maxWaiting) {
      return this.safely(() => work(`${queue.pending - 1} writes to this tag are already waiting (writes.maxWaiting); try again later`));
    }
    queue.pending++;
    const arrived = performance.now();
    const run = queue.tail.then(async () => {
      const waited = performance.now() - arrived;
      // Behind a slow write (a timing-out device, a shared serial line), a command must not land long after it was sent.
      const expired =
        waited > this.limits.waitTimeout
          ? `waited ${Math.round(waited)} ms behind earlier writes to this tag (writes.waitTimeout): not written`
          : undefined;
      await this.safely(() => work(expired));
      queue.pending--;
    });
    queue.tail = run;
    this.queues.set(key, queue);
    void run.then(() => {
      if (this.queues.get(key) === queue && queue.tail === run) this.queues.delete(key);
    });
    return run;
  }

  /** A failure of the answer itself (e.g. during shutdown) is logged, never thrown into the next command. */
  private async safely(step: () => Promise<void>): Promise<void> {
    try {
      await step();
    } catch (error) {
      this.log.error({ error: errorMessage(error) }, 'answering a write failed');
    }
  }

  /** One write: checks, the driver's write, the read-back; the answer, with its audit line logged. Never throws. */
  private async execute(request: WriteRequest, refusal: string | undefined): Promise<CommandAnswer> {
    const { target, input, origin } = request;
    const started = Date.now();
    let requested: TagValue | undefined;
    let previous: TagValue | null | undefined;
    let written = false;
    try {
      if (!target) throw new Rejected(`unknown tag: ${request.unknown}`);
      if (refusal !== undefined) throw new Rejected(refusal);
      previous = target.owner.previous(target.tag);
      if (!target.tag.writable)
        throw new Rejected(`tag "${target.tag.name}" of device "${target.device}" is not writable (set "writable": true in its config)`);
      // A retained command would be written again by every reconnect and every new subscription.
      if ('retain' in input && input.retain)
        throw new Rejected('retained commands are refused: they would be written again at every reconnect; publish without retain');
      const command: ParsedCommand = 'payload' in input ? parseCommand(input.payload) : { value: asTagValue(input.value) };
      requested = command.value;
      if (command.sentAt !== undefined && started - command.sentAt > this.limits.maxAge) {
        throw new Rejected(
          `stale command: sent ${Math.round((started - command.sentAt) / 1000)} s ago ("ts"), older than writes.maxAge (${this.limits.maxAge} ms)`,
        );
      }
      if (command.sentAt !== undefined && command.sentAt - started > this.limits.maxAge) {
        throw new Rejected(
          `"ts" is ${Math.round((command.sentAt - started) / 1000)} s in the future (more than writes.maxAge): check the sender's clock`,
        );
      }
      checkValue(requested, target.tag);
      const minInterval = target.tag.write?.minInterval;
      const key = keyOf(target.device, target.tag.name);
      const last = this.lastWritten.get(key);
      const now = performance.now();
      if (minInterval !== undefined && last !== undefined && now - last < minInterval) {
        throw new Rejected(
          `rate limited: at most one write per ${minInterval} ms to this tag; next one allowed in ${Math.ceil(minInterval - (now - last))} ms`,
        );
      }
      const raw = toRaw(requested, target.tag);
      try {
        await target.owner.write(target.tag, raw);
      } catch (error) {
        // Refused before anything reached the device: the driver's type check, a read-only area, no connection.
        if (
          error instanceof DriverError &&
          (error.code === 'invalid-value' || error.code === 'read-only' || error.code === 'not-connected' || error.code === 'stopped')
        )
          throw new Rejected(error.message);
        // Anything else may have reached the device (a timeout after sending): it counts for the rate limit.
        this.lastWritten.set(key, performance.now());
        throw error;
      }
      this.lastWritten.set(key, performance.now());
      written = true;
      let readBack: TagValue | null | undefined;
      if (target.tag.write?.readBack) {
        const result = await target.owner.readBack(target.tag);
        readBack = result.value;
        if (result.reading.quality === 'bad')
          throw new Error(`written, but the read-back failed: ${result.reading.reason ?? 'bad quality'}`);
        if (!sameValue(requested, result.value))
          throw new Error(
            `written, but the read-back gave ${JSON.stringify(jsonSafe(result.value))} instead of ${JSON.stringify(jsonSafe(requested))}`,
          );
      }
      this.stats.written++;
      const answer: CommandAnswer = { ok: true, device: target.device, tag: target.tag.name, value: requested, ts: Date.now() };
      if (readBack !== undefined) answer.readBack = readBack;
      return this.audited(answer, origin, { previous, input, durationMs: Date.now() - started });
    } catch (error) {
      const rejected = error instanceof Rejected;
      if (rejected) this.stats.rejected++;
      else this.stats.failed++;
      const answer: CommandAnswer = { ok: false, error: errorMessage(error), ts: Date.now() };
      if (target) {
        answer.device = target.device;
        answer.tag = target.tag.name;
      }
      if (requested !== undefined) answer.value = requested;
      return this.audited(answer, origin, {
        previous,
        input,
        durationMs: Date.now() - started,
        result: rejected ? 'rejected' : written ? 'written, not confirmed' : 'failed',
      });
    }
  }

  /** Logs the audit line of a write and returns its answer. */
  private audited(
    answer: CommandAnswer,
    origin: CommandOrigin,
    details: { previous: TagValue | null | undefined; input: WriteRequest['input']; durationMs: number; result?: string },
  ): CommandAnswer {
    this.log.info(
      {
        audit: 'write',
        source: origin.source,
        clientId: origin.clientId,
        username: origin.username,
        device: answer.device,
        tag: answer.tag,
        requested:
          answer.value !== undefined
            ? jsonSafe(answer.value)
            : 'payload' in details.input
              ? details.input.payload.subarray(0, 200).toString('utf8')
              : undefined,
        previous: details.previous === undefined ? undefined : jsonSafe(details.previous),
        result: details.result ?? 'written',
        error: answer.error,
        durationMs: details.durationMs,
      },
      answer.ok ? 'write done' : 'write refused or failed',
    );
    return answer;
  }
}

/** One write to carry out: from a command topic (its payload, parsed) or direct (a value). */
interface WriteRequest {
  target: CommandTarget | undefined;
  /** Why there is no target, for the refusal ("no tag has the command topic …"). */
  unknown: string;
  input: { payload: Buffer; retain: boolean } | { value: TagValue };
  origin: CommandOrigin;
}

function keyOf(device: string, tag: string): string {
  return `${device}\u0000${tag}`;
}

/** A parsed command: its value and, when the sender stamped it, when it was sent (ms since the epoch). */
export interface ParsedCommand {
  value: TagValue;
  sentAt?: number;
}

/**
 * A command payload: JSON `{"value": …, "ts": …}` (ts optional: ms since the epoch or ISO 8601),
 * a bare JSON value (`42`, `true`, `[1,2]`, `"text"`), or plain text for string tags (`hello`).
 * Integers beyond 2^53 become bigints.
 */
export function parseCommand(payload: Buffer): ParsedCommand {
  if (payload.length === 0) throw new Rejected('empty payload: send a value, e.g. 42 or {"value": 42}');
  if (payload.length > MAX_PAYLOAD)
    throw new Rejected(`payload of ${payload.length} bytes is too long for a command (at most ${MAX_PAYLOAD})`);
  const text = payload.toString('utf8').trim();
  if (/^-?\d+$/.test(text) && !Number.isSafeInteger(Number(text))) return { value: BigInt(text) };
  let parsed: unknown;
  try {
    parsed = JSON.parse(text, (_key, value: unknown, context?: { source?: string }) =>
      // Keeps 64-bit integers exact where the runtime tells us the source text.
      typeof value === 'number' && context?.source !== undefined && /^-?\d+$/.test(context.source) && !Number.isSafeInteger(value)
        ? BigInt(context.source)
        : value,
    );
  } catch (error) {
    if (/^[[{"]/.test(text)) throw new Rejected(`malformed JSON: ${errorMessage(error)}`);
    return { value: text }; // plain text, for string tags
  }
  if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) {
    if (!('value' in parsed)) throw new Rejected('a JSON object needs a "value" field, e.g. {"value": 42}');
    const { value, ts } = parsed as { value: unknown; ts?: unknown };
    const command: ParsedCommand = { value: asTagValue(value) };
    if (ts !== undefined) command.sentAt = timestampOf(ts);
    return command;
  }
  return { value: asTagValue(parsed) };
}

function timestampOf(ts: unknown): number {
  const ms = typeof ts === 'number' ? ts : typeof ts === 'bigint' ? Number(ts) : typeof ts === 'string' ? Date.parse(ts) : Number.NaN;
  if (!Number.isFinite(ms))
    throw new Rejected(
      `"ts" must be ms since the epoch or an ISO 8601 time, got ${JSON.stringify(typeof ts === 'bigint' ? ts.toString() : ts)}`,
    );
  return ms;
}

function asTagValue(value: unknown): TagValue {
  const scalar = (item: unknown): ScalarValue => {
    if (typeof item === 'number' && !Number.isFinite(item)) throw new Rejected(`${item} is not a finite number`);
    if (typeof item === 'number' || typeof item === 'bigint' || typeof item === 'boolean' || typeof item === 'string') return item;
    throw new Rejected(`unsupported value ${JSON.stringify(item)}: expected a number, bool, string or an array of them`);
  };
  return Array.isArray(value) ? value.map(scalar) : scalar(value);
}

/** The tag's write checks, in engineering units. */
function checkValue(value: TagValue, tag: TagConfig): void {
  const checks = tag.write;
  if (!checks) return;
  for (const item of Array.isArray(value) ? value : [value]) {
    if (
      checks.allowed !== undefined &&
      !checks.allowed.some(
        (allowed) => allowed === item || (typeof item === 'bigint' && typeof allowed === 'number' && Number(item) === allowed),
      )
    ) {
      throw new Rejected(`${JSON.stringify(jsonSafe(item))} is not one of the allowed values ${JSON.stringify(checks.allowed)}`);
    }
    if (checks.min === undefined && checks.max === undefined) continue;
    const number = typeof item === 'bigint' ? Number(item) : item;
    if (typeof number !== 'number') throw new Rejected(`expected a number for a tag with min/max, got ${JSON.stringify(item)}`);
    if (checks.min !== undefined && number < checks.min) throw new Rejected(`${number} is below the tag's minimum ${checks.min}`);
    if (checks.max !== undefined && number > checks.max) throw new Rejected(`${number} is above the tag's maximum ${checks.max}`);
  }
}

/** Engineering value → raw value: the inverse of normalize's raw * scale + offset. */
function toRaw(value: TagValue, tag: TagConfig): TagValue {
  const { scale, offset } = tag;
  if (scale === undefined && offset === undefined) return value;
  const convert = (item: ScalarValue): ScalarValue => {
    if (typeof item !== 'number' && typeof item !== 'bigint') return item;
    const raw = (Number(item) - (offset ?? 0)) / (scale ?? 1);
    // 21.5 °C with scale 0.1 is 214.99999999999997 in floating point: it means register value 215.
    const nearest = Math.round(raw);
    return Math.abs(raw - nearest) < 1e-6 ? nearest : raw;
  };
  return Array.isArray(value) ? value.map(convert) : convert(value);
}

function sameValue(requested: TagValue, actual: TagValue | null): boolean {
  if (actual === null) return false;
  if (Array.isArray(requested) || Array.isArray(actual)) {
    return (
      Array.isArray(requested) &&
      Array.isArray(actual) &&
      requested.length === actual.length &&
      requested.every((item, index) => sameScalar(item, actual[index]!))
    );
  }
  return sameScalar(requested, actual);
}

function sameScalar(requested: ScalarValue, actual: ScalarValue): boolean {
  const isTrue = (item: ScalarValue) => item === true || item === 1 || item === 1n;
  if (typeof requested === 'boolean' || typeof actual === 'boolean') return isTrue(requested) === isTrue(actual);
  if (typeof requested === 'string' || typeof actual === 'string') return String(requested) === String(actual);
  const a = Number(requested);
  const b = Number(actual);
  // float32 registers hold ~7 significant digits.
  return a === b || Math.abs(a - b) <= 1e-6 * Math.max(Math.abs(a), Math.abs(b));
}

/** bigint is not JSON: answers and logs carry 64-bit values as strings. */
function jsonSafe(value: TagValue | null): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (Array.isArray(value)) return value.map((item) => (typeof item === 'bigint' ? item.toString() : item));
  return value;
}
