// First contact and operations, against the real CLI and real files: a data directory the
// gateway's user cannot write (run as `nobody`), a config in JSONC re-read on SIGHUP, and what
// /api/status says about unknown devices and batch-published tags.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { makeTempDir, removeDir } from './helpers/cloud-broker.js';
import { CLI, connectWhenUp, runGateway, type RunningGateway } from './helpers/gateway-cli.js';
import type { Recorder } from './helpers/mqtt.js';
import { freePort, waitFor } from './helpers/net.js';

interface LogLine {
  msg: string;
  [field: string]: unknown;
}

const logLines = (output: string): LogLine[] =>
  output
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as LogLine);

const NOBODY = 65534;
const SETPRIV = '/usr/bin/setpriv';
const asNobody =
  process.getuid?.() !== 0
    ? 'needs root to run the gateway as another user'
    : !existsSync(SETPRIV)
      ? `needs ${SETPRIV} (util-linux)`
      : false;

/**
 * `plc2mqtt run -c FILE` as uid/gid 65534 (nobody), until it exits; a gateway still running after
 * 20 s is killed (status null). Not spawnSync: its timeout closes the pipes before the child has
 * ended, and pino's exit flush retries EPIPE forever.
 */
async function runAsNobody(configFile: string): Promise<{ status: number | null; output: string }> {
  const child = spawn(
    SETPRIV,
    [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, CLI, 'run', '-c', configFile],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const status = await new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  clearTimeout(timer);
  return { status, output };
}

describe('a data directory the gateway cannot write', { skip: asNobody }, () => {
  const dir = makeTempDir('plc2mqtt-perm-');
  const write = (name: string, config: object) => {
    const file = join(dir, name);
    writeFileSync(
      file,
      JSON.stringify({ broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }] }, http: { enabled: false }, ...config }),
    );
    chmodSync(file, 0o644);
    return file;
  };

  after(() => removeDir(dir));

  it('a folder owned by root (a Docker bind mount): the retained store names the path and the fix, nothing is "moved aside"', async () => {
    const data = join(dir, 'root-owned');
    mkdirSync(data, { mode: 0o755 });
    const run = await runAsNobody(write('retained.json', { gateway: { name: 'perm', dataDir: data } }));
    assert.equal(run.status, 1, run.output);
    assert.doesNotMatch(run.output, /damaged|moved aside/);
    const fatal = logLines(run.output).find((line) => line.msg === 'gateway failed to start');
    assert.ok(fatal, run.output);
    assert.match(String(fatal.error), new RegExp(`${data}/retained\\.db`));
    assert.match(String(fatal.error), /permission denied/);
    assert.match(String(fatal.error), new RegExp(`chown ${NOBODY} ${data}`));
    assert.deepEqual(readdirSync(data), []);
  });

  it('a healthy retained.db the gateway cannot write stays where it is, with a clear error', async () => {
    const data = join(dir, 'file-owned-by-root');
    mkdirSync(data, { mode: 0o755 });
    // Made by root, as a first run with sudo would; the folder itself is the gateway's.
    const config = write('root-run.json', { gateway: { name: 'perm', dataDir: data } });
    const first = runGateway(config);
    await waitFor(() => first.output().includes('polling started'), 20_000, 'the root run');
    first.child.kill('SIGTERM');
    await first.exited;
    chownSync(data, NOBODY, NOBODY);
    const before = readFileSync(join(data, 'retained.db'));
    const run = await runAsNobody(config);
    assert.equal(run.status, 1, run.output);
    assert.doesNotMatch(run.output, /damaged|moved aside/);
    const fatal = logLines(run.output).find((line) => line.msg === 'gateway failed to start');
    assert.ok(fatal, run.output);
    assert.match(String(fatal.error), new RegExp(`${data}/retained\\.db: permission denied: .*; fix: chown -R ${NOBODY} ${data}`));
    assert.deepEqual(
      readdirSync(data).filter((name) => name.includes('corrupt')),
      [],
    );
    assert.deepEqual(readFileSync(join(data, 'retained.db')), before);
  });

  it('the outbox in a folder owned by root: path and fix, not "unable to open database file"', async () => {
    const data = join(dir, 'outbox-root-owned');
    mkdirSync(data, { mode: 0o755 });
    const run = await runAsNobody(
      write('outbox.json', {
        gateway: { name: 'perm', dataDir: data },
        broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], persistRetained: false },
        uplink: { url: 'mqtt://127.0.0.1:1' },
      }),
    );
    assert.equal(run.status, 1, run.output);
    const fatal = logLines(run.output).find((line) => line.msg === 'gateway failed to start');
    assert.ok(fatal, run.output);
    assert.match(String(fatal.error), new RegExp(`${data}/outbox\\.db.*permission denied.*chown ${NOBODY} ${data}`));
    assert.deepEqual(readdirSync(data), []);
  });

  it('a data directory that cannot be created: its path and how to create it', async () => {
    const parent = join(dir, 'locked');
    mkdirSync(parent, { mode: 0o755 });
    const data = join(parent, 'state');
    const run = await runAsNobody(write('mkdir.json', { gateway: { name: 'perm', dataDir: data } }));
    assert.equal(run.status, 1, run.output);
    const fatal = logLines(run.output).find((line) => line.msg === 'gateway failed to start');
    assert.ok(fatal, run.output);
    assert.match(
      String(fatal.error),
      new RegExp(`cannot create the data directory ${data}: permission denied.*mkdir -p ${data} && chown ${NOBODY} ${data}`),
    );
  });
});

describe('a JSONC config: run, SIGHUP reload, and /api/status', () => {
  const dir = makeTempDir('plc2mqtt-jsonc-');
  const configFile = join(dir, 'gateway.json');
  let gateway: RunningGateway;
  let recorder: Recorder | undefined;
  let base = '';
  let plcPort = 0;
  let httpPort = 0;

  // Comments and trailing commas as in the README; the batch device has a writable tag.
  const writeConfig = (extraTag: string) =>
    writeFileSync(
      configFile,
      `{
  // the gateway under test
  "gateway": { "name": "fc", "dataDir": "${join(dir, 'data')}", },
  "broker": { "listeners": [{ "type": "tcp", "host": "127.0.0.1", "port": 0 }], "allowAnonymous": true },
  "http": { "host": "127.0.0.1", "port": ${httpPort} },   /* /healthz, /api/status */
  "simulators": [{ "name": "sim", "type": "modbus-tcp", "host": "127.0.0.1", "port": ${plcPort} }],
  "devices": [
    {
      "name": "single", "driver": "modbus",
      "connection": { "transport": "tcp", "host": "127.0.0.1", "port": ${plcPort} },
      "pollInterval": "200ms",
      "tags": [{ "name": "ramp", "address": "40002" }${extraTag}],
    },
    {
      "name": "batched", "driver": "modbus", "publish": "batch",
      "connection": { "transport": "tcp", "host": "127.0.0.1", "port": ${plcPort} },
      "pollInterval": "200ms",
      "pollGroups": { "fast": { "interval": "100ms" } },
      "tags": [
        { "name": "sine", "address": "40001", "type": "int16" },
        { "name": "counter", "address": "40003", "type": "uint32", "group": "fast" },
        { "name": "setpoint", "address": "40011", "type": "int16", "writable": true },  // a command topic, not published
      ],
    },
  ],
}
`,
    );

  before(async () => {
    plcPort = await freePort();
    httpPort = await freePort();
    writeConfig('');
    gateway = runGateway(configFile);
    await waitFor(
      () => logLines(gateway.output()).some((line) => line.msg === 'operations endpoint listening'),
      20_000,
      () => `the operations endpoint:\n${gateway.output()}`,
    );
    base = `http://127.0.0.1:${httpPort}`;
    const listener = String(logLines(gateway.output()).find((line) => line.msg.startsWith('integrated broker listening'))!.listener);
    recorder = await connectWhenUp(listener);
  });

  after(async () => {
    await recorder?.close();
    gateway?.child.kill('SIGTERM');
    await gateway?.exited;
    removeDir(dir);
  });

  it('/api/status?device=<unknown> answers 404 with a JSON error naming the device', async () => {
    const response = await fetch(`${base}/api/status?device=nope`);
    assert.equal(response.status, 404);
    assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(await response.json(), { error: 'no device "nope"; devices: single, batched' });
    assert.equal((await fetch(`${base}/api/status?device=single`)).status, 200);
  });

  it('tags of a batch device list the batch topic they are published on, as the broker shows', async () => {
    const status = (await (await fetch(`${base}/api/status?device=batched`)).json()) as {
      tags: Array<{ tag: string; topic: string; commandTopic?: string }>;
    };
    assert.deepEqual(
      status.tags.map((tag) => [tag.tag, tag.topic, tag.commandTopic]),
      [
        ['sine', 'plc2mqtt/fc/batched/default', undefined],
        ['counter', 'plc2mqtt/fc/batched/fast', undefined],
        ['setpoint', 'plc2mqtt/fc/batched/default', 'plc2mqtt/fc/batched/setpoint/set'],
      ],
    );
    await waitFor(
      () => recorder!.topics().has('plc2mqtt/fc/batched/default') && recorder!.topics().has('plc2mqtt/fc/batched/fast'),
      10_000,
      'both batches',
    );
    const published = [...recorder!.topics()].filter((topic) => topic.startsWith('plc2mqtt/fc/batched'));
    for (const tag of status.tags) assert.ok(published.includes(tag.topic), `${tag.topic} is published`);
    assert.deepEqual(published.sort(), ['plc2mqtt/fc/batched/default', 'plc2mqtt/fc/batched/fast']);
  });

  it('SIGHUP re-reads the JSONC file (comments, trailing commas) and applies it', async () => {
    writeConfig(`,
        // added while running
        { "name": "counter", "address": "40003", "type": "uint32", },`);
    gateway.child.kill('SIGHUP');
    await waitFor(
      () => logLines(gateway.output()).some((line) => line.msg === 'config reloaded' || line.msg.startsWith('reload refused')),
      10_000,
      'the reload',
    );
    const reload = logLines(gateway.output()).find((line) => line.msg === 'config reloaded' || line.msg.startsWith('reload refused'))!;
    assert.equal(reload.msg, 'config reloaded', JSON.stringify(reload));
    assert.deepEqual(reload.restarted, ['single']);
    await waitFor(() => recorder!.topics().has('plc2mqtt/fc/single/counter'), 10_000, 'the added tag');
  });

  it('validate and health read the same JSONC file', () => {
    const validate = spawnSync(process.execPath, [CLI, 'validate', '-c', configFile], { encoding: 'utf8' });
    assert.equal(validate.status, 0, validate.stderr);
    const health = spawnSync(process.execPath, [CLI, 'health', '-c', configFile], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(health.status, 0, health.stderr);
    assert.equal(health.stdout, `${base}/healthz: ok\n`);
  });
});

describe('the systemd unit (docs/plc2mqtt.service)', () => {
  const unit = readFileSync(new URL('../../docs/plc2mqtt.service', import.meta.url), 'utf8');

  it('does not restart an invalid config: the exit code of `run` with one is in RestartPreventExitStatus', () => {
    const service = /^\[Service\]\n([\s\S]*?)(?=^\[)/m.exec(unit)?.[1] ?? '';
    assert.match(service, /^Restart=always$/m);
    const prevented = /^RestartPreventExitStatus=(.*)$/m.exec(service)?.[1]?.split(/\s+/) ?? [];
    const dir = makeTempDir('plc2mqtt-unit-');
    try {
      const file = join(dir, 'gateway.json');
      writeFileSync(file, '{ "devices": [{ "name": "x" }] }');
      const run = spawnSync(process.execPath, [CLI, 'run', '-c', file], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(run.status, 2, run.stderr);
      assert.ok(prevented.includes(String(run.status)), `RestartPreventExitStatus=${prevented.join(' ')} lacks ${run.status}`);
    } finally {
      removeDir(dir);
    }
  });

  it('install notes name every step: Node 24, clone, npm ci, user, config, data directory owner', () => {
    const notes = unit.slice(0, unit.indexOf('[Unit]'));
    for (const step of [
      /npm install --prefix \/opt\/node24 node@24/,
      /git clone \S+ \/opt\/plc2mqtt/,
      /npm ci/,
      /useradd --system .*plc2mqtt/,
      /\/etc\/plc2mqtt\/gateway\.json/,
      /validate -c \/etc\/plc2mqtt\/gateway\.json/,
      /-o plc2mqtt -g plc2mqtt .*\/var\/lib\/plc2mqtt/,
      /systemctl enable --now plc2mqtt/,
    ]) {
      assert.match(notes, step);
    }
  });

  it('systemd-analyze verify finds nothing to complain about', {
    skip: existsSync('/usr/bin/systemd-analyze') ? false : 'needs systemd-analyze',
  }, () => {
    const dir = makeTempDir('plc2mqtt-unit-');
    try {
      writeFileSync(join(dir, 'plc2mqtt.service'), unit);
      const verify = spawnSync('/usr/bin/systemd-analyze', ['verify', join(dir, 'plc2mqtt.service')], {
        encoding: 'utf8',
        timeout: 30_000,
      });
      assert.equal(verify.stderr, '');
      assert.equal(verify.status, 0);
    } finally {
      removeDir(dir);
    }
  });
});
