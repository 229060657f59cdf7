// OPC UA values ↔ the gateway's values. Reading: a DataValue becomes a TagReading (typed value,
// quality from the StatusCode's severity, source timestamp). Writing: a gateway value is coerced
// to the node's built-in DataType, with a readable error when it does not fit.
import { DataType, Variant, VariantArrayType, type DataValue, type StatusCode } from 'node-opcua-client';
import type { Quality, ScalarValue, StatusCodeName, TagReading, TagValue } from '../../src/pipeline/driver.js';

/** Quality from the two severity bits of a StatusCode (OPC 10000-4 §7.39): 00 good, 01 uncertain, 1x bad. */
export function qualityOf(status: StatusCode): Quality {
  const severity = (status.value >>> 30) & 0b11;
  return severity === 0 ? 'good' : severity === 1 ? 'uncertain' : 'bad';
}

/** "BadNodeIdUnknown" — the status name without the info bits node-opcua appends after "#". */
export function statusName(status: StatusCode): string {
  return status.name.split('#')[0] ?? status.name;
}

/** True for the names of Bad and Uncertain StatusCodes, the ones that are failure codes. */
export function isStatusCodeName(name: string): name is StatusCodeName {
  return name.startsWith('Bad') || name.startsWith('Uncertain');
}

/**
 * The status name as a failure code, for a StatusCode that is not Good. (node-opcua names every
 * code, unknown ones "Bad"; a Good one here would be a bug, reported as BadUnexpectedError.)
 */
export function failureName(status: StatusCode): StatusCodeName {
  const name = statusName(status);
  return isStatusCodeName(name) ? name : 'BadUnexpectedError';
}

/** Readable reason: the status name, then what it means. */
export function statusReason(status: StatusCode): string {
  const name = statusName(status);
  const description = status.description;
  return description && description !== name ? `${name}: ${description.replace(/\.$/, '')}` : name;
}

const UINT64_MASK = (1n << 64n) - 1n;

function int64FromWords(words: unknown, signed: boolean): bigint {
  if (typeof words === 'bigint') return words;
  if (typeof words === 'number') return BigInt(words);
  if (!Array.isArray(words) || words.length !== 2) throw new TypeError(`unexpected 64-bit value ${String(words)}`);
  const value = (BigInt((words[0] as number) >>> 0) << 32n) | BigInt((words[1] as number) >>> 0);
  return signed ? BigInt.asIntN(64, value) : value;
}

function wordsFromInt64(value: bigint): [number, number] {
  const unsigned = value & UINT64_MASK;
  return [Number(unsigned >> 32n), Number(unsigned & 0xffffffffn)];
}

/** One scalar of a Variant as a gateway value. Throws for types the gateway cannot carry. */
function scalarOf(dataType: DataType, item: unknown): ScalarValue {
  switch (dataType) {
    case DataType.Boolean:
      return Boolean(item);
    case DataType.SByte:
    case DataType.Byte:
    case DataType.Int16:
    case DataType.UInt16:
    case DataType.Int32:
    case DataType.UInt32:
    case DataType.Float:
    case DataType.Double:
      return Number(item);
    case DataType.Int64:
      return int64FromWords(item, true);
    case DataType.UInt64:
      return int64FromWords(item, false);
    case DataType.String:
    case DataType.XmlElement:
      // A null String is not an empty one in OPC UA, but MQTT consumers expect text.
      return item === null || item === undefined ? '' : String(item);
    case DataType.DateTime:
      return item instanceof Date && !Number.isNaN(item.getTime()) ? item.toISOString() : '';
    case DataType.ByteString:
      return Buffer.isBuffer(item) ? item.toString('base64') : '';
    case DataType.Guid:
    case DataType.NodeId:
    case DataType.ExpandedNodeId:
      return item === null || item === undefined ? '' : String(item);
    case DataType.StatusCode:
      return (item as StatusCode).name;
    case DataType.QualifiedName:
      return (item as { name?: string | null }).name ?? '';
    case DataType.LocalizedText:
      return (item as { text?: string | null }).text ?? '';
    default:
      throw new TypeError(`data type ${DataType[dataType] ?? dataType} is not supported`);
  }
}

/** A Variant as a gateway value: scalars, or arrays (matrices flattened, row by row). */
export function gatewayValueOf(variant: Variant): TagValue {
  const { dataType, arrayType } = variant;
  if (arrayType === VariantArrayType.Scalar) return scalarOf(dataType, variant.value);
  // Typed arrays (Float32Array, Int32Array …) and plain arrays alike.
  const items = variant.value === null || variant.value === undefined ? [] : Array.from(variant.value as ArrayLike<unknown>);
  return items.map((item) => scalarOf(dataType, item));
}

/** The source timestamp, else the server's; undefined for the null DateTime (1601) and none. */
export function timestampOf(dataValue: DataValue): number | undefined {
  for (const stamp of [dataValue.sourceTimestamp, dataValue.serverTimestamp]) {
    if (stamp instanceof Date) {
      const ms = stamp.getTime();
      if (ms > 0) return ms;
    }
  }
  return undefined;
}

/** A DataValue of one tag as the reading the core expects. */
export function readingOf(tag: string, dataValue: DataValue): TagReading {
  const status = dataValue.statusCode;
  const quality = qualityOf(status);
  const sourceTs = timestampOf(dataValue);
  const reading: TagReading = { tag, quality };
  if (sourceTs !== undefined) reading.sourceTs = sourceTs;
  if (quality !== 'good') {
    reading.reason = statusReason(status);
    reading.code = failureName(status);
  }
  // A bad value carries no value; an uncertain one does (e.g. UncertainLastUsableValue).
  if (quality === 'bad') return reading;
  const variant = dataValue.value;
  if (!variant || variant.dataType === DataType.Null) {
    return {
      tag,
      quality: 'bad',
      reason: `the server sent no value (${statusName(status)})`,
      code: 'no-value',
      ...(sourceTs === undefined ? {} : { sourceTs }),
    };
  }
  try {
    reading.value = gatewayValueOf(variant);
  } catch (error) {
    return {
      tag,
      quality: 'bad',
      reason: (error as Error).message,
      code: 'unsupported-type',
      ...(sourceTs === undefined ? {} : { sourceTs }),
    };
  }
  return reading;
}

// ---------------------------------------------------------------- writing

const INTEGER_RANGES: Partial<Record<DataType, [bigint, bigint]>> = {
  [DataType.SByte]: [-128n, 127n],
  [DataType.Byte]: [0n, 255n],
  [DataType.Int16]: [-32768n, 32767n],
  [DataType.UInt16]: [0n, 65535n],
  [DataType.Int32]: [-2147483648n, 2147483647n],
  [DataType.UInt32]: [0n, 4294967295n],
  [DataType.Int64]: [-(1n << 63n), (1n << 63n) - 1n],
  [DataType.UInt64]: [0n, UINT64_MASK],
};

export function dataTypeName(dataType: DataType): string {
  return DataType[dataType] ?? `DataType ${dataType}`;
}

function describe(value: ScalarValue): string {
  return typeof value === 'string' ? JSON.stringify(value) : typeof value === 'bigint' ? `${value}n` : String(value);
}

function toInteger(value: ScalarValue, dataType: DataType): bigint {
  let integer: bigint;
  if (typeof value === 'bigint') integer = value;
  else if (typeof value === 'boolean') integer = value ? 1n : 0n;
  else if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new TypeError(`${dataTypeName(dataType)} takes whole numbers, got ${value}`);
    integer = BigInt(value);
  } else {
    const text = value.trim();
    if (!/^[-+]?\d+$/.test(text)) throw new TypeError(`${dataTypeName(dataType)} takes whole numbers, got ${describe(value)}`);
    integer = BigInt(text);
  }
  const [low, high] = INTEGER_RANGES[dataType]!;
  if (integer < low || integer > high)
    throw new RangeError(`${describe(value)} is out of range for ${dataTypeName(dataType)} (${low}..${high})`);
  return integer;
}

/** One gateway scalar as the Variant value node-opcua expects for `dataType`. */
function coerceScalar(value: ScalarValue, dataType: DataType): unknown {
  switch (dataType) {
    case DataType.Boolean:
      if (typeof value === 'boolean') return value;
      if (value === 0 || value === 1 || value === 0n || value === 1n) return Boolean(value);
      if (value === 'true' || value === 'false') return value === 'true';
      throw new TypeError(`Boolean takes true/false (or 1/0), got ${describe(value)}`);
    case DataType.SByte:
    case DataType.Byte:
    case DataType.Int16:
    case DataType.UInt16:
    case DataType.Int32:
    case DataType.UInt32:
      return Number(toInteger(value, dataType));
    case DataType.Int64:
    case DataType.UInt64:
      return wordsFromInt64(toInteger(value, dataType));
    case DataType.Float:
    case DataType.Double: {
      const number = typeof value === 'string' && value.trim() !== '' ? Number(value) : typeof value === 'bigint' ? Number(value) : value;
      if (typeof number !== 'number' || Number.isNaN(number))
        throw new TypeError(`${dataTypeName(dataType)} takes numbers, got ${describe(value)}`);
      if (dataType === DataType.Float && Number.isFinite(number) && Math.abs(number) > 3.4028234663852886e38)
        throw new RangeError(`${number} is out of range for Float`);
      return number;
    }
    case DataType.String:
      return typeof value === 'string' ? value : String(value);
    case DataType.DateTime: {
      const date = typeof value === 'number' ? new Date(value) : typeof value === 'string' ? new Date(value) : undefined;
      if (!date || Number.isNaN(date.getTime()))
        throw new TypeError(`DateTime takes an ISO 8601 string or milliseconds since the epoch, got ${describe(value)}`);
      return date;
    }
    case DataType.ByteString:
      if (typeof value !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(value))
        throw new TypeError(`ByteString takes base64 text, got ${describe(value)}`);
      return Buffer.from(value, 'base64');
    default:
      throw new TypeError(`writing ${dataTypeName(dataType)} values is not supported`);
  }
}

/** A gateway value as a Variant of the node's built-in type; arrays for array nodes. Throws TypeError/RangeError. */
export function variantFor(value: TagValue, dataType: DataType, valueRank: number): Variant {
  if (Array.isArray(value)) {
    if (valueRank === -1) throw new TypeError(`the node holds a single ${dataTypeName(dataType)}, not an array`);
    return new Variant({ dataType, arrayType: VariantArrayType.Array, value: value.map((item) => coerceScalar(item, dataType)) });
  }
  if (valueRank >= 1) throw new TypeError(`the node holds an array of ${dataTypeName(dataType)}; write a JSON array`);
  return new Variant({ dataType, arrayType: VariantArrayType.Scalar, value: coerceScalar(value, dataType) });
}
