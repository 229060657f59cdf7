// The Sparkplug B 3.0 format: the gateway is an edge node, each of its devices a Sparkplug device,
// each tag a metric.
//
//   connect      the will is NDEATH with this CONNECT's bdSeq (bdseq.ts, on disk before it is used)
//   births       NBIRTH (seq 0, the same bdSeq, Node Control/Rebirth, node metrics), then a DBIRTH
//                per connected device: every tag with name, alias, datatype, current value or
//                is_null, unit and quality; held while a primary host is configured and not online
//   data         one outbox record per device and poll cycle (the samples it reported), encoded at
//                send time as DDATA: aliases only, the session's seq (0–255 on every message),
//                is_historical for rows stored before this connection's births
//   device lost  a record too, so it stays in order with the device's data: DDEATH. The device's
//                next row with a value is sent as a DBIRTH (then what is newer than that birth),
//                rows with nothing but bad samples while it is dead are not sent
//   commands     NCMD Node Control/Rebirth → births again, seq 0, same bdSeq; DCMD metrics (by
//                alias or name) → writes through the gateway's command handler; STATE of the
//                primary host → births when online, NDEATH + disconnect when offline
//
// Rule ids in brackets are the specification's ([tck-id-…]); see README "Sparkplug B".
import type { Logger } from 'pino';
import { BridgeRules, type UplinkConfig } from '../../cloud/bridge-rules.js';
import type { StoredMessage } from '../../cloud/buffer.js';
import type { Quality, TagValue } from '../../pipeline/driver.js';
import type { Sample } from '../../pipeline/normalize.js';
import { errorMessage } from '../../util/errors.js';
import {
  RecordKind,
  type CloudMessage,
  type CloudSubscriptions,
  type DeviceRecorder,
  type DeviceReport,
  type DownlinkAction,
  type FormatControl,
  type FormatSession,
  type NorthboundFormat,
  type Recorder,
} from '../format.js';
import type { BdSeqStore } from './bdseq.js';
import {
  type DataMetric,
  type DataProperties,
  DataType,
  dataMetric,
  dataProperties,
  decodePayload,
  encodeDataPayload,
  encodePayload,
  engUnitProperty,
  type MetricValue,
  type PropertySet,
  type SparkplugMetric,
  type SparkplugPayload,
} from './payload.js';
import { PrimaryHost } from './primary-host.js';
import type { WireScalar } from './datatypes.js';
import { metricValueOf, sparkplugTypeOf, type TagTypeInfo, wireValueOf } from './tags.js';

/** A tag as the format sees it: what it needs for births and data. */
export interface CatalogTag {
  name: string;
  type: TagTypeInfo;
  unit: string | undefined;
  /** The latest sample of the tag, if any. */
  last: Sample | undefined;
}

export interface CatalogDevice {
  name: string;
  /** Its driver is connected: it is born at the next births. */
  connected: boolean;
  tags: readonly CatalogTag[];
}

/** The gateway's devices and tags, read at births (not on the hot path). */
export interface Catalog {
  devices(): Iterable<CatalogDevice>;
  device(name: string): CatalogDevice | undefined;
}

/** The node metrics besides bdSeq and Rebirth. */
export interface NodeStats {
  outboxDepth: number;
  reconnects: number;
}

export interface SparkplugOptions {
  groupId: string;
  edgeNodeId: string;
  primaryHostId?: string | undefined;
  quality: 'sparkplug' | 'ignition';
  nodeMetricsInterval: number;
  version: string;
  /** The uplink's forward and receive rules: local clients' topics may still pass as they are. */
  rules: Pick<UplinkConfig, 'forward' | 'receive' | 'format'>;
  bdSeq: BdSeqStore;
  catalog: Catalog;
  nodeStats: () => NodeStats;
  log: Logger;
}

const NAMESPACE = 'spBv1.0';
const REBIRTH = 'Node Control/Rebirth';
const BDSEQ = 'bdSeq';
/** Node metrics with an alias, in NBIRTH order. */
const NODE_METRICS = [
  { name: 'Outbox/Depth', stat: 'outboxDepth' },
  { name: 'Uplink/Reconnects', stat: 'reconnects' },
] as const;

/** Quality property values (Sparkplug 3.0 §6.4.9; Ignition 8 codes as an option). Good is left out, as the spec allows. */
const QUALITY_CODES = {
  sparkplug: { uncertain: 0, bad: 0 },
  ignition: { uncertain: 1073742080, bad: -2147483136 },
} as const;

/** How a sample's quality is stored in a record. */
const QUALITY_INDEX: Record<Quality, number> = { good: 0, uncertain: 1, bad: 2 };
const QUALITY_OF: readonly Quality[] = ['good', 'uncertain', 'bad'];

/** A sample of a record of the first version: [tag, quality index, ts, value as JSON (bigint as {"n": "…"}), or null]. */
type StoredSample = [string, number, number, unknown];

/**
 * A DATA record as stored: columns of the cycle's samples. Most cycles have one timestamp and
 * only good samples: then `t` and `q` are left out. (The first version stored a tuple per
 * sample, `s`; rows of it are still read.)
 */
interface DataRecord {
  /** The device. */
  d: string;
  /** Tag names. */
  n?: string[];
  /** Values as JSON (bigint as {"n": "…"}), or null. */
  v?: unknown[];
  /** The timestamp of every sample, or… */
  ts?: number;
  /** …each sample's. */
  t?: number[];
  /** Quality indexes (QUALITY_INDEX), when not all are good. */
  q?: number[];
  /** The first version's samples. */
  s?: StoredSample[];
}

/** A sample as a record carries it to encode: the gateway's own Sample (live rows), or one read back from disk. */
interface CycleSample {
  tag: string;
  quality: Quality;
  ts: number;
  value: TagValue | null;
}

/** A device's poll cycle, as encode takes it. */
interface Cycle {
  device: string;
  samples: readonly CycleSample[];
}

interface DeathRecord {
  d: string;
  ts: number;
}

/** What the node declared for one metric at its first birth: kept for the life of the format. */
interface MetricInfo {
  alias: number;
  datatype: DataType;
  /** The datatype was a guess (no declared type and no value yet): a value of another type asks for a rebirth. */
  guessed: boolean;
}

/** What the format keeps per connection. */
interface SessionState {
  bdSeq: number;
  /** Births have gone out once: later births are rebirths, of the devices born then. */
  bornOnce: boolean;
  /** Devices born on this connection and not dead since: their rows go out as DDATA. */
  born: Set<string>;
  /**
   * Per device, the tags its latest DBIRTH on this connection declared, with the timestamp of the
   * value it carried (-Infinity: is_null). DDATA carries only those tags; a sample not newer than
   * the birth's value is history (older) or was carried by the birth (the same).
   */
  declared: Map<string, Map<string, number>>;
  /** Node metric values last published on this connection. */
  nodeValues: Map<string, number>;
}

export class SparkplugFormat implements NorthboundFormat {
  readonly name = 'sparkplug-b';
  readonly session = 'clean';
  /** MQTT 5 "Disconnect with Will Message": a graceful stop still publishes NDEATH by the broker too ([tck-id-operational-behavior-edge-node-intentional-disconnect-packet]). */
  readonly disconnectReason = 0x04;
  private readonly options: SparkplugOptions;
  private readonly log: Logger;
  private readonly rules: BridgeRules;
  private readonly host: PrimaryHost | undefined;
  private readonly topicPrefix: string;
  private readonly ncmdTopic: string;
  private readonly dcmdPrefix: string;
  private readonly sessions = new WeakMap<FormatSession, SessionState>();
  /** Per device, per tag; '' holds the node metrics. Aliases are unique node-wide [tck-id-payloads-alias-uniqueness]. */
  private readonly metrics = new Map<string, Map<string, MetricInfo>>();
  private readonly byAlias = new Map<number, { device: string; tag: string }>();
  private nextAlias = 1;
  private control: FormatControl | undefined;
  private nodeTimer: NodeJS.Timeout | undefined;
  /** Tags whose values did not fit their datatype, logged once each. */
  private readonly misfits = new Set<string>();
  /** A rebirth is asked for and not done yet: asked once, however many tags need it. */
  private rebirthAsked = false;
  /**
   * The cycle of each record payload recorded here, by the payload's Buffer: the outbox hands a
   * row to the sender from memory with the same Buffer, so a live row is encoded from its samples
   * without parsing its JSON (measured: JSON.parse was a quarter of the send-time cost). Rows read
   * back from disk are other Buffers: parsed. Weak: an entry goes with its row.
   */
  private readonly cycles = new WeakMap<Buffer, Cycle>();
  /** A data metric's Quality property by its sample's quality (none when good), built once: shared by every metric. */
  private readonly qualityProperties: Record<Quality, DataProperties | undefined>;

  constructor(options: SparkplugOptions) {
    this.options = options;
    this.log = options.log;
    this.rules = new BridgeRules(options.rules);
    this.host = options.primaryHostId !== undefined ? new PrimaryHost(options.primaryHostId) : undefined;
    this.topicPrefix = `${NAMESPACE}/${options.groupId}/`;
    this.ncmdTopic = this.topic('NCMD');
    this.dcmdPrefix = `${this.topic('DCMD')}/`;
    for (const metric of NODE_METRICS) this.declare('', metric.name, DataType.UInt64, false);
    const codes = QUALITY_CODES[options.quality];
    const quality = (code: number) => dataProperties({ Quality: { type: DataType.Int32, value: code } });
    this.qualityProperties = { good: undefined, uncertain: quality(codes.uncertain), bad: quality(codes.bad) };
  }

  attach(control: FormatControl): void {
    this.control = control;
    clearInterval(this.nodeTimer);
    this.nodeTimer = setInterval(() => control.publishLive((session) => this.nodeData(session)), this.options.nodeMetricsInterval);
    this.nodeTimer.unref();
  }

  /** Devices came, went or changed (a reload): the node declares itself again. */
  devicesChanged(): void {
    this.control?.rebirth('the devices changed (reload)');
  }

  detach(): void {
    clearInterval(this.nodeTimer);
    this.control = undefined;
  }

  // ------------------------------------------------------------ recording (hot path)

  /** The gateway's per-topic reports are not Sparkplug's: it records per device (deviceRecorder). */
  recorder(localTopic: string): Recorder | undefined {
    const route = this.rules.route(localTopic);
    // A forward rule may still send the gateway's JSON topics as they are, beside the metrics.
    if (!route) return undefined;
    return (report) => ({ topic: route.topic, payload: report.local.payload, qos: route.qos, retain: report.local.retain });
  }

  deviceRecorder(device: string): DeviceRecorder {
    const dataTopic = this.topic('DDATA', device);
    const deathTopic = this.topic('DDEATH', device);
    return (report: DeviceReport) => {
      if (report.kind === 'device-lost') {
        const record: DeathRecord = { d: device, ts: report.ts };
        return { kind: RecordKind.SPARKPLUG_DEATH, topic: deathTopic, payload: Buffer.from(JSON.stringify(record)), qos: 0, retain: false };
      }
      const { samples } = report;
      if (samples.length === 0) return undefined;
      const ts = samples[0]!.ts;
      let sameTs = true;
      let allGood = true;
      const names: string[] = [];
      const values: unknown[] = [];
      for (const sample of samples) {
        names.push(sample.tag);
        values.push(storedValue(sample.value));
        if (sample.ts !== ts) sameTs = false;
        if (sample.quality !== 'good') allGood = false;
      }
      const record: DataRecord = { d: device, n: names, v: values };
      if (sameTs) record.ts = ts;
      else record.t = samples.map((sample) => sample.ts);
      if (!allGood) record.q = samples.map((sample) => QUALITY_INDEX[sample.quality]);
      const payload = Buffer.from(JSON.stringify(record));
      // (The gateway's samples are new objects every cycle, never changed after: safe to keep.)
      this.cycles.set(payload, { device, samples: report.samples });
      return { kind: RecordKind.SPARKPLUG_DATA, topic: dataTopic, payload, qos: 0, retain: false };
    };
  }

  // ------------------------------------------------------------ sending

  encode(stored: StoredMessage, session: FormatSession): CloudMessage | CloudMessage[] | undefined {
    const state = this.sessions.get(session);
    if (!state) return undefined;
    if (stored.kind === RecordKind.SPARKPLUG_DATA) {
      const cycle = this.cycles.get(stored.payload) ?? parseCycle(stored.payload);
      if (!cycle) return undefined;
      return this.encodeData(cycle, session, state, session.historical(stored));
    }
    if (stored.kind === RecordKind.SPARKPLUG_DEATH) {
      const record = parseRecord<DeathRecord>(stored.payload);
      if (!record || typeof record.d !== 'string' || typeof record.ts !== 'number') return undefined;
      // A device that is not born on this connection has nothing to die.
      if (!state.born.delete(record.d)) return [];
      return this.message(this.topic('DDEATH', record.d), { timestamp: record.ts }, session);
    }
    return undefined;
  }

  private encodeData(cycle: Cycle, session: FormatSession, state: SessionState, historical: boolean): CloudMessage[] {
    const { device, samples } = cycle;
    if (state.born.has(device)) {
      const data = this.ddata(device, samples, session, state, historical);
      return data ? [data] : [];
    }
    // Dead (or never born) on this connection: samples without a value say nothing DDEATH did not;
    // a value means the device is back: its DBIRTH first [tck-id-operational-behavior-device-ddeath].
    if (!samples.some((sample) => sample.quality !== 'bad')) return [];
    const catalog = this.options.catalog.device(device);
    if (!catalog) return [];
    const birth = this.dbirth(catalog, session, state);
    state.born.add(device);
    // (What the birth carried is not sent again; older samples go as history.)
    const data = this.ddata(device, samples, session, state, historical);
    return data ? [birth, data] : [birth];
  }

  /** DDATA of a device's samples: aliases only, no datatypes ([tck-id-payloads-alias-data-cmd-requirement], [tck-id-payloads-metric-datatype-not-req]). */
  private ddata(
    device: string,
    samples: readonly CycleSample[],
    session: FormatSession,
    state: SessionState,
    historical: boolean,
  ): CloudMessage | undefined {
    const metricsOf = this.metrics.get(device);
    const born = state.declared.get(device);
    const metrics: DataMetric[] = [];
    // The name of the tag at hand, for an error message: one closure per message, not a string per value.
    let tag = '';
    const what = () => `${device}/${tag}`;
    // Metrics of one payload in time order [tck-id-operational-behavior-data-publish-dbirth-order]:
    // a cycle's samples may carry the device's own (older) timestamps in config order.
    for (const sample of inTimeOrder(samples)) {
      tag = sample.tag;
      const { ts } = sample;
      const info = metricsOf?.get(tag);
      const birthTs = born?.get(tag);
      // A tag the device's birth did not declare (removed by a reload since the row was stored): hosts rebirth on unknown aliases.
      if (!info || birthTs === undefined || ts === birthTs) continue;
      // A time that is not whole ms since the epoch (a damaged stored row) would fail the whole
      // message after a birth took its seq: the sample is left out instead.
      if (!Number.isSafeInteger(ts) || ts < 0) continue;
      let properties = this.qualityProperties[sample.quality];
      let value: WireScalar | undefined;
      if (sample.value !== null) {
        try {
          value = wireValueOf(info.datatype, sample.value, what);
        } catch (error) {
          this.misfit(device, tag, info, sample.value, errorMessage(error));
          properties = this.qualityProperties.bad;
        }
      }
      // Older than the value its birth carried: history, never a step back of the current value.
      metrics.push(dataMetric(info.alias, ts, value, historical || ts < birthTs, properties));
    }
    if (metrics.length === 0) return undefined;
    const payload = encodeDataPayload(Date.now(), session.peekSeq() & 0xff, metrics);
    // The seq is taken once the payload is encoded (see message).
    session.nextSeq();
    return { topic: this.topic('DDATA', device), payload, qos: 0, retain: false };
  }

  /** A metric's value (or is_null) and quality property; a value that does not fit the declared datatype goes as is_null, bad. */
  private fill(metric: SparkplugMetric, device: string, tag: string, info: MetricInfo, quality: Quality, value: TagValue | null): void {
    let properties: PropertySet | undefined;
    const codes = QUALITY_CODES[this.options.quality];
    if (quality !== 'good') properties = { Quality: { type: DataType.Int32, value: quality === 'bad' ? codes.bad : codes.uncertain } };
    if (value !== null) {
      try {
        metric.value = metricValueOf(info.datatype, value, `${device}/${tag}`);
      } catch (error) {
        this.misfit(device, tag, info, value, errorMessage(error));
        properties = { Quality: { type: DataType.Int32, value: codes.bad } };
      }
    }
    if (metric.value === undefined) metric.isNull = true;
    if (properties) metric.properties = { ...metric.properties, ...properties };
  }

  /**
   * A value that does not fit its metric's datatype: logged once. A guessed datatype is learned
   * at a rebirth (asked once); until then the values go as is_null, since a birth declared the type.
   */
  private misfit(device: string, tag: string, info: MetricInfo, value: TagValue, problem: string): void {
    if (info.guessed && sparkplugTypeOf({}, value) !== undefined) {
      if (this.rebirthAsked) return;
      this.rebirthAsked = true;
      this.log.info(
        { device, tag, problem },
        'a tag without a declared type has a value of another datatype than its birth said: births again',
      );
      queueMicrotask(() => this.control?.rebirth(`the datatype of ${device}/${tag} is known now`));
      return;
    }
    const key = `${device}\u0000${tag}`;
    if (this.misfits.has(key)) return;
    this.misfits.add(key);
    this.log.warn({ device, tag, problem }, 'a value does not fit the datatype of its Sparkplug metric: sent as null with bad quality');
  }

  will(session: FormatSession): CloudMessage {
    const bdSeq = this.options.bdSeq.next();
    this.host?.newSession();
    this.sessions.set(session, { bdSeq, bornOnce: false, born: new Set(), declared: new Map(), nodeValues: new Map() });
    return this.death(bdSeq);
  }

  goodbye(session: FormatSession): CloudMessage | undefined {
    const state = this.sessions.get(session);
    return state && this.death(state.bdSeq);
  }

  /** NDEATH: only bdSeq (Int64), no seq ([tck-id-topics-ndeath-payload], [tck-id-topics-ndeath-seq]); QoS 1, not retained. */
  private death(bdSeq: number): CloudMessage {
    const now = Date.now();
    const payload = encodePayload({
      timestamp: now,
      metrics: [{ name: BDSEQ, datatype: DataType.Int64, value: BigInt(bdSeq), timestamp: now }],
    });
    return { topic: this.topic('NDEATH'), payload, qos: 1, retain: false };
  }

  births(session: FormatSession): CloudMessage[] | undefined {
    const state = this.sessions.get(session);
    if (!state) return undefined;
    // [tck-id-operational-behavior-edge-node-birth-sequence-wait]: nothing before the primary host is online.
    if (this.host && !this.host.isOnline) {
      this.log.info({ host: this.host.topic }, 'waiting for the primary host to be online before the births');
      return undefined;
    }
    // Every NBIRTH has seq 0, a rebirth's too [tck-id-topics-nbirth-seq-num].
    session.resetSeq();
    this.rebirthAsked = false;
    const messages = [this.nbirth(session, state)];
    // Every device is born right after the NBIRTH, before any data [tck-id-payloads-dbirth-order];
    // one that is not alive (not connected yet at the first births, dead at a rebirth) dies at once
    // after the births, and is born again with its first values.
    const devices = [...this.options.catalog.devices()];
    const alive = devices.filter((device) => (state.bornOnce ? state.born.has(device.name) : device.connected));
    state.born = new Set(alive.map((device) => device.name));
    state.declared = new Map();
    state.bornOnce = true;
    for (const device of devices) messages.push(this.dbirth(device, session, state));
    const now = Date.now();
    for (const device of devices)
      if (!state.born.has(device.name)) messages.push(this.message(this.topic('DDEATH', device.name), { timestamp: now }, session));
    return messages;
  }

  private nbirth(session: FormatSession, state: SessionState): CloudMessage {
    const now = Date.now();
    const stats = this.options.nodeStats();
    const metrics: SparkplugMetric[] = [
      { name: BDSEQ, datatype: DataType.Int64, value: BigInt(state.bdSeq), timestamp: now },
      { name: REBIRTH, datatype: DataType.Boolean, value: false, timestamp: now },
      {
        name: 'Properties/Version',
        alias: this.declare('', 'Properties/Version', DataType.String, false).alias,
        datatype: DataType.String,
        value: this.options.version,
        timestamp: now,
      },
    ];
    for (const { name, stat } of NODE_METRICS) {
      const info = this.metrics.get('')!.get(name)!;
      state.nodeValues.set(name, stats[stat]);
      metrics.push({ name, alias: info.alias, datatype: info.datatype, value: BigInt(stats[stat]), timestamp: now });
    }
    return this.message(this.topic('NBIRTH'), { timestamp: now, metrics }, session);
  }

  /** DBIRTH: every tag with name, alias, datatype, value or is_null, timestamp, unit and quality ([tck-id-topics-dbirth-metrics]). */
  private dbirth(device: CatalogDevice, session: FormatSession, state: SessionState): CloudMessage {
    const now = Date.now();
    const metrics: SparkplugMetric[] = [];
    const declared = new Map<string, number>();
    for (const tag of device.tags) {
      const value = tag.last?.value ?? null;
      const info = this.declare(device.name, tag.name, this.datatypeOf(device.name, tag, value), true);
      const metric: SparkplugMetric = { name: tag.name, alias: info.alias, datatype: info.datatype, timestamp: tag.last?.ts ?? now };
      this.fill(metric, device.name, tag.name, info, tag.last?.quality ?? 'bad', value);
      if (tag.unit !== undefined) metric.properties = { engUnit: engUnitProperty(tag.unit), ...metric.properties };
      declared.set(tag.name, tag.last ? tag.last.ts : Number.NEGATIVE_INFINITY);
      metrics.push(metric);
    }
    const message = this.message(this.topic('DBIRTH', device.name), { timestamp: now, metrics: [...inTimeOrder(metrics)] }, session);
    state.declared.set(device.name, declared);
    return message;
  }

  /** A tag's datatype from its declared type or value; undefined (a guess follows) when neither tells or Sparkplug has none for it (logged once). */
  private datatypeOf(device: string, tag: CatalogTag, value: TagValue | null): DataType | undefined {
    try {
      return sparkplugTypeOf(tag.type, value);
    } catch (error) {
      if (value !== null)
        this.misfit(device, tag.name, { alias: 0, datatype: DataType.Double, guessed: false }, value, errorMessage(error));
      return undefined;
    }
  }

  /** NDATA of the node metrics that changed since this connection last published them. */
  private nodeData(session: FormatSession): CloudMessage | undefined {
    const state = this.sessions.get(session);
    if (!state) return undefined;
    const stats = this.options.nodeStats();
    const now = Date.now();
    const metrics: SparkplugMetric[] = [];
    for (const { name, stat } of NODE_METRICS) {
      if (state.nodeValues.get(name) === stats[stat]) continue;
      state.nodeValues.set(name, stats[stat]);
      metrics.push({
        alias: this.metrics.get('')!.get(name)!.alias,
        datatype: DataType.UInt64,
        value: BigInt(stats[stat]),
        timestamp: now,
      });
    }
    if (metrics.length === 0) return undefined;
    return this.message(this.topic('NDATA'), { timestamp: now, metrics }, session, true);
  }

  /**
   * The metric of a tag: its node-wide alias is given at its first birth and kept for the life of
   * the format (hosts cache them); its datatype is the one of its last birth. A tag without a
   * declared type and without a value yet is guessed a Double, learned at its first value (a rebirth).
   */
  private declare(device: string, tag: string, datatype: DataType | undefined, mayGuess: boolean): MetricInfo {
    let tags = this.metrics.get(device);
    if (!tags) this.metrics.set(device, (tags = new Map()));
    const known = tags.get(tag);
    if (known) {
      // A birth may declare another datatype (a reload changed the tag's type, a guess met its value).
      if (datatype !== undefined) {
        known.datatype = datatype;
        known.guessed = false;
      }
      return known;
    }
    const info: MetricInfo = {
      alias: this.nextAlias++,
      datatype: datatype ?? DataType.Double,
      guessed: mayGuess && datatype === undefined,
    };
    tags.set(tag, info);
    this.byAlias.set(info.alias, { device, tag });
    return info;
  }

  /**
   * A message of the session with its seq, which is taken only once the payload is encoded: a
   * payload that cannot be encoded throws without leaving a gap ([tck-id-payloads-sequence-num-incrementing]).
   */
  private message(topic: string, payload: SparkplugPayload, session: FormatSession, omitDatatypes = false): CloudMessage {
    const bytes = encodePayload({ ...payload, seq: session.peekSeq() & 0xff }, { omitDatatypes });
    session.nextSeq();
    return { topic, payload: bytes, qos: 0, retain: false };
  }

  private topic(type: string, device?: string): string {
    const base = `${this.topicPrefix}${type}/${this.options.edgeNodeId}`;
    return device === undefined ? base : `${base}/${device}`;
  }

  // ------------------------------------------------------------ downlink

  subscriptions(protocolVersion: 4 | 5): CloudSubscriptions {
    // Before NBIRTH [tck-id-message-flow-edge-node-ncmd-subscribe], [tck-id-message-flow-device-dcmd-subscribe].
    const subscriptions: CloudSubscriptions = {
      [this.ncmdTopic]: { qos: 1 },
      [`${this.dcmdPrefix}+`]: { qos: 1 },
      ...this.rules.subscriptions(protocolVersion),
    };
    if (this.host) subscriptions[this.host.topic] = { qos: 1 };
    return subscriptions;
  }

  decodeDownlink(topic: string, payload: Buffer, retain: boolean): DownlinkAction[] {
    if (this.host && topic === this.host.topic) return this.hostState(topic, payload);
    if (topic === this.ncmdTopic) return this.nodeCommand(payload);
    if (topic.startsWith(this.dcmdPrefix)) return this.deviceCommand(topic.slice(this.dcmdPrefix.length), payload);
    const localTopic = this.rules.localTopic(topic);
    return localTopic === undefined ? [] : [{ kind: 'local', topic: localTopic, payload, retain }];
  }

  private hostState(topic: string, payload: Buffer): DownlinkAction[] {
    const verdict = this.host!.observe(topic, payload);
    if (verdict === 'online') return [{ kind: 'rebirth' }];
    if (verdict === 'offline') return [{ kind: 'reconnect', reason: `the primary host "${this.host!.hostId}" went offline` }];
    return [];
  }

  /** NCMD: Node Control/Rebirth = true births again; anything else is logged, never a crash ([tck-id-operational-behavior-data-commands-ncmd-rebirth-verb]). */
  private nodeCommand(payload: Buffer): DownlinkAction[] {
    let metrics: SparkplugMetric[];
    try {
      metrics = decodePayload(payload, { datatypeOf: (metric) => (metric.name === REBIRTH ? DataType.Boolean : undefined) }).metrics ?? [];
    } catch (error) {
      this.log.warn({ topic: this.ncmdTopic, error: errorMessage(error) }, 'an NCMD that is not a Sparkplug B payload: ignored');
      return [];
    }
    const rebirth = metrics.some((metric) => metric.name === REBIRTH && metric.value === true);
    const others = metrics.filter((metric) => metric.name !== REBIRTH).map((metric) => metric.name ?? `alias ${String(metric.alias)}`);
    if (others.length > 0)
      this.log.warn({ metrics: others.slice(0, 10), count: others.length }, 'NCMD metrics this node does not take: ignored');
    return rebirth ? [{ kind: 'rebirth' }] : [];
  }

  /** DCMD: each metric (by alias or name, decoded as its declared datatype) becomes a write through the command handler. */
  private deviceCommand(device: string, payload: Buffer): DownlinkAction[] {
    const declared = this.metrics.get(device);
    const tagOf = (metric: { name?: string; alias?: bigint }): string | undefined => {
      if (metric.alias !== undefined) {
        const owner = this.byAlias.get(Number(metric.alias));
        return owner?.device === device ? owner.tag : undefined;
      }
      return metric.name;
    };
    let metrics: SparkplugMetric[];
    try {
      metrics =
        decodePayload(payload, {
          datatypeOf: (metric) => {
            const tag = tagOf(metric);
            return tag === undefined ? undefined : declared?.get(tag)?.datatype;
          },
        }).metrics ?? [];
    } catch (error) {
      // A value that does not fit its metric's datatype: the metrics as they were sent go to the
      // command handler, whose type check refuses them with an audit line.
      try {
        metrics = decodePayload(payload).metrics ?? [];
      } catch {
        this.log.warn({ device, error: errorMessage(error) }, 'a DCMD that is not a Sparkplug B payload: ignored');
        return [];
      }
      this.log.warn(
        { device, error: errorMessage(error) },
        'a DCMD value that does not fit its metric: handed to the write checks as sent',
      );
    }
    const actions: DownlinkAction[] = [];
    for (const metric of metrics) {
      // An unknown metric still goes to the command handler: it refuses it, with an audit line.
      const tag =
        tagOf({
          ...(metric.name !== undefined ? { name: metric.name } : {}),
          ...(metric.alias !== undefined ? { alias: BigInt(metric.alias) } : {}),
        }) ?? `alias ${String(metric.alias)}`;
      const value = tagValueOf(metric.value, declared?.get(tag)?.datatype ?? metric.datatype);
      if (value === undefined) {
        this.log.warn({ device, tag }, 'a DCMD metric without a value the gateway can write (null, a DataSet or a Template): ignored');
        continue;
      }
      actions.push({ kind: 'write', device, tag, value });
    }
    return actions;
  }
}

/** The items by timestamp (stable): the same array when they are in order already, else a sorted copy. */
function inTimeOrder<Item extends { timestamp?: number | undefined } | { ts: number }>(items: readonly Item[]): readonly Item[] {
  const time = (item: Item) => ('ts' in item ? item.ts : (item.timestamp ?? 0));
  for (let index = 1; index < items.length; index++) {
    if (time(items[index]!) < time(items[index - 1]!)) return [...items].sort((a, b) => time(a) - time(b));
  }
  return items;
}

/** A sample value for a record: JSON, with 64-bit integers kept exact. */
function storedValue(value: TagValue | null): unknown {
  if (typeof value === 'bigint') return { n: value.toString() };
  if (Array.isArray(value)) return value.map((item) => (typeof item === 'bigint' ? { n: item.toString() } : item));
  return value;
}

function loadValue(stored: unknown): TagValue | null {
  const scalar = (item: unknown) =>
    item !== null && typeof item === 'object' && typeof (item as { n?: unknown }).n === 'string' ? BigInt((item as { n: string }).n) : item;
  if (Array.isArray(stored)) return stored.map(scalar) as TagValue;
  return (scalar(stored) ?? null) as TagValue | null;
}

/** A DATA record read back from disk as its cycle; undefined when it is not one. */
function parseCycle(payload: Buffer): Cycle | undefined {
  const record = parseRecord<DataRecord>(payload);
  if (!record || typeof record.d !== 'string') return undefined;
  const samples: CycleSample[] = [];
  if (Array.isArray(record.s)) {
    for (const sample of record.s as unknown[]) {
      if (!Array.isArray(sample) || typeof sample[0] !== 'string') continue;
      const [tag, qualityIndex, ts, stored] = sample as StoredSample;
      samples.push({ tag, quality: QUALITY_OF[qualityIndex] ?? 'bad', ts, value: loadValue(stored) });
    }
    return { device: record.d, samples };
  }
  const { n: names, v: values, t: times, q: qualities } = record;
  if (!Array.isArray(names) || !Array.isArray(values) || names.length !== values.length) return undefined;
  if (times !== undefined && (!Array.isArray(times) || times.length !== names.length)) return undefined;
  if (qualities !== undefined && (!Array.isArray(qualities) || qualities.length !== names.length)) return undefined;
  names.forEach((tag, index) => {
    if (typeof tag !== 'string') return;
    samples.push({
      tag,
      quality: qualities ? (QUALITY_OF[qualities[index]!] ?? 'bad') : 'good',
      // (A timestamp that is not a number fails the row's encoding, as in the first version.)
      ts: (times ? times[index] : record.ts) as number,
      value: loadValue(values[index]),
    });
  });
  return { device: record.d, samples };
}

function parseRecord<T>(payload: Buffer): T | undefined {
  try {
    const parsed: unknown = JSON.parse(payload.toString('utf8'));
    return parsed !== null && typeof parsed === 'object' ? (parsed as T) : undefined;
  } catch {
    return undefined;
  }
}

/** A DCMD metric's value as the command handler takes it (Bytes as base64, as the gateway carries them); undefined when there is none. */
function tagValueOf(value: MetricValue | undefined, datatype: DataType | undefined): TagValue | undefined {
  if (value === undefined) return undefined;
  // DateTime is ms since the epoch, which a number holds exactly (the drivers take numbers or ISO text).
  if ((datatype === DataType.DateTime || datatype === DataType.DateTimeArray) && (typeof value === 'bigint' || Array.isArray(value)))
    return Array.isArray(value) ? value.map((item) => Number(item)) : Number(value);
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  if (Array.isArray(value)) return [...value] as TagValue;
  if (typeof value === 'object') return undefined;
  return value as TagValue;
}
