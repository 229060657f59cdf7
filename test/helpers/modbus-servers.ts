// Real Modbus peers for the driver tests: modbus-serial's ServerTCP in-process, pymodbus
// (Debian's python3-pymodbus, an independent implementation) as a child process, and a raw-socket
// device written byte by byte that can send any malformed reply.

import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { existsSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ServerTCP } from 'modbus-serial';
import pino, { type Logger } from 'pino';
import { createDriver } from '../../drivers/modbus/index.js';
import { DeviceRunner } from '../../src/pipeline/device-runner.js';
import type { DriverContext, DriverTag, TagReading } from '../../src/pipeline/driver.js';
import { modbusDevice, type ModbusDeviceConfig } from '../../drivers/modbus/config.js';

// ServerTCP treats port 0 as "use 502": tests take a port that was free a moment ago instead.
import { freePort } from './net.js';
export { freePort };

/**
 * Cleanups that run last-in first-out after the test (node:test runs t.after hooks in
 * registration order, which would stop a server before the client that keeps it busy).
 */
export function cleanup(t: TestContext): (fn: () => unknown) => void {
  const fns: (() => unknown)[] = [];
  t.after(async () => {
    for (const fn of fns.reverse()) {
      try {
        await fn();
      } catch {
        // keep cleaning up
      }
    }
  });
  return (fn) => {
    fns.push(fn);
  };
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls until check() is truthy or the deadline passes (bounded, for process start-up). */
export async function waitFor(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

export function testLogger(): Logger {
  return pino({ level: process.env.MODBUS_TEST_LOG ?? 'silent' });
}

export function testContext(): DriverContext {
  return { log: testLogger(), dataDir: '/nonexistent' };
}

/** Parses a device config through the real schema, so tests see exactly what the core hands the driver. */
export function device(input: Record<string, unknown>): ModbusDeviceConfig {
  return modbusDevice.parse({ name: 'dev', driver: 'modbus', ...input });
}

/**
 * A DeviceRunner (what the gateway runs) with the real Modbus driver polling `config` every 100 ms
 * from the start; `cycles` collects each cycle's readings. Stopped by `defer`.
 */
export function pollDevice(
  defer: (fn: () => unknown) => void,
  config: ModbusDeviceConfig,
  log: Logger,
): { cycles: TagReading[][]; runner: DeviceRunner } {
  const cycles: TagReading[][] = [];
  const runner = new DeviceRunner({
    name: config.name,
    driver: createDriver(config, { log, dataDir: '/nonexistent' }),
    groups: [{ name: 'default', interval: 100, tags: config.tags as DriverTag[] }],
    log,
    phaseOf: () => 0,
    onReadings: (event) => cycles.push(event.readings),
  });
  runner.start();
  defer(() => runner.stop());
  return { cycles, runner };
}

export type Area = 'holding' | 'input' | 'coil' | 'discrete';

export interface ServerRequest {
  unit: number;
  area: Area;
  start: number;
  count: number;
}

/** An in-memory device. Addresses in `illegal` answer exception 2, `exceptions` any code, silent units never answer. */
export class TcpTestServer {
  readonly holding: number[] = new Array<number>(1000).fill(0);
  readonly input: number[] = new Array<number>(1000).fill(0);
  readonly coils: boolean[] = new Array<boolean>(1000).fill(false);
  readonly discrete: boolean[] = new Array<boolean>(1000).fill(false);
  readonly illegal = new Map<Area, Set<number>>();
  readonly exceptions = new Map<string, number>();
  readonly silentUnits = new Set<number>();
  /** Register read requests as they arrived (coil reads are served bit by bit and not recorded). */
  readonly requests: ServerRequest[] = [];
  /** Register writes: fc 6 or 16 with the values. */
  readonly writes: { fc: 6 | 16; address: number; values: number[] }[] = [];
  port = 0;
  private server: ServerTCP | undefined;

  async start(port?: number): Promise<void> {
    this.port = port ?? (await freePort());
    const server = new ServerTCP(this.vector(), { host: '127.0.0.1', port: this.port, unitID: 255 });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.on('initialized', () => resolve());
      server.on('serverError', (error) => reject(error ?? new Error('server error')));
    });
    server.on('socketError', () => undefined);
  }

  get connections(): number {
    return this.server?.socks.size ?? 0;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private check(area: Area, start: number, count: number): void {
    for (let a = start; a < start + count; a++) {
      if (this.illegal.get(area)?.has(a)) throw Object.assign(new Error('illegal address'), { modbusErrorCode: 2 });
      const code = this.exceptions.get(`${area}:${a}`);
      if (code !== undefined) throw Object.assign(new Error(`exception ${code}`), { modbusErrorCode: code });
    }
  }

  private vector() {
    type Cb<T> = (err: Error | null, value: T) => void;
    const registers = (area: 'holding' | 'input') => ({
      single: (addr: number, unit: number, cb: Cb<number>): void => {
        if (this.silentUnits.has(unit)) return;
        this.requests.push({ unit, area, start: addr, count: 1 });
        try {
          this.check(area, addr, 1);
          cb(null, this[area][addr] ?? 0);
        } catch (error) {
          cb(error as Error, 0);
        }
      },
      multiple: (addr: number, length: number, unit: number, cb: Cb<number[]>): void => {
        if (this.silentUnits.has(unit)) return;
        this.requests.push({ unit, area, start: addr, count: length });
        try {
          this.check(area, addr, length);
          cb(null, this[area].slice(addr, addr + length));
        } catch (error) {
          cb(error as Error, []);
        }
      },
    });
    const holding = registers('holding');
    const input = registers('input');
    const bits =
      (area: 'coil' | 'discrete') =>
      (addr: number, unit: number, cb: Cb<boolean>): void => {
        if (this.silentUnits.has(unit)) return;
        try {
          this.check(area, addr, 1);
          cb(null, (area === 'coil' ? this.coils : this.discrete)[addr] ?? false);
        } catch (error) {
          cb(error as Error, false);
        }
      };
    return {
      getHoldingRegister: holding.single,
      getMultipleHoldingRegisters: holding.multiple,
      getInputRegister: input.single,
      getMultipleInputRegisters: input.multiple,
      getCoil: bits('coil'),
      getDiscreteInput: bits('discrete'),
      setRegister: (addr: number, value: number, unit: number, cb: (err: Error | null) => void): void => {
        if (this.silentUnits.has(unit)) return;
        try {
          this.check('holding', addr, 1);
          this.holding[addr] = value;
          this.writes.push({ fc: 6, address: addr, values: [value] });
          cb(null);
        } catch (error) {
          cb(error as Error);
        }
      },
      setRegisterArray: (addr: number, values: number[], unit: number, cb: (err: Error | null) => void): void => {
        if (this.silentUnits.has(unit)) return;
        try {
          this.check('holding', addr, values.length);
          values.forEach((v, i) => (this.holding[addr + i] = v));
          this.writes.push({ fc: 16, address: addr, values: [...values] });
          cb(null);
        } catch (error) {
          cb(error as Error);
        }
      },
      setCoil: (addr: number, value: boolean, unit: number, cb: (err: Error | null) => void): void => {
        if (this.silentUnits.has(unit)) return;
        try {
          this.check('coil', addr, 1);
          this.coils[addr] = value;
          cb(null);
        } catch (error) {
          cb(error as Error);
        }
      },
    };
  }
}

const PYMODBUS_SCRIPT = fileURLToPath(new URL('../../../test/helpers/modbus-pymodbus-server.py', import.meta.url));

export interface PymodbusServer {
  /** TCP port, for the tcp and rtu-over-tcp modes. */
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts test/helpers/modbus-pymodbus-server.py with /usr/bin/python3 (the interpreter that has
 * Debian's pymodbus). Resolves once the script printed "READY <port>".
 */
export async function startPymodbus(
  mode: 'tcp' | 'rtu-over-tcp' | 'rtu',
  options: { serialPath?: string; units?: number[] } = {},
): Promise<PymodbusServer> {
  const args = [PYMODBUS_SCRIPT, '--mode', mode, '--units', (options.units ?? [1]).join(',')];
  if (options.serialPath) args.push('--serial', options.serialPath);
  const child = spawn('/usr/bin/python3', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
  });
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  };
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`pymodbus server did not start within 15 s; stderr:\n${stderr}`));
    }, 15_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      const match = /READY (\d+)/.exec(out);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`pymodbus server exited with ${code}; stderr:\n${stderr}`));
    });
  });
  return { port, process: child, stop };
}

export interface PtyPair {
  /** The driver's end. */
  a: string;
  /** The server's end. */
  b: string;
  stop(): Promise<void>;
}

/** A virtual null-modem cable: two linked pseudo terminals made by socat. */
export async function startPtyPair(dir: string): Promise<PtyPair> {
  const a = `${dir}/ttyA`;
  const b = `${dir}/ttyB`;
  const child = spawn('/usr/bin/socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr?.resume();
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    await exited;
  };
  try {
    await waitFor('socat pty links', () => existsSync(a) && existsSync(b) && child.exitCode === null);
  } catch (error) {
    await stop();
    throw error;
  }
  return { a, b, stop };
}

/** One request as a raw server parsed it. */
export interface RawRequest {
  /** 1-based number of the request since the server started. */
  n: number;
  /** 1-based number of the connection it came on (0 for a serial port). */
  connection: number;
  /** MBAP transaction id (0 for RTU framing). */
  transactionId: number;
  unit: number;
  fc: number;
  start: number;
  /** Quantity read or written (1 for FC5/FC6). */
  count: number;
  /** Written registers (FC6, FC16) or coils as 0/1 (FC5, FC15). */
  values?: number[];
}

/** Bytes of the RTU request at the start of `buffer` (Infinity until its length is known). */
function rtuRequestSize(buffer: Buffer): number {
  const fc = buffer[1];
  if (fc === 15 || fc === 16) return buffer.length >= 7 ? 9 + buffer[6]! : Infinity;
  return 8;
}

/** CRC-16/MODBUS, written here again so the test servers do not lean on the code they test. */
export function modbusCrc(bytes: Uint8Array): number {
  let crc = 0xffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1;
  }
  return crc;
}

/** Appends the CRC to unit id + PDU. */
export function withCrc(frame: Buffer): Buffer {
  const crc = Buffer.alloc(2);
  crc.writeUInt16LE(modbusCrc(frame));
  return Buffer.concat([frame, crc]);
}

/**
 * A Modbus device on a raw socket (or serial port), written byte by byte so it can misbehave in
 * any way a real device does: `misbehave(request, proper)` may return other bytes to send instead
 * of the proper reply, or null for no reply at all. Reads (FC1–4): register a holds 1000 + a
 * until written, coil/discrete a is on when a is divisible by 3 until written. Writes: FC5, FC6,
 * FC15, FC16. Addresses from `illegalFrom` on answer exception 2. Framing: MBAP (Modbus TCP) or RTU.
 */
export class RawModbusServer {
  readonly framing: 'mbap' | 'rtu';
  /** Requests parsed so far. */
  readonly requests: RawRequest[] = [];
  /** Holding registers and coils written so far. */
  readonly holding = new Map<number, number>();
  readonly coils = new Map<number, boolean>();
  /** First address that does not exist (exception 2), for every area. */
  illegalFrom: number | undefined;
  /** Connections accepted so far. */
  accepted = 0;
  misbehave: (request: RawRequest, proper: Buffer) => Buffer | null | undefined = () => undefined;
  port = 0;
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  constructor(framing: 'mbap' | 'rtu') {
    this.framing = framing;
  }

  async start(): Promise<void> {
    const server = net.createServer((socket) => {
      this.accepted++;
      this.sockets.add(socket);
      socket.on('close', () => this.sockets.delete(socket));
      socket.on('error', () => undefined);
      this.serve(socket, (bytes) => socket.write(bytes), this.accepted);
    });
    this.server = server;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    this.port = typeof address === 'object' && address ? address.port : 0;
  }

  /** Answers requests arriving on any byte stream (a socket, a serial port). */
  serve(stream: NodeJS.EventEmitter, write: (bytes: Buffer) => void, connection = 0): void {
    let buffer = Buffer.alloc(0);
    stream.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        const size = this.framing === 'mbap' ? (buffer.length >= 6 ? 6 + buffer.readUInt16BE(4) : Infinity) : rtuRequestSize(buffer);
        if (buffer.length < size) return;
        const frame = buffer.subarray(0, size);
        buffer = buffer.subarray(size);
        const pdu = this.framing === 'mbap' ? frame.subarray(6) : frame.subarray(0, size - 2);
        const fc = pdu[1]!;
        const request: RawRequest = {
          n: this.requests.length + 1,
          connection,
          transactionId: this.framing === 'mbap' ? frame.readUInt16BE(0) : 0,
          unit: pdu[0]!,
          fc,
          start: pdu.readUInt16BE(2),
          count: fc === 5 || fc === 6 ? 1 : pdu.readUInt16BE(4),
        };
        if (fc === 5) request.values = [pdu.readUInt16BE(4) === 0xff00 ? 1 : 0];
        if (fc === 6) request.values = [pdu.readUInt16BE(4)];
        if (fc === 15) request.values = Array.from({ length: request.count }, (_, i) => (pdu[7 + (i >> 3)]! >> (i & 7)) & 1);
        if (fc === 16) request.values = Array.from({ length: request.count }, (_, i) => pdu.readUInt16BE(7 + 2 * i));
        this.requests.push(request);
        const proper = this.reply(request);
        const sent = this.misbehave(request, proper);
        if (sent === null) continue;
        if (this.holdBack(request, stream, () => write(sent ?? proper))) continue;
        write(sent ?? proper);
      }
    });
  }

  /** The correct reply to a request, framed (a write is carried out here). */
  reply(request: RawRequest): Buffer {
    const { fc, start, count } = request;
    let body: Buffer;
    if (this.illegalFrom !== undefined && start + count > this.illegalFrom) {
      body = Buffer.from([request.unit, fc | 0x80, 2]);
    } else if (fc === 5 || fc === 6 || fc === 15 || fc === 16) {
      const values = request.values ?? [];
      values.forEach((value, i) => (fc === 5 || fc === 15 ? this.coils.set(start + i, value === 1) : this.holding.set(start + i, value)));
      body = Buffer.alloc(6);
      body.writeUInt8(request.unit, 0);
      body.writeUInt8(fc, 1);
      body.writeUInt16BE(start, 2);
      body.writeUInt16BE(fc === 5 ? (values[0] ? 0xff00 : 0) : fc === 6 ? (values[0] ?? 0) : count, 4);
    } else {
      let data: Buffer;
      if (fc === 3 || fc === 4) {
        data = Buffer.alloc(2 * count);
        for (let i = 0; i < count; i++)
          data.writeUInt16BE((fc === 3 ? (this.holding.get(start + i) ?? 1000 + start + i) : 1000 + start + i) & 0xffff, 2 * i);
      } else {
        data = Buffer.alloc(Math.ceil(count / 8));
        for (let i = 0; i < count; i++)
          if ((fc === 1 ? this.coils.get(start + i) : undefined) ?? (start + i) % 3 === 0) data[i >> 3]! |= 1 << (i & 7);
      }
      body = Buffer.concat([Buffer.from([request.unit, fc, data.length]), data]);
    }
    if (this.framing === 'rtu') return withCrc(body);
    const header = Buffer.alloc(6);
    header.writeUInt16BE(request.transactionId, 0);
    header.writeUInt16BE(body.length, 4);
    return Buffer.concat([header, body]);
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private readonly holds: {
    match: (request: RawRequest) => boolean;
    arrive: (request: RawRequest, send: () => void, cut: () => void) => void;
  }[] = [];

  /**
   * Holds back the reply to the next request `match` accepts (once), so a test can look at what a
   * client does while that request is outstanding: `seen` resolves when it arrived, release()
   * sends the reply, cut() closes the connection it came on instead (a socket) and sends nothing.
   */
  hold(match: (request: RawRequest) => boolean): HeldReply {
    let arrived: (request: RawRequest) => void = () => undefined;
    const seen = new Promise<RawRequest>((resolve) => (arrived = resolve));
    let decided: 'release' | 'cut' | undefined;
    let pending: { send: () => void; cut: () => void } | undefined;
    const settle = (): void => {
      if (!pending || !decided) return;
      const { send, cut } = pending;
      pending = undefined;
      if (decided === 'release') send();
      else cut();
    };
    this.holds.push({
      match,
      arrive: (request, send, cut) => {
        pending = { send, cut };
        arrived(request);
        settle();
      },
    });
    return {
      seen,
      release: () => {
        decided ??= 'release';
        settle();
      },
      cut: () => {
        decided ??= 'cut';
        settle();
      },
    };
  }

  /** True when the reply to `request` is held (see hold()). */
  private holdBack(request: RawRequest, stream: NodeJS.EventEmitter, send: () => void): boolean {
    const index = this.holds.findIndex((hold) => hold.match(request));
    if (index < 0) return false;
    const [hold] = this.holds.splice(index, 1);
    hold!.arrive(request, send, () => (stream as Partial<net.Socket>).destroy?.());
    return true;
  }
}

/** A reply RawModbusServer.hold() keeps back. */
export interface HeldReply {
  /** The request, once it arrived. */
  seen: Promise<RawRequest>;
  /** Sends the reply (at once, or on arrival if the request is not in yet). */
  release(): void;
  /** Closes the request's connection without a reply. */
  cut(): void;
}
