// Flow control for the QoS 1/2 messages the integrated broker sends to one client. aedes has none:
// it writes every delivery at once, so a subscriber that stops acknowledging (hung HMI, broken
// client library) makes it buffer without end, and past 65,535 unacknowledged messages its message
// ids wrap onto ones still in flight. Here at most `maxInflight` deliveries are unacknowledged per
// client, the rest wait in order in a queue of at most `maxQueued`, and a client that falls
// further behind is disconnected with a reason, as mosquitto's max_inflight_messages and
// max_queued_messages do (except that mosquitto drops silently). A persistent session keeps its
// messages in aedes' persistence for when it comes back.
import type { Client, PublishPacket } from 'aedes';
import { Fifo } from '../util/fifo.js';
import {
  clientDeliveries,
  type Deliver,
  onClientPacket,
  replaceClientDeliveries,
  subscriptionQoS,
  trackWrittenIds,
} from './aedes-internals.js';

const noop = (): void => undefined;

export interface OutboundLimits {
  maxInflight: number;
  maxQueued: number;
}

/** How a watched client is reached, for what the window cannot see in aedes. */
export interface OutboundWatch {
  /** What an MQTT 5 client announced it accepts unacknowledged (Receive Maximum). */
  clientReceiveMaximum?: number;
  /** Bytes written to the client and not yet taken by its socket. */
  bufferedBytes: () => number;
  /** Above this many buffered bytes, QoS 0 deliveries to the client are dropped. */
  qos0BufferLimit: number;
  /** A QoS 0 delivery dropped because the client does not read. */
  onQos0Dropped: () => void;
}

/** One delivery to the client and the aedes function that writes it. */
interface Delivery {
  packet: PublishPacket;
  /** deliverQoS (may need an acknowledgement) or deliver0 (never does). */
  qos: boolean;
}

export class OutboundWindow {
  /**
   * Every delivery waits here once anything waits, QoS 0 included: aedes drops a packet older
   * (by its broker counter) than one the client already got, so nothing may overtake.
   */
  private readonly queue = new Fifo<Delivery>();
  /** Handed to aedes and not yet known to be written (authorizeForward) or dropped by its filters. */
  private readonly pending = new WeakSet<object>();
  private inFlight = 0;
  private exceeded = false;

  private constructor(
    private readonly limits: OutboundLimits,
    private readonly client: Client,
    private readonly deliverQoS: Deliver,
    private readonly deliver0: Deliver,
    private readonly onExceeded: (waiting: number) => void,
    private readonly watchOptions: OutboundWatch,
  ) {}

  /**
   * Watches one client. Must run before the client's subscriptions exist (preConnect), because
   * aedes captures the delivery functions when a subscription is made.
   */
  static watch(client: Client, limits: OutboundLimits, onExceeded: (waiting: number) => void, options: OutboundWatch): OutboundWindow {
    const limit = { maxInflight: Math.min(limits.maxInflight, options.clientReceiveMaximum ?? Infinity), maxQueued: limits.maxQueued };
    const own = clientDeliveries(client);
    const window = new OutboundWindow(limit, client, own.deliverQoS, own.deliver0, onExceeded, options);
    // The QoS 1/2 message ids aedes wrote to this client: only their acknowledgements free a slot.
    const written = trackWrittenIds(client.conn);
    const deliver0: Deliver = (packet, done) => window.offer({ packet, qos: false }, done);
    replaceClientDeliveries(client, {
      deliver0,
      deliverQoS: (packet, done) => {
        // As aedes does: a QoS 0 message goes the QoS 0 way.
        if (packet.qos === 0) return deliver0(packet, done);
        window.offer({ packet, qos: true }, done);
      },
    });
    onClientPacket(client, (packet) => {
      // PUBACK ends a QoS 1 delivery, PUBCOMP a QoS 2 one; one for an id never sent frees nothing.
      // (Messages aedes resends from a persistent session's store bypass the window; their
      // acknowledgements can briefly let up to that many more through, never more than the store held.)
      if ((packet.cmd === 'puback' || packet.cmd === 'pubcomp') && packet.messageId !== undefined && written.delete(packet.messageId))
        window.release();
    });
    return window;
  }

  /** Deliveries written and not acknowledged, plus those waiting behind them. */
  get waiting(): number {
    return this.inFlight + this.queue.length;
  }

  /** Called from authorizeForward: the packet passed aedes' own filters and is being written. */
  forwarded(packet: object): void {
    this.pending.delete(packet);
  }

  /**
   * Whether the client will acknowledge it, decided when it is written (the subscriptions may
   * change while it waits): aedes sends a QoS 1/2 message at QoS 0 to a QoS 0 subscription on
   * exactly this topic.
   */
  private acknowledged(delivery: Delivery): boolean {
    return delivery.qos && subscriptionQoS(this.client, delivery.packet.topic) !== 0;
  }

  private offer(delivery: Delivery, done: () => void): void {
    if (this.exceeded) return void setImmediate(done);
    if (this.queue.length === 0 && (!this.acknowledged(delivery) || this.inFlight < this.limits.maxInflight))
      return this.send(delivery, done);
    if (this.queue.length >= this.limits.maxQueued) {
      this.exceeded = true;
      this.onExceeded(this.inFlight + this.queue.length);
      return void setImmediate(done);
    }
    this.queue.push(delivery);
    // The publisher does not wait for this client (its PUBACK means "the broker has it").
    setImmediate(done);
  }

  /**
   * Hands one delivery to aedes. aedes holds the message router's `done` until the write is done,
   * and until the client's socket drains when it was full: one client that stops reading would
   * stall every delivery of the broker. So once the client's connection holds unsent bytes, the
   * router goes on at once, and what the client may cost is bounded here instead: maxInflight +
   * maxQueued for QoS 1/2, and QoS 0 is dropped while its connection holds more than
   * qos0BufferLimit bytes (QoS 0 promises at most once).
   */
  private send(delivery: Delivery, done: () => void): void {
    const { packet } = delivery;
    const buffered = this.watchOptions.bufferedBytes();
    let written = done;
    if (buffered > 0) {
      setImmediate(done);
      written = noop;
    }
    if (!delivery.qos || !this.acknowledged(delivery)) {
      if (buffered > this.watchOptions.qos0BufferLimit) {
        this.watchOptions.onQos0Dropped();
        return written();
      }
      return delivery.qos ? this.deliverQoS(packet, written) : this.deliver0(packet, written);
    }
    this.inFlight++;
    this.pending.add(packet);
    this.deliverQoS(packet, () => {
      // Never forwarded (a duplicate of an overlapping subscription, or denied): no PUBACK will come.
      if (this.pending.delete(packet)) this.release();
      written();
    });
  }

  private release(): void {
    if (this.inFlight > 0) this.inFlight--;
    this.drain();
  }

  private drain(): void {
    while (!this.exceeded) {
      const next = this.queue.peek();
      if (!next || (this.acknowledged(next) && this.inFlight >= this.limits.maxInflight)) return;
      this.queue.shift();
      this.send(next, () => undefined);
    }
  }
}

/**
 * QoS 2 from a client: a PUBLISH it sends again (DUP, before its PUBREL) is the same message.
 * aedes recognizes the repeat only after authorizePublish, where the write path looks at
 * commands; this tells that hook a repeat from a new message, so a command is written once.
 */
export class InboundQoS2 {
  private readonly pending = new Set<number>();

  static watch(client: Client): InboundQoS2 {
    const tracker = new InboundQoS2();
    onClientPacket(client, (packet) => {
      // The client sends PUBREL only after our PUBREC, i.e. after the first PUBLISH was seen here.
      if (packet.cmd === 'pubrel' && packet.messageId !== undefined) tracker.pending.delete(packet.messageId);
    });
    return tracker;
  }

  /** True when this QoS 2 message id is already waiting for its PUBREL (a retransmission). */
  isRepeat(messageId: number | undefined): boolean {
    if (messageId === undefined) return false;
    if (this.pending.has(messageId)) return true;
    this.pending.add(messageId);
    return false;
  }
}
