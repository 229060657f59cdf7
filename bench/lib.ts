// Process and /proc helpers shared by the benchmarks. Every child started here is killed when the
// benchmark exits, however it exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';

const children: ChildProcess[] = [];
process.on('exit', () => children.forEach((child) => child.kill('SIGKILL')));

/** Registers a child started elsewhere, so it is killed on exit too. */
export function track(child: ChildProcess): ChildProcess {
  children.push(child);
  return child;
}

export interface Started {
  child: ChildProcess;
  /** The match of `ready` in the child's output. */
  match: RegExpMatchArray;
  /** The child's latest output (stdout and stderr, last 20,000 characters). */
  output: () => string;
}

/** Starts a child and resolves once its output matches `ready`; rejects if it exits or takes too long. */
export function start(command: string, argv: string[], ready: RegExp, timeoutMs = 60_000): Promise<Started> {
  const child = track(spawn(command, argv, { stdio: ['ignore', 'pipe', 'pipe'] }));
  let output = '';
  let started = false;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${argv[0] ?? command} did not become ready: ${output.slice(-500)}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      // Only the tail is kept: a chatty child must not cost the benchmark process a core.
      output = (output + chunk.toString()).slice(-20_000);
      if (started) return;
      const match = ready.exec(output);
      if (match) {
        started = true;
        clearTimeout(timer);
        resolve({ child, match, output: () => output });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${argv[0] ?? command} exited with ${code}: ${output.slice(-500)}`));
    });
  });
}

/** A port that was free a moment ago. */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Resolves once something accepts connections on the port (10 s at most). */
export async function waitForPort(port: number): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nothing listens on port ${port}`);
}

/** CPU seconds (user + system) a process has used, from /proc (clock ticks of 1/100 s). */
export function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Peak resident memory of a process in MB (VmHWM). */
export function peakRssMb(pid: number): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Math.round(Number(match[1]) / 1024) : 0;
}
