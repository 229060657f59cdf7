// Real Modbus peers for the driver tests: modbus-serial's ServerTCP in-process, and pymodbus
// (Debian's python3-pymodbus, an independent implementation) as a child process.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ServerTCP } from 'modbus-serial';
import pino, { type Logger } from 'pino';
import type { DriverContext } from '../../src/driver.js';
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
  return pino({ level: process.env['MODBUS_TEST_LOG'] ?? 'silent' });
}

export function testContext(): DriverContext {
  return { log: testLogger(), dataDir: '/nonexistent' };
}

/** Parses a device config through the real schema, so tests see exactly what the core hands the driver. */
export function device(input: Record<string, unknown>): ModbusDeviceConfig {
  return modbusDevice.parse({ name: 'dev', driver: 'modbus', ...input });
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
    const bits = (area: 'coil' | 'discrete') => (addr: number, unit: number, cb: Cb<boolean>): void => {
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
export async function startPymodbus(mode: 'tcp' | 'rtu-over-tcp' | 'rtu', options: { serialPath?: string; units?: number[] } = {}): Promise<PymodbusServer> {
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
  const child = spawn('/usr/bin/socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: ['ignore', 'ignore', 'pipe'] });
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
