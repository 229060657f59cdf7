// The Sparkplug B payload codec: SparkplugPayload ↔ protobuf bytes, with protobufjs doing the
// protobuf encoding. The schema is a reflection descriptor written here from the specification's
// schema (Sparkplug 3.0 §6.4, "Google Protocol Buffer Schema", package org.eclipse.tahu.protobuf,
// proto2); no .proto file is loaded at run time.
//
// Two protobufjs traps this module keeps from the rest of the gateway:
//   - A bigint given for a uint64 field is silently encoded as 0 (LongBits.from has no bigint
//     branch). Our API has bigint; here it becomes a number (when safe) or a {low, high} Long.
//   - A JSON descriptor defaults to proto3 (Type.fromJSON, "for backwards compatibility"): no field
//     presence, so seq 0 would vanish, and packed repeated fields. Every type is marked proto2.
//     The seq of every NBIRTH is 0 and MUST be present ([tck-id-payloads-nbirth-seq]); NDEATH
//     MUST have none ([tck-id-payloads-ndeath-seq]).
import protobuf from 'protobufjs/light.js';
import {
  DataType,
  dataTypeName,
  describeValue,
  isBasicType,
  isDataType,
  scalarFromWire,
  scalarToWire,
  type DataSetCell,
  type MetricValue,
  type SparkplugDataSet,
  type WireScalar,
  label,
  type Where,
} from './datatypes.js';

export { DataType, dataTypeName, type DataSetCell, type MetricValue, type SparkplugDataSet } from './datatypes.js';

// ---------------------------------------------------------------- API

/** A property's value: a basic type (Int8…Text) or a nested PropertySet / PropertySetList. */
export interface PropertyValue {
  type: DataType;
  /** The explicit null ([PropertyValue] is_null); then there is no value. */
  isNull?: boolean;
  value?: number | bigint | boolean | string | PropertySet | PropertySet[];
}

/** PropertySet as a record: keys and values in pairs ([tck-id-payloads-propertyset-keys-array-size]). */
export type PropertySet = Record<string, PropertyValue>;

export interface SparkplugMetaData {
  isMultiPart?: boolean;
  contentType?: string;
  size?: bigint;
  seq?: bigint;
  fileName?: string;
  fileType?: string;
  md5?: string;
  description?: string;
}

export interface SparkplugMetric {
  name?: string;
  /** Node-wide unique, declared in births ([tck-id-payloads-alias-uniqueness]). Decoded as bigint. */
  alias?: bigint | number;
  /** Milliseconds since the epoch, UTC. */
  timestamp?: number;
  /** Selects the value's field; written unless encodePayload's omitDatatypes is set. */
  datatype?: DataType;
  isHistorical?: boolean;
  isTransient?: boolean;
  /** The only null in Sparkplug: no value is sent with it. */
  isNull?: boolean;
  metadata?: SparkplugMetaData;
  properties?: PropertySet;
  /** By datatype, see MetricValue. */
  value?: MetricValue;
}

export interface SparkplugPayload {
  /** Milliseconds since the epoch, UTC: the time the message is sent. */
  timestamp?: number;
  metrics?: SparkplugMetric[];
  /** 0–255 on every message of a session except NDEATH, NCMD and DCMD, which have none. */
  seq?: number;
  uuid?: string;
  body?: Uint8Array;
}

export interface EncodeOptions {
  /**
   * Leave `datatype` off the wire (it still selects the value field). NDATA, DDATA, NCMD and DCMD
   * SHOULD NOT carry it ([tck-id-payloads-metric-datatype-not-req]); births MUST
   * ([tck-id-payloads-metric-datatype-req]).
   */
  omitDatatypes?: boolean;
}

export interface DecodeOptions {
  /**
   * The datatype of a metric that arrives without one (DATA and CMD messages), from the births'
   * names and aliases. A DCMD value is read as its metric's known type, not by which field the
   * sender chose. Without a datatype, a value is returned as its field holds it (int_value as a
   * number, long_value as a bigint, …) and `datatype` stays undefined.
   */
  datatypeOf?: (metric: { name?: string; alias?: bigint }) => DataType | undefined;
}

/** Sparkplug quality codes (§6.4.9 "Quality Codes"); the property is only required when not GOOD. */
export const QualityCode = { BAD: 0, GOOD: 192, STALE: 500 } as const;
export type QualityCode = (typeof QualityCode)[keyof typeof QualityCode];

/** The `Quality` property: type Int32 (3), value in int_value ([tck-id-payloads-propertyset-quality-value-type]). */
export function qualityProperty(code: QualityCode): PropertyValue {
  return { type: DataType.Int32, value: code };
}

/** The engineering unit as a String property under "engUnit", the name of Ignition's tag property (not fixed by the spec). */
export function engUnitProperty(unit: string): PropertyValue {
  return { type: DataType.String, value: unit };
}

// ---------------------------------------------------------------- schema

const MAX_FIELD = 536870911;
const proto2 = { edition: 'proto2' } as const;
const extensible = (from: number) => ({ ...proto2, extensions: [[from, MAX_FIELD]], fields: {} });

/** The specification's schema (§6.4, field numbers and types as printed there), camelCase names. */
const SCHEMA: protobuf.INamespace = {
  nested: {
    org: {
      nested: {
        eclipse: {
          nested: {
            tahu: {
              nested: {
                protobuf: {
                  nested: {
                    Payload: {
                      ...proto2,
                      extensions: [[6, MAX_FIELD]],
                      fields: {
                        timestamp: { type: 'uint64', id: 1 },
                        metrics: { rule: 'repeated', type: 'Metric', id: 2 },
                        seq: { type: 'uint64', id: 3 },
                        uuid: { type: 'string', id: 4 },
                        body: { type: 'bytes', id: 5 },
                      },
                      nested: {
                        Template: {
                          ...proto2,
                          extensions: [[6, MAX_FIELD]],
                          fields: {
                            version: { type: 'string', id: 1 },
                            metrics: { rule: 'repeated', type: 'Metric', id: 2 },
                            parameters: { rule: 'repeated', type: 'Parameter', id: 3 },
                            templateRef: { type: 'string', id: 4 },
                            isDefinition: { type: 'bool', id: 5 },
                          },
                          nested: {
                            Parameter: {
                              ...proto2,
                              oneofs: {
                                value: {
                                  oneof: [
                                    'intValue',
                                    'longValue',
                                    'floatValue',
                                    'doubleValue',
                                    'booleanValue',
                                    'stringValue',
                                    'extensionValue',
                                  ],
                                },
                              },
                              fields: {
                                name: { type: 'string', id: 1 },
                                type: { type: 'uint32', id: 2 },
                                intValue: { type: 'uint32', id: 3 },
                                longValue: { type: 'uint64', id: 4 },
                                floatValue: { type: 'float', id: 5 },
                                doubleValue: { type: 'double', id: 6 },
                                booleanValue: { type: 'bool', id: 7 },
                                stringValue: { type: 'string', id: 8 },
                                extensionValue: { type: 'ParameterValueExtension', id: 9 },
                              },
                              nested: { ParameterValueExtension: extensible(1) },
                            },
                          },
                        },
                        DataSet: {
                          ...proto2,
                          extensions: [[5, MAX_FIELD]],
                          fields: {
                            numOfColumns: { type: 'uint64', id: 1 },
                            columns: { rule: 'repeated', type: 'string', id: 2 },
                            types: { rule: 'repeated', type: 'uint32', id: 3 },
                            rows: { rule: 'repeated', type: 'Row', id: 4 },
                          },
                          nested: {
                            DataSetValue: {
                              ...proto2,
                              oneofs: {
                                value: {
                                  oneof: [
                                    'intValue',
                                    'longValue',
                                    'floatValue',
                                    'doubleValue',
                                    'booleanValue',
                                    'stringValue',
                                    'extensionValue',
                                  ],
                                },
                              },
                              fields: {
                                intValue: { type: 'uint32', id: 1 },
                                longValue: { type: 'uint64', id: 2 },
                                floatValue: { type: 'float', id: 3 },
                                doubleValue: { type: 'double', id: 4 },
                                booleanValue: { type: 'bool', id: 5 },
                                stringValue: { type: 'string', id: 6 },
                                extensionValue: { type: 'DataSetValueExtension', id: 7 },
                              },
                              nested: { DataSetValueExtension: extensible(1) },
                            },
                            Row: {
                              ...proto2,
                              extensions: [[2, MAX_FIELD]],
                              fields: { elements: { rule: 'repeated', type: 'DataSetValue', id: 1 } },
                            },
                          },
                        },
                        PropertyValue: {
                          ...proto2,
                          oneofs: {
                            value: {
                              oneof: [
                                'intValue',
                                'longValue',
                                'floatValue',
                                'doubleValue',
                                'booleanValue',
                                'stringValue',
                                'propertysetValue',
                                'propertysetsValue',
                                'extensionValue',
                              ],
                            },
                          },
                          fields: {
                            type: { type: 'uint32', id: 1 },
                            isNull: { type: 'bool', id: 2 },
                            intValue: { type: 'uint32', id: 3 },
                            longValue: { type: 'uint64', id: 4 },
                            floatValue: { type: 'float', id: 5 },
                            doubleValue: { type: 'double', id: 6 },
                            booleanValue: { type: 'bool', id: 7 },
                            stringValue: { type: 'string', id: 8 },
                            propertysetValue: { type: 'PropertySet', id: 9 },
                            propertysetsValue: { type: 'PropertySetList', id: 10 },
                            extensionValue: { type: 'PropertyValueExtension', id: 11 },
                          },
                          nested: { PropertyValueExtension: extensible(1) },
                        },
                        PropertySet: {
                          ...proto2,
                          extensions: [[3, MAX_FIELD]],
                          fields: {
                            keys: { rule: 'repeated', type: 'string', id: 1 },
                            values: { rule: 'repeated', type: 'PropertyValue', id: 2 },
                          },
                        },
                        PropertySetList: {
                          ...proto2,
                          extensions: [[2, MAX_FIELD]],
                          fields: { propertyset: { rule: 'repeated', type: 'PropertySet', id: 1 } },
                        },
                        MetaData: {
                          ...proto2,
                          extensions: [[9, MAX_FIELD]],
                          fields: {
                            isMultiPart: { type: 'bool', id: 1 },
                            contentType: { type: 'string', id: 2 },
                            size: { type: 'uint64', id: 3 },
                            seq: { type: 'uint64', id: 4 },
                            fileName: { type: 'string', id: 5 },
                            fileType: { type: 'string', id: 6 },
                            md5: { type: 'string', id: 7 },
                            description: { type: 'string', id: 8 },
                          },
                        },
                        Metric: {
                          ...proto2,
                          oneofs: {
                            value: {
                              oneof: [
                                'intValue',
                                'longValue',
                                'floatValue',
                                'doubleValue',
                                'booleanValue',
                                'stringValue',
                                'bytesValue',
                                'datasetValue',
                                'templateValue',
                                'extensionValue',
                              ],
                            },
                          },
                          fields: {
                            name: { type: 'string', id: 1 },
                            alias: { type: 'uint64', id: 2 },
                            timestamp: { type: 'uint64', id: 3 },
                            datatype: { type: 'uint32', id: 4 },
                            isHistorical: { type: 'bool', id: 5 },
                            isTransient: { type: 'bool', id: 6 },
                            isNull: { type: 'bool', id: 7 },
                            metadata: { type: 'MetaData', id: 8 },
                            properties: { type: 'PropertySet', id: 9 },
                            intValue: { type: 'uint32', id: 10 },
                            longValue: { type: 'uint64', id: 11 },
                            floatValue: { type: 'float', id: 12 },
                            doubleValue: { type: 'double', id: 13 },
                            booleanValue: { type: 'bool', id: 14 },
                            stringValue: { type: 'string', id: 15 },
                            bytesValue: { type: 'bytes', id: 16 },
                            datasetValue: { type: 'DataSet', id: 17 },
                            templateValue: { type: 'Template', id: 18 },
                            extensionValue: { type: 'MetricValueExtension', id: 19 },
                          },
                          nested: { MetricValueExtension: extensible(1) },
                        },
                      },
                    },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

const PayloadType = protobuf.Root.fromJSON(SCHEMA).lookupType('org.eclipse.tahu.protobuf.Payload');

// ---------------------------------------------------------------- wire shapes (protobufjs plain objects)

/** A uint64 as protobufjs takes and gives it: a number when safe, else low/high 32-bit halves. */
type Wire64 = number | protobuf.Long;

interface WireValues {
  intValue?: number;
  longValue?: Wire64;
  floatValue?: number;
  doubleValue?: number;
  booleanValue?: boolean;
  stringValue?: string;
  bytesValue?: Uint8Array;
}

interface WirePropertyValue extends Omit<WireValues, 'bytesValue'> {
  type?: number;
  isNull?: boolean;
  propertysetValue?: WirePropertySet;
  propertysetsValue?: { propertyset: WirePropertySet[] };
  /** The oneof's name of the member that is set (a getter of decoded messages). */
  value?: string;
}

interface WirePropertySet {
  keys: string[];
  values: WirePropertyValue[];
}

interface WireDataSet {
  numOfColumns?: Wire64;
  columns: string[];
  types: number[];
  rows: Array<{ elements: Array<Omit<WireValues, 'bytesValue'> & { value?: string }> }>;
}

interface WireMetaData {
  isMultiPart?: boolean;
  contentType?: string;
  size?: Wire64;
  seq?: Wire64;
  fileName?: string;
  fileType?: string;
  md5?: string;
  description?: string;
}

interface WireMetric extends WireValues {
  name?: string;
  alias?: Wire64;
  timestamp?: Wire64;
  datatype?: number;
  isHistorical?: boolean;
  isTransient?: boolean;
  isNull?: boolean;
  metadata?: WireMetaData;
  properties?: WirePropertySet;
  datasetValue?: WireDataSet;
  templateValue?: object;
  value?: string;
}

interface WirePayload {
  timestamp?: Wire64;
  metrics: WireMetric[];
  seq?: Wire64;
  uuid?: string;
  body?: Uint8Array;
}

const TWO_32 = 4294967296;

function toWire64(value: bigint): Wire64 {
  // Numbers are protobufjs's fast path; only values beyond 2^53 need the halves.
  if (value <= 9007199254740991n) return Number(value);
  return { low: Number(value & 0xffffffffn) | 0, high: Number(value >> 32n) | 0, unsigned: true };
}

function bigintOf(value: Wire64): bigint {
  if (typeof value === 'number') return BigInt(value);
  return (BigInt(value.high >>> 0) << 32n) | BigInt(value.low >>> 0);
}

function numberOf(value: Wire64, what: string): number {
  if (typeof value === 'number') return value;
  const high = value.high >>> 0;
  if (high >= 0x200000) throw new RangeError(`${what}: ${bigintOf(value)} is beyond 2^53`);
  return high * TWO_32 + (value.low >>> 0);
}

function has<T extends object>(message: T, key: keyof T & string): boolean {
  return Object.hasOwn(message, key);
}

// ---------------------------------------------------------------- encode

function wireTimestamp(value: number, what: Where): number {
  if (!Number.isSafeInteger(value) || value < 0)
    throw new RangeError(`${label(what)}: a timestamp is whole milliseconds ≥ 0, got ${describeValue(value)}`);
  return value;
}

function setScalar(target: WireValues, wire: WireScalar): void {
  if (wire.field === 'longValue') target.longValue = toWire64(wire.value);
  else (target as Record<string, unknown>)[wire.field] = wire.value;
}

/** `owner` names the metric; `path` the properties this set is nested in ("a.b[0]."). */
function encodeProperties(set: PropertySet, owner: string, path = ''): WirePropertySet {
  const keys = Object.keys(set);
  return { keys, values: keys.map((key) => encodePropertyValue(set[key]!, owner, `${path}${key}`)) };
}

function encodePropertyValue(property: PropertyValue, owner: string, path: string): WirePropertyValue {
  const what = `${owner}, property ${path}`;
  const { type, value } = property;
  // [tck-id-payloads-metric-propertyvalue-type-req] / -type-value: basic types, PropertySet, PropertySetList.
  if (!isBasicType(type) && type !== DataType.PropertySet && type !== DataType.PropertySetList)
    throw new TypeError(`${what}: ${dataTypeName(type)} is not a property type (Int8…Text, PropertySet, PropertySetList)`);
  const wire: WirePropertyValue = { type };
  if (property.isNull) {
    if (value !== undefined) throw new TypeError(`${what}: a null property has no value`);
    wire.isNull = true;
    return wire;
  }
  if (value === undefined) throw new TypeError(`${what}: no value (set isNull for a null property)`);
  if (type === DataType.PropertySet) {
    if (!isPropertySet(value)) throw new TypeError(`${what}: PropertySet takes a record of properties`);
    wire.propertysetValue = encodeProperties(value, owner, `${path}.`);
  } else if (type === DataType.PropertySetList) {
    if (!Array.isArray(value)) throw new TypeError(`${what}: PropertySetList takes an array of property records`);
    wire.propertysetsValue = { propertyset: value.map((set, index) => encodeProperties(set, owner, `${path}[${index}].`)) };
  } else setScalar(wire, scalarToWire(type, value, what));
  return wire;
}

function isPropertySet(value: PropertyValue['value']): value is PropertySet {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function encodeDataSet(dataSet: SparkplugDataSet, what: string): WireDataSet {
  const { columns, types, rows } = dataSet;
  // [tck-id-payloads-dataset-column-num-headers], [tck-id-payloads-dataset-types-num]
  if (types.length !== columns.length) throw new TypeError(`${what}: ${columns.length} columns but ${types.length} types`);
  types.forEach((type, index) => {
    // [tck-id-payloads-dataset-types-value]: basic types only.
    if (!isBasicType(type)) throw new TypeError(`${what}: column ${columns[index]} has ${dataTypeName(type)}, not a basic type`);
  });
  return {
    numOfColumns: columns.length,
    columns: [...columns],
    types: [...types],
    rows: rows.map((row, rowIndex) => {
      if (row.length !== columns.length)
        throw new TypeError(`${what}: row ${rowIndex} has ${row.length} cells for ${columns.length} columns`);
      return {
        elements: row.map((cell, column) => {
          const element: WireValues = {};
          // The schema has no null for a cell: a null is a DataSetValue without a value.
          if (cell !== null) setScalar(element, scalarToWire(types[column]!, cell, `${what}[${rowIndex}][${columns[column]}]`));
          return element;
        }),
      };
    }),
  };
}

function encodeMetaData(metadata: SparkplugMetaData): WireMetaData {
  const wire: WireMetaData = {};
  for (const key of ['isMultiPart', 'contentType', 'fileName', 'fileType', 'md5', 'description'] as const) {
    if (metadata[key] !== undefined) (wire as Record<string, unknown>)[key] = metadata[key];
  }
  if (metadata.size !== undefined) wire.size = toWire64(metadata.size);
  if (metadata.seq !== undefined) wire.seq = toWire64(metadata.seq);
  return wire;
}

function metricName(metric: SparkplugMetric, index: number): string {
  return metric.name !== undefined
    ? `metric "${metric.name}"`
    : metric.alias !== undefined
      ? `metric alias ${metric.alias}`
      : `metric #${index}`;
}

function encodeMetric(metric: SparkplugMetric, index: number, omitDatatypes: boolean): WireMetric {
  // Named only when something is wrong: a string per metric is a good part of a DDATA's cost.
  const what = (): string => metricName(metric, index);
  const wire: WireMetric = {};
  if (metric.name !== undefined) wire.name = metric.name;
  const { alias } = metric;
  if (typeof alias === 'number' && Number.isSafeInteger(alias) && alias >= 0) wire.alias = alias;
  else if (typeof alias === 'bigint' && alias >= 0n && alias <= 0xffffffffffffffffn) wire.alias = toWire64(alias);
  else if (alias !== undefined) throw new RangeError(`${what()}: an alias is a uint64, got ${describeValue(alias)}`);
  if (metric.timestamp !== undefined) wire.timestamp = wireTimestamp(metric.timestamp, what);
  const { datatype } = metric;
  if (datatype !== undefined) {
    if (!isDataType(datatype)) throw new TypeError(`${what()}: ${datatype} is not a Sparkplug datatype`);
    if (!omitDatatypes) wire.datatype = datatype;
  }
  if (metric.isHistorical !== undefined) wire.isHistorical = metric.isHistorical;
  if (metric.isTransient !== undefined) wire.isTransient = metric.isTransient;
  if (metric.metadata !== undefined) wire.metadata = encodeMetaData(metric.metadata);
  if (metric.properties !== undefined) wire.properties = encodeProperties(metric.properties, what());
  if (metric.isNull) {
    // is_null is the null; no sentinel value goes with it ([tck-id-operational-behavior-data-publish-nbirth-values]).
    if (metric.value !== undefined) throw new TypeError(`${what()}: a null metric has no value`);
    wire.isNull = true;
    return wire;
  }
  if (metric.isNull === false) wire.isNull = false;
  const { value } = metric;
  if (value === undefined) return wire;
  // The common case first (analog values), without the general path's allocation.
  if (datatype === DataType.Double && typeof value === 'number') wire.doubleValue = value;
  else if (datatype === undefined) throw new TypeError(`${what()}: a value needs its datatype`);
  else if (datatype === DataType.DataSet) {
    if (typeof value !== 'object' || value === null || Array.isArray(value) || value instanceof Uint8Array)
      throw new TypeError(`${what()}: DataSet takes {columns, types, rows}, got ${describeValue(value)}`);
    wire.datasetValue = encodeDataSet(value as SparkplugDataSet, what());
  } else if (datatype === DataType.Template) {
    throw new TypeError(`${what()}: Template values are not supported by this codec`);
  } else setScalar(wire, scalarToWire(datatype, value, what));
  return wire;
}

/**
 * A payload as protobuf bytes (a Buffer, as MQTT publishes it). Throws TypeError/RangeError,
 * naming the metric, for a value that does not fit its datatype.
 */
export function encodePayload(payload: SparkplugPayload, options: EncodeOptions = {}): Buffer {
  const omitDatatypes = options.omitDatatypes ?? false;
  return encodeWire(
    payload,
    (payload.metrics ?? []).map((metric, index) => encodeMetric(metric, index, omitDatatypes)),
  );
}

/** The payload's fields besides its metrics, checked, and the metrics in their wire form: the bytes. */
function encodeWire(payload: Omit<SparkplugPayload, 'metrics'>, metrics: WireMetric[]): Buffer {
  const wire: WirePayload = { metrics };
  if (payload.timestamp !== undefined) wire.timestamp = wireTimestamp(payload.timestamp, 'payload');
  if (payload.seq !== undefined) {
    // [tck-id-payloads-sequence-num-incrementing]: 0 to 255, then 0 again.
    if (!Number.isInteger(payload.seq) || payload.seq < 0 || payload.seq > 255)
      throw new RangeError(`payload: seq is 0..255, got ${describeValue(payload.seq)}`);
    wire.seq = payload.seq;
  }
  if (payload.uuid !== undefined) wire.uuid = payload.uuid;
  if (payload.body !== undefined) wire.body = payload.body;
  const bytes = PayloadType.encode(wire).finish();
  // protobufjs's writer hands out a Buffer in Node; a Uint8Array elsewhere, which never runs here.
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------- data messages (hot path)

/**
 * One metric of a data message (NDATA/DDATA) in the form protobufjs encodes, built once: by alias,
 * with its timestamp and value or is_null, is_historical and properties when they apply; no name,
 * no datatype on the wire ([tck-id-payloads-alias-data-cmd-requirement],
 * [tck-id-payloads-metric-datatype-not-req]). encodePayload builds a SparkplugMetric and then
 * this from it, checking the value on the way; for a DDATA of 1,000 values that was measured at
 * about half of the format's send time.
 */
export type DataMetric = WireMetric;

/** Properties built once for many data metrics (the Quality property, see qualityProperty). */
export type DataProperties = WirePropertySet;

/** A PropertySet in its wire form, to be shared by data metrics (protobufjs does not change what it encodes). */
export function dataProperties(set: PropertySet): DataProperties {
  return encodeProperties(set, 'data properties');
}

/**
 * A data metric: `value` is the wire field and value (scalarToWire, or tags.ts wireValueOf, which
 * checked it against the metric's datatype); undefined sends is_null. Throws a RangeError for a
 * timestamp that is not whole milliseconds ≥ 0.
 */
export function dataMetric(
  alias: number,
  timestamp: number,
  value: WireScalar | undefined,
  historical: boolean,
  properties: DataProperties | undefined,
): DataMetric {
  // (wireTimestamp only to throw: its message costs a string.)
  const valid = Number.isSafeInteger(timestamp) && timestamp >= 0;
  const wire: WireMetric = { alias, timestamp: valid ? timestamp : wireTimestamp(timestamp, `metric alias ${alias}`) };
  if (historical) wire.isHistorical = true;
  if (properties !== undefined) wire.properties = properties;
  if (value === undefined) wire.isNull = true;
  else setScalar(wire, value);
  return wire;
}

/** A data message (NDATA/DDATA) of data metrics, as encodePayload would encode it with omitDatatypes. */
export function encodeDataPayload(timestamp: number, seq: number, metrics: DataMetric[]): Buffer {
  return encodeWire({ timestamp, seq }, metrics);
}

// ---------------------------------------------------------------- decode

const SCALAR_FIELDS = new Set(['intValue', 'longValue', 'floatValue', 'doubleValue', 'booleanValue', 'stringValue', 'bytesValue']);

/** The value of the oneof member `field` of a decoded message, 64-bit as bigint, bytes as a Uint8Array of their own. */
function rawScalar(message: WireValues, field: WireScalar['field']): number | bigint | boolean | string | Uint8Array {
  if (field === 'longValue') return bigintOf(message.longValue!);
  if (field === 'bytesValue') return new Uint8Array(message.bytesValue!);
  return message[field]!;
}

function decodeScalar(message: WireValues & { value?: string }, type: DataType | undefined, what: string): MetricValue | undefined {
  const field = message.value;
  if (field === undefined) return undefined;
  if (!SCALAR_FIELDS.has(field)) throw new TypeError(`${what}: ${field} is not supported by this codec`);
  const raw = rawScalar(message, field as WireScalar['field']);
  return type === undefined ? raw : scalarFromWire(type, field as WireScalar['field'], raw, what);
}

function decodeProperties(wire: WirePropertySet, owner: string, path = ''): PropertySet {
  const what = `${owner}, properties ${path || '(top level)'}`;
  // [tck-id-payloads-propertyset-keys-array-size] / -values-array-size
  if (wire.keys.length !== wire.values.length)
    throw new TypeError(`${what}: ${wire.keys.length} property keys but ${wire.values.length} values`);
  const set: PropertySet = {};
  wire.keys.forEach((key, index) => {
    set[key] = decodePropertyValue(wire.values[index]!, owner, `${path}${key}`);
  });
  return set;
}

function decodePropertyValue(wire: WirePropertyValue, owner: string, path: string): PropertyValue {
  const what = `${owner}, property ${path}`;
  if (!has(wire, 'type')) throw new TypeError(`${what}: no type ([tck-id-payloads-metric-propertyvalue-type-req])`);
  const type = wire.type!;
  if (!isDataType(type)) throw new TypeError(`${what}: ${type} is not a Sparkplug datatype`);
  const property: PropertyValue = { type };
  if (wire.isNull) property.isNull = true;
  if (wire.value === 'propertysetValue') property.value = decodeProperties(wire.propertysetValue!, owner, `${path}.`);
  else if (wire.value === 'propertysetsValue')
    property.value = wire.propertysetsValue!.propertyset.map((set, index) => decodeProperties(set, owner, `${path}[${index}].`));
  else {
    const value = decodeScalar(wire, type, what);
    if (value !== undefined) property.value = value as PropertyValue['value'];
  }
  return property;
}

function decodeDataSet(wire: WireDataSet, what: string): SparkplugDataSet {
  const columns = [...wire.columns];
  if (wire.types.length !== columns.length) throw new TypeError(`${what}: ${columns.length} columns but ${wire.types.length} types`);
  const types = wire.types.map((type, index) => {
    if (!isBasicType(type)) throw new TypeError(`${what}: column ${columns[index]} has ${dataTypeName(type)}, not a basic type`);
    return type as DataType;
  });
  const rows = wire.rows.map((row, rowIndex) => {
    if (row.elements.length !== columns.length)
      throw new TypeError(`${what}: row ${rowIndex} has ${row.elements.length} cells for ${columns.length} columns`);
    return row.elements.map(
      (element, column) => (decodeScalar(element, types[column], `${what}[${rowIndex}][${columns[column]}]`) ?? null) as DataSetCell,
    );
  });
  return { columns, types, rows };
}

function decodeMetaData(wire: WireMetaData): SparkplugMetaData {
  const metadata: SparkplugMetaData = {};
  for (const key of ['isMultiPart', 'contentType', 'fileName', 'fileType', 'md5', 'description'] as const) {
    if (has(wire, key)) (metadata as Record<string, unknown>)[key] = wire[key];
  }
  if (has(wire, 'size')) metadata.size = bigintOf(wire.size!);
  if (has(wire, 'seq')) metadata.seq = bigintOf(wire.seq!);
  return metadata;
}

function decodeMetric(wire: WireMetric, index: number, options: DecodeOptions): SparkplugMetric {
  const metric: SparkplugMetric = {};
  if (has(wire, 'name')) metric.name = wire.name!;
  if (has(wire, 'alias')) metric.alias = bigintOf(wire.alias!);
  const what = metricName(metric, index);
  if (has(wire, 'timestamp')) metric.timestamp = numberOf(wire.timestamp!, `${what}: timestamp`);
  let datatype: DataType | undefined;
  if (has(wire, 'datatype')) {
    const type = wire.datatype!;
    if (!isDataType(type)) throw new TypeError(`${what}: ${type} is not a Sparkplug datatype ([tck-id-payloads-metric-datatype-value])`);
    datatype = type;
  }
  if (options.datatypeOf) {
    const lookup: { name?: string; alias?: bigint } = {};
    if (metric.name !== undefined) lookup.name = metric.name;
    if (metric.alias !== undefined) lookup.alias = metric.alias as bigint;
    const known = options.datatypeOf(lookup);
    if (known !== undefined && datatype !== undefined && known !== datatype)
      throw new TypeError(`${what}: sent as ${dataTypeName(datatype)}, but it is ${dataTypeName(known)}`);
    datatype ??= known;
  }
  if (datatype !== undefined) metric.datatype = datatype;
  if (has(wire, 'isHistorical')) metric.isHistorical = wire.isHistorical!;
  if (has(wire, 'isTransient')) metric.isTransient = wire.isTransient!;
  if (has(wire, 'isNull')) metric.isNull = wire.isNull!;
  if (has(wire, 'metadata')) metric.metadata = decodeMetaData(wire.metadata!);
  if (has(wire, 'properties')) metric.properties = decodeProperties(wire.properties!, what);
  if (wire.value === 'datasetValue') {
    if (datatype !== undefined && datatype !== DataType.DataSet)
      throw new TypeError(`${what}: a ${dataTypeName(datatype)} value cannot arrive as a DataSet`);
    metric.value = decodeDataSet(wire.datasetValue!, what);
  } else if (wire.value === 'templateValue') {
    throw new TypeError(`${what}: Template values are not supported by this codec`);
  } else {
    const value = decodeScalar(wire, datatype, what);
    if (value !== undefined) metric.value = value;
  }
  return metric;
}

/** Protobuf bytes as a payload. Throws for bytes that are not a Sparkplug B payload, or values that do not fit their datatype. */
export function decodePayload(bytes: Uint8Array, options: DecodeOptions = {}): SparkplugPayload {
  let wire: WirePayload;
  try {
    wire = PayloadType.decode(bytes) as unknown as WirePayload;
  } catch (error) {
    throw new TypeError(`not a Sparkplug B payload: ${(error as Error).message}`);
  }
  const payload: SparkplugPayload = {};
  if (has(wire, 'timestamp')) payload.timestamp = numberOf(wire.timestamp!, 'payload timestamp');
  if (wire.metrics.length > 0) payload.metrics = wire.metrics.map((metric, index) => decodeMetric(metric, index, options));
  if (has(wire, 'seq')) payload.seq = numberOf(wire.seq!, 'payload seq');
  if (has(wire, 'uuid')) payload.uuid = wire.uuid!;
  if (has(wire, 'body')) payload.body = new Uint8Array(wire.body!);
  return payload;
}
