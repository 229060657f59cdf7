// The OPC UA driver against a real node-opcua server in this process: subscription values with
// their types, qualities and timestamps; bad nodes among good ones; the server's operation limits;
// data-change filters; polling; writes read back. Everything runs through the core's DeviceRunner
// as in the gateway.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DriverError } from '../src/pipeline/driver.js';
import { createDriver } from '../drivers/opcua/index.js';
import { waitFor } from './helpers/net.js';
import { GUID_NODE, LINE2_NAMESPACE, NUMERIC_NODE, OPAQUE_NODE, startTestServer, type RunningTestServer } from './helpers/opcua-server.js';
import { parseDevice, runDevice, testLog, type RunningDevice } from './helpers/opcua-runner.js';

const TYPED = [
  'Bool',
  'SByte',
  'Byte',
  'Int16',
  'UInt16',
  'Int32',
  'UInt32',
  'Int64',
  'UInt64',
  'Float',
  'Double',
  'String',
  'DateTime',
  'ByteString',
  'DoubleArray',
  'Int32Array',
  'StringArray',
  'BoolArray',
];
const line = (name: string) => `ns=1;s=Line1.${name}`;

describe('OPC UA driver against a node-opcua server', () => {
  const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-opcua-'));
  let server: RunningTestServer;
  const running: RunningDevice[] = [];
  const start = (raw: Record<string, unknown>) => {
    const device = runDevice({ connection: { endpointUrl: server.endpointUrl }, ...raw }, join(folder, 'gateway'));
    running.push(device);
    return device;
  };

  before(async () => {
    // Small operation limits, so batching is exercised with a handful of tags.
    server = await startTestServer({ pkiDir: folder, maxNodesPerRead: 4, maxMonitoredItemsPerCall: 5 });
  });

  after(async () => {
    await Promise.all(running.map((device) => device.stop()));
    await server?.stop();
    rmSync(folder, { recursive: true, force: true });
  });

  it('subscription: every type arrives with the right JS type, good quality and the source timestamp', async () => {
    const device = start({ pollInterval: '200ms', tags: TYPED.map((name) => ({ name, nodeId: line(name) })) });
    // Two values of each: the initial one and a change.
    await waitFor(
      () => TYPED.every((name) => device.history(name).filter((reading) => reading.quality === 'good').length >= 2),
      10_000,
      'two good values of every tag',
    );
    const value = (name: string) => device.last(name)!.value;
    assert.equal(typeof value('Bool'), 'boolean');
    for (const name of ['SByte', 'Byte', 'Int16', 'UInt16', 'Int32', 'UInt32', 'Float', 'Double'])
      assert.equal(typeof value(name), 'number', name);
    assert.ok((value('SByte') as number) <= 0 && (value('SByte') as number) >= -99);
    assert.ok((value('UInt16') as number) >= 60000);
    assert.ok((value('UInt32') as number) > 4_000_000_000);
    assert.ok(Number.isInteger((value('Float') as number) - 0.5));
    // 64-bit integers beyond 2^53 come as exact bigints.
    assert.equal(typeof value('Int64'), 'bigint');
    assert.ok((value('Int64') as bigint) < -(2n ** 60n));
    assert.equal(typeof value('UInt64'), 'bigint');
    assert.ok((value('UInt64') as bigint) > 2n ** 63n);
    assert.match(value('String') as string, /^tick \d+$/);
    assert.match(value('DateTime') as string, /^2026-01-01T00:\d\d:\d\d\.000Z$/);
    const bytes = Buffer.from(value('ByteString') as string, 'base64');
    assert.deepEqual([...bytes.subarray(0, 3)], [1, 2, 3]);
    const doubles = value('DoubleArray') as number[];
    assert.equal(doubles.length, 3);
    assert.equal(doubles[1], doubles[0]! + 0.5);
    assert.deepEqual(value('Int32Array'), [(value('Int32Array') as number[])[0], -(value('Int32Array') as number[])[0]!]);
    assert.equal((value('StringArray') as string[])[0], 'a');
    assert.equal((value('BoolArray') as boolean[])[0], true);
    for (const name of TYPED) {
      const reading = device.last(name)!;
      assert.equal(reading.quality, 'good', name);
      assert.ok(
        reading.sourceTs !== undefined && Math.abs(reading.sourceTs - Date.now()) < 10_000,
        `${name} carries the server's source timestamp`,
      );
    }
    // Values keep changing (the server ticks every 100 ms, publishing every 200 ms).
    const before = device.history('Double').length;
    await waitFor(() => device.history('Double').length >= before + 3, 5_000, 'more changes');
  });

  it('an unknown NodeId and an unreadable node are bad with the reason; the others keep working', async () => {
    const device = start({
      pollInterval: '100ms',
      tags: [
        { name: 'double', nodeId: line('Double') },
        { name: 'unknown', nodeId: line('DoesNotExist') },
        { name: 'secret', nodeId: line('Secret') },
        { name: 'uncertain', nodeId: line('Uncertain') },
        { name: 'guid', nodeId: GUID_NODE },
        { name: 'opaque', nodeId: OPAQUE_NODE },
        { name: 'numeric', nodeId: NUMERIC_NODE },
      ],
    });
    await waitFor(
      () =>
        ['unknown', 'secret', 'uncertain', 'guid', 'opaque', 'numeric'].every((tag) => device.last(tag)) &&
        device.history('double').length >= 3,
      10_000,
      'all tags reported',
    );
    const unknown = device.last('unknown')!;
    assert.equal(unknown.quality, 'bad');
    assert.equal(unknown.code, 'BadNodeIdUnknown');
    assert.match(unknown.reason!, /^BadNodeIdUnknown: /);
    assert.equal(device.last('secret')!.quality, 'bad');
    assert.equal(device.last('secret')!.code, 'BadNotReadable');
    const uncertain = device.last('uncertain')!;
    assert.equal(uncertain.quality, 'uncertain');
    assert.equal(uncertain.value, 42.5);
    assert.equal(uncertain.code, 'UncertainLastUsableValue');
    assert.deepEqual([device.last('guid')!.value, device.last('opaque')!.value, device.last('numeric')!.value], [11, 22, 33]);
    assert.ok(device.history('double').every((reading) => reading.quality === 'good'));
    assert.equal(device.runner.health.state, 'connected');
  });

  it('items are created in chunks of MaxMonitoredItemsPerCall, grouped by their monitoring settings', async () => {
    // 12 tags, a limit of 5 per call: 4 tags with their own settings (1 call) + 8 others (5 + 3).
    const tags = [...TYPED.slice(0, 12)].map((name, index) => ({
      name,
      nodeId: line(name),
      ...(index % 3 === 0 ? { samplingInterval: 50, queueSize: 2 } : {}),
    }));
    const calls = server.requests('CreateMonitoredItemsRequest');
    const device = start({ pollInterval: '100ms', tags });
    await waitFor(() => tags.every((tag) => device.last(tag.name)?.quality === 'good'), 10_000, 'every tag good');
    assert.equal(server.requests('CreateMonitoredItemsRequest') - calls, 3);
  });

  it('data-change filter: an absolute deadband on the server; a percent deadband without EURange is refused with the reason', async () => {
    const device = start({
      pollInterval: '100ms',
      tags: [
        // Double grows by 0.1 every 100 ms: with a deadband of 0.45 only every 5th value is a change.
        { name: 'coarse', nodeId: line('Double'), samplingInterval: 0, dataChangeFilter: { deadband: { absolute: 0.45 } } },
        { name: 'fine', nodeId: line('Double'), samplingInterval: 0 },
        { name: 'percent', nodeId: line('Double'), dataChangeFilter: { deadband: { percent: 5 } } },
      ],
    });
    await waitFor(() => device.history('coarse').length >= 4 && device.last('percent') !== undefined, 10_000, 'filtered values');
    const coarse = device.history('coarse').map((reading) => reading.value as number);
    for (let i = 1; i < coarse.length; i++)
      assert.ok(coarse[i]! - coarse[i - 1]! > 0.45 - 1e-9, `${coarse[i]} - ${coarse[i - 1]} beyond the deadband`);
    assert.ok(
      device.history('fine').length > 2 * coarse.length,
      `unfiltered ${device.history('fine').length} vs filtered ${coarse.length}`,
    );
    const percent = device.last('percent')!;
    assert.equal(percent.quality, 'bad');
    assert.match(percent.code!, /^Bad(MonitoredItemFilterUnsupported|FilterNotAllowed|DeadbandFilterInvalid)$/);
  });

  it("polling: the Read service in batches of the server's MaxNodesPerRead, bad nodes bad, the rest good", async () => {
    const tags = [...TYPED.map((name) => ({ name, nodeId: line(name) })), { name: 'unknown', nodeId: line('Nope') }];
    const device = start({ mode: 'polling', pollInterval: '200ms', tags });
    await waitFor(() => device.history('Double').length >= 3, 10_000, 'three polls');
    // 19 nodes at 4 per Read = 5 requests per poll; count requests over a few whole polls.
    const reads = server.requests('ReadRequest');
    const polls = device.history('Double').length;
    await waitFor(() => device.history('Double').length >= polls + 3, 5_000, 'three more polls');
    const perPoll = (server.requests('ReadRequest') - reads) / (device.history('Double').length - polls);
    assert.ok(perPoll >= 5 && perPoll <= 6.5, `about 5 Read requests per poll, got ${perPoll}`);
    assert.equal(device.last('unknown')!.code, 'BadNodeIdUnknown');
    for (const name of TYPED) assert.equal(device.last(name)!.quality, 'good', name);
    assert.equal(typeof device.last('Int64')!.value, 'bigint');
    assert.match(device.runner.health.state, /connected/);
  });

  it("writes are coerced to the node's DataType and read back; refusals say why", async () => {
    const device = parseDevice({
      connection: { endpointUrl: server.endpointUrl },
      mode: 'polling',
      tags: [
        { name: 'double', nodeId: line('W.Double'), writable: true },
        { name: 'int16', nodeId: line('W.Int16'), writable: true },
        { name: 'int64', nodeId: line('W.Int64'), writable: true },
        { name: 'uint64', nodeId: line('W.UInt64'), writable: true },
        { name: 'bool', nodeId: line('W.Bool'), writable: true },
        { name: 'string', nodeId: line('W.String'), writable: true },
        { name: 'datetime', nodeId: line('W.DateTime'), writable: true },
        { name: 'bytes', nodeId: line('W.ByteString'), writable: true },
        { name: 'doubles', nodeId: line('W.DoubleArray'), writable: true },
        { name: 'byUri', nodeId: `nsu=${LINE2_NAMESPACE};s=Line2.Speed`, writable: true },
        { name: 'byEscapedUri', nodeId: 'nsu=urn:plc2mqtt:test:odd%3Bname%2520;s=Line2.Speed', writable: true },
        { name: 'readonly', nodeId: line('ReadOnly'), writable: true },
        { name: 'unknown', nodeId: line('Nope'), writable: true },
        { name: 'unknownUri', nodeId: 'nsu=urn:nowhere;s=Line2.Speed', writable: true },
      ],
    });
    const driver = createDriver(device, { log: testLog, dataDir: join(folder, 'gateway') });
    try {
      await driver.connect();
      const tag = (name: string) => device.tags.find((candidate) => candidate.name === name)!;
      await driver.write(tag('double'), 21.5);
      await driver.write(tag('int16'), '-123'); // text from an MQTT command is coerced
      await driver.write(tag('int64'), -(2n ** 62n) - 5n);
      await driver.write(tag('uint64'), 2n ** 64n - 1n);
      await driver.write(tag('bool'), 1);
      await driver.write(tag('string'), 'hello');
      await driver.write(tag('datetime'), '2026-03-04T05:06:07.000Z');
      await driver.write(tag('bytes'), Buffer.from('plc').toString('base64'));
      await driver.write(tag('doubles'), [1.5, 2.5, 3.5]);
      await driver.write(tag('byUri'), 7.25); // "nsu=": the namespace URI looked up in the server's NamespaceArray
      const readings = await driver.read(driver.plan(device.tags.slice(0, 11)));
      assert.deepEqual(
        readings.map((reading) => reading.value),
        // (The last one: ODD_NAMESPACE, whose ";" and "%" are escaped in the NodeId.)
        [
          21.5,
          -123,
          -(2n ** 62n) - 5n,
          2n ** 64n - 1n,
          true,
          'hello',
          '2026-03-04T05:06:07.000Z',
          Buffer.from('plc').toString('base64'),
          [1.5, 2.5, 3.5],
          7.25,
          7,
        ],
      );

      const refusal = async (name: string, value: Parameters<typeof driver.write>[1], code: string, message: RegExp) => {
        await assert.rejects(driver.write(tag(name), value), (error: unknown) => {
          assert.ok(error instanceof DriverError, String(error));
          assert.equal(error.code, code);
          assert.match(error.message, message);
          assert.equal(error.connectionLost, false);
          return true;
        });
      };
      await refusal('readonly', 1, 'BadNotWritable', /read-only/);
      await refusal('unknown', 1, 'BadNodeIdUnknown', /Nope/);
      await refusal('unknownUri', 1, 'BadNodeIdUnknown', /the server has no namespace "urn:nowhere"/);
      await refusal('int16', 40000, 'invalid-value', /out of range for Int16/);
      await refusal('int16', 1.5, 'invalid-value', /whole numbers/);
      await refusal('double', 'abc', 'invalid-value', /Double takes numbers/);
      await refusal('doubles', 1, 'invalid-value', /array/);
      await refusal('bool', 'maybe', 'invalid-value', /Boolean/);
      // The connection survives refused writes.
      assert.equal(driver.connected, true);
    } finally {
      await driver.close();
    }
  });
});
