import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ConfigError, formatPath, parseConfigText } from '../src/config/load.js';

/** A serial device that validates; cases spread it and break one thing. */
const device = (extra: Record<string, unknown> = {}, tags: unknown[] = [{ name: 'weight', regex: '^S S\\s+(?<value>\\S+) kg$' }]) => ({
  name: 'scale1',
  driver: 'serial',
  connection: { transport: 'tcp', host: '127.0.0.1' },
  request: 'SI\\r\\n',
  tags,
  ...extra,
});

/** The problems of a whole gateway config holding `devices`, as "path: message" lines. */
function problemsOf(...devices: unknown[]): string[] {
  try {
    parseConfigText(JSON.stringify({ devices }), 'test.json', {});
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${String(error)}`);
    return error.problems.map((problem) => `${formatPath(problem.path)}: ${problem.message}`);
  }
  return [];
}

describe('serial config: each mistake gets its report', () => {
  const cases: Array<[string, unknown, string[]]> = [
    [
      'a unitId its request format cannot take is found by validate, not at start',
      device({ unitId: 'A1', request: '{unitId:02d}RD\\r' }),
      ['devices[0].unitId: {unitId:02d}: "A1" is not a number (in "{unitId:02d}RD\\\\r")'],
    ],
    [
      'a quality rule on a regex tag without the status group',
      device({}, [{ name: 't', regex: '^S (?<status>[SD]) +(?<value>\\S+)', quality: { good: ['S'] } }]),
      [
        'devices[0].tags[0].quality.capture: name the status group of the regex in "capture" (e.g. "status" for (?<status>…)); without it the status would be the value itself',
      ],
    ],
    [
      'a regex that does not compile: the engine says why',
      device({}, [{ name: 't', regex: '(\\d+' }]),
      ['devices[0].tags[0].regex: invalid regular expression: /(\\d+/: Unterminated group'],
    ],
    [
      'an invalid match, reply and ack pattern',
      device({ reply: '*' }, [{ name: 't', match: '[', writable: true, command: 'T\\r', ack: '(' }]),
      [
        'devices[0].reply: invalid regular expression: /*/: Nothing to repeat',
        'devices[0].tags[0].match: invalid regular expression: /[/: Unterminated character class',
        'devices[0].tags[0].ack: invalid regular expression: /(/: Unterminated group',
      ],
    ],
    [
      'a capture that names no group of the regex',
      device({}, [{ name: 't', regex: '(?<v>\\d+) (?<unit>\\S+)', capture: 'value' }]),
      ['devices[0].tags[0].capture: the regex has no group named "value"; it has v, unit'],
    ],
    [
      'a capture named in a regex without named groups',
      device({}, [{ name: 't', regex: '(\\d+)', capture: 'value' }]),
      ['devices[0].tags[0].capture: the regex has no group named "value"'],
    ],
    [
      'a capture number beyond the groups',
      device({}, [{ name: 't', regex: '(\\d+)', capture: 2 }]),
      ['devices[0].tags[0].capture: the regex has 1 capture group(s), not 2'],
    ],
    [
      'capture without regex',
      device({}, [{ name: 't', split: ',', index: 1, capture: 1 }]),
      ['devices[0].tags[0].capture: "capture" needs "regex"'],
    ],
    [
      'split without index',
      device({}, [{ name: 't', split: ',' }]),
      ['devices[0].tags[0].index: "split" needs "index": which field (0-based)'],
    ],
    ['index without split', device({}, [{ name: 't', index: 2 }]), ['devices[0].tags[0].index: "index" needs "split" (the separator)']],
    ['length without start', device({}, [{ name: 't', length: 4 }]), ['devices[0].tags[0].length: "length" needs "start"']],
    [
      'two sources at once',
      device({}, [{ name: 't', regex: '\\d+', start: 3 }]),
      ['devices[0].tags[0].regex: use one of "regex", "split" or "start" to select the field'],
    ],
    [
      'writable without command',
      device({}, [{ name: 't', writable: true }]),
      ['devices[0].tags[0].command: a writable serial tag needs "command": the bytes that write it, e.g. "SETP {value:.1f}\\r"'],
    ],
    [
      'command without writable',
      device({}, [{ name: 't', command: 'SP {value}\\r' }]),
      ['devices[0].tags[0].writable: "command" is for writable tags: add "writable": true'],
    ],
    ['ack without command', device({}, [{ name: 't', ack: '^OK' }]), ['devices[0].tags[0].ack: "ack" needs "command"']],
    [
      'a tag neither read nor writable',
      device({}, [{ name: 't', read: false }]),
      ['devices[0].tags[0].read: a tag that is neither read nor writable does nothing; remove "read": false'],
    ],
    [
      'read-back of a command-only tag',
      device({}, [{ name: 't', read: false, writable: true, command: 'T\\r', write: { readBack: true } }]),
      ['devices[0].tags[0].write.readBack: a command-only tag ("read": false) cannot be read back'],
    ],
    [
      '{unitId} in the request without unitId',
      device({ request: '{unitId}RD\\r' }),
      ['devices[0].unitId: a request or command uses {unitId}: set the device\'s "unitId"'],
    ],
    [
      "{unitId} in a group's request or a command without unitId",
      device({ request: undefined, pollGroups: { slow: { interval: '5s', request: '{unitId:02d}RD\\r' } } }, [
        { name: 't', group: 'slow' },
        { name: 'sp', read: false, writable: true, command: '{unitId}SP{value:.1f}\\r' },
      ]),
      ['devices[0].unitId: a request or command uses {unitId}: set the device\'s "unitId"'],
    ],
    [
      'an unknown field in a request',
      device({ request: 'RD {value}\\r' }),
      ['devices[0].request: unknown template field {value}; this template may use {unitId}'],
    ],
    [
      'an unknown field in a command',
      device({}, [{ name: 't', writable: true, command: 'SP {val}\\r' }]),
      ['devices[0].tags[0].command: unknown template field {val}; this template may use {value}, {unitId}'],
    ],
    [
      'an unknown format in a command',
      device({}, [{ name: 't', writable: true, command: 'SP {value:.1q}\\r' }]),
      [
        'devices[0].tags[0].command: {value:.1q}: unknown format ".1q"; use e.g. {value:.1f}, {value:05.1f}, {value:d}, {value:04X}, {value:8s}',
      ],
    ],
    ['reply without request', device({ request: undefined, reply: '^S' }), ['devices[0].reply: "reply" needs "request"']],
    [
      'timeout on a streaming group',
      device({ request: undefined, timeout: 100 }),
      ['devices[0].timeout: "timeout" is the reply timeout of "request"; streaming groups use "staleAfter"'],
    ],
    [
      'deliver on a request group',
      device({ deliver: 'interval' }),
      ['devices[0].deliver: "deliver" and "staleAfter" are for streaming groups (without "request")'],
    ],
    [
      'staleAfter on a request poll group',
      device({ pollGroups: { fast: { interval: 100, request: 'SI\\r\\n', staleAfter: '5s' } } }, [{ name: 't', group: 'fast' }]),
      ['devices[0].pollGroups.fast.staleAfter: "deliver" and "staleAfter" are for streaming groups (without "request")'],
    ],
    [
      'bad hex',
      device({ framing: { type: 'delimiter', delimiter: { hex: '0D 0' } } }),
      ['devices[0].framing.delimiter.hex: expected pairs of hex digits, e.g. "02 52 44 03"'],
    ],
    [
      'bad hex in a request',
      device({ request: { hex: '02 zz 03' } }),
      ['devices[0].request.hex: expected pairs of hex digits, e.g. "02 52 44 03"'],
    ],
    [
      'bad escape',
      device({ framing: { type: 'delimiter', delimiter: '\\q' } }),
      ['devices[0].framing.delimiter: "\\q" is not an escape; use \\r \\n \\t \\0 \\e \\\\ or \\xHH (two hex digits)'],
    ],
    [
      'bad escape in a command',
      device({}, [{ name: 't', writable: true, command: 'SP {value}\\x0' }]),
      ['devices[0].tags[0].command: "\\x" is not an escape; use \\r \\n \\t \\0 \\e \\\\ or \\xHH (two hex digits)'],
    ],
    [
      'a character that is not one byte',
      device({ request: 'T€' }),
      ['devices[0].request: "€" is not a single byte; write it as \\xHH escapes or use {"hex": …}'],
    ],
    [
      'an empty delimiter',
      device({ framing: { type: 'delimiter', delimiter: '' } }),
      ['devices[0].framing.delimiter: must be at least 1 characters long, got ""'],
    ],
    [
      'scale on a string tag',
      device({}, [{ name: 't', type: 'string', scale: 2 }]),
      ['devices[0].tags[0].scale: scale, offset and deadband apply to numbers, not string'],
    ],
    [
      'quality without status values',
      device({}, [{ name: 't', regex: '(?<status>\\S) (?<value>\\S+)', quality: { capture: 'status' } }]),
      ['devices[0].tags[0].quality: list the status values in "good", "uncertain" and/or "bad"'],
    ],
    [
      "a quality capture the tag's regex does not have",
      device({}, [{ name: 't', regex: '(?<value>\\S+)', quality: { capture: 'status', good: ['S'] } }]),
      ['devices[0].tags[0].quality.capture: the tag\'s regex has no group "status"'],
    ],
    [
      'a framing type with a typo',
      device({ framing: { type: 'lenght', length: 3 } }),
      ['devices[0].framing.type: unknown type "lenght", expected one of delimiter, length, gap, stx-etx; did you mean "length"?'],
    ],
    [
      'an unknown checksum',
      device({ framing: { type: 'stx-etx', checksum: { type: 'crc16' } } }),
      [
        'devices[0].framing.checksum.type: got "crc16", expected one of "xor", "sum8", "lrc", "crc16-modbus", "crc16-ccitt-false", "crc16-xmodem", "crc16-kermit", "crc16-arc"',
      ],
    ],
    ['a fixed length missing', device({ framing: { type: 'length' } }), ['devices[0].framing.length: is required (expected number)']],
    [
      'several mistakes are all reported',
      device({ request: 'SI\\q' }, [
        { name: 't', regex: '(' },
        { name: 'u', split: ',' },
        { name: 'w', writable: true },
      ]),
      [
        'devices[0].request: "\\q" is not an escape; use \\r \\n \\t \\0 \\e \\\\ or \\xHH (two hex digits)',
        'devices[0].tags[0].regex: invalid regular expression: /(/: Unterminated group',
        'devices[0].tags[1].index: "split" needs "index": which field (0-based)',
        'devices[0].tags[2].command: a writable serial tag needs "command": the bytes that write it, e.g. "SETP {value:.1f}\\r"',
      ],
    ],
  ];
  for (const [title, config, expected] of cases) it(title, () => assert.deepEqual(problemsOf(config).sort(), [...expected].sort()));

  it('offset on a bool tag is reported at offset', () =>
    assert.deepEqual(problemsOf(device({}, [{ name: 't', type: 'bool', offset: 1 }])), [
      'devices[0].tags[0].offset: scale, offset and deadband apply to numbers, not bool',
    ]));
  it('deadband on a string tag is reported at deadband', () =>
    assert.deepEqual(problemsOf(device({}, [{ name: 't', type: 'string', deadband: 1 }])), [
      'devices[0].tags[0].deadband: scale, offset and deadband apply to numbers, not string',
    ]));
});

describe('serial config: a good config with every framing', () => {
  const devices = [
    device({ name: 'crlf' }),
    device({ name: 'cr', framing: { type: 'delimiter', delimiter: '\\r', maxLength: 80, encoding: 'ascii' } }),
    device({ name: 'hexdelim', framing: { type: 'delimiter', delimiter: { hex: '0D 0A 0D 0A' } } }),
    device({ name: 'etx', framing: { type: 'delimiter', delimiter: '\\x03' } }),
    device({ name: 'fixed', framing: { type: 'length', length: 16 } }, [
      { name: 'value', start: 0, length: 7 },
      { name: 'state', type: 'string', start: 14 },
    ]),
    device({ name: 'binary', request: { hex: '01 03 00 00 00 01 84 0A' }, framing: { type: 'gap', gap: '30ms', encoding: 'hex' } }, [
      { name: 'register', type: 'int32', base: 16, start: 6, length: 4 },
    ]),
    device({ name: 'stx', request: '{unitId:02d}RD', unitId: 7, framing: { type: 'stx-etx' } }),
    device({
      name: 'stxsum',
      request: 'RD',
      framing: { type: 'stx-etx', start: { hex: '02' }, end: '\\x03', checksum: { type: 'xor', format: 'hex' } },
    }),
    device({
      name: 'stxcrc',
      request: 'RD',
      framing: {
        type: 'stx-etx',
        start: '\\x02',
        end: '\\x03',
        checksum: { type: 'crc16-modbus', byteOrder: 'little', over: 'start+body+end' },
        maxLength: 256,
      },
    }),
    device(
      {
        name: 'gps',
        request: undefined,
        deliver: 'interval',
        staleAfter: '10s',
        pollGroups: { status: { interval: '5s', request: '$PMTK605*31\\r\\n', reply: '^\\$PMTK705' } },
      },
      [
        { name: 'latitude', match: '^\\$GPGGA', split: ',', index: 2, quality: { index: 6, good: ['1', '2'], bad: ['0'] } },
        { name: 'fix', type: 'bool', match: '^\\$GPGGA', split: ',', index: 6, trueValues: ['1', '2'], falseValues: ['0'] },
        { name: 'release', type: 'string', group: 'status', split: ',', index: 1 },
      ],
    ),
    device({ name: 'setpoint' }, [
      {
        name: 'weight',
        regex: '^S (?<status>\\S)\\s+(?<value>\\S+) kg$',
        quality: { capture: 'status', good: ['S'], uncertain: ['D'] },
        unit: 'kg',
      },
      { name: 'tare', read: false, writable: true, command: 'T\\r\\n', ack: '^T S' },
      { name: 'target', writable: true, command: 'SP {value:07.3f}\\r\\n', regex: '^SP (\\S+)', match: '^SP ' },
    ]),
  ];

  it('validates', () => assert.deepEqual(problemsOf(...devices), []));

  it('fills in the defaults of each framing', () => {
    const config = parseConfigText(JSON.stringify({ devices }), 'test.json', {});
    const framing = Object.fromEntries(config.devices.map((parsed) => [parsed.name, (parsed as { framing?: unknown }).framing]));
    assert.deepEqual(framing.crlf, { type: 'delimiter', delimiter: '\r\n', maxLength: 1024, encoding: 'latin1' });
    assert.deepEqual(framing.cr, { type: 'delimiter', delimiter: '\\r', maxLength: 80, encoding: 'ascii' });
    assert.deepEqual(framing.fixed, { type: 'length', length: 16, maxLength: 1024, encoding: 'latin1' });
    assert.deepEqual(framing.binary, { type: 'gap', gap: 30, maxLength: 1024, encoding: 'hex' });
    assert.deepEqual(framing.stx, { type: 'stx-etx', start: '\\x02', end: '\\x03', maxLength: 1024, encoding: 'latin1' });
    assert.deepEqual(framing.stxsum, {
      type: 'stx-etx',
      start: { hex: '02' },
      end: '\\x03',
      checksum: { type: 'xor', format: 'hex', byteOrder: 'big', over: 'body+end' },
      maxLength: 1024,
      encoding: 'latin1',
    });
    assert.deepEqual(framing.stxcrc, {
      type: 'stx-etx',
      start: '\\x02',
      end: '\\x03',
      checksum: { type: 'crc16-modbus', format: 'binary', byteOrder: 'little', over: 'start+body+end' },
      maxLength: 256,
      encoding: 'latin1',
    });
  });

  it('takes durations of streaming groups in ms', () => {
    const config = parseConfigText(JSON.stringify({ devices }), 'test.json', {});
    const gps = config.devices.find((parsed) => parsed.name === 'gps') as unknown as { staleAfter: number; deliver: string };
    assert.equal(gps.staleAfter, 10_000);
    assert.equal(gps.deliver, 'interval');
  });
});
