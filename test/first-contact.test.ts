// First contact and operations, against the real CLI and real files: a data directory the
// gateway's user cannot write (run as `nobody`).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { makeTempDir, removeDir } from './helpers/cloud-broker.js';
import { CLI, runGateway } from './helpers/gateway-cli.js';
import { waitFor } from './helpers/net.js';

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
const asNobody = process.getuid?.() !== 0 ? 'needs root to run the gateway as another user' : !existsSync(SETPRIV) ? `needs ${SETPRIV} (util-linux)` : false;

/**
 * `plc2mqtt run -c FILE` as uid/gid 65534 (nobody), until it exits; a gateway still running after
 * 20 s is killed (status null). Not spawnSync: its timeout closes the pipes before the child has
 * ended, and pino's exit flush retries EPIPE forever.
 */
async function runAsNobody(configFile: string): Promise<{ status: number | null; output: string }> {
  const child = spawn(SETPRIV, [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, CLI, 'run', '-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
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
    writeFileSync(file, JSON.stringify({ broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }] }, http: { enabled: false }, ...config }));
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
    assert.deepEqual(readdirSync(data).filter((name) => name.includes('corrupt')), []);
    assert.deepEqual(readFileSync(join(data, 'retained.db')), before);
  });

  it('the outbox in a folder owned by root: path and fix, not "unable to open database file"', async () => {
    const data = join(dir, 'outbox-root-owned');
    mkdirSync(data, { mode: 0o755 });
    const run = await runAsNobody(write('outbox.json', { gateway: { name: 'perm', dataDir: data }, broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: 0 }], persistRetained: false }, uplink: { url: 'mqtt://127.0.0.1:1' } }));
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
    assert.match(String(fatal.error), new RegExp(`cannot create the data directory ${data}: permission denied.*mkdir -p ${data} && chown ${NOBODY} ${data}`));
  });
});
