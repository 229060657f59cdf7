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
// JSON (json/format.ts) stores finished MQTT messages, so it costs nothing at send time. Sparkplug
// B (sparkplug/format.ts) stores one record per device and poll cycle and encodes it at send time,
// with the session's sequence number and aliases; it gates its births on a primary host and asks
// for rebirths and reconnects through the uplink's FormatControl. Messages that local MQTT clients publish on forwarded topics are
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
  /** Sparkplug B: the reported samples of one device's poll cycle (DDATA). */
  SPARKPLUG_DATA: 16,
  /** Sparkplug B: a device lost its connection (DDEATH). */
  SPARKPLUG_DEATH: 17,
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

/** A report about one device as a whole, for formats that send per device (Sparkplug). */
export type DeviceReport =
  /**
   * Every sample of one device's poll cycle that was reported (per-tag devices: those report by
   * exception let through; batch devices: all), for formats that send a device's cycle as one
   * message (Sparkplug DDATA). Given after that cycle's tag or batch reports.
   */
  | { kind: 'cycle'; device: string; group: string; cycleTs: number; samples: readonly Sample[] }
  /** A device's connection was lost (Sparkplug DDEATH). */
  | { kind: 'device-lost'; device: string; ts: number };

/**
 * Records the reports of one local topic (a tag's, a batch's, a result topic); looked up once per
 * topic (and again when the uplink is replaced by a reload), so the hot path does no routing.
 * Returns nothing when this report is not sent.
 */
export type Recorder = (report: Report) => OutboxRecord | undefined;

/** Records one device's reports (see NorthboundFormat.deviceRecorder). */
export type DeviceRecorder = (report: DeviceReport) => OutboxRecord | undefined;

/**
 * The state of one cloud connection, as the format sees it. A session begins with each CONNECT
 * (its will goes into that CONNECT) and is established at the CONNACK; births, the
 * backlog and live messages of that connection are encoded in it, in the order they are sent.
 */
export interface FormatSession {
  /** 1, 2, 3 … for every session of this uplink: a new one after each CONNECT a broker accepted (failed attempts share the next one's). */
  readonly attempt: number;
  /** When the connection was established (CONNACK, ms since the epoch); 0 before that. */
  readonly connectedAt: number;
  /** 0, 1, 2 … for every message of this session that asks (a format wraps it as it needs: Sparkplug at 256). */
  nextSeq(): number;
  /** What nextSeq() will return, without taking it (a format that takes it only once its message is built). */
  peekSeq(): number;
  /** The next nextSeq() is 0 again (Sparkplug: every NBIRTH, rebirths included, has seq 0). */
  resetSeq(): void;
  /** True for a row stored before this session's first births: replayed history, not live data. */
  historical(stored: StoredMessage): boolean;
}

/** What a message from the cloud means. */
export type DownlinkAction =
  /** Publish into the integrated broker (JSON's receive rules); a command topic there then reaches the write path as a local one would. */
  | { kind: 'local'; topic: string; payload: Buffer; retain: boolean }
  /** Write a tag through the command handler (formats whose commands are not local topics: Sparkplug DCMD). */
  | { kind: 'write'; device: string; tag: string; value: TagValue }
  /**
   * Publish the births on the current session: again (Sparkplug NCMD "Node Control/Rebirth"), or
   * for the first time when births(session) said "not yet" (the primary host came online).
   */
  | { kind: 'rebirth' }
  /** Say goodbye, disconnect and connect again, keeping everything in the outbox (Sparkplug: the primary host went offline). */
  | { kind: 'reconnect'; reason: string };

/** What a format may ask of its uplink by itself, outside a message from the cloud. */
export interface FormatControl {
  /** As the 'rebirth' DownlinkAction: births again (or at last) on the current session, if connected. */
  rebirth(reason: string): void;
  /**
   * Publishes a message the format builds now, in the current session after its births (Sparkplug
   * NDATA of node metrics), at once and not through the outbox; nothing when not connected or not born.
   */
  publishLive(build: (session: FormatSession) => CloudMessage | undefined): void;
}

/** A subscription on the cloud broker: filter → options, as mqtt.js takes them. */
export type CloudSubscriptions = Record<string, { qos: 0 | 1; nl?: boolean }>;

export interface NorthboundFormat {
  /** "json" or "sparkplug-b": for logs. */
  readonly name: string;
  /**
   * The MQTT session the format needs: "clean" forces Clean Session (3.1.1) / Clean Start with no
   * expiry (5), whatever the uplink's cleanSession says (Sparkplug); "configured" uses the config.
   */
  readonly session: 'clean' | 'configured';
  /**
   * The MQTT 5 reason code of the DISCONNECT at a graceful stop or reconnect, when the format wants
   * one sent (Sparkplug: 0x04, so the broker publishes the will too); undefined: the connection is
   * closed without a DISCONNECT, and the broker publishes the will (JSON: "offline" twice is harmless).
   */
  readonly disconnectReason: number | undefined;
  /** Called once by the uplink that uses the format, before it connects. */
  attach?(control: FormatControl): void;
  /** Called when that uplink stops: the format lets go of it (timers). */
  detach?(): void;
  /** Devices came, went or changed their tags (a reload): a format with births declares them again. */
  devicesChanged?(): void;
  /** How the reports of a local topic are recorded for the cloud; undefined when none of them go there. */
  recorder(localTopic: string): Recorder | undefined;
  /** How a device's cycles and losses are recorded (Sparkplug); undefined when the format records per topic only (JSON). Looked up like recorder(). */
  deviceRecorder?(device: string): DeviceRecorder | undefined;
  /**
   * A row of a kind other than RecordKind.MESSAGE, as the MQTT message(s) to send now on `session`
   * (MESSAGE rows never come here: they are sent as stored), in order. [] when the row has nothing
   * to send on this session (settled at once: e.g. the samples of a device that is dead on the
   * host). Undefined when the format cannot encode the row (another format's kind, a damaged
   * record): it is refused, never sent.
   */
  encode(stored: StoredMessage, session: FormatSession): CloudMessage | CloudMessage[] | undefined;
  /** Registered with the CONNECT of every attempt: what the broker publishes when the connection dies. */
  will(session: FormatSession): CloudMessage;
  /**
   * Published after every connect (after the subscriptions), before the backlog, in this order.
   * The first one's PUBACK proves the link. Undefined: not yet (Sparkplug waits for its primary
   * host); the uplink sends nothing until the format asks for a rebirth.
   */
  births(session: FormatSession): CloudMessage[] | undefined;
  /** Published at a graceful stop while the connection is up (the will is not published then). */
  goodbye(session: FormatSession): CloudMessage | undefined;
  /** The cloud subscriptions for the downlink (none: no subscription). */
  subscriptions(protocolVersion: 4 | 5): CloudSubscriptions;
  /** What a message from the cloud on one of the subscriptions means; [] when nothing. */
  decodeDownlink(topic: string, payload: Buffer, retain: boolean): DownlinkAction[];
}
