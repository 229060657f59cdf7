// The Sparkplug B payload codec (src/northbound/sparkplug/payload.ts) against an independent
// decoder and encoder: Google's protoc (C++, Debian's protobuf-compiler) with the schema printed in
// the specification (test/helpers/sparkplug_b.proto). Our bytes go through `protoc --decode` and
// its text is checked field by field; protoc's bytes (`--encode` of a text payload) go through our
// decoder; and protoc's re-encoding of our bytes must be byte-for-byte ours (proto2 presence,
// unpacked repeated fields, field order). Plus every datatype's round trip with its edge values,
// the specification's corrected array examples as golden bytes (develop@c9c090b §6.4.17), and the
// mapping of the gateway's tag types.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { packArray } from '../src/northbound/sparkplug/datatypes.js';
import {
  DataType,
  dataMetric,
  dataProperties,
  decodePayload,
  encodeDataPayload,
  encodePayload,
  engUnitProperty,
  QualityCode,
  qualityProperty,
  type MetricValue,
  type PropertySet,
  type SparkplugMetric,
  type SparkplugPayload,
} from '../src/northbound/sparkplug/payload.js';
import { metricValueOf, sparkplugTypeOf, tagMetric, wireValueOf } from '../src/northbound/sparkplug/tags.js';
import type { TagValue } from '../src/pipeline/driver.js';

const PROTO_DIR = fileURLToPath(new URL('../../test/helpers/', import.meta.url));
const MESSAGE = 'org.eclipse.tahu.protobuf.Payload';

function protoc(mode: 'decode' | 'encode', input: Uint8Array | string): Buffer {
  const result = spawnSync('protoc', [`--${mode}=${MESSAGE}`, '-I', '.', 'sparkplug_b.proto'], { cwd: PROTO_DIR, input });
  if (result.error) throw result.error;
  assert.equal(result.status, 0, `protoc --${mode} failed: ${result.stderr.toString()}`);
  return result.stdout;
}

/** protoc's text of our bytes, as trimmed lines. */
function protocLines(bytes: Uint8Array): string[] {
  return protoc('decode', bytes)
    .toString()
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '');
}

/** protoc's bytes of a text payload. */
function protocEncode(text: string): Uint8Array {
  return new Uint8Array(protoc('encode', text));
}

/** The bytes of a protoc text-format string literal (C escapes: \NNN octal, \n, \", …). */
function unescapeBytes(literal: string): Uint8Array {
  const bytes: number[] = [];
  const simple: Record<string, number> = { n: 10, r: 13, t: 9, '"': 34, "'": 39, '\\': 92 };
  for (let index = 0; index < literal.length; index++) {
    const char = literal[index]!;
    if (char !== '\\') {
      bytes.push(...Buffer.from(char, 'utf8'));
      continue;
    }
    const next = literal[index + 1]!;
    if (/[0-7]/.test(next)) {
      const octal = /^[0-7]{1,3}/.exec(literal.slice(index + 1))![0];
      bytes.push(Number.parseInt(octal, 8));
      index += octal.length;
    } else {
      bytes.push(simple[next]!);
      index += 1;
    }
  }
  return new Uint8Array(bytes);
}

/** The bytes_value protoc sees in the first metric. */
function protocBytesValue(bytes: Uint8Array): Uint8Array {
  const line = protocLines(bytes).find((text) => text.startsWith('bytes_value: '));
  assert.ok(line, 'protoc shows a bytes_value');
  return unescapeBytes(line.slice('bytes_value: "'.length, -1));
}

function oneMetric(metric: SparkplugMetric): Uint8Array {
  return encodePayload({ timestamp: 1_700_000_000_000, seq: 1, metrics: [metric] });
}

function decodedValue(bytes: Uint8Array): MetricValue | undefined {
  return decodePayload(bytes).metrics?.[0]?.value;
}

/** protoc re-encodes our bytes identically: same fields, same order, same encodings. */
function assertCanonical(bytes: Uint8Array): void {
  const text = protoc('decode', bytes).toString();
  assert.equal(hex(protocEncode(text)), hex(bytes), `protoc re-encodes differently:\n${text}`);
}

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

type Case = { type: DataType; value: MetricValue; protoc: string; decoded?: MetricValue };

// Each value, the line protoc prints for it (the unsigned wire form), and what we decode when that differs.
const SCALARS: Case[] = [
  { type: DataType.Int8, value: -128, protoc: 'int_value: 4294967168' },
  { type: DataType.Int8, value: -1, protoc: 'int_value: 4294967295' },
  { type: DataType.Int8, value: 127, protoc: 'int_value: 127' },
  { type: DataType.Int16, value: -32768, protoc: 'int_value: 4294934528' },
  { type: DataType.Int16, value: 32767, protoc: 'int_value: 32767' },
  { type: DataType.Int32, value: -2147483648, protoc: 'int_value: 2147483648' },
  { type: DataType.Int32, value: 2147483647, protoc: 'int_value: 2147483647' },
  { type: DataType.Int32, value: 0, protoc: 'int_value: 0' },
  { type: DataType.UInt8, value: 255, protoc: 'int_value: 255' },
  { type: DataType.UInt16, value: 65535, protoc: 'int_value: 65535' },
  // UInt32 in int_value, as the specification's type table has it (uint32).
  { type: DataType.UInt32, value: 4294967295, protoc: 'int_value: 4294967295' },
  { type: DataType.Int64, value: -(2n ** 63n), protoc: 'long_value: 9223372036854775808' },
  { type: DataType.Int64, value: 2n ** 63n - 1n, protoc: 'long_value: 9223372036854775807' },
  { type: DataType.Int64, value: -1n, protoc: 'long_value: 18446744073709551615' },
  { type: DataType.Int64, value: 0n, protoc: 'long_value: 0' },
  { type: DataType.Int64, value: 42, protoc: 'long_value: 42', decoded: 42n },
  { type: DataType.UInt64, value: 2n ** 64n - 1n, protoc: 'long_value: 18446744073709551615' },
  { type: DataType.UInt64, value: 2n ** 53n + 1n, protoc: 'long_value: 9007199254740993' },
  { type: DataType.Float, value: 1.5, protoc: 'float_value: 1.5' },
  { type: DataType.Float, value: 0.1, protoc: 'float_value: 0.1', decoded: Math.fround(0.1) },
  { type: DataType.Float, value: 3.4028234663852886e38, protoc: 'float_value: 3.40282347e+38' },
  { type: DataType.Float, value: Number.NaN, protoc: 'float_value: nan' },
  { type: DataType.Float, value: Number.POSITIVE_INFINITY, protoc: 'float_value: inf' },
  { type: DataType.Double, value: 0.1, protoc: 'double_value: 0.1' },
  { type: DataType.Double, value: Number.MAX_VALUE, protoc: 'double_value: 1.7976931348623157e+308' },
  { type: DataType.Double, value: Number.NaN, protoc: 'double_value: nan' },
  { type: DataType.Double, value: Number.NEGATIVE_INFINITY, protoc: 'double_value: -inf' },
  { type: DataType.Boolean, value: false, protoc: 'boolean_value: false' },
  { type: DataType.Boolean, value: true, protoc: 'boolean_value: true' },
  { type: DataType.String, value: '', protoc: 'string_value: ""' },
  {
    type: DataType.String,
    value: 'Zürich 温度 🌡',
    protoc: String.raw`string_value: "Z\303\274rich \346\270\251\345\272\246 \360\237\214\241"`,
  },
  { type: DataType.Text, value: 'line 1\nline 2', protoc: String.raw`string_value: "line 1\nline 2"` },
  { type: DataType.UUID, value: '123e4567-e89b-12d3-a456-426614174000', protoc: 'string_value: "123e4567-e89b-12d3-a456-426614174000"' },
  { type: DataType.DateTime, value: 1_256_102_875_335n, protoc: 'long_value: 1256102875335' },
  { type: DataType.DateTime, value: 1_656_107_875_000, protoc: 'long_value: 1656107875000', decoded: 1_656_107_875_000n },
  { type: DataType.Bytes, value: new Uint8Array([0, 1, 0xff]), protoc: String.raw`bytes_value: "\000\001\377"` },
  { type: DataType.Bytes, value: new Uint8Array(), protoc: 'bytes_value: ""' },
  { type: DataType.File, value: new Uint8Array([0x25, 0x50, 0x44, 0x46]), protoc: 'bytes_value: "%PDF"' },
];

const describeCase = (item: Case): string =>
  `${Object.entries(DataType).find(([, id]) => id === item.type)![0]} ${typeof item.value === 'bigint' ? `${item.value}n` : item.value instanceof Uint8Array ? hex(item.value) : (JSON.stringify(item.value, (_key, value: unknown) => (typeof value === 'bigint' ? `${value}n` : value)) ?? String(item.value))}`;

describe('sparkplug payload: every scalar datatype against protoc', () => {
  for (const item of SCALARS) {
    it(`${describeCase(item)} → ${item.protoc}`, () => {
      const bytes = oneMetric({ name: 'm', datatype: item.type, value: item.value });
      const lines = protocLines(bytes);
      assert.ok(lines.includes(item.protoc), `protoc printed:\n${lines.join('\n')}`);
      assert.ok(lines.includes(`datatype: ${item.type}`));
      const decoded = decodedValue(bytes);
      const expected = item.decoded ?? item.value;
      if (typeof expected === 'number' && Number.isNaN(expected)) assert.ok(Number.isNaN(decoded));
      else assert.deepEqual(decoded, expected);
      assertCanonical(bytes);
    });
  }

  it('a value written by protoc in its text form decodes to the same value (unicode included)', () => {
    for (const item of SCALARS) {
      const bytes = protocEncode(`metrics { name: "m" datatype: ${item.type} ${item.protoc} }`);
      const decoded = decodedValue(bytes);
      const expected = item.decoded ?? item.value;
      if (typeof expected === 'number' && Number.isNaN(expected)) assert.ok(Number.isNaN(decoded), describeCase(item));
      else assert.deepEqual(decoded, expected, describeCase(item));
    }
  });
});

// The specification's array examples, corrected on develop (sparkplug#435, PR #436; develop@c9c090b
// Sparkplug_6_Payloads.adoc "Array Types"): the value and the bytes_value it must become.
const ARRAYS: Array<{ type: DataType; value: MetricValue; bytes: number[]; decoded?: MetricValue }> = [
  { type: DataType.Int32Array, value: [123456789, 987654321], bytes: [0x15, 0xcd, 0x5b, 0x07, 0xb1, 0x68, 0xde, 0x3a] },
  { type: DataType.Int8Array, value: [-23, 123], bytes: [0xe9, 0x7b] },
  { type: DataType.Int16Array, value: [-30000, 30000], bytes: [0xd0, 0x8a, 0x30, 0x75] },
  { type: DataType.Int32Array, value: [-1, 315338746], bytes: [0xff, 0xff, 0xff, 0xff, 0xfa, 0xaf, 0xcb, 0x12] },
  {
    type: DataType.Int64Array,
    value: [-4270929666821191986n, -3601064768563266876n],
    bytes: [0xce, 0x06, 0x72, 0xac, 0x18, 0x9c, 0xba, 0xc4, 0xc4, 0xba, 0x9c, 0x18, 0xac, 0x72, 0x06, 0xce],
  },
  { type: DataType.UInt8Array, value: [23, 250], bytes: [0x17, 0xfa] },
  { type: DataType.UInt16Array, value: [30, 52360], bytes: [0x1e, 0x00, 0x88, 0xcc] },
  { type: DataType.UInt32Array, value: [52, 3293969225], bytes: [0x34, 0x00, 0x00, 0x00, 0x49, 0xfb, 0x55, 0xc4] },
  {
    type: DataType.UInt64Array,
    value: [52n, 16444743074749521625n],
    bytes: [0x34, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd9, 0x9e, 0x02, 0xd1, 0xb2, 0x76, 0x37, 0xe4],
  },
  {
    type: DataType.FloatArray,
    value: [1.23, 89.341],
    bytes: [0xa4, 0x70, 0x9d, 0x3f, 0x98, 0xae, 0xb2, 0x42],
    decoded: [Math.fround(1.23), Math.fround(89.341)],
  },
  {
    type: DataType.DoubleArray,
    value: [12.354213, 1022.9123213],
    bytes: [0xd7, 0xa2, 0x05, 0x68, 0x5b, 0xb5, 0x28, 0x40, 0x8e, 0x17, 0x1c, 0x6f, 0x4c, 0xf7, 0x8f, 0x40],
  },
  { type: DataType.StringArray, value: ['ABC', 'hello'], bytes: [0x41, 0x42, 0x43, 0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00] },
  {
    type: DataType.DateTimeArray,
    // 'Wednesday, October 21, 2009 5:27:55.335 AM', 'Friday, June 24, 2022 9:57:55 PM' (UTC)
    value: [1256102875335n, 1656107875000n],
    bytes: [0xc7, 0xd0, 0x90, 0x75, 0x24, 0x01, 0x00, 0x00, 0xb8, 0xba, 0xb8, 0x97, 0x81, 0x01, 0x00, 0x00],
  },
];

describe('sparkplug payload: array types 22–34 (the specification’s examples)', () => {
  for (const item of ARRAYS) {
    it(`${describeCase({ ...item, protoc: '' })} → ${hex(new Uint8Array(item.bytes))}`, () => {
      const bytes = oneMetric({ name: 'a', datatype: item.type, value: item.value });
      // protoc's view of bytes_value, not our decoder's.
      assert.equal(hex(protocBytesValue(bytes)), hex(new Uint8Array(item.bytes)));
      assert.deepEqual(decodedValue(bytes), item.decoded ?? item.value);
      // and the reverse: the example's bytes, put there by protoc, decoded by us
      const escaped = item.bytes.map((byte) => `\\x${byte.toString(16).padStart(2, '0')}`).join('');
      const theirs = protocEncode(`metrics { name: "a" datatype: ${item.type} bytes_value: "${escaped}" }`);
      assert.deepEqual(decodedValue(theirs), item.decoded ?? item.value);
    });
  }

  it('BooleanArray: a 4-byte little-endian count, then the bits MSB-first; the padding bits are ours to choose', () => {
    const value = [false, false, true, true, false, true, false, false, true, true, false, true];
    const bytes = protocBytesValue(oneMetric({ name: 'b', datatype: DataType.BooleanArray, value }));
    // Spec: [0x0C, 0x00, 0x00, 0x00, 0x34, 0xDX], X "do not care"
    assert.equal(bytes.length, 6);
    assert.equal(hex(bytes.subarray(0, 5)), '0c00000034');
    assert.equal(bytes[5]! & 0xf0, 0xd0);
    for (const last of [0xd0, 0xdf, 0xd5]) {
      const escaped = [0x0c, 0, 0, 0, 0x34, last].map((byte) => `\\x${byte.toString(16).padStart(2, '0')}`).join('');
      assert.deepEqual(decodedValue(protocEncode(`metrics { datatype: 32 bytes_value: "${escaped}" }`)), value);
    }
  });

  it('empty arrays, an empty string in a StringArray, 9 booleans (two data bytes), unicode strings', () => {
    const cases: Array<[DataType, MetricValue]> = [
      [DataType.Int16Array, []],
      [DataType.StringArray, []],
      [DataType.StringArray, ['', 'ü', '']],
      [DataType.BooleanArray, []],
      [DataType.BooleanArray, [true, false, false, false, false, false, false, false, true]],
      [DataType.Int64Array, [-(2n ** 63n), 2n ** 63n - 1n]],
      [DataType.UInt64Array, [2n ** 64n - 1n, 0n]],
      [DataType.DoubleArray, [Number.NaN, Number.NEGATIVE_INFINITY, -0]],
    ];
    for (const [type, value] of cases) assert.deepEqual(decodedValue(oneMetric({ datatype: type, value })), value);
    assert.equal(hex(packArray(DataType.StringArray, ['', 'ü', ''], 'x')), '00c3bc0000');
    assert.equal(hex(packArray(DataType.BooleanArray, [], 'x')), '00000000');
    assert.equal(hex(packArray(DataType.BooleanArray, [true, false, false, false, false, false, false, false, true], 'x')), '090000008080');
  });

  it('refuses elements that do not fit, and bytes that are not whole elements', () => {
    assert.throws(() => oneMetric({ name: 'a', datatype: DataType.Int8Array, value: [1, 128] }), /metric "a"\[1\].*128 does not fit Int8/);
    assert.throws(() => oneMetric({ datatype: DataType.StringArray, value: ['a\0b'] }), /cannot contain NUL/);
    assert.throws(
      () => oneMetric({ datatype: DataType.BooleanArray, value: [true, 1] as unknown as boolean[] }),
      /BooleanArray takes true or false/,
    );
    assert.throws(() => oneMetric({ datatype: DataType.DoubleArray, value: 1.5 }), /DoubleArray takes an array/);
    assert.throws(
      () => decodedValue(protocEncode(String.raw`metrics { datatype: 24 bytes_value: "\x01\x02\x03" }`)),
      /3 bytes are not a whole number of Int32Array/,
    );
    assert.throws(
      () => decodedValue(protocEncode(String.raw`metrics { datatype: 32 bytes_value: "\x09\x00\x00\x00\xff" }`)),
      /BooleanArray of 9 needs 6 bytes/,
    );
  });
});

describe('sparkplug payload: presence, nulls, aliases, properties', () => {
  it('seq 0 is present on the wire; a payload without seq (NDEATH) has none', () => {
    const birth = encodePayload({ timestamp: 1, seq: 0, metrics: [{ name: 'bdSeq', datatype: DataType.Int64, value: 0n, timestamp: 1 }] });
    const birthLines = protocLines(birth);
    assert.ok(birthLines.includes('seq: 0'), birthLines.join('\n'));
    // bdSeq 0 is a value, not an absent one: long_value is on the wire too.
    assert.ok(birthLines.includes('long_value: 0'));
    assert.equal(decodePayload(birth).seq, 0);
    assert.equal(decodePayload(birth).metrics?.[0]?.value, 0n);

    const death = encodePayload({ timestamp: 2, metrics: [{ name: 'bdSeq', datatype: DataType.Int64, value: 5n }] });
    const deathLines = protocLines(death);
    assert.ok(!deathLines.some((line) => line.startsWith('seq:')), deathLines.join('\n'));
    assert.equal(decodePayload(death).seq, undefined);
    assert.ok(!Object.hasOwn(decodePayload(death), 'seq'));
    assertCanonical(birth);
    assertCanonical(death);

    // protoc's own: seq 0 written, and no seq at all
    assert.equal(decodePayload(protocEncode('seq: 0')).seq, 0);
    assert.ok(!Object.hasOwn(decodePayload(protocEncode('timestamp: 3')), 'seq'));
    assert.throws(() => encodePayload({ seq: 256 }), /seq is 0\.\.255/);
  });

  it('is_null: the flag without a value, on metrics and properties', () => {
    const bytes = oneMetric({
      name: 'broken',
      datatype: DataType.Double,
      isNull: true,
      properties: { Quality: qualityProperty(QualityCode.BAD), engUnit: { type: DataType.String, isNull: true } },
    });
    const lines = protocLines(bytes);
    assert.ok(lines.includes('is_null: true'));
    assert.ok(!lines.some((line) => line.startsWith('double_value')));
    assert.ok(!lines.some((line) => line.startsWith('string_value')));
    const metric = decodePayload(bytes).metrics![0]!;
    assert.equal(metric.isNull, true);
    assert.ok(!Object.hasOwn(metric, 'value'));
    assert.deepEqual(metric.properties, { Quality: { type: DataType.Int32, value: 0 }, engUnit: { type: DataType.String, isNull: true } });
    assertCanonical(bytes);
    assert.throws(() => oneMetric({ name: 'x', datatype: DataType.Double, isNull: true, value: 0 }), /a null metric has no value/);
    assert.throws(
      () => oneMetric({ name: 'x', datatype: DataType.Double, value: 1, properties: { p: { type: DataType.Int32 } } }),
      /no value \(set isNull/,
    );
  });

  it('the Quality property is Int32 (type 3) in int_value; the unit a String under engUnit', () => {
    const bytes = oneMetric({
      name: 'temperature',
      alias: 7,
      datatype: DataType.Float,
      value: 21.5,
      properties: { Quality: qualityProperty(QualityCode.GOOD), engUnit: engUnitProperty('°C') },
    });
    const text = protoc('decode', bytes).toString();
    // [tck-id-payloads-propertyset-quality-value-type], [tck-id-payloads-propertyset-quality-value-value]
    assert.match(
      text,
      /keys: "Quality"\s+keys: "engUnit"\s+values \{\s+type: 3\s+int_value: 192\s+\}\s+values \{\s+type: 12\s+string_value: "\\302\\260C"\s+\}/,
    );
    assert.deepEqual(decodePayload(bytes).metrics![0]!.properties, {
      Quality: { type: DataType.Int32, value: 192 },
      engUnit: { type: DataType.String, value: '°C' },
    });
  });

  it('properties of every basic type, nested PropertySet and PropertySetList', () => {
    const properties: PropertySet = {
      i8: { type: DataType.Int8, value: -5 },
      u32: { type: DataType.UInt32, value: 4294967295 },
      i64: { type: DataType.Int64, value: -(2n ** 63n) },
      u64: { type: DataType.UInt64, value: 2n ** 64n - 1n },
      f: { type: DataType.Float, value: 0.5 },
      d: { type: DataType.Double, value: -1e-300 },
      b: { type: DataType.Boolean, value: false },
      dt: { type: DataType.DateTime, value: 1700000000000n },
      nested: { type: DataType.PropertySet, value: { deep: { type: DataType.Text, value: 'x' } } },
      list: {
        type: DataType.PropertySetList,
        value: [{ a: { type: DataType.Int16, value: -2 } }, {}],
      },
    };
    const bytes = oneMetric({ name: 'm', datatype: DataType.Boolean, value: true, properties });
    assert.deepEqual(decodePayload(bytes).metrics![0]!.properties, properties);
    const lines = protocLines(bytes);
    assert.ok(lines.includes('int_value: 4294967291'), 'Int8 -5 sign-extended in a property too');
    assert.ok(lines.includes('long_value: 9223372036854775808'));
    assertCanonical(bytes);
    // [tck-id-payloads-metric-propertyvalue-type-value]
    assert.throws(() => oneMetric({ properties: { p: { type: DataType.Bytes, value: 1 } } }), /Bytes is not a property type/);
    assert.throws(
      () => oneMetric({ properties: { p: { type: DataType.Int8, value: 128 } } }),
      /metric #0, property p: 128 does not fit Int8/,
    );
  });

  it('aliases as bigint, exact to 2^64-1; numbers accepted; name and alias independent', () => {
    const bytes = encodePayload({
      seq: 3,
      metrics: [
        { alias: 2n ** 64n - 1n, datatype: DataType.Double, value: 1, timestamp: 1 },
        { alias: 2n ** 53n + 1n, datatype: DataType.Double, value: 2 },
        { alias: 0, name: 'zero', datatype: DataType.Double, value: 3 },
      ],
    });
    const lines = protocLines(bytes);
    assert.ok(lines.includes('alias: 18446744073709551615'));
    assert.ok(lines.includes('alias: 9007199254740993'));
    assert.ok(lines.includes('alias: 0'));
    assert.deepEqual(
      decodePayload(bytes).metrics!.map((metric) => metric.alias),
      [2n ** 64n - 1n, 2n ** 53n + 1n, 0n],
    );
    assert.throws(() => encodePayload({ metrics: [{ alias: -1 }] }), /an alias is a uint64/);
    assert.throws(() => encodePayload({ metrics: [{ alias: 2n ** 64n }] }), /an alias is a uint64/);
  });

  it('timestamps, flags, uuid, body and metadata', () => {
    const payload: SparkplugPayload = {
      timestamp: 1_700_000_000_123,
      seq: 255,
      uuid: 'schema-1',
      body: new Uint8Array([1, 2]),
      metrics: [
        {
          name: 'history',
          timestamp: 1_600_000_000_000,
          datatype: DataType.Int32,
          value: -7,
          isHistorical: true,
          isTransient: false,
          metadata: { contentType: 'text/plain', size: 2n ** 40n, seq: 0n, isMultiPart: false, description: 'd' },
        },
      ],
    };
    const bytes = encodePayload(payload);
    assert.deepEqual(decodePayload(bytes), payload);
    const lines = protocLines(bytes);
    for (const line of [
      'timestamp: 1700000000123',
      'timestamp: 1600000000000',
      'is_historical: true',
      'is_transient: false',
      'seq: 255',
      'size: 1099511627776',
    ])
      assert.ok(lines.includes(line), line);
    assertCanonical(bytes);
    assert.throws(() => encodePayload({ timestamp: -1 }), /timestamp is whole milliseconds/);
    assert.throws(() => oneMetric({ timestamp: 1.5 }), /timestamp is whole milliseconds/);
  });
});

describe('sparkplug payload: DataSet', () => {
  it('columns, types and rows, a null cell as an empty DataSetValue', () => {
    const value = {
      columns: ['i8', 'u64', 'f', 'name', 'on'],
      types: [DataType.Int8, DataType.UInt64, DataType.Float, DataType.String, DataType.Boolean],
      rows: [
        [-1, 2n ** 64n - 1n, 0.5, 'a', true],
        [null, 0n, null, '', false],
      ],
    };
    const bytes = oneMetric({ name: 'table', datatype: DataType.DataSet, value });
    assert.deepEqual(decodedValue(bytes), value);
    const text = protoc('decode', bytes).toString();
    // [tck-id-payloads-dataset-column-size]: num_of_columns; types unpacked (proto2), one line each.
    assert.match(text, /num_of_columns: 5/);
    assert.equal(text.match(/ {4}types: /g)?.length, 5);
    assert.match(text, /elements \{\s+int_value: 4294967295\s+\}/);
    assert.match(text, /elements \{\s+\}/);
    assertCanonical(bytes);
    assert.throws(() => oneMetric({ datatype: DataType.DataSet, value: { columns: ['a'], types: [], rows: [] } }), /1 columns but 0 types/);
    assert.throws(
      () => oneMetric({ datatype: DataType.DataSet, value: { columns: ['a'], types: [DataType.Bytes], rows: [] } }),
      /not a basic type/,
    );
    assert.throws(
      () => oneMetric({ datatype: DataType.DataSet, value: { columns: ['a'], types: [DataType.Int8], rows: [[1, 2]] } }),
      /row 0 has 2 cells/,
    );
  });
});

describe('sparkplug payload: datatypes left off the wire, and read by the receiver’s own types', () => {
  it('omitDatatypes leaves datatype off but still chooses the field ([tck-id-payloads-metric-datatype-not-req])', () => {
    const bytes = encodePayload(
      { seq: 9, metrics: [{ alias: 3n, datatype: DataType.Int8, value: -1, timestamp: 5 }] },
      { omitDatatypes: true },
    );
    const lines = protocLines(bytes);
    assert.ok(!lines.some((line) => line.startsWith('datatype:')));
    assert.ok(lines.includes('int_value: 4294967295'));
    // Without a datatype: the field's raw value.
    assert.equal(decodedValue(bytes), 4294967295);
    assert.equal(decodePayload(bytes).metrics![0]!.datatype, undefined);
    // With the datatype the births declared for alias 3:
    const metric = decodePayload(bytes, { datatypeOf: ({ alias }) => (alias === 3n ? DataType.Int8 : undefined) }).metrics![0]!;
    assert.equal(metric.value, -1);
    assert.equal(metric.datatype, DataType.Int8);
  });

  it('a DCMD decoded by the known type: masked or sign-extended IntN, UInt32 in either field, a wrong field refused', () => {
    const known = (type: DataType) => ({ datatypeOf: () => type });
    const one = (text: string, type: DataType): MetricValue | undefined =>
      decodePayload(protocEncode(`metrics { name: "w" ${text} }`), known(type)).metrics![0]!.value;
    assert.equal(one('int_value: 4294967295', DataType.Int8), -1);
    assert.equal(one('int_value: 255', DataType.Int8), -1); // the masked form
    assert.equal(one('int_value: 128', DataType.Int8), -128);
    assert.equal(one('int_value: 65535', DataType.Int16), -1);
    assert.equal(one('int_value: 4294934528', DataType.Int16), -32768);
    assert.throws(() => one('int_value: 511', DataType.Int8), /int_value 511 is not a Int8/);
    assert.throws(() => one('int_value: 256', DataType.UInt8), /256 does not fit UInt8/);
    assert.equal(one('int_value: 4294967295', DataType.UInt32), 4294967295);
    assert.equal(one('long_value: 4294967295', DataType.UInt32), 4294967295); // Tahu's historical field
    assert.throws(() => one('long_value: 4294967296', DataType.UInt32), /does not fit UInt32/);
    assert.equal(one('long_value: 18446744073709551615', DataType.Int64), -1n);
    assert.equal(one('long_value: 18446744073709551615', DataType.UInt64), 2n ** 64n - 1n);
    assert.throws(() => one('string_value: "1"', DataType.Int32), /a Int32 value cannot arrive in stringValue/);
    assert.throws(() => one('double_value: 1', DataType.Float), /a Float value cannot arrive in doubleValue/);
    assert.throws(() => one('datatype: 9 float_value: 1', DataType.Double), /sent as Float, but it is Double/);
  });

  it('a full birth written by protoc, decoded by us', () => {
    const text = `
      timestamp: 1700000000000
      seq: 0
      metrics { name: "bdSeq" timestamp: 1700000000000 datatype: 4 long_value: 0 }
      metrics { name: "Node Control/Rebirth" timestamp: 1700000000000 datatype: 11 boolean_value: false }
      metrics { name: "line/speed" alias: 12 timestamp: 1700000000000 datatype: 10 double_value: 12.5
                properties { keys: "engUnit" keys: "Quality" values { type: 12 string_value: "m/s" } values { type: 3 int_value: 500 } } }
      metrics { name: "line/fault" alias: 13 timestamp: 1700000000000 datatype: 3 is_null: true }`;
    assert.deepEqual(decodePayload(protocEncode(text)), {
      timestamp: 1_700_000_000_000,
      seq: 0,
      metrics: [
        { name: 'bdSeq', timestamp: 1_700_000_000_000, datatype: DataType.Int64, value: 0n },
        { name: 'Node Control/Rebirth', timestamp: 1_700_000_000_000, datatype: DataType.Boolean, value: false },
        {
          name: 'line/speed',
          alias: 12n,
          timestamp: 1_700_000_000_000,
          datatype: DataType.Double,
          value: 12.5,
          properties: { engUnit: { type: DataType.String, value: 'm/s' }, Quality: { type: DataType.Int32, value: QualityCode.STALE } },
        },
        { name: 'line/fault', alias: 13n, timestamp: 1_700_000_000_000, datatype: DataType.Int32, isNull: true },
      ],
    });
  });

  it('refuses what is not a payload, unknown datatypes and templates, with a reason', () => {
    assert.throws(() => decodePayload(new Uint8Array([0x12, 0x05, 0x0a])), /not a Sparkplug B payload/);
    assert.throws(() => decodePayload(protocEncode('metrics { name: "m" datatype: 99 int_value: 1 }')), /99 is not a Sparkplug datatype/);
    assert.throws(
      () => decodePayload(protocEncode('metrics { name: "t" datatype: 19 template_value { version: "1" } }')),
      /Template values are not supported/,
    );
    assert.throws(
      () => decodePayload(protocEncode('metrics { name: "k" properties { keys: "a" keys: "b" values { type: 3 int_value: 1 } } }')),
      /2 property keys but 1 values/,
    );
    assert.throws(() => decodePayload(protocEncode('timestamp: 9007199254740993')), /beyond 2\^53/);
  });
});

describe('sparkplug payload: values that do not fit their datatype', () => {
  const refused: Array<[DataType, unknown, RegExp]> = [
    [DataType.Int8, 300, /metric "v": 300 does not fit Int8 \(-128\.\.127\)/],
    [DataType.Int8, -129, /does not fit Int8/],
    [DataType.UInt8, -1, /-1 does not fit UInt8/],
    [DataType.Int16, 32768, /does not fit Int16/],
    [DataType.UInt32, 4294967296, /does not fit UInt32/],
    [DataType.Int32, 1.5, /Int32 takes a whole number, got 1\.5/],
    [DataType.Int32, '5', /Int32 takes a whole number, got "5"/],
    [DataType.Int64, 2n ** 63n, /9223372036854775808n does not fit Int64/],
    [DataType.Int64, 2 ** 60, /Int64 takes a bigint beyond ±2\^53/],
    [DataType.UInt64, 2n ** 64n, /does not fit UInt64/],
    [DataType.UInt64, -1n, /does not fit UInt64/],
    [DataType.DateTime, -1, /does not fit DateTime/],
    [DataType.Float, 1e39, /does not fit Float/],
    [DataType.Double, '1.5', /Double takes a number/],
    [DataType.Boolean, 1, /Boolean takes true or false, got 1/],
    [DataType.String, 5, /String takes a string, got 5/],
    [DataType.Bytes, 'AAE=', /Bytes takes a Uint8Array/],
    [DataType.Template, {}, /Template values are not supported/],
  ];
  for (const [type, value, message] of refused) {
    it(`${describeCase({ type, value: value as MetricValue, protoc: '' })}: ${message.source}`, () => {
      assert.throws(() => oneMetric({ name: 'v', datatype: type, value: value as MetricValue }), message);
    });
  }

  it('a value without a datatype, and a datatype that is not one', () => {
    assert.throws(() => oneMetric({ name: 'v', value: 1 }), /metric "v": a value needs its datatype/);
    assert.throws(() => oneMetric({ name: 'v', datatype: 35 as DataType, value: 1 }), /35 is not a Sparkplug datatype/);
  });
});

describe('sparkplug tags: the gateway’s tag types as Sparkplug datatypes', () => {
  it('declared Modbus and serial types', () => {
    const expected: Record<string, DataType> = {
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
    };
    for (const [type, datatype] of Object.entries(expected)) assert.equal(sparkplugTypeOf({ type }), datatype, type);
    assert.equal(sparkplugTypeOf({ type: 'int16', array: true }), DataType.Int16Array);
    assert.equal(sparkplugTypeOf({ type: 'uint64' }, [1n, 2n]), DataType.UInt64Array);
    assert.equal(sparkplugTypeOf({ type: 'bool', array: true }), DataType.BooleanArray);
    assert.equal(sparkplugTypeOf({ type: 'string' }, ['a']), DataType.StringArray);
    // scale/offset make an engineering value
    assert.equal(sparkplugTypeOf({ type: 'int16', scaled: true }), DataType.Double);
    assert.equal(sparkplugTypeOf({ type: 'int64', scaled: true }, [1.5]), DataType.DoubleArray);
    assert.equal(sparkplugTypeOf({ type: 'bool', scaled: true }), DataType.Boolean);
    assert.throws(() => sparkplugTypeOf({ type: 'int128' }), /no Sparkplug datatype for the tag type "int128"/);
  });

  it('OPC UA built-in type names, and values without a declared type', () => {
    assert.equal(sparkplugTypeOf({ type: 'SByte' }), DataType.Int8);
    assert.equal(sparkplugTypeOf({ type: 'Byte' }, [1, 2]), DataType.UInt8Array);
    assert.equal(sparkplugTypeOf({ type: 'DateTime' }), DataType.DateTime);
    assert.equal(sparkplugTypeOf({ type: 'Guid' }), DataType.UUID);
    assert.equal(sparkplugTypeOf({ type: 'ByteString' }), DataType.Bytes);
    assert.throws(() => sparkplugTypeOf({ type: 'ByteString', array: true }), /no array type of Bytes/);
    assert.equal(sparkplugTypeOf({ type: 'LocalizedText' }), DataType.String);
    assert.equal(sparkplugTypeOf({}, 1), DataType.Double);
    assert.equal(sparkplugTypeOf({}, 1n), DataType.Int64);
    assert.equal(sparkplugTypeOf({}, 2n ** 63n), DataType.UInt64);
    assert.equal(sparkplugTypeOf({}, true), DataType.Boolean);
    assert.equal(sparkplugTypeOf({}, 'x'), DataType.String);
    assert.equal(sparkplugTypeOf({}, [1, 2]), DataType.DoubleArray);
    assert.equal(sparkplugTypeOf({}, [1n, 2n ** 64n - 1n]), DataType.UInt64Array);
    assert.equal(sparkplugTypeOf({}, null), undefined);
    assert.equal(sparkplugTypeOf({}, []), undefined);
  });

  it('values converted for their datatype, and refused when they do not fit', () => {
    assert.deepEqual(tagMetric(5, { type: 'int64' }), { datatype: DataType.Int64, value: 5n });
    assert.deepEqual(tagMetric(2n ** 64n - 1n, { type: 'uint64' }), { datatype: DataType.UInt64, value: 2n ** 64n - 1n });
    assert.deepEqual(tagMetric(-3, { type: 'int16' }), { datatype: DataType.Int16, value: -3 });
    assert.deepEqual(tagMetric(7n, { type: 'int32' }), { datatype: DataType.Int32, value: 7 });
    assert.deepEqual(tagMetric(null, { type: 'float32' }), { datatype: DataType.Float, isNull: true });
    assert.deepEqual(tagMetric('2009-10-21T05:27:55.335Z', { type: 'DateTime' }), { datatype: DataType.DateTime, value: 1256102875335n });
    assert.deepEqual(tagMetric('AAH/', { type: 'ByteString' }), { datatype: DataType.Bytes, value: new Uint8Array([0, 1, 255]) });
    assert.deepEqual(tagMetric([1, -2], { type: 'int32' }), { datatype: DataType.Int32Array, value: [1, -2] });
    assert.deepEqual(tagMetric([1, 2], { type: 'int64' }), { datatype: DataType.Int64Array, value: [1n, 2n] });
    assert.deepEqual(tagMetric(12n, { type: 'int64', scaled: true }), { datatype: DataType.Double, value: 12 });
    assert.throws(() => tagMetric(300, { type: 'SByte' }, 'plc1/x'), /plc1\/x: 300 does not fit Int8/);
    assert.throws(() => tagMetric(2 ** 60, { type: 'int64' }), /Int64 needs a whole number within ±2\^53 or a bigint/);
    assert.throws(() => tagMetric([1, 70000], { type: 'uint16' }, 'arr'), /arr\[1\]: 70000 does not fit UInt16/);
    assert.throws(() => tagMetric('not a time', { type: 'DateTime' }), /DateTime takes ms since the epoch or an ISO 8601 time/);
    assert.throws(() => tagMetric('%%', { type: 'ByteString' }), /Bytes takes base64 text/);
    assert.throws(() => tagMetric(1, { type: 'bool' }), /Boolean takes true or false, got 1/);
    assert.throws(() => tagMetric(null, {}, 'opc/x'), /opc\/x: no declared type and no value/);
    assert.throws(() => metricValueOf(DataType.Int32, [1]), /Int32 takes one value/);
  });

  it('a tag metric encodes and protoc reads it', () => {
    const metric = tagMetric(-2, { type: 'int16' });
    const bytes = oneMetric({ name: 'plc1/temp', ...metric });
    assert.ok(protocLines(bytes).includes('int_value: 4294967294'));
    assert.equal(decodedValue(bytes), -2);
  });
});

describe('sparkplug payload: data messages built from data metrics (the DDATA hot path)', () => {
  it('are the bytes encodePayload writes for the same metrics without datatypes', () => {
    const bad = { Quality: { type: DataType.Int32, value: -2147483136 } };
    const metrics: SparkplugMetric[] = [
      { alias: 1, timestamp: 1000, datatype: DataType.Double, value: 21.5 },
      { alias: 2, timestamp: 1001, datatype: DataType.UInt16, value: 65535, isHistorical: true },
      { alias: 3, timestamp: 1002, datatype: DataType.Int64, value: -(2n ** 63n) },
      { alias: 4, timestamp: 1003, datatype: DataType.UInt64, value: 2n ** 64n - 1n },
      { alias: 5, timestamp: 1004, datatype: DataType.Int16, value: -2 },
      { alias: 6, timestamp: 1005, datatype: DataType.Float, isNull: true, properties: bad },
      { alias: 70000, timestamp: 2 ** 53 - 1, datatype: DataType.Int32Array, value: [1, -1] },
      { alias: 8, timestamp: 1006, datatype: DataType.String, value: 'é', properties: { Quality: { type: DataType.Int32, value: 0 } } },
    ];
    const expected = encodePayload({ timestamp: 5000, seq: 7, metrics }, { omitDatatypes: true });
    const data = metrics.map((metric) =>
      dataMetric(
        Number(metric.alias),
        metric.timestamp!,
        metric.value === undefined ? undefined : wireValueOf(metric.datatype!, metric.value as TagValue, 'metric'),
        metric.isHistorical ?? false,
        metric.properties && dataProperties(metric.properties),
      ),
    );
    assert.deepEqual(encodeDataPayload(5000, 7, data), expected);
  });

  it('a timestamp that is not whole milliseconds ≥ 0 throws, naming the metric', () => {
    assert.throws(() => dataMetric(9, -1, undefined, false, undefined), /metric alias 9: a timestamp is whole milliseconds/);
  });
});
