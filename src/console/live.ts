// Live updates for the console's browsers, over Server-Sent Events.
//
// Tag values are not taken from the bus's per-sample events (tens of thousands a second, which
// would cost the poll path even with nobody watching): every `updateInterval` the tags' latest
// samples are compared with what was last sent, and the changed ones go out as one `samples`
// event to every browser; so 10,000 changing tags cost one message per interval, whatever the
// poll rate. Device, uplink and outbox changes and write answers come from the event bus as they
// happen, listened to only while a browser is connected; an `overview` follows every 2 s. A
// browser that does not keep up (more than 4 MB unsent) is dropped; it reconnects and starts over
// from a snapshot.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { EventBus } from '../app/event-bus.js';
import type { GatewayEvents } from '../app/events.js';
import type { Sample } from '../pipeline/normalize.js';
import { History, Trends } from './trends.js';

export interface LiveSource {
  readonly bus: EventBus<GatewayEvents>;
  /** Visits every tag with its latest sample. */
  eachTag(visit: (device: string, tag: string, last: Sample | undefined) => void): void;
  /** What the overview page shows (sent every 2 s). */
  overview(): unknown;
  /** Messages in the outbox, if there is one. */
  outboxDepth(): number | undefined;
}

export interface LiveOptions {
  updateInterval: number;
  trendMinutes: number;
}

/** A changed tag as it is sent: [device, tag, value, quality, reason, ts]. */
export type SampleRow = [string, string, Sample['value'], Sample['quality'], string | null, number];

const OVERVIEW_EVERY_MS = 2000;
const HEARTBEAT_EVERY_MS = 15_000;
const OUTBOX_HISTORY_EVERY_MS = 10_000;
/** One hour of outbox depth at one point per 10 s. */
const OUTBOX_HISTORY_POINTS = 360;
const MAX_UNSENT_BYTES = 4 * 1024 * 1024;
/** Streams at once, all browsers together (each may hold up to MAX_UNSENT_BYTES). */
export const MAX_BROWSERS = 32;

export const tagKey = (device: string, tag: string): string => `${device}\u0000${tag}`;

export class ConsoleLive {
  readonly trends: Trends;
  readonly outboxHistory = new History(OUTBOX_HISTORY_POINTS);
  private readonly source: LiveSource;
  private readonly options: LiveOptions;
  private readonly log: Logger;
  /** Each browser's stream, with the check that its session still holds. */
  private readonly clients = new Map<ServerResponse, () => boolean>();
  /** The sample last sent of each tag (by identity: a new sample is a new object). */
  private readonly sent = new Map<string, Sample>();
  private unsubscribe: Array<() => void> = [];
  private timers: NodeJS.Timeout[] = [];
  private clientTimers: NodeJS.Timeout[] = [];
  /** Samples the trends once a second, from the first browser until trendMinutes after the last one left. */
  private trendTimer: NodeJS.Timeout | undefined;
  private trendStop: NodeJS.Timeout | undefined;

  constructor(source: LiveSource, options: LiveOptions, log: Logger) {
    this.source = source;
    this.options = options;
    this.log = log;
    this.trends = new Trends(options.trendMinutes);
  }

  /** Outbox history sampling, from now on (whether or not a browser is connected: one point per 10 s). */
  start(): void {
    this.timers.push(
      setInterval(() => {
        const depth = this.source.outboxDepth();
        if (depth !== undefined) this.outboxHistory.add(Date.now(), depth);
      }, OUTBOX_HISTORY_EVERY_MS),
    );
    for (const timer of this.timers) timer.unref();
  }

  stop(): void {
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    this.stopTrends();
    for (const client of this.clients.keys()) client.end();
    this.clients.clear();
    this.idle();
  }

  get browsers(): number {
    return this.clients.size;
  }

  /**
   * Turns the request into an event stream for one browser, while `allowed` holds (its session:
   * checked every 2 s and at every logout, so a stream ends with its session).
   */
  attach(request: IncomingMessage, response: ServerResponse, allowed: () => boolean): void {
    if (this.clients.size >= MAX_BROWSERS) {
      response.writeHead(503, { 'Content-Type': 'application/json; charset=utf-8', 'Retry-After': '10', 'Cache-Control': 'no-store' });
      response.end(JSON.stringify({ error: `${MAX_BROWSERS} console browsers are connected already` }));
      return;
    }
    response.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    response.write('retry: 2000\n\n');
    // The socket stays open for as long as the browser looks: no idle timeout on it.
    request.socket.setTimeout(0);
    request.socket.setNoDelay(true);
    if (this.clients.size === 0) this.busy();
    this.clients.set(response, allowed);
    const forget = () => {
      this.clients.delete(response);
      if (this.clients.size === 0) this.idle();
    };
    response.on('close', forget);
    this.send(response, 'overview', this.source.overview());
  }

  /**
   * The first browser: listen to the bus, start the update timers and the trends. Trends are kept
   * while someone looks (and `trendMinutes` after, so a reload keeps them): a gateway whose
   * console nobody opens spends neither CPU nor memory on them.
   */
  private busy(): void {
    const { bus } = this.source;
    clearTimeout(this.trendStop);
    this.trendStop = undefined;
    if (!this.trendTimer) {
      this.trendTimer = setInterval(() => this.sampleTrends(), 1000);
      this.trendTimer.unref();
      this.sampleTrends();
    }
    this.unsubscribe = [
      bus.on('device-state', (event) => this.broadcast('device-state', event)),
      bus.on('uplink-state', (event) => this.broadcast('uplink-state', event)),
      bus.on('outbox-depth', (event) => this.broadcast('outbox-depth', event)),
      bus.on('write', (event) =>
        this.broadcast('write', {
          topic: event.topic,
          answer: event.answer,
          source: event.origin.source,
          user: event.origin.username ?? event.origin.clientId,
        }),
      ),
    ];
    this.clientTimers = [
      setInterval(() => this.flushSamples(), this.options.updateInterval),
      setInterval(() => {
        this.revalidate();
        this.broadcast('overview', this.source.overview());
      }, OVERVIEW_EVERY_MS),
      setInterval(() => {
        for (const client of this.clients.keys()) client.write(': keep-alive\n\n');
      }, HEARTBEAT_EVERY_MS),
    ];
    for (const timer of this.clientTimers) timer.unref();
  }

  /** No browser any more. */
  private idle(): void {
    if (this.trendTimer && !this.trendStop) {
      this.trendStop = setTimeout(() => this.stopTrends(), this.options.trendMinutes * 60_000);
      this.trendStop.unref();
    }
    for (const stop of this.unsubscribe) stop();
    this.unsubscribe = [];
    for (const timer of this.clientTimers) clearInterval(timer);
    this.clientTimers = [];
    // (What was sent stays known: the next browser's first update has everything that changed
    // since, so nothing between its snapshot and its stream is missed; the page keeps the newer.)
  }

  private flushSamples(): void {
    const rows: SampleRow[] = [];
    this.source.eachTag((device, tag, last) => {
      if (!last) return;
      const key = tagKey(device, tag);
      if (this.sent.get(key) === last) return;
      this.sent.set(key, last);
      rows.push([device, tag, last.value, last.quality, last.reason ?? null, last.ts]);
    });
    if (rows.length > 0) this.broadcast('samples', rows);
  }

  private stopTrends(): void {
    clearInterval(this.trendTimer);
    clearTimeout(this.trendStop);
    this.trendTimer = undefined;
    this.trendStop = undefined;
    this.trends.clear();
  }

  private sampleTrends(): void {
    const now = Date.now();
    this.source.eachTag((device, tag, last) => {
      // By the gateway's clock: a device whose clock is off would put its points outside the window.
      if (last) this.trends.record(tagKey(device, tag), now, last.value);
    });
  }

  /** Ends the streams whose session ended (a logout, an expiry, a reload that removed the user or changed the role). */
  revalidate(): void {
    for (const [client, allowed] of this.clients) if (!allowed()) client.end();
  }

  private broadcast(event: string, data: unknown): void {
    if (this.clients.size === 0) return;
    const text = frame(event, data);
    for (const client of this.clients.keys()) this.write(client, text);
  }

  private send(client: ServerResponse, event: string, data: unknown): void {
    this.write(client, frame(event, data));
  }

  private write(client: ServerResponse, text: string): void {
    if (client.writableLength > MAX_UNSENT_BYTES) {
      this.log.warn(
        { unsent: client.writableLength },
        'a console browser does not keep up with live updates: disconnected (it reconnects and starts over)',
      );
      client.destroy();
      return;
    }
    client.write(text);
  }
}

/** One SSE message; 64-bit values as decimal strings. */
function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value))}\n\n`;
}
