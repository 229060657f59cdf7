// The `debug` package, which mqtt-packet and mqtt.js call for every packet they write or parse,
// builds an array of its arguments on each call (`debug(...args)`) before it checks whether its
// namespace is on: ~30 MB/s of garbage at 20,000 messages/s with every namespace off (measured
// with an allocation profile of bench/e2e.js). This module, imported before anything that loads
// `debug`, makes the namespaces that are off at start a function without parameters, which costs
// nothing to call. `DEBUG=…` at start works as before; turning a namespace on later
// (debug.enable()) reaches only loggers created after that.
import { createRequire } from 'node:module';

type Logger = ((...args: unknown[]) => void) & { enabled: boolean; namespace: string };
type CreateDebug = ((namespace: string) => Logger) & Record<string, unknown>;

const require = createRequire(import.meta.url);
const path = require.resolve('debug');
const createDebug = require('debug') as CreateDebug;

const quiet = ((namespace: string): Logger => {
  const logger = createDebug(namespace);
  if (logger.enabled) return logger;
  const off = (() => undefined) as unknown as Logger;
  // What callers read of a logger: the same as the real one's (extend, log, …), but quiet.
  return Object.assign(off, logger, { enabled: false, namespace });
}) as CreateDebug;
Object.assign(quiet, createDebug);
const cached = require.cache[path];
if (cached) cached.exports = quiet;
