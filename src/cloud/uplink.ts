// The cloud uplink, composed: messages for the cloud go into the outbox (outbox.ts); the sender
// (sender.ts) drains it at QoS 1 over the connection (connection.ts), each message deleted only
// after its PUBACK; birth ("online") after every connect, the will and "offline" on the status
// topic; cloud topics of the receive rules (bridge-rules.ts) come down into the integrated
// broker, without the gateway's own messages coming back (echo.ts).
import type { Logger } from 'pino';
import type { IntegratedBroker } from '../broker/broker.js';
import { compileTopicTemplate } from '../northbound/topics.js';
import { errorMessage } from '../util/errors.js';
import { BridgeRules, type CloudRoute, type UplinkConfig } from './bridge-rules.js';
import type { MessageBuffer, OutboxMessage, Settled } from './buffer.js';
import { CloudConnection, type Connack } from './connection.js';
import { EchoFilter } from './echo.js';
import { Sender, type Link } from './sender.js';
import { readTls } from './tls.js';

export type { CloudRoute, UplinkConfig } from './bridge-rules.js';
export { tlsFilesFingerprint } from './tls.js';

export interface UplinkStats {
  connected: boolean;
  /** Messages handed to the cloud connection (resends after a reconnect count again). */
  sent: number;
  acknowledged: number;
  rejected: number;
  inFlight: number;
  reconnects: number;
  received: number;
  lastError?: string;
}

/** Sees every cloud message under its local topic before it goes into the integrated broker (the write path picks its commands). */
export type Downlink = (localTopic: string, payload: Buffer, retain: boolean) => void;

/**
 * Messages waiting this long for a PUBACK, with not one PUBACK in between, make the cloud "stalled"
 * (a warning, once): the keep-alive, at most 30 s. A broker that answers pings but takes no
 * messages keeps the connection up forever; a frozen one is dropped by mqtt.js after 1.5
 * keep-alives, so the warning comes first.
 */
const STALL_AFTER_MAX_MS = 30_000;

export class Uplink {
  readonly statusTopic: string;
  /** Of the TLS files this uplink's connections use (see tlsFilesFingerprint). */
  readonly tlsFingerprint: string;
  private readonly outbox: MessageBuffer;
  private readonly broker: IntegratedBroker;
  private readonly log: Logger;
  private readonly rules: BridgeRules;
  private readonly protocolVersion: 4 | 5;
  private readonly echo: EchoFilter;
  private readonly connection: CloudConnection;
  private readonly sender: Sender;
  private readonly downlink: Downlink | undefined;
  private stopping = false;
  private readonly counters = { reconnects: 0, received: 0 };

  constructor(config: UplinkConfig, gatewayName: string, defaultStatusTopic: string, outbox: MessageBuffer, broker: IntegratedBroker, log: Logger, downlink?: Downlink) {
    const tls = readTls(config.tls);
    this.tlsFingerprint = tls.fingerprint;
    this.outbox = outbox;
    this.broker = broker;
    this.downlink = downlink;
    this.log = log.child({ uplink: redactUrl(config.url) });
    this.statusTopic = compileTopicTemplate(config.statusTopic ?? defaultStatusTopic).render({ gateway: gatewayName });
    this.rules = new BridgeRules(config);
    this.protocolVersion = config.protocolVersion;
    this.echo = new EchoFilter(this.rules, config.protocolVersion);
    this.connection = new CloudConnection(
      config,
      { clientId: config.clientId ?? `plc2mqtt-${gatewayName}`, will: { topic: this.statusTopic, payload: Buffer.from('offline') }, tls: tls.options },
      this.log,
      {
        connected: (connack) => this.onConnected(connack),
        closed: (wasConnected) => this.onClosed(wasConnected),
        message: (topic, payload, retain) => this.onCloudMessage(topic, payload, retain),
        stable: () => this.sender.stable(),
      },
    );
    this.sender = new Sender(
      outbox,
      { inFlight: config.inFlight, liveShare: config.liveShare, maxAge: config.outbox.maxAge, stallAfter: Math.min(config.keepalive, STALL_AFTER_MAX_MS) },
      this.log,
      {
        firstAcknowledgement: () => this.connection.stable(),
        refused: (message, error) => this.connection.noteError(`the cloud broker refused a message on "${message.topic}": ${errorMessage(error)}`),
      },
    );
  }

  /**
   * Takes over from the uplink this one replaces (a reload): its counters, so metrics stay
   * monotonic, and the commands it sent that the cloud may still echo back (3.1.1).
   */
  continueFrom(previous: Uplink): void {
    Object.assign(this.counters, previous.counters);
    this.sender.continueFrom(previous.sender);
    this.echo.continueFrom(previous.echo);
  }

  /** The cloud topic and QoS a local topic maps to (first matching forward rule), if any. */
  route(localTopic: string): CloudRoute | undefined {
    return this.rules.route(localTopic);
  }

  /**
   * Appends a message for the cloud to the outbox. `onSettled` runs once it is on disk, or with
   * the reason when the outbox dropped it first (see MessageBuffer.append).
   */
  enqueue(route: CloudRoute, payload: Buffer, retain: boolean, onSettled?: Settled): void {
    const message: OutboxMessage = { topic: route.topic, payload, qos: route.qos, retain };
    this.outbox.append(message, onSettled);
  }

  start(): void {
    this.sender.start();
    this.log.info({ clientId: this.connection.clientId, backlog: this.outbox.length }, 'connecting to the cloud broker');
    this.connection.start();
  }

  get stats(): UplinkStats {
    const { sent, acknowledged, rejected, inFlight } = this.sender.stats;
    // (In the order of before the split: /api/status and the "gateway stopped" line show it.)
    const stats: UplinkStats = { connected: this.connection.connected, sent, acknowledged, rejected, ...this.counters, inFlight };
    const lastError = this.connection.lastError;
    if (lastError !== undefined) stats.lastError = lastError;
    return stats;
  }

  private onConnected(connack: Connack): void {
    if (connack.afterFailure || this.counters.reconnects > 0) this.counters.reconnects++;
    const backlog = this.outbox.length;
    // A link per connection: answers of a connection that is gone are told apart.
    const link: Link = {
      publish: (message, done) => {
        this.echo.sending(message);
        this.connection.publish(message.topic, message.payload, { qos: message.qos, retain: message.retain }, done);
      },
    };
    // Birth first, before the backlog. Its PUBACK proves the link carries traffic (see Sender.linkProven).
    this.connection.publish(this.statusTopic, 'online', { qos: 1, retain: true }, (error) => {
      if (!error) this.sender.linkProven(link);
    });
    if (this.rules.receives) this.connection.subscribe(this.rules.subscriptions(this.protocolVersion));
    this.sender.connected(link, connack.receiveMaximum);
    this.log.info(
      { backlog, sessionPresent: connack.sessionPresent, window: this.sender.window, probing: this.sender.probing },
      backlog > 0 ? `connected to the cloud broker; replaying ${backlog} buffered messages` : 'connected to the cloud broker',
    );
  }

  private onClosed(wasConnected: boolean): void {
    const inFlight = this.sender.stats.inFlight;
    // What was acknowledged is deleted now; what was in flight is sent again after the reconnect.
    this.sender.disconnected();
    if (wasConnected) this.log.warn({ inFlight, backlog: this.outbox.length, error: this.connection.lastError }, 'disconnected from the cloud broker; buffering in the outbox');
  }

  /** A message from the cloud on a "receive" topic: into the integrated broker under its local name. */
  private onCloudMessage(topic: string, payload: Buffer, retain: boolean): void {
    if (this.stopping || this.echo.isEcho(topic, payload)) return;
    const localTopic = this.rules.localTopic(topic);
    if (localTopic === undefined) return;
    this.counters.received++;
    this.downlink?.(localTopic, payload, retain);
    // Published by the gateway itself (no client), so the forward path never sends it back up.
    this.broker.publishNow(localTopic, payload, { qos: 1, retain }).catch((error: unknown) => this.log.error({ topic: localTopic, error: errorMessage(error) }, 'could not publish a cloud message locally'));
  }

  /**
   * Says "offline" on the cloud, closes the connection. Unacknowledged messages stay in the outbox.
   * Afterwards this uplink touches neither the outbox nor the broker again, so another one can
   * take over the same outbox (a reload).
   */
  async stop(timeoutMs = 2000): Promise<void> {
    this.stopping = true;
    this.sender.pause();
    await this.connection.stop(timeoutMs, { topic: this.statusTopic, payload: 'offline' });
    this.sender.stop();
  }
}

/** The URL without user:password, for logs. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}
