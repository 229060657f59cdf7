// The northbound format seam: everything about *how* the gateway's data looks on the cloud
// broker lives behind this interface, so the cloud leg (outbox, sender, connection) stays
// format-agnostic. A format decides
//   - what a reported sample (or a poll cycle's batch) leaves in the outbox (record),
//   - how a stored row becomes an MQTT message at send time, with per-connection state such as
//     sequence numbers and "this is replayed history" (encode),
//   - what is published after every connect before the backlog (births), what the broker
//     publishes when the connection dies (will, registered with every CONNECT) and what is said
//     at a graceful stop (goodbye),
//   - what the cloud's messages mean: a publish into the integrated broker, a write of a tag, or
//     a request to be born again (decodeDownlink).
//
// The first implementation is JSON (json/format.ts): its rows are finished MQTT messages, so it
// costs nothing at send time. Messages that local MQTT clients publish on forwarded topics are
// stored as finished messages too and pass through untouched, whatever the format.
import type { TagValue } from '../pipeline/driver.js';
import type { Sample } from '../pipeline/normalize.js';
import type { StoredMessage } from '../cloud/buffer.js';

/** An MQTT message as it goes to the cloud broker. */
export interface CloudMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  retain: boolean;
}

/**
 * What an outbox row holds (its `kind` column). MESSAGE rows are finished MQTT messages, sent as
 * they are (JSON's samples, command answers, local clients' messages). Any other kind is a
 * format's own record (e.g. Sparkplug's samples of one device), turned into a message by that
 * format's encode at send time; a format claims its kinds here, so two formats never share one.
 */
export const RecordKind = {
  MESSAGE: 0,
} as const;

/** What a format appends to the outbox; `kind` defaults to RecordKind.MESSAGE. */
export interface OutboxRecord extends CloudMessage {
  kind?: number;
}

/** The message the gateway publishes into its integrated broker for a report (JSON topics, always). */
export interface LocalMessage {
  topic: string;
  payload: Buffer;
  retain: boolean;
}

/** A report of the gateway: what a format may record for the cloud. */
export type Report =
  /** A tag's sample reported by exception (a per-tag device). */
  | { kind: 'tag'; device: string; group: string; tag: string; sample: Sample; local: LocalMessage }
  /** One poll cycle's samples of a group (a batch device). */
  | { kind: 'batch'; device: string; group: string; cycleTs: number; samples: readonly Sample[]; local: LocalMessage }
  /** The answer to a write, published on its result topic. */
  | { kind: 'answer'; device: string | undefined; tag: string | undefined; ok: boolean; local: LocalMessage };

/**
 * Records the reports of one local topic (a tag's, a batch's, a result topic); looked up once per
 * topic (and again when the uplink is replaced by a reload), so the hot path does no routing.
 * Returns nothing when this report is not sent.
 */
export type Recorder = (report: Report) => OutboxRecord | undefined;

/**
 * The state of one cloud connection, as the format sees it. A session begins with each connect
 * attempt (its will goes into that CONNECT) and is established at the CONNACK; births, the
 * backlog and live messages of that connection are encoded in it, in the order they are sent.
 */
export interface FormatSession {
  /** 1, 2, 3 … for every connect attempt of this uplink. */
  readonly attempt: number;
  /** When the connection was established (CONNACK, ms since the epoch); 0 before that. */
  readonly connectedAt: number;
  /** 0, 1, 2 … for every message of this session that asks (a format wraps it as it needs: Sparkplug at 256). */
  nextSeq(): number;
  /** True for a row stored before this session's births: replayed history, not live data. */
  historical(stored: StoredMessage): boolean;
}

/** What a message from the cloud means. */
export type DownlinkAction =
  /** Publish into the integrated broker (JSON's receive rules); a command topic there then reaches the write path as a local one would. */
  | { kind: 'local'; topic: string; payload: Buffer; retain: boolean }
  /** Write a tag through the command handler (formats whose commands are not local topics: Sparkplug DCMD). */
  | { kind: 'write'; device: string; tag: string; value: TagValue }
  /** Publish the births again on the current session (Sparkplug NCMD "Node Control/Rebirth"). */
  | { kind: 'rebirth' };

/** A subscription on the cloud broker: filter → options, as mqtt.js takes them. */
export type CloudSubscriptions = Record<string, { qos: 0 | 1; nl?: boolean }>;

export interface NorthboundFormat {
  /** "json" (later "sparkplug-b"): for logs. */
  readonly name: string;
  /** How the reports of a local topic are recorded for the cloud; undefined when none of them go there. */
  recorder(localTopic: string): Recorder | undefined;
  /**
   * A row of a kind other than RecordKind.MESSAGE, as the MQTT message to send now on `session`
   * (MESSAGE rows never come here: they are sent as stored). Undefined when the format cannot
   * encode the row (another format's kind, a damaged record): it is refused, never sent.
   */
  encode(stored: StoredMessage, session: FormatSession): CloudMessage | undefined;
  /** Registered with the CONNECT of every attempt: what the broker publishes when the connection dies. */
  will(session: FormatSession): CloudMessage;
  /** Published after every connect, before the backlog, in this order. The first one's PUBACK proves the link. */
  births(session: FormatSession): CloudMessage[];
  /** Published at a graceful stop while the connection is up (the will is not published then). */
  goodbye(session: FormatSession): CloudMessage | undefined;
  /** The cloud subscriptions for the downlink (none: no subscription). */
  subscriptions(protocolVersion: 4 | 5): CloudSubscriptions;
  /** What a message from the cloud on one of the subscriptions means; [] when nothing. */
  decodeDownlink(topic: string, payload: Buffer, retain: boolean): DownlinkAction[];
}
