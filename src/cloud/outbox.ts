// The store-and-forward outbox: every message bound for the cloud is appended here (SQLite, WAL)
// before it can be sent, and deleted only once the cloud acknowledged it. Bounded by count, bytes
// and age; what a bound drops is counted and logged, never silent. It is the sender's buffer
// (buffer.ts): the reader's cursors, its read-ahead and which rows a bound spares live here.
import { existsSync, renameSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { errorMessage } from '../util/errors.js';
import { Fifo } from '../util/fifo.js';
import { openSqliteFile } from '../util/sqlite-file.js';
import type { BufferReader, Lane, MessageBuffer, OutboxMessage, Settled, Settlement, StoredMessage } from './buffer.js';
import { DiskSpace, isDiskFull, JOURNAL_SIZE_LIMIT, RESERVE_BYTES } from './disk-space.js';
import { checksum } from './row-checksum.js';
import { stageTimes } from './stage-times.js';

export type { OutboxMessage, Settled, StoredMessage } from './buffer.js';

export type OutboxOptions = NonNullable<Config['uplink']>['outbox'];

export interface OutboxStats {
  messages: number;
  bytes: number;
  appended: number;
  /** Dropped by a bound (count, bytes or age) or because the disk was full for too long. */
  dropped: number;
  /** Deleted after the cloud acknowledged them. */
  delivered: number;
  /** The cloud refused them (e.g. MQTT 5 "not authorized"); deleted so they don't block the queue. */
  rejected: number;
  /** Read back from disk not as they were written (checksum mismatch): set aside, not sent. */
  damaged: number;
  /** Appended but not yet committed (waiting for the next transaction, or for disk space). */
  pending: number;
  diskFull: boolean;
}

/**
 * Why a stored message is deleted: the cloud acknowledged it, the cloud refused it for good, or
 * it was older than maxAge when the sender was about to send it (counted as dropped).
 */
type Removal = 'delivered' | 'rejected' | 'expired';

/** A row of `messages` as SQLite returns it: from a damaged file, a column may hold anything. */
interface RawRow {
  id: number;
  topic: string;
  payload: Buffer;
  qos: number;
  retain: number;
  size: number;
  created: number;
  crc: number | null;
  kind: number;
}

/** Schema migrations, numbered by PRAGMA user_version. Append, never edit. */
const MIGRATIONS = [
  `CREATE TABLE messages (
     id      INTEGER PRIMARY KEY AUTOINCREMENT,
     topic   TEXT    NOT NULL,
     payload BLOB    NOT NULL,
     qos     INTEGER NOT NULL,
     retain  INTEGER NOT NULL,
     created INTEGER NOT NULL,
     size    INTEGER NOT NULL
   )`,
  `CREATE TABLE dead_letters (
     id      INTEGER PRIMARY KEY,
     topic   TEXT    NOT NULL,
     payload BLOB    NOT NULL,
     qos     INTEGER NOT NULL,
     retain  INTEGER NOT NULL,
     created INTEGER NOT NULL,
     reason  TEXT    NOT NULL,
     moved   INTEGER NOT NULL
   )`,
  // CRC-32 of what the row says about its message (see checksum), checked when it is read back.
  // NULL in rows written before.
  `ALTER TABLE messages ADD COLUMN crc INTEGER`,
  // What a row holds: 0 a finished MQTT message (all rows before), another kind a northbound
  // format's record that the format encodes at send time (see RecordKind in northbound/format.ts).
  `ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE dead_letters ADD COLUMN kind INTEGER NOT NULL DEFAULT 0`,
];

/** SQLite errors that mean the file itself is damaged (as opposed to a full disk or a permission). */
const CORRUPTION = /SQLITE_CORRUPT|SQLITE_NOTADB|quick_check/;

/** Appends waiting in memory beyond this while the disk is full are dropped by the policy. */
const MAX_PENDING_WHILE_FULL = 100_000;

/** Most messages per transaction. */
const CHUNK = 1000;

/** SQLite's bytes per row beyond topic + payload (record header, row id, cell pointer), estimated high. */
const ROW_OVERHEAD = 40;

/** How often messages older than maxAge are dropped (the sender also checks each one it sends). */
const EXPIRE_INTERVAL_MS = 10_000;

/** "No upper bound" for id ranges. */
const NO_END = Number.MAX_SAFE_INTEGER;

/**
 * Committed rows kept in memory for the reader beyond its read-ahead: a poll's burst (10,000 tags
 * of one device) is committed faster than the window sends it, and reading it back from SQLite
 * (SELECT and checksum) was a sixth of the gateway's CPU at 20,000 msg/s. About 250 bytes a row
 * plus its topic and payload, bounded in bytes too; a cloud slower than the plant still leaves its
 * backlog in SQLite beyond this.
 */
const ADOPT_MAX_ROWS = 20_000;
/** …and at most this many bytes of topics and payloads (big messages: fewer rows). */
const ADOPT_MAX_BYTES = 8 * 1024 * 1024;

/** Rows per INSERT statement, largest first (a batch of 100 is 64 + 16 + 16 + 4). */
const INSERT_ROWS = [64, 16, 4, 1] as const;
const INSERT_COLUMNS = 8;

interface Pending {
  message: OutboxMessage;
  created: number;
  onSettled: Settled | undefined;
}

/** What one transaction did with its appends. */
interface WriteResult {
  written: Pending[];
  /** Appends that were not kept, each with the reason (never acknowledged). */
  refused: Array<{ item: Pending; why: string }>;
  /** Messages stored before this transaction that drop-oldest dropped to make room. */
  droppedStored: number;
}

/** Where the reader is in one lane: rows with ids up to `cursor` were read, `ahead` holds those not taken yet. */
interface LaneState {
  /** The last id read into `ahead` (or adopted there). */
  cursor: number;
  ahead: Fifo<StoredMessage>;
  /** The last id handed to the reader: the rows after it, `ahead` included, are not being sent. */
  taken: number;
  /** Topic and payload bytes of the rows in `ahead`. */
  aheadBytes: number;
}

export class Outbox implements MessageBuffer {
  readonly file: string;
  private readonly options: OutboxOptions;
  private readonly log: Logger;
  private readonly db: Database.Database;
  private readonly statements: ReturnType<typeof prepare>;
  private pending: Pending[] = [];
  private timer: NodeJS.Timeout | undefined;
  private count: number;
  private bytes: number;
  private lastCommittedId: number;
  private committedRows: StoredMessage[] = [];
  private readonly totals = { appended: 0, dropped: 0, delivered: 0, rejected: 0, damaged: 0 };
  private droppingSince: number | undefined;
  private unremoved: Array<{ id: number; outcome: Removal }> = [];
  /** Drop-oldest's drops in the transaction being written: read-ahead rows up to these ids go once it commits. */
  private forgetAfterCommit: number[] = [];
  private droppedInEpisode = 0;
  private diskFull = false;
  private diskFullSince = 0;
  private writtenWhileFull = 0;
  /** Messages per transaction; smaller after a transaction did not fit, until the disk is fine. */
  private chunk = CHUNK;
  private readonly disk: DiskSpace;
  /** close() is writing for the last time. */
  private closing = false;
  private closed = false;
  private readonly expireTimer: NodeJS.Timeout;
  // The reader (the sender of the cloud connection); see MessageBuffer.
  private reader: BufferReader | undefined;
  /** The reader took rows since the last rewind: only then are rows being sent (and committed rows adopted). */
  private reading = false;
  private readonly lanes: Record<Lane, LaneState> = {
    backlog: { cursor: 0, ahead: new Fifo(), taken: 0, aheadBytes: 0 },
    live: { cursor: NO_END, ahead: new Fifo(), taken: NO_END, aheadBytes: 0 },
  };
  /** With splitLive: ids from here on are the live lane (stored after the last rewind). */
  private liveStart = NO_END;
  /** Prepared INSERTs by rows per statement, and their reused parameter arrays. */
  private readonly inserts = new Map<number, Database.Statement>();
  private readonly insertValues: Record<number, unknown[]> = {};

  private constructor(file: string, db: Database.Database, options: OutboxOptions, log: Logger) {
    this.file = file;
    this.db = db;
    this.options = options;
    this.log = log;
    this.statements = prepare(db);
    this.disk = new DiskSpace(file, db, log);
    const totals = this.statements.totals.get() as { count: number; bytes: number | null };
    this.count = totals.count;
    this.bytes = totals.bytes ?? 0;
    this.lastCommittedId = (this.statements.maxId.get() as { id: number | null }).id ?? 0;
    this.expireTimer = setInterval(() => this.expire(Date.now()), EXPIRE_INTERVAL_MS);
    this.expireTimer.unref();
  }

  /**
   * Opens (or creates) the outbox. A file that is not a healthy SQLite database is moved aside
   * with a loud error and a fresh outbox starts: a corrupt file must never become a crash loop.
   */
  static open(file: string, options: OutboxOptions, log: Logger): Outbox {
    let db: Database.Database | undefined;
    try {
      db = openDatabase(file, options);
    } catch (error) {
      db?.close();
      // A full disk or a permission problem is not damage: moving a healthy file aside would
      // orphan its messages. Fail loudly instead; the supervisor retries.
      const code = String((error as { code?: unknown }).code ?? '');
      if (!CORRUPTION.test(code) && !CORRUPTION.test(errorMessage(error))) {
        throw new Error(`cannot open the outbox ${file}: ${errorMessage(error)}`, { cause: error });
      }
      const aside = `${file}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
      for (const suffix of ['', '-wal', '-shm']) {
        if (existsSync(file + suffix)) renameSync(file + suffix, aside + suffix);
      }
      log.error(
        { file, movedTo: aside, error: errorMessage(error) },
        'the outbox file is damaged: moved aside, starting a fresh outbox (the messages in it are not sent; inspect the moved file with sqlite3)',
      );
      db = openDatabase(file, options);
    }
    const outbox = new Outbox(file, db, options, log);
    outbox.disk.openReserveFile();
    if (outbox.count > 0)
      log.info({ messages: outbox.count, bytes: outbox.bytes }, 'outbox holds messages from before the restart; they will be sent first');
    outbox.expire(Date.now());
    return outbox;
  }

  /**
   * Appends a message. It is committed with the others of this interval in one transaction;
   * `onSettled` runs once it is on disk (to acknowledge a QoS 1 publisher only then), or with the
   * reason when it was dropped instead (the publisher must be refused, never acknowledged).
   */
  append(message: OutboxMessage, onSettled?: Settled): void {
    if (this.closed) throw new Error('the outbox is closed');
    this.pending.push({ message, created: Date.now(), onSettled });
    this.totals.appended++;
    if (this.diskFull && this.pending.length > MAX_PENDING_WHILE_FULL) {
      // Disk full for a long while: memory is the next thing to run out. The policy decides who
      // goes; either way it is a message that is not on disk, so its publisher is still waiting
      // and is refused.
      const victim = this.options.policy === 'drop-newest' ? this.pending.pop()! : this.pending.shift()!;
      const why = `the disk is full and the in-memory buffer is at its limit (${MAX_PENDING_WHILE_FULL} messages, ${this.options.policy})`;
      victim.onSettled?.(why);
      this.noteDropped(1, why);
    }
    this.timer ??= setTimeout(() => this.commit(), this.options.commitInterval);
  }

  /**
   * Writes the pending appends, applying the bounds, in transactions of at most CHUNK messages:
   * a backlog that waited in memory for disk space needs only room for one piece at a time.
   * Each piece must fit into the free space with room for a checkpoint of the WAL and
   * RESERVE_BYTES to spare (DiskSpace.fit); when none does, the disk is full as far as the
   * outbox is concerned. While the disk is full, the WAL is checkpointed and truncated after each
   * piece, so the space it took goes back at once.
   */
  commit(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.closed || (this.pending.length === 0 && !this.diskFull)) return;
    if (this.diskFull) {
      // Space the WAL holds (also the frames of a transaction that failed) goes back first, then
      // the deletions that failed meanwhile, which make room inside the database file.
      this.disk.truncateWal();
      if (this.unremoved.length > 0) this.remove([]);
    }
    const batch = this.pending;
    this.pending = [];
    let written = 0;
    try {
      while (written < batch.length) {
        const max = Math.min(this.chunk, batch.length - written);
        const fit = this.disk.fit(max, (count) => this.walBytes(batch, written, count), { closing: this.closing, diskFull: this.diskFull });
        let size = fit.count;
        // The last write before a shutdown tries down to a single message: what stays in memory is lost.
        if (size === 0 && this.closing) size = 1;
        if (size === 0) {
          if (!this.diskFull)
            this.log.error(
              { pending: batch.length - written, reserveBytes: RESERVE_BYTES },
              'outbox: the disk is full (writing more would take the space kept for checkpoints and deletions); keeping new messages in memory (their publishers are not acknowledged yet) and writing them in pieces as soon as space comes back',
            );
          this.noteDiskFull();
          break;
        }
        const result = this.writeTransaction(batch.slice(written, written + size), batch.length - written);
        if (result === 'disk full') {
          if (this.closing && size > 1) continue; // with a smaller piece (writeTransaction halved it)
          break;
        }
        written += size;
        if (this.diskFull) this.writtenWhileFull += size;
        if (this.diskFull || fit.truncate) this.disk.truncateWal();
        this.afterCommit(result);
      }
    } finally {
      // Appends cannot arrive while this runs (it is synchronous): what is left goes back in order.
      if (written < batch.length) this.pending = written === 0 ? batch : batch.slice(written);
    }
    if (this.pending.length > 0 || this.unremoved.length > 0) {
      if (this.diskFull) this.timer ??= setTimeout(() => this.commit(), 1000);
      return;
    }
    if (this.diskFull) {
      this.log.info(
        { committed: this.writtenWhileFull, seconds: Math.round((Date.now() - this.diskFullSince) / 1000) },
        'outbox: disk space is back, buffered messages committed',
      );
      this.diskFull = false;
      this.chunk = CHUNK;
      this.writtenWhileFull = 0;
    }
  }

  /** One transaction; 'disk full' when it did not fit (nothing of it happened then). */
  private writeTransaction(chunk: readonly Pending[], waiting: number): WriteResult | 'disk full' {
    // The counters follow only a commit that happened.
    const before = { count: this.count, bytes: this.bytes, lastId: this.lastCommittedId };
    try {
      return this.db.transaction(() => this.writeBatch(chunk))();
    } catch (error) {
      this.count = before.count;
      this.bytes = before.bytes;
      this.lastCommittedId = before.lastId;
      this.committedRows = [];
      this.forgetAfterCommit = [];
      if (!isDiskFull(error)) throw error;
      if (!this.diskFull)
        this.log.error(
          { pending: waiting, error: errorMessage(error) },
          'outbox: the disk is full; keeping new messages in memory (their publishers are not acknowledged yet) and writing them in pieces as soon as space comes back',
        );
      this.noteDiskFull();
      // The estimate of DiskSpace.fit was too hopeful: smaller pieces from now on.
      this.chunk = Math.max(1, Math.floor(chunk.length / 2));
      this.disk.truncateWal();
      return 'disk full';
    }
  }

  /** From now on writes fit themselves to the free space, and commit() retries every second. */
  private noteDiskFull(): void {
    if (!this.diskFull) {
      this.diskFull = true;
      this.diskFullSince = Date.now();
    }
    this.timer ??= setTimeout(() => this.commit(), 1000);
  }

  /** WAL bytes a transaction of batch[from…from+count) adds, estimated high. */
  private walBytes(batch: readonly Pending[], from: number, count: number): number {
    let size = 0;
    for (let index = from; index < from + count; index++) size += sizeOf(batch[index]!.message);
    let bytes = 2 * this.disk.pageSize + size + count * ROW_OVERHEAD;
    // At a bound, drop-oldest deletes in the same transaction about as much as it writes.
    if (
      this.options.policy === 'drop-oldest' &&
      (this.count + count > this.options.maxMessages || this.bytes + size > this.options.maxBytes)
    )
      bytes *= 2;
    return Math.ceil(bytes * 1.25);
  }

  /** After a transaction committed: publishers are told, drops counted, the reader told of the new rows. */
  private afterCommit(result: WriteResult): void {
    for (const through of this.forgetAfterCommit) this.forgetAhead(through);
    this.forgetAfterCommit = [];
    const dropped = result.refused.length + result.droppedStored;
    if (dropped > 0) this.noteDropped(dropped, result.refused[0]?.why ?? `the outbox is full (${this.options.policy})`);
    const now = Date.now();
    for (const item of result.written) {
      stageTimes.committed.add(now - item.created);
      item.onSettled?.();
    }
    for (const { item, why } of result.refused) item.onSettled?.(why);
    // Not when a bound dropped rows in this commit: some of the rows just written may be gone.
    if (dropped === 0) this.adopt(this.committedRows);
    this.committedRows = [];
    this.reader?.onStored();
  }

  /**
   * Rows just committed go straight into the reader's read-ahead when its cursor is exactly where
   * they start, instead of being read back from SQLite (that SELECT was a third of the uplink's
   * CPU at 20k msg/s). Anything else is left for take() to read.
   */
  private adopt(committed: readonly StoredMessage[]): void {
    const first = committed[0];
    if (first === undefined || this.reader === undefined || !this.reading) return;
    const lane = this.lanes[this.reader.splitLive ? 'live' : 'backlog'];
    if (lane.cursor !== first.id - 1) return;
    // Bounded like a read: a cloud slower than the plant must leave the backlog in SQLite, not in
    // memory, where the bound could not spare it for rows that are really being sent.
    if (lane.ahead.length + committed.length > Math.max(this.reader.readAhead, ADOPT_MAX_ROWS)) return;
    let bytes = 0;
    for (const row of committed) bytes += row.size;
    if (lane.aheadBytes + bytes > ADOPT_MAX_BYTES) return;
    for (const row of committed) pushAhead(lane, row);
    lane.cursor = committed.at(-1)!.id;
  }

  /**
   * Inserts a batch inside the caller's transaction and applies the bounds. Says which appends
   * are stored and which were dropped before anyone was told they were stored.
   */
  private writeBatch(batch: readonly Pending[]): WriteResult {
    const { maxMessages, maxBytes, policy } = this.options;
    const refused: WriteResult['refused'] = [];
    // A message bigger than the whole outbox can never fit; dropping the backlog for it would be worse.
    let accepted: Pending[] = [];
    // One that waited in memory longer than maxAge (a full disk) would be deleted as soon as it is stored.
    const tooOld = this.options.maxAge > 0 ? Date.now() - this.options.maxAge : Number.NEGATIVE_INFINITY;
    for (const item of batch) {
      if (sizeOf(item.message) > maxBytes) refused.push({ item, why: `the message is larger than maxBytes (${maxBytes} bytes)` });
      else if (item.created < tooOld)
        refused.push({ item, why: `older than maxAge (${this.options.maxAge} ms) before it could be written` });
      else accepted.push(item);
    }
    if (policy === 'drop-newest') {
      // Keep what is stored; take new messages only while they fit.
      let count = this.count;
      let bytes = this.bytes;
      const fits: Pending[] = [];
      for (const item of accepted) {
        const size = sizeOf(item.message);
        if (count + 1 > maxMessages || bytes + size > maxBytes) {
          refused.push({ item, why: 'the outbox is full (drop-newest)' });
          continue;
        }
        fits.push(item);
        count++;
        bytes += size;
      }
      accepted = fits;
    }
    const ids = this.insertRows(accepted);
    if (policy === 'drop-newest' || ids.length === 0) return { written: accepted, refused, droppedStored: 0 };
    // drop-oldest: room is made by dropping the oldest stored messages. Those being sent are
    // spared as long as others can go, so this very batch may be what goes (a bound smaller than
    // what is in flight plus this batch): those were never acknowledged and are refused.
    const droppedOfBatch = new Set<number>();
    const dropped = this.dropOldestOverBounds(maxMessages, maxBytes, ids[0]!, droppedOfBatch);
    if (droppedOfBatch.size === 0) return { written: accepted, refused, droppedStored: dropped };
    const written: Pending[] = [];
    accepted.forEach((item, index) => {
      if (droppedOfBatch.has(ids[index]!))
        refused.push({ item, why: 'the outbox is full (drop-oldest) and the older messages are being sent' });
      else written.push(item);
    });
    return { written, refused, droppedStored: dropped - droppedOfBatch.size };
  }

  /**
   * Inserts the rows, up to INSERT_ROWS in one statement (one statement per row cost 1.5 µs more
   * per row, a tenth of the gateway's work per message). AUTOINCREMENT numbers the rows of one
   * statement consecutively, so the last row's id gives all of them. Returns their ids in order.
   */
  private insertRows(items: readonly Pending[]): number[] {
    const ids: number[] = [];
    // The rows as the reader gets them (when it reads), numbered once the statement ran.
    const made: StoredMessage[] = [];
    for (let start = 0; start < items.length; ) {
      const rows = INSERT_ROWS.find((size) => size <= items.length - start)!;
      const values = (this.insertValues[rows] ??= new Array(rows * INSERT_COLUMNS));
      made.length = 0;
      for (let row = 0; row < rows; row++) {
        const item = items[start + row]!;
        const { topic, payload, qos, retain } = item.message;
        const kind = item.message.kind ?? 0;
        const size = sizeOf(item.message);
        const at = row * INSERT_COLUMNS;
        values[at] = topic;
        values[at + 1] = payload;
        values[at + 2] = qos;
        values[at + 3] = retain ? 1 : 0;
        values[at + 4] = item.created;
        values[at + 5] = size;
        values[at + 6] = checksum(topic, payload, qos, retain, item.created, size, kind);
        values[at + 7] = kind;
        if (this.reading) made.push(stored(0, topic, payload, qos, retain, size, item.created, kind));
        this.count++;
        this.bytes += size;
      }
      let last: number;
      try {
        last = Number(this.insertStatement(rows).run(values).lastInsertRowid);
      } finally {
        // The payloads are not kept beyond the statement (also when it failed: a full disk).
        values.fill(undefined);
      }
      for (let row = 0; row < rows; row++) ids.push(last - rows + 1 + row);
      for (const [row, message] of made.entries()) {
        message.id = last - rows + 1 + row;
        this.committedRows.push(message);
      }
      this.lastCommittedId = last;
      start += rows;
    }
    return ids;
  }

  private insertStatement(rows: number): Database.Statement {
    let statement = this.inserts.get(rows);
    if (!statement) {
      const placeholders = Array.from({ length: rows }, () => '(?, ?, ?, ?, ?, ?, ?, ?)').join(', ');
      statement = this.db.prepare(`INSERT INTO messages (topic, payload, qos, retain, created, size, crc, kind) VALUES ${placeholders}`);
      this.inserts.set(rows, statement);
    }
    return statement;
  }

  /**
   * Drops exactly as many of the oldest messages as it takes to get back within both bounds.
   * Ids from `watchFrom` on that it drops are added to `watched` (the batch being written).
   */
  private dropOldestOverBounds(maxMessages: number, maxBytes: number, watchFrom: number, watched: Set<number>): number {
    let dropped = 0;
    // The oldest messages nobody is sending go first: dropping one being sent would count as lost
    // what the cloud then receives. Only when that is not enough (a bound smaller than the send
    // window) do those go too, oldest first; the ones not handed out yet are then never sent.
    // Each range's drops are its oldest rows: those of them in a read-ahead are at its front, and
    // are forgotten there once the transaction committed (the oldest of a lane's read-ahead are
    // never in a later range; a transaction that rolls back dropped nothing).
    const ranges = [...this.notBeingSent(), [0, NO_END] as const];
    for (const [after, before] of ranges) {
      if (this.count <= maxMessages) break;
      const rows = this.statements.dropOldest.all(after, before, this.count - maxMessages) as Array<{ id: number; size: number }>;
      let through = 0;
      for (const row of rows) {
        this.bytes -= row.size;
        if (row.id >= watchFrom) watched.add(row.id);
        through = Math.max(through, row.id);
      }
      this.count -= rows.length;
      dropped += rows.length;
      if (through > 0) this.forgetAfterCommit.push(through);
    }
    for (const [after, before] of ranges) {
      if (this.bytes <= maxBytes) break;
      const bytes = this.dropBytesAfter(after, before, maxBytes, watchFrom, watched);
      dropped += bytes.dropped;
      if (bytes.through > 0) this.forgetAfterCommit.push(bytes.through);
    }
    return dropped;
  }

  /**
   * Id ranges (after, before) of the messages not being sent, oldest first: with the reader
   * reading, those past what it took (its read-ahead included: committed rows kept there for it
   * are not being sent yet); otherwise all of them.
   */
  private notBeingSent(): Array<readonly [number, number]> {
    if (!this.reading) return [[0, NO_END]];
    const { backlog, live } = this.lanes;
    return this.liveStart === NO_END
      ? [[backlog.taken, NO_END]]
      : [
          [backlog.taken, this.liveStart],
          [live.taken, NO_END],
        ];
  }

  /** Read-ahead rows with ids up to `through` were dropped (oldest first, so all of them): they are not sent. */
  private forgetAhead(through: number): void {
    for (const lane of Object.values(this.lanes)) {
      while ((lane.ahead.peek()?.id ?? NO_END) <= through) shiftAhead(lane);
    }
  }

  /** Drops the oldest messages with after < id < before until the bytes fit (or none are left there). */
  private dropBytesAfter(
    after: number,
    before: number,
    maxBytes: number,
    watchFrom: number,
    watched: Set<number>,
  ): { dropped: number; through: number } {
    let dropped = 0;
    let through = 0;
    while (this.bytes > maxBytes) {
      const rows = this.statements.oldestSizes.all(after, before, 1000) as Array<{ id: number; size: number }>;
      if (rows.length === 0) break;
      let freed = 0;
      let taken = 0;
      for (const row of rows) {
        freed += row.size;
        through = row.id;
        taken++;
        if (row.id >= watchFrom) watched.add(row.id);
        if (this.bytes - freed <= maxBytes) break;
      }
      this.statements.dropRange.run(after, through);
      this.bytes -= freed;
      this.count -= taken;
      dropped += taken;
    }
    return { dropped, through };
  }

  /** Drops messages older than maxAge; runs every EXPIRE_INTERVAL_MS. */
  expire(now: number): void {
    if (this.options.maxAge <= 0 || this.closed) return;
    // CHUNK rows per transaction, like any deletion (RESERVE_BYTES is room for one).
    let dropped = 0;
    for (;;) {
      let rows: Array<{ size: number }>;
      try {
        rows = this.disk.onFullDisk(() => this.statements.expire.all(now - this.options.maxAge, CHUNK) as Array<{ size: number }>);
      } catch (error) {
        // Even a DELETE needs WAL space; on a full disk it waits for the next round.
        this.log.warn({ error: errorMessage(error) }, 'outbox: could not drop expired messages');
        break;
      }
      for (const row of rows) {
        this.count--;
        this.bytes -= row.size;
      }
      dropped += rows.length;
      if (rows.length > 0) this.disk.keepReserve(this.diskFull);
      if (rows.length < CHUNK) break;
    }
    if (dropped > 0) this.noteDropped(dropped, `older than maxAge (${this.options.maxAge} ms)`);
  }

  private noteDropped(count: number, why: string): void {
    this.totals.dropped += count;
    this.droppedInEpisode += count;
    // Once per episode, not once per message: an outbox at its bound drops on every commit.
    if (this.droppingSince === undefined) {
      this.droppingSince = Date.now();
      this.log.warn(
        { dropped: count, why, maxMessages: this.options.maxMessages, maxBytes: this.options.maxBytes, policy: this.options.policy },
        `outbox: dropping messages: ${why}`,
      );
    }
  }

  private endDropEpisode(): void {
    if (this.droppingSince === undefined) return;
    this.log.warn(
      { dropped: this.droppedInEpisode, seconds: Math.round((Date.now() - this.droppingSince) / 1000), totalDropped: this.totals.dropped },
      'outbox: no longer dropping',
    );
    this.droppingSince = undefined;
    this.droppedInEpisode = 0;
  }

  // ------------------------------------------------------------------ the reader (MessageBuffer)

  attach(reader: BufferReader): () => void {
    this.reader = reader;
    this.rewind();
    return () => {
      // A reader that was replaced (a reload) no longer owns the cursors.
      if (this.reader !== reader) return;
      this.reader = undefined;
      this.rewind();
    };
  }

  rewind(): void {
    this.reading = false;
    this.lanes.backlog = { cursor: 0, ahead: new Fifo(), taken: 0, aheadBytes: 0 };
    // Everything committed so far is backlog; what comes later (also appends still pending) is live.
    this.liveStart = this.reader?.splitLive ? this.lastCommittedId + 1 : NO_END;
    this.lanes.live = { cursor: this.liveStart - 1, ahead: new Fifo(), taken: this.liveStart - 1, aheadBytes: 0 };
  }

  take(n: number, lane: Lane = 'backlog'): StoredMessage[] {
    const taken: StoredMessage[] = [];
    if (this.closed) return taken;
    this.reading = true;
    const state = this.lanes[lane];
    while (taken.length < n) {
      if (state.ahead.length === 0 && !this.readAhead(lane, n)) break;
      const row = shiftAhead(state);
      state.taken = row.id;
      taken.push(row);
    }
    return taken;
  }

  /** Refills a lane's read-ahead from SQLite with one SELECT; false when the lane has nothing more. */
  private readAhead(lane: Lane, n: number): boolean {
    const state = this.lanes[lane];
    const before = lane === 'backlog' ? this.liveStart : NO_END;
    // Caught up: nothing was committed past the cursor, so there is nothing to SELECT. (A sender
    // that is caught up asks after every PUBACK; an empty SELECT each time was measurable.)
    const last = Math.min(this.lastCommittedId, before - 1);
    if (state.cursor >= last) return false;
    const rows = this.peek(state.cursor, Math.max(n, this.reader?.readAhead ?? 0), before);
    for (const row of rows) pushAhead(state, row);
    // None left up to `last`: ids only grow, so the cursor may pass the gap (no SELECT next time).
    state.cursor = rows.at(-1)?.id ?? last;
    return rows.length > 0;
  }

  settle(outcome: Settlement): void {
    const entries: Array<{ id: number; outcome: Removal }> = [];
    for (const id of outcome.acknowledged ?? []) entries.push({ id, outcome: 'delivered' });
    for (const id of outcome.rejected ?? []) entries.push({ id, outcome: 'rejected' });
    for (const id of outcome.expired ?? []) entries.push({ id, outcome: 'expired' });
    this.remove(entries);
  }

  get length(): number {
    return this.count;
  }

  /**
   * Committed messages with id > afterId (and < beforeId), oldest first. For inspection (tests,
   * tools): it does not move the reader.
   */
  peek(afterId: number, limit: number, beforeId = Number.MAX_SAFE_INTEGER): StoredMessage[] {
    const messages: StoredMessage[] = [];
    for (let after = afterId; ; ) {
      const rows = this.statements.peek.all(after, beforeId, limit) as RawRow[];
      let damaged: RawRow[] | undefined;
      for (const row of rows) {
        if (intact(row))
          messages.push(stored(row.id, row.topic, row.payload, row.qos === 1 ? 1 : 0, row.retain === 1, row.size, row.created, row.kind));
        else (damaged ??= []).push(row);
      }
      if (damaged) this.setAsideDamaged(damaged);
      // A page of nothing but damaged rows is not the end of the outbox.
      if (messages.length > 0 || rows.length < limit) return messages;
      after = rows.at(-1)!.id;
    }
  }

  /**
   * Rows that are not what the gateway wrote (their checksum does not match: bytes changed on the
   * disk, which quick_check does not look at) are not sent: a changed value or topic would look
   * valid to the cloud. They go to the dead-letter table for inspection, logged and counted.
   */
  private setAsideDamaged(rows: readonly RawRow[]): void {
    const reason = 'damaged: the row does not match the checksum written with it';
    let moved = 0;
    try {
      this.db.transaction(() => {
        for (const row of rows) {
          try {
            this.statements.deadLetter.get(reason, Date.now(), row.id);
          } catch {
            // A column too damaged for the dead-letter table (NULL, wrong type): deleted all the same.
          }
          if (this.statements.remove.get(row.id) === undefined) continue;
          moved++;
          this.count--;
          this.bytes -= typeof row.size === 'number' && row.size >= 0 ? row.size : 0;
        }
      })();
    } catch (error) {
      // Not even that could be written (a full disk): they stay, are found again, and never sent.
      this.log.error(
        { error: errorMessage(error), ids: rows.map((row) => row.id) },
        'outbox: could not set damaged messages aside; they are not sent',
      );
      return;
    }
    this.bytes = Math.max(0, this.bytes);
    this.totals.damaged += moved;
    this.log.error(
      {
        count: moved,
        ids: rows.map((row) => row.id),
        topics: rows.slice(0, 10).map((row) => (typeof row.topic === 'string' ? row.topic.slice(0, 200) : null)),
        table: 'dead_letters',
        totalDamaged: this.totals.damaged,
      },
      'outbox: messages in outbox.db are not what the gateway wrote (checksum mismatch: the file was changed on the disk); not sent, set aside in the dead_letters table',
    );
  }

  /** Deletes settled messages, each counted by its outcome. */
  private remove(entries: ReadonlyArray<{ id: number; outcome: Removal }>): void {
    if (this.closed) return;
    // Removals that failed earlier (disk full: a DELETE needs WAL space too) go first.
    const all = this.unremoved.length > 0 ? [...this.unremoved.splice(0), ...entries] : entries;
    if (all.length === 0) return;
    // In transactions of at most CHUNK ids: a DELETE needs WAL space, and RESERVE_BYTES is room
    // for one such transaction (ids retried after a full disk can be many).
    const removed = { count: 0, bytes: 0, delivered: 0, rejected: 0, expired: 0 };
    for (let start = 0; start < all.length; start += CHUNK) {
      const part = all.slice(start, start + CHUNK);
      let done: ReturnType<Outbox['deleteIds']> | undefined;
      try {
        done = this.disk.onFullDisk(() => this.deleteIds(part));
      } catch (failure) {
        // Never throw into the sender's PUBACK path: keep the ids and try again (with the next
        // ones, and every second while the disk is full).
        this.unremoved = all.slice(start);
        if (!this.diskFull)
          this.log.error(
            { error: errorMessage(failure), ids: this.unremoved.length },
            'outbox: could not delete acknowledged messages; retrying (they may be sent again after a restart)',
          );
        if (isDiskFull(failure)) this.noteDiskFull();
        break;
      }
      for (const key of ['count', 'bytes', 'delivered', 'rejected', 'expired'] as const) removed[key] += done[key];
      this.disk.keepReserve(this.diskFull);
    }
    this.count -= removed.count;
    this.bytes -= removed.bytes;
    this.totals.delivered += removed.delivered;
    this.totals.rejected += removed.rejected;
    if (removed.expired > 0) this.noteDropped(removed.expired, `older than maxAge (${this.options.maxAge} ms) when it was to be sent`);
    // (disk.keepReserve gave the WAL's space back after each transaction when it was needed.) When the
    // outbox has drained, the WAL an outage grew goes back too.
    if (this.count === 0) this.disk.drained();
    // The episode ends only well below the bound, or draining at the bound would log every commit.
    if (this.droppingSince !== undefined && this.count < this.options.maxMessages * 0.9 && this.bytes < this.options.maxBytes * 0.9)
      this.endDropEpisode();
  }

  /** Deletes the rows of `entries` in one transaction; what it deleted, by outcome. */
  private deleteIds(entries: ReadonlyArray<{ id: number; outcome: Removal }>): Record<'count' | 'bytes' | Removal, number> {
    const removed = { count: 0, bytes: 0, delivered: 0, rejected: 0, expired: 0 };
    this.db.transaction(() => {
      // Acknowledgements come mostly in id order: one DELETE per run of consecutive ids, not per id.
      for (const how of ['delivered', 'rejected', 'expired'] as const) {
        const ids = entries
          .filter((entry) => entry.outcome === how)
          .map((entry) => entry.id)
          .sort((a, b) => a - b);
        for (let start = 0; start < ids.length; ) {
          let end = start;
          while (end + 1 < ids.length && ids[end + 1]! <= ids[end]! + 1) end++;
          // Ids a bound dropped while they were in flight are simply not there any more.
          const rows = this.statements.removeRange.all(ids[start]!, ids[end]!) as Array<{ size: number }>;
          for (const row of rows) {
            removed.count++;
            removed.bytes += row.size;
            removed[how]++;
          }
          start = end + 1;
        }
      }
    })();
    return removed;
  }

  setAside(id: number, reason: string): boolean {
    if (this.closed) return false;
    try {
      const row = this.statements.deadLetter.get(reason, Date.now(), id) as { id: number } | undefined;
      if (!row) return false;
      const removed = this.statements.remove.get(id) as { size: number } | undefined;
      if (removed) {
        this.count--;
        this.bytes -= removed.size;
      }
      this.totals.rejected++;
      return true;
    } catch (error) {
      this.log.error({ error: errorMessage(error), id }, 'outbox: could not move a message to the dead-letter table');
      return false;
    }
  }

  /** Age in ms of the oldest message waiting, or 0. */
  oldestAge(now = Date.now()): number {
    const row = this.statements.oldest.get() as { created: number } | undefined;
    return row ? now - row.created : 0;
  }

  get stats(): OutboxStats {
    return { messages: this.count, bytes: this.bytes, ...this.totals, pending: this.pending.length, diskFull: this.diskFull };
  }

  /** Commits what is pending and closes the database. Messages not yet delivered stay for the next start. */
  close(): void {
    if (this.closed) return;
    // The last write: in pieces, while the disk is full down to a single message.
    this.closing = true;
    let failure: unknown;
    try {
      this.commit();
    } catch (error) {
      failure = error;
    }
    if (this.pending.length > 0) {
      const lost = this.pending;
      this.pending = [];
      const why = this.diskFull ? 'the disk is full' : `the last commit failed: ${errorMessage(failure)}`;
      this.log.error(
        { lost: lost.length, diskFull: this.diskFull, error: failure === undefined ? undefined : errorMessage(failure) },
        `outbox: ${lost.length} messages could not be written before the shutdown (${why}) and are lost`,
      );
      this.totals.dropped += lost.length;
      for (const item of lost) item.onSettled?.(`lost at shutdown: ${why}`);
    }
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    clearInterval(this.expireTimer);
    this.db.close();
  }
}

function openDatabase(file: string, options: OutboxOptions): Database.Database {
  const db = openSqliteFile(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma(`synchronous = ${options.synchronous === 'full' ? 'FULL' : 'NORMAL'}`);
    db.pragma('busy_timeout = 5000');
    // A WAL that grew beyond its usual size (a large transaction) gives the space back when it restarts.
    db.pragma(`journal_size_limit = ${JOURNAL_SIZE_LIMIT}`);
    const check = db.pragma('quick_check', { simple: true });
    if (check !== 'ok') throw new Error(`quick_check: ${String(check)}`);
    migrate(db);
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}

function migrate(db: Database.Database): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > MIGRATIONS.length)
    throw new Error(`outbox schema version ${version} is newer than this plc2mqtt (${MIGRATIONS.length}); was it downgraded?`);
  db.transaction(() => {
    for (let index = version; index < MIGRATIONS.length; index++) db.exec(MIGRATIONS[index]!);
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  })();
}

function prepare(db: Database.Database) {
  return {
    peek: db.prepare(
      'SELECT id, topic, payload, qos, retain, size, created, crc, kind FROM messages WHERE id > ? AND id < ? ORDER BY id LIMIT ?',
    ),
    remove: db.prepare('DELETE FROM messages WHERE id = ? RETURNING size'),
    removeRange: db.prepare('DELETE FROM messages WHERE id >= ? AND id <= ? RETURNING size'),
    dropOldest: db.prepare(
      'DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE id > ? AND id < ? ORDER BY id LIMIT ?) RETURNING id, size',
    ),
    oldestSizes: db.prepare('SELECT id, size FROM messages WHERE id > ? AND id < ? ORDER BY id LIMIT ?'),
    dropRange: db.prepare('DELETE FROM messages WHERE id > ? AND id <= ?'),
    expire: db.prepare('DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE created < ? ORDER BY id LIMIT ?) RETURNING size'),
    totals: db.prepare('SELECT count(*) AS count, sum(size) AS bytes FROM messages'),
    deadLetter: db.prepare(
      'INSERT INTO dead_letters (id, topic, payload, qos, retain, created, reason, moved, kind) SELECT id, topic, payload, qos, retain, created, ?, ?, kind FROM messages WHERE id = ? RETURNING id',
    ),
    maxId: db.prepare('SELECT max(id) AS id FROM messages'),
    oldest: db.prepare('SELECT created FROM messages ORDER BY id LIMIT 1'),
  };
}

/** A stored message; `kind` is set only on a format's record (a finished message has none: see OutboxMessage). */
function stored(
  id: number,
  topic: string,
  payload: Buffer,
  qos: 0 | 1,
  retain: boolean,
  size: number,
  created: number,
  kind: number,
): StoredMessage {
  const message: StoredMessage = { id, topic, payload, qos, retain, size, created };
  if (kind !== 0) message.kind = kind;
  return message;
}

/** True when a row read back is what was written (rows from before checksums cannot be told). */
function intact(row: RawRow): boolean {
  if (row.crc === null) return true;
  if (typeof row.topic !== 'string' || !Buffer.isBuffer(row.payload) || typeof row.created !== 'number' || typeof row.size !== 'number')
    return false;
  if ((row.qos !== 0 && row.qos !== 1) || (row.retain !== 0 && row.retain !== 1) || row.size < 0 || row.size > 0xffffffff) return false;
  if (!Number.isInteger(row.kind) || row.kind < 0 || row.kind > 0xffffffff) return false;
  return checksum(row.topic, row.payload, row.qos, row.retain === 1, row.created, row.size, row.kind) === row.crc;
}

function sizeOf(message: OutboxMessage): number {
  return Buffer.byteLength(message.topic) + message.payload.length;
}

function pushAhead(lane: LaneState, row: StoredMessage): void {
  lane.ahead.push(row);
  lane.aheadBytes += row.size;
}

function shiftAhead(lane: LaneState): StoredMessage {
  const row = lane.ahead.shift()!;
  lane.aheadBytes -= row.size;
  return row;
}
