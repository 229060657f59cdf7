// Two drivers behind one serial device server port (Moxa NPort "TCP server" mode): a Modbus RTU
// unit (driver modbus, transport rtu-over-tcp) and an ASCII scale (driver serial, transport tcp)
// on the same RS-485 line. The device server passes bytes through unchanged and takes one TCP
// connection; the line carries one conversation at a time. Both devices must share that one
// connection through the serial-port registry: one FIFO, never a request while a reply is due.
import assert from 'node:assert/strict';
import net from 'node:net';
import { it, type TestContext } from 'node:test';
import { crc16modbus } from 'crc';
import pino from 'pino';
import { createDriver as createSerialDriver } from '../drivers/serial/index.js';
import { serialDevice } from '../drivers/serial/config.js';
import { DeviceRunner } from '../src/pipeline/device-runner.js';
import type { DriverTag, TagReading } from '../src/pipeline/driver.js';
import { cleanup, device, pollDevice } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

const UNIT = 1;
const SCALE_REQUEST = Buffer.from('SI\r\n', 'latin1');
const SCALE_REPLY = Buffer.from('S S     12.345 kg\r\n', 'latin1');
/** How long a device behind the server takes to answer (the RS-485 side is slow). */
const ANSWER_MS = 15;

/** Unit id, PDU and its CRC-16/MODBUS (low byte first). */
function rtuFrame(body: number[]): Buffer {
  const frame = Buffer.from(body);
  const crc = Buffer.alloc(2);
  crc.writeUInt16LE(crc16modbus(frame));
  return Buffer.concat([frame, crc]);
}

/**
 * The device server with its RS-485 line: one listening socket; every connection's bytes go to
 * the one line, on which a Modbus unit (holding register a holds 100 + a) and a scale answer.
 * Records connections, every byte received, requests that came while a reply was still due
 * (`overlaps`), and bytes that were no request of either device.
 */
class DeviceServer {
  connections = 0;
  /** Most connections open at the same time. */
  mostOpen = 0;
  readonly received: string[] = [];
  readonly requests: string[] = [];
  readonly overlaps: string[] = [];
  readonly garbage: string[] = [];
  /** The Modbus unit does not answer (powered off, unplugged from the bus). */
  modbusSilent = false;
  port = 0;
  /** A reply is on its way on the line (the device is answering). */
  private replying: string | undefined;
  private readonly server = net.createServer((socket) => this.accept(socket));
  private readonly sockets = new Set<net.Socket>();

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.drop();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Closes every connection (the device server restarts, or drops an idle connection). */
  drop(): void {
    for (const socket of this.sockets) socket.destroy();
    // A reply still due goes nowhere now.
    this.replying = undefined;
  }

  count(kind: 'modbus' | 'scale'): number {
    return this.requests.filter((request) => request.startsWith(kind)).length;
  }

  private accept(socket: net.Socket): void {
    const connection = ++this.connections;
    this.sockets.add(socket);
    this.mostOpen = Math.max(this.mostOpen, this.sockets.size);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk: Buffer) => {
      this.received.push(`#${connection} ${chunk.toString('hex')}`);
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (buffer.length === 0) return;
        if (buffer[0] === SCALE_REQUEST[0]) {
          if (buffer.length < SCALE_REQUEST.length) return;
          if (!buffer.subarray(0, SCALE_REQUEST.length).equals(SCALE_REQUEST)) return this.noise(buffer, () => (buffer = Buffer.alloc(0)));
          buffer = buffer.subarray(SCALE_REQUEST.length);
          this.request(socket, `scale on #${connection}`, SCALE_REPLY);
        } else if (buffer[0] === UNIT) {
          if (buffer.length < 8) return;
          const frame = buffer.subarray(0, 8);
          if (frame[1] !== 3 || frame.readUInt16LE(6) !== crc16modbus(frame.subarray(0, 6)))
            return this.noise(buffer, () => (buffer = Buffer.alloc(0)));
          buffer = buffer.subarray(8);
          const start = frame.readUInt16BE(2);
          const count = frame.readUInt16BE(4);
          const data: number[] = [];
          for (let a = start; a < start + count; a++) data.push(0, 100 + a);
          const reply = rtuFrame([UNIT, 3, 2 * count, ...data]);
          this.request(socket, `modbus ${start}+${count} on #${connection}`, this.modbusSilent ? undefined : reply);
        } else {
          return this.noise(buffer, () => (buffer = Buffer.alloc(0)));
        }
      }
    });
  }

  private noise(bytes: Buffer, clear: () => void): void {
    this.garbage.push(bytes.toString('hex'));
    clear();
  }

  /** A request on the line: the device it is for answers after ANSWER_MS (or never). */
  private request(socket: net.Socket, what: string, reply: Buffer | undefined): void {
    this.requests.push(what);
    if (this.replying !== undefined) this.overlaps.push(`${what} while the reply to ${this.replying} was still due`);
    if (reply === undefined) return;
    this.replying = what;
    setTimeout(() => {
      if (this.replying === what) this.replying = undefined;
      if (!socket.destroyed) socket.write(reply);
    }, ANSWER_MS);
  }
}

const good = (cycle: TagReading[]): boolean => cycle.every((reading) => reading.quality === 'good');
const show = (cycles: TagReading[][]): string =>
  cycles
    .map((cycle) => cycle.map((r) => (r.quality === 'good' ? `${r.tag}=${String(r.value)}` : `${r.tag}: ${r.code} ${r.reason}`)).join(', '))
    .join('\n');

/** The device server, and a Modbus unit and a scale behind it polled every 100 ms by DeviceRunners. */
async function start(
  t: TestContext,
): Promise<{ server: DeviceServer; modbus: TagReading[][]; modbusRunner: DeviceRunner; scale: TagReading[][]; state: () => string }> {
  const defer = cleanup(t);
  const server = new DeviceServer();
  await server.start();
  defer(() => server.stop());
  const log = pino({ level: process.env.MODBUS_TEST_LOG ?? 'silent' });

  // The Modbus unit: rtu-over-tcp to the device server. Silent, it times out twice per poll (one
  // retry), then after 3 such polls it is skipped for 5 s (back-off).
  const { cycles: modbus, runner: modbusRunner } = pollDevice(
    defer,
    device({
      name: 'tank',
      connection: {
        transport: 'rtu-over-tcp',
        host: '127.0.0.1',
        port: server.port,
        unitId: UNIT,
        timeout: 300,
        retries: 1,
        backoffAfterTimeouts: 3,
      },
      tags: [
        { name: 'level', address: '40001' },
        { name: 'flow', address: '40002' },
      ],
    }),
    log,
  );

  // The scale: the serial-line driver, raw TCP to the same host:port.
  const scaleConfig = serialDevice.parse({
    name: 'scale',
    driver: 'serial',
    connection: { transport: 'tcp', host: '127.0.0.1', port: server.port },
    request: 'SI\r\n',
    tags: [{ name: 'weight', regex: '^S S +(?<value>-?[0-9.]+) kg$' }],
  });
  const scale: TagReading[][] = [];
  const scaleRunner = new DeviceRunner({
    name: 'scale',
    driver: createSerialDriver(scaleConfig, { log, dataDir: '/nonexistent' }),
    groups: [{ name: 'default', interval: 100, tags: scaleConfig.tags as DriverTag[] }],
    log,
    phaseOf: () => 0,
    onReadings: (event) => scale.push(event.readings),
  });
  scaleRunner.start();
  defer(() => scaleRunner.stop());

  const state = (): string =>
    `connections ${server.connections} (at most ${server.mostOpen} at once), overlaps ${JSON.stringify(server.overlaps)}, garbage ${JSON.stringify(server.garbage)}\n` +
    `requests: ${server.requests.slice(-12).join('; ')}\nmodbus:\n${show(modbus.slice(-6))}\nscale:\n${show(scale.slice(-6))}`;
  return { server, modbus, modbusRunner, scale, state };
}

const TANK = [
  { tag: 'level', value: 100, quality: 'good' },
  { tag: 'flow', value: 101, quality: 'good' },
];
const WEIGHT = [{ tag: 'weight', value: 12.345, quality: 'good' }];

it('a Modbus RTU unit and a serial-line scale behind one device-server port share one connection and take turns', async (t) => {
  const { server, modbus, modbusRunner, scale, state } = await start(t);

  // Both read good, over one connection, one request at a time.
  await waitFor(() => modbus.filter(good).length >= 5 && scale.filter(good).length >= 5, 15_000, state);
  assert.deepEqual(modbus.findLast(good), TANK);
  assert.deepEqual(scale.findLast(good), WEIGHT);
  assert.equal(server.connections, 1, state());
  assert.deepEqual(server.overlaps, [], state());
  assert.deepEqual(server.garbage, [], state());

  // The Modbus unit falls silent: it times out until its back-off skips it, the scale keeps
  // reading good, and the connection the scale shares is not renewed for the silent unit.
  server.modbusSilent = true;
  const silentFrom = { modbus: modbus.length + 1, scale: scale.length + 1, requests: server.count('modbus') };
  const skipped = (cycle: TagReading[]): boolean => cycle.every((reading) => reading.code === 'skipped');
  await waitFor(
    () =>
      modbus.slice(silentFrom.modbus).some(skipped) &&
      scale.length >= silentFrom.scale + 3 &&
      server.count('modbus') >= silentFrom.requests + 6,
    15_000,
    state,
  );
  const silentModbus = modbus.slice(silentFrom.modbus);
  for (const cycle of silentModbus)
    assert.ok(
      cycle.every((reading) => reading.code === 'timeout' || reading.code === 'skipped'),
      show(silentModbus),
    );
  const duringSilence = scale.slice(silentFrom.scale);
  assert.ok(duringSilence.every(good), `the scale while the Modbus unit was silent:\n${show(duringSilence)}`);
  assert.equal(modbusRunner.health.connectAttempts, 1, 'the Modbus device kept its share of the connection');

  // It answers again: it reads good again by itself, and the scale never noticed.
  server.modbusSilent = false;
  const backFrom = modbus.length;
  await waitFor(() => modbus.slice(backFrom).filter(good).length >= 3 && scale.length >= silentFrom.scale + 6, 15_000, state);
  assert.deepEqual(modbus.at(-1), TANK);
  const sinceSilence = scale.slice(silentFrom.scale);
  assert.ok(sinceSilence.every(good), `the scale since the Modbus unit fell silent:\n${show(sinceSilence)}`);
  assert.equal(server.connections, 1, state());
  assert.equal(modbusRunner.health.connectAttempts, 1);
  assert.deepEqual(server.overlaps, [], state());
  assert.deepEqual(server.garbage, [], state());
});

it('the device server drops the connection: both devices are back on one new connection', async (t) => {
  const { server, modbus, scale, state } = await start(t);
  await waitFor(() => modbus.filter(good).length >= 3 && scale.filter(good).length >= 3, 15_000, state);

  server.drop();
  const from = { modbus: modbus.length, scale: scale.length };
  await waitFor(
    () => server.connections >= 2 && modbus.slice(from.modbus).filter(good).length >= 3 && scale.slice(from.scale).filter(good).length >= 3,
    15_000,
    state,
  );
  assert.deepEqual(modbus.at(-1), TANK);
  assert.deepEqual(scale.at(-1), WEIGHT);
  assert.equal(server.connections, 2, state());
  assert.equal(server.mostOpen, 1, state());
  assert.deepEqual(server.overlaps, [], state());
  assert.deepEqual(server.garbage, [], state());
});
