// The mqtt.js client of the cloud connection and its life: connect, reconnect with capped
// exponential back-off and jitter (instead of mqtt.js's fixed period), back-off and error log
// reset only once a connection proved itself, and connection errors logged once per outage.
// What flows over it is not its business: uplink.ts hands the events on. A QoS 0 publish is
// confirmed by a ping round trip (checkpoint.ts), so that it is as safe as a QoS 1 one.
import { setTimeout as delay } from 'node:timers/promises';
import mqtt, { Store, type IClientOptions, type MqttClient, type Packet } from 'mqtt';
import type { Logger } from 'pino';
import { backoffDelay } from '../util/backoff.js';
import { errorMessage } from '../util/errors.js';
import type { CloudMessage } from '../northbound/format.js';
import type { CloudSubscriptions, UplinkConfig } from './bridge-rules.js';
import { PingCheckpoint } from './checkpoint.js';
import { rearmKeepaliveAtMostEvery, sendWithoutStoreCopies } from './mqttjs-internals.js';

/** A connection that stays up this long without trouble resets the back-off. */
const STABLE_AFTER_MS = 10_000;

/** What a CONNACK said, and whether connections failed before this one. */
export interface Connack {
  sessionPresent: boolean;
  /** MQTT 5: the most unacknowledged QoS 1 messages the broker accepts from us. */
  receiveMaximum: number | undefined;
  /** Attempts failed (or connections were lost) before this one. */
  afterFailure: boolean;
}

export interface ConnectionEvents {
  connected(connack: Connack): void;
  /** The connection (or an attempt) ended; a reconnect is scheduled after this returns. */
  closed(wasConnected: boolean): void;
  message(topic: string, payload: Buffer, retain: boolean): void;
  /** The connection stayed up STABLE_AFTER_MS (see stable()). */
  stable(): void;
}

export interface ConnectionOptions {
  clientId: string;
  /**
   * The last will of each connect attempt (asked again before every one: a format may number its
   * sessions in it): published by the broker when the connection dies without a DISCONNECT.
   */
  will: () => CloudMessage;
  tls: Partial<IClientOptions>;
}

/**
 * mqtt.js keeps its own in-memory copy of unacknowledged messages and resends them after a
 * reconnect. The outbox already does that (durably), so mqtt.js keeps nothing: one source of truth.
 */
class NoStore extends Store {
  override put(_packet: Packet, cb: () => void): this {
    cb();
    return this;
  }
  override del(_packet: Pick<Packet, 'messageId'>, cb: (error?: Error, packet?: Packet) => void): this {
    cb();
    return this;
  }
}

export class CloudConnection {
  private readonly url: string;
  private readonly clientOptions: IClientOptions;
  private readonly reconnect: UplinkConfig['reconnect'];
  private readonly will: () => CloudMessage;
  private readonly log: Logger;
  private readonly events: ConnectionEvents;
  private client: MqttClient | undefined;
  private isConnected = false;
  private stopping = false;
  private failedAttempts = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private stableTimer: NodeJS.Timeout | undefined;
  private error: string | undefined;
  private readonly loggedErrors = new Set<string>();
  /** The QoS 0 messages of the current connection not yet confirmed (a new one per connection). */
  private checkpoint = this.newCheckpoint();

  constructor(config: UplinkConfig, options: ConnectionOptions, log: Logger, events: ConnectionEvents) {
    this.url = config.url;
    this.reconnect = config.reconnect;
    this.log = log;
    this.events = events;
    this.will = options.will;
    this.clientOptions = {
      clientId: options.clientId,
      protocolVersion: config.protocolVersion,
      clean: config.cleanSession,
      // MQTT 5 ends a session when the connection closes unless it asks for an expiry interval.
      ...(config.protocolVersion === 5 && !config.cleanSession
        ? { properties: { sessionExpiryInterval: Math.round(config.sessionExpiry / 1000) } }
        : {}),
      keepalive: Math.max(1, Math.round(config.keepalive / 1000)),
      // Reconnects are ours: exponential back-off with jitter instead of mqtt.js's fixed period.
      reconnectPeriod: 0,
      connectTimeout: 15_000,
      queueQoSZero: false,
      outgoingStore: new NoStore(),
      resubscribe: false,
      // mqtt.js logs every packet through `debug`, which costs ~5% CPU even when off; DEBUG=mqttjs* still works.
      ...(process.env.DEBUG === undefined ? { log: () => undefined } : {}),
      ...(config.username !== undefined ? { username: config.username } : {}),
      ...(config.password !== undefined ? { password: config.password } : {}),
      ...options.tls,
    };
  }

  get clientId(): string {
    return this.clientOptions.clientId!;
  }

  get connected(): boolean {
    return this.isConnected;
  }

  /** The last connection error, until the connection proved itself. */
  get lastError(): string | undefined {
    return this.error;
  }

  start(): void {
    const client = mqtt.connect(this.url, { ...this.clientOptions, will: this.willOption() });
    sendWithoutStoreCopies(client);
    // A tenth of the keep-alive, at most a second (a second with the default 30 s).
    rearmKeepaliveAtMostEvery(client, Math.min(1000, this.clientOptions.keepalive! * 100));
    this.client = client;
    client.on('connect', (connack) => this.onConnect(connack.sessionPresent, connack.properties?.receiveMaximum));
    client.on('close', () => this.onClose());
    client.on('error', (error) => this.noteError(errorMessage(error)));
    client.on('message', (topic, payload, packet) => this.events.message(topic, payload, packet.retain));
    // Every PINGREQ and PINGRESP, also those of mqtt.js's keep-alive: responses answer requests in order.
    client.on('packetsend', (packet) => {
      if (packet.cmd === 'pingreq') this.checkpoint.pingSent();
    });
    client.on('packetreceive', (packet) => {
      if (packet.cmd === 'pingresp') this.checkpoint.pingAnswered();
    });
  }

  /**
   * Publishes on the connection (mqtt.js queues a QoS 1 message while there is none). `done`: QoS
   * 1 on its PUBACK; QoS 0 once a PINGRESP proved the broker read it (see checkpoint.ts), with an
   * error if the connection closed first.
   */
  publish(topic: string, payload: Buffer | string, options: { qos: 0 | 1; retain: boolean }, done: (error?: Error) => void): void {
    if (options.qos === 1) return void this.client?.publish(topic, payload, options, done);
    // The checkpoint of the connection it is written on, not of a later one.
    const checkpoint = this.checkpoint;
    this.client?.publish(topic, payload, options, (error) => (error ? done(error) : checkpoint.written(done)));
  }

  subscribe(subscriptions: CloudSubscriptions): void {
    this.client?.subscribe(subscriptions, (error) => {
      if (error) this.noteError(`subscribing to ${Object.keys(subscriptions).join(', ')} failed: ${errorMessage(error)}`);
    });
  }

  /** The connection has carried data (or stayed up quietly): now back-off and error logging start over. */
  stable(): void {
    clearTimeout(this.stableTimer);
    this.failedAttempts = 0;
    this.loggedErrors.clear();
    this.error = undefined;
  }

  noteError(message: string): void {
    this.error = message;
    // Once per distinct error per outage: a broker that stays down must not flood the log.
    if (this.loggedErrors.has(message)) return;
    this.loggedErrors.add(message);
    // Certificates, credentials and authorization need a person; a broker that is down does not.
    const needsFix = /certificate|ssl|tls|auth|not authori[sz]ed|bad user ?name|password|identifier rejected|self.signed/i.test(message);
    if (needsFix)
      this.log.error(
        { error: message, hint: 'check the uplink credentials, certificates and the broker policy' },
        'cloud broker connection error',
      );
    else this.log.warn({ error: message }, 'cloud broker connection error');
  }

  /**
   * No reconnects and no events from here on. While the connection is up, `lastWords` is
   * published first (the format's goodbye: JSON's retained "offline", Sparkplug's NDEATH), waiting
   * at most `timeoutMs` for its PUBACK; then the connection is closed (see leave()). Messages in
   * flight are not waited for: they are in the outbox and the next connection sends them.
   */
  async stop(timeoutMs: number, lastWords: CloudMessage | undefined, disconnectReason?: number): Promise<void> {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.stableTimer);
    await this.leave(timeoutMs, lastWords, disconnectReason);
    this.isConnected = false;
  }

  /**
   * Says `lastWords`, closes the connection (see leave()) and connects again after the usual
   * back-off, with a new will: a format's fresh start (Sparkplug: its primary host went offline).
   */
  cycle(lastWords: CloudMessage | undefined, disconnectReason?: number): void {
    if (!this.isConnected || this.stopping) return;
    void this.leave(2000, lastWords, disconnectReason).catch((error: unknown) => this.noteError(errorMessage(error)));
  }

  /**
   * `lastWords` (while connected), then the close: with a DISCONNECT when `disconnectReason` is
   * given (MQTT 5 carries it; 3.1.1 a plain DISCONNECT, after which the broker drops the will),
   * else forced, without one (the broker publishes the will). Each step waits at most `timeoutMs`.
   */
  private async leave(timeoutMs: number, lastWords: CloudMessage | undefined, disconnectReason: number | undefined): Promise<void> {
    const client = this.client;
    if (!client) return;
    if (this.isConnected && lastWords) {
      await Promise.race([
        client.publishAsync(lastWords.topic, lastWords.payload, { qos: lastWords.qos, retain: lastWords.retain }).catch(() => undefined),
        delay(timeoutMs, undefined, { ref: false }),
      ]);
    }
    // What mqtt.js still waits PUBACKs for is in the outbox: a graceful end must not wait for it
    // (it would wait forever for entries of connections that are gone, see forgetOutgoing).
    this.forgetOutgoing();
    if (this.isConnected && disconnectReason !== undefined) {
      const options = this.clientOptions.protocolVersion === 5 ? { reasonCode: disconnectReason } : {};
      const ended = await Promise.race([client.endAsync(false, options).then(() => true), delay(timeoutMs, false, { ref: false })]);
      // A socket that does not drain: closed under mqtt.js, which has ended the session already.
      if (!ended) client.stream?.destroy();
      return;
    }
    await Promise.race([client.endAsync(true), delay(timeoutMs, undefined, { ref: false })]);
  }

  /**
   * Drops mqtt.js's record of QoS 1 messages awaiting a PUBACK (their callbacks get an error the
   * sender ignores or takes as "send again"). It keeps those of a connection that closed for good:
   * a leak, and a graceful end() would wait for them forever.
   */
  private forgetOutgoing(): void {
    const client = this.client;
    if (!client) return;
    for (const id of Object.keys(client.outgoing)) client.removeOutgoingMessage(Number(id));
  }

  private newCheckpoint(): PingCheckpoint {
    return new PingCheckpoint(() => {
      // (Not connected: mqtt.js would queue the PINGREQ for the next connection; the close fails the messages anyway.)
      if (this.client?.connected) this.client.sendPing();
    });
  }

  private willOption(): NonNullable<IClientOptions['will']> {
    const { topic, payload, qos, retain } = this.will();
    return { topic, payload, qos, retain };
  }

  private onConnect(sessionPresent: boolean, receiveMaximum: number | undefined): void {
    // A handshake that completed after stop(): that connection is not used.
    if (this.stopping) return void this.client?.end(true);
    this.isConnected = true;
    // No Nagle: the 2-byte PINGREQ that confirms a QoS 0 burst would wait for the broker's delayed
    // ACK (~40 ms per window: QoS 0 replay 10k msg/s instead of 65k). (WebSockets: no such method.)
    (this.client?.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
    // Back-off and logged errors are reset only once the connection proved itself (stable()), not
    // at CONNACK: a broker that accepts and then drops us must not get a reconnect storm.
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => {
      this.stable();
      this.events.stable();
    }, STABLE_AFTER_MS);
    this.events.connected({ sessionPresent, receiveMaximum, afterFailure: this.failedAttempts > 0 });
  }

  private onClose(): void {
    if (this.stopping) return;
    const wasConnected = this.isConnected;
    this.isConnected = false;
    clearTimeout(this.stableTimer);
    this.events.closed(wasConnected);
    this.forgetOutgoing();
    // After the sender let go of the connection's messages: they are sent again on the next one.
    const checkpoint = this.checkpoint;
    this.checkpoint = this.newCheckpoint();
    checkpoint.close(new Error('the connection closed before the cloud broker confirmed it read the message'));
    if (this.stopping) return;
    this.failedAttempts++;
    const delay = backoffDelay(this.failedAttempts, { initial: this.reconnect.initial, max: this.reconnect.max });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (this.stopping || !this.client) return;
      this.client.options.will = this.willOption();
      // (Without stores given, mqtt.js's reconnect() would put its own in-memory one back and resend
      // from it: the outbox is the one record of what is unacknowledged.)
      this.client.reconnect({ outgoingStore: new NoStore() });
    }, delay);
  }
}
