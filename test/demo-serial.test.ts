// The simulated serial scale of the demo (src/demo/serial-instrument.ts), read by the real serial
// driver over TCP, by raw sockets that misbehave, and through the CLI (`simulate`, `read`, --pty).
// The scale's filling process runs on a clock the tests set, so which phase (stable or moving) a
// reading sees is decided here, not by timing.
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { createDriver, type SerialDriver } from '../drivers/serial/index.js';
import { serialDevice, type SerialTag } from '../drivers/serial/config.js';
import { DriverError } from '../src/pipeline/driver.js';
import { CONTAINER_KG, FillingProcess, serveScale, weightField, type ScaleServer } from '../src/demo/serial-instrument.js';
import { CLI } from './helpers/gateway-cli.js';
import { freePort, portIsFree, waitFor } from './helpers/net.js';

/** The demo's scale device (config/demo.json), pointed at `port`. */
function scaleDevice(port: number, extraTags: unknown[] = []) {
  return serialDevice.parse({
    name: 'scale',
    driver: 'serial',
    connection: { transport: 'tcp', host: '127.0.0.1', port, timeout: 1000 },
    request: 'SI\r\n',
    tags: [
      {
        name: 'weight',
        regex: '^S (?<status>[SD]) +(?<value>-?\\d+\\.\\d+) kg$',
        quality: { capture: 'status', good: ['S'], uncertain: ['D'] },
        unit: 'kg',
      },
      { name: 'tare', type: 'bool', read: false, writable: true, command: 'T\r\n', ack: '^T S' },
      ...extraTags,
    ],
  });
}

/** A raw client of the scale: what it writes, and the lines that come back. */
class LineClient {
  readonly socket: Socket;
  private buffer = '';
  readonly lines: string[] = [];

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffer += chunk.toString('latin1');
      for (let end = this.buffer.indexOf('\r\n'); end >= 0; end = this.buffer.indexOf('\r\n')) {
        this.lines.push(this.buffer.slice(0, end));
        this.buffer = this.buffer.slice(end + 2);
      }
    });
  }

  static async open(port: number): Promise<LineClient> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    return new LineClient(socket);
  }

  write(bytes: string | Buffer): void {
    this.socket.write(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes);
  }

  /** Waits until `count` lines have arrived in all; returns them. */
  async waitLines(count: number): Promise<string[]> {
    await waitFor(
      () => this.lines.length >= count,
      5000,
      () => `${count} lines from the scale, got ${JSON.stringify(this.lines)}`,
    );
    return this.lines.slice(0, count);
  }

  close(): void {
    this.socket.destroy();
  }
}

describe('the simulated scale, read by the serial driver', () => {
  // The filling process on a clock the tests move: 0 is the start of the first cycle.
  let clock = 0;
  const filling = new FillingProcess(() => clock);
  let scale: ScaleServer;
  let driver: SerialDriver;
  let tags: SerialTag[];
  const readWeight = async () => {
    const [reading] = await driver.read(driver.plan(tags.filter((tag) => tag.name === 'weight')));
    assert.ok(reading);
    return reading;
  };

  before(async () => {
    scale = await serveScale('test-scale', '127.0.0.1', 0, filling, 50);
    const device = scaleDevice(scale.port, [
      // A command the scale does not know: it answers ES, which is not the ack.
      { name: 'unknown', type: 'float64', read: false, writable: true, command: 'SETP {value:.1f}\r\n', ack: '^SETP A' },
    ]);
    tags = device.tags;
    driver = createDriver(device, { log: pino({ level: 'silent' }), dataDir: tmpdir() });
    await driver.connect();
  });

  after(async () => {
    await driver.close();
    await scale.close();
  });

  it('a container filling: a moving weight, uncertain with the status as the reason', async () => {
    clock = 10_000; // 6 s into the filling
    const reading = await readWeight();
    assert.equal(reading.quality, 'uncertain');
    assert.equal(reading.reason, 'status "D"');
    assert.equal(typeof reading.value, 'number');
    assert.ok((reading.value as number) > CONTAINER_KG && (reading.value as number) < 20, `weight ${String(reading.value)}`);
  });

  it('the full container: a stable weight, good', async () => {
    clock = 27_000; // the full container, first cycle: 25 kg of product 25 g short, on 1.85 kg of container
    const reading = await readWeight();
    assert.deepEqual([reading.value, reading.quality, reading.reason], [26.825, 'good', undefined]);
  });

  it('a tare is acknowledged, and the weights after it are net', async () => {
    clock = 27_500;
    await driver.write(tags.find((tag) => tag.name === 'tare')!, true);
    const reading = await readWeight();
    assert.deepEqual([reading.value, reading.quality], [0, 'good']);
    // The next container: the tare cleared itself (auto clear tare), the empty platform reads 0 again.
    clock = 30_000 + 3_000;
    const next = await readWeight();
    assert.deepEqual([next.value, next.quality], [CONTAINER_KG, 'good']);
  });

  it('a write the scale does not acknowledge is an error with its answer', async () => {
    await assert.rejects(driver.write(tags.find((tag) => tag.name === 'unknown')!, 12.5), (error: unknown) => {
      assert.ok(error instanceof DriverError);
      assert.equal(error.code, 'bad-reply');
      assert.match(error.message, /did not acknowledge "SETP 12\.5\\r\\n": it answered "ES"/);
      return true;
    });
  });

  it('garbage, partial requests and over-long lines from another client: ES, and the driver reads on', async () => {
    clock = 30_000 + 2_500; // the empty container on the platform (of the second cycle: no tare), stable
    const client = await LineClient.open(scale.port);
    try {
      // A request in three pieces, binary noise, an unknown command, an empty line, lower case.
      client.write('S');
      client.write('I');
      await new Promise((resolve) => setTimeout(resolve, 20));
      client.write('\r\n');
      client.write(Buffer.from([0x00, 0xff, 0x02, 0x1b, 0x0d, 0x0a]));
      client.write('HELLO\r\n\r\nsi\r\n');
      // 300 bytes without a line end: answered ES at once (not kept: memory stays bounded) …
      client.write('X'.repeat(300));
      await client.waitLines(6);
      // … and the rest of that line up to its CR LF is dropped without another ES.
      client.write(`${'Y'.repeat(500)}\r\nSI\r\n`);
      const lines = await client.waitLines(7);
      const weight = `S S ${weightField(CONTAINER_KG)} kg`;
      assert.deepEqual(lines, [weight, 'ES', 'ES', 'ES', 'ES', 'ES', weight]);
      // The driver's own connection is not disturbed by it.
      const reading = await readWeight();
      assert.deepEqual([reading.value, reading.quality], [CONTAINER_KG, 'good']);
    } finally {
      client.close();
    }
  });

  it('continuous mode (SIR) streams weights until @, which answers I4 A and stops it', async () => {
    clock = 27_000;
    const weight = `S S ${weightField(26.825)} kg`;
    const client = await LineClient.open(scale.port);
    try {
      client.write('SIR\r\n');
      assert.deepEqual(await client.waitLines(3), [weight, weight, weight]);
      client.write('@\r\n');
      await waitFor(() => client.lines.includes('I4 A "PLC2MQTT"'), 5000, 'the answer to @');
      // Four stream periods of the 50 ms this scale streams at: a stream that did not stop would show.
      await new Promise((resolve) => setTimeout(resolve, 200));
      client.write('SI\r\n');
      const reset = client.lines.indexOf('I4 A "PLC2MQTT"');
      await client.waitLines(reset + 2);
      assert.deepEqual(client.lines.slice(reset), ['I4 A "PLC2MQTT"', weight]);
      // Tare, zero (which clears the tare), and the weight after both.
      client.write('T\r\nSI\r\nZ\r\nSI\r\n');
      const lines = await client.waitLines(reset + 6);
      assert.deepEqual(lines.slice(reset + 2), [
        `T S ${weightField(26.825)} kg`,
        `S S ${weightField(0)} kg`,
        'Z A',
        `S S ${weightField(0)} kg`,
      ]);
    } finally {
      client.close();
    }
  });

  it('each client has its own tare', async () => {
    clock = 27_000;
    const first = await LineClient.open(scale.port);
    const second = await LineClient.open(scale.port);
    try {
      first.write('T\r\nSI\r\n');
      await first.waitLines(2);
      second.write('SI\r\n');
      assert.deepEqual(await second.waitLines(1), [`S S ${weightField(26.825)} kg`]);
      assert.deepEqual(first.lines, [`T S ${weightField(26.825)} kg`, `S S ${weightField(0)} kg`]);
    } finally {
      first.close();
      second.close();
    }
  });
});

describe('plc2mqtt simulate + read with the demo scale', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-scale-'));
  const socat = spawnSync('socat', ['-V'], { stdio: 'ignore' }).status === 0;
  let simulator: ChildProcess;
  let output = '';
  let plcPort = 0;
  let scalePort = 0;
  const ptyPath = join(folder, 'scale-tty');

  before(async () => {
    plcPort = await freePort();
    scalePort = await freePort();
    const args = [CLI, 'simulate', '--port', String(plcPort), '--scale-port', String(scalePort), ...(socat ? ['--pty', ptyPath] : [])];
    simulator = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    simulator.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    simulator.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    await waitFor(
      () => output.includes(socat ? ptyPath : `127.0.0.1:${scalePort}`),
      15_000,
      () => `the simulators to start: ${output}`,
    );
  });

  after(() => {
    simulator.kill('SIGKILL');
    rmSync(folder, { recursive: true, force: true });
  });

  /** `plc2mqtt read` of one tag of a config holding just `device`. */
  const read = (device: unknown, tag: string, ...flags: string[]) => {
    const file = join(folder, `${tag}-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify({ gateway: { name: 'test', dataDir: folder }, http: { port: 0 }, devices: [device] }));
    return spawnSync(process.execPath, [CLI, 'read', '-c', file, 'scale', tag, ...flags], { encoding: 'utf8', timeout: 30_000 });
  };

  it('simulate says where the demo PLC and the demo scale listen', () => {
    assert.match(output, new RegExp(`simulated PLC "demo-plc": Modbus TCP on 127\\.0\\.0\\.1:${plcPort}`));
    assert.match(output, new RegExp(`simulated scale "demo-scale": MT-SICS .* on TCP 127\\.0\\.0\\.1:${scalePort}`));
  });

  it('read: the weight over TCP, with its unit and a good or uncertain quality', () => {
    const result = read(scaleDevice(scalePort), 'weight');
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^scale\/weight = -?\d+(\.\d+)? kg {2}quality=(good|uncertain( \(status "D"\))?)\n$/);
  });

  it('read --json: the string of the I4 request', () => {
    const device = {
      ...scaleDevice(scalePort),
      request: 'I4\r\n',
      tags: [{ name: 'serial_number', type: 'string', regex: '^I4 A "(?<value>[^"]*)"$' }],
    };
    const result = read(device, 'serial_number', '--json');
    assert.equal(result.status, 0, result.stderr);
    const payload = JSON.parse(result.stdout) as { value: unknown; quality: string };
    assert.deepEqual([payload.value, payload.quality], ['PLC2MQTT', 'good']);
  });

  it('read: the weight through the pseudo terminal of --pty, as from a local serial port', {
    skip: !socat && 'socat is not installed',
  }, () => {
    assert.ok(existsSync(ptyPath));
    const device = { ...scaleDevice(scalePort), connection: { transport: 'serial', path: ptyPath, baudRate: 9600, timeout: 1000 } };
    const result = read(device, 'weight');
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /^scale\/weight = -?\d+(\.\d+)? kg {2}quality=(good|uncertain)/);
  });

  it('--pty without socat on PATH: a clear error, exit 1, the ports freed', async () => {
    const port = await freePort();
    // (Each port claimed: port + 1 may be another test's.)
    const scale = await freePort();
    const result = spawnSync(
      process.execPath,
      [CLI, 'simulate', '--port', String(port), '--scale-port', String(scale), '--pty', join(folder, 'x')],
      { encoding: 'utf8', timeout: 30_000, env: { ...process.env, PATH: dirname(process.execPath) } },
    );
    assert.equal(result.status, 1, result.stderr);
    assert.match(result.stderr, /--pty: socat is not installed/);
    assert.ok(await portIsFree(port));
  });

  it('simulate stops on SIGTERM, removes the pty and frees the ports', async () => {
    simulator.kill('SIGTERM');
    await waitFor(() => simulator.exitCode !== null, 10_000, 'the simulator to exit');
    assert.equal(simulator.exitCode, 0);
    assert.ok(await portIsFree(scalePort));
    assert.ok(await portIsFree(plcPort));
    if (socat) await waitFor(() => !existsSync(ptyPath), 5000, 'socat to remove the pty link');
  });
});
