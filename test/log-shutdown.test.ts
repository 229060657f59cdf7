// The gateway's logs must never keep it from stopping: through the real CLI, with stdout a pipe
// whose reader went away (EPIPE), a full disk (ENOSPC) or a pipe nobody reads (full, EAGAIN; in
// JSON and --pretty), SIGTERM still ends it, and a stalled stdout does not freeze it meanwhile.
// Each wait is bounded and every child is SIGKILLed in a finally: a regression fails, never hangs.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants, openSync, readSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import mqtt from 'mqtt';
import { generate } from 'mqtt-packet';
import { makeTempDir, removeDir } from './helpers/cloud-broker.js';
import { CLI, runGateway } from './helpers/gateway-cli.js';
import { freePort, waitFor } from './helpers/net.js';

const EXIT_WAIT_MS = 15_000;

type Ending = { code: number | null; signal: NodeJS.Signals | null } | 'still running';

/** How the child ended, or 'still running' after `ms`. */
async function endingWithin(child: ChildProcess, ms: number): Promise<Ending> {
  if (child.exitCode !== null || child.signalCode !== null) return { code: child.exitCode, signal: child.signalCode };
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('still running'), ms);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

/**
 * Waits until the integrated broker answers a CONNECT (stdout may be unreadable here), then a
 * moment more: the SIGTERM handler is installed right after the gateway has started. A SIGTERM
 * before it would end the child by the signal, which the tests tell apart (signal: 'SIGTERM').
 */
async function brokerUp(url: string, stderr: () => string): Promise<void> {
  await waitFor(
    async () => {
      try {
        const probe = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 2000 });
        await probe.endAsync(true);
        return true;
      } catch {
        return false;
      }
    },
    20_000,
    () => `the integrated broker at ${url}; stderr:\n${stderr()}`,
  );
  await new Promise((resolve) => setTimeout(resolve, 300));
}

/**
 * An MQTT client that connects and then resets its TCP connection: the broker logs the reset at
 * debug level, once per client. False when the broker did not answer the CONNECT within 5 s.
 */
async function resetConnection(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let answered = false;
    const timer = setTimeout(() => socket.destroy(), 5000);
    socket.on('connect', () =>
      socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: '', clean: true, keepalive: 0 })),
    );
    socket.once('data', () => {
      answered = true;
      socket.resetAndDestroy();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(answered);
    });
  });
}

describe('logging at shutdown', () => {
  const dir = makeTempDir('plc2mqtt-log-');
  const children: ChildProcess[] = [];

  after(async () => {
    await Promise.all(children.map(kill));
    removeDir(dir);
  });

  const writeConfig = (name: string, logLevel: string, port = 0): string => {
    const file = join(dir, `${name}.json`);
    writeFileSync(
      file,
      JSON.stringify({
        gateway: { name, dataDir: join(dir, `${name}-data`), logLevel },
        broker: { allowAnonymous: true, listeners: [{ type: 'tcp', host: '127.0.0.1', port }] },
        http: { enabled: false },
        devices: [],
      }),
    );
    return file;
  };

  it('exits on SIGTERM after the reader of its stdout went away (EPIPE at the final flush)', async () => {
    const gateway = runGateway(writeConfig('epipe', 'info'));
    children.push(gateway.child);
    try {
      await waitFor(
        () => gateway.output().includes('polling started'),
        20_000,
        () => `the gateway to start; output:\n${gateway.output()}`,
      );
      // The SIGTERM handler is installed right after that line; leave it a moment.
      await new Promise((resolve) => setTimeout(resolve, 300));
      gateway.child.stdout!.destroy();
      await new Promise((resolve) => setTimeout(resolve, 200));
      gateway.child.kill('SIGTERM');
      const ending = await endingWithin(gateway.child, EXIT_WAIT_MS);
      assert.notEqual(ending, 'still running', `the gateway did not exit within ${EXIT_WAIT_MS} ms of SIGTERM with its stdout reader gone`);
      // Stopped by its own shutdown, not by the signal's default action; losing logs is no failure.
      assert.deepEqual(ending, { code: 0, signal: null });
    } finally {
      await kill(gateway.child);
    }
  });

  it('exits on SIGTERM while every write to its stdout fails (a full disk: /dev/full, ENOSPC)', async () => {
    const full = openSync('/dev/full', 'w');
    const port = await freePort();
    const child = spawn(process.execPath, [CLI, 'run', '-c', writeConfig('enospc', 'info', port)], { stdio: ['ignore', full, 'pipe'] });
    closeSync(full);
    children.push(child);
    let stderr = '';
    child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    try {
      await brokerUp(`mqtt://127.0.0.1:${port}`, () => stderr);
      child.kill('SIGTERM');
      const ending = await endingWithin(child, EXIT_WAIT_MS);
      assert.notEqual(ending, 'still running', `the gateway did not exit within ${EXIT_WAIT_MS} ms of SIGTERM with its stdout failing`);
      assert.deepEqual(ending, { code: 0, signal: null }, `stderr:\n${stderr}`);
    } finally {
      await kill(child);
    }
  });

  for (const mode of ['JSON', '--pretty'] as const) {
    it(`stays responsive and exits on SIGTERM while nobody reads its stdout (pipe full, ${mode} logs)`, async () => {
      const name = mode === 'JSON' ? 'stall-json' : 'stall-pretty';
      const fifo = join(dir, `${name}.fifo`);
      const made = spawnSync('mkfifo', [fifo]);
      assert.equal(made.status, 0, `mkfifo: ${made.stderr?.toString()}`);
      // Read and write end in one descriptor: the pipe has a reader that never reads.
      const fd = openSync(fifo, constants.O_RDWR);
      const port = await freePort();
      const args = [CLI, 'run', '-c', writeConfig(name, 'debug', port), ...(mode === 'JSON' ? [] : ['--pretty'])];
      const child = spawn(process.execPath, args, { stdio: ['ignore', fd, 'pipe'] });
      children.push(child);
      let stderr = '';
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      let client: mqtt.MqttClient | undefined;
      try {
        const url = `mqtt://127.0.0.1:${port}`;
        await brokerUp(url, () => stderr);
        // ~2000 debug lines of ~150 bytes: several times what the pipe holds. A frozen gateway
        // answers none: stop at the first batch with an unanswered connection.
        for (let batch = 0; batch < 20; batch++) {
          const answered = await Promise.all(Array.from({ length: 100 }, () => resetConnection(port)));
          if (answered.includes(false)) break;
        }
        // The event loop still runs: the broker accepts a client while stdout is full.
        client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000 });
        await client.endAsync(true);
        child.kill('SIGTERM');
        const ending = await endingWithin(child, EXIT_WAIT_MS);
        assert.notEqual(ending, 'still running', `the gateway did not exit within ${EXIT_WAIT_MS} ms of SIGTERM with its stdout full`);
        assert.deepEqual(ending, { code: 0, signal: null }, `stderr:\n${stderr}`);
        // The stall was real: the pipe was full when the gateway exited. Read through a descriptor of
        // its own: spawning made the shared one blocking again, and `fd` keeps a writer open (no EOF).
        const reader = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
        let pending = 0;
        try {
          const chunk = Buffer.alloc(65_536);
          for (;;) {
            const n = readSync(reader, chunk);
            if (n === 0) break;
            pending += n;
          }
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EAGAIN') throw error;
        } finally {
          closeSync(reader);
        }
        // A pipe holds 64 KiB, less when writes leave its pages part-filled; the gateway logged ~300 KB.
        assert.ok(pending >= 32_768, `only ${pending} bytes were waiting in the pipe: stdout never filled up`);
      } finally {
        client?.end(true);
        await kill(child);
        closeSync(fd);
      }
    });
  }
});
