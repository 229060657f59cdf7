// Self-healing: the server process is killed and started again on the same port, it hangs
// (SIGSTOP: the socket stays up, nothing answers) and resumes, and the link goes silent (no FIN, no
// RST) for longer than the session timeout. In every case every tag goes bad within bounded time
// (a hung server within requestTimeout, which node-opcua alone would raise to 5 s), and values
// resume by themselves: same DeviceRunner, same driver instance, a fresh session, subscription and
// monitored items.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createServer, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { freePort, waitFor } from './helpers/net.js';
import { startLink, type Link } from './helpers/opcua-link.js';
import { parseDevice, runDevice, testLog, type RunningDevice } from './helpers/opcua-runner.js';
import { LINE2_NAMESPACE } from './helpers/opcua-server.js';
import { DriverError } from '../src/pipeline/driver.js';
import { createDriver } from '../drivers/opcua/index.js';

const CHILD = fileURLToPath(new URL('./helpers/opcua-server-child.js', import.meta.url));

interface ServerProcess {
  child: ChildProcess;
  port: number;
  exited: Promise<void>;
}

async function startServerProcess(pkiDir: string, port: number, namespacesBefore: string[] = []): Promise<ServerProcess> {
  const child = spawn(process.execPath, [CHILD, pkiDir, String(port), '100', namespacesBefore.join(',')], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let output = '';
  const listening = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`test server did not start: ${output}`)), 20_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /READY (\d+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`test server exited with ${code}: ${output}`));
    });
  });
  return { child, port: listening, exited };
}

/** Tight timeouts so losses are noticed in seconds, as a user would configure for a fast line. */
const CONNECTION = { connectTimeout: '2s', requestTimeout: '2s', keepAliveInterval: '500ms', sessionTimeout: '2s' };
const TAGS = [
  { name: 'counter', nodeId: 'ns=1;s=Line1.Int32' },
  { name: 'text', nodeId: 'ns=1;s=Line1.String' },
  { name: 'unknown', nodeId: 'ns=1;s=Line1.Nope' },
];

/** The server's tick as the String tag tells it ("tick 17" → 17). */
function tickOf(device: RunningDevice): number {
  const last = device.history('text').findLast((reading) => reading.quality === 'good');
  return last ? Number(String(last.value).split(' ')[1]) : -1;
}

describe('OPC UA self-healing', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-opcua-heal-'));
  const pkiDir = join(folder, 'server');
  const children = new Set<ServerProcess>();
  const devices: RunningDevice[] = [];
  let link: Link | undefined;

  const server = async (port: number, namespacesBefore: string[] = []) => {
    const running = await startServerProcess(pkiDir, port, namespacesBefore);
    children.add(running);
    void running.exited.then(() => children.delete(running));
    return running;
  };

  before(async () => {
    // Makes the server certificate once, so restarts below are quick.
    const first = await server(0);
    first.child.kill('SIGTERM');
    await first.exited;
  });

  after(async () => {
    await Promise.all(devices.map((device) => device.stop()));
    await link?.close();
    for (const running of children) running.child.kill('SIGKILL');
    await Promise.all([...children].map((running) => running.exited));
    rmSync(folder, { recursive: true, force: true });
  });

  it('an nsu= NodeId follows its namespace to another index when the restarted server has a new NamespaceArray', async () => {
    const port = await freePort();
    let running = await server(port);
    const endpointUrl = `opc.tcp://127.0.0.1:${port}`;
    const tags = [
      { name: 'speed', nodeId: `nsu=${LINE2_NAMESPACE};s=Line2.Speed` },
      { name: 'elsewhere', nodeId: 'nsu=urn:nowhere;s=Line2.Speed' },
    ];
    const subscribed = runDevice(
      { name: 'nsu-subscribed', pollInterval: '200ms', connection: { endpointUrl, ...CONNECTION }, tags },
      join(folder, 'gw'),
    );
    const polled = runDevice(
      { name: 'nsu-polled', mode: 'polling', pollInterval: '200ms', connection: { endpointUrl, ...CONNECTION }, tags },
      join(folder, 'gw'),
    );
    devices.push(subscribed, polled);
    for (const device of [subscribed, polled]) {
      await waitFor(() => device.last('speed')?.quality === 'good', 15_000, `${device.device.name}: Line2.Speed`);
      assert.equal(device.last('speed')!.value, 42, 'ns=2 here');
      const elsewhere = device.last('elsewhere')!;
      assert.deepEqual([elsewhere.quality, elsewhere.code], ['bad', 'BadNodeIdUnknown']);
      assert.match(
        elsewhere.reason!,
        /the server has no namespace "urn:nowhere" \(its NamespaceArray: http:\/\/opcfoundation\.org\/UA\/, .*urn:plc2mqtt:test:line2, urn:plc2mqtt:test:odd;name%20\)/,
      );
    }

    // Restarted with another namespace first: LINE2_NAMESPACE is now ns=3, and ns=2 has a decoy Speed of -1.
    running.child.kill('SIGTERM');
    await running.exited;
    const restartedAt = Date.now();
    running = await server(port, ['urn:plc2mqtt:test:decoy']);
    for (const device of [subscribed, polled]) {
      await waitFor(
        () => device.readings.some((reading) => reading.tag === 'speed' && reading.quality === 'good' && reading.at > restartedAt),
        15_000,
        `${device.device.name}: Line2.Speed after the restart`,
      );
      const after = device.readings.filter((reading) => reading.tag === 'speed' && reading.quality === 'good' && reading.at > restartedAt);
      assert.deepEqual(
        [...new Set(after.map((reading) => reading.value))],
        [42],
        "read from the namespace's new index, never the decoy at the old one",
      );
    }
    running.child.kill('SIGTERM');
    await running.exited;
    await subscribed.stop();
    await polled.stop();
  });

  it('server killed and restarted on the same port: bad while down, values resume without restarting anything', async () => {
    const port = await freePort();
    let running = await server(port);
    const endpointUrl = `opc.tcp://127.0.0.1:${port}`;
    const subscribed = runDevice(
      { name: 'subscribed', pollInterval: '200ms', connection: { endpointUrl, ...CONNECTION }, tags: TAGS },
      join(folder, 'gw'),
    );
    const polled = runDevice(
      { name: 'polled', mode: 'polling', pollInterval: '200ms', connection: { endpointUrl, ...CONNECTION }, tags: TAGS },
      join(folder, 'gw'),
    );
    devices.push(subscribed, polled);
    for (const device of [subscribed, polled]) {
      await waitFor(
        () => device.last('counter')?.quality === 'good' && device.last('text')?.quality === 'good',
        15_000,
        `${device.device.name}: good values`,
      );
      assert.equal(device.last('unknown')?.code, 'BadNodeIdUnknown');
    }
    const attempts = subscribed.runner.health.connectAttempts;

    // A crash, not a clean shutdown: no goodbye on the wire.
    const killedAt = Date.now();
    running.child.kill('SIGKILL');
    await running.exited;
    for (const device of [subscribed, polled]) {
      await waitFor(
        () => device.last('counter')?.quality === 'bad' && device.last('text')?.quality === 'bad',
        5_000,
        `${device.device.name}: bad quality after the crash`,
      );
      assert.ok(device.last('counter')!.at - killedAt < 3000, 'noticed within 3 s');
      assert.match(device.last('counter')!.reason!, /connection|not connected/i);
    }
    // While the server is down the tags stay bad (reported again, never silent) and connects are retried.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const whileDown = subscribed.readings.filter((reading) => reading.at > killedAt && reading.tag === 'counter');
    assert.ok(
      whileDown.length >= 2 && whileDown.every((reading) => reading.quality === 'bad'),
      `bad readings while down: ${whileDown.length}`,
    );
    assert.ok(subscribed.runner.health.connectAttempts > attempts, 'reconnects were attempted');

    const restartedAt = Date.now();
    running = await server(port);
    for (const device of [subscribed, polled]) {
      await waitFor(
        () => device.readings.some((reading) => reading.tag === 'counter' && reading.quality === 'good' && reading.at > restartedAt),
        15_000,
        `${device.device.name}: values again after the restart`,
      );
      // The restarted server counts from 1 again: these are new values, not a replay.
      await waitFor(() => tickOf(device) >= 1 && tickOf(device) < 200, 5_000, "the new server's ticks");
      assert.equal(device.runner.health.state, 'connected');
    }
    // A fresh subscription: the unknown node is reported bad again, the others keep changing.
    await waitFor(
      () =>
        subscribed.readings.some((reading) => reading.tag === 'unknown' && reading.at > restartedAt && reading.code === 'BadNodeIdUnknown'),
      5_000,
      'the unknown node re-reported',
    );
    const tick = tickOf(subscribed);
    await waitFor(() => tickOf(subscribed) > tick + 2, 5_000, 'changes after the restart');
    running.child.kill('SIGTERM');
    await running.exited;
    await subscribed.stop();
    await polled.stop();
  });

  it('an endpoint that accepts TCP but never answers HEL: each attempt fails after connectTimeout and leaves no socket behind', async () => {
    // A wrong port that some other service answers, or a server hung before its handshake. The
    // server side reads (so it sees FIN) and never writes.
    const open = new Set<Socket>();
    let accepted = 0;
    const blackhole = createServer((socket) => {
      accepted++;
      open.add(socket);
      socket.on('close', () => open.delete(socket));
      socket.on('error', () => undefined);
      socket.resume();
    });
    await new Promise<void>((resolve) => blackhole.listen(0, '127.0.0.1', resolve));
    const port = (blackhole.address() as { port: number }).port;
    const driver = createDriver(
      parseDevice({
        connection: { endpointUrl: `opc.tcp://127.0.0.1:${port}`, connectTimeout: '1s', requestTimeout: '1s' },
        tags: TAGS.slice(0, 1),
      }),
      { log: testLog, dataDir: join(folder, 'blackhole') },
    );
    try {
      for (let attempt = 1; attempt <= 3; attempt++) {
        await assert.rejects(driver.connect(), /no answer from opc\.tcp:\/\/127\.0\.0\.1:\d+ within 1000 ms/);
        assert.equal(accepted, attempt, 'one socket per attempt');
        await waitFor(() => open.size === 0, 5_000, `the socket of attempt ${attempt} closed`);
      }
    } finally {
      await driver.close();
      for (const socket of open) socket.destroy();
      await new Promise((resolve) => blackhole.close(resolve));
    }
  });

  it("a hung server (SIGSTOP): requestTimeout 1s is honoured by the poll's Read and by the keep-alive read, not raised to node-opcua's 5 s; both recover when the server resumes", async () => {
    const running = await server(0);
    const connection = {
      endpointUrl: `opc.tcp://127.0.0.1:${running.port}`,
      connectTimeout: '2s',
      requestTimeout: '1s',
      sessionTimeout: '30s',
    };
    // Polling with a long keep-alive interval: the poll's own Read must notice the hang.
    const polled = runDevice(
      {
        name: 'hung-polled',
        mode: 'polling',
        pollInterval: '200ms',
        connection: { ...connection, keepAliveInterval: '10s' },
        tags: TAGS.slice(0, 2),
      },
      join(folder, 'gw'),
    );
    // A subscription publishing every second with 10 keep-alive counts: its silence watchdog would
    // take over 20 s, so the keep-alive read (every 1 s of silence, answered within 1 s) must notice.
    const subscribed = runDevice(
      { name: 'hung-subscribed', pollInterval: '1s', connection: { ...connection, keepAliveInterval: '1s' }, tags: TAGS.slice(0, 2) },
      join(folder, 'gw'),
    );
    devices.push(polled, subscribed);
    try {
      for (const device of [polled, subscribed])
        await waitFor(() => device.last('counter')?.quality === 'good', 15_000, `${device.device.name}: good values`);

      const stoppedAt = Date.now();
      running.child.kill('SIGSTOP');
      const firstBad = (device: RunningDevice, tag: string) =>
        device.history(tag).find((reading) => reading.at >= stoppedAt && reading.quality === 'bad');
      for (const device of [polled, subscribed]) {
        await waitFor(
          () => firstBad(device, 'counter') !== undefined && firstBad(device, 'text') !== undefined,
          10_000,
          `${device.device.name}: bad quality while the server is hung`,
        );
        const bad = firstBad(device, 'counter')!;
        // requestTimeout plus a poll interval (or the keep-alive interval) and scheduling slack;
        // node-opcua alone waits at least 5 s. A behaviour bound, not a benchmark.
        const noticedAfter = bad.at - stoppedAt;
        assert.ok(noticedAfter < 4000, `${device.device.name}: noticed after ${noticedAfter} ms: ${bad.reason}`);
        assert.match(bad.reason!, /no answer within 1000 ms \(requestTimeout\)/, device.device.name);
      }
      assert.match(firstBad(polled, 'counter')!.reason!, /^reading 2 nodes failed: no answer within 1000 ms \(requestTimeout\)$/);
      assert.equal(firstBad(polled, 'counter')!.code, 'timeout');
      assert.match(
        firstBad(subscribed, 'counter')!.reason!,
        /^connection lost: the keep-alive read failed: no answer within 1000 ms \(requestTimeout\)$/,
      );

      const resumedAt = Date.now();
      running.child.kill('SIGCONT');
      for (const device of [polled, subscribed]) {
        await waitFor(
          () => device.readings.some((reading) => reading.tag === 'counter' && reading.quality === 'good' && reading.at > resumedAt),
          15_000,
          `${device.device.name}: values again after the server resumed`,
        );
        const tick = tickOf(device);
        await waitFor(() => tickOf(device) > tick + 2, 5_000, `${device.device.name}: changes after the server resumed`);
        assert.equal(device.runner.health.state, 'connected');
      }
    } finally {
      running.child.kill('SIGCONT');
      await polled.stop();
      await subscribed.stop();
      running.child.kill('SIGTERM');
      await running.exited;
    }
  });

  it('a hung server (SIGSTOP): a write and a browse give up after requestTimeout 1s too, and the next connect works once the server resumes', async () => {
    const running = await server(0);
    const tags = [{ name: 'setpoint', nodeId: 'ns=1;s=Line1.W.Double', writable: true }];
    const device = parseDevice({
      connection: {
        endpointUrl: `opc.tcp://127.0.0.1:${running.port}`,
        connectTimeout: '2s',
        requestTimeout: '1s',
        keepAliveInterval: '10s',
        sessionTimeout: '30s',
      },
      tags,
    });
    const driver = createDriver(device, { log: testLog, dataDir: join(folder, 'gw') });
    const setpoint = device.tags[0]!;
    /** Runs `action` against the frozen server; it must fail with the timeout well before node-opcua's 5 s. */
    const whileHung = async (what: string, action: () => Promise<unknown>, message: RegExp) => {
      running.child.kill('SIGSTOP');
      try {
        const started = Date.now();
        await assert.rejects(action(), (error: unknown) => {
          assert.ok(error instanceof DriverError, String(error));
          assert.match(error.message, message);
          assert.deepEqual([error.code, error.connectionLost], ['timeout', true]);
          return true;
        });
        const elapsed = Date.now() - started;
        assert.ok(elapsed < 4000, `${what} gave up after ${elapsed} ms`);
        assert.equal(driver.connected, false, `${what}: the connection is thrown away`);
      } finally {
        running.child.kill('SIGCONT');
      }
    };
    try {
      await driver.connect();
      await driver.write(setpoint, 1.5); // the DataType is known now: the next write is one Write request
      await whileHung(
        'the write',
        () => driver.write(setpoint, 2.5),
        /^writing "setpoint" failed: no answer within 1000 ms \(requestTimeout\)$/,
      );

      await driver.connect();
      await whileHung(
        'the browse',
        () => driver.browse('ns=1;s=Line1'),
        /^browsing ns=1;s=Line1 failed: no answer within 1000 ms \(requestTimeout\)$/,
      );

      // Resumed: a fresh connection writes and browses again.
      await driver.connect();
      await driver.write(setpoint, 3.5);
      assert.ok((await driver.browse('ns=1;s=Line1')).some((entry) => entry.browseName === 'Double'));
    } finally {
      running.child.kill('SIGCONT');
      await driver.close();
      running.child.kill('SIGTERM');
      await running.exited;
    }
  });

  it('a silent link (no FIN, no RST) longer than the session timeout: noticed by the keep-alive, healed when the link returns', async () => {
    const running = await server(0);
    link = await startLink(running.port);
    const device = runDevice(
      {
        name: 'remote',
        pollInterval: '200ms',
        connection: { endpointUrl: `opc.tcp://127.0.0.1:${link.port}`, ...CONNECTION },
        tags: TAGS.slice(0, 2),
      },
      join(folder, 'gw'),
    );
    devices.push(device);
    await waitFor(() => device.last('counter')?.quality === 'good', 15_000, 'good values through the link');

    const cutAt = Date.now();
    link.cut();
    // keepAliveInterval 500 ms + requestTimeout 2 s, plus a publish cycle: well within 6 s.
    await waitFor(() => device.last('counter')?.quality === 'bad', 8_000, 'bad quality after the cut');
    const noticedAfter = device.last('counter')!.at - cutAt;
    assert.ok(noticedAfter < 6000, `noticed after ${noticedAfter} ms`);
    // Longer than the 2 s session timeout: the server drops the old session meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    assert.equal(device.last('counter')!.quality, 'bad');

    const restoredAt = Date.now();
    link.restore();
    await waitFor(
      () => device.readings.some((reading) => reading.tag === 'counter' && reading.quality === 'good' && reading.at > restoredAt),
      15_000,
      'values again after the link returned',
    );
    const tick = tickOf(device);
    await waitFor(() => tickOf(device) > tick + 2, 5_000, 'changes after the link returned');
    await device.stop();
    running.child.kill('SIGTERM');
    await running.exited;
  });
});
