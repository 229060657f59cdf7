// OPC UA subscription benchmark: a node-opcua server with N variables that all change every
// `period` ms (its own process) → the gateway (the real CLI, its own process) with one device of N
// monitored items → integrated broker → a subscriber in a third process that counts. One JSON line.
//
//   node dist/bench/opcua-subscription.js [--items 10000] [--period 100] [--sampling 0] [--window 10]
//
// --sampling is the monitored items' samplingInterval: 0 = report on change (the node-opcua server
// pushes values as they are set), 100 = sample every 100 ms (node-opcua runs a timer per item).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

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

const children: ChildProcess[] = [];
process.on('exit', () => children.forEach((child) => child.kill('SIGKILL')));

function start(command: string, argv: string[], ready: RegExp, timeoutMs = 60_000): Promise<{ child: ChildProcess; match: RegExpMatchArray; output: () => string }> {
  const child = spawn(command, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${argv[0]} did not become ready: ${output.slice(-500)}`)), timeoutMs);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.length > 1_000_000) output = output.slice(-100_000);
      const match = ready.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve({ child, match, output: () => output });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${argv[0]} exited with ${code}: ${output.slice(-500)}`)));
  });
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** CPU seconds (user + system) a process has used, from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function peakRssMb(pid: number): number {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Math.round(Number(match[1]) / 1024) : 0;
}

const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-opcua-bench-'));
const server = await start(process.execPath, [join(ROOT, 'dist/bench/opcua-load-server.js'), join(folder, 'server-pki'), String(items), String(period)], /READY (\d+)/);
const opcuaPort = Number(server.match[1]);
const brokerPort = await freePort();
const config = {
  gateway: { name: 'bench', dataDir: join(folder, 'data'), logLevel: 'info' },
  broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
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
const subscriber = await start(process.execPath, [join(ROOT, 'dist/bench/subscriber.js'), `mqtt://127.0.0.1:${brokerPort}`, 'plc2mqtt/#', String(warmupMs), String(windowMs)], /SUBSCRIBED/);
const resultLine = new Promise<string>((resolve) => subscriber.child.once('exit', () => resolve(subscriber.output().split('\n').find((line) => line.startsWith('{')) ?? '{}')));

await new Promise((resolve) => setTimeout(resolve, warmupMs));
const cpuStart = cpuSeconds(pid);
const serverCpuStart = cpuSeconds(server.child.pid!);
const wallStart = Date.now();
await new Promise((resolve) => setTimeout(resolve, windowMs));
const wall = (Date.now() - wallStart) / 1000;
const cpuPercent = Math.round(((cpuSeconds(pid) - cpuStart) / wall) * 100);
const serverCpuPercent = Math.round(((cpuSeconds(server.child.pid!) - serverCpuStart) / wall) * 100);
const rss = peakRssMb(pid);
const received = JSON.parse(await resultLine) as { messages: number; perSecond: number; latencyMs: unknown };
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
    deliveredPerSecond: received.perSecond,
    delivered: `${Math.round((received.perSecond / expected) * 100)}%`,
    latencyMs: received.latencyMs,
    gatewayCpuPercent: cpuPercent,
    gatewayPeakRssMb: rss,
    serverCpuPercent,
  }),
);

gateway.child.kill('SIGTERM');
await new Promise((resolve) => gateway.child.once('exit', resolve));
server.child.kill('SIGTERM');
rmSync(folder, { recursive: true, force: true });
process.exit(0);
