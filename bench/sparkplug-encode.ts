// Sparkplug B payload encoding, CPU and bytes per 10,000 metrics: 100 DDATA payloads of 100
// Double metrics each, by alias with a timestamp and without datatype (as DDATA goes out, seq and
// payload timestamp set), against the JSON batch format of the same samples (one
// encodeBatchPayload per device and poll cycle, src/northbound/json/payload.ts). Both are timed
// from the samples (building the payload included), and Sparkplug also from prebuilt payloads
// (the codec alone). The median of the rounds. One process, one core. Prints one JSON line.
//
//   node dist/bench/sparkplug-encode.js [--rounds 200]
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { encodeBatchPayload } from '../src/northbound/json/payload.js';
import { DataType, encodePayload, type SparkplugPayload } from '../src/northbound/sparkplug/payload.js';
import type { Sample } from '../src/pipeline/normalize.js';

const { values: args } = parseArgs({ options: { rounds: { type: 'string', default: '200' } } });
const rounds = Number(args.rounds);
const DEVICES = 100;
const TAGS = 100;
const START = 1_765_000_000_000;

// Samples of one poll cycle per device: engineering values with decimals, ms timestamps.
const devices = Array.from({ length: DEVICES }, (_, device) => {
  const samples: Sample[] = Array.from({ length: TAGS }, (_, tag) => ({
    device: `dev${device}`,
    group: 'default',
    tag: `tag${tag}`,
    value: Math.round((Math.sin(device * TAGS + tag) * 1000 + 1000) * 1000) / 1000,
    quality: 'good',
    ts: START + tag,
  }));
  // Node-wide unique aliases ([tck-id-payloads-alias-uniqueness]).
  return { name: `dev${device}`, samples, aliases: samples.map((_, tag) => BigInt(device * TAGS + tag + 1)) };
});

function sparkplugFromSamples(seq: number): number {
  let bytes = 0;
  for (const device of devices) {
    const payload: SparkplugPayload = {
      timestamp: START,
      seq: seq++ & 255,
      metrics: device.samples.map((sample, index) => ({
        alias: device.aliases[index]!,
        timestamp: sample.ts,
        datatype: DataType.Double,
        value: sample.value as number,
      })),
    };
    bytes += encodePayload(payload, { omitDatatypes: true }).length;
  }
  return bytes;
}

const prebuilt: SparkplugPayload[] = devices.map((device, index) => ({
  timestamp: START,
  seq: index,
  metrics: device.samples.map((sample, tag) => ({
    alias: device.aliases[tag]!,
    timestamp: sample.ts,
    datatype: DataType.Double,
    value: sample.value as number,
  })),
}));

function sparkplugPrebuilt(): number {
  let bytes = 0;
  for (const payload of prebuilt) bytes += encodePayload(payload, { omitDatatypes: true }).length;
  return bytes;
}

function jsonBatch(): number {
  let bytes = 0;
  for (const device of devices) bytes += Buffer.byteLength(encodeBatchPayload(device.name, 'default', START, device.samples, 'ms'));
  return bytes;
}

function measure(run: () => number): { ms: number; bytes: number } {
  let bytes = 0;
  for (let index = 0; index < 20; index++) bytes = run(); // warm-up: the JIT, protobufjs's generated encoders
  const times: number[] = [];
  for (let index = 0; index < rounds; index++) {
    const start = performance.now();
    bytes = run();
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return { ms: Number(times[Math.floor(times.length / 2)]!.toFixed(3)), bytes };
}

const fromSamples = measure(() => sparkplugFromSamples(0));
const codecOnly = measure(sparkplugPrebuilt);
const json = measure(jsonBatch);
console.log(
  JSON.stringify({
    bench: 'sparkplug-encode',
    metrics: DEVICES * TAGS,
    payloads: DEVICES,
    rounds,
    node: process.version,
    sparkplugMsPer10k: fromSamples.ms,
    sparkplugCodecOnlyMsPer10k: codecOnly.ms,
    sparkplugBytesPer10k: fromSamples.bytes,
    jsonBatchMsPer10k: json.ms,
    jsonBatchBytesPer10k: json.bytes,
  }),
);
