// Process and /proc helpers shared by the benchmarks. Every child started here is killed when the
// benchmark exits, however it exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const children: ChildProcess[] = [];
const folders: string[] = [];
const cgroups: string[] = [];
process.on('exit', () => {
  children.forEach((child) => child.kill('SIGKILL'));
  folders.forEach((folder) => rmSync(folder, { recursive: true, force: true }));
  // A cgroup goes once its processes are gone (killed just above; a moment later at worst).
  for (const cgroup of cgroups) {
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        rmdirSync(cgroup);
        break;
      } catch {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
      }
    }
  }
});
// A signal ends the benchmark through process.exit, so the exit hook above still runs.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(signal, () => process.exit(130));

/** A temporary folder, removed when the benchmark exits. */
export function tempFolder(prefix: string): string {
  const folder = mkdtempSync(join(tmpdir(), prefix));
  folders.push(folder);
  return folder;
}

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
export function start(
  command: string,
  argv: string[],
  ready: RegExp,
  timeoutMs = 60_000,
  options: { stdin?: boolean; env?: NodeJS.ProcessEnv } = {},
): Promise<Started> {
  const child = track(
    spawn(command, argv, { stdio: [options.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'], env: options.env ?? process.env }),
  );
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

/** Resident memory of a process now, in MB (VmRSS). */
export function rssMb(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Math.round(Number(match[1]) / 1024) : 0;
}

/** Resolves with the match once a started child's (latest) output matches `pattern`. */
export async function waitForOutput(started: Started, pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(started.output());
    if (match) return match;
    if (started.child.exitCode !== null || started.child.signalCode !== null)
      throw new Error(`child exited before printing ${pattern}: ${started.output().slice(-500)}`);
    if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms: ${started.output().slice(-500)}`);
    await sleep(50);
  }
}

/** Resolves once the child has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * mosquitto as the cloud broker, on a free loopback port. No per-subscriber queue limit
 * (max_queued_messages 0), or it drops QoS 1 messages a slow subscriber can't take, silently;
 * a larger in-flight window than the default 20; no persistence. `noDelay`: TCP_NODELAY on its
 * sockets (set_tcp_nodelay): without it, a large QoS 0 message's last segment can wait for the
 * subscriber's delayed ACK (up to 40 ms on Linux), since a QoS 0 subscriber sends nothing back.
 */
export async function startMosquitto(folder: string, options: { noDelay?: boolean } = {}): Promise<{ port: number; child: ChildProcess }> {
  const port = await freePort();
  const file = join(folder, 'mosquitto.conf');
  writeFileSync(
    file,
    `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 1000\n${
      options.noDelay ? 'set_tcp_nodelay true\n' : ''
    }`,
  );
  const child = track(spawn('/usr/sbin/mosquitto', ['-c', file], { stdio: 'ignore' }));
  await waitForPort(port);
  return { port, child };
}

/** The load Modbus server (pymodbus, bench/load-server.py) with the given unit ids; clock: its registers read as the serve time (--clock). */
export async function startModbusServer(
  root: string,
  units: number[],
  options: { clock?: boolean } = {},
): Promise<{ port: number; child: ChildProcess }> {
  const server = await start(
    '/usr/bin/python3',
    [join(root, 'bench/load-server.py'), '--units', units.join(','), ...(options.clock ? ['--clock'] : [])],
    /READY (\d+)/,
  );
  return { port: Number(server.match[1]), child: server.child };
}

/**
 * A command line that runs `command argv` in a new memory cgroup limited to `limitMb` (as on an
 * edge box with that much RAM, or a container with a memory limit: Node sizes V8's heap, and so
 * its young generation, from the memory it may use). Needs root and a cgroup file system (v2, or
 * v1's memory controller). The process keeps its pid (the shell execs it), so CPU and RSS are
 * measured as usual.
 */
/** The gateway's command line: this Node with `argv`, in a memory cgroup when `memoryLimit` (MB, as given to --memory-limit) is set. */
export function nodeCommand(argv: string[], memoryLimit: string | undefined): { command: string; argv: string[] } {
  if (memoryLimit === undefined) return { command: process.execPath, argv };
  const limitMb = Number(memoryLimit);
  if (!(limitMb > 0)) throw new Error(`--memory-limit is in MB, not ${memoryLimit}`);
  return inMemoryLimit(limitMb, process.execPath, argv);
}

function inMemoryLimit(limitMb: number, command: string, argv: string[]): { command: string; argv: string[] } {
  const name = `plc2mqtt-bench-${process.pid}-${cgroups.length}`;
  const bytes = String(limitMb * 1024 * 1024);
  let procs: string;
  try {
    if (existsSync('/sys/fs/cgroup/cgroup.controllers')) {
      const dir = join('/sys/fs/cgroup', name);
      mkdirSync(dir);
      cgroups.push(dir);
      writeFileSync(join(dir, 'memory.max'), bytes);
      procs = join(dir, 'cgroup.procs');
    } else {
      const dir = join('/sys/fs/cgroup/memory', name);
      mkdirSync(dir);
      cgroups.push(dir);
      writeFileSync(join(dir, 'memory.limit_in_bytes'), bytes);
      procs = join(dir, 'tasks');
    }
  } catch (error) {
    throw new Error(`--memory-limit needs root and a cgroup file system with the memory controller: ${(error as Error).message}`);
  }
  return { command: '/bin/sh', argv: ['-c', `echo $$ > ${procs} && exec "$0" "$@"`, command, ...argv] };
}
