// The driver registry: a device's "driver" name → its config schema (loaded eagerly, it is small)
// and its implementation (loaded lazily, so a gateway without OPC UA devices never loads node-opcua).
import type { z } from 'zod';
import type { Driver, DriverContext, DriverTag } from './driver.js';
import { modbusDevice, modbusValueType, type ModbusTag } from '../../drivers/modbus/config.js';
import { opcuaDevice, type OpcUaTag } from '../../drivers/opcua/config.js';
import { serialDevice, type SerialTag } from '../../drivers/serial/config.js';

export interface DriverModule<Device> {
  createDriver(device: Device, context: DriverContext): Driver<DriverTag>;
}

/**
 * What a tag's config says of its value type, for typed northbound formats (Sparkplug): a driver
 * type name ("float32", …) and whether it is an array; no type when the driver learns it from the
 * device (OPC UA).
 */
export interface DeclaredValueType {
  type?: string;
  array?: boolean;
}

export const DRIVERS = {
  modbus: {
    schema: modbusDevice,
    valueType: (tag: ModbusTag): DeclaredValueType => modbusValueType(tag),
    load: async (): Promise<DriverModule<z.output<typeof modbusDevice>>> => import('../../drivers/modbus/index.js'),
  },
  opcua: {
    schema: opcuaDevice,
    valueType: (tag: OpcUaTag): DeclaredValueType => (tag.type !== undefined ? { type: tag.type } : {}),
    // node-opcua is loaded here and only here: ~65 MB that a gateway without OPC UA devices never pays.
    load: async () => import('../../drivers/opcua/index.js'),
  },
  serial: {
    schema: serialDevice,
    valueType: (tag: SerialTag): DeclaredValueType => ({ type: tag.type }),
    load: async () => import('../../drivers/serial/index.js'),
  },
} as const;

export type DriverName = keyof typeof DRIVERS;
export const DRIVER_NAMES = Object.keys(DRIVERS) as DriverName[];
