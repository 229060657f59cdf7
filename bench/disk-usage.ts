// What the outbox and the retained store take on disk, for sizing `uplink.outbox.maxBytes` against
// a partition. Prints one JSON line:
//  - the outbox filled to maxBytes and kept at the bound (drop-oldest) by live appends, then
//    drained by acknowledgements while appends go on, then empty: the largest outbox.db, -wal and
//    -shm seen after any commit or deletion, and after the drain;
//  - retained.db with one retained message per tag.
//   node dist/bench/disk-usage.js [--max-bytes 64MB] [--payload 80] [--tags 10000]
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { outboxSection } from '../src/config/schema.js';
import { Outbox } from '../src/cloud/outbox.js';
import { RetainedStore } from '../src/broker/retained-store.js';
import { tempFolder } from './lib.js';

const { values: args } = parseArgs({
  options: {
    'max-bytes': { type: 'string', default: '64MB' },
    payload: { type: 'string', default: '80' },
    tags: { type: 'string', default: '10000' },
  },
});
const folder = tempFolder('plc2mqtt-disk-usage-');
const log = pino({ level: 'silent' });
const options = outboxSection.parse({ maxBytes: args['max-bytes'], maxMessages: 100_000_000 });
const payloadBytes = Number(args.payload);
const topicOf = (seq: number) => `acme/plant1/line${seq % 10}/press${seq % 100}/tag${seq % 1000}`;
// A tag payload padded to the requested size, or a bare value where that is smaller.
const payloadOf = (seq: number) => {
  const tag = `{"value":${(seq % 1000) / 10},"quality":"good","ts":${1_795_000_000_000 + seq}}`;
  return Buffer.from((tag.length <= payloadBytes ? tag : String(seq % 1000)).padEnd(payloadBytes, ' '));
};

/** Bytes a file takes on disk (allocated blocks), 0 when it does not exist. */
const onDisk = (file: string) => (existsSync(file) ? statSync(file).blocks * 512 : 0);
const mb = (bytes: number) => Math.round((bytes / 1024 / 1024) * 100) / 100;

const file = join(folder, 'outbox.db');
const outbox = Outbox.open(file, options, log);
const peak = { db: 0, wal: 0, shm: 0, total: 0 };
const sample = () => {
  const db = onDisk(file);
  const wal = onDisk(`${file}-wal`);
  const shm = onDisk(`${file}-shm`);
  peak.db = Math.max(peak.db, db);
  peak.wal = Math.max(peak.wal, wal);
  peak.shm = Math.max(peak.shm, shm);
  peak.total = Math.max(peak.total, db + wal + shm);
};

// 1. Fill to the bound and go on for half as much again (drop-oldest at work), committing every
//    100 messages: 5 ms (commitInterval) of appends at 20k msg/s.
const toFill = Math.ceil((options.maxBytes / (topicOf(1).length + payloadBytes)) * 1.5);
let seq = 0;
for (; seq < toFill; seq++) {
  outbox.append({ topic: topicOf(seq), payload: payloadOf(seq), qos: 1, retain: false });
  if (seq % 100 === 99) {
    outbox.commit();
    if (seq % 10_000 === 9_999) sample();
  }
}
outbox.commit();
sample();
const atBound = { messages: outbox.stats.messages, bytes: outbox.stats.bytes, dropped: outbox.stats.dropped };

// 2. The cloud drains it (acknowledgements deleted 250 at a time) while the plant goes on at a
//    fifth of that rate, until the outbox is empty.
let next = outbox.peek(0, 1)[0]?.id ?? 1;
while (outbox.stats.messages > 0) {
  const rows = outbox.peek(next - 1, 250);
  if (rows.length === 0) break;
  outbox.settle({ acknowledged: rows.map((row) => row.id) });
  next = rows.at(-1)!.id + 1;
  if (outbox.stats.messages > 10_000) {
    for (let i = 0; i < 50; i++, seq++) outbox.append({ topic: topicOf(seq), payload: payloadOf(seq), qos: 1, retain: false });
    outbox.commit();
  }
  if (next % 5000 < 250) sample();
}
sample();
const drained = { db: onDisk(file), wal: onDisk(`${file}-wal`), shm: onDisk(`${file}-shm`) };
outbox.close();

// 3. retained.db: the last value of every tag, every tag changing every second (one flush each).
const retainedFile = join(folder, 'retained.db');
const retained = RetainedStore.open(retainedFile, log);
const retainedPeak = { db: 0, wal: 0, total: 0 };
for (let round = 0; round < 20; round++) {
  for (let tag = 0; tag < Number(args.tags); tag++)
    retained.record({ topic: `acme/plant1/line${tag % 10}/press${tag % 100}/tag${tag}`, payload: payloadOf(tag + round), qos: 1 });
  retained.flush();
  const db = onDisk(retainedFile);
  const wal = onDisk(`${retainedFile}-wal`);
  retainedPeak.db = Math.max(retainedPeak.db, db);
  retainedPeak.wal = Math.max(retainedPeak.wal, wal);
  retainedPeak.total = Math.max(retainedPeak.total, db + wal + onDisk(`${retainedFile}-shm`));
}
retained.close();

console.log(
  JSON.stringify({
    bench: 'disk-usage',
    maxBytesMb: mb(options.maxBytes),
    averageMessageBytes: Math.round(atBound.bytes / atBound.messages),
    atBound: { ...atBound, bytesMb: mb(atBound.bytes) },
    peakMb: { db: mb(peak.db), wal: mb(peak.wal), shm: mb(peak.shm), total: mb(peak.total) },
    peakTotalPerMaxBytes: Math.round((peak.total / options.maxBytes) * 100) / 100,
    dbPerMaxBytes: Math.round((peak.db / options.maxBytes) * 100) / 100,
    afterDrainMb: { db: mb(drained.db), wal: mb(drained.wal), shm: mb(drained.shm) },
    retainedPeakMb: {
      tags: Number(args.tags),
      db: mb(retainedPeak.db),
      wal: mb(retainedPeak.wal),
      total: mb(retainedPeak.total),
      closedDb: mb(onDisk(retainedFile)),
    },
  }),
);
