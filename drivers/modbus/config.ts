// Config schema of the Modbus driver (TCP, RTU on serial lines, RTU framing over TCP).
// Kept free of protocol code so the core can validate configs without loading the driver.
import { z } from 'zod';
import { baseDeviceFields, baseTagFields, duration } from '../../src/config/common.js';
import { parseConventionalAddress, type ModbusAddress, type ModbusArea } from './address.js';

export const MODBUS_TYPES = ['bool', 'int16', 'uint16', 'int32', 'uint32', 'int64', 'uint64', 'float32', 'float64', 'string'] as const;
export type ModbusType = (typeof MODBUS_TYPES)[number];

export const BYTE_ORDERS = ['ABCD', 'CDAB', 'BADC', 'DCBA'] as const;
export type ByteOrder = (typeof BYTE_ORDERS)[number];

const byteOrder = z.enum(BYTE_ORDERS).meta({
  description:
    'Byte/word order of multi-register values, A = most significant byte. ABCD: big-endian (Modbus standard, Siemens, Schneider M340). CDAB: word-swapped (many meters, Modicon/Wago 32-bit floats). BADC: byte-swapped words. DCBA: little-endian.',
});

const tagSchema = z
  .strictObject({
    ...baseTagFields,
    area: z.enum(['coil', 'discrete', 'input', 'holding']).optional().meta({
      description: 'Register area when address is a 0-based number: coil (FC1), discrete (FC2), input (FC4), holding (FC3).',
    }),
    address: z.union([z.number().int().min(0).max(65535), z.string()]).meta({
      description:
        'Either a 0-based wire address (number, with "area"), or conventional 1-based notation as a string: "40001" = holding 0, "30001" = input 0, "00001" = coil 0, "10001" = discrete 0, "400001" six-digit form, "40010.3" = bit 3 of holding 9.',
    }),
    bit: z.number().int().min(0).max(15).optional().meta({ description: 'Bit inside a register (0 = least significant), for bool tags.' }),
    type: z.enum(MODBUS_TYPES).optional().meta({
      description: 'Data type. Default: bool for coils, discrete inputs and register bits; uint16 otherwise.',
    }),
    length: z.number().int().min(1).max(125).optional().meta({ description: 'For type string: number of registers (2 characters each).' }),
    encoding: z.enum(['latin1', 'utf8', 'ascii']).optional().meta({
      description:
        'Character encoding of a string tag. Default latin1: every byte is one character, nothing is replaced. utf8 for devices that store UTF-8 text.',
    }),
    count: z
      .number()
      .int()
      .min(1)
      .max(2000)
      .optional()
      .meta({ description: 'Read a fixed-length array of this many elements; the value is a JSON array.' }),
    byteOrder: byteOrder.optional().meta({ description: 'Overrides the device byteOrder for this tag.' }),
  })
  .superRefine((tag, ctx) => {
    if (typeof tag.address === 'number' && tag.area === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['area'],
        message:
          'a numeric (0-based) address needs "area": one of coil, discrete, input, holding; or write the address in conventional notation such as "40001"',
      });
    }
    if (typeof tag.address === 'string') {
      const parsed = parseConventionalAddress(tag.address);
      if (typeof parsed === 'string') ctx.addIssue({ code: 'custom', path: ['address'], message: parsed });
      else if (tag.area !== undefined && tag.area !== parsed.area) {
        ctx.addIssue({
          code: 'custom',
          path: ['area'],
          message: `"${tag.address}" is in the ${parsed.area} area but area says ${tag.area}; drop "area" or fix the address`,
        });
      }
      if (typeof parsed !== 'string' && parsed.bit !== undefined && tag.bit !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['bit'], message: 'the bit is given twice (in the address and in "bit"); keep one' });
      }
    }
    const resolved = resolveAddress(tag);
    if (!resolved) return;
    const type = tag.type ?? defaultType(resolved);
    const bitArea = resolved.area === 'coil' || resolved.area === 'discrete';
    if (tag.writable && resolved.area === 'input') {
      ctx.addIssue({
        code: 'custom',
        path: ['writable'],
        message:
          'input registers (30001…) are read-only in Modbus, only coils and holding registers can be written; remove "writable": true, or address the holding register (40001…) if the device offers the value there',
      });
    }
    if (tag.writable && resolved.area === 'discrete') {
      ctx.addIssue({
        code: 'custom',
        path: ['writable'],
        message:
          'discrete inputs (10001…) are read-only in Modbus, only coils and holding registers can be written; remove "writable": true, or address a coil (00001…) if the device offers one',
      });
    }
    if (bitArea && tag.bit !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['bit'],
        message: `"bit" selects a bit inside a register; a ${resolved.area} is a single bit already`,
      });
    }
    if (tag.encoding !== undefined && type !== 'string') {
      ctx.addIssue({ code: 'custom', path: ['encoding'], message: '"encoding" is only for type string' });
    }
    if (bitArea && type !== 'bool') {
      ctx.addIssue({ code: 'custom', path: ['type'], message: `${resolved.area}s hold single bits: type must be bool, not ${type}` });
    }
    if (resolved.bit !== undefined && type !== 'bool') {
      ctx.addIssue({ code: 'custom', path: ['type'], message: `a bit inside a register is a bool, not ${type}` });
    }
    if (resolved.bit !== undefined && tag.count !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['count'],
        message: 'arrays of register bits are not supported; read the register as uint16 or declare one tag per bit',
      });
    }
    if (type === 'string' && tag.length === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['length'],
        message: 'type string needs "length": the number of registers holding the text (2 characters each)',
      });
    }
    if (type !== 'string' && tag.length !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['length'], message: '"length" is only for type string; use "count" for arrays' });
    }
    const end = resolved.address + registerSpan(type, tag.length, tag.count, bitArea || resolved.bit !== undefined);
    if (end > 65536) {
      ctx.addIssue({
        code: 'custom',
        path: ['address'],
        message: `the tag runs past the last address 65535 (it needs ${end - resolved.address} units from ${resolved.address})`,
      });
    }
    if ((tag.scale !== undefined || tag.offset !== undefined || tag.deadband !== undefined) && (type === 'bool' || type === 'string')) {
      ctx.addIssue({ code: 'custom', path: ['scale'], message: `scale, offset and deadband apply to numbers, not ${type}` });
    }
  })
  .transform((tag) => {
    const address = resolveAddress(tag)!;
    const type = tag.type ?? defaultType(address);
    const { area: _area, bit: _bit, ...rest } = tag;
    return { ...rest, address, type, modbusAddress: tag.address };
  });

function resolveAddress(tag: {
  address: number | string;
  area?: ModbusArea | undefined;
  bit?: number | undefined;
}): ModbusAddress | undefined {
  if (typeof tag.address === 'string') {
    const parsed = parseConventionalAddress(tag.address);
    if (typeof parsed === 'string') return undefined;
    return tag.bit === undefined ? parsed : { ...parsed, bit: tag.bit };
  }
  if (tag.area === undefined) return undefined;
  return tag.bit === undefined ? { area: tag.area, address: tag.address } : { area: tag.area, address: tag.address, bit: tag.bit };
}

function defaultType(address: ModbusAddress): ModbusType {
  return address.area === 'coil' || address.area === 'discrete' || address.bit !== undefined ? 'bool' : 'uint16';
}

/** Registers (or bits, for bit areas) one element of this type occupies on the wire. */
export function registersPerElement(type: ModbusType, length?: number): number {
  switch (type) {
    case 'bool':
    case 'int16':
    case 'uint16':
      return 1;
    case 'int32':
    case 'uint32':
    case 'float32':
      return 2;
    case 'int64':
    case 'uint64':
    case 'float64':
      return 4;
    case 'string':
      return length ?? 1;
  }
}

function registerSpan(type: ModbusType, length: number | undefined, count: number | undefined, isBit: boolean): number {
  if (isBit) return count ?? 1;
  return registersPerElement(type, length) * (count ?? 1);
}

const commonConnection = {
  unitId: z.number().int().min(0).max(255).default(1).meta({ description: 'Modbus unit (slave) id. 255 or 1 for most TCP devices.' }),
  timeout: duration('Response timeout of one request.').default(1000),
  retries: z
    .number()
    .int()
    .min(0)
    .max(5)
    .default(1)
    .meta({ description: 'Retries of a timed-out request before the poll marks its tags bad.' }),
  interRequestDelay: duration('Quiet time the device needs between two requests.').default(0),
  byteOrder: byteOrder.default('ABCD'),
  maxRegistersPerRequest: z
    .number()
    .int()
    .min(1)
    .max(125)
    .default(125)
    .meta({ description: 'Largest register block per request; some devices accept only 32 or 64.' }),
  maxBitsPerRequest: z.number().int().min(1).max(2000).default(2000).meta({ description: 'Largest coil/discrete block per request.' }),
  maxGap: z
    .number()
    .int()
    .min(0)
    .max(124)
    .default(10)
    .meta({ description: 'Unused addresses a request may span to merge two tags into one request.' }),
  backoffAfterTimeouts: z.number().int().min(1).default(3).meta({
    description: 'After this many consecutive timed-out polls the device is skipped for a while so others on the line keep their rate.',
  }),
};

const tcpConnection = z.strictObject({
  transport: z.literal('tcp'),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(502),
  ...commonConnection,
});

const rtuOverTcpConnection = z.strictObject({
  transport: z
    .literal('rtu-over-tcp')
    .meta({ description: 'RTU frames over a TCP socket, for serial device servers (Moxa NPort, USR) in transparent mode.' }),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535).default(4001),
  ...commonConnection,
});

const rtuConnection = z.strictObject({
  transport: z.literal('rtu'),
  path: z.string().min(1).meta({ description: 'Serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/…' }),
  baudRate: z.number().int().positive().default(9600),
  parity: z.enum(['none', 'even', 'odd']).default('none'),
  dataBits: z.literal([7, 8]).default(8),
  stopBits: z.literal([1, 2]).default(1),
  ...commonConnection,
});

export const modbusConnection = z.discriminatedUnion('transport', [tcpConnection, rtuConnection, rtuOverTcpConnection]);
export type ModbusConnection = z.output<typeof modbusConnection>;

export const modbusDevice = z.strictObject({
  ...baseDeviceFields,
  driver: z.literal('modbus'),
  connection: modbusConnection,
  tags: z.array(tagSchema).min(1),
});

export type ModbusDeviceConfig = z.output<typeof modbusDevice>;
export type ModbusTag = ModbusDeviceConfig['tags'][number];

/** The value type of a tag as declared (or defaulted), and whether it is an array: for typed northbound formats (Sparkplug). */
export function modbusValueType(tag: ModbusTag): { type: string; array: boolean } {
  return { type: tag.type ?? defaultType(tag.address), array: tag.count !== undefined };
}
