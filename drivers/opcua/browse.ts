// Browsing for commissioning: the children of one node with what a tag entry needs (NodeId,
// data type, access level), as a table for people or as ready-to-paste tag entries.
import {
  AccessLevelFlag,
  AttributeIds,
  BrowseDirection,
  DataType,
  NodeClass,
  ReferenceTypeIds,
  resolveNodeId,
  type BrowseResult,
  type DataValue,
  type ReferenceDescription,
} from 'node-opcua-client';
import { DriverError } from '../../src/pipeline/driver.js';
import type { OpcUaConnection } from './connection.js';
import { failureName, statusReason } from './values.js';

export interface BrowseEntry {
  browseName: string;
  displayName: string;
  nodeId: string;
  nodeClass: string;
  /** Variables only: the DataType's browse name (e.g. "Double", "Duration", "MyStruct"). */
  dataType?: string;
  /** Variables only: array when ValueRank ≥ 0. */
  array?: boolean;
  /** Variables only: "R", "W", "RW" or "-" for the connected user (UserAccessLevel). */
  access?: string;
}

const MAX_CHILDREN = 100_000;

/** The hierarchical children (Organizes, HasComponent, HasProperty …) of `nodeIdText`. Each request is bounded by requestTimeout. */
export async function browseChildren(connection: OpcUaConnection, nodeIdText: string, maxNodesPerRead: number): Promise<BrowseEntry[]> {
  let nodeId: ReturnType<typeof resolveNodeId>;
  try {
    nodeId = resolveNodeId(nodeIdText);
  } catch (error) {
    throw new DriverError(`invalid NodeId "${nodeIdText}": ${(error as Error).message}`, { code: 'BadNodeIdInvalid' });
  }
  const references: ReferenceDescription[] = [];
  const what = `browsing ${nodeIdText}`;
  let result: BrowseResult = await connection.request(what, (session) =>
    session.browse({
      nodeId,
      browseDirection: BrowseDirection.Forward,
      referenceTypeId: resolveNodeId(ReferenceTypeIds.HierarchicalReferences),
      includeSubtypes: true,
      nodeClassMask: 0,
      resultMask: 0x3f,
    }),
  );
  if (result.statusCode.isNotGood())
    throw new DriverError(`browsing ${nodeIdText} failed: ${statusReason(result.statusCode)}`, { code: failureName(result.statusCode) });
  references.push(...(result.references ?? []));
  // Servers hand out long child lists in parts.
  while (result.continuationPoint && result.continuationPoint.length > 0 && references.length < MAX_CHILDREN) {
    const continuationPoint = result.continuationPoint;
    result = await connection.request(what, (session) => session.browseNext(continuationPoint, false));
    references.push(...(result.references ?? []));
  }

  const entries: BrowseEntry[] = references.map((reference) => ({
    browseName: reference.browseName.name ?? '',
    displayName: reference.displayName.text ?? reference.browseName.name ?? '',
    nodeId: reference.nodeId.toString(),
    nodeClass: NodeClass[reference.nodeClass] ?? String(reference.nodeClass),
  }));

  // DataType, ValueRank and UserAccessLevel of the variables, in reads the server accepts.
  const variables = entries.filter((entry) => entry.nodeClass === 'Variable');
  const attributes = [AttributeIds.DataType, AttributeIds.ValueRank, AttributeIds.UserAccessLevel];
  const perRequest = Math.max(attributes.length, Math.floor(maxNodesPerRead / attributes.length) * attributes.length);
  const nodesToRead = variables.flatMap((entry) => attributes.map((attributeId) => ({ nodeId: entry.nodeId, attributeId })));
  const values: DataValue[] = [];
  for (let start = 0; start < nodesToRead.length; start += perRequest) {
    const part = nodesToRead.slice(start, start + perRequest);
    values.push(...(await connection.request(`reading the attributes of ${nodeIdText}'s children`, (session) => session.read(part))));
  }
  const dataTypeIds = new Map<string, string>();
  variables.forEach((entry, index) => {
    const [dataType, valueRank, access] = values.slice(index * attributes.length, (index + 1) * attributes.length);
    if (dataType?.statusCode.isGood()) dataTypeIds.set(entry.nodeId, String(dataType.value.value));
    if (valueRank?.statusCode.isGood()) entry.array = (valueRank.value.value as number) >= 0;
    if (access?.statusCode.isGood()) entry.access = accessText(access.value.value as number);
  });

  // DataType NodeIds to names: built-in types by table, others by their BrowseName.
  const names = new Map<string, string>();
  const unknown = [...new Set(dataTypeIds.values())].filter((id) => builtInName(id) === undefined);
  for (let start = 0; start < unknown.length; start += maxNodesPerRead) {
    const part = unknown.slice(start, start + maxNodesPerRead);
    const browseNames = await connection.request(`reading the names of ${nodeIdText}'s children's DataTypes`, (session) =>
      session.read(part.map((id) => ({ nodeId: id, attributeId: AttributeIds.BrowseName }))),
    );
    part.forEach((id, index) => {
      const name = browseNames[index]?.statusCode.isGood() ? (browseNames[index]!.value.value as { name?: string }).name : undefined;
      names.set(id, name ?? id);
    });
  }
  for (const entry of variables) {
    const id = dataTypeIds.get(entry.nodeId);
    if (id !== undefined) entry.dataType = builtInName(id) ?? names.get(id) ?? id;
  }
  return entries;
}

function builtInName(dataTypeId: string): string | undefined {
  const match = /^ns=0;i=(\d+)$|^i=(\d+)$/.exec(dataTypeId);
  const id = Number(match?.[1] ?? match?.[2] ?? NaN);
  return id >= 1 && id <= 25 ? DataType[id] : undefined;
}

function accessText(level: number): string {
  const read = (level & AccessLevelFlag.CurrentRead) !== 0;
  const write = (level & AccessLevelFlag.CurrentWrite) !== 0;
  return read && write ? 'RW' : read ? 'R' : write ? 'W' : '-';
}

/** A fixed-width table: one line per child. */
export function formatBrowseTable(entries: readonly BrowseEntry[]): string {
  const rows = [
    ['BROWSE NAME', 'NODE ID', 'CLASS', 'DATA TYPE', 'ACCESS'],
    ...entries.map((entry) => [
      entry.browseName,
      entry.nodeId,
      entry.nodeClass,
      entry.dataType === undefined ? '' : `${entry.dataType}${entry.array ? '[]' : ''}`,
      entry.access ?? '',
    ]),
  ];
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  return rows
    .map((row) =>
      row
        .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** Tag entries for the variables among the children, with names valid in topics and unique. */
export function tagEntries(entries: readonly BrowseEntry[]): Array<{ name: string; nodeId: string; writable?: true }> {
  const used = new Set<string>();
  return entries
    .filter((entry) => entry.nodeClass === 'Variable')
    .map((entry) => {
      const base =
        entry.browseName
          .replace(/[^A-Za-z0-9_.-]+/g, '_')
          .replace(/^_+|_+$/g, '')
          .slice(0, 120) || 'tag';
      let name = base;
      for (let n = 2; used.has(name); n++) name = `${base}_${n}`;
      used.add(name);
      return entry.access?.includes('W') ? { name, nodeId: entry.nodeId, writable: true as const } : { name, nodeId: entry.nodeId };
    });
}
