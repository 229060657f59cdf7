// The OPC UA driver through the real CLI: `browse` (table and ready-to-paste tag entries that
// validate), `read` of a node the server never answers for (it gives up after requestTimeout),
// `run` with an OPC UA device publishing into the integrated broker, and proof that a
// gateway with only Modbus devices never loads node-opcua (while one with OPC UA devices does).
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Recorder } from './helpers/mqtt.js';
import { freePort, waitFor } from './helpers/net.js';
import { LINE2_NAMESPACE, startTestServer, STUCK_NODE, type RunningTestServer } from './helpers/opcua-server.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = join(ROOT, 'dist/src/cli.js');
const PROBE = fileURLToPath(new URL('./helpers/opcua-load-probe.js', import.meta.url));

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** The CLI as a child process, asynchronously: the OPC UA server of this test runs in this process. */
function cli(args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`plc2mqtt ${args.join(' ')} took more than 30 s: ${stdout}${stderr}`));
    }, 30_000);
    child.once('exit', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

interface Gateway {
  child: ChildProcess;
  output: () => string;
  exited: Promise<void>;
}

function runGateway(configFile: string, probeFile: string): Gateway {
  const child = spawn(process.execPath, ['--import', PROBE, CLI, 'run', '-c', configFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PLC2MQTT_LOAD_PROBE: probeFile },
  });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return { child, output: () => output, exited };
}

async function stopGateway(gateway: Gateway): Promise<void> {
  gateway.child.kill('SIGTERM');
  await gateway.exited;
}

const loadedOpcua = (probeFile: string) =>
  readFileSync(probeFile, 'utf8')
    .split('\n')
    .filter((url) => url.includes('/node-opcua'));

describe('OPC UA through the CLI', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-opcua-cli-'));
  let server: RunningTestServer;
  let configFile = '';
  let brokerPort = 0;

  before(async () => {
    server = await startTestServer({ pkiDir: folder });
    brokerPort = await freePort();
    configFile = join(folder, 'gw.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        gateway: { name: 'ua', dataDir: join(folder, 'data') },
        broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
        http: { port: 0 },
        devices: [
          {
            name: 'press',
            driver: 'opcua',
            connection: { endpointUrl: server.endpointUrl },
            pollInterval: '200ms',
            tags: [
              { name: 'speed', nodeId: 'ns=1;s=Line1.Double', unit: 'm/min' },
              { name: 'big', nodeId: 'ns=1;s=Line1.UInt64' },
              { name: 'missing', nodeId: 'ns=1;s=Line1.Nope' },
            ],
          },
          {
            name: 'meter',
            driver: 'modbus',
            connection: { transport: 'tcp', host: '127.0.0.1', port: await freePort() },
            tags: [{ name: 'x', address: '40001' }],
          },
        ],
      }),
    );
  });

  after(async () => {
    await server?.stop();
    rmSync(folder, { recursive: true, force: true });
  });

  it("browse lists the Objects folder, then a node's children with NodeId, class, data type and access", async () => {
    const top = await cli(['browse', '-c', configFile, 'press']);
    assert.equal(top.status, 0, top.stderr);
    assert.match(top.stdout, /^BROWSE NAME\s+NODE ID\s+CLASS\s+DATA TYPE\s+ACCESS$/m);
    assert.match(top.stdout, /^Line1\s+ns=1;s=Line1\s+Object\s*$/m);
    assert.match(top.stdout, /^Server\s+ns=0;i=2253\s+Object\s*$/m);

    const line = await cli(['browse', '-c', configFile, 'press', 'ns=1;s=Line1']);
    assert.equal(line.status, 0, line.stderr);
    assert.match(line.stdout, /^Double\s+ns=1;s=Line1\.Double\s+Variable\s+Double\s+RW?$/m);
    assert.match(line.stdout, /^Int64\s+ns=1;s=Line1\.Int64\s+Variable\s+Int64\s+RW?$/m);
    assert.match(line.stdout, /^DoubleArray\s+ns=1;s=Line1\.DoubleArray\s+Variable\s+Double\[\]\s+RW?$/m);
    assert.match(line.stdout, /^ReadOnly\s+ns=1;s=Line1\.ReadOnly\s+Variable\s+Double\s+R$/m);
    assert.match(line.stdout, /^Secret\s+ns=1;s=Line1\.Secret\s+Variable\s+Double\s+W$/m);
    assert.match(line.stdout, /^W\s+ns=1;s=Line1\.W\s+Object\s*$/m);
    assert.match(line.stdout, /^ByGuid\s+ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63\s+Variable\s+Int32/im);
  });

  it('browse --tags prints tag entries that paste into a valid config', async () => {
    const result = await cli(['browse', '-c', configFile, 'press', 'ns=1;s=Line1.W', '--tags']);
    assert.equal(result.status, 0, result.stderr);
    const tags = JSON.parse(result.stdout) as Array<{ name: string; nodeId: string; writable?: boolean }>;
    assert.ok(tags.length >= 9);
    assert.deepEqual(
      tags.find((tag) => tag.name === 'Double'),
      { name: 'Double', nodeId: 'ns=1;s=Line1.W.Double', writable: true },
    );
    const pasted = join(folder, 'pasted.json');
    writeFileSync(
      pasted,
      JSON.stringify({ devices: [{ name: 'press', driver: 'opcua', connection: { endpointUrl: server.endpointUrl }, tags }] }),
    );
    const validated = await cli(['validate', '-c', pasted]);
    assert.equal(validated.status, 0, validated.stderr);
    assert.match(validated.stdout, new RegExp(`valid — 1 device \\(1 enabled\\), ${tags.length} tags`));
  });

  it('browse --nsu: a node given and its children printed with namespace URIs instead of indexes', async () => {
    const result = await cli(['browse', '-c', configFile, 'press', `nsu=${LINE2_NAMESPACE};s=Line2`, '--tags', '--nsu']);
    assert.equal(result.status, 0, result.stderr);
    assert.deepEqual(JSON.parse(result.stdout), [{ name: 'Speed', nodeId: `nsu=${LINE2_NAMESPACE};s=Line2.Speed`, writable: true }]);
    // A URI with ";" and "%" in it is escaped (and taken back the same way).
    const odd = await cli(['browse', '-c', configFile, 'press', 'nsu=urn:plc2mqtt:test:odd%3Bname%2520;s=Line2', '--tags', '--nsu']);
    assert.equal(odd.status, 0, odd.stderr);
    assert.deepEqual(JSON.parse(odd.stdout), [
      { name: 'Speed', nodeId: 'nsu=urn:plc2mqtt:test:odd%3Bname%2520;s=Line2.Speed', writable: true },
    ]);
    const unknown = await cli(['browse', '-c', configFile, 'press', 'nsu=urn:nowhere;s=Line2']);
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /browsing press nsu=urn:nowhere;s=Line2 failed: the server has no namespace "urn:nowhere"/);
  });

  it('browse refuses a Modbus device and reports an unknown node', async () => {
    const modbus = await cli(['browse', '-c', configFile, 'meter']);
    assert.equal(modbus.status, 1);
    assert.match(modbus.stderr, /uses the modbus driver; browse is for OPC UA devices/);
    const unknown = await cli(['browse', '-c', configFile, 'press', 'ns=1;s=Nope']);
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /BadNodeIdUnknown/);
  });

  it("read: a node the server never answers for fails after requestTimeout (1s), naming it, not after node-opcua's 5 s", async () => {
    const stuck = join(folder, 'stuck.json');
    writeFileSync(
      stuck,
      JSON.stringify({
        gateway: { name: 'ua', dataDir: join(folder, 'data') },
        devices: [
          {
            name: 'slow',
            driver: 'opcua',
            mode: 'polling',
            connection: { endpointUrl: server.endpointUrl, requestTimeout: '1s' },
            tags: [
              { name: 'stuck', nodeId: STUCK_NODE },
              { name: 'speed', nodeId: 'ns=1;s=Line1.Double' },
            ],
          },
        ],
      }),
    );
    const good = await cli(['read', '-c', stuck, 'slow', 'speed']);
    assert.equal(good.status, 0, good.stderr);
    assert.match(good.stdout, /^slow\/speed = [-\d.e]+ {2}quality=good$/m);
    // The message is the proof: only the gateway's own timer, set to requestTimeout, says this.
    const result = await cli(['read', '-c', stuck, 'slow', 'stuck']);
    assert.equal(result.status, 1, result.stdout);
    assert.match(
      result.stderr,
      /^plc2mqtt: reading slow\/stuck failed: reading 1 nodes failed: no answer within 1000 ms \(requestTimeout\)$/m,
    );
  });

  it('validate explains a malformed NodeId', async () => {
    const bad = join(folder, 'bad.json');
    writeFileSync(
      bad,
      JSON.stringify({
        devices: [
          {
            name: 'p',
            driver: 'opcua',
            connection: { endpointUrl: 'opc.tcp://10.0.0.5:4840' },
            tags: [
              { name: 'a', nodeId: 'ns=3;Line1.Speed' },
              { name: 'b', nodeId: 'ns=2;g=1234' },
              { name: 'c', nodeId: 'nsu=;s=Speed' },
              { name: 'd', nodeId: 'nsu=urn:plant:line1;s=Speed' },
              { name: 'e', nodeId: 'nsu=urn:a%ZZ;s=Speed' },
            ],
          },
        ],
      }),
    );
    const result = await cli(['validate', '-c', bad]);
    assert.equal(result.status, 2);
    assert.match(
      result.stderr,
      /devices\[0\]\.tags\[0\]\.nodeId: not an OPC UA NodeId: expected \[ns=<index>;\|nsu=<namespace URI>;\]<i\|s\|g\|b>=<identifier>, such as "ns=3;s=Line1\.Speed"/,
    );
    assert.match(result.stderr, /devices\[0\]\.tags\[1\]\.nodeId: "g=" takes a GUID/);
    assert.match(result.stderr, /devices\[0\]\.tags\[2\]\.nodeId: "nsu=" needs a namespace URI/);
    assert.match(result.stderr, /devices\[0\]\.tags\[4\]\.nodeId: "nsu=urn:a%ZZ": a "%" must start an escape such as %3B/);
    assert.match(result.stderr, /: 4 problems\n/, 'the nsu= NodeId with a URI is valid');
  });

  it('run: OPC UA values reach the integrated broker; node-opcua is loaded for it', async () => {
    const probe = join(folder, 'probe-opcua.txt');
    const gateway = runGateway(configFile, probe);
    let recorder: Recorder | undefined;
    try {
      await waitFor(() => gateway.output().includes('polling started'), 20_000, 'the gateway to start');
      recorder = await Recorder.connect(`mqtt://127.0.0.1:${brokerPort}`, 'plc2mqtt/ua/press/#');
      const topic = (tag: string) => `plc2mqtt/ua/press/${tag}`;
      await waitFor(() => ['speed', 'big', 'missing'].every((tag) => recorder!.topics().has(topic(tag))), 15_000, 'OPC UA tags on MQTT');
      const speed = recorder.last(topic('speed')) as { value: number; quality: string; unit: string; ts: number };
      assert.equal(speed.quality, 'good');
      assert.equal(typeof speed.value, 'number');
      assert.equal(speed.unit, 'm/min');
      // A UInt64 beyond 2^53 travels as an exact decimal string.
      const big = recorder.last(topic('big')) as { value: string };
      // The server's value is 2^63 + its tick: the tick read back from the string is one the server
      // has had (through a double it would be 2^63 itself: tick 0; ticks count from 1).
      assert.match(big.value, /^\d{19}$/);
      const tick = Number(BigInt(big.value) - 2n ** 63n);
      assert.ok(tick >= 1 && tick <= server.tick(), `${big.value} is 2^63 + a recent tick (now ${server.tick()})`);
      const missing = recorder.last(topic('missing')) as { value: null; quality: string; reason: string };
      assert.deepEqual([missing.value, missing.quality], [null, 'bad']);
      assert.match(missing.reason, /^BadNodeIdUnknown/);
    } finally {
      await recorder?.close();
      await stopGateway(gateway);
    }
    assert.ok(loadedOpcua(probe).length > 10, 'the probe sees node-opcua when an OPC UA device is configured');
  });

  it('a gateway with only Modbus devices never loads node-opcua', async () => {
    const modbusOnly = join(folder, 'modbus-only.json');
    const config = JSON.parse(readFileSync(configFile, 'utf8')) as {
      broker: { listeners: Array<{ port: number }> };
      devices: Array<{ driver: string }>;
    };
    config.broker.listeners[0]!.port = await freePort();
    config.devices = config.devices.filter((device) => device.driver === 'modbus');
    writeFileSync(modbusOnly, JSON.stringify(config));
    const probe = join(folder, 'probe-modbus.txt');
    const gateway = runGateway(modbusOnly, probe);
    try {
      await waitFor(() => gateway.output().includes('polling started'), 20_000, 'the gateway to start');
      // A few poll cycles, so anything loaded lazily on the way has been loaded.
      await new Promise((resolve) => setTimeout(resolve, 1500));
    } finally {
      await stopGateway(gateway);
    }
    const urls = readFileSync(probe, 'utf8').split('\n');
    assert.ok(
      urls.some((url) => url.includes('/drivers/modbus/index.js')),
      'the probe saw the Modbus driver load',
    );
    assert.ok(
      urls.some((url) => url.includes('/drivers/opcua/config.js')),
      'the OPC UA schema is loaded (it is small and free of node-opcua)',
    );
    assert.deepEqual(loadedOpcua(probe), []);
    assert.ok(!urls.some((url) => url.includes('/drivers/opcua/index.js')));
  });
});
