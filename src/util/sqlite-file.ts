// Opening the gateway's SQLite files (outbox.db, retained.db) in the data directory, and telling
// apart a file or folder the gateway may not write (an operator's fix: owner, mode, mount) from a
// damaged file (the store's fix: move it aside). A permission problem must never look like damage:
// moving a healthy file aside would orphan its messages.
import { accessSync, constants, mkdirSync, statSync, type Stats } from 'node:fs';
import { userInfo } from 'node:os';
import { basename, dirname } from 'node:path';
import Database from 'better-sqlite3';
import { errorMessage } from './errors.js';

/** The data directory or a file in it cannot be used as it is: permissions, a read-only mount, a missing folder. */
export class StorageAccessError extends Error {
  readonly code: string;
  constructor(message: string, code: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'StorageAccessError';
    this.code = code;
  }
}

/** SQLite errors that mean the file itself is damaged, as opposed to a permission, a lock or a full disk. */
export function isDamage(error: unknown): boolean {
  const code = String((error as { code?: unknown }).code ?? '');
  return /^SQLITE_(CORRUPT|NOTADB)/.test(code) || /quick_check/.test(errorMessage(error));
}

/**
 * Opens (or creates) a SQLite file after checking that the gateway's user may create and write
 * it and its -wal and -shm files. Throws StorageAccessError naming the path and the fix; the
 * message leaves out the store's name, which the caller adds ("cannot open the outbox …: ").
 */
export function openSqliteFile(file: string): Database.Database {
  const problem = accessProblem(file);
  if (problem) throw problem;
  try {
    return new Database(file);
  } catch (error) {
    if (isDamage(error)) throw error;
    const code = String((error as { code?: unknown }).code ?? 'EIO');
    throw new StorageAccessError(
      `${errorMessage(error)} (${code}); the folder ${dirname(file)} and the files ${basename(file)}* in it must be readable and writable for ${runningUser()}`,
      code,
      { cause: error },
    );
  }
}

/** Creates the data directory if needed, or says why it cannot and how to fix that. */
export function ensureDataDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'EIO';
    const why =
      code === 'EACCES' || code === 'EPERM' ? 'permission denied' : code === 'EROFS' ? 'read-only file system' : errorMessage(error);
    throw new StorageAccessError(
      `cannot create the data directory ${dir}: ${why}; create it, writable for ${runningUser()}: ${fixCommand(dir, true)}`,
      code,
      { cause: error },
    );
  }
}

function accessProblem(file: string): StorageAccessError | undefined {
  const dir = dirname(file);
  let folder: Stats;
  try {
    folder = statSync(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'EIO';
    if (code === 'ENOENT')
      return new StorageAccessError(
        `the folder ${dir} does not exist; create it, writable for ${runningUser()}: ${fixCommand(dir, true)}`,
        code,
      );
    return new StorageAccessError(
      `cannot reach the folder ${dir}: ${errorMessage(error)}; it and the folders above it must be searchable for ${runningUser()}`,
      code,
    );
  }
  if (!folder.isDirectory())
    return new StorageAccessError(`${dir} is not a folder; gateway.dataDir (or --data-dir) must name a folder`, 'ENOTDIR');
  // SQLite creates the file, its -wal and its -shm next to it: the folder must be writable.
  const denied = check(dir, constants.W_OK | constants.X_OK);
  if (denied === 'EROFS') return readOnlyMount(dir);
  if (denied !== undefined) {
    return new StorageAccessError(
      `permission denied: the folder ${dir} (${ownerAndMode(folder)}) is not writable for ${runningUser()}, and the gateway keeps ${basename(file)}, ${basename(file)}-wal and ${basename(file)}-shm there; fix: ${fixCommand(dir, false)}, or run the gateway as the folder's owner`,
      denied,
    );
  }
  for (const path of [file, `${file}-wal`, `${file}-shm`]) {
    let stats: Stats;
    try {
      stats = statSync(path);
    } catch {
      continue; // not there yet: created with the folder's permissions
    }
    const refused = check(path, constants.R_OK | constants.W_OK);
    if (refused === 'EROFS') return readOnlyMount(dir);
    if (refused !== undefined) {
      return new StorageAccessError(
        `permission denied: ${path} (${ownerAndMode(stats)}) is not readable and writable for ${runningUser()} (was the gateway run once as another user?); fix: chown -R ${process.getuid?.() ?? 'USER'} ${dir}, or run the gateway as the file's owner`,
        refused,
      );
    }
  }
  return undefined;
}

function check(path: string, mode: number): string | undefined {
  try {
    accessSync(path, mode);
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? 'EACCES';
  }
}

function readOnlyMount(dir: string): StorageAccessError {
  return new StorageAccessError(
    `${dir} is on a read-only file system; the data directory must be writable (mount it read-write; in Docker, a volume or bind mount without :ro)`,
    'EROFS',
  );
}

function ownerAndMode(stats: Stats): string {
  return `owner uid ${stats.uid}, group gid ${stats.gid}, mode ${(stats.mode & 0o7777).toString(8).padStart(4, '0')}`;
}

/** "uid 65534 (nobody)", the user whose permissions count. */
function runningUser(): string {
  const uid = process.getuid?.();
  if (uid === undefined) return 'the user the gateway runs as';
  let name: string | undefined;
  try {
    name = userInfo().username;
  } catch {
    // a uid without a passwd entry (docker run --user 1234)
  }
  return `the user the gateway runs as, uid ${uid}${name ? ` (${name})` : ''}`;
}

function fixCommand(dir: string, create: boolean): string {
  const uid = process.getuid?.() ?? 'USER';
  return `${create ? `mkdir -p ${dir} && ` : ''}chown ${uid} ${dir}`;
}
