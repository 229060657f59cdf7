// Registers <-> typed values. Pure functions, no I/O, so every byte order can be tested by table.
//
// Byte orders name where the bytes of a value land on the wire, A being the most significant byte:
//   ABCD  big-endian, the Modbus standard: registers in order, high byte first in each register
//   CDAB  word-swapped: least significant register first, high byte first in each register
//   BADC  byte-swapped: registers in order, low byte first in each register
//   DCBA  little-endian: least significant register first, low byte first in each register
// 64-bit values follow the same two rules over four registers (CDAB = GH EF CD AB, etc.).
// 16-bit values only feel the byte swap: BADC and DCBA read "AB" as 0xBA.. like Telegraf does.

import type { TagValue } from '../../src/pipeline/driver.js';
import type { ByteOrder, ModbusType } from './config.js';
import { registersPerElement } from './config.js';

/** What the codec needs to know about a register tag. */
export interface RegisterLayout {
  type: ModbusType;
  byteOrder: ByteOrder;
  /** Registers of a string. */
  length?: number | undefined;
  /** Array element count; absent for scalars. */
  count?: number | undefined;
  /** Bit 0..15 inside a register, for bool tags living in registers. */
  bit?: number | undefined;
  /** Character encoding of strings (default latin1). */
  encoding?: StringEncoding | undefined;
}

export type StringEncoding = 'latin1' | 'utf8' | 'ascii';

const wordsSwapped = (order: ByteOrder): boolean => order === 'CDAB' || order === 'DCBA';
const bytesSwapped = (order: ByteOrder): boolean => order === 'BADC' || order === 'DCBA';

/** Registers (or bits) the whole tag occupies, arrays included. */
export function layoutSpan(layout: RegisterLayout): number {
  if (layout.bit !== undefined) return 1;
  return registersPerElement(layout.type, layout.length) * (layout.count ?? 1);
}

/**
 * Wire registers of one numeric value -> its bytes, most significant first.
 * Strings do not go through here: their registers are never reordered, only their bytes.
 */
export function registersToBytes(registers: readonly number[], order: ByteOrder): Buffer {
  const words = wordsSwapped(order) ? [...registers].reverse() : registers;
  const bytes = Buffer.alloc(words.length * 2);
  words.forEach((word, i) => {
    const w = word & 0xffff;
    if (bytesSwapped(order)) bytes.writeUInt16LE(w, i * 2);
    else bytes.writeUInt16BE(w, i * 2);
  });
  return bytes;
}

/** Inverse of registersToBytes: big-endian value bytes -> wire registers. */
export function bytesToRegisters(bytes: Buffer, order: ByteOrder): number[] {
  const words: number[] = [];
  for (let i = 0; i < bytes.length; i += 2) {
    words.push(bytesSwapped(order) ? bytes.readUInt16LE(i) : bytes.readUInt16BE(i));
  }
  return wordsSwapped(order) ? words.reverse() : words;
}

/** Decodes one element (not an array) from exactly its registers. */
export function decodeScalar(
  registers: readonly number[],
  type: ModbusType,
  order: ByteOrder,
  encoding: StringEncoding = 'latin1',
): number | bigint | boolean | string {
  if (type === 'string') return decodeString(registers, order, encoding);
  if (type === 'bool') return (registers[0]! & 0xffff) !== 0;
  if (type === 'uint16' || type === 'int16') {
    // One register: no byte buffer per value (the most common tag of all).
    const word = registers[0]! & 0xffff;
    const value = bytesSwapped(order) ? ((word & 0xff) << 8) | (word >> 8) : word;
    return type === 'uint16' ? value : (value << 16) >> 16;
  }
  const bytes = registersToBytes(registers, order);
  switch (type) {
    case 'int32':
      return bytes.readInt32BE(0);
    case 'uint32':
      return bytes.readUInt32BE(0);
    case 'float32':
      return shortestFloat32(bytes.readFloatBE(0));
    case 'int64':
      return bytes.readBigInt64BE(0);
    case 'uint64':
      return bytes.readBigUInt64BE(0);
    case 'float64':
      return bytes.readDoubleBE(0);
  }
}

/**
 * A float32 read into a double prints as 20.169967651367188; the shortest decimal that maps back to
 * the very same float32 is 20.16997. Nothing the device sent is lost, only digits it never had.
 */
export function shortestFloat32(value: number): number {
  if (!Number.isFinite(value)) return value;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return Number(value.toPrecision(9));
}

/**
 * 2 characters per register, in register order; the byte swap of BADC/DCBA applies inside each register.
 * The text ends at the first NUL (C strings leave old bytes behind it); trailing space padding is dropped.
 */
export function decodeString(registers: readonly number[], order: ByteOrder, encoding: StringEncoding = 'latin1'): string {
  const bytes = Buffer.alloc(registers.length * 2);
  registers.forEach((word, i) => {
    if (bytesSwapped(order)) bytes.writeUInt16LE(word & 0xffff, i * 2);
    else bytes.writeUInt16BE(word & 0xffff, i * 2);
  });
  const end = bytes.indexOf(0);
  return bytes
    .subarray(0, end === -1 ? bytes.length : end)
    .toString(encoding)
    .replace(/ +$/u, '');
}

export function encodeString(text: string, lengthRegisters: number, order: ByteOrder, encoding: StringEncoding = 'latin1'): number[] {
  const limit = encoding === 'ascii' ? 0x7f : encoding === 'latin1' ? 0xff : Infinity;
  for (const char of text) {
    if (char.codePointAt(0)! > limit)
      throw new RangeError(`"${char}" cannot be written as ${encoding}; set the tag's encoding to utf8 if the device stores UTF-8`);
  }
  const encoded = Buffer.from(text, encoding);
  if (encoded.length > lengthRegisters * 2) {
    throw new RangeError(`string of ${encoded.length} bytes does not fit in ${lengthRegisters} registers (${lengthRegisters * 2} bytes)`);
  }
  const bytes = Buffer.alloc(lengthRegisters * 2); // NUL padded
  encoded.copy(bytes);
  const registers: number[] = [];
  for (let i = 0; i < bytes.length; i += 2) registers.push(bytesSwapped(order) ? bytes.readUInt16LE(i) : bytes.readUInt16BE(i));
  return registers;
}

/** Decodes a whole register tag (scalar, array or register bit) from exactly its span of registers. */
export function decodeRegisters(registers: readonly number[], layout: RegisterLayout): TagValue {
  if (layout.bit !== undefined) return bitOf(registers[0]!, layout.bit);
  const size = registersPerElement(layout.type, layout.length);
  if (layout.count === undefined) return decodeScalar(registers.slice(0, size), layout.type, layout.byteOrder, layout.encoding);
  const values: (number | bigint | boolean | string)[] = [];
  for (let i = 0; i < layout.count; i++) {
    values.push(decodeScalar(registers.slice(i * size, (i + 1) * size), layout.type, layout.byteOrder, layout.encoding));
  }
  return values;
}

/** Coil/discrete bits -> a bool, or an array of bools when count is set. */
export function decodeBits(bits: readonly boolean[], count?: number): boolean | boolean[] {
  if (count === undefined) return bits[0] === true;
  return Array.from({ length: count }, (_, i) => bits[i] === true);
}

export function bitOf(register: number, bit: number): boolean {
  return ((register >> bit) & 1) === 1;
}

export function withBit(register: number, bit: number, value: boolean): number {
  return (value ? register | (1 << bit) : register & ~(1 << bit)) & 0xffff;
}

const INT_RANGES: Partial<Record<ModbusType, [number, number]>> = {
  int16: [-0x8000, 0x7fff],
  uint16: [0, 0xffff],
  int32: [-0x8000_0000, 0x7fff_ffff],
  uint32: [0, 0xffff_ffff],
};
const BIGINT_RANGES: Partial<Record<ModbusType, [bigint, bigint]>> = {
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
};

/** Encodes one element to its registers. Throws RangeError/TypeError with a readable message. */
export function encodeScalar(
  value: unknown,
  type: ModbusType,
  order: ByteOrder,
  length?: number,
  encoding: StringEncoding = 'latin1',
): number[] {
  if (type === 'string') {
    if (typeof value !== 'string') throw new TypeError(`expected a string, got ${describe(value)}`);
    return encodeString(value, length ?? 1, order, encoding);
  }
  if (type === 'bool') return [toBool(value) ? 1 : 0];
  const intRange = INT_RANGES[type];
  if (intRange) {
    const n = toNumber(value);
    if (!Number.isInteger(n)) throw new RangeError(`${type} needs an integer, got ${n}`);
    if (n < intRange[0] || n > intRange[1]) throw new RangeError(`${n} is out of range for ${type} (${intRange[0]}..${intRange[1]})`);
    const bytes = Buffer.alloc(type === 'int16' || type === 'uint16' ? 2 : 4);
    if (type === 'int16') bytes.writeInt16BE(n);
    else if (type === 'uint16') bytes.writeUInt16BE(n);
    else if (type === 'int32') bytes.writeInt32BE(n);
    else bytes.writeUInt32BE(n);
    return bytesToRegisters(bytes, order);
  }
  const bigRange = BIGINT_RANGES[type];
  if (bigRange) {
    const n = toBigInt(value);
    if (n < bigRange[0] || n > bigRange[1]) throw new RangeError(`${n} is out of range for ${type}`);
    const bytes = Buffer.alloc(8);
    if (type === 'int64') bytes.writeBigInt64BE(n);
    else bytes.writeBigUInt64BE(n);
    return bytesToRegisters(bytes, order);
  }
  const n = toNumber(value);
  const bytes = Buffer.alloc(type === 'float32' ? 4 : 8);
  if (type === 'float32') bytes.writeFloatBE(n);
  else bytes.writeDoubleBE(n);
  return bytesToRegisters(bytes, order);
}

/** Encodes a whole register tag (scalar or array; not register bits, which need read-modify-write). */
export function encodeRegisters(value: TagValue, layout: RegisterLayout): number[] {
  if (layout.count === undefined) {
    if (Array.isArray(value)) throw new TypeError('expected a single value, got an array');
    return encodeScalar(value, layout.type, layout.byteOrder, layout.length, layout.encoding);
  }
  if (!Array.isArray(value) || value.length !== layout.count) {
    throw new TypeError(`expected an array of ${layout.count} elements, got ${describe(value)}`);
  }
  return value.flatMap((element) => encodeScalar(element, layout.type, layout.byteOrder, layout.length, layout.encoding));
}

/** A bool for a coil, or the array of bools for count coils. */
export function encodeBits(value: TagValue, count?: number): boolean[] {
  if (count === undefined) {
    if (Array.isArray(value)) throw new TypeError('expected a single bool, got an array');
    return [toBool(value)];
  }
  if (!Array.isArray(value) || value.length !== count) throw new TypeError(`expected an array of ${count} bools, got ${describe(value)}`);
  return value.map(toBool);
}

export function toBool(value: unknown): boolean {
  if (typeof value === 'boolean') return value;
  if (value === 0 || value === 1) return value === 1;
  if (value === 0n || value === 1n) return value === 1n;
  throw new TypeError(`expected a bool (true/false or 0/1), got ${describe(value)}`);
}

function toNumber(value: unknown): number {
  if (typeof value === 'number') return value;
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'boolean') return value ? 1 : 0;
  throw new TypeError(`expected a number, got ${describe(value)}`);
}

function toBigInt(value: unknown): bigint {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new RangeError(`${value} is not an exact integer; pass a bigint for 64-bit values beyond 2^53`);
    return BigInt(value);
  }
  if (typeof value === 'string' && /^-?\d+$/.test(value.trim())) return BigInt(value.trim());
  throw new TypeError(`expected an integer, got ${describe(value)}`);
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return `an array of ${value.length}`;
  if (typeof value === 'string') return `"${value}"`;
  return `${typeof value} ${String(value)}`;
}
