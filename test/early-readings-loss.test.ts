// Early readings when the next block fails at once (the connection is dropped while reply 1 is
// read): block 1 is handed over before read() rejects, never after it, so a cycle reports each
// tag once and no good value follows the cycle that reported the connection lost.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ModbusTag } from '../drivers/modbus/config.js';
import { createDriver } from '../drivers/modbus/index.js';
import { DeviceRunner, type ReadingsEvent } from '../src/pipeline/device-runner.js';
import type { DriverTag, TagReading } from '../src/pipeline/driver.js';
import { cleanup, device, RawModbusServer, testContext, testLogger } from './helpers/modbus-servers.js';
import { waitFor } from './helpers/net.js';

function registerTags(n: number): Record<string, unknown>[] {
  return Array.from({ length: n }, (_, a) => ({ name: `r${a}`, address: a, area: 'holding', type: 'uint16' }));
}
const tcp = (port: number) => ({ transport: 'tcp', host: '127.0.0.1', port, timeout: 30_000, retries: 0 });

/**
 * A device of 300 registers whose reply 1 is followed, in the same write, by a stray copy: the
 * port drops the connection while reading reply 1. Stopped after the test.
 */
async function deviceDroppingAfterFirstReply(defer: (fn: () => unknown) => void) {
  const server = new RawModbusServer('mbap');
  await server.start();
  defer(() => server.stop());
  server.misbehave = (request, proper) => (request.n === 1 ? Buffer.concat([proper, proper]) : undefined);
  return device({ connection: tcp(server.port), tags: registerTags(300) });
}

describe('early readings vs. a read that fails in the same turn', () => {
  it('driver: no part is handed over after read() has settled', async (t) => {
    const defer = cleanup(t);
    const config = await deviceDroppingAfterFirstReply(defer);
    const driver = createDriver(config, testContext());
    defer(() => driver.close());
    await driver.connect();
    let settled = false;
    const late: string[] = [];
    const parts: TagReading[][] = [];
    const outcome = await driver
      .read(driver.plan(config.tags as ModbusTag[]), (part) => {
        parts.push(part);
        if (settled) late.push(`${part.length} readings (${part[0]!.tag}..${part.at(-1)!.tag})`);
      })
      .then(
        () => 'resolved',
        (error: unknown) => `rejected: ${(error as Error).message}`,
      )
      .finally(() => (settled = true));
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.match(outcome, /^rejected/);
    assert.deepEqual(late, [], `handed over after read() ${outcome}`);
  });

  it('runner: each tag once per cycle, and none good after the cycle reported the connection lost', async (t) => {
    const defer = cleanup(t);
    const config = await deviceDroppingAfterFirstReply(defer);
    const log = testLogger();
    const events: ReadingsEvent[] = [];
    const runner = new DeviceRunner({
      name: 'dev',
      driver: createDriver(config, { log, dataDir: '/nonexistent' }),
      groups: [{ name: 'default', interval: 60_000, tags: config.tags as DriverTag[] }],
      log,
      phaseOf: () => 0,
      early: () => true,
      onReadings: (event) => events.push(event),
    });
    runner.start();
    defer(() => runner.stop());
    await waitFor(() => events.some((e) => e.readings.some((r) => r.quality === 'bad')), 10_000, 'the failed cycle');
    await new Promise((resolve) => setTimeout(resolve, 200));
    const cycleTs = events[0]!.cycleTs;
    const cycle = events.filter((e) => e.cycleTs === cycleTs);
    const seen = new Map<string, number>();
    for (const reading of cycle.flatMap((e) => e.readings)) seen.set(reading.tag, (seen.get(reading.tag) ?? 0) + 1);
    const twice = [...seen].filter(([, n]) => n > 1).map(([tag]) => tag);
    const lastOfR0 = cycle
      .flatMap((e) => e.readings)
      .filter((r) => r.tag === 'r0')
      .at(-1);
    assert.deepEqual(
      { events: cycle.map((e) => `${e.readings.length}×${e.readings[0]!.quality}`), twice: twice.length },
      { events: ['125×good', '175×bad'], twice: 0 },
      `r0 last: ${lastOfR0?.quality} ${lastOfR0?.reason ?? ''}`,
    );
  });
});
