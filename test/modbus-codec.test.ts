import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ByteOrder, ModbusType } from '../drivers/modbus/config.js';
import {
  decodeString,
  encodeString,
  shortestFloat32,
  bitOf,
  decodeBits,
  decodeRegisters,
  decodeScalar,
  encodeBits,
  encodeRegisters,
  encodeScalar,
  layoutSpan,
  withBit,
} from '../drivers/modbus/codec.js';

type Row = { type: ModbusType; value: number | bigint | string | boolean; length?: number; wire: Record<ByteOrder, number[]> };

// Each row: a value and how it sits in the registers for each byte order (A = most significant byte).
const TABLE: Row[] = [
  { type: 'uint16', value: 0x1234, wire: { ABCD: [0x1234], CDAB: [0x1234], BADC: [0x3412], DCBA: [0x3412] } },
  { type: 'int16', value: -2, wire: { ABCD: [0xfffe], CDAB: [0xfffe], BADC: [0xfeff], DCBA: [0xfeff] } },
  { type: 'int16', value: 0x7fff, wire: { ABCD: [0x7fff], CDAB: [0x7fff], BADC: [0xff7f], DCBA: [0xff7f] } },
  {
    type: 'uint32',
    value: 0x11223344,
    wire: { ABCD: [0x1122, 0x3344], CDAB: [0x3344, 0x1122], BADC: [0x2211, 0x4433], DCBA: [0x4433, 0x2211] },
  },
  {
    type: 'int32',
    value: -123456789, // 0xF8A432EB
    wire: { ABCD: [0xf8a4, 0x32eb], CDAB: [0x32eb, 0xf8a4], BADC: [0xa4f8, 0xeb32], DCBA: [0xeb32, 0xa4f8] },
  },
  {
    type: 'float32',
    value: 1.5, // 0x3FC00000
    wire: { ABCD: [0x3fc0, 0x0000], CDAB: [0x0000, 0x3fc0], BADC: [0xc03f, 0x0000], DCBA: [0x0000, 0xc03f] },
  },
  {
    type: 'float32',
    value: -273.15, // 0xC3889333: published as the shortest decimal of that float32, not -273.1499938964844
    wire: { ABCD: [0xc388, 0x9333], CDAB: [0x9333, 0xc388], BADC: [0x88c3, 0x3393], DCBA: [0x3393, 0x88c3] },
  },
  {
    type: 'uint64',
    value: 0x0102030405060708n,
    wire: {
      ABCD: [0x0102, 0x0304, 0x0506, 0x0708],
      CDAB: [0x0708, 0x0506, 0x0304, 0x0102],
      BADC: [0x0201, 0x0403, 0x0605, 0x0807],
      DCBA: [0x0807, 0x0605, 0x0403, 0x0201],
    },
  },
  {
    type: 'uint64',
    value: 0xffffffffffffffffn,
    wire: {
      ABCD: [0xffff, 0xffff, 0xffff, 0xffff],
      CDAB: [0xffff, 0xffff, 0xffff, 0xffff],
      BADC: [0xffff, 0xffff, 0xffff, 0xffff],
      DCBA: [0xffff, 0xffff, 0xffff, 0xffff],
    },
  },
  {
    type: 'int64',
    value: -2n,
    wire: {
      ABCD: [0xffff, 0xffff, 0xffff, 0xfffe],
      CDAB: [0xfffe, 0xffff, 0xffff, 0xffff],
      BADC: [0xffff, 0xffff, 0xffff, 0xfeff],
      DCBA: [0xfeff, 0xffff, 0xffff, 0xffff],
    },
  },
  {
    type: 'float64',
    value: 1, // 0x3FF0000000000000
    wire: { ABCD: [0x3ff0, 0, 0, 0], CDAB: [0, 0, 0, 0x3ff0], BADC: [0xf03f, 0, 0, 0], DCBA: [0, 0, 0, 0xf03f] },
  },
  {
    type: 'float64',
    value: Math.PI, // 0x400921FB54442D18
    wire: {
      ABCD: [0x4009, 0x21fb, 0x5444, 0x2d18],
      CDAB: [0x2d18, 0x5444, 0x21fb, 0x4009],
      BADC: [0x0940, 0xfb21, 0x4454, 0x182d],
      DCBA: [0x182d, 0x4454, 0xfb21, 0x0940],
    },
  },
  // Strings never reorder registers, only the bytes inside them; padded with NULs.
  {
    type: 'string',
    value: 'ABC',
    length: 2,
    wire: { ABCD: [0x4142, 0x4300], CDAB: [0x4142, 0x4300], BADC: [0x4241, 0x0043], DCBA: [0x4241, 0x0043] },
  },
  { type: 'string', value: 'Hi', length: 1, wire: { ABCD: [0x4869], CDAB: [0x4869], BADC: [0x6948], DCBA: [0x6948] } },
  { type: 'bool', value: true, wire: { ABCD: [1], CDAB: [1], BADC: [1], DCBA: [1] } },
  { type: 'bool', value: false, wire: { ABCD: [0], CDAB: [0], BADC: [0], DCBA: [0] } },
];

describe('codec: scalars in every byte order', () => {
  for (const row of TABLE) {
    for (const order of ['ABCD', 'CDAB', 'BADC', 'DCBA'] as const) {
      const wire = row.wire[order];
      it(`${row.type} ${String(row.value)} ${order} <-> ${wire.map((w) => w.toString(16).padStart(4, '0')).join(' ')}`, () => {
        assert.deepEqual(decodeScalar(wire, row.type, order), row.value);
        assert.deepEqual(encodeScalar(row.value, row.type, order, row.length), wire);
      });
    }
  }
});

describe('codec: whole tags', () => {
  it('decodes arrays element by element', () => {
    const layout = { type: 'int32', byteOrder: 'CDAB', count: 3 } as const;
    const wire = encodeRegisters([1, -1, 70000], layout);
    assert.deepEqual(wire, [1, 0, 0xffff, 0xffff, 0x1170, 0x0001]);
    assert.deepEqual(decodeRegisters(wire, layout), [1, -1, 70000]);
    assert.equal(layoutSpan(layout), 6);
  });

  it('decodes arrays of 64-bit values as bigints and of strings', () => {
    assert.deepEqual(decodeRegisters([0, 0, 0, 5, 0xffff, 0xffff, 0xffff, 0xffff], { type: 'int64', byteOrder: 'ABCD', count: 2 }), [
      5n,
      -1n,
    ]);
    const strings = { type: 'string', byteOrder: 'ABCD', length: 2, count: 2 } as const;
    assert.deepEqual(decodeRegisters(encodeRegisters(['ab', 'cde'], strings), strings), ['ab', 'cde']);
    assert.equal(layoutSpan(strings), 4);
  });

  it('trims trailing NULs and spaces from strings but keeps inner ones', () => {
    const wire = [0x4120, 0x4220, 0x2020, 0x0000]; // "A B   \0\0"
    assert.equal(decodeRegisters(wire, { type: 'string', byteOrder: 'ABCD', length: 4 }), 'A B');
  });

  it('reads and sets bits inside registers', () => {
    assert.equal(decodeRegisters([0b1000], { type: 'bool', byteOrder: 'ABCD', bit: 3 }), true);
    assert.equal(decodeRegisters([0b1000], { type: 'bool', byteOrder: 'ABCD', bit: 2 }), false);
    assert.equal(bitOf(0x8000, 15), true);
    assert.equal(withBit(0x00ff, 15, true), 0x80ff);
    assert.equal(withBit(0x80ff, 0, false), 0x80fe);
    assert.equal(layoutSpan({ type: 'bool', byteOrder: 'ABCD', bit: 7 }), 1);
  });

  it('decodes coil bits, single and arrays', () => {
    assert.equal(decodeBits([true]), true);
    assert.deepEqual(decodeBits([true, false, true], 3), [true, false, true]);
    assert.deepEqual(encodeBits([true, false], 2), [true, false]);
    assert.deepEqual(encodeBits(1), [true]);
  });
});

describe('codec: refusing values that do not fit', () => {
  const cases: { name: string; run: () => unknown; message: RegExp }[] = [
    { name: 'int16 overflow', run: () => encodeScalar(40000, 'int16', 'ABCD'), message: /out of range for int16/ },
    { name: 'uint16 negative', run: () => encodeScalar(-1, 'uint16', 'ABCD'), message: /out of range for uint16/ },
    { name: 'uint32 fraction', run: () => encodeScalar(1.5, 'uint32', 'ABCD'), message: /needs an integer/ },
    { name: 'uint64 negative', run: () => encodeScalar(-1n, 'uint64', 'ABCD'), message: /out of range for uint64/ },
    { name: 'int64 unsafe number', run: () => encodeScalar(2 ** 60, 'int64', 'ABCD'), message: /pass a bigint/ },
    { name: 'string too long', run: () => encodeScalar('ABCDE', 'string', 'ABCD', 2), message: /does not fit in 2 registers/ },
    { name: 'number for string', run: () => encodeScalar(5, 'string', 'ABCD', 2), message: /expected a string/ },
    { name: 'array length', run: () => encodeRegisters([1, 2], { type: 'int16', byteOrder: 'ABCD', count: 3 }), message: /array of 3/ },
    { name: 'array for scalar', run: () => encodeRegisters([1], { type: 'int16', byteOrder: 'ABCD' }), message: /single value/ },
    { name: 'bool from text', run: () => encodeBits('yes'), message: /expected a bool/ },
  ];
  for (const c of cases) it(c.name, () => assert.throws(c.run, c.message));
});

describe('codec: float32 as the shortest decimal of the same float', () => {
  const cases: Array<[number, number]> = [
    [Math.fround(20.16997), 20.16997],
    [Math.fround(0.1), 0.1],
    [Math.fround(-273.15), -273.15],
    [Math.fround(3.4028235e38), 3.4028235e38],
    [Math.fround(1e-45), 1e-45],
    [0, 0],
  ];
  for (const [float, expected] of cases) {
    it(`${float} → ${expected}`, () => {
      assert.equal(shortestFloat32(float), expected);
      assert.equal(Math.fround(expected), float);
    });
  }
});

describe('codec: strings', () => {
  it('end at the first NUL (C strings leave old bytes behind it) and lose trailing spaces', () => {
    assert.equal(decodeString([0x4142, 0x0000, 0x5859, 0x0000], 'ABCD'), 'AB');
    assert.equal(decodeString([0x4142, 0x4300, 0x5859], 'ABCD'), 'ABC');
    assert.equal(decodeString([0x4142, 0x2020], 'ABCD'), 'AB');
  });

  it('latin1 by default: a degree sign byte stays a degree sign', () => {
    assert.equal(decodeString([0x3235, 0xb043], 'ABCD'), '25°C');
    assert.deepEqual(encodeString('25°C', 2, 'ABCD'), [0x3235, 0xb043]);
  });

  it('utf8 when the device stores UTF-8', () => {
    assert.equal(decodeString([0x3235, 0xc2b0, 0x4300], 'ABCD', 'utf8'), '25°C');
  });

  it('refuses characters the encoding cannot hold instead of mangling them', () => {
    assert.throws(() => encodeString('5€', 2, 'ABCD'), /"€" cannot be written as latin1/);
    assert.throws(() => encodeString('°', 1, 'ABCD', 'ascii'), /cannot be written as ascii/);
  });
});
