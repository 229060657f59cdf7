// The cloud uplink: drains the outbox to the cloud broker (mqtt.js) at QoS 1 with a bounded
// in-flight window, deletes each message only after its PUBACK, and brings cloud topics (commands)
// down into the integrated broker. Reconnects with capped exponential back-off and jitter.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, type SecureContextOptions } from 'node:tls';
import mqtt, { Store, type IClientOptions, type IClientPublishOptions, type MqttClient, type Packet } from 'mqtt';
import type { Logger } from 'pino';
import { backoffDelay } from '../util/backoff.js';
import type { IntegratedBroker } from '../broker/broker.js';
import type { Config } from '../config/schema.js';
import { errorMessage } from '../util/errors.js';
import { Fifo } from '../util/fifo.js';
import type { Outbox, OutboxMessage, Settled, StoredMessage } from './outbox.js';
import { compileTopicTemplate, topicMatches } from '../northbound/topics.js';

export type UplinkConfig = NonNullable<Config['uplink']>;
type BridgeRule = UplinkConfig['forward'][number];

/** Where a local topic goes on the cloud, when a forward rule takes it. */
export interface CloudRoute {
  topic: string;
  qos: 0 | 1;
}

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

/** Acknowledged ids are deleted from the outbox in batches: one transaction per batch. */
const ACK_FLUSH_SIZE = 500;
const ACK_FLUSH_INTERVAL_MS = 20;
/** A connection that stays up this long without trouble resets the back-off. */
const STABLE_AFTER_MS = 10_000;
/** How long a message sent to the cloud is recognized when the cloud sends it back (3.1.1). */
const ECHO_TTL_MS = 60_000;
const MAX_ECHOES = 10_000;
/**
 * Messages waiting this long for a PUBACK, with not one PUBACK in between, make the cloud "stalled"
 * (a warning, once): the keep-alive, at most 30 s. A broker that answers pings but takes no
 * messages keeps the connection up forever; a frozen one is dropped by mqtt.js after 1.5
 * keep-alives, so the warning comes first.
 */
const STALL_AFTER_MAX_MS = 30_000;
/** Messages found older than maxAge that one pump() skips before it lets the event loop go on. */
const MAX_EXPIRED_PER_PUMP = 10_000;
/** Connections lost under the same lone message before it is set aside. */
const PROBE_STRIKES = 3;

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

export class Uplink {
  readonly statusTopic: string;
  /** Of the TLS files this uplink's connections use (see tlsFilesFingerprint). */
  readonly tlsFingerprint: string;
  private readonly config: UplinkConfig;
  private readonly outbox: Outbox;
  private readonly broker: IntegratedBroker;
  private readonly log: Logger;
  private readonly clientOptions: IClientOptions;
  private client: MqttClient | undefined;
  private connected = false;
  private stopping = false;
  /** Bumped on every (re)connect; callbacks of an older connection are ignored. */
  private epoch = 0;
  private failedAttempts = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private maintenanceTimer: NodeJS.Timeout | undefined;
  // Sending state of the current connection.
  private readonly inFlight = new Map<number, StoredMessage>();
  private liveInFlight = 0;
  private backlog = new Fifo<StoredMessage>();
  private live = new Fifo<StoredMessage>();
  private backlogCursor = 0;
  private liveCursor = 0;
  /** Ids at or above this were appended after the connection came up ("live"). */
  private liveStart = Number.MAX_SAFE_INTEGER;
  private backlogDone = true;
  private acked: number[] = [];
  private ackTimer: NodeJS.Timeout | undefined;
  private readonly counters = { sent: 0, acknowledged: 0, rejected: 0, reconnects: 0, received: 0 };
  /** Messages sent on topics the receive rules also take back, by topic and payload hash → expiry. */
  private readonly echoes = new Map<string, { count: number; expires: number }>();
  private readonly ownTopics = new Map<string, boolean>();
  private readonly echoIds = new Set<number>();
  /** Sees every cloud message under its local topic before it goes into the integrated broker (the write path picks its commands). */
  downlinkHook: ((localTopic: string, payload: Buffer, retain: boolean) => void) | undefined;
  private lastError: string | undefined;
  private loggedErrors = new Set<string>();
  /** The send window of the current connection: inFlight, or less if the broker says so. */
  private window: number;
  private ackedOnConnection = 0;
  private stableTimer: NodeJS.Timeout | undefined;
  /** The message suspected of making the broker close the connection, sent alone until it passes. */
  private probe: { id: number; strikes: number } | undefined;
  private statusAcked = false;
  /** Since when the messages in flight have waited without any PUBACK (undefined: none in flight). */
  private waitingSince: number | undefined;
  /** A stall that was logged: when it began. Cleared (with an info line) by the next PUBACK. */
  private stalledSince: number | undefined;
  private readonly stallAfterMs: number;
  private stallTimer: NodeJS.Timeout | undefined;

  constructor(config: UplinkConfig, gatewayName: string, defaultStatusTopic: string, outbox: Outbox, broker: IntegratedBroker, log: Logger) {
    const tls = readTls(config.tls);
    this.config = config;
    this.outbox = outbox;
    this.broker = broker;
    this.log = log.child({ uplink: redactUrl(config.url) });
    this.statusTopic = compileTopicTemplate(config.statusTopic ?? defaultStatusTopic).render({ gateway: gatewayName });
    this.clientOptions = {
      clientId: config.clientId ?? `plc2mqtt-${gatewayName}`,
      protocolVersion: config.protocolVersion,
      clean: config.cleanSession,
      // MQTT 5 ends a session when the connection closes unless it asks for an expiry interval.
      ...(config.protocolVersion === 5 && !config.cleanSession ? { properties: { sessionExpiryInterval: Math.round(config.sessionExpiry / 1000) } } : {}),
      keepalive: Math.max(1, Math.round(config.keepalive / 1000)),
      // Reconnects are ours: exponential back-off with jitter instead of mqtt.js's fixed period.
      reconnectPeriod: 0,
      connectTimeout: 15_000,
      queueQoSZero: false,
      outgoingStore: new NoStore(),
      resubscribe: false,
      will: { topic: this.statusTopic, payload: Buffer.from('offline'), qos: 1, retain: true },
      // mqtt.js logs every packet through `debug`, which costs ~5% CPU even when off; DEBUG=mqttjs* still works.
      ...(process.env.DEBUG === undefined ? { log: () => undefined } : {}),
      ...(config.username !== undefined ? { username: config.username } : {}),
      ...(config.password !== undefined ? { password: config.password } : {}),
      ...tls.options,
    };
    this.tlsFingerprint = tls.fingerprint;
    this.window = config.inFlight;
    this.stallAfterMs = Math.min(config.keepalive, STALL_AFTER_MAX_MS);
  }

  /**
   * Takes over from the uplink this one replaces (a reload): its counters, so metrics stay
   * monotonic, and the commands it sent that the cloud may still echo back (3.1.1).
   */
  continueFrom(previous: Uplink): void {
    Object.assign(this.counters, previous.counters);
    for (const [key, echo] of previous.echoes) this.echoes.set(key, { ...echo });
    for (const id of previous.echoIds) this.echoIds.add(id);
  }

  /** The cloud topic and QoS a local topic maps to (first matching forward rule), if any. */
  route(localTopic: string): CloudRoute | undefined {
    for (const rule of this.config.forward) {
      if (!localTopic.startsWith(rule.localPrefix)) continue;
      const rest = localTopic.slice(rule.localPrefix.length);
      if (topicMatches(rule.topic, rest)) return { topic: rule.remotePrefix + rest, qos: rule.qos };
    }
    return undefined;
  }

  /**
   * Appends a message for the cloud to the outbox. `onSettled` runs once it is on disk, or with
   * the reason when the outbox dropped it first (see Outbox.append).
   */
  enqueue(route: CloudRoute, payload: Buffer, retain: boolean, onSettled?: Settled): void {
    const message: OutboxMessage = { topic: route.topic, payload, qos: route.qos, retain };
    this.outbox.append(message, onSettled);
  }

  /** Rows just committed to the outbox: straight into the send buffer when they fit (adopt). */
  private readonly onCommit = (committed: readonly StoredMessage[]): void => {
    this.adopt(committed);
    this.pump();
  };

  start(): void {
    this.outbox.onCommit = this.onCommit;
    this.log.info({ clientId: this.clientOptions.clientId, backlog: this.outbox.stats.messages }, 'connecting to the cloud broker');
    const client = mqtt.connect(this.config.url, this.clientOptions);
    this.client = client;
    client.on('connect', (connack) => this.onConnect(connack.sessionPresent, connack.properties?.receiveMaximum));
    client.on('close', () => this.onClose());
    client.on('error', (error) => this.noteError(errorMessage(error)));
    client.on('message', (topic, payload, packet) => this.onCloudMessage(topic, payload, packet.retain));
    this.maintenanceTimer = setInterval(() => this.outbox.expire(Date.now()), 10_000);
    this.maintenanceTimer.unref();
    this.stallTimer = setInterval(() => this.checkStall(), 1000);
    this.stallTimer.unref();
  }

  /** Logs once when messages have waited longer than stallAfterMs without a single PUBACK. */
  private checkStall(now = Date.now()): void {
    if (this.stalledSince !== undefined || this.waitingSince === undefined || this.inFlight.size === 0) return;
    if (now - this.waitingSince < this.stallAfterMs) return;
    this.stalledSince = this.waitingSince;
    this.log.warn(
      { seconds: Math.round((now - this.waitingSince) / 1000), inFlight: this.inFlight.size, window: this.window, backlog: this.outbox.stats.messages, connected: this.connected },
      `the cloud broker has acknowledged nothing for ${Math.round((now - this.waitingSince) / 1000)} s while ${this.inFlight.size} messages wait for their PUBACK${this.inFlight.size >= this.window ? ' (the in-flight window is full)' : ''}: it holds the connection but takes no messages; they stay in the outbox`,
    );
  }

  /** A PUBACK (positive or not) from the cloud: it is taking messages. */
  private noteAck(): void {
    const now = Date.now();
    this.waitingSince = this.inFlight.size > 0 ? now : undefined;
    if (this.stalledSince === undefined) return;
    this.log.info({ stalledSeconds: Math.round((now - this.stalledSince) / 1000) }, 'the cloud broker acknowledges again');
    this.stalledSince = undefined;
  }

  get stats(): UplinkStats {
    const stats: UplinkStats = { connected: this.connected, ...this.counters, inFlight: this.inFlight.size };
    if (this.lastError !== undefined) stats.lastError = this.lastError;
    return stats;
  }

  private onConnect(sessionPresent: boolean, receiveMaximum: number | undefined): void {
    // A handshake that completed after stop(): that connection is not used.
    if (this.stopping) return void this.client?.end(true);
    this.epoch++;
    this.connected = true;
    if (this.failedAttempts > 0 || this.counters.reconnects > 0) this.counters.reconnects++;
    this.ackedOnConnection = 0;
    // An MQTT 5 broker says how many unacknowledged QoS 1 messages it accepts from us.
    this.window = Math.max(1, Math.min(this.config.inFlight, receiveMaximum ?? Infinity));
    // Back-off and logged errors are reset only once the connection proved itself (see onAck),
    // not at CONNACK: a broker that accepts and then drops us must not get a reconnect storm.
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => this.connectionIsStable(), STABLE_AFTER_MS);
    const backlog = this.outbox.stats.messages;
    this.log.info({ backlog, sessionPresent, window: this.window, probing: this.probe !== undefined }, backlog > 0 ? `connected to the cloud broker; replaying ${backlog} buffered messages` : 'connected to the cloud broker');
    this.statusAcked = false;
    const epoch = this.epoch;
    // The status PUBACK proves the link carries traffic; only then can a lost connection be
    // blamed on a message (see suspectHead) and a suspected message be probed.
    this.client!.publish(this.statusTopic, 'online', { qos: 1, retain: true }, (error) => {
      if (error || epoch !== this.epoch) return;
      this.statusAcked = true;
      this.pump();
    });
    this.subscribeDownlink();
    this.resetSending();
    this.pump();
  }

  private onClose(): void {
    // After stop() the outbox may belong to another uplink already.
    if (this.stopping) return;
    const wasConnected = this.connected;
    this.connected = false;
    this.epoch++;
    clearTimeout(this.stableTimer);
    // What was acknowledged is deleted now; what was in flight is sent again after the reconnect.
    this.flushAcks();
    const inFlight = this.inFlight.size;
    if (wasConnected && inFlight > 0 && this.ackedOnConnection === 0 && this.statusAcked) this.suspectHead();
    // A stall that reached the threshold is said before the disconnect that may end it.
    this.checkStall();
    this.waitingSince = undefined;
    this.inFlight.clear();
    this.liveInFlight = 0;
    // Nothing is being sent now: the outbox bound may drop the oldest of everything again.
    this.outbox.readerThrough = 0;
    if (wasConnected && !this.stopping) this.log.warn({ inFlight, backlog: this.outbox.stats.messages, error: this.lastError }, 'disconnected from the cloud broker; buffering in the outbox');
    if (this.stopping) return;
    this.failedAttempts++;
    const delay = backoffDelay(this.failedAttempts, { initial: this.config.reconnect.initial, max: this.config.reconnect.max });
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => {
      if (!this.stopping) this.client?.reconnect();
    }, delay);
  }

  /** The connection has carried data (or stayed up quietly): now back-off and error logging start over. */
  private connectionIsStable(): void {
    clearTimeout(this.stableTimer);
    this.failedAttempts = 0;
    this.loggedErrors.clear();
    delete this.lastError;
    if (this.probe !== undefined) {
      this.log.info({ id: this.probe.id }, 'the message suspected of breaking the connection went through');
      this.probe = undefined;
    }
  }

  /**
   * The connection closed with messages in flight and not one acknowledged. Some brokers close the
   * connection on a message they refuse (mosquitto for an MQTT 5 ACL denial, AWS IoT for a policy
   * violation); resending it first forever would block the outbox. So the next connection sends
   * only the oldest message; if the connection dies under it three times, it is set aside as
   * rejected, loudly, and the rest flows again.
   */
  private suspectHead(): void {
    const head = Math.min(...this.inFlight.keys());
    // Strikes count only while probing: the message went out alone on a link that had just
    // acknowledged the status, and the broker closed the connection instead of acknowledging it.
    if (this.probe?.id !== head) {
      this.probe = { id: head, strikes: 0 };
      return;
    }
    if (this.inFlight.size !== 1) return;
    this.probe.strikes++;
    if (this.probe.strikes < PROBE_STRIKES) return;
    const message = this.inFlight.get(head)!;
    // Kept in the outbox's dead-letter table, not deleted: a person can look at it and resend it.
    if (this.outbox.deadLetter(head, 'the cloud broker closed the connection each time it was sent')) this.counters.rejected++;
    this.log.error(
      { topic: message.topic, bytes: message.payload.length, connections: this.probe.strikes, table: 'dead_letters' },
      'the cloud broker closed the connection every time this message was sent alone; it is set aside in the outbox\'s dead-letter table so the rest can flow (check the broker\'s policy/ACL for this topic)',
    );
    this.probe = undefined;
  }

  private noteError(message: string): void {
    this.lastError = message;
    // Once per distinct error per outage: a broker that stays down must not flood the log.
    if (this.loggedErrors.has(message)) return;
    this.loggedErrors.add(message);
    // Certificates, credentials and authorization need a person; a broker that is down does not.
    const needsFix = /certificate|ssl|tls|auth|not authori[sz]ed|bad user ?name|password|identifier rejected|self.signed/i.test(message);
    if (needsFix) this.log.error({ error: message, hint: 'check the uplink credentials, certificates and the broker policy' }, 'cloud broker connection error');
    else this.log.warn({ error: message }, 'cloud broker connection error');
  }

  private subscribeDownlink(): void {
    if (this.config.receive.length === 0) return;
    // MQTT 5 "No Local": the cloud does not send back what this gateway published (a forwarded
    // command would otherwise come down again and be written twice). 3.1.1 has no such option:
    // echoes are recognized in onCloudMessage instead.
    const filters = Object.fromEntries(this.config.receive.map((rule) => [rule.remotePrefix + rule.topic, { qos: rule.qos, ...(this.config.protocolVersion === 5 ? { nl: true } : {}) }]));
    this.client!.subscribe(filters, (error) => {
      if (error) this.noteError(`subscribing to ${Object.keys(filters).join(', ')} failed: ${errorMessage(error)}`);
    });
  }

  /** A message from the cloud on a "receive" topic: into the integrated broker under its local name. */
  private onCloudMessage(topic: string, payload: Buffer, retain: boolean): void {
    if (this.stopping || this.takeEcho(topic, payload)) return;
    const rule = this.config.receive.find((candidate: BridgeRule) => topic.startsWith(candidate.remotePrefix) && topicMatches(candidate.topic, topic.slice(candidate.remotePrefix.length)));
    if (!rule) return;
    this.counters.received++;
    const localTopic = rule.localPrefix + topic.slice(rule.remotePrefix.length);
    this.downlinkHook?.(localTopic, payload, retain);
    // Published by the gateway itself (no client), so the forward path never sends it back up.
    this.broker.publishNow(localTopic, payload, { qos: 1, retain }).catch((error: unknown) => this.log.error({ topic: localTopic, error: errorMessage(error) }, 'could not publish a cloud message locally'));
  }

  // ------------------------------------------------------------------ sending

  private resetSending(): void {
    this.backlog = new Fifo();
    this.live = new Fifo();
    this.backlogCursor = this.outbox.readerThrough = 0;
    this.backlogDone = false;
    if (this.config.liveShare > 0) {
      this.liveStart = this.outbox.nextId();
      this.liveCursor = this.liveStart - 1;
    } else {
      this.liveStart = Number.MAX_SAFE_INTEGER;
    }
  }

  /** Fills the in-flight window from the outbox. */
  private pump(): void {
    if (!this.connected || this.stopping) return;
    // Acknowledged but not yet deleted counts against the window too: after a power cut, at most
    // a window's worth of messages is sent twice.
    // While probing, the suspect goes out alone, and only once the status PUBACK proved the link.
    if (this.probe !== undefined && !this.statusAcked) return;
    const window = this.probe !== undefined ? 1 : this.window;
    // Nothing older than maxAge leaves, however long it waited in the outbox or in the send buffer.
    const tooOld = this.outbox.expiredBefore();
    const expired: number[] = [];
    // (mqtt-packet corks the socket per packet until the next tick, so one loop is one write.)
    while (this.inFlight.size + this.acked.length < window) {
      const next = this.nextMessage(window);
      if (!next) break;
      if (next.message.created >= tooOld) this.send(next.message, next.live);
      else if (expired.push(next.message.id) >= MAX_EXPIRED_PER_PUMP) {
        // A long outage may have left a backlog that is all too old: in slices, not one long turn.
        setImmediate(() => this.pump());
        break;
      }
    }
    if (expired.length > 0) this.outbox.remove(expired, 'expired');
  }

  private nextMessage(window: number): { message: StoredMessage; live: boolean } | undefined {
    const liveSlots = Math.floor(window * this.config.liveShare);
    const preferLive = this.config.liveShare > 0 && this.liveInFlight < liveSlots;
    if (preferLive) {
      const live = this.take(true);
      if (live) return { message: live, live: true };
    }
    const old = this.take(false);
    if (old) return { message: old, live: false };
    if (this.config.liveShare > 0) {
      const live = this.take(true);
      if (live) return { message: live, live: true };
    }
    return undefined;
  }

  /**
   * Rows the outbox just committed go straight into the send buffer when the reader is caught up
   * to exactly where they start, instead of being read back from SQLite (a third of the uplink's
   * CPU at 20k msg/s). Anything else is left for take() to read.
   */
  private adopt(committed: readonly StoredMessage[]): void {
    const first = committed[0];
    if (!first || !this.connected || this.stopping) return;
    const live = this.config.liveShare > 0;
    if ((live ? this.liveCursor : this.backlogCursor) !== first.id - 1) return;
    const buffer = live ? this.live : this.backlog;
    // Bounded like take(): a cloud slower than the plant must leave the backlog in SQLite, not in
    // memory (where rows a bound drops meanwhile would still be sent).
    if (buffer.length + committed.length > this.config.inFlight) return;
    for (const row of committed) buffer.push(row);
    if (live) this.liveCursor = committed.at(-1)!.id;
    else this.backlogCursor = this.outbox.readerThrough = committed.at(-1)!.id;
  }

  /** The next message of the backlog or of live data, refilling that buffer from the outbox. */
  private take(live: boolean): StoredMessage | undefined {
    const buffer = live ? this.live : this.backlog;
    if (buffer.length === 0) {
      if (!live && this.backlogDone) return undefined;
      // Caught up: nothing was committed past the cursor, so there is nothing to SELECT.
      if ((live ? this.liveCursor : this.backlogCursor) >= this.outbox.lastId && (live || this.config.liveShare === 0)) return undefined;
      const rows = live ? this.outbox.peek(this.liveCursor, this.config.inFlight) : this.outbox.peek(this.backlogCursor, this.config.inFlight, this.liveStart);
      if (rows.length === 0) {
        // The backlog only ends when it is split from live data; in FIFO mode it is all there is.
        if (!live && this.config.liveShare > 0) {
          this.backlogDone = true;
          this.log.info('backlog replayed');
        }
        return undefined;
      }
      for (const row of rows) buffer.push(row);
      if (live) this.liveCursor = rows.at(-1)!.id;
      else this.backlogCursor = this.outbox.readerThrough = rows.at(-1)!.id;
    }
    return buffer.shift();
  }

  /** Cloud topics this gateway both sends to and receives from (3.1.1 only; MQTT 5 uses No Local). */
  private receivesOwn(cloudTopic: string): boolean {
    if (this.config.protocolVersion === 5 || this.config.receive.length === 0) return false;
    let known = this.ownTopics.get(cloudTopic);
    if (known === undefined) {
      known = this.config.receive.some((rule) => cloudTopic.startsWith(rule.remotePrefix) && topicMatches(rule.topic, cloudTopic.slice(rule.remotePrefix.length)));
      if (this.ownTopics.size > 100_000) this.ownTopics.clear();
      this.ownTopics.set(cloudTopic, known);
    }
    return known;
  }

  private echoKey(topic: string, payload: Buffer): string {
    return `${topic}\u0000${createHash('sha1').update(payload).digest('base64')}`;
  }

  /** True when a cloud message is one this gateway sent itself within ECHO_TTL_MS (each send is taken back once). */
  private takeEcho(topic: string, payload: Buffer): boolean {
    if (this.echoes.size === 0) return false;
    const key = this.echoKey(topic, payload);
    const echo = this.echoes.get(key);
    if (echo === undefined) return false;
    if (--echo.count === 0) this.echoes.delete(key);
    return echo.expires >= Date.now();
  }

  private expectEcho(topic: string, payload: Buffer): void {
    const key = this.echoKey(topic, payload);
    const expires = Date.now() + ECHO_TTL_MS;
    const echo = this.echoes.get(key);
    if (echo) {
      // The same command twice (a button pressed twice): both come back.
      echo.count++;
      echo.expires = expires;
      return;
    }
    if (this.echoes.size >= MAX_ECHOES) {
      // Expired entries first; if all are current, the oldest ones (Map order is insertion order).
      const now = Date.now();
      for (const [old, entry] of this.echoes) if (entry.expires < now) this.echoes.delete(old);
      for (const old of this.echoes.keys()) {
        if (this.echoes.size < MAX_ECHOES) break;
        this.echoes.delete(old);
      }
    }
    this.echoes.set(key, { count: 1, expires });
  }

  private send(message: StoredMessage, live: boolean): void {
    // Once per message: a resend after a reconnect is the same message, and comes back at most once more.
    if (this.receivesOwn(message.topic) && !this.echoIds.has(message.id)) {
      if (this.echoIds.size >= MAX_ECHOES) this.echoIds.delete(this.echoIds.values().next().value!);
      this.echoIds.add(message.id);
      this.expectEcho(message.topic, message.payload);
    }
    const epoch = this.epoch;
    if (this.inFlight.size === 0) this.waitingSince = Date.now();
    this.inFlight.set(message.id, message);
    if (live) this.liveInFlight++;
    this.counters.sent++;
    const options: IClientPublishOptions = { qos: message.qos, retain: message.retain };
    this.client!.publish(message.topic, message.payload, options, (error) => {
      if (epoch !== this.epoch) return; // a callback of a connection that is gone; the message is resent
      this.inFlight.delete(message.id);
      if (live) this.liveInFlight--;
      const reasonCode = (error as { code?: unknown } | undefined)?.code;
      if (!error || (typeof reasonCode === 'number' && reasonCode >= 0x80)) this.noteAck();
      if (error) {
        if (typeof reasonCode === 'number' && reasonCode >= 0x80) {
          // The broker refused this message for good (MQTT 5 reason code): it would block the queue forever.
          this.counters.rejected++;
          this.outbox.remove([message.id], 'rejected');
          this.noteError(`the cloud broker refused a message on "${message.topic}": ${errorMessage(error)}`);
        }
        // Anything else is a connection problem: the message stays in the outbox and is resent.
      } else {
        this.counters.acknowledged++;
        this.ackedOnConnection++;
        if (this.ackedOnConnection === 1) this.connectionIsStable();
        this.acked.push(message.id);
        if (this.acked.length >= Math.min(ACK_FLUSH_SIZE, Math.ceil(this.window / 2))) this.flushAcks();
        else this.ackTimer ??= setTimeout(() => this.flushAcks(), ACK_FLUSH_INTERVAL_MS);
      }
      this.pump();
    });
  }

  private flushAcks(): void {
    clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    if (this.acked.length === 0) return;
    const ids = this.acked;
    this.acked = [];
    this.outbox.remove(ids);
    this.pump();
  }

  /**
   * Says "offline" on the cloud, closes the connection. Unacknowledged messages stay in the outbox.
   * Afterwards this uplink touches neither the outbox nor the broker again, so another one can
   * take over the same outbox (a reload).
   */
  async stop(timeoutMs = 2000): Promise<void> {
    this.stopping = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.stableTimer);
    clearInterval(this.maintenanceTimer);
    clearInterval(this.stallTimer);
    if (this.outbox.onCommit === this.onCommit) this.outbox.onCommit = undefined;
    const client = this.client;
    if (client && this.connected) {
      await Promise.race([client.publishAsync(this.statusTopic, 'offline', { qos: 1, retain: true }).catch(() => undefined), sleep(timeoutMs)]);
    }
    this.flushAcks();
    // Callbacks of this connection (late PUBACKs, errors) are ignored from here on.
    this.epoch++;
    // Forced: no waiting for mqtt.js' record of messages in flight (it keeps those of connections
    // that broke); they are in the outbox and the next connection sends them.
    if (client) await Promise.race([client.endAsync(true), sleep(timeoutMs)]);
    this.connected = false;
    this.inFlight.clear();
    this.outbox.readerThrough = 0;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());

/**
 * What the uplink's CA, certificate and key files hold now: a reload restarts the cloud
 * connection when they were rewritten in place (certificate rotation), even if the config is the
 * same. Compared with Uplink.tlsFingerprint, which is of the bytes that connection uses.
 */
export function tlsFilesFingerprint(tls: UplinkConfig['tls']): string {
  const contents = [tls?.ca, tls?.cert, tls?.key].flatMap((path): Array<Buffer | string> => {
    if (path === undefined) return [];
    try {
      return [readFileSync(path)];
    } catch {
      return [`unreadable ${path}`];
    }
  });
  return fingerprintOf(contents);
}

/** One hash over the CA, certificate and key contents, in that order (both sides of the comparison). */
function fingerprintOf(contents: ReadonlyArray<Buffer | string>): string {
  const hash = createHash('sha256');
  for (const content of contents) hash.update(content);
  return hash.digest('base64');
}

/**
 * TLS options for mqtt.js from the config's file paths, and the fingerprint of the bytes read.
 * Errors name the file; a certificate and key that do not belong together are refused here, not
 * at every connection attempt.
 */
function readTls(tls: UplinkConfig['tls']): { options: Partial<IClientOptions>; fingerprint: string } {
  if (!tls) return { options: {}, fingerprint: fingerprintOf([]) };
  const read = (what: string, path: string | undefined): Buffer | undefined => {
    if (path === undefined) return undefined;
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(`uplink.tls.${what}: cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? errorMessage(error)}`);
    }
  };
  const options: Partial<IClientOptions> = { rejectUnauthorized: tls.rejectUnauthorized };
  const ca = read('ca', tls.ca);
  const cert = read('cert', tls.cert);
  const key = read('key', tls.key);
  if (ca) options.ca = ca;
  if (cert) options.cert = cert;
  // An encrypted key travels with its passphrase in the form node's tls accepts.
  if (key) options.key = tls.passphrase === undefined ? key : [{ pem: key, passphrase: tls.passphrase }];
  if (tls.servername !== undefined) options.servername = tls.servername;
  try {
    createSecureContext({ ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(options.key ? { key: options.key as SecureContextOptions['key'] } : {}) });
  } catch (error) {
    throw new Error(`uplink.tls: ${tls.cert ?? ''} ${tls.key ?? ''}: ${errorMessage(error)} (a certificate and its own key, in PEM, and the passphrase of an encrypted key)`);
  }
  return { options, fingerprint: fingerprintOf([ca, cert, key].filter((content) => content !== undefined)) };
}

/** The URL without user:password, for logs. */
export function redactUrl(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}
