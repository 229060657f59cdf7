// End-to-end benchmark: pymodbus load server (the PLCs) → the gateway (its own process, the real
// CLI) → integrated broker → outbox → uplink at QoS 1 → mosquitto (the cloud) → a subscriber in a
// separate process that counts what arrives and measures latency from the payload's ts.
// Prints one JSON line of figures.
//
//   node dist/bench/e2e.js --tags 10000 --interval 500 [--devices 10] [--format per-tag|batch]
//        [--uplink-format json|sparkplug-b] [--at cloud|local] [--window 10] [--warmup 3]
//        [--inflight 500] [--commit-interval 5] [--report always|change] [--nodelay true|false]
//        [--prof DIR] [--gateway-flags=--max-semi-space-size=4] [--alloc] [--source-clock] [--local-subscriber]
//        [--memory-limit MB]
//
// --format is how the devices publish locally (a message per tag, or one per poll cycle).
// --uplink-format sparkplug-b sends the tags up as a Sparkplug B edge node (uplink.format, group
// "bench", node "bench") instead of forwarding the JSON topics at QoS 1: one DDATA per device and
// poll cycle, QoS 0, whatever --format is; the subscriber decodes the DDATA and takes each
// metric's timestamp (the sample's read time) for its latency.
// --nodelay false: mosquitto without set_tcp_nodelay (before the Sparkplug runs, every e2e run had
// it off). Sparkplug's DDATA reach the subscriber at QoS 0, so it sends no PUBACKs, its ACKs are
// delayed, and Nagle holds each DDATA's last segment in mosquitto: p90–p99 at ~35–47 ms instead of
// ~10–13 at 10k tags @ 100 ms. JSON at QoS 1 measures the same either way.
// --at local measures at the integrated broker instead (no uplink, no outbox, QoS 0 subscriber).
// --source-clock: the load server's registers read as its clock when it serves the request (ms mod
// 65536, bench/load-server.py --clock), and the subscriber takes each value's latency from that too:
// sourceLatencyMs, from the Modbus server's serve time to arrival (latencyMs stays from the
// gateway's ts). --local-subscriber (with the cloud): a second subscriber, QoS 0, on the integrated
// broker, that measures the same at the local broker (localLatencyMs, localSourceLatencyMs with
// --source-clock; delivery and bytes are the cloud subscriber's): the first stage of the path.
// --gateway-flags are Node options for the gateway process (space-separated; write them with "=").
// --memory-limit MB runs the gateway in a memory cgroup of that size (an edge box or a container
// with that much memory: Node sizes V8's heap from it; needs root).
// --alloc samples the gateway's allocations during the window through its inspector (V8's sampling
// heap profiler, collected objects included): bytes per message of the window and the top sites.
// --prof writes the gateway's CPU profile (node --cpu-prof) into DIR; read it with
// `node dist/bench/profile-top.js DIR/*.cpuprofile`.
//
// Delivery is counted by poll slot (see subscriber.ts): the messages of the devices' poll slots in
// the window, against window / interval slots × tags (a skipped slot counts as undelivered); the
// window stays open after its end until its last messages have arrived (or --grace seconds passed).
// The window is rounded to a whole number of intervals. Bytes per value: of the window's data
// messages, payload only and as MQTT PUBLISH packets (topic and headers too).
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { writeFileSync } from 'node:fs';
import { AllocationSampler } from './alloc-sampler.js';
import {
  cpuSeconds,
  exited,
  freePort,
  nodeCommand,
  peakRssMb,
  rssMb,
  sleep,
  start,
  type Started,
  startModbusServer,
  startMosquitto,
  tempFolder,
  waitForOutput,
} from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const { values: args } = parseArgs({
  options: {
    tags: { type: 'string', default: '1000' },
    interval: { type: 'string', default: '1000' },
    devices: { type: 'string', default: '10' },
    format: { type: 'string', default: 'per-tag' },
    'uplink-format': { type: 'string', default: 'json' },
    at: { type: 'string', default: 'cloud' },
    window: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    grace: { type: 'string', default: '15' },
    inflight: { type: 'string' },
    'commit-interval': { type: 'string' },
    report: { type: 'string', default: 'always' },
    nodelay: { type: 'string', default: 'true' },
    prof: { type: 'string' },
    'gateway-flags': { type: 'string' },
    'source-clock': { type: 'boolean', default: false },
    'local-subscriber': { type: 'boolean', default: false },
    // Debugging: write the tail of the gateway's output (logs, --trace-gc lines) to this file.
    'gateway-log': { type: 'string' },
    'memory-limit': { type: 'string' },
    // Sample the gateway's allocations during the window (bytes per message and the biggest sites).
    alloc: { type: 'boolean', default: false },
  },
});
const tags = Number(args.tags);
const interval = Number(args.interval);
const devices = Math.min(Number(args.devices), tags);
const format = args.format === 'batch' ? 'batch' : 'per-tag';
const cloud = args.at !== 'local';
const sparkplug = args['uplink-format'] === 'sparkplug-b';
if (args['uplink-format'] !== 'json' && !sparkplug) throw new Error(`--uplink-format json or sparkplug-b, not ${args['uplink-format']}`);
if (sparkplug && !cloud) throw new Error('--uplink-format sparkplug-b is measured on the cloud broker (not with --at local)');
const GROUP = 'bench';
// A whole number of intervals, so every device has exactly windowMs / interval slots in it.
const windowMs = Math.max(1, Math.round((Number(args.window) * 1000) / interval)) * interval;
const warmupMs = Number(args.warmup) * 1000;
const report = args.report === 'change' ? 'change' : 'always';
const sourceClock = args['source-clock'];
const localSubscriber = args['local-subscriber'];
if (localSubscriber && !cloud) throw new Error('--local-subscriber is the second subscriber beside the cloud one (not with --at local)');

const folder = tempFolder('plc2mqtt-e2e-');
const units = Array.from({ length: devices }, (_, index) => index + 1);
const perDevice = Math.ceil(tags / devices);
const tagsOf = new Map(units.map((unit) => [`plc${unit}`, Math.max(0, Math.min(perDevice, tags - (unit - 1) * perDevice))]));

const modbus = await startModbusServer(ROOT, units, { clock: sourceClock });
const mosquitto = cloud ? await startMosquitto(folder, { noDelay: args.nodelay !== 'false' }) : undefined;
const brokerPort = await freePort();
const config = {
  gateway: { name: 'bench', dataDir: join(folder, 'data'), logLevel: 'info' },
  broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
  http: { port: 0 },
  topics: { retain: false },
  ...(mosquitto
    ? {
        uplink: {
          url: `mqtt://127.0.0.1:${mosquitto.port}`,
          ...(args.inflight !== undefined ? { inFlight: Number(args.inflight) } : {}),
          ...(args['commit-interval'] !== undefined ? { outbox: { commitInterval: Number(args['commit-interval']) } } : {}),
          ...(sparkplug
            ? // Node id: the gateway's name, "bench". No forward rules: only the metrics go up.
              { format: 'sparkplug-b', sparkplug: { groupId: GROUP } }
            : // The data topics (plc2mqtt/bench/<device>/<tag or group>), not the status topic.
              { forward: [{ topic: '+/+', localPrefix: 'plc2mqtt/bench/', remotePrefix: 'plc2mqtt/bench/', qos: 1 }] }),
        },
      }
    : {}),
  devices: units.map((unit) => ({
    name: `plc${unit}`,
    driver: 'modbus',
    connection: { transport: 'tcp', host: '127.0.0.1', port: modbus.port, unitId: unit, timeout: '2s' },
    pollInterval: interval,
    report,
    publish: format,
    tags: Array.from({ length: tagsOf.get(`plc${unit}`)! }, (_, index) => ({
      name: `t${index}`,
      area: 'holding',
      address: index,
      type: 'uint16',
    })),
  })),
};
const configFile = join(folder, 'bench.json');
writeFileSync(configFile, JSON.stringify(config));

// local: on the integrated broker, where the tags are JSON whatever the uplink sends.
const subscriberArgs = (port: number, qos: number, local = false) => [
  join(ROOT, 'dist/bench/subscriber.js'),
  '--url',
  `mqtt://127.0.0.1:${port}`,
  '--filter',
  sparkplug && !local ? `spBv1.0/${GROUP}/#` : 'plc2mqtt/bench/+/+',
  '--uplink-format',
  sparkplug && !local ? 'sparkplug-b' : 'json',
  '--qos',
  String(qos),
  '--interval',
  String(interval),
  '--grace',
  args.grace,
  ...(sourceClock ? ['--source-clock'] : []),
];
// On the cloud the subscriber is there before the gateway, so its totals cover every message.
let subscriber = mosquitto
  ? await start(process.execPath, subscriberArgs(mosquitto.port, 1), /SUBSCRIBED/, 30_000, { stdin: true })
  : undefined;

const inspectPort = args.alloc ? await freePort() : undefined;
const nodeFlags = [
  ...(args['gateway-flags']?.split(/\s+/).filter(Boolean) ?? []),
  ...(args.prof ? ['--cpu-prof', '--cpu-prof-dir', args.prof] : []),
  ...(inspectPort !== undefined ? [`--inspect=127.0.0.1:${inspectPort}`] : []),
];
const gatewayCommand = nodeCommand([...nodeFlags, join(ROOT, 'dist/src/cli.js'), 'run', '-c', configFile], args['memory-limit']);
const gateway = await start(gatewayCommand.command, gatewayCommand.argv, /polling started/, 120_000);
const pid = gateway.child.pid!;
subscriber ??= await start(process.execPath, subscriberArgs(brokerPort, 0, true), /SUBSCRIBED/, 30_000, { stdin: true });
const local = localSubscriber
  ? await start(process.execPath, subscriberArgs(brokerPort, 0, true), /SUBSCRIBED/, 30_000, { stdin: true })
  : undefined;

const t0 = Date.now() + warmupMs;
const t1 = t0 + windowMs;
subscriber.child.stdin!.write(`window ${t0} ${t1}\n`);
local?.child.stdin?.write(`window ${t0} ${t1}\n`);
const others = {
  mosquitto: mosquitto?.child.pid,
  subscriber: subscriber.child.pid,
  localSubscriber: local?.child.pid,
  modbusServer: modbus.child.pid,
};
const cpuOf = () =>
  ({
    gateway: cpuSeconds(pid),
    ...Object.fromEntries(Object.entries(others).flatMap(([name, id]) => (id === undefined ? [] : [[name, cpuSeconds(id)]]))),
  }) as Record<string, number>;

await sleep(t0 - Date.now());
const cpuStart = cpuOf();
const rssStart = rssMb(pid);
const sampler = inspectPort !== undefined ? await AllocationSampler.connect(inspectPort) : undefined;
await sampler?.start();
await sleep(t1 - Date.now());
const allocation = await sampler?.stop();
const cpuEnd = cpuOf();
const seconds = (Date.now() - t0) / 1000;
const cpuPercent = Object.fromEntries(
  // One decimal: at 1 s polls the formats differ by about one point.
  Object.keys(cpuEnd).map((name) => [name, Math.round(((cpuEnd[name]! - cpuStart[name]!) / seconds) * 1000) / 10]),
);
const rssEnd = rssMb(pid);
const peakRss = peakRssMb(pid);

interface Latency {
  p50: number | null;
  p90: number | null;
  p95: number | null;
  p99: number | null;
  max: number | null;
}
interface WindowFigures {
  windowSeconds: number;
  messages: number;
  values: number;
  badValues: number;
  messagesPerSecond: number;
  valuesPerSecond: number;
  arrivedPerSecond: number;
  payloadBytes: number;
  wireBytes: number;
  perDevice: Record<string, { cycles: number; messages: number; values: number }>;
  latencyMs: Latency;
  cycleLatencyMs: Latency;
  sourceLatencyMs?: Latency;
  lastArrivalAfterWindowMs: number;
  timedOut: boolean;
}
const windowOf = async (process: Started) =>
  JSON.parse((await waitForOutput(process, /WINDOW (\{.*\})\n/, Number(args.grace) * 1000 + 10_000))[1]!) as WindowFigures;
const received = await windowOf(subscriber);
const receivedLocally = local ? await windowOf(local) : undefined;

// Expected: every slot of every device in the window (window / interval each), all its tags.
const nominalCycles = windowMs / interval;
let expectedValues = 0;
let cyclesSeen = 0;
// Data messages per cycle, the fewest and the most of any device (Sparkplug: one DDATA each).
let fewest = Infinity;
let most = 0;
for (const [name, count] of tagsOf) {
  const seen = received.perDevice[sparkplug ? `spBv1.0/${GROUP}/DDATA/bench/${name}` : `plc2mqtt/bench/${name}`];
  cyclesSeen += seen?.cycles ?? 0;
  expectedValues += nominalCycles * count;
  if (seen && seen.cycles > 0) {
    const perCycle = Math.round((seen.messages / seen.cycles) * 100) / 100;
    fewest = Math.min(fewest, perCycle);
    most = Math.max(most, perCycle);
  }
}
const messagesPerCycle = most > 0 ? { min: fewest, max: most } : null;

// Stop the gateway; its last log line has what it published and what is left in the outbox.
gateway.child.kill('SIGTERM');
await Promise.race([exited(gateway.child), sleep(20_000)]);
const stoppedLine = /^\{.*"msg":"gateway stopped".*\}$/m.exec(gateway.output())?.[0];
if (args['gateway-log']) writeFileSync(args['gateway-log'], gateway.output());
const stopped = stoppedLine
  ? (JSON.parse(stoppedLine) as {
      published: number;
      samples: number;
      outbox?: { messages: number; appended: number; dropped?: number };
      uplink?: { sent: number; acknowledged: number; reconnects: number; rejected: number };
      cloudStagesMs?: Record<string, unknown>;
    })
  : undefined;
let accounting: Record<string, number | null> | null = null;
if (mosquitto && stopped) {
  // Messages still in flight through mosquitto when the gateway stopped arrive a moment later.
  await sleep(1500);
  subscriber.child.stdin!.write('stop\n');
  const final = JSON.parse((await waitForOutput(subscriber, /FINAL (\{.*\})\n/, 10_000))[1]!) as {
    messages: number;
    values: number;
    birthValues?: number;
  };
  const leftInOutbox = stopped.outbox?.messages ?? 0;
  const dropped = stopped.outbox?.dropped ?? 0;
  accounting = sparkplug
    ? {
        // Outbox records: one per device and poll cycle, each sent as a DDATA, or as the DBIRTH
        // alone of a device that connected after the births (its latest values are the record's).
        recorded: stopped.outbox?.appended ?? 0,
        sent: stopped.uplink?.sent ?? 0,
        received: final.messages,
        leftInOutbox,
        droppedByOutbox: dropped,
        // Values: every sample the gateway read (report "always") is a metric of a DDATA, a value
        // of a DBIRTH, or in a record still in the outbox (or dropped), of a device's tags each.
        samples: stopped.samples,
        receivedValues: final.values,
        valuesInBirths: final.birthValues ?? 0,
        missingValues:
          report === 'always' && tags % devices === 0
            ? stopped.samples - final.values - (final.birthValues ?? 0) - (leftInOutbox + dropped) * (tags / devices)
            : null,
        reconnects: stopped.uplink?.reconnects ?? 0,
      }
    : {
        published: stopped.published,
        received: final.messages,
        leftInOutbox,
        // Dropped by the outbox's bounds (maxMessages 1,000,000 by default, policy drop-oldest).
        droppedByOutbox: dropped,
        // Negative: messages delivered whose PUBACK came too late to delete them (sent again at the next start).
        missing: stopped.published - final.messages - leftInOutbox - dropped,
        reconnects: stopped.uplink?.reconnects ?? 0,
      };
}

const valuesPerMessage = format === 'batch' || sparkplug ? tags / devices : 1;
const perValue = (bytes: number) => (received.values === 0 ? null : Math.round((bytes / received.values) * 10) / 10);
console.log(
  JSON.stringify({
    bench: `e2e-${sparkplug ? 'sparkplug-b-' : ''}${format}`,
    at: !cloud
      ? 'integrated broker (QoS 0, no uplink)'
      : sparkplug
        ? 'cloud (mosquitto, Sparkplug B DDATA at QoS 0, through the outbox)'
        : 'cloud (mosquitto, QoS 1, through the outbox)',
    tags,
    intervalMs: interval,
    devices,
    report,
    windowSeconds: seconds,
    expectedMessagesPerSecond: Math.round((tags / valuesPerMessage) * (1000 / interval)),
    deliveredMessagesPerSecond: received.messagesPerSecond,
    expectedValuesPerSecond: Math.round(tags * (1000 / interval)),
    deliveredValuesPerSecond: received.valuesPerSecond,
    // Messages that reached the subscriber during the window, whatever their poll time: the throughput.
    arrivedMessagesPerSecond: received.arrivedPerSecond,
    deliveredPercent: expectedValues === 0 ? 0 : Math.floor((received.values / expectedValues) * 10_000) / 100,
    pollCycles: { delivered: cyclesSeen, expected: nominalCycles * devices },
    messagesPerCycle,
    badValues: received.badValues,
    // From each value's sample time (per tag: its ts; JSON batch: each value's ts; Sparkplug: each metric's timestamp).
    latencyMs: received.latencyMs,
    // From the ts of the message's cycle: the JSON batch's poll slot (so its read time is in it).
    ...(format === 'batch' && !sparkplug ? { cycleLatencyMs: received.cycleLatencyMs } : {}),
    // From the Modbus server's serve time (--source-clock): to the cloud (or where --at says), and to the integrated broker.
    ...(sourceClock ? { sourceLatencyMs: received.sourceLatencyMs } : {}),
    ...(receivedLocally
      ? {
          localLatencyMs: receivedLocally.latencyMs,
          ...(sourceClock ? { localSourceLatencyMs: receivedLocally.sourceLatencyMs } : {}),
          localDeliveredPercent: expectedValues === 0 ? 0 : Math.floor((receivedLocally.values / expectedValues) * 10_000) / 100,
        }
      : {}),
    lastArrivalAfterWindowMs: received.lastArrivalAfterWindowMs,
    bytesPerValue: { payload: perValue(received.payloadBytes), wire: perValue(received.wireBytes) },
    gatewayCpuPercent: cpuPercent.gateway,
    gatewayRssMb: { atWindowStart: rssStart, atWindowEnd: rssEnd, peak: peakRss },
    otherCpuPercent: {
      mosquitto: cpuPercent.mosquitto,
      subscriber: cpuPercent.subscriber,
      ...(local ? { localSubscriber: cpuPercent.localSubscriber } : {}),
      modbusServer: cpuPercent.modbusServer,
    },
    accounting,
    // Inside the gateway, from each cloud-bound message's append (its sample's read) to its commit
    // to the outbox, its send and its PUBACK, over the whole run (the gateway logs it at its stop).
    ...(stopped?.cloudStagesMs ? { cloudStagesMs: stopped.cloudStagesMs } : {}),
    // Everything the gateway allocated in the window (garbage included), per message of the window.
    ...(allocation
      ? {
          allocation: {
            mbPerSecond: Math.round(allocation.bytes / seconds / 1e5) / 10,
            bytesPerMessage: received.messages === 0 ? null : Math.round(allocation.bytes / received.messages),
            top: allocation.top.map(({ site, bytes }) => ({
              site,
              bytesPerMessage: received.messages === 0 ? null : Math.round(bytes / received.messages),
            })),
          },
        }
      : {}),
    ...(args['gateway-flags'] ? { gatewayNodeFlags: args['gateway-flags'] } : {}),
    ...(args['memory-limit'] !== undefined ? { gatewayMemoryLimitMb: Number(args['memory-limit']) } : {}),
    ...(args.inflight !== undefined ? { inFlight: Number(args.inflight) } : {}),
    ...(args['commit-interval'] !== undefined ? { outboxCommitIntervalMs: Number(args['commit-interval']) } : {}),
  }),
);
process.exit(0);
