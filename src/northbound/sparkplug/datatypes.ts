// Sparkplug B datatypes and how a value of each is carried on the wire. Sparkplug 3.0 §6.4.16
// (enum values) and §6.4.17 (details); array encodings as corrected on the specification's
// develop branch (eclipse-sparkplug/sparkplug@c9c090b, Sparkplug_6_Payloads.adoc, "Array Types";
// the 3.0.0 text has big-endian or truncated examples, sparkplug#435).
//
// The protobuf value fields are unsigned (uint32 int_value, uint64 long_value), so:
//   - Int8/Int16/Int32 are sign-extended to 32 bits, as Eclipse Tahu's Java encoder does
//     (Int8 -1 → int_value 4294967295); decoding masks to the width and converts the sign, and also
//     accepts the masked form (Int8 -1 as 255) that some encoders send.
//   - Int64 is two's complement in long_value.
//   - UInt32 goes in int_value, as the specification's type table says (uint32); Tahu and Ignition
//     historically used long_value (tahu#131), so decoding accepts either field for every integer
//     type up to 32 bits.
// Everything here is pure: no protobufjs (payload.ts converts 64-bit values to its Long).

export const DataType = {
  Unknown: 0,
  Int8: 1,
  Int16: 2,
  Int32: 3,
  Int64: 4,
  UInt8: 5,
  UInt16: 6,
  UInt32: 7,
  UInt64: 8,
  Float: 9,
  Double: 10,
  Boolean: 11,
  String: 12,
  DateTime: 13,
  Text: 14,
  UUID: 15,
  DataSet: 16,
  Bytes: 17,
  File: 18,
  Template: 19,
  PropertySet: 20,
  PropertySetList: 21,
  Int8Array: 22,
  Int16Array: 23,
  Int32Array: 24,
  Int64Array: 25,
  UInt8Array: 26,
  UInt16Array: 27,
  UInt32Array: 28,
  UInt64Array: 29,
  FloatArray: 30,
  DoubleArray: 31,
  BooleanArray: 32,
  StringArray: 33,
  DateTimeArray: 34,
} as const;
export type DataType = (typeof DataType)[keyof typeof DataType];

const NAMES: Record<number, string> = Object.fromEntries(Object.entries(DataType).map(([name, id]) => [id, name]));

/** "Int8", or "datatype 99" for a number that is not a Sparkplug datatype. */
export function dataTypeName(type: number): string {
  return NAMES[type] ?? `datatype ${type}`;
}

export function isDataType(type: number): type is DataType {
  return NAMES[type] !== undefined;
}

/** Unknown through Text: the types a DataSet column or a property value may have (§6.4.16 "Basic Types"). */
export function isBasicType(type: number): boolean {
  return Number.isInteger(type) && type >= DataType.Int8 && type <= DataType.Text;
}

/** One cell of a DataSet; null is a cell without a value. */
export type DataSetCell = number | bigint | boolean | string | null;

/** A Sparkplug DataSet: named, typed columns (basic types only) and rows of cells. */
export interface SparkplugDataSet {
  columns: string[];
  types: DataType[];
  rows: DataSetCell[][];
}

/**
 * A metric's value in this API, by datatype:
 *   Int8…Int32, UInt8…UInt32, Float, Double: number
 *   Int64, UInt64, DateTime (ms since the epoch, UTC): bigint (a safe-integer number is accepted when encoding)
 *   Boolean: boolean; String, Text, UUID: string; Bytes, File: Uint8Array
 *   Int8Array…UInt32Array, FloatArray, DoubleArray: number[]; Int64Array, UInt64Array, DateTimeArray: bigint[]
 *   BooleanArray: boolean[]; StringArray: string[]; DataSet: SparkplugDataSet
 */
export type MetricValue =
  | number
  | bigint
  | boolean
  | string
  | Uint8Array
  | readonly number[]
  | readonly bigint[]
  | readonly boolean[]
  | readonly string[]
  | SparkplugDataSet;

/** Where a scalar goes: one member of the `value` oneof, with the value it carries (64-bit as bigint). */
export type WireScalar =
  | { field: 'intValue'; value: number }
  | { field: 'longValue'; value: bigint }
  | { field: 'floatValue'; value: number }
  | { field: 'doubleValue'; value: number }
  | { field: 'booleanValue'; value: boolean }
  | { field: 'stringValue'; value: string }
  | { field: 'bytesValue'; value: Uint8Array };

const UINT64_MAX = (1n << 64n) - 1n;
const INT64_MIN = -(1n << 63n);
const INT64_MAX = (1n << 63n) - 1n;
const FLOAT_MAX = 3.4028234663852886e38;

/** Inclusive ranges of the integer types up to 32 bits, with their width. */
const SMALL_INTEGERS: Partial<Record<DataType, { min: number; max: number; bits: number; signed: boolean }>> = {
  [DataType.Int8]: { min: -128, max: 127, bits: 8, signed: true },
  [DataType.Int16]: { min: -32768, max: 32767, bits: 16, signed: true },
  [DataType.Int32]: { min: -2147483648, max: 2147483647, bits: 32, signed: true },
  [DataType.UInt8]: { min: 0, max: 255, bits: 8, signed: false },
  [DataType.UInt16]: { min: 0, max: 65535, bits: 16, signed: false },
  [DataType.UInt32]: { min: 0, max: 4294967295, bits: 32, signed: false },
};

const LARGE_INTEGERS: Partial<Record<DataType, { min: bigint; max: bigint }>> = {
  [DataType.Int64]: { min: INT64_MIN, max: INT64_MAX },
  [DataType.UInt64]: { min: 0n, max: UINT64_MAX },
  [DataType.DateTime]: { min: 0n, max: UINT64_MAX },
};

/** A value as text for an error message: strings quoted, bigints with their n. */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  if (typeof value === 'bigint') return `${value}n`;
  if (value instanceof Uint8Array) return `${value.length} bytes`;
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (value === null) return 'null';
  return typeof value === 'object' ? 'an object' : String(value);
}

/** What a value is, for error messages; a function when it costs a string per value to say (a metric in a hot path). */
export type Where = string | (() => string);

export function label(where: Where): string {
  return typeof where === 'function' ? where() : where;
}

function fail(what: Where, message: string, error: 'type' | 'range' = 'type'): never {
  const text = `${label(what)}: ${message}`;
  throw error === 'range' ? new RangeError(text) : new TypeError(text);
}

function smallInteger(type: DataType, value: unknown, what: Where): number {
  const range = SMALL_INTEGERS[type]!;
  const number = typeof value === 'bigint' ? Number(value) : value;
  if (typeof number !== 'number' || !Number.isInteger(number))
    fail(what, `${dataTypeName(type)} takes a whole number, got ${describeValue(value)}`);
  if (number < range.min || number > range.max)
    fail(what, `${describeValue(value)} does not fit ${dataTypeName(type)} (${range.min}..${range.max})`, 'range');
  return number;
}

function largeInteger(type: DataType, value: unknown, what: Where): bigint {
  const range = LARGE_INTEGERS[type]!;
  let integer: bigint;
  if (typeof value === 'bigint') integer = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) integer = BigInt(value);
  else if (typeof value === 'number' && Number.isInteger(value))
    // Above 2^53 a number is already rounded: the exact value is lost before it gets here.
    fail(what, `${dataTypeName(type)} takes a bigint beyond ±2^53, got the number ${value}`, 'range');
  else fail(what, `${dataTypeName(type)} takes a whole number or a bigint, got ${describeValue(value)}`);
  if (integer < range.min || integer > range.max)
    fail(what, `${describeValue(value)} does not fit ${dataTypeName(type)} (${range.min}..${range.max})`, 'range');
  return integer;
}

function floatingPoint(type: DataType, value: unknown, what: Where): number {
  if (typeof value !== 'number') fail(what, `${dataTypeName(type)} takes a number, got ${describeValue(value)}`);
  // NaN and ±Infinity exist in float32; a finite number beyond its range would become Infinity.
  if (type === DataType.Float && Number.isFinite(value) && Math.abs(value) > FLOAT_MAX)
    fail(what, `${value} does not fit Float (±3.4028234663852886e38)`, 'range');
  return value;
}

/**
 * A scalar of a basic type (Int8…Text, UUID, Bytes, File) as the wire field and value. Throws a
 * TypeError for a value of the wrong kind, a RangeError for one that does not fit. `what` names
 * the metric or property in the message.
 */
export function scalarToWire(type: DataType, value: unknown, what: Where): WireScalar {
  switch (type) {
    case DataType.Int8:
    case DataType.Int16:
    case DataType.Int32:
      // Sign-extended to 32 bits and read as unsigned: Tahu Java's setIntValue((int) v).
      return { field: 'intValue', value: smallInteger(type, value, what) >>> 0 };
    case DataType.UInt8:
    case DataType.UInt16:
    case DataType.UInt32:
      return { field: 'intValue', value: smallInteger(type, value, what) };
    case DataType.Int64:
      return { field: 'longValue', value: BigInt.asUintN(64, largeInteger(type, value, what)) };
    case DataType.UInt64:
    case DataType.DateTime:
      return { field: 'longValue', value: largeInteger(type, value, what) };
    case DataType.Float:
      return { field: 'floatValue', value: floatingPoint(type, value, what) };
    case DataType.Double:
      return { field: 'doubleValue', value: floatingPoint(type, value, what) };
    case DataType.Boolean:
      if (typeof value !== 'boolean') fail(what, `Boolean takes true or false, got ${describeValue(value)}`);
      return { field: 'booleanValue', value };
    case DataType.String:
    case DataType.Text:
    case DataType.UUID:
      if (typeof value !== 'string') fail(what, `${dataTypeName(type)} takes a string, got ${describeValue(value)}`);
      return { field: 'stringValue', value };
    case DataType.Bytes:
    case DataType.File:
      if (!(value instanceof Uint8Array)) fail(what, `${dataTypeName(type)} takes a Uint8Array, got ${describeValue(value)}`);
      return { field: 'bytesValue', value };
    default:
      if (isArrayType(type)) return { field: 'bytesValue', value: packArray(type, value, what) };
      return fail(what, `${dataTypeName(type)} is not a scalar type this codec encodes`);
  }
}

/** The value of `field` as a value of `type`: the reverse of scalarToWire. */
export function scalarFromWire(
  type: DataType,
  field: WireScalar['field'],
  value: number | bigint | boolean | string | Uint8Array,
  what: Where,
): MetricValue {
  const wrongField = (): never => fail(what, `a ${dataTypeName(type)} value cannot arrive in ${field}`);
  switch (type) {
    case DataType.Int8:
    case DataType.Int16:
    case DataType.Int32:
    case DataType.UInt8:
    case DataType.UInt16:
    case DataType.UInt32: {
      let raw: number;
      if (field === 'intValue') raw = value as number;
      else if (field === 'longValue' && (value as bigint) <= 0xffffffffn) raw = Number(value);
      else if (field === 'longValue') return fail(what, `${describeValue(value)} does not fit ${dataTypeName(type)}`, 'range');
      else return wrongField();
      return smallIntegerFromWire(type, raw, what);
    }
    case DataType.Int64:
      if (field !== 'longValue') return wrongField();
      return BigInt.asIntN(64, value as bigint);
    case DataType.UInt64:
    case DataType.DateTime:
      if (field !== 'longValue') return wrongField();
      return value as bigint;
    case DataType.Float:
      return field === 'floatValue' ? (value as number) : wrongField();
    case DataType.Double:
      return field === 'doubleValue' ? (value as number) : wrongField();
    case DataType.Boolean:
      return field === 'booleanValue' ? (value as boolean) : wrongField();
    case DataType.String:
    case DataType.Text:
    case DataType.UUID:
      return field === 'stringValue' ? (value as string) : wrongField();
    case DataType.Bytes:
    case DataType.File:
      return field === 'bytesValue' ? (value as Uint8Array) : wrongField();
    default:
      if (isArrayType(type)) return field === 'bytesValue' ? unpackArray(type, value as Uint8Array, what) : wrongField();
      return fail(what, `${dataTypeName(type)} is not a scalar type this codec decodes`);
  }
}

/** int_value (0..2^32-1) as a value of an integer type up to 32 bits. */
function smallIntegerFromWire(type: DataType, raw: number, what: Where): number {
  const { bits, signed, max } = SMALL_INTEGERS[type]!;
  if (!signed) {
    if (raw > max) fail(what, `${raw} does not fit ${dataTypeName(type)}`, 'range');
    return raw;
  }
  // Sign-extended (Tahu Java) or masked to the width (e.g. Int8 -1 as 255): both mean the same.
  const low = bits === 32 ? raw : raw & ((1 << bits) - 1);
  const result = bits === 32 ? raw | 0 : low >= 1 << (bits - 1) ? low - (1 << bits) : low;
  if (raw !== low && raw !== result >>> 0) fail(what, `int_value ${raw} is not a ${dataTypeName(type)}`, 'range');
  return result;
}

// ---------------------------------------------------------------- arrays (types 22–34)

export function isArrayType(type: number): boolean {
  return type >= DataType.Int8Array && type <= DataType.DateTimeArray;
}

/** Bytes per element and the DataView accessors of the fixed-width array types. */
const FIXED_ARRAYS: Partial<Record<DataType, { width: number; element: DataType }>> = {
  [DataType.Int8Array]: { width: 1, element: DataType.Int8 },
  [DataType.Int16Array]: { width: 2, element: DataType.Int16 },
  [DataType.Int32Array]: { width: 4, element: DataType.Int32 },
  [DataType.Int64Array]: { width: 8, element: DataType.Int64 },
  [DataType.UInt8Array]: { width: 1, element: DataType.UInt8 },
  [DataType.UInt16Array]: { width: 2, element: DataType.UInt16 },
  [DataType.UInt32Array]: { width: 4, element: DataType.UInt32 },
  [DataType.UInt64Array]: { width: 8, element: DataType.UInt64 },
  [DataType.FloatArray]: { width: 4, element: DataType.Float },
  [DataType.DoubleArray]: { width: 8, element: DataType.Double },
  [DataType.DateTimeArray]: { width: 8, element: DataType.DateTime },
};

/** The scalar type of an array type's elements (Int8Array → Int8), undefined for other types. */
export function elementTypeOf(type: DataType): DataType | undefined {
  if (type === DataType.BooleanArray) return DataType.Boolean;
  if (type === DataType.StringArray) return DataType.String;
  return FIXED_ARRAYS[type]?.element;
}

/** The array type whose elements are `type` (Int8 → Int8Array), undefined when there is none. */
export function arrayTypeOf(type: DataType): DataType | undefined {
  if (type === DataType.Boolean) return DataType.BooleanArray;
  if (type === DataType.String) return DataType.StringArray;
  for (const [arrayType, info] of Object.entries(FIXED_ARRAYS)) if (info.element === type) return Number(arrayType) as DataType;
  return undefined;
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/**
 * An array value packed into bytes_value: fixed-width elements little-endian; BooleanArray a 4-byte
 * little-endian count, then the bits MSB-first, the last byte padded with 0; StringArray each
 * string's UTF-8 followed by a NUL (so no string may contain one). The spec has no null elements.
 */
export function packArray(type: DataType, value: unknown, what: Where): Uint8Array {
  if (!Array.isArray(value)) fail(what, `${dataTypeName(type)} takes an array, got ${describeValue(value)}`);
  const items: readonly unknown[] = value;
  if (type === DataType.BooleanArray) {
    const bytes = new Uint8Array(4 + Math.ceil(items.length / 8));
    new DataView(bytes.buffer).setUint32(0, items.length, true);
    items.forEach((item, index) => {
      if (typeof item !== 'boolean') fail(() => `${label(what)}[${index}]`, `BooleanArray takes true or false, got ${describeValue(item)}`);
      if (item) bytes[4 + (index >> 3)]! |= 0x80 >> (index & 7);
    });
    return bytes;
  }
  if (type === DataType.StringArray) {
    const parts = items.map((item, index) => {
      if (typeof item !== 'string') fail(() => `${label(what)}[${index}]`, `StringArray takes strings, got ${describeValue(item)}`);
      if (item.includes('\0')) fail(() => `${label(what)}[${index}]`, 'a StringArray element cannot contain NUL (it ends each element)');
      return utf8.encode(item);
    });
    const bytes = new Uint8Array(parts.reduce((sum, part) => sum + part.length + 1, 0));
    let offset = 0;
    for (const part of parts) {
      bytes.set(part, offset);
      offset += part.length + 1; // the NUL is already 0
    }
    return bytes;
  }
  const info = FIXED_ARRAYS[type];
  if (!info) return fail(what, `${dataTypeName(type)} is not an array type`);
  const bytes = new Uint8Array(items.length * info.width);
  const view = new DataView(bytes.buffer);
  items.forEach((item, index) => {
    const where = (): string => `${label(what)}[${index}]`;
    const offset = index * info.width;
    switch (type) {
      case DataType.Int8Array:
        view.setInt8(offset, smallInteger(info.element, item, where));
        break;
      case DataType.UInt8Array:
        view.setUint8(offset, smallInteger(info.element, item, where));
        break;
      case DataType.Int16Array:
        view.setInt16(offset, smallInteger(info.element, item, where), true);
        break;
      case DataType.UInt16Array:
        view.setUint16(offset, smallInteger(info.element, item, where), true);
        break;
      case DataType.Int32Array:
        view.setInt32(offset, smallInteger(info.element, item, where), true);
        break;
      case DataType.UInt32Array:
        view.setUint32(offset, smallInteger(info.element, item, where), true);
        break;
      case DataType.Int64Array:
        view.setBigInt64(offset, largeInteger(info.element, item, where), true);
        break;
      case DataType.UInt64Array:
      case DataType.DateTimeArray:
        view.setBigUint64(offset, largeInteger(info.element, item, where), true);
        break;
      case DataType.FloatArray:
        view.setFloat32(offset, floatingPoint(info.element, item, where), true);
        break;
      case DataType.DoubleArray:
        view.setFloat64(offset, floatingPoint(info.element, item, where), true);
        break;
    }
  });
  return bytes;
}

/** bytes_value as the elements of an array type: the reverse of packArray. */
export function unpackArray(type: DataType, bytes: Uint8Array, what: Where): number[] | bigint[] | boolean[] | string[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (type === DataType.BooleanArray) {
    if (bytes.length === 0) return [];
    if (bytes.length < 4) fail(what, `a BooleanArray needs its 4-byte count, got ${bytes.length} bytes`);
    const count = view.getUint32(0, true);
    if (bytes.length < 4 + Math.ceil(count / 8))
      fail(what, `a BooleanArray of ${count} needs ${4 + Math.ceil(count / 8)} bytes, got ${bytes.length}`);
    return Array.from({ length: count }, (_, index) => (bytes[4 + (index >> 3)]! & (0x80 >> (index & 7))) !== 0);
  }
  if (type === DataType.StringArray) {
    const strings: string[] = [];
    let start = 0;
    for (let index = 0; index < bytes.length; index++) {
      if (bytes[index] !== 0) continue;
      strings.push(decodeUtf8(bytes.subarray(start, index), what));
      start = index + 1;
    }
    // Lenient: a last string without its NUL is still a string.
    if (start < bytes.length) strings.push(decodeUtf8(bytes.subarray(start), what));
    return strings;
  }
  const info = FIXED_ARRAYS[type];
  if (!info) return fail(what, `${dataTypeName(type)} is not an array type`);
  if (bytes.length % info.width !== 0)
    fail(what, `${bytes.length} bytes are not a whole number of ${dataTypeName(type)} elements (${info.width} bytes each)`);
  const count = bytes.length / info.width;
  const at = (index: number): number => index * info.width;
  switch (type) {
    case DataType.Int8Array:
      return Array.from({ length: count }, (_, index) => view.getInt8(at(index)));
    case DataType.UInt8Array:
      return Array.from(bytes);
    case DataType.Int16Array:
      return Array.from({ length: count }, (_, index) => view.getInt16(at(index), true));
    case DataType.UInt16Array:
      return Array.from({ length: count }, (_, index) => view.getUint16(at(index), true));
    case DataType.Int32Array:
      return Array.from({ length: count }, (_, index) => view.getInt32(at(index), true));
    case DataType.UInt32Array:
      return Array.from({ length: count }, (_, index) => view.getUint32(at(index), true));
    case DataType.Int64Array:
      return Array.from({ length: count }, (_, index) => view.getBigInt64(at(index), true));
    case DataType.FloatArray:
      return Array.from({ length: count }, (_, index) => view.getFloat32(at(index), true));
    case DataType.DoubleArray:
      return Array.from({ length: count }, (_, index) => view.getFloat64(at(index), true));
    default: // UInt64Array, DateTimeArray
      return Array.from({ length: count }, (_, index) => view.getBigUint64(at(index), true));
  }
}

function decodeUtf8(bytes: Uint8Array, what: Where): string {
  try {
    return utf8Strict.decode(bytes);
  } catch {
    return fail(what, 'a StringArray element is not valid UTF-8');
  }
}
