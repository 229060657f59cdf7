// The Sparkplug B edge node with real OPC UA and Modbus devices, end to end: the gateway CLI polls
// the node-opcua test server (test/helpers/opcua-server.ts, in this process) and a Modbus server
// with values of every Modbus type; mosquitto carries its Sparkplug messages to the independent
// Python host (its own protoc-generated decoder). It proves:
//   (a) DCMD writes reach the OPC UA server (by alias and by name; Double, Int16, Int64 beyond 2^53,
//       String, DateTime, ByteString), read back in DDATA and on the server, audited with source
//       "sparkplug"; refused DCMDs (a tag not writable, above write.max, a fraction or out of range
//       for an Int16 node, a value of the wrong datatype) are audited and crash nothing;
//   (b) every built-in type the OPC UA test server offers, declared with "type", is born with its
//       Sparkplug datatype (Int8 = 1 … DateTime = 13, Bytes = 17, arrays 22–34) and its values
//       reach the host as they were on the server (64-bit exact as decimal strings, DateTime in
//       ms, Bytes as base64); the same for every Modbus type (int16 … uint64, float32/64, string,
//       bool, `count` arrays).
// The test server has no Guid variable and no arrays of SByte, Byte, Int16, UInt16, UInt32, Int64,
// UInt64, Float or DateTime: those datatypes (UUID 15, arrays 22, 23, 25–30, 34) are not covered here.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import mqtt from 'mqtt';
import { DataType, encodePayload } from '../src/northbound/sparkplug/payload.js';
import { makeTempDir, removeDir } from './helpers/cloud-broker.js';
import { freePort, waitFor } from './helpers/net.js';
import { type RunningTestServer, startTestServer } from './helpers/opcua-server.js';
import type { HostMessage, HostValue, SparkplugHost } from './helpers/sparkplug-host.js';
import {
  allBorn,
  assertSeqChain,
  dataValues,
  type DeviceInput,
  edgeMessages,
  GROUP,
  isData,
  more,
  NODE,
  type Rig,
  rig,
  WAIT,
} from './helpers/sparkplug-rig.js';

const line = (name: string) => `ns=1;s=Line1.${name}`;
type ModbusTag = Extract<DeviceInput, { driver: 'modbus' }>['tags'][number];
type OpcUaType = NonNullable<Extract<DeviceInput, { driver: 'opcua' }>['tags'][number]['type']>;

/** Read-only OPC UA tags: name, node, declared type, Sparkplug datatype, value at a server tick (as the host decodes it). */
const READ: [string, string, OpcUaType, DataType, (tick: number) => HostValue][] = [
  ['bool', 'Bool', 'Boolean', DataType.Boolean, (k) => Math.floor(k / 3) % 2 === 0],
  ['sbyte', 'SByte', 'SByte', DataType.Int8, (k) => -(k % 100)],
  ['byte', 'Byte', 'Byte', DataType.UInt8, (k) => k % 200],
  ['i16', 'Int16', 'Int16', DataType.Int16, (k) => -1000 - (k % 1000)],
  ['u16', 'UInt16', 'UInt16', DataType.UInt16, (k) => 60000 + (k % 1000)],
  ['i32', 'Int32', 'Int32', DataType.Int32, (k) => -100000 - k],
  ['u32', 'UInt32', 'UInt32', DataType.UInt32, (k) => 4000000000 + k],
  ['i64', 'Int64', 'Int64', DataType.Int64, (k) => (-(2n ** 60n) - BigInt(k)).toString()],
  ['u64', 'UInt64', 'UInt64', DataType.UInt64, (k) => (2n ** 63n + BigInt(k)).toString()],
  ['f32', 'Float', 'Float', DataType.Float, (k) => 0.5 + k],
  ['f64', 'Double', 'Double', DataType.Double, (k) => k / 10],
  ['str', 'String', 'String', DataType.String, (k) => `tick ${k}`],
  ['dt', 'DateTime', 'DateTime', DataType.DateTime, (k) => Date.UTC(2026, 0, 1) + k * 1000],
  ['bytes', 'ByteString', 'ByteString', DataType.Bytes, (k) => Buffer.from([1, 2, 3, k % 256]).toString('base64')],
  ['dArr', 'DoubleArray', 'Double', DataType.DoubleArray, (k) => [k, k + 0.5, -k]],
  ['iArr', 'Int32Array', 'Int32', DataType.Int32Array, (k) => [k, -k]],
  ['sArr', 'StringArray', 'String', DataType.StringArray, (k) => ['a', `t${k}`]],
  ['bArr', 'BoolArray', 'Boolean', DataType.BooleanArray, (k) => [true, Math.floor(k / 3) % 2 === 0]],
];

/** Modbus tags on the aux server: config, Sparkplug datatype, the registers (or coils) and the value the host decodes. */
const U64_MAX = 2n ** 64n - 1n;
const I64 = -(2n ** 53n) - 7n;
const MODBUS: { tag: ModbusTag; datatype: DataType; holding?: number[]; coils?: boolean[]; value: HostValue }[] = [
  { tag: { name: 'i16', area: 'holding', address: 100, type: 'int16' }, datatype: DataType.Int16, holding: [0x10000 - 1234], value: -1234 },
  { tag: { name: 'u16', area: 'holding', address: 101, type: 'uint16' }, datatype: DataType.UInt16, holding: [65000], value: 65000 },
  {
    tag: { name: 'i32', area: 'holding', address: 102, type: 'int32' },
    datatype: DataType.Int32,
    holding: words(-123456789n, 2),
    value: -123456789,
  },
  {
    tag: { name: 'u32', area: 'holding', address: 104, type: 'uint32' },
    datatype: DataType.UInt32,
    holding: words(4000000000n, 2),
    value: 4000000000,
  },
  {
    tag: { name: 'i64', area: 'holding', address: 106, type: 'int64' },
    datatype: DataType.Int64,
    holding: words(I64, 4),
    value: I64.toString(),
  },
  {
    tag: { name: 'u64', area: 'holding', address: 110, type: 'uint64' },
    datatype: DataType.UInt64,
    holding: words(U64_MAX, 4),
    value: U64_MAX.toString(),
  },
  {
    tag: { name: 'f32', area: 'holding', address: 114, type: 'float32' },
    datatype: DataType.Float,
    holding: floatWords(1.5, 4),
    value: 1.5,
  },
  {
    tag: { name: 'f64', area: 'holding', address: 116, type: 'float64' },
    datatype: DataType.Double,
    holding: floatWords(-2.25, 8),
    value: -2.25,
  },
  {
    tag: { name: 'str', area: 'holding', address: 120, type: 'string', length: 4 },
    datatype: DataType.String,
    holding: [0x504c, 0x4332, 0x4d51, 0x5454],
    value: 'PLC2MQTT',
  },
  { tag: { name: 'flag', area: 'coil', address: 5, type: 'bool' }, datatype: DataType.Boolean, coils: [true], value: true },
  {
    tag: { name: 'u16s', area: 'holding', address: 130, type: 'uint16', count: 3 },
    datatype: DataType.UInt16Array,
    holding: [1, 2, 3],
    value: [1, 2, 3],
  },
  {
    tag: { name: 'i32s', area: 'holding', address: 134, type: 'int32', count: 2 },
    datatype: DataType.Int32Array,
    holding: [...words(-2n, 2), ...words(70000n, 2)],
    value: [-2, 70000],
  },
  {
    tag: { name: 'f32s', area: 'holding', address: 140, type: 'float32', count: 2 },
    datatype: DataType.FloatArray,
    holding: [...floatWords(0.25, 4), ...floatWords(-8, 4)],
    value: [0.25, -8],
  },
  {
    tag: { name: 'coils', area: 'coil', address: 10, type: 'bool', count: 3 },
    datatype: DataType.BooleanArray,
    coils: [true, false, true],
    value: [true, false, true],
  },
];

/** A two's complement integer as `n` big-endian registers. */
function words(value: bigint, n: number): number[] {
  const unsigned = BigInt.asUintN(16 * n, value);
  return Array.from({ length: n }, (_, i) => Number((unsigned >> BigInt(16 * (n - 1 - i))) & 0xffffn));
}

function floatWords(value: number, bytes: 4 | 8): number[] {
  const buffer = Buffer.alloc(bytes);
  if (bytes === 4) buffer.writeFloatBE(value);
  else buffer.writeDoubleBE(value);
  return Array.from({ length: bytes / 2 }, (_, i) => buffer.readUInt16BE(2 * i));
}

interface Setup extends Rig {
  opcua: RunningTestServer;
}

/** The OPC UA server (its ticks 100 ms apart), then the rig with devices "ua" (OPC UA, polled) and "mb" (Modbus, on the aux server). */
async function opcuaRig(t: TestContext): Promise<Setup> {
  const pki = makeTempDir('plc2mqtt-spbua-');
  const opcua = await startTestServer({ port: await freePort(), pkiDir: join(pki, 'opcua') });
  t.after(async () => {
    await opcua.stop();
    removeDir(pki);
  });
  const parts = await rig(t, {
    devices: ({ aux }) => {
      for (const { tag, holding, coils } of MODBUS) {
        if (holding) aux.holding.splice(Number(tag.address), holding.length, ...holding);
        if (coils) aux.coils.splice(Number(tag.address), coils.length, ...coils);
      }
      return [
        {
          name: 'ua',
          driver: 'opcua',
          mode: 'polling',
          connection: { endpointUrl: opcua.endpointUrl },
          pollInterval: '200ms',
          tags: [
            ...READ.map(([name, node, type]) => ({ name, nodeId: line(node), type })),
            { name: 'wDouble', nodeId: line('W.Double'), type: 'Double', writable: true, write: { min: -1000, max: 1000 } },
            { name: 'wInt16', nodeId: line('W.Int16'), type: 'Int16', writable: true },
            { name: 'wInt64', nodeId: line('W.Int64'), type: 'Int64', writable: true },
            { name: 'wString', nodeId: line('W.String'), type: 'String', writable: true },
            { name: 'wDate', nodeId: line('W.DateTime'), type: 'DateTime', writable: true },
            { name: 'wBytes', nodeId: line('W.ByteString'), type: 'ByteString', writable: true },
            // No declared type: born a Double (from its value 0), while the node is an Int16.
            { name: 'loose', nodeId: line('W.Int16'), writable: true },
            { name: 'ro', nodeId: line('ReadOnly'), type: 'Double' },
          ],
        },
        {
          name: 'mb',
          driver: 'modbus',
          connection: { transport: 'tcp', host: '127.0.0.1', port: aux.port },
          pollInterval: '200ms',
          tags: MODBUS.map(({ tag }) => tag),
        },
      ];
    },
  });
  return { ...parts, opcua };
}

/** The current value of a server node (its Variant's value, as node-opcua holds it). */
function serverValue(opcua: RunningTestServer, node: string): unknown {
  const variable = opcua.server.engine.addressSpace!.findNode(line(node)) as unknown as { readValue(): { value: { value: unknown } } };
  return variable.readValue().value.value;
}

/** The host's view of a device's metric: the DBIRTH's value and every DDATA one, in order. */
function seen(host: SparkplugHost, device: string, name: string) {
  const births = edgeMessages(host)
    .filter((m) => m.type === 'DBIRTH' && m.device === device)
    .flatMap((m) => m.metrics!.filter((x) => x.name === name));
  return [...births, ...dataValues(edgeMessages(host), device, name)];
}

describe('Sparkplug B edge node with OPC UA and Modbus devices', () => {
  it('(b) every datatype: OPC UA nodes with a declared type and every Modbus type, born with their Sparkplug datatypes, values exact at the host', async (t) => {
    const { host } = await opcuaRig(t);
    await allBorn(host, ['ua', 'mb']);
    await more(host, isData('ua'), 10, 'DDATA of ua');
    await host.waitFor(() => MODBUS.every(({ tag }) => seen(host, 'mb', tag.name).some((m) => !m.isNull)), WAIT, 'values of mb');
    const births = new Map(
      edgeMessages(host)
        .filter((m) => m.type === 'DBIRTH')
        .map((m) => [m.device, new Map(m.metrics!.map((x) => [x.name, x.datatype]))]),
    );
    assert.deepEqual(
      READ.map(([name]) => [name, births.get('ua')!.get(name)]),
      READ.map(([name, , , datatype]) => [name, datatype]),
      'OPC UA: the declared types as Sparkplug datatypes',
    );
    assert.deepEqual(
      ['wDate', 'wBytes', 'wInt64', 'loose'].map((name) => births.get('ua')!.get(name)),
      [DataType.DateTime, DataType.Bytes, DataType.Int64, DataType.Double],
    );
    assert.deepEqual(
      MODBUS.map(({ tag }) => [tag.name, births.get('mb')!.get(tag.name)]),
      MODBUS.map(({ tag, datatype }) => [tag.name, datatype]),
      'Modbus: every type, arrays by count',
    );
    // OPC UA values: each message is one poll (one Read), so all its metrics are of one server tick,
    // which Int32 (-100000 - tick) tells.
    const expected = new Map(READ.map(([name, , , , value]) => [name, value]));
    const ua = edgeMessages(host).filter((m): m is HostMessage => (m.type === 'DBIRTH' || m.type === 'DDATA') && m.device === 'ua');
    let checked = 0;
    for (const m of ua) {
      const i32 = m.metrics!.find((x) => x.name === 'i32');
      if (i32 === undefined || i32.isNull) continue;
      const tick = -100000 - (i32.value as number);
      for (const metric of m.metrics!) {
        const value = expected.get(metric.name!);
        if (value === undefined || metric.isNull) continue;
        assert.deepEqual(metric.value, value(tick), `${m.type} seq ${m.seq}: ${metric.name} at tick ${tick}`);
        checked++;
      }
    }
    assert.ok(checked >= READ.length * 3, `OPC UA values checked: ${checked}`);
    for (const [name] of READ)
      assert.ok(
        seen(host, 'ua', name).some((m) => !m.isNull),
        `${name} reached the host with a value`,
      );
    for (const { tag, value } of MODBUS)
      assert.deepEqual(seen(host, 'mb', tag.name).find((m) => !m.isNull)?.value, value, `Modbus ${tag.name}`);
    assertSeqChain(edgeMessages(host));
    assert.deepEqual(host.errors(), []);
    // The DBIRTH's metrics carry their samples' OPC UA source timestamps (the Line1.W.* and ReadOnly
    // nodes unchanged since the server started): in time order all the same
    // [tck-id-operational-behavior-data-publish-dbirth-order].
    assert.deepEqual(host.violations(), []);
  });

  it('(a) DCMD by alias and by name writes OPC UA nodes (read back in DDATA and on the server), audited as "sparkplug"; refusals audited, no crash', async (t) => {
    const { host, gateway, opcua, cloud } = await opcuaRig(t);
    await allBorn(host, ['ua', 'mb']);
    await more(host, isData('ua'), 3, 'DDATA of ua');
    const baseline = host.violations().length;
    const audits = () => gateway.findLogs(/^write /).filter((entry) => entry.audit === 'write');
    const writes: [string, HostValue, boolean][] = [
      ['wDouble', 12.5, true],
      ['wInt16', -321, false],
      ['wInt64', (-(2n ** 53n) - 3n).toString(), true],
      ['wString', 'hello sparkplug', false],
      ['wBytes', Buffer.from([1, 2, 3, 255]).toString('base64'), false],
    ];
    for (const [metric, value, byAlias] of writes)
      await host.control({ dcmd: { device: 'ua', metric, value: value as number | string, byAlias } });
    await waitFor(
      () => audits().length >= writes.length,
      WAIT,
      () => `an audit line per write: ${JSON.stringify(audits())}`,
    );
    assert.deepEqual(
      audits().map((entry) => [entry.msg, entry.source, entry.device, entry.tag, entry.result, entry.error]),
      writes.map(([metric]) => ['write done', 'sparkplug', 'ua', metric, 'written', undefined]),
    );
    await host.waitFor(
      () =>
        writes.every(([metric, value]) =>
          dataValues(edgeMessages(host), 'ua', metric).some((m) => JSON.stringify(m.value) === JSON.stringify(value)),
        ),
      WAIT,
      'every written value back in DDATA',
    );
    const onServer = (node: string) => serverValue(opcua, node);
    assert.deepEqual(
      [onServer('W.Double'), onServer('W.Int16'), onServer('W.String'), [...(onServer('W.ByteString') as Buffer)]],
      [12.5, -321, 'hello sparkplug', [1, 2, 3, 255]],
    );
    const [high, low] = onServer('W.Int64') as [number, number];
    assert.equal(BigInt.asIntN(64, (BigInt(high) << 32n) | BigInt(low)), -(2n ** 53n) - 3n, 'Int64 beyond 2^53 exact on the server');

    // Refused: not writable, above write.max, a fraction and an Int16 overflow into the untyped
    // (Double) tag of an Int16 node: each audited, nothing written.
    const refusals: [string, number, RegExp][] = [
      ['ro', 5, /not writable/],
      ['wDouble', 5000, /1000/],
      ['loose', 1.5, /whole numbers/],
      ['loose', 40000, /out of range for Int16/],
    ];
    for (const [metric, value] of refusals) await host.control({ dcmd: { device: 'ua', metric, value, byAlias: true } });
    await waitFor(
      () => audits().length >= writes.length + refusals.length,
      WAIT,
      () => `an audit line per refusal: ${JSON.stringify(audits().slice(writes.length))}`,
    );
    const refused = audits().slice(writes.length);
    assert.deepEqual(
      refused.map((entry) => [entry.msg, entry.source, entry.tag, entry.result]),
      refusals.map(([metric]) => ['write refused or failed', 'sparkplug', metric, 'rejected']),
    );
    refusals.forEach(([, , error], i) => assert.match(String(refused[i]!.error), error));
    assert.deepEqual([onServer('W.Double'), onServer('W.Int16')], [12.5, -321], 'nothing written by a refusal');

    // A value of the wrong datatype: a String on the wire for the Int16 metric (by hand: the host encodes by the birth).
    const alias = edgeMessages(host)
      .findLast((m) => m.type === 'DBIRTH' && m.device === 'ua')!
      .metrics!.find((x) => x.name === 'wInt16')!.alias as number;
    const client = await mqtt.connectAsync(cloud.url, { reconnectPeriod: 0, connectTimeout: 5000 });
    t.after(() => client.endAsync(true));
    await client.publishAsync(
      `spBv1.0/${GROUP}/DCMD/${NODE}/ua`,
      encodePayload({ timestamp: Date.now(), metrics: [{ alias, datatype: DataType.String, value: 'abc', timestamp: Date.now() }] }),
      { qos: 0 },
    );
    await more(host, isData('ua'), 5, 'DDATA after the wrong-type DCMD');
    assert.ok(gateway.running, 'no crash');
    assert.equal(gateway.findLogs(/uncaught|unhandled/i).length, 0);
    assert.equal(onServer('W.Int16'), -321, 'nothing written');
    assertSeqChain(edgeMessages(host));
    assert.deepEqual(host.errors(), []);
    // The rest are known bugs, each listed in `bugs` so that one does not hide another.
    const bugs: string[] = [];
    // A DateTime metric, by alias: ms since the epoch.
    const date = Date.UTC(2026, 2, 4, 5, 6, 7);
    await host.control({ dcmd: { device: 'ua', metric: 'wDate', value: date, byAlias: true } });
    const dateAudit = () => audits().find((entry) => entry.tag === 'wDate');
    await waitFor(() => dateAudit() !== undefined, WAIT, 'the audit line of the DateTime write');
    // A DateTime DCMD (ms since the epoch, 64-bit on the wire) is written as the node's DateTime.
    if (dateAudit()!.result !== 'written') bugs.push(`DateTime DCMD: ${dateAudit()!.result}: ${String(dateAudit()!.error)}`);
    else {
      await host.waitFor(
        () => dataValues(edgeMessages(host), 'ua', 'wDate').some((m) => m.value === date),
        WAIT,
        'the DateTime back in DDATA',
      );
      assert.equal((onServer('W.DateTime') as Date).getTime(), date);
    }
    // A DCMD whose value does not decode as its metric's datatype is refused by the write checks, audited.
    const wrongType = audits().find((entry) => entry.tag === 'wInt16' && entry.result === 'rejected');
    if (wrongType?.source !== 'sparkplug')
      bugs.push(`wrong-type DCMD not audited; logged: ${JSON.stringify(gateway.findLogs(/DCMD/).map((entry) => entry.msg))}`);
    // A DDATA after a write: the written node's source timestamp is older than a ticking node's,
    // the payload is in time order all the same.
    for (const violation of host.violations().slice(baseline)) bugs.push(`${violation.rule}: ${violation.message}`);
    assert.deepEqual(bugs, []);
  });
});
