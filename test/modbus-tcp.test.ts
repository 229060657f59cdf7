// The driver against a real Modbus TCP server (modbus-serial's ServerTCP) on 127.0.0.1.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { DriverError, type TagReading } from '../src/pipeline/driver.js';
import { createDriver, type ModbusDriver, ModbusReadPlan, openLineCount } from '../drivers/modbus/index.js';
import type { ModbusTag } from '../drivers/modbus/config.js';
import { cleanup, device, sleep, TcpTestServer, testContext, waitFor } from './helpers/modbus-servers.js';

function byName(readings: TagReading[]): Record<string, TagReading> {
  return Object.fromEntries(readings.map((r) => [r.tag, r]));
}

function values(readings: TagReading[]): Record<string, unknown> {
  return Object.fromEntries(readings.map((r) => [r.tag, r.quality === 'good' ? r.value : `BAD: ${r.reason}`]));
}

function tcp(port: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { transport: 'tcp', host: '127.0.0.1', port, timeout: 300, retries: 0, ...extra };
}

function fillMemory(server: TcpTestServer): void {
  const h = server.holding;
  // Literal wire values (hand-checked), so the test does not lean on the codec it verifies.
  h[0] = 0x1234; // uint16 4660
  h[1] = 0xfffb; // int16 -5
  h.splice(2, 2, 0xfffe, 0x7960); // int32 ABCD -100000
  h.splice(4, 2, 0x5e00, 0xb2d0); // uint32 CDAB 3000000000 (0xB2D05E00)
  h.splice(6, 2, 0x3fc0, 0x0000); // float32 ABCD 1.5
  h.splice(8, 2, 0x0000, 0xc010); // float32 CDAB -2.25
  h.splice(10, 2, 0x6040, 0x0000); // float32 BADC 3.5 (0x40600000)
  h.splice(12, 2, 0x0080, 0xc842); // float32 DCBA 100.25 (0x42C88000)
  h.splice(14, 4, 0xffdf, 0xffff, 0xffff, 0xffff); // int64 ABCD -(2^53) - 1 = 0xFFDFFFFFFFFFFFFF
  h.splice(18, 4, 0xfeff, 0xffff, 0xffff, 0xffff); // uint64 DCBA 2^64 - 2
  h.splice(22, 4, 0x5769, 0x8b14, 0xbf0a, 0x4005); // float64 CDAB e = 0x4005BF0A8B145769
  h.splice(26, 4, 0x504c, 0x432d, 0x3031, 0x0000); // string "PLC-01" + NULs
  h.splice(30, 2, 0x6261, 0x6320); // string BADC "ab c": bytes swapped inside each register
  h.splice(32, 3, 0x0001, 0xfffe, 0x0003); // int16[3] 1, -2, 3
  h[35] = 0b1000_0000_0000_0001; // bits 0 and 15
  h.splice(36, 4, 0x3f80, 0x0000, 0x4000, 0x0000); // float32[2] 1, 2
  server.input.splice(100, 2, 0x0000, 0x0007); // int32 7
  server.input[102] = 0xabcd;
  for (const i of [0, 2, 3, 15]) server.coils[i] = true;
  for (const i of [1, 4]) server.discrete[i] = true;
}

describe('modbus tcp driver against ServerTCP', () => {
  const server = new TcpTestServer();
  const context = testContext();

  before(async () => {
    fillMemory(server);
    await server.start();
  });
  after(async () => {
    await server.stop();
  });

  it('reads every type, byte order, array, string, bit, coil and discrete input', async (t) => {
    const defer = cleanup(t);
    const config = device({
      connection: tcp(server.port),
      tags: [
        { name: 'u16', address: '40001' },
        { name: 'i16', address: '40002', type: 'int16' },
        { name: 'i32', address: '40003', type: 'int32' },
        { name: 'u32cdab', address: '40005', type: 'uint32', byteOrder: 'CDAB' },
        { name: 'f32', address: 6, area: 'holding', type: 'float32' },
        { name: 'f32cdab', address: 8, area: 'holding', type: 'float32', byteOrder: 'CDAB' },
        { name: 'f32badc', address: 10, area: 'holding', type: 'float32', byteOrder: 'BADC' },
        { name: 'f32dcba', address: 12, area: 'holding', type: 'float32', byteOrder: 'DCBA' },
        { name: 'i64', address: 14, area: 'holding', type: 'int64' },
        { name: 'u64dcba', address: 18, area: 'holding', type: 'uint64', byteOrder: 'DCBA' },
        { name: 'f64cdab', address: 22, area: 'holding', type: 'float64', byteOrder: 'CDAB' },
        { name: 'text', address: 26, area: 'holding', type: 'string', length: 4 },
        { name: 'textbadc', address: 30, area: 'holding', type: 'string', length: 2, byteOrder: 'BADC' },
        { name: 'arr', address: 32, area: 'holding', type: 'int16', count: 3 },
        { name: 'bit0', address: '40036.0' },
        { name: 'bit1', address: 35, area: 'holding', bit: 1 },
        { name: 'bit15', address: 35, area: 'holding', bit: 15 },
        { name: 'farr', address: 36, area: 'holding', type: 'float32', count: 2 },
        { name: 'in32', address: '30101', type: 'int32' },
        { name: 'in16', address: '30103' },
        { name: 'coil0', address: '00001' },
        { name: 'coils', address: 0, area: 'coil', count: 16 },
        { name: 'di1', address: '10002' },
        { name: 'di', address: 0, area: 'discrete', count: 5 },
      ],
    });
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    assert.equal(driver.connected, true);
    const plan = driver.plan(config.tags);
    assert.equal(
      plan.describe(),
      '4 requests: holding 0..39 (40 regs), input 100..102 (3 regs), coils 0..15 (16 bits), discrete 0..4 (5 bits)',
    );
    const readings = await driver.read(plan);
    assert.deepEqual(values(readings), {
      u16: 0x1234,
      i16: -5,
      i32: -100000,
      u32cdab: 3000000000,
      f32: 1.5,
      f32cdab: -2.25,
      f32badc: 3.5,
      f32dcba: 100.25,
      i64: -(2n ** 53n) - 1n,
      u64dcba: 2n ** 64n - 2n,
      f64cdab: Math.E,
      text: 'PLC-01',
      textbadc: 'ab c',
      arr: [1, -2, 3],
      bit0: true,
      bit1: false,
      bit15: true,
      farr: [1, 2],
      in32: 7,
      in16: 0xabcd,
      coil0: true,
      coils: [true, false, true, true, false, false, false, false, false, false, false, false, false, false, false, true],
      di1: true,
      di: [false, true, false, false, true],
    });
    // Readings come back in the order of the plan's tags.
    assert.deepEqual(
      readings.map((r) => r.tag),
      config.tags.map((tag) => tag.name),
    );
  });

  it('writes every kind and the server memory shows it', async (t) => {
    const defer = cleanup(t);
    const config = device({
      connection: tcp(server.port, { byteOrder: 'CDAB' }),
      tags: [
        { name: 'coil', address: 500, area: 'coil', writable: true },
        { name: 'coils', address: 510, area: 'coil', count: 10, writable: true },
        { name: 'u16', address: 500, area: 'holding', writable: true },
        { name: 'i16arr', address: 501, area: 'holding', type: 'int16', count: 2, writable: true },
        { name: 'f32', address: 503, area: 'holding', type: 'float32', writable: true },
        { name: 'f32abcd', address: 505, area: 'holding', type: 'float32', byteOrder: 'ABCD', writable: true },
        { name: 'i64', address: 507, area: 'holding', type: 'int64', byteOrder: 'DCBA', writable: true },
        { name: 'f64', address: 511, area: 'holding', type: 'float64', byteOrder: 'BADC', writable: true },
        { name: 'u32arr', address: 515, area: 'holding', type: 'uint32', count: 2, writable: true },
        { name: 'text', address: 520, area: 'holding', type: 'string', length: 3, writable: true },
        { name: 'bit3', address: 530, area: 'holding', bit: 3, writable: true },
        { name: 'bit0', address: 530, area: 'holding', bit: 0, writable: true },
        // The config refuses "writable" on these two; the driver refuses writes to them all the same.
        { name: 'in', address: 0, area: 'input' },
        { name: 'di', address: 0, area: 'discrete' },
      ],
    });
    const tags = Object.fromEntries(config.tags.map((tag) => [tag.name, tag])) as Record<string, ModbusTag>;
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    server.writes.length = 0;

    await driver.write(tags.coil!, true);
    assert.equal(server.coils[500], true);
    await driver.write(tags.coil!, false);
    assert.equal(server.coils[500], false);
    const pattern = [true, false, false, true, true, false, true, false, false, true];
    await driver.write(tags.coils!, pattern);
    assert.deepEqual(server.coils.slice(510, 520), pattern);

    await driver.write(tags.u16!, 54321);
    assert.deepEqual(server.writes.at(-1), { fc: 6, address: 500, values: [54321] });
    await driver.write(tags.i16arr!, [-1, 2]);
    assert.deepEqual(server.writes.at(-1), { fc: 16, address: 501, values: [0xffff, 2] });
    await driver.write(tags.f32!, 1.5); // device order CDAB
    assert.deepEqual(server.holding.slice(503, 505), [0x0000, 0x3fc0]);
    await driver.write(tags.f32abcd!, 1.5);
    assert.deepEqual(server.holding.slice(505, 507), [0x3fc0, 0x0000]);
    await driver.write(tags.i64!, 0x0102030405060708n);
    assert.deepEqual(server.holding.slice(507, 511), [0x0807, 0x0605, 0x0403, 0x0201]);
    await driver.write(tags.f64!, 1);
    assert.deepEqual(server.holding.slice(511, 515), [0xf03f, 0, 0, 0]);
    await driver.write(tags.u32arr!, [1, 0x10002]);
    assert.deepEqual(server.holding.slice(515, 519), [1, 0, 2, 1]);
    await driver.write(tags.text!, 'Hello');
    assert.deepEqual(server.holding.slice(520, 523), [0x4865, 0x6c6c, 0x6f00]);

    server.holding[530] = 0xff00;
    await driver.write(tags.bit3!, true);
    assert.equal(server.holding[530], 0xff08);
    await driver.write(tags.bit0!, true);
    await driver.write(tags.bit3!, false);
    assert.equal(server.holding[530], 0xff01, 'read-modify-write keeps the other bits');

    // Every written value reads back identically.
    const readings = byName(
      await driver.read(driver.plan(config.tags.filter((tag) => tag.address.area !== 'input' && tag.address.area !== 'discrete'))),
    );
    assert.deepEqual(Object.fromEntries(Object.entries(readings).map(([k, r]) => [k, r.value])), {
      coil: false,
      coils: pattern,
      u16: 54321,
      i16arr: [-1, 2],
      f32: 1.5,
      f32abcd: 1.5,
      i64: 0x0102030405060708n,
      f64: 1,
      u32arr: [1, 0x10002],
      text: 'Hello',
      bit3: false,
      bit0: true,
    });

    await assert.rejects(
      driver.write(tags.in!, 1),
      (error: unknown) => error instanceof DriverError && error.code === 'read-only' && /read-only/.test(error.message),
    );
    await assert.rejects(driver.write(tags.di!, true), (error: unknown) => error instanceof DriverError && error.code === 'read-only');
    await assert.rejects(
      driver.write(tags.u16!, 70000),
      (error: unknown) => error instanceof DriverError && error.code === 'invalid-value' && /out of range/.test(error.message),
    );
    await assert.rejects(
      driver.write(tags.text!, 'far too long'),
      (error: unknown) => error instanceof DriverError && error.code === 'invalid-value',
    );
  });

  it('an illegal address inside a block only spoils its tag, and later polls avoid it', async (t) => {
    const defer = cleanup(t);
    server.illegal.set('holding', new Set([45]));
    defer(() => server.illegal.delete('holding'));
    const config = device({
      connection: tcp(server.port, { unitId: 3 }),
      tags: [
        { name: 'a', address: 40, area: 'holding' },
        { name: 'b', address: 42, area: 'holding', type: 'uint32' },
        { name: 'hole', address: 45, area: 'holding' },
        { name: 'c', address: 47, area: 'holding' },
        { name: 'd', address: 49, area: 'holding', type: 'int16' },
      ],
    });
    server.holding.splice(40, 10, 1, 0, 0, 2, 0, 0, 0, 3, 0, 0xffff);
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(config.tags);
    assert.equal(plan.describe(), '1 request: holding 40..49 (10 regs)');

    const requests = (): number => server.requests.filter((r) => r.unit === 3).length;
    const first = await driver.read(plan);
    const firstCost = requests();
    assert.deepEqual(values(first), { a: 1, b: 2, hole: 'BAD: exception 2: illegal data address', c: 3, d: -1 });

    const second = await driver.read(plan);
    const secondCost = requests() - firstCost;
    assert.deepEqual(values(second), values(first));
    assert.ok(secondCost < firstCost, `second poll used ${secondCost} requests, first ${firstCost}`);
    assert.equal(secondCost, 2);
    assert.equal(
      plan.describe(),
      '2 requests: holding 40..43 (4 regs), holding 47..49 (3 regs); known illegal addresses: holding 45..45 (1 tag not requested)',
    );
    assert.deepEqual(byName(second).hole, {
      tag: 'hole',
      quality: 'bad',
      reason: 'exception 2: illegal data address',
      code: 'known-illegal-address',
    });
    // Nothing on the wire touches address 45 any more.
    assert.ok(server.requests.slice(-secondCost).every((r) => r.start > 45 || r.start + r.count <= 45));
  });

  it('an unmapped gap is learnt as well: both neighbours stay good', async (t) => {
    const defer = cleanup(t);
    server.illegal.set('input', new Set([203, 204]));
    defer(() => server.illegal.delete('input'));
    const config = device({
      connection: tcp(server.port, { unitId: 4 }),
      tags: [
        { name: 'x', address: 200, area: 'input', type: 'uint32' },
        { name: 'y', address: 206, area: 'input' },
      ],
    });
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(config.tags);
    assert.equal(plan.describe(), '1 request: input 200..206 (7 regs)');
    const first = await driver.read(plan);
    assert.deepEqual(
      first.map((r) => r.quality),
      ['good', 'good'],
    );
    await driver.read(plan);
    assert.equal(
      plan.describe(),
      '2 requests: input 200..201 (2 regs), input 206..206 (1 reg); known illegal addresses: input 202..205 (not read across)',
    );
  });

  it('maps exception responses to readable reasons per tag', async (t) => {
    const defer = cleanup(t);
    const codes: Record<number, string> = {
      600: 'exception 1: illegal function',
      620: 'exception 3: illegal data value',
      640: 'exception 4: server device failure',
      660: 'exception 6: server device busy',
      680: 'exception 10: gateway path unavailable',
      700: 'exception 11: gateway target device failed to respond',
    };
    for (const [address, reason] of Object.entries(codes))
      server.exceptions.set(`holding:${address}`, Number(/exception (\d+)/.exec(reason)![1]));
    defer(() => server.exceptions.clear());
    const config = device({
      connection: tcp(server.port),
      tags: [
        ...Object.keys(codes).map((address) => ({ name: `t${address}`, address: Number(address), area: 'holding' })),
        { name: 'fine', address: '40001' },
      ],
    });
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    const readings = byName(await driver.read(driver.plan(config.tags)));
    for (const [address, reason] of Object.entries(codes)) {
      assert.equal(readings[`t${address}`]!.quality, 'bad');
      assert.equal(readings[`t${address}`]!.reason, reason);
    }
    assert.deepEqual(readings.fine, { tag: 'fine', value: 0x1234, quality: 'good' });

    // The same for a write.
    await assert.rejects(
      driver.write({ ...config.tags[2]!, writable: true }, 1),
      (error: unknown) =>
        error instanceof DriverError &&
        error.code === 'exception-4' &&
        /server device failure/.test(error.message) &&
        !error.connectionLost,
    );
  });

  it('a stopped server means connectionLost; after a restart connect + read work again', async (t) => {
    const defer = cleanup(t);
    const own = new TcpTestServer();
    fillMemory(own);
    await own.start();
    defer(() => own.stop());
    const config = device({ connection: tcp(own.port, { timeout: 3000 }), tags: [{ name: 'u16', address: '40001' }] });
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(config.tags);
    assert.equal((await driver.read(plan))[0]!.value, 0x1234);

    await own.stop();
    await waitFor('the driver to notice the closed socket', () => !driver.connected, 5000).catch(() => undefined);
    await assert.rejects(driver.read(plan), (error: unknown) => error instanceof DriverError && error.connectionLost);
    assert.equal(driver.connected, false);

    // What the core does: close, then connect again with back-off until it works.
    await driver.close();
    await assert.rejects(driver.connect(), (error: unknown) => error instanceof DriverError && /ECONNREFUSED/.test(error.message));
    assert.equal(driver.connected, false);

    own.holding[0] = 0x4321;
    await own.start(own.port);
    await driver.connect();
    assert.equal(driver.connected, true);
    assert.equal((await driver.read(plan))[0]!.value, 0x4321);

    // A request in flight when the peer goes away fails as a lost connection too.
    own.silentUnits.add(1);
    const pending = driver.read(plan);
    await sleep(50);
    await own.stop();
    await assert.rejects(pending, (error: unknown) => error instanceof DriverError && error.connectionLost);
  });

  it('two unit ids on one host:port share one connection; a silent one times out, then is skipped', async (t) => {
    const defer = cleanup(t);
    server.silentUnits.add(9);
    defer(() => server.silentUnits.delete(9));
    const before = openLineCount();
    const live = createDriver(
      device({ name: 'live', connection: tcp(server.port, { unitId: 1, timeout: 1000 }), tags: [{ name: 'u16', address: '40001' }] }),
      context,
    );
    const silentConfig = device({
      name: 'silent',
      connection: tcp(server.port, { unitId: 9, timeout: 150, retries: 1, backoffAfterTimeouts: 2 }),
      tags: [
        { name: 's1', address: '40001' },
        { name: 's2', address: '30001' },
      ],
    });
    const silent = createDriver(silentConfig, context);
    defer(async () => {
      await live.close();
      await silent.close();
    });
    await live.connect();
    await silent.connect();
    assert.equal(openLineCount(), before + 1, 'one shared line');
    await waitFor('one connection on the server', () => server.connections >= 1);
    const livePlan = live.plan(device({ connection: tcp(server.port), tags: [{ name: 'u16', address: '40001' }] }).tags);
    const silentPlan = silent.plan(silentConfig.tags);
    assert.ok(silentPlan instanceof ModbusReadPlan && silentPlan.requestCount === 2);

    const reasons: string[] = [];
    for (let poll = 0; poll < 4; poll++) {
      const [liveReadings, silentReadings]: TagReading[][] = await Promise.all([live.read(livePlan), silent.read(silentPlan)]);
      assert.deepEqual(liveReadings, [{ tag: 'u16', value: 0x1234, quality: 'good' }]);
      assert.ok(silentReadings.every((r) => r.quality === 'bad'));
      reasons.push(silentReadings[0]!.reason!);
      // The second block is not even asked for once the first one timed out.
      assert.equal(silentReadings[1]!.reason, silentReadings[0]!.reason);
    }
    // From the poll that starts the back-off on, one reason for the whole episode (the next try is in nextTryAt).
    const skipped = 'device skipped: no reply in 2 polls in a row; tried again with growing pauses until it answers';
    assert.deepEqual(reasons, ['timeout: no response within 150 ms (2 attempts)', skipped, skipped, skipped]);
    assert.ok((silent as ModbusDriver).nextTryAt! > Date.now());
    assert.equal((live as ModbusDriver).nextTryAt, undefined);
    // Skipped polls do not touch the line.
    const sent = (silent as ModbusDriver).lineRequestCount;
    await silent.read(silentPlan);
    assert.equal((silent as ModbusDriver).lineRequestCount, sent);
    assert.equal(server.connections, 1);

    // Closing one device keeps the shared line open for the other.
    await silent.close();
    assert.equal(live.connected, true);
    assert.equal((await live.read(livePlan))[0]!.quality, 'good');
    await sleep(0);
  });

  it('the skip interval grows, is capped, and ends as soon as the device answers again', async (t) => {
    const defer = cleanup(t);
    server.silentUnits.add(11);
    defer(() => server.silentUnits.delete(11));
    // Only the clock the driver reads is mocked; the request timeouts stay real (and short).
    t.mock.timers.enable({ apis: ['Date'], now: Date.now() });
    const config = device({
      connection: tcp(server.port, { unitId: 11, timeout: 100, backoffAfterTimeouts: 1 }),
      tags: [{ name: 'u16', address: '40001' }],
    });
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    const plan = driver.plan(config.tags);
    const reading = async (): Promise<string> => {
      // What the core does when the driver dropped its connection.
      if (!driver.connected) {
        await driver.close();
        await driver.connect();
      }
      const [result] = await driver.read(plan);
      return `${result!.code}: ${result!.reason}`;
    };

    assert.equal(await reading(), 'timeout: timeout: no response within 100 ms');
    // Nothing answered on the connection: it is renewed once, the device probed on the new one.
    assert.equal(driver.connected, false);
    // Still silent: skipped from here on, with one reason for the whole episode, probes included.
    const skipped = 'device skipped: no reply in 1 poll in a row; tried again with growing pauses until it answers';
    const pauses: number[] = [];
    for (let probe = 0; probe < 6; probe++) {
      assert.equal(await reading(), `timeout: ${skipped}`); // a probe that timed out
      pauses.push((driver as ModbusDriver).nextTryAt! - Date.now());
      assert.equal(await reading(), `skipped: ${skipped}`);
      t.mock.timers.tick(61_000); // past any skip interval: the next read probes the device
    }
    assert.deepEqual(
      pauses,
      [5, 10, 20, 40, 60, 60].map((s) => s * 1000),
    );
    assert.equal((driver as ModbusDriver).nextTryAt, undefined, 'due now');

    server.silentUnits.delete(11);
    t.mock.timers.tick(61_000);
    assert.deepEqual(await driver.read(plan), [{ tag: 'u16', value: 0x1234, quality: 'good' }]);
    assert.deepEqual(await driver.read(plan), [{ tag: 'u16', value: 0x1234, quality: 'good' }]);
  });

  it('rtu over tcp: frames with a wrong CRC are retried on the same connection and then reported as bad replies', async (t) => {
    const defer = cleanup(t);
    // A "device" on an RTU-over-TCP link that answers every request with a frame whose CRC is wrong.
    let frames = 0;
    const garbage = net.createServer((socket) => {
      socket.on('data', (request: Buffer) => {
        frames++;
        socket.write(Buffer.from([request[0]!, 0x03, 0x02, 0x12, 0x34, 0x00, 0x00]));
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => garbage.listen(0, '127.0.0.1', resolve));
    defer(() => new Promise<void>((resolve) => garbage.close(() => resolve())));
    const address = garbage.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const config = device({
      connection: { transport: 'rtu-over-tcp', host: '127.0.0.1', port, timeout: 500, retries: 2 },
      tags: [{ name: 'u16', address: '40001' }],
    });
    const driver = createDriver(config, context);
    defer(() => driver.close());
    await driver.connect();
    const readings = await driver.read(driver.plan(config.tags));
    assert.deepEqual(readings, [{ tag: 'u16', quality: 'bad', reason: 'bad reply: CRC error', code: 'bad-reply' }]);
    assert.equal(frames, 3, 'one request and two retries');
    assert.equal(driver.connected, true);
  });

  it('refuses to read a plan made by another driver and reports not-connected as connectionLost', async () => {
    const config = device({ connection: tcp(server.port), tags: [{ name: 'u16', address: '40001' }] });
    const a = createDriver(config, context);
    const b = createDriver(config, context);
    await assert.rejects(a.read(a.plan(config.tags)), (error: unknown) => error instanceof DriverError && error.connectionLost);
    await a.connect();
    try {
      await assert.rejects(a.read(b.plan(config.tags)), (error: unknown) => error instanceof DriverError && error.code === 'foreign-plan');
    } finally {
      await a.close();
      await b.close();
    }
  });
});
