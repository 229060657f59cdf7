// The commissioning commands through the real CLI: simulate, read, schema, --help.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freePort, portIsFree, waitFor } from './helpers/net.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'dist/src/cli.js');
const cli = (...args: string[]) => spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 });

describe('plc2mqtt simulate + read', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-cli-'));
  let simulatorPort = 0;
  let simulator: ReturnType<typeof spawn>;
  let configFile = '';

  before(async () => {
    simulatorPort = await freePort();
    // The demo scale that simulate starts beside the PLC gets a free port of its own.
    const scalePort = await freePort();
    simulator = spawn(process.execPath, [CLI, 'simulate', '--port', String(simulatorPort), '--scale-port', String(scalePort)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    simulator.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await waitFor(() => output.includes(`127.0.0.1:${simulatorPort}`), 15_000, 'the simulator to listen');
    // The demo's devices, pointed at the simulator started above (and no simulators of its own).
    const demo = JSON.parse(readFileSync(join(ROOT, 'config/demo.json'), 'utf8')) as {
      simulators?: unknown;
      devices: Array<{ connection: { port: number } }>;
    };
    delete demo.simulators;
    demo.devices[0]!.connection.port = simulatorPort;
    const dead = {
      name: 'dead',
      driver: 'modbus',
      connection: { transport: 'tcp', host: '127.0.0.1', port: await freePort(), timeout: 200 },
      tags: [{ name: 'x', address: '40001' }],
    };
    demo.devices.push(dead as unknown as (typeof demo.devices)[number]);
    configFile = join(folder, 'gw.json');
    // An ephemeral operations port: gateways of parallel tests must not meet on 9180.
    writeFileSync(configFile, JSON.stringify({ ...demo, http: { port: 0 } }));
  });

  after(() => {
    simulator.kill('SIGKILL');
    rmSync(folder, { recursive: true, force: true });
  });

  it('reads one tag with value, unit and quality', () => {
    const result = cli('read', '-c', configFile, 'demo-plc', 'temperature');
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^demo-plc\/temperature = \d+(\.\d+)? °C {2}quality=good\n$/);
  });

  it('--json prints the payload the gateway would publish', () => {
    const result = cli('read', '-c', configFile, 'demo-plc', 'banner', '--json');
    assert.equal(result.status, 0, result.stderr);
    const payload = JSON.parse(result.stdout) as { value: unknown; quality: string };
    assert.deepEqual([payload.value, payload.quality], ['PLC2MQTT DEMO', 'good']);
  });

  it('an unreachable device prints bad quality with the reason and exits 1', () => {
    const result = cli('read', '-c', configFile, 'dead', 'x');
    assert.equal(result.status, 1);
    assert.match(result.stderr, /reading dead\/x failed: .*ECONNREFUSED/);
  });

  it('an unknown tag lists the tags there are', () => {
    const result = cli('read', '-c', configFile, 'demo-plc', 'nope');
    assert.equal(result.status, 1);
    assert.match(result.stderr, /device "demo-plc" has no tag "nope"; tags: sine, ramp, counter/);
  });

  it('simulate stops on SIGTERM and frees its port', async () => {
    simulator.kill('SIGTERM');
    await waitFor(() => simulator.exitCode !== null, 10_000, 'the simulator to exit');
    assert.equal(simulator.exitCode, 0);
    assert.ok(await portIsFree(simulatorPort));
  });
});

describe('plc2mqtt schema and --help', () => {
  it('schema prints the committed config/schema.json', () => {
    const result = cli('schema');
    assert.equal(result.status, 0);
    assert.deepEqual(JSON.parse(result.stdout), JSON.parse(readFileSync(join(ROOT, 'config/schema.json'), 'utf8')));
  });

  for (const command of ['run', 'validate', 'schema', 'read', 'browse', 'simulate', 'health', 'passwd']) {
    it(`${command} --help`, () => {
      const result = cli(command, '--help');
      assert.equal(result.status, 0);
      assert.match(result.stdout, new RegExp(`Usage: plc2mqtt ${command}`));
    });
  }
});
