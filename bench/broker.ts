// The integrated broker alone (src/broker/broker.ts, aedes; MQTT 5 clients through src/broker/mqtt5.ts)
// under MQTT load. The broker runs in a process of its own (bench/broker-clients.ts broker, with
// --expose-gc), the clients (mqtt.js) in one or more others, so its CPU and RSS are its own.
// Prints one JSON line of figures.
//
//   node dist/bench/broker.js [--scenario fanin|connections|fanout] [--clients N] [--protocol 4|5]
//        [--rate R|max] [--seconds 10] [--warmup 3] [--payload 64] [--unacked 10] [--client-processes 1]
//
// fanin (default): N publishers (200) at QoS 1, R messages/s in all (20000), each publisher at
//   R / N on a steady grid; one subscriber on bench/# at QoS 1, with the publishers in one client
//   process, or alone in the first of --client-processes 2+ (the publishers split over the others).
//   --rate max: every publisher keeps --unacked (10) publishes unacknowledged and sends the next at
//   each PUBACK.
// fanout: one publisher at R messages/s (100; or max) to N subscribers (200) of bench/fanout, QoS 1;
//   the subscribers in the first client process, the publisher in the last.
// connections: N idle clients (2000; keep-alive 60, each subscribed at QoS 1 to a topic of its
//   own): the broker's RSS after gc() once they are connected, against the idle broker's, and
//   its CPU over --seconds with them connected.
//
// Figures over the window [T0, T1) after the warm-up: sent = publishes whose send time is in it,
// delivered = those that reached the subscriber(s) (fanout: × N), deliveredPerSecond = arrivals in
// the window per second; latency from the send time in the payload to arrival (p50/p95/p99/max);
// broker CPU as % of one core over the window; broker RSS (peak: VmHWM, the whole run). A PUBACK
// does not wait for the deliveries: when the broker falls behind, pubackPerSecond stays high while
// deliveredPerSecond drops and the backlog drains after T1 (lastArrivalAfterWindowMs), so the
// throughput is deliveredPerSecond, in --rate max too.
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { cpuSeconds, exited, peakRssMb, rssMb, sleep, start, tempFolder, waitForOutput, type Started } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CHILD = join(ROOT, 'dist/bench/broker-clients.js');
const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string', default: 'fanin' },
    clients: { type: 'string' },
    protocol: { type: 'string', default: '4' },
    rate: { type: 'string' },
    seconds: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
    payload: { type: 'string', default: '64' },
    unacked: { type: 'string', default: '10' },
    'client-processes': { type: 'string', default: '1' },
  },
});
const scenario = args.scenario!;
if (!['fanin', 'fanout', 'connections'].includes(scenario)) throw new Error(`--scenario fanin, fanout or connections, not ${scenario}`);
const protocol = args.protocol === '5' ? 5 : 4;
if (args.protocol !== '4' && args.protocol !== '5') throw new Error(`--protocol 4 or 5, not ${args.protocol}`);
const clients = Number(args.clients ?? (scenario === 'connections' ? 2000 : 200));
const saturate = args.rate === 'max';
const rate = saturate ? 0 : Number(args.rate ?? (scenario === 'fanout' ? 100 : 20_000));
const seconds = Number(args.seconds);
const warmupMs = Number(args.warmup) * 1000;
const processes = Math.max(1, Number(args['client-processes']));
const round1 = (value: number) => Math.round(value * 10) / 10;

const folder = tempFolder('plc2mqtt-bench-broker-');
const broker = await start(process.execPath, ['--expose-gc', CHILD, 'broker', '--data-dir', folder], /READY (\d+)/, 30_000, {
  stdin: true,
});
const brokerPid = broker.child.pid!;
const url = `mqtt://127.0.0.1:${broker.match[1]}`;
let requests = 0;
/** Asks the broker child (memory or stats) and returns its answer. */
async function ask<T>(started: Started, command: 'memory' | 'stats'): Promise<T> {
  const id = ++requests;
  started.child.stdin!.write(`${command} ${id}\n`);
  const word = command.toUpperCase();
  return JSON.parse((await waitForOutput(started, new RegExp(`${word} ${id} (\\{.*\\})\\n`), 10_000))[1]!) as T;
}
interface Memory {
  rss: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}
const mb = (bytes: number) => round1(bytes / 1024 / 1024);

/** Client processes, with their share of the clients; each resolves once all of its clients are connected. */
function startClients(shares: string[][]): Promise<Started[]> {
  return Promise.all(
    shares.map((share) =>
      start(
        process.execPath,
        [CHILD, 'clients', '--url', url, '--protocol', String(protocol), '--scenario', scenario, ...share],
        /READY (\{.*\})\n/,
        180_000,
        {
          stdin: true,
        },
      ),
    ),
  );
}
/** [from, to) of share `index` of `count` split over `parts` client processes. */
const slice = (count: number, index: number, parts = processes) =>
  `${Math.floor((count * index) / parts)}:${Math.floor((count * (index + 1)) / parts)}`;

let figures: Record<string, unknown>;
if (scenario === 'connections') {
  await sleep(1000);
  const idle = await ask<Memory>(broker, 'memory');
  const cpuBefore = cpuSeconds(brokerPid);
  const clientProcesses = await startClients(Array.from({ length: processes }, (_, index) => ['--connections', slice(clients, index)]));
  const connectSeconds = Math.max(
    ...clientProcesses.map((client) => (JSON.parse(client.match[1]!) as { connectSeconds: number }).connectSeconds),
  );
  const connectCpu = cpuSeconds(brokerPid) - cpuBefore;
  const stats = await ask<{ clients: number }>(broker, 'stats');
  await sleep(2000);
  const connected = await ask<Memory>(broker, 'memory');
  const cpuStart = cpuSeconds(brokerPid);
  await sleep(seconds * 1000);
  const cpuPercent = round1(((cpuSeconds(brokerPid) - cpuStart) / seconds) * 100);
  const kbPer = (field: keyof Memory) => round1((connected[field] - idle[field]) / 1024 / clients);
  figures = {
    connections: clients,
    connectedAtBroker: stats.clients,
    connectSeconds: round1(connectSeconds),
    brokerCpuSecondsToConnect: round1(connectCpu * 100) / 100,
    // After gc() twice (--expose-gc), idle and with every client connected.
    brokerRssMb: { idle: mb(idle.rss), connected: mb(connected.rss), peak: peakRssMb(brokerPid) },
    brokerHeapUsedMb: { idle: mb(idle.heapUsed), connected: mb(connected.heapUsed) },
    perConnectionKb: { rss: kbPer('rss'), heapUsed: kbPer('heapUsed'), external: kbPer('external') },
    brokerCpuPercentConnected: cpuPercent,
    windowSeconds: seconds,
  };
  for (const client of clientProcesses) client.child.kill('SIGTERM');
} else {
  const fanout = scenario === 'fanout';
  const publisherCount = fanout ? 1 : clients;
  const perPublisher = saturate ? 'max' : String(rate / publisherCount);
  const common = [
    '--publisher-count',
    String(publisherCount),
    '--rate',
    perPublisher,
    '--unacked',
    args.unacked!,
    '--payload',
    args.payload!,
  ];
  const shares = Array.from({ length: processes }, (_, index) => [
    ...common,
    // fanin: the subscriber in the first process, alone if there are more; fanout: the subscribers
    // in the first, the publisher in the last.
    ...(fanout
      ? [...(index === 0 ? ['--subscribers', String(clients)] : []), ...(index === processes - 1 ? ['--publishers', '0:1'] : [])]
      : processes === 1
        ? ['--subscribers', '1', '--publishers', `0:${clients}`]
        : index === 0
          ? ['--subscribers', '1']
          : ['--publishers', slice(clients, index - 1, processes - 1)]),
  ]);
  const clientProcesses = await startClients(shares);
  const startAt = Date.now() + 200;
  const t0 = startAt + warmupMs;
  const t1 = t0 + seconds * 1000;
  for (const client of clientProcesses) client.child.stdin!.write(`go ${startAt} ${t0} ${t1}\n`);
  const everyProcess = [broker, ...clientProcesses];
  const cpuOf = () =>
    everyProcess.map((started) => {
      if (started.child.exitCode !== null || started.child.signalCode !== null)
        throw new Error(`a child exited during the run: ${started.output().slice(-1000)}`);
      return cpuSeconds(started.child.pid!);
    });
  await sleep(t0 - Date.now());
  const cpuStart = cpuOf();
  const rssStart = rssMb(brokerPid);
  await sleep(t1 - Date.now());
  const cpuEnd = cpuOf();
  const windowSeconds = (Date.now() - t0) / 1000;
  const cpuPercent = cpuEnd.map((end, index) => round1(((end - cpuStart[index]!) / windowSeconds) * 100));
  const rssEnd = rssMb(brokerPid);
  interface Result {
    sent: number;
    sentInWindow: number;
    acked: number;
    ackedInWindow: number;
    unacked: number;
    publishErrors: number;
    arrived: number;
    arrivedInWindow: number;
    deliveredOfWindow: number;
    duplicates: number;
    latencyMs: Record<string, number | null>;
    lastArrivalAfterWindowMs: number | null;
    disconnects: number;
    errors: number;
  }
  const results = await Promise.all(
    clientProcesses.map(async (client) => JSON.parse((await waitForOutput(client, /RESULT (\{.*\})\n/, 60_000))[1]!) as Result),
  );
  const sum = (field: keyof Result) => results.reduce((total, result) => total + (result[field] as number), 0);
  const receivers = fanout ? clients : 1;
  const sentInWindow = sum('sentInWindow');
  const stats = await ask<Record<string, number>>(broker, 'stats');
  figures = {
    publishers: publisherCount,
    subscribers: receivers,
    rate: saturate ? `max (${args.unacked} unacknowledged per publisher)` : rate,
    payloadBytes: Number(args.payload),
    windowSeconds: round1(windowSeconds),
    sent: sentInWindow,
    sentPerSecond: Math.round(sentInWindow / windowSeconds),
    // Deliveries of the window's publishes (fanout: each to every subscriber) against sent × subscribers.
    delivered: sum('deliveredOfWindow'),
    deliveredPercent: sentInWindow === 0 ? 0 : Math.floor((sum('deliveredOfWindow') / (sentInWindow * receivers)) * 10_000) / 100,
    deliveredPerSecond: Math.round(sum('arrivedInWindow') / windowSeconds),
    pubackPerSecond: Math.round(sum('ackedInWindow') / windowSeconds),
    latencyMs: results[0]!.latencyMs,
    // How long after T1 the last message arrived: the backlog the broker had left (publishing stops at T1).
    lastArrivalAfterWindowMs: results[0]!.lastArrivalAfterWindowMs,
    brokerCpuPercent: cpuPercent[0],
    brokerRssMb: { atWindowStart: rssStart, atWindowEnd: rssEnd, peak: peakRssMb(brokerPid) },
    clientCpuPercent: cpuPercent.slice(1),
    leftUnacknowledged: sum('unacked'),
    duplicates: sum('duplicates'),
    publishErrors: sum('publishErrors'),
    disconnects: sum('disconnects'),
    brokerStats: { messagesIn: stats.messagesIn, messagesOut: stats.messagesOut, errors: stats.errors },
  };
  for (const client of clientProcesses) client.child.kill('SIGTERM');
}

console.log(
  JSON.stringify({ bench: `broker-${scenario}`, protocol, ...figures, ...(processes > 1 ? { clientProcesses: processes } : {}) }),
);
broker.child.kill('SIGTERM');
await Promise.race([exited(broker.child), sleep(5000)]);
process.exit(0);
