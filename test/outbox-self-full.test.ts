// Review of issue 12: a partition that the outbox itself filled ("sized too small"). Once the cloud
// has taken everything, the database file is mostly free pages; new messages fit into them, so
// the outbox must write again (README: "a backlog larger than the space freed goes to disk as the
// cloud takes what is written and frees room for the rest").
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { pino } from 'pino';
import { outboxSection } from '../src/config/schema.js';
import { Outbox } from '../src/cloud/outbox.js';
import { SmallDisk } from './helpers/small-disk.js';

const log = pino({ level: 'silent' });
const message = (n: number) => ({
  topic: 'plant/line1/tag',
  payload: Buffer.from(JSON.stringify({ seq: n, value: 12.5, quality: 'good', ts: 1767225600000 + n })),
  qos: 1 as const,
  retain: false,
});

it('outbox that filled its own partition can delete what the cloud acknowledged, and writes again', (t) => {
  const disk = SmallDisk.mount(Number(process.env.DISK_MB ?? 12));
  if (!disk) return t.skip('needs permission to mount a tmpfs (run as root)');
  t.after(() => disk.unmount());
  const outbox = Outbox.open(join(disk.path, 'outbox.db'), outboxSection.parse({ commitInterval: 1000 }), log);
  t.after(() => outbox.close());
  // The cloud is away: the outbox grows until the partition is full.
  let n = 0;
  while (!outbox.stats.diskFull && n < 200_000) {
    for (let i = 0; i < 500; i++) outbox.append(message(n++));
    outbox.commit();
  }
  assert.equal(outbox.stats.diskFull, true);
  for (let i = 0; i < 5; i++) outbox.commit(); // the retries every second
  const stored = outbox.stats.messages;
  // The cloud comes back and takes everything that is stored.
  let cursor = 0;
  for (let round = 0; round < 2000; round++) {
    const rows = outbox.peek(cursor, 1000);
    if (rows.length === 0) break;
    cursor = rows.at(-1)!.id;
    outbox.settle({ acknowledged: rows.map((row) => row.id) });
    outbox.commit(); // the retry every second (also retries failed deletions)
  }
  const files = Object.fromEntries(readdirSync(disk.path).map((f) => [f, statSync(join(disk.path, f)).size]));
  console.log({ stored, left: outbox.stats.messages, files, free: disk.free });
  assert.equal(
    outbox.stats.messages,
    0,
    `the acknowledged messages could not be deleted: ${outbox.stats.messages} of ${stored} still stored; files ${JSON.stringify(files)}, ${disk.free} bytes free`,
  );
  for (let i = 0; i < 5; i++) outbox.commit();
  const after = outbox.stats;
  console.log({ stored, freeBytes: disk.free, pendingAfterDrain: after.pending, diskFull: after.diskFull });
  // Nothing is stored any more, the file holds `stored` messages' worth of free pages: what waits
  // in memory (a few hundred messages) fits many times over.
  assert.equal(
    after.pending,
    0,
    `still ${after.pending} messages only in memory (publishers unacknowledged), diskFull ${after.diskFull}, ${disk.free} bytes free`,
  );
  // The WAL was checkpointed and truncated, and the partition is as full as before: new messages
  // go into the pages the acknowledgements freed, without anyone freeing space.
  assert.ok(statSync(join(disk.path, 'outbox.db-wal')).size <= 512 * 1024, `the WAL was truncated: ${JSON.stringify(files)}`);
  const dbSize = statSync(join(disk.path, 'outbox.db')).size;
  const more = Math.floor(stored / 2);
  for (let i = 0; i < more; i++) outbox.append(message(n++));
  outbox.commit();
  assert.deepEqual(
    { pending: outbox.stats.pending, messages: outbox.stats.messages, diskFull: outbox.stats.diskFull },
    { pending: 0, messages: after.messages + more, diskFull: false },
  );
  assert.ok(statSync(join(disk.path, 'outbox.db')).size <= dbSize + 64 * 1024, 'written into the freed pages');
});

// The outbox keeps its reserve, but another program can take the last byte at any moment, also
// while the WAL holds megabytes of pages no checkpoint has copied yet. The reserve file
// (outbox.db-reserve) is given back then, so the checkpoint and the deletions have room.
it('a partition another program filled while the WAL held megabytes: the reserve file is given back, acknowledged messages are deleted', (t) => {
  const disk = SmallDisk.mount(24);
  if (!disk) return t.skip('needs permission to mount a tmpfs (run as root)');
  t.after(() => disk.unmount());
  const file = join(disk.path, 'outbox.db');
  const outbox = Outbox.open(file, outboxSection.parse({ commitInterval: 1000 }), log);
  t.after(() => outbox.close());
  assert.equal(statSync(`${file}-reserve`).size, 4.5 * 1024 * 1024, 'the reserve file is written when the outbox opens');
  // A fresh database: every page the WAL holds is new, so a checkpoint must grow outbox.db by as much.
  let n = 0;
  while (!existsSync(`${file}-wal`) || statSync(`${file}-wal`).size < 3 * 1024 * 1024) {
    for (let i = 0; i < 500; i++) outbox.append(message(n++));
    outbox.commit();
  }
  const walBytes = statSync(`${file}-wal`).size;
  disk.fill();
  assert.equal(disk.free, 0);
  const stored = outbox.stats.messages;
  const ids = outbox.peek(0, stored).map((row) => row.id);
  outbox.settle({ acknowledged: ids });
  const files = Object.fromEntries(
    readdirSync(disk.path)
      .filter((f) => f.startsWith('outbox'))
      .map((f) => [f, statSync(join(disk.path, f)).size]),
  );
  assert.equal(
    outbox.stats.messages,
    0,
    `deleted (WAL of ${walBytes} bytes before the disk filled): ${outbox.stats.messages} of ${stored} still stored; files ${JSON.stringify(files)}, ${disk.free} bytes free`,
  );
  assert.equal(existsSync(`${file}-reserve`), false, 'the reserve file was given back');
  // New messages go into the freed pages.
  for (let i = 0; i < 1000; i++) outbox.append(message(n++));
  outbox.commit();
  assert.deepEqual({ pending: outbox.stats.pending, messages: outbox.stats.messages }, { pending: 0, messages: 1000 });
});
