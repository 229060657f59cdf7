// Logs: JSON lines (for journald, Docker, Loki) unless stdout is a terminal, where a person reads them.
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export function createLogger(level: LevelWithSilent = 'info', options: { pretty?: boolean } = {}): Logger {
  const human = options.pretty ?? process.stdout.isTTY === true;
  const base = { level, base: { pid: process.pid }, redact: { paths: ['*.password', '*.passphrase', '*.key', 'password'], censor: '[secret]' } };
  if (!human) return pino(base);
  return pino(base, pretty({ colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname', sync: true }));
}
