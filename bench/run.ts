// `npm run bench`: every benchmark point of the suite in turn, one JSON line each (about 10 minutes
// on a 2-core machine). Each line can be reproduced alone with the command in the comment.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const runs: Array<[string, string[]]> = [
  // node dist/bench/modbus-plan.js
  ['modbus-plan.js', []],
  // e2e-per-tag: node dist/bench/e2e.js --tags N --interval MS --devices D
  ['e2e.js', ['--tags', '1000', '--interval', '1000', '--devices', '1']],
  ['e2e.js', ['--tags', '10000', '--interval', '1000', '--devices', '10']],
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '10']],
  // the same with the outbox committing every 50 ms instead of 1 (uplink.outbox.commitInterval)
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '10', '--commit-interval', '50']],
  ['e2e.js', ['--tags', '10000', '--interval', '100', '--devices', '10']],
  // e2e-batch: node dist/bench/e2e.js --tags 10000 --interval 100 --devices 10 --format batch
  ['e2e.js', ['--tags', '10000', '--interval', '100', '--devices', '10', '--format', 'batch']],
  // e2e-sparkplug-b-per-tag / -batch, the same shape as Sparkplug B DDATA (one per device cycle, QoS 0):
  // node dist/bench/e2e.js --tags 10000 --interval 100 --devices 10 --uplink-format sparkplug-b [--format batch]
  ['e2e.js', ['--tags', '10000', '--interval', '100', '--devices', '10', '--uplink-format', 'sparkplug-b']],
  ['e2e.js', ['--tags', '10000', '--interval', '100', '--devices', '10', '--uplink-format', 'sparkplug-b', '--format', 'batch']],
  // one device of 10k tags @ 500 ms, JSON batch and Sparkplug B:
  // node dist/bench/e2e.js --tags 10000 --interval 500 --devices 1 --format batch [--uplink-format sparkplug-b]
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--format', 'batch']],
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--uplink-format', 'sparkplug-b']],
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--uplink-format', 'sparkplug-b', '--format', 'batch']],
  // one device, latency from the Modbus server's serve time (its registers hold its clock) to the integrated broker and to the cloud:
  // one device of 10k consecutive registers, latency from the server's serve time (the issue-18 shape):
  // node dist/bench/e2e.js --tags 10000 --interval 1000|500 --devices 1 --source-clock
  ['e2e.js', ['--tags', '10000', '--interval', '1000', '--devices', '1', '--source-clock']],
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--source-clock']],
  // 1,000 tags: node dist/bench/e2e.js --tags 1000 --interval 1000 --devices 1 --source-clock
  ['e2e.js', ['--tags', '1000', '--interval', '1000', '--devices', '1', '--source-clock']],
  // with a local subscriber on the integrated broker too (localSourceLatencyMs):
  // node dist/bench/e2e.js --tags 10000 --interval 500 --devices 1 --source-clock --local-subscriber
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--source-clock', '--local-subscriber']],
  // the same on a box with 1 GB for the gateway (a memory cgroup; only as root, skipped otherwise):
  // node dist/bench/e2e.js --tags 10000 --interval 500 --devices 1 --source-clock --memory-limit 1024
  ...(process.getuid?.() === 0
    ? [
        ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--source-clock', '--memory-limit', '1024']] as [
          string,
          string[],
        ],
      ]
    : []),
  // bytes the gateway allocates per message, and where: node dist/bench/e2e.js --tags 10000 --interval 500 --devices 1 --alloc
  ['e2e.js', ['--tags', '10000', '--interval', '500', '--devices', '1', '--alloc']],
  // per-tag saturation, 20k → 50k msg/s: node dist/bench/saturation.js
  ['saturation.js', []],
  // node dist/bench/replay.js --messages 1000000
  ['replay.js', ['--messages', '1000000']],
  // the broker alone, 200 QoS 1 publishers → 1 subscriber (also --rate max, --protocol 5, --scenario connections): node dist/bench/broker.js --scenario fanin --clients 200 --protocol 4 --rate 20000 --seconds 10
  ['broker.js', ['--scenario', 'fanin', '--clients', '200', '--protocol', '4', '--rate', '20000', '--seconds', '10']],
  ['broker.js', ['--scenario', 'fanin', '--clients', '200', '--protocol', '5', '--rate', '20000', '--seconds', '10']],
  // 2,000 idle clients, RSS after a GC: node dist/bench/broker.js --scenario connections --protocol 4|5 --clients 2000
  ['broker.js', ['--scenario', 'connections', '--protocol', '4', '--clients', '2000']],
  ['broker.js', ['--scenario', 'connections', '--protocol', '5', '--clients', '2000']],
  // node dist/bench/idle.js
  ['idle.js', []],
  // what the event bus costs a sample: node dist/bench/event-bus.js
  ['event-bus.js', []],
  // Sparkplug B DDATA encoding vs the JSON batch, CPU and bytes per 10k metrics: node dist/bench/sparkplug-encode.js
  ['sparkplug-encode.js', []],
  // serial driver, frames parsed per second on one core: node dist/bench/serial-parse.js
  ['serial-parse.js', []],
  // serial driver, frame → subscriber latency (stream 10/100/1000 per s, request every 100 ms): node dist/bench/serial-latency.js --request
  ['serial-latency.js', ['--request']],
  // what outbox.db, its WAL and retained.db take on disk: node dist/bench/disk-usage.js [--payload 80]
  ['disk-usage.js', []],
  ['disk-usage.js', ['--payload', '12']],
  ['disk-usage.js', ['--payload', '1000']],
];
for (const [script, args] of runs) {
  const result = spawnSync(process.execPath, [join(here, script), ...args], {
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 15 * 60_000,
  });
  if (result.status !== 0) {
    process.exitCode = 1;
    console.error(`${script} ${args.join(' ')}: exited with ${result.status ?? result.signal}`);
  }
}
