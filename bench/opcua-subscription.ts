// OPC UA subscription benchmark: a node-opcua server with N variables that all change every
// `period` ms (its own process) → the gateway (the real CLI, its own process) with one device of N
// monitored items → integrated broker → a subscriber in a third process that counts. One JSON line.
//
//   node dist/bench/opcua-subscription.js [--items 10000] [--period 100] [--sampling 0] [--window 10]
//
// --sampling is the monitored items' samplingInterval: 0 = report on change (the node-opcua server
// pushes values as they are set), 100 = sample every 100 ms (node-opcua runs a timer per item).
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { cpuSeconds, freePort, peakRssMb, sleep, start, tempFolder, waitForOutput } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const { values: args } = parseArgs({
  options: {
    items: { type: 'string', default: '10000' },
    period: { type: 'string', default: '100' },
    sampling: { type: 'string', default: '0' },
    window: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '5' },
  },
});
const items = Number(args.items);
const period = Number(args.period);
const sampling = Number(args.sampling);
const windowMs = Number(args.window) * 1000;
const warmupMs = Number(args.warmup) * 1000;

const folder = tempFolder('plc2mqtt-opcua-bench-');
const server = await start(
  process.execPath,
  [join(ROOT, 'dist/bench/opcua-load-server.js'), join(folder, 'server-pki'), String(items), String(period)],
  /READY (\d+)/,
);
const opcuaPort = Number(server.match[1]);
const brokerPort = await freePort();
const config = {
  gateway: { name: 'bench', dataDir: join(folder, 'data'), logLevel: 'info' },
  broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
  http: { port: 0 },
  topics: { retain: false },
  devices: [
    {
      name: 'ua',
      driver: 'opcua',
      connection: { endpointUrl: `opc.tcp://127.0.0.1:${opcuaPort}`, connectTimeout: '30s', requestTimeout: '30s' },
      // The publishing interval: one publish response per 100 ms carrying every change.
      pollInterval: period,
      report: 'always',
      subscription: { samplingInterval: sampling },
      tags: Array.from({ length: items }, (_, index) => ({ name: `v${index}`, nodeId: `ns=1;s=Load.v${index}` })),
    },
  ],
};
const configFile = join(folder, 'bench.json');
writeFileSync(configFile, JSON.stringify(config));

const gateway = await start(process.execPath, [join(ROOT, 'dist/src/cli.js'), 'run', '-c', configFile], /polling started/);
const pid = gateway.child.pid!;
const subscriber = await start(
  process.execPath,
  [
    join(ROOT, 'dist/bench/subscriber.js'),
    '--url',
    `mqtt://127.0.0.1:${brokerPort}`,
    '--filter',
    'plc2mqtt/#',
    '--qos',
    '0',
    '--interval',
    String(period),
  ],
  /SUBSCRIBED/,
  30_000,
  { stdin: true },
);
// The subscriber counts what arrives in the window (notifications carry the server's source timestamps, not poll slots).
const windowStart = Date.now() + warmupMs;
subscriber.child.stdin!.write(`window ${windowStart} ${windowStart + windowMs}\n`);

await sleep(windowStart - Date.now());
const cpuStart = cpuSeconds(pid);
const serverCpuStart = cpuSeconds(server.child.pid!);
const wallStart = Date.now();
await sleep(windowMs);
const wall = (Date.now() - wallStart) / 1000;
const cpuPercent = Math.round(((cpuSeconds(pid) - cpuStart) / wall) * 100);
const serverCpuPercent = Math.round(((cpuSeconds(server.child.pid!) - serverCpuStart) / wall) * 100);
const rss = peakRssMb(pid);
const received = JSON.parse((await waitForOutput(subscriber, /WINDOW (\{.*\})\n/, 60_000))[1]!) as {
  arrivedPerSecond: number;
  latencyMs: unknown;
};
if (gateway.child.exitCode !== null) throw new Error(`the gateway exited during the run: ${gateway.output().slice(-2000)}`);
const expected = items * (1000 / period);

console.log(
  JSON.stringify({
    bench: 'opcua-subscription',
    items,
    changePeriodMs: period,
    publishingIntervalMs: period,
    samplingIntervalMs: sampling,
    expectedNotificationsPerSecond: expected,
    deliveredPerSecond: received.arrivedPerSecond,
    delivered: `${Math.round((received.arrivedPerSecond / expected) * 100)}%`,
    latencyMs: received.latencyMs,
    gatewayCpuPercent: cpuPercent,
    gatewayPeakRssMb: rss,
    serverCpuPercent,
  }),
);

gateway.child.kill('SIGTERM');
await new Promise((resolve) => gateway.child.once('exit', resolve));
server.child.kill('SIGTERM');
process.exit(0);
