import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compileTemplate, hexBytesOf, hexProblem, showBytes, specBytes, textBytes, textProblem } from '../drivers/serial/text.js';

/** Bytes as a list of numbers, so a failing assertion shows which byte differs. */
const bytes = (buffer: Buffer): number[] => [...buffer];
const render = (template: string, values: Record<string, string | number | bigint | boolean>): string =>
  compileTemplate(template).render(values).toString('latin1');

describe('serial text: escapes', () => {
  it('turns each escape into its byte', () => {
    // As the config reaches us: a backslash and a letter (JSON "\\r"), not a carriage return.
    assert.deepEqual(bytes(textBytes('\\r\\n\\t\\0\\e\\\\\\x02\\x7F\\xff')), [0x0d, 0x0a, 0x09, 0x00, 0x1b, 0x5c, 0x02, 0x7f, 0xff]);
  });

  it('keeps text around escapes, and real control characters as they are', () => {
    assert.deepEqual(bytes(textBytes('\\x02RD\\x03')), [0x02, 0x52, 0x44, 0x03]);
    assert.deepEqual(bytes(textBytes('SI\r\n')), [0x53, 0x49, 0x0d, 0x0a]);
  });

  it('an escaped backslash does not start another escape', () => {
    assert.deepEqual(bytes(textBytes('\\\\x41')), [0x5c, 0x78, 0x34, 0x31]);
    assert.deepEqual(bytes(textBytes('\\\\r')), [0x5c, 0x72]);
  });

  it('characters up to U+00FF are one byte each (latin1)', () => {
    assert.deepEqual(bytes(textBytes('°µé')), [0xb0, 0xb5, 0xe9]);
  });

  it('textProblem accepts every escape', () => {
    for (const text of ['\\r\\n', '\\x02RD\\x03', '\\\\q', '\\t\\0\\e', 'plain', '°C']) assert.equal(textProblem(text), undefined, text);
  });

  it('textProblem names a backslash that starts no escape', () => {
    assert.equal(textProblem('AB\\q'), '"\\q" is not an escape; use \\r \\n \\t \\0 \\e \\\\ or \\xHH (two hex digits)');
    assert.match(textProblem('\\x4')!, /^"\\x" is not an escape/);
    assert.match(textProblem('\\xG0')!, /^"\\x" is not an escape/);
    assert.match(textProblem('AB\\')!, /^"\\" is not an escape/);
  });

  it('textProblem refuses a character that is not one byte', () => {
    assert.equal(textProblem('5 €'), '"€" is not a single byte; write it as \\xHH escapes or use {"hex": …}');
    assert.match(textProblem('😀')!, /"😀" is not a single byte/);
  });
});

describe('serial text: hex specs', () => {
  it('reads hex with or without separators, any case', () => {
    assert.deepEqual(bytes(hexBytesOf('01 03 00 0A')), [0x01, 0x03, 0x00, 0x0a]);
    assert.deepEqual(bytes(hexBytesOf('0103000a')), [0x01, 0x03, 0x00, 0x0a]);
    assert.deepEqual(bytes(hexBytesOf('de:ad:BE:EF')), [0xde, 0xad, 0xbe, 0xef]);
  });

  it('hexProblem refuses odd digits, non-hex and nothing', () => {
    for (const hex of ['0', '01 0', 'zz', '0x01', ''])
      assert.equal(hexProblem(hex), 'expected pairs of hex digits, e.g. "02 52 44 03"', JSON.stringify(hex));
    for (const hex of ['02', '02 52 44 03', 'aB:cD']) assert.equal(hexProblem(hex), undefined, hex);
  });

  it('specBytes takes text or hex', () => {
    assert.deepEqual(bytes(specBytes('\\x02')), [0x02]);
    assert.deepEqual(bytes(specBytes({ hex: '02 03' })), [0x02, 0x03]);
  });
});

describe('serial text: showBytes', () => {
  it('shows printable ASCII as is and escapes the rest', () => {
    assert.equal(showBytes(Buffer.from('S S 1.5 kg\r\n', 'latin1')), '"S S 1.5 kg\\r\\n"');
    assert.equal(showBytes(Buffer.from([0x02, 0x09, 0x22, 0x5c, 0x7f, 0xff, 0x41])), '"\\x02\\t\\"\\\\\\x7f\\xffA"');
  });

  it('cuts long frames at max characters and says how long they were', () => {
    assert.equal(showBytes(Buffer.alloc(100, 'A')), `"${'A'.repeat(80)}"… (100 bytes)`);
    assert.equal(showBytes(Buffer.alloc(100, 'A'), 10), '"AAAAAAAAAA"… (100 bytes)');
    assert.equal(showBytes(Buffer.alloc(10, 'A'), 10), '"AAAAAAAAAA"');
  });

  it('never cuts an escape in half', () => {
    assert.equal(showBytes(Buffer.from('AAAAAAAAA\r', 'latin1'), 10), '"AAAAAAAAA"… (10 bytes)');
    assert.equal(showBytes(Buffer.from([0x41, 0x01, 0x02]), 4), '"A"… (3 bytes)');
    assert.equal(showBytes(Buffer.from([0x41, 0x01, 0x02]), 5), '"A\\x01"… (3 bytes)');
  });

  it('shows nothing as two quotes', () => {
    assert.equal(showBytes(Buffer.alloc(0)), '""');
  });
});

describe('serial text: templates', () => {
  it('lists its fields', () => {
    assert.deepEqual(compileTemplate('{unitId}SP {value:.1f}\\r').fields, ['unitId', 'value']);
    assert.deepEqual(compileTemplate('SI\\r\\n').fields, []);
    assert.deepEqual(compileTemplate({ hex: '02 41 03' }).fields, []);
  });

  it('renders plain fields', () => {
    assert.equal(render('{unitId}RD\\r', { unitId: 7 }), '7RD\r');
    assert.equal(render('{unitId}RD', { unitId: '07' }), '07RD');
    assert.equal(render('SP {value}', { value: 12.5 }), 'SP 12.5');
    assert.equal(render('SP {value}', { value: -3 }), 'SP -3');
  });

  it('keeps escapes of the literal text', () => {
    assert.deepEqual(bytes(compileTemplate('\\x02{unitId}RD\\x03').render({ unitId: 1 })), [0x02, 0x31, 0x52, 0x44, 0x03]);
  });

  it('fixed decimals: .Nf, with zero padding and width', () => {
    assert.equal(render('{value:.1f}', { value: 12.34 }), '12.3');
    assert.equal(render('{value:.2f}', { value: 2 }), '2.00');
    assert.equal(render('{value:.0f}', { value: 2.6 }), '3');
    assert.equal(render('{value:05.1f}', { value: 2.5 }), '002.5');
    assert.equal(render('{value:7.2f}', { value: 9.87654 }), '   9.88');
    assert.equal(render('{value:f}', { value: 1.5 }), '1.500000');
  });

  it('zero padding goes after the sign of a negative number', () => {
    assert.equal(render('{value:06.1f}', { value: -2.5 }), '-002.5');
    assert.equal(render('{value:04d}', { value: -7 }), '-007');
    assert.equal(render('{value:6.1f}', { value: -2.5 }), '  -2.5');
  });

  it('integers: d, 0Nd, x, 0NX', () => {
    assert.equal(render('{value:d}', { value: 42 }), '42');
    assert.equal(render('{value:d}', { value: 41.6 }), '42');
    assert.equal(render('{value:04d}', { value: 7 }), '0007');
    assert.equal(render('{value:04d}', { value: 123456 }), '123456');
    assert.equal(render('{value:x}', { value: 255 }), 'ff');
    assert.equal(render('{value:04X}', { value: 255 }), '00FF');
    assert.equal(render('{value:02X}', { value: 10 }), '0A');
    assert.equal(render('{value:d}', { value: '15' }), '15');
  });

  it('strings: width right-aligned, "-" left-aligned', () => {
    assert.equal(render('[{value:8s}]', { value: 'ab' }), '[      ab]');
    assert.equal(render('[{value:-8s}]', { value: 'ab' }), '[ab      ]');
    assert.equal(render('[{value:2s}]', { value: 'abcd' }), '[abcd]');
    assert.equal(render('[{value:s}]', { value: 'x y' }), '[x y]');
  });

  it('bigints stay exact', () => {
    assert.equal(render('{value}', { value: 12345678901234567890n }), '12345678901234567890');
    assert.equal(render('{value:d}', { value: 9223372036854775807n }), '9223372036854775807');
    assert.equal(render('{value:020d}', { value: -9007199254740993n }), '-0009007199254740993');
    assert.equal(render('{value:X}', { value: 0xdeadbeefcafen }), 'DEADBEEFCAFE');
  });

  it('booleans are 1 and 0', () => {
    assert.equal(render('{value}', { value: true }), '1');
    assert.equal(render('{value}', { value: false }), '0');
    assert.equal(render('{value:d}', { value: true }), '1');
    assert.equal(render('{value:03d}', { value: false }), '000');
  });

  it('{{ and }} are literal braces', () => {
    assert.equal(render('{{{value}}}', { value: 5 }), '{5}');
    assert.equal(render('a{{b}}c', {}), 'a{b}c');
    assert.deepEqual(compileTemplate('{{value}}').fields, []);
  });

  it('a hex template is its bytes', () => {
    assert.deepEqual(bytes(compileTemplate({ hex: '02 52 44 03' }).render({})), [0x02, 0x52, 0x44, 0x03]);
  });

  it('an unknown format throws a message with examples', () => {
    assert.throws(
      () => compileTemplate('SP {value:.1q}'),
      (error: Error) =>
        error.message === '{value:.1q}: unknown format ".1q"; use e.g. {value:.1f}, {value:05.1f}, {value:d}, {value:04X}, {value:8s}',
    );
    assert.throws(() => compileTemplate('{value:+d}'), /\{value:\+d\}: unknown format "\+d"/);
    assert.throws(() => compileTemplate('{value:5.2.1f}'), /unknown format "5\.2\.1f"/);
  });

  it('a field without a value throws', () => {
    const template = compileTemplate('{unitId}SP {value:.1f}');
    assert.throws(() => template.render({ unitId: 1 }), { message: 'template field {value} has no value' });
  });

  it('a value is sent as it is: its backslashes are no escapes', () => {
    // The written value of a string tag goes out byte for byte; "\r" in it must not become a carriage return.
    assert.deepEqual(
      bytes(compileTemplate('T {value}\\r').render({ value: 'a\\r\\x41' })),
      [0x54, 0x20, 0x61, 0x5c, 0x72, 0x5c, 0x78, 0x34, 0x31, 0x0d],
    );
  });

  it('a value character that is not one byte throws instead of being cut to its low byte', () => {
    assert.throws(() => compileTemplate('T {value}').render({ value: '5 €' }), /"€" is not a single byte/);
  });

  it('a numeric format of a text that is no number throws instead of sending NaN', () => {
    assert.throws(() => compileTemplate('{value:d}').render({ value: 'abc' }), /\{value:d\}: "abc" is not a number/);
    assert.throws(() => compileTemplate('{value:.1f}').render({ value: '' }), /\{value:\.1f\}: "" is not a number/);
    assert.throws(() => compileTemplate('{value:X}').render({ value: 'zz' }), /\{value:X\}: "zz" is not a number/);
  });
});
