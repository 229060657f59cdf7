// The Sparkplug birth/death sequence number (bdSeq) of an edge node, kept in the data folder.
//
// Every MQTT CONNECT carries a new bdSeq (0–255, wrapping) in its will (NDEATH), and the NBIRTH
// of that connection repeats it, so a host can tell a late death of an old session from the death
// of the current one [tck-id-topics-nbirth-bdseq-increment], [tck-id-topics-nbirth-bdseq-matching].
// It must survive restarts: a restarted gateway that began at 0 again could send a will equal to
// the one its previous session left on the broker, whose late delivery would then mark the new
// session dead. So the next value is on disk (written, synced, renamed) before the CONNECT that
// uses it goes out.
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';

export const BDSEQ_FILE = 'sparkplug-bdseq.json';

export class BdSeqStore {
  private readonly file: string;
  private readonly log: Logger;
  /** The bdSeq the next CONNECT takes. */
  private upcoming: number;
  private storeFailed = false;

  constructor(dataDir: string, log: Logger) {
    this.file = join(dataDir, BDSEQ_FILE);
    this.log = log;
    this.upcoming = this.load();
  }

  /**
   * The bdSeq of a new CONNECT: stored (the one after it) before it is returned. When it cannot be
   * stored (a full or read-only disk) the count goes on in memory, with an error logged once: a
   * restart before it is stored again may reuse a bdSeq, which is better than no connection.
   */
  next(): number {
    const bdSeq = this.upcoming;
    const following = (bdSeq + 1) % 256;
    try {
      this.store(following);
      this.storeFailed = false;
    } catch (error) {
      if (!this.storeFailed)
        this.log.error(
          { file: this.file, error: (error as Error).message },
          'cannot store the next Sparkplug bdSeq; counting on in memory (a restart before it is stored may reuse a bdSeq)',
        );
      this.storeFailed = true;
    }
    this.upcoming = following;
    return bdSeq;
  }

  private load(): number {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw new Error(`cannot read ${this.file}: ${(error as Error).message}`);
    }
    let value: unknown;
    try {
      value = (JSON.parse(text) as { next?: unknown } | null)?.next;
    } catch {
      value = undefined;
    }
    if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < 256) return value;
    // A damaged file: any value is as good as another for the host, which compares equality only.
    this.log.warn({ file: this.file }, 'the stored Sparkplug bdSeq is unreadable; starting again at 0');
    return 0;
  }

  /** Written to a temporary file, synced, renamed over the old one, and the folder synced: a crash leaves the old or the new. */
  private store(next: number): void {
    const temporary = `${this.file}.tmp`;
    writeFileSync(temporary, `${JSON.stringify({ next })}\n`);
    const fd = openSync(temporary, 'r+');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, this.file);
    const folder = openSync(dirname(this.file), 'r');
    try {
      fsyncSync(folder);
    } finally {
      closeSync(folder);
    }
  }
}
