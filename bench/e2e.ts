// End-to-end benchmark: pymodbus load server (the PLCs) → the gateway (its own process, the real
// CLI) → integrated broker → outbox → uplink at QoS 1 → mosquitto (the cloud) → a subscriber in a
// separate process that counts what arrives and measures latency from the payload's ts.
// Prints one JSON line of figures.
//
//   node dist/bench/e2e.js --tags 10000 --interval 500 [--devices 10] [--format per-tag|batch]
//        [--at cloud|local] [--window 10] [--warmup 3] [--inflight 500] [--commit-interval 5]
//        [--report always|change]
//        [--prof DIR] [--gateway-flags=--max-semi-space-size=4]
//
// --at local measures at the integrated broker instead (no uplink, no outbox, QoS 0 subscriber).
// --gateway-flags are Node options for the gateway process (space-separated; write them with "=").
// --prof writes the gateway's CPU profile (node --cpu-prof) into DIR; read it with
// `node dist/bench/profile-top.js DIR/*.cpuprofile`.
//
// Delivery is counted by poll slot (see subscriber.ts): the messages of the devices' poll slots in
// the window, against window / interval slots × tags (a skipped slot counts as undelivered); the
// window stays open after its end until its last messages have arrived (or --grace seconds passed).
// The window is rounded to a whole number of intervals.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { writeFileSync } from 'node:fs';
import {
  cpuSeconds,
  exited,
  freePort,
  peakRssMb,
  rssMb,
  sleep,
  start,
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
    at: { type: 'string', default: 'cloud' },
    window: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    grace: { type: 'string', default: '15' },
    inflight: { type: 'string' },
    'commit-interval': { type: 'string' },
    report: { type: 'string', default: 'always' },
    prof: { type: 'string' },
    'gateway-flags': { type: 'string' },
    // Debugging: write the tail of the gateway's output (logs, --trace-gc lines) to this file.
    'gateway-log': { type: 'string' },
  },
});
const tags = Number(args.tags);
const interval = Number(args.interval);
const devices = Math.min(Number(args.devices), tags);
const format = args.format === 'batch' ? 'batch' : 'per-tag';
const cloud = args.at !== 'local';
// A whole number of intervals, so every device has exactly windowMs / interval slots in it.
const windowMs = Math.max(1, Math.round((Number(args.window) * 1000) / interval)) * interval;
const warmupMs = Number(args.warmup) * 1000;
const report = args.report === 'change' ? 'change' : 'always';

const folder = tempFolder('plc2mqtt-e2e-');
const units = Array.from({ length: devices }, (_, index) => index + 1);
const perDevice = Math.ceil(tags / devices);
const tagsOf = new Map(units.map((unit) => [`plc${unit}`, Math.max(0, Math.min(perDevice, tags - (unit - 1) * perDevice))]));

const modbus = await startModbusServer(ROOT, units);
const mosquitto = cloud ? await startMosquitto(folder) : undefined;
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
          // The data topics (plc2mqtt/bench/<device>/<tag or group>), not the status topic.
          forward: [{ topic: '+/+', localPrefix: 'plc2mqtt/bench/', remotePrefix: 'plc2mqtt/bench/', qos: 1 }],
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

const subscriberArgs = (port: number, qos: number) => [
  join(ROOT, 'dist/bench/subscriber.js'),
  '--url',
  `mqtt://127.0.0.1:${port}`,
  '--filter',
  'plc2mqtt/bench/+/+',
  '--qos',
  String(qos),
  '--interval',
  String(interval),
  '--grace',
  args.grace,
];
// On the cloud the subscriber is there before the gateway, so its totals cover every message.
let subscriber = mosquitto
  ? await start(process.execPath, subscriberArgs(mosquitto.port, 1), /SUBSCRIBED/, 30_000, { stdin: true })
  : undefined;

const nodeFlags = [
  ...(args['gateway-flags']?.split(/\s+/).filter(Boolean) ?? []),
  ...(args.prof ? ['--cpu-prof', '--cpu-prof-dir', args.prof] : []),
];
const gateway = await start(
  process.execPath,
  [...nodeFlags, join(ROOT, 'dist/src/cli.js'), 'run', '-c', configFile],
  /polling started/,
  120_000,
);
const pid = gateway.child.pid!;
subscriber ??= await start(process.execPath, subscriberArgs(brokerPort, 0), /SUBSCRIBED/, 30_000, { stdin: true });

const t0 = Date.now() + warmupMs;
const t1 = t0 + windowMs;
subscriber.child.stdin!.write(`window ${t0} ${t1}\n`);
const others = { mosquitto: mosquitto?.child.pid, subscriber: subscriber.child.pid, modbusServer: modbus.child.pid };
const cpuOf = () =>
  ({
    gateway: cpuSeconds(pid),
    ...Object.fromEntries(Object.entries(others).flatMap(([name, id]) => (id === undefined ? [] : [[name, cpuSeconds(id)]]))),
  }) as Record<string, number>;

await sleep(t0 - Date.now());
const cpuStart = cpuOf();
const rssStart = rssMb(pid);
await sleep(t1 - Date.now());
const cpuEnd = cpuOf();
const seconds = (Date.now() - t0) / 1000;
const cpuPercent = Object.fromEntries(
  Object.keys(cpuEnd).map((name) => [name, Math.round(((cpuEnd[name]! - cpuStart[name]!) / seconds) * 100)]),
);
const rssEnd = rssMb(pid);
const peakRss = peakRssMb(pid);

interface WindowFigures {
  windowSeconds: number;
  messages: number;
  values: number;
  badValues: number;
  messagesPerSecond: number;
  valuesPerSecond: number;
  arrivedPerSecond: number;
  perDevice: Record<string, { cycles: number; messages: number; values: number }>;
  latencyMs: { p50: number | null; p90: number | null; p99: number | null; max: number | null };
  lastArrivalAfterWindowMs: number;
  timedOut: boolean;
}
const received = JSON.parse(
  (await waitForOutput(subscriber, /WINDOW (\{.*\})\n/, Number(args.grace) * 1000 + 10_000))[1]!,
) as WindowFigures;

// Expected: every slot of every device in the window (window / interval each), all its tags.
const nominalCycles = windowMs / interval;
let expectedValues = 0;
let cyclesSeen = 0;
for (const [name, count] of tagsOf) {
  cyclesSeen += received.perDevice[`plc2mqtt/bench/${name}`]?.cycles ?? 0;
  expectedValues += nominalCycles * count;
}

// Stop the gateway; its last log line has what it published and what is left in the outbox.
gateway.child.kill('SIGTERM');
await Promise.race([exited(gateway.child), sleep(20_000)]);
const stoppedLine = /^\{.*"msg":"gateway stopped".*\}$/m.exec(gateway.output())?.[0];
if (args['gateway-log']) writeFileSync(args['gateway-log'], gateway.output());
const stopped = stoppedLine
  ? (JSON.parse(stoppedLine) as {
      published: number;
      outbox?: { messages: number; dropped?: number };
      uplink?: { acknowledged: number; reconnects: number; rejected: number };
    })
  : undefined;
let accounting: Record<string, number> | null = null;
if (mosquitto && stopped) {
  // Messages still in flight through mosquitto when the gateway stopped arrive a moment later.
  await sleep(1500);
  subscriber.child.stdin!.write('stop\n');
  const final = JSON.parse((await waitForOutput(subscriber, /FINAL (\{.*\})\n/, 10_000))[1]!) as { messages: number };
  const leftInOutbox = stopped.outbox?.messages ?? 0;
  accounting = {
    published: stopped.published,
    received: final.messages,
    leftInOutbox,
    // Dropped by the outbox's bounds (maxMessages 1,000,000 by default, policy drop-oldest).
    droppedByOutbox: stopped.outbox?.dropped ?? 0,
    // Negative: messages delivered whose PUBACK came too late to delete them (sent again at the next start).
    missing: stopped.published - final.messages - leftInOutbox - (stopped.outbox?.dropped ?? 0),
    reconnects: stopped.uplink?.reconnects ?? 0,
  };
}

const valuesPerMessage = format === 'batch' ? tags / devices : 1;
console.log(
  JSON.stringify({
    bench: `e2e-${format}`,
    at: cloud ? 'cloud (mosquitto, QoS 1, through the outbox)' : 'integrated broker (QoS 0, no uplink)',
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
    badValues: received.badValues,
    latencyMs: received.latencyMs,
    lastArrivalAfterWindowMs: received.lastArrivalAfterWindowMs,
    gatewayCpuPercent: cpuPercent.gateway,
    gatewayRssMb: { atWindowStart: rssStart, atWindowEnd: rssEnd, peak: peakRss },
    otherCpuPercent: { mosquitto: cpuPercent.mosquitto, subscriber: cpuPercent.subscriber, modbusServer: cpuPercent.modbusServer },
    accounting,
    ...(args['gateway-flags'] ? { gatewayNodeFlags: args['gateway-flags'] } : {}),
    ...(args.inflight !== undefined ? { inFlight: Number(args.inflight) } : {}),
    ...(args['commit-interval'] !== undefined ? { outboxCommitIntervalMs: Number(args['commit-interval']) } : {}),
  }),
);
process.exit(0);
