// Flow control for the QoS 1/2 messages the integrated broker sends to one client. aedes has none:
// it writes every delivery at once, so a subscriber that stops acknowledging (hung HMI, broken
// client library) makes it buffer without end, and past 65,535 unacknowledged messages its message
// ids wrap onto ones still in flight. Here at most `maxInflight` deliveries are unacknowledged per
// client, the rest wait in order in a queue of at most `maxQueued`, and a client that falls
// further behind is disconnected with a reason, as mosquitto's max_inflight_messages and
// max_queued_messages do (except that mosquitto drops silently). A persistent session keeps its
// messages in aedes' persistence for when it comes back.
import type { Client, PublishPacket } from 'aedes';
import { Fifo } from './fifo.js';

/** The parts of aedes' Client this relies on: its per-client delivery function, its subscriptions and its parser. */
interface AedesClientInternals {
  deliverQoS: (packet: PublishPacket, done: () => void) => void;
  subscriptions: Record<string, { qos: number } | undefined>;
  _parser: { on(event: 'packet', listener: (packet: { cmd: string }) => void): void };
}

export interface OutboundLimits {
  maxInflight: number;
  maxQueued: number;
}

export class OutboundWindow {
  private readonly queue = new Fifo<PublishPacket>();
  /** Handed to aedes and not yet known to be written (authorizeForward) or dropped by its filters. */
  private readonly pending = new WeakSet<object>();
  private inFlight = 0;
  private exceeded = false;

  private constructor(
    private readonly limits: OutboundLimits,
    private readonly deliver: (packet: PublishPacket, done: () => void) => void,
    private readonly onExceeded: (waiting: number) => void,
  ) {}

  /**
   * Watches one client. Must run before the client's subscriptions exist (preConnect), because
   * aedes captures `deliverQoS` when a subscription is made.
   */
  static watch(client: Client, limits: OutboundLimits, onExceeded: (waiting: number) => void): OutboundWindow {
    const internals = client as unknown as AedesClientInternals;
    const window = new OutboundWindow(limits, internals.deliverQoS, onExceeded);
    internals.deliverQoS = (packet, done) => {
      // The same test aedes makes: QoS 0, or a QoS 0 subscription on exactly this topic, needs no acknowledgement.
      if (packet.qos === 0 || internals.subscriptions[packet.topic]?.qos === 0) return window.deliver(packet, done);
      window.offer(packet, done);
    };
    internals._parser.on('packet', (packet) => {
      // PUBACK ends a QoS 1 delivery, PUBCOMP a QoS 2 one.
      if (packet.cmd === 'puback' || packet.cmd === 'pubcomp') window.release();
    });
    return window;
  }

  /** Called from authorizeForward: the packet passed aedes' own filters and is being written. */
  forwarded(packet: object): void {
    this.pending.delete(packet);
  }

  private offer(packet: PublishPacket, done: () => void): void {
    if (this.exceeded) return void setImmediate(done);
    if (this.queue.length === 0 && this.inFlight < this.limits.maxInflight) return this.send(packet, done);
    if (this.queue.length >= this.limits.maxQueued) {
      this.exceeded = true;
      this.onExceeded(this.inFlight + this.queue.length);
      return void setImmediate(done);
    }
    this.queue.push(packet);
    // The publisher does not wait for this client (its PUBACK means "the broker has it").
    setImmediate(done);
  }

  private send(packet: PublishPacket, done: () => void): void {
    this.inFlight++;
    this.pending.add(packet);
    this.deliver(packet, () => {
      // Never forwarded (a duplicate of an overlapping subscription, or denied): no PUBACK will come.
      if (this.pending.delete(packet)) this.release();
      done();
    });
  }

  private release(): void {
    if (this.inFlight > 0) this.inFlight--;
    while (!this.exceeded && this.inFlight < this.limits.maxInflight) {
      const next = this.queue.shift();
      if (!next) return;
      this.send(next, () => undefined);
    }
  }
}
