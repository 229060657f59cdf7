// A "line" is one Modbus link with its modbus-serial client, running requests strictly one after
// another (Modbus allows one outstanding request on a serial bus, and many TCP gateways behave
// the same).
//
// Modbus TCP: one TCP connection to a host:port, shared by every device (unit id) behind it, on
// the strict MBAP port (ports.ts). These lines live in a module-level registry keyed by the
// endpoint and are reference counted by the drivers attached to them.
//
// RTU (`rtu` on a serial port, `rtu-over-tcp` on a serial device server's TCP port): each device
// has a line of its own on its share (lease) of the byte line, with the client on SerialRtuPort
// (serial-port.ts). The byte line belongs to the pipeline's serial-port registry
// (src/pipeline/serial-ports.ts), because other drivers' devices may sit on the same RS-485 bus:
// it opens the port or connection once for all of them, serializes their requests, keeps the
// line's quiet time, drops stray bytes, holds requests back after a request that ended without
// its reply until the late reply is in or the line stayed quiet, and reopens the line after it
// failed. So a bad reply does not cost the connection, which other devices may be using: it is
// retried like a timeout on the same line.

import { setTimeout as sleep } from 'node:timers/promises';
import modbusSerial from 'modbus-serial';
import { DriverError } from '../../src/pipeline/driver.js';
import { acquireSerialPort, acquireTcpLine, type SerialExchange, type SerialPortLease } from '../../src/pipeline/serial-ports.js';
import type { ModbusConnection } from './config.js';
import { MbapPort } from './ports.js';
import { SerialRtuPort } from './serial-port.js';

const ModbusRTU = modbusSerial.default;
export type ModbusClient = InstanceType<typeof ModbusRTU>;

/** Modbus exception codes and their names as the specification words them. */
export const EXCEPTION_NAMES: Readonly<Record<number, string>> = {
  1: 'illegal function',
  2: 'illegal data address',
  3: 'illegal data value',
  4: 'server device failure',
  5: 'acknowledge',
  6: 'server device busy',
  8: 'memory parity error',
  10: 'gateway path unavailable',
  11: 'gateway target device failed to respond',
};

/**
 * exception: the device answered with a Modbus exception. timeout: nothing came back in time.
 * bad-reply: something came back that does not fit the request (CRC, length, byte count, ids).
 * connection: the link itself is gone.
 */
export type FailureKind = 'exception' | 'timeout' | 'bad-reply' | 'connection';

/** Every failure of a request, classified so callers can decide per kind. */
export class ModbusFailure extends Error {
  readonly kind: FailureKind;
  readonly exceptionCode: number | undefined;
  /** For a bad reply: the line closed the connection because of it (Modbus TCP), so it must be opened again. */
  readonly dropped: boolean;
  /** For a bad reply: the bytes received, in hex, for the log. */
  readonly bytes: string | undefined;
  constructor(
    kind: FailureKind,
    message: string,
    options: { exceptionCode?: number; cause?: unknown; dropped?: boolean; bytes?: string } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = 'ModbusFailure';
    this.kind = kind;
    this.exceptionCode = options.exceptionCode;
    this.dropped = options.dropped ?? false;
    this.bytes = options.bytes;
  }
}

const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'EPIPE',
  'ENOTCONN',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EBADF',
  'ENODEV',
  'EIO',
]);

function field(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null ? Reflect.get(value, key) : undefined;
}

/** Maps whatever modbus-serial (or the socket below it) threw to a readable, classified failure. */
export function classifyError(error: unknown): ModbusFailure {
  if (error instanceof ModbusFailure) return error;
  // The serial-port registry's own failures (the line gone, this device's share released).
  if (error instanceof DriverError) {
    if (error.code === 'timeout') return new ModbusFailure('timeout', 'timeout', { cause: error });
    if (error.code === 'bad-reply') return new ModbusFailure('bad-reply', error.message, { cause: error });
    return new ModbusFailure('connection', error.message, { cause: error });
  }
  const modbusCode = field(error, 'modbusCode');
  if (typeof modbusCode === 'number') {
    const name = EXCEPTION_NAMES[modbusCode] ?? 'unknown exception';
    return new ModbusFailure('exception', `exception ${modbusCode}: ${name}`, { exceptionCode: modbusCode, cause: error });
  }
  const name = field(error, 'name');
  const message = String(field(error, 'message') ?? error);
  if (name === 'TransactionTimedOutError') return new ModbusFailure('timeout', 'timeout', { cause: error });
  const code = field(error, 'errno') ?? field(error, 'code');
  // modbus-serial reports "Port Not Open" with errno ECONNREFUSED; sockets use the usual codes.
  if (name === 'PortNotOpenError' || (typeof code === 'string' && CONNECTION_CODES.has(code))) {
    return new ModbusFailure('connection', message || String(code), { cause: error });
  }
  // "CRC error", "Data length error, expected 9 got 7", "Unexpected data error, expected address 1 got 2":
  // noise on the line or two masters talking; on a serial line the request can be retried.
  return new ModbusFailure('bad-reply', `bad reply: ${message}`, { cause: error });
}

export function endpointOf(connection: ModbusConnection): { key: string; label: string; settings: string } {
  if (connection.transport === 'rtu') {
    const parity = connection.parity[0]!.toUpperCase();
    const settings = `${connection.baudRate} ${connection.dataBits}${parity}${connection.stopBits}`;
    return { key: `rtu:${connection.path}`, label: `serial ${connection.path} (${settings})`, settings };
  }
  const label = `${connection.transport} ${connection.host}:${connection.port}`;
  return { key: `${connection.transport}://${connection.host}:${connection.port}`, label, settings: '' };
}

/** How long a TCP connect may take: a little more than a request, TCP handshakes over VPNs are slow. */
function connectTimeoutOf(connection: ModbusConnection): number {
  return Math.max(connection.timeout, 3000);
}

/** ModbusRTU's own timeout on a registry line, past the registry's (which decides): only a safety net. */
const LIBRARY_TIMEOUT_MARGIN_MS = 100;

/** Users of a line: what the line needs to know about the drivers attached to it. */
export interface LineUser {
  readonly name: string;
  readonly interRequestDelay: number;
}

export class Line {
  readonly key: string;
  readonly label: string;
  readonly settings: string;
  private readonly connection: ModbusConnection;
  private readonly users = new Set<LineUser>();
  private client: ModbusClient | undefined;
  /** The strict port under the client on Modbus TCP (see ports.ts); undefined on RTU lines. */
  private port: MbapPort | undefined;
  /** RTU lines: this device's share of the registry's byte line, and the client's port on it. */
  private readonly lease: SerialPortLease | undefined;
  private leasePort: SerialRtuPort | undefined;
  private opening: Promise<void> | undefined;
  /**
   * The requests in flight, failed at once when the connection goes away. One reject per request,
   * removed when it ends: racing every request against one promise per connection instead kept a
   * reaction (and the request's reply) per request on that promise for as long as the
   * connection lived — 2.3 KB per request, without bound.
   */
  private readonly inFlight = new Set<(failure: ModbusFailure) => void>();
  private queue: Promise<unknown> = Promise.resolve();
  private lastRequestEnd = 0;
  private requests = 0;
  /** Why the last connection went away, for the drivers' messages. */
  lossReason: string | undefined;
  /** When anything on this line last answered (data, an exception, a reply however late), ms since the epoch. */
  lastReplyAt = 0;

  /** `user` is the device of an RTU line, which gets its share of the byte line here (a serial port: throws `line-conflict`). */
  constructor(connection: ModbusConnection, user?: LineUser) {
    const endpoint = endpointOf(connection);
    this.key = endpoint.key;
    this.label = endpoint.label;
    this.settings = endpoint.settings;
    this.connection = connection;
    const lineUser = {
      name: user?.name ?? endpoint.label,
      interRequestDelay: user?.interRequestDelay ?? 0,
      onPortLost: (reason: string) => this.leaseLost(reason),
    };
    if (connection.transport === 'rtu') {
      const { path, baudRate, dataBits, parity, stopBits } = connection;
      this.lease = acquireSerialPort(path, { baudRate, dataBits, parity, stopBits }, lineUser);
    } else if (connection.transport === 'rtu-over-tcp') {
      this.lease = acquireTcpLine(connection.host, connection.port, { ...lineUser, connectTimeout: connectTimeoutOf(connection) });
    }
  }

  get isOpen(): boolean {
    return this.client?.isOpen === true;
  }

  /** The link is open, for this device or (registry line) for another one on it. */
  get linkOpen(): boolean {
    return this.lease ? this.lease.isOpen : this.isOpen;
  }

  /** Devices on the link (on a registry line: of every driver). */
  get userCount(): number {
    return this.lease ? this.lease.userCount : this.users.size;
  }

  /** Requests sent on the link since it was created, by every device on it (tests and diagnostics). */
  get requestCount(): number {
    return this.lease ? this.lease.requestCount : this.requests;
  }

  attach(user: LineUser): void {
    this.users.add(user);
  }

  /** Returns the number of users left. */
  detach(user: LineUser): number {
    this.users.delete(user);
    return this.users.size;
  }

  /** Opens the link unless it is open already; concurrent callers share one attempt. */
  open(): Promise<void> {
    if (this.isOpen) return Promise.resolve();
    this.opening ??= this.doOpen().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async doOpen(): Promise<void> {
    // A client whose socket died without a 'close' event (see execute) is still referenced: drop it.
    if (this.client) this.markLost(this.client, 'connection no longer open');
    const c = this.connection;
    if (this.lease) return this.openLeased(this.lease);
    if (c.transport !== 'tcp') throw new Error(`${this.label}: an RTU line without its share of the byte line`);
    const connectTimeout = connectTimeoutOf(c);
    // Modbus TCP runs on our strict port (ports.ts).
    const port = new MbapPort({ host: c.host, port: c.port, connectTimeout });
    const client = new ModbusRTU(port);
    // modbus-serial re-emits its port's errors; an 'error' event without a listener would crash the process.
    client.on('error', (error: unknown) => this.markLost(client, `port error: ${String(field(error, 'message') ?? error)}`));
    client.on('close', () => this.markLost(client, 'connection closed'));
    port.onData = () => {
      this.lastReplyAt = Date.now();
    };
    port.onBadReply = (problem, bytes) =>
      this.markLost(client, `bad reply: ${problem}`, new ModbusFailure('bad-reply', `bad reply: ${problem}`, { dropped: true, bytes }));
    client.setTimeout(connectTimeout);
    try {
      await new Promise<void>((resolve, reject) => client.open((error?: Error) => (error ? reject(error) : resolve())));
    } catch (error) {
      void disposeClient(client);
      const message = String(field(error, 'message') ?? error) || String(field(error, 'code') ?? 'unknown error');
      throw new Error(`cannot open ${this.label}: ${message}`, { cause: error });
    }
    if (!client.isOpen) {
      void disposeClient(client);
      throw new Error(`cannot open ${this.label}: the connection closed while opening`);
    }
    if (this.users.size === 0) {
      // Every device let go of the line while the connect was under way (gateway stopping):
      // nobody would ever close this socket.
      void disposeClient(client);
      throw new Error(`cannot open ${this.label}: the line was closed while connecting`);
    }
    this.adopt(client);
    this.port = port;
  }

  /** An RTU line: the registry opens the byte line (shared with every device on it), the client runs on this device's lease. */
  private async openLeased(lease: SerialPortLease): Promise<void> {
    // The registry's error already names the line: "cannot open serial /dev/ttyUSB0 (9600 8N1): …",
    // "cannot connect to device server 192.168.10.50:4001: …".
    await lease.open();
    // Behind a device server, bytes that make no reply by the timeout are reported as a bad reply
    // (see SerialRtuPort).
    const port = new SerialRtuPort(lease, { bytesWithoutReplyAreBad: this.connection.transport === 'rtu-over-tcp' });
    const client = new ModbusRTU(port);
    // The port's failures come from the registry (leaseLost); the listener only keeps an
    // 'error' without one from crashing the process.
    client.on('error', (error: unknown) => this.markLost(client, `port error: ${String(field(error, 'message') ?? error)}`));
    await new Promise<void>((resolve, reject) => client.open((error?: Error) => (error ? reject(error) : resolve())));
    if (this.users.size === 0) {
      void disposeClient(client);
      throw new Error(`cannot open ${this.label}: the line was closed while connecting`);
    }
    this.adopt(client);
    this.leasePort = port;
  }

  private adopt(client: ModbusClient): void {
    this.client = client;
    this.lastRequestEnd = 0;
    this.lossReason = undefined;
  }

  /** The registry says the byte line failed (it reopens it when a device connects again). */
  private leaseLost(reason: string): void {
    const client = this.client;
    if (!client) return;
    this.markLost(client, reason);
    this.lossReason = reason;
  }

  /**
   * Forgets the current connection and fails the request in flight with `failure` (a lost
   * connection by default). Devices on the line see it closed and their runners reconnect.
   */
  private markLost(client: ModbusClient, why: string, failure?: ModbusFailure): void {
    if (client !== this.client) return;
    this.client = undefined;
    this.port = undefined;
    this.leasePort = undefined;
    this.lossReason = failure ? `connection to ${this.label} closed after a ${why}` : `connection to ${this.label} lost: ${why}`;
    this.failInFlight(failure ?? new ModbusFailure('connection', this.lossReason));
    void disposeClient(client);
  }

  private failInFlight(failure: ModbusFailure): void {
    for (const reject of this.inFlight) reject(failure);
    this.inFlight.clear();
  }

  /**
   * Closes the connection although the socket looks fine (nothing on it answers any more); the
   * devices' runners open a new one. Returns false when there was no connection to close, or it is
   * not this device's alone: a device-server connection other devices share stays (they are what
   * keeps it, and it is theirs too), and a serial port is no connection to renew.
   */
  reset(why: string): boolean {
    const client = this.client;
    if (!client) return false;
    if (this.lease && (this.connection.transport === 'rtu' || this.lease.userCount > 1)) return false;
    this.markLost(client, why);
    this.lossReason = `connection to ${this.label} closed: ${why}`;
    return true;
  }

  /** Closes the link (last user gone; on a registry line: gives this device's share back). In-flight requests fail as connection losses. */
  async shutdown(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.port = undefined;
    this.leasePort = undefined;
    if (client) {
      this.failInFlight(new ModbusFailure('connection', `connection to ${this.label} closed`));
      await disposeClient(client);
    }
    await this.lease?.release();
  }

  /**
   * Runs one request on the line: queued behind every other request of every unit id on it,
   * after the quiet time the line's devices need. The job gets the client with unit id and
   * timeout already set.
   */
  run<T>(unitId: number, timeout: number, job: (client: ModbusClient) => Promise<T>): Promise<T> {
    const lease = this.lease;
    const result = this.queue.then(() =>
      lease
        ? // One exchange on the byte line: no other device's request between this job's requests.
          lease
            .exclusive((exchange) => this.execute(unitId, timeout, job, exchange))
            .catch((error: unknown) => Promise.reject(classifyError(error)))
        : this.execute(unitId, timeout, job),
    );
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async execute<T>(
    unitId: number,
    timeout: number,
    job: (client: ModbusClient) => Promise<T>,
    exchange?: SerialExchange,
  ): Promise<T> {
    if (!exchange) {
      // On a shared link the slowest device dictates the quiet time between any two frames
      // (the serial-port registry keeps it on its lines).
      let delay = 0;
      for (const user of this.users) delay = Math.max(delay, user.interRequestDelay);
      const wait = this.lastRequestEnd + delay - Date.now();
      if (wait > 0) await sleep(wait);
    }
    const client = this.client;
    const port = this.port;
    const leasePort = this.leasePort;
    if (!client?.isOpen) throw new ModbusFailure('connection', this.lossReason ?? `not connected to ${this.label}`);
    // A timeout of 0 would mean "wait forever" in modbus-serial and freeze every device on the line.
    const ms = Math.max(timeout, 10);
    client.setID(unitId);
    let refused: Promise<never> | undefined;
    if (leasePort && exchange) {
      // The registry times the request from when it is written and says what arrived meanwhile.
      client.setTimeout(ms + LIBRARY_TIMEOUT_MARGIN_MS);
      leasePort.exchange = exchange;
      leasePort.timeout = ms;
      refused = new Promise<never>((_, reject) => {
        leasePort.onRefused = ({ kind, message, bytes }) => reject(new ModbusFailure(kind, message, bytes === undefined ? {} : { bytes }));
      });
    } else {
      client.setTimeout(ms);
    }
    this.requests++;
    let guard: NodeJS.Timeout | undefined;
    let failOnLoss: ((failure: ModbusFailure) => void) | undefined;
    try {
      const result = await Promise.race([
        job(client),
        new Promise<never>((_, reject) => {
          failOnLoss = reject;
          this.inFlight.add(reject);
        }),
        ...(refused ? [refused] : []),
        // Safety net in case the library never calls back (it should time out by itself first).
        new Promise<never>((_, reject) => {
          guard = setTimeout(() => reject(new ModbusFailure('timeout', 'timeout')), ms * 2 + 1000);
        }),
      ]);
      this.lastReplyAt = Date.now();
      return result;
    } catch (error) {
      const failure = classifyError(error);
      if (failure.kind === 'exception' || failure.kind === 'bad-reply') this.lastReplyAt = Date.now();
      if (failure.kind === 'bad-reply' && failure.dropped) throw failure;
      if (failure.kind === 'timeout' && port) {
        // Half a reply and then silence: the stream has lost its framing, the port dropped it.
        const problem = port.abandon();
        if (problem) throw new ModbusFailure('bad-reply', `bad reply: ${problem}`, { dropped: true, cause: error });
      }
      // A socket reset closes the port without a 'close' event from modbus-serial; the request then
      // merely times out. Report it as what it is so the core reconnects.
      if (failure.kind !== 'connection' && !client.isOpen) {
        this.markLost(client, failure.message);
        throw new ModbusFailure('connection', `connection to ${this.label} lost`, { cause: error });
      }
      throw failure;
    } finally {
      clearTimeout(guard);
      if (failOnLoss) this.inFlight.delete(failOnLoss);
      if (leasePort) {
        leasePort.exchange = undefined;
        leasePort.onRefused = undefined;
      }
      this.lastRequestEnd = Date.now();
    }
  }
}

function disposeClient(client: ModbusClient): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 2000);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    try {
      // Sockets are destroyed (no lingering half-closed TCP); an RTU line's port has no destroy:
      // closing it lets go of the client only, the byte line belongs to the serial-port registry.
      client.destroy(done);
    } catch {
      done();
    }
  });
}

const lines = new Map<string, Line>();

/**
 * The line for this device: on Modbus TCP the one shared by every device on that host:port,
 * created on first use; on RTU one of its own, on a share of the registry's serial port or
 * device-server connection (a serial port throws `line-conflict` when it is in use with other
 * settings).
 */
export function acquireLine(connection: ModbusConnection, user: LineUser): Line {
  if (connection.transport !== 'tcp') {
    const own = new Line(connection, user);
    own.attach(user);
    return own;
  }
  const endpoint = endpointOf(connection);
  let line = lines.get(endpoint.key);
  if (!line) {
    line = new Line(connection);
    lines.set(endpoint.key, line);
  }
  line.attach(user);
  return line;
}

/** Detaches a user; the last one out closes the line and removes it from the registry. */
export async function releaseLine(line: Line, user: LineUser): Promise<void> {
  if (line.detach(user) > 0) return;
  if (lines.get(line.key) === line) lines.delete(line.key);
  await line.shutdown();
}

/** Number of Modbus TCP lines currently registered (tests; RTU lines are counted by the serial-port registry). */
export function openLineCount(): number {
  return lines.size;
}
