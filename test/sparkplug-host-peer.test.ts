// The Sparkplug B host peer (test/helpers/sparkplug-host.py behind test/helpers/sparkplug-host.ts)
// proved against a scripted edge node: mqtt.js and our codec (src/northbound/sparkplug/payload.ts)
// on a real mosquitto. A correct session yields no violation and the right model; a broken one
// yields each expected violation with its rule id, in order; NCMD rebirth and DCMD writes reach
// the edge node as our codec decodes them; STATE is published retained at QoS 1, its will too.
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import mqtt, { type IPublishPacket, type MqttClient } from 'mqtt';
import {
  DataType,
  decodePayload,
  encodePayload,
  engUnitProperty,
  QualityCode,
  qualityProperty,
  type SparkplugMetric,
  type SparkplugPayload,
} from '../src/northbound/sparkplug/payload.js';
import { killAllChildren, makeTempDir, Mosquitto, removeDir } from './helpers/cloud-broker.js';
import { waitFor } from './helpers/net.js';
import { type SparkplugHost, startSparkplugHost } from './helpers/sparkplug-host.js';

const GROUP = 'plant1';
const NODE = 'edge-7';
const REBIRTH = 'Node Control/Rebirth';
const INT64_MIN = -(2n ** 63n);

function topic(type: string, device?: string): string {
  return `spBv1.0/${GROUP}/${type}/${NODE}${device === undefined ? '' : `/${device}`}`;
}

/** Metric timestamps all "now": chronological order holds. */
function metric(fields: SparkplugMetric): SparkplugMetric {
  return { timestamp: Date.now(), ...fields };
}

function bdSeqMetric(bdSeq: number): SparkplugMetric {
  return metric({ name: 'bdSeq', datatype: DataType.Int64, value: BigInt(bdSeq) });
}

function nbirth(bdSeq: number, seq = 0): SparkplugPayload {
  return {
    timestamp: Date.now(),
    seq,
    metrics: [
      bdSeqMetric(bdSeq),
      metric({ name: REBIRTH, datatype: DataType.Boolean, value: false }),
      metric({ name: 'Properties/Version', alias: 1, datatype: DataType.String, value: '0.1.0' }),
    ],
  };
}

/** Device d1's metrics, with their aliases (node-wide unique: 1 is the node's). */
const D1: Record<string, { alias: number; datatype: DataType }> = {
  temp: { alias: 10, datatype: DataType.Double },
  count: { alias: 11, datatype: DataType.Int32 },
  big: { alias: 12, datatype: DataType.Int64 },
  bad: { alias: 13, datatype: DataType.Float },
  ok: { alias: 14, datatype: DataType.Boolean },
};

function dbirthD1(seq: number): SparkplugPayload {
  return {
    timestamp: Date.now(),
    seq,
    metrics: [
      metric({ name: 'temp', alias: 10, datatype: DataType.Double, value: 21.5, properties: { engUnit: engUnitProperty('°C') } }),
      metric({ name: 'count', alias: 11, datatype: DataType.Int32, value: -5 }),
      metric({ name: 'big', alias: 12, datatype: DataType.Int64, value: 2n ** 60n + 1n }),
      metric({ name: 'bad', alias: 13, datatype: DataType.Float, isNull: true, properties: { Quality: qualityProperty(QualityCode.BAD) } }),
      metric({ name: 'ok', alias: 14, datatype: DataType.Boolean, value: true }),
    ],
  };
}

/** A DDATA/NDATA payload: by alias only, no datatype on the wire. */
function data(seq: number, values: [alias: number, datatype: DataType, value: SparkplugMetric['value'], historical?: boolean][]): Buffer {
  return encodePayload(
    {
      timestamp: Date.now(),
      seq,
      metrics: values.map(([alias, datatype, value, historical]) =>
        metric({ alias, datatype, value, ...(historical ? { isHistorical: true } : {}) }),
      ),
    },
    { omitDatatypes: true },
  );
}

interface Edge {
  client: MqttClient;
  publish(type: string, device: string | undefined, payload: Buffer | SparkplugPayload, qos?: 0 | 1, retain?: boolean): Promise<void>;
  received: { topic: string; payload: Buffer; packet: IPublishPacket }[];
}

/** The scripted edge node: MQTT 3.1.1, clean session, the NDEATH will with `bdSeq`. */
async function connectEdge(url: string, bdSeq: number, t: TestContext): Promise<Edge> {
  const will = encodePayload({ timestamp: Date.now(), metrics: [bdSeqMetric(bdSeq)] });
  const client = await mqtt.connectAsync(url, {
    clientId: `edge-${bdSeq}-${process.pid}`,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    will: { topic: topic('NDEATH'), payload: will, qos: 1, retain: false },
  });
  t.after(() => client.endAsync(true));
  const received: Edge['received'] = [];
  client.on('message', (topic, payload, packet) => received.push({ topic, payload, packet }));
  return {
    client,
    received,
    publish: async (type, device, payload, qos = 0, retain = false) => {
      const bytes = Buffer.isBuffer(payload) ? payload : encodePayload(payload);
      await client.publishAsync(topic(type, device), bytes, { qos, retain });
    },
  };
}

async function setUp(t: TestContext, hostId?: string): Promise<{ cloud: Mosquitto; host: SparkplugHost }> {
  const dir = makeTempDir('plc2mqtt-sphost-');
  t.after(async () => {
    await killAllChildren();
    removeDir(dir);
  });
  const cloud = await Mosquitto.startNew(dir);
  const host = await startSparkplugHost({ url: cloud.url, group: GROUP, node: NODE, ...(hostId === undefined ? {} : { hostId }) });
  t.after(() => host.stop());
  return { cloud, host };
}

describe('Sparkplug host peer (test/helpers/sparkplug-host.py)', () => {
  it('a correct session (will, NBIRTH, DBIRTHs, DDATA/NDATA by alias, history, DDEATH, NDEATH): no violation, the right model', async (t) => {
    const { cloud, host } = await setUp(t);
    const edge = await connectEdge(cloud.url, 3, t);
    await edge.publish('NBIRTH', undefined, nbirth(3));
    await edge.publish('DBIRTH', 'd1', dbirthD1(1));
    await edge.publish('DBIRTH', 'd2', {
      timestamp: Date.now(),
      seq: 2,
      metrics: [metric({ name: 'level', alias: 20, datatype: DataType.UInt16, value: 100 })],
    });
    await edge.publish(
      'DDATA',
      'd1',
      data(3, [
        [10, DataType.Double, 22.5],
        [11, DataType.Int32, -6],
        [12, DataType.Int64, INT64_MIN],
      ]),
    );
    await edge.publish('NDATA', undefined, data(4, [[1, DataType.String, '0.2.0']]));
    await edge.publish('DDATA', 'd2', data(5, [[20, DataType.UInt16, 90, true]]));
    await edge.publish('DDATA', 'd2', data(6, [[20, DataType.UInt16, 101]]));
    await host.waitForMessage((message) => message.type === 'DDATA' && message.seq === 6);

    const live = await host.snapshot();
    const node = live.nodes[NODE]!;
    assert.deepEqual([node.online, node.born, node.bdSeq, node.seq, node.births], [true, true, 3, 6, 1]);
    assert.equal(node.metrics['Properties/Version']!.value, '0.2.0');
    const d1 = node.devices.d1!;
    assert.deepEqual([d1.born, d1.dead, d1.seq], [true, false, 3]);
    assert.equal(d1.metrics.temp!.value, 22.5);
    assert.equal(d1.metrics.temp!.properties.engUnit!.value, '°C');
    assert.equal(d1.metrics.count!.value, -6);
    assert.equal(d1.metrics.big!.value, INT64_MIN.toString(), 'beyond 2^53: a decimal string');
    assert.deepEqual([d1.metrics.bad!.isNull, d1.metrics.bad!.quality], [true, QualityCode.BAD]);
    assert.equal(d1.metrics.ok!.value, true);
    const d2 = node.devices.d2!;
    assert.deepEqual([d2.metrics.level!.value, d2.historical, d2.seq], [101, 1, 6], 'history counted, the live value kept');

    const history = host.messages().find((message) => message.seq === 5)!;
    assert.deepEqual(
      history.metrics!.map((m) => [m.name, m.named, m.alias, m.datatype, m.typed, m.value, m.isHistorical]),
      [['level', false, 20, DataType.UInt16, false, 90, true]],
      'resolved through the DBIRTH alias, datatype from the birth',
    );
    const firstData = host.messages().find((message) => message.seq === 3)!;
    assert.deepEqual([firstData.qos, firstData.retain, firstData.device], [0, false, 'd1']);

    await edge.publish('DDEATH', 'd1', { timestamp: Date.now(), seq: 7 });
    // A graceful end: NDEATH (the will's payload) at QoS 1, then DISCONNECT.
    await edge.publish('NDEATH', undefined, { timestamp: Date.now(), metrics: [bdSeqMetric(3)] }, 1);
    await edge.client.endAsync();
    await host.waitForMessage((message) => message.type === 'NDEATH');

    const after = (await host.snapshot()).nodes[NODE]!;
    assert.deepEqual([after.online, after.born, after.deaths], [false, false, 1]);
    assert.deepEqual([after.devices.d1!.dead, after.devices.d1!.deaths, after.devices.d1!.seq], [true, 1, 7]);
    assert.equal(after.devices.d1!.metrics.temp!.stale, true);
    assert.deepEqual([after.devices.d2!.dead, after.devices.d2!.born], [true, false], "offline with its node's NDEATH");
    assert.deepEqual(host.violations(), []);
    assert.deepEqual(host.errors(), []);
  });

  it('a broken session: each violation with its rule id, in order', async (t) => {
    const { cloud, host } = await setUp(t);
    const edge = await connectEdge(cloud.url, 5, t);
    await edge.publish('NBIRTH', undefined, nbirth(6, 3)); // seq 3; bdSeq 6 ≠ the will's 5
    await edge.publish('DDATA', 'd1', data(4, [[10, DataType.Double, 1]])); // before its DBIRTH
    const birth = dbirthD1(5);
    birth.metrics!.push(metric({ name: 'dup', alias: 1, datatype: DataType.Int32, value: 1 })); // the node's alias
    await edge.publish('DBIRTH', 'd1', birth); // after data
    await edge.publish('DDATA', 'd1', data(7, [[10, DataType.Double, 23]])); // 6 is missing
    await edge.publish('DDATA', 'd1', {
      timestamp: Date.now(),
      seq: 8,
      metrics: [metric({ name: 'temp', alias: 10, value: 24, datatype: DataType.Double })],
    }); // a name (and a datatype) in DDATA
    await edge.publish('DDATA', 'd1', data(9, [[10, DataType.Double, 25]]), 1); // QoS 1
    await edge.publish('DDATA', 'd1', data(10, [[10, DataType.Double, 26]]), 0, true); // retained
    // Everything written has arrived (destroying the socket could lose what is still in its buffer).
    await host.waitForMessage((message) => message.seq === 10);
    // The connection drops: mosquitto publishes the will, whose bdSeq (5) is not the NBIRTH's (6).
    (edge.client.stream as Socket).destroy();
    await host.waitForMessage((message) => message.type === 'NDEATH');

    assert.deepEqual(
      host.violations().map((violation) => [violation.rule, violation.level, violation.topic]),
      [
        ['tck-id-topics-nbirth-seq-num', 'must', topic('NBIRTH')],
        ['tck-id-payloads-ddata-order', 'must', topic('DDATA', 'd1')],
        ['tck-id-operational-behavior-data-publish-dbirth', 'must', topic('DDATA', 'd1')],
        ['tck-id-payloads-dbirth-order', 'must', topic('DBIRTH', 'd1')],
        ['tck-id-payloads-alias-uniqueness', 'must', topic('DBIRTH', 'd1')],
        ['tck-id-payloads-ddata-seq-inc', 'must', topic('DDATA', 'd1')],
        ['tck-id-payloads-alias-data-cmd-requirement', 'must', topic('DDATA', 'd1')],
        ['tck-id-payloads-metric-datatype-not-req', 'should', topic('DDATA', 'd1')],
        ['tck-id-payloads-ddata-qos', 'must', topic('DDATA', 'd1')],
        ['tck-id-payloads-ddata-retain', 'must', topic('DDATA', 'd1')],
        ['tck-id-payloads-ndeath-bdseq', 'must', topic('NDEATH')],
      ],
      JSON.stringify(host.violations(), null, 1),
    );
    const messages = host.violations().map((violation) => violation.message);
    assert.match(messages[0]!, /seq is 3/);
    assert.match(messages[5]!, /seq is 7, expected 6/);
    assert.match(messages[10]!, /bdSeq 5 does not match the NBIRTH's 6/);
    const node = (await host.snapshot()).nodes[NODE]!;
    assert.deepEqual([node.online, node.bdSeq], [true, 6], 'a host ignores an NDEATH of another bdSeq');
    assert.equal(node.devices.d1!.metrics.temp!.value, 26);
    assert.deepEqual(host.errors(), []);
  });

  it('rebirth and DCMD commands reach the edge node as NCMD/DCMD our codec decodes; a rebirth with a new bdSeq is flagged', async (t) => {
    const { cloud, host } = await setUp(t);
    const edge = await connectEdge(cloud.url, 0, t);
    await edge.client.subscribeAsync([topic('NCMD'), `spBv1.0/${GROUP}/DCMD/${NODE}/+`], { qos: 1 });
    await edge.publish('NBIRTH', undefined, nbirth(0));
    await edge.publish('DBIRTH', 'd1', dbirthD1(1));
    await host.waitForMessage((message) => message.type === 'DBIRTH');
    const received = async (count: number) => {
      await waitFor(() => edge.received.length >= count, 5000, `${count} commands at the edge node`);
      return edge.received[count - 1]!;
    };

    await host.control({ rebirth: true });
    const ncmd = await received(1);
    assert.equal(ncmd.topic, topic('NCMD'));
    assert.deepEqual([ncmd.packet.qos, ncmd.packet.retain], [0, false], 'QoS 0 (the edge node subscribed at QoS 1)');
    const rebirth = decodePayload(ncmd.payload);
    assert.equal(typeof rebirth.timestamp, 'number');
    assert.equal(rebirth.seq, undefined);
    assert.deepEqual(rebirth.metrics, [{ name: REBIRTH, datatype: DataType.Boolean, value: true }], 'by name, no alias');
    await edge.publish('NBIRTH', undefined, nbirth(0));
    await edge.publish('DBIRTH', 'd1', dbirthD1(1));

    const datatypeOf = ({ name, alias }: { name?: string; alias?: bigint }) =>
      Object.entries(D1).find(([known, entry]) => known === name || BigInt(entry.alias) === alias)?.[1].datatype;
    const dcmd = async (count: number) => {
      const { topic, payload } = await received(count);
      assert.equal(topic, `spBv1.0/${GROUP}/DCMD/${NODE}/d1`);
      const wire = decodePayload(payload);
      assert.equal(typeof wire.timestamp, 'number');
      return { wire: wire.metrics![0]!, metric: decodePayload(payload, { datatypeOf }).metrics![0]! };
    };
    await host.control({ dcmd: { device: 'd1', metric: 'count', value: -7, byAlias: true } });
    let got = await dcmd(2);
    assert.deepEqual([got.metric.name, got.metric.alias, got.metric.datatype, got.metric.value], [undefined, 11n, DataType.Int32, -7]);
    assert.deepEqual([got.wire.datatype, got.wire.value], [undefined, 4294967289], 'no datatype on the wire; Int32 -7 sign-extended');
    await host.control({ dcmd: { device: 'd1', metric: 'temp', value: 30.25 } });
    got = await dcmd(3);
    assert.deepEqual([got.metric.name, got.metric.alias, got.metric.value], ['temp', undefined, 30.25]);
    await host.control({ dcmd: { device: 'd1', metric: 'big', value: INT64_MIN.toString(), byAlias: true, datatype: true } });
    got = await dcmd(4);
    assert.deepEqual([got.wire.alias, got.wire.datatype, got.metric.value], [12n, DataType.Int64, INT64_MIN]);
    await host.control({ dcmd: { device: 'd1', metric: 'ok', value: false, byAlias: true } });
    got = await dcmd(5);
    assert.deepEqual([got.metric.alias, got.metric.value], [14n, false]);
    await assert.rejects(host.control({ dcmd: { device: 'd1', metric: 'nope', value: 1 } }), /declares nope/);
    await assert.rejects(host.control({ dcmd: { device: 'd1', metric: 'count', value: 2 ** 31 } }), /out of range/);
    assert.equal(edge.received.length, 5, 'nothing published for refused commands');
    assert.deepEqual(host.violations(), [], 'the rebirth kept bdSeq 0 and restarted seq at 0');

    // Answered with another bdSeq, as if the edge node had reconnected without saying so.
    await host.control({ rebirth: true });
    await received(6);
    await edge.publish('NBIRTH', undefined, nbirth(1));
    await host.waitFor(({ violations }) => violations.length > 0, 5000, 'a violation');
    assert.deepEqual(
      host.violations().map((violation) => violation.rule),
      ['tck-id-operational-behavior-data-commands-rebirth-action-3'],
    );
    const commands = host.messages().filter((message) => message.type === 'NCMD' || message.type === 'DCMD');
    assert.equal(commands.length, 6, 'the host sees its own commands, unchecked');
  });

  it('primary host: STATE online at start, offline/online on command, retained at QoS 1; its will is OFFLINE with the birth timestamp', async (t) => {
    const { cloud, host } = await setUp(t, 'scada-1');
    const stateTopic = 'spBv1.0/STATE/scada-1';
    /** The retained STATE a new subscriber gets, with its QoS and retain flag. */
    const retained = async () => {
      const client = await mqtt.connectAsync(cloud.url, { reconnectPeriod: 0, connectTimeout: 5000 });
      try {
        const got: { payload: unknown; qos: number; retain: boolean }[] = [];
        client.on('message', (_topic, payload, packet) =>
          got.push({ payload: JSON.parse(payload.toString()), qos: packet.qos, retain: packet.retain }),
        );
        await client.subscribeAsync(stateTopic, { qos: 1 });
        await waitFor(() => got.length > 0, 5000, 'the retained STATE');
        return got[0]!;
      } finally {
        await client.endAsync(true);
      }
    };

    const birth = await retained();
    assert.deepEqual([birth.qos, birth.retain], [1, true]);
    const { online, timestamp } = birth.payload as { online: boolean; timestamp: number };
    assert.equal(online, true);
    assert.ok(Number.isSafeInteger(timestamp) && timestamp > 1_600_000_000_000, `a timestamp in ms: ${timestamp}`);

    await host.control({ state: 'offline', timestamp: timestamp + 1 });
    assert.deepEqual(await retained(), { payload: { online: false, timestamp: timestamp + 1 }, qos: 1, retain: true });
    await host.control({ state: 'online', timestamp: timestamp + 2 });
    assert.deepEqual(await retained(), { payload: { online: true, timestamp: timestamp + 2 }, qos: 1, retain: true });

    // Its will, with the timestamp of its CONNECT ([tck-id-host-topic-phid-death-payload-timestamp-connect]).
    const watcher = await mqtt.connectAsync(cloud.url, { reconnectPeriod: 0, connectTimeout: 5000 });
    t.after(() => watcher.endAsync(true));
    const states: unknown[] = [];
    watcher.on('message', (_topic, payload) => states.push(JSON.parse(payload.toString())));
    await watcher.subscribeAsync(stateTopic, { qos: 1 });
    await waitFor(() => states.length === 1, 5000, 'the retained STATE');
    await host.kill();
    await waitFor(
      () => states.length === 2,
      5000,
      () => `the will; seen ${JSON.stringify(states)}`,
    );
    assert.deepEqual(states[1], { online: false, timestamp });
    assert.deepEqual(await retained(), { payload: { online: false, timestamp }, qos: 1, retain: true });
    await assert.rejects(host.control({ state: 'online' }), /not running/);
  });
});
