// The events of the gateway's bus (src/app/event-bus.ts): their names and what each carries.
import type { CommandAnswer, CommandOrigin } from '../commands/command-handler.js';
import type { DeviceHealth } from '../pipeline/device-runner.js';
import type { Sample } from '../pipeline/normalize.js';

/**
 * A device's state: its runner's connection state, or, before it has a runner, "starting" (its
 * driver is being loaded and created) and "failed" (that failed; it is tried again with back-off).
 */
export type DeviceState = DeviceHealth['state'] | 'starting' | 'failed';

/** Every device state, in the order the metrics list them. */
export const DEVICE_STATES: readonly DeviceState[] = ['starting', 'connecting', 'connected', 'disconnected', 'stopped', 'failed'];

export interface SampleEvent {
  device: string;
  tag: string;
  /** The normalized reading: what /api/status shows as the tag's latest value. */
  sample: Sample;
  /** Where the tag is published: its own topic, or its poll group's batch topic. */
  topic: string;
  /** Whether this sample was published (report by exception), or only noted. */
  reported: boolean;
}

export interface DeviceStateEvent {
  device: string;
  state: DeviceState;
  /** Why it is not connected (absent once it is). */
  lastError: string | undefined;
}

export interface PollEvent {
  device: string;
  group: string;
  /** How long the driver's read took. */
  seconds: number;
  ok: boolean;
}

export interface UplinkStateEvent {
  state: 'connected' | 'disconnected';
  /** The last connection error, when there is one. */
  reason: string | undefined;
}

export interface OutboxDepthEvent {
  /** Messages waiting for the cloud, and their bytes. */
  messages: number;
  bytes: number;
}

export interface WriteEvent {
  /** The command topic the write came in on; undefined for a direct write (Sparkplug DCMD, the console). */
  topic: string | undefined;
  answer: CommandAnswer;
  origin: CommandOrigin;
}

export interface GatewayEvents {
  /** Every reading normalized into a sample (tens of thousands a second: built only while someone listens). */
  sample: SampleEvent;
  /** A device changed state (starting, connecting, connected, disconnected, stopped, failed). */
  'device-state': DeviceStateEvent;
  /** One read of a poll group finished (not for subscriptions, whose values come by themselves). */
  poll: PollEvent;
  /** The cloud connection came up or went down. */
  'uplink-state': UplinkStateEvent;
  /** The outbox's depth changed (looked at once a second, so at most one event a second). */
  'outbox-depth': OutboxDepthEvent;
  /** A write command was answered (done, refused or failed), with who asked. */
  write: WriteEvent;
}
