// The status snapshot: everything the gateway can tell about itself at one moment (gateway,
// devices, tags, outbox, uplink, broker, writes), built by Gateway.status() from the live
// counters on demand. /api/status is this document as JSON; /metrics reads one snapshot (without
// tags) at every scrape; a web console can poll it, and follow the event bus in between.
import type { BrokerStats } from '../broker/broker.js';
import type { OutboxStats } from '../cloud/outbox.js';
import type { UplinkStats } from '../cloud/uplink.js';
import type { CommandStats } from '../commands/command-handler.js';
import type { Quality, TagValue } from '../pipeline/driver.js';
import type { DeviceState } from './events.js';

export interface StatusOptions {
  /** With the tags and their latest values (default); false leaves them out (thousands of them). */
  tags?: boolean;
  /** Only this device's tags. */
  device?: string | undefined;
}

export interface GatewaySnapshot {
  name: string;
  version: string;
  /** ISO 8601. */
  startedAt: string;
  uptimeSeconds: number;
  /** Readings normalized into samples. */
  samples: number;
  /** Messages (per tag or batch) handed to the integrated broker. */
  published: number;
}

export interface DeviceSnapshot {
  name: string;
  driver: string;
  state: DeviceState;
  lastError: string | null;
  tags: number;
  samples: number;
  connectAttempts: number;
  /** While the gateway backs off from the device (a reconnect, a probe, or a new start of a failed device): when it tries again, ISO 8601. */
  nextTryAt: string | null;
  pollErrors: number;
  errorsByCode: Record<string, number>;
  overruns: number;
  cycles: number;
  plans: Record<string, string>;
  /** Per poll group, the duration of its last read in seconds. */
  lastPollSeconds: Record<string, number>;
}

export interface TagStatus {
  device: string;
  tag: string;
  /** Where its values are published: its own topic, or its poll group's batch topic (publish: "batch"). */
  topic: string;
  writable: boolean;
  /** Where writes are received, for writable tags. */
  commandTopic?: string;
  /** Absent until the first reading. */
  /** Its engineering unit, when it has one. */
  unit?: string;
  value?: TagValue | null;
  quality?: Quality;
  reason?: string;
  ts?: number;
}

export interface BrokerSnapshot extends BrokerStats {
  /** MQTT clients connected. */
  clients: number;
  /** URLs of the listeners that listen. */
  listeners: string[];
  /** Gateway messages waiting to be handed to aedes (the metrics show it; /api/status does not). */
  queued: number;
}

export interface StatusSnapshot {
  gateway: GatewaySnapshot;
  /** Every enabled device of the config: running, starting, or failed to start. */
  devices: DeviceSnapshot[];
  /** Absent when asked without tags. */
  tags?: TagStatus[];
  /** Null without an uplink. */
  outbox: (OutboxStats & { oldestAgeSeconds: number }) | null;
  uplink: UplinkStats | null;
  broker: BrokerSnapshot;
  writes: CommandStats;
}
