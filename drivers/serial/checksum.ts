// Checksums of STX…ETX frames. The CRC-16 variants come from the `crc` package; sum, XOR and LRC
// are one line of arithmetic each.
import { crc16, crc16ccitt, crc16kermit, crc16modbus, crc16xmodem } from 'crc';

export const CHECKSUMS = ['xor', 'sum8', 'lrc', 'crc16-modbus', 'crc16-ccitt-false', 'crc16-xmodem', 'crc16-kermit', 'crc16-arc'] as const;
export type ChecksumType = (typeof CHECKSUMS)[number];

export interface ChecksumSpec {
  type: ChecksumType;
  /** "binary": the checksum's bytes as they are; "hex": as uppercase ASCII hex digits (2 per byte). */
  format: 'binary' | 'hex';
  /** Byte order of a binary CRC-16. */
  byteOrder: 'big' | 'little';
}

/** The checksum's value over `bytes`. */
export function checksumValue(type: ChecksumType, bytes: Buffer): number {
  switch (type) {
    case 'xor':
      return bytes.reduce((acc, byte) => acc ^ byte, 0);
    case 'sum8':
      return bytes.reduce((acc, byte) => (acc + byte) & 0xff, 0);
    case 'lrc':
      return (0x100 - bytes.reduce((acc, byte) => (acc + byte) & 0xff, 0)) & 0xff;
    case 'crc16-modbus':
      return crc16modbus(bytes);
    case 'crc16-ccitt-false':
      return crc16ccitt(bytes);
    case 'crc16-xmodem':
      return crc16xmodem(bytes);
    case 'crc16-kermit':
      return crc16kermit(bytes);
    case 'crc16-arc':
      return crc16(bytes);
  }
}

/** Bytes of the checksum's value on the wire. */
function valueBytes(spec: ChecksumSpec): number {
  return spec.type.startsWith('crc16') ? 2 : 1;
}

/** How many bytes the checksum takes on the wire. */
export function checksumLength(spec: ChecksumSpec): number {
  return spec.format === 'hex' ? 2 * valueBytes(spec) : valueBytes(spec);
}

/** The checksum of `bytes` as it goes on the wire. */
export function checksumBytes(spec: ChecksumSpec, bytes: Buffer): Buffer {
  const value = checksumValue(spec.type, bytes);
  const size = valueBytes(spec);
  if (spec.format === 'hex')
    return Buffer.from(
      value
        .toString(16)
        .toUpperCase()
        .padStart(2 * size, '0'),
      'latin1',
    );
  const out = Buffer.alloc(size);
  if (size === 1) out[0] = value;
  else if (spec.byteOrder === 'little') out.writeUInt16LE(value);
  else out.writeUInt16BE(value);
  return out;
}
