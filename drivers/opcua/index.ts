// The OPC UA driver (node-opcua client). One driver instance serves one server endpoint.
//
//   subscription mode (default): a push plan per poll group → one OPC UA subscription each
//     (subscription.ts); the core supervises the connection and subscribes again after every
//     reconnect.
//   polling mode: the Read service in batches of the server's MaxNodesPerRead.
//
// Self-healing lives in connection.ts: any sign of a broken channel, session or subscription
// makes `connected` false; the core then closes the driver and connects again with back-off,
// which builds everything anew. While a connection is down every tag reports bad.
import { format } from 'node:util';
import type { Logger } from 'pino';
import { AttributeIds, type DataType, resolveNodeId, setErrorLogger, setWarningLogger, type NodeId } from 'node-opcua-client';
import { DriverError, type Driver, type DriverContext, type ReadPlan, type TagReading, type TagValue } from '../../src/pipeline/driver.js';
import { browseChildren, type BrowseEntry } from './browse.js';
import type { OpcUaDeviceConfig, OpcUaTag } from './config.js';
import { OpcUaConnection } from './connection.js';
import { splitNamespaceUri, withNamespaceIndex, withNamespaceUri } from './nodeid.js';
import { ActiveSubscription, itemSettings, notConnected, resolveItem, type PlannedItem } from './subscription.js';
import { dataTypeName, failureName, readingOf, statusReason, variantFor } from './values.js';

export { browseChildren, formatBrowseTable, tagEntries, type BrowseEntry } from './browse.js';
export { applicationCertificateFile, pkiFolder, rejectedCertificatesFolder, trustedCertificatesFolder } from './pki.js';

export class OpcUaReadPlan implements ReadPlan {
  readonly owner: OpcUaDriver;
  readonly mode: 'poll' | 'push';
  readonly items: readonly PlannedItem[];
  /** Publishing interval (push) or poll interval: the interval of the tags' poll group. */
  readonly publishingInterval: number;
  private readonly summary: string;

  constructor(owner: OpcUaDriver, device: OpcUaDeviceConfig, tags: readonly OpcUaTag[]) {
    this.owner = owner;
    this.mode = device.mode === 'subscription' ? 'push' : 'poll';
    this.items = tags.map((tag) => parseItem(tag));
    const group = tags[0]?.group;
    this.publishingInterval = group === undefined ? device.pollInterval : (device.pollGroups[group]?.interval ?? device.pollInterval);
    if (this.mode === 'push') {
      const sampling = new Set(tags.map((tag) => itemSettings(tag, device, this.publishingInterval).samplingInterval));
      this.summary = `subscription of ${tags.length} monitored item${tags.length === 1 ? '' : 's'}, publishing every ${this.publishingInterval} ms, sampling ${[...sampling].sort((a, b) => a - b).join('/')} ms`;
    } else {
      this.summary = `Read of ${tags.length} node${tags.length === 1 ? '' : 's'} per poll, in requests of at most the server's MaxNodesPerRead (else ${device.polling.maxNodesPerRead})`;
    }
  }

  describe(): string {
    return this.summary;
  }
}

function parseItem(tag: OpcUaTag): PlannedItem {
  if (splitNamespaceUri(tag.nodeId)) return { tag, nodeId: undefined, byNamespaceUri: true };
  try {
    return { tag, nodeId: resolveNodeId(tag.nodeId) };
  } catch (error) {
    return { tag, nodeId: undefined, problem: `invalid NodeId "${tag.nodeId}": ${(error as Error).message}` };
  }
}

interface NodeTypeInfo {
  dataType: DataType;
  valueRank: number;
}

export class OpcUaDriver implements Driver<OpcUaTag> {
  readonly name: string;
  private readonly device: OpcUaDeviceConfig;
  private readonly context: DriverContext;
  private readonly log: Logger;
  private connection: OpcUaConnection | undefined;
  /** Bumped by close(): a connect() that finds it changed gives up what it opened. */
  private generation = 0;
  private readonly subscriptions = new Map<OpcUaReadPlan, ActiveSubscription>();
  /** A polled plan's items with their NodeIds for one connection ("nsu=" looked up once, not every poll). */
  private readonly resolved = new WeakMap<OpcUaReadPlan, { connection: OpcUaConnection; items: PlannedItem[] }>();
  /** DataType and ValueRank per NodeId, for writes; valid for one connection. */
  private readonly nodeTypes = new Map<string, NodeTypeInfo>();

  constructor(device: OpcUaDeviceConfig, context: DriverContext) {
    this.name = device.name;
    this.device = device;
    this.context = context;
    this.log = context.log;
    routeNodeOpcuaLogs(context.log);
  }

  get connected(): boolean {
    return this.connection !== undefined && this.connection.lost === undefined;
  }

  async connect(): Promise<void> {
    await this.close();
    const generation = this.generation;
    const connection = await OpcUaConnection.open({
      device: this.device,
      dataDir: this.context.dataDir,
      log: this.log,
      onLost: (reason) => this.lost(connection, reason),
    });
    if (generation !== this.generation) {
      await connection.close();
      throw new DriverError('closed while connecting', { code: 'closed', connectionLost: true });
    }
    this.connection = connection;
    const { limits } = connection;
    this.log.debug({ endpoint: this.device.connection.endpointUrl, limits }, 'OPC UA session open');
  }

  async close(): Promise<void> {
    this.generation++;
    for (const subscription of this.subscriptions.values()) subscription.deactivate();
    this.subscriptions.clear();
    this.nodeTypes.clear();
    const connection = this.connection;
    this.connection = undefined;
    await connection?.close();
  }

  plan(tags: readonly OpcUaTag[]): OpcUaReadPlan {
    return new OpcUaReadPlan(this, this.device, tags);
  }

  async subscribe(plan: ReadPlan, onReadings: (readings: TagReading[]) => void): Promise<void> {
    const own = this.ownPlan(plan);
    const connection = this.requireConnection();
    this.subscriptions.get(own)?.deactivate();
    const subscription = new ActiveSubscription(own, onReadings);
    this.subscriptions.set(own, subscription);
    try {
      await subscription.start(connection, this.device);
    } catch (error) {
      subscription.deactivate();
      if (this.subscriptions.get(own) === subscription) this.subscriptions.delete(own);
      throw error;
    }
    // Lost while subscribing: the tags must not stay silent until the core's next tick.
    if (connection.lost !== undefined)
      throw new DriverError(`connection lost while subscribing: ${connection.lost}`, { code: 'connection-lost', connectionLost: true });
  }

  async read(plan: ReadPlan): Promise<TagReading[]> {
    const own = this.ownPlan(plan);
    const connection = this.requireConnection();
    const results = new Map<string, TagReading>();
    const usable: PlannedItem[] = [];
    for (const item of this.resolvedItems(own, connection)) {
      if (item.nodeId) usable.push(item);
      else
        results.set(item.tag.name, {
          tag: item.tag.name,
          quality: 'bad',
          reason: item.problem ?? 'invalid NodeId',
          code: item.code ?? 'BadNodeIdInvalid',
        });
    }
    const perRequest = connection.limits.maxNodesPerRead > 0 ? connection.limits.maxNodesPerRead : this.device.polling.maxNodesPerRead;
    for (let start = 0; start < usable.length; start += perRequest) {
      const batch = usable.slice(start, start + perRequest);
      const values = await connection.request(`reading ${batch.length} nodes`, (session) =>
        session.read(
          batch.map((item) => ({ nodeId: item.nodeId!, attributeId: AttributeIds.Value })),
          this.device.polling.maxAge,
        ),
      );
      batch.forEach((item, index) => {
        const dataValue = values[index];
        results.set(
          item.tag.name,
          dataValue
            ? readingOf(item.tag.name, dataValue)
            : { tag: item.tag.name, quality: 'bad', reason: 'the server returned no result', code: 'no-result' },
        );
      });
    }
    return own.items.map(({ tag }) => results.get(tag.name)!);
  }

  async write(tag: OpcUaTag, value: TagValue): Promise<void> {
    const connection = this.requireConnection();
    const item = resolveItem(parseItem(tag), connection.namespaces);
    if (!item.nodeId) throw new DriverError(`cannot write "${tag.name}": ${item.problem}`, { code: item.code ?? 'BadNodeIdInvalid' });
    const type = await this.nodeType(connection, tag, item.nodeId);
    let variant: ReturnType<typeof variantFor>;
    try {
      variant = variantFor(value, type.dataType, type.valueRank);
    } catch (error) {
      throw new DriverError(`cannot write "${tag.name}" (${tag.nodeId}, ${dataTypeName(type.dataType)}): ${(error as Error).message}`, {
        code: 'invalid-value',
        cause: error,
      });
    }
    const status = await connection.request(`writing "${tag.name}"`, (session) =>
      session.write({ nodeId: item.nodeId!, attributeId: AttributeIds.Value, value: { value: variant } }),
    );
    if (status.isGood()) return;
    const name = failureName(status);
    const hint =
      name === 'BadNotWritable'
        ? 'the node is read-only (its AccessLevel has no CurrentWrite)'
        : name === 'BadUserAccessDenied'
          ? `the user (${this.device.connection.auth.type}) may not write this node`
          : name === 'BadTypeMismatch'
            ? `the server did not accept a ${dataTypeName(type.dataType)} value`
            : statusReason(status);
    throw new DriverError(`writing "${tag.name}" (${tag.nodeId}) failed: ${name}: ${hint}`, { code: name });
  }

  private resolvedItems(plan: OpcUaReadPlan, connection: OpcUaConnection): PlannedItem[] {
    const cached = this.resolved.get(plan);
    if (cached?.connection === connection) return cached.items;
    const items = plan.items.map((item) => resolveItem(item, connection.namespaces));
    this.resolved.set(plan, { connection, items });
    return items;
  }

  /**
   * Children of a node (default: the Objects folder), for the browse command. The node may be
   * given as "nsu="; with `namespaceUris` the children's NodeIds are printed that way too.
   */
  async browse(nodeId = 'i=85', options: { namespaceUris?: boolean } = {}): Promise<BrowseEntry[]> {
    const connection = this.requireConnection();
    const start = withNamespaceIndex(nodeId, connection.namespaces);
    if ('problem' in start) throw new DriverError(start.problem, { code: 'BadNodeIdUnknown' });
    try {
      const entries = await browseChildren(
        connection,
        start.nodeId,
        connection.limits.maxNodesPerRead || this.device.polling.maxNodesPerRead,
      );
      return options.namespaceUris
        ? entries.map((entry) => ({ ...entry, nodeId: withNamespaceUri(entry.nodeId, connection.namespaces) }))
        : entries;
    } catch (error) {
      if (error instanceof DriverError) throw error;
      throw connection.failure(error, `browsing ${nodeId}`);
    }
  }

  private async nodeType(connection: OpcUaConnection, tag: OpcUaTag, nodeId: NodeId): Promise<NodeTypeInfo> {
    const cached = this.nodeTypes.get(tag.nodeId);
    if (cached) return cached;
    const values = await connection.request(`reading the DataType of "${tag.name}"`, (session) =>
      session.read([
        { nodeId, attributeId: AttributeIds.DataType },
        { nodeId, attributeId: AttributeIds.ValueRank },
      ]),
    );
    const [dataTypeValue, rankValue] = values;
    if (!dataTypeValue?.statusCode.isGood()) {
      const status = dataTypeValue?.statusCode;
      throw new DriverError(`cannot write "${tag.name}" (${tag.nodeId}): ${status ? statusReason(status) : 'no DataType'}`, {
        code: status ? failureName(status) : 'no-datatype',
      });
    }
    // Resolves subtypes (Duration → Double, enumerations → Int32 …) to the built-in type.
    const dataType = await connection.request(`resolving the DataType of "${tag.name}"`, (session) => session.getBuiltInDataType(nodeId));
    const rank: unknown = rankValue?.statusCode.isGood() ? rankValue.value.value : -1;
    const info = { dataType, valueRank: typeof rank === 'number' ? rank : -1 };
    // (Only for the connection it was read on: a reconnect meanwhile cleared the cache.)
    if (this.connection === connection) this.nodeTypes.set(tag.nodeId, info);
    return info;
  }

  private requireConnection(): OpcUaConnection {
    const connection = this.connection;
    if (!connection) throw notConnected();
    if (connection.lost !== undefined) throw new DriverError(connection.lost, { code: 'connection-lost', connectionLost: true });
    return connection;
  }

  private ownPlan(plan: ReadPlan): OpcUaReadPlan {
    if (!(plan instanceof OpcUaReadPlan) || plan.owner !== this) {
      throw new DriverError('got a plan made by another driver instance', { code: 'foreign-plan' });
    }
    return plan;
  }

  /** The connection broke: every subscribed tag goes bad now, the core reconnects on its next tick. */
  private lost(connection: OpcUaConnection, reason: string): void {
    if (this.connection !== connection) return;
    this.log.warn({ endpoint: this.device.connection.endpointUrl, reason }, 'OPC UA connection lost');
    for (const subscription of this.subscriptions.values())
      subscription.deactivate({ text: `connection lost: ${reason}`, code: 'connection-lost' });
    this.subscriptions.clear();
  }
}

let nodeOpcuaLog: Logger | undefined;

/**
 * node-opcua prints its warnings and errors with console.log; they go to the gateway's log
 * instead (debug level: the driver logs what matters itself, in its own words).
 */
function routeNodeOpcuaLogs(log: Logger): void {
  if (nodeOpcuaLog) return;
  nodeOpcuaLog = log.child({ module: 'node-opcua' });
  const write =
    (level: 'debug' | 'warn') =>
    (_context: unknown, ...args: unknown[]) => {
      // eslint-disable-next-line no-control-regex
      const text = format(...args)
        .replace(/\x1b\[[0-9;]*m/g, '')
        .trim();
      if (text) nodeOpcuaLog?.[level](text);
    };
  setWarningLogger(write('debug'));
  setErrorLogger(write('debug'));
}

export function createDriver(device: OpcUaDeviceConfig, context: DriverContext): OpcUaDriver {
  return new OpcUaDriver(device, context);
}
