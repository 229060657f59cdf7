// The built-in simulated serial instrument: a weighing scale that speaks a subset of Mettler
// Toledo's MT-SICS on a TCP port, as it would behind a serial device server in "TCP server" mode.
// The demo reads it with the serial driver; `plc2mqtt simulate --pty PATH` also puts it on a
// pseudo terminal, for trying a local-port configuration without hardware.
//
// Requests end with CR LF; so do replies. The weight field is right-aligned in 10 characters with
// 3 decimals, the unit is kg:
//   SI    → "S S     12.345 kg" (stable) or "S D     12.345 kg" (dynamic: the weight moves)
//   T     → "T S      1.850 kg": the current gross weight becomes the tare; later weights are net
//           (until the next container: the tare clears itself when a new cycle begins)
//   Z     → "Z A": the current load becomes zero (the tare is cleared)
//   SIR   → a line like SI's every 200 ms (continuous mode), until "@"
//   @     → "I4 A "PLC2MQTT"": reset: ends continuous mode, clears the tare (keeps the zero)
//   I4    → "I4 A "PLC2MQTT"": the serial number
//   anything else (an unknown command, garbage, an empty line, a line of more than 64 bytes)
//         → "ES" (syntax error)
//
// The load follows a filling process of 30 s, the same for every client: an empty platform (stable),
// a container put on it (dynamic), the empty container (stable, 1.850 kg), 20 s of filling
// (dynamic, with the ripple of the flow), the product settling (dynamic), the full container
// (stable for 3.5 s, 25 kg of product ± a few grams), the container taken off (dynamic). Each
// connection has its own tare, zero and continuous mode, as if each client had a scale of its own
// on the same process.
import { createServer, type Server, type Socket } from 'node:net';

/** One cycle of the filling process. */
export const CYCLE_MS = 30_000;
/** The empty container. */
export const CONTAINER_KG = 1.85;
/** The product filled into each container (each cycle misses it by up to ±25 g). */
export const FILL_KG = 25;
/** Continuous mode (SIR): one line this often. */
export const CONTINUOUS_MS = 200;
/** The scale's serial number, in I4 and @ replies. */
export const SERIAL_NUMBER = 'PLC2MQTT';
/** A request line longer than this (without its CR LF) is refused with ES. */
const MAX_REQUEST = 64;
/** A client that reads nothing gets no more replies once this much waits in its socket. */
const MAX_PENDING_OUTPUT = 64 * 1024;
/** The scale's resolution (d). */
const RESOLUTION_KG = 0.005;

/** Where the filling process is: from `start` ms into the cycle it is this phase. */
const PHASES = [
  { start: 0, phase: 'empty' },
  { start: 1_000, phase: 'placing' },
  { start: 2_000, phase: 'container' },
  { start: 4_000, phase: 'filling' },
  { start: 24_000, phase: 'settling' },
  { start: 25_500, phase: 'full' },
  { start: 29_000, phase: 'removing' },
] as const;
export type Phase = (typeof PHASES)[number]['phase'];

export interface Load {
  /** kg on the platform (before zero and tare), at the scale's resolution. */
  kg: number;
  stable: boolean;
  phase: Phase;
  /** Which container: 0, 1, 2 … */
  cycle: number;
}

/** The filling process: the load on the platform at any time. */
export class FillingProcess {
  private readonly now: () => number;
  private readonly startedAt: number;

  constructor(now: () => number = Date.now) {
    this.now = now;
    this.startedAt = now();
  }

  load(): Load {
    const elapsed = Math.max(0, this.now() - this.startedAt);
    const cycle = Math.floor(elapsed / CYCLE_MS);
    const t = elapsed % CYCLE_MS;
    // Each cycle's fill misses the target by a few grams: -25 … +25 g.
    const full = CONTAINER_KG + FILL_KG + (((cycle * 7) % 11) - 5) * RESOLUTION_KG;
    const phase = [...PHASES].reverse().find((candidate) => t >= candidate.start)!.phase;
    let kg: number;
    switch (phase) {
      case 'empty':
        kg = 0;
        break;
      case 'placing':
        kg = CONTAINER_KG * Math.min(1, (t - 1_000) / 600);
        break;
      case 'container':
        kg = CONTAINER_KG;
        break;
      case 'filling': {
        const progress = (t - 4_000) / 20_000;
        // The flow slows down towards the end (fine dosing), and splashes.
        const filled = (full - CONTAINER_KG) * (1 - (1 - progress) ** 1.6);
        kg = CONTAINER_KG + filled + 0.04 * Math.sin(t / 45) * (1 - progress * 0.7);
        break;
      }
      case 'settling': {
        const since = t - 24_000;
        kg = full + 0.06 * Math.exp(-since / 400) * Math.sin(since / 60);
        break;
      }
      case 'full':
        kg = full;
        break;
      case 'removing':
        kg = full * Math.max(0, 1 - (t - 29_000) / 700);
        break;
    }
    const stable = phase === 'empty' || phase === 'container' || phase === 'full';
    return { kg: Math.round(kg / RESOLUTION_KG) * RESOLUTION_KG, stable, phase, cycle };
  }
}

/** A weight as MT-SICS writes it: right-aligned in 10 characters, 3 decimals. */
export function weightField(kg: number): string {
  // -0.000 is written as 0.000.
  const text = (Math.abs(kg) < 0.0005 ? 0 : kg).toFixed(3);
  return text.padStart(10, ' ');
}

/**
 * One client's scale: its zero, tare and continuous mode on the shared process. A tare holds for
 * the container it was taken on: it is cleared when the next cycle begins (the "auto clear tare"
 * of industrial weighing terminals), so a tare taken on a full container does not leave every
 * later weight negative.
 */
export class ScaleSession {
  private readonly filling: FillingProcess;
  private zero = 0;
  private tare = 0;
  private tareCycle = -1;
  continuous = false;

  constructor(filling: FillingProcess) {
    this.filling = filling;
  }

  private tareOf(load: Load): number {
    return load.cycle === this.tareCycle ? this.tare : 0;
  }

  /** The SI line: net weight and stability. */
  weightLine(): string {
    const load = this.filling.load();
    return `S ${load.stable ? 'S' : 'D'} ${weightField(load.kg - this.zero - this.tareOf(load))} kg`;
  }

  /** The reply to one request line (without its CR LF), and what it does to the session. */
  answer(request: string): string {
    switch (request) {
      case 'SI':
        return this.weightLine();
      case 'T': {
        const load = this.filling.load();
        this.tare = load.kg - this.zero;
        this.tareCycle = load.cycle;
        return `T S ${weightField(this.tare)} kg`;
      }
      case 'Z':
        this.zero = this.filling.load().kg;
        this.tare = 0;
        return 'Z A';
      case 'SIR':
        this.continuous = true;
        return this.weightLine();
      case '@':
        this.continuous = false;
        this.tare = 0;
        return `I4 A "${SERIAL_NUMBER}"`;
      case 'I4':
        return `I4 A "${SERIAL_NUMBER}"`;
      default:
        return 'ES';
    }
  }
}

/**
 * Cuts a client's bytes into request lines at CR LF. A line longer than MAX_REQUEST is answered
 * once with ES and dropped up to its CR LF, so garbage without line ends costs bounded memory.
 */
export class RequestLines {
  private pending = '';
  private overflowing = false;

  /** The complete lines in `chunk` (with what came before it); `undefined` stands for a line too long. */
  push(chunk: Buffer): (string | undefined)[] {
    const lines: (string | undefined)[] = [];
    let text = this.pending + chunk.toString('latin1');
    for (let end = text.indexOf('\r\n'); end >= 0; end = text.indexOf('\r\n')) {
      if (this.overflowing) this.overflowing = false;
      else lines.push(end > MAX_REQUEST ? undefined : text.slice(0, end));
      text = text.slice(end + 2);
    }
    // Keep a CR that may be the first half of a CR LF, but never more than one line's worth.
    if (text.length > MAX_REQUEST + 1) {
      if (!this.overflowing) lines.push(undefined);
      this.overflowing = true;
      text = text.endsWith('\r') ? '\r' : '';
    }
    this.pending = text;
    return lines;
  }
}

export interface ScaleServer {
  host: string;
  /** The port it listens on (the one asked for, or the one the system chose for 0). */
  port: number;
  /** Clients connected now. */
  readonly clients: number;
  close(): Promise<void>;
}

/** Serves the scale on host:port; resolves once it listens, rejects with a readable error otherwise. */
export function serveScale(
  name: string,
  host: string,
  port: number,
  filling: FillingProcess = new FillingProcess(),
  continuousMs = CONTINUOUS_MS,
): Promise<ScaleServer> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    const session = new ScaleSession(filling);
    const lines = new RequestLines();
    let timer: NodeJS.Timeout | undefined;
    const send = (line: string): void => {
      if (socket.writable && socket.writableLength < MAX_PENDING_OUTPUT) socket.write(`${line}\r\n`, 'latin1');
    };
    socket.on('data', (chunk: Buffer) => {
      for (const line of lines.push(chunk)) send(line === undefined ? 'ES' : session.answer(line));
      // Continuous mode: started by SIR, ended by @ (the @ reply is the last line before it stops).
      if (session.continuous && !timer) timer = setInterval(() => send(session.weightLine()), continuousMs);
      else if (!session.continuous && timer) {
        clearInterval(timer);
        timer = undefined;
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearInterval(timer);
      sockets.delete(socket);
    });
  });
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  return new Promise((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(new Error(`simulator "${name}" cannot listen on ${host}:${port}: ${error.code ?? error.message}`)),
    );
    server.listen(port, host, () => {
      const address = server.address();
      resolve({
        host,
        port: typeof address === 'object' && address ? address.port : port,
        get clients() {
          return sockets.size;
        },
        close,
      });
    });
  });
}
