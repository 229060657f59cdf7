// The one small interface every field-protocol driver implements.
// Drivers know their protocol and nothing else: no MQTT, no SQLite, no topics.
// The core hands them the tags of one poll group, they hand back raw readings.

import type { Logger } from 'pino';

export type Quality = 'good' | 'uncertain' | 'bad';

/** A value as a device gives it, before scaling. Arrays are fixed-length tag arrays. */
export type ScalarValue = number | bigint | boolean | string;
export type TagValue = ScalarValue | ScalarValue[];

/** What a driver returns for one tag in one read. */
export interface TagReading {
  tag: string;
  /** Absent when the tag could not be read. */
  value?: TagValue;
  quality: Quality;
  /** Why the quality is not good (human readable, e.g. "exception 2: illegal data address"). */
  reason?: string;
  /** A short stable code for the failure ("timeout", "exception-2", …), counted per device. */
  code?: DriverErrorCode;
  /** Milliseconds since the epoch, when the device itself stamps its values. */
  sourceTs?: number;
}

/** Every driver's tag config carries at least a unique name. */
export interface DriverTag {
  name: string;
}

/**
 * A driver-specific compiled read plan (request blocks, node lists, …), built once per poll group
 * at start so the poll loop never re-derives it. `describe()` is logged so users see what a poll costs.
 */
export interface ReadPlan {
  describe(): string;
  /**
   * "poll" (default): the core calls read() on the group's interval. "push": the driver delivers
   * changes itself through subscribe() (OPC UA monitored items); the core only supervises the
   * connection on the group's interval and subscribes again after every reconnect.
   */
  readonly mode?: 'poll' | 'push';
}

export type ConnectionState = 'connecting' | 'connected' | 'disconnected';

/** An OPC UA StatusCode name used as a failure code: "BadNodeIdUnknown", "UncertainLastUsableValue". */
export type StatusCodeName = `Bad${string}` | `Uncertain${string}`;

/**
 * Every failure code a driver may put on a bad reading or a DriverError, and that the core matches
 * on. Counted per device in /api/status and /metrics (errorsByCode), so each is short and stable.
 * A code that is not here does not compile: add it here, with a word on what it means.
 */
export type DriverErrorCode =
  // Raised by the core (src/pipeline/device-runner.ts); the command path refuses writes with these.
  | 'not-connected' // the device has no working connection (also: a driver used before connect or after close)
  | 'start-failed' // the device's driver could not be loaded or created; the gateway retries with back-off
  | 'stopped' // the device is being stopped
  | 'no-result' // the driver returned no reading for a tag
  | 'error' // a failure that came without a code (not a DriverError)
  // Writes refused before anything reaches the device (the command path answers them as refusals).
  | 'invalid-value' // the value does not fit the tag's type
  | 'read-only' // the tag cannot be written by the protocol
  // The link, any driver.
  | 'connect-failed' // connect() failed (unreachable, refused, no such serial port, handshake failed)
  | 'connection-lost' // the connection went away under a request
  | 'closed' // the driver (or its share of a serial port) was closed while a request waited
  | 'line-conflict' // a serial port is open with other line settings for another device
  | 'timeout' // no (complete) answer within the configured time
  | 'bad-reply' // an answer that does not fit the request (framing, CRC, length, ids)
  | 'foreign-plan' // read() got a plan another driver instance made
  // Modbus.
  | `exception-${number}` // the device answered with a Modbus exception code
  | 'known-illegal-address' // not requested: the device answered "illegal data address" for it earlier
  | 'skipped' // the device is skipped for a while after timeouts (its back-off)
  | 'decode' // the registers could not be decoded into the tag's type
  | 'internal' // a tag the driver did not read (a bug)
  // OPC UA.
  | StatusCodeName // the server's status for a node, a service or the connection
  | 'no-value' // a good status without a value
  | 'unsupported-type' // a value of a DataType the gateway does not map
  | 'no-datatype'; // a node whose DataType could not be read (writes)

/**
 * Thrown (or rejected) by `read`/`write` when the failure concerns the whole device, not one tag.
 * `connectionLost` tells the core to reconnect (with back-off) before the next cycle.
 */
export class DriverError extends Error {
  readonly code: DriverErrorCode;
  readonly connectionLost: boolean;
  constructor(message: string, options: { code: DriverErrorCode; connectionLost?: boolean; cause?: unknown }) {
    super(message, { cause: options.cause });
    this.name = 'DriverError';
    this.code = options.code;
    this.connectionLost = options.connectionLost ?? false;
  }
}

export interface Driver<Tag extends DriverTag = DriverTag> {
  /** Open the connection. Rejects with a readable error; the core retries with back-off. */
  connect(): Promise<void>;
  /** Compile the tags of one poll group into a plan. Pure with respect to the device. */
  plan(tags: readonly Tag[]): ReadPlan;
  /**
   * Read every tag of a plan. Per-tag failures come back as bad readings; device failures throw
   * DriverError. With `early`, a driver may hand over readings as soon as it has them (Modbus: the
   * tags of each reply, while the next request is on the wire), so a big plan's first values need
   * not wait for its last request; the promise then resolves with the readings not handed over.
   * Every tag of the plan is read once per call, early or in the result.
   */
  read(plan: ReadPlan, early?: (readings: TagReading[]) => void): Promise<TagReading[]>;
  /**
   * For push plans: start delivering readings of the plan's tags, as they change and as bad quality
   * when they can't be read. Resolves once the subscription is established. Called again after every
   * reconnect; a plan subscribed on a connection that was closed must be subscribed anew.
   */
  subscribe?(plan: ReadPlan, onReadings: (readings: TagReading[]) => void): Promise<void>;
  /** Write one value (already type-checked by the core) to one tag. */
  write(tag: Tag, value: TagValue): Promise<void>;
  /** Close the connection and release every resource. Never rejects. */
  close(): Promise<void>;
  /** True while the driver believes its connection is usable. */
  readonly connected: boolean;
  /**
   * While the driver skips polls of an unresponsive device (its own back-off): when it tries the
   * device again, ms since the epoch. Shown in /api/status, so tag reasons need not count down.
   */
  readonly nextTryAt?: number | undefined;
}

/** What the core gives a driver when it creates one. */
export interface DriverContext {
  log: Logger;
  dataDir: string;
}
