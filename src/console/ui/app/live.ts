// The live stream: one EventSource on /api/console/events for the whole page. The browser
// reconnects it by itself after a network loss (the server asks for 2 s); each (re)connection
// bumps `epoch`, and the views reload their snapshots then, since what happened while the stream
// was down was not sent. A refused stream (401: the session ended) is closed for good by the
// browser: the app is told (onClosed) and checks the session.
import { useEffect, useRef, useState } from 'preact/hooks';

export type LinkState = 'connecting' | 'live' | 'down';

type Handler = (data: unknown) => void;

const EVENTS = ['samples', 'device-state', 'uplink-state', 'outbox-depth', 'write', 'overview'] as const;
export type LiveEvent = (typeof EVENTS)[number];

class LiveStream {
  state: LinkState = 'connecting';
  /** Connections opened so far: a change means snapshots are to be reloaded. */
  epoch = 0;
  onClosed: () => void = () => {};
  private source: EventSource | undefined;
  private retry: number | undefined;
  private readonly handlers = new Map<string, Set<Handler>>();
  private readonly watchers = new Set<() => void>();

  start(): void {
    this.stop();
    const source = new EventSource('/api/console/events');
    this.source = source;
    this.setState('connecting');
    source.onopen = () => {
      this.epoch++;
      this.setState('live');
    };
    source.onerror = () => {
      if (source !== this.source) return;
      this.setState('down');
      // CLOSED: the server refused the stream (not a network loss, which the browser retries).
      if (source.readyState === EventSource.CLOSED) this.onClosed();
    };
    for (const name of EVENTS) {
      source.addEventListener(name, (event: MessageEvent<string>) => {
        const handlers = this.handlers.get(name);
        if (!handlers || handlers.size === 0) return;
        let data: unknown;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        for (const handler of handlers) handler(data);
      });
    }
  }

  /** Opens the stream again in a while (after a refusal that was not about the session). */
  restartLater(ms: number): void {
    window.clearTimeout(this.retry);
    this.retry = window.setTimeout(() => this.start(), ms);
  }

  stop(): void {
    window.clearTimeout(this.retry);
    this.source?.close();
    this.source = undefined;
    this.setState('down');
  }

  on(event: LiveEvent, handler: Handler): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => set.delete(handler);
  }

  watch(watcher: () => void): () => void {
    this.watchers.add(watcher);
    return () => this.watchers.delete(watcher);
  }

  private setState(state: LinkState): void {
    this.state = state;
    for (const watcher of this.watchers) watcher();
  }
}

export const live = new LiveStream();

/** Calls the handler (the latest one given) for each event of that name while the component is mounted. */
export function useLive<T>(event: LiveEvent, handler: (data: T) => void): void {
  const ref = useRef(handler);
  ref.current = handler;
  useEffect(() => live.on(event, (data) => ref.current(data as T)), [event]);
}

/** The stream's state and epoch, re-rendering on changes. */
export function useLink(): { state: LinkState; epoch: number } {
  const [link, setLink] = useState({ state: live.state, epoch: live.epoch });
  useEffect(() => {
    const update = () => setLink({ state: live.state, epoch: live.epoch });
    update();
    return live.watch(update);
  }, []);
  return link;
}

/** Runs `action` now, every `ms` while mounted, and at every reconnection of the stream. */
export function usePoll(action: () => void, ms: number): void {
  const { epoch } = useLink();
  const ref = useRef(action);
  ref.current = action;
  useEffect(() => {
    ref.current();
    const timer = window.setInterval(() => {
      if (document.visibilityState === 'visible') ref.current();
    }, ms);
    return () => window.clearInterval(timer);
  }, [epoch, ms]);
}

/** The current time, re-rendering every `ms`. */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = window.setInterval(() => setNow(Date.now()), ms);
    return () => window.clearInterval(timer);
  }, [ms]);
  return now;
}
