// Benchmark subscriber, in its own process so its CPU is not the gateway's. Subscribes to a topic
// filter (on mosquitto at QoS 1, or on the integrated broker) and counts the gateway's tag or batch
// messages. Latency, per value, two ways — same machine, same clock:
//   latencyMs        from the value's own ts (the sample's read time; per tag the message's "ts",
//                    batch each value's "ts") to arrival
//   cycleLatencyMs   from the ts that names the message's cycle (batch: the poll slot, before the
//                    read; otherwise the same as latencyMs) to arrival
//   sourceLatencyMs  (--source-clock, with bench/load-server.py --clock) from the moment the Modbus
//                    server served the register to arrival: each value N is the server's clock then,
//                    mod 65536, so serve = arrival − ((arrival − N) mod 65536) (right while the
//                    latency is under 65 s); every "value":N of a JSON message (a tag's, or each of
//                    a batch's), each metric's value of a DDATA
//
// --uplink-format sparkplug-b: counts the DDATA messages instead (spBv1.0/<group>/DDATA/<node>/<device>,
// decoded with the gateway's own decodePayload), a metric for a value and its timestamp (the sample's
// read time) for its latency (cycleLatencyMs: the DDATA's first metric's); a metric that is null or has a Quality property (not good) is a bad
// value. NBIRTH, DBIRTH and NDATA are counted in the totals, apart.
//
//   node dist/bench/subscriber.js --url mqtt://127.0.0.1:PORT --filter 'plc2mqtt/#' --qos 1 --interval 500
//        [--uplink-format json|sparkplug-b] [--source-clock]
//
// Control, one line each on stdin:
//   window T0 T1   count the poll cycles of the slots in [T0, T1) (epoch ms); once T1 has passed and
//                  no message of the window arrived for a while, prints "WINDOW {json}"
//   stop           prints "FINAL {json}" (totals since subscribing) and exits
//
// Delivery is counted per poll cycle, not per second of arrival: the cycles sit on a fixed grid
// (anchor + k × interval; a skipped slot stays a gap), and every message of one device's cycle
// carries a ts in [slot, slot + interval): per tag the read's completion (slot + a few ms, more under
// load) — the same for the whole cycle, or one per chunk (Modbus request) when a cycle is published
// in chunks, spread over the cycle's read time; a batch carries the slot itself. So each device's
// grid is recovered from its ts (see gridAnchor), every ts is put on its slot (the chunks of one
// cycle on the same one), and the window takes the slots in [T0, T1): exactly window / interval of
// them per device, wherever the edges fall, and a cycle that was skipped or lost is missing from them.
//
// Bytes: each message's payload, and its size on the wire as an MQTT PUBLISH packet at the QoS it
// arrived with (fixed header, topic, packet id, payload), per cycle like the values.
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import mqtt, { type IPublishPacket } from 'mqtt';
import { decodePayload } from '../src/northbound/sparkplug/payload.js';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string', default: 'mqtt://127.0.0.1:1883' },
    filter: { type: 'string', default: '#' },
    qos: { type: 'string', default: '1' },
    interval: { type: 'string', default: '1000' },
    // How long the window's last message may be late (after T1) before the window is closed anyway.
    grace: { type: 'string', default: '15' },
    // Quiet time after which the window is considered complete.
    quiet: { type: 'string', default: '1500' },
    'uplink-format': { type: 'string', default: 'json' },
    'source-clock': { type: 'boolean', default: false },
  },
});
const sparkplug = args['uplink-format'] === 'sparkplug-b';
const interval = Number(args.interval);
const graceMs = Number(args.grace) * 1000;
const quietMs = Number(args.quiet);
const sourceClock = args['source-clock'];

const TS = Buffer.from('"ts":');
const VALUE = Buffer.from('"value":');
const QUALITY = Buffer.from('"quality":"');
const GOOD = Buffer.from('"quality":"good"');
const MAX_LATENCY_MS = 120_000;

interface Counts {
  messages: number;
  values: number;
  badValues: number;
  payloadBytes: number;
  wireBytes: number;
  /** Sparkplug: NBIRTH and DBIRTH messages, the DBIRTHs' metrics with a value (not null), NDATA messages. */
  births?: number;
  birthValues?: number;
  ndata?: number;
}
const total: Counts = { messages: 0, values: 0, badValues: 0, payloadBytes: 0, wireBytes: 0 };
if (sparkplug) Object.assign(total, { births: 0, birthValues: 0, ndata: 0 });

interface Cycle {
  messages: number;
  values: number;
  payloadBytes: number;
  wireBytes: number;
}
/** Latencies in whole ms, 0 to MAX_LATENCY_MS (later ones count as that). */
class Histogram {
  private readonly counts = new Uint32Array(MAX_LATENCY_MS + 1);
  private total = 0;

  add(ms: number, times = 1): void {
    this.counts[Math.min(MAX_LATENCY_MS, Math.max(0, ms))]! += times;
    this.total += times;
  }

  private percentile(p: number): number {
    const rank = Math.max(1, Math.ceil((p / 100) * this.total));
    let seen = 0;
    for (let ms = 0; ms < this.counts.length; ms++) {
      seen += this.counts[ms]!;
      if (seen >= rank) return ms;
    }
    return MAX_LATENCY_MS;
  }

  figures(): { p50: number | null; p90: number | null; p95: number | null; p99: number | null; max: number | null } {
    if (this.total === 0) return { p50: null, p90: null, p95: null, p99: null, max: null };
    let max = 0;
    for (let ms = this.counts.length - 1; ms >= 0; ms--) {
      if (this.counts[ms]! > 0) {
        max = ms;
        break;
      }
    }
    return { p50: this.percentile(50), p90: this.percentile(90), p95: this.percentile(95), p99: this.percentile(99), max };
  }
}

let window: { t0: number; t1: number } | undefined;
let badInWindow = 0;
/** Messages that arrived (whatever their ts) during [T0, T1): what the cloud side took per second. */
let arrivedInWindow = 0;
let lastWindowArrival = 0;
/** Per device (JSON: topic without its last level; Sparkplug: the DDATA topic): ts of each poll cycle → its figures. */
const cycles = new Map<string, Map<number, Cycle>>();
const latency = new Histogram();
const cycleLatency = new Histogram();
const sourceLatency = new Histogram();
let windowReported = false;

function occurrences(payload: Buffer, needle: Buffer): number {
  let count = 0;
  for (let at = payload.indexOf(needle); at !== -1; at = payload.indexOf(needle, at + needle.length)) count++;
  return count;
}

/** The first "ts":<digits> of the payload, or -1 (the gateway's status messages have none). */
function firstTs(payload: Buffer): number {
  const at = payload.indexOf(TS);
  if (at === -1) return -1;
  let value = 0;
  for (let index = at + TS.length; index < payload.length; index++) {
    const digit = payload[index]! - 48;
    if (digit < 0 || digit > 9) break;
    value = value * 10 + digit;
  }
  return value;
}

/** Bytes of an MQTT PUBLISH packet: fixed header (1 + remaining length), topic (2 + its bytes), packet id at QoS > 0, payload. */
function wireSize(topic: string, payloadBytes: number, qos: number): number {
  const remaining = 2 + Buffer.byteLength(topic) + (qos > 0 ? 2 : 0) + payloadBytes;
  return 1 + (remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4) + remaining;
}

/** A data message: the ts of its cycle, its values and bad values. */
interface Parsed {
  ts: number;
  values: number;
  bad: number;
  /** Each value's own ts, when it is not the cycle's (a JSON batch, Sparkplug's metrics). */
  stamps?: number[];
  /** --source-clock: each numeric value (the server's clock when it served the register, mod 65536). */
  served?: number[];
}

/** Every "value":<digits> of the payload (a null value, of a bad sample, has none). */
function servedValues(payload: Buffer): number[] {
  const served: number[] = [];
  for (let at = payload.indexOf(VALUE); at !== -1; at = payload.indexOf(VALUE, at + VALUE.length)) {
    let value = 0;
    let digits = 0;
    for (let index = at + VALUE.length; index < payload.length; index++, digits++) {
      const digit = payload[index]! - 48;
      if (digit < 0 || digit > 9) break;
      value = value * 10 + digit;
    }
    if (digits > 0) served.push(value);
  }
  return served;
}

/** From the server's serve time (its clock mod 65536, N) to arrival: (arrival − N) mod 65536. */
function sinceServed(arrival: number, served: number): number {
  return (((arrival - served) % 65_536) + 65_536) % 65_536;
}

/** Every "ts":<digits> of the payload after the first (a batch's values'). */
function laterTs(payload: Buffer): number[] {
  const stamps: number[] = [];
  let at = payload.indexOf(TS);
  for (at = payload.indexOf(TS, at + TS.length); at !== -1; at = payload.indexOf(TS, at + TS.length)) {
    let value = 0;
    for (let index = at + TS.length; index < payload.length; index++) {
      const digit = payload[index]! - 48;
      if (digit < 0 || digit > 9) break;
      value = value * 10 + digit;
    }
    stamps.push(value);
  }
  return stamps;
}

function parseJson(payload: Buffer): Parsed | undefined {
  const ts = firstTs(payload);
  if (ts <= 0) return undefined;
  const values = occurrences(payload, QUALITY);
  const parsed: Parsed = { ts, values, bad: values - occurrences(payload, GOOD) };
  // A batch: {"device", "group", "ts" (the slot), "values": {tag: {…, "ts"}}}; a tag's message has one ts.
  const stamps = laterTs(payload);
  if (stamps.length > 0) parsed.stamps = stamps;
  if (sourceClock) parsed.served = servedValues(payload);
  return parsed;
}

/** Sparkplug: DDATA counted as data; births and NDATA only in the totals. */
function parseSparkplug(topic: string, payload: Buffer): Parsed | undefined {
  // spBv1.0/<group>/<type>/<node>[/<device>]
  const type = topic.split('/', 3)[2];
  if (type === 'NDATA') total.ndata!++;
  if (type === 'NBIRTH' || type === 'DBIRTH') {
    total.births!++;
    if (type === 'DBIRTH') for (const metric of decodePayload(payload).metrics ?? []) if (!metric.isNull) total.birthValues!++;
  }
  if (type !== 'DDATA') return undefined;
  const metrics = decodePayload(payload).metrics ?? [];
  if (metrics.length === 0) return undefined;
  const stamps: number[] = [];
  const served: number[] = [];
  let bad = 0;
  for (const metric of metrics) {
    stamps.push(metric.timestamp ?? 0);
    if (metric.isNull || metric.properties?.Quality !== undefined) bad++;
    else if (sourceClock && (typeof metric.value === 'number' || typeof metric.value === 'bigint')) served.push(Number(metric.value));
  }
  // One cycle per DDATA: its samples share the read time; the first metric's names the cycle.
  return { ts: stamps[0]!, values: metrics.length, bad, stamps, ...(sourceClock ? { served } : {}) };
}

function onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
  const now = Date.now();
  const parsed = sparkplug ? parseSparkplug(topic, payload) : parseJson(payload);
  if (!parsed || parsed.ts <= 0) return;
  const { ts, values, bad } = parsed;
  const payloadBytes = payload.length;
  const wireBytes = wireSize(topic, payloadBytes, packet.qos);
  total.messages++;
  total.values += values;
  total.badValues += bad;
  total.payloadBytes += payloadBytes;
  total.wireBytes += wireBytes;
  if (!window || windowReported) return;
  const device = sparkplug ? topic : topic.slice(0, topic.lastIndexOf('/'));
  let byTs = cycles.get(device);
  if (!byTs) cycles.set(device, (byTs = new Map()));
  const cycle = byTs.get(ts);
  if (cycle) {
    cycle.messages++;
    cycle.values += values;
    cycle.payloadBytes += payloadBytes;
    cycle.wireBytes += wireBytes;
  } else byTs.set(ts, { messages: 1, values, payloadBytes, wireBytes });
  if (now >= window.t0 && now < window.t1) arrivedInWindow++;
  // Latency and bad values: of the values whose ts is in the window (a JSON message's values share its ts).
  if (ts < window.t0 || ts >= window.t1) return;
  badInWindow += bad;
  lastWindowArrival = now;
  cycleLatency.add(now - ts, values);
  if (parsed.stamps) for (const stamp of parsed.stamps) latency.add(now - stamp);
  else latency.add(now - ts, values);
  if (parsed.served) for (const served of parsed.served) sourceLatency.add(sinceServed(now, served));
}

/** The ts's slot on the grid of the given anchor (a residue mod interval): the last slot at or before it. */
function slotOf(ts: number, anchor: number): number {
  return ts - (((ts % interval) - anchor + interval) % interval);
}

/** The residue mod interval from which the given ts are least late in total (of those of the ts). */
function leastLate(stamps: readonly number[]): number {
  const residues = stamps.map((ts) => ts % interval);
  let anchor = residues[0]!;
  let best = Infinity;
  for (const candidate of new Set(residues)) {
    let late = 0;
    for (const residue of residues) late += (residue - candidate + interval) % interval;
    if (late < best) {
      best = late;
      anchor = candidate;
    }
  }
  return anchor;
}

/**
 * A device's grid: the residue mod interval of its slots, from its distinct ts. Weighing each ts
 * alike is right while a cycle has one ts; but when a cycle is published in chunks with a ts each, a
 * few cycles whose first chunk came a little earlier than usual would weigh less than the many
 * chunks after them, and the least-late residue would fall after those early chunks (which then
 * land on the slot before). So, in two steps:
 * 1. the cycles apart: the ts's residues occupy an arc of the circle (the read time of a cycle,
 *    shorter than the interval) and the longest empty arc ends where the cycles start; putting every
 *    ts on the slot of that residue groups the ts of each cycle (a late outlier inside the empty arc
 *    only shifts the grouping: whole cycles still fall in one group);
 * 2. each group (a cycle) by its first ts: the least-late residue of those, one per cycle, as with
 *    one ts per cycle (a lone late cycle, a GC pause, does not move it).
 */
function gridAnchor(stamps: readonly number[]): number {
  const residues = [...new Set(stamps.map((ts) => ts % interval))].sort((a, b) => a - b);
  let start = residues[0]!;
  let longest = residues[0]! + interval - residues[residues.length - 1]!;
  for (let index = 1; index < residues.length; index++) {
    const gap = residues[index]! - residues[index - 1]!;
    if (gap > longest) {
      longest = gap;
      start = residues[index]!;
    }
  }
  const first = new Map<number, number>();
  for (const ts of stamps) {
    const slot = slotOf(ts, start);
    const earliest = first.get(slot);
    if (earliest === undefined || ts < earliest) first.set(slot, ts);
  }
  return leastLate([...first.values()]);
}

/** A device's cycles put on their grid slots; those in [t0, t1). */
function windowCycles(byTs: Map<number, Cycle>, t0: number, t1: number): { cycles: number } & Cycle {
  const anchor = gridAnchor([...byTs.keys()]);
  const slots = new Set<number>();
  const sum: Cycle = { messages: 0, values: 0, payloadBytes: 0, wireBytes: 0 };
  for (const [ts, cycle] of byTs) {
    const slot = slotOf(ts, anchor);
    if (slot < t0 || slot >= t1) continue;
    slots.add(slot);
    sum.messages += cycle.messages;
    sum.values += cycle.values;
    sum.payloadBytes += cycle.payloadBytes;
    sum.wireBytes += cycle.wireBytes;
  }
  return { cycles: slots.size, ...sum };
}

function reportWindow(timedOut: boolean): void {
  if (windowReported || !window) return;
  windowReported = true;
  const seconds = (window.t1 - window.t0) / 1000;
  const perDevice: Record<string, { cycles: number; messages: number; values: number }> = {};
  let messages = 0;
  let values = 0;
  let payloadBytes = 0;
  let wireBytes = 0;
  for (const [device, byTs] of cycles) {
    const figures = windowCycles(byTs, window.t0, window.t1);
    perDevice[device] = { cycles: figures.cycles, messages: figures.messages, values: figures.values };
    messages += figures.messages;
    values += figures.values;
    payloadBytes += figures.payloadBytes;
    wireBytes += figures.wireBytes;
  }
  const figures = {
    windowSeconds: seconds,
    messages,
    values,
    badValues: badInWindow,
    messagesPerSecond: Math.round(messages / seconds),
    valuesPerSecond: Math.round(values / seconds),
    arrivedPerSecond: Math.round(arrivedInWindow / seconds),
    payloadBytes,
    wireBytes,
    perDevice,
    latencyMs: latency.figures(),
    cycleLatencyMs: cycleLatency.figures(),
    ...(sourceClock ? { sourceLatencyMs: sourceLatency.figures() } : {}),
    lastArrivalAfterWindowMs: lastWindowArrival > window.t1 ? lastWindowArrival - window.t1 : 0,
    timedOut,
  };
  process.stdout.write(`WINDOW ${JSON.stringify(figures)}\n`);
}

const client = await mqtt.connectAsync(args.url, { clientId: `bench-subscriber-${process.pid}`, clean: true, reconnectPeriod: 0 });
client.on('message', onMessage);
await client.subscribeAsync(args.filter, { qos: Number(args.qos) === 1 ? 1 : 0 });
process.stdout.write('SUBSCRIBED\n');

const watcher = setInterval(() => {
  if (!window || windowReported) return;
  const now = Date.now();
  if (now < window.t1 + quietMs) return;
  if (now - Math.max(lastWindowArrival, window.t1) >= quietMs) reportWindow(false);
  else if (now >= window.t1 + graceMs) reportWindow(true);
}, 100);

createInterface({ input: process.stdin }).on('line', (line) => {
  const [command, first, second] = line.trim().split(/\s+/);
  if (command === 'window') window = { t0: Number(first), t1: Number(second) };
  if (command === 'stop') {
    clearInterval(watcher);
    process.stdout.write(`FINAL ${JSON.stringify(total)}\n`);
    void client.endAsync(true).then(() => process.exit(0));
  }
});
// The bench that started this process is gone: don't linger.
process.stdin.on('end', () => process.exit(0));
