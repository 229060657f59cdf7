// Every use of aedes' internals — fields and methods that are not in its .d.ts — in one place.
// package.json pins aedes exactly (1.2.0) for as long as this file is not empty; each function
// below says which internal it relies on and why, checked against aedes 1.2.0.
//
// When aedes is upgraded (2.0 has native MQTT 5: much of mqtt5.ts and this file may go), check
// against the new lib/client.js, aedes.js, lib/write.js and lib/handlers/ that, for each function here:
// - the field still exists under that name, with the same shape (Client: deliverQoS, deliver0,
//   subscriptions, _parser, _disconnected; Aedes: clients, persistence.incomingGetPacket);
// - deliverQoS/deliver0 are still own fields of the client, read when a subscription is made
//   (lib/handlers/subscribe.js) and when a persistent session is restored, so replacing them in
//   preConnect still catches every delivery; deliverQoS still hands QoS 0 packets to deliver0;
// - _parser still emits 'packet' for every packet the client sends (PUBACK, PUBCOMP, PUBREL);
// - _disconnected is still the flag close() reads to skip the will;
// - incomingGetPacket still resolves only while a QoS 2 message waits for its PUBREL;
// - lib/write.js still writes every packet with mqtt-packet's writeToStream, looked up on the
//   module at each call; the client's mqtt-packet parser still takes a parsed CONNECT as its
//   settings; aedes-packet still copies `properties` and `messageExpiry`; the persistence still
//   goes through outgoingEnqueue(Combi)/outgoingUpdate/outgoingClearMessageId/outgoingStream
//   (sessions.ts replaces them).
// If one became public API, use that and drop the function; then unpin aedes once this file is empty.
// The tests that fail when one of these breaks: broker-limits (flow control), broker-reload (clients,
// will), writes (QoS 2 commands), broker-mqtt5 and broker-mqtt5-spec (MQTT 5, sessions).
import { createRequire } from 'node:module';
import type { Aedes, Client, PublishPacket } from 'aedes';
import type { Packet } from 'mqtt-packet';

/** One of a client's delivery functions: writes `packet` to the client, `done` when handed on. */
export type Deliver = (packet: PublishPacket, done: () => void) => void;

/** A client's two delivery functions. */
export interface ClientDeliveries {
  /** For QoS 1/2 subscriptions (aedes' own one hands a QoS 0 packet to deliver0). */
  deliverQoS: Deliver;
  /** For QoS 0 subscriptions: never needs an acknowledgement. */
  deliver0: Deliver;
}

/** A packet a client sent, as far as the functions here look at it. */
export interface ClientPacket {
  cmd: string;
  messageId?: number;
}

/** The fields of aedes' Client (lib/client.js) that are not in its types. */
interface ClientInternals extends ClientDeliveries {
  subscriptions: Record<string, { qos: number } | undefined>;
  _parser: { on(event: 'packet', listener: (packet: ClientPacket) => void): void };
  _disconnected: boolean;
}

/** The fields of the Aedes instance (aedes.js) that are not in its types. */
interface AedesInternals {
  clients: Record<string, Client>;
  persistence: { incomingGetPacket(client: Client, packet: { messageId?: number }): Promise<unknown> };
}

const clientInternals = (client: Client): ClientInternals => client as unknown as ClientInternals;
const aedesInternals = (aedes: Aedes): AedesInternals => aedes as unknown as AedesInternals;

/**
 * The client's delivery functions, and a way to put others in their place. Uses `client.deliverQoS`
 * and `client.deliver0` (own fields of aedes 1.2.0's Client): aedes has no flow control for
 * outgoing QoS 1/2 messages, and these are what every delivery to the client goes through.
 * Replace them before the client has subscriptions (preConnect): a subscription captures them.
 */
export function clientDeliveries(client: Client): ClientDeliveries {
  const internals = clientInternals(client);
  return { deliverQoS: internals.deliverQoS, deliver0: internals.deliver0 };
}

/** Puts `deliveries` in the place of the client's own delivery functions (see clientDeliveries). */
export function replaceClientDeliveries(client: Client, deliveries: ClientDeliveries): void {
  const internals = clientInternals(client);
  internals.deliver0 = deliveries.deliver0;
  internals.deliverQoS = deliveries.deliverQoS;
}

/**
 * The QoS of the client's subscription to exactly this filter, if it has one. Uses
 * `client.subscriptions` (aedes 1.2.0): aedes sends a QoS 1/2 message at QoS 0 to a QoS 0
 * subscription on exactly its topic, and then no acknowledgement comes.
 */
export function subscriptionQoS(client: Client, filter: string): number | undefined {
  return clientInternals(client).subscriptions[filter]?.qos;
}

/**
 * Calls `listener` with every packet the client sends, as aedes parses it. Uses `client._parser`
 * (aedes 1.2.0's mqtt-packet parser of the connection): aedes emits no event for PUBACK, PUBCOMP
 * or PUBREL from a client, which the flow control and the QoS 2 command check need.
 */
export function onClientPacket(client: Client, listener: (packet: ClientPacket) => void): void {
  clientInternals(client)._parser.on('packet', listener);
}

/**
 * The client's mqtt-packet parser, for refuseIllFormedStrings (mqtt-strings.ts). Uses
 * `client._parser` (see onClientPacket): created with the client, before it parses anything.
 */
export function clientParser(client: Client): unknown {
  return (client as Partial<ClientInternals>)._parser;
}

/**
 * Closes the client without publishing its will, as after a DISCONNECT packet. Uses
 * `client._disconnected` (aedes 1.2.0 sets it on DISCONNECT; close() publishes the will only
 * without it): aedes' close() has no option to drop the will.
 */
export function closeWithoutWill(client: Client): void {
  clientInternals(client)._disconnected = true;
  client.close();
}

/**
 * How many subscriptions the client has. Uses `client.subscriptions` (see subscriptionQoS): the
 * types offer no count, and the web console lists it per client.
 */
export function subscriptionCount(client: Client): number {
  return Object.keys(clientInternals(client).subscriptions).length;
}

/**
 * The connected clients. Uses `aedes.clients` (aedes 1.2.0 keeps them by client id): the types
 * give only their number (connectedClients).
 */
export function connectedClientList(aedes: Aedes): Client[] {
  return Object.values(aedesInternals(aedes).clients);
}

/** The connected client with this id, if any. Uses `aedes.clients` (see connectedClientList). */
export function connectedClient(aedes: Aedes, clientId: string): Client | undefined {
  return Object.hasOwn(aedesInternals(aedes).clients, clientId) ? aedesInternals(aedes).clients[clientId] : undefined;
}

/**
 * Resolves when aedes still holds this client's incoming QoS 2 message (it waits for its PUBREL),
 * rejects when it does not. Uses `client.broker` and `aedes.persistence.incomingGetPacket` (aedes 1.2.0's own check
 * for a resent QoS 2 PUBLISH): a persistent session may resend one after a reconnect, and that
 * is not a new message.
 */
export function incomingQoS2Held(client: Client, packet: { messageId?: number }): Promise<unknown> {
  const broker = (client as unknown as { broker: Aedes }).broker;
  return aedesInternals(broker).persistence.incomingGetPacket(client, packet);
}

/** A client's subscription as aedes keeps it (lib/handlers/subscribe.js Subscription). */
export interface ClientSubscription {
  topic: string;
  qos: number;
  rh?: number;
  rap?: boolean;
  nl?: boolean;
}

/**
 * The client's subscriptions with their options. Uses `client.subscriptions` (see
 * subscriptionQoS): an MQTT 5 client that takes up a live session by client id gets its
 * subscriptions (sessions.ts), and the types offer no list.
 */
export function clientSubscriptions(client: Client): ClientSubscription[] {
  const subscriptions = clientInternals(client).subscriptions as Record<string, Omit<ClientSubscription, 'topic'> | undefined>;
  return Object.entries(subscriptions).flatMap(([topic, sub]) =>
    sub ? [{ topic, qos: sub.qos, rh: sub.rh, rap: sub.rap, nl: sub.nl }] : [],
  );
}

/**
 * Was the client closed by its DISCONNECT packet (so without its will)? Uses `client._disconnected`
 * (see closeWithoutWill): MQTT 5 wills may be delayed, and then the broker publishes them itself.
 */
export function closedByDisconnect(client: Client): boolean {
  return clientInternals(client)._disconnected;
}

/**
 * Makes the client's parser read MQTT 5 packets after the CONNECT. Uses `client._parser` (see
 * onClientPacket) and its `settings`: mqtt-packet 9's Parser reads every packet but CONNECT at
 * `settings.protocolVersion`, and takes the parsed CONNECT itself as its settings. aedes accepts
 * 3.1.1 CONNECTs only, so MQTT 5 connections (mqtt5.ts) hand it a 3.1.1 CONNECT followed by MQTT 5
 * packets, whose properties and subscription options aedes' handlers carry.
 * Call it before the parser sees a byte (right after aedes.handle).
 */
export function parseAsMqtt5(client: Client): void {
  const parser = (client as unknown as { _parser: ParserInternals })._parser;
  parser.prependListener('packet', (packet: ClientPacket) => {
    // Runs before aedes sees the CONNECT and before the next packet is parsed.
    if (packet.cmd === 'connect') parser.settings = { protocolVersion: 5 };
  });
}

interface ParserInternals {
  settings: { protocolVersion?: number };
  prependListener(event: 'packet', listener: (packet: ClientPacket) => void): void;
}

type WriteToStream = (packet: Packet, stream: object, options?: unknown) => boolean;
const mqttPacket = createRequire(import.meta.url)('mqtt-packet') as { writeToStream: WriteToStream };
const packetWriters = new WeakMap<object, (packet: Packet) => boolean>();
const writtenIds = new WeakMap<object, Set<number>>();
let hooked = false;

/**
 * Hooks mqtt-packet's `writeToStream`, which aedes 1.2.0's lib/write.js calls (as a property of
 * the module, at each write) for every packet to a client. Streams nobody asked about (mqtt.js'
 * own, the uplink's) are written as before.
 */
function hookPacketWrites(): void {
  if (hooked) return;
  hooked = true;
  const encode = mqttPacket.writeToStream;
  mqttPacket.writeToStream = (packet, target, options) => {
    if (packet.cmd === 'publish' && packet.qos > 0 && packet.messageId !== undefined) writtenIds.get(target)?.add(packet.messageId);
    const writer = packetWriters.get(target);
    return writer ? writer(packet) : encode(packet, target, options);
  };
}

/**
 * Every packet aedes writes to `stream` goes to `write` as an object instead of being encoded
 * (see hookPacketWrites): aedes encodes at 3.1.1 only, and an MQTT 5 connection (mqtt5.ts) must
 * send the packet's properties (user properties, message expiry…) that aedes carries but cannot
 * encode. `write` returns false when the client's buffer is full; the stream emits 'drain' later.
 */
export function divertPacketWrites(stream: object, write: (packet: Packet) => boolean): void {
  hookPacketWrites();
  packetWriters.set(stream, write);
}

/**
 * The message ids of the QoS 1/2 publishes aedes writes to `stream` from now on (see
 * hookPacketWrites); the caller deletes an id when its acknowledgement comes. aedes has no record
 * of a clean session's deliveries, and a client acknowledging ids it was never sent must not
 * widen its flow-control window (inflight.ts).
 */
export function trackWrittenIds(stream: object): Set<number> {
  hookPacketWrites();
  let ids = writtenIds.get(stream);
  if (!ids) writtenIds.set(stream, (ids = new Set()));
  return ids;
}
