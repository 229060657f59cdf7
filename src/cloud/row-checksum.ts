// The CRC-32 each outbox row carries of what it says about its message, written with the row and
// checked when it is read back to be sent (outbox.ts): bytes changed on the disk, which
// quick_check does not look at, must not reach the cloud as valid data.
import { crc32 } from 'node:zlib';

const checksumHeader = Buffer.alloc(14);
const kindHeader = Buffer.alloc(4);

/**
 * CRC-32 over a row's QoS, retain flag, time, size, topic and payload, as the gateway wrote them,
 * and its kind when that is not 0 (so rows of finished messages keep the checksum they always had).
 */
export function checksum(
  topic: string,
  payload: Buffer,
  qos: number,
  retain: boolean,
  created: number,
  size: number,
  kind: number,
): number {
  checksumHeader.writeDoubleLE(created, 0);
  checksumHeader.writeUInt32LE(size, 8);
  checksumHeader[12] = qos;
  checksumHeader[13] = retain ? 1 : 0;
  const crc = crc32(payload, crc32(topic, crc32(checksumHeader)));
  if (kind === 0) return crc;
  kindHeader.writeUInt32LE(kind, 0);
  return crc32(kindHeader, crc);
}
