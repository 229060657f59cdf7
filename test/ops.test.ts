// Operations against the real CLI: /healthz, /readyz, /metrics and /api/status answer with the
// right content; SIGHUP with a changed device restarts only that device and loses no outbox
// message; broker users and ACL rules apply at once; an invalid config on SIGHUP keeps the running one.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import mqtt from 'mqtt';
import { hashPassword } from '../src/broker/security.js';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { CLI, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import { TcpTestServer } from './helpers/modbus-servers.js';
import { freePort, waitFor } from './helpers/net.js';

/** The CONNACK return code of a login (0: accepted); the connection is closed again. */
async function loginCode(url: string, username: string, password: string): Promise<number | undefined> {
  try {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, username, password });
    await client.endAsync(true);
    return 0;
  } catch (error) {
    return (error as { code?: number }).code;
  }
}

interface LogLine {
  msg: string;
  [field: string]: unknown;
}

interface Status {
  gateway: { name: string; version: string; uptimeSeconds: number };
  devices: Array<{
    name: string;
    state: string;
    lastError: string | null;
    connectAttempts: number;
    samples: number;
    errorsByCode: Record<string, number>;
  }>;
  tags?: Array<{ device: string; tag: string; topic: string; value?: unknown; quality?: string; writable: boolean; ts?: number }>;
  outbox: { messages: number; appended: number; delivered: number; dropped: number; oldestAgeSeconds: number };
  uplink: { connected: boolean; acknowledged: number };
  broker: { clients: number; listeners: string[] };
  writes: { received: number };
}

/** `plc2mqtt health …` in a child process, without blocking this process's event loop (spawnSync
 * would: the keep-alive connections of this process's fetches would be closed under it). */
function runHealth(args: string[], env?: NodeJS.ProcessEnv): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI, 'health', ...args],
      { encoding: 'utf8', timeout: 20_000, ...(env ? { env } : {}) },
      (error, stdout, stderr) => {
        resolve({ status: error ? (typeof error.code === 'number' ? error.code : null) : 0, stdout, stderr });
      },
    );
  });
}

describe('operations endpoint and hot reload', () => {
  const dir = makeTempDir('plc2mqtt-ops-');
  const configFile = join(dir, 'gateway.json');
  const modbus = new TcpTestServer();
  let cloud: Mosquitto;
  let gateway: RunningGateway;
  let base = '';
  let deadPort = 0;
  let httpPort = 0;
  let portHolder: Server | undefined;

  const logLines = (): LogLine[] =>
    gateway
      .output()
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as LogLine);

  const plcDevice = (extraTags: object[] = []) => ({
    name: 'plc',
    driver: 'modbus',
    connection: { transport: 'tcp', host: '127.0.0.1', port: modbus.port, unitId: 1, timeout: '500ms' },
    pollInterval: '100ms',
    report: 'always',
    tags: [{ name: 'level', area: 'holding', address: 0, type: 'uint16', writable: true }, ...extraTags],
  });
  const deadDevice = () => ({
    name: 'dead',
    driver: 'modbus',
    connection: { transport: 'tcp', host: '127.0.0.1', port: deadPort, unitId: 1, timeout: '500ms' },
    pollInterval: '200ms',
    tags: [{ name: 'x', area: 'holding', address: 0, type: 'uint16' }],
  });
  const writeConfig = (devices: object[], broker: object = {}) =>
    writeFileSync(
      configFile,
      JSON.stringify({
        gateway: { name: 'ops', dataDir: join(dir, 'data') },
        broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], allowAnonymous: true, ...broker },
        http: { host: '127.0.0.1', port: httpPort },
        uplink: { url: cloud.url, clientId: 'ops-gw', reconnect: { initial: 100, max: 400 } },
        devices,
      }),
    );

  const get = async (path: string, init?: RequestInit) => {
    const response = await fetch(base + path, init);
    return { status: response.status, type: response.headers.get('content-type') ?? '', body: await response.text() };
  };
  const status = async (query = ''): Promise<Status> => JSON.parse((await get(`/api/status${query}`)).body) as Status;

  before(async () => {
    await modbus.start();
    modbus.holding[0] = 1234;
    deadPort = await freePort();
    httpPort = await freePort();
    // The cloud is down at first: everything the gateway publishes waits in the outbox.
    cloud = await Mosquitto.create(dir);
    // Hold the cloud's port while it is "down", or an ephemeral port handed out meanwhile (the
    // gateway's own broker listens on port 0) could take it; connections are cut at once.
    portHolder = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => portHolder!.listen(cloud.port, '127.0.0.1', resolve));
    writeConfig([plcDevice(), deadDevice()]);
    gateway = runGateway(configFile);
    await waitFor(() => logLines().some((line) => line.msg === 'operations endpoint listening'), 20_000, 'the operations endpoint');
    base = String(logLines().find((line) => line.msg === 'operations endpoint listening')!.url);
  });

  after(async () => {
    gateway?.child.kill('SIGTERM');
    await gateway?.exited;
    await modbus.stop();
    portHolder?.close();
    await killAllChildren();
    removeDir(dir);
  });

  it('/healthz and /readyz', async () => {
    assert.deepEqual(await get('/healthz'), { status: 200, type: 'text/plain', body: 'ok\n' });
    const ready = await get('/readyz');
    assert.equal(ready.status, 200);
    assert.deepEqual(JSON.parse(ready.body), { ready: true, problems: [] });
  });

  it('/api/status: gateway, devices with state and last error, tags with values, outbox, uplink, broker', async () => {
    await waitFor(
      async () => {
        const current = await status();
        return (
          current.tags!.some((tag) => tag.tag === 'level' && tag.value === 1234) &&
          (current.devices.find((device) => device.name === 'dead')?.errorsByCode['not-connected'] ?? 0) > 0
        );
      },
      10_000,
      'the level tag and a failed connect of the dead device in the status',
    );
    const current = await status();
    assert.equal(current.gateway.name, 'ops');
    assert.match(current.gateway.version, /^\d+\.\d+\.\d+/);
    const plc = current.devices.find((device) => device.name === 'plc')!;
    const dead = current.devices.find((device) => device.name === 'dead')!;
    assert.equal(plc.state, 'connected');
    assert.equal(plc.lastError, null);
    assert.notEqual(dead.state, 'connected');
    assert.match(dead.lastError ?? '', /ECONNREFUSED|refused/i);
    const level = current.tags!.find((tag) => tag.tag === 'level')!;
    assert.deepEqual(
      { ...level, ts: typeof level.ts },
      {
        device: 'plc',
        tag: 'level',
        topic: 'plc2mqtt/ops/plc/level',
        writable: true,
        commandTopic: 'plc2mqtt/ops/plc/level/set',
        value: 1234,
        quality: 'good',
        ts: 'number',
      },
    );
    assert.equal(current.tags!.find((tag) => tag.device === 'dead')!.quality, 'bad');
    assert.equal(current.uplink.connected, false);
    assert.ok(current.outbox.messages > 0, 'the cloud is down: messages wait in the outbox');
    assert.ok(current.outbox.oldestAgeSeconds > 0);
    assert.equal(current.broker.listeners.length, 1);
    const one = await status('?device=dead');
    assert.deepEqual(
      one.tags!.map((tag) => tag.device),
      ['dead'],
    );
    assert.equal((await status('?tags=0')).tags, undefined);
  });

  it('/metrics: Prometheus text with device, poll, outbox, uplink, broker and process metrics', async () => {
    const metrics = await get('/metrics');
    assert.equal(metrics.status, 200);
    assert.match(metrics.type, /^text\/plain; version=0\.0\.4/);
    const value = (pattern: RegExp) => Number(pattern.exec(metrics.body)?.[1] ?? Number.NaN);
    assert.equal(value(/^plc2mqtt_device_connected\{device="plc"\} (\S+)$/m), 1);
    assert.equal(value(/^plc2mqtt_device_connected\{device="dead"\} (\S+)$/m), 0);
    assert.ok(value(/^plc2mqtt_poll_duration_seconds_count\{device="plc",group="default",outcome="ok"\} (\S+)$/m) > 0);
    assert.ok(value(/^plc2mqtt_poll_errors_total\{device="dead",code="not-connected"\} (\S+)$/m) > 0);
    assert.ok(value(/^plc2mqtt_samples_total\{device="plc"\} (\S+)$/m) > 0);
    assert.ok(value(/^plc2mqtt_outbox_messages (\S+)$/m) > 0);
    assert.ok(value(/^plc2mqtt_outbox_oldest_age_seconds (\S+)$/m) > 0);
    assert.equal(value(/^plc2mqtt_uplink_connected (\S+)$/m), 0);
    assert.equal(value(/^plc2mqtt_broker_clients (\S+)$/m), 0);
    assert.ok(value(/^plc2mqtt_process_resident_memory_bytes (\S+)$/m) > 10_000_000);
    assert.match(metrics.body, /^# HELP plc2mqtt_writes_total /m);
  });

  it('plc2mqtt health (the Docker HEALTHCHECK) exits 0 against the running gateway, 1 when nothing answers', async () => {
    const healthy = await runHealth(['-c', configFile]);
    assert.equal(healthy.status, 0, healthy.stderr);
    assert.equal(healthy.stdout, `http://127.0.0.1:${httpPort}/healthz: ok\n`);
    const elsewhere = join(dir, 'elsewhere.json');
    writeFileSync(elsewhere, JSON.stringify({ http: { port: deadPort } }));
    const unhealthy = await runHealth(['-c', elsewhere, '--timeout', '2000']);
    assert.equal(unhealthy.status, 1);
    assert.match(unhealthy.stderr, new RegExp(`plc2mqtt: http://127\\.0\\.0\\.1:${deadPort}/healthz: connect ECONNREFUSED`));
  });

  it('plc2mqtt health reads only the http section: a bad edit elsewhere or a missing ${ENV} does not make a healthy gateway unhealthy', async () => {
    // Run as a cron job would: without the service's environment.
    const bare = { PATH: process.env.PATH ?? '/usr/bin:/bin' };
    const health = (args: string[], env: NodeJS.ProcessEnv = bare) => runHealth(args, env);
    const edited = join(dir, 'edited.json');
    writeFileSync(
      edited,
      `{
        // being edited: a device with a typo and a syntax error, a cloud password from the service's environment
        "gateway": { "name": "ops", "dataDir": "${join(dir, 'data')}" },
        "http": { "host": "127.0.0.1", "port": ${httpPort} },   // the running gateway's endpoint
        "uplink": { "url": "mqtt://cloud:1883", "password": "\${CLOUD_PASSWORD}" },
        "devices": [{ "name": "plc", "driver": "modbsu", "tags": [{ "name": "x" "address": "40001" }] }],
      }`,
    );
    const healthy = await health(['-c', edited]);
    assert.equal(healthy.stderr, '');
    assert.equal(healthy.status, 0);
    assert.equal(healthy.stdout, `http://127.0.0.1:${httpPort}/healthz: ok\n`);
    // ${ENV} inside the http section is still resolved, with its default too.
    writeFileSync(edited, JSON.stringify({ http: { host: '${OPS_HOST:-0.0.0.0}', port: httpPort }, devices: 'not even a list' }));
    assert.equal((await health(['-c', edited])).status, 0, 'the default of ${OPS_HOST:-…}; 0.0.0.0 is asked on 127.0.0.1');
    writeFileSync(edited, JSON.stringify({ http: { host: '${OPS_HOST}', port: httpPort } }));
    assert.equal((await health(['-c', edited], { ...bare, OPS_HOST: '127.0.0.1' })).status, 0);
    const unset = await health(['-c', edited]);
    assert.equal(unset.status, 1);
    assert.match(unset.stderr, /http\.host: environment variable OPS_HOST is not set/);
    // The http section itself wrong: its problem and the way out.
    writeFileSync(edited, JSON.stringify({ http: { port: 'ninety' } }));
    const broken = await health(['-c', edited]);
    assert.equal(broken.status, 1);
    assert.match(broken.stderr, /http\.port: expected number, got "ninety"/);
    assert.match(broken.stderr, /--url/);
    // --url: no config file at all.
    for (const url of [`http://127.0.0.1:${httpPort}`, `http://127.0.0.1:${httpPort}/healthz`]) {
      const byUrl = await health(['--url', url]);
      assert.equal(byUrl.status, 0, byUrl.stderr);
      assert.equal(byUrl.stdout, `http://127.0.0.1:${httpPort}/healthz: ok\n`);
    }
    const down = await health(['--url', `http://127.0.0.1:${deadPort}`, '--timeout', '2000']);
    assert.equal(down.status, 1);
    assert.match(down.stderr, new RegExp(`http://127\\.0\\.0\\.1:${deadPort}/healthz: connect ECONNREFUSED`));
  });

  it('unknown paths get 404, other methods 405', async () => {
    assert.equal((await get('/nope')).status, 404);
    assert.equal((await get('/api/status', { method: 'POST' })).status, 405);
  });

  it('an invalid config on SIGHUP is refused with its problems; the running config stays', async () => {
    const before = await status();
    writeConfig([{ ...plcDevice(), pollInterval: 'often' }, deadDevice()]);
    gateway.child.kill('SIGHUP');
    await waitFor(() => logLines().some((line) => line.msg.startsWith('reload refused')), 10_000, 'the refusal');
    const refusal = logLines().find((line) => line.msg.startsWith('reload refused'))!;
    assert.match(JSON.stringify(refusal.problems), /devices\[0\]\.pollInterval: expected a duration/);
    const samples = before.devices.find((device) => device.name === 'plc')!.samples;
    await waitFor(
      async () => (await status()).devices.find((device) => device.name === 'plc')!.samples > samples + 5,
      5000,
      'polling goes on',
    );
  });

  it('SIGHUP with one changed device restarts only that device; the outbox loses nothing', async () => {
    const before = await status();
    const deadAttempts = before.devices.find((device) => device.name === 'dead')!.connectAttempts;
    writeConfig([plcDevice([{ name: 'extra', area: 'holding', address: 1, type: 'uint16' }]), deadDevice()]);
    gateway.child.kill('SIGHUP');
    await waitFor(() => logLines().some((line) => line.msg === 'config reloaded'), 10_000, 'the reload');
    const reloaded = logLines().find((line) => line.msg === 'config reloaded')!;
    assert.deepEqual(
      [reloaded.restarted, reloaded.added, reloaded.removed, reloaded.unchanged, reloaded.applied, reloaded.notApplied],
      [['plc'], [], [], 1, [], []],
    );
    await waitFor(
      async () => (await status()).tags!.some((tag) => tag.tag === 'extra' && tag.quality === 'good'),
      10_000,
      'the new tag polled',
    );
    const after = await status();
    // The untouched device kept its runner: its counters went on instead of starting over.
    assert.ok(after.devices.find((device) => device.name === 'dead')!.connectAttempts >= deadAttempts);
    assert.ok(
      after.outbox.appended >= before.outbox.appended && after.outbox.dropped === 0 && after.outbox.messages >= before.outbox.messages,
    );

    // The cloud comes up: every message appended before, during and after the reload is delivered.
    await new Promise((resolve) => portHolder!.close(resolve));
    await cloud.start();
    await waitFor(async () => (await status()).uplink.connected, 15_000, 'the uplink connected');
    writeConfig([]); // nothing new to publish, so the outbox can drain to zero
    gateway.child.kill('SIGHUP');
    await waitFor(() => logLines().filter((line) => line.msg === 'config reloaded').length === 2, 10_000, 'the second reload');
    await waitFor(
      async () => {
        const current = await status();
        return current.outbox.messages === 0 && current.outbox.delivered === current.outbox.appended;
      },
      20_000,
      'the outbox drained',
    );
    const drained = await status();
    assert.equal(drained.outbox.dropped, 0);
    assert.ok(drained.outbox.delivered >= after.outbox.appended);
    assert.deepEqual(drained.devices, []);
  });

  it('SIGHUP with broker users and ACL: applied at once, connected clients stay; a changed listener is reported, not applied', async () => {
    const brokerUrl = (await status()).broker.listeners[0]!;
    const watcher = await mqtt.connectAsync(brokerUrl, { reconnectPeriod: 0, clientId: 'ops-watcher' });
    try {
      assert.equal(await loginCode(brokerUrl, 'hmi', 'hmi-pw'), 4, 'no such user yet');
      const hmi = { username: 'hmi', passwordHash: await hashPassword('hmi-pw') };
      writeConfig([], {
        users: [hmi],
        acl: [{ user: 'hmi', subscribe: ['plc2mqtt/#'] }, { subscribe: ['#'] }],
        listeners: [
          { type: 'tcp', host: '127.0.0.1', port: 0 },
          { type: 'ws', host: '127.0.0.1', port: 0 },
        ],
      });
      gateway.child.kill('SIGHUP');
      await waitFor(() => logLines().filter((line) => line.msg === 'config reloaded').length === 3, 10_000, 'the third reload');
      const reloaded = logLines().filter((line) => line.msg === 'config reloaded')[2]!;
      assert.deepEqual(
        [reloaded.applied, reloaded.disconnected, reloaded.notApplied],
        [['broker.users', 'broker.acl'], [], ['broker.listeners']],
      );
      assert.ok(!gateway.output().includes(hmi.passwordHash), 'the password hash is not logged');
      assert.equal(await loginCode(brokerUrl, 'hmi', 'hmi-pw'), 0, 'the new user logs in without a restart');
      assert.equal(watcher.connected, true, 'the anonymous client stayed connected');
      assert.equal((await status()).broker.listeners.length, 1, 'the new listener waits for a restart');
    } finally {
      await watcher.endAsync(true);
    }
  });
});

describe('plc2mqtt run --watch', () => {
  const dir = makeTempDir('plc2mqtt-watch-');
  const configFile = join(dir, 'gateway.json');
  const modbus = new TcpTestServer();
  let gateway: RunningGateway | undefined;

  after(async () => {
    gateway?.child.kill('SIGTERM');
    await gateway?.exited;
    await modbus.stop();
    removeDir(dir);
  });

  it('a saved change to the config file is applied like a SIGHUP', async () => {
    await modbus.start();
    const device = (name: string) => ({
      name,
      driver: 'modbus',
      connection: { transport: 'tcp', host: '127.0.0.1', port: modbus.port },
      pollInterval: '200ms',
      tags: [{ name: 'x', area: 'holding', address: 0, type: 'uint16' }],
    });
    const write = (devices: object[]) =>
      writeFileSync(
        configFile,
        JSON.stringify({
          gateway: { name: 'w', dataDir: join(dir, 'data') },
          broker: { listeners: [{ type: 'tcp', port: 0 }] },
          http: { enabled: false },
          devices,
        }),
      );
    write([device('a')]);
    gateway = runGateway(configFile, ['--watch']);
    const lines = () =>
      gateway!
        .output()
        .split('\n')
        .filter((line) => line.startsWith('{'))
        .map((line) => JSON.parse(line) as LogLine);
    await waitFor(() => lines().some((line) => line.msg === 'watching the config file for changes'), 20_000, 'the watch');
    write([device('a'), device('b')]);
    await waitFor(() => lines().some((line) => line.msg === 'config reloaded'), 10_000, 'the reload');
    const reloaded = lines().find((line) => line.msg === 'config reloaded')!;
    assert.deepEqual([reloaded.trigger, reloaded.added, reloaded.unchanged], ['file changed', ['b'], 1]);
  });
});
