// The serial instruments the serial driver is tested against (test/helpers/serial-instrument.py),
// checked on their own: over a socat pty pair with the serialport package, over TCP with node:net.
// Checksums are computed here again, so a wrong one in the peer shows.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { SerialPort } from 'serialport';
import { cleanup } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';
import { type Instrument, type InstrumentOptions, startInstrument, startSerialLine } from './helpers/serial-instrument.js';

/** Bytes as they arrive from a port or socket, taken off the front as tests consume them. */
class Received {
  private buffer = Buffer.alloc(0);
  /** How many reads delivered bytes. */
  chunks = 0;

  constructor(stream: NodeJS.EventEmitter) {
    stream.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.chunks++;
    });
  }

  get length(): number {
    return this.buffer.length;
  }

  /** Waits until `size(buffer)` says how many bytes make what is wanted, then takes them. */
  async take(size: (buffer: Buffer) => number | undefined, what: string, timeoutMs = 3000): Promise<Buffer> {
    let n: number | undefined;
    await waitFor(
      () => (n = size(this.buffer)) !== undefined,
      timeoutMs,
      () => `${what}; received ${JSON.stringify(this.buffer.toString('latin1'))}`,
    );
    const taken = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return taken;
  }

  /** The next CR LF terminated line, as latin1 text with the CR LF. */
  async line(): Promise<string> {
    const taken = await this.take((buffer) => {
      const end = buffer.indexOf('\r\n');
      return end < 0 ? undefined : end + 2;
    }, 'a line ending in CR LF');
    return taken.toString('latin1');
  }

  async bytes(count: number): Promise<Buffer> {
    return this.take((buffer) => (buffer.length >= count ? count : undefined), `${count} bytes`);
  }
}

const xor = (bytes: Uint8Array): number => bytes.reduce((value, byte) => value ^ byte, 0);
const sum8 = (bytes: Uint8Array): number => bytes.reduce((value, byte) => (value + byte) & 0xff, 0);

function crc16Modbus(bytes: Uint8Array): number {
  let crc = 0xffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let i = 0; i < 8; i++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1;
  }
  return crc;
}

type Checksum = NonNullable<InstrumentOptions['checksum']>;
type ChecksumFormat = NonNullable<InstrumentOptions['checksumFormat']>;

/** The checksum bytes of an STX/ETX frame, over body and ETX. */
function checksum(covered: Buffer, algorithm: Checksum, format: ChecksumFormat): Buffer {
  const value = { xor: xor(covered), sum8: sum8(covered), lrc: (0x100 - sum8(covered)) & 0xff, 'crc16-modbus': crc16Modbus(covered) }[
    algorithm
  ];
  const width = algorithm === 'crc16-modbus' ? 2 : 1;
  if (format === 'hex')
    return Buffer.from(
      value
        .toString(16)
        .toUpperCase()
        .padStart(2 * width, '0'),
      'latin1',
    );
  const bytes = Buffer.alloc(width);
  bytes.writeUIntLE(value, 0, width);
  return bytes;
}

function frame(body: string, algorithm: Checksum = 'xor', format: ChecksumFormat = 'binary'): Buffer {
  const covered = Buffer.from(`${body}\x03`, 'latin1');
  return Buffer.concat([Buffer.from([0x02]), covered, checksum(covered, algorithm, format)]);
}

/** Takes the next STX … ETX checksum frame; returns its body and whether the checksum is right. */
async function nextFrame(received: Received, algorithm: Checksum = 'xor', format: ChecksumFormat = 'binary') {
  const width = (algorithm === 'crc16-modbus' ? 2 : 1) * (format === 'hex' ? 2 : 1);
  const taken = await received.take((buffer) => {
    const end = buffer.indexOf(0x03);
    return end >= 0 && buffer.length >= end + 1 + width ? end + 1 + width : undefined;
  }, 'an STX/ETX frame');
  assert.equal(taken[0], 0x02, `a frame starts with STX: ${JSON.stringify(taken.toString('latin1'))}`);
  const covered = taken.subarray(1, taken.length - width);
  return {
    body: covered.subarray(0, -1).toString('latin1'),
    valid: checksum(covered, algorithm, format).equals(taken.subarray(taken.length - width)),
  };
}

/** Checks an NMEA sentence's checksum and returns its fields. */
function nmeaFields(sentence: string): { fields: string[]; valid: boolean } {
  const match = /^\$([^*]*)\*([0-9A-F]{2})\r\n$/.exec(sentence);
  assert.ok(match, `an NMEA sentence: ${JSON.stringify(sentence)}`);
  const valid = xor(Buffer.from(match[1]!, 'latin1')) === Number.parseInt(match[2]!, 16);
  return { fields: match[1]!.split(','), valid };
}

async function instrument(t: TestContext, options: InstrumentOptions): Promise<Instrument> {
  const started = await startInstrument(options);
  t.after(() => started.stop());
  return started;
}

async function tcpClient(t: TestContext, port: number | undefined): Promise<{ socket: Socket; received: Received }> {
  assert.ok(port !== undefined && port > 0, 'a TCP instrument reports its port');
  const socket = connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  t.after(() => socket.destroy());
  const received = new Received(socket);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  return { socket, received };
}

async function openPort(path: string, baudRate = 9600): Promise<{ port: SerialPort; received: Received }> {
  const port = new SerialPort({ path, baudRate, autoOpen: false });
  port.on('error', () => undefined);
  const received = new Received(port);
  await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
  return { port, received };
}

const closePort = (port: SerialPort): Promise<void> => new Promise((resolve) => (port.isOpen ? port.close(() => resolve()) : resolve()));

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-instrument-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('serial instrument peer', () => {
  it('a scale on a pty pair: MT-SICS replies, a request split across writes, tare, continuous mode', async (t) => {
    const defer = cleanup(t);
    const line = await startSerialLine(tempDir(t));
    defer(() => line.stop());
    const scale = await startInstrument({ kind: 'scale', pty: line.device, baudRate: 19200, period: 20 });
    defer(() => scale.stop());
    assert.equal(scale.port, undefined);
    const { port, received } = await openPort(line.gateway, 19200);
    defer(() => closePort(port));

    port.write('S');
    await new Promise<void>((resolve) => port.drain(() => resolve()));
    port.write('I\r\n');
    assert.equal(await received.line(), 'S S     12.345 kg\r\n');
    assert.deepEqual(scale.requests(), ['SI\r\n']);

    await scale.control({ set: { weight: 2.5, stable: false } });
    port.write('SI\r\n');
    const dynamic = /^S D (.{10}) kg\r\n$/.exec(await received.line());
    assert.ok(dynamic, 'not stable: S D');
    assert.ok(Math.abs(Number(dynamic[1]) - 2.5) < 0.01, `a small wiggle around 2.5: ${dynamic[1]}`);

    await scale.control({ set: { stable: true } });
    port.write('T\r\nSI\r\nZ\r\nXX\r\n');
    assert.equal(await received.line(), 'T S      2.500 kg\r\n');
    assert.equal(await received.line(), 'S S      0.000 kg\r\n');
    assert.equal(await received.line(), 'Z A\r\n');
    assert.equal(await received.line(), 'ES\r\n');

    await scale.control({ set: { weight: 3, busy: true } });
    port.write('SI\r\n');
    assert.equal(await received.line(), 'S I\r\n');
    await scale.control({ set: { busy: false, overload: true } });
    port.write('SI\r\n');
    assert.equal(await received.line(), 'S +\r\n');
    await scale.control({ set: { overload: false } });

    port.write('SIR\r\n');
    assert.equal(await received.line(), 'S S      0.500 kg\r\n');
    assert.equal(await received.line(), 'S S      0.500 kg\r\n');
    port.write('@\r\n');
    let reply: string;
    while ((reply = await received.line()) === 'S S      0.500 kg\r\n');
    assert.equal(reply, 'I4 A "0123456789"\r\n');
    await scale.waitForRequest((data) => data === '@\r\n');

    await assert.rejects(scale.control({ set: { colour: 'red' } }), /a scale has no colour/);
    await assert.rejects(scale.control({ once: 'bad-checksum' }), /no checksum/);
  });

  it('misbehaviour modes on TCP: split, garbage, partial, silent, noise, flood', async (t) => {
    const scale = await instrument(t, { kind: 'scale', tcp: 0 });
    const { socket, received } = await tcpClient(t, scale.port);
    const proper = 'S S     12.345 kg\r\n';

    await scale.control({ mode: 'split' });
    const before = received.chunks;
    socket.write('SI\r\n');
    assert.equal(await received.line(), proper);
    assert.ok(received.chunks - before > 1, 'split: one reply in several reads');

    await scale.control({ mode: 'normal', once: 'garbage' });
    socket.write('SI\r\nSI\r\n');
    const garbage = await received.line();
    assert.notEqual(garbage, proper);
    assert.equal(garbage.length, proper.length);
    assert.match(garbage.slice(0, -2), /^[\x20-\x7e]+$/);
    assert.equal(await received.line(), proper, 'once: only the next reply');

    await scale.control({ once: 'partial' });
    socket.write('SI\r\nSI\r\n');
    assert.equal(await received.line(), `${proper.slice(0, Math.floor(proper.length / 2))}${proper}`, 'partial: half a reply');

    await scale.control({ mode: 'silent' });
    const seen = scale.requests().length;
    socket.write('SI\r\n');
    await waitFor(() => scale.requests().length === seen + 1, 3000, 'the request in silent mode');
    await scale.control({ mode: 'normal' });
    socket.write('SI\r\n');
    assert.equal(await received.line(), proper);
    assert.equal(received.length, 0, 'silent: no reply to the request before');

    await scale.control({ mode: 'noise' });
    socket.write('SI\r\n');
    const noise = await received.bytes(proper.length);
    assert.ok(
      [...noise].every((byte) => byte === 0 || byte >= 0x80),
      `noise: 0x00, 0xFF or high bytes: ${noise.toString('hex')}`,
    );

    await scale.control({ mode: 'flood' });
    const flood = await received.bytes(4000);
    assert.ok(!flood.includes('\r') && !flood.includes('\n'), 'flood: no delimiter');
    assert.ok(
      [...flood].every((byte) => byte >= 0x20 && byte < 0x7f),
      'flood: printable bytes',
    );
    await scale.control({ mode: 'normal' });
    socket.write('SI\r\n');
    const rest = await received.line();
    assert.ok(rest.endsWith(proper), 'after the flood a proper reply');
    assert.ok(!/[\r\n]/.test(rest.slice(0, -proper.length)));
  });

  it('ascii units behind a TCP port: framing, checksums, NAK, multi-drop, setpoint; a new client replaces the old', async (t) => {
    const units = await instrument(t, { kind: 'ascii', tcp: 0, unitId: '01,02' });
    const first = await tcpClient(t, units.port);
    const { socket, received } = first;

    socket.write(Buffer.concat([Buffer.from('noise'), frame('01RD').subarray(0, 3)]));
    socket.write(frame('01RD').subarray(3));
    assert.deepEqual(await nextFrame(received), { body: '01RD T=+023.45 P=1013.2 ST=OK', valid: true });

    socket.write(Buffer.concat([frame('03RD'), frame('02GS')]));
    assert.deepEqual(await nextFrame(received), { body: '02GS SP=50.0', valid: true }, 'unit 03 is not on this line: no answer');
    assert.ok(units.requests().includes(frame('03RD').toString('latin1')));

    const bad = frame('01RD');
    bad[bad.length - 1]! ^= 0x01;
    socket.write(bad);
    assert.deepEqual(await received.bytes(1), Buffer.from([0x15]));

    socket.write(Buffer.concat([frame('02SP=150'), frame('02SP=25'), frame('02GS'), frame('01GS'), frame('01XY')]));
    assert.deepEqual(await nextFrame(received), { body: '02SP ERR', valid: true });
    assert.deepEqual(await nextFrame(received), { body: '02SP OK', valid: true });
    assert.deepEqual(await nextFrame(received), { body: '02GS SP=25.0', valid: true });
    assert.deepEqual(await nextFrame(received), { body: '01GS SP=50.0', valid: true });
    assert.deepEqual(await nextFrame(received), { body: '01ERR', valid: true });

    await units.control({ set: { temperature: -5.2, status: 'ALARM' }, unit: '02' });
    await units.control({ once: 'bad-checksum' });
    socket.write(Buffer.concat([frame('02RD'), frame('01RD')]));
    assert.deepEqual(await nextFrame(received), { body: '02RD T=-005.20 P=1013.2 ST=ALARM', valid: false });
    assert.deepEqual(await nextFrame(received), { body: '01RD T=+023.45 P=1013.2 ST=OK', valid: true });

    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const second = await tcpClient(t, units.port);
    await closed;
    await waitFor(() => units.clients() === 2, 3000, 'the second client');
    second.socket.write(frame('02GS'));
    assert.deepEqual(await nextFrame(second.received), { body: '02GS SP=25.0', valid: true });
    await units.control({ send: '\x02raw\x03' });
    assert.equal((await second.received.bytes(5)).toString('latin1'), '\x02raw\x03');
  });

  for (const [algorithm, format] of [
    ['sum8', 'binary'],
    ['lrc', 'hex'],
    ['crc16-modbus', 'binary'],
    ['crc16-modbus', 'hex'],
  ] as const) {
    it(`ascii checksum ${algorithm} (${format})`, async (t) => {
      const unit = await instrument(t, { kind: 'ascii', tcp: 0, unitId: '7', checksum: algorithm, checksumFormat: format });
      const { socket, received } = await tcpClient(t, unit.port);
      socket.write(frame('7RD', algorithm, format));
      assert.deepEqual(await nextFrame(received, algorithm, format), { body: '7RD T=+023.45 P=1013.2 ST=OK', valid: true });
      const wrong = frame('7RD', algorithm, format);
      wrong[wrong.length - 1]! ^= 0x01;
      socket.write(wrong);
      assert.deepEqual(await received.bytes(1), Buffer.from([0x15]), 'a frame with a wrong checksum: NAK');
    });
  }

  it('a GPS receiver streams GGA and RMC with valid checksums and the position it is set to', async (t) => {
    const gps = await instrument(t, { kind: 'nmea', tcp: 0, period: 20 });
    const { received } = await tcpClient(t, gps.port);
    const gga = nmeaFields(await received.line());
    const rmc = nmeaFields(await received.line());
    assert.ok(gga.valid && rmc.valid, 'checksums');
    assert.deepEqual(gga.fields.slice(2, 7), ['4807.0380', 'N', '01131.0000', 'E', '1']);
    assert.match(gga.fields[1]!, /^\d{6}\.\d{2}$/);
    assert.deepEqual([rmc.fields[0], ...rmc.fields.slice(2, 7)], ['GPRMC', 'A', '4807.0380', 'N', '01131.0000', 'E']);

    await gps.control({ set: { lat: -33.8688, lon: -151.2093, fix: 2 } });
    let fields: string[];
    do fields = nmeaFields(await received.line()).fields;
    while (fields[0] !== 'GPGGA' || fields[6] !== '2');
    assert.deepEqual(fields.slice(2, 6), ['3352.1280', 'S', '15112.5580', 'W']);

    await gps.control({ once: 'bad-checksum' });
    let good = 0;
    while (nmeaFields(await received.line()).valid) assert.ok(++good < 100, 'a sentence with a wrong checksum');
    for (let i = 0; i < 4; i++) assert.ok(nmeaFields(await received.line()).valid, 'once: only one sentence');

    await gps.control({ set: { fix: 0 } });
    do fields = nmeaFields(await received.line()).fields;
    while (fields[0] !== 'GPRMC' || fields[2] !== 'V');
    assert.deepEqual(fields.slice(3, 7), ['', '', '', ''], 'no fix: no position');
  });

  it('a serial line unplugged and plugged in again', async (t) => {
    const defer = cleanup(t);
    const line = await startSerialLine(tempDir(t));
    defer(() => line.stop());
    let scale = await startInstrument({ kind: 'scale', pty: line.device });
    defer(() => scale.stop());
    let { port, received } = await openPort(line.gateway);
    defer(() => closePort(port));
    port.write('SI\r\n');
    assert.equal(await received.line(), 'S S     12.345 kg\r\n');

    const closed = new Promise<void>((resolve) => port.once('close', () => resolve()));
    await line.unplug();
    assert.ok(!existsSync(line.gateway) && !existsSync(line.device));
    await closed;
    await waitFor(() => scale.errors().some((message) => message.startsWith('serial line lost')), 3000, 'the instrument to lose its line');
    await scale.stop();

    await line.replug();
    scale = await startInstrument({ kind: 'scale', pty: line.device });
    ({ port, received } = await openPort(line.gateway));
    port.write('SI\r\n');
    assert.equal(await received.line(), 'S S     12.345 kg\r\n');
  });
});
