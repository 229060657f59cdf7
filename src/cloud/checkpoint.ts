// QoS 0 has no PUBACK: all mqtt.js can say is that a PUBLISH was written to the socket, and bytes
// written to a connection that then drops may never have been read by the broker. But a broker
// handles one connection's packets in order, so the PINGRESP to a PINGREQ written after a PUBLISH
// proves that PUBLISH was read: the promise a PUBACK gives. The checkpoint holds each written QoS 0
// message until such a PINGRESP came, and fails it when the connection closes first (the outbox
// then sends it again: a duplicate at worst, never a loss).
//
// One connection's pings, counted: PINGRESPs answer PINGREQs in order, whoever sent them (mqtt.js
// pings on its own for the keep-alive), so a message written after n PINGREQs is confirmed by the
// (n+1)th PINGRESP. Batched: one ping of our own is outstanding at a time; it goes out after the
// burst of writes that needed it (a microtask later), and when it is answered, messages written
// since get the next one. So a message waits at most two round trips, a busy link pings about once
// per round trip, and an idle one not at all.

/** Runs once: without an error when the broker confirmed the message, with one when the connection closed first. */
export type Confirmed = (error?: Error) => void;

export class PingCheckpoint {
  private readonly sendPing: () => void;
  /** PINGREQs written on this connection, ours and the keep-alive's. */
  private pingsSent = 0;
  private pingsAnswered = 0;
  /** The number of our last PINGREQ: outstanding while fewer were answered. */
  private ownPing = 0;
  private scheduled = false;
  private closedBy: Error | undefined;
  /** Written, unconfirmed, oldest first: `after` is how many PINGREQs were written before it (never decreasing). */
  private readonly waiting: Array<{ after: number; done: Confirmed }> = [];

  /** `sendPing` writes a PINGREQ now, after everything written so far (and reports it with pingSent), or nothing without a connection. */
  constructor(sendPing: () => void) {
    this.sendPing = sendPing;
  }

  /** Unconfirmed messages. */
  get pending(): number {
    return this.waiting.length;
  }

  /** A QoS 0 message was written to the connection: `done` runs once the broker provably read it. */
  written(done: Confirmed): void {
    if (this.closedBy) return done(this.closedBy);
    this.waiting.push({ after: this.pingsSent, done });
    this.schedule();
  }

  /** A PINGREQ was written (by us or by mqtt.js's keep-alive). */
  pingSent(): void {
    this.pingsSent++;
  }

  /** A PINGRESP came: it answers the oldest PINGREQ not yet answered. */
  pingAnswered(): void {
    // An answer to a PINGREQ this connection did not count proves nothing.
    if (this.closedBy || this.pingsAnswered >= this.pingsSent) return;
    this.pingsAnswered++;
    let confirmed = 0;
    while (confirmed < this.waiting.length && this.waiting[confirmed]!.after < this.pingsAnswered) confirmed++;
    for (const { done } of this.waiting.splice(0, confirmed)) done();
    this.schedule();
  }

  /** The connection closed: nothing unconfirmed was read for sure, and nothing later counts. */
  close(error: Error): void {
    this.closedBy ??= error;
    for (const { done } of this.waiting.splice(0)) done(error);
  }

  /** Pings once the current burst of writes is done, unless a ping already covers the newest message or ours is still out. */
  private schedule(): void {
    if (this.scheduled || this.closedBy || this.ownPing > this.pingsAnswered || !this.uncovered()) return;
    this.scheduled = true;
    queueMicrotask(() => {
      this.scheduled = false;
      if (this.closedBy || !this.uncovered()) return;
      this.sendPing();
      this.ownPing = this.pingsSent;
    });
  }

  /** The newest unconfirmed message was written after the last PINGREQ. */
  private uncovered(): boolean {
    const newest = this.waiting.at(-1);
    return newest !== undefined && newest.after === this.pingsSent;
  }
}
