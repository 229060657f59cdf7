// The integrated MQTT broker (aedes inside the gateway process). Local HMIs, historians and
// MQTT devices connect to its listeners; the gateway publishes every sample into it.
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { createServer as createTlsServer, type TlsOptions } from 'node:tls';
import { Aedes, type AuthenticateHandler, type Client } from 'aedes';
import type { IConnectPacket } from 'mqtt-packet';
import type { Logger } from 'pino';
import { createWebSocketStream, WebSocketServer, type WebSocket } from 'ws';
import {
  clientParser,
  clientSubscriptions,
  closedByDisconnect,
  closeWithoutWill,
  connectedClient,
  connectedClientList,
  incomingQoS2Held,
  subscriptionCount,
} from './aedes-internals.js';
import { Episodes, episodesOf, limitSubscriptions, overSubscriptionLimit } from './client-limits.js';
import { addressKey, DUMMY_HASH, LoginLimiter, MAX_WAITING_PER_ADDRESS } from './login-limit.js';
import {
  guarded,
  MALFORMED_PACKET_MESSAGE,
  rememberRemote,
  remoteOf,
  remoteText,
  tlsFailureCause,
  type GuardVerdict,
  type Remote,
} from './packet-guard.js';
import { InboundQoS2, OutboundWindow } from './inflight.js';
import {
  bufferedToClient,
  clientReceiveMaximum,
  handleConnection,
  type Mqtt5Options,
  mqtt5ConnectOf,
  MALFORMED_PACKET,
  NOT_AUTHORIZED,
  noteTakeover,
  PACKET_TOO_LARGE,
  type PublishProperties,
  QUOTA_EXCEEDED,
  refuseMqtt5Connection,
  refuseMqtt5Publish,
  refuseMqtt5Subscription,
  SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
  type SubscriptionIds,
  wantsRetainedOnSubscribe,
} from './mqtt5.js';
import { expired, SessionStore, SessionTimers } from './sessions.js';
import { Acl, isSys, verifyPassword, type Identity } from './security.js';
import type { CommandOrigin } from '../commands/command-handler.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import { Fifo } from '../util/fifo.js';
import { RetainedStore } from './retained-store.js';

export { PacketSizeGuard } from './packet-guard.js';

// CONNACK return codes of MQTT 3.1.1 (aedes' AuthErrorCode is a const enum we can't import).
type AuthErrorCode = 2 | 4 | 5;
const AUTH_IDENTIFIER_REJECTED: AuthErrorCode = 2;
const AUTH_BAD_CREDENTIALS: AuthErrorCode = 4;
const AUTH_NOT_AUTHORIZED: AuthErrorCode = 5;

/**
 * What the clientPublish handler rejects with when the message must not be acknowledged (the outbox
 * dropped it before it was on disk). MQTT 5 clients get PUBACK 0x97 Quota exceeded and stay
 * connected; MQTT 3.1.1 has no negative PUBACK, so those clients are disconnected.
 */
export class PublishRefused extends Error {}

/**
 * aedes 1.2 cannot drop a publish without closing the connection. A publish of an MQTT 5 client
 * refused with a reason code (PUBACK/PUBREC 0x87 or 0x97, or silently at QoS 0) is therefore turned
 * into this topic before aedes goes on, which no delivery passes (authorizeForward), not retained
 * and without payload.
 */
const REFUSED_TOPIC = '$SYS/plc2mqtt/refused-publish';

export interface PublishOptions {
  qos: 0 | 1;
  retain: boolean;
  /** MQTT 5 properties for MQTT 5 subscribers (e.g. the correlation data of an answer). */
  properties?: PublishProperties;
}

/** A will as aedes keeps it (the CONNECT's will, with the MQTT 5 properties of its PUBLISH). */
type Will = NonNullable<IConnectPacket['will']>;

/** What a retained message carries beyond its payload, kept for the subscriptions made later. */
interface RetainedExtras {
  payload: Buffer;
  properties?: PublishProperties;
  messageExpiry?: number;
}

/**
 * What the broker asks the rest of the gateway, given once at start (never changed afterwards).
 * Both are called from aedes' authorizePublish, for messages of MQTT clients only (never for the
 * gateway's own publishes).
 */
export interface BrokerHandlers {
  /**
   * Every message an MQTT client publishes, after the ACL allowed it, before the broker takes it
   * (and before a QoS 1 PUBACK): a request, not an event. The cloud leg appends forwarded
   * messages to the outbox here and returns a promise that holds the PUBACK until the message is
   * on disk; rejecting with PublishRefused refuses it. Undefined: nothing to wait for.
   */
  clientPublish?: (topic: string, payload: Buffer, qos: number, retain: boolean) => Promise<void> | undefined;
  /**
   * Every message an MQTT client publishes, after the ACL allowed it (not a last will, not a QoS 2
   * repeat): the write path picks its command topics.
   */
  command?: (topic: string, payload: Buffer, retain: boolean, origin: CommandOrigin) => void;
}

export interface ListenerAddress {
  type: ListenerConfig['type'];
  host: string;
  port: number;
  url: string;
}

/** Messages handed to aedes at once. Its own queue (mqemitter) drains with Array.shift, O(n) per message. */
const MAX_IN_FLIGHT = 64;
/** Local publishes waiting beyond this are dropped oldest-first: local subscribers want current values. */
const MAX_QUEUED = 200_000;

/**
 * Who may connect and what they may do. Replaced as a whole when the config is reloaded; every
 * check reads the current one.
 */
interface Access {
  users: Map<string, string>;
  acl: Acl;
  /** With rules configured, every delivery is checked too (a persistent session may change hands). */
  aclConfigured: boolean;
  allowAnonymous: boolean;
}

function accessOf(config: Config['broker']): Access {
  return {
    users: new Map(config.users.map((user) => [user.username, user.passwordHash])),
    acl: new Acl(config.acl),
    aclConfigured: config.acl !== undefined,
    allowAnonymous: config.allowAnonymous,
  };
}

interface Login {
  username: string;
  hash: string;
}

/** The broker sections that a reload applies without restarting the broker. */
export const ACCESS_SETTINGS = ['users', 'acl', 'allowAnonymous'] as const;

/** The broker's session state beside aedes: store, timers and what MQTT 5 connections share. */
interface BrokerSessions {
  store: SessionStore;
  timers: SessionTimers;
  subscriptionIds: SubscriptionIds;
  /** Options of every MQTT 5 connection (handleConnection). */
  mqtt5: Mqtt5Options;
}

interface QueuedPublish {
  topic: string;
  payload: Buffer;
  options: PublishOptions;
}

/** A connected MQTT client, as the web console lists it. */
export interface BrokerClient {
  id: string;
  /** The username it logged in with; null when anonymous. */
  user: string | null;
  /** Its remote address:port (null over WebSockets when unknown). */
  address: string | null;
  subscriptions: number;
  /** QoS 1/2 deliveries written and not acknowledged, plus those queued for it. */
  queued: number;
}

export interface BrokerStats {
  /** Messages the gateway handed to the broker. */
  published: number;
  /** Of those, dropped because local subscribers could not keep up. */
  dropped: number;
  errors: number;
  /** Messages MQTT clients published. */
  messagesIn: number;
  /** Deliveries to MQTT clients. */
  messagesOut: number;
  /** Connections refused and publishes/subscriptions denied. */
  denied: number;
  /** Messages not kept for a session that was full (broker.limits.maxInflight + maxQueued). */
  sessionDropped: number;
  /** QoS 0 deliveries dropped for clients that did not read (their connection was full). */
  qos0Dropped: number;
}

export class IntegratedBroker {
  readonly aedes: Aedes;
  readonly stats: BrokerStats = {
    published: 0,
    dropped: 0,
    errors: 0,
    messagesIn: 0,
    messagesOut: 0,
    denied: 0,
    sessionDropped: 0,
    qos0Dropped: 0,
  };
  private readonly queue = new Fifo<QueuedPublish>();
  private inFlight = 0;
  private dropping = false;
  private pumping = false;
  private readonly servers: Array<{ server: Server; listener: ListenerConfig }> = [];
  private readonly webSocketServers: WebSocketServer[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly wsSockets = new Set<WebSocket>();
  private readonly noted = new Set<string>();
  private retained: RetainedStore | undefined;
  private readonly log: Logger;
  private readonly config: Config['broker'];
  private access: Access;
  /** The username each authenticated client logged in with, and the password hash it was checked against. */
  private readonly logins: WeakMap<Client, Login>;
  private readonly outbound: WeakMap<Client, OutboundWindow>;
  private readonly sessions: BrokerSessions;

  private constructor(
    aedes: Aedes,
    config: Config['broker'],
    log: Logger,
    access: Access,
    logins: WeakMap<Client, Login>,
    outbound: WeakMap<Client, OutboundWindow>,
    sessions: BrokerSessions,
  ) {
    this.aedes = aedes;
    this.config = config;
    this.log = log;
    this.access = access;
    this.logins = logins;
    this.outbound = outbound;
    this.sessions = sessions;
  }

  /** The connected clients: id, user, address, subscriptions and deliveries waiting (the web console). */
  clients(): BrokerClient[] {
    return connectedClientList(this.aedes).map((client) => {
      const socket = client.conn as { remoteAddress?: string; remotePort?: number } | undefined;
      const address = socket?.remoteAddress === undefined ? null : `${socket.remoteAddress}:${socket.remotePort ?? '?'}`;
      return {
        id: client.id,
        user: this.logins.get(client)?.username ?? null,
        address,
        subscriptions: subscriptionCount(client),
        queued: this.outbound.get(client)?.waiting ?? 0,
      };
    });
  }

  static async start(config: Config['broker'], log: Logger, dataDir: string, handlers: BrokerHandlers = {}): Promise<IntegratedBroker> {
    const { clientPublish, command: onCommand } = handlers;
    let broker: IntegratedBroker | undefined;
    const initialAccess = accessOf(config);
    // Always the access in effect now (a reload replaces it).
    const access = (): Access => broker?.access ?? initialAccess;
    const logins = new WeakMap<Client, Login>();
    const usernameOf = (client: Client) => logins.get(client)?.username;
    const outbound = new WeakMap<Client, OutboundWindow>();
    const inboundQoS2 = new WeakMap<Client, InboundQoS2>();
    const identity = (client: Client): Identity => ({ username: usernameOf(client), clientId: client.id });
    /**
     * Clients whose CONNECT had an empty client id where one is required: refused in authenticate,
     * the first step after preConnect that can answer with a CONNACK, before aedes stores anything.
     */
    const badClientIds = new WeakSet<Client>();
    const { limits } = config;
    const sessions: BrokerSessions = {
      // A session holds what the flow control lets wait for a connected client (inflight.ts).
      store: new SessionStore(limits.maxInflight + limits.maxQueued, (clientId) => broker?.sessionQueueFull(clientId)),
      timers: new SessionTimers(),
      subscriptionIds: new Map(),
      mqtt5: {
        maxPacketSize: limits.maxPacketSize,
        receiveMaximum: limits.maxInflight,
        keepAlive: limits.keepAlive,
        maxSessionExpiry: Math.floor(limits.maxSessionExpiry / 1000),
      },
    };
    sessions.mqtt5.subscriptionIds = sessions.subscriptionIds;
    const retainedExtras = new Map<string, RetainedExtras>();
    /** The client aedes registered last for each id (see the 'client' handler). */
    const registered = new Map<string, Client>();
    /** MQTT 5 wills with a Will Delay Interval: published by the broker, not by aedes. */
    const delayedWills = new WeakMap<Client, Will>();
    /**
     * Connections past their login and not yet registered by aedes, by client id: their session is
     * being taken up, so a timer of the old connection must not end it meanwhile.
     */
    const arriving = new Map<string, Client>();
    /** The client holding this id: connected, or past its login and about to be. */
    const connected = (clientId: string): Client | undefined => {
      const pending = arriving.get(clientId);
      if (pending && !pending.closed) return pending;
      if (pending) arriving.delete(clientId);
      return connectedClient(aedes, clientId);
    };
    /** Whether a client's CONNECT had Clean Start (MQTT 5) / Clean Session (3.1.1, which aedes keeps as is). */
    const cleanStart = (client: Client): boolean => mqtt5ConnectOf(client.conn)?.cleanStart ?? client.clean;
    /** Ends a session that outlived its connection: nobody took it up in time. */
    const endSession = (clientId: string) => {
      if (connected(clientId)) return;
      sessions.timers.sendWillNow(clientId);
      sessions.subscriptionIds.delete(clientId);
      sessions.store
        .endSession(clientId)
        .catch((error: unknown) => log.warn({ clientId, error: String(error) }, 'ending a session failed'));
    };
    /** Publishes a will as aedes does when a connection breaks: after the publish checks, as its client. */
    const publishWill = (client: Client, will: Will) => {
      const packet = {
        cmd: 'publish' as const,
        dup: false,
        ...will,
        qos: will.qos ?? 0,
        retain: will.retain ?? false,
        payload: Buffer.from(will.payload),
      };
      aedes.authorizePublish(client, packet, (error) => {
        if (!error) aedes.publish(packet, () => undefined);
      });
    };
    /**
     * What becomes of an earlier session under this client id; aedes knows 3.1.1's Clean Session
     * only. MQTT 5 keeps Clean Start (at connect: discard the old session?) apart from Session
     * Expiry (after the connection: keep it how long?), 3.1.2.4:
     * - Clean Start 1, no expiry: aedes' clean session.
     * - Clean Start 1 with an expiry: the old session is ended here, then aedes keeps a new one.
     * - Clean Start 0: aedes resumes the session, a live one too: a client holding it that aedes
     *   keeps no session for (Clean Start 1, no expiry) hands over its subscriptions first.
     * 3.1.1 persistent sessions expire too, after broker.limits.maxSessionExpiry.
     * decideSession only sets the CONNECT up (preConnect, before aedes copies it); takeUpSession
     * acts on the old session, once the client has logged in (a failed login changes nothing).
     */
    const decideSession = (client: Client, packet: IConnectPacket): void => {
      const v5 = mqtt5ConnectOf(client.conn);
      if (v5) {
        const will = packet.will as Will | undefined;
        if (will && v5.willProperties) will.properties = v5.willProperties;
        if (will && v5.willDelay > 0) {
          delayedWills.set(client, will);
          packet.will = undefined;
        }
        if (!v5.cleanStart || v5.sessionExpiry > 0) packet.clean = false;
      }
    };
    const takeUpSession = async (client: Client): Promise<void> => {
      const clientId = client.id;
      // aedes names a 3.1.1 client without an id itself (clean sessions only): nothing to take up.
      if (!clientId) return;
      const live = connected(clientId);
      arriving.set(clientId, client);
      if (live && live !== client) noteTakeover(live.conn, client);
      sessions.timers.cancelExpiry(clientId);
      const v5 = mqtt5ConnectOf(client.conn);
      if (cleanStart(client)) {
        // The old session ends now, and a will it still delays goes with it.
        sessions.timers.sendWillNow(clientId);
        sessions.subscriptionIds.delete(clientId);
        if (v5 && v5.sessionExpiry > 0) await sessions.store.endSession(clientId);
        return;
      }
      sessions.timers.dropWill(clientId);
      if (v5 && live && live !== client && live.clean) await sessions.store.addSubscriptions({ id: clientId }, clientSubscriptions(live));
    };
    /** Runs takeUpSession once `authenticate` let a client in, before aedes restores its session. */
    const afterLogin =
      (authenticate: AuthenticateHandler): AuthenticateHandler =>
      (client, username, password, callback) =>
        authenticate(client, username, password, (error, success) => {
          if (error || !success) return callback(error, success);
          takeUpSession(client).then(
            () => callback(null, true),
            (failure: unknown) => callback(Object.assign(new Error(String(failure)), { returnCode: AUTH_NOT_AUTHORIZED }), false),
          );
        });
    const aedes: Aedes = await Aedes.createBroker({
      persistence: sessions.store,
      // Keep-alive bounds and the connection limit, before anything else is done for the client.
      preConnect: (client, packet, callback) => {
        const refuse = (reason: string) => {
          broker?.noteOnce(`refused:${reason}`, { clientId: packet.clientId, reason }, 'mqtt client refused');
          // With an error aedes closes the connection; without one it would leave the socket open.
          callback(new Error(reason), false);
        };
        if (broker && broker.aedes.connectedClients >= limits.maxConnections)
          return refuse(`too many connections (broker.limits.maxConnections = ${limits.maxConnections})`);
        const keepalive = packet.keepalive ?? 0;
        if (keepalive * 1000 > limits.keepAlive.max) return refuse(`keep-alive ${keepalive}s is longer than broker.limits.keepAlive.max`);
        if (limits.keepAlive.min > 0 && (keepalive === 0 || keepalive * 1000 < limits.keepAlive.min))
          return refuse(`keep-alive ${keepalive}s is shorter than broker.limits.keepAlive.min`);
        // [MQTT-3.1.3-8]: an empty client id with Clean Session 0 asks for a session nobody could
        // resume (aedes would store it under a random id); MQTT 3.1 requires an id always. MQTT 5
        // clients are answered by the bridge (mqtt5.ts) before aedes sees them.
        if (packet.clientId === '' && (packet.clean === false || packet.protocolVersion === 3)) badClientIds.add(client);
        inboundQoS2.set(client, InboundQoS2.watch(client));
        outbound.set(
          client,
          OutboundWindow.watch(
            client,
            limits,
            (waiting) => {
              broker?.noteOnce(
                `inflight:${client.id}`,
                { clientId: client.id, waiting, maxInflight: limits.maxInflight, maxQueued: limits.maxQueued },
                'mqtt client does not keep up with its QoS 1/2 messages (broker.limits.maxInflight + maxQueued unacknowledged): disconnected',
              );
              client.close();
            },
            {
              clientReceiveMaximum: clientReceiveMaximum(client.conn),
              bufferedBytes: () => bufferedToClient(client.conn),
              qos0BufferLimit: Math.max(1024 * 1024, 2 * limits.maxPacketSize),
              onQos0Dropped: () => {
                broker!.stats.qos0Dropped++;
                broker?.warnOnce(
                  `qos0:${client.id}`,
                  { clientId: client.id },
                  'mqtt client does not read: QoS 0 messages for it are dropped while its connection is full (counted in broker stats)',
                );
              },
            },
          ),
        );
        decideSession(client, packet);
        callback(null, true);
      },
      // Password checks (scrypt) wait in a queue fair between remote addresses, one at a time per
      // address, delayed after its failures; an address with too many waiting gets the excess
      // refused unchecked (login-limit.ts). A wrong password never locks out the right one.
      authenticate: afterLogin(
        ((): AuthenticateHandler => {
          const limiter = new LoginLimiter();
          const floods = new Episodes<{ address: string; remote: string }>(
            60_000,
            (_key, fields) =>
              broker?.log.warn(
                { ...fields, maxWaiting: MAX_WAITING_PER_ADDRESS },
                'mqtt logins refused: too many waiting for their password check from one address',
              ),
            (_key, refused, { address }) => broker?.log.info({ address, refused }, 'mqtt logins from one address no longer refused'),
          );
          return (client, username, password, callback) => {
            const remote: Remote = remoteOf(client) ?? {
              address: (client.conn as { remoteAddress?: string } | undefined)?.remoteAddress ?? client.req?.socket.remoteAddress,
              port: (client.conn as { remotePort?: number } | undefined)?.remotePort ?? client.req?.socket.remotePort,
            };
            const address = addressKey(remote.address ?? 'unknown');
            const fail = (code: AuthErrorCode, why: string) => {
              // Once per address, user and reason (a flood of client ids is one line), never with the password.
              broker?.noteOnce(
                `auth:${address}:${username ?? ''}:${why}`,
                { remote: remoteText(remote), clientId: client.id, username, why },
                'mqtt client authentication failed',
              );
              callback(Object.assign(new Error(why), { returnCode: code }), false);
            };
            if (badClientIds.has(client)) {
              broker?.noteOnce(
                'refused:emptyClientId',
                { remote: remoteText(remote) },
                'mqtt client refused: empty client id without a clean session (CONNACK 2 identifier rejected)',
              );
              return callback(
                Object.assign(new Error('empty client id without a clean session'), { returnCode: AUTH_IDENTIFIER_REJECTED }),
                false,
              );
            }
            if (username === undefined) {
              return access().allowAnonymous
                ? callback(null, true)
                : fail(AUTH_NOT_AUTHORIZED, 'anonymous access is off (broker.allowAnonymous)');
            }
            if (password === undefined) return fail(AUTH_BAD_CREDENTIALS, 'unknown user or no password');
            const hash = access().users.get(username);
            // An unknown user costs a check too: the answer's timing tells nothing about which users exist.
            limiter
              .check(
                remote.address ?? 'unknown',
                () => verifyPassword(password.toString('utf8'), hash ?? DUMMY_HASH),
                () => client.closed,
              )
              .then((result) => {
                if (result.outcome === 'refused') {
                  if (broker) broker.stats.denied++;
                  floods.hit(address, { address, remote: remoteText(remote) });
                  return callback(
                    Object.assign(new Error('too many logins from this address are waiting for their password check'), {
                      returnCode: AUTH_NOT_AUTHORIZED,
                    }),
                    false,
                  );
                }
                if (result.outcome === 'abandoned')
                  return callback(
                    Object.assign(new Error('the client left before its password was checked'), { returnCode: AUTH_NOT_AUTHORIZED }),
                    false,
                  );
                if (hash === undefined) return fail(AUTH_BAD_CREDENTIALS, 'unknown user or no password');
                if (!result.ok) return fail(AUTH_BAD_CREDENTIALS, 'wrong password');
                // A reload while the hash was being checked may have removed the user or changed the password.
                if (access().users.get(username) !== hash) return fail(AUTH_BAD_CREDENTIALS, 'the user changed while logging in');
                logins.set(client, { username, hash });
                callback(null, true);
              });
          };
        })(),
      ),
      authorizePublish: (client, packet, callback) => {
        const properties = packet.properties;
        // MQTT 5 Message Expiry: the interval counts from now, for every copy of the message.
        const timed = packet as { messageExpiry?: number };
        if (properties?.messageExpiryInterval !== undefined && timed.messageExpiry === undefined)
          timed.messageExpiry = Date.now() + properties.messageExpiryInterval * 1000;
        /**
         * Refuses the publish. An MQTT 5 client gets PUBACK/PUBREC with `reasonCode` (nothing at
         * QoS 0) and stays connected (3.3.4); 3.1.1 has no negative acknowledgement, so aedes closes
         * the connection on the error. A will (its client is closed) is simply not published.
         */
        const refuse = (error: Error, reasonCode: number) => {
          if (!client || client.closed || !mqtt5ConnectOf(client.conn)) return callback(error);
          if (packet.qos > 0 && packet.messageId !== undefined) refuseMqtt5Publish(client.conn, packet.messageId, reasonCode);
          // The message itself reaches no subscriber and is not retained.
          packet.topic = REFUSED_TOPIC;
          packet.payload = Buffer.alloc(0);
          packet.retain = false;
          callback(null);
        };
        if (packet.topic.startsWith('$SYS')) return refuse(new Error('$SYS topics are reserved for the broker'), NOT_AUTHORIZED);
        if (client && !access().acl.mayPublish(identity(client), packet.topic)) {
          broker?.noteOnce(
            `pub:${client.id}:${packet.topic}`,
            { clientId: client.id, username: usernameOf(client), topic: packet.topic },
            'publish denied by the ACL',
          );
          return refuse(new Error(`not allowed to publish on ${packet.topic}`), NOT_AUTHORIZED);
        }
        if (client) {
          broker!.stats.messagesIn++;
          // After the ACL: who may publish on a command topic may ask for a write (the write path decides the rest).
          // Not for a last will (aedes publishes it as the closing client: a dropped HMI must not
          // write to a PLC) nor for a QoS 2 repeat of a message already seen.
          const command =
            onCommand !== undefined && !client.closed && !(packet.qos === 2 && inboundQoS2.get(client)?.isRepeat(packet.messageId));
          if (command) {
            const origin: CommandOrigin = { source: 'local', clientId: client.id, username: usernameOf(client) };
            // MQTT 5 request/response: answered where the client asked, if it may both read and
            // publish there itself; the gateway checks that the topic is not one of its own.
            const responseTopic = properties?.responseTopic;
            if (
              responseTopic !== undefined &&
              !responseTopic.startsWith('$') &&
              !/[+#]/.test(responseTopic) &&
              access().acl.maySubscribe(identity(client), responseTopic) &&
              access().acl.mayPublish(identity(client), responseTopic)
            ) {
              origin.responseTopic = responseTopic;
              origin.correlationData = properties?.correlationData;
            }
            const fire = () =>
              onCommand!(
                packet.topic,
                Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload),
                packet.retain,
                origin,
              );
            // A persistent session may resend a QoS 2 message after a reconnect (before its PUBREL):
            // aedes still holds it then, and it is not a new command.
            if (packet.qos === 2 && !client.clean) incomingQoS2Held(client, packet).then(() => undefined, fire);
            else fire();
          }
        }
        const hook = client
          ? clientPublish?.(
              packet.topic,
              Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload),
              packet.qos,
              packet.retain,
            )
          : undefined;
        if (!hook || !client) return callback(null);
        hook.then(
          () => callback(null),
          (error: unknown) => {
            if (!(error instanceof PublishRefused)) return callback(error instanceof Error ? error : new Error(String(error)));
            const mqtt5 = !client.closed && mqtt5ConnectOf(client.conn) !== undefined;
            broker?.warnOnce(
              `refused:${client.id}`,
              {
                clientId: client.id,
                topic: packet.topic,
                qos: packet.qos,
                why: error.message,
                answer: mqtt5
                  ? `${packet.qos === 2 ? 'PUBREC' : 'PUBACK'} 0x97 quota exceeded`
                  : 'disconnected (MQTT 3.1.1 has no negative PUBACK)',
              },
              'publish refused: not acknowledged, because the outbox did not keep it',
            );
            // Closing the connection at once would discard the PUBACKs of the messages kept in the
            // same commit, which aedes has written but not yet flushed.
            if (!mqtt5) return void setImmediate(() => callback(error));
            refuse(error, QUOTA_EXCEEDED);
          },
        );
      },
      authorizeSubscribe: (client, subscription, callback) => {
        // Shared subscriptions (MQTT 5 4.8.2) are not offered, and say so (CONNACK
        // sharedSubscriptionAvailable false; SUBACK 0x9E, 0x80 in 3.1.1) instead of a grant that
        // would never deliver.
        if (subscription.topic.startsWith('$share/')) {
          refuseMqtt5Subscription(client.conn, subscription.topic, SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
          broker?.warnOnce(
            `shared:${client.id}`,
            { clientId: client.id, topic: subscription.topic },
            'shared subscription refused: the integrated broker does not offer $share (SUBACK 0x9E; 0x80 for MQTT 3.1.1)',
          );
          return callback(null, null);
        }
        if (overSubscriptionLimit(client, subscription.topic)) {
          refuseMqtt5Subscription(client.conn, subscription.topic, QUOTA_EXCEEDED);
          return callback(null, null);
        }
        if (access().acl.maySubscribe(identity(client), subscription.topic)) return callback(null, subscription);
        broker?.noteOnce(
          `sub:${client.id}:${subscription.topic}`,
          { clientId: client.id, username: usernameOf(client), topic: subscription.topic },
          access().aclConfigured
            ? 'subscribe denied by the ACL'
            : 'subscribe denied: $SYS is only for users an ACL rule grants it (broker.acl)',
        );
        // null grants nothing: the SUBACK carries 0x80 for this filter and the client stays connected.
        callback(null, null);
      },
      authorizeForward: (client, packet) => {
        if (packet.topic === REFUSED_TOPIC) return null;
        const timed = packet as typeof packet & { messageExpiry?: number; brokerId?: string | null };
        // A retained message sent because of a new subscription (aedes makes it without a broker id).
        if (timed.brokerId === null && packet.retain) {
          // MQTT 5 Retain Handling of the subscription that asked for it.
          if (!wantsRetainedOnSubscribe(client.conn, packet.topic)) return null;
          // aedes copies only topic and payload: the properties and expiry come back from here.
          const extras = retainedExtras.get(packet.topic);
          const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
          if (extras?.payload.equals(payload)) {
            if (extras.properties !== undefined) packet.properties = extras.properties;
            if (extras.messageExpiry !== undefined) timed.messageExpiry = extras.messageExpiry;
          }
        }
        // [MQTT-3.3.2-5]: an expired message is delivered to nobody any more.
        if (expired(timed)) return null;
        // Messages queued for a persistent session were matched against whoever subscribed; the
        // client now holding that session id may be someone else: check its own rights again.
        // (And after a reload, existing subscriptions get only what the new rules allow.)
        // $SYS is checked without rules too: it is only for clients a rule grants it (security.ts).
        if ((access().aclConfigured || isSys(packet.topic)) && !access().acl.maySubscribe(identity(client), packet.topic)) return null;
        broker!.stats.messagesOut++;
        outbound.get(client)?.forwarded(packet);
        return packet;
      },
      // QoS 2 messages a client may leave waiting for PUBREL; one that sends more is disconnected.
      // (The outbound direction is bounded by OutboundWindow, in preConnect.)
      maxInflightInbound: limits.maxInflight,
      // Clients that open a socket and never send CONNECT don't hold a connection slot for long.
      connectTimeout: 10_000,
    });
    broker = new IntegratedBroker(aedes, config, log, initialAccess, logins, outbound, sessions);
    // A reload between a client's login and its registration (aedes first restores a persistent
    // session, across event-loop turns) does not see it yet: checked again once it is registered.
    aedes.on('client', (client) => {
      if (arriving.get(client.id) === client) arriving.delete(client.id);
      // [MQTT-3.1.4-3]: one connection per client id. aedes closes the one it has registered, but
      // two connections registering at once can both stay: the older one goes here.
      const previous = registered.get(client.id);
      registered.set(client.id, client);
      if (previous && previous !== client && !previous.closed) {
        noteTakeover(previous.conn, client);
        previous.close();
      }
      // Registered: a will or expiry an old connection of this id armed meanwhile is void.
      sessions.timers.dropWill(client.id);
      sessions.timers.cancelExpiry(client.id);
      broker?.dropIfLoginLapsed(client, 'reloaded while logging in');
    });
    // The connection is gone; the session may outlive it (prepareSession), and an MQTT 5 will may wait.
    aedes.on('clientDisconnect', (client) => {
      const clientId = client.id;
      const will = closedByDisconnect(client) ? undefined : delayedWills.get(client);
      // A DISCONNECT may have changed the MQTT 5 session expiry.
      const v5 = mqtt5ConnectOf(client.conn);
      // How long the session outlives the connection: 3.1.1 persistent sessions the longest allowed.
      const endsIn = client.clean ? 0 : v5 ? v5.sessionExpiry * 1000 : limits.maxSessionExpiry;
      if (registered.get(clientId) === client) registered.delete(clientId);
      // aedes closes a client whose id connects again before it registers the new one: look once that is done.
      setImmediate(() => {
        const successor = connected(clientId);
        if (successor && successor !== client) {
          // Taken over: with Clean Start 0 the session goes on (and a delayed will is not sent,
          // [MQTT-3.1.3-9]); Clean Start 1 ended it, and its will goes now.
          if (will && cleanStart(successor)) publishWill(client, will);
          return;
        }
        if (will) sessions.timers.delayWill(clientId, Math.min(v5!.willDelay * 1000, endsIn), () => publishWill(client, will));
        if (client.clean) sessions.subscriptionIds.delete(clientId);
        else sessions.timers.expireAfter(clientId, endsIn, () => endSession(clientId));
      });
    });
    // What retained messages carry beyond their payload, for subscriptions made later (authorizeForward).
    aedes.on('publish', (packet) => {
      if (!packet.retain || packet.topic.startsWith('$')) return;
      const { properties, messageExpiry } = packet as { properties?: PublishProperties; messageExpiry?: number };
      const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
      if (payload.length === 0 || (properties === undefined && messageExpiry === undefined)) retainedExtras.delete(packet.topic);
      else retainedExtras.set(packet.topic, { payload, properties, messageExpiry });
    });
    // A packet the parser (mqtt-packet) refuses is the client's fault: a warning, once per address.
    // Everything else (resets, keep-alive timeouts) is the normal life of a network: debug.
    const malformed = (client: Client | undefined, error: Error): boolean => {
      if (!client || (clientParser(client) as { error?: unknown } | undefined)?.error !== error) return false;
      const remote = remoteOf(client);
      broker?.noteOnce(
        `malformed:${remote?.address ?? 'unknown'}`,
        { remote: remoteText(remote), clientId: client.id || undefined, error: error.message },
        MALFORMED_PACKET_MESSAGE,
      );
      return true;
    };
    aedes.on('clientError', (client, error) => {
      if (!malformed(client, error))
        log.debug({ clientId: client.id, remote: remoteText(remoteOf(client)), error: error.message }, 'mqtt client error');
    });
    aedes.on('connectionError', (client, error) => {
      if (!malformed(client, error))
        log.debug({ clientId: client?.id, remote: remoteText(remoteOf(client)), error: error.message }, 'mqtt connection error');
    });
    try {
      if (config.persistRetained) await broker.restoreRetained(join(dataDir, 'retained.db'));
      for (const listener of config.listeners) await broker.listen(listener);
    } catch (error) {
      await broker.close();
      throw error;
    }
    return broker;
  }

  /**
   * Users, passwords, ACL rules and anonymous access from a reloaded config, without restarting the
   * broker. Clients that logged in as a user who is gone or has a new password, and anonymous ones
   * when anonymous access is now off, are disconnected (they may log in again under the new
   * rules). Everyone else stays connected; their next publish, subscribe and every delivery (also
   * on existing subscriptions) is checked against the new rules. Returns the disconnected client ids.
   */
  reloadAccess(config: Pick<Config['broker'], (typeof ACCESS_SETTINGS)[number]>): string[] {
    this.access = accessOf({ ...this.config, ...config });
    // Denials are logged once per client and topic; under new rules they are news again.
    this.noted.clear();
    const clients = connectedClientList(this.aedes);
    return clients.filter((client) => this.dropIfLoginLapsed(client, 'reloaded')).map((client) => client.id);
  }

  /**
   * Disconnects a client whose login no longer holds under the current access: its user is gone
   * or has another password hash, or it is anonymous and anonymous access is off. Its will is not
   * published (it would speak for a login that was revoked). True when it was disconnected.
   */
  private dropIfLoginLapsed(client: Client, when: string): boolean {
    const login = this.logins.get(client);
    const holds = login === undefined ? this.access.allowAnonymous : this.access.users.get(login.username) === login.hash;
    if (holds) return false;
    this.log.warn(
      {
        clientId: client.id,
        username: login?.username,
        when,
        why: login === undefined ? 'anonymous access is now off' : 'the user was removed or has a new password',
      },
      'mqtt client disconnected by the reloaded broker users',
    );
    // As after a DISCONNECT packet: aedes then drops the will instead of publishing it.
    closeWithoutWill(client);
    return true;
  }

  /** Loads the retained messages of the last run into aedes, then mirrors every change to disk. */
  private async restoreRetained(file: string): Promise<void> {
    const store = RetainedStore.open(file, this.log);
    this.retained = store;
    const messages = store.all();
    for (const message of messages) await this.publishNow(message.topic, message.payload, { qos: message.qos, retain: true });
    if (messages.length > 0) this.log.info({ retained: messages.length }, 'retained messages restored');
    this.aedes.on('publish', (packet) => {
      if (packet.retain && !packet.topic.startsWith('$SYS')) {
        store.record({
          topic: packet.topic,
          payload: Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload),
          qos: packet.qos === 0 ? 0 : 1,
        });
      }
    });
  }

  /** A message for a session that holds broker.limits.maxInflight + maxQueued already: not kept, counted. */
  sessionQueueFull(clientId: string): void {
    this.stats.sessionDropped++;
    this.warnOnce(
      `session-full:${clientId}`,
      { clientId, kept: this.config.limits.maxInflight + this.config.limits.maxQueued },
      'session full (broker.limits.maxInflight + maxQueued messages): new messages for this client are not kept for it (counted in broker stats)',
    );
  }

  /** Logs a refusal or denial once per key (client and topic), never with a payload. */
  private noteOnce(key: string, fields: Record<string, unknown>, message: string): void {
    this.stats.denied++;
    this.warnOnce(key, fields, message);
  }

  /** A warning once per key (until a reload), never with a payload. */
  private warnOnce(key: string, fields: Record<string, unknown>, message: string): void {
    if (this.noted.has(key)) return;
    if (this.noted.size > 10_000) this.noted.clear();
    this.noted.add(key);
    this.log.warn(fields, message);
  }

  private listen(listener: ListenerConfig): Promise<void> {
    const { maxPacketSize, maxSubscriptions, maxConnections } = this.config.limits;
    // aedes has no packet size limit: every chunk a connection receives passes the guard
    // (packet-guard.ts) before aedes buffers it; a client announcing a bigger packet is cut
    // before its payload comes, one sending bytes no MQTT packet starts with too.
    const guard = <T extends Readable>(stream: T, remote: Remote): T =>
      guarded(stream, maxPacketSize, (verdict: GuardVerdict, cut) => {
        if (verdict.problem === 'size')
          this.noteOnce(
            `size:${remoteText(remote)}`,
            { remote: remoteText(remote), bytes: verdict.bytes, max: maxPacketSize },
            'mqtt packet larger than broker.limits.maxPacketSize: client disconnected',
          );
        // Once per address, as the parser's own refusals (the aedes connectionError handler).
        else
          this.noteOnce(
            `malformed:${remote.address ?? 'unknown'}`,
            { remote: remoteText(remote), error: verdict.reason },
            MALFORMED_PACKET_MESSAGE,
          );
        // An MQTT 5 client is told why first: DISCONNECT 0x95 [MQTT-3.2.2-15] or 0x81.
        return refuseMqtt5Connection(cut, verdict.problem === 'size' ? PACKET_TOO_LARGE : MALFORMED_PACKET);
      });
    // What aedes makes of a connection, with who is on the other end and the client's own limits.
    const front = (remote: Remote): Pick<Aedes, 'handle'> => ({
      handle: (stream, request) => {
        const client = this.aedes.handle(stream, request);
        rememberRemote(client, remote);
        limitSubscriptions(client, maxSubscriptions, (refused, filter) =>
          this.noteOnce(
            `maxSubscriptions:${refused.id}`,
            { clientId: refused.id, remote: remoteText(remote), filter, max: maxSubscriptions },
            'subscription refused: the client has broker.limits.maxSubscriptions subscriptions',
          ),
        );
        return client;
      },
    });
    const accept = (socket: Socket) => {
      if (socket.destroyed) return; // refused by the connection limit
      const remote: Remote = { address: socket.remoteAddress, port: socket.remotePort };
      handleConnection(front(remote), guard(socket, remote), this.sessions.mqtt5);
    };
    let server: Server;
    // No Nagle: a subscriber's keep-alive ping otherwise meets a delayed ACK and holds the next
    // messages ~40 ms (bench/serial-latency.ts showed it every keep-alive period). HTTP servers set it already.
    if (listener.type === 'tcp') server = createServer({ noDelay: true }, accept);
    else if (listener.type === 'tls') server = createTlsServer({ ...tlsOptions(listener), noDelay: true }, accept);
    else {
      const http = listener.type === 'wss' ? createHttpsServer(tlsOptions(listener)) : createHttpServer();
      // A WebSocket message may carry several MQTT packets or part of one: the MQTT guard decides;
      // maxPayload only bounds what one frame can make us buffer.
      const wss = new WebSocketServer({ server: http, path: listener.path, maxPayload: Math.max(16 * maxPacketSize, 16 * 1024 * 1024) });
      wss.on('connection', (ws, request) => {
        const stream = createWebSocketStream(ws);
        stream.on('error', () => ws.terminate());
        this.wsSockets.add(ws);
        ws.once('close', () => this.wsSockets.delete(ws));
        const remote: Remote = { address: request.socket.remoteAddress, port: request.socket.remotePort, websocket: true };
        handleConnection(front(remote), guard(stream, remote), this.sessions.mqtt5, request);
      });
      this.webSocketServers.push(wss);
      server = http;
    }
    if (listener.type === 'tls' || listener.type === 'wss') {
      // One line per address and cause (a client retrying with the same problem is one line).
      // The TLS socket of a failed handshake may be closed already (no address left): its TCP
      // socket (node's _parent) was remembered when it connected.
      server.on(
        'tlsClientError',
        (error: Error & { code?: string }, socket: { remoteAddress?: string; remotePort?: number; _parent?: object }) => {
          const cause = tlsFailureCause(error);
          const remote = remoteOf(socket._parent) ?? { address: socket.remoteAddress, port: socket.remotePort };
          this.noteOnce(
            `tls:${remote.address ?? 'unknown'}:${cause}`,
            { remote: remoteText(remote), cause, error: error.message },
            'TLS handshake failed',
          );
        },
      );
    }
    // The connection limit counts sockets, so simultaneous connects and clients that never send
    // CONNECT are limited too (aedes counts clients only once they are connected). Refusals are
    // logged by episode: a warning when the first comes, a count when a connection is accepted
    // again or none was refused for a minute (one broker, all listeners).
    const refusals = episodesOf(
      this,
      'maxConnections',
      () =>
        new Episodes<{ remote: string; max: number }>(
          60_000,
          (_key, fields) => this.log.warn(fields, 'connection refused: broker.limits.maxConnections reached'),
          (_key, refused, { max }) =>
            this.log.info({ refused, max }, 'connections refused for broker.limits.maxConnections: the episode ended'),
        ),
    );
    server.prependListener('connection', (socket: Socket) => {
      if (this.sockets.size >= maxConnections) {
        this.stats.denied++;
        refusals.hit('maxConnections', {
          remote: remoteText({ address: socket.remoteAddress, port: socket.remotePort }),
          max: maxConnections,
        });
        socket.destroy();
        return;
      }
      refusals.end('maxConnections');
      rememberRemote(socket, { address: socket.remoteAddress, port: socket.remotePort });
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    this.servers.push({ server, listener });
    return new Promise((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        const hint =
          error.code === 'EADDRINUSE' ? ' (another broker, e.g. mosquitto, may already use this port; change broker.listeners[].port)' : '';
        reject(new Error(`integrated broker cannot listen on ${listener.host}:${listener.port}: ${error.code ?? error.message}${hint}`));
      });
      server.listen(listener.port, listener.host, () => resolve());
    });
  }

  /** Where each listener actually listens (port 0 in the config means "any free port"). */
  addresses(): ListenerAddress[] {
    return this.servers.flatMap(({ server, listener }) => {
      const address = server.address();
      if (address === null || typeof address !== 'object') return [];
      return [
        {
          type: listener.type,
          host: (address as AddressInfo).address,
          port: (address as AddressInfo).port,
          url: listenerUrl(listener, (address as AddressInfo).port),
        },
      ];
    });
  }

  get clientCount(): number {
    return this.aedes.connectedClients;
  }

  /** Publishes one message and waits until aedes has taken it (retained store included). */
  publishNow(topic: string, payload: string | Buffer, options: PublishOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      this.aedes.publish(
        {
          cmd: 'publish',
          topic,
          payload: typeof payload === 'string' ? Buffer.from(payload) : payload,
          qos: options.qos,
          retain: options.retain,
          dup: false,
        },
        (error) => (error ? reject(error) : resolve()),
      );
    });
  }

  /**
   * Queues a message for local subscribers, in order, with a bounded number handed to aedes at a
   * time. A poll cycle of 10k tags is one burst; this keeps it from going quadratic inside aedes.
   */
  publish(topic: string, payload: string | Buffer, options: PublishOptions): void {
    // Nobody can receive it: no client is connected, no session waits for messages, and it is not
    // retained for later. aedes would route it to nobody at some cost per message.
    if (!options.retain && this.queue.length === 0 && this.aedes.connectedClients === 0 && !this.sessions.store.holdsSubscriptions) {
      this.stats.published++;
      return;
    }
    if (this.queue.length >= MAX_QUEUED) {
      this.queue.shift();
      this.stats.dropped++;
      if (!this.dropping) {
        this.dropping = true;
        this.log.warn(
          { queued: MAX_QUEUED },
          'local subscribers are too slow: dropping the oldest queued local messages (counted in broker stats)',
        );
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
    // aedes may call back synchronously (no subscriber for a topic): a nested pump would recurse
    // once per queued message and overflow the stack; the running loop picks up the freed slot.
    if (this.pumping) return;
    this.pumping = true;
    try {
      this.pumpLoop();
    } finally {
      this.pumping = false;
    }
  }

  private pumpLoop(): void {
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
      this.aedes.publish(
        {
          cmd: 'publish',
          topic: next.topic,
          payload: next.payload,
          qos: next.options.qos,
          retain: next.options.retain,
          dup: false,
          ...(next.options.properties ? { properties: next.options.properties } : {}),
        },
        (error) => {
          this.inFlight--;
          if (error) {
            this.stats.errors++;
            this.log.error({ topic: next.topic, error: error.message }, 'publish into the integrated broker failed');
          } else this.stats.published++;
          this.pump();
        },
      );
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
    const serversClosed = Promise.all(this.servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const wss of this.webSocketServers) wss.close();
    await new Promise<void>((resolve) => this.aedes.close(() => resolve()));
    for (const ws of this.wsSockets) ws.terminate();
    for (const socket of this.sockets) socket.destroy();
    await serversClosed;
    this.retained?.close();
    this.sessions.timers.close();
    this.log.debug({ listeners: this.config.listeners.length }, 'integrated broker closed');
  }
}

function tlsOptions(listener: Extract<ListenerConfig, { type: 'tls' | 'wss' }>): TlsOptions {
  const read = (what: string, path: string) => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new Error(
        `broker listener ${listener.type}:${listener.port}: cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`,
      );
    }
  };
  const options: TlsOptions = { cert: read('cert', listener.cert), key: read('key', listener.key) };
  if (listener.ca !== undefined) options.ca = read('ca', listener.ca);
  if (listener.requireClientCertificate) {
    options.requestCert = true;
    options.rejectUnauthorized = true;
  }
  return options;
}

function listenerUrl(listener: ListenerConfig, port: number): string {
  const scheme = { tcp: 'mqtt', tls: 'mqtts', ws: 'ws', wss: 'wss' }[listener.type];
  const path = listener.type === 'ws' || listener.type === 'wss' ? listener.path : '';
  return `${scheme}://${listener.host}:${port}${path}`;
}
