// The integrated MQTT broker (aedes inside the gateway process). Local HMIs, historians and
// MQTT devices connect to its listeners; the gateway publishes every sample into it.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Aedes } from 'aedes';
import type { Logger } from 'pino';
import type { Config } from './config/schema.js';
import { Fifo } from './fifo.js';

export interface PublishOptions {
  qos: 0 | 1;
  retain: boolean;
}

export interface ListenerAddress {
  type: 'tcp';
  host: string;
  port: number;
}

/** Messages handed to aedes at once. Its own queue (mqemitter) drains with Array.shift, O(n) per message. */
const MAX_IN_FLIGHT = 64;
/** Local publishes waiting beyond this are dropped oldest-first: local subscribers want current values. */
const MAX_QUEUED = 200_000;

interface QueuedPublish {
  topic: string;
  payload: Buffer;
  options: PublishOptions;
}

export interface BrokerStats {
  published: number;
  dropped: number;
  errors: number;
}

export class IntegratedBroker {
  readonly aedes: Aedes;
  readonly stats: BrokerStats = { published: 0, dropped: 0, errors: 0 };
  private readonly queue = new Fifo<QueuedPublish>();
  private inFlight = 0;
  private dropping = false;
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly log: Logger;
  private readonly config: Config['broker'];

  private constructor(aedes: Aedes, config: Config['broker'], log: Logger) {
    this.aedes = aedes;
    this.config = config;
    this.log = log;
  }

  /**
   * Called for every message an MQTT client publishes, before the broker takes it (and before a
   * QoS 1 PUBACK): the uplink appends bridged messages to the outbox here, so a PUBACK means "on disk".
   */
  clientPublishHook: ((topic: string, payload: Buffer, qos: number, retain: boolean) => Promise<void> | undefined) | undefined;

  static async start(config: Config['broker'], log: Logger): Promise<IntegratedBroker> {
    let broker: IntegratedBroker | undefined;
    const aedes = await Aedes.createBroker({
      authorizePublish: (client, packet, callback) => {
        if (packet.topic.startsWith('$SYS')) return callback(new Error('$SYS topics are reserved for the broker'));
        const hook = client ? broker?.clientPublishHook?.(packet.topic, Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload), packet.qos, packet.retain) : undefined;
        if (!hook) return callback(null);
        hook.then(
          () => callback(null),
          (error: unknown) => callback(error instanceof Error ? error : new Error(String(error))),
        );
      },
    });
    broker = new IntegratedBroker(aedes, config, log);
    aedes.on('clientError', (client, error) => log.debug({ clientId: client.id, error: error.message }, 'mqtt client error'));
    aedes.on('connectionError', (client, error) => log.debug({ clientId: client?.id, error: error.message }, 'mqtt connection error'));
    try {
      for (const listener of config.listeners) await broker.listen(listener);
    } catch (error) {
      await broker.close();
      throw error;
    }
    return broker;
  }

  private listen(listener: Config['broker']['listeners'][number]): Promise<void> {
    const server = createServer((socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
      this.aedes.handle(socket);
    });
    this.servers.push(server);
    return new Promise((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        const hint = error.code === 'EADDRINUSE' ? ' (another broker, e.g. mosquitto, may already use this port; change broker.listeners[].port)' : '';
        reject(new Error(`integrated broker cannot listen on ${listener.host}:${listener.port}: ${error.code ?? error.message}${hint}`));
      });
      server.listen(listener.port, listener.host, () => resolve());
    });
  }

  /** Where each listener actually listens (port 0 in the config means "any free port"). */
  addresses(): ListenerAddress[] {
    return this.servers
      .map((server) => server.address())
      .filter((address): address is AddressInfo => address !== null && typeof address === 'object')
      .map((address) => ({ type: 'tcp', host: address.address, port: address.port }));
  }

  get clientCount(): number {
    return this.aedes.connectedClients;
  }

  /** Publishes one message and waits until aedes has taken it (retained store included). */
  publishNow(topic: string, payload: string | Buffer, options: PublishOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      this.aedes.publish(
        { cmd: 'publish', topic, payload: typeof payload === 'string' ? Buffer.from(payload) : payload, qos: options.qos, retain: options.retain, dup: false },
        (error) => (error ? reject(error) : resolve()),
      );
    });
  }

  /**
   * Queues a message for local subscribers, in order, with a bounded number handed to aedes at a
   * time. A poll cycle of 10k tags is one burst; this keeps it from going quadratic inside aedes.
   */
  publish(topic: string, payload: string | Buffer, options: PublishOptions): void {
    if (this.queue.length >= MAX_QUEUED) {
      this.queue.shift();
      this.stats.dropped++;
      if (!this.dropping) {
        this.dropping = true;
        this.log.warn({ queued: MAX_QUEUED }, 'local subscribers are too slow: dropping the oldest queued local messages (counted in broker stats)');
      }
    }
    this.queue.push({ topic, payload: typeof payload === 'string' ? Buffer.from(payload) : payload, options });
    this.pump();
  }

  /** Messages waiting to be handed to aedes. */
  get queued(): number {
    return this.queue.length;
  }

  private pump(): void {
    while (this.inFlight < MAX_IN_FLIGHT) {
      const next = this.queue.shift();
      if (!next) {
        if (this.dropping) {
          this.dropping = false;
          this.log.info({ dropped: this.stats.dropped }, 'local publish queue drained');
        }
        return;
      }
      this.inFlight++;
      this.aedes.publish({ cmd: 'publish', topic: next.topic, payload: next.payload, qos: next.options.qos, retain: next.options.retain, dup: false }, (error) => {
        this.inFlight--;
        if (error) {
          this.stats.errors++;
          this.log.error({ topic: next.topic, error: error.message }, 'publish into the integrated broker failed');
        } else this.stats.published++;
        this.pump();
      });
    }
  }

  /** Resolves once every queued message was handed to aedes (or `timeoutMs` passed). */
  async flush(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((this.queue.length > 0 || this.inFlight > 0) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Closes listeners and client connections; resolves once nothing of the broker is left open. */
  async close(): Promise<void> {
    const serversClosed = Promise.all(this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    await new Promise<void>((resolve) => this.aedes.close(() => resolve()));
    for (const socket of this.sockets) socket.destroy();
    await serversClosed;
    this.log.debug({ listeners: this.config.listeners.length }, 'integrated broker closed');
  }
}
