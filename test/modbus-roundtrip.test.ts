// Every type in every word order, written to a real Modbus TCP server and read back through the
// driver (FC6/FC16 out, FC3 in), plus coils and register bits.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { TagValue } from '../src/pipeline/driver.js';
import { BYTE_ORDERS, type ModbusTag } from '../drivers/modbus/config.js';
import { createDriver } from '../drivers/modbus/index.js';
import { device, TcpTestServer, testContext } from './helpers/modbus-servers.js';

const VALUES: Array<{ type: string; value: TagValue; extra?: Record<string, unknown> }> = [
  { type: 'int16', value: -12345 },
  { type: 'uint16', value: 54321 },
  { type: 'int32', value: -2_000_000_001 },
  { type: 'uint32', value: 4_000_000_001 },
  { type: 'int64', value: -9_007_199_254_740_993n },
  { type: 'uint64', value: 18_446_744_073_709_551_000n },
  { type: 'float32', value: -273.15 },
  { type: 'float64', value: Math.E },
  { type: 'string', value: 'Line-7 °C', extra: { length: 6 } },
  { type: 'float32', value: [1.5, -2.25, 1e-3], extra: { count: 3 } },
  { type: 'int64', value: [1n, -1n], extra: { count: 2 } },
];

describe('write then read back: every type in every word order', () => {
  const server = new TcpTestServer();
  before(() => server.start());
  after(() => server.stop());

  for (const order of BYTE_ORDERS) {
    it(order, async () => {
      // One tag per value, 10 registers apart.
      const tags = VALUES.map((entry, index) => ({
        name: `${entry.type}${index}`,
        area: 'holding',
        address: 100 + index * 10,
        type: entry.type,
        byteOrder: order,
        ...entry.extra,
      }));
      const config = device({ connection: { transport: 'tcp', host: '127.0.0.1', port: server.port, timeout: 1000 }, tags });
      const driver = createDriver(config, testContext());
      await driver.connect();
      try {
        const parsed = config.tags as ModbusTag[];
        for (const [index, tag] of parsed.entries()) await driver.write(tag, VALUES[index]!.value);
        const readings = await driver.read(driver.plan(parsed));
        for (const [index, reading] of readings.entries()) {
          assert.equal(reading.quality, 'good', `${reading.tag}: ${reading.reason ?? ''}`);
          assert.deepEqual(reading.value, VALUES[index]!.value, `${reading.tag} in ${order}`);
        }
      } finally {
        await driver.close();
      }
    });
  }

  it('coils (single and array) and a bit inside a register', async () => {
    server.holding[50] = 0b1010_0000_0000_0000;
    const config = device({
      connection: { transport: 'tcp', host: '127.0.0.1', port: server.port },
      tags: [
        { name: 'coil', address: '00011' },
        { name: 'coils', address: '00021', count: 5 },
        { name: 'bit', address: '40051.2' },
      ],
    });
    const driver = createDriver(config, testContext());
    await driver.connect();
    try {
      const [coil, coils, bit] = config.tags as ModbusTag[];
      await driver.write(coil!, true);
      await driver.write(coils!, [true, false, true, true, false]);
      await driver.write(bit!, true);
      const readings = await driver.read(driver.plan(config.tags as ModbusTag[]));
      assert.deepEqual(
        readings.map((reading) => reading.value),
        [true, [true, false, true, true, false], true],
      );
      // Read-modify-write left the other bits of the register alone.
      assert.equal(server.holding[50], 0b1010_0000_0000_0100);
    } finally {
      await driver.close();
    }
  });
});
