// The outbox's share of its partition: it never takes the last bytes. Measures the free space and
// what a checkpoint of the WAL needs, decides how much of a write fits beside the reserve, keeps
// the reserve file (`<outbox file>-reserve`) and checkpoints and truncates the WAL to give its
// space back. The outbox (outbox.ts) decides what to write; this decides whether there is room.
import { closeSync, openSync, statfsSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { dirname } from 'node:path';
import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { errorMessage } from '../util/errors.js';

/**
 * Free space the outbox always leaves on its partition, beyond the room a checkpoint of its WAL
 * needs (Space.growth): deleting what the cloud acknowledged needs WAL space too, and the WAL is
 * then checkpointed and truncated to give it back. Deletions go in transactions of at most CHUNK
 * ids (outbox.ts) (measured: 124 KB of WAL for 1,000 consecutive ids, 218 KB for every other id). An outbox
 * that took the last byte could neither delete nor checkpoint: it would stay stuck until someone
 * freed space, and the cloud would get its messages again and again.
 */
export const RESERVE_BYTES = 256 * 1024;

/**
 * The reserve file, `<outbox file>-reserve`: given back when the disk fills up all the same
 * (another program took the space, or an estimate was wrong), so that the WAL can be checkpointed
 * and acknowledged messages deleted. A checkpoint needs room for the pages the WAL holds beyond the
 * end of the database file: at most the 1,000 pages after which SQLite checkpoints by itself plus
 * one transaction (measured: 4.2 MB while the outbox filled its partition).
 */
const RESERVE_FILE_BYTES = 4.5 * 1024 * 1024;

/** The reserve file is (re)created only while at least this much is free, so it never takes the last space. */
const RESERVE_FILE_WHEN_FREE = 2 * RESERVE_FILE_BYTES + RESERVE_BYTES;

/** How long after the reserve file was given back (or could not be created) before it is tried again. */
const RESERVE_FILE_RETRY_MS = 60_000;

/** SQLite cuts the WAL file back to this size when it restarts it (PRAGMA journal_size_limit). */
export const JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024;

/** How often the WAL is truncated when the outbox runs empty (see drained). */
const DRAIN_TRUNCATE_INTERVAL_MS = 10_000;

/** The outbox's partition, in bytes, as measured before a write and after a deletion. */
interface Space {
  /** Free for the gateway's user (statfs). */
  free: number;
  /** What a checkpoint now adds to the database file: the pages the WAL holds beyond its end. */
  growth: number;
  /** The size of the WAL file, given back by a truncating checkpoint. */
  wal: number;
  /** Free pages inside the database file, which new rows reuse. */
  reusable: number;
}

/** How many appends the next transaction takes, and whether the WAL is truncated right after it. */
export interface Fit {
  count: number;
  truncate: boolean;
}

export class DiskSpace {
  readonly pageSize: number;
  private readonly file: string;
  private readonly db: Database.Database;
  private readonly log: Logger;
  // Measured before each write and after each deletion (db.pragma prepares anew: 7 µs each).
  private readonly pageCount: Database.Statement;
  private readonly freelistCount: Database.Statement;
  private lastTruncate = 0;
  /** The reserve file (RESERVE_FILE_BYTES) is there to be given back. */
  private reserveFile = false;
  private reserveFileRetry = 0;
  private reserveFileWarned = false;

  constructor(file: string, db: Database.Database, log: Logger) {
    this.file = file;
    this.db = db;
    this.log = log;
    this.pageCount = db.prepare('PRAGMA page_count').pluck();
    this.freelistCount = db.prepare('PRAGMA freelist_count').pluck();
    this.pageSize = db.pragma('page_size', { simple: true }) as number;
  }

  /**
   * How many of the next `max` appends to write (walBytes(count): the WAL bytes a transaction of
   * the first `count` of them adds) so that RESERVE_BYTES stay free once they are written, with
   * room left for a checkpoint of everything in the WAL; the reserve is kept all the time, not
   * only once the disk is full (then the first failed write would find the WAL holding megabytes no
   * checkpoint could copy, and no room for a deletion either). New pages take room twice (in the
   * WAL, then in the database file), unless they reuse free pages of the database file. When that
   * leaves too little, the piece may still be written if the WAL is checkpointed and truncated
   * right after it: its frames then need room only for a moment (this is how new messages go into
   * pages the cloud's acknowledgements freed on a full partition). 0 when not even one message
   * fits yet.
   */
  fit(max: number, walBytes: (count: number) => number, state: { closing: boolean; diskFull: boolean }): Fit {
    // At shutdown the reserve is used too: messages on disk are worth more than room to delete
    // at the next start. Room for the checkpoint is not: without it the next start could neither
    // checkpoint nor delete.
    const reserve = state.closing ? 0 : RESERVE_BYTES;
    for (let truncated = false; ; truncated = true) {
      const space = this.measure(state.diskFull);
      if (space === undefined) return { count: max, truncate: state.diskFull }; // no figures: try, and halve on failure
      for (let count = max; ; count = Math.ceil(count / 2)) {
        const wal = walBytes(count);
        const grows = Math.max(0, wal - space.reusable);
        // Left in the WAL until SQLite checkpoints it.
        if (reserve + space.growth + wal + grows <= space.free) return { count, truncate: false };
        // Checkpointed and truncated right after: the WAL file's space comes back.
        if (space.growth + wal + grows <= space.free && reserve + space.growth + grows <= space.free + space.wal)
          return { count, truncate: true };
        if (count === 1) break;
      }
      // Not even one: the space the WAL holds goes back first, then once more.
      if (truncated || space.wal === 0 || !this.truncateWal()) return { count: 0, truncate: false };
    }
  }

  /**
   * After a deletion, whose frames took WAL space: the WAL is checkpointed and truncated when the
   * free space went below the reserve (always while the disk is full: the next piece of the
   * backlog needs that space).
   */
  keepReserve(diskFull: boolean): void {
    if (diskFull) {
      this.truncateWal();
      return;
    }
    const space = this.measure(diskFull);
    if (space !== undefined && space.free < RESERVE_BYTES + space.growth) this.truncateWal();
  }

  /** The outbox ran empty: the WAL an outage grew goes back too (at most every DRAIN_TRUNCATE_INTERVAL_MS). */
  drained(): void {
    if (Date.now() - this.lastTruncate >= DRAIN_TRUNCATE_INTERVAL_MS) this.truncateWal();
  }

  /**
   * Runs a deletion; when the disk is full, gives the WAL's space back (a checkpoint, for which the
   * reserve file is given back if need be) and runs it once more, then once more after giving back
   * the reserve file. A DELETE adds no pages to the file: it needs room in the WAL only.
   */
  onFullDisk<T>(run: () => T): T {
    try {
      return run();
    } catch (error) {
      if (!isDiskFull(error)) throw error;
    }
    this.truncateWal();
    try {
      return run();
    } catch (error) {
      if (!isDiskFull(error) || !this.releaseReserveFile()) throw error;
    }
    return run();
  }

  /**
   * Copies the WAL into the database file and truncates it to zero bytes, giving its space back.
   * When there is no room for the copy, the reserve file is given back for it. False when it failed.
   */
  truncateWal(): boolean {
    this.lastTruncate = Date.now();
    for (;;) {
      try {
        this.db.pragma('wal_checkpoint(TRUNCATE)');
        return true;
      } catch (error) {
        if (isDiskFull(error) && this.releaseReserveFile()) continue;
        // Copying needs room where the database file grows; it is tried again later.
        this.log.debug({ error: errorMessage(error) }, 'outbox: WAL checkpoint failed');
        return false;
      }
    }
  }

  /** At open: a reserve file of the right size is kept; one cut short (a crash while writing it) is made again. */
  openReserveFile(): void {
    try {
      const size = statSync(this.reserveFilePath, { throwIfNoEntry: false })?.size;
      if (size === RESERVE_FILE_BYTES) this.reserveFile = true;
      else if (size !== undefined) this.removeReserveFile();
    } catch {
      // Not readable: written anew below, or the outbox goes without one.
    }
    this.measure(false); // creates it when there is room
  }

  /**
   * The outbox's partition now (see Space); undefined when it cannot be measured. Gives the
   * reserve file back when not even a checkpoint fits any more, and creates it again once there
   * is plenty of room (not while the disk is full).
   */
  private measure(diskFull: boolean): Space | undefined {
    let space: Space;
    try {
      const disk = statfsSync(dirname(this.file));
      const pages = this.pageCount.get() as number;
      const reusable = (this.freelistCount.get() as number) * this.pageSize;
      const wal = statSync(`${this.file}-wal`, { throwIfNoEntry: false })?.size ?? 0;
      space = { free: disk.bavail * disk.bsize, growth: Math.max(0, pages * this.pageSize - statSync(this.file).size), wal, reusable };
    } catch {
      return undefined;
    }
    if (space.free < space.growth && this.releaseReserveFile()) return this.measure(diskFull);
    if (!this.reserveFile && !diskFull && space.free >= RESERVE_FILE_WHEN_FREE + space.growth && Date.now() >= this.reserveFileRetry) {
      if (this.createReserveFile()) space.free -= RESERVE_FILE_BYTES;
    }
    return space;
  }

  private get reserveFilePath(): string {
    return `${this.file}-reserve`;
  }

  /**
   * Writes the reserve file. Random bytes: a file system that compresses (or leaves holes for
   * zeros) would otherwise keep less than it says. False when it could not be written.
   */
  private createReserveFile(): boolean {
    this.reserveFileRetry = Date.now() + RESERVE_FILE_RETRY_MS;
    const piece = randomFillSync(Buffer.allocUnsafe(256 * 1024));
    let fd: number | undefined;
    try {
      fd = openSync(this.reserveFilePath, 'w');
      for (let written = 0; written < RESERVE_FILE_BYTES; written += piece.length) writeSync(fd, piece);
      closeSync(fd);
      fd = undefined;
      this.reserveFile = true;
      this.log.debug({ file: this.reserveFilePath, bytes: RESERVE_FILE_BYTES }, 'outbox: reserve file written');
      return true;
    } catch (error) {
      if (fd !== undefined) closeSync(fd);
      this.removeReserveFile();
      this.log[this.reserveFileWarned ? 'debug' : 'warn'](
        { file: this.reserveFilePath, error: errorMessage(error) },
        'outbox: could not write the reserve file; trying again every minute',
      );
      this.reserveFileWarned = true;
      return false;
    }
  }

  /** The disk is full: the reserve file's space goes to the checkpoint and the deletions. False when there was none. */
  private releaseReserveFile(): boolean {
    if (!this.reserveFile) return false;
    this.removeReserveFile();
    this.reserveFileRetry = Date.now() + RESERVE_FILE_RETRY_MS;
    this.log.warn(
      { file: this.reserveFilePath, bytes: RESERVE_FILE_BYTES },
      'outbox: the disk is full; gave back the reserve file so that the WAL can be checkpointed and acknowledged messages deleted (it is written again once there is room)',
    );
    return true;
  }

  private removeReserveFile(): void {
    this.reserveFile = false;
    try {
      unlinkSync(this.reserveFilePath);
    } catch {
      // not there
    }
  }
}

/** SQLite's answer when a write found no room (the disk, or the WAL's share of it, is full). */
export function isDiskFull(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return (
    code === 'SQLITE_FULL' || code === 'SQLITE_IOERR_WRITE' || (error instanceof Error && /database or disk is full/i.test(error.message))
  );
}
