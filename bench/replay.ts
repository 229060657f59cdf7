// Store-and-forward benchmark. Prints one JSON line:
//  - append rate of the outbox (synchronous NORMAL and FULL);
//  - replay: N messages buffered in the outbox while the cloud was down, then the gateway (the
//    real CLI, its own process) drains them to mosquitto at QoS 1: time, msg/s, gateway peak RSS,
//    and that the cloud-side counter saw every sequence number (zero lost).
//   node dist/bench/replay.js [--messages 1000000] [--inflight 500] [--qos 1]
// (--qos 0: the backlog goes up at QoS 0, each message settled on a ping round trip after it.)
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { outboxSection } from '../src/config/schema.js';
import { Outbox } from '../src/cloud/outbox.js';
import { peakRssMb, rssMb, start, startMosquitto, tempFolder } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '1000000' },
    inflight: { type: 'string', default: '500' },
    qos: { type: 'string', default: '1' },
  },
});
const qos = args.qos === '0' ? 0 : 1;
const total = Number(args.messages);
const folder = tempFolder('plc2mqtt-replay-');
const log = pino({ level: 'silent' });
// A payload shaped like a tag message, ~110 bytes with its topic.
const payload = (seq: number) =>
  Buffer.from(`{"value":${(seq % 1000) / 10},"quality":"good","ts":${1_795_000_000_000 + seq},"unit":"bar","seq":${seq}}`);

function appendRate(synchronous: 'normal' | 'full', count: number): number {
  const outbox = Outbox.open(join(folder, `append-${synchronous}.db`), outboxSection.parse({ synchronous, maxMessages: 10_000_000 }), log);
  const started = performance.now();
  for (let seq = 1; seq <= count; seq++) {
    outbox.append({ topic: `plc2mqtt/bench/plc${seq % 10}/t${seq % 1000}`, payload: payload(seq), qos: 1, retain: false });
    if (seq % 1000 === 0) outbox.commit(); // what 50 ms of appends at 20k msg/s look like
  }
  outbox.commit();
  const rate = Math.round(count / ((performance.now() - started) / 1000));
  outbox.close();
  return rate;
}

const appendNormal = appendRate('normal', Math.min(total, 200_000));
const appendFull = appendRate('full', Math.min(total, 100_000));

// The backlog: N messages in the gateway's own outbox file, as if the cloud had been down.
const dataDir = join(folder, 'data');
mkdirSync(dataDir, { recursive: true });
const backlog = Outbox.open(join(dataDir, 'outbox.db'), outboxSection.parse({ maxMessages: 10_000_000, maxBytes: '4GB' }), log);
for (let seq = 1; seq <= total; seq++) {
  backlog.append({ topic: `plc2mqtt/bench/plc${seq % 10}/t${seq % 1000}`, payload: payload(seq), qos, retain: false });
  if (seq % 10_000 === 0) backlog.commit();
}
backlog.commit();
backlog.close();

// mosquitto as the cloud (max_queued_messages 0: otherwise it drops QoS 1 messages silently).
const { port: cloudPort } = await startMosquitto(folder);
const counter = await start(
  process.execPath,
  [join(ROOT, 'dist/bench/counter.js'), `mqtt://127.0.0.1:${cloudPort}`, 'plc2mqtt/bench/#', String(total)],
  /SUBSCRIBED/,
);
const result = new Promise<{ distinct: number; duplicates: number; outOfOrder: number; firstAt: number; doneAt: number }>((resolve) =>
  counter.child.once('exit', () =>
    resolve(
      JSON.parse(
        counter
          .output()
          .split('\n')
          .find((line) => line.startsWith('{')) ?? '{}',
      ),
    ),
  ),
);

const config = {
  gateway: { name: 'bench', dataDir, logLevel: 'info' },
  broker: { listeners: [{ type: 'tcp', port: 0 }] },
  http: { port: 0 },
  uplink: { url: `mqtt://127.0.0.1:${cloudPort}`, inFlight: Number(args.inflight), outbox: { maxMessages: 10_000_000, maxBytes: '4GB' } },
};
writeFileSync(join(folder, 'gateway.json'), JSON.stringify(config));
const started = Date.now();
const gateway = await start(
  process.execPath,
  [
    ...(process.env.GW_FLAGS ? process.env.GW_FLAGS.split(' ') : []),
    ...(process.env.PROFILE ? ['--cpu-prof', '--cpu-prof-dir', process.env.PROFILE] : []),
    join(ROOT, 'dist/src/cli.js'),
    'run',
    '-c',
    join(folder, 'gateway.json'),
  ],
  /polling started/,
);
// RSS while draining, once a second: it should stay flat, however long the backlog.
const rssSamples: number[] = [];
const sampler = setInterval(() => rssSamples.push(rssMb(gateway.child.pid!)), 1000);
const received = await result;
clearInterval(sampler);
const seconds = (received.doneAt - started) / 1000;
const gatewayPeakRssMb = peakRssMb(gateway.child.pid!);
gateway.child.kill('SIGTERM');
await new Promise((resolve) => gateway.child.once('exit', resolve));

console.log(
  JSON.stringify({
    bench: 'replay',
    outboxAppendPerSecond: { synchronousNormal: appendNormal, synchronousFull: appendFull },
    buffered: total,
    delivered: received.distinct,
    lost: total - received.distinct,
    duplicates: received.duplicates,
    outOfOrder: received.outOfOrder,
    drainSeconds: Math.round(seconds * 10) / 10,
    drainPerSecond: Math.round(received.distinct / seconds),
    inFlightWindow: Number(args.inflight),
    qos,
    gatewayPeakRssMb,
    // Resident memory during the drain: first and last second, smallest and largest sample.
    gatewayRssMbDuringDrain:
      rssSamples.length === 0
        ? null
        : {
            first: rssSamples[0],
            min: Math.min(...rssSamples),
            max: Math.max(...rssSamples),
            last: rssSamples.at(-1),
            every5s: rssSamples.filter((_, index) => index % 5 === 0),
          },
  }),
);
process.exit(0);
