// Sessions of the integrated broker: what a client's session keeps while it is away, and when the
// session ends. aedes keeps sessions in a persistence object; ours is aedes-persistence's memory
// store with its outgoing queues replaced, because that store queues without bound, never drops
// expired messages and cannot forget one client's queue (each is needed here: broker.limits.
// maxQueued, MQTT 5 Message Expiry, and the end of a session after its Session Expiry Interval).
import { createRequire } from 'node:module';
import { Readable } from 'node:stream';

/** A message in a queue, as aedes hands it over (aedes-packet's Packet). */
export interface QueuedPacket {
  cmd: string;
  topic: string;
  payload: Buffer | string;
  qos: number;
  retain: boolean;
  messageId?: number;
  brokerId?: string;
  brokerCounter?: number;
  /** When the message expires (ms since the epoch), from its MQTT 5 Message Expiry Interval. */
  messageExpiry?: number;
}

interface ClientRef {
  id: string;
}

/** The parts of aedes-persistence's memory store used or replaced here. */
interface MemoryStore {
  addSubscriptions(client: ClientRef, subs: Array<{ topic: string; qos: number; rh?: number; rap?: boolean; nl?: boolean }>): Promise<void>;
  cleanSubscriptions(client: ClientRef): Promise<void>;
  cleanIncoming(client: ClientRef): Promise<void>;
  delWill(client: ClientRef): Promise<unknown>;
}

const require = createRequire(import.meta.url);
// aedes-persistence 11 exports only a callback wrapper; aedes 1.2 takes the promise-based store itself.
const MemoryPersistence = require('aedes-persistence/asyncPersistence.js') as new () => MemoryStore;
const Packet = require('aedes-packet') as new (original: QueuedPacket) => QueuedPacket;

/** Is this message past its MQTT 5 Message Expiry Interval? */
export function expired(packet: { messageExpiry?: number }, now = Date.now()): boolean {
  return packet.messageExpiry !== undefined && packet.messageExpiry <= now;
}

export class SessionStore extends MemoryPersistence {
  /** Per client id: QoS 1/2 messages queued or in flight, oldest first. */
  private readonly queues = new Map<string, QueuedPacket[]>();
  private readonly maxQueued: number;
  private readonly onFull: (clientId: string) => void;

  /**
   * `maxQueued`: messages one session may hold; more are not queued for it (counted by `onFull`,
   * called once per refused message).
   */
  constructor(maxQueued: number, onFull: (clientId: string) => void) {
    super();
    this.maxQueued = maxQueued;
    this.onFull = onFull;
  }

  async outgoingEnqueue(sub: { clientId: string }, packet: QueuedPacket): Promise<void> {
    this.enqueue(sub.clientId, packet);
  }

  async outgoingEnqueueCombi(subs: Array<{ clientId: string }>, packet: QueuedPacket): Promise<void> {
    for (const sub of subs) this.enqueue(sub.clientId, packet);
  }

  private enqueue(clientId: string, packet: QueuedPacket): void {
    let queue = this.queues.get(clientId);
    if (!queue) this.queues.set(clientId, (queue = []));
    // The newest are refused rather than the oldest dropped: an old one may be in flight, and a
    // session must not lose a message it was already sent.
    if (queue.length >= this.maxQueued) return this.onFull(clientId);
    queue.push(new Packet(packet));
  }

  /**
   * aedes gives a queued message its message id as it sends it. One that is not in the queue (it
   * was refused as the queue was full) is sent all the same, just not kept for a reconnect: aedes
   * would treat the miss as an error and drop the client.
   */
  async outgoingUpdate(client: ClientRef, packet: QueuedPacket): Promise<void> {
    const queue = this.queues.get(client.id);
    if (!queue) return;
    for (let index = 0; index < queue.length; index++) {
      const queued = queue[index]!;
      if (queued.brokerId === packet.brokerId) {
        if (queued.brokerCounter === packet.brokerCounter) {
          queued.messageId = packet.messageId;
          return;
        }
        // Message ids wrap: another message may carry the same id, keep looking.
      } else if (queued.messageId === packet.messageId) {
        // A PUBREL taking the place of its PUBLISH (QoS 2).
        queue[index] = packet;
        return;
      }
    }
  }

  async outgoingClearMessageId(client: ClientRef, packet: { messageId?: number }): Promise<QueuedPacket | undefined> {
    const queue = this.queues.get(client.id);
    if (!queue) return undefined;
    const index = queue.findIndex((queued) => queued.messageId === packet.messageId);
    if (index < 0) return undefined;
    const [cleared] = queue.splice(index, 1);
    if (queue.length === 0) this.queues.delete(client.id);
    return cleared;
  }

  /** What a returning session gets: its queue, without the messages that expired meanwhile. */
  outgoingStream(client: ClientRef): Readable {
    const queue = this.queues.get(client.id);
    if (!queue) return Readable.from([]);
    const now = Date.now();
    const live = queue.filter((packet) => packet.cmd !== 'publish' || !expired(packet, now));
    if (live.length === 0) this.queues.delete(client.id);
    else if (live.length !== queue.length) this.queues.set(client.id, live);
    return Readable.from([...live]);
  }

  /** Client ids with stored subscriptions (an upper bound: an emptied session may stay in it). */
  private readonly subscribers = new Set<string>();

  override async addSubscriptions(
    client: ClientRef,
    subs: Array<{ topic: string; qos: number; rh?: number; rap?: boolean; nl?: boolean }>,
  ): Promise<void> {
    this.subscribers.add(client.id);
    await super.addSubscriptions(client, subs);
  }

  override async cleanSubscriptions(client: ClientRef): Promise<void> {
    await super.cleanSubscriptions(client);
    this.subscribers.delete(client.id);
  }

  /** Could a persistent session be waiting for messages (it has subscriptions stored)? */
  get holdsSubscriptions(): boolean {
    return this.subscribers.size > 0;
  }

  /** Messages queued (or in flight) for one session. */
  queued(clientId: string): number {
    return this.queues.get(clientId)?.length ?? 0;
  }

  /** Ends a session: its subscriptions, queued messages, QoS 2 state and stored will. */
  async endSession(clientId: string): Promise<void> {
    this.queues.delete(clientId);
    const ref = { id: clientId };
    await this.cleanSubscriptions(ref);
    await this.cleanIncoming(ref);
    await this.delWill(ref);
  }
}

/** setTimeout takes at most 2^31 − 1 ms (24.8 days); longer sessions are timed in steps. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

/** A timer of any length, not keeping the process alive; cancel() stops it. */
class LongTimer {
  private timer: NodeJS.Timeout | undefined;

  constructor(ms: number, fire: () => void) {
    this.arm(Date.now() + ms, fire);
  }

  private arm(at: number, fire: () => void): void {
    const left = at - Date.now();
    const step = Math.min(Math.max(left, 0), MAX_TIMEOUT_MS);
    this.timer = setTimeout(() => (left > MAX_TIMEOUT_MS ? this.arm(at, fire) : fire()), step);
    this.timer.unref();
  }

  cancel(): void {
    clearTimeout(this.timer);
  }
}

/**
 * Timers of sessions that outlive their connection: each ends after its expiry interval unless a
 * client takes it up again first. Also the delayed wills of MQTT 5 (Will Delay Interval).
 */
export class SessionTimers {
  private readonly expiries = new Map<string, LongTimer>();
  private readonly wills = new Map<string, { timer: LongTimer; publish: () => void }>();

  /** Ends the session of `clientId` after `ms` by calling `end` (at once for 0). */
  expireAfter(clientId: string, ms: number, end: () => void): void {
    this.cancelExpiry(clientId);
    if (ms <= 0) return end();
    this.expiries.set(
      clientId,
      new LongTimer(ms, () => {
        this.expiries.delete(clientId);
        end();
      }),
    );
  }

  cancelExpiry(clientId: string): void {
    this.expiries.get(clientId)?.cancel();
    this.expiries.delete(clientId);
  }

  /** Publishes a will after `ms`, unless the session is taken up again before ([MQTT-3.1.3-9]). */
  delayWill(clientId: string, ms: number, publish: () => void): void {
    this.dropWill(clientId);
    const timer = new LongTimer(ms, () => {
      this.wills.delete(clientId);
      publish();
    });
    this.wills.set(clientId, { timer, publish });
  }

  /** The session was taken up again: its delayed will is not published. */
  dropWill(clientId: string): void {
    this.wills.get(clientId)?.timer.cancel();
    this.wills.delete(clientId);
  }

  /** The session ends now: a delayed will still waiting goes out at once (MQTT 5 3.1.3.2.2). */
  sendWillNow(clientId: string): void {
    const will = this.wills.get(clientId);
    if (!will) return;
    this.dropWill(clientId);
    will.publish();
  }

  close(): void {
    for (const timer of this.expiries.values()) timer.cancel();
    for (const will of this.wills.values()) will.timer.cancel();
    this.expiries.clear();
    this.wills.clear();
  }
}
