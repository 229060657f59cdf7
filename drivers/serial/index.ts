// The serial-line driver: instruments that speak text or simple binary frames, on a local serial
// port or behind a serial device server (raw TCP).
//
// The line belongs to the pipeline's registry (src/pipeline/serial-ports.ts), so serial-line
// instruments and Modbus RTU devices on one RS-485 port take turns, and a device that stops
// answering costs the others only its own timeouts. On top of the line, per device:
//   - request groups: every interval the group's request goes out and its reply (the first frame,
//     or the first that matches the group's `reply` pattern) is parsed into the group's tags;
//   - streaming groups: frames the device sends by itself are parsed as they arrive, and their
//     tags reported per frame (a push plan) or the latest value once per interval (a poll plan);
//     tags that get no frame for `staleAfter` go bad;
//   - frames that arrive during a request and are not its reply are streamed frames too (a
//     device that streams and answers requests);
//   - back-off: after `backoffAfterTimeouts` request polls without an answer the device's
//     requests are skipped for a growing while (5 s … 60 s), like Modbus devices on a shared line.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import {
  DriverError,
  type Driver,
  type DriverContext,
  type DriverErrorCode,
  type ReadPlan,
  type TagReading,
  type TagValue,
} from '../../src/pipeline/driver.js';
import {
  acquireSerialPort,
  acquireTcpLine,
  characterTime,
  SerialLineError,
  type FrameVerdict,
  type ReplyFraming,
  type ReplyOptions,
  type SerialPortLease,
  type SerialPortUser,
} from '../../src/pipeline/serial-ports.js';
import type { FramingConfig, SerialDeviceConfig, SerialGroupConfig, SerialTag } from './config.js';
import { findFrame, frameAtSilence, FrameSplitter, frameRequest, type Framing } from './framing.js';
import { compileTags, frameText, parseFrame, type CompiledTag } from './parse.js';
import { compileTemplate, showBytes, specBytes, type Template } from './text.js';

/** A device's first skip after backoffAfterTimeouts silent polls; doubled on each failed probe. */
export const BACKOFF_START_MS = 5_000;
export const BACKOFF_MAX_MS = 60_000;
/** Bad frames on a stream are logged the first time and then every this many. */
const LOG_EVERY = 100;

type Encoding = FramingConfig['encoding'];

/** The framing the driver works with, bytes decoded from the config. */
export function compileFraming(config: FramingConfig): Framing {
  switch (config.type) {
    case 'delimiter':
      return { type: 'delimiter', delimiter: specBytes(config.delimiter), maxLength: config.maxLength };
    case 'length':
      return { type: 'length', length: config.length, maxLength: Math.max(config.maxLength, config.length) };
    case 'gap':
      return { type: 'gap', gap: config.gap, maxLength: config.maxLength };
    case 'stx-etx':
      return {
        type: 'stx-etx',
        start: specBytes(config.start),
        end: specBytes(config.end),
        checksum: config.checksum && { type: config.checksum.type, format: config.checksum.format, byteOrder: config.checksum.byteOrder },
        over: config.checksum?.over ?? 'body+end',
        maxLength: config.maxLength,
      };
  }
}

abstract class SerialPlan implements ReadPlan {
  readonly owner: SerialDriver;
  readonly group: string;
  /** Tags this plan reads (command-only tags are never read). */
  readonly tags: readonly CompiledTag[];
  abstract readonly mode: 'poll' | 'push';

  constructor(owner: SerialDriver, group: string, tags: readonly CompiledTag[]) {
    this.owner = owner;
    this.group = group;
    this.tags = tags;
  }

  abstract describe(): string;
}

/** A group with a request: one exchange per poll. */
class RequestPlan extends SerialPlan {
  readonly mode = 'poll';
  readonly request: Buffer;
  readonly reply: RegExp | undefined;
  readonly timeout: number;
  private readonly text: string;

  constructor(
    owner: SerialDriver,
    group: string,
    tags: readonly CompiledTag[],
    request: Buffer,
    settings: SerialGroupConfig,
    timeout: number,
  ) {
    super(owner, group, tags);
    this.request = request;
    this.reply = settings.reply === undefined ? undefined : new RegExp(settings.reply);
    this.timeout = timeout;
    this.text = `request ${showBytes(request, 60)}${this.reply ? ` (reply /${this.reply.source}/)` : ''} → ${tags.length} tag${tags.length === 1 ? '' : 's'}`;
  }

  describe(): string {
    return this.text;
  }
}

/** The latest reading of a streamed tag and when a frame last gave it one. */
interface Latest {
  reading: TagReading | undefined;
  at: number;
  stale: boolean;
}

/** A group without a request: the device sends its frames by itself. */
class StreamPlan extends SerialPlan {
  readonly mode: 'poll' | 'push';
  readonly staleAfter: number;
  readonly latest: Map<string, Latest>;
  /** A plan of some of a group's tags, reading what the group's own plan collects. */
  readonly view: boolean;
  /** Push plans: where readings go while subscribed. */
  deliver: ((readings: TagReading[]) => void) | undefined;
  watchdog: NodeJS.Timeout | undefined;

  constructor(
    owner: SerialDriver,
    group: string,
    tags: readonly CompiledTag[],
    mode: 'poll' | 'push',
    staleAfter: number,
    latest?: Map<string, Latest>,
  ) {
    super(owner, group, tags);
    this.mode = mode;
    this.staleAfter = staleAfter;
    this.latest = latest ?? new Map<string, Latest>();
    this.view = latest !== undefined;
  }

  describe(): string {
    const how = this.mode === 'push' ? 'each frame' : 'latest per interval';
    return `listens (${how}, stale after ${this.staleAfter} ms) → ${this.tags.length} tag${this.tags.length === 1 ? '' : 's'}`;
  }

  /** Since `now`, every tag counts as not seen (a new subscription, a reopened line). */
  restart(now: number): void {
    for (const compiled of this.tags) this.latest.set(compiled.tag.name, { reading: undefined, at: now, stale: false });
  }
}

export class SerialDriver implements Driver<SerialTag> {
  readonly name: string;
  private readonly device: SerialDeviceConfig;
  private readonly log: Logger;
  private readonly framing: Framing;
  private readonly encoding: Encoding;
  private readonly compiled: Map<string, CompiledTag>;
  private readonly commands = new Map<string, Template>();
  private readonly templateFields: Record<string, string | number>;
  private readonly streams = new Set<StreamPlan>();
  /** The device has groups that listen to frames it sends by itself (not only request groups). */
  private readonly streaming: boolean;
  private readonly splitter: FrameSplitter;
  private lease: SerialPortLease | undefined;
  private consecutiveTimeouts = 0;
  /** Timed-out requests in a row with not a byte back, and whether the connection was renewed for them. */
  private silentTimeouts = 0;
  private renewed = false;
  private skipInterval = 0;
  private skipUntil = 0;
  private badFrames = 0;
  /** Bad streamed frames since the last frame that parsed, and the last one's problem. */
  private badSinceGood = 0;
  private lastBadFrame: { problem: string } | undefined;
  /** The stream was cut while inside a frame since the current exchange began (see replyFraming); undefined before its first cut. */
  private cutMidFrame: boolean | undefined;
  /** Frames passed on to the streams during the current exchange: a device that streams is not silent. */
  private passedOn = 0;
  /** Silence (ms) after a new connection that says the next byte starts a frame. */
  private readonly quietBoundary: number;

  constructor(device: SerialDeviceConfig, context: DriverContext) {
    this.name = device.name;
    this.device = device;
    this.log = context.log;
    this.framing = compileFraming(device.framing);
    this.encoding = device.framing.encoding;
    this.compiled = new Map(compileTags(device.tags).map((compiled) => [compiled.tag.name, compiled]));
    for (const tag of device.tags) if (tag.command !== undefined) this.commands.set(tag.name, compileTemplate(tag.command));
    this.templateFields = device.unitId === undefined ? {} : { unitId: device.unitId };
    this.streaming = device.tags.some(
      (tag) => tag.read && (tag.group === undefined ? device.request : device.pollGroups[tag.group]?.request) === undefined,
    );
    this.splitter = new FrameSplitter(
      this.framing,
      (frame) => this.streamed(frame),
      (problem) => this.badStreamFrame(problem),
      idleResetOf(device.connection),
    );
    this.quietBoundary = this.framing.type === 'gap' ? this.framing.gap : idleResetOf(device.connection);
  }

  get connected(): boolean {
    return this.lease?.isOpen === true;
  }

  get nextTryAt(): number | undefined {
    return this.skipUntil > Date.now() ? this.skipUntil : undefined;
  }

  async connect(): Promise<void> {
    this.lease ??= this.acquire();
    this.splitter.reset(this.quietBoundary);
    await this.lease.open();
    // A new connection deserves a try at once: a skip of the old one does not carry over.
    this.skipUntil = 0;
    const now = Date.now();
    for (const stream of this.streams) stream.restart(now);
  }

  private acquire(): SerialPortLease {
    const connection = this.device.connection;
    const user: SerialPortUser = {
      name: this.name,
      interRequestDelay: connection.interRequestDelay,
      onPortLost: (reason) => {
        this.splitter.reset();
        this.log.debug({ device: this.name, reason }, 'serial line lost');
      },
      onData: (chunk) => this.splitter.push(chunk),
      onCut: () => {
        // The first cut of an exchange finds the stream where it was; a later one matters only if
        // bytes came in between (they went to the splitter while the input was being flushed).
        if (this.cutMidFrame === undefined || this.splitter.touched)
          this.cutMidFrame = (this.cutMidFrame ?? false) || !this.splitter.between;
        this.splitter.reset();
      },
    };
    if (connection.transport === 'tcp') return acquireTcpLine(connection.host, connection.port, user);
    const { path, baudRate, dataBits, parity, stopBits, rtscts, xonxoff } = connection;
    return acquireSerialPort(path, { baudRate, dataBits, parity, stopBits, rtscts, xonxoff }, user);
  }

  plan(tags: readonly SerialTag[]): ReadPlan {
    const group = tags[0]?.group ?? 'default';
    const settings: SerialGroupConfig & { interval?: number } = group === 'default' ? this.device : this.device.pollGroups[group]!;
    const interval = group === 'default' ? this.device.pollInterval : (this.device.pollGroups[group]?.interval ?? this.device.pollInterval);
    const read = tags.filter((tag) => tag.read).map((tag) => this.compiled.get(tag.name)!);
    if (settings.request !== undefined) {
      const request = frameRequest(this.framing, compileTemplate(settings.request).render(this.templateFields));
      return new RequestPlan(this, group, read, request, settings, settings.timeout ?? this.device.connection.timeout);
    }
    // A streaming group is planned once (by its runner); a later plan of some of its tags (a
    // read-back, `plc2mqtt read`) reads the latest values the group's plan collected.
    const existing = [...this.streams].find((plan) => plan.group === group);
    if (existing) return new StreamPlan(this, group, read, 'poll', existing.staleAfter, existing.latest);
    const staleAfter = settings.staleAfter ?? Math.max(5000, 3 * interval);
    const plan = new StreamPlan(this, group, read, (settings.deliver ?? 'frame') === 'frame' ? 'push' : 'poll', staleAfter);
    plan.restart(Date.now());
    this.streams.add(plan);
    return plan;
  }

  async read(plan: ReadPlan): Promise<TagReading[]> {
    if (!(plan instanceof SerialPlan) || plan.owner !== this)
      throw new DriverError('read() got a plan made by another driver', { code: 'foreign-plan' });
    if (plan instanceof StreamPlan) {
      // Read outside the group's own schedule (`plc2mqtt read`, a read-back): a tag with no frame yet
      // since the line opened is waited for, up to staleAfter; the group's own polls never wait.
      if (plan.mode === 'push' || plan.view) await this.firstFrames(plan);
      return this.latestOf(plan, Date.now());
    }
    return this.request(plan as RequestPlan);
  }

  async subscribe(plan: ReadPlan, onReadings: (readings: TagReading[]) => void): Promise<void> {
    if (!(plan instanceof StreamPlan) || plan.owner !== this)
      throw new DriverError('subscribe() got a plan made by another driver', { code: 'foreign-plan' });
    if (!this.connected)
      throw new DriverError(`not connected to ${this.lease?.label ?? this.name}`, { code: 'not-connected', connectionLost: true });
    plan.deliver = onReadings;
    plan.restart(Date.now());
    clearInterval(plan.watchdog);
    // Staleness is checked a few times per staleAfter, so a silent device is noticed within ~1.25× of it.
    plan.watchdog = setInterval(() => this.checkStale(plan), Math.max(50, Math.floor(plan.staleAfter / 4)));
    plan.watchdog.unref();
  }

  // ---- request/response ------------------------------------------------------------------------

  private async request(plan: RequestPlan): Promise<TagReading[]> {
    if (plan.tags.length === 0) return [];
    const now = Date.now();
    if (now < this.skipUntil) return this.skippedReadings(plan);
    const lease = this.requireLease();
    let frame: Buffer;
    try {
      frame = await lease.exclusive((exchange) => exchange.transact(plan.request, this.answerOptions(plan.reply, plan.timeout)));
    } catch (error) {
      return this.requestFailed(plan, error);
    }
    this.answered();
    const text = frameText(frame, this.encoding);
    return parseFrame(plan.tags, frame, text, undefined, true).map(
      (reading, index) =>
        reading ?? { tag: plan.tags[index]!.tag.name, quality: 'bad', reason: `no value in ${showBytes(frame)}`, code: 'bad-reply' },
    );
  }

  /** How one exchange waits for its answer. Built inside the exchange: the reply framing tracks the exchange's cuts. */
  private answerOptions(answer: RegExp | undefined, timeout: number): ReplyOptions {
    return {
      timeout,
      frame: this.replyFraming(answer),
      // An unfinished answer may hold at most a frame and its delimiters; frames passed on are not counted.
      maxBytes: 2 * this.framing.maxLength + 64,
      ...(this.framing.type === 'gap' ? { silence: this.framing.gap } : {}),
    };
  }

  /**
   * The framing of one answer (a group's reply, a write's acknowledgement). On a device that
   * streams, frames that do not match `answer` are streamed frames and go to its streaming groups,
   * and what follows the answer goes back to the line's listeners. The first frame of an exchange
   * is never streamed under a framing without a start marker: the input was flushed for the
   * request, so it may be the tail of a frame cut in two ("2.345 kg" of "S S     12.345 kg").
   */
  private replyFraming(answer: RegExp | undefined): ReplyFraming {
    let from = 0;
    // Whether the first frame may be a tail is known once the request is out: the line cuts the
    // stream (onCut) when it takes the bytes for the reply and when it flushes the input.
    this.cutMidFrame = undefined;
    this.passedOn = 0;
    let first = true;
    // Frames passed on need not be kept by the line (a streaming device may send any amount meanwhile).
    const handOn = (): FrameVerdict => {
      if (from === 0) return 'more';
      const consumed = from;
      from = 0;
      return { consumed };
    };
    return (received, silence) => {
      for (;;) {
        const found = silence ? frameAtSilence(this.framing, received, from) : findFrame(this.framing, received, from);
        if (found.kind === 'more') {
          from = Math.max(from, found.keep);
          return handOn();
        }
        from = found.next;
        if (found.kind === 'bad') {
          // On a device that streams, a bad frame may well be a streamed one: counted, not the answer's failure.
          if (!this.streaming) return { problem: found.problem };
          first = false; // the frame after it starts after its delimiter
          this.passedOn++;
          this.badStreamFrame(found.problem);
          if (silence) return handOn();
          continue;
        }
        // Only when a frame may have been cut: one was being received (the splitter held its start)
        // or the serial port's input was flushed for the request (a device server's TCP input is not).
        const tail =
          first && this.framing.type !== 'stx-etx' && (this.cutMidFrame !== false || this.device.connection.transport === 'serial');
        first = false;
        if (!answer || answer.test(frameText(found.frame, this.encoding))) {
          // What follows the answer (handed back to the listeners) starts a frame.
          this.splitter.atBoundary();
          return { reply: found.frame, rest: received.subarray(found.next) };
        }
        this.passedOn++;
        if (!tail) this.streamed(found.frame);
        if (silence) return handOn();
      }
    };
  }

  private requestFailed(plan: RequestPlan, error: unknown): TagReading[] {
    if (error instanceof SerialLineError) {
      if (error.connectionLost || error.code === 'not-connected') throw error;
      if (error.code === 'timeout') {
        let got = error.received.length === 0 ? 'no reply' : `no complete reply: ${showBytes(error.received)}`;
        if (this.badSinceGood > 0 && this.lastBadFrame) got += ` (bad frames meanwhile, the last: ${this.lastBadFrame.problem})`;
        return this.timedOut(
          plan,
          `timeout: ${got} within ${plan.timeout} ms to ${showBytes(plan.request, 40)}`,
          error.received.length === 0 && this.passedOn === 0,
        );
      }
      // The device answered, if badly: it is alive.
      this.answered();
      const got = error.received.length > 0 ? ` (received ${showBytes(error.received)})` : '';
      return this.allBad(plan, `${error.message}${error.code === 'bad-reply' ? got : ''}`, error.code);
    }
    if (error instanceof DriverError) throw error;
    throw new DriverError(error instanceof Error ? error.message : String(error), { code: 'error', cause: error });
  }

  private answered(): void {
    if (this.skipInterval > 0) this.log.info({ device: this.name }, 'device answers again; no longer skipped');
    this.consecutiveTimeouts = 0;
    this.silentTimeouts = 0;
    this.renewed = false;
    this.skipInterval = 0;
    this.skipUntil = 0;
  }

  private timedOut(plan: RequestPlan, reason: string, silent: boolean): TagReading[] {
    this.consecutiveTimeouts++;
    this.silentTimeouts = silent ? this.silentTimeouts + 1 : 0;
    const connection = this.device.connection;
    const backoffAfter = connection.backoffAfterTimeouts;
    // A TCP connection to a device server can hang (half-open, a stuck server) and looks exactly
    // like a silent device: before the device is skipped, a connection it has to itself on which
    // nothing at all came back is renewed, once per episode.
    if (
      this.silentTimeouts >= backoffAfter &&
      !this.renewed &&
      connection.transport === 'tcp' &&
      this.lease !== undefined &&
      this.lease.userCount === 1
    ) {
      this.renewed = true;
      this.consecutiveTimeouts = 0;
      this.silentTimeouts = 0;
      this.log.warn({ device: this.name, timeouts: backoffAfter }, 'nothing came back on the device-server connection; renewing it');
      // As a lost connection: the core closes the driver (the last lease closes the socket) and connects anew.
      throw new DriverError(`${reason}; ${backoffAfter} requests in a row got nothing back: the connection is renewed`, {
        code: 'timeout',
        connectionLost: true,
      });
    }
    // A device already being skipped keeps one reason for the whole episode (its next try is nextTryAt).
    const episode = this.skipInterval > 0;
    if (this.consecutiveTimeouts >= backoffAfter) {
      this.skipInterval = this.skipInterval === 0 ? BACKOFF_START_MS : Math.min(BACKOFF_MAX_MS, this.skipInterval * 2);
      this.skipUntil = Date.now() + this.skipInterval;
      if (this.consecutiveTimeouts === backoffAfter)
        this.log.warn(
          { device: this.name, timeouts: this.consecutiveTimeouts, skipMs: this.skipInterval },
          'device does not answer; its requests are skipped for a while',
        );
    }
    return episode ? this.skippedReadings(plan) : this.allBad(plan, reason, 'timeout');
  }

  private skippedReadings(plan: RequestPlan): TagReading[] {
    const backoffAfter = this.device.connection.backoffAfterTimeouts;
    return this.allBad(plan, `skipped: no answer to ${backoffAfter} requests in a row; tried again now and then (nextTryAt)`, 'skipped');
  }

  private allBad(plan: SerialPlan, reason: string, code: DriverErrorCode): TagReading[] {
    return plan.tags.map((compiled) => ({ tag: compiled.tag.name, quality: 'bad', reason, code }));
  }

  // ---- streaming -------------------------------------------------------------------------------

  /** A frame the device sent by itself: every streaming group takes what is for its tags. */
  private streamed(frame: Buffer): void {
    this.badSinceGood = 0;
    if (this.streams.size === 0) return;
    const now = Date.now();
    const text = frameText(frame, this.encoding);
    for (const plan of this.streams) {
      const results = parseFrame(plan.tags, frame, text, now, false);
      const delivered: TagReading[] = [];
      results.forEach((reading, index) => {
        if (!reading) return;
        plan.latest.set(plan.tags[index]!.tag.name, { reading, at: now, stale: false });
        delivered.push(reading);
      });
      if (delivered.length > 0 && plan.mode === 'push') plan.deliver?.(delivered);
    }
  }

  /**
   * A streamed frame that could not be framed (checksum, too long). Which tags it was for is
   * unknown, so it turns none of them bad (a noisy line would make every tag flap); it is counted,
   * logged, and named in the reason of tags that go stale meanwhile.
   */
  private badStreamFrame(problem: string): void {
    this.badFrames++;
    this.badSinceGood++;
    this.lastBadFrame = { problem };
    if (this.badFrames === 1 || this.badFrames % LOG_EVERY === 0)
      this.log.warn({ device: this.name, badFrames: this.badFrames, problem }, 'bad frame from the device');
  }

  private async firstFrames(plan: StreamPlan): Promise<void> {
    const deadline = Date.now() + plan.staleAfter;
    const missing = () => plan.tags.some((compiled) => plan.latest.get(compiled.tag.name)?.reading === undefined);
    while (missing() && Date.now() < deadline && this.connected) await sleep(10);
  }

  private latestOf(plan: StreamPlan, now: number): TagReading[] {
    return plan.tags.map((compiled) => {
      const latest = plan.latest.get(compiled.tag.name);
      if (latest?.reading && now - latest.at <= plan.staleAfter) return latest.reading;
      return this.staleReading(plan, compiled, latest);
    });
  }

  private staleReading(plan: StreamPlan, compiled: CompiledTag, latest: Latest | undefined): TagReading {
    const what = latest?.reading ? 'no new frame' : 'no frame yet';
    const reason = `${what} for this tag within ${plan.staleAfter} ms (staleAfter)`;
    const bad = this.lastBadFrame;
    if (bad && this.badSinceGood > 0) {
      const count = `${this.badSinceGood} bad frame${this.badSinceGood === 1 ? '' : 's'} since the last good one`;
      return { tag: compiled.tag.name, quality: 'bad', reason: `${reason}; ${count}, the last: ${bad.problem}`, code: 'bad-reply' };
    }
    return { tag: compiled.tag.name, quality: 'bad', reason, code: 'timeout' };
  }

  private checkStale(plan: StreamPlan): void {
    if (!plan.deliver || !this.connected) return;
    const now = Date.now();
    const stale: TagReading[] = [];
    for (const compiled of plan.tags) {
      const latest = plan.latest.get(compiled.tag.name);
      if (!latest || latest.stale || now - latest.at <= plan.staleAfter) continue;
      latest.stale = true;
      stale.push(this.staleReading(plan, compiled, latest));
    }
    if (stale.length > 0) plan.deliver(stale);
  }

  // ---- writes ----------------------------------------------------------------------------------

  async write(tag: SerialTag, value: TagValue): Promise<void> {
    const template = this.commands.get(tag.name);
    if (!tag.writable || !template) throw new DriverError(`tag "${tag.name}" has no command to write it`, { code: 'read-only' });
    let payload: Buffer;
    try {
      payload = template.render({ ...this.templateFields, value: commandValue(tag, value) });
    } catch (error) {
      if (error instanceof DriverError) throw error;
      // A value the command's format cannot take ("abc" in {value:.1f}, "€" in a latin1 line): nothing was sent.
      const shown = typeof value === 'bigint' ? value.toString() : JSON.stringify(value);
      throw new DriverError(`cannot write ${shown} to "${tag.name}": ${(error as Error).message}`, { code: 'invalid-value' });
    }
    const request = frameRequest(this.framing, payload);
    const lease = this.requireLease();
    const ack = tag.ack === undefined ? undefined : new RegExp(tag.ack);
    const nak = tag.nak === undefined ? undefined : new RegExp(tag.nak);
    // A device that streams sends frames of its own meanwhile: the answer is the frame that matches ack (or nak).
    const answer = ack && this.streaming ? new RegExp(nak ? `(?:${tag.ack})|(?:${tag.nak})` : tag.ack!) : undefined;
    const timeout = this.device.connection.timeout;
    let reply: Buffer;
    try {
      if (!ack) {
        await lease.exclusive((exchange) => exchange.send(request));
        return;
      }
      reply = await lease.exclusive((exchange) => exchange.transact(request, this.answerOptions(answer, timeout)));
    } catch (error) {
      if (error instanceof SerialLineError && error.code === 'timeout') {
        const got = error.received.length === 0 ? 'no answer' : `no complete answer: ${showBytes(error.received)}`;
        throw new DriverError(`sent ${showBytes(request, 40)}, ${got} within ${timeout} ms (expected /${tag.ack}/)`, { code: 'timeout' });
      }
      throw error;
    }
    const text = frameText(reply, this.encoding);
    if (nak?.test(text))
      throw new DriverError(`the device refused ${showBytes(request, 40)}: it answered ${showBytes(reply)} (nak /${tag.nak}/)`, {
        code: 'bad-reply',
      });
    if (!ack.test(text))
      throw new DriverError(
        `the device did not acknowledge ${showBytes(request, 40)}: it answered ${showBytes(reply)} (expected /${tag.ack}/)`,
        {
          code: 'bad-reply',
        },
      );
  }

  private requireLease(): SerialPortLease {
    if (!this.lease?.isOpen)
      throw new DriverError(`not connected to ${this.lease?.label ?? this.name}`, { code: 'not-connected', connectionLost: true });
    return this.lease;
  }

  async close(): Promise<void> {
    for (const plan of this.streams) {
      clearInterval(plan.watchdog);
      plan.watchdog = undefined;
      plan.deliver = undefined;
    }
    this.splitter.reset();
    const lease = this.lease;
    this.lease = undefined;
    await lease?.release();
  }
}

/**
 * Silence (ms) after which an unfinished fixed-length frame is dropped: inside a frame bytes
 * follow each other at once, but USB adapters and device servers hand them over in bursts.
 */
function idleResetOf(connection: SerialDeviceConfig['connection']): number {
  if (connection.transport === 'tcp') return 50;
  return Math.max(50, Math.ceil(10 * characterTime(connection)));
}

/** The value a command template gets for a write, checked against the tag's type. */
function commandValue(tag: SerialTag, value: TagValue): string | number | bigint | boolean {
  const refuse = (why: string): never => {
    throw new DriverError(`${JSON.stringify(typeof value === 'bigint' ? value.toString() : value)} ${why}`, { code: 'invalid-value' });
  };
  if (Array.isArray(value)) return refuse(`is an array; tag "${tag.name}" takes one ${tag.type}`);
  switch (tag.type) {
    case 'float64':
      if (typeof value === 'bigint') return Number(value);
      if (typeof value !== 'number') return refuse('is not a number');
      return value;
    case 'int32':
    case 'int64': {
      if (typeof value === 'bigint') return value;
      if (typeof value !== 'number' || !Number.isInteger(value)) return refuse(`is not an integer (tag type ${tag.type})`);
      if (tag.type === 'int32' && (value < -2147483648 || value > 2147483647)) return refuse('does not fit int32');
      return value;
    }
    case 'bool': {
      const truth =
        value === true || value === 1 || value === 1n ? true : value === false || value === 0 || value === 0n ? false : undefined;
      if (truth === undefined) return refuse('is not a bool (true/false or 1/0)');
      const words = truth ? tag.trueValues : tag.falseValues;
      return words?.[0] ?? truth;
    }
    case 'string':
      if (typeof value !== 'string') return refuse('is not a string');
      return value;
  }
}

export function createDriver(device: SerialDeviceConfig, context: DriverContext): SerialDriver {
  return new SerialDriver(device, context);
}
