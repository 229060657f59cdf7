// What the gateway (the real CLI) tells about Modbus devices that misbehave, on MQTT and in
// /api/status: a device in back-off publishes one bad message per episode and shows when it is
// tried next; a device with illegal addresses shows the plan it runs once it learnt them; the
// error counters agree with each other.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectWhenUp, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import { RawModbusServer, TcpTestServer } from './helpers/modbus-servers.js';
import type { Recorder } from './helpers/mqtt.js';
import { freePort, waitFor } from './helpers/net.js';

interface DeviceStatus {
  name: string;
  state: string;
  nextTryAt: string | null;
  connectAttempts: number;
  pollErrors: number;
  errorsByCode: Record<string, number>;
  cycles: number;
  plans: Record<string, string>;
}

interface Status {
  devices: DeviceStatus[];
  tags: Array<{ device: string; tag: string; quality?: string; reason?: string }>;
}

interface TagMessage {
  value: unknown;
  quality: string;
  reason?: string;
}

describe('modbus devices in /api/status and on MQTT', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-modbus-status-'));
  const silent = new RawModbusServer('mbap');
  const holes = new TcpTestServer();
  let gateway: RunningGateway;
  let recorder: Recorder;
  let base = '';

  const status = async (): Promise<Status> => (await (await fetch(`${base}/api/status`)).json()) as Status;
  const deviceStatus = async (name: string): Promise<DeviceStatus> => (await status()).devices.find((entry) => entry.name === name)!;
  const logLines = (): Array<{ msg: string; [key: string]: unknown }> =>
    gateway
      .output()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { msg: string });

  before(async () => {
    silent.misbehave = () => null; // accepts connections, never answers
    await silent.start();
    holes.illegal.set('holding', new Set([45]));
    await holes.start();
    const deadPort = await freePort(); // nobody listens
    const brokerPort = await freePort();
    const httpPort = await freePort();
    const file = join(folder, 'gateway.json');
    writeFileSync(
      file,
      JSON.stringify({
        gateway: { name: 'st', dataDir: join(folder, 'data') },
        broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
        http: { host: '127.0.0.1', port: httpPort },
        devices: [
          {
            name: 'silent',
            driver: 'modbus',
            connection: { transport: 'tcp', host: '127.0.0.1', port: silent.port, timeout: 100, retries: 0, backoffAfterTimeouts: 2 },
            pollInterval: '100ms',
            tags: [{ name: 'x', address: '40001' }],
          },
          {
            name: 'dead',
            driver: 'modbus',
            connection: { transport: 'tcp', host: '127.0.0.1', port: deadPort, timeout: 200 },
            pollInterval: '100ms',
            tags: [{ name: 'y', address: '40001' }],
          },
          {
            name: 'holes',
            driver: 'modbus',
            connection: { transport: 'tcp', host: '127.0.0.1', port: holes.port, timeout: 500 },
            pollInterval: '100ms',
            tags: [
              { name: 'a', area: 'holding', address: 40 },
              { name: 'gone', area: 'holding', address: 45 },
              { name: 'c', area: 'holding', address: 47 },
            ],
          },
        ],
      }),
    );
    gateway = runGateway(file);
    recorder = await connectWhenUp(`mqtt://127.0.0.1:${brokerPort}`);
    base = `http://127.0.0.1:${httpPort}`;
  });

  after(async () => {
    await recorder?.close();
    gateway?.child.kill('SIGTERM');
    await gateway?.exited;
    await silent.stop();
    await holes.stop();
    rmSync(folder, { recursive: true, force: true });
  });

  it('a skipped device: one bad message per back-off episode, the next try in nextTryAt', async () => {
    const topic = 'plc2mqtt/st/silent/x';
    const reason = 'device skipped: no reply in 2 polls in a row; tried again with growing pauses until it answers';
    const tagStatus = async () => (await status()).tags.find((entry) => entry.device === 'silent' && entry.tag === 'x')!;
    // Into the episode, then past its first probe (5 s later), which times out as well.
    await waitFor(async () => /^device skipped/.test((await tagStatus()).reason ?? ''), 10_000, 'the device to be skipped');
    const skippedAt = Date.now();
    const timeouts = (await deviceStatus('silent')).errorsByCode.timeout ?? 0;
    await waitFor(
      async () => ((await deviceStatus('silent')).errorsByCode.timeout ?? 0) > timeouts,
      10_000,
      'the probe after the first pause',
    );
    await new Promise((resolve) => setTimeout(resolve, 1500));

    const messages = recorder.messages
      .filter((message) => message.topic === topic)
      .map((message) => JSON.parse(message.payload) as TagMessage);
    assert.deepEqual(
      messages.map((message) => message.reason),
      ['timeout: no response within 100 ms', reason],
      'the first timeout, then one message for the whole episode (probe included)',
    );
    // When it is tried next is in the status: after the probe, the second pause (10 s).
    const nextTryAt = (await deviceStatus('silent')).nextTryAt;
    assert.ok(nextTryAt !== null && nextTryAt !== undefined && Date.parse(nextTryAt) > skippedAt + 9_000, `nextTryAt ${nextTryAt}`);
    const tag = (await status()).tags.find((entry) => entry.device === 'silent' && entry.tag === 'x')!;
    assert.equal(tag.reason, reason);
    assert.ok(logLines().some((line) => /^unit 1 did not answer in 3 consecutive polls; skipping it for 5s/.test(line.msg)));
  });

  it('illegal addresses: the plan as it runs after learning them, in /api/status and the log; the exception counted once', async () => {
    const learnt =
      '2 requests: holding 40..40 (1 reg), holding 47..47 (1 reg); known illegal addresses: holding 45..45 (1 tag not requested)';
    await waitFor(async () => (await deviceStatus('holes')).plans?.default === learnt, 10_000, 'the learnt plan');
    const replanned = logLines().filter((line) => line.device === 'holes' && line.msg === 'poll group re-planned');
    assert.deepEqual(
      replanned.map((line) => line.plan),
      [learnt],
    );
    // The exception came back once; later polls do not ask for address 45 and count it apart.
    const known = async (): Promise<number> => (await deviceStatus('holes')).errorsByCode['known-illegal-address'] ?? 0;
    const before = await known();
    await waitFor(async () => (await known()) >= before + 5, 10_000, 'five more polls');
    assert.equal((await deviceStatus('holes')).errorsByCode['exception-2'], 1);
    const gone = (await status()).tags.find((entry) => entry.device === 'holes' && entry.tag === 'gone')!;
    assert.deepEqual({ quality: gone.quality, reason: gone.reason }, { quality: 'bad', reason: 'exception 2: illegal data address' });
  });

  it('pollErrors counts the cycles with a bad tag; errorsByCode the same cycles by code', async () => {
    await waitFor(
      async () => ((await deviceStatus('dead')).errorsByCode['not-connected'] ?? 0) >= 3,
      10_000,
      'a few cycles of the dead device',
    );
    const { devices } = await status();
    for (const entry of devices) {
      // In these devices no cycle has bad tags of two different codes: the counts add up exactly.
      const sum = Object.values(entry.errorsByCode).reduce((total, count) => total + count, 0);
      assert.equal(
        entry.pollErrors,
        sum,
        `${entry.name}: pollErrors ${entry.pollErrors}, errorsByCode ${JSON.stringify(entry.errorsByCode)}`,
      );
      assert.ok(entry.pollErrors <= entry.cycles, entry.name);
    }
    const dead = devices.find((entry) => entry.name === 'dead')!;
    assert.deepEqual(Object.keys(dead.errorsByCode), ['not-connected']);
    assert.ok(dead.pollErrors >= 3);
  });
});
