// Resting cost of the gateway (the real CLI, its own process), each with an uplink to mosquitto:
//  - noDevices: the integrated broker and the uplink, nothing to poll;
//  - tags10kAt1s: 10,000 tags on 10 pymodbus units polled every second with the default
//    `report: "change"` (deadband 0, maxSilence 60 s): the registers never change, so after the
//    first cycle the gateway polls 80 requests/s and publishes nothing — not idle, but quiet.
// CPU % and RSS over a window after a warm-up. Prints one JSON line.
//
//   node dist/bench/idle.js [--window 20] [--warmup 5] [--gateway-flags=--max-semi-space-size=4] [--memory-limit MB]
// (--memory-limit: the gateway in a memory cgroup of that size, as in e2e.js; needs root.)
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import {
  cpuSeconds,
  exited,
  freePort,
  nodeCommand,
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
    window: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '5' },
    'gateway-flags': { type: 'string' },
    'memory-limit': { type: 'string' },
  },
});
const windowMs = Number(args.window) * 1000;
const warmupMs = Number(args.warmup) * 1000;
const flags = args['gateway-flags']?.split(/\s+/).filter(Boolean) ?? [];

const TAGS = 10_000;
const DEVICES = 10;
const INTERVAL = 1000;
const folder = tempFolder('plc2mqtt-idle-');
const units = Array.from({ length: DEVICES }, (_, index) => index + 1);
const modbus = await startModbusServer(ROOT, units);
const cloud = await startMosquitto(folder);

async function measure(name: string, devices: unknown[]) {
  const dataDir = join(folder, name);
  const config = {
    gateway: { name: 'bench', dataDir, logLevel: 'info' },
    broker: { listeners: [{ type: 'tcp', host: '127.0.0.1', port: await freePort() }], allowAnonymous: true },
    http: { port: 0 },
    uplink: { url: `mqtt://127.0.0.1:${cloud.port}` },
    devices,
  };
  const file = join(folder, `${name}.json`);
  writeFileSync(file, JSON.stringify(config));
  // Counts what reaches the cloud in the window (should be nothing once the first cycle is out).
  const subscriber = await start(
    process.execPath,
    [
      join(ROOT, 'dist/bench/subscriber.js'),
      '--url',
      `mqtt://127.0.0.1:${cloud.port}`,
      '--filter',
      'plc2mqtt/bench/+/+',
      '--interval',
      String(INTERVAL),
    ],
    /SUBSCRIBED/,
    30_000,
    { stdin: true },
  );
  const command = nodeCommand([...flags, join(ROOT, 'dist/src/cli.js'), 'run', '-c', file], args['memory-limit']);
  const gateway = await start(command.command, command.argv, /polling started/, 120_000);
  const pid = gateway.child.pid!;
  const t0 = Date.now() + warmupMs;
  subscriber.child.stdin!.write(`window ${t0} ${t0 + windowMs}\n`);
  await sleep(t0 - Date.now());
  const cpuStart = cpuSeconds(pid);
  const rssStart = rssMb(pid);
  await sleep(windowMs);
  const cpuPercent = Math.round(((cpuSeconds(pid) - cpuStart) / (windowMs / 1000)) * 1000) / 10;
  const figures = { cpuPercent, rssMb: { atWindowStart: rssStart, atWindowEnd: rssMb(pid), peak: peakRssMb(pid) } };
  const window = JSON.parse((await waitForOutput(subscriber, /WINDOW (\{.*\})\n/, 30_000))[1]!) as { messages: number };
  gateway.child.kill('SIGTERM');
  await Promise.race([exited(gateway.child), sleep(20_000)]);
  subscriber.child.kill('SIGTERM');
  await exited(subscriber.child);
  return { ...figures, messagesToCloudInWindow: window.messages };
}

const noDevices = await measure('no-devices', []);
const tags = await measure(
  'tags-10k',
  units.map((unit) => ({
    name: `plc${unit}`,
    driver: 'modbus',
    connection: { transport: 'tcp', host: '127.0.0.1', port: modbus.port, unitId: unit, timeout: '2s' },
    pollInterval: INTERVAL,
    publish: 'per-tag',
    tags: Array.from({ length: TAGS / DEVICES }, (_, index) => ({ name: `t${index}`, area: 'holding', address: index, type: 'uint16' })),
  })),
);

console.log(
  JSON.stringify({
    bench: 'idle',
    windowSeconds: windowMs / 1000,
    noDevices,
    tags10kAt1s: {
      tags: TAGS,
      devices: DEVICES,
      intervalMs: INTERVAL,
      report: 'change (default; deadband 0, maxSilence 60 s; the values never change)',
      ...tags,
    },
    ...(flags.length > 0 ? { gatewayNodeFlags: flags.join(' ') } : {}),
    ...(args['memory-limit'] !== undefined ? { gatewayMemoryLimitMb: Number(args['memory-limit']) } : {}),
  }),
);
process.exit(0);
