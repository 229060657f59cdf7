// The serial-port registry: one owner per serial port, shared by every device on it, whatever its
// driver. An RS-485 line carries one conversation at a time, so several devices on one port (Modbus
// RTU unit ids, serial-line instruments, both) must never talk over each other:
//
//   - the port is opened once, with its line settings; a device asking for other settings is
//     refused with both settings and the path (a second owner would just garble the line);
//   - every device holds a lease (reference counted); the last one released closes the port;
//   - exchanges of all leases run one after another in arrival order (a FIFO), each after the
//     quiet time the slowest device on the line needs. An exchange is exclusive: inside it a driver
//     writes requests and collects replies (until its own framing says the reply is complete, or a
//     timeout). Bytes nobody waits for (between exchanges, between requests) are dropped, and the
//     port's input is flushed before each request;
//   - a late answer is never taken for the next request. Serial devices answer strictly in order
//     and many protocols (Modbus RTU, most text instruments) carry no transaction id: a reply that
//     comes after its request timed out, while the next request already waits, looks exactly like
//     the next reply, and every reply after it would be one request off. So after a request ended
//     without its reply (it timed out, its driver gave up on it, its device let go of the port),
//     no request goes out on the port until the line is back in step: the late reply has arrived
//     (the line was busy, then quiet for the inter-frame gap), or the line has been quiet for as
//     long again as the request was waited for (the device dropped it, or is gone). What arrives
//     meanwhile is dropped. A line that never goes quiet (noise, a device that streams) holds
//     requests back for at most twice that time. A reply later than that cannot be told from the
//     next one;
//   - a device that stops answering costs the others only its own timeouts (each followed by as
//     long again of quiet line, see above): its exchanges queue like anyone's, and the driver's own
//     back-off decides how often it is tried;
//   - when the port fails (USB adapter unplugged, pty closed) every lease is told and requests in
//     flight fail as a lost connection; the next open() of any lease opens it again;
//   - bytes no request waits for go to the devices that listen (instruments that send frames by
//     themselves: a scale in continuous mode, NMEA); a device that does not listen never sees them.
//
// A serial device server in "TCP server" mode (Moxa NPort and the like) is the same line at the
// end of a TCP connection: acquireTcpLine() gives leases of one such connection, with the same
// rules. Every device that names the same host:port (Modbus RTU over TCP, serial-line
// instruments) shares it: device servers often take only one connection per port, and two would
// talk over each other on the RS-485 line behind it. A connection the device server drops is lost
// like an unplugged adapter and reopened by the next open().
//
// Protocol knowledge stays in the drivers: the registry moves bytes and knows no framing but the
// function each request comes with.

import { setTimeout as sleep } from 'node:timers/promises';
import { realpathSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { SerialPort } from 'serialport';
import { DriverError, type DriverErrorCode } from './driver.js';
import { hexBytes } from '../util/hex.js';

export type Parity = 'none' | 'even' | 'odd' | 'mark' | 'space';

export interface SerialLineSettings {
  baudRate: number;
  dataBits: 5 | 6 | 7 | 8;
  parity: Parity;
  stopBits: 1 | 1.5 | 2;
  /** RTS/CTS hardware flow control. */
  rtscts?: boolean;
  /** XON/XOFF software flow control. */
  xonxoff?: boolean;
}

/** "9600 8N1", "19200 7E2 RTS/CTS". */
export function describeLineSettings(settings: SerialLineSettings): string {
  const parity = { none: 'N', even: 'E', odd: 'O', mark: 'M', space: 'S' }[settings.parity];
  return `${settings.baudRate} ${settings.dataBits}${parity}${settings.stopBits}${settings.rtscts ? ' RTS/CTS' : ''}${settings.xonxoff ? ' XON/XOFF' : ''}`;
}

/** What the registry knows about a device on a port. */
export interface SerialPortUser {
  /** The device's name, for messages. */
  readonly name: string;
  /** Quiet time (ms) the device needs between two exchanges; the line waits the largest of its users'. */
  readonly interRequestDelay?: number;
  /** Device-server lines: how long (ms) a TCP connect may take; the line allows the longest of its users' (default 5000). */
  readonly connectTimeout?: number;
  /** Told when the port fails under its users (adapter unplugged, pty closed). Any lease's open() reopens it. */
  onPortLost?(reason: string): void;
  /** Bytes that arrived while no request waited for a reply (streamed frames, noise), for a device that listens. */
  onData?(chunk: Buffer): void;
  /**
   * For a device that listens: bytes stop coming to it (a request of any device on the line takes
   * them, the port's input is flushed). A frame it was receiving is cut, and what it gets next may
   * start mid-frame.
   */
  onCut?(): void;
}

/**
 * The framing of one reply, given every byte received since its request (or since the bytes it
 * let go of): 'more' while it is not complete; `{ consumed }` when the first bytes are dealt with
 * (frames a streaming device sent meanwhile, passed on by the driver) and need not be kept; the
 * reply itself once it is complete, with what came after it (`rest`, given to the devices that
 * listen, like any byte no request waits for); or what is wrong.
 */
export type ReplyFraming = (received: Buffer, silence?: boolean) => FrameVerdict;
export type FrameVerdict = 'more' | { consumed: number } | { reply: Buffer; rest?: Buffer } | { problem: string };

export interface ReplyOptions {
  /** Milliseconds from the request to the complete reply. */
  timeout: number;
  frame: ReplyFraming;
  /** Most bytes a reply may take before it is refused as a bad reply (bounded memory). Default 4096. */
  maxBytes?: number;
  /**
   * For replies that end with a silence (inter-byte timeout framing): once bytes have arrived and
   * the line stays quiet this long (ms), `frame` is asked again with `silence` true.
   */
  silence?: number;
}

/** The port while an exchange holds it. */
export interface SerialExchange {
  /**
   * Waits until the line is back in step if a request ended without its reply (see the top of
   * this file), drops whatever was received and not claimed (the port's input is flushed), writes
   * `request` and collects the reply; the timeout starts when the request is written.
   * Rejects with a SerialLineError: `timeout`, `bad-reply` (the framing said so, or too long), or
   * `connection-lost` when the port fails meanwhile; `closed` when the exchange or lease ended.
   */
  transact(request: Uint8Array, options: ReplyOptions): Promise<Buffer>;
  /** Like transact, for a request that gets no reply: resolves once it is written. */
  send(request: Uint8Array): Promise<void>;
}

/** One device's share of a serial port. */
export interface SerialPortLease {
  readonly path: string;
  /** "9600 8N1". */
  readonly settings: string;
  /** "serial /dev/ttyUSB0 (9600 8N1)". */
  readonly label: string;
  /** The port is open and this lease not released. */
  readonly isOpen: boolean;
  /** Devices holding the port, this one included. */
  readonly userCount: number;
  /** Requests written on the port so far, by every device on it. */
  readonly requestCount: number;
  /** Why the port last went away, while it is closed. */
  readonly lossReason: string | undefined;
  /** Opens the port unless it is open; concurrent callers of every lease share one attempt. Rejects with code `connect-failed`. */
  open(): Promise<void>;
  /**
   * Runs `work` with the port to itself, after every exchange queued before it (of any device),
   * once the line is back in step after a request that ended without its reply, and after the
   * line's quiet time. Several requests inside one exchange (a read-modify-write) cannot
   * be split by another device. Rejects with `not-connected` when the port is not open, `closed`
   * once the lease is released (also while `work` runs: a release never waits for a reply).
   */
  exclusive<T>(work: (exchange: SerialExchange) => Promise<T>): Promise<T>;
  /** One request and its reply as an exchange of its own. */
  transact(request: Uint8Array, options: ReplyOptions): Promise<Buffer>;
  /** Gives the share back; the last one closes the port. Fails an exchange of this lease at once. Never rejects. */
  release(): Promise<void>;
}

/** A failed exchange, with the bytes that did arrive. */
export class SerialLineError extends DriverError {
  readonly received: Buffer;
  constructor(message: string, code: DriverErrorCode, received: Buffer = Buffer.alloc(0), connectionLost = false) {
    super(message, { code, connectionLost });
    this.name = 'SerialLineError';
    this.received = received;
  }
}

const DEFAULT_MAX_REPLY = 4096;
const CLOSE_TIMEOUT_MS = 2000;
/**
 * Shortest silence (ms) that ends a late reply. Modbus RTU's 3.5 character times are 4 ms at
 * 9600 baud, but USB serial adapters hand received bytes over in bursts (an FTDI's latency timer is
 * 16 ms), so a shorter silence inside one reply is common.
 */
const MIN_FRAME_GAP_MS = 20;

/** How long one character takes on the line (ms): start bit, data bits, parity bit, stop bits. */
export function characterTime(settings: Pick<SerialLineSettings, 'baudRate' | 'dataBits' | 'parity' | 'stopBits'>): number {
  const bitsPerCharacter = 1 + settings.dataBits + (settings.parity === 'none' ? 0 : 1) + settings.stopBits;
  return (bitsPerCharacter * 1000) / settings.baudRate;
}

/** The silence that ends a frame on this line: 3.5 character times, at least MIN_FRAME_GAP_MS. */
function frameGap(settings: SerialLineSettings): number {
  return Math.max(MIN_FRAME_GAP_MS, Math.ceil(3.5 * characterTime(settings)));
}

interface Pending {
  buffer: Buffer;
  options: ReplyOptions;
  /**
   * When the request was about to go out (before the flush): a driver that times requests itself
   * (modbus-serial) starts its clock when it hands the request over, so this is what it waited.
   */
  sentAt: number;
  resolve: (reply: Buffer) => void;
  reject: (error: SerialLineError) => void;
  timer: NodeJS.Timeout;
  /** Armed while a silence-framed reply has bytes and waits for the line to go quiet. */
  silenceTimer?: NodeJS.Timeout | undefined;
}

/** A request ended without its reply while the port stayed open: the reply may still come. */
interface LateReply {
  /** When the request ended. */
  since: number;
  /** Silence (ms) after `since` that says no reply is coming: as long as the request was waited for. */
  quiet: number;
  /** When the last byte arrived since then; 0 while none has. */
  lastByteAt: number;
  timer: NodeJS.Timeout | undefined;
}

/** The exchange handed to one `exclusive` call; dead once it returns. */
class Section implements SerialExchange {
  active = true;
  /** A request of this exchange is on its way out (waiting for the line to be in step, flushing). */
  sending = false;
  readonly lease: Lease;
  private readonly port: SharedPort;

  constructor(port: SharedPort, lease: Lease) {
    this.port = port;
    this.lease = lease;
  }

  transact(request: Uint8Array, options: ReplyOptions): Promise<Buffer> {
    return this.port.transact(this, request, options);
  }

  send(request: Uint8Array): Promise<void> {
    return this.port.send(this, request);
  }
}

/** The open byte stream under a shared line: a serial port, or a TCP connection to a device server. */
interface ByteLink {
  readonly isOpen: boolean;
  write(bytes: Buffer, done: (error?: Error | null) => void): void;
  /** Waits until what was written has left (a serial port's tcdrain; the socket's write callback on TCP). */
  drain(done: () => void): void;
  /** Drops what was received and not read yet (a serial port's OS buffer; nothing on TCP). */
  flush(done: () => void): void;
  close(): Promise<void>;
}

interface LinkEvents {
  data(chunk: Buffer): void;
  lost(why: string): void;
}

/** Where a shared line goes, and how to open it. */
interface LineEndpoint {
  /** The path or "host:port" the devices name. */
  readonly path: string;
  /** "9600 8N1", or "tcp" for a device server. */
  readonly settings: string;
  readonly label: string;
  /** The silence (ms) that ends a frame on this line. */
  readonly gap: number;
  /** Opens the link; rejects with a message that names the line. */
  open(events: LinkEvents): Promise<ByteLink>;
}

class SerialEndpoint implements LineEndpoint {
  readonly path: string;
  readonly settings: string;
  readonly label: string;
  readonly gap: number;
  private readonly lineSettings: SerialLineSettings;

  constructor(path: string, settings: SerialLineSettings) {
    this.path = path;
    this.lineSettings = settings;
    this.settings = describeLineSettings(settings);
    this.label = `serial ${path} (${this.settings})`;
    this.gap = frameGap(settings);
  }

  async open(events: LinkEvents): Promise<ByteLink> {
    const { baudRate, dataBits, parity, stopBits, rtscts, xonxoff } = this.lineSettings;
    const port = new SerialPort({
      path: this.path,
      baudRate,
      dataBits,
      parity,
      stopBits,
      rtscts: rtscts ?? false,
      xon: xonxoff ?? false,
      xoff: xonxoff ?? false,
      autoOpen: false,
    });
    // Without an 'error' listener a port error would crash the process.
    port.on('error', (error: Error) => events.lost(`port error: ${error.message}`));
    port.on('close', (error?: Error | null) => events.lost(error ? `port closed: ${error.message}` : 'port closed'));
    port.on('data', (chunk: Buffer) => events.data(chunk));
    try {
      await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
    } catch (error) {
      // serialport's messages read "Error: No such file or directory, cannot open /dev/ttyUSB0".
      const message = (error instanceof Error ? error.message : String(error)).replace(/^Error: /, '');
      throw new DriverError(`cannot open ${this.label}: ${message}`, { code: 'connect-failed', cause: error });
    }
    return {
      get isOpen() {
        return port.isOpen;
      },
      write: (bytes, done) => port.write(bytes, done),
      drain: (done) => port.drain(() => done()),
      flush: (done) => port.flush(() => done()),
      close: () => closePort(port),
    };
  }
}

/** Silence that ends a frame behind a device server: its own packing delay plus the network's. */
const TCP_FRAME_GAP_MS = 30;
/** Connect timeout for a device that names none. */
const TCP_CONNECT_TIMEOUT_MS = 5000;

class TcpEndpoint implements LineEndpoint {
  readonly path: string;
  readonly settings = 'tcp';
  readonly label: string;
  readonly gap = TCP_FRAME_GAP_MS;
  private readonly host: string;
  private readonly port: number;
  /** The connect timeout (ms) the line's devices ask for now. */
  private readonly connectTimeout: () => number;

  constructor(host: string, port: number, connectTimeout: () => number) {
    this.host = host;
    this.port = port;
    this.connectTimeout = connectTimeout;
    this.path = `${host}:${port}`;
    this.label = `device server ${this.path}`;
  }

  async open(events: LinkEvents): Promise<ByteLink> {
    const socket: Socket = connect({ host: this.host, port: this.port, noDelay: true });
    const ms = this.connectTimeout();
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no connection within ${ms} ms`)), ms);
        socket.once('connect', () => {
          clearTimeout(timer);
          resolve();
        });
        socket.once('error', (error) => {
          clearTimeout(timer);
          reject(error);
        });
      });
    } catch (error) {
      socket.destroy();
      throw new DriverError(`cannot connect to ${this.label}: ${error instanceof Error ? error.message : String(error)}`, {
        code: 'connect-failed',
        cause: error,
      });
    }
    // A device server that vanished without a FIN (power cut, cable) is found by keep-alive.
    socket.setKeepAlive(true, 10_000);
    socket.on('error', (error: Error) => events.lost(`connection error: ${error.message}`));
    socket.on('close', () => events.lost('connection closed by the device server'));
    socket.on('data', (chunk: Buffer) => events.data(chunk));
    return {
      get isOpen() {
        return !socket.destroyed && socket.readyState === 'open';
      },
      write: (bytes, done) => {
        socket.write(bytes, done);
      },
      drain: (done) => done(),
      flush: (done) => done(),
      close: () =>
        new Promise<void>((resolve) => {
          if (socket.destroyed) return resolve();
          socket.once('close', () => resolve());
          socket.destroy();
        }),
    };
  }
}

class SharedPort {
  readonly key: string;
  readonly path: string;
  readonly settings: string;
  readonly label: string;
  readonly leases = new Set<Lease>();
  private readonly endpoint: LineEndpoint;
  private port: ByteLink | undefined;
  private opening: Promise<void> | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private lastExchangeEnd = 0;
  private pending: Pending | undefined;
  private holder: Section | undefined;
  /** The silence that ends a frame on this line (ms). */
  private readonly gap: number;
  /** Set while the reply to a request that ended without it may still arrive: nothing is sent meanwhile. */
  private late: LateReply | undefined;
  /** Waiting for the line to be back in step (whenInStep). */
  private readonly inStepWaiters = new Set<() => void>();
  requestCount = 0;
  lossReason: string | undefined;

  constructor(key: string, endpoint: LineEndpoint) {
    this.key = key;
    this.endpoint = endpoint;
    this.path = endpoint.path;
    this.settings = endpoint.settings;
    this.label = endpoint.label;
    this.gap = endpoint.gap;
  }

  get isOpen(): boolean {
    return this.port?.isOpen === true;
  }

  open(): Promise<void> {
    if (this.isOpen) return Promise.resolve();
    this.opening ??= this.doOpen().finally(() => {
      this.opening = undefined;
    });
    return this.opening;
  }

  private async doOpen(): Promise<void> {
    let link: ByteLink | undefined;
    const events: LinkEvents = {
      data: (chunk) => {
        if (link) this.receive(link, chunk);
      },
      lost: (why) => {
        if (link) this.lost(link, why);
      },
    };
    const port = await this.endpoint.open(events);
    link = port;
    if (this.leases.size === 0) {
      // Every device let go while the port was opening (gateway stopping): nobody would close it.
      void port.close();
      throw new DriverError(`cannot open ${this.label}: released while opening`, { code: 'closed' });
    }
    this.port = port;
    this.lossReason = undefined;
    this.lastExchangeEnd = 0;
    this.inStep();
  }

  /** The port failed or closed by itself: fail the request in flight, tell every device. */
  private lost(port: ByteLink, why: string): void {
    if (port !== this.port) return;
    this.port = undefined;
    this.lossReason = `${this.label} lost: ${why}`;
    this.settle(new SerialLineError(this.lossReason, 'connection-lost', this.pending?.buffer, true));
    this.inStep(); // nothing more comes from this port
    void port.close();
    for (const lease of [...this.leases]) lease.portLost(this.lossReason);
  }

  private receive(port: ByteLink, chunk: Buffer): void {
    if (port !== this.port) return;
    const pending = this.pending;
    if (!pending) {
      for (const lease of this.leases) lease.data(chunk);
      // Bytes nobody waits for (a late reply, noise) are dropped: the next request starts clean.
      // After a request ended without its reply they may be that reply: the line is busy.
      const late = this.late;
      if (late) {
        const first = late.lastByteAt === 0;
        late.lastByteAt = Date.now();
        // The first byte brings the end forward to one gap from now; later ones push it back
        // (checkLate looks again when its timer fires).
        if (first) this.scheduleLate(late, this.gap);
      }
      return;
    }
    pending.buffer = pending.buffer.length === 0 ? chunk : Buffer.concat([pending.buffer, chunk]);
    this.judge(pending, false);
  }

  /** Asks the request's framing about what arrived so far, and settles the request when it says so. */
  private judge(pending: Pending, silence: boolean): void {
    let verdict: FrameVerdict;
    try {
      verdict = pending.options.frame(pending.buffer, silence);
    } catch (error) {
      verdict = { problem: `framing failed: ${error instanceof Error ? error.message : String(error)}` };
    }
    if (verdict !== 'more' && 'consumed' in verdict) {
      pending.buffer = pending.buffer.subarray(Math.min(verdict.consumed, pending.buffer.length));
      verdict = 'more';
    }
    if (verdict === 'more') {
      // Counts only what the framing still holds: a device that streams may send any amount meanwhile.
      const max = pending.options.maxBytes ?? DEFAULT_MAX_REPLY;
      if (pending.buffer.length > max)
        this.settle(new SerialLineError(`bad reply: more than ${max} bytes without a complete reply`, 'bad-reply', pending.buffer));
      else if (pending.options.silence !== undefined && !silence && pending.buffer.length > 0) {
        clearTimeout(pending.silenceTimer);
        pending.silenceTimer = setTimeout(() => {
          if (this.pending === pending) this.judge(pending, true);
        }, pending.options.silence);
      }
      return;
    }
    if ('problem' in verdict) {
      this.settle(new SerialLineError(`bad reply: ${verdict.problem}`, 'bad-reply', pending.buffer));
      return;
    }
    this.settle(undefined, verdict.reply);
    if (verdict.rest && verdict.rest.length > 0) for (const lease of this.leases) lease.data(verdict.rest);
  }

  /**
   * Ends the request waiting for its reply, if any, with `error` or the reply. `owed` says its
   * reply may still come, so the line is out of step until it has or the line stayed quiet for
   * as long as the request was `waited` for, or for its `full` timeout (a device that let go of
   * the port never waited for it).
   */
  private settle(error: SerialLineError | undefined, reply?: Buffer, owed?: 'waited' | 'full'): void {
    const pending = this.pending;
    if (!pending) return;
    this.pending = undefined;
    clearTimeout(pending.timer);
    clearTimeout(pending.silenceTimer);
    if (owed && this.isOpen) {
      const waited = Date.now() - pending.sentAt;
      this.outOfStep(owed === 'full' ? Math.max(waited, pending.options.timeout) : waited);
    }
    if (error) pending.reject(error);
    else pending.resolve(reply ?? Buffer.alloc(0));
  }

  /** A request ended without its reply: nothing is sent until the late reply is in or will not come. */
  private outOfStep(waited: number): void {
    if (this.late) clearTimeout(this.late.timer);
    const late: LateReply = { since: Date.now(), quiet: Math.max(this.gap, waited), lastByteAt: 0, timer: undefined };
    this.late = late;
    this.scheduleLate(late, late.quiet);
  }

  private scheduleLate(late: LateReply, ms: number): void {
    clearTimeout(late.timer);
    late.timer = setTimeout(() => this.checkLate(late), Math.max(1, ms));
  }

  /** Back in step when the late reply is in (busy, then a gap of silence), the line stayed quiet, or it never went quiet for twice that long. */
  private checkLate(late: LateReply): void {
    if (this.late !== late) return;
    const now = Date.now();
    const giveUpAt = late.since + 2 * late.quiet;
    const quietAt = late.lastByteAt === 0 ? late.since + late.quiet : late.lastByteAt + this.gap;
    const next = Math.min(quietAt, giveUpAt);
    if (now >= next) this.inStep();
    else this.scheduleLate(late, next - now);
  }

  /** The line is back in step (or the port went away): requests may go out again. */
  private inStep(): void {
    const late = this.late;
    if (late) {
      clearTimeout(late.timer);
      this.late = undefined;
      // The late reply is line traffic too: the quiet time between exchanges counts from it.
      this.lastExchangeEnd = Math.max(this.lastExchangeEnd, late.lastByteAt);
    }
    for (const done of [...this.inStepWaiters]) done();
  }

  /** Resolves once no late reply is owed on the line (at once when none is). */
  private whenInStep(): Promise<void> {
    if (!this.late) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.inStepWaiters.delete(done);
        resolve();
      };
      this.inStepWaiters.add(done);
    });
  }

  exclusive<T>(lease: Lease, work: (exchange: SerialExchange) => Promise<T>): Promise<T> {
    const result = this.queue.then(() => this.runExclusive(lease, work));
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async runExclusive<T>(lease: Lease, work: (exchange: SerialExchange) => Promise<T>): Promise<T> {
    if (lease.released) throw lease.closedError();
    // After a request that ended without its reply, the exchange (and the clocks of its driver's
    // requests) starts only once the line is back in step.
    if (this.late) await Promise.race([this.whenInStep(), lease.whenReleased()]);
    // On a shared bus the slowest device dictates the quiet time between any two exchanges.
    let delay = 0;
    for (const other of this.leases) delay = Math.max(delay, other.user.interRequestDelay ?? 0);
    const wait = this.lastExchangeEnd + delay - Date.now();
    if (wait > 0) await sleep(wait);
    if (lease.released) throw lease.closedError();
    if (!this.isOpen) throw new SerialLineError(this.lossReason ?? `not connected to ${this.label}`, 'not-connected', undefined, true);
    const section = new Section(this, lease);
    this.holder = section;
    try {
      return await Promise.race([work(section), lease.whenReleased()]);
    } finally {
      section.active = false;
      this.holder = undefined;
      // A request of this exchange still waiting (its driver gave up first, or the lease went):
      // its reply, if any, is dropped with the rest, and the line waits for it (outOfStep).
      if (lease.released) this.settle(lease.closedError(), undefined, 'full');
      else this.settle(new SerialLineError('the exchange ended before the reply', 'closed'), undefined, 'waited');
      this.lastExchangeEnd = Date.now();
    }
  }

  async transact(section: Section, request: Uint8Array, options: ReplyOptions): Promise<Buffer> {
    const { port, sentAt } = await this.prepare(section);
    return new Promise<Buffer>((resolve, reject) => {
      const timeout = Math.max(1, options.timeout);
      const pending: Pending = {
        buffer: Buffer.alloc(0),
        options: { ...options, timeout },
        sentAt,
        resolve,
        reject,
        timer: setTimeout(() => {
          if (this.pending !== pending) return;
          const got = pending.buffer.length;
          const what = got === 0 ? 'no reply' : `no complete reply (${got} byte${got === 1 ? '' : 's'}: ${hexBytes(pending.buffer)})`;
          this.settle(new SerialLineError(`timeout: ${what} within ${timeout} ms`, 'timeout', pending.buffer), undefined, 'waited');
        }, timeout),
      };
      this.pending = pending;
      // Bytes that arrived while the input was flushed went to the listeners: from here on they go to the reply.
      this.cut();
      this.requestCount++;
      port.write(Buffer.from(request), (error) => {
        if (error) this.lost(port, `write failed: ${error.message}`);
      });
    });
  }

  async send(section: Section, request: Uint8Array): Promise<void> {
    const { port } = await this.prepare(section);
    this.requestCount++;
    await new Promise<void>((resolve, reject) => {
      port.write(Buffer.from(request), (error) => {
        if (error) {
          this.lost(port, `write failed: ${error.message}`);
          reject(new SerialLineError(this.lossReason ?? `write failed: ${error.message}`, 'connection-lost', undefined, true));
          return;
        }
        // The write callback only says the OS has the bytes: the next exchange's flush would drop
        // what is not transmitted yet (a command cut short), and its quiet time would start early.
        port.drain(() => resolve());
      });
    });
  }

  /** Waits until a request of `section` may go out (line in step, input flushed); the port to write it on. */
  private async prepare(section: Section): Promise<{ port: ByteLink; sentAt: number }> {
    if (this.pending || section.sending) throw new Error('a request while the previous request of this exchange still waits for its reply');
    section.sending = true;
    let port: ByteLink;
    let sentAt: number;
    try {
      // A request of this exchange that timed out (the driver retries inside one exchange): the
      // next one waits for the line to be back in step, like the next exchange would.
      if (this.late) {
        this.usable(section);
        await this.whenInStep();
      }
      port = this.usable(section);
      sentAt = Date.now();
      // Whatever the OS received and nobody read yet is not the reply to this request.
      // Devices that listen lose what the flush drops and what this request's reply framing takes.
      this.cut();
      await new Promise<void>((resolve) => port.flush(() => resolve()));
      port = this.usable(section);
    } finally {
      section.sending = false;
    }
    return { port, sentAt };
  }

  private cut(): void {
    for (const lease of this.leases) lease.cut();
  }

  /** The open port while `section` may still send on it; throws why not. */
  private usable(section: Section): ByteLink {
    if (!section.active || this.holder !== section) throw new SerialLineError('the exchange has ended', 'closed');
    if (section.lease.released) throw section.lease.closedError();
    const port = this.port;
    if (!port?.isOpen) throw new SerialLineError(this.lossReason ?? `not connected to ${this.label}`, 'connection-lost', undefined, true);
    return port;
  }

  /** Drops a lease; the last one out closes the port and unregisters it. */
  async release(lease: Lease): Promise<void> {
    if (!this.leases.delete(lease)) return;
    if (this.holder?.lease === lease) this.settle(lease.closedError(), undefined, 'full');
    if (this.leases.size > 0) return;
    if (ports.get(this.key) === this) ports.delete(this.key);
    const port = this.port;
    this.port = undefined;
    this.lossReason = `${this.label} closed`;
    this.inStep();
    if (port) await port.close();
  }
}

class Lease implements SerialPortLease {
  readonly user: SerialPortUser;
  released = false;
  private readonly shared: SharedPort;
  private releasedSignal: Promise<never> | undefined;
  private signalRelease: ((error: SerialLineError) => void) | undefined;

  constructor(shared: SharedPort, user: SerialPortUser) {
    this.shared = shared;
    this.user = user;
  }

  get path(): string {
    return this.shared.path;
  }

  get settings(): string {
    return this.shared.settings;
  }

  get label(): string {
    return this.shared.label;
  }

  get isOpen(): boolean {
    return !this.released && this.shared.isOpen;
  }

  get userCount(): number {
    return this.shared.leases.size;
  }

  get requestCount(): number {
    return this.shared.requestCount;
  }

  get lossReason(): string | undefined {
    return this.shared.lossReason;
  }

  open(): Promise<void> {
    if (this.released) return Promise.reject(this.closedError());
    return this.shared.open();
  }

  exclusive<T>(work: (exchange: SerialExchange) => Promise<T>): Promise<T> {
    if (this.released) return Promise.reject(this.closedError());
    return this.shared.exclusive(this, work);
  }

  transact(request: Uint8Array, options: ReplyOptions): Promise<Buffer> {
    return this.exclusive((exchange) => exchange.transact(request, options));
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.signalRelease?.(this.closedError());
    try {
      await this.shared.release(this);
    } catch {
      // never rejects
    }
  }

  /** Rejects once the lease is released (an exchange in progress ends at once). */
  whenReleased(): Promise<never> {
    if (!this.releasedSignal) {
      this.releasedSignal = new Promise<never>((_, reject) => {
        this.signalRelease = reject;
      });
      this.releasedSignal.catch(() => undefined);
      if (this.released) this.signalRelease?.(this.closedError());
    }
    return this.releasedSignal;
  }

  closedError(): SerialLineError {
    return new SerialLineError(`${this.shared.label}: closed by "${this.user.name}"`, 'closed');
  }

  /** Bytes stop coming to a device that listens. */
  cut(): void {
    if (this.released || !this.user.onCut) return;
    try {
      this.user.onCut();
    } catch {
      // a listener's failure must not keep the others from hearing it
    }
  }

  /** Bytes no request claimed, for a device that listens. */
  data(chunk: Buffer): void {
    if (this.released || !this.user.onData) return;
    try {
      this.user.onData(chunk);
    } catch {
      // a listener's failure must not keep the bytes from the others
    }
  }

  portLost(reason: string): void {
    if (this.released) return;
    try {
      this.user.onPortLost?.(reason);
    } catch {
      // a user's listener must not keep the others from hearing it
    }
  }
}

const ports = new Map<string, SharedPort>();

/** Two names of one device (a /dev/serial/by-id link and its /dev/ttyUSB0) are one port. */
function portKey(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/**
 * A share of the serial port at `path` for one device, registering the port on first use. Throws
 * a DriverError with code `line-conflict` when the port is registered with other line settings.
 * The port is opened by the lease's open().
 */
export function acquireSerialPort(path: string, settings: SerialLineSettings, user: SerialPortUser): SerialPortLease {
  const key = portKey(path);
  let shared = ports.get(key);
  const wanted = describeLineSettings(settings);
  if (shared && shared.settings !== wanted) {
    const holders = [...shared.leases].map((lease) => `"${lease.user.name}"`).join(', ');
    const same = shared.path === path ? '' : ` (as ${shared.path})`;
    throw new DriverError(
      `serial port ${path}${same} is in use at ${shared.settings} by ${holders}; "${user.name}" asks for ${wanted}. All devices on one serial port must use the same line settings`,
      { code: 'line-conflict' },
    );
  }
  if (!shared) {
    shared = new SharedPort(key, new SerialEndpoint(path, settings));
    ports.set(key, shared);
  }
  const lease = new Lease(shared, user);
  shared.leases.add(lease);
  return lease;
}

/**
 * A share of the line behind a serial device server's TCP port (raw "TCP server" mode): one
 * connection for every device that names the same host and port, used like a serial port.
 */
export function acquireTcpLine(host: string, port: number, user: SerialPortUser): SerialPortLease {
  const key = `tcp://${host}:${port}`;
  let shared = ports.get(key);
  if (!shared) {
    const line: SharedPort = new SharedPort(
      key,
      new TcpEndpoint(host, port, () => {
        const asked = [...line.leases].map((lease) => lease.user.connectTimeout ?? TCP_CONNECT_TIMEOUT_MS);
        return asked.length > 0 ? Math.max(...asked) : TCP_CONNECT_TIMEOUT_MS;
      }),
    );
    shared = line;
    ports.set(key, shared);
  }
  const lease = new Lease(shared, user);
  shared.leases.add(lease);
  return lease;
}

/** Serial ports currently registered (tests, diagnostics). */
export function registeredSerialPorts(): number {
  return ports.size;
}

function closePort(port: SerialPort): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, CLOSE_TIMEOUT_MS);
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    if (!port.isOpen) return done();
    try {
      port.close(() => done());
    } catch {
      done();
    }
  });
}
