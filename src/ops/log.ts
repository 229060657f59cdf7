// Logs: JSON lines (for journald, Docker, Loki) unless stdout is a terminal, where a person reads them.
//
// Logging must never stop the gateway. pino's default destination writes synchronously and, when
// the reader of stdout stalls (a hung log collector, a dead parent holding the pipe), retries
// EAGAIN forever in a blocking sleep: the process freezes, signals included. So logs go through
// an asynchronous destination with a bounded buffer (beyond it lines are dropped, not the gateway),
// and the final flush at exit gives up after about two seconds.
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

const MAX_BUFFERED_LOG_BYTES = 16 * 1024 * 1024;

export function createLogger(level: LevelWithSilent = 'info', options: { pretty?: boolean } = {}): Logger {
  const human = options.pretty ?? process.stdout.isTTY === true;
  const base = { level, base: { pid: process.pid }, redact: { paths: ['*.password', '*.passphrase', '*.key', 'password'], censor: '[secret]' } };
  if (human) return pino(base, pretty({ colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', sync: true }));
  let exiting = false;
  let retriesAtExit = 0;
  // Registered before pino's own exit hook, which flushes synchronously.
  process.once('exit', () => {
    exiting = true;
  });
  const destination = pino.destination({
    dest: 1,
    sync: false,
    maxLength: MAX_BUFFERED_LOG_BYTES,
    retryEAGAIN: () => !exiting || ++retriesAtExit <= 20,
  });
  // A write error (stdout gone) must not become an uncaught exception.
  destination.on('error', () => undefined);
  return pino(base, destination);
}
