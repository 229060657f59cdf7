// The send window, as a state machine without a socket: it takes messages from the buffer
// (buffer.ts) oldest first, keeps at most `window` of them unacknowledged on the link of the
// current connection, settles what the cloud answered, and after a lost connection rewinds so
// that everything unacknowledged is sent again. Also its own: acknowledgements deleted in
// batches, the probe that sets aside a message the cloud keeps closing the connection on, the
// stall warning, and maxAge checked as each message is sent. The link, the buffer and the clock
// are given (uplink.ts gives mqtt.js, the outbox and real time; the contract tests script them).
//
//   no link ──connected(link)──► sending ──disconnected()──► no link      (stop() from either)
//   sending: probing (one message at a time, after the link proved itself) until the connection is stable
import type { Logger } from 'pino';
import type { Clock } from '../pipeline/scheduler.js';
import type { MessageBuffer, StoredMessage } from './buffer.js';
import { stageTimes } from './stage-times.js';

/** One connection to the cloud as the sender sees it (a new one per connection). */
export interface Link {
  /**
   * Sends one message. `done` runs once: without an error when the cloud acknowledged it (QoS 1:
   * its PUBACK; QoS 0: the PINGRESP to a PINGREQ written after it, which proves the broker read
   * it); with an error whose numeric `code` is ≥ 0x80 when the cloud refused it for good (an MQTT
   * 5 reason code); with any other error, or never, when the connection is gone.
   */
  publish(message: StoredMessage, done: (error?: Error | null) => void): void;
}

export interface SenderOptions {
  /** The most messages sent and not yet acknowledged at once (uplink.inFlight). */
  inFlight: number;
  /** The share of the window for live messages while the backlog is replayed (uplink.liveShare). */
  liveShare: number;
  /** Messages appended longer ago than this (ms) are not sent but settled as expired; 0: no limit. */
  maxAge: number;
  /** Messages waiting this long (ms) for a PUBACK with not one PUBACK in between are a stall (a warning, once). */
  stallAfter: number;
}

export interface SenderEvents {
  /** The first PUBACK on a connection: it carries data. */
  firstAcknowledgement?: () => void;
  /** The cloud refused a message for good; it is settled as rejected. */
  refused?: (message: StoredMessage, error: Error) => void;
}

export interface SenderStats {
  /** Messages handed to a link (resends after a reconnect count again). */
  sent: number;
  acknowledged: number;
  /** Refused by the cloud, or set aside by the probe. */
  rejected: number;
  inFlight: number;
}

/** Acknowledged ids are settled in batches: one transaction per batch. */
const ACK_FLUSH_SIZE = 500;
const ACK_FLUSH_INTERVAL_MS = 20;
/** Messages found older than maxAge that one pump skips before it lets the event loop go on. */
const MAX_EXPIRED_PER_PUMP = 10_000;
/** Connections lost under the same lone message before it is set aside. */
const PROBE_STRIKES = 3;

/** Real time; timers do not keep the process alive (the connection does). */
export const senderClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/** A timer of the clock that is set (a handle may be any value, also undefined). */
interface Timer {
  handle: unknown;
}

export class Sender {
  private readonly buffer: MessageBuffer;
  private readonly options: SenderOptions;
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly events: SenderEvents;
  private detach: (() => void) | undefined;
  /** The link of the current connection; undefined while there is none (or after stop). */
  private link: Link | undefined;
  /** Stopping: nothing new is sent, PUBACKs of what is in flight still count. */
  private paused = false;
  /** The send window of the current connection: inFlight, or less if the broker says so. */
  private currentWindow: number;
  /** The link carried a message (the status): a lost connection can now be blamed on a message. */
  private proven = false;
  private readonly inFlight = new Map<number, StoredMessage>();
  private liveInFlight = 0;
  /** With liveShare: the backlog of this connection was all taken. */
  private backlogDone = false;
  /** Acknowledged, not yet settled: they count against the window too. */
  private acked: number[] = [];
  private ackTimer: Timer | undefined;
  private ackedOnLink = 0;
  /** The message suspected of making the broker close the connection, sent alone until it passes. */
  private probe: { id: number; strikes: number } | undefined;
  /** Since when the messages in flight have waited without any PUBACK (undefined: none in flight). */
  private waitingSince: number | undefined;
  /** A stall that was logged: when it began. Cleared (with an info line) by the next PUBACK. */
  private stalledSince: number | undefined;
  private stallTimer: Timer | undefined;
  private expiredTimer: Timer | undefined;
  private pumping = false;
  private pumpAgain = false;
  private readonly counters = { sent: 0, acknowledged: 0, rejected: 0 };

  constructor(buffer: MessageBuffer, options: SenderOptions, log: Logger, events: SenderEvents = {}, clock: Clock = senderClock) {
    this.buffer = buffer;
    this.options = options;
    this.log = log;
    this.events = events;
    this.clock = clock;
    this.currentWindow = options.inFlight;
  }

  /** Reads the buffer from now on; new messages are sent as soon as they are stored. */
  start(): void {
    this.detach = this.buffer.attach({
      readAhead: this.options.inFlight,
      splitLive: this.options.liveShare > 0,
      onStored: () => this.pump(),
    });
  }

  /** Takes over the counters of the sender this one replaces (a reload), so metrics stay monotonic. */
  continueFrom(previous: Sender): void {
    Object.assign(this.counters, previous.counters);
  }

  get stats(): SenderStats {
    return { ...this.counters, inFlight: this.inFlight.size };
  }

  get window(): number {
    return this.currentWindow;
  }

  /** A message is suspected of breaking the connection: it goes out alone. */
  get probing(): boolean {
    return this.probe !== undefined;
  }

  /**
   * A connection is up: sending starts over at the oldest message not settled. An MQTT 5 broker
   * says how many unacknowledged QoS 1 messages it accepts from us (`receiveMaximum`).
   */
  connected(link: Link, receiveMaximum?: number): void {
    // (Normally done by disconnected() already.)
    this.link = undefined;
    this.flushAcks();
    this.forgetInFlight();
    this.link = link;
    this.currentWindow = Math.max(1, Math.min(this.options.inFlight, receiveMaximum ?? Infinity));
    this.proven = false;
    this.ackedOnLink = 0;
    this.backlogDone = false;
    this.pump();
  }

  /**
   * The link carried a message and the cloud acknowledged it (the status "online"): only now can
   * a lost connection be blamed on a message (see suspectHead) and a suspected message be probed.
   */
  linkProven(link: Link): void {
    if (link !== this.link) return;
    this.proven = true;
    this.pump();
  }

  /** The connection has carried data (or stayed up quietly long enough): a suspected message passed. */
  stable(): void {
    if (this.probe === undefined) return;
    this.log.info({ id: this.probe.id }, 'the message suspected of breaking the connection went through');
    this.probe = undefined;
  }

  /**
   * The connection is gone: what was acknowledged is settled, everything else is sent again on the
   * next one. `blameless`: the gateway closed it on purpose, so no message in flight is suspected
   * of having made the broker close it.
   */
  disconnected(options: { blameless?: boolean } = {}): void {
    const wasConnected = this.link !== undefined;
    this.link = undefined;
    this.flushAcks();
    if (wasConnected && !options.blameless && this.inFlight.size > 0 && this.ackedOnLink === 0 && this.proven) this.suspectHead();
    // A stall that reached the threshold is said before the disconnect that may end it.
    this.checkStall();
    this.forgetInFlight();
  }

  /** Stopping: nothing new is sent from now on; PUBACKs of messages in flight still settle them. */
  pause(): void {
    this.paused = true;
  }

  /**
   * Settles what was acknowledged and lets go of the buffer: what is in flight stays in it and is
   * sent by the next sender. PUBACKs arriving later are ignored.
   */
  stop(): void {
    this.paused = true;
    this.link = undefined;
    this.flushAcks();
    this.cancel(this.stallTimer);
    this.cancel(this.expiredTimer);
    this.stallTimer = this.expiredTimer = undefined;
    this.waitingSince = undefined;
    this.inFlight.clear();
    this.liveInFlight = 0;
    // Detaching rewinds the buffer, unless another sender took it over meanwhile.
    this.detach?.();
    this.detach = undefined;
  }

  /** Fills the window from the buffer. Re-entered from a link that answers at once: loops instead. */
  private pump(): void {
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        this.fill();
      } while (this.pumpAgain);
    } finally {
      this.pumping = false;
    }
  }

  private fill(): void {
    if (this.link === undefined || this.paused) return;
    // While probing, the suspect goes out alone, and only once the status PUBACK proved the link.
    if (this.probe !== undefined && !this.proven) return;
    const window = this.probe !== undefined ? 1 : this.currentWindow;
    // Nothing older than maxAge leaves, however long it waited in the buffer.
    const tooOld = this.options.maxAge > 0 ? this.clock.now() - this.options.maxAge : Number.NEGATIVE_INFINITY;
    const expired: number[] = [];
    // Acknowledged but not yet settled counts against the window too: after a power cut, at most
    // a window's worth of messages is sent twice.
    // (mqtt-packet corks the socket per packet until the next tick, so one loop is one write.)
    for (
      let free = window - this.inFlight.size - this.acked.length;
      free > 0 && this.link !== undefined;
      free = window - this.inFlight.size - this.acked.length
    ) {
      const next = this.next(free, window);
      if (next.messages.length === 0) break;
      for (const message of next.messages) {
        if (message.created < tooOld) expired.push(message.id);
        // (A link that dropped the connection while publishing: the rest is sent on the next one.)
        else if (this.link !== undefined) this.send(message, next.live);
      }
      if (expired.length >= MAX_EXPIRED_PER_PUMP) {
        // A long outage may have left a backlog that is all too old: in slices, not one long turn.
        this.continueLater();
        break;
      }
    }
    if (expired.length > 0) this.buffer.settle({ expired });
  }

  private continueLater(): void {
    this.expiredTimer ??= {
      handle: this.clock.setTimeout(() => {
        this.expiredTimer = undefined;
        this.pump();
      }, 0),
    };
  }

  /** Up to n messages: live ones while they have less than their share of the window, then the backlog, then live ones. */
  private next(n: number, window: number): { messages: StoredMessage[]; live: boolean } {
    const { liveShare } = this.options;
    if (liveShare > 0) {
      const liveSlots = Math.floor(window * liveShare) - this.liveInFlight;
      const live = liveSlots > 0 ? this.buffer.take(Math.min(n, liveSlots), 'live') : [];
      if (live.length > 0) return { messages: live, live: true };
    }
    if (!this.backlogDone) {
      const backlog = this.buffer.take(n, 'backlog');
      if (backlog.length > 0) return { messages: backlog, live: false };
      // The backlog only ends when it is split from live data; in FIFO mode it is all there is.
      if (liveShare > 0) {
        this.backlogDone = true;
        this.log.info('backlog replayed');
      }
    }
    return { messages: liveShare > 0 ? this.buffer.take(n, 'live') : [], live: true };
  }

  private send(message: StoredMessage, live: boolean): void {
    const link = this.link!;
    if (this.inFlight.size === 0) this.startWaiting();
    this.inFlight.set(message.id, message);
    if (live) this.liveInFlight++;
    this.counters.sent++;
    stageTimes.sent.add(Date.now() - message.created);
    link.publish(message, (error) => this.answered(link, message, live, error));
  }

  private answered(link: Link, message: StoredMessage, live: boolean, error: Error | null | undefined): void {
    if (link !== this.link) return; // a connection that is gone: the message is sent again on the next one
    this.inFlight.delete(message.id);
    if (live) this.liveInFlight--;
    // (mqtt.js passes null for "no error" on some paths.)
    const reasonCode = (error as { code?: unknown } | null | undefined)?.code;
    const refused = !!error && typeof reasonCode === 'number' && reasonCode >= 0x80;
    if (!error || refused) this.noteAck();
    if (error && refused) {
      // Refused for good (MQTT 5 reason code): resent, it would block the queue forever.
      this.counters.rejected++;
      this.buffer.settle({ rejected: [message.id] });
      this.events.refused?.(message, error);
    } else if (!error) {
      this.counters.acknowledged++;
      stageTimes.acknowledged.add(Date.now() - message.created);
      if (++this.ackedOnLink === 1) {
        this.stable();
        this.events.firstAcknowledgement?.();
      }
      this.acked.push(message.id);
      // Settled in batches: the outbox deletes one run of consecutive ids per DELETE, in one
      // transaction per batch (one per PUBACK was the uplink's largest cost).
      if (this.acked.length >= Math.min(ACK_FLUSH_SIZE, Math.ceil(this.currentWindow / 2))) this.flushAcks();
      else this.ackTimer ??= { handle: this.clock.setTimeout(() => this.flushAcks(), ACK_FLUSH_INTERVAL_MS) };
    }
    // Anything else is a connection problem: the message stays in the buffer and is sent again.
    this.pump();
  }

  private flushAcks(): void {
    this.cancel(this.ackTimer);
    this.ackTimer = undefined;
    if (this.acked.length === 0) return;
    const acknowledged = this.acked;
    this.acked = [];
    this.buffer.settle({ acknowledged });
    this.pump();
  }

  private forgetInFlight(): void {
    this.waitingSince = undefined;
    this.inFlight.clear();
    this.liveInFlight = 0;
    // Nothing is being sent now: a drop-oldest bound may drop the oldest of everything again.
    this.buffer.rewind();
  }

  /**
   * The connection closed with messages in flight and not one acknowledged. Some brokers close the
   * connection on a message they refuse (mosquitto for an MQTT 5 ACL denial, AWS IoT for a policy
   * violation); resending it first forever would block the buffer. So the next connection sends
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
    // Kept in the dead letters, not deleted: a person can look at it and resend it.
    if (this.buffer.setAside(head, 'the cloud broker closed the connection each time it was sent')) this.counters.rejected++;
    this.log.error(
      { topic: message.topic, bytes: message.payload.length, connections: this.probe.strikes, table: 'dead_letters' },
      "the cloud broker closed the connection every time this message was sent alone; it is set aside in the outbox's dead-letter table so the rest can flow (check the broker's policy/ACL for this topic)",
    );
    this.probe = undefined;
  }

  // ------------------------------------------------------------------ stall detection

  private startWaiting(): void {
    this.waitingSince = this.clock.now();
    this.armStallCheck();
  }

  /** A PUBACK (positive or not) from the cloud: it is taking messages. */
  private noteAck(): void {
    const now = this.clock.now();
    this.waitingSince = this.inFlight.size > 0 ? now : undefined;
    if (this.stalledSince !== undefined) {
      this.log.info({ stalledSeconds: Math.round((now - this.stalledSince) / 1000) }, 'the cloud broker acknowledges again');
      this.stalledSince = undefined;
    }
    this.armStallCheck();
  }

  /**
   * One timer, not one per PUBACK: it fires when the oldest wait could reach the threshold, and
   * re-arms itself for the rest when a PUBACK came in between.
   */
  private armStallCheck(): void {
    if (this.stallTimer !== undefined || this.waitingSince === undefined || this.stalledSince !== undefined) return;
    const delay = Math.max(0, this.waitingSince + this.options.stallAfter - this.clock.now());
    this.stallTimer = {
      handle: this.clock.setTimeout(() => {
        this.stallTimer = undefined;
        this.checkStall();
        this.armStallCheck();
      }, delay),
    };
  }

  /** Logs once when messages have waited longer than stallAfter without a single PUBACK. */
  private checkStall(): void {
    const now = this.clock.now();
    if (this.stalledSince !== undefined || this.waitingSince === undefined || this.inFlight.size === 0) return;
    if (now - this.waitingSince < this.options.stallAfter) return;
    this.stalledSince = this.waitingSince;
    const seconds = Math.round((now - this.waitingSince) / 1000);
    const inFlight = this.inFlight.size;
    this.log.warn(
      { seconds, inFlight, window: this.currentWindow, backlog: this.buffer.length, connected: this.link !== undefined },
      `the cloud broker has acknowledged nothing for ${seconds} s while ${inFlight} messages wait for their PUBACK${inFlight >= this.currentWindow ? ' (the in-flight window is full)' : ''}: it holds the connection but takes no messages; they stay in the outbox`,
    );
  }

  private cancel(timer: Timer | undefined): void {
    if (timer !== undefined) this.clock.clearTimeout(timer.handle);
  }
}
