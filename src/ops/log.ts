// Logs: JSON lines (for journald, Docker, Loki) unless stdout is a terminal, where a person reads them.
//
// Logging must never stop the gateway. pino's default destination writes synchronously and, when
// the reader of stdout stalls (a hung log collector, a dead parent holding the pipe), retries
// EAGAIN forever in a blocking sleep: the process freezes, signals included. So logs go through
// an asynchronous destination with a bounded buffer (beyond it lines are dropped, not the gateway),
// and the final flush at exit gives up after about two seconds, or at once when stdout is gone.
import { writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { pino, type Logger, type LevelWithSilent } from 'pino';
import type { prettyFactory as PrettyFactory } from 'pino-pretty';

export type { Logger };

const MAX_BUFFERED_LOG_BYTES = 16 * 1024 * 1024;
const FINAL_FLUSH_MS = 2000;
const FINAL_FLUSH_RETRY_MS = 100;

type Destination = ReturnType<typeof pino.destination>;

/** The state of sonic-boom 4 the final flush reads: what is not written yet (not in its types). */
interface PendingWrites {
  fd: number;
  _bufs: Array<string | Buffer>;
  _writingBuf: string | Buffer;
  _writing: boolean;
  _len: number;
}

function hasPendingWrites(destination: object): destination is PendingWrites {
  const state = destination as Partial<PendingWrites>;
  return (
    typeof state.fd === 'number' &&
    Array.isArray(state._bufs) &&
    typeof state._writing === 'boolean' &&
    typeof state._len === 'number' &&
    state._writingBuf !== undefined
  );
}

/**
 * The flush pino runs when the process exits (its exit hook calls `flushSync`), bounded.
 * Hand-written because sonic-boom 4.2 (what pino 10 uses) loops forever in its `flushSync` on any
 * write error but EAGAIN/EBUSY: EPIPE (the reader of stdout is gone), ENOSPC, EBADF… go to
 * `sleep(100)` and the same write again, and no option reaches that branch (`retryEAGAIN` is asked
 * about EAGAIN/EBUSY only). This writes what is pending like its `flushSync` does, but gives up at
 * the first other error and after FINAL_FLUSH_MS of EAGAIN, and never throws: the exit goes on.
 * A write in flight (`_writing`) is left out, as sonic-boom does: its thread may have written it.
 * (Forcing sonic-boom 5 through npm overrides was tried: its flushSync throws on EPIPE, so the
 * gateway exits 1 after SIGTERM, and a stdout nobody reads still held the exit past 15 s.)
 */
function boundedFinalFlush(destination: PendingWrites): void {
  const pending = [
    ...(destination._writing || destination._writingBuf.length === 0 ? [] : [destination._writingBuf]),
    ...destination._bufs,
  ];
  destination._bufs = [];
  destination._len = 0;
  if (!destination._writing) destination._writingBuf = '';
  const giveUpAt = Date.now() + FINAL_FLUSH_MS;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (const chunk of pending) {
    let rest = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    while (rest.length > 0) {
      try {
        rest = rest.subarray(writeSync(destination.fd, rest));
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        if ((code !== 'EAGAIN' && code !== 'EBUSY') || Date.now() >= giveUpAt) return;
        Atomics.wait(pause, 0, 0, FINAL_FLUSH_RETRY_MS);
      }
    }
  }
}

export function createLogger(level: LevelWithSilent = 'info', options: { pretty?: boolean } = {}): Logger {
  const human = options.pretty ?? process.stdout.isTTY === true;
  const base = {
    level,
    base: { pid: process.pid },
    redact: { paths: ['*.password', '*.passphrase', '*.key', 'password'], censor: '[secret]' },
  };
  const destination = stdoutDestination();
  if (!human) return pino(base, destination);
  // Human-readable lines are formatted here and go to the same destination. pino-pretty's own
  // destination writes synchronously and retries EAGAIN without end (a gateway run with --pretty
  // into a pipe nobody read froze), and its stream pipeline would buffer without bound.
  // Loaded only for a terminal: a gateway run as a service never needs it (less to keep in memory).
  const { prettyFactory } = createRequire(import.meta.url)('pino-pretty') as { prettyFactory: typeof PrettyFactory };
  const prettify = prettyFactory({ colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' });
  return pino(base, { write: (line: string) => destination.write(prettify(line)) });
}

function stdoutDestination(): Destination {
  // While running, EAGAIN is retried by a timer, without blocking (sonic-boom's default).
  const destination: Destination = pino.destination({ dest: 1, sync: false, maxLength: MAX_BUFFERED_LOG_BYTES });
  // pino replaces this with a no-op itself once an asynchronous write has failed with EPIPE. A
  // sonic-boom without these fields keeps its own flushSync (5.x gives up on such errors itself).
  if (hasPendingWrites(destination)) destination.flushSync = () => boundedFinalFlush(destination);
  // A write error (stdout gone) must not become an uncaught exception.
  destination.on('error', () => undefined);
  return destination;
}
