// The Modbus driver: Modbus TCP, RTU on serial lines and RTU framing over TCP.
//
// One driver instance serves one device (one unit id). Modbus TCP devices behind the same
// host:port share one line (see line.ts); RTU devices on the same serial port or device-server
// port share it through the pipeline's serial-port registry, with the other drivers' devices on
// it; either way requests run strictly one at a time. On top of that the driver keeps, per device:
//   - holes: address ranges the device answered "illegal data address" for. Found by bisecting
//     the failed request, remembered so later polls do not pay for them, re-probed now and then;
//   - back-off: a device that stopped answering is skipped for a growing while, so the other
//     devices on its line keep their poll rate instead of waiting for its timeouts. On a TCP
//     connection where nothing at all answers any more, the connection is renewed once before that
//     (a half-open or stuck connection looks exactly like a silent device).

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
import { formatAddress } from './address.js';
import { bitOf, decodeBits, decodeRegisters, encodeBits, encodeRegisters, withBit, type RegisterLayout } from './codec.js';
import { registersPerElement, type ModbusConnection, type ModbusDeviceConfig, type ModbusTag } from './config.js';
import { acquireLine, ModbusFailure, releaseLine, type Line, type LineUser, type ModbusClient } from './line.js';
import {
  describePlan,
  isBitArea,
  maxPerRequest,
  planRequests,
  splitBlock,
  type Block,
  type Hole,
  type Plan,
  type PlannerOptions,
} from './planner.js';

export { ModbusFailure, classifyError, EXCEPTION_NAMES, openLineCount } from './line.js';
export { planRequests, describeBlocks, describePlan, type Block, type Hole, type Plan } from './planner.js';

/** A device's first skip after backoffAfterTimeouts timed-out polls; doubled on each failed probe. */
export const BACKOFF_START_MS = 5_000;
export const BACKOFF_MAX_MS = 60_000;
/** Holes are forgotten after this long, so a device whose register map was fixed recovers by itself. */
export const HOLE_RETRY_MS = 10 * 60_000;

/** Largest FC16 write (250 data bytes) and FC15 write by the specification. */
const MAX_WRITE_REGISTERS = 123;
const MAX_WRITE_COILS = 1968;

interface StoredHole extends Hole {
  expiresAt: number;
}

/** Tracks how one poll went, for the back-off decision. */
interface PollState {
  /** The device answered something (data or an exception): it is alive. */
  answered: boolean;
  timedOut: boolean;
  /** Set when the device seems gone: the remaining blocks are not requested in this poll. */
  abortReason?: string;
  /** Hands over the tags of each reply as it comes (read()'s `early`); their names, not to be returned again. */
  early?: { deliver: (readings: TagReading[]) => void; delivered: Set<string> };
}

export class ModbusReadPlan implements ReadPlan {
  readonly owner: ModbusDriver;
  readonly tags: readonly ModbusTag[];
  private readonly options: PlannerOptions;
  private compiled: Plan<ModbusTag>;
  private version: number;
  private description: string | undefined;

  constructor(owner: ModbusDriver, tags: readonly ModbusTag[], options: PlannerOptions) {
    this.owner = owner;
    this.tags = [...tags];
    this.options = options;
    const { holes, version } = owner.knownHoles;
    this.compiled = planRequests(this.tags, options, holes);
    this.version = version;
  }

  /** The compiled plan, recompiled first when the device learnt new holes since the last compile. */
  current(): Plan<ModbusTag> {
    const { holes, version } = this.owner.knownHoles;
    if (version !== this.version) {
      this.compiled = planRequests(this.tags, this.options, holes);
      this.version = version;
      this.description = undefined;
    }
    return this.compiled;
  }

  get blocks(): readonly Block<ModbusTag>[] {
    return this.current().blocks;
  }

  /** Wire requests one poll of this plan costs. */
  get requestCount(): number {
    return this.current().blocks.reduce((sum, block) => sum + block.requests.length, 0);
  }

  /** The requests one poll sends now, and the learnt holes that shaped them (the core asks after every poll). */
  describe(): string {
    const plan = this.current();
    this.description ??= describePlan(plan, this.owner.knownHoles.holes);
    return this.description;
  }
}

export class ModbusDriver implements Driver<ModbusTag>, LineUser {
  readonly name: string;
  private readonly connection: ModbusConnection;
  private readonly log: Logger;
  private readonly plannerOptions: PlannerOptions;
  private line: Line | undefined;
  private holes: StoredHole[] = [];
  private holesVersion = 0;
  private consecutiveTimeouts = 0;
  /** When the first poll of the current run of timed-out polls started. */
  private silentSince = 0;
  /** The connection was renewed during the current run of timed-out polls. */
  private renewed = false;
  private skipInterval = 0;
  private skipUntil = 0;
  /** Bad replies since the device last answered a request well (the first of a run is logged as a warning). */
  private badReplies = 0;

  constructor(device: ModbusDeviceConfig, context: DriverContext) {
    this.name = device.name;
    this.connection = device.connection;
    this.log = context.log;
    this.plannerOptions = {
      maxRegistersPerRequest: device.connection.maxRegistersPerRequest,
      maxBitsPerRequest: device.connection.maxBitsPerRequest,
      maxGap: device.connection.maxGap,
    };
  }

  get interRequestDelay(): number {
    return this.connection.interRequestDelay;
  }

  /** Address ranges this device answered "illegal data address" for, with a version that changes with them. */
  get knownHoles(): { holes: readonly Hole[]; version: number } {
    return { holes: this.holes, version: this.holesVersion };
  }

  get connected(): boolean {
    return this.line?.isOpen === true;
  }

  /** Requests sent on this device's line so far, by every device on it (diagnostics, tests). */
  get lineRequestCount(): number {
    return this.line?.requestCount ?? 0;
  }

  async connect(): Promise<void> {
    if (!this.line) {
      try {
        this.line = acquireLine(this.connection, this);
      } catch (error) {
        throw new DriverError(error instanceof Error ? error.message : String(error), { code: 'line-conflict', cause: error });
      }
    }
    const line = this.line;
    const wasOpen = line.linkOpen;
    try {
      await line.open();
    } catch (error) {
      // Give the reference back: the core retries connect() later, possibly without close().
      this.line = undefined;
      await releaseLine(line, this);
      throw new DriverError(error instanceof Error ? error.message : String(error), { code: 'connect-failed', cause: error });
    }
    const others = line.userCount - 1;
    const shared =
      others > 0 ? ` (line shared with ${others} other device${others === 1 ? '' : 's'}${wasOpen ? ', already open' : ''})` : '';
    this.log.info(
      { line: line.label, unitId: this.connection.unitId },
      `connected to ${line.label}, unit ${this.connection.unitId}${shared}`,
    );
  }

  async close(): Promise<void> {
    const line = this.line;
    if (!line) return;
    this.line = undefined;
    try {
      await releaseLine(line, this);
    } catch (error) {
      this.log.debug({ err: error }, 'error while closing the line');
    }
  }

  plan(tags: readonly ModbusTag[]): ModbusReadPlan {
    return new ModbusReadPlan(this, tags, this.plannerOptions);
  }

  async read(plan: ReadPlan, early?: (readings: TagReading[]) => void): Promise<TagReading[]> {
    if (!(plan instanceof ModbusReadPlan) || plan.owner !== this) {
      throw new DriverError('read() got a plan made by another driver instance', { code: 'foreign-plan' });
    }
    const line = this.requireLine();
    const now = Date.now();
    if (now < this.skipUntil) return plan.tags.map((tag) => bad(tag, this.skipReason, 'skipped'));
    this.expireHoles(now);
    const compiled = plan.current();
    const started = now;

    const results = new Map<string, TagReading>();
    // Not requested at all (an exception 2 earlier): bad with the device's word, counted apart
    // from exceptions this poll actually received.
    for (const { tag, reason } of compiled.excluded) results.set(tag.name, bad(tag, reason, 'known-illegal-address'));
    const poll: PollState = { answered: false, timedOut: false, ...(early ? { early: { deliver: early, delivered: new Set() } } : {}) };
    for (const block of compiled.blocks) {
      if (poll.abortReason !== undefined) {
        for (const { tag } of block.tags) results.set(tag.name, bad(tag, poll.abortReason, 'timeout'));
        continue;
      }
      const ok = await this.readBlock(line, block, results, poll);
      // With `early`, a block's values go as soon as its reply is in (failures at the poll's end,
      // with the reason the whole poll decides), before the next request: a poll that reads faster
      // than the gateway publishes would only move the wait into the outbox, where the data ages
      // unseen, instead of into the poll, where an overrun is counted (measured: with the next
      // request sent first, one device's saturation fell from 30,000 to 25,000 msg/s and its p99
      // beyond it rose from 0.2–0.4 s to 0.6–0.7 s).
      if (ok && poll.early) {
        const { deliver, delivered } = poll.early;
        const readings: TagReading[] = [];
        for (const { tag } of block.tags) {
          const reading = results.get(tag.name);
          if (!reading || delivered.has(tag.name)) continue;
          delivered.add(tag.name);
          readings.push(reading);
        }
        if (readings.length > 0) deliver(readings);
      }
    }
    this.accountPoll(poll, line, started);
    // While skipped, a probe that times out reads like the skipped polls around it: one reason for
    // the whole episode, so report-by-exception publishes it once.
    const skipping = this.skipInterval > 0;
    const delivered = poll.early?.delivered;
    const rest = delivered && delivered.size > 0 ? plan.tags.filter((tag) => !delivered.has(tag.name)) : plan.tags;
    return rest.map((tag) => {
      const reading = results.get(tag.name) ?? bad(tag, 'not read', 'internal');
      return skipping && reading.code === 'timeout' ? { ...reading, reason: this.skipReason } : reading;
    });
  }

  /** While the device is skipped (back-off after timeouts): when it is tried again, ms since the epoch. */
  get nextTryAt(): number | undefined {
    return this.skipUntil > Date.now() ? this.skipUntil : undefined;
  }

  /** The same text for a whole back-off episode; when the next try is due is in nextTryAt (/api/status). */
  private get skipReason(): string {
    const polls = this.backoffThreshold;
    return `device skipped: no reply in ${polls} poll${polls === 1 ? '' : 's'} in a row; tried again with growing pauses until it answers`;
  }

  async write(tag: ModbusTag, value: TagValue): Promise<void> {
    const { area, address, bit } = tag.address;
    if (area === 'input' || area === 'discrete') {
      throw new DriverError(
        `cannot write "${tag.name}": ${area === 'input' ? 'input registers' : 'discrete inputs'} are read-only in Modbus; only coils and holding registers can be written`,
        { code: 'read-only' },
      );
    }
    const line = this.requireLine();
    let jobs: ((client: ModbusClient) => Promise<unknown>)[];
    try {
      if (area === 'coil') {
        const bits = encodeBits(value, tag.count);
        if (tag.count === undefined) {
          jobs = [(client) => client.writeCoil(address, bits[0]!)];
        } else {
          jobs = chunks(bits, MAX_WRITE_COILS).map(
            (part, i) => (client: ModbusClient) => client.writeCoils(address + i * MAX_WRITE_COILS, part),
          );
        }
      } else if (bit !== undefined) {
        const on = encodeBits(value)[0]!;
        // Read-modify-write in one line job: nothing else from this gateway can slip in between.
        // (Another master writing the same register in between cannot be excluded by Modbus itself.)
        jobs = [
          async (client) => {
            const current = await client.readHoldingRegisters(address, 1);
            const register = current.data[0] ?? 0;
            if (bitOf(register, bit) !== on) await client.writeRegister(address, withBit(register, bit, on));
          },
        ];
      } else {
        const registers = encodeRegisters(value, this.layoutOf(tag));
        if (registers.length === 1 && tag.count === undefined) {
          jobs = [(client) => client.writeRegister(address, registers[0]!)];
        } else {
          // Values larger than one FC16 frame are written in parts (not atomic then), split between
          // array elements so no float or int64 is ever half old, half new.
          const element = registersPerElement(tag.type, tag.length);
          const max = Math.max(
            element,
            Math.floor(Math.min(MAX_WRITE_REGISTERS, this.connection.maxRegistersPerRequest) / element) * element,
          );
          jobs = chunks(registers, max).map((part, i) => (client: ModbusClient) => client.writeRegisters(address + i * max, part));
        }
      }
    } catch (error) {
      if (error instanceof TypeError || error instanceof RangeError) {
        throw new DriverError(`cannot write "${tag.name}": ${error.message}`, { code: 'invalid-value', cause: error });
      }
      throw error;
    }
    for (const part of jobs) {
      try {
        await this.request(line, part);
      } catch (error) {
        const failure = error instanceof ModbusFailure ? error : new ModbusFailure('bad-reply', String(error));
        if (failure.kind === 'connection') throw this.connectionLost(failure);
        if (failure.kind === 'bad-reply' && failure.dropped) throw this.badReplyLost(failure);
        const code = failureCode(failure);
        throw new DriverError(`writing "${tag.name}" (${formatAddress(tag.address)}) failed: ${failure.message}`, { code, cause: failure });
      }
    }
  }

  // --- reading -------------------------------------------------------------------------------

  private requireLine(): Line {
    const line = this.line;
    if (!line) throw new DriverError('not connected', { code: 'not-connected', connectionLost: true });
    if (!line.isOpen) {
      // The line noticed the loss by itself (peer closed the socket, port vanished).
      throw this.connectionLost(new ModbusFailure('connection', line.lossReason ?? `not connected to ${line.label}`));
    }
    return line;
  }

  private connectionLost(failure: ModbusFailure): DriverError {
    this.log.warn({ line: this.line?.label }, failure.message);
    return new DriverError(failure.message, { code: 'connection-lost', connectionLost: true, cause: failure });
  }

  /** A reply on Modbus TCP that did not fit its request: the line closed the connection; the core opens a new one. */
  private badReplyLost(failure: ModbusFailure): DriverError {
    const label = this.line?.label ?? 'the line';
    const problem = failure.message.replace(/^bad reply: /, '');
    this.log.warn(
      { line: label, unitId: this.connection.unitId, bytes: failure.bytes },
      `bad reply from unit ${this.connection.unitId} on ${label}: ${problem}; connection closed so the next one starts clean`,
    );
    return new DriverError(failure.message, { code: 'bad-reply', connectionLost: true, cause: failure });
  }

  /** One request with the configured retries; each attempt queues separately so other devices interleave. */
  private async request<T>(line: Line, job: (client: ModbusClient) => Promise<T>): Promise<T> {
    const attempts = this.connection.retries + 1;
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await line.run(this.connection.unitId, this.connection.timeout, job);
        this.badReplies = 0;
        return result;
      } catch (error) {
        const failure = error instanceof ModbusFailure ? error : new ModbusFailure('bad-reply', `bad reply: ${String(error)}`);
        if (failure.kind === 'bad-reply' && !failure.dropped) this.logBadReply(line, failure);
        // Timeouts and mangled frames are worth another try (on an RTU line: a Modbus TCP connection
        // that got a bad reply is closed already); an exception is the device's final word.
        if ((failure.kind === 'timeout' || (failure.kind === 'bad-reply' && !failure.dropped)) && attempt < attempts) continue;
        if (failure.kind === 'timeout') {
          const tries = attempts === 1 ? '' : ` (${attempts} attempts)`;
          throw new ModbusFailure('timeout', `timeout: no response within ${this.connection.timeout} ms${tries}`, { cause: failure });
        }
        throw failure;
      }
    }
  }

  /** A bad reply on a line that stays open (RTU): the first of a run as a warning, the rest at debug level. */
  private logBadReply(line: Line, failure: ModbusFailure): void {
    const unit = this.connection.unitId;
    const message = `bad reply from unit ${unit} on ${line.label}: ${failure.message.replace(/^bad reply: /, '')}`;
    const fields = { line: line.label, unitId: unit, bytes: failure.bytes };
    if (this.badReplies++ === 0) this.log.warn(fields, message);
    else this.log.debug(fields, message);
  }

  /** Reads every request of a coil/discrete block and concatenates the bits. */
  private async fetchBits(line: Line, block: Block<ModbusTag>): Promise<boolean[]> {
    const bits: boolean[] = [];
    for (const { start, count } of block.requests) {
      const result = await this.request(line, (client) =>
        block.area === 'coil' ? client.readCoils(start, count) : client.readDiscreteInputs(start, count),
      );
      // Bits come padded to whole bytes. modbus-serial takes the byte count on trust (RTU lines;
      // Modbus TCP checks it in ports.ts).
      const bytes = Math.ceil(count / 8);
      if (result.data.length !== bytes * 8) throw byteCountMismatch(result.buffer.length, `${count} bit${count === 1 ? '' : 's'}`, bytes);
      bits.push(...result.data.slice(0, count));
    }
    return bits;
  }

  /** Reads every request of a register block and concatenates the registers. */
  private async fetchRegisters(line: Line, block: Block<ModbusTag>): Promise<number[]> {
    const registers: number[] = [];
    for (const { start, count } of block.requests) {
      const result = await this.request(line, (client) =>
        block.area === 'holding' ? client.readHoldingRegisters(start, count) : client.readInputRegisters(start, count),
      );
      if (result.data.length !== count)
        throw byteCountMismatch(result.buffer.length, `${count} register${count === 1 ? '' : 's'}`, 2 * count);
      for (const register of result.data) registers.push(register);
    }
    return registers;
  }

  /** Reads a block into results. Returns true when the block read fine as it is (no bisection needed). */
  private async readBlock(line: Line, block: Block<ModbusTag>, results: Map<string, TagReading>, poll: PollState): Promise<boolean> {
    let decode: (from: number, to: number, tag: ModbusTag) => TagValue;
    try {
      if (isBitArea(block.area)) {
        const bits = await this.fetchBits(line, block);
        decode = (from, to, tag) => decodeBits(bits.slice(from, to), tag.count);
      } else {
        const registers = await this.fetchRegisters(line, block);
        decode = (from, to, tag) => decodeRegisters(registers.slice(from, to), this.layoutOf(tag));
      }
    } catch (error) {
      const failure = error instanceof ModbusFailure ? error : new ModbusFailure('bad-reply', `bad reply: ${String(error)}`);
      if (failure.kind === 'connection') throw this.connectionLost(failure);
      if (failure.kind === 'bad-reply') {
        if (failure.dropped) throw this.badReplyLost(failure);
        poll.answered = true; // something answered, however mangled: not a silent device
      }
      if (failure.kind === 'exception') {
        poll.answered = true;
        if (failure.exceptionCode === 2) return this.locateIllegalAddress(line, block, failure, results, poll);
      }
      if (failure.kind === 'timeout') {
        poll.timedOut = true;
        // Nothing answered yet in this poll: the device is most likely off. Asking for the other
        // blocks would only hold the line for more timeouts.
        if (!poll.answered) poll.abortReason = failure.message;
      }
      for (const { tag } of block.tags) results.set(tag.name, bad(tag, failure.message, failureCode(failure)));
      return false;
    }
    poll.answered = true;
    for (const item of block.tags) {
      try {
        const value = decode(item.start - block.start, item.end - block.start, item.tag);
        results.set(item.tag.name, { tag: item.tag.name, value, quality: 'good' });
      } catch (error) {
        // Should not happen (lengths are checked), but one odd tag must never fail the whole poll.
        results.set(item.tag.name, bad(item.tag, `cannot decode: ${error instanceof Error ? error.message : String(error)}`, 'decode'));
      }
    }
    return true;
  }

  /**
   * "Illegal data address" for a whole block: bisect it to find the tags the device really rejects,
   * keep the others good, and remember the offending range so the next polls plan around it.
   */
  private async locateIllegalAddress(
    line: Line,
    block: Block<ModbusTag>,
    failure: ModbusFailure,
    results: Map<string, TagReading>,
    poll: PollState,
  ): Promise<boolean> {
    const max = maxPerRequest(block.area, this.plannerOptions);
    const halves = splitBlock(block, max);
    if (!halves) {
      const names = block.tags.map((t) => t.tag.name);
      for (const { tag } of block.tags) results.set(tag.name, bad(tag, failure.message, 'exception-2'));
      this.addHole({ area: block.area, start: block.start, end: block.end, reason: failure.message });
      this.log.warn(
        { tags: names, area: block.area, start: block.start, end: block.end - 1 },
        `${block.area} ${block.start}..${block.end - 1} answers "${failure.message}": ${names.join(', ')} marked bad and not requested again for ${HOLE_RETRY_MS / 60_000} min`,
      );
      return false;
    }
    // (The device answered, so poll.abortReason cannot be set while bisecting.)
    const [left, right] = halves;
    const leftOk = await this.readBlock(line, left, results, poll);
    const rightOk = await this.readBlock(line, right, results, poll);
    if (leftOk && rightOk && left.end <= right.start) {
      // Each half reads fine, only the union fails: the culprit lies between them, an unmapped gap
      // or a segment boundary the device will not read across. Plan around it from now on: the
      // gap itself, or for touching halves the two registers either side of the boundary.
      const [start, end] = left.end < right.start ? [left.end, right.start] : [right.start - 1, right.start + 1];
      this.addHole({ area: block.area, start, end, reason: failure.message });
      this.log.info(
        { area: block.area, start, end: end - 1 },
        `${block.area} ${start}..${end - 1} cannot be read across ("${failure.message}"); requests are split there from now on`,
      );
    }
    // The block as a whole failed; reporting true would let an enclosing bisection blame the wrong gap.
    return false;
  }

  private addHole(hole: Hole): void {
    // Two poll groups bisecting the same range at once would learn the same hole twice.
    if (this.holes.some((h) => h.area === hole.area && h.start === hole.start && h.end === hole.end)) return;
    this.holes.push({ ...hole, expiresAt: Date.now() + HOLE_RETRY_MS });
    this.holesVersion++;
  }

  private expireHoles(now: number): void {
    const kept = this.holes.filter((hole) => hole.expiresAt > now);
    if (kept.length !== this.holes.length) {
      this.holes = kept;
      this.holesVersion++;
      this.log.debug('re-probing addresses that answered "illegal data address" earlier');
    }
  }

  /** Back-off bookkeeping once per poll: only polls where nothing answered and something timed out count. */
  private accountPoll(poll: PollState, line: Line, started: number): void {
    if (poll.answered) {
      if (this.consecutiveTimeouts >= this.backoffThreshold) this.log.info(`unit ${this.connection.unitId} answers again`);
      this.consecutiveTimeouts = 0;
      this.renewed = false;
      this.skipInterval = 0;
      this.skipUntil = 0;
      return;
    }
    if (!poll.timedOut) return;
    if (this.consecutiveTimeouts === 0) this.silentSince = started;
    this.consecutiveTimeouts++;
    if (this.consecutiveTimeouts < this.backoffThreshold) return;
    if (this.connection.transport !== 'rtu' && !this.renewed && line.lastReplyAt < this.silentSince) {
      // Not a byte from anyone on this connection for all these polls: it may be stuck (half-open,
      // or a peer that lost track of it) rather than the device gone. Renew it once and let the
      // next poll probe the device on the new one before skipping it. (A device-server connection
      // other devices share is not renewed: see Line.reset.)
      this.renewed = true;
      const why = `no reply at all in ${this.consecutiveTimeouts} poll${this.consecutiveTimeouts === 1 ? '' : 's'} of unit ${this.connection.unitId}; reconnecting in case the connection is stuck`;
      if (line.reset(why)) {
        this.log.warn({ line: line.label }, `${line.label}: ${why}`);
        return;
      }
    }
    const first = this.skipInterval === 0;
    this.skipInterval = first ? BACKOFF_START_MS : Math.min(this.skipInterval * 2, BACKOFF_MAX_MS);
    this.skipUntil = Date.now() + this.skipInterval;
    const message = `unit ${this.connection.unitId} did not answer in ${this.consecutiveTimeouts} consecutive polls; skipping it for ${this.skipInterval / 1000}s so the other devices on ${this.line?.label ?? 'the line'} keep their rate`;
    if (first) this.log.warn(message);
    else this.log.debug(message);
  }

  private get backoffThreshold(): number {
    return this.connection.backoffAfterTimeouts;
  }

  private layoutOf(tag: ModbusTag): RegisterLayout {
    return {
      type: tag.type,
      byteOrder: tag.byteOrder ?? this.connection.byteOrder,
      length: tag.length,
      count: tag.count,
      bit: tag.address.bit,
      encoding: tag.encoding,
    };
  }
}

function bad(tag: ModbusTag, reason: string, code: DriverErrorCode): TagReading {
  return { tag: tag.name, quality: 'bad', reason, code };
}

/** Stable short codes for counting failures per device: timeout, bad-reply, connection-lost, exception-N. */
function failureCode(failure: ModbusFailure): DriverErrorCode {
  switch (failure.kind) {
    case 'exception':
      return `exception-${failure.exceptionCode ?? 0}`;
    case 'connection':
      return 'connection-lost';
    default:
      return failure.kind;
  }
}

function byteCountMismatch(got: number, asked: string, expected: number): ModbusFailure {
  return new ModbusFailure('bad-reply', `bad reply: byte count ${got} for ${asked} asked (expected ${expected})`);
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const parts: T[][] = [];
  for (let i = 0; i < items.length; i += size) parts.push(items.slice(i, i + size));
  return parts;
}

export function createDriver(device: ModbusDeviceConfig, context: DriverContext): Driver<ModbusTag> {
  return new ModbusDriver(device, context);
}
