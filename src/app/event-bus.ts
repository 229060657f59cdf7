// A small typed event bus: what happens in the gateway (samples, device and uplink states, polls,
// outbox depth, writes), for whoever wants to watch it (metrics, later the web console) without
// the component that emits it knowing them.
//
// Synchronous and in-process: `emit` calls each listener in turn, in the emitter's call stack, so
// listeners must be quick (a listener with slow work queues it itself). A listener that throws (or
// returns a promise that rejects) is logged and skipped; the emitter and the other listeners go on,
// since the emitter may be the hot path of samples. Emitters of frequent events ask `has(type)`
// first and build no event object while nobody listens.
//
// Not for requests that need an answer (a client's QoS 1 PUBACK waiting for the outbox commit):
// those are handlers given to the component at construction.
import type { Logger } from 'pino';
import { errorMessage } from '../util/errors.js';

type Listener<Event> = (event: Event) => void;

/** A listener's failures are logged the first time and then every this many, not at the rate of samples. */
const LOG_EVERY = 10_000;

export class EventBus<Events extends { [Type in keyof Events]: unknown }> {
  /** Copy on write: an emit iterates the array it started with, whoever subscribes or leaves meanwhile. */
  private readonly listeners: { [Type in keyof Events]?: ReadonlyArray<Listener<Events[Type]>> } = {};
  private readonly failures = new WeakMap<object, number>();
  private readonly log: Logger | undefined;

  constructor(log?: Logger) {
    this.log = log;
  }

  /** Calls `listener` for every event of `type` from now on; returns the function that stops it (idempotent). */
  on<Type extends keyof Events>(type: Type, listener: Listener<Events[Type]>): () => void {
    this.listeners[type] = [...(this.listeners[type] ?? []), listener];
    let subscribed = true;
    return () => {
      if (!subscribed) return;
      subscribed = false;
      const current = this.listeners[type] ?? [];
      const index = current.indexOf(listener);
      if (index < 0) return;
      const rest = [...current.slice(0, index), ...current.slice(index + 1)];
      if (rest.length === 0) delete this.listeners[type];
      else this.listeners[type] = rest;
    };
  }

  /** Whether anyone listens to `type`: emitters of frequent events build their event only then. */
  has(type: keyof Events): boolean {
    return this.listeners[type] !== undefined;
  }

  /** Calls every listener of `type` with `event`, now. Never throws. */
  emit<Type extends keyof Events>(type: Type, event: Events[Type]): void {
    const listeners = this.listeners[type];
    if (listeners === undefined) return;
    for (const listener of listeners) {
      try {
        const result: unknown = listener(event);
        if (result instanceof Promise) result.catch((error: unknown) => this.failed(type, listener, error));
      } catch (error) {
        this.failed(type, listener, error);
      }
    }
  }

  private failed(type: keyof Events, listener: object, error: unknown): void {
    const count = (this.failures.get(listener) ?? 0) + 1;
    this.failures.set(listener, count);
    if (count === 1 || count % LOG_EVERY === 0) {
      this.log?.error(
        { event: String(type), failures: count, error: errorMessage(error) },
        'an event listener failed; the event went on to the others',
      );
    }
  }
}
