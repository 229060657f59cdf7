// Modbus addressing. On the wire every area is addressed from 0; PLC manuals and HMIs usually
// print the "conventional" 1-based notation where the first digit names the area.

export type ModbusArea = 'coil' | 'discrete' | 'input' | 'holding';

export interface ModbusAddress {
  area: ModbusArea;
  /** 0-based wire address. */
  address: number;
  /** Bit 0..15 inside a register (LSB = 0), for bool tags living in input/holding registers. */
  bit?: number;
}

const AREA_BY_DIGIT: Record<string, ModbusArea> = { '0': 'coil', '1': 'discrete', '3': 'input', '4': 'holding' };

/**
 * Parses conventional notation: 5 digits ("40001" = holding 0, up to "49999") or 6 digits
 * ("400001" = holding 0, up to "465536"), optionally with a bit suffix ("40010.3").
 * Returns an error message instead of throwing so the config report can show it.
 */
export function parseConventionalAddress(text: string): ModbusAddress | string {
  const match = /^([0134])(\d{4,5})(?:\.(\d{1,2}))?$/.exec(text.trim());
  if (!match) {
    return `"${text}" is not a Modbus address; expected conventional notation such as "40001" (holding), "30001" (input), "00001" (coil), "10001" (discrete), "400001" (6 digits) or "40010.3" (bit 3 of a register)`;
  }
  const [, digit, rest, bitText] = match;
  const area = AREA_BY_DIGIT[digit!]!;
  const number = Number(rest);
  if (number < 1) return `"${text}": conventional addresses start at 1 (e.g. "${digit}${'0'.repeat(rest!.length - 1)}1")`;
  if (number > 65536) return `"${text}": address beyond 65536`;
  const result: ModbusAddress = { area, address: number - 1 };
  if (bitText !== undefined) {
    const bit = Number(bitText);
    if (bit > 15) return `"${text}": bit ${bit} does not exist; a register has bits 0..15`;
    if (area === 'coil' || area === 'discrete') return `"${text}": a bit suffix only makes sense on input or holding registers`;
    result.bit = bit;
  }
  return result;
}

export function formatAddress(address: ModbusAddress): string {
  const bit = address.bit === undefined ? '' : `.${address.bit}`;
  return `${address.area}:${address.address}${bit}`;
}
