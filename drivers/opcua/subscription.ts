// Subscription mode: one OPC UA subscription per poll group (its publishing interval is the
// group's interval), monitored items created in groups of identical monitoring parameters and in
// chunks the server's MaxMonitoredItemsPerCall allows. Changes are handed to the core once per
// publish response, not once per item.
import {
  AttributeIds,
  ClientMonitoredItemGroup,
  DataChangeFilter,
  DataChangeTrigger,
  DeadbandType,
  resolveNodeId,
  TimestampsToReturn,
  type ClientSubscription,
  type DataValue,
  type MonitoringParametersOptions,
  type NodeId,
  type ReadValueIdOptions,
} from 'node-opcua-client';
import { DriverError, type DriverErrorCode, type StatusCodeName, type TagReading } from '../../src/pipeline/driver.js';
import type { DataChangeFilterConfig, OpcUaDeviceConfig, OpcUaTag } from './config.js';
import { withTimeout, type OpcUaConnection } from './connection.js';
import { withNamespaceIndex } from './nodeid.js';
import { failureName, readingOf, statusName, statusReason } from './values.js';

/** Monitored items per CreateMonitoredItems call when the server states no limit. */
const DEFAULT_ITEMS_PER_CALL = 1000;

export interface PlannedItem {
  tag: OpcUaTag;
  /** Parsed NodeId, or undefined with `problem` when node-opcua cannot parse the string. */
  nodeId: NodeId | undefined;
  problem?: string;
  /** Status name for the bad reading when there is no NodeId (default BadNodeIdInvalid). */
  code?: StatusCodeName;
  /** An "nsu=" NodeId: its namespace index is looked up per connection by resolveItem(). */
  byNamespaceUri?: true;
}

/**
 * The item with its NodeId for this connection: an "nsu=" NodeId gets the index its namespace
 * URI has in this server's NamespaceArray now (it may differ after a server restart).
 */
export function resolveItem(item: PlannedItem, namespaces: readonly string[]): PlannedItem {
  if (!item.byNamespaceUri) return item;
  const indexed = withNamespaceIndex(item.tag.nodeId, namespaces);
  if ('problem' in indexed) return { tag: item.tag, nodeId: undefined, problem: indexed.problem, code: 'BadNodeIdUnknown' };
  try {
    return { tag: item.tag, nodeId: resolveNodeId(indexed.nodeId) };
  } catch (error) {
    return { tag: item.tag, nodeId: undefined, problem: `invalid NodeId "${item.tag.nodeId}": ${(error as Error).message}` };
  }
}

export interface ItemSettings {
  samplingInterval: number;
  queueSize: number;
  discardOldest: boolean;
  filter: DataChangeFilterConfig | undefined;
}

/** The monitoring settings of one tag: its own, else the device's, else the publishing interval. */
export function itemSettings(tag: OpcUaTag, device: OpcUaDeviceConfig, publishingInterval: number): ItemSettings {
  const { subscription } = device;
  return {
    samplingInterval: tag.samplingInterval ?? subscription.samplingInterval ?? publishingInterval,
    queueSize: tag.queueSize ?? subscription.queueSize,
    discardOldest: subscription.discardOldest,
    filter: tag.dataChangeFilter ?? subscription.dataChangeFilter,
  };
}

const TRIGGERS = {
  status: DataChangeTrigger.Status,
  'status-value': DataChangeTrigger.StatusValue,
  'status-value-timestamp': DataChangeTrigger.StatusValueTimestamp,
} as const;

function monitoringParameters(settings: ItemSettings): MonitoringParametersOptions {
  const parameters: MonitoringParametersOptions = {
    samplingInterval: settings.samplingInterval,
    queueSize: settings.queueSize,
    discardOldest: settings.discardOldest,
  };
  const filter = settings.filter;
  // Status-value without a deadband is the server's default; sending no filter is the most compatible.
  if (filter && (filter.trigger !== 'status-value' || filter.deadband)) {
    const deadband = filter.deadband;
    parameters.filter = new DataChangeFilter({
      trigger: TRIGGERS[filter.trigger],
      deadbandType: deadband === undefined ? DeadbandType.None : 'absolute' in deadband ? DeadbandType.Absolute : DeadbandType.Percent,
      deadbandValue: deadband === undefined ? 0 : 'absolute' in deadband ? deadband.absolute : deadband.percent,
    });
  }
  return parameters;
}

export interface SubscriptionPlanShape {
  readonly items: readonly PlannedItem[];
  readonly publishingInterval: number;
}

/**
 * A live subscription of one push plan on one connection. Once deactivated (connection lost or
 * closed) it never delivers again, so a dying session cannot send stale values after the bad ones.
 */
export class ActiveSubscription {
  private readonly plan: SubscriptionPlanShape;
  private readonly onReadings: (readings: TagReading[]) => void;
  private pending: TagReading[] = [];
  private flushScheduled = false;
  private active = true;
  private watchdog: NodeJS.Timeout | undefined;
  private lastHeard = Date.now();

  constructor(plan: SubscriptionPlanShape, onReadings: (readings: TagReading[]) => void) {
    this.plan = plan;
    this.onReadings = onReadings;
  }

  get isActive(): boolean {
    return this.active;
  }

  /** Creates the subscription and its monitored items. Rejects with a DriverError. */
  async start(connection: OpcUaConnection, device: OpcUaDeviceConfig): Promise<void> {
    const { requestTimeout } = device.connection;
    const settings = device.subscription;
    let subscription: ClientSubscription;
    try {
      subscription = await withTimeout(
        connection.session.createSubscription2({
          requestedPublishingInterval: this.plan.publishingInterval,
          requestedMaxKeepAliveCount: settings.maxKeepAliveCount,
          requestedLifetimeCount: settings.lifetimeCount,
          maxNotificationsPerPublish: settings.maxNotificationsPerPublish,
          publishingEnabled: true,
          priority: 0,
        }),
        requestTimeout,
        `no answer to CreateSubscription within ${requestTimeout} ms`,
      );
    } catch (error) {
      throw connection.failure(error, 'creating the subscription');
    }
    const lost = (reason: string) => {
      if (this.active) connection.markLost(reason);
    };
    subscription.on('terminated', () => lost('the subscription was terminated'));
    subscription.on('status_changed', (status) => lost(`the server ended the subscription (${statusName(status)})`));
    subscription.on('internal_error', (error: Error) => lost(`subscription error: ${error.message}`));
    subscription.on('error', (error: Error) => lost(`subscription error: ${error.message}`));
    // Every publish response counts, keep-alives included.
    subscription.on('raw_notification', () => (this.lastHeard = Date.now()));

    // A subscription that stops publishing without any error (the server dropped it, a half-open
    // link) is noticed here: the server must answer at least once per keep-alive period.
    const keepAlivePeriod = subscription.publishingInterval * subscription.maxKeepAliveCount;
    const silenceLimit = 2 * keepAlivePeriod + requestTimeout;
    this.watchdog = setInterval(
      () => {
        const silent = Date.now() - this.lastHeard;
        if (silent > silenceLimit)
          lost(`no publish response for ${Math.round(silent / 1000)} s (keep-alive expected every ${Math.round(keepAlivePeriod)} ms)`);
      },
      Math.max(500, Math.min(keepAlivePeriod, 5000)),
    );
    this.watchdog.unref();

    const failed: TagReading[] = [];
    const usable: PlannedItem[] = [];
    for (const item of this.plan.items.map((planned) => resolveItem(planned, connection.namespaces))) {
      if (item.nodeId) usable.push(item);
      else
        failed.push({
          tag: item.tag.name,
          quality: 'bad',
          reason: item.problem ?? 'invalid NodeId',
          code: item.code ?? 'BadNodeIdInvalid',
        });
    }
    const perCall =
      connection.limits.maxMonitoredItemsPerCall > 0
        ? Math.min(connection.limits.maxMonitoredItemsPerCall, DEFAULT_ITEMS_PER_CALL)
        : DEFAULT_ITEMS_PER_CALL;
    for (const batch of batches(usable, device, this.plan.publishingInterval, perCall)) {
      if (!this.active) return;
      failed.push(...(await this.monitor(connection, subscription, batch.items, batch.parameters, requestTimeout)));
    }
    // Items the server refused (unknown node, filter not allowed …) are bad; the rest keep working.
    if (failed.length > 0) this.deliver(failed);
  }

  private async monitor(
    connection: OpcUaConnection,
    subscription: ClientSubscription,
    items: readonly PlannedItem[],
    parameters: MonitoringParametersOptions,
    timeout: number,
  ): Promise<TagReading[]> {
    const itemsToMonitor: ReadValueIdOptions[] = items.map((item) => ({ nodeId: item.nodeId!, attributeId: AttributeIds.Value }));
    const group = ClientMonitoredItemGroup.create(subscription, itemsToMonitor, parameters, TimestampsToReturn.Both);
    // Listeners first: the first values can follow the creation at once.
    group.on('changed', (_item, dataValue: DataValue, index: number) => {
      const item = items[index];
      if (item) this.deliver([readingOf(item.tag.name, dataValue)]);
    });
    try {
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          group.once('initialized', () => resolve());
          group.once('terminated', (error?: Error) => reject(error ?? new Error('monitored items terminated')));
        }),
        timeout,
        `no answer to CreateMonitoredItems within ${timeout} ms`,
      );
    } catch (error) {
      throw connection.failure(error, 'creating the monitored items');
    }
    const failed: TagReading[] = [];
    group.monitoredItems.forEach((monitoredItem, index) => {
      const status = monitoredItem.statusCode;
      const item = items[index];
      if (item && status?.isNotGood())
        failed.push({ tag: item.tag.name, quality: 'bad', reason: statusReason(status), code: failureName(status) });
    });
    return failed;
  }

  /** Queues readings and hands them over once per turn of the event loop (one publish response). */
  private deliver(readings: TagReading[]): void {
    if (!this.active) return;
    for (const reading of readings) this.pending.push(reading);
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      const batch = this.pending;
      this.pending = [];
      if (this.active && batch.length > 0) this.onReadings(batch);
    });
  }

  /** Stops delivering. With a reason, every tag is reported bad at once rather than going silent. */
  deactivate(reason?: { text: string; code: DriverErrorCode }): void {
    if (!this.active) return;
    this.active = false;
    this.pending = [];
    clearInterval(this.watchdog);
    if (reason)
      this.onReadings(this.plan.items.map((item) => ({ tag: item.tag.name, quality: 'bad', reason: reason.text, code: reason.code })));
  }
}

/** Items grouped by identical monitoring parameters, each group cut to `perCall` items. */
function batches(
  items: readonly PlannedItem[],
  device: OpcUaDeviceConfig,
  publishingInterval: number,
  perCall: number,
): Array<{ parameters: MonitoringParametersOptions; items: PlannedItem[] }> {
  const byKey = new Map<string, { settings: ItemSettings; items: PlannedItem[] }>();
  for (const item of items) {
    const settings = itemSettings(item.tag, device, publishingInterval);
    const key = JSON.stringify(settings);
    const entry = byKey.get(key) ?? { settings, items: [] };
    entry.items.push(item);
    byKey.set(key, entry);
  }
  const result: Array<{ parameters: MonitoringParametersOptions; items: PlannedItem[] }> = [];
  for (const { settings, items: group } of byKey.values()) {
    for (let start = 0; start < group.length; start += perCall)
      result.push({ parameters: monitoringParameters(settings), items: group.slice(start, start + perCall) });
  }
  return result;
}

export function notConnected(): DriverError {
  return new DriverError('not connected', { code: 'not-connected', connectionLost: true });
}
