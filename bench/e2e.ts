// End-to-end benchmark: pymodbus load server → gateway (its own process, the real CLI) →
// integrated broker → a subscriber in a third process. Prints one JSON line of figures.
//
//   node dist/bench/e2e.js --tags 10000 --interval 1000 [--devices 10] [--format per-tag|batch] [--window 10]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { cpuSeconds, freePort, peakRssMb, start } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const { values: args } = parseArgs({
  options: {
    tags: { type: 'string', default: '1000' },
    interval: { type: 'string', default: '1000' },
    devices: { type: 'string', default: '10' },
    format: { type: 'string', default: 'per-tag' },
    window: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
  },
});
const tags = Number(args.tags);
const interval = Number(args.interval);
const devices = Math.min(Number(args.devices), tags);
const format = args.format === 'batch' ? 'batch' : 'per-tag';
const windowMs = Number(args.window) * 1000;
const warmupMs = Number(args.warmup) * 1000;

const units = Array.from({ length: devices }, (_, index) => index + 1);
const modbus = await start('/usr/bin/python3', [join(ROOT, 'bench/load-server.py'), '--units', units.join(',')], /READY (\d+)/);
const modbusPort = Number(modbus.match[1]);
const brokerPort = await freePort();
const folder = mkdtempSync(join(tmpdir(), 'plc2mqtt-bench-'));
const perDevice = Math.ceil(tags / devices);
const config = {
  gateway: { name: 'bench', dataDir: join(folder, 'data'), logLevel: 'info' },
  broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: brokerPort }], allowAnonymous: true },
  topics: { retain: false },
  devices: units.map((unit) => ({
    name: `plc${unit}`,
    driver: 'modbus',
    connection: { transport: 'tcp', host: '127.0.0.1', port: modbusPort, unitId: unit, timeout: '2s' },
    pollInterval: interval,
    report: 'always',
    publish: format,
    tags: Array.from({ length: Math.min(perDevice, tags - (unit - 1) * perDevice) }, (_, index) => ({ name: `t${index}`, area: 'holding', address: index, type: 'uint16' })),
  })),
};
const configFile = join(folder, 'bench.json');
writeFileSync(configFile, JSON.stringify(config));

const gateway = await start(process.execPath, [join(ROOT, 'dist/src/cli.js'), 'run', '-c', configFile], /polling started/);
const pid = gateway.child.pid!;
const subscriber = await start(process.execPath, [join(ROOT, 'dist/bench/subscriber.js'), `mqtt://127.0.0.1:${brokerPort}`, 'plc2mqtt/#', String(warmupMs), String(windowMs)], /SUBSCRIBED/);
const resultLine = new Promise<string>((resolve) => subscriber.child.once('exit', () => resolve(subscriber.output().split('\n').find((line) => line.startsWith('{')) ?? '{}')));

await new Promise((resolve) => setTimeout(resolve, warmupMs));
const cpuStart = cpuSeconds(pid);
const wallStart = Date.now();
await new Promise((resolve) => setTimeout(resolve, windowMs));
const cpuPercent = Math.round(((cpuSeconds(pid) - cpuStart) / ((Date.now() - wallStart) / 1000)) * 100);
const received = JSON.parse(await resultLine) as { messages: number; perSecond: number; latencyMs: unknown };
const rss = peakRssMb(pid);

const expectedMessages = format === 'batch' ? devices * (1000 / interval) : tags * (1000 / interval);
console.log(JSON.stringify({
  bench: `e2e-${format}`,
  tags,
  intervalMs: interval,
  devices,
  expectedMessagesPerSecond: expectedMessages,
  deliveredMessagesPerSecond: received.perSecond,
  deliveredValuesPerSecond: format === 'batch' ? Math.round(received.perSecond * (tags / devices)) : received.perSecond,
  delivered: `${Math.round((received.perSecond / expectedMessages) * 100)}%`,
  latencyMs: received.latencyMs,
  gatewayCpuPercent: cpuPercent,
  gatewayPeakRssMb: rss,
}));

gateway.child.kill('SIGTERM');
await new Promise((resolve) => gateway.child.once('exit', resolve));
modbus.child.kill('SIGTERM');
rmSync(folder, { recursive: true, force: true });
process.exit(0);
