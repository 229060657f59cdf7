// The SQLite outbox on a real file: order, persistence across reopen, bounds and drop policies
// (exact counts), age expiry, a corrupt file at start, and a disk that fills up and frees again.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import { outboxSection } from '../src/config/schema.js';
import { Outbox, type OutboxOptions } from '../src/cloud/outbox.js';
import { waitFor } from './helpers/net.js';

const log = pino({ level: 'silent' });
const options = (extra: Record<string, unknown> = {}): OutboxOptions => outboxSection.parse({ commitInterval: 5, ...extra });
const message = (n: number, topic = 't') => ({ topic, payload: Buffer.from(JSON.stringify({ seq: n })), qos: 1 as const, retain: false });
const seqs = (outbox: Outbox) => outbox.peek(0, 1_000_000).map((row) => (JSON.parse(row.payload.toString()) as { seq: number }).seq);

function folder(t: TestContext): string {
  const path = mkdtempSync(join(tmpdir(), 'plc2mqtt-outbox-'));
  t.after(() => rmSync(path, { recursive: true, force: true }));
  return path;
}

describe('outbox', () => {
  it('keeps order, survives a reopen, and forgets only what was removed', (t) => {
    const file = join(folder(t), 'outbox.db');
    const outbox = Outbox.open(file, options(), log);
    for (let n = 1; n <= 100; n++) outbox.append(message(n));
    outbox.commit();
    assert.deepEqual(
      seqs(outbox),
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    const first10 = outbox.peek(0, 10);
    outbox.settle({ acknowledged: first10.map((row) => row.id) });
    assert.equal(outbox.stats.messages, 90);
    assert.equal(outbox.stats.delivered, 10);
    outbox.close();

    const reopened = Outbox.open(file, options(), log);
    assert.deepEqual(
      seqs(reopened),
      Array.from({ length: 90 }, (_, i) => i + 11),
    );
    assert.equal(reopened.stats.messages, 90);
    assert.equal(
      reopened.stats.bytes,
      reopened.peek(0, 1000).reduce((sum, row) => sum + row.size, 0),
    );
    reopened.close();
  });

  it('runs onCommitted only once the message is on disk', async (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ commitInterval: 20 }), log);
    let committed = false;
    outbox.append(message(1), () => (committed = true));
    assert.equal(committed, false);
    assert.equal(outbox.peek(0, 10).length, 0);
    await waitFor(() => committed, 5_000, 'the commit');
    assert.equal(outbox.peek(0, 10).length, 1);
    outbox.close();
  });

  it('drop-oldest keeps exactly the newest maxMessages and counts the rest', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxMessages: 50, policy: 'drop-oldest' }), log);
    for (let n = 1; n <= 80; n++) outbox.append(message(n));
    outbox.commit();
    for (let n = 81; n <= 100; n++) outbox.append(message(n));
    outbox.commit();
    assert.deepEqual(
      seqs(outbox),
      Array.from({ length: 50 }, (_, i) => i + 51),
    );
    assert.equal(outbox.stats.dropped, 50);
    assert.equal(outbox.stats.messages, 50);
    outbox.close();
  });

  it('drop-newest keeps exactly the first maxMessages and counts the rest', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxMessages: 50, policy: 'drop-newest' }), log);
    for (let n = 1; n <= 80; n++) outbox.append(message(n));
    outbox.commit();
    for (let n = 81; n <= 100; n++) outbox.append(message(n));
    outbox.commit();
    assert.deepEqual(
      seqs(outbox),
      Array.from({ length: 50 }, (_, i) => i + 1),
    );
    assert.equal(outbox.stats.dropped, 50);
    outbox.close();
  });

  it('drop-newest: an append that does not fit is reported dropped, never stored', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxMessages: 5, policy: 'drop-newest' }), log);
    const fates = new Map<number, string>();
    for (let n = 1; n <= 8; n++) outbox.append(message(n), (droppedBecause?: string) => fates.set(n, droppedBecause ?? 'stored'));
    outbox.commit();
    assert.deepEqual(
      [...fates.keys()].sort((a, b) => a - b),
      [1, 2, 3, 4, 5, 6, 7, 8],
      'every append is told',
    );
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((n) => fates.get(n)),
      Array(5).fill('stored'),
    );
    for (const n of [6, 7, 8]) assert.match(fates.get(n)!, /full \(drop-newest\)/);
    assert.deepEqual(seqs(outbox), [1, 2, 3, 4, 5]);
    assert.equal(outbox.stats.dropped, 3);
    outbox.close();
  });

  it('drop-oldest: appends that the bound drops in their own commit (the reader holds the older ones) are reported dropped', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxMessages: 5, policy: 'drop-oldest' }), log);
    for (let n = 1; n <= 5; n++) outbox.append(message(n));
    outbox.commit();
    // The sender has taken all five to send: drop-oldest spares them while newer ones can go.
    assert.equal(outbox.take(5).length, 5);
    const fates = new Map<number, string>();
    for (let n = 6; n <= 8; n++) outbox.append(message(n), (droppedBecause?: string) => fates.set(n, droppedBecause ?? 'stored'));
    outbox.commit();
    assert.deepEqual(seqs(outbox), [1, 2, 3, 4, 5]);
    for (const n of [6, 7, 8]) assert.match(fates.get(n) ?? 'not told', /drop-oldest/, `message ${n} was dropped in its own commit`);
    assert.equal(outbox.stats.dropped, 3);
    outbox.close();
  });

  it('maxBytes drops exactly as many of the oldest as it takes to fit', (t) => {
    // Each message: topic "t" (1 byte) + {"seq":NNN} (11 bytes for 3 digits) = 12 bytes.
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxBytes: 120 }), log);
    for (let n = 100; n < 115; n++) outbox.append(message(n));
    outbox.commit();
    assert.deepEqual(
      seqs(outbox),
      Array.from({ length: 10 }, (_, i) => i + 105),
    );
    assert.equal(outbox.stats.bytes, 120);
    assert.equal(outbox.stats.dropped, 5);
    outbox.close();
  });

  it('one message larger than maxBytes is refused alone; the backlog stays (both policies)', (t) => {
    for (const policy of ['drop-oldest', 'drop-newest'] as const) {
      const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxBytes: 1000, policy }), log);
      for (let n = 100; n < 105; n++) outbox.append(message(n));
      outbox.append({ topic: 't', payload: Buffer.alloc(2000, 0x41), qos: 1, retain: false });
      outbox.append(message(105));
      outbox.commit();
      assert.deepEqual(seqs(outbox), [100, 101, 102, 103, 104, 105], policy);
      assert.equal(outbox.stats.dropped, 1, policy);
      outbox.close();
    }
  });

  it('a file that is not a database is moved aside, but a full disk is no reason to (it fails loudly instead)', (t) => {
    const dir = folder(t);
    // A directory where the file should be: SQLite cannot open it, and it is not damage.
    const file = join(dir, 'outbox.db');
    mkdirSync(file);
    assert.throws(() => Outbox.open(file, options(), log), /cannot open the outbox/);
    assert.deepEqual(readdirSync(dir), ['outbox.db']);
  });

  it('maxAge drops what is too old, counted', async (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxAge: 50 }), log);
    for (let n = 1; n <= 5; n++) outbox.append(message(n));
    outbox.commit();
    await new Promise((resolve) => setTimeout(resolve, 80));
    outbox.append(message(6));
    outbox.commit();
    outbox.expire(Date.now());
    assert.deepEqual(seqs(outbox), [6]);
    assert.equal(outbox.stats.dropped, 5);
    outbox.close();
  });

  it('an append that waited longer than maxAge before its commit (a full disk) is reported dropped, not stored', async (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxAge: 50, commitInterval: 10_000 }), log);
    let fate: string | undefined;
    outbox.append(message(1), (droppedBecause?: string) => (fate = droppedBecause ?? 'stored'));
    await new Promise((resolve) => setTimeout(resolve, 80));
    outbox.append(message(2));
    outbox.commit();
    assert.match(fate ?? 'not told', /older than maxAge/);
    assert.deepEqual(seqs(outbox), [2]);
    assert.equal(outbox.stats.dropped, 1);
    outbox.close();
  });

  it('a message removed after a bound already dropped it is not counted twice', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), options({ maxMessages: 5 }), log);
    for (let n = 1; n <= 5; n++) outbox.append(message(n));
    outbox.commit();
    const inFlight = outbox.peek(0, 2).map((row) => row.id);
    for (let n = 6; n <= 10; n++) outbox.append(message(n));
    outbox.commit(); // drops 1..5, including the two "in flight"
    outbox.settle({ acknowledged: inFlight }); // their PUBACKs arrive late
    assert.equal(outbox.stats.messages, 5);
    assert.equal(outbox.stats.delivered, 0);
    outbox.close();
  });

  it('rows changed after they were written are not returned for sending: set aside, counted, also pages of nothing else', (t) => {
    const file = join(folder(t), 'outbox.db');
    const outbox = Outbox.open(file, options(), log);
    for (let n = 1; n <= 20; n++) outbox.append(message(n));
    outbox.commit();
    outbox.close();
    const db = new Database(file);
    db.prepare('UPDATE messages SET payload = CAST(\'{"seq":99}\' AS BLOB) WHERE id <= 12').run();
    db.close();
    const reopened = Outbox.open(file, options(), log);
    assert.deepEqual(
      reopened.peek(0, 5).map((row) => row.id),
      [13, 14, 15],
      'past two pages of damaged rows',
    );
    assert.equal(reopened.stats.damaged, 12);
    assert.equal(reopened.stats.messages, 8);
    assert.deepEqual(seqs(reopened), [13, 14, 15, 16, 17, 18, 19, 20]);
    reopened.close();
    const check = new Database(file);
    assert.equal((check.prepare('SELECT count(*) AS count FROM dead_letters').get() as { count: number }).count, 12);
    check.close();
  });

  it('an outbox of the previous schema (no checksums) opens, and its rows are sent unchecked', (t) => {
    const file = join(folder(t), 'outbox.db');
    const db = new Database(file);
    db.exec(
      'CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created INTEGER NOT NULL, size INTEGER NOT NULL)',
    );
    db.exec(
      'CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created INTEGER NOT NULL, reason TEXT NOT NULL, moved INTEGER NOT NULL)',
    );
    db.pragma('user_version = 2');
    db.prepare('INSERT INTO messages (topic, payload, qos, retain, created, size) VALUES (?, ?, 1, 0, ?, ?)').run(
      't',
      Buffer.from('{"seq":1}'),
      Date.now(),
      10,
    );
    db.close();
    const outbox = Outbox.open(file, options(), log);
    outbox.append(message(2));
    outbox.commit();
    assert.deepEqual(seqs(outbox), [1, 2]);
    assert.equal(outbox.stats.damaged, 0);
    outbox.close();
  });

  it("a format's record keeps its kind on disk and across a reopen; a finished message has none", (t) => {
    const file = join(folder(t), 'outbox.db');
    const outbox = Outbox.open(file, options(), log);
    outbox.append(message(1));
    outbox.append({ ...message(2), kind: 7 });
    outbox.commit();
    assert.deepEqual(
      outbox.peek(0, 10).map((row) => row.kind),
      [undefined, 7],
    );
    outbox.close();
    const reopened = Outbox.open(file, options(), log);
    assert.deepEqual(
      reopened.take(10).map((row) => [row.kind, (JSON.parse(row.payload.toString()) as { seq: number }).seq]),
      [
        [undefined, 1],
        [7, 2],
      ],
    );
    assert.equal(reopened.stats.damaged, 0);
    reopened.close();
    // The kind is under the checksum: a record whose kind changed on the disk is not sent.
    const db = new Database(file);
    db.prepare('UPDATE messages SET kind = 8 WHERE kind = 7').run();
    db.close();
    const changed = Outbox.open(file, options(), log);
    assert.deepEqual(seqs(changed), [1]);
    assert.equal(changed.stats.damaged, 1);
    changed.close();
  });

  it('an outbox of schema 3 (checksums, no kind) opens: its rows are finished messages, their checksums unchanged', (t) => {
    const dir = folder(t);
    // A row as this version writes a finished message...
    const current = Outbox.open(join(dir, 'current.db'), options(), log);
    current.append(message(1));
    current.commit();
    current.close();
    const written = new Database(join(dir, 'current.db'));
    const row = written.prepare('SELECT topic, payload, qos, retain, created, size, crc FROM messages').get() as Record<string, unknown>;
    written.close();
    // ...is what schema 3 wrote: same checksum.
    const file = join(dir, 'outbox.db');
    const db = new Database(file);
    db.exec(
      'CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created INTEGER NOT NULL, size INTEGER NOT NULL, crc INTEGER)',
    );
    db.exec(
      'CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, created INTEGER NOT NULL, reason TEXT NOT NULL, moved INTEGER NOT NULL)',
    );
    db.pragma('user_version = 3');
    db.prepare(
      'INSERT INTO messages (topic, payload, qos, retain, created, size, crc) VALUES (@topic, @payload, @qos, @retain, @created, @size, @crc)',
    ).run(row);
    db.close();
    const outbox = Outbox.open(file, options(), log);
    outbox.append(message(2));
    outbox.commit();
    assert.deepEqual(
      outbox.take(10).map((stored) => [stored.kind, (JSON.parse(stored.payload.toString()) as { seq: number }).seq]),
      [
        [undefined, 1],
        [undefined, 2],
      ],
    );
    assert.equal(outbox.stats.damaged, 0);
    outbox.close();
  });

  it('a corrupt file is moved aside loudly and a fresh outbox starts', (t) => {
    const dir = folder(t);
    const file = join(dir, 'outbox.db');
    writeFileSync(file, Buffer.alloc(8192, 0x5a));
    const lines: string[] = [];
    const capture = pino({ level: 'error' }, { write: (line: string) => lines.push(line) });
    const outbox = Outbox.open(file, options(), capture);
    outbox.append(message(1));
    outbox.commit();
    assert.deepEqual(seqs(outbox), [1]);
    outbox.close();
    const aside = readdirSync(dir).filter((name) => name.startsWith('outbox.db.corrupt-'));
    assert.equal(aside.length, 1);
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /the outbox file is damaged: moved aside/);
    assert.ok(lines[0]!.includes(aside[0]!));
  });

  it('a full disk keeps messages in memory, says so, and commits them once space is back', async (t) => {
    const mountPoint = mkdtempSync(join(tmpdir(), 'plc2mqtt-small-disk-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mountPoint], { stdio: 'ignore' });
    } catch {
      rmSync(mountPoint, { recursive: true, force: true });
      t.skip('needs permission to mount a 1 MB tmpfs (run as root)');
      return;
    }
    t.after(() => {
      execFileSync('umount', ['-l', mountPoint], { stdio: 'ignore' });
      rmSync(mountPoint, { recursive: true, force: true });
    });
    const outbox = Outbox.open(join(mountPoint, 'outbox.db'), options({ commitInterval: 10 }), log);
    // Fill the disk: a ballast file takes all but a few pages.
    const ballast = join(mountPoint, 'ballast');
    writeFileSync(ballast, Buffer.alloc(1024 * 1024 - 96 * 1024));
    let appended = 0;
    const payload = Buffer.alloc(400, 0x41);
    for (let round = 0; round < 400 && !outbox.stats.diskFull; round++) {
      for (let i = 0; i < 50; i++) outbox.append({ topic: 't', payload, qos: 1, retain: false });
      appended += 50;
      outbox.commit();
    }
    assert.ok(outbox.stats.diskFull, 'the disk filled up');
    assert.ok(outbox.stats.pending > 0, 'the messages that did not fit wait in memory');
    // Acknowledgements while the disk is full: deleting needs WAL space too; it must not throw.
    const acknowledged = outbox.peek(0, 20).map((row) => row.id);
    assert.doesNotThrow(() => outbox.settle({ acknowledged }));
    outbox.expire(Date.now());
    unlinkSync(ballast);
    await waitFor(() => !outbox.stats.diskFull && outbox.stats.pending === 0, 10_000, 'the retry after space came back');
    outbox.settle({}); // the removals that failed are retried with the next ones
    assert.equal(outbox.stats.messages, appended - acknowledged.length);
    assert.equal(outbox.stats.delivered, acknowledged.length);
    assert.equal(outbox.stats.dropped, 0);
    outbox.close();
    assert.ok(existsSync(join(mountPoint, 'outbox.db')));
  });
});
