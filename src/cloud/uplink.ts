// The cloud uplink, composed: messages for the cloud go into the outbox (outbox.ts); the sender
// (sender.ts) drains it over the connection (connection.ts), each message deleted only after its
// PUBACK (QoS 0: after a ping round trip that follows it, see checkpoint.ts). What the messages
// look like is the northbound format's business (northbound/format.ts): its records are encoded
// here, between the sender and the connection, at send time and in the connection's session; after
// every connect its subscriptions are made, then its births go out before the backlog (a format
// may hold them: Sparkplug waits for its primary host), its will goes with every CONNECT and its
// goodbye at a stop; what comes down from the cloud is decoded by it into local publishes (into
// the integrated broker, without the gateway's own messages coming back: echo.ts), writes, a
// rebirth or a reconnect. Messages of local clients on forwarded topics (bridge-rules.ts) pass
// through untouched.
import type { Logger } from 'pino';
import type { IntegratedBroker } from '../broker/broker.js';
import {
  RecordKind,
  type CloudMessage,
  type DeviceRecorder,
  type DeviceReport,
  type DownlinkAction,
  type FormatSession,
  type NorthboundFormat,
  type Recorder,
  type Report,
} from '../northbound/format.js';
import { errorMessage } from '../util/errors.js';
import { BridgeRules, type CloudRoute, type UplinkConfig } from './bridge-rules.js';
import type { MessageBuffer, OutboxMessage, Settled, StoredMessage } from './buffer.js';
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

/** A write the format decoded from a cloud command (not a local topic: Sparkplug's DCMD). */
export type DownlinkWrite = Extract<DownlinkAction, { kind: 'write' }>;

/** Where the uplink hands what comes down from the cloud (given at construction: the write path). */
export interface DownlinkHandlers {
  local?: Downlink;
  write?: (write: DownlinkWrite) => void;
}

/** The session of one connect attempt (see FormatSession). */
class ConnectionSession implements FormatSession {
  connectedAt = 0;
  /** The link of the connection, once connected. */
  link: Link | undefined;
  /** The births went out (births(session) gave them): the sender runs. */
  born = false;
  /** The broker accepted its CONNECT (CONNACK): its will is registered there. */
  accepted = false;
  /** When the first births went out: rows stored before are history (they may wait after the CONNACK for a primary host). */
  bornAt = Infinity;
  private seq = 0;

  constructor(readonly attempt: number) {}

  nextSeq(): number {
    return this.seq++;
  }

  peekSeq(): number {
    return this.seq;
  }

  resetSeq(): void {
    this.seq = 0;
  }

  historical(stored: StoredMessage): boolean {
    return stored.created < this.bornAt;
  }
}

/** A row the format cannot encode is refused for good (a reason code ≥ 0x80, as an MQTT 5 refusal): never sent, it would block the queue. */
function unencodable(format: NorthboundFormat, stored: StoredMessage): Error {
  return Object.assign(
    new Error(`the ${format.name} format cannot encode outbox row ${stored.id} (kind ${stored.kind ?? RecordKind.MESSAGE})`),
    { code: 0x80 },
  );
}

/**
 * Messages waiting this long for a PUBACK, with not one PUBACK in between, make the cloud "stalled"
 * (a warning, once): the keep-alive, at most 30 s. A broker that answers pings but takes no
 * messages keeps the connection up forever; a frozen one is dropped by mqtt.js after 1.5
 * keep-alives, so the warning comes first.
 */
const STALL_AFTER_MAX_MS = 30_000;

export class Uplink {
  /** The northbound format of this uplink's connections. */
  readonly format: NorthboundFormat;
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
  private readonly downlink: DownlinkHandlers;
  /** The session of the current connect attempt (a new one before every CONNECT). */
  private session: ConnectionSession | undefined;
  /** The will of the current session's CONNECT. */
  private sessionWill: CloudMessage | undefined;
  private attempts = 0;
  private receiveMaximum: number | undefined;
  private stopping = false;
  private readonly counters = { reconnects: 0, received: 0 };

  constructor(
    config: UplinkConfig,
    gatewayName: string,
    format: NorthboundFormat,
    outbox: MessageBuffer,
    broker: IntegratedBroker,
    log: Logger,
    downlink: DownlinkHandlers = {},
  ) {
    const tls = readTls(config.tls);
    this.tlsFingerprint = tls.fingerprint;
    this.format = format;
    this.outbox = outbox;
    this.broker = broker;
    this.downlink = downlink;
    this.log = log.child({ uplink: redactUrl(config.url) });
    this.rules = new BridgeRules(config);
    this.protocolVersion = config.protocolVersion;
    this.echo = new EchoFilter(this.rules, config.protocolVersion);
    // Sparkplug needs a clean session on every connect, whatever cleanSession says.
    const connectionConfig = format.session === 'clean' ? { ...config, cleanSession: true } : config;
    this.connection = new CloudConnection(
      connectionConfig,
      { clientId: config.clientId ?? `plc2mqtt-${gatewayName}`, will: () => this.willOfAttempt(), tls: tls.options },
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
      {
        inFlight: config.inFlight,
        liveShare: config.liveShare,
        maxAge: config.outbox.maxAge,
        stallAfter: Math.min(config.keepalive, STALL_AFTER_MAX_MS),
      },
      this.log,
      {
        firstAcknowledgement: () => this.connection.stable(),
        refused: (message, error) =>
          this.connection.noteError(`the cloud broker refused a message on "${message.topic}": ${errorMessage(error)}`),
      },
    );
    format.attach?.({
      rebirth: (reason) => this.rebirth(reason),
      publishLive: (build) => {
        const session = this.session;
        if (!session?.born || !session.link || !this.connection.connected || this.stopping) return;
        const message = build(session);
        if (message) this.connection.publish(message.topic, message.payload, { qos: message.qos, retain: message.retain }, () => undefined);
      },
    });
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

  /**
   * The cloud topic and QoS of a local client's message on `localTopic` (first matching forward
   * rule), if any: such messages pass through as they are, whatever the format.
   */
  route(localTopic: string): CloudRoute | undefined {
    return this.rules.route(localTopic);
  }

  /**
   * Appends a local client's message for the cloud to the outbox, as a finished message.
   * `onSettled` runs once it is on disk, or with the reason when the outbox dropped it first (see
   * MessageBuffer.append).
   */
  enqueue(route: CloudRoute, payload: Buffer, retain: boolean, onSettled?: Settled): void {
    const message: OutboxMessage = { topic: route.topic, payload, qos: route.qos, retain };
    this.outbox.append(message, onSettled);
  }

  /** How the gateway's reports on a local topic are recorded (see NorthboundFormat.recorder); look it up once per topic. */
  recorder(localTopic: string): Recorder | undefined {
    return this.format.recorder(localTopic);
  }

  /** Appends what the format records for a report, if anything. */
  record(recorder: Recorder, report: Report): void {
    const record = recorder(report);
    if (record) this.outbox.append(record);
  }

  /** How a device's cycles and losses are recorded (formats that send per device: Sparkplug); look it up once per device. */
  deviceRecorder(device: string): DeviceRecorder | undefined {
    return this.format.deviceRecorder?.(device);
  }

  /** Appends what the format records for a device's report, if anything. */
  recordDevice(recorder: DeviceRecorder, report: DeviceReport): void {
    const record = recorder(report);
    if (record) this.outbox.append(record);
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

  /**
   * The will of a connect attempt, from the format for the attempt's session. A new session (and
   * Sparkplug's next bdSeq) only once a broker accepted the last one's CONNECT: an attempt whose
   * TCP connect failed, or that the broker refused, registered no will, so the next attempt is the
   * same session ([tck-id-topics-nbirth-bdseq-increment] counts CONNECT packets; mqtt.js reports a
   * CONNECT as written even into a socket whose connect then fails).
   */
  private willOfAttempt(): CloudMessage {
    if (!this.session || !this.sessionWill || this.session.accepted) {
      const session = this.newSession();
      this.sessionWill = this.format.will(session);
    }
    return this.sessionWill;
  }

  /** A session begins. */
  private newSession(): ConnectionSession {
    this.session = new ConnectionSession(++this.attempts);
    return this.session;
  }

  private onConnected(connack: Connack): void {
    if (connack.afterFailure || this.counters.reconnects > 0) this.counters.reconnects++;
    const backlog = this.outbox.length;
    const session = this.session ?? this.newSession();
    session.accepted = true;
    session.connectedAt = Date.now();
    // (A session is one CONNECT; should one be taken up again, nothing of its births holds.)
    session.born = false;
    session.bornAt = Infinity;
    const format = this.format;
    // A link per connection: answers of a connection that is gone are told apart. Between the
    // sender and the connection, a format's record becomes its message now, in this session;
    // finished messages (kind 0) pass through untouched.
    const link: Link = {
      publish: (stored, done) => {
        if (stored.kind === undefined || stored.kind === RecordKind.MESSAGE) {
          this.echo.sending(stored);
          return this.connection.publish(stored.topic, stored.payload, { qos: stored.qos, retain: stored.retain }, done);
        }
        let encoded: ReturnType<NorthboundFormat['encode']>;
        try {
          encoded = format.encode(stored, session);
        } catch (error) {
          this.log.error(
            { id: stored.id, error: errorMessage(error) },
            'the format failed to encode an outbox row: it is refused (counted, never sent)',
          );
          encoded = undefined;
        }
        if (!encoded) return done(unencodable(format, stored));
        const messages = Array.isArray(encoded) ? encoded : [encoded];
        // Nothing to send on this session: settled now.
        if (messages.length === 0) return done();
        // Several messages (e.g. a device's birth, then its data): the row is settled with the
        // last one, which is confirmed after the others (one connection, in order), or with the first error.
        let failed = false;
        messages.forEach((message, index) => {
          this.echo.sending({ id: stored.id, topic: message.topic, payload: message.payload });
          this.connection.publish(message.topic, message.payload, { qos: message.qos, retain: message.retain }, (error) => {
            if (failed) return;
            if (error) {
              failed = true;
              done(error);
            } else if (index === messages.length - 1) done();
          });
        });
      },
    };
    session.link = link;
    // Subscriptions first: a Sparkplug host may answer the births with a command at once (NCMD
    // must be subscribed before NBIRTH), and the primary host's STATE decides when births go out.
    const subscriptions = format.subscriptions(this.protocolVersion);
    if (Object.keys(subscriptions).length > 0) this.connection.subscribe(subscriptions);
    this.receiveMaximum = connack.receiveMaximum;
    // Births, before the backlog; then the sender. A format may say "not yet" (see NorthboundFormat.births).
    const waiting = !this.beginSession(session);
    this.log.info(
      { backlog, sessionPresent: connack.sessionPresent, window: this.sender.window, probing: this.sender.probing },
      waiting
        ? `connected to the cloud broker; the ${format.name} format holds the births and ${backlog} buffered messages until it may send (see the next lines)`
        : backlog > 0
          ? `connected to the cloud broker; replaying ${backlog} buffered messages`
          : 'connected to the cloud broker',
    );
  }

  /** Publishes the births and starts the sender on `session`, if the format gives its births now; false when it says "not yet". */
  private beginSession(session: ConnectionSession): boolean {
    const births = this.format.births(session);
    if (!births) return false;
    session.born = true;
    session.bornAt = Date.now();
    this.publishBirths(births, session.link);
    this.sender.connected(session.link!, this.receiveMaximum);
    return true;
  }

  /** Devices came, went or changed (a reload): the format may declare them again (Sparkplug: a rebirth). */
  devicesChanged(): void {
    this.format.devicesChanged?.();
  }

  /** Births again (or at last) on the current session, when it is connected. */
  private rebirth(reason: string): void {
    const session = this.session;
    if (!session?.link || !this.connection.connected || this.stopping) return;
    if (!session.born) {
      if (this.beginSession(session)) this.log.info({ format: this.format.name, reason }, 'births published; sending to the cloud');
      return;
    }
    this.log.info({ format: this.format.name, reason }, 'publishing the births again');
    // Synchronous, between two rows of the sender: nothing of this session goes out in between,
    // and what follows carries the sequence numbers after the births'.
    const births = this.format.births(session);
    if (births) this.publishBirths(births);
  }

  /** The format asks for a new connection (Sparkplug: its primary host went offline): goodbye, disconnect, connect again. */
  private reconnect(reason: string): void {
    const session = this.session;
    if (!session?.link || !this.connection.connected || this.stopping) return;
    this.log.warn({ format: this.format.name, reason }, 'leaving the cloud broker and connecting again; buffering in the outbox');
    // No more rows on this connection; what is in flight is sent again on the next (and is not to
    // blame for this disconnect).
    this.sender.disconnected({ blameless: true });
    session.link = undefined;
    this.connection.cycle(this.format.goodbye(session), this.format.disconnectReason);
  }

  private onClosed(wasConnected: boolean): void {
    if (this.session) this.session.link = undefined;
    const inFlight = this.sender.stats.inFlight;
    // What was acknowledged is deleted now; what was in flight is sent again after the reconnect.
    this.sender.disconnected();
    if (wasConnected)
      this.log.warn(
        { inFlight, backlog: this.outbox.length, error: this.connection.lastError },
        'disconnected from the cloud broker; buffering in the outbox',
      );
  }

  private publishBirths(births: CloudMessage[], link?: Link): void {
    births.forEach((birth, index) => {
      this.connection.publish(birth.topic, birth.payload, { qos: birth.qos, retain: birth.retain }, (error) => {
        if (!error && index === 0 && link) this.sender.linkProven(link);
      });
    });
  }

  /** A message from the cloud on one of the format's subscriptions: what the format says it means. */
  private onCloudMessage(topic: string, payload: Buffer, retain: boolean): void {
    if (this.stopping || this.echo.isEcho(topic, payload)) return;
    const actions = this.format.decodeDownlink(topic, payload, retain);
    if (actions.length === 0) return;
    this.counters.received++;
    for (const action of actions) {
      if (action.kind === 'local') {
        this.downlink.local?.(action.topic, action.payload, action.retain);
        // Published by the gateway itself (no client), so the forward path never sends it back up.
        this.broker
          .publishNow(action.topic, action.payload, { qos: 1, retain: action.retain })
          .catch((error: unknown) =>
            this.log.error({ topic: action.topic, error: errorMessage(error) }, 'could not publish a cloud message locally'),
          );
      } else if (action.kind === 'write') {
        if (this.downlink.write) this.downlink.write(action);
        else this.log.warn({ device: action.device, tag: action.tag }, 'a write from the cloud, but nothing takes writes from this uplink');
      } else if (action.kind === 'rebirth') this.rebirth('asked by the cloud');
      else this.reconnect(action.reason);
    }
  }

  /**
   * Says the format's goodbye (JSON: "offline") on the cloud, closes the connection. Unacknowledged messages stay in the outbox.
   * Afterwards this uplink touches neither the outbox nor the broker again, so another one can
   * take over the same outbox (a reload).
   */
  async stop(timeoutMs = 2000): Promise<void> {
    this.stopping = true;
    this.format.detach?.();
    this.sender.pause();
    await this.connection.stop(timeoutMs, this.session && this.format.goodbye(this.session), this.format.disconnectReason);
    this.sender.stop();
  }
}

/** The URL without user:password, for logs. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    parsed.username = '';
    parsed.password = '';
    // Query parameters may carry credentials too (wss://…?password=…).
    parsed.search = '';
    return parsed.href.replace(/\/$/, url.endsWith('/') ? '/' : '');
  } catch {
    // Not a URL the parser takes: everything up to the authority's last "@" goes.
    return url.replace(/\/\/[^/]*@/, '//').replace(/\?.*$/, '');
  }
}
