// Serial instruments for the serial driver's tests: test/helpers/serial-instrument.py (Python on
// Debian's pyserial, an implementation independent of the gateway) run as a child process, on one
// end of a socat pty pair or behind a TCP port like a serial device server. The wire formats, the
// commands and the misbehaviour modes are described at the top of the Python file.
//
//   startInstrument(options)  a scale (MT-SICS), a GPS receiver (NMEA 0183) or STX/ETX ascii units
//   startSerialLine(dir)      a serial line that can be unplugged and plugged in again
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { waitFor } from './net.js';

const SCRIPT = fileURLToPath(new URL('../../../test/helpers/serial-instrument.py', import.meta.url));

export interface InstrumentOptions {
  kind: 'scale' | 'nmea' | 'ascii';
  /** The device end of a serial line (e.g. SerialLine.device). */
  pty?: string;
  /** A TCP port on 127.0.0.1 (0: any free one), one client at a time like a Moxa NPort. */
  tcp?: number;
  /** Streaming period in ms (default 100). */
  period?: number;
  /** Ascii unit id, "01" by default; "01,02" for several units on one multi-drop line. */
  unitId?: string;
  checksum?: 'xor' | 'sum8' | 'lrc' | 'crc16-modbus';
  checksumFormat?: 'binary' | 'hex';
  baudRate?: number;
}

export interface Instrument {
  /** The TCP port (with `tcp`), else undefined. */
  port: number | undefined;
  /** Every request frame seen so far, as latin1 text with its delimiters and checksum. */
  requests(): string[];
  /** How many TCP clients have connected so far. */
  clients(): number;
  /** Errors the instrument reported on its own (a serial line lost). */
  errors(): string[];
  /** Sends a control command; resolves on its ack, rejects when the instrument refuses it. */
  control(command: Record<string, unknown>): Promise<void>;
  /** The first request, among those seen so far and those to come, that satisfies `predicate`. */
  waitForRequest(predicate: (data: string) => boolean, timeoutMs?: number): Promise<string>;
  /** Ends the process (idempotent). */
  stop(): Promise<void>;
}

interface InstrumentEvent {
  event: 'ready' | 'request' | 'client' | 'ack' | 'error';
  port?: number;
  data?: string;
  id?: number | null;
  message?: string;
}

function instrumentArgs(options: InstrumentOptions): string[] {
  const args = [SCRIPT, '--kind', options.kind];
  if (options.pty !== undefined) args.push('--pty', options.pty);
  if (options.tcp !== undefined) args.push('--tcp', String(options.tcp));
  if (options.period !== undefined) args.push('--period', String(options.period));
  if (options.unitId !== undefined) args.push('--unit-id', options.unitId);
  if (options.checksum !== undefined) args.push('--checksum', options.checksum);
  if (options.checksumFormat !== undefined) args.push('--checksum-format', options.checksumFormat);
  if (options.baudRate !== undefined) args.push('--baud', String(options.baudRate));
  return args;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

/**
 * Starts an instrument with /usr/bin/python3 (the interpreter that has Debian's pyserial) and
 * resolves once it reported ready (its line is open, its TCP port listens).
 */
export async function startInstrument(options: InstrumentOptions): Promise<Instrument> {
  if ((options.pty === undefined) === (options.tcp === undefined)) throw new Error('an instrument needs either pty or tcp');
  const child = spawn('/usr/bin/python3', instrumentArgs(options), { stdio: ['pipe', 'pipe', 'pipe'] });
  child.stdin?.on('error', () => undefined);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    if (stderr.length > 20_000) stderr = stderr.slice(-10_000);
  });
  const requests: string[] = [];
  const errors: string[] = [];
  let clients = 0;
  let nextId = 1;
  const pending = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  let onReady: ((port: number | undefined) => void) | undefined;
  let onStartError: ((message: string) => void) | undefined;

  createInterface({ input: child.stdout! }).on('line', (line) => {
    let event: InstrumentEvent;
    try {
      event = JSON.parse(line) as InstrumentEvent;
    } catch {
      errors.push(`not an event: ${line}`);
      return;
    }
    if (event.event === 'ready') onReady?.(event.port);
    else if (event.event === 'request') requests.push(event.data ?? '');
    else if (event.event === 'client') clients++;
    else if (event.event === 'ack' || event.event === 'error') {
      const waiter = typeof event.id === 'number' ? pending.get(event.id) : undefined;
      if (waiter && typeof event.id === 'number') {
        pending.delete(event.id);
        if (event.event === 'ack') waiter.resolve();
        else waiter.reject(new Error(`the instrument refused the command: ${event.message}`));
      } else if (event.event === 'error') {
        errors.push(event.message ?? '');
        onStartError?.(event.message ?? '');
      }
    }
  });
  child.once('exit', (code, signal) => {
    for (const waiter of pending.values()) waiter.reject(new Error(`the instrument exited (${code ?? signal}); stderr:\n${stderr}`));
    pending.clear();
    onStartError?.(`exited with ${code ?? signal}; stderr:\n${stderr}`);
  });

  const stop = (): Promise<void> => stopChild(child);
  const port = await new Promise<number | undefined>((resolve, reject) => {
    const timer = setTimeout(() => {
      void stop();
      reject(new Error(`the ${options.kind} instrument did not start within 10 s; stderr:\n${stderr}`));
    }, 10_000);
    onReady = (port) => {
      clearTimeout(timer);
      resolve(port);
    };
    onStartError = (message) => {
      clearTimeout(timer);
      void stop();
      reject(new Error(`the ${options.kind} instrument did not start: ${message}`));
    };
  });
  onReady = undefined;
  onStartError = undefined;

  return {
    port,
    requests: () => [...requests],
    clients: () => clients,
    errors: () => [...errors],
    control: (command) =>
      new Promise<void>((resolve, reject) => {
        if (child.exitCode !== null || child.signalCode !== null) {
          reject(new Error('the instrument is not running'));
          return;
        }
        const id = nextId++;
        pending.set(id, { resolve, reject });
        child.stdin?.write(`${JSON.stringify({ ...command, id })}\n`);
      }),
    waitForRequest: async (predicate, timeoutMs = 5000) => {
      let found: string | undefined;
      await waitFor(
        () => (found = requests.find(predicate)) !== undefined,
        timeoutMs,
        () => `a matching request; seen: ${JSON.stringify(requests.slice(-10))}`,
      );
      return found!;
    },
    stop,
  };
}

/**
 * A serial line that can be unplugged: socat pty pair `gateway` ⟷ `device` in dir; unplug() kills
 * socat (both ptys vanish, like a USB adapter pulled), replug() starts it again with the same
 * paths. An instrument on `device` does not survive an unplug: stop it and start a new one.
 */
export interface SerialLine {
  gateway: string;
  device: string;
  unplug(): Promise<void>;
  replug(): Promise<void>;
  stop(): Promise<void>;
}

export async function startSerialLine(dir: string): Promise<SerialLine> {
  const gateway = `${dir}/gateway`;
  const device = `${dir}/device`;
  let socat: ChildProcess | undefined;
  const plugged = (): boolean => existsSync(gateway) && existsSync(device);

  const unplug = async (): Promise<void> => {
    const child = socat;
    socat = undefined;
    if (!child) return;
    await stopChild(child);
    // socat removes its links when it ends on SIGTERM.
    await waitFor(() => !existsSync(gateway) && !existsSync(device), 5000, `the ptys ${gateway} and ${device} to vanish`);
  };
  const replug = async (): Promise<void> => {
    if (socat) return;
    const child = spawn('/usr/bin/socat', [`pty,raw,echo=0,link=${gateway}`, `pty,raw,echo=0,link=${device}`], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr?.resume();
    socat = child;
    try {
      await waitFor(() => plugged() && child.exitCode === null, 10_000, `the socat ptys ${gateway} and ${device}`);
    } catch (error) {
      await unplug();
      throw error;
    }
  };

  await replug();
  return { gateway, device, unplug, replug, stop: unplug };
}
