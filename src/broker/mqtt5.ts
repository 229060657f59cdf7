// MQTT 5 for the integrated broker. aedes speaks MQTT 3.1/3.1.1 only, so each connection is
// looked at once, at its CONNECT: 3.1/3.1.1 clients get their own stream handed to aedes untouched
// (nothing in their path after the first chunk); an MQTT 5 client gets a translating pair of
// streams in between — its packets are parsed as MQTT 5 and re-encoded as 3.1.1 for aedes, and
// aedes' answers the other way round. What MQTT 5 can say and 3.1.1 cannot (user properties,
// message expiry, subscription options…) is dropped; see the README for the list.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Duplex } from 'node:stream';
import type { Aedes } from 'aedes';
import {
  generate,
  parser,
  type IConnackPacket,
  type IConnectPacket,
  type IPublishPacket,
  type ISubscribePacket,
  type Packet,
} from 'mqtt-packet';
import { Fifo } from '../util/fifo.js';
import { clientParser } from './aedes-internals.js';
import { refuseIllFormedStrings } from './mqtt-strings.js';

/** Properties of an MQTT 5 PUBLISH: responseTopic, correlationData, contentType, userProperties… */
export type PublishProperties = NonNullable<IPublishPacket['properties']>;

export interface Mqtt5Options {
  /** broker.limits.maxPacketSize: announced to MQTT 5 clients as their Maximum Packet Size. */
  maxPacketSize: number;
  /** broker.limits.maxInflight: announced as Receive Maximum (aedes cuts clients with more QoS 2 in flight). */
  receiveMaximum?: number;
  /** A socket that has not sent the start of a CONNECT by then is closed (aedes' connectTimeout). */
  connectTimeoutMs?: number;
}

const V5 = { protocolVersion: 5 };
const V4 = { protocolVersion: 4 };
/** Topic aliases a client may define; each is one map entry per connection. */
const TOPIC_ALIAS_MAXIMUM = 64;
/** Publish properties kept per connection for takePublishProperties. */
const MAX_PENDING_PROPERTIES = 10_000;
/** Entries of attachOutgoingProperties. */
const MAX_OUTGOING = 10_000;
/** After the broker side is done, how long a client may take to close its end. */
const CLOSE_GRACE_MS = 5_000;

// MQTT 5 reason codes used here.
const MALFORMED_PACKET = 0x81;
const PROTOCOL_ERROR = 0x82;
const NOT_AUTHORIZED = 0x87;
const BAD_USER_NAME_OR_PASSWORD = 0x86;
const BAD_AUTHENTICATION_METHOD = 0x8c;
const CLIENT_IDENTIFIER_NOT_VALID = 0x85;
const TOPIC_ALIAS_INVALID = 0x94;
const DISCONNECT_WITH_WILL = 0x04;
/** MQTT 3.1.1 CONNACK return code → MQTT 5 CONNACK reason code. */
const CONNACK_REASONS: Record<number, number> = { 0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: BAD_USER_NAME_OR_PASSWORD, 5: NOT_AUTHORIZED };
const UNSPECIFIED_ERROR = 0x80;
/** PUBACK reason for a publish the gateway did not keep (its outbox dropped it). */
export const QUOTA_EXCEEDED = 0x97;

/**
 * Hands a new client connection to aedes: `stream` itself for MQTT 3.1/3.1.1, a translating
 * stream for MQTT 5. Decided from the protocol level of the client's CONNECT.
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
      aedes.handle(bridge.aedesSide, request);
      bridge.start(head);
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

// ---- side channels for the command path -----------------------------------------------------

const pendingProperties = new WeakMap<object, Fifo<PublishProperties>>();
const receiveMaximums = new WeakMap<object, number>();
const refusals = new WeakMap<object, Map<number, number>>();

/**
 * Makes aedes' coming PUBACK for `messageId` on this connection a negative one with `reasonCode`.
 * False for 3.1/3.1.1 connections, which have no negative PUBACK.
 */
export function refuseMqtt5Publish(conn: object, messageId: number, reasonCode: number): boolean {
  const refused = refusals.get(conn);
  if (!refused) return false;
  refused.set(messageId, reasonCode);
  return true;
}

/** The Receive Maximum an MQTT 5 client announced in its CONNECT (unacknowledged QoS 1/2 it accepts), if any. */
export function clientReceiveMaximum(conn: object): number | undefined {
  return receiveMaximums.get(conn);
}

/**
 * The properties of the next PUBLISH an MQTT 5 client sent, oldest first: call it once in aedes'
 * authorizePublish with `client.conn` (aedes calls that once per PUBLISH, in order). `{}` for a
 * PUBLISH without properties; undefined for 3.1/3.1.1 connections and when nothing is pending
 * (e.g. a will message, which aedes publishes itself).
 */
export function takePublishProperties(conn: object): PublishProperties | undefined {
  return pendingProperties.get(conn)?.shift();
}

interface OutgoingEntry {
  payload: Buffer;
  properties: PublishProperties;
  expires: number;
}

/**
 * Registered properties by topic, for every broker in the process. An entry is used for every
 * matching delivery (several subscribers may want the same response) until it expires.
 */
const outgoing = new Map<string, OutgoingEntry[]>();
let outgoingCount = 0;

/**
 * Adds `properties` (e.g. the correlationData of a response) to deliveries to MQTT 5 clients of a
 * message with exactly this topic and payload, for `ttlMs`. Register before publishing into aedes.
 * 3.1.1 subscribers get the message without them.
 */
export function attachOutgoingProperties(topic: string, payload: Buffer, properties: PublishProperties, ttlMs = 10_000): void {
  if (outgoingCount >= MAX_OUTGOING) pruneOutgoing();
  const entries = outgoing.get(topic);
  const entry = { payload, properties, expires: Date.now() + ttlMs };
  if (entries) entries.push(entry);
  else outgoing.set(topic, [entry]);
  outgoingCount++;
}

/** Drops expired entries, then if still full the oldest topics (registration order) until a tenth is free. */
function pruneOutgoing(): void {
  const now = Date.now();
  for (const [topic, entries] of outgoing) {
    const live = entries.filter((entry) => entry.expires > now);
    outgoingCount -= entries.length - live.length;
    if (live.length === 0) outgoing.delete(topic);
    else outgoing.set(topic, live);
  }
  for (const [topic, entries] of outgoing) {
    if (outgoingCount < MAX_OUTGOING * 0.9) break;
    outgoing.delete(topic);
    outgoingCount -= entries.length;
  }
}

function outgoingProperties(topic: string, payload: Buffer): PublishProperties | undefined {
  const entries = outgoing.get(topic);
  if (!entries) return undefined;
  const now = Date.now();
  const live = entries.filter((entry) => entry.expires > now);
  outgoingCount -= entries.length - live.length;
  if (live.length === 0) outgoing.delete(topic);
  else if (live.length !== entries.length) outgoing.set(topic, live);
  return live.find((entry) => entry.payload.equals(payload))?.properties;
}

// ---- the translation --------------------------------------------------------------------------

/**
 * One MQTT 5 connection: `client` is the client's stream (its bytes already through the packet
 * size guard), `aedesSide` the 3.1.1 stream aedes reads and writes.
 */
class Mqtt5Bridge {
  readonly aedesSide: Duplex;
  private readonly client: Duplex;
  private readonly options: Mqtt5Options;
  private readonly fromClient = parser(V5);
  private readonly fromAedes = parser(V4);
  private readonly topicAliases = new Map<number, string>();
  /** Filters per UNSUBSCRIBE in flight: an MQTT 5 UNSUBACK has one reason code per filter. */
  private readonly unsubscribeCounts = new Map<number, number>();
  /** QoS 2 deliveries dropped for the client's Maximum Packet Size: their PUBREL is answered here. */
  private readonly droppedQos2 = new Set<number>();
  private readonly properties = new Fifo<PublishProperties>();
  /** Publishes the gateway refused: message id → the reason code their PUBACK carries. */
  private readonly refused = new Map<number, number>();
  private clientMaximumPacketSize = Infinity;
  private assignedClientId: string | undefined;
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
      read: () => this.client.resume(),
      write: (chunk: Buffer, _encoding, callback) => this.fromAedesBytes(chunk, callback),
      final: (callback) => {
        this.closeClient();
        callback();
      },
      destroy: (_error, callback) => {
        // aedes destroys its stream right after a refusing CONNACK: close gently so it still arrives.
        this.closeClient();
        callback(null);
      },
    });
    pendingProperties.set(this.aedesSide, this.properties);
    refusals.set(this.aedesSide, this.refused);
    // Ill-formed UTF-8 or U+0000 in a string: DISCONNECT 0x81 (or CONNACK 0x81), below.
    refuseIllFormedStrings(this.fromClient);
    this.fromClient.on('packet', (packet: Packet) => this.onClientPacket(packet));
    this.fromClient.on('error', () => this.refuse(MALFORMED_PACKET));
    this.fromAedes.on('packet', (packet: Packet) => this.onAedesPacket(packet));
    this.fromAedes.on('error', () => this.destroyBoth());
  }

  /** Starts translating; `head` is what was read from the client to recognise MQTT 5. */
  start(head: Buffer): void {
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
    client.on('error', () => this.destroyBoth());
    this.fromClient.parse(head);
    client.resume();
  }

  // client → aedes

  private onClientPacket(packet: Packet): void {
    if (this.done) return;
    if (!this.connectSeen) {
      if (packet.cmd === 'connect') return this.onConnect(packet);
      return this.refuse(PROTOCOL_ERROR);
    }
    switch (packet.cmd) {
      case 'publish':
        return this.onPublish(packet);
      case 'puback':
      case 'pubrec':
      case 'pubrel':
      case 'pubcomp':
        // A 3.1.1 acknowledgement has no reason code; aedes only needs the message id.
        if (packet.messageId === undefined) return this.refuse(PROTOCOL_ERROR);
        return this.toAedes({ cmd: packet.cmd, messageId: packet.messageId });
      case 'subscribe':
        return this.onSubscribe(packet);
      case 'unsubscribe':
        if (packet.messageId === undefined) return this.refuse(PROTOCOL_ERROR);
        this.unsubscribeCounts.set(packet.messageId, packet.unsubscriptions.length);
        return this.toAedes({ cmd: 'unsubscribe', messageId: packet.messageId, unsubscriptions: packet.unsubscriptions });
      case 'pingreq':
        return this.toAedes({ cmd: 'pingreq' });
      case 'disconnect':
        // 0x04 asks for the will: end the stream without a DISCONNECT, as if the connection broke.
        if (packet.reasonCode === DISCONNECT_WITH_WILL) return this.endAedesSide();
        return this.toAedes({ cmd: 'disconnect' });
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
    // The broker's flow control (inflight.ts) reads it in preConnect, right after this CONNECT reaches aedes.
    if (properties.receiveMaximum !== undefined) receiveMaximums.set(this.aedesSide, properties.receiveMaximum);
    // [MQTT-3.1.3-8] (MQTT 5: the server may refuse a client id): Clean Start 0 asks to resume a
    // session, which an empty id can't name; refused as in 3.1.1 rather than given a new session.
    if (connect.clientId === '' && connect.clean === false) return this.refuse(CLIENT_IDENTIFIER_NOT_VALID);
    let clientId = connect.clientId;
    // MQTT 5 lets the server assign an id and tell the client (CONNACK Assigned Client Identifier).
    if (clientId === '') clientId = this.assignedClientId = `auto-${randomUUID()}`;
    const will = connect.will;
    this.toAedes({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clientId,
      // A session outlives the connection when it has an expiry (any: aedes keeps it until the
      // client returns with a clean start). Clean Start alone can't wipe a session 3.1.1 keeps.
      clean: !((properties.sessionExpiryInterval ?? 0) > 0),
      keepalive: connect.keepalive ?? 0,
      ...(connect.username !== undefined ? { username: connect.username } : {}),
      ...(connect.password !== undefined ? { password: connect.password } : {}),
      ...(will ? { will: { topic: will.topic, payload: will.payload, qos: will.qos ?? 0, retain: will.retain ?? false } } : {}),
    });
  }

  private onPublish(publish: IPublishPacket): void {
    const { topicAlias, subscriptionIdentifier: _notForServers, ...properties } = publish.properties ?? {};
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
    // Oldest dropped: a consumer that never takes must not grow this without bound.
    if (this.properties.length >= MAX_PENDING_PROPERTIES) this.properties.shift();
    this.properties.push(properties);
    this.toAedes({
      cmd: 'publish',
      topic,
      payload: publish.payload,
      qos: publish.qos,
      retain: publish.retain,
      dup: publish.dup,
      ...(publish.qos > 0 ? { messageId: publish.messageId } : {}),
    });
  }

  private onSubscribe(subscribe: ISubscribePacket): void {
    // No Local, Retain As Published and Retain Handling have no 3.1.1 encoding: only the QoS goes.
    this.toAedes({
      cmd: 'subscribe',
      messageId: subscribe.messageId,
      subscriptions: subscribe.subscriptions.map(({ topic, qos }) => ({ topic, qos })),
    });
  }

  private toAedes(packet: Packet): void {
    if (this.done || this.aedesEnded) return;
    let bytes: Buffer;
    try {
      bytes = generate(packet, V4);
    } catch {
      // Parsed as MQTT 5 but not encodable as 3.1.1.
      return this.refuse(PROTOCOL_ERROR);
    }
    // Back-pressure: stop reading the client until aedes reads (the Duplex calls read()).
    if (!this.aedesSide.push(bytes)) this.client.pause();
  }

  private endAedesSide(): void {
    if (this.aedesEnded || this.aedesSide.destroyed) return;
    this.aedesEnded = true;
    this.aedesSide.push(null);
  }

  // aedes → client

  private fromAedesBytes(chunk: Buffer, callback: (error?: Error | null) => void): void {
    this.fromAedes.parse(chunk);
    if (!this.waitingForDrain || this.client.destroyed) return callback();
    // Hold aedes' write until the client takes more: aedes then waits for 'drain' like on a socket.
    this.client.once('drain', () => {
      this.waitingForDrain = false;
      callback();
    });
  }

  private onAedesPacket(packet: Packet): void {
    if (this.done) return;
    switch (packet.cmd) {
      case 'connack':
        return this.onConnack(packet);
      case 'publish':
        return this.onDelivery(packet);
      case 'pubrel':
        if (packet.messageId !== undefined && this.droppedQos2.delete(packet.messageId))
          return this.toAedes({ cmd: 'pubcomp', messageId: packet.messageId });
        return this.toClient({ cmd: 'pubrel', messageId: packet.messageId, reasonCode: 0 });
      case 'puback': {
        const refused = packet.messageId === undefined ? undefined : this.refused.get(packet.messageId);
        if (refused !== undefined) this.refused.delete(packet.messageId!);
        return this.toClient({ cmd: 'puback', messageId: packet.messageId, reasonCode: refused ?? 0 });
      }
      case 'pubrec':
      case 'pubcomp':
        return this.toClient({ cmd: packet.cmd, messageId: packet.messageId, reasonCode: 0 });
      case 'suback':
        // aedes grants 0x80 for filters the ACL denies: that is MQTT 5's 0x87 Not authorized.
        return this.toClient({
          cmd: 'suback',
          messageId: packet.messageId,
          granted: packet.granted.map((code) => (code === 0x80 ? NOT_AUTHORIZED : code)),
        });
      case 'unsuback': {
        const count = packet.messageId === undefined ? undefined : this.unsubscribeCounts.get(packet.messageId);
        if (packet.messageId !== undefined) this.unsubscribeCounts.delete(packet.messageId);
        return this.toClient({ cmd: 'unsuback', messageId: packet.messageId, granted: new Array<number>(count ?? 1).fill(0) });
      }
      case 'pingresp':
        return this.toClient({ cmd: 'pingresp' });
      default:
        return undefined; // aedes sends nothing else to clients
    }
  }

  private onConnack(connack: IConnackPacket): void {
    this.connackSent = true;
    const returnCode = connack.returnCode ?? 0;
    if (returnCode !== 0) {
      // aedes closes the connection next; the CONNACK is written before that.
      this.toClient({ cmd: 'connack', sessionPresent: false, reasonCode: CONNACK_REASONS[returnCode] ?? UNSPECIFIED_ERROR });
      return;
    }
    this.toClient({
      cmd: 'connack',
      sessionPresent: connack.sessionPresent,
      reasonCode: 0,
      properties: {
        ...(this.assignedClientId !== undefined ? { assignedClientIdentifier: this.assignedClientId } : {}),
        maximumPacketSize: Math.min(this.options.maxPacketSize, 268_435_455),
        ...(this.options.receiveMaximum !== undefined ? { receiveMaximum: this.options.receiveMaximum } : {}),
        topicAliasMaximum: TOPIC_ALIAS_MAXIMUM,
        retainAvailable: true,
        wildcardSubscriptionAvailable: true,
        subscriptionIdentifiersAvailable: false,
        sharedSubscriptionAvailable: false,
      },
    });
  }

  private onDelivery(publish: IPublishPacket): void {
    const payload = Buffer.isBuffer(publish.payload) ? publish.payload : Buffer.from(publish.payload);
    const properties = outgoing.size > 0 ? outgoingProperties(publish.topic, payload) : undefined;
    const packet: IPublishPacket = {
      cmd: 'publish',
      topic: publish.topic,
      payload,
      qos: publish.qos,
      retain: publish.retain,
      dup: publish.dup,
      ...(publish.qos > 0 ? { messageId: publish.messageId } : {}),
      ...(properties ? { properties } : {}),
    };
    const bytes = this.encodeForClient(packet);
    if (!bytes) return;
    if (bytes.length > this.clientMaximumPacketSize) {
      // Too big for this client: MQTT 5 says discard it as if it had been delivered, so aedes
      // gets the acknowledgement the client would have sent.
      if (publish.qos === 1) this.toAedes({ cmd: 'puback', messageId: publish.messageId });
      if (publish.qos === 2 && publish.messageId !== undefined) {
        this.droppedQos2.add(publish.messageId);
        this.toAedes({ cmd: 'pubrec', messageId: publish.messageId });
      }
      return;
    }
    this.writeToClient(bytes);
  }

  private toClient(packet: Packet): void {
    const bytes = this.encodeForClient(packet);
    if (bytes) this.writeToClient(bytes);
  }

  private encodeForClient(packet: Packet): Buffer | undefined {
    try {
      return generate(packet, V5);
    } catch {
      this.destroyBoth();
      return undefined;
    }
  }

  private writeToClient(bytes: Buffer): void {
    if (this.client.destroyed || this.client.writableEnded) return;
    if (!this.client.write(bytes)) this.waitingForDrain = true;
  }

  // closing

  /** Tells the client why (CONNACK before it is connected, DISCONNECT after) and closes both sides. */
  private refuse(reasonCode: number): void {
    if (this.done) return;
    this.connectSeen = true;
    this.toClient(this.connackSent ? { cmd: 'disconnect', reasonCode } : { cmd: 'connack', sessionPresent: false, reasonCode });
    this.done = true;
    this.closeClient();
    this.aedesSide.destroy();
  }

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
