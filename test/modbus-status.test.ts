// What the gateway (the real CLI) tells about Modbus devices that misbehave, on MQTT and in
// /api/status: a device in back-off publishes one bad message per episode and shows when it is
// tried next.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectWhenUp, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import { RawModbusServer } from './helpers/modbus-servers.js';
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
    rmSync(folder, { recursive: true, force: true });
  });

  it('a skipped device: one bad message per back-off episode, the next try in nextTryAt', async () => {
    const topic = 'plc2mqtt/st/silent/x';
    const reason = 'device skipped: no reply in 2 polls in a row; tried again with growing pauses until it answers';
    const tagStatus = async () => (await status()).tags.find((entry) => entry.device === 'silent' && entry.tag === 'x')!;
    // Into the episode, then past its first probe (5 s later), which times out as well.
    await waitFor(async () => /^device skipped/.test((await tagStatus()).reason ?? ''), 10_000, 'the device to be skipped');
    const skippedAt = Date.now();
    const timeouts = (await deviceStatus('silent')).errorsByCode['timeout'] ?? 0;
    await waitFor(async () => ((await deviceStatus('silent')).errorsByCode['timeout'] ?? 0) > timeouts, 10_000, 'the probe after the first pause');
    await new Promise((resolve) => setTimeout(resolve, 1500));

    const messages = recorder.messages.filter((message) => message.topic === topic).map((message) => JSON.parse(message.payload) as TagMessage);
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
});
