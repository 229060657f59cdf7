// Late replies on RTU, which has no transaction ids (review of issue 12): a reply is known only by
// its place in the stream. After a timeout the next request waits until the late reply has
// arrived, or until the line has been quiet for one more timeout: on RTU over TCP on the same
// connection, on a serial line on the same port; both are lines of the serial-port registry
// (src/pipeline/serial-ports.ts).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it, type TestContext } from 'node:test';
import pino from 'pino';
import { SerialPort } from 'serialport';
import { rtuReplyFraming } from '../drivers/modbus/serial-port.js';
import type { TagReading } from '../src/pipeline/driver.js';
import { acquireTcpLine, SerialLineError } from '../src/pipeline/serial-ports.js';
import { cleanup, device, pollDevice, RawModbusServer, startPtyPair, withCrc } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

/**
 * A DeviceRunner polling the device every 100 ms (timeout 300 ms); returns the cycles it reads.
 * `link` is a TCP port (RTU over TCP) or the path of a serial port (RTU).
 */
function poll(defer: (fn: () => unknown) => void, link: number | string, retries: number, tags: Record<string, unknown>[]): TagReading[][] {
  const log = pino({ level: 'silent' });
  const connection =
    typeof link === 'number'
      ? { transport: 'rtu-over-tcp', host: '127.0.0.1', port: link }
      : { transport: 'rtu', path: link, baudRate: 9600 };
  return pollDevice(defer, device({ connection: { ...connection, timeout: 300, retries }, tags }), log).cycles;
}

/** An RTU request for `count` registers at `start` (FC3, unit 1). */
const readRequest = (start: number, count: number): Buffer => {
  const pdu = Buffer.from([1, 3, 0, 0, 0, 0]);
  pdu.writeUInt16BE(start, 2);
  pdu.writeUInt16BE(count, 4);
  return withCrc(pdu);
};

/** The reply to readRequest: register r holds 1000 + r. */
const readReply = (request: Buffer): Buffer => {
  const start = request.readUInt16BE(2);
  const count = request.readUInt16BE(4);
  const data = Buffer.alloc(2 * count);
  for (let i = 0; i < count; i++) data.writeUInt16BE(1000 + start + i, 2 * i);
  return withCrc(Buffer.concat([Buffer.from([request[0]!, request[1]!, data.length]), data]));
};

it('rtu over tcp: a late reply to block A is not taken as the reply to block B', async (t) => {
  const defer = cleanup(t);
  // A serial device: requests answered strictly in order; the 3rd request (block A, 2nd poll) takes
  // 450 ms, 150 ms past the timeout.
  let n = 0;
  let accepted = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    accepted++;
    sockets.add(socket);
    socket.on('error', () => undefined);
    let busyUntil = 0;
    let buffer = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      while (buffer.length >= 8) {
        const frame = buffer.subarray(0, 8);
        buffer = buffer.subarray(8);
        n++;
        const reply = readReply(frame);
        const now = Date.now();
        const at = Math.max(now, busyUntil) + (n === 3 ? 450 : 5);
        busyUntil = at;
        setTimeout(() => socket.destroyed || socket.write(reply), at - now);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  defer(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  const port = (server.address() as net.AddressInfo).port;

  const cycles = poll(defer, port, 0, [
    { name: 'a', address: '40001' },
    { name: 'b', address: '40201' },
  ]);
  await waitFor(() => cycles.length >= 12, 15_000, 'twelve cycles');
  const wrong = cycles.flat().filter((r) => r.quality === 'good' && r.tag === 'b' && r.value !== 1200);
  assert.deepEqual(wrong, [], `tag b (register 200 = 1200) got another register's value:\n${JSON.stringify(cycles)}`);
  // One cycle timed out; the next waited for the late reply and read both blocks, on the same connection.
  assert.deepEqual(
    cycles[1]!.map((r) => r.code),
    ['timeout', 'timeout'],
  );
  for (const cycle of cycles.slice(2, 12)) {
    assert.deepEqual(cycle, [
      { tag: 'a', value: 1000, quality: 'good' },
      { tag: 'b', value: 1200, quality: 'good' },
    ]);
  }
  assert.equal(accepted, 1, 'the connection was kept');
});

it('rtu over tcp: a request the device never answers: the retry goes out after one more quiet timeout, with its full timeout', async (t) => {
  const defer = cleanup(t);
  const raw = new RawModbusServer('rtu');
  const times: number[] = [];
  raw.misbehave = (request) => {
    times.push(Date.now());
    return request.n === 3 ? null : undefined;
  };
  await raw.start();
  defer(() => raw.stop());
  const cycles = poll(defer, raw.port, 1, [{ name: 'a', address: '40001' }]);
  await waitFor(() => cycles.length >= 6, 15_000, 'six cycles');
  // The retry of request 3 is request 4: sent when the line has been quiet for 300 ms after the
  // 300 ms timeout, and answered (not counted against its own timeout).
  assert.ok(times[3]! - times[2]! >= 550, `the retry went out ${times[3]! - times[2]!} ms after the request`);
  for (const cycle of cycles.slice(0, 6)) assert.deepEqual(cycle, [{ tag: 'a', value: 1000, quality: 'good' }]);
  assert.equal(raw.accepted, 1, 'the connection was kept');
});

it('the device-server line on its own: a request made while a late reply is owed goes out only once it has arrived', async (t) => {
  const defer = cleanup(t);
  const arrivals: { at: number; start: number }[] = [];
  let lateSentAt = 0;
  let accepted = 0;
  const server = net.createServer((socket) => {
    accepted++;
    socket.on('error', () => undefined);
    socket.on('data', (frame: Buffer) => {
      const start = frame.readUInt16BE(2);
      arrivals.push({ at: Date.now(), start });
      // The first request is answered after 150 ms (50 ms past the timeout), the second at once.
      if (arrivals.length === 1) {
        setTimeout(() => {
          lateSentAt = Date.now();
          socket.write(readReply(frame));
        }, 150);
      } else {
        socket.write(readReply(frame));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  defer(() => new Promise<void>((resolve) => server.close(() => resolve())));
  const lease = acquireTcpLine('127.0.0.1', (server.address() as net.AddressInfo).port, { name: 'late' });
  defer(() => lease.release());
  await lease.open();

  const request = readRequest(0, 2);
  await assert.rejects(
    lease.transact(request, { timeout: 100, frame: rtuReplyFraming(request) }),
    (error: unknown) => error instanceof SerialLineError && error.code === 'timeout' && error.received.length === 0,
  );
  // Asked for at once: held back until the late reply is in (and dropped).
  const reply = await lease.transact(request, { timeout: 1000, frame: rtuReplyFraming(request) });
  assert.equal(arrivals.length, 2);
  assert.ok(arrivals[1]!.at >= lateSentAt && lateSentAt > 0, 'the second request went out after the late reply');
  assert.deepEqual(reply, readReply(request));
  assert.equal(lease.isOpen, true);
  assert.equal(accepted, 1);
});

/**
 * A raw RTU device on the far end of a socat pty pair, answering strictly in order as a serial
 * device does: request n is answered `delay(n)` ms after it arrived (or after the reply before
 * it went out), or never when `delay` returns null. Returns the driver's end and when each
 * request arrived.
 */
async function serialDevice(
  t: TestContext,
  delay: (n: number) => number | null,
): Promise<{ path: string; arrivals: number[]; defer: (fn: () => unknown) => void }> {
  const defer = cleanup(t);
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-late-'));
  defer(() => rmSync(dir, { recursive: true, force: true }));
  const pty = await startPtyPair(dir);
  defer(() => pty.stop());
  const port = new SerialPort({ path: pty.b, baudRate: 9600, autoOpen: false });
  port.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => port.open((error) => (error ? reject(error) : resolve())));
  defer(() => new Promise<void>((resolve) => (port.isOpen ? port.close(() => resolve()) : resolve())));
  const raw = new RawModbusServer('rtu');
  const arrivals: number[] = [];
  let busyUntil = 0;
  raw.misbehave = (request, proper) => {
    const now = Date.now();
    arrivals.push(now);
    const ms = delay(request.n);
    if (ms === null) return null;
    const at = Math.max(now, busyUntil) + ms;
    busyUntil = at;
    setTimeout(() => port.isOpen && port.write(proper), at - now);
    return null; // sent by the timer above
  };
  raw.serve(port, () => undefined);
  return { path: pty.a, arrivals, defer };
}

it('rtu on a serial line: a late reply to block A is not taken as the reply to block B', async (t) => {
  // The reviewer's case: the 3rd request (block A, 2nd poll) is answered after 450 ms, 150 ms
  // past the timeout, the others after 5 ms, strictly in order.
  const { path, defer } = await serialDevice(t, (n) => (n === 3 ? 450 : 5));
  const cycles = poll(defer, path, 0, [
    { name: 'a', address: '40001' },
    { name: 'b', address: '40201' },
  ]);
  await waitFor(() => cycles.length >= 12, 15_000, 'twelve cycles');
  const wrong = cycles
    .flat()
    .filter((r) => r.quality === 'good' && ((r.tag === 'a' && r.value !== 1000) || (r.tag === 'b' && r.value !== 1200)));
  assert.deepEqual(wrong, [], `a tag got another register's value:\n${JSON.stringify(cycles)}`);
  // One cycle timed out; the next waited for the late reply and read both blocks.
  assert.deepEqual(
    cycles[1]!.map((r) => r.code),
    ['timeout', 'timeout'],
  );
  for (const cycle of [cycles[0]!, ...cycles.slice(2, 12)]) {
    assert.deepEqual(cycle, [
      { tag: 'a', value: 1000, quality: 'good' },
      { tag: 'b', value: 1200, quality: 'good' },
    ]);
  }
});

it('rtu on a serial line: a device that never answers still gets its retries, each after one more quiet timeout and with its full timeout', async (t) => {
  // The first poll's request and both retries are never answered; later requests are answered
  // after 200 ms, within their 300 ms timeout only if it starts when the request goes out.
  const { path, arrivals, defer } = await serialDevice(t, (n) => (n <= 3 ? null : 200));
  const cycles = poll(defer, path, 2, [{ name: 'a', address: '40001' }]);
  await waitFor(() => cycles.length >= 4, 15_000, 'four cycles');
  const first = cycles[0]!.map(({ tag, quality, code, reason }) => ({ tag, quality, code, reason }));
  assert.deepEqual(first, [{ tag: 'a', quality: 'bad', code: 'timeout', reason: 'timeout: no response within 300 ms (3 attempts)' }]);
  // Each retry and the next poll's request went out once the line had been quiet for another
  // timeout after the timeout (600 ms, less a few ms of pty latency; without the wait: 300).
  const gaps = arrivals.slice(1, 4).map((at, i) => at - arrivals[i]!);
  assert.ok(
    gaps.every((gap) => gap >= 570),
    `requests went out ${gaps.join(', ')} ms after the one before`,
  );
  for (const cycle of cycles.slice(1, 4)) assert.deepEqual(cycle, [{ tag: 'a', value: 1000, quality: 'good' }]);
});
