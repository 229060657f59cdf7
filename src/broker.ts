// The integrated MQTT broker (aedes inside the gateway process). Local HMIs, historians and
// MQTT devices connect to its listeners; the gateway publishes every sample into it.
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { Aedes } from 'aedes';
import type { Logger } from 'pino';
import type { Config } from './config/schema.js';

export interface PublishOptions {
  qos: 0 | 1;
  retain: boolean;
}

export interface ListenerAddress {
  type: 'tcp';
  host: string;
  port: number;
}

export class IntegratedBroker {
  readonly aedes: Aedes;
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly log: Logger;
  private readonly config: Config['broker'];

  private constructor(aedes: Aedes, config: Config['broker'], log: Logger) {
    this.aedes = aedes;
    this.config = config;
    this.log = log;
  }

  static async start(config: Config['broker'], log: Logger): Promise<IntegratedBroker> {
    const aedes = await Aedes.createBroker();
    const broker = new IntegratedBroker(aedes, config, log);
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

  publish(topic: string, payload: string | Buffer, options: PublishOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      this.aedes.publish(
        { cmd: 'publish', topic, payload: typeof payload === 'string' ? Buffer.from(payload) : payload, qos: options.qos, retain: options.retain, dup: false },
        (error) => (error ? reject(error) : resolve()),
      );
    });
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
