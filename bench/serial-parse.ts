// Serial-line driver, parsing on one core: frames per second through the driver's own path for
// streamed frames (FrameSplitter with delimiter framing → frameText → parseFrame, the work of
// SerialDriver.streamed per frame: one Date.now(), the latest-value map, the delivered array), for
// a 40-byte analyzer line parsed by one regex with named groups into 3 float64 tags, each with a
// quality rule on the line's status field:
//
//   N=42 T=+023.45 P=1013.2 F=0012.5 ST=OK\r\n
//
// The bytes arrive as a port hands them over: whole frames, 64-byte chunks, 8-byte chunks (a slow
// line read as it trickles in) and single bytes (the worst case). Also: heap bytes allocated per
// frame (v8.GCProfiler: growth of the used heap plus what every GC in between freed; Buffer
// contents live outside the heap and are not in it), and what a 115200-baud line can carry.
// Prints one JSON line.
//
//   node dist/bench/serial-parse.js [--frames 500000] [--chunks whole,64,8,1]
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import v8 from 'node:v8';
import { serialDevice } from '../drivers/serial/config.js';
import { FrameSplitter } from '../drivers/serial/framing.js';
import { compileFraming } from '../drivers/serial/index.js';
import { compileTags, frameText, parseFrame } from '../drivers/serial/parse.js';
import type { TagReading } from '../src/pipeline/driver.js';

const { values: args } = parseArgs({
  options: {
    frames: { type: 'string', default: '500000' },
    chunks: { type: 'string', default: 'whole,64,8,1' },
  },
});
const framesPerRun = Number(args.frames);
const chunkings = args.chunks.split(',').map((chunk) => (chunk === 'whole' ? 'whole' : Number(chunk)));

// An analyzer: one pattern for the line, a tag per measurement, quality from ST (OK good, CA
// uncertain while it calibrates, anything else bad).
const PATTERN = 'T=(?<T>[+-]?\\d+\\.\\d+) P=(?<P>[+-]?\\d+\\.\\d+) F=(?<F>[+-]?\\d+\\.\\d+) ST=(?<status>\\w+)';
const quality = { capture: 'status', good: ['OK'], uncertain: ['CA'] };
const device = serialDevice.parse({
  name: 'analyzer',
  driver: 'serial',
  connection: { transport: 'serial', path: '/dev/ttyUSB0', baudRate: 115200 },
  framing: { type: 'delimiter', delimiter: '\r\n' },
  deliver: 'frame',
  report: 'always',
  tags: [
    { name: 'temperature', regex: PATTERN, capture: 'T', unit: '°C', quality },
    { name: 'pressure', regex: PATTERN, capture: 'P', unit: 'hPa', quality },
    { name: 'flow', regex: PATTERN, capture: 'F', unit: 'l/min', quality },
  ],
});
const framing = compileFraming(device.framing);
const encoding = device.framing.encoding;
const tags = compileTags(device.tags);

// 1,000 different lines (the values move, one in 100 is calibrating), 40 bytes each.
const LINES = 1000;
const fixed = (value: number, width: number, decimals: number, sign = false) =>
  `${sign ? (value < 0 ? '-' : '+') : ''}${Math.abs(value).toFixed(decimals).padStart(width, '0')}`;
const lines = Array.from({ length: LINES }, (_, index) => {
  const line = `N=${String(index % 100).padStart(2, '0')} T=${fixed(23.45 + Math.sin(index / 50) * 5, 6, 2, true)} P=${fixed(1013.2 + (index % 17) / 10, 6, 1)} F=${fixed(12.5 + (index % 31) / 10, 6, 1)} ST=${index % 100 === 99 ? 'CA' : 'OK'}\r\n`;
  return Buffer.from(line, 'latin1');
});
const FRAME_BYTES = lines[0]!.length;
if (lines.some((line) => line.length !== FRAME_BYTES)) throw new Error('the lines differ in length');
const stream = Buffer.concat(lines);

/** The chunks one pass over the 1,000 lines arrives in. */
function chunksOf(chunking: number | 'whole'): Buffer[] {
  if (chunking === 'whole') return lines.map((line) => Buffer.from(line));
  const chunks: Buffer[] = [];
  for (let at = 0; at < stream.length; at += chunking) chunks.push(Buffer.from(stream.subarray(at, at + chunking)));
  return chunks;
}

// What SerialDriver.streamed does with each frame of a push group.
const latest = new Map<string, { reading: TagReading; at: number; stale: boolean }>();
let frames = 0;
let good = 0;
let checksum = 0;
const deliver = (readings: TagReading[]) => {
  frames++;
  for (const reading of readings) {
    if (reading.quality === 'good') good++;
    if (typeof reading.value === 'number') checksum += reading.value;
  }
};
const splitter = new FrameSplitter(
  framing,
  (frame) => {
    const now = Date.now();
    const text = frameText(frame, encoding);
    const results = parseFrame(tags, frame, text, now, false);
    const delivered: TagReading[] = [];
    results.forEach((reading, index) => {
      if (!reading) return;
      latest.set(tags[index]!.tag.name, { reading, at: now, stale: false });
      delivered.push(reading);
    });
    if (delivered.length > 0) deliver(delivered);
  },
  (problem) => {
    throw new Error(`bad frame: ${problem}`);
  },
);

/** Pushes passes over `chunks` until `count` frames came out; ns per frame and heap bytes allocated per frame. */
function run(chunks: Buffer[], count: number): { nsPerFrame: number; heapBytesPerFrame: number; cpuPercent: number } {
  const passes = Math.max(1, Math.round(count / LINES));
  const startFrames = frames;
  const profiler = new v8.GCProfiler();
  profiler.start();
  const usedBefore = v8.getHeapStatistics().used_heap_size;
  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  for (let pass = 0; pass < passes; pass++) for (const chunk of chunks) splitter.push(chunk);
  const elapsedMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  const usedAfter = v8.getHeapStatistics().used_heap_size;
  let freed = 0;
  for (const gc of profiler.stop()?.statistics ?? [])
    freed += gc.beforeGC.heapStatistics.usedHeapSize - gc.afterGC.heapStatistics.usedHeapSize;
  const done = frames - startFrames;
  if (done !== passes * LINES) throw new Error(`${done} frames out of ${passes * LINES}`);
  return {
    nsPerFrame: (elapsedMs * 1e6) / done,
    heapBytesPerFrame: (usedAfter - usedBefore + freed) / done,
    cpuPercent: ((cpu.user + cpu.system) / 1000 / elapsedMs) * 100,
  };
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const results: Record<string, unknown> = {};
for (const chunking of chunkings) {
  const chunks = chunksOf(chunking);
  // Single bytes are slow (see the report); fewer of them keep the run short.
  const count = chunking === 1 ? Math.min(framesPerRun, 100_000) : framesPerRun;
  run(chunks, Math.min(count, 100_000)); // warm-up: optimized code, a grown young generation
  const runs = [run(chunks, count), run(chunks, count), run(chunks, count)];
  const nsPerFrame = median(runs.map((result) => result.nsPerFrame));
  results[chunking === 'whole' ? 'wholeFrames' : `chunks${chunking}B`] = {
    chunkBytes: chunking === 'whole' ? FRAME_BYTES : chunking,
    framesPerSecond: Math.round(1e9 / nsPerFrame),
    nsPerFrame: Math.round(nsPerFrame),
    heapBytesPerFrame: Math.round(median(runs.map((result) => result.heapBytesPerFrame))),
    // More than 100 means GC helper threads worked beside the main thread.
    cpuPercentOfOneCore: Math.round(median(runs.map((result) => result.cpuPercent))),
    framesPerRun: count,
  };
}

// 115200 baud, 8N1: 10 bits per byte on the wire.
const lineBytesPerSecond = 115200 / 10;
const goodExpected = frames * tags.length * ((LINES - LINES / 100) / LINES);
console.log(
  JSON.stringify({
    bench: 'serial-parse',
    frame: lines[0]!.toString('latin1').replace('\r\n', '\\r\\n'),
    frameBytes: FRAME_BYTES,
    tagsPerFrame: tags.length,
    pattern: PATTERN,
    ...results,
    line115200: {
      bytesPerSecond: lineBytesPerSecond,
      framesPerSecond: Math.floor(lineBytesPerSecond / FRAME_BYTES),
    },
    // Every tag of an OK frame is good; of a CA frame uncertain.
    check: { frames, goodReadings: good, goodExpected: Math.round(goodExpected), checksum: Math.round(checksum) },
  }),
);
