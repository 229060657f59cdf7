// Bytes written in a config file, and bytes shown back to people.
//
// Requests, delimiters and commands are text with C-style escapes (JSON already turns "\r" into a
// carriage return; "\\x02" reaches us as the four characters \x02 and means STX), or hex bytes.
// Templates put the device's fields and a written value into them: "{unitId}RD", "SETP {value:.1f}\r".

export type BytesSpec = string | { hex: string };

const NAMED_ESCAPES: Record<string, number> = { r: 0x0d, n: 0x0a, t: 0x09, '0': 0x00, e: 0x1b, '\\': 0x5c };
const ESCAPE = /\\(x[0-9A-Fa-f]{2}|[rnt0e\\])/g;

/** "\\x02RD\\x03" → bytes 02 52 44 03; characters above U+00FF are refused by the schema, so latin1 is exact. */
export function textBytes(text: string): Buffer {
  return Buffer.from(unescaped(text), 'latin1');
}

/** The escapes of `text` replaced by the characters U+0000…U+00FF of their bytes. */
function unescaped(text: string): string {
  return text.replace(ESCAPE, (_, code: string) =>
    String.fromCharCode(code.startsWith('x') ? Number.parseInt(code.slice(1), 16) : NAMED_ESCAPES[code]!),
  );
}

/** Where a text spec is not valid: a backslash that starts no escape, or a character that is not one byte. */
export function textProblem(text: string): string | undefined {
  const rest = text.replace(ESCAPE, '');
  const lone = rest.indexOf('\\');
  if (lone >= 0) return `"\\${rest[lone + 1] ?? ''}" is not an escape; use \\r \\n \\t \\0 \\e \\\\ or \\xHH (two hex digits)`;
  for (const character of rest) {
    if (character.charCodeAt(0) > 0xff) return `"${character}" is not a single byte; write it as \\xHH escapes or use {"hex": …}`;
  }
  return undefined;
}

/** "01 03 00 0A" or "0103000A" → bytes. */
export function hexBytesOf(hex: string): Buffer {
  return Buffer.from(hex.replace(/[\s:]/g, ''), 'hex');
}

export function hexProblem(hex: string): string | undefined {
  const digits = hex.replace(/[\s:]/g, '');
  if (!/^(?:[0-9A-Fa-f]{2})+$/.test(digits)) return 'expected pairs of hex digits, e.g. "02 52 44 03"';
  return undefined;
}

export function specBytes(spec: BytesSpec): Buffer {
  return typeof spec === 'string' ? textBytes(spec) : hexBytesOf(spec.hex);
}

/** A received frame for a log line or a tag's reason: printable ASCII as is, the rest escaped, cut at `max` characters. */
export function showBytes(bytes: Uint8Array, max = 80): string {
  let out = '';
  for (const byte of bytes) {
    const shown =
      byte === 0x0d
        ? '\\r'
        : byte === 0x0a
          ? '\\n'
          : byte === 0x09
            ? '\\t'
            : byte === 0x5c
              ? '\\\\'
              : byte === 0x22
                ? '\\"'
                : byte >= 0x20 && byte < 0x7f
                  ? String.fromCharCode(byte)
                  : `\\x${byte.toString(16).padStart(2, '0')}`;
    if (out.length + shown.length > max) return `"${out}"… (${bytes.length} bytes)`;
    out += shown;
  }
  return `"${out}"`;
}

// ---- templates -------------------------------------------------------------------------------

/**
 * A compiled template: literal bytes and fields. A field is {name} or {name:spec} with a
 * printf-like spec: ".2f" (fixed decimals), "05.1f" (zero-padded width), "d", "04d", "x", "02X",
 * "8s" (right-aligned in 8), "-8s" (left-aligned). "{{" and "}}" are literal braces.
 */
export interface Template {
  readonly fields: readonly string[];
  render(values: Readonly<Record<string, string | number | bigint | boolean>>): Buffer;
}

const FIELD = /\{\{|\}\}|\{([A-Za-z][A-Za-z0-9_]*)(?::([^{}]*))?\}/g;
const SPEC = /^(-)?(0)?(\d+)?(?:\.(\d+))?([dfxXs])?$/;

/** Compiles a template; throws with what is wrong (unknown spec). */
export function compileTemplate(spec: BytesSpec): Template {
  if (typeof spec !== 'string') {
    const bytes = hexBytesOf(spec.hex);
    return { fields: [], render: () => bytes };
  }
  type Part = { literal: string } | { field: string; format: (value: string | number | bigint | boolean) => string };
  const parts: Part[] = [];
  let last = 0;
  // Escapes are replaced in the literal text only, here: a value is sent as it is (a "\\r" in a
  // written string is a backslash and an r, not a carriage return).
  for (const match of spec.matchAll(FIELD)) {
    parts.push({ literal: unescaped(spec.slice(last, match.index)) });
    last = match.index + match[0].length;
    if (match[0] === '{{' || match[0] === '}}') {
      parts.push({ literal: match[0][0]! });
      continue;
    }
    parts.push({ field: match[1]!, format: compileSpec(match[2], match[0]) });
  }
  parts.push({ literal: unescaped(spec.slice(last)) });
  const fields = parts.flatMap((part) => ('field' in part ? [part.field] : []));
  return {
    fields,
    render(values) {
      let text = '';
      for (const part of parts) {
        if ('literal' in part) text += part.literal;
        else {
          const value = values[part.field];
          if (value === undefined) throw new Error(`template field {${part.field}} has no value`);
          const formatted = part.format(value);
          // latin1 would silently keep only the low byte of a wider character ("€" → 0xAC).
          for (const character of formatted)
            if (character.charCodeAt(0) > 0xff) throw new Error(`template field {${part.field}}: "${character}" is not a single byte`);
          text += formatted;
        }
      }
      return Buffer.from(text, 'latin1');
    },
  };
}

function compileSpec(spec: string | undefined, whole: string): (value: string | number | bigint | boolean) => string {
  if (spec === undefined || spec === '') return (value) => (typeof value === 'boolean' ? (value ? '1' : '0') : String(value));
  const parsed = SPEC.exec(spec);
  if (!parsed)
    throw new Error(`${whole}: unknown format "${spec}"; use e.g. {value:.1f}, {value:05.1f}, {value:d}, {value:04X}, {value:8s}`);
  const [, left, zero, widthText, precisionText, kind = 's'] = parsed;
  const width = widthText === undefined ? 0 : Number(widthText);
  const precision = precisionText === undefined ? undefined : Number(precisionText);
  const pad = (text: string): string => {
    if (text.length >= width) return text;
    if (left) return text.padEnd(width, ' ');
    if (zero && kind !== 's') {
      const sign = text.startsWith('-') || text.startsWith('+') ? text[0]! : '';
      return sign + text.slice(sign.length).padStart(width - sign.length, '0');
    }
    return text.padStart(width, ' ');
  };
  return (value) => {
    const number =
      typeof value === 'boolean' ? (value ? 1 : 0) : typeof value === 'string' ? (value.trim() === '' ? Number.NaN : Number(value)) : value;
    // A text that is no number would otherwise go out as "NaN" (d, f) or throw a RangeError of BigInt (x).
    if (kind !== 's' && typeof number === 'number' && !Number.isFinite(number))
      throw new Error(`${whole}: ${JSON.stringify(String(value))} is not a number`);
    switch (kind) {
      case 'f':
        return pad(Number(number).toFixed(precision ?? 6));
      case 'd':
        return pad(typeof number === 'bigint' ? number.toString() : Math.round(Number(number)).toString());
      case 'x':
      case 'X': {
        const text = (typeof number === 'bigint' ? number : BigInt(Math.round(Number(number)))).toString(16);
        return pad(kind === 'X' ? text.toUpperCase() : text);
      }
      default:
        return pad(typeof value === 'boolean' ? (value ? '1' : '0') : String(value));
    }
  };
}
