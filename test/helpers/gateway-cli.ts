// The real gateway CLI as a child process, and an MQTT recorder that waits for its broker to come up.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Recorder } from './mqtt.js';
import { waitFor } from './net.js';

export const CLI = join(fileURLToPath(new URL('../../../', import.meta.url)), 'dist/src/cli.js');

export interface RunningGateway {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

export function runGateway(configFile: string, extraArgs: string[] = []): RunningGateway {
  const child = spawn(process.execPath, [CLI, 'run', '-c', configFile, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => output, exited };
}

/** Connects a recorder once the integrated broker at `url` accepts connections. */
export async function connectWhenUp(url: string, filter = '#', timeoutMs = 20_000): Promise<Recorder> {
  let recorder: Recorder | undefined;
  await waitFor(
    async () => {
      try {
        recorder = await Recorder.connect(url, filter);
        return true;
      } catch {
        return false;
      }
    },
    timeoutMs,
    `the integrated broker at ${url}`,
  );
  return recorder!;
}
