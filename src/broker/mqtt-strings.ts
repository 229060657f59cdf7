// MQTT's UTF-8 strings (topic names and filters, the will topic, client id, user name, MQTT 5
// string properties) must be well-formed UTF-8 without U+0000: a packet with one that is not
// closes the connection ([MQTT-1.5.3-1], [MQTT-1.5.3-2]; MQTT 5: [MQTT-1.5.4-1], [MQTT-1.5.4-2]).
//
// mqtt-packet 9 decodes every string with Buffer#toString('utf8'), which turns ill-formed bytes
// into U+FFFD replacement characters and keeps no raw bytes in the packet it emits; a check on
// the socket's bytes would need a second MQTT parser. So the parser's own string reader is
// wrapped, per parser instance: it still sees the raw bytes. A decoded string without U+FFFD came
// from well-formed UTF-8 (the fast path, no copy); one with U+FFFD is checked against its bytes,
// so a client that really sends U+FFFD (EF BF BD) is not refused.
//
// This relies on mqtt-packet 9.0.2's Parser internals (parser.js): `_parseString()` reads one
// string at `_pos` (2-byte length, then the bytes) from the BufferList `_list` and returns null
// when it can't, which makes its callers emit an error; `_emitError(error)` sets `error` and
// emits 'error', after which the parser emits no packet for what it was parsing. The tests that
// fail when this breaks: broker-hardening ("invalid UTF-8 …").
import { isUtf8 } from 'node:buffer';

/** The fields of mqtt-packet's Parser (parser.js) that are not in its types. */
interface ParserInternals {
  _list: { slice(start: number, end: number): Buffer };
  _pos: number;
  error: Error | null;
  _parseString(): string | null;
  _emitError(error: Error): void;
}

function isParser(parser: unknown): parser is ParserInternals {
  const candidate = parser as Partial<ParserInternals> | null | undefined;
  return typeof candidate?._parseString === 'function' && typeof candidate._emitError === 'function';
}

/**
 * Makes this mqtt-packet parser fail (emit 'error', no packet) on a string that is not
 * well-formed UTF-8 or contains U+0000. False when `parser` is not an mqtt-packet Parser.
 */
export function refuseIllFormedStrings(parser: unknown): boolean {
  if (!isParser(parser)) return false;
  const parseString = parser._parseString.bind(parser);
  const emitError = parser._emitError.bind(parser);
  // The caller of _parseString emits its own error on null ("Cannot parse topic"): one is enough.
  parser._emitError = (error: Error) => {
    if (parser.error === null) emitError(error);
  };
  parser._parseString = () => {
    const start = parser._pos;
    const result = parseString();
    if (result === null) return null;
    const illFormed = result.includes('\uFFFD') && !isUtf8(parser._list.slice(start + 2, parser._pos));
    if (!illFormed && !result.includes('\u0000')) return result;
    parser._emitError(new Error(illFormed ? 'ill-formed UTF-8 in a string [MQTT-1.5.3-1]' : 'U+0000 in a string [MQTT-1.5.3-2]'));
    return null;
  };
  return true;
}
