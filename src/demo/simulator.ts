// The built-in simulated devices, so the demo and `plc2mqtt simulate` show live values without
// hardware: the demo PLC here, a Modbus TCP server (modbus-serial's ServerTCP) whose registers
// change, and the serial scale of ./serial-instrument.ts (MT-SICS on a TCP port).
//
// Register map (0-based wire addresses; conventional notation in brackets):
//   holding 0      [40001]    sine wave, int16, amplitude 1000, period 60 s (scale 0.1 → ±100.0)
//   holding 1      [40002]    ramp, uint16, 0..999, +1 every 100 ms
//   holding 2-3    [40003]    counter, uint32 ABCD, +1 every 100 ms
//   holding 4-5    [40005]    temperature, float32 ABCD, 20 + 5·sin(t/30 s) °C
//   holding 6      [40007]    alarm word: bit 0 = high temperature (> 24 °C), bit 1 = toggles every 5 s
//   holding 10     [40011]    setpoint, int16, writable (initially 500)
//   holding 20-27  [40021]    text "PLC2MQTT DEMO", 8 registers
//   input 0-1      [30001]    pressure, float32 CDAB (word-swapped), 4 + 0.5·sin(t/20 s) bar
//   coil 0         [00001]    motor running, toggles every 10 s
//   coil 1         [00002]    writable flag (initially false)
//   discrete 0     [10001]    door open, true for 3 s of every 15 s
import { ServerTCP } from 'modbus-serial';
import type { SimulatorConfig } from '../config/schema.js';
import { serveScale } from './serial-instrument.js';

export interface RunningSimulator {
  name: string;
  type: SimulatorConfig['type'];
  host: string;
  port: number;
  /** One line for people: what it is and how to reach it. */
  describe(): string;
  close(): Promise<void>;
}

export class DemoPlc {
  private readonly startedAt: number;
  private readonly now: () => number;
  private readonly writableHolding = new Map<number, number>([[10, 500]]);
  private readonly coils = new Map<number, boolean>([[1, false]]);

  constructor(now: () => number = Date.now) {
    this.now = now;
    this.startedAt = now();
  }

  private elapsed(): number {
    return this.now() - this.startedAt;
  }

  temperature(): number {
    return 20 + 5 * Math.sin(this.elapsed() / 30_000);
  }

  holding(address: number): number {
    const t = this.elapsed();
    const ticks = Math.floor(t / 100);
    switch (address) {
      case 0:
        return toUint16(Math.round(1000 * Math.sin((2 * Math.PI * t) / 60_000)));
      case 1:
        return ticks % 1000;
      case 2:
        return Math.floor(ticks / 65536) & 0xffff;
      case 3:
        return ticks & 0xffff;
      case 4:
      case 5:
        return float32Words(this.temperature())[address - 4]!;
      case 6:
        return (this.temperature() > 24 ? 1 : 0) | (Math.floor(t / 5000) % 2 === 1 ? 2 : 0);
      default:
        if (address >= 20 && address < 28) return textRegister('PLC2MQTT DEMO', address - 20);
        return this.writableHolding.get(address) ?? 0;
    }
  }

  input(address: number): number {
    if (address === 0 || address === 1) {
      const [high, low] = float32Words(4 + 0.5 * Math.sin(this.elapsed() / 20_000));
      return address === 0 ? low! : high!; // CDAB: low word first
    }
    return 0;
  }

  coil(address: number): boolean {
    if (address === 0) return Math.floor(this.elapsed() / 10_000) % 2 === 0;
    return this.coils.get(address) ?? false;
  }

  discrete(address: number): boolean {
    if (address === 0) return this.elapsed() % 15_000 < 3_000;
    return false;
  }

  writeHolding(address: number, value: number): void {
    this.writableHolding.set(address, value & 0xffff);
  }

  writeCoil(address: number, value: boolean): void {
    this.coils.set(address, value);
  }
}

function toUint16(value: number): number {
  return value < 0 ? value + 0x10000 : value;
}

function float32Words(value: number): [number, number] {
  const buffer = Buffer.alloc(4);
  buffer.writeFloatBE(value);
  return [buffer.readUInt16BE(0), buffer.readUInt16BE(2)];
}

function textRegister(text: string, index: number): number {
  const high = text.charCodeAt(index * 2) || 0;
  const low = text.charCodeAt(index * 2 + 1) || 0;
  return ((high & 0xff) << 8) | (low & 0xff);
}

/** Starts one simulated device; resolves once it listens, rejects with a readable error otherwise. */
export async function startSimulator(config: SimulatorConfig): Promise<RunningSimulator> {
  if (config.type === 'modbus-tcp') return startDemoPlc(config);
  const scale = await serveScale(config.name, config.host, config.port);
  return {
    name: config.name,
    type: config.type,
    host: scale.host,
    port: scale.port,
    describe: () =>
      `simulated scale "${config.name}": MT-SICS (SI, T, Z, SIR, @, I4; requests end with CR LF) on TCP ${scale.host}:${scale.port} (README.md, "Demo scale")`,
    close: () => scale.close(),
  };
}

/** Starts one simulated PLC. */
export function startDemoPlc(
  config: Extract<SimulatorConfig, { type: 'modbus-tcp' }>,
  plc: DemoPlc = new DemoPlc(),
): Promise<RunningSimulator> {
  const server = new ServerTCP(
    {
      getHoldingRegister: (address: number) => plc.holding(address),
      getMultipleHoldingRegisters: (address: number, length: number) => Array.from({ length }, (_, index) => plc.holding(address + index)),
      getInputRegister: (address: number) => plc.input(address),
      getMultipleInputRegisters: (address: number, length: number) => Array.from({ length }, (_, index) => plc.input(address + index)),
      getCoil: (address: number) => plc.coil(address),
      getDiscreteInput: (address: number) => plc.discrete(address),
      setRegister: (address: number, value: number) => plc.writeHolding(address, value),
      setCoil: (address: number, value: boolean) => plc.writeCoil(address, value),
    },
    { host: config.host, port: config.port, unitID: 255 },
  );
  const close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  return new Promise((resolve, reject) => {
    server.once('initialized', () =>
      resolve({
        name: config.name,
        type: config.type,
        host: config.host,
        port: config.port,
        describe: () =>
          `simulated PLC "${config.name}": Modbus TCP on ${config.host}:${config.port} (register map: README.md, "Demo PLC register map")`,
        close,
      }),
    );
    server.once('serverError', (error: NodeJS.ErrnoException) => {
      void close();
      reject(new Error(`simulator "${config.name}" cannot listen on ${config.host}:${config.port}: ${error.code ?? error.message}`));
    });
  });
}
