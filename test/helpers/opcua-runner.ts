// Runs one OPC UA device the way the gateway does (DeviceRunner + the real driver) and records
// every reading, for tests that look at what the core would publish.
import pino from 'pino';
import { DeviceRunner, type PollGroup } from '../../src/pipeline/device-runner.js';
import type { TagReading } from '../../src/pipeline/driver.js';
import { opcuaDevice, type OpcUaDeviceConfig, type OpcUaTag } from '../../drivers/opcua/config.js';
import { createDriver, type OpcUaDriver } from '../../drivers/opcua/index.js';

export interface RecordedReading extends TagReading {
  /** When the core got it (ms). */
  at: number;
}

export interface RunningDevice {
  device: OpcUaDeviceConfig;
  driver: OpcUaDriver;
  runner: DeviceRunner<OpcUaTag>;
  readings: RecordedReading[];
  last(tag: string): RecordedReading | undefined;
  history(tag: string): RecordedReading[];
  stop(): Promise<void>;
}

/** Test logs stay quiet unless OPCUA_TEST_LOG=debug (or another pino level) is set. */
export const testLog = pino({ level: process.env.OPCUA_TEST_LOG ?? 'silent' });

export function parseDevice(raw: Record<string, unknown>): OpcUaDeviceConfig {
  return opcuaDevice.parse({ name: 'plc', driver: 'opcua', ...raw });
}

function groupsOf(device: OpcUaDeviceConfig): PollGroup<OpcUaTag>[] {
  const byGroup = new Map<string, OpcUaTag[]>();
  for (const tag of device.tags) byGroup.set(tag.group ?? 'default', [...(byGroup.get(tag.group ?? 'default') ?? []), tag]);
  return [...byGroup].map(([name, tags]) => ({
    name,
    tags,
    interval: name === 'default' ? device.pollInterval : device.pollGroups[name]!.interval,
  }));
}

export function runDevice(raw: Record<string, unknown>, dataDir: string): RunningDevice {
  const device = parseDevice(raw);
  const driver = createDriver(device, { log: testLog, dataDir });
  const readings: RecordedReading[] = [];
  const runner = new DeviceRunner<OpcUaTag>({
    name: device.name,
    driver,
    groups: groupsOf(device),
    log: testLog,
    phaseOf: () => 0,
    onReadings: (event) => {
      const at = Date.now();
      for (const reading of event.readings) readings.push({ ...reading, at });
    },
  });
  runner.start();
  return {
    device,
    driver,
    runner,
    readings,
    last: (tag) => readings.findLast((reading) => reading.tag === tag),
    history: (tag) => readings.filter((reading) => reading.tag === tag),
    stop: () => runner.stop(),
  };
}
