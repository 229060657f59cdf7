// A "line" is one physical or logical Modbus link: a serial port, or one TCP connection to a
// host:port. Several devices (unit ids) behind an RS-485 bus or a TCP gateway share it, and Modbus
// allows only one outstanding request on a serial bus (and many TCP gateways behave the same), so
// a line owns exactly one modbus-serial client and runs requests strictly one after another.
// Lines live in a module-level registry keyed by the endpoint and are reference counted by the
// drivers attached to them.

import modbusSerial from 'modbus-serial';
import type { ModbusConnection } from './config.js';
import { MbapPort, RtuOverTcpPort, type StrictPort } from './ports.js';

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
  /** For a bad reply: the line closed the connection because of it (TCP links), so it must be opened again. */
  readonly dropped: boolean;
  /** For a bad reply: the bytes received, in hex, for the log. */
  readonly bytes: string | undefined;
  constructor(kind: FailureKind, message: string, options: { exceptionCode?: number; cause?: unknown; dropped?: boolean; bytes?: string } = {}) {
    super(message, { cause: options.cause });
    this.name = 'ModbusFailure';
    this.kind = kind;
    this.exceptionCode = options.exceptionCode;
    this.dropped = options.dropped ?? false;
    this.bytes = options.bytes;
  }
}

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ENOTCONN', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH', 'EBADF', 'ENODEV', 'EIO']);

function field(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null ? Reflect.get(value, key) : undefined;
}

/** Maps whatever modbus-serial (or the socket below it) threw to a readable, classified failure. */
export function classifyError(error: unknown): ModbusFailure {
  if (error instanceof ModbusFailure) return error;
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

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

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
  /** The strict port under the client on TCP links (see ports.ts); undefined on serial lines. */
  private port: StrictPort | undefined;
  private opening: Promise<void> | undefined;
  /** Rejects when the current client's connection goes away, so in-flight requests fail at once. */
  private lost: Promise<never> = new Promise<never>(() => undefined);
  private rejectLost: (failure: ModbusFailure) => void = () => undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private lastRequestEnd = 0;
  /** Requests sent since the line was created (tests and diagnostics). */
  requestCount = 0;
  /** Why the last connection went away, for the drivers' messages. */
  lossReason: string | undefined;
  /** When anything on this line last answered (data, an exception, a reply however late), ms since the epoch. */
  lastReplyAt = 0;

  constructor(connection: ModbusConnection) {
    const endpoint = endpointOf(connection);
    this.key = endpoint.key;
    this.label = endpoint.label;
    this.settings = endpoint.settings;
    this.connection = connection;
  }

  get isOpen(): boolean {
    return this.client?.isOpen === true;
  }

  get userCount(): number {
    return this.users.size;
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
    // Connect timeout: a little more generous than a request timeout, TCP handshakes over VPNs are slow.
    const connectTimeout = Math.max(c.timeout, 3000);
    // TCP links run on our strict ports (ports.ts: MBAP for Modbus TCP, plain RTU frames for
    // serial device servers in transparent mode); serial lines on modbus-serial's buffered RTU port.
    const port = c.transport === 'tcp' ? new MbapPort({ host: c.host, port: c.port, connectTimeout }) : c.transport === 'rtu-over-tcp' ? new RtuOverTcpPort({ host: c.host, port: c.port, connectTimeout }) : undefined;
    const client = port ? new ModbusRTU(port) : new ModbusRTU();
    // modbus-serial re-emits serial port errors; an 'error' event without a listener would crash the process.
    client.on('error', (error: unknown) => this.markLost(client, `port error: ${String(field(error, 'message') ?? error)}`));
    client.on('close', () => this.markLost(client, 'connection closed'));
    if (port) {
      port.onData = () => {
        this.lastReplyAt = Date.now();
      };
      port.onBadReply = (problem, bytes) =>
        this.markLost(client, `bad reply: ${problem}`, new ModbusFailure('bad-reply', `bad reply: ${problem}`, { dropped: true, bytes }));
    }
    client.setTimeout(connectTimeout);
    try {
      if (c.transport === 'rtu') {
        await client.connectRTUBuffered(c.path, { baudRate: c.baudRate, parity: c.parity, dataBits: c.dataBits, stopBits: c.stopBits });
      } else {
        await new Promise<void>((resolve, reject) => client.open((error?: Error) => (error ? reject(error) : resolve())));
      }
    } catch (error) {
      void disposeClient(client, c.transport);
      const message = String(field(error, 'message') ?? error) || String(field(error, 'code') ?? 'unknown error');
      throw new Error(`cannot open ${this.label}: ${message}`, { cause: error });
    }
    if (!client.isOpen) {
      void disposeClient(client, c.transport);
      throw new Error(`cannot open ${this.label}: the connection closed while opening`);
    }
    if (this.users.size === 0) {
      // Every device let go of the line while the connect was under way (gateway stopping):
      // nobody would ever close this socket.
      void disposeClient(client, c.transport);
      throw new Error(`cannot open ${this.label}: the line was closed while connecting`);
    }
    this.client = client;
    this.port = port;
    this.lost = new Promise<never>((_, reject) => {
      this.rejectLost = reject;
    });
    this.lost.catch(() => undefined);
    this.lastRequestEnd = 0;
    this.lossReason = undefined;
  }

  /**
   * Forgets the current connection and fails the request in flight with `failure` (a lost
   * connection by default). Devices on the line see it closed and their runners reconnect.
   */
  private markLost(client: ModbusClient, why: string, failure?: ModbusFailure): void {
    if (client !== this.client) return;
    this.client = undefined;
    this.port = undefined;
    this.lossReason = failure ? `connection to ${this.label} closed after a ${why}` : `connection to ${this.label} lost: ${why}`;
    this.rejectLost(failure ?? new ModbusFailure('connection', this.lossReason));
    void disposeClient(client, this.connection.transport);
  }

  /**
   * Closes the connection although the socket looks fine (nothing on it answers any more); the
   * devices' runners open a new one. Returns false when there was no connection to close.
   */
  reset(why: string): boolean {
    const client = this.client;
    if (!client) return false;
    this.markLost(client, why);
    this.lossReason = `connection to ${this.label} closed: ${why}`;
    return true;
  }

  /** Closes the link (last user gone). In-flight requests fail as connection losses. */
  async shutdown(): Promise<void> {
    const client = this.client;
    if (!client) return;
    this.client = undefined;
    this.port = undefined;
    this.rejectLost(new ModbusFailure('connection', `connection to ${this.label} closed`));
    await disposeClient(client, this.connection.transport);
  }

  /**
   * Runs one request on the line: queued behind every other request of every unit id on it,
   * after the quiet time the line's devices need. The job gets the client with unit id and
   * timeout already set.
   */
  run<T>(unitId: number, timeout: number, job: (client: ModbusClient) => Promise<T>): Promise<T> {
    const result = this.queue.then(() => this.execute(unitId, timeout, job));
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async execute<T>(unitId: number, timeout: number, job: (client: ModbusClient) => Promise<T>): Promise<T> {
    // On a shared bus the slowest device dictates the quiet time between any two frames.
    let delay = 0;
    for (const user of this.users) delay = Math.max(delay, user.interRequestDelay);
    const wait = this.lastRequestEnd + delay - Date.now();
    if (wait > 0) await sleep(wait);
    const client = this.client;
    const port = this.port;
    if (!client || !client.isOpen) throw new ModbusFailure('connection', `not connected to ${this.label}`);
    // A timeout of 0 would mean "wait forever" in modbus-serial and freeze every device on the line.
    const ms = Math.max(timeout, 10);
    client.setID(unitId);
    client.setTimeout(ms);
    if (this.connection.transport === 'rtu') flushReceiveBuffer(client);
    this.requestCount++;
    let guard: NodeJS.Timeout | undefined;
    try {
      const result = await Promise.race([
        job(client),
        this.lost,
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
      this.lastRequestEnd = Date.now();
    }
  }
}

/**
 * The buffered RTU ports keep unmatched bytes (a late answer to a timed-out request, line noise)
 * and scan them when the next answer arrives; drop them so a stale frame is never taken as the
 * answer to a new request. Reaches into a private field of modbus-serial on purpose.
 */
function flushReceiveBuffer(client: ModbusClient): void {
  const port = field(client, '_port');
  if (typeof port === 'object' && port !== null && Buffer.isBuffer(Reflect.get(port, '_buffer'))) {
    Reflect.set(port, '_buffer', Buffer.alloc(0));
  }
}

function disposeClient(client: ModbusClient, transport: ModbusConnection['transport']): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, 2000);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    try {
      // Sockets are destroyed (no lingering half-closed TCP); the serial port has no destroy in
      // modbus-serial's buffered port, so it is closed.
      if (transport === 'rtu') client.close(done);
      else client.destroy(done);
    } catch {
      done();
    }
  });
}

const lines = new Map<string, Line>();

/** The shared line for this endpoint, created on first use. Throws when serial settings disagree. */
export function acquireLine(connection: ModbusConnection, user: LineUser): Line {
  const endpoint = endpointOf(connection);
  let line = lines.get(endpoint.key);
  if (line && line.settings !== endpoint.settings) {
    throw new Error(
      `${endpoint.key} is already used at ${line.settings} by another device; "${user.name}" asks for ${endpoint.settings}. All devices on one serial line must use the same settings`,
    );
  }
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

/** Number of lines currently registered (tests). */
export function openLineCount(): number {
  return lines.size;
}
