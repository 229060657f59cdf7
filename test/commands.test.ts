// Command payloads: what a /set message may carry and how it becomes a value (table-driven).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseCommandPayload } from '../src/commands.js';
import type { TagValue } from '../src/driver.js';

describe('command payloads', () => {
  const accepted: Array<[string, TagValue]> = [
    ['42', 42],
    [' -1.5 ', -1.5],
    ['true', true],
    ['{"value": false}', false],
    ['{"value": 7, "comment": "extra fields are ignored"}', 7],
    ['"quoted text"', 'quoted text'],
    ['plain text', 'plain text'],
    ['[1, 2, 3]', [1, 2, 3]],
    ['{"value": [true, false]}', [true, false]],
    // Beyond 2^53 a JSON number would be rounded: 64-bit integers stay exact.
    ['9007199254740993', 9007199254740993n],
    ['-9223372036854775808', -9223372036854775808n],
    ['{"value": 18446744073709551615}', 18446744073709551615n],
    ['{"value": "18446744073709551615"}', '18446744073709551615'],
  ];
  for (const [payload, value] of accepted) {
    it(`accepts ${payload.trim()}`, () => assert.deepEqual(parseCommandPayload(Buffer.from(payload)), value));
  }

  const refused: Array<[string, RegExp]> = [
    ['', /empty payload/],
    ['{"value": 1', /malformed JSON/],
    ['[1, 2', /malformed JSON/],
    ['{"val": 1}', /needs a "value" field/],
    ['{"value": {"nested": 1}}', /unsupported value/],
    ['null', /unsupported value null/],
    ['{"value": [1, null]}', /unsupported value null/],
    ['x'.repeat(70_000), /too long for a command/],
  ];
  for (const [payload, reason] of refused) {
    it(`refuses ${payload.length > 40 ? `${payload.length} bytes` : JSON.stringify(payload)}`, () => assert.throws(() => parseCommandPayload(Buffer.from(payload)), reason));
  }
});
