// What a SIGHUP applies without a restart: the new config compared with the running one,
// section by section. Devices whose definition changed are restarted, new ones started, removed
// ones stopped; write limits, broker users and ACL rules apply at once; a changed uplink gets a
// new cloud connection on the same outbox. Everything else is reported as needing a restart.
// The gateway runs one reload at a time and gives applyReload a ReloadTarget: the few things a
// reload may look at or change, nothing more.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { ACCESS_SETTINGS } from '../broker/broker.js';
import { tlsFilesFingerprint, type Uplink } from '../cloud/uplink.js';
import type { Config, DeviceConfig } from '../config/schema.js';
import { errorMessage } from '../util/errors.js';

/** What a reload did. */
export interface ReloadResult {
  added: string[];
  removed: string[];
  restarted: string[];
  unchanged: number;
  /** Devices that could not be started with their new definition (see the log); they are tried again with back-off. */
  failed: string[];
  /** Other settings the reload applied: "writes", "broker.users", "broker.acl", "broker.allowAnonymous", "uplink". */
  applied: string[];
  /** Integrated broker clients disconnected because their user was removed or changed (or anonymous access is off). */
  disconnected: string[];
  /** Settings that changed but need a restart of the process ("broker.listeners", "uplink", "topics", …). */
  notApplied: string[];
}

/** Who may use the integrated broker: the broker settings a reload applies. */
export type BrokerAccess = Pick<Config['broker'], (typeof ACCESS_SETTINGS)[number]>;

/** What a reload may look at and change in the running gateway (the gateway provides it). */
export interface ReloadTarget {
  /** The config in effect. */
  readonly config: Config;
  /** Replaces the config in effect. */
  setConfig(config: Config): void;
  /** Whether the gateway is shutting down (then a reload does nothing). */
  readonly stopped: boolean;
  readonly log: Logger;
  /** Every device the supervisor runs or tries to start, by name, with its deviceFingerprint (live). */
  readonly devices: ReadonlyMap<string, string>;
  /** Hands a device to the supervisor; resolves with whether it started (if not, it is tried again with back-off). */
  startDevice(device: DeviceConfig): Promise<boolean>;
  /** Stops a device (or its attempts to start) and forgets it. */
  stopDevice(name: string): Promise<void>;
  /** The write path's limits. */
  setWriteLimits(writes: Config['writes']): void;
  /** Users, passwords, ACL rules and anonymous access for the integrated broker; returns the clients disconnected. */
  reloadBrokerAccess(access: BrokerAccess): string[];
  /** The cloud connection in use. */
  readonly uplink: Uplink | undefined;
  /** A new cloud connection, not started, on the running outbox (throws when the settings cannot be used). */
  createUplink(config: NonNullable<Config['uplink']>): Uplink;
  /** Makes `uplink` the cloud connection, and every tag's and batch's cloud route is looked up in it again. */
  useUplink(uplink: Uplink): void;
}

/** Whether a config section differs (sections are plain JSON after validation). */
function changed(before: unknown, after: unknown): boolean {
  return JSON.stringify(before) !== JSON.stringify(after);
}

/**
 * Applies a new, already validated config without a restart: devices whose definition changed
 * are restarted, new ones started, removed ones stopped; everything else (broker and its
 * clients, outbox, uplink session, unchanged devices) keeps running. Changes to other sections
 * need a process restart: they are reported, not applied. The caller runs one at a time.
 */
export async function applyReload(target: ReloadTarget, next: Config): Promise<ReloadResult> {
  const result: ReloadResult = {
    added: [],
    removed: [],
    restarted: [],
    unchanged: 0,
    failed: [],
    applied: [],
    disconnected: [],
    notApplied: [],
  };
  if (target.stopped) return result;
  const previous = target.config;
  for (const section of ['gateway', 'topics', 'http', 'simulators'] as const) {
    if (changed(previous[section], next[section])) result.notApplied.push(section);
  }
  const accessSettings = new Set<string>(ACCESS_SETTINGS);
  for (const key of Object.keys({ ...previous.broker, ...next.broker }) as Array<keyof Config['broker']>) {
    if (changed(previous.broker[key], next.broker[key]))
      (accessSettings.has(key) ? result.applied : result.notApplied).push(`broker.${key}`);
  }
  if (changed(previous.writes, next.writes)) result.applied.push('writes');
  // Devices, write limits and who may use the broker come from the new config; the rest stays as it runs.
  const access = { users: next.broker.users, acl: next.broker.acl, allowAnonymous: next.broker.allowAnonymous };
  target.setConfig({ ...previous, devices: next.devices, writes: next.writes, broker: { ...previous.broker, ...access } });
  target.setWriteLimits(next.writes);
  if (result.applied.some((setting) => setting.startsWith('broker.'))) result.disconnected = target.reloadBrokerAccess(access);
  await reloadUplink(target, previous.uplink, next.uplink, result);
  const wanted = new Map(next.devices.filter((device) => device.enabled).map((device) => [device.name, device]));
  for (const [name, fingerprint] of [...target.devices]) {
    const replacement = wanted.get(name);
    if (!replacement) {
      await target.stopDevice(name);
      result.removed.push(name);
    } else if (deviceFingerprint(replacement) !== fingerprint) {
      await target.stopDevice(name);
      result.restarted.push(name);
    } else result.unchanged++;
  }
  for (const [name, device] of wanted) {
    if (target.devices.has(name)) continue;
    // One device that cannot start (its driver failed to load) must not keep the others down:
    // it is reported, and the supervisor tries again with back-off.
    if (await target.startDevice(device)) {
      if (!result.restarted.includes(name)) result.added.push(name);
    } else {
      result.failed.push(name);
      result.restarted = result.restarted.filter((restarted) => restarted !== name);
    }
  }
  return result;
}

/**
 * A changed uplink (URL, credentials, TLS settings, rules, or certificate files rewritten in
 * place) is applied with a new cloud connection; the outbox, and so every message not yet
 * acknowledged, stays. Adding or removing the uplink, or changing its outbox, needs a restart.
 */
async function reloadUplink(target: ReloadTarget, previous: Config['uplink'], next: Config['uplink'], result: ReloadResult): Promise<void> {
  const old = target.uplink;
  if (!previous || !next || !old) {
    if (changed(previous, next)) result.notApplied.push('uplink');
    return;
  }
  if (changed(previous.outbox, next.outbox)) result.notApplied.push('uplink.outbox');
  const wanted = { ...next, outbox: previous.outbox };
  if (!changed(previous, wanted) && tlsFilesFingerprint(next.tls) === old.tlsFingerprint) return;
  let uplink: Uplink;
  try {
    uplink = target.createUplink(wanted);
  } catch (error) {
    // (An unreadable certificate, say: the running connection stays.)
    target.log.error({ error: errorMessage(error) }, 'the new uplink settings cannot be used; the cloud connection stays as it was');
    result.notApplied.push('uplink');
    return;
  }
  // The old connection says "offline" and ends (what it had in flight stays in the outbox and is
  // sent again); the new one says "online" once it is up. Should it never come up, the cloud
  // is not left believing the gateway is online.
  await old.stop();
  uplink.continueFrom(old);
  // Forward rules may have changed: every tag's and batch's recorder is looked up again.
  target.useUplink(uplink);
  target.setConfig({ ...target.config, uplink: wanted });
  uplink.start();
  result.applied.push('uplink');
}

/**
 * What tells on reload whether a device's config changed: a digest of its JSON, not the JSON
 * itself (a device of 10,000 tags is about a megabyte of it, kept for as long as it runs).
 */
export function deviceFingerprint(device: DeviceConfig): string {
  return createHash('sha256').update(JSON.stringify(device)).digest('base64');
}
