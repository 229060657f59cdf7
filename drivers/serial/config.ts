// Config schema of the serial-line driver: instruments that speak text or simple binary frames
// (scales, analyzers, barcode readers, NMEA sources, legacy ASCII meters) on a local serial port or
// behind a serial device server (raw TCP). Kept free of I/O so the core validates configs without it.
import { z } from 'zod';
import { baseDeviceFields, baseTagFields, duration, name } from '../../src/config/common.js';
import { CHECKSUMS } from './checksum.js';
import { compileTemplate, hexProblem, type Template, textProblem } from './text.js';

export const SERIAL_TYPES = ['float64', 'int32', 'int64', 'string', 'bool'] as const;
export type SerialType = (typeof SERIAL_TYPES)[number];

/** Text with escapes (\r \n \t \0 \e \\ \xHH) or {"hex": "02 41 03"}. */
const bytesSpec = (description: string) =>
  z
    .union([
      z
        .string()
        .min(1)
        .superRefine((text, ctx) => {
          const problem = textProblem(text);
          if (problem) ctx.addIssue({ code: 'custom', message: problem });
        }),
      z.strictObject({
        hex: z.string().superRefine((hex, ctx) => {
          const problem = hexProblem(hex);
          if (problem) ctx.addIssue({ code: 'custom', message: problem });
        }),
      }),
    ])
    .meta({ description: `${description} Text with escapes (\\r \\n \\t \\0 \\e \\\\ \\xHH), or {"hex": "02 52 44 03"}.` });

/** A template: bytes with fields such as {unitId} or {value:.1f}. */
const templateSpec = (description: string, fields: readonly string[]) =>
  bytesSpec(
    `${description} Fields: ${fields.map((field) => `{${field}}`).join(', ')}, with formats such as {value:.1f}, {value:04d}, {value:02X}.`,
  ).superRefine((spec, ctx) => {
    try {
      const template = compileTemplate(spec);
      const unknown = template.fields.filter((field) => !fields.includes(field));
      if (unknown.length > 0)
        ctx.addIssue({
          code: 'custom',
          message: `unknown template field {${unknown[0]}}; this template may use ${fields.map((f) => `{${f}}`).join(', ')}`,
        });
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: (error as Error).message });
    }
  });

/** A regular expression (JavaScript syntax), checked at load with the engine's own error message. */
const regex = (description: string) =>
  z
    .string()
    .min(1)
    .superRefine((source, ctx) => {
      try {
        new RegExp(source);
      } catch (error) {
        ctx.addIssue({
          code: 'custom',
          message: `invalid regular expression: ${(error as Error).message.replace(/^Invalid regular expression: /, '')}`,
        });
      }
    })
    .meta({ description: `${description} A JavaScript regular expression; in JSON a backslash is written twice ("\\\\d+").` });

/** Named capture groups and the number of groups of a (valid) regular expression. */
export function regexGroups(source: string): { names: string[]; count: number } {
  const match = new RegExp(`(?:${source})|`).exec('')!;
  return { names: Object.keys(match.groups ?? {}), count: match.length - 1 };
}

const commonConnection = {
  timeout: duration('Time a request waits for its complete reply.', 1).default(1000),
  interRequestDelay: duration('Quiet time the device needs between two requests.').default(0),
  backoffAfterTimeouts: z.number().int().min(1).default(3).meta({
    description:
      'After this many consecutive polls without an answer the device is skipped for a growing while (5 s up to 60 s), so other devices on the line keep their rate.',
  }),
};

const serialConnection = z.strictObject({
  transport: z.literal('serial').meta({ description: 'A local serial port (RS-232, RS-485 adapter, USB).' }),
  path: z.string().min(1).meta({ description: 'Serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/….' }),
  baudRate: z.number().int().positive().default(9600),
  dataBits: z.literal([5, 6, 7, 8]).default(8),
  parity: z.enum(['none', 'even', 'odd']).default('none'),
  stopBits: z.literal([1, 2]).default(1),
  rtscts: z.boolean().default(false).meta({ description: 'RTS/CTS hardware flow control.' }),
  xonxoff: z.boolean().default(false).meta({ description: 'XON/XOFF software flow control (many balances use it by default).' }),
  ...commonConnection,
});

const tcpConnection = z.strictObject({
  transport: z.literal('tcp').meta({
    description: 'Raw TCP to a serial device server (Moxa NPort "TCP server" mode, USR, Lantronix): the bytes of the line, unchanged.',
  }),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(4001),
  ...commonConnection,
});

const framingCommon = {
  maxLength: z.number().int().min(1).max(65536).default(1024).meta({
    description:
      'Longest frame in bytes. A longer one (a line that never sends its delimiter) is dropped and reported, so memory stays bounded.',
  }),
  encoding: z.enum(['latin1', 'ascii', 'utf8', 'hex']).default('latin1').meta({
    description:
      'How frame bytes become the text that tags parse: latin1 (default, one character per byte), ascii (7-bit: the high bit of each byte is dropped, for 7-data-bit lines), utf8, or hex (two uppercase hex digits per byte, for binary frames).',
  }),
};

const checksumSchema = z.strictObject({
  type: z.enum(CHECKSUMS).meta({
    description:
      'xor (BCC), sum8 (sum mod 256), lrc (two\'s complement of sum8), crc16-modbus, crc16-ccitt-false (0x1021, init 0xFFFF), crc16-xmodem (0x1021, init 0), crc16-kermit, crc16-arc (0x8005 reflected, "CRC-16/IBM").',
  }),
  format: z
    .enum(['binary', 'hex'])
    .default('binary')
    .meta({ description: 'binary: the raw checksum bytes; hex: as ASCII hex digits (2 per byte).' }),
  byteOrder: z
    .enum(['big', 'little'])
    .default('big')
    .meta({ description: 'Byte order of a binary CRC-16 (crc16-modbus is usually "little").' }),
  over: z.enum(['body', 'body+end', 'start+body+end']).default('body+end').meta({
    description:
      'The bytes the checksum covers: the body, the body and the end byte (default, as most BCC protocols), or everything from the start byte.',
  }),
});

export const framingSchema = z
  .discriminatedUnion('type', [
    z.strictObject({
      type: z.literal('delimiter'),
      delimiter: bytesSpec('The bytes that end every frame (not part of it).').default('\r\n'),
      ...framingCommon,
    }),
    z.strictObject({
      type: z.literal('length'),
      length: z.number().int().min(1).max(65536).meta({ description: 'Every frame is this many bytes.' }),
      ...framingCommon,
    }),
    z.strictObject({
      type: z.literal('gap'),
      gap: duration('A frame ends when the line stays silent this long (inter-byte timeout).', 1),
      ...framingCommon,
    }),
    z.strictObject({
      type: z.literal('stx-etx'),
      start: bytesSpec('The bytes that start a frame.').default('\\x02'),
      end: bytesSpec('The bytes that end a frame (a checksum may follow).').default('\\x03'),
      checksum: checksumSchema
        .optional()
        .meta({ description: 'A checksum after the end byte, verified on every frame and added to requests.' }),
      ...framingCommon,
    }),
  ])
  .meta({ description: 'Where one frame ends in the bytes of the line.' });

/** A group's exchange: a request sent every interval and its reply, or frames the device sends by itself. */
const groupFields = {
  request: templateSpec(
    'Sent every interval; its reply is parsed into the tags of the group. Without a request the group listens to frames the device sends by itself (streaming).',
    ['unitId'],
  ).optional(),
  reply: regex(
    'Which frame is the reply to the request: frames that do not match it are taken as streamed frames. Default: the first frame.',
  ).optional(),
  timeout: duration("This request's reply timeout (default: connection.timeout).", 1).optional(),
  deliver: z.enum(['frame', 'interval']).optional().meta({
    description:
      'Streaming groups: "frame" (default) reports each frame as it arrives; "interval" reports the latest value of each tag once per interval.',
  }),
  staleAfter: duration(
    'Streaming groups: the tags go bad when no frame for them came for this long. Default: 3 intervals, at least 5 s.',
    1,
  ).optional(),
};

const fieldSelector = {
  regex: regex('Parse the frame with this pattern; the value is its capture group "value", or "capture".').optional(),
  capture: z
    .union([z.string().min(1), z.number().int().min(0)])
    .optional()
    .meta({
      description:
        'With regex: the named group (or group number, 0 = the whole match) that holds the value. Default "value" if the pattern has it, else group 1.',
    }),
  split: z
    .string()
    .min(1)
    .optional()
    .meta({ description: 'Split the frame at this separator (e.g. "," for NMEA) and take field "index".' }),
  index: z.number().int().min(0).optional().meta({ description: 'With split: the 0-based field.' }),
  start: z.number().int().min(0).optional().meta({ description: 'Fixed-width field: first character (0-based) of the frame text.' }),
  length: z
    .number()
    .int()
    .min(1)
    .optional()
    .meta({ description: 'With start: the field width in characters (default: to the end of the frame).' }),
};

const qualitySchema = z
  .strictObject({
    ...fieldSelector,
    good: z.array(z.string()).default([]).meta({ description: 'Status field values that mean good quality.' }),
    uncertain: z
      .array(z.string())
      .default([])
      .meta({ description: 'Status field values that mean uncertain (e.g. "D", a dynamic weight).' }),
    bad: z
      .array(z.string())
      .default([])
      .meta({ description: 'Status field values that mean bad; any value not listed anywhere is bad too.' }),
  })
  .meta({
    description:
      'Quality from a status field of the same frame. Its selector (regex/capture, split/index, start/length) defaults to the tag\'s: {"capture": "status", "good": ["S"], "uncertain": ["D"]}.',
  });

const tagSchema = z.strictObject({
  ...baseTagFields,
  type: z.enum(SERIAL_TYPES).default('float64').meta({
    description: 'float64 (default), int32, int64 (exact, published as a JSON number when safe), string (the field text), bool.',
  }),
  match: regex('Frames this tag reads: others are not for it (a device that sends several kinds of frame).').optional(),
  ...fieldSelector,
  base: z.literal([2, 8, 10, 16]).default(10).meta({ description: 'Radix of integer fields ("1A3F" with 16).' }),
  decimal: z.enum(['.', ',']).default('.').meta({ description: 'Decimal separator of number fields.' }),
  trueValues: z
    .array(z.string())
    .optional()
    .meta({ description: 'bool: field values that mean true. Default 1, true, on, yes (any case).' }),
  falseValues: z
    .array(z.string())
    .optional()
    .meta({ description: 'bool: field values that mean false. Default 0, false, off, no (any case).' }),
  quality: qualitySchema.optional(),
  read: z.boolean().default(true).meta({ description: 'false for a command-only tag (e.g. tare): written, never read, never published.' }),
  command: templateSpec('Writable tags: sent to write a value.', ['value', 'unitId']).optional(),
  ack: regex(
    'Writable tags: the reply frame that acknowledges a write. Without it the write is done once the command has left the port.',
  ).optional(),
  nak: regex(
    'Writable tags with ack: a reply frame that refuses the write (e.g. "^ES$"). Any other frame fails the write too; on a device that streams, frames matching neither are streamed frames.',
  ).optional(),
});

const deviceSchema = z.strictObject({
  ...baseDeviceFields,
  driver: z.literal('serial'),
  connection: z.discriminatedUnion('transport', [serialConnection, tcpConnection]),
  framing: framingSchema.default({ type: 'delimiter', delimiter: '\r\n', maxLength: 1024, encoding: 'latin1' }),
  unitId: z
    .union([z.string(), z.number().int()])
    .optional()
    .meta({ description: 'The device address on a multi-drop line, for {unitId} in requests and commands.' }),
  ...groupFields,
  pollGroups: z
    .record(
      name('Poll group').refine((key) => key !== 'default', {
        message: '"default" is the group of tags without one; it polls at pollInterval',
      }),
      z.strictObject({ interval: duration('Interval of this group.', 10), ...groupFields }),
    )
    .default({})
    .meta({
      description: 'Groups with their own interval and request (or streaming), e.g. {"status": {"interval": "5s", "request": "I4\\r\\n"}}.',
    }),
  tags: z.array(tagSchema).min(1),
});

export const serialDevice = deviceSchema.superRefine((device, ctx) => {
  const unitIdUsed = [
    device.request,
    ...Object.values(device.pollGroups).map((group) => group.request),
    ...device.tags.map((tag) => tag.command),
  ];
  const groupOf = (group: string | undefined) => (group === undefined ? device : device.pollGroups[group]);
  device.tags.forEach((tag, index) => {
    const at = (key: string) => ['tags', index, key];
    const sources = [tag.regex !== undefined, tag.split !== undefined, tag.start !== undefined].filter(Boolean).length;
    if (sources > 1)
      ctx.addIssue({ code: 'custom', path: at('regex'), message: 'use one of "regex", "split" or "start" to select the field' });
    if (tag.capture !== undefined && tag.regex === undefined)
      ctx.addIssue({ code: 'custom', path: at('capture'), message: '"capture" needs "regex"' });
    if (tag.index !== undefined && tag.split === undefined)
      ctx.addIssue({ code: 'custom', path: at('index'), message: '"index" needs "split" (the separator)' });
    if (tag.split !== undefined && tag.index === undefined)
      ctx.addIssue({ code: 'custom', path: at('index'), message: '"split" needs "index": which field (0-based)' });
    if (tag.length !== undefined && tag.start === undefined)
      ctx.addIssue({ code: 'custom', path: at('length'), message: '"length" needs "start"' });
    if (tag.regex !== undefined && isValidRegex(tag.regex)) {
      const groups = regexGroups(tag.regex);
      if (typeof tag.capture === 'string' && !groups.names.includes(tag.capture))
        ctx.addIssue({
          code: 'custom',
          path: at('capture'),
          message: `the regex has no group named "${tag.capture}"${groups.names.length > 0 ? `; it has ${groups.names.join(', ')}` : ''}`,
        });
      if (typeof tag.capture === 'number' && tag.capture > groups.count)
        ctx.addIssue({
          code: 'custom',
          path: at('capture'),
          message: `the regex has ${groups.count} capture group(s), not ${tag.capture}`,
        });
    }
    const quality = tag.quality;
    if (quality) {
      if (quality.capture !== undefined && quality.regex === undefined && tag.regex !== undefined && isValidRegex(tag.regex)) {
        const { names, count } = regexGroups(tag.regex);
        if (typeof quality.capture === 'string' ? !names.includes(quality.capture) : quality.capture > count)
          ctx.addIssue({
            code: 'custom',
            path: ['tags', index, 'quality', 'capture'],
            message: `the tag's regex has no group ${JSON.stringify(quality.capture)}`,
          });
      }
      if (quality.good.length + quality.uncertain.length + quality.bad.length === 0)
        ctx.addIssue({
          code: 'custom',
          path: ['tags', index, 'quality'],
          message: 'list the status values in "good", "uncertain" and/or "bad"',
        });
    }
    if (tag.type === 'bool' || tag.type === 'string') {
      const numeric = (['scale', 'offset', 'deadband'] as const).find((key) => tag[key] !== undefined);
      if (numeric)
        ctx.addIssue({ code: 'custom', path: at(numeric), message: `scale, offset and deadband apply to numbers, not ${tag.type}` });
    }
    if (
      quality &&
      quality.capture === undefined &&
      quality.regex === undefined &&
      quality.split === undefined &&
      quality.start === undefined &&
      tag.regex !== undefined
    )
      ctx.addIssue({
        code: 'custom',
        path: ['tags', index, 'quality', 'capture'],
        message:
          'name the status group of the regex in "capture" (e.g. "status" for (?<status>…)); without it the status would be the value itself',
      });
    if (tag.writable && tag.command === undefined)
      ctx.addIssue({
        code: 'custom',
        path: at('command'),
        message: 'a writable serial tag needs "command": the bytes that write it, e.g. "SETP {value:.1f}\\r"',
      });
    if (!tag.writable && tag.command !== undefined)
      ctx.addIssue({ code: 'custom', path: at('writable'), message: '"command" is for writable tags: add "writable": true' });
    if (tag.writable && tag.command !== undefined) {
      // Rendered now with a value of the tag's type, so a format it cannot take ("ON" in {value:d}) is found by validate.
      const samples: (string | number | boolean)[] =
        tag.type === 'string'
          ? ['x']
          : tag.type === 'bool'
            ? [tag.trueValues?.[0] ?? true, tag.falseValues?.[0] ?? false]
            : tag.type === 'float64'
              ? [1.5]
              : [1];
      // Unknown fields and formats are reported by the command's own check.
      const template = compileQuietlyTemplate(tag.command);
      if (template?.fields.every((field) => field === 'value' || field === 'unitId')) {
        try {
          for (const value of samples) template.render({ value, unitId: device.unitId ?? 1 });
        } catch (error) {
          ctx.addIssue({
            code: 'custom',
            path: at('command'),
            message: `${(error as Error).message}: a ${tag.type} tag's value cannot fill this command`,
          });
        }
      }
    }
    if (tag.nak !== undefined && tag.ack === undefined) ctx.addIssue({ code: 'custom', path: at('nak'), message: '"nak" needs "ack"' });
    if (tag.ack !== undefined && tag.command === undefined)
      ctx.addIssue({ code: 'custom', path: at('ack'), message: '"ack" needs "command"' });
    if (!tag.read && !tag.writable)
      ctx.addIssue({
        code: 'custom',
        path: at('read'),
        message: 'a tag that is neither read nor writable does nothing; remove "read": false',
      });
    if (!tag.read && tag.write?.readBack)
      ctx.addIssue({
        code: 'custom',
        path: ['tags', index, 'write', 'readBack'],
        message: 'a command-only tag ("read": false) cannot be read back',
      });
    if (tag.read && tag.group !== undefined && groupOf(tag.group) === undefined) return; // reported by the core (unknown poll group)
  });
  const usesUnitId = unitIdUsed.some((spec) => spec !== undefined && compileQuietlyTemplate(spec)?.fields.includes('unitId') === true);
  if (usesUnitId && device.unitId !== undefined) {
    // Rendered now, so a unitId its formats cannot take ("A1" in {unitId:02d}) is found by validate, not at start.
    for (const spec of unitIdUsed) {
      if (spec === undefined) continue;
      try {
        const template = compileTemplate(spec);
        if (template.fields.includes('value')) continue; // commands: rendered with each written value
        template.render({ unitId: device.unitId });
      } catch (error) {
        ctx.addIssue({ code: 'custom', path: ['unitId'], message: `${(error as Error).message} (in ${JSON.stringify(spec)})` });
        break;
      }
    }
  }
  if (usesUnitId && device.unitId === undefined)
    ctx.addIssue({ code: 'custom', path: ['unitId'], message: 'a request or command uses {unitId}: set the device\'s "unitId"' });
  const groups: [
    string,
    { request?: unknown; reply?: unknown; deliver?: unknown; staleAfter?: unknown; timeout?: unknown },
    (string | number)[],
  ][] = [
    ['default', device, []],
    ...Object.entries(device.pollGroups).map(([key, group]): [string, typeof group, (string | number)[]] => [
      key,
      group,
      ['pollGroups', key],
    ]),
  ];
  const read = new Set(device.tags.filter((tag) => tag.read).map((tag) => tag.group ?? 'default'));
  const streaming = groups.find(([key, group]) => read.has(key) && group.request === undefined)?.[0];
  for (const [key, group, path] of groups) {
    if (streaming !== undefined && read.has(key) && group.request !== undefined && group.reply === undefined)
      ctx.addIssue({
        code: 'custom',
        path: [...path, 'request'],
        message: `this device also streams (group "${streaming}"): give the request a "reply" pattern that tells its reply from the streamed frames, e.g. "^I4 "`,
      });
    if (group.request === undefined && group.reply !== undefined)
      ctx.addIssue({ code: 'custom', path: [...path, 'reply'], message: '"reply" needs "request"' });
    if (group.request === undefined && group.timeout !== undefined)
      ctx.addIssue({
        code: 'custom',
        path: [...path, 'timeout'],
        message: '"timeout" is the reply timeout of "request"; streaming groups use "staleAfter"',
      });
    if (group.request !== undefined && (group.deliver !== undefined || group.staleAfter !== undefined))
      ctx.addIssue({
        code: 'custom',
        path: [...path, group.deliver !== undefined ? 'deliver' : 'staleAfter'],
        message: '"deliver" and "staleAfter" are for streaming groups (without "request")',
      });
  }
});

function isValidRegex(source: string): boolean {
  try {
    new RegExp(source);
    return true;
  } catch {
    return false;
  }
}

/** The compiled template, or undefined when it does not compile (its own check reports why). */
function compileQuietlyTemplate(spec: string | { hex: string }): Template | undefined {
  try {
    return compileTemplate(spec);
  } catch {
    return undefined;
  }
}

export type SerialDeviceConfig = z.output<typeof serialDevice>;
export type SerialTag = SerialDeviceConfig['tags'][number];
export type SerialConnection = SerialDeviceConfig['connection'];
export type FramingConfig = SerialDeviceConfig['framing'];
/** One group's exchange settings (the device's own fields for the default group). */
export type SerialGroupConfig = Pick<SerialDeviceConfig, 'request' | 'reply' | 'timeout' | 'deliver' | 'staleAfter'>;
