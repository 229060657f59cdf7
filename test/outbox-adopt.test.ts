// Committed rows kept in memory for the sender (up to 20,000 rows and 8 MB) are not being sent
// until the sender takes them: a drop-oldest bound drops them before newer messages, and what is
// kept for a slow sender is bounded in bytes, whatever the size of its messages.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { pino } from 'pino';
import { Outbox } from '../src/cloud/outbox.js';
import { outboxSection } from '../src/config/schema.js';

const log = pino({ level: 'silent' });

function folder(t: TestContext): string {
  const path = mkdtempSync(join(tmpdir(), 'plc2mqtt-adopt-'));
  t.after(() => rmSync(path, { recursive: true, force: true }));
  return path;
}

describe('outbox: committed rows adopted for a slow sender', () => {
  it('drop-oldest still drops the oldest messages nobody is sending, not the new ones, while a slow sender reads', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), outboxSection.parse({ maxMessages: 2000, policy: 'drop-oldest' }), log);
    t.after(() => outbox.close());
    // The sender of a connected, slow cloud: a window of 10, full and waiting for PUBACKs.
    outbox.attach({ readAhead: 10, splitLive: false, onStored: () => undefined });
    let seq = 0;
    const payload = (n: number) => Buffer.from(JSON.stringify({ seq: n }));
    for (let n = 0; n < 10; n++) outbox.append({ topic: 't', payload: payload(seq++), qos: 1, retain: false });
    outbox.commit();
    assert.equal(outbox.take(10).length, 10);
    // The plant goes on: 8,000 more messages in commits of 1,000, four times the bound.
    const fates = new Map<number, string>();
    for (let commit = 0; commit < 8; commit++) {
      for (let n = 0; n < 1000; n++) {
        const mine = seq++;
        outbox.append({ topic: 't', payload: payload(mine), qos: 1, retain: false }, (why) => fates.set(mine, why ?? 'stored'));
      }
      outbox.commit();
    }
    const last = seq - 1;
    assert.equal(outbox.stats.messages, 2000);
    const kept = outbox.peek(0, 10_000).map((row) => (JSON.parse(row.payload.toString()) as { seq: number }).seq);
    const oldUnsent = kept.filter((n) => n >= 10 && n < 1010).length;
    // Rows 10…1009 were never taken by the sender: drop-oldest drops them before anything newer.
    assert.equal(oldUnsent, 0, `${oldUnsent} old messages the sender never took are kept while newer ones were dropped`);
    // drop-oldest: the newest message is kept (and its publisher acknowledged) ...
    assert.equal(fates.get(last), 'stored', `the newest message: ${fates.get(last)}`);
    const refused = [...fates.values()].filter((fate) => fate !== 'stored').length;
    // ... and of the new ones only as many are refused as the window (10) forces, not 6,000.
    assert.ok(refused <= 10, `${refused} new messages refused by drop-oldest while older ones stayed`);
  });

  it('rows kept in memory for a slow sender stay within a few MB', (t) => {
    const outbox = Outbox.open(join(folder(t), 'outbox.db'), outboxSection.parse({}), log);
    t.after(() => outbox.close());
    outbox.attach({ readAhead: 500, splitLive: false, onStored: () => undefined });
    outbox.append({ topic: 't', payload: Buffer.alloc(10), qos: 1, retain: false });
    outbox.commit();
    assert.equal(outbox.take(1).length, 1);
    // 19,000 messages of 4 KB (a JSON batch of a few hundred tags), committed, not yet sent.
    for (let commit = 0; commit < 19; commit++) {
      for (let n = 0; n < 1000; n++) outbox.append({ topic: 't', payload: Buffer.alloc(4096, n), qos: 1, retain: false });
      outbox.commit();
    }
    const lanes = (outbox as unknown as { lanes: Record<string, { ahead: { length: number; shift(): { payload: Buffer } | undefined } }> })
      .lanes;
    let bytes = 0;
    let rows = 0;
    for (const lane of Object.values(lanes)) {
      for (let row = lane.ahead.shift(); row !== undefined; row = lane.ahead.shift()) {
        bytes += row.payload.length;
        rows++;
      }
    }
    assert.ok(bytes <= 16 * 1024 ** 2, `${rows} rows, ${Math.round(bytes / 1024 ** 2)} MB of payload held in memory for the sender`);
  });
});
