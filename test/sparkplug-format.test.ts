// SparkplugFormat (src/northbound/sparkplug/format.ts) on its own: a fake catalog of devices, a
// real BdSeqStore in a temp folder and a fake FormatSession (seq counter, "historical" by the
// session's birth time). Everything it produces is decoded with our codec (decodePayload) and
// checked field by field. It proves:
//   - births: NBIRTH seq 0 with bdSeq = the will's, DBIRTH with name + alias + declared datatype;
//   - a poll cycle recorded, then encoded at send time: DDATA by alias only, no datatype on the
//     wire, seq +1 (mod 256), is_historical for rows stored before the births;
//   - DDEATH, then rows with only bad samples → nothing, then a good sample → [DBIRTH, DDATA of
//     what the birth did not carry];
//   - quality codes "sparkplug" vs "ignition"; a value that does not fit its datatype → is_null,
//     bad quality, one warning; int64 exact through the stored record;
//   - a rebirth resets seq to 0 with the same bdSeq;
//   - the primary host gates births: STATE online → rebirth, newer OFFLINE → reconnect, older → nothing;
//   - NCMD rebirth, DCMD by alias / by name decoded with the declared datatype, unknown metrics
//     as writes the command handler refuses; garbage payloads → [] (never a throw).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import { pino } from 'pino';
import type { StoredMessage } from '../src/cloud/buffer.js';
import { type CloudMessage, type DeviceReport, type FormatSession, RecordKind } from '../src/northbound/format.js';
import { BdSeqStore } from '../src/northbound/sparkplug/bdseq.js';
import { type Catalog, type CatalogDevice, SparkplugFormat } from '../src/northbound/sparkplug/format.js';
import {
  DataType,
  decodePayload,
  encodePayload,
  type SparkplugMetric,
  type SparkplugPayload,
} from '../src/northbound/sparkplug/payload.js';
import type { Quality, TagValue } from '../src/pipeline/driver.js';
import type { Sample } from '../src/pipeline/normalize.js';

const GROUP = 'plant1';
const NODE = 'gw';
const INT64_MAX = 2n ** 63n - 1n;

/** The uplink's session, as the format sees it: a seq counter; rows created before `bornAt` are history. */
class FakeSession implements FormatSession {
  readonly attempt = 1;
  readonly connectedAt = 1;
  bornAt = Number.POSITIVE_INFINITY;
  private seq = 0;
  nextSeq(): number {
    return this.seq++;
  }
  peekSeq(): number {
    return this.seq;
  }
  resetSeq(): void {
    this.seq = 0;
  }
  historical(stored: StoredMessage): boolean {
    return stored.created < this.bornAt;
  }
}

interface Setup {
  format: SparkplugFormat;
  session: FakeSession;
  devices: Map<string, CatalogDevice>;
  /** The format's log lines (JSON objects). */
  logs: { level: number; msg: string; tag?: string }[];
  /** A cycle of `device` as the gateway records it, stored at `created`. */
  cycle(device: string, samples: Sample[], created?: number): StoredMessage;
  lost(device: string, created?: number): StoredMessage;
  /** Decodes a message, with datatypes from the births when they are not on the wire. */
  decode(message: CloudMessage): SparkplugPayload;
}

function sample(tag: string, value: TagValue | null, ts: number, quality: Quality = 'good'): Sample {
  return { device: 'plc', group: 'default', tag, value, quality, ts };
}

/** Device "plc": the declared types of the gateway test's tags; "aux": one more device. */
function plcDevice(): CatalogDevice {
  return {
    name: 'plc',
    connected: true,
    tags: [
      { name: 'ramp', type: { type: 'uint16' }, unit: undefined, last: sample('ramp', 10, 1000) },
      { name: 'temp', type: { type: 'float32' }, unit: '°C', last: sample('temp', 21.5, 1000) },
      { name: 'sp', type: { type: 'int16', scaled: true }, unit: undefined, last: sample('sp', 50, 1000) },
      { name: 'flag', type: { type: 'bool' }, unit: undefined, last: sample('flag', false, 1000) },
      { name: 'big', type: { type: 'int64' }, unit: undefined, last: sample('big', 1n, 1000) },
    ],
  };
}

function setUp(t: TestContext, options: { primaryHostId?: string; quality?: 'sparkplug' | 'ignition' } = {}): Setup {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-spbformat-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const logs: Setup['logs'] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as Setup['logs'][number]);
      done();
    },
  });
  const log = pino({ level: 'info' }, sink);
  const devices = new Map<string, CatalogDevice>([
    ['plc', plcDevice()],
    ['aux', { name: 'aux', connected: true, tags: [{ name: 'level', type: { type: 'uint16' }, unit: 'mm', last: undefined }] }],
  ]);
  const catalog: Catalog = { devices: () => devices.values(), device: (name) => devices.get(name) };
  const format = new SparkplugFormat({
    groupId: GROUP,
    edgeNodeId: NODE,
    primaryHostId: options.primaryHostId,
    quality: options.quality ?? 'sparkplug',
    nodeMetricsInterval: 60_000,
    version: '9.9.9',
    rules: { forward: undefined, receive: [], format: 'sparkplug-b' },
    bdSeq: new BdSeqStore(dir, log),
    catalog,
    nodeStats: () => ({ outboxDepth: 3, reconnects: 1 }),
    log,
  });
  const session = new FakeSession();
  let id = 0;
  const stored = (record: ReturnType<NonNullable<ReturnType<SparkplugFormat['deviceRecorder']>>>, created: number): StoredMessage => {
    assert.ok(record, 'the report is recorded');
    return { ...record, id: ++id, size: record.payload.length, created };
  };
  const record = (device: string, report: DeviceReport, created: number) => stored(format.deviceRecorder(device)(report), created);
  const datatypes = new Map<bigint, DataType>();
  return {
    format,
    session,
    devices,
    logs,
    cycle: (device, samples, created = Date.now()) =>
      record(device, { kind: 'cycle', device, group: 'default', cycleTs: samples[0]?.ts ?? 0, samples }, created),
    lost: (device, created = Date.now()) => record(device, { kind: 'device-lost', device, ts: 5000 }, created),
    decode: (message) => {
      // Births carry their datatypes (a rebirth may declare another one); other messages take the births'.
      const birth = /\/(NBIRTH|DBIRTH)\//.test(message.topic);
      const payload = decodePayload(message.payload, {
        datatypeOf: ({ alias }) => (alias === undefined || birth ? undefined : datatypes.get(alias)),
      });
      if (birth)
        for (const metric of payload.metrics ?? [])
          if (metric.alias !== undefined && metric.datatype !== undefined) datatypes.set(BigInt(metric.alias), metric.datatype);
      return payload;
    },
  };
}

/** Connects (will) and publishes the births, as the uplink does; returns them decoded. */
function born(setup: Setup): { will: CloudMessage; births: CloudMessage[] } {
  const will = setup.format.will(setup.session);
  const births = setup.format.births(setup.session);
  assert.ok(births, 'births without a primary host');
  setup.session.bornAt = Date.now();
  for (const birth of births) setup.decode(birth);
  return { will, births };
}

/** A row as the outbox reads it back from disk: the same bytes in another Buffer. */
function fromDisk(row: StoredMessage): StoredMessage {
  return { ...row, payload: Buffer.from(row.payload) };
}

function list(encoded: CloudMessage | CloudMessage[] | undefined): CloudMessage[] {
  assert.ok(encoded !== undefined, 'the row can be encoded');
  return Array.isArray(encoded) ? encoded : [encoded];
}

function byName(payload: SparkplugPayload): Map<string, SparkplugMetric> {
  return new Map((payload.metrics ?? []).map((metric) => [metric.name ?? `alias ${String(metric.alias)}`, metric]));
}

const topic = (type: string, device?: string) => `spBv1.0/${GROUP}/${type}/${NODE}${device ? `/${device}` : ''}`;

describe('SparkplugFormat', () => {
  it('births: NBIRTH seq 0 with the will bdSeq, DBIRTH with name, alias and declared datatype; QoS 0, not retained', (t) => {
    const setup = setUp(t);
    const { will, births } = born(setup);
    assert.deepEqual([will.topic, will.qos, will.retain], [topic('NDEATH'), 1, false]);
    const death = decodePayload(will.payload);
    assert.equal(death.seq, undefined, '[tck-id-payloads-ndeath-seq]');
    assert.deepEqual(
      death.metrics?.map((m) => [m.name, m.datatype, m.value]),
      [['bdSeq', DataType.Int64, 0n]],
    );
    assert.deepEqual(
      births.map((b) => [b.topic, b.qos, b.retain]),
      [
        [topic('NBIRTH'), 0, false],
        [topic('DBIRTH', 'plc'), 0, false],
        [topic('DBIRTH', 'aux'), 0, false],
      ],
    );
    const nbirth = decodePayload(births[0]!.payload);
    assert.equal(nbirth.seq, 0, '[tck-id-topics-nbirth-seq-num]');
    const node = byName(nbirth);
    assert.equal(node.get('bdSeq')?.value, 0n, '[tck-id-topics-nbirth-bdseq-matching]');
    assert.deepEqual([node.get('Node Control/Rebirth')?.value, node.get('Node Control/Rebirth')?.alias], [false, undefined]);
    assert.equal(node.get('Properties/Version')?.value, '9.9.9');
    assert.deepEqual([node.get('Outbox/Depth')?.value, node.get('Uplink/Reconnects')?.value], [3n, 1n]);
    const dbirth = decodePayload(births[1]!.payload);
    assert.equal(dbirth.seq, 1);
    const plc = byName(dbirth);
    assert.deepEqual(
      [...plc].map(([name, m]) => [name, m.datatype, m.value]),
      [
        ['ramp', DataType.UInt16, 10],
        ['temp', DataType.Float, 21.5],
        ['sp', DataType.Double, 50],
        ['flag', DataType.Boolean, false],
        ['big', DataType.Int64, 1n],
      ],
    );
    assert.equal(plc.get('temp')?.properties?.engUnit?.value, '°C');
    const aliases = [...byName(nbirth).values(), ...plc.values(), ...byName(decodePayload(births[2]!.payload)).values()]
      .map((m) => m.alias)
      .filter((alias) => alias !== undefined);
    assert.equal(new Set(aliases.map(String)).size, aliases.length, 'aliases unique node-wide [tck-id-payloads-alias-uniqueness]');
    const level = byName(decodePayload(births[2]!.payload)).get('level');
    assert.deepEqual([level?.isNull, level?.value, level?.properties?.Quality?.value], [true, undefined, 0], 'no value yet: is_null, bad');
  });

  it('a recorded cycle is encoded at send time: DDATA by alias only, no datatype, seq +1 mod 256, is_historical for older rows', (t) => {
    const setup = setUp(t);
    const old = setup.cycle('plc', [sample('ramp', 11, 2000), sample('temp', 22.25, 2000)], 1);
    const { births } = born(setup);
    const aliasOf = (name: string) => byName(setup.decode(births[1]!)).get(name)?.alias;
    const [history] = list(setup.format.encode(old, setup.session));
    assert.deepEqual([history!.topic, history!.qos, history!.retain], [topic('DDATA', 'plc'), 0, false]);
    const wire = decodePayload(history!.payload);
    assert.equal(wire.seq, 3, 'after NBIRTH 0, DBIRTH 1 and 2');
    assert.deepEqual(
      wire.metrics?.map((m) => [m.name, m.alias, m.datatype, m.timestamp, m.isHistorical]),
      [
        [undefined, aliasOf('ramp'), undefined, 2000, true],
        [undefined, aliasOf('temp'), undefined, 2000, true],
      ],
      '[tck-id-payloads-alias-data-cmd-requirement], [tck-id-payloads-metric-datatype-not-req]',
    );
    assert.deepEqual(
      setup.decode(history!).metrics?.map((m) => m.value),
      [11, 22.25],
    );
    const live = setup.decode(list(setup.format.encode(setup.cycle('plc', [sample('flag', true, 3000)]), setup.session))[0]!);
    assert.deepEqual(
      live.metrics?.map((m) => [m.alias, m.value, m.isHistorical]),
      [[aliasOf('flag'), true, undefined]],
    );
    assert.equal(live.seq, 4);
    let last = 4;
    for (let i = 0; i < 300; i++) {
      const [message] = list(setup.format.encode(setup.cycle('aux', [sample('level', i % 100, 4000 + i)]), setup.session));
      const { seq } = decodePayload(message!.payload);
      assert.equal(seq, (last + 1) % 256, '[tck-id-payloads-sequence-num-incrementing]');
      last = seq!;
    }
  });

  it('DDEATH for a born device; then rows with only bad samples → []; then a good sample → [DBIRTH, DDATA of what the birth lacks]', (t) => {
    const setup = setUp(t);
    born(setup);
    const [death] = list(setup.format.encode(setup.lost('plc'), setup.session));
    assert.deepEqual([death!.topic, death!.qos, death!.retain], [topic('DDEATH', 'plc'), 0, false]);
    assert.deepEqual([decodePayload(death!.payload).seq, decodePayload(death!.payload).timestamp], [3, 5000]);
    assert.deepEqual(list(setup.format.encode(setup.lost('plc'), setup.session)), [], 'dead already: nothing to die');
    const bad = setup.cycle('plc', [sample('ramp', null, 6000, 'bad'), sample('temp', null, 6000, 'bad')]);
    assert.deepEqual(list(setup.format.encode(bad, setup.session)), [], 'nothing but bad samples while dead');
    // The device is back: the catalog's latest ramp is this row's sample, temp has moved on since.
    const device = setup.devices.get('plc')!;
    device.tags = device.tags.map((tag) =>
      tag.name === 'ramp'
        ? { ...tag, last: sample('ramp', 42, 7000) }
        : tag.name === 'temp'
          ? { ...tag, last: sample('temp', 23, 7500) }
          : tag,
    );
    const back = list(setup.format.encode(setup.cycle('plc', [sample('ramp', 42, 7000), sample('temp', 22, 7000)]), setup.session));
    assert.deepEqual(
      back.map((m) => m.topic),
      [topic('DBIRTH', 'plc'), topic('DDATA', 'plc')],
    );
    const birth = setup.decode(back[0]!);
    assert.equal(birth.seq, 4);
    assert.deepEqual([byName(birth).get('ramp')?.value, byName(birth).get('temp')?.value], [42, 23]);
    const data = setup.decode(back[1]!);
    assert.equal(data.seq, 5);
    assert.deepEqual(
      data.metrics?.map((m) => [m.alias, m.value, m.timestamp]),
      [[byName(birth).get('temp')?.alias, 22, 7000]],
      'the ramp sample went in the DBIRTH: not sent again',
    );
    const next = setup.decode(list(setup.format.encode(setup.cycle('plc', [sample('ramp', 43, 8000)]), setup.session))[0]!);
    assert.deepEqual([next.seq, next.metrics?.[0]?.value], [6, 43], 'born again: plain DDATA');
  });

  for (const [mode, uncertain, bad] of [
    ['sparkplug', 0, 0],
    ['ignition', 1073742080, -2147483136],
  ] as const) {
    it(`quality "${mode}": good without a Quality property, uncertain ${uncertain}, bad ${bad} with is_null`, (t) => {
      const setup = setUp(t, { quality: mode });
      born(setup);
      const samples = [sample('ramp', 1, 100), sample('temp', 20.5, 100, 'uncertain'), sample('sp', null, 100, 'bad')];
      const data = setup.decode(list(setup.format.encode(setup.cycle('plc', samples), setup.session))[0]!);
      assert.deepEqual(
        data.metrics?.map((m) => [m.value, m.isNull, m.properties?.Quality?.type, m.properties?.Quality?.value]),
        [
          [1, undefined, undefined, undefined],
          [20.5, undefined, DataType.Int32, uncertain],
          [undefined, true, DataType.Int32, bad],
        ],
      );
    });
  }

  it('a value that does not fit its declared datatype: is_null with bad quality, one warning per tag', (t) => {
    const setup = setUp(t);
    born(setup);
    const misfits = () => setup.logs.filter((line) => line.level === 40 && /does not fit/.test(line.msg));
    for (const value of [70000, 'text']) {
      const data = setup.decode(list(setup.format.encode(setup.cycle('plc', [sample('ramp', value, 100)]), setup.session))[0]!);
      assert.deepEqual(
        data.metrics?.map((m) => [m.value, m.isNull, m.properties?.Quality?.value]),
        [[undefined, true, 0]],
        `uint16 ${JSON.stringify(value)}`,
      );
    }
    assert.deepEqual(
      misfits().map((line) => line.tag),
      ['ramp'],
      'logged once',
    );
  });

  it('int64 survives the record round trip exactly: 2^63-1 and -2^63', (t) => {
    const setup = setUp(t);
    const row = setup.cycle('plc', [sample('big', INT64_MAX, 100), sample('big', -(2n ** 63n), 200)], 1);
    born(setup);
    // The row as read back from disk (another Buffer: its JSON is parsed), then as recorded (from memory).
    for (const stored of [fromDisk(row), row]) {
      const data = setup.decode(list(setup.format.encode(stored, setup.session))[0]!);
      assert.deepEqual(
        data.metrics?.map((m) => m.value),
        [INT64_MAX, -(2n ** 63n)],
      );
    }
  });

  it('a row read back from disk is encoded as the row recorded in memory: values, nulls, quality, history, misfits', (t) => {
    const setup = setUp(t);
    const samples = [
      sample('ramp', 7, 900),
      sample('temp', 21.75, 2000, 'uncertain'),
      sample('sp', null, 2000, 'bad'),
      sample('flag', true, 2000),
      sample('big', -(2n ** 63n), 2000),
      sample('ramp', 70000, 2000),
    ];
    const row = setup.cycle('plc', samples);
    born(setup);
    const metrics = (stored: StoredMessage) =>
      list(setup.format.encode(stored, setup.session)).map((message) => setup.decode(message).metrics);
    const fromMemory = metrics(row);
    assert.deepEqual(metrics(fromDisk(row)), fromMemory);
    assert.equal(fromMemory[0]?.length, 6);
    // A row of the first version of the record (a tuple per sample), left in the outbox by an older gateway.
    const firstVersion = {
      d: 'plc',
      s: [
        ['ramp', 0, 900, 7],
        ['temp', 1, 2000, 21.75],
        ['sp', 2, 2000, null],
        ['flag', 0, 2000, true],
        ['big', 0, 2000, { n: (-(2n ** 63n)).toString() }],
        ['ramp', 0, 2000, 70000],
      ],
    };
    assert.deepEqual(metrics({ ...row, payload: Buffer.from(JSON.stringify(firstVersion)) }), fromMemory);
  });

  it('a rebirth: NBIRTH seq 0 with the same bdSeq, DBIRTH of every device, DDEATH of the dead ones, then seq goes on from there', (t) => {
    const setup = setUp(t);
    born(setup);
    for (let i = 0; i < 5; i++) setup.format.encode(setup.cycle('plc', [sample('ramp', i, 100 + i)]), setup.session);
    setup.format.encode(setup.lost('aux'), setup.session);
    const again = setup.format.births(setup.session);
    assert.ok(again);
    assert.deepEqual(
      again.map((m) => [m.topic, decodePayload(m.payload).seq]),
      [
        [topic('NBIRTH'), 0],
        [topic('DBIRTH', 'plc'), 1],
        [topic('DBIRTH', 'aux'), 2],
        [topic('DDEATH', 'aux'), 3],
      ],
      'aux is dead: declared by the rebirth before any data [tck-id-payloads-dbirth-order], and dead right after',
    );
    assert.equal(
      byName(decodePayload(again[0]!.payload)).get('bdSeq')?.value,
      0n,
      '[tck-id-operational-behavior-data-commands-rebirth-action-3]',
    );
    const next = decodePayload(list(setup.format.encode(setup.cycle('plc', [sample('ramp', 9, 200)]), setup.session))[0]!.payload);
    assert.equal(next.seq, 4);
  });

  it('primary host: no births until its STATE is online; then rebirth; a newer OFFLINE → reconnect, an older one → nothing', (t) => {
    const setup = setUp(t, { primaryHostId: 'scada' });
    const state = (online: boolean, timestamp: number) =>
      setup.format.decodeDownlink('spBv1.0/STATE/scada', Buffer.from(JSON.stringify({ online, timestamp })), true);
    assert.deepEqual(setup.format.subscriptions(5)['spBv1.0/STATE/scada'], { qos: 1 });
    setup.format.will(setup.session);
    assert.equal(setup.format.births(setup.session), undefined, '[tck-id-operational-behavior-edge-node-birth-sequence-wait]');
    assert.deepEqual(state(false, 1000), [], 'offline while not online: nothing to do');
    assert.deepEqual(
      setup.format.decodeDownlink('spBv1.0/STATE/other', Buffer.from(JSON.stringify({ online: true, timestamp: 2000 })), true),
      [],
      'another host',
    );
    assert.equal(setup.format.births(setup.session), undefined);
    assert.deepEqual(state(true, 2000), [{ kind: 'rebirth' }]);
    assert.equal(setup.format.births(setup.session)?.[0]?.topic, topic('NBIRTH'));
    assert.deepEqual(state(true, 2500), [], 'online again: nothing new');
    assert.deepEqual(
      state(false, 1500),
      [],
      'an OFFLINE older than the ONLINE [tck-id-operational-behavior-edge-node-termination-host-offline-timestamp]',
    );
    assert.deepEqual(
      state(false, 3000).map((action) => action.kind),
      ['reconnect'],
    );
    setup.format.will(setup.session);
    assert.equal(setup.format.births(setup.session), undefined, 'offline: no births on the next connection');
    assert.deepEqual(state(true, 2900), [], 'an ONLINE older than the last STATE');
    assert.deepEqual(state(true, 4000), [{ kind: 'rebirth' }]);
  });

  it('NCMD rebirth; DCMD by alias and by name decoded with the declared datatype; unknown metrics become writes to refuse', (t) => {
    const setup = setUp(t);
    const { births } = born(setup);
    const plc = byName(setup.decode(births[1]!));
    const aux = byName(setup.decode(births[2]!));
    const command = (metrics: SparkplugMetric[]) => encodePayload({ timestamp: Date.now(), metrics }, { omitDatatypes: true });
    const ncmd = (value: boolean) =>
      setup.format.decodeDownlink(topic('NCMD'), command([{ name: 'Node Control/Rebirth', datatype: DataType.Boolean, value }]), false);
    assert.deepEqual(ncmd(true), [{ kind: 'rebirth' }]);
    assert.deepEqual(ncmd(false), []);
    const dcmd = (device: string, metrics: SparkplugMetric[]) =>
      setup.format.decodeDownlink(topic('DCMD', device), command(metrics), false);
    // Int64 -5 travels as two's complement in long_value; only the declared datatype makes it -5.
    assert.deepEqual(
      dcmd('plc', [
        { alias: plc.get('sp')!.alias!, datatype: DataType.Double, value: 12.5 },
        { alias: plc.get('big')!.alias!, datatype: DataType.Int64, value: -5n },
        { alias: plc.get('flag')!.alias!, datatype: DataType.Boolean, value: true },
        { name: 'ramp', datatype: DataType.UInt16, value: 7 },
      ]),
      [
        { kind: 'write', device: 'plc', tag: 'sp', value: 12.5 },
        { kind: 'write', device: 'plc', tag: 'big', value: -5n },
        { kind: 'write', device: 'plc', tag: 'flag', value: true },
        { kind: 'write', device: 'plc', tag: 'ramp', value: 7 },
      ],
    );
    const unknown = dcmd('plc', [
      { alias: 999, datatype: DataType.Int32, value: 1 },
      { alias: aux.get('level')!.alias!, datatype: DataType.UInt16, value: 2 },
      { name: 'nope', datatype: DataType.Int32, value: 3 },
    ]);
    assert.deepEqual(
      unknown.map((action) => action.kind === 'write' && [action.device, action.tag]),
      [
        ['plc', 'alias 999'],
        ['plc', `alias ${String(aux.get('level')!.alias)}`],
        ['plc', 'nope'],
      ],
      "another device's alias is not this device's tag",
    );
  });

  it('garbage payloads: decodeDownlink gives [] without throwing; a damaged record cannot be encoded', (t) => {
    const setup = setUp(t, { primaryHostId: 'scada' });
    setup.format.will(setup.session);
    for (const payload of [
      Buffer.from('garbage \xff\xfe'),
      Buffer.from([0x0a, 0xff, 0xff]),
      Buffer.alloc(0),
      Buffer.from('{"online":"yes"}'),
    ])
      for (const where of [topic('NCMD'), topic('DCMD', 'plc'), 'spBv1.0/STATE/scada', 'elsewhere/x'])
        assert.deepEqual(setup.format.decodeDownlink(where, payload, false), [], `${where}: ${payload.toString('hex')}`);
    const damaged: StoredMessage = {
      topic: topic('DDATA', 'plc'),
      payload: Buffer.from('not json'),
      qos: 0,
      retain: false,
      kind: RecordKind.SPARKPLUG_DATA,
      id: 1,
      size: 8,
      created: 1,
    };
    assert.equal(setup.format.encode(damaged, setup.session), undefined);
    assert.equal(setup.format.encode({ ...damaged, kind: RecordKind.MESSAGE }, setup.session), undefined, 'not a Sparkplug row');
  });
});

describe('SparkplugFormat: behaviours fixed after review', () => {
  /** A FormatControl that counts the rebirths asked for. */
  function control(setup: Setup, t: TestContext): string[] {
    const asked: string[] = [];
    setup.format.attach({ rebirth: (reason) => asked.push(reason), publishLive: () => undefined });
    t.after(() => setup.format.detach());
    return asked;
  }
  const untyped = (name: string, last?: Sample) => ({ name, type: {}, unit: undefined, last });

  it('no declared type, born a guessed Double, first value a string: is_null + bad (never a String), one rebirth for 20 misfits, String at the next births', async (t) => {
    const setup = setUp(t);
    const asked = control(setup, t);
    const names = Array.from({ length: 20 }, (_, i) => `t${i}`);
    setup.devices.set('ua', { name: 'ua', connected: true, tags: names.map((name) => untyped(name)) });
    const { births } = born(setup);
    const birth = byName(setup.decode(births[3]!));
    assert.deepEqual(
      names.map((name) => [birth.get(name)?.datatype, birth.get(name)?.isNull]),
      names.map(() => [DataType.Double, true]),
      'no value, no type: a guessed Double',
    );
    const text = (ts: number) => names.map((name) => sample(name, `text ${ts}`, ts));
    const [data] = list(setup.format.encode(setup.cycle('ua', text(100)), setup.session));
    const raw = decodePayload(data!.payload);
    assert.deepEqual(
      raw.metrics?.map((m) => [m.value, m.isNull, m.properties?.Quality?.value]),
      names.map(() => [undefined, true, 0]),
      'is_null with Quality bad: no string_value under the Double alias',
    );
    assert.deepEqual(
      setup.decode(data!).metrics?.map((m) => m.value),
      names.map(() => undefined),
    );
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(asked.length, 1, `one rebirth for 20 misfitting tags: ${JSON.stringify(asked)}`);
    list(setup.format.encode(setup.cycle('ua', text(200)), setup.session));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(asked.length, 1, 'still one until the births are done');
    // The rebirth: the catalog has the string values now.
    setup.devices.get('ua')!.tags = names.map((name) => untyped(name, sample(name, 'text 200', 200)));
    const again = setup.format.births(setup.session)!;
    const reborn = byName(setup.decode(again[3]!));
    assert.deepEqual(
      names.map((name) => [reborn.get(name)?.datatype, reborn.get(name)?.value]),
      names.map(() => [DataType.String, 'text 200']),
    );
    const next = setup.decode(list(setup.format.encode(setup.cycle('ua', text(300)), setup.session))[0]!);
    assert.deepEqual(
      next.metrics?.map((m) => [m.value, m.isNull]),
      names.map(() => ['text 300', undefined]),
    );
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(asked.length, 1, 'learned: no further rebirth');
  });

  it('a reload removed a tag: after births without it, a queued row with it goes as DDATA without its alias', (t) => {
    const setup = setUp(t);
    const queued = setup.cycle('plc', [sample('ramp', 11, 2000), sample('temp', 22.5, 2000)], 1);
    const onlyTemp = setup.cycle('plc', [sample('temp', 23.5, 2100)], 2);
    const { births } = born(setup);
    const tempAlias = byName(setup.decode(births[1]!)).get('temp')!.alias;
    const rampAlias = byName(setup.decode(births[1]!)).get('ramp')!.alias;
    const plc = setup.devices.get('plc')!;
    plc.tags = plc.tags.filter((tag) => tag.name !== 'temp');
    const again = setup.format.births(setup.session)!;
    assert.ok(!byName(setup.decode(again[1]!)).has('temp'), 'the new DBIRTH does not declare temp');
    const [data] = list(setup.format.encode(queued, setup.session));
    assert.deepEqual(
      decodePayload(data!.payload).metrics?.map((m) => [m.alias, m.value, m.isHistorical]),
      [[rampAlias, 11, true]],
      `no metric of alias ${String(tempAlias)}: hosts rebirth on an alias no birth declared`,
    );
    assert.deepEqual(list(setup.format.encode(onlyTemp, setup.session)), [], 'a row of the removed tag only: nothing');
    assert.equal(decodePayload(data!.payload).seq, 3);
  });

  it('a device born late (its DBIRTH carries ts 20): a live row of ts 10 goes as is_historical, ts 20 is not resent, ts 30 is live', (t) => {
    const setup = setUp(t);
    const aux = setup.devices.get('aux')!;
    aux.connected = false;
    born(setup);
    aux.connected = true;
    aux.tags = aux.tags.map((tag) => ({ ...tag, last: sample('level', 20, 20) }));
    const rows = [10, 20, 30].map((ts) => setup.cycle('aux', [sample('level', ts, ts)]));
    const first = list(setup.format.encode(rows[0]!, setup.session));
    assert.deepEqual(
      first.map((m) => m.topic),
      [topic('DBIRTH', 'aux'), topic('DDATA', 'aux')],
    );
    const birth = byName(setup.decode(first[0]!)).get('level');
    assert.deepEqual([birth?.value, birth?.timestamp], [20, 20], 'the birth carries the latest value');
    assert.deepEqual(
      setup.decode(first[1]!).metrics?.map((m) => [m.value, m.timestamp, m.isHistorical]),
      [[10, 10, true]],
      'older than the birth: history, never a step back of the current value',
    );
    assert.deepEqual(list(setup.format.encode(rows[1]!, setup.session)), [], 'the birth carried it');
    const live = list(setup.format.encode(rows[2]!, setup.session));
    assert.deepEqual(
      live.map((m) => setup.decode(m).metrics?.map((x) => [x.value, x.timestamp, x.isHistorical])),
      [[[30, 30, undefined]]],
    );
  });

  it('births: a device not connected gets its DBIRTH, then a DDEATH after all DBIRTHs, before any data; seq continuous', (t) => {
    const setup = setUp(t);
    setup.devices.get('aux')!.connected = false;
    setup.devices.set('ua', { name: 'ua', connected: true, tags: [untyped('speed', sample('speed', 1.5, 900))] });
    const { births } = born(setup);
    assert.deepEqual(
      births.map((m) => [m.topic, decodePayload(m.payload).seq]),
      [
        [topic('NBIRTH'), 0],
        [topic('DBIRTH', 'plc'), 1],
        [topic('DBIRTH', 'aux'), 2],
        [topic('DBIRTH', 'ua'), 3],
        [topic('DDEATH', 'aux'), 4],
      ],
      '[tck-id-payloads-dbirth-order]: every DBIRTH right after the NBIRTH, the DDEATH after them',
    );
    const data = list(setup.format.encode(setup.cycle('plc', [sample('ramp', 12, 3000)]), setup.session));
    assert.deepEqual(
      data.map((m) => [m.topic, decodePayload(m.payload).seq]),
      [[topic('DDATA', 'plc'), 5]],
    );
    assert.deepEqual(list(setup.format.encode(setup.cycle('aux', [sample('level', null, 3100, 'bad')]), setup.session)), []);
    const back = list(setup.format.encode(setup.cycle('aux', [sample('level', 7, 3200)]), setup.session));
    assert.deepEqual(back.map((m) => [m.topic, decodePayload(m.payload).seq]).slice(0, 1), [[topic('DBIRTH', 'aux'), 6]]);
  });

  it('NCMD with Rebirth = true and other metrics of other types (Int64, String, by alias) still rebirths', (t) => {
    const setup = setUp(t);
    born(setup);
    const ncmd = (metrics: SparkplugMetric[], omitDatatypes: boolean) =>
      setup.format.decodeDownlink(topic('NCMD'), encodePayload({ timestamp: Date.now(), metrics }, { omitDatatypes }), false);
    const rebirth: SparkplugMetric = { name: 'Node Control/Rebirth', datatype: DataType.Boolean, value: true };
    const others: SparkplugMetric[] = [
      { name: 'Node Control/Next Server', datatype: DataType.Int64, value: -5n },
      { name: 'Properties/Note', datatype: DataType.String, value: 'x' },
      { alias: 3, datatype: DataType.UInt64, value: 2n ** 64n - 1n },
    ];
    for (const omitDatatypes of [false, true]) {
      assert.deepEqual(
        ncmd([rebirth, ...others], omitDatatypes),
        [{ kind: 'rebirth' }],
        `Rebirth first, datatypes omitted: ${omitDatatypes}`,
      );
      assert.deepEqual(
        ncmd([...others, rebirth], omitDatatypes),
        [{ kind: 'rebirth' }],
        `Rebirth last, datatypes omitted: ${omitDatatypes}`,
      );
      assert.deepEqual(ncmd(others, omitDatatypes), [], 'no Rebirth: nothing');
    }
  });
});
