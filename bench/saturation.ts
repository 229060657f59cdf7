// Per-tag saturation with the outbox on: e2e.js (10,000 tags on 10 pymodbus units, one JSON message
// per tag, through the integrated broker and the outbox to mosquitto at QoS 1) at shorter and
// shorter poll intervals, until two steps in a row are not sustained (one may be noise on a busy
// machine). Sustained: ≥ 99.9% of the window's messages delivered, p99 latency ≤ 1 s and the
// window's last message in less than 1 s after it ended (the outbox is not growing). Prints one
// JSON line: every step and the highest sustained rate.
//
//   node dist/bench/saturation.js [--tags 10000] [--intervals 500,400,333,286,250,222,200] [--window 10]
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));
const { values: args } = parseArgs({
  options: {
    tags: { type: 'string', default: '10000' },
    devices: { type: 'string', default: '10' },
    intervals: { type: 'string', default: '500,400,333,286,250,222,200' },
    window: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '3' },
  },
});

interface Point {
  expectedMessagesPerSecond: number;
  deliveredMessagesPerSecond: number;
  arrivedMessagesPerSecond: number;
  deliveredPercent: number;
  latencyMs: { p50: number | null; p99: number | null };
  lastArrivalAfterWindowMs: number;
  gatewayCpuPercent: number;
  gatewayRssMb: { peak: number };
  otherCpuPercent: Record<string, number>;
  accounting: { leftInOutbox: number } | null;
}

const steps: Array<Record<string, unknown>> = [];
let sustained: { intervalMs: number; point: Point } | undefined;
let firstFailure: Point | undefined;
let failuresInARow = 0;
for (const interval of args.intervals.split(',').map(Number)) {
  const run = spawnSync(
    process.execPath,
    [
      join(here, 'e2e.js'),
      '--tags',
      args.tags,
      '--devices',
      args.devices,
      '--interval',
      String(interval),
      '--window',
      args.window,
      '--warmup',
      args.warmup,
      '--grace',
      '10',
    ],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: 180_000 },
  );
  const line = run.stdout?.split('\n').find((text) => text.startsWith('{'));
  if (!line) {
    steps.push({ intervalMs: interval, error: `e2e.js exited with ${run.status ?? run.signal}` });
    break;
  }
  const point = JSON.parse(line) as Point;
  const ok = point.deliveredPercent >= 99.9 && (point.latencyMs.p99 ?? Infinity) <= 1000 && point.lastArrivalAfterWindowMs < 1000;
  steps.push({
    intervalMs: interval,
    expected: point.expectedMessagesPerSecond,
    delivered: point.deliveredMessagesPerSecond,
    arrivedInWindow: point.arrivedMessagesPerSecond,
    deliveredPercent: point.deliveredPercent,
    latencyMs: point.latencyMs,
    gatewayCpuPercent: point.gatewayCpuPercent,
    gatewayPeakRssMb: point.gatewayRssMb.peak,
    otherCpuPercent: point.otherCpuPercent,
    leftInOutboxAtStop: point.accounting?.leftInOutbox ?? null,
    sustained: ok,
  });
  if (!ok) {
    firstFailure ??= point;
    if (++failuresInARow === 2) break;
    continue;
  }
  failuresInARow = 0;
  sustained = { intervalMs: interval, point };
}

console.log(
  JSON.stringify({
    bench: 'e2e-saturation',
    format: 'per-tag',
    tags: Number(args.tags),
    criterion: '>= 99.9% delivered, p99 <= 1 s, window drained within 1 s',
    sustainedMessagesPerSecond: sustained?.point.expectedMessagesPerSecond ?? 0,
    sustainedAtIntervalMs: sustained?.intervalMs ?? null,
    gatewayCpuPercentAtSustained: sustained?.point.gatewayCpuPercent ?? null,
    gatewayPeakRssMbAtSustained: sustained?.point.gatewayRssMb.peak ?? null,
    // The first step that was not sustained: what reached the cloud per second during its window.
    // (sustained is the fastest step that passed, even with a failed step before it.)
    firstUnsustained: firstFailure
      ? {
          expected: firstFailure.expectedMessagesPerSecond,
          arrivedInWindow: firstFailure.arrivedMessagesPerSecond,
          deliveredPercent: firstFailure.deliveredPercent,
          p99: firstFailure.latencyMs.p99,
          gatewayCpuPercent: firstFailure.gatewayCpuPercent,
        }
      : null,
    steps,
  }),
);
