/** Bytes in hex for log lines and error messages ("01 03 02 00 2a"), cut after 64. */
export function hexBytes(bytes: Uint8Array): string {
  const shown = Buffer.from(bytes.subarray(0, 64))
    .toString('hex')
    .replace(/(..)(?!$)/g, '$1 ');
  return bytes.length > 64 ? `${shown} … (${bytes.length} bytes)` : shown;
}
