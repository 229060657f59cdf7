// The gateway's publish queue into aedes: a burst far larger than the in-flight window, with no
// subscriber at all (aedes then calls back synchronously), must neither recurse nor lose order.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import { pino } from 'pino';
import { IntegratedBroker } from '../src/broker/broker.js';
import { brokerSection } from '../src/config/schema.js';
import { Recorder } from './helpers/mqtt.js';
import { waitFor } from './helpers/net.js';

it('a 200k-message burst with no subscriber is published without overflowing the stack', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-queue-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const broker = await IntegratedBroker.start(
    brokerSection.parse({ listeners: [{ type: 'tcp', port: 0 }], persistRetained: false }),
    pino({ level: 'silent' }),
    dir,
  );
  t.after(() => broker.close());
  for (let n = 0; n < 200_000; n++) broker.publish(`burst/${n % 100}`, `${n}`, { qos: 0, retain: false });
  await waitFor(() => broker.queued === 0, 30_000, 'the queue to drain');
  await broker.flush(5_000);
  assert.equal(broker.stats.published, 200_000);
  assert.equal(broker.stats.errors, 0);
});

it('a subscriber sees a burst complete and in order', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-queue-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const broker = await IntegratedBroker.start(
    brokerSection.parse({ listeners: [{ type: 'tcp', port: 0 }], allowAnonymous: true, persistRetained: false }),
    pino({ level: 'silent' }),
    dir,
  );
  t.after(() => broker.close());
  const recorder = await Recorder.connect(`mqtt://127.0.0.1:${broker.addresses()[0]!.port}`, 'burst/#');
  t.after(() => recorder.close());
  for (let n = 0; n < 20_000; n++) broker.publish('burst/a', `${n}`, { qos: 0, retain: false });
  await waitFor(() => recorder.messages.length >= 20_000, 30_000, 'every message');
  assert.deepEqual(
    recorder.messages.map((message) => Number(message.payload)),
    Array.from({ length: 20_000 }, (_, n) => n),
  );
});
