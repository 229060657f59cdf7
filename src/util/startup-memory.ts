// Start-up (loading ~400 modules, compiling the config schema, building the devices) grows V8's
// young generation to 32 MB and leaves garbage in the old one. V8 gives that back after a full
// collection that reduces memory, which its memory reducer starts only after a first full GC: a
// quiet gateway never needs one, so it kept ~35 MB it will not use (measured: an idle gateway
// 105 MB). One such collection a few seconds after the start returns it; under load the young
// generation grows again as V8 sees fit. `v8.queryObjects` is the one API that runs it without
// changing V8's flags (it collects all available garbage before it counts); it is experimental
// (Node 22+), so it is looked up, its warning is not printed, and without it nothing happens.
import v8 from 'node:v8';

const AFTER_START_MS = 5000;

/** A class nobody instantiates: queryObjects is only called for its collection. */
class NoInstances {}

type QueryObjects = (ofClass: new () => unknown, options: { format: 'count' }) => number;

/** Schedules the one collection after the start (an unref'd timer: it keeps nothing alive). */
export function releaseStartupMemory(delayMs = AFTER_START_MS): void {
  const query = (v8 as unknown as { queryObjects?: QueryObjects }).queryObjects;
  if (typeof query !== 'function') return;
  setTimeout(() => {
    const emitWarning = process.emitWarning;
    process.emitWarning = ((warning: string | Error, ...rest: unknown[]) => {
      const text = typeof warning === 'string' ? warning : warning.message;
      if (!text.includes('queryObjects')) (emitWarning as (...args: unknown[]) => void).call(process, warning, ...rest);
    }) as typeof process.emitWarning;
    try {
      query(NoInstances, { format: 'count' });
    } catch {
      // A later Node that changed it: start-up's memory stays, as with any Node without it.
    } finally {
      process.emitWarning = emitWarning;
    }
  }, delayMs).unref();
}
