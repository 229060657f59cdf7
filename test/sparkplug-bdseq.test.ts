// The Sparkplug bdSeq store: one number per CONNECT, stored before it is used, across restarts;
// a disk that takes no writes costs a logged error, never the connection.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import pino from 'pino';
import { BDSEQ_FILE, BdSeqStore } from '../src/northbound/sparkplug/bdseq.js';

const log = pino({ level: 'silent' });

function folder(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-bdseq-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('Sparkplug bdSeq store', () => {
  it('starts at 0, increments per CONNECT and carries on after a restart', (t) => {
    const dir = folder(t);
    const first = new BdSeqStore(dir, log);
    assert.deepEqual([first.next(), first.next(), first.next()], [0, 1, 2]);
    // The value of the next CONNECT is on disk before this one's is handed out.
    assert.deepEqual(JSON.parse(readFileSync(join(dir, BDSEQ_FILE), 'utf8')), { next: 3 });
    const restarted = new BdSeqStore(dir, log);
    assert.equal(restarted.next(), 3);
  });

  it('wraps from 255 to 0 [tck-id-payloads-ndeath-bdseq]', (t) => {
    const dir = folder(t);
    writeFileSync(join(dir, BDSEQ_FILE), JSON.stringify({ next: 255 }));
    const store = new BdSeqStore(dir, log);
    assert.deepEqual([store.next(), store.next()], [255, 0]);
  });

  it('a damaged file starts again at 0 instead of failing the uplink', (t) => {
    const dir = folder(t);
    writeFileSync(join(dir, BDSEQ_FILE), '{"next": 300}');
    assert.equal(new BdSeqStore(dir, log).next(), 0);
    writeFileSync(join(dir, BDSEQ_FILE), 'not json at all');
    assert.equal(new BdSeqStore(dir, log).next(), 0);
  });

  it('a folder it cannot write to: the count goes on in memory, one error logged, stored again once it can be', (t) => {
    const dir = join(folder(t), 'missing');
    const lines: string[] = [];
    const errors = pino({ level: 'error' }, { write: (line: string) => void lines.push(line) });
    const store = new BdSeqStore(dir, errors);
    assert.deepEqual([store.next(), store.next(), store.next()], [0, 1, 2]);
    assert.equal(lines.length, 1, lines.join(''));
    assert.match(lines[0]!, /ENOENT.*cannot store the next Sparkplug bdSeq/);
    mkdirSync(dir);
    assert.equal(store.next(), 3);
    assert.deepEqual(JSON.parse(readFileSync(join(dir, BDSEQ_FILE), 'utf8')), { next: 4 });
  });
});
