// Benchmark subscriber, in its own process so its CPU is not the gateway's. Subscribes to a topic
// filter (on mosquitto at QoS 1, or on the integrated broker) and counts the gateway's tag or batch
// messages; latency is measured from the payload's first "ts" (per tag: the gateway's read time;
// batch: the poll slot) to arrival — same machine, same clock.
//
//   node dist/bench/subscriber.js --url mqtt://127.0.0.1:PORT --filter 'plc2mqtt/#' --qos 1 --interval 500
//
// Control, one line each on stdin:
//   window T0 T1   count the poll cycles of the slots in [T0, T1) (epoch ms); once T1 has passed and
//                  no message of the window arrived for a while, prints "WINDOW {json}"
//   stop           prints "FINAL {json}" (totals since subscribing) and exits
//
// Delivery is counted per poll cycle, not per second of arrival: every message of one device's
// cycle carries the same ts, and the cycles sit on a fixed grid (anchor + k × interval; a skipped
// slot stays a gap). Per tag, ts is the read's completion (slot + a few ms, more under load); a
// batch carries the slot itself. So each device's grid is recovered from its cycles' ts (the
// residue mod interval with the least total delay to all others), every cycle is put on its slot,
// and the window takes the slots in [T0, T1): exactly window / interval of them per device, wherever
// the edges fall, and a cycle that was skipped or lost is missing from them.
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';

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
  },
});
const interval = Number(args.interval);
const graceMs = Number(args.grace) * 1000;
const quietMs = Number(args.quiet);

const TS = Buffer.from('"ts":');
const QUALITY = Buffer.from('"quality":"');
const GOOD = Buffer.from('"quality":"good"');
const MAX_LATENCY_MS = 120_000;

interface Counts {
  messages: number;
  values: number;
  badValues: number;
}
const total: Counts = { messages: 0, values: 0, badValues: 0 };
let window: { t0: number; t1: number } | undefined;
let inLatency = 0;
let badInWindow = 0;
/** Messages that arrived (whatever their ts) during [T0, T1): what the cloud side took per second. */
let arrivedInWindow = 0;
let lastWindowArrival = 0;
/** Per device (topic without its last level): ts of each poll cycle → messages and values. */
const cycles = new Map<string, Map<number, { messages: number; values: number }>>();
const latency = new Uint32Array(MAX_LATENCY_MS + 1);
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

function onMessage(topic: string, payload: Buffer): void {
  const now = Date.now();
  const ts = firstTs(payload);
  if (ts <= 0) return;
  const values = occurrences(payload, QUALITY);
  const bad = values - occurrences(payload, GOOD);
  total.messages++;
  total.values += values;
  total.badValues += bad;
  if (!window || windowReported) return;
  const device = topic.slice(0, topic.lastIndexOf('/'));
  let byTs = cycles.get(device);
  if (!byTs) cycles.set(device, (byTs = new Map()));
  const cycle = byTs.get(ts);
  if (cycle) {
    cycle.messages++;
    cycle.values += values;
  } else byTs.set(ts, { messages: 1, values });
  if (now >= window.t0 && now < window.t1) arrivedInWindow++;
  // Latency and bad values: of the messages whose ts is in the window.
  if (ts < window.t0 || ts >= window.t1) return;
  inLatency++;
  badInWindow += bad;
  lastWindowArrival = now;
  latency[Math.min(MAX_LATENCY_MS, Math.max(0, now - ts))]!++;
}

/** A device's cycles put on their grid slots; those in [t0, t1). */
function windowCycles(
  byTs: Map<number, { messages: number; values: number }>,
  t0: number,
  t1: number,
): { cycles: number; messages: number; values: number } {
  const stamps = [...byTs.keys()];
  const residues = stamps.map((ts) => ts % interval);
  // The grid's residue: the one from which the other cycles are least late in total.
  let anchor = residues[0]!;
  let best = Infinity;
  // (Candidates: the first 200 cycles' residues; every device of ours has its grid in them.)
  for (const candidate of residues.slice(0, 200)) {
    let late = 0;
    for (const residue of residues) late += (residue - candidate + interval) % interval;
    if (late < best) {
      best = late;
      anchor = candidate;
    }
  }
  const slots = new Set<number>();
  let messages = 0;
  let values = 0;
  for (const [ts, cycle] of byTs) {
    const slot = ts - (((ts % interval) - anchor + interval) % interval);
    if (slot < t0 || slot >= t1) continue;
    slots.add(slot);
    messages += cycle.messages;
    values += cycle.values;
  }
  return { cycles: slots.size, messages, values };
}

function percentile(p: number): number | null {
  const count = inLatency;
  if (count === 0) return null;
  const rank = Math.max(1, Math.ceil((p / 100) * count));
  let seen = 0;
  for (let ms = 0; ms < latency.length; ms++) {
    seen += latency[ms]!;
    if (seen >= rank) return ms;
  }
  return MAX_LATENCY_MS;
}

function reportWindow(timedOut: boolean): void {
  if (windowReported || !window) return;
  windowReported = true;
  const seconds = (window.t1 - window.t0) / 1000;
  let maxLatency = 0;
  for (let ms = latency.length - 1; ms >= 0; ms--) {
    if (latency[ms]! > 0) {
      maxLatency = ms;
      break;
    }
  }
  const perDevice: Record<string, { cycles: number; messages: number; values: number }> = {};
  let messages = 0;
  let values = 0;
  for (const [device, byTs] of cycles) {
    const figures = windowCycles(byTs, window.t0, window.t1);
    perDevice[device] = figures;
    messages += figures.messages;
    values += figures.values;
  }
  const figures = {
    windowSeconds: seconds,
    messages,
    values,
    badValues: badInWindow,
    messagesPerSecond: Math.round(messages / seconds),
    valuesPerSecond: Math.round(values / seconds),
    arrivedPerSecond: Math.round(arrivedInWindow / seconds),
    perDevice,
    latencyMs: { p50: percentile(50), p90: percentile(90), p99: percentile(99), max: inLatency > 0 ? maxLatency : null },
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
