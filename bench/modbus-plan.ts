// Request coalescing benchmark: a scattered tag set covering 10,000 registers, read from a pymodbus
// server on loopback, planned by the driver (coalesced) vs one request per tag (a naive poller).
// Prints one JSON line.   node dist/bench/modbus-plan.js [--registers 10000] [--cycles 5]
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { modbusDevice, type ModbusTag } from '../drivers/modbus/config.js';
import { createDriver } from '../drivers/modbus/index.js';
import { startModbusServer } from './lib.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const { values: args } = parseArgs({
  options: { registers: { type: 'string', default: '10000' }, cycles: { type: 'string', default: '5' } },
});
const targetRegisters = Number(args.registers);
const cycles = Number(args.cycles);

// A deterministic scatter: tags of 1, 2 or 4 registers with gaps of 0..15 unused registers between them.
let seed = 42;
const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
const types = [
  ['uint16', 1],
  ['int16', 1],
  ['float32', 2],
  ['uint32', 2],
  ['float64', 4],
] as const;
const tags: Array<Record<string, unknown>> = [];
let address = 0;
let registers = 0;
while (registers < targetRegisters && address < 65_000) {
  const [type, size] = types[Math.floor(random() * types.length)]!;
  tags.push({ name: `t${tags.length}`, area: 'holding', address, type });
  registers += size;
  address += size + Math.floor(random() * 16);
}

const { port } = await startModbusServer(ROOT, [1]);

function driverWith(maxGap: number) {
  const config = modbusDevice.parse({
    name: 'bench',
    driver: 'modbus',
    connection: { transport: 'tcp', host: '127.0.0.1', port, timeout: 2000, maxGap },
    tags,
  });
  return { driver: createDriver(config, { log: pino({ level: 'silent' }), dataDir: '/tmp' }), tags: config.tags as ModbusTag[] };
}

async function measure(maxGap: number, onePerTag: boolean) {
  const { driver, tags: parsed } = driverWith(maxGap);
  await driver.connect();
  const plans = onePerTag ? parsed.map((tag) => driver.plan([tag])) : [driver.plan(parsed)];
  const requests = onePerTag ? parsed.length : Number(/^(\d+) request/.exec(plans[0]!.describe())?.[1] ?? 0);
  const times: number[] = [];
  let bad = 0;
  for (let cycle = 0; cycle < cycles; cycle++) {
    const started = performance.now();
    for (const plan of plans) bad += (await driver.read(plan)).filter((reading) => reading.quality !== 'good').length;
    times.push(performance.now() - started);
  }
  await driver.close();
  times.sort((a, b) => a - b);
  const cycleMs = Math.round(times[Math.floor(times.length / 2)]! * 10) / 10;
  return { requestsPerCycle: requests, cycleMs, registersPerSecond: Math.round((registers / cycleMs) * 1000), badReadings: bad };
}

const onePerTag = await measure(0, true);
const coalescedNoGaps = await measure(0, false);
const coalesced = await measure(10, false);
const coalescedWide = await measure(32, false);

console.log(
  JSON.stringify({
    bench: 'modbus-plan',
    tags: tags.length,
    registers,
    addressSpan: address,
    onePerTag,
    coalescedMaxGap0: coalescedNoGaps,
    coalescedMaxGap10: coalesced,
    coalescedMaxGap32: coalescedWide,
    speedupDefault: Math.round((onePerTag.cycleMs / coalesced.cycleMs) * 10) / 10,
  }),
);
process.exit(0);
