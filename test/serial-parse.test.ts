import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { TagReading } from '../src/pipeline/driver.js';
import { serialDevice } from '../drivers/serial/config.js';
import { compileTags, type FrameResult, frameText, parseFrame } from '../drivers/serial/parse.js';

/** Tags as the config gives them (defaults filled in, and checked: a test config that is not valid fails here). */
function tagsOf(...tags: Array<Record<string, unknown>>) {
  return serialDevice.parse({ name: 'dev', driver: 'serial', connection: { transport: 'tcp', host: '127.0.0.1' }, tags }).tags;
}

function parse(
  tags: Array<Record<string, unknown>>,
  frame: string | Buffer,
  options: { required?: boolean; encoding?: 'latin1' | 'ascii' | 'utf8' | 'hex'; sourceTs?: number } = {},
): FrameResult[] {
  const bytes = typeof frame === 'string' ? Buffer.from(frame, 'latin1') : frame;
  return parseFrame(
    compileTags(tagsOf(...tags)),
    bytes,
    frameText(bytes, options.encoding ?? 'latin1'),
    options.sourceTs,
    options.required ?? true,
  );
}

/** The one reading of a one-tag parse. */
function one(tag: Record<string, unknown>, frame: string | Buffer, options: Parameters<typeof parse>[2] = {}): TagReading {
  const [reading, ...rest] = parse([{ name: 't', ...tag }], frame, options);
  assert.equal(rest.length, 0);
  assert.ok(reading, 'expected a reading');
  return reading;
}

const value = (tag: Record<string, unknown>, frame: string | Buffer, options: Parameters<typeof parse>[2] = {}) => {
  const reading = one(tag, frame, options);
  assert.equal(reading.quality, 'good', reading.reason);
  return reading.value;
};

const bad = (reading: TagReading, reason: string | RegExp): void => {
  assert.equal(
    reading.quality,
    'bad',
    `expected bad, got ${JSON.stringify(reading, (_, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v))}`,
  );
  assert.equal(reading.code, 'bad-reply');
  assert.equal(reading.value, undefined);
  if (typeof reason === 'string') assert.equal(reading.reason, reason);
  else assert.match(reading.reason ?? '', reason);
};

describe('serial parse: MT-SICS weighing (SI / S)', () => {
  // "S S" stable, "S D" dynamic (not yet stable), "S +" overload, "S -" underload, "ES" syntax error.
  const weight = {
    name: 'weight',
    regex: '^S (?<status>\\S)(?:\\s+(?<value>-?\\d+(?:\\.\\d+)?) (?<unit>\\S+))?$',
    quality: { capture: 'status', good: ['S'], uncertain: ['D'] },
    unit: 'kg',
  };
  const unit = { name: 'unit', type: 'string', regex: weight.regex, capture: 'unit' };

  it('a stable weight is good', () => {
    assert.deepEqual(parse([weight, unit], 'S S     12.345 kg', { sourceTs: 1700000000000 }), [
      { tag: 'weight', value: 12.345, quality: 'good', sourceTs: 1700000000000 },
      { tag: 'unit', value: 'kg', quality: 'good', sourceTs: 1700000000000 },
    ]);
  });

  it('a dynamic weight is uncertain, with the status as reason', () => {
    assert.deepEqual(parse([weight], 'S D     12.346 kg'), [{ tag: 'weight', value: 12.346, quality: 'uncertain', reason: 'status "D"' }]);
  });

  it('a negative weight', () => {
    assert.equal(value(weight, 'S S     -0.120 kg'), -0.12);
  });

  it('overload is bad, and the reason shows the frame', () => {
    bad(one(weight, 'S +'), /^unparsed: group "value" of \/.*\/ matched nothing in "S \+"$/);
  });

  it('a status that is listed nowhere is bad', () => {
    bad(one(weight, 'S X     12.345 kg'), 'status "X" is not a listed status in "S X     12.345 kg"');
  });

  it('a status listed as bad says so', () => {
    const tag = { ...weight, quality: { capture: 'status', good: ['S'], bad: ['I'] } };
    bad(one(tag, 'S I     12.345 kg'), 'status "I" is bad in "S I     12.345 kg"');
  });

  it('a syntax error reply is bad', () => {
    bad(one(weight, 'ES'), `unparsed: does not match /${weight.regex}/ in "ES"`);
  });
});

describe('serial parse: NMEA', () => {
  const GGA = '$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47';
  const RMC = '$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A';
  const gga = [
    { name: 'time', type: 'string', match: '^\\$GPGGA', split: ',', index: 1 },
    { name: 'latitude', match: '^\\$GPGGA', split: ',', index: 2 },
    { name: 'satellites', type: 'int32', match: '^\\$GPGGA', split: ',', index: 7 },
    {
      name: 'altitude',
      match: '^\\$GPGGA',
      split: ',',
      index: 9,
      quality: { split: ',', index: 6, good: ['1', '2'], bad: ['0'] },
    },
  ];

  it('a GGA sentence split by ","', () => {
    assert.deepEqual(parse(gga, GGA), [
      { tag: 'time', value: '123519', quality: 'good' },
      { tag: 'latitude', value: 4807.038, quality: 'good' },
      { tag: 'satellites', value: 8, quality: 'good' },
      { tag: 'altitude', value: 545.4, quality: 'good' },
    ]);
  });

  it('a GGA without a fix: the fix field makes the altitude bad', () => {
    const noFix = GGA.replace(',E,1,08,', ',E,0,08,');
    const [, , , altitude] = parse(gga, noFix);
    bad(altitude!, /^status "0" is bad in "\$GPGGA,/);
  });

  it('the status field of a split defaults to the same separator', () => {
    const tag = { name: 'altitude', split: ',', index: 9, quality: { index: 6, good: ['1'] } };
    assert.equal(value(tag, GGA), 545.4);
    bad(one(tag, GGA.replace(',E,1,08,', ',E,2,08,')), /^status "2" is not a listed status/);
  });

  it('an RMC sentence is not for GGA tags: no readings when streamed', () => {
    assert.deepEqual(parse(gga, RMC, { required: false }), [undefined, undefined, undefined, undefined]);
  });

  it('an RMC sentence as the reply to a request is bad for GGA tags', () => {
    const results = parse(gga, RMC, { required: true });
    assert.equal(results.length, 4);
    for (const reading of results) bad(reading!, /^the reply does not match \/\^\\\$GPGGA\/ in "\$GPRMC,123519,A,/);
  });

  it('one frame, tags of two sentences: each tag reads its own', () => {
    const tags = [gga[1]!, { name: 'speed', match: '^\\$GPRMC', split: ',', index: 7 }];
    assert.deepEqual(parse(tags, RMC, { required: false }), [undefined, { tag: 'speed', value: 22.4, quality: 'good' }]);
    assert.deepEqual(parse(tags, GGA, { required: false }), [{ tag: 'latitude', value: 4807.038, quality: 'good' }, undefined]);
  });

  it('a field past the last one is bad', () => {
    bad(one({ split: ',', index: 20 }, GGA), /^unparsed: the frame has 15 fields, not 21 in "\$GPGGA,/);
  });

  it('an empty field is bad for a number', () => {
    bad(one({ split: ',', index: 13 }, GGA), /^unparsed: not a number: "" in /);
  });
});

describe('serial parse: fixed-width fields', () => {
  const frame = '0012.50+0021.3OK';

  it('start and length pick the characters', () => {
    assert.equal(value({ start: 0, length: 7 }, frame), 12.5);
    assert.equal(value({ start: 7, length: 7 }, frame), 21.3);
  });

  it('without length, to the end of the frame', () => {
    assert.equal(value({ type: 'string', start: 14 }, frame), 'OK');
  });

  it('a field that starts past the end of the frame is bad', () => {
    bad(one({ start: 16, length: 2 }, frame), 'unparsed: the frame has 16 characters, the field starts at 16 in "0012.50+0021.3OK"');
  });

  it('a field cut short by the end of the frame is bad, not the number of its first digits', () => {
    // "0012.50+00" is a frame that lost its end: "+00" would read as 0.
    bad(one({ start: 7, length: 7 }, '0012.50+00'), 'unparsed: the frame has 10 characters, the field ends at 14 in "0012.50+00"');
  });
});

describe('serial parse: numbers', () => {
  it('float64: sign, spaces, exponent', () => {
    assert.equal(value({}, '  +1.5e3 '), 1500);
    assert.equal(value({}, '- 12.5'), -12.5);
    assert.equal(value({}, '.25'), 0.25);
  });

  it('float64: not a number is bad', () => {
    for (const text of ['1.2.3', 'abc', '', 'NaN', 'Infinity', '0x10'])
      bad(one({}, text), new RegExp(`^unparsed: not a number: ${JSON.stringify(text.trim()).replace(/[.]/g, '\\.')} in `));
  });

  it('decimal ","', () => {
    assert.equal(value({ decimal: ',' }, '12,5'), 12.5);
    assert.equal(value({ decimal: ',' }, '-0,75'), -0.75);
  });

  it('int32: its range, exactly', () => {
    assert.equal(value({ type: 'int32' }, '2147483647'), 2147483647);
    assert.equal(value({ type: 'int32' }, '-2147483648'), -2147483648);
    assert.equal(value({ type: 'int32' }, ' +0042 '), 42);
    bad(one({ type: 'int32' }, '2147483648'), 'unparsed: 2147483648 does not fit int32 in "2147483648"');
    bad(one({ type: 'int32' }, '-2147483649'), 'unparsed: -2147483649 does not fit int32 in "-2147483649"');
    bad(one({ type: 'int32' }, '12.5'), 'unparsed: not a base-10 integer: "12.5" in "12.5"');
  });

  it('int64: exact beyond 2^53, as a bigint', () => {
    assert.equal(value({ type: 'int64' }, '9007199254740993'), 9007199254740993n);
    assert.equal(value({ type: 'int64' }, '9223372036854775807'), 9223372036854775807n);
    assert.equal(value({ type: 'int64' }, '-9223372036854775808'), -9223372036854775808n);
    assert.equal(value({ type: 'int64' }, '7'), 7n);
    bad(one({ type: 'int64' }, '9223372036854775808'), /^unparsed: 9223372036854775808 does not fit int64 in /);
  });

  it('base 16, 8 and 2', () => {
    assert.equal(value({ type: 'int32', base: 16 }, '1A3F'), 0x1a3f);
    assert.equal(value({ type: 'int32', base: 16 }, 'ff'), 255);
    assert.equal(value({ type: 'int32', base: 16 }, '-FF'), -255);
    assert.equal(value({ type: 'int64', base: 16 }, 'FFFFFFFFFFFFF'), 0xfffffffffffffn);
    assert.equal(value({ type: 'int32', base: 8 }, '777'), 0o777);
    assert.equal(value({ type: 'int32', base: 2 }, '1011'), 11);
    bad(one({ type: 'int32', base: 16 }, 'G1'), 'unparsed: not a base-16 integer: "G1" in "G1"');
    bad(one({ type: 'int32', base: 8 }, '8'), 'unparsed: not a base-8 integer: "8" in "8"');
    bad(one({ type: 'int32', base: 16 }, 'FFFFFFFF'), 'unparsed: 4294967295 does not fit int32 in "FFFFFFFF"');
  });
});

describe('serial parse: bool and string', () => {
  it('bool: default words, any case', () => {
    for (const text of ['1', 'true', 'TRUE', 'On', 'yes']) assert.equal(value({ type: 'bool' }, text), true, text);
    for (const text of ['0', 'false', 'OFF', 'No', ' 0 ']) assert.equal(value({ type: 'bool' }, text), false, text);
    bad(one({ type: 'bool' }, '2'), 'unparsed: not a bool: "2" in "2"');
  });

  it('bool: trueValues and falseValues replace the defaults, case as written', () => {
    const tag = { type: 'bool', trueValues: ['RUN'], falseValues: ['STOP'] };
    assert.equal(value(tag, 'RUN'), true);
    assert.equal(value(tag, 'STOP'), false);
    bad(one(tag, 'run'), 'unparsed: not a bool: "run" in "run"');
    bad(one(tag, '1'), 'unparsed: not a bool: "1" in "1"');
  });

  it('string: the field text as it is', () => {
    assert.equal(value({ type: 'string', split: ';', index: 1 }, 'A; Lot 7 ;B'), ' Lot 7 ');
    assert.equal(value({ type: 'string' }, 'whole frame'), 'whole frame');
  });
});

describe('serial parse: which capture holds the value', () => {
  it('the group named "value" first', () => {
    assert.equal(value({ regex: '(\\d+)-(?<value>\\d+)' }, '12-34'), 34);
  });

  it('else group 1', () => {
    assert.equal(value({ regex: '(\\d+)-(\\d+)' }, '12-34'), 12);
  });

  it('else the whole match', () => {
    assert.equal(value({ regex: '-?\\d+\\.\\d+' }, 'T=-21.5C'), -21.5);
  });

  it('capture picks a numbered group, 0 the whole match, or a named one', () => {
    assert.equal(value({ regex: '(\\d+)-(\\d+)', capture: 2 }, '12-34'), 34);
    assert.equal(value({ type: 'string', regex: '(\\d+)-(\\d+)', capture: 0 }, 'x 12-34 y'), '12-34');
    assert.equal(value({ regex: '(?<a>\\d+)-(?<b>\\d+)', capture: 'b' }, '12-34'), 34);
  });

  it('a group that did not take part in the match is bad', () => {
    bad(one({ regex: '(\\d+)|(x)', capture: 2 }, '12'), 'unparsed: group 2 of /(\\d+)|(x)/ matched nothing in "12"');
  });
});

describe('serial parse: bad fields show the frame', () => {
  it('escaped and cut to 80 characters', () => {
    const frame = `T=abc\t${'x'.repeat(100)}\r`;
    const reading = one({ regex: 'T=(\\w+)' }, frame);
    bad(reading, `unparsed: not a number: "abc" in "T=abc\\t${'x'.repeat(73)}"… (107 bytes)`);
  });

  it('binary bytes are escaped', () => {
    bad(one({ start: 1, length: 2 }, Buffer.from([0x02, 0x41, 0x42, 0x03])), 'unparsed: not a number: "AB" in "\\x02AB\\x03"');
  });
});

describe('serial parse: hex encoding', () => {
  it('frameText gives two uppercase hex digits per byte', () => {
    assert.equal(frameText(Buffer.from([0x01, 0x03, 0x02, 0x00, 0xfa]), 'hex'), '01030200FA');
    assert.equal(frameText(Buffer.from([0xb0, 0x43]), 'latin1'), '°C');
    assert.equal(frameText(Buffer.from('°C', 'utf8'), 'utf8'), '°C');
  });

  it('a binary reply read as hex fields', () => {
    // A Modbus-like reply: address 01, function 03, 2 bytes, value 0x00FA.
    const frame = Buffer.from([0x01, 0x03, 0x02, 0x00, 0xfa]);
    assert.equal(value({ type: 'int32', base: 16, start: 6, length: 4 }, frame, { encoding: 'hex' }), 250);
    assert.equal(value({ type: 'string', start: 0, length: 2 }, frame, { encoding: 'hex' }), '01');
  });
});
