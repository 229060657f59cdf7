// Retained messages of the integrated broker kept in SQLite (dataDir/retained.db), so the tags'
// last values and the status topic are still there for subscribers after a gateway restart.
// aedes keeps them in memory; this mirrors changes to disk once a second (latest per topic).
import { existsSync, renameSync } from 'node:fs';
import type Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { errorMessage } from '../util/errors.js';
import { isDamage, openSqliteFile } from '../util/sqlite-file.js';

export interface RetainedMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
}

const FLUSH_INTERVAL_MS = 1000;

export class RetainedStore {
  private readonly db: Database.Database;
  private readonly log: Logger;
  private readonly upsert: Database.Statement;
  private readonly remove: Database.Statement;
  /** Latest change per topic since the last flush; an empty payload deletes. */
  private pending = new Map<string, RetainedMessage>();
  private timer: NodeJS.Timeout | undefined;

  private constructor(db: Database.Database, log: Logger) {
    this.db = db;
    this.log = log;
    this.upsert = db.prepare(
      'INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?) ON CONFLICT(topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos',
    );
    this.remove = db.prepare('DELETE FROM retained WHERE topic = ?');
  }

  /**
   * Opens the store; a damaged file is moved aside (retained values are a cache, not data). A file
   * or folder the gateway may not write is not damage: that is an error naming the path and the fix.
   */
  static open(file: string, log: Logger): RetainedStore {
    try {
      return new RetainedStore(openDatabase(file), log);
    } catch (error) {
      if (!isDamage(error)) throw new Error(`cannot open the retained message store ${file}: ${errorMessage(error)}`, { cause: error });
      const aside = `${file}.corrupt-${Date.now()}`;
      for (const suffix of ['', '-wal', '-shm']) if (existsSync(file + suffix)) renameSync(file + suffix, aside + suffix);
      log.error({ file, movedTo: aside, error: errorMessage(error) }, 'retained message store damaged: moved aside, starting empty');
      return new RetainedStore(openDatabase(file), log);
    }
  }

  all(): RetainedMessage[] {
    const rows = this.db.prepare('SELECT topic, payload, qos FROM retained').all() as Array<{
      topic: string;
      payload: Buffer;
      qos: number;
    }>;
    return rows.map((row) => ({ topic: row.topic, payload: row.payload, qos: row.qos === 1 ? 1 : 0 }));
  }

  /** Notes a retained publish (empty payload = cleared); written at the next flush. */
  record(message: RetainedMessage): void {
    this.pending.set(message.topic, message);
    this.timer ??= setTimeout(() => this.flush(), FLUSH_INTERVAL_MS);
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending.size === 0) return;
    const changes = this.pending;
    this.pending = new Map();
    try {
      this.db.transaction(() => {
        for (const message of changes.values()) {
          if (message.payload.length === 0) this.remove.run(message.topic);
          else this.upsert.run(message.topic, message.payload, message.qos);
        }
      })();
    } catch (error) {
      // A full disk loses retained values at worst (they come back with the next poll); never the gateway.
      this.log.warn({ error: errorMessage(error), topics: changes.size }, 'could not save retained messages');
    }
  }

  close(): void {
    this.flush();
    this.db.close();
  }
}

function openDatabase(file: string): Database.Database {
  const db = openSqliteFile(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    if (db.pragma('quick_check', { simple: true }) !== 'ok') throw new Error('quick_check failed');
    db.exec('CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL)');
    return db;
  } catch (error) {
    db.close();
    throw error;
  }
}
