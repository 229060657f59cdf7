// MQTT 5 for the integrated broker. aedes 1.2 accepts MQTT 3.1/3.1.1 CONNECTs only, but its
// handlers carry what MQTT 5 adds: a packet's properties travel with it to every subscriber and
// into the session store, and subscriptions keep No Local and Retain As Published. So each
// connection is looked at once, at its CONNECT: 3.1/3.1.1 clients get their own stream handed to
// aedes untouched; an MQTT 5 client gets a bridge in between, which
// - parses the client's packets as MQTT 5, checks what aedes does not (topic aliases, Receive
//   Maximum, AUTH, ill-formed strings) and hands them on as MQTT 5 bytes, the CONNECT as 3.1.1;
// - takes aedes' packets as objects (aedes-internals.ts divertPacketWrites) and writes them as
//   MQTT 5, adding what is per connection or per delivery: reason codes, CONNACK properties,
//   subscription identifiers, the remaining message expiry, the client's Maximum Packet Size.
// The broker (broker.ts) reads the session side of the CONNECT (Clean Start, Session Expiry, will
// delay) through mqtt5ConnectOf, and answers publishes and subscriptions with reason codes through
// refuseMqtt5Publish / refuseMqtt5Subscription.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Duplex } from 'node:stream';
import type { Aedes, Client } from 'aedes';
import {
  generate,
  parser,
  type IConnackPacket,
  type IConnectPacket,
  type IPublishPacket,
  type ISubackPacket,
  type ISubscribePacket,
  type Packet,
} from 'mqtt-packet';
import { clientParser, divertPacketWrites, incomingQoS2Held, parseAsMqtt5, subscriptionQoS } from './aedes-internals.js';
import { refuseIllFormedStrings } from './mqtt-strings.js';
import { filterCovers } from './security.js';

/** Properties of an MQTT 5 PUBLISH: responseTopic, correlationData, contentType, userProperties… */
export type PublishProperties = NonNullable<IPublishPacket['properties']>;

/** Subscription identifiers of the sessions: client id → filter → identifier. Session state. */
export type SubscriptionIds = Map<string, Map<string, number>>;

export interface Mqtt5Options {
  /** broker.limits.maxPacketSize: announced to MQTT 5 clients as their Maximum Packet Size. */
  maxPacketSize: number;
  /** broker.limits.maxInflight: announced as Receive Maximum and enforced (DISCONNECT 0x93). */
  receiveMaximum?: number;
  /** broker.limits.keepAlive (ms): a keep-alive outside is replaced (CONNACK Server Keep Alive). */
  keepAlive?: { min: number; max: number };
  /** broker.limits.maxSessionExpiry in seconds: longer Session Expiry Intervals are cut to it. */
  maxSessionExpiry?: number;
  /** Where the sessions' subscription identifiers are kept (shared by the broker's connections). */
  subscriptionIds?: SubscriptionIds;
  /** A socket that has not sent the start of a CONNECT by then is closed (aedes' connectTimeout). */
  connectTimeoutMs?: number;
}

/** The session side of an MQTT 5 CONNECT (and of its DISCONNECT), for the broker. */
export interface Mqtt5Connect {
  cleanStart: boolean;
  /** Session Expiry Interval in seconds, after broker.limits.maxSessionExpiry. */
  sessionExpiry: number;
  /** Will Delay Interval in seconds (0: the will goes when the connection ends). */
  willDelay: number;
  /** The will's properties as its PUBLISH carries them (no Will Delay Interval). */
  willProperties?: PublishProperties;
}

const V5 = { protocolVersion: 5 };
const V4 = { protocolVersion: 4 };
/** Topic aliases a client may define; each is one map entry per connection. */
const TOPIC_ALIAS_MAXIMUM = 64;
/** After the broker side is done, how long a client may take to close its end. */
const CLOSE_GRACE_MS = 5_000;
/** The largest Maximum Packet Size / Session Expiry MQTT 5 can express. */
const MAX_VARIABLE_INT = 268_435_455;
const MAX_FOUR_BYTE_INT = 0xffff_ffff;

// MQTT 5 reason codes used here.
export const MALFORMED_PACKET = 0x81;
const PROTOCOL_ERROR = 0x82;
export const NOT_AUTHORIZED = 0x87;
const BAD_USER_NAME_OR_PASSWORD = 0x86;
const BAD_AUTHENTICATION_METHOD = 0x8c;
const CLIENT_IDENTIFIER_NOT_VALID = 0x85;
const RECEIVE_MAXIMUM_EXCEEDED = 0x93;
const TOPIC_ALIAS_INVALID = 0x94;
export const PACKET_TOO_LARGE = 0x95;
/** PUBACK reason for a publish the gateway did not keep (its outbox dropped it); SUBACK reason over a limit. */
export const QUOTA_EXCEEDED = 0x97;
export const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9e;
const DISCONNECT_WITH_WILL = 0x04;
const SESSION_TAKEN_OVER = 0x8e;
const NO_SUBSCRIPTION_EXISTED = 0x11;
const PACKET_IDENTIFIER_NOT_FOUND = 0x92;
/** Packets held behind the Receive Maximum (one read's worth); a client that sends more is cut (0x93). */
const MAX_HELD = 10_000;
/** MQTT 3.1.1 CONNACK return code → MQTT 5 CONNACK reason code. */
const CONNACK_REASONS: Record<number, number> = { 0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: BAD_USER_NAME_OR_PASSWORD, 5: NOT_AUTHORIZED };
const UNSPECIFIED_ERROR = 0x80;

/**
 * Hands a new client connection to aedes: `stream` itself for MQTT 3.1/3.1.1, a bridge for MQTT 5.
 * Decided from the protocol level of the client's CONNECT.
 */
export function handleConnection(aedes: Pick<Aedes, 'handle'>, stream: Duplex, options: Mqtt5Options, request?: IncomingMessage): void {
  let head: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => stream.destroy(), options.connectTimeoutMs ?? 10_000).unref();
  const onError = () => stream.destroy();
  const stopWaiting = () => {
    clearTimeout(timer);
    stream.off('readable', onReadable);
    stream.off('close', stopWaiting);
    stream.off('error', onError);
  };
  const onReadable = () => {
    const chunk = stream.read() as Buffer | null;
    if (chunk === null) return;
    head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    const level = connectProtocolLevel(head);
    if (level === 'more') return;
    stopWaiting();
    if (level === 5) {
      const bridge = new Mqtt5Bridge(stream, options);
      const client = aedes.handle(bridge.aedesSide, request);
      // aedes parses on the next 'readable': its parser has seen nothing yet.
      parseAsMqtt5(client);
      bridge.start(client, head);
    } else {
      // Not MQTT 5 (or not MQTT at all: aedes refuses that itself). Put the bytes back; aedes reads
      // the socket from here on as if nobody had looked.
      stream.unshift(head);
      // aedes parses the bytes on the next 'readable', so its parser is still untouched here.
      refuseIllFormedStrings(clientParser(aedes.handle(stream, request)));
    }
  };
  stream.on('readable', onReadable);
  stream.once('close', stopWaiting);
  stream.on('error', onError);
}

/**
 * The protocol level byte of the CONNECT at the start of `bytes` (3, 4, 5), 'more' while the bytes
 * don't reach it yet, undefined when they don't start a CONNECT. At most 14 bytes are needed.
 */
export function connectProtocolLevel(bytes: Buffer): number | 'more' | undefined {
  if (bytes.length === 0) return 'more';
  if (bytes[0] !== 0x10) return undefined;
  let offset = 1;
  // Remaining length: 1–4 bytes, the last one without the continuation bit.
  for (let count = 1; ; count++) {
    if (offset >= bytes.length) return 'more';
    if ((bytes[offset++]! & 0x80) === 0) break;
    if (count === 4) return undefined;
  }
  if (offset + 2 > bytes.length) return 'more';
  const nameLength = bytes.readUInt16BE(offset);
  if (nameLength > 6) return undefined; // "MQTT" or "MQIsdp"
  const levelAt = offset + 2 + nameLength;
  return levelAt < bytes.length ? bytes[levelAt] : 'more';
}

// ---- what the broker asks of a connection ------------------------------------------------------

/** The bridge of each connection, by aedes' side of it (`client.conn`) and by the client's own stream. */
const bridges = new WeakMap<object, Mqtt5Bridge>();
const clientBridges = new WeakMap<object, Mqtt5Bridge>();
/** The session side of the client's CONNECT when it speaks MQTT 5 (`client.conn`); undefined for 3.1.1. */
export function mqtt5ConnectOf(conn: object): Mqtt5Connect | undefined {
  return bridges.get(conn)?.connect;
}

/** The Receive Maximum an MQTT 5 client announced in its CONNECT (unacknowledged QoS 1/2 it accepts), if any. */
export function clientReceiveMaximum(conn: object): number | undefined {
  return bridges.get(conn)?.clientReceiveMaximum;
}

/** Bytes written to a client (`client.conn`) that its connection has not taken yet. */
export function bufferedToClient(conn: object): number {
  const stream = bridges.get(conn)?.clientStream ?? (conn as { writableLength?: number });
  return stream.writableLength ?? 0;
}

/**
 * Makes aedes' coming PUBACK (QoS 1) or PUBREC (QoS 2) for `messageId` on this connection a negative
 * one with `reasonCode`. False for 3.1/3.1.1 connections, which have no negative acknowledgement.
 */
export function refuseMqtt5Publish(conn: object, messageId: number, reasonCode: number): boolean {
  const bridge = bridges.get(conn);
  if (!bridge) return false;
  bridge.refusedPublishes.set(messageId, reasonCode);
  return true;
}

/**
 * `client` is connecting with the client id of the MQTT 5 connection `conn`: if aedes closes `conn`
 * while `client` is still open, that is a takeover, and the client is told (DISCONNECT 0x8E).
 */
export function noteTakeover(conn: object, client: { closed: boolean }): void {
  const bridge = bridges.get(conn);
  if (bridge) bridge.takenOverBy = client;
}

/** Makes the SUBACK code of this filter (aedes' 0x80 refusal) `reasonCode` on an MQTT 5 connection. */
export function refuseMqtt5Subscription(conn: object, filter: string, reasonCode: number): void {
  bridges.get(conn)?.refusedFilters.set(filter, reasonCode);
}

/**
 * Should a retained message on `topic`, sent because of a new subscription, reach this client?
 * Its Retain Handling decides (MQTT 5 3.8.3.1): 0 yes, 1 only for a subscription that is new, 2 no.
 * Always yes for 3.1.1 clients.
 */
export function wantsRetainedOnSubscribe(conn: object, topic: string): boolean {
  const decisions = bridges.get(conn)?.retainOnSubscribe;
  if (!decisions || decisions.size === 0) return true;
  let matched = false;
  for (const [filter, send] of decisions) {
    if (!matches(filter, topic)) continue;
    if (send) return true;
    matched = true;
  }
  return !matched;
}

/** Does the packet (or its will) carry a property other than a user property more than once? */
function repeatsAProperty(packet: Packet): boolean {
  const repeated = (properties: object | undefined) =>
    properties !== undefined && Object.entries(properties).some(([name, value]) => name !== 'userProperties' && Array.isArray(value));
  const { properties } = packet as { properties?: object };
  return repeated(properties) || (packet.cmd === 'connect' && repeated(packet.will?.properties));
}

/** Does `filter` match the topic name `topic`? ([MQTT-4.7.2-1]: wildcards first never match $ topics.) */
function matches(filter: string, topic: string): boolean {
  if (topic.startsWith('$') && (filter.startsWith('+') || filter.startsWith('#'))) return false;
  return filterCovers(filter, topic);
}

// ---- the bridge -----------------------------------------------------------------------------------

/**
 * One MQTT 5 connection: `client` is the client's stream (its bytes already through the packet
 * size guard), `aedesSide` the stream aedes reads from.
 */
class Mqtt5Bridge {
  readonly aedesSide: Duplex;
  connect: Mqtt5Connect | undefined;
  clientReceiveMaximum: number | undefined;
  /** Publishes the gateway refused: message id → the reason code of their PUBACK/PUBREC. */
  readonly refusedPublishes = new Map<number, number>();
  /** Filters refused with a reason of their own (aedes only knows 0x80). */
  readonly refusedFilters = new Map<string, number>();
  /** Retain Handling of the latest SUBSCRIBE, per filter: send its retained messages? */
  retainOnSubscribe = new Map<string, boolean>();
  private readonly client: Duplex;
  private readonly options: Mqtt5Options;

  /** The client's own stream (the bytes not yet written to it). */
  get clientStream(): Duplex {
    return this.client;
  }
  private aedesClient: Client | undefined;
  private readonly fromClient = parser(V5);
  private readonly topicAliases = new Map<number, string>();
  /** SUBSCRIBEs in flight: MQTT 5 answers with one reason code per filter; the identifier counts once granted. */
  private readonly subscribes = new Map<number, { filters: string[]; id: number | undefined }>();
  /** UNSUBSCRIBEs in flight: the reason code per filter (0x11 for a filter the client had not). */
  private readonly unsubscribes = new Map<number, number[]>();
  /** Filters the client subscribed to on this connection, or that aedes restored (Retain Handling 1, UNSUBACK). */
  private readonly filters = new Set<string>();
  /** The client's QoS 1 publishes not yet acknowledged, and QoS 2 ones not yet completed (Receive Maximum). */
  private readonly inboundQos1 = new Set<number>();
  private readonly inboundQos2 = new Set<number>();
  /** Packets of the client read while it had Receive Maximum QoS 1 publishes unacknowledged: held, in order. */
  private readonly held: Packet[] = [];
  /** aedes' side is full: the client is not read until aedes reads. */
  private aedesFull = false;
  /** QoS 2 deliveries the client will not finish (dropped here, or its PUBREC refused): aedes' PUBREL is answered here. */
  private readonly endedQos2 = new Set<number>();
  /** QoS 2 publishes refused with PUBREC ≥ 0x80: the PUBCOMP aedes then sends is not the client's business. */
  private readonly swallowPubcomp = new Set<number>();
  /** PUBRELs for message ids aedes did not hold: their PUBCOMP says so. */
  private readonly unknownPubrel = new Set<number>();
  /** A new connection for this client id that is logging in (aedes closes this one once it is in). */
  takenOverBy: { closed: boolean } | undefined;
  private clientMaximumPacketSize = Infinity;
  private clientId = '';
  private assignedClientId: string | undefined;
  private requestedSessionExpiry = 0;
  private serverKeepAlive: number | undefined;
  private connackSent = false;
  /** The client's CONNECT went through, or the connection is being refused. */
  private connectSeen = false;
  private done = false;
  private clientClosing = false;
  private aedesEnded = false;
  private waitingForDrain = false;

  constructor(client: Duplex, options: Mqtt5Options) {
    this.client = client;
    this.options = options;
    this.aedesSide = new Duplex({
      allowHalfOpen: false,
      // aedes reads again: let the client's bytes flow again (see toAedes).
      read: () => {
        this.aedesFull = false;
        this.resumeClient();
      },
      // aedes writes objects (divertPacketWrites); bytes never come this way.
      write: (_chunk, _encoding, callback) => callback(new Error('MQTT 5 bridge: unexpected bytes from aedes')),
      final: (callback) => {
        this.closeClient();
        callback();
      },
      destroy: (_error, callback) => {
        // [MQTT-3.1.4-3]: closed for a new connection with the same client id: say so.
        if (this.takenOverBy && !this.takenOverBy.closed) this.refuse(SESSION_TAKEN_OVER);
        // aedes destroys its stream right after a refusing CONNACK: close gently so it still arrives.
        else this.closeClient();
        callback(null);
      },
    });
    bridges.set(this.aedesSide, this);
    clientBridges.set(client, this);
    divertPacketWrites(this.aedesSide, (packet) => this.fromAedes(packet));
    // Ill-formed UTF-8 or U+0000 in a string: DISCONNECT 0x81 (or CONNACK 0x81), below.
    refuseIllFormedStrings(this.fromClient);
    this.fromClient.on('packet', (packet: Packet) => this.onClientPacket(packet));
    this.fromClient.on('error', () => this.refuse(MALFORMED_PACKET));
  }

  /** Starts translating; `head` is what was read from the client to recognise MQTT 5. */
  start(aedesClient: Client, head: Buffer): void {
    this.aedesClient = aedesClient;
    const client = this.client;
    client.on('data', (chunk: Buffer) => {
      if (!this.done) this.fromClient.parse(chunk);
    });
    // EOF after everything was pushed, so aedes handles the client's last packets before the close.
    client.on('end', () => this.endAedesSide());
    // Closed without EOF (reset, destroyed by the size guard): nothing more will come.
    client.on('close', () => {
      if (!this.aedesEnded) this.aedesSide.destroy();
    });
    client.on('drain', () => {
      if (!this.waitingForDrain) return;
      this.waitingForDrain = false;
      this.aedesSide.emit('drain');
    });
    client.on('error', () => this.destroyBoth());
    this.fromClient.parse(head);
    client.resume();
  }

  /** Tells the client why (DISCONNECT with `reasonCode`, CONNACK before it is connected) and closes. */
  refuse(reasonCode: number): void {
    if (this.done) return;
    this.connectSeen = true;
    this.toClient(this.connackSent ? { cmd: 'disconnect', reasonCode } : { cmd: 'connack', sessionPresent: false, reasonCode });
    this.done = true;
    this.closeClient();
    this.aedesSide.destroy();
  }

  // client → aedes

  private onClientPacket(packet: Packet): void {
    if (this.done) return;
    // Behind a held publish, everything waits its turn (order is kept).
    if (this.held.length > 0) {
      if (this.held.length >= MAX_HELD) return this.refuse(RECEIVE_MAXIMUM_EXCEEDED);
      this.held.push(packet);
      return;
    }
    // 2.2.2.2: a property other than a user property given twice is a Protocol Error.
    if (repeatsAProperty(packet)) return this.refuse(PROTOCOL_ERROR);
    this.dispatch(packet);
  }

  private dispatch(packet: Packet): void {
    if (!this.connectSeen) {
      if (packet.cmd === 'connect') return this.onConnect(packet);
      return this.refuse(PROTOCOL_ERROR);
    }
    switch (packet.cmd) {
      case 'publish':
        return this.onPublish(packet);
      case 'puback':
      case 'pubcomp':
        if (packet.messageId === undefined) return this.refuse(PROTOCOL_ERROR);
        return this.toAedes(packet);
      case 'pubrel': {
        const messageId = packet.messageId;
        if (messageId === undefined) return this.refuse(PROTOCOL_ERROR);
        // 3.7.2.1: PUBCOMP 0x92 for a message aedes does not hold. Asked before aedes asks the
        // same store (in order), so the answer is there when aedes' PUBCOMP comes.
        if (this.aedesClient)
          incomingQoS2Held(this.aedesClient, { messageId }).then(
            () => undefined,
            () => this.unknownPubrel.add(messageId),
          );
        return this.toAedes(packet);
      }
      case 'pubrec':
        if (packet.messageId === undefined) return this.refuse(PROTOCOL_ERROR);
        // A refusing PUBREC ends the QoS 2 delivery [MQTT-4.3.3-4]: no PUBREL follows; aedes'
        // is answered here so it forgets the message.
        if ((packet.reasonCode ?? 0) >= 0x80) this.endedQos2.add(packet.messageId);
        return this.toAedes(packet);
      case 'subscribe':
        return this.onSubscribe(packet);
      case 'unsubscribe': {
        if (packet.messageId === undefined) return this.refuse(PROTOCOL_ERROR);
        const ids = this.options.subscriptionIds?.get(this.clientId);
        this.unsubscribes.set(
          packet.messageId,
          packet.unsubscriptions.map((filter) => {
            const had = this.subscribed(filter);
            this.filters.delete(filter);
            ids?.delete(filter);
            return had ? 0 : NO_SUBSCRIPTION_EXISTED;
          }),
        );
        return this.toAedes(packet);
      }
      case 'pingreq':
        return this.toAedes(packet);
      case 'disconnect':
        return this.onDisconnect(packet.reasonCode ?? 0, packet.properties?.sessionExpiryInterval);
      default:
        // A second CONNECT, AUTH (no authentication method was agreed), server-only packets.
        return this.refuse(PROTOCOL_ERROR);
    }
  }

  private onConnect(connect: IConnectPacket): void {
    this.connectSeen = true;
    const properties = connect.properties ?? {};
    // Enhanced authentication (SCRAM, Kerberos…) is not offered.
    if (properties.authenticationMethod !== undefined) return this.refuse(BAD_AUTHENTICATION_METHOD);
    // MQTT 5 allows a password without a user name; 3.1.1 and our user list don't.
    if (connect.password !== undefined && connect.username === undefined) return this.refuse(BAD_USER_NAME_OR_PASSWORD);
    if (properties.maximumPacketSize !== undefined) this.clientMaximumPacketSize = properties.maximumPacketSize;
    // The broker's flow control (inflight.ts) reads it in preConnect.
    this.clientReceiveMaximum = properties.receiveMaximum;
    // [MQTT-3.1.3-8] (MQTT 5: the server may refuse a client id): Clean Start 0 asks to resume a
    // session, which an empty id can't name; refused as in 3.1.1 rather than given a new session.
    if (connect.clientId === '' && connect.clean === false) return this.refuse(CLIENT_IDENTIFIER_NOT_VALID);
    let clientId = connect.clientId;
    // MQTT 5 lets the server assign an id and tell the client (CONNACK Assigned Client Identifier).
    if (clientId === '') clientId = this.assignedClientId = `auto-${randomUUID()}`;
    this.clientId = clientId;
    this.requestedSessionExpiry = properties.sessionExpiryInterval ?? 0;
    const will = connect.will;
    const { willDelayInterval, ...willProperties } = will?.properties ?? {};
    this.connect = {
      cleanStart: connect.clean !== false,
      sessionExpiry: Math.min(this.requestedSessionExpiry, this.options.maxSessionExpiry ?? MAX_FOUR_BYTE_INT),
      willDelay: willDelayInterval ?? 0,
      ...(Object.keys(willProperties).length > 0 ? { willProperties } : {}),
    };
    const keepalive = this.keepAlive(connect.keepalive ?? 0);
    // aedes gets a 3.1.1 CONNECT: the broker decides the session from `connect` in preConnect.
    this.toAedes(
      {
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clientId,
        clean: this.connect.cleanStart,
        keepalive,
        ...(connect.username !== undefined ? { username: connect.username } : {}),
        ...(connect.password !== undefined ? { password: connect.password } : {}),
        ...(will ? { will: { topic: will.topic, payload: will.payload, qos: will.qos ?? 0, retain: will.retain ?? false } } : {}),
      },
      V4,
    );
  }

  /** The keep-alive the client gets within broker.limits.keepAlive; Server Keep Alive tells it when it differs. */
  private keepAlive(requested: number): number {
    const bounds = this.options.keepAlive;
    if (!bounds) return requested;
    let seconds = requested;
    if (seconds * 1000 > bounds.max) seconds = Math.floor(bounds.max / 1000);
    if (bounds.min > 0 && (seconds === 0 || seconds * 1000 < bounds.min)) seconds = Math.ceil(bounds.min / 1000);
    if (seconds !== requested) this.serverKeepAlive = seconds;
    return seconds;
  }

  private onPublish(publish: IPublishPacket): void {
    const { topicAlias, subscriptionIdentifier, ...properties } = publish.properties ?? {};
    // [MQTT-3.3.4-6]: a PUBLISH to the server must not carry a Subscription Identifier.
    if (subscriptionIdentifier !== undefined) return this.refuse(PROTOCOL_ERROR);
    let topic = publish.topic;
    if (topicAlias !== undefined) {
      if (topicAlias === 0 || topicAlias > TOPIC_ALIAS_MAXIMUM) return this.refuse(TOPIC_ALIAS_INVALID);
      if (topic !== '') this.topicAliases.set(topicAlias, topic);
      else {
        const known = this.topicAliases.get(topicAlias);
        if (known === undefined) return this.refuse(PROTOCOL_ERROR);
        topic = known;
      }
    }
    if (topic === '') return this.refuse(PROTOCOL_ERROR);
    const receiveMaximum = this.options.receiveMaximum ?? Infinity;
    if (publish.qos === 2 && publish.messageId !== undefined && !this.inboundQos2.has(publish.messageId)) {
      // 4.9: more QoS 2 messages waiting to complete than the Receive Maximum we announced: each
      // is held in aedes' store until its PUBREL, so this bounds what a client can make us keep.
      if (this.inboundQos2.size >= receiveMaximum) return this.refuse(RECEIVE_MAXIMUM_EXCEEDED);
      this.inboundQos2.add(publish.messageId);
    }
    if (publish.qos === 1 && publish.messageId !== undefined) {
      // More QoS 1 publishes than the Receive Maximum before their PUBACK (the outbox may hold it
      // for its commit): read on as PUBACKs go out. mqtt.js 5 ignores the server's Receive
      // Maximum, and disconnecting such a client (0x93) would only make it reconnect and resend.
      if (this.inboundQos1.size >= receiveMaximum && !this.inboundQos1.has(publish.messageId)) {
        this.held.push(publish);
        this.client.pause();
        return;
      }
      this.inboundQos1.add(publish.messageId);
    }
    this.toAedes({
      cmd: 'publish',
      topic,
      payload: publish.payload,
      qos: publish.qos,
      retain: publish.retain,
      dup: publish.dup,
      ...(publish.qos > 0 ? { messageId: publish.messageId } : {}),
      ...(Object.keys(properties).length > 0 ? { properties } : {}),
    });
  }

  private onSubscribe(subscribe: ISubscribePacket): void {
    if (subscribe.messageId === undefined) return this.refuse(PROTOCOL_ERROR);
    const id = subscribe.properties?.subscriptionIdentifier;
    // 3.8.2.1.2: 0 is a Protocol Error (and twice is caught as a repeated property).
    if (id === 0 || Array.isArray(id)) return this.refuse(PROTOCOL_ERROR);
    const filters = subscribe.subscriptions.map(({ topic }) => topic);
    this.subscribes.set(subscribe.messageId, { filters, id });
    // The retained messages aedes sends next belong to this SUBSCRIBE: its Retain Handling decides.
    this.retainOnSubscribe = new Map(
      subscribe.subscriptions.map(({ topic, rh }) => [topic, rh === undefined || rh === 0 || (rh === 1 && !this.subscribed(topic))]),
    );
    for (const filter of filters) {
      this.filters.add(filter);
      this.refusedFilters.delete(filter);
    }
    // Only the identifier is ours; aedes keeps No Local, Retain As Published and Retain Handling.
    this.toAedes({ cmd: 'subscribe', messageId: subscribe.messageId, subscriptions: subscribe.subscriptions });
  }

  /** Has the client a subscription to exactly this filter (made here, or restored by aedes)? */
  private subscribed(filter: string): boolean {
    return this.filters.has(filter) || (this.aedesClient !== undefined && subscriptionQoS(this.aedesClient, filter) !== undefined);
  }

  private onDisconnect(reasonCode: number, sessionExpiry: number | undefined): void {
    if (sessionExpiry !== undefined && this.connect) {
      // [MQTT-3.14.2-2]: a session that ends with its connection can't be given an expiry now.
      if (this.requestedSessionExpiry === 0 && sessionExpiry !== 0) return this.refuse(PROTOCOL_ERROR);
      this.connect.sessionExpiry = Math.min(sessionExpiry, this.options.maxSessionExpiry ?? MAX_FOUR_BYTE_INT);
    }
    // 0x04 asks for the will: end the stream without a DISCONNECT, as if the connection broke.
    if (reasonCode === DISCONNECT_WITH_WILL) return this.endAedesSide();
    this.toAedes({ cmd: 'disconnect' });
  }

  /** A QoS 1 publish was acknowledged: packets held behind the Receive Maximum go on, in order. */
  private releaseHeld(): void {
    while (this.held.length > 0 && !this.done) {
      const next = this.held[0]!;
      if (next.cmd === 'publish' && next.qos === 1 && this.inboundQos1.size >= (this.options.receiveMaximum ?? Infinity)) return;
      this.held.shift();
      this.dispatch(next);
    }
    this.resumeClient();
  }

  private resumeClient(): void {
    if (this.held.length === 0 && !this.aedesFull && !this.done) this.client.resume();
  }

  private toAedes(packet: Packet, version = V5): void {
    if (this.done || this.aedesEnded) return;
    let bytes: Buffer;
    try {
      bytes = generate(packet, version);
    } catch {
      return this.refuse(PROTOCOL_ERROR);
    }
    // Back-pressure: stop reading the client until aedes reads (the Duplex calls read()).
    if (!this.aedesSide.push(bytes)) {
      this.aedesFull = true;
      this.client.pause();
    }
  }

  private endAedesSide(): void {
    if (this.aedesEnded || this.aedesSide.destroyed) return;
    this.aedesEnded = true;
    this.aedesSide.push(null);
  }

  // aedes → client

  /** Every packet aedes writes to this client; false when the client's buffer is full. */
  private fromAedes(packet: Packet): boolean {
    if (this.done) return true;
    switch (packet.cmd) {
      case 'connack':
        return this.onConnack(packet);
      case 'publish':
        return this.onDelivery(packet);
      case 'puback': {
        const messageId = packet.messageId!;
        const written = this.toClient({ cmd: 'puback', messageId, reasonCode: this.takeRefusal(messageId) });
        if (this.inboundQos1.delete(messageId)) this.releaseHeld();
        return written;
      }
      case 'pubrec': {
        const messageId = packet.messageId!;
        const reasonCode = this.takeRefusal(messageId);
        if (reasonCode >= 0x80) {
          // The flow ends with this PUBREC: the client sends no PUBREL, so aedes gets one from here.
          this.inboundQos2.delete(messageId);
          this.swallowPubcomp.add(messageId);
          this.toAedes({ cmd: 'pubrel', messageId });
        }
        return this.toClient({ cmd: 'pubrec', messageId, reasonCode });
      }
      case 'pubcomp': {
        const messageId = packet.messageId!;
        this.inboundQos2.delete(messageId);
        if (this.swallowPubcomp.delete(messageId)) return true;
        const reasonCode = this.unknownPubrel.delete(messageId) ? PACKET_IDENTIFIER_NOT_FOUND : 0;
        return this.toClient({ cmd: 'pubcomp', messageId, reasonCode });
      }
      case 'pubrel': {
        const messageId = packet.messageId!;
        if (this.endedQos2.delete(messageId)) {
          this.toAedes({ cmd: 'pubcomp', messageId });
          return true;
        }
        return this.toClient({ cmd: 'pubrel', messageId, reasonCode: 0 });
      }
      case 'suback':
        return this.onSuback(packet);
      case 'unsuback': {
        const codes = this.unsubscribes.get(packet.messageId!) ?? [0];
        this.unsubscribes.delete(packet.messageId!);
        return this.toClient({ cmd: 'unsuback', messageId: packet.messageId, granted: codes });
      }
      case 'pingresp':
        return this.toClient({ cmd: 'pingresp' });
      default:
        return true; // aedes sends nothing else to clients
    }
  }

  private takeRefusal(messageId: number): number {
    const reasonCode = this.refusedPublishes.get(messageId);
    if (reasonCode === undefined) return 0;
    this.refusedPublishes.delete(messageId);
    return reasonCode;
  }

  private onConnack(connack: IConnackPacket): boolean {
    this.connackSent = true;
    const returnCode = connack.returnCode ?? 0;
    if (returnCode !== 0) {
      // aedes closes the connection next; the CONNACK is written before that.
      return this.toClient({ cmd: 'connack', sessionPresent: false, reasonCode: CONNACK_REASONS[returnCode] ?? UNSPECIFIED_ERROR });
    }
    const sessionExpiry = this.connect?.sessionExpiry ?? 0;
    return this.toClient({
      cmd: 'connack',
      sessionPresent: connack.sessionPresent,
      reasonCode: 0,
      properties: {
        ...(this.assignedClientId !== undefined ? { assignedClientIdentifier: this.assignedClientId } : {}),
        // 3.2.2.3.2: the server says so when it uses another Session Expiry than the client asked.
        ...(sessionExpiry !== this.requestedSessionExpiry ? { sessionExpiryInterval: sessionExpiry } : {}),
        ...(this.serverKeepAlive !== undefined ? { serverKeepAlive: this.serverKeepAlive } : {}),
        maximumPacketSize: Math.min(this.options.maxPacketSize, MAX_VARIABLE_INT),
        ...(this.options.receiveMaximum !== undefined ? { receiveMaximum: this.options.receiveMaximum } : {}),
        topicAliasMaximum: TOPIC_ALIAS_MAXIMUM,
        retainAvailable: true,
        wildcardSubscriptionAvailable: true,
        subscriptionIdentifiersAvailable: true,
        sharedSubscriptionAvailable: false,
      },
    });
  }

  private onSuback(suback: ISubackPacket): boolean {
    const messageId = suback.messageId ?? 0;
    const { filters, id } = this.subscribes.get(messageId) ?? { filters: [], id: undefined };
    this.subscribes.delete(messageId);
    // aedes answers once per distinct filter (the last of a repeated one counts), in first-seen order.
    const distinct = [...new Set(filters)];
    const codeOf = new Map(distinct.map((filter, index) => [filter, suback.granted[index] ?? UNSPECIFIED_ERROR]));
    const store = this.options.subscriptionIds;
    let ids = store?.get(this.clientId);
    const granted = filters.map((filter) => {
      const code = codeOf.get(filter) ?? UNSPECIFIED_ERROR;
      if (typeof code === 'number' && code < 0x80) {
        // Granted: the subscription has this identifier now, or none if it was made without (3.8.2.1.2).
        if (id !== undefined && store && !ids) store.set(this.clientId, (ids = new Map()));
        if (id !== undefined) ids?.set(filter, id);
        else ids?.delete(filter);
        return code;
      }
      if (!(this.aedesClient && subscriptionQoS(this.aedesClient, filter) !== undefined)) this.filters.delete(filter);
      // A refusal: ours when the broker gave a reason, else aedes' 0x80 from the ACL = 0x87 Not authorized.
      return this.refusedFilters.get(filter) ?? NOT_AUTHORIZED;
    });
    for (const filter of filters) this.refusedFilters.delete(filter);
    return this.toClient({ cmd: 'suback', messageId, granted: granted as number[] });
  }

  private onDelivery(publish: IPublishPacket & { messageExpiry?: number }): boolean {
    const payload = Buffer.isBuffer(publish.payload) ? publish.payload : Buffer.from(publish.payload);
    const { subscriptionIdentifier: _perSubscriber, topicAlias: _perConnection, ...carried } = publish.properties ?? {};
    const properties: PublishProperties = carried;
    if (publish.messageExpiry !== undefined) {
      const left = publish.messageExpiry - Date.now();
      // [MQTT-3.3.2-5]: expired before it could be sent: not delivered.
      if (left <= 0) return this.dropDelivery(publish);
      // [MQTT-3.3.2-6]: the receiver gets what is left of the interval.
      properties.messageExpiryInterval = Math.ceil(left / 1000);
    }
    const ids = this.subscriptionIdentifiers(publish.topic);
    if (ids.length > 0) properties.subscriptionIdentifier = ids.length === 1 ? ids[0]! : ids;
    const packet: IPublishPacket = {
      cmd: 'publish',
      topic: publish.topic,
      payload,
      qos: publish.qos,
      retain: publish.retain,
      dup: publish.dup,
      ...(publish.qos > 0 ? { messageId: publish.messageId } : {}),
      ...(Object.keys(properties).length > 0 ? { properties } : {}),
    };
    const bytes = this.encodeForClient(packet);
    if (!bytes) return true;
    // [MQTT-3.1.2-25]: too big for this client: discard it as if it had been delivered.
    if (bytes.length > this.clientMaximumPacketSize) return this.dropDelivery(publish);
    return this.writeToClient(bytes);
  }

  /** The identifiers of the client's subscriptions that match `topic` ([MQTT-3.3.4-3]). */
  private subscriptionIdentifiers(topic: string): number[] {
    const ids = this.options.subscriptionIds?.get(this.clientId);
    if (!ids || ids.size === 0) return [];
    const found: number[] = [];
    for (const [filter, id] of ids) if (matches(filter, topic) && !found.includes(id)) found.push(id);
    return found;
  }

  /** A delivery not sent: aedes gets the acknowledgement the client would have sent. */
  private dropDelivery(publish: IPublishPacket): boolean {
    if (publish.qos === 1) this.toAedes({ cmd: 'puback', messageId: publish.messageId });
    if (publish.qos === 2 && publish.messageId !== undefined) {
      this.endedQos2.add(publish.messageId);
      this.toAedes({ cmd: 'pubrec', messageId: publish.messageId });
    }
    return true;
  }

  private toClient(packet: Packet): boolean {
    const bytes = this.encodeForClient(packet);
    return bytes ? this.writeToClient(bytes) : true;
  }

  private encodeForClient(packet: Packet): Buffer | undefined {
    try {
      return generate(packet, V5);
    } catch {
      this.destroyBoth();
      return undefined;
    }
  }

  private writeToClient(bytes: Buffer): boolean {
    if (this.client.destroyed || this.client.writableEnded) return true;
    if (this.client.write(bytes)) return true;
    // aedes waits for 'drain' on its stream (see start).
    this.waitingForDrain = true;
    return false;
  }

  // closing

  /** Ends the client's stream after what was written to it, and makes sure it goes. */
  private closeClient(): void {
    this.done = true;
    const client = this.client;
    if (this.clientClosing || client.destroyed) return;
    this.clientClosing = true;
    client.end();
    // A well-behaved client closes its end on EOF; one that doesn't is cut.
    const timer = setTimeout(() => client.destroy(), CLOSE_GRACE_MS).unref();
    client.once('close', () => clearTimeout(timer));
  }

  private destroyBoth(): void {
    this.done = true;
    this.client.destroy();
    this.aedesSide.destroy();
  }
}

/** The bridge in front of a client stream, to tell an MQTT 5 client why it is cut (e.g. 0x95). */
export function refuseMqtt5Connection(clientStream: object, reasonCode: number): boolean {
  const bridge = clientBridges.get(clientStream);
  if (!bridge) return false;
  bridge.refuse(reasonCode);
  return true;
}
