// The gateway's tag values as Sparkplug metrics: which datatype a tag has, and its value in the
// form the payload codec takes.
//
// Declared tag type                          Sparkplug datatype (array: the matching …Array type)
// ----------------------------------------   -----------------------------------------------------
// modbus/serial bool,   OPC UA Boolean       Boolean (11)            BooleanArray (32)
// modbus int16,         OPC UA Int16         Int16 (2)               Int16Array (23)
// modbus uint16,        OPC UA UInt16        UInt16 (6)              UInt16Array (27)
// modbus/serial int32,  OPC UA Int32         Int32 (3)               Int32Array (24)
// modbus uint32,        OPC UA UInt32        UInt32 (7)              UInt32Array (28)
// modbus/serial int64,  OPC UA Int64         Int64 (4), exact        Int64Array (25)
// modbus uint64,        OPC UA UInt64        UInt64 (8), exact       UInt64Array (29)
// modbus float32,       OPC UA Float         Float (9)               FloatArray (30)
// modbus/serial float64, OPC UA Double       Double (10)             DoubleArray (31)
// modbus/serial string, OPC UA String        String (12)             StringArray (33)
// OPC UA SByte / Byte                        Int8 (1) / UInt8 (5)    Int8Array (22) / UInt8Array (26)
// OPC UA DateTime (an ISO 8601 string)       DateTime (13), ms       DateTimeArray (34)
// OPC UA ByteString (base64 text)            Bytes (17)              (no Sparkplug type: refused)
// OPC UA Guid                                UUID (15)               StringArray (33)
// OPC UA XmlElement, NodeId, ExpandedNodeId, String (12)             StringArray (33)
//   StatusCode, QualifiedName, LocalizedText
// any numeric type with scale or offset      Double (10): scaling makes an engineering value
//                                            (pipeline/normalize.ts), int64 included
// no declared type: by the value             boolean → Boolean, string → String, number → Double,
//   (today: OPC UA, whose readings do not    bigint → Int64 (UInt64 beyond 2^63-1); arrays by their
//   carry the node's DataType)               first element. Declare the type where it matters: a
//                                            datatype inferred from a value can differ between births.
import type { TagValue } from '../../pipeline/driver.js';
import {
  DataType,
  arrayTypeOf,
  dataTypeName,
  describeValue,
  elementTypeOf,
  isArrayType,
  label,
  scalarToWire,
  type MetricValue,
  type Where,
  type WireScalar,
} from './datatypes.js';

const DECLARED: Record<string, DataType> = {
  // Modbus (drivers/modbus/config.ts MODBUS_TYPES) and serial (drivers/serial/config.ts SERIAL_TYPES)
  bool: DataType.Boolean,
  int16: DataType.Int16,
  uint16: DataType.UInt16,
  int32: DataType.Int32,
  uint32: DataType.UInt32,
  int64: DataType.Int64,
  uint64: DataType.UInt64,
  float32: DataType.Float,
  float64: DataType.Double,
  string: DataType.String,
  // OPC UA built-in DataType names (node-opcua's DataType enum), as drivers/opcua/values.ts reads them
  Boolean: DataType.Boolean,
  SByte: DataType.Int8,
  Byte: DataType.UInt8,
  Int16: DataType.Int16,
  UInt16: DataType.UInt16,
  Int32: DataType.Int32,
  UInt32: DataType.UInt32,
  Int64: DataType.Int64,
  UInt64: DataType.UInt64,
  Float: DataType.Float,
  Double: DataType.Double,
  String: DataType.String,
  DateTime: DataType.DateTime,
  ByteString: DataType.Bytes,
  Guid: DataType.UUID,
  XmlElement: DataType.String,
  NodeId: DataType.String,
  ExpandedNodeId: DataType.String,
  StatusCode: DataType.String,
  QualifiedName: DataType.String,
  LocalizedText: DataType.String,
};

const NUMERIC = new Set<DataType>([
  DataType.Int8,
  DataType.Int16,
  DataType.Int32,
  DataType.Int64,
  DataType.UInt8,
  DataType.UInt16,
  DataType.UInt32,
  DataType.UInt64,
  DataType.Float,
  DataType.Double,
]);

const INT64_MAX = (1n << 63n) - 1n;

/** What the gateway knows of a tag's type. */
export interface TagTypeInfo {
  /** Its declared type: a Modbus or serial type, or an OPC UA built-in DataType name. */
  type?: string | undefined;
  /** True for an array tag (Modbus `count`, an OPC UA array node), so a birth without a value has a type. */
  array?: boolean | undefined;
  /** True when scale or offset apply: the value is then an engineering number (Double). */
  scaled?: boolean | undefined;
}

/** The Sparkplug datatype of a declared tag type alone (scalar), undefined when it is not one we know. */
export function declaredDataType(type: string): DataType | undefined {
  return Object.hasOwn(DECLARED, type) ? DECLARED[type] : undefined;
}

function inferScalar(value: unknown): DataType {
  if (typeof value === 'boolean') return DataType.Boolean;
  if (typeof value === 'string') return DataType.String;
  if (typeof value === 'number') return DataType.Double;
  if (typeof value === 'bigint') return value > INT64_MAX ? DataType.UInt64 : DataType.Int64;
  throw new TypeError(`no Sparkplug datatype for ${describeValue(value)}`);
}

/**
 * A tag's Sparkplug datatype: from its declared type (numeric types become Double when scaled),
 * else from its value. Undefined when neither tells (no declared type, and no value or an empty
 * array): the caller has to wait for a value or pick one.
 */
export function sparkplugTypeOf(tag: TagTypeInfo, value?: TagValue | null): DataType | undefined {
  const isArray = value === undefined || value === null ? (tag.array ?? false) : Array.isArray(value);
  let scalar = tag.type !== undefined ? declaredDataType(tag.type) : undefined;
  if (tag.type !== undefined && scalar === undefined) throw new TypeError(`no Sparkplug datatype for the tag type "${tag.type}"`);
  if (scalar !== undefined && tag.scaled && NUMERIC.has(scalar)) scalar = DataType.Double;
  if (scalar === undefined) {
    if (value === undefined || value === null) return undefined;
    const sample = Array.isArray(value) ? value[0] : value;
    if (sample === undefined) return undefined;
    scalar = inferScalar(sample);
    if (Array.isArray(value) && scalar === DataType.Int64 && value.some((item) => typeof item === 'bigint' && item > INT64_MAX))
      scalar = DataType.UInt64;
  }
  if (!isArray) return scalar;
  const arrayType = arrayTypeOf(scalar === DataType.UUID ? DataType.String : scalar);
  if (arrayType === undefined) throw new TypeError(`Sparkplug has no array type of ${dataTypeName(scalar)}`);
  return arrayType;
}

function integerOf(value: unknown, type: DataType, what: Where): number | bigint {
  if (typeof value === 'number' || typeof value === 'bigint') return value;
  throw new TypeError(`${label(what)}: ${dataTypeName(type)} takes a number, got ${describeValue(value)}`);
}

/** DateTime from what the gateway carries: ms since the epoch, or an ISO 8601 string (OPC UA). */
function dateTimeOf(value: unknown, what: Where): number | bigint {
  if (typeof value === 'number' || typeof value === 'bigint') return value;
  if (typeof value === 'string') {
    const ms = Date.parse(value);
    if (!Number.isNaN(ms)) return ms;
  }
  throw new TypeError(`${label(what)}: DateTime takes ms since the epoch or an ISO 8601 time, got ${describeValue(value)}`);
}

/** One gateway scalar as the codec's value for a scalar datatype. */
function scalarValueOf(type: DataType, value: unknown, what: Where): MetricValue {
  const converted = convertScalar(type, value, what);
  // The codec's own checks: kind and range, with its messages.
  scalarToWire(type, converted, what);
  return converted as MetricValue;
}

/** A gateway scalar converted for a scalar datatype where the two differ, unchecked otherwise (the codec checks). */
function convertScalar(type: DataType, value: unknown, what: Where): unknown {
  let converted: unknown = value;
  switch (type) {
    case DataType.Int8:
    case DataType.Int16:
    case DataType.Int32:
    case DataType.UInt8:
    case DataType.UInt16:
    case DataType.UInt32: {
      const integer = integerOf(value, type, what);
      converted = typeof integer === 'bigint' ? Number(integer) : integer;
      break;
    }
    case DataType.Int64:
    case DataType.UInt64: {
      const integer = integerOf(value, type, what);
      if (typeof integer === 'number' && !Number.isSafeInteger(integer))
        throw new RangeError(`${label(what)}: ${dataTypeName(type)} needs a whole number within ±2^53 or a bigint, got ${integer}`);
      converted = BigInt(integer);
      break;
    }
    case DataType.DateTime: {
      const ms = dateTimeOf(value, what);
      converted = typeof ms === 'number' && Number.isSafeInteger(ms) ? BigInt(ms) : ms;
      break;
    }
    case DataType.Float:
    case DataType.Double:
      // A bigint here is an int64 tag given a Double type; beyond 2^53 it rounds, as scaling does.
      converted = typeof value === 'bigint' ? Number(value) : value;
      break;
    case DataType.Bytes:
      if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value))
        throw new TypeError(`${label(what)}: Bytes takes base64 text, got ${describeValue(value)}`);
      converted = new Uint8Array(Buffer.from(value, 'base64'));
      break;
  }
  return converted;
}

/**
 * A gateway value as the codec's value for `datatype` (e.g. an int64 number as a bigint, an
 * OPC UA DateTime string as ms, base64 as bytes). Throws TypeError/RangeError when it does not
 * fit, e.g. 300 as Int8. `what` names the tag in the message.
 */
export function metricValueOf(datatype: DataType, value: TagValue, what: Where = 'value'): MetricValue {
  if (!isArrayType(datatype)) {
    if (Array.isArray(value)) throw new TypeError(`${label(what)}: ${dataTypeName(datatype)} takes one value, got ${describeValue(value)}`);
    return scalarValueOf(datatype, value, what);
  }
  if (!Array.isArray(value)) throw new TypeError(`${label(what)}: ${dataTypeName(datatype)} takes an array, got ${describeValue(value)}`);
  const element = elementTypeOf(datatype)!;
  return value.map((item, index) => scalarValueOf(element, item, `${label(what)}[${index}]`)) as MetricValue;
}

/**
 * A gateway value as the wire field and value of `datatype` (see scalarToWire): metricValueOf
 * and the codec's check in one, for data messages (DDATA), where each value is converted and
 * checked once instead of twice. Throws as metricValueOf does.
 */
export function wireValueOf(datatype: DataType, value: TagValue, what: Where): WireScalar {
  if (isArrayType(datatype) || Array.isArray(value)) return scalarToWire(datatype, metricValueOf(datatype, value, what), what);
  return scalarToWire(datatype, convertScalar(datatype, value, what), what);
}

/**
 * A tag's value as a metric's datatype and value: the datatype from the declared type (or the
 * value, see sparkplugTypeOf), null as is_null. Throws when neither gives a datatype, or when the
 * value does not fit it.
 */
export function tagMetric(
  value: TagValue | null,
  tag: TagTypeInfo,
  what = 'tag',
): { datatype: DataType; value: MetricValue } | { datatype: DataType; isNull: true } {
  const datatype = sparkplugTypeOf(tag, value);
  if (datatype === undefined) throw new TypeError(`${what}: no declared type and no value to tell its Sparkplug datatype`);
  if (value === null) return { datatype, isNull: true };
  return { datatype, value: metricValueOf(datatype, value, what) };
}
