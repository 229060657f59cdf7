// The buffer between the gateway and the cloud: what the sender (sender.ts) needs of the outbox
// (outbox.ts), and nothing more. Messages go in with append, come out in order with take, and
// leave for good with settle. Which rows are out for sending, and so which ones a drop-oldest bound
// spares, is the buffer's own business: the sender only takes, settles and rewinds.

/**
 * A message for the cloud, as the gateway hands it over: a finished MQTT message (kind 0, sent as
 * it is), or a record of the northbound format (another kind, see RecordKind in
 * northbound/format.ts) that the format encodes at send time. The buffer stores both alike.
 */
export interface OutboxMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  retain: boolean;
  /** What the row holds; absent or 0: a finished MQTT message. */
  kind?: number;
}

/** A message as stored: ids grow in append order. */
export interface StoredMessage extends OutboxMessage {
  id: number;
  /** Bytes it counts for against maxBytes (topic + payload). */
  size: number;
  /** When it was appended (ms since the epoch): maxAge counts from here. */
  created: number;
}

/**
 * Told once what became of an appended message: called without an argument once it is stored,
 * or with the reason when the buffer dropped it before it got there (a bound, the in-memory
 * limit of a full disk). A dropped message must never be acknowledged to its publisher.
 */
export type Settled = (droppedBecause?: string) => void;

/**
 * Where take reads. Without `splitLive` everything is backlog, oldest first. With it, the last
 * rewind splits the messages: those stored before it are the backlog, those stored after it are
 * live, and each lane is read oldest first on its own.
 */
export type Lane = 'backlog' | 'live';

/** What became of messages that were taken: each id once, in any order, in any call. */
export interface Settlement {
  /** The cloud acknowledged them: deleted, counted as delivered. */
  acknowledged?: readonly number[];
  /** The cloud refused them for good (an MQTT 5 reason code ≥ 0x80): deleted, counted as rejected. */
  rejected?: readonly number[];
  /** Older than maxAge when they were about to be sent: deleted, counted as dropped. */
  expired?: readonly number[];
}

/** The one reader of a buffer: the sender of the current cloud connection. */
export interface BufferReader {
  /** The most rows one read from the store brings into memory (and the most committed rows kept there). */
  readAhead: number;
  /** Read the backlog and live lanes apart (see Lane). */
  splitLive: boolean;
  /** New messages were stored: take may have more now. */
  onStored: () => void;
}

export interface MessageBuffer {
  /** Stores a message; `onStored` is told once whether it was stored or dropped (see Settled). */
  append(message: OutboxMessage, onStored?: Settled): void;
  /**
   * Makes `reader` the one reader (a reader attached before is replaced) and rewinds. Returns the
   * function that detaches it again, which also rewinds.
   */
  attach(reader: BufferReader): () => void;
  /**
   * Up to `n` stored messages of the lane that were not taken since the last rewind, oldest
   * first; [] when there are none. What was taken and not settled is "being sent": a drop-oldest
   * bound drops every other message before it drops one of those.
   */
  take(n: number, lane?: Lane): StoredMessage[];
  /** Deletes messages for good, each counted by its outcome. Ids a bound dropped meanwhile are skipped. */
  settle(outcome: Settlement): void;
  /**
   * Moves a message the cloud would not take in any form (it closed the connection each time)
   * to the dead letters, kept for a person to look at. False when it was not there any more.
   */
  setAside(id: number, reason: string): boolean;
  /**
   * Nothing is being sent any more (a lost connection): the next take starts again at the oldest
   * stored message, and with `splitLive` messages stored from now on are the live lane.
   */
  rewind(): void;
  /** Messages stored and not yet settled. */
  readonly length: number;
}
