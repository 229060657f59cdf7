// What the event bus costs the hot path per sample: the gateway asks `has('sample')` once per
// poll cycle and builds and emits a "sample" event per sample only while someone listens.
// Measured against the rest of a sample's path in the gateway (normalize + JSON payload), on
// cycles of 1,000 samples. Prints one JSON line.
//
//   node dist/bench/event-bus.js [--samples 2000000]
import { parseArgs } from 'node:util';
import { EventBus } from '../src/app/event-bus.js';
import type { GatewayEvents } from '../src/app/events.js';
import { encodeTagPayload } from '../src/northbound/json/payload.js';
import { TagNormalizer, type Sample } from '../src/pipeline/normalize.js';

const { values: args } = parseArgs({ options: { samples: { type: 'string', default: '2000000' } } });
const total = Number(args.samples);
const CYCLE = 1000;
const normalizers = Array.from(
  { length: CYCLE },
  (_, index) => new TagNormalizer({ device: 'plc', group: 'default', tag: `t${index}`, report: 'always', maxSilence: 0 }),
);

/** ns per sample of the gateway's per-sample work, with the bus as `listening` makes it. */
function run(bus: EventBus<GatewayEvents>, withPayload: boolean): number {
  let sink = 0;
  const started = process.hrtime.bigint();
  for (let done = 0; done < total; done += CYCLE) {
    const announce = bus.has('sample');
    const now = Date.now();
    for (let index = 0; index < CYCLE; index++) {
      const sample: Sample = normalizers[index]!.normalize({ tag: `t${index}`, value: done + index, quality: 'good' }, now);
      if (withPayload) sink += encodeTagPayload(sample, 'ms').length;
      if (announce) bus.emit('sample', { device: 'plc', tag: sample.tag, sample, topic: 'plc2mqtt/gw/plc/t', reported: true });
    }
  }
  const elapsed = Number(process.hrtime.bigint() - started);
  if (sink < 0) console.log(sink);
  return elapsed / total;
}

const quiet = new EventBus<GatewayEvents>();
const listened = new EventBus<GatewayEvents>();
let seen = 0;
listened.on('sample', () => void seen++);
// Warm up both paths, then measure each twice and keep the better figure.
run(quiet, true);
run(listened, true);
const best = (bus: EventBus<GatewayEvents>, withPayload: boolean) => Math.min(run(bus, withPayload), run(bus, withPayload));
const busOnly = { noListener: best(quiet, false), oneListener: best(listened, false) };
const withPayload = { noListener: best(quiet, true), oneListener: best(listened, true) };
const round = (ns: number) => Math.round(ns * 10) / 10;
process.stdout.write(
  `${JSON.stringify({
    bench: 'event-bus',
    samples: total,
    nsPerSample: {
      normalize: { noListener: round(busOnly.noListener), oneListener: round(busOnly.oneListener) },
      normalizeAndJson: { noListener: round(withPayload.noListener), oneListener: round(withPayload.oneListener) },
    },
    listenerCostNsPerSample: round(withPayload.oneListener - withPayload.noListener),
    delivered: seen,
  })}\n`,
);
