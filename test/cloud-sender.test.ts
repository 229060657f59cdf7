// The sender's contract (src/cloud/sender.ts), without a socket: the real SQLite outbox in a temp
// folder as its buffer, a scripted link whose PUBACKs the test gives in any order, and a fake
// clock. Out-of-order acks, a reconnect mid-window, MQTT 5 refusals, the probe that sets aside a
// message the cloud keeps closing the connection on, the outbox bound dropping rows while they are
// sent (counted exactly), drop-newest, maxAge at send time, liveShare, the stall warning, and the
// performance rules (acks settled in batches, no SELECT per PUBACK when caught up); QoS 0 messages
// confirmed by a ping round trip (checkpoint.ts) over a link that pings when the test says.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import Database from 'better-sqlite3';
import { pino } from 'pino';
import type { BufferReader, Lane, MessageBuffer, OutboxMessage, Settled, Settlement, StoredMessage } from '../src/cloud/buffer.js';
import { PingCheckpoint } from '../src/cloud/checkpoint.js';
import { Outbox } from '../src/cloud/outbox.js';
import { Sender, type Link, type SenderOptions } from '../src/cloud/sender.js';
import { outboxSection } from '../src/config/schema.js';
import { FakeClock } from './helpers/fake-clock.js';

interface LogLine {
  level: number;
  msg: string;
  [field: string]: unknown;
}

/** What the cloud got: every PUBLISH, in order, over all connections. */
class ScriptedCloud {
  readonly received: number[] = [];
  links: ScriptedLink[] = [];

  count(id: number): number {
    return this.received.filter((received) => received === id).length;
  }

  distinct(): Set<number> {
    return new Set(this.received);
  }
}

/** One connection: it records what is published and answers only when the test says so. */
class ScriptedLink implements Link {
  readonly waiting: Array<{ message: StoredMessage; done: (error?: Error | null) => void }> = [];
  /** The most messages that waited for an answer at once. */
  mostWaiting = 0;
  private readonly cloud: ScriptedCloud;

  constructor(cloud: ScriptedCloud) {
    this.cloud = cloud;
    cloud.links.push(this);
  }

  publish(message: StoredMessage, done: (error?: Error | null) => void): void {
    this.cloud.received.push(message.id);
    this.waiting.push({ message, done });
    this.mostWaiting = Math.max(this.mostWaiting, this.waiting.length);
  }

  ids(): number[] {
    return this.waiting.map((entry) => entry.message.id);
  }

  /** Answers the message with this id (a PUBACK, or `error`). */
  answer(id: number, error?: Error | null): void {
    const index = this.waiting.findIndex((entry) => entry.message.id === id);
    assert.ok(index >= 0, `message ${id} is waiting for an answer on this link (waiting: ${this.ids().join(',')})`);
    const [entry] = this.waiting.splice(index, 1);
    entry!.done(error);
  }

  ackAll(): void {
    for (const id of this.ids()) this.answer(id);
  }
}

/** The outbox, watched: every take and settle the sender makes, and every SELECT it causes. */
class WatchedBuffer implements MessageBuffer {
  readonly settlements: Settlement[] = [];
  readonly takes: Array<{ n: number; lane: Lane; got: number[] }> = [];
  selects = 0;
  readonly outbox: Outbox;

  constructor(outbox: Outbox) {
    this.outbox = outbox;
    const peek = outbox.peek.bind(outbox);
    outbox.peek = (afterId, limit, beforeId) => {
      this.selects++;
      return peek(afterId, limit, beforeId);
    };
  }

  append(message: OutboxMessage, onStored?: Settled): void {
    this.outbox.append(message, onStored);
  }
  attach(reader: BufferReader): () => void {
    return this.outbox.attach(reader);
  }
  take(n: number, lane: Lane = 'backlog'): StoredMessage[] {
    const got = this.outbox.take(n, lane);
    this.takes.push({ n, lane, got: got.map((message) => message.id) });
    return got;
  }
  settle(outcome: Settlement): void {
    this.settlements.push(outcome);
    this.outbox.settle(outcome);
  }
  setAside(id: number, reason: string): boolean {
    return this.outbox.setAside(id, reason);
  }
  rewind(): void {
    this.outbox.rewind();
  }
  get length(): number {
    return this.outbox.length;
  }

  acknowledged(): number[] {
    return this.settlements.flatMap((settlement) => [...(settlement.acknowledged ?? [])]);
  }
}

function setup(t: TestContext, options: Partial<SenderOptions> = {}, outboxOptions: Record<string, unknown> = {}, file?: string) {
  const dir = file === undefined ? mkdtempSync(join(tmpdir(), 'plc2mqtt-sender-')) : undefined;
  if (dir !== undefined) t.after(() => rmSync(dir, { recursive: true, force: true }));
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  // Commits only when the test says so.
  const outbox = Outbox.open(file ?? join(dir!, 'outbox.db'), outboxSection.parse({ commitInterval: 3_600_000, ...outboxOptions }), log);
  t.after(() => outbox.close());
  const buffer = new WatchedBuffer(outbox);
  const clock = new FakeClock(Date.now());
  const cloud = new ScriptedCloud();
  const events = { firstAcknowledgements: 0, refused: [] as number[] };
  const sender = new Sender(
    buffer,
    { inFlight: 10, liveShare: 0, maxAge: 0, stallAfter: 30_000, ...options },
    log,
    { firstAcknowledgement: () => events.firstAcknowledgements++, refused: (message) => events.refused.push(message.id) },
    clock,
  );
  sender.start();
  t.after(() => sender.stop());
  /** A new connection whose status PUBACK came (the link is proven). */
  const connect = (receiveMaximum?: number, proven = true): ScriptedLink => {
    const link = new ScriptedLink(cloud);
    sender.connected(link, receiveMaximum);
    if (proven) sender.linkProven(link);
    return link;
  };
  const append = (count: number, from = 1, fates?: Map<number, string>): void => {
    for (let n = from; n < from + count; n++) outbox.append(message(n), fates && ((why?: string) => fates.set(n, why ?? 'stored')));
    outbox.commit();
  };
  const flushTimers = () => clock.advanceTo(clock.now() + 25);
  return { outbox, buffer, clock, cloud, sender, events, lines, connect, append, flushTimers };
}

const message = (n: number): OutboxMessage => ({ topic: `t/${n % 3}`, payload: Buffer.from(`m${n}`), qos: 1, retain: false });
/** The sequence numbers of messages by id (the payload says which append it was). */
const seqOf = (outbox: Outbox) => new Map(outbox.peek(0, 1_000_000).map((row) => [row.id, Number(row.payload.toString().slice(1))]));
const range = (from: number, count: number) => Array.from({ length: count }, (_, index) => from + index);

/** An outbox file holding messages 1..100, written with the default bounds (opened again with others). */
function outboxOf100(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'plc2mqtt-sender-bound-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'outbox.db');
  const before = Outbox.open(file, outboxSection.parse({}), pino({ level: 'silent' }));
  for (let n = 1; n <= 100; n++) before.append(message(n));
  before.close();
  return file;
}
/** A deterministic shuffle. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed;
  for (let index = out.length - 1; index > 0; index--) {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    const other = state % (index + 1);
    [out[index], out[other]] = [out[other]!, out[index]!];
  }
  return out;
}
/** Acknowledges everything the link gets until nothing more comes (acks are settled in batches, so time passes too). */
async function drain(link: ScriptedLink, flushTimers: () => Promise<void>): Promise<void> {
  for (let round = 0; round < 10_000; round++) {
    if (link.waiting.length === 0) {
      await flushTimers();
      if (link.waiting.length === 0) return;
    }
    link.ackAll();
  }
  throw new Error('the link never ran dry');
}

/** Counted exactly: every appended message is dropped, delivered, rejected or still waiting. */
function assertAccounted(outbox: Outbox, appended: number): void {
  const { dropped, delivered, rejected, messages } = outbox.stats;
  assert.equal(dropped + delivered + rejected + messages, appended, JSON.stringify(outbox.stats));
}

describe('cloud sender contract', () => {
  it('acks in any order: the window is never exceeded, each id is settled once, in batches', async (t) => {
    const { outbox, buffer, cloud, sender, connect, append, flushTimers, events } = setup(t, { inFlight: 10 });
    append(100);
    const link = connect();
    assert.deepEqual(link.ids(), range(1, 10), 'oldest first, a window of 10');
    for (let round = 0; link.waiting.length > 0; round++) {
      // Half of what waits, in a shuffled order; the rest stays out of order behind it.
      for (const id of shuffled(link.ids(), round + 1).slice(0, Math.max(1, link.waiting.length >> 1))) link.answer(id);
      if (round % 3 === 0) await flushTimers();
      assert.ok(sender.stats.inFlight <= 10);
    }
    await flushTimers();
    assert.ok(link.mostWaiting <= 10, `at most 10 unacknowledged (${link.mostWaiting})`);
    assert.deepEqual(
      [...buffer.acknowledged()].sort((a, b) => a - b),
      range(1, 100),
      'each id settled exactly once',
    );
    assert.ok(
      buffer.settlements.every((settlement) => (settlement.acknowledged?.length ?? 0) <= 5),
      'acks settled in batches of at most half the window',
    );
    assert.ok(buffer.settlements.length <= 40, `${buffer.settlements.length} settlements for 100 acks`);
    assert.equal(cloud.received.length, 100, 'nothing sent twice');
    assert.equal(outbox.stats.delivered, 100);
    assert.equal(outbox.stats.messages, 0);
    assert.deepEqual(sender.stats, { sent: 100, acknowledged: 100, rejected: 0, inFlight: 0 });
    assert.equal(events.firstAcknowledgements, 1);
    assertAccounted(outbox, 100);
  });

  it('a reconnect mid-window: everything unacknowledged is sent again, nothing is lost, at most the window is duplicated', async (t) => {
    const { outbox, cloud, sender, connect, append, flushTimers } = setup(t, { inFlight: 20 });
    append(200);
    let link = connect();
    let seed = 7;
    const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    let reconnects = 0;
    for (let step = 0; step < 10_000 && outbox.stats.messages > 0; step++) {
      const roll = random();
      if (roll < 0.05) {
        // The connection drops: acks not yet settled are settled now; what waits is resent.
        const before = new Set(cloud.received);
        const old = link;
        sender.disconnected();
        link = connect();
        reconnects++;
        const resent = link.ids().filter((id) => before.has(id));
        assert.ok(resent.length <= 20, `a reconnect resends at most the window (${resent.length})`);
        // A late PUBACK of the connection that is gone changes nothing.
        const acknowledged = sender.stats.acknowledged;
        if (old.waiting.length > 0) old.answer(old.ids()[0]!);
        assert.equal(sender.stats.acknowledged, acknowledged, 'late PUBACK of a lost connection ignored');
      } else if (roll < 0.1) {
        await flushTimers();
      } else if (link.waiting.length > 0) {
        link.answer(link.ids()[Math.floor(random() * link.waiting.length)]!);
      }
    }
    await flushTimers();
    assert.ok(reconnects >= 5, `${reconnects} reconnects`);
    assert.equal(outbox.stats.messages, 0, 'all delivered');
    assert.equal(cloud.distinct().size, 200, 'nothing lost');
    assert.equal(outbox.stats.delivered, 200, 'each settled once');
    const duplicates = cloud.received.length - 200;
    assert.ok(duplicates <= 20 * reconnects, `${duplicates} duplicates over ${reconnects} reconnects`);
    assertAccounted(outbox, 200);
  });

  it('acknowledged but not yet settled counts against the window, and is settled when the connection drops', async (t) => {
    const { outbox, buffer, sender, connect, append } = setup(t, { inFlight: 10 });
    append(30);
    const link = connect();
    for (const id of [1, 2, 3, 4]) link.answer(id); // below the batch size: settled later
    assert.deepEqual(buffer.acknowledged(), []);
    assert.equal(link.waiting.length, 6, 'no new message while 4 acks wait to be settled');
    sender.disconnected();
    assert.deepEqual(buffer.acknowledged(), [1, 2, 3, 4]);
    assert.equal(outbox.stats.delivered, 4);
    const next = connect();
    assert.deepEqual(next.ids(), range(5, 10), 'the next connection starts at the oldest unacknowledged');
  });

  it('MQTT 5 refusals (reason code ≥ 0x80) are settled as rejected and not sent again; other errors are', async (t) => {
    const { outbox, cloud, sender, events, connect, append, flushTimers } = setup(t, { inFlight: 5 });
    append(10);
    const link = connect(3);
    assert.equal(sender.window, 3, "the broker's receive maximum");
    assert.deepEqual(link.ids(), [1, 2, 3]);
    link.answer(2, Object.assign(new Error('Not authorized'), { code: 0x87 }));
    link.answer(1, Object.assign(new Error('Connection closed'), { code: 0x10 })); // not a refusal
    link.answer(3);
    assert.deepEqual(events.refused, [2]);
    assert.equal(outbox.stats.rejected, 1);
    assert.equal(sender.stats.rejected, 1);
    link.ackAll();
    await flushTimers();
    sender.disconnected();
    const next = connect();
    assert.equal(next.ids()[0], 1, 'the message that failed without a reason code is sent again');
    assert.ok(!next.ids().includes(2), 'the refused one is not');
    await drain(next, flushTimers);
    assert.equal(cloud.count(2), 1);
    assert.deepEqual(
      { delivered: outbox.stats.delivered, rejected: outbox.stats.rejected, messages: outbox.stats.messages },
      { delivered: 9, rejected: 1, messages: 0 },
    );
    assertAccounted(outbox, 10);
  });

  it('the probe: a message the cloud closes the connection on three times, sent alone, is set aside; the rest flows', async (t) => {
    const { outbox, buffer, cloud, sender, lines, connect, append, flushTimers } = setup(t, { inFlight: 10 });
    append(20);
    // Connection 1: the window goes out, the cloud closes the connection without one PUBACK.
    let link = connect();
    assert.equal(link.waiting.length, 10);
    sender.disconnected();
    assert.ok(sender.probing, 'the oldest message is suspected');
    // Connections 2-4: the suspect goes out alone, only after the status PUBACK, and kills the connection again.
    for (let strike = 1; strike <= 3; strike++) {
      link = connect(undefined, false);
      assert.equal(link.waiting.length, 0, 'nothing before the link proved itself');
      sender.linkProven(link);
      assert.deepEqual(link.ids(), [1], `strike ${strike}: the suspect alone`);
      sender.disconnected();
    }
    assert.equal(sender.probing, false);
    assert.equal(outbox.stats.rejected, 1);
    assert.equal(sender.stats.rejected, 1);
    const deadLetters = new Database(outbox.file, { readonly: true });
    t.after(() => deadLetters.close());
    assert.deepEqual(deadLetters.prepare('SELECT id, reason FROM dead_letters').all(), [
      { id: 1, reason: 'the cloud broker closed the connection each time it was sent' },
    ]);
    assert.ok(lines.some((line) => line.level === 50 && /closed the connection every time this message was sent alone/.test(line.msg)));
    // Connection 5: the rest flows with the full window.
    link = connect();
    assert.deepEqual(link.ids(), range(2, 10));
    await drain(link, flushTimers);
    assert.equal(outbox.stats.messages, 0);
    assert.equal(cloud.distinct().size, 20);
    assert.equal(buffer.acknowledged().length, 19);
    assertAccounted(outbox, 20);
  });

  it('the probe: a suspect that is acknowledged clears the suspicion; a link that never proves itself strikes nothing', async (t) => {
    const { outbox, sender, lines, connect, append } = setup(t, { inFlight: 10 });
    append(20);
    connect();
    sender.disconnected();
    assert.ok(sender.probing);
    const link = connect();
    assert.deepEqual(link.ids(), [1]);
    link.answer(1);
    assert.equal(sender.probing, false);
    assert.ok(lines.some((line) => line.msg === 'the message suspected of breaking the connection went through'));
    assert.equal(link.waiting.length + 1, 10, 'the full window again (one acknowledged, not yet settled)');
    // Connections that die before their status PUBACK (a dead link) never blame a message.
    sender.disconnected();
    for (let attempt = 0; attempt < 10; attempt++) {
      connect(undefined, false);
      sender.disconnected();
    }
    assert.equal(sender.probing, false);
    assert.equal(outbox.stats.rejected, 0);
  });

  it('drop-oldest while messages are being sent: the others go first (read ahead or not); what is in flight goes only when the bound is smaller; counted exactly', async (t) => {
    // An outbox holding more than its bound (maxMessages lowered across a restart) is where the
    // rows being sent must go too: written with 100, opened again with 3.
    const file = outboxOf100(t);
    const { outbox, cloud, sender, connect, append, flushTimers } = setup(
      t,
      { inFlight: 20 },
      { maxMessages: 3, policy: 'drop-oldest' },
      file,
    );
    // A receive maximum of 5: 5 in flight, 15 more read ahead (one SELECT of the inFlight), which
    // are not being sent yet.
    const link = connect(5);
    assert.deepEqual(link.ids(), [1, 2, 3, 4, 5]);
    const fates = new Map<number, string>();
    append(1, 101, fates);
    // 101 messages for a bound of 3: the 96 not being sent (6..101, the read-ahead first), then the
    // oldest 2 of the 5 being sent.
    assert.match(fates.get(101) ?? 'not told', /drop-oldest/, 'the new one goes (never acknowledged to its publisher)');
    assert.equal(outbox.stats.dropped, 98);
    assert.deepEqual([...seqOf(outbox).keys()], [3, 4, 5]);
    // The PUBACKs of 1..5 come: 1 and 2 were dropped meanwhile, so they are not delivered as well.
    await drain(link, flushTimers);
    assert.deepEqual(cloud.received, [1, 2, 3, 4, 5], '6..20 were read ahead, dropped, and never sent');
    assert.equal(outbox.stats.delivered, 3, 'only 3..5');
    assert.equal(outbox.stats.messages, 0);
    assert.equal(sender.stats.acknowledged, 5, 'the cloud acknowledged 5, of which 2 were counted dropped');
    assertAccounted(outbox, 101);
  });

  it('drop-oldest with a window read ahead: the rows read ahead and not sent go before the new message', async (t) => {
    const file = outboxOf100(t);
    const { outbox, cloud, connect, append, flushTimers } = setup(t, { inFlight: 20 }, { maxMessages: 10, policy: 'drop-oldest' }, file);
    const link = connect(5);
    const fates = new Map<number, string>();
    append(1, 101, fates);
    // The 5 in flight stay; of the others the newest 5 (97..101) are kept.
    assert.equal(fates.get(101), 'stored');
    assert.deepEqual([...seqOf(outbox).keys()], [...range(1, 5), ...range(97, 5)]);
    await drain(link, flushTimers);
    assert.deepEqual(cloud.received, [...range(1, 5), ...range(97, 5)]);
    assertAccounted(outbox, 101);
  });

  it('drop-oldest with the sender connected: new messages beyond the bound are refused, never the ones in flight', async (t) => {
    const { outbox, cloud, connect, append, flushTimers } = setup(t, { inFlight: 10 }, { maxMessages: 15, policy: 'drop-oldest' });
    append(15);
    const link = connect();
    const fates = new Map<number, string>();
    append(10, 16, fates); // 25 for 15: the 5 not taken (11..15) and 5 of the new ones go
    assert.equal(outbox.stats.dropped, 10);
    assert.deepEqual(
      [...fates.entries()].filter(([, fate]) => fate !== 'stored').map(([n]) => n),
      [16, 17, 18, 19, 20],
    );
    await drain(link, flushTimers);
    assert.deepEqual(cloud.received, [...range(1, 10), ...range(21, 5)]);
    assert.equal(outbox.stats.delivered, 15);
    assertAccounted(outbox, 25);
  });

  it('drop-oldest with liveShare: live messages in flight are spared too; every PUBACK deletes a message that was still there', async (t) => {
    const { outbox, cloud, sender, connect, append, flushTimers } = setup(
      t,
      { inFlight: 10, liveShare: 0.5 },
      { maxMessages: 20, policy: 'drop-oldest' },
    );
    append(10); // the backlog
    const link = connect();
    append(5, 11); // live
    for (const id of [1, 2, 3, 4, 5]) link.answer(id);
    await flushTimers();
    assert.deepEqual(link.ids(), [6, 7, 8, 9, 10, 11, 12, 13, 14, 15], 'five backlog and five live messages in flight');
    const fates = new Map<number, string>();
    append(15, 16, fates); // 25 for 20: five go, not the live ones being sent but the oldest of the others
    assert.equal(outbox.stats.dropped, 5);
    assert.deepEqual(
      [...fates.entries()].filter(([, fate]) => fate !== 'stored').map(([n]) => n),
      [16, 17, 18, 19, 20],
    );
    await drain(link, flushTimers);
    assert.deepEqual(
      [...cloud.received].sort((a, b) => a - b),
      [...range(1, 15), ...range(21, 10)],
    );
    assert.equal(outbox.stats.delivered, sender.stats.acknowledged, 'nothing the cloud acknowledged was counted as dropped');
    assertAccounted(outbox, 30);
  });

  it('drop-newest: what does not fit is refused at once; everything stored is delivered', async (t) => {
    const { outbox, cloud, connect, append, flushTimers } = setup(t, { inFlight: 4 }, { maxMessages: 6, policy: 'drop-newest' });
    append(6);
    const link = connect();
    const fates = new Map<number, string>();
    append(4, 7, fates);
    assert.deepEqual([...fates.values()], Array(4).fill('the outbox is full (drop-newest)'));
    link.ackAll();
    await flushTimers();
    append(2, 11, fates); // room again
    await drain(link, flushTimers);
    // (Ids are given only to what is stored: messages 11 and 12 are ids 7 and 8.)
    assert.deepEqual(cloud.received, range(1, 8));
    assert.deepEqual([fates.get(11), fates.get(12)], ['stored', 'stored']);
    assert.equal(outbox.stats.dropped, 4);
    assert.equal(outbox.stats.delivered, 8);
    assertAccounted(outbox, 12);
  });

  it('maxAge at send time: messages that waited too long in the buffer are settled as expired, not sent', async (t) => {
    const { outbox, buffer, cloud, clock, sender, connect, append, flushTimers } = setup(
      t,
      { inFlight: 10, maxAge: 60_000 },
      { maxAge: 60_000 },
    );
    const first = connect();
    append(2);
    assert.deepEqual(first.ids(), [1, 2], 'young enough: sent');
    await drain(first, flushTimers);
    sender.disconnected();
    append(5, 3); // while the cloud is away
    await clock.advanceTo(clock.now() + 61_000); // the periodic expiry has not run yet
    const link = connect();
    assert.deepEqual(link.ids(), [], 'nothing too old leaves');
    assert.deepEqual(
      buffer.settlements.flatMap((settlement) => settlement.expired ?? []),
      range(3, 5),
    );
    assert.equal(outbox.stats.dropped, 5);
    assert.equal(outbox.stats.messages, 0);
    assert.deepEqual(cloud.received, [1, 2]);
    assertAccounted(outbox, 7);
  });

  it('liveShare: messages stored after the connect get their share of the window; each lane keeps its order', async (t) => {
    const { outbox, cloud, lines, connect, append, flushTimers } = setup(t, { inFlight: 10, liveShare: 0.5 });
    append(40); // the backlog
    const link = connect();
    assert.deepEqual(link.ids(), range(1, 10), 'no live data yet: the whole window for the backlog');
    append(20, 41); // live
    for (let round = 0; link.waiting.length > 0 && round < 500; round++) {
      link.answer(link.ids()[0]!);
      await flushTimers();
    }
    const seqs = cloud.received;
    const live = seqs.filter((id) => id > 40);
    const backlog = seqs.filter((id) => id <= 40);
    assert.deepEqual(live, range(41, 20), 'live in order');
    assert.deepEqual(backlog, range(1, 40), 'backlog in order');
    assert.ok(seqs.indexOf(60) < seqs.indexOf(40), `all live data before the end of the backlog (${seqs.join(',')})`);
    assert.equal(lines.filter((line) => line.msg === 'backlog replayed').length, 1);
    assert.equal(outbox.stats.delivered, 60);
  });

  it('liveShare 0: strict FIFO', async (t) => {
    const { cloud, connect, append, flushTimers } = setup(t, { inFlight: 10 });
    append(40);
    const link = connect();
    append(20, 41);
    while (link.waiting.length > 0) {
      link.answer(link.ids()[0]!);
      await flushTimers();
    }
    assert.deepEqual(cloud.received, range(1, 60));
  });

  it('caught up: committed rows are adopted without a SELECT, and PUBACKs cause none', async (t) => {
    const { buffer, connect, append, flushTimers } = setup(t, { inFlight: 100 });
    const link = connect();
    const selects = buffer.selects;
    for (let batch = 0; batch < 20; batch++) {
      append(30, 1 + batch * 30);
      link.ackAll();
      await flushTimers();
    }
    assert.equal(buffer.selects, selects, 'not one SELECT after the connect');
    assert.equal(buffer.outbox.stats.delivered, 600);
  });

  it('a slow cloud leaves the backlog in SQLite: at most one window is adopted or read ahead', async (t) => {
    const { buffer, connect, append } = setup(t, { inFlight: 10 });
    const link = connect();
    for (let batch = 0; batch < 10; batch++) append(10, 1 + batch * 10);
    assert.equal(link.waiting.length, 10);
    const taken = buffer.takes.flatMap((take) => take.got);
    assert.deepEqual(taken, range(1, 10), 'only what is sent was taken');
  });

  it('the stall warning: once, when the window waited stallAfter without a PUBACK; an info line when PUBACKs come again', async (t) => {
    const { clock, lines, connect, append } = setup(t, { inFlight: 5, stallAfter: 5000 });
    append(20);
    const link = connect();
    await clock.advanceTo(clock.now() + 4000);
    link.answer(1); // a PUBACK: the wait starts over
    await clock.advanceTo(clock.now() + 4500);
    assert.equal(lines.filter((line) => /acknowledged nothing/.test(line.msg)).length, 0);
    await clock.advanceTo(clock.now() + 1000);
    const stalled = lines.filter((line) => /acknowledged nothing/.test(line.msg));
    assert.equal(stalled.length, 1);
    assert.equal(stalled[0]!.level, 40);
    assert.equal(stalled[0]!.inFlight, 5, 'the acknowledged one was replaced by the next');
    await clock.advanceTo(clock.now() + 60_000);
    assert.equal(lines.filter((line) => /acknowledged nothing/.test(line.msg)).length, 1, 'once per stall');
    link.answer(2);
    assert.equal(lines.filter((line) => line.msg === 'the cloud broker acknowledges again').length, 1);
    await clock.advanceTo(clock.now() + 5000);
    assert.equal(lines.filter((line) => /acknowledged nothing/.test(line.msg)).length, 2, 'a second stall is told again');
  });

  it('stop: acknowledged messages are settled, the rest stays for the next sender; late PUBACKs are ignored', async (t) => {
    const { outbox, sender, connect, append } = setup(t, { inFlight: 10 });
    append(20);
    const link = connect();
    for (const id of [1, 2, 3]) link.answer(id);
    sender.pause();
    link.answer(4); // still counts: it was sent
    assert.equal(link.waiting.length, 6, 'nothing new after pause');
    sender.stop();
    link.answer(5);
    assert.equal(outbox.stats.delivered, 4);
    assert.equal(outbox.stats.messages, 16);
    assert.equal(sender.stats.inFlight, 0);
    // The next sender on the same outbox starts at the oldest unacknowledged.
    const next = new Sender(outbox, { inFlight: 10, liveShare: 0, maxAge: 0, stallAfter: 30_000 }, pino({ level: 'silent' }));
    next.start();
    t.after(() => next.stop());
    const nextLink = new ScriptedLink(new ScriptedCloud());
    next.connected(nextLink);
    assert.deepEqual(nextLink.ids(), range(5, 10));
  });

  it('a link that answers at once (inside publish) never overfills the window', async (t) => {
    const { outbox, cloud, sender, append, flushTimers } = setup(t, { inFlight: 4 });
    append(50);
    let most = 0;
    const link: Link = {
      publish: (message, done) => {
        cloud.received.push(message.id);
        most = Math.max(most, sender.stats.inFlight);
        done();
      },
    };
    sender.connected(link);
    sender.linkProven(link);
    for (let round = 0; round < 20 && outbox.stats.messages > 0; round++) await flushTimers();
    assert.ok(most <= 4, `at most the window in flight (${most})`);
    assert.deepEqual(cloud.received, range(1, 50));
    assert.equal(outbox.stats.delivered, 50);
  });
});

/**
 * One connection as connection.ts builds it for QoS 0: a message is written at once, and the
 * checkpoint holds its answer until the test answers a ping written after it (a PINGRESP).
 */
class PingingLink implements Link {
  /** Ids in the order they were written. */
  readonly written: number[] = [];
  /** PINGREQs written, ours and the "keep-alive's", and PINGRESPs given. */
  pings = 0;
  pongs = 0;
  readonly checkpoint = new PingCheckpoint(() => this.ping());

  publish(message: StoredMessage, done: (error?: Error | null) => void): void {
    assert.equal(message.qos, 0);
    this.written.push(message.id);
    this.checkpoint.written(done);
  }

  /** A PINGREQ goes out (the checkpoint's, or mqtt.js's own for the keep-alive). */
  ping(): void {
    this.pings++;
    this.checkpoint.pingSent();
  }

  /** The broker answers the oldest PINGREQ. */
  pong(): void {
    assert.ok(this.pongs < this.pings, 'a PINGRESP answers a PINGREQ');
    this.pongs++;
    this.checkpoint.pingAnswered();
  }

  close(): void {
    this.checkpoint.close(new Error('closed'));
  }
}

const qos0 = (n: number): OutboxMessage => ({ ...message(n), qos: 0 });
/** Lets the checkpoint's deferred ping go out. */
const microtasks = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

describe('cloud sender: QoS 0 confirmed by a ping round trip', () => {
  function qos0Setup(t: TestContext, options: Partial<SenderOptions> = {}) {
    const context = setup(t, options);
    const appendQos0 = (count: number, from = 1): void => {
      for (let n = from; n < from + count; n++) context.outbox.append(qos0(n));
      context.outbox.commit();
    };
    const connectPinging = (): PingingLink => {
      const link = new PingingLink();
      context.sender.connected(link);
      context.sender.linkProven(link);
      return link;
    };
    return { ...context, appendQos0, connectPinging };
  }

  it('settles QoS 0 messages only after the PINGRESP; they fill the window until then; one ping per burst', async (t) => {
    const { outbox, buffer, sender, appendQos0, connectPinging, flushTimers } = qos0Setup(t, { inFlight: 10 });
    appendQos0(25);
    const link = connectPinging();
    await microtasks();
    assert.deepEqual(link.written, range(1, 10), 'a window of 10 written');
    assert.equal(link.pings, 1, 'one ping after the burst');
    await flushTimers();
    assert.equal(sender.stats.inFlight, 10, 'written but unconfirmed messages stay in flight');
    assert.deepEqual(buffer.acknowledged(), [], 'nothing settled before the PINGRESP');
    assert.equal(link.written.length, 10, 'the full window stalls until the broker confirms');

    link.pong();
    await microtasks();
    assert.deepEqual(link.written, range(1, 20), 'the confirmed window is refilled');
    assert.equal(link.pings, 2);
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), range(1, 10), 'the first ten settled');

    link.pong();
    await microtasks();
    link.pong();
    await flushTimers();
    assert.deepEqual(link.written, range(1, 25), 'each written once');
    assert.deepEqual(
      [...buffer.acknowledged()].sort((a, b) => a - b),
      range(1, 25),
    );
    assert.equal(link.pings, 3);
    assert.equal(outbox.stats.messages, 0);
    assert.deepEqual(sender.stats, { sent: 25, acknowledged: 25, rejected: 0, inFlight: 0 });
  });

  it('a connection closed before the PINGRESP: nothing is settled, all is sent again on the next one', async (t) => {
    const { outbox, buffer, sender, appendQos0, connectPinging, flushTimers } = qos0Setup(t, { inFlight: 10 });
    const first = connectPinging();
    // The link carried data (else the sender would suspect the head of breaking it and probe it alone).
    appendQos0(2);
    await microtasks();
    first.pong();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), [1, 2]);
    appendQos0(6, 3);
    await microtasks();
    assert.deepEqual(first.written, range(1, 8));
    assert.equal(first.pings, 2);
    // As connection.ts does it: the sender lets go first, then the checkpoint fails what it holds.
    sender.disconnected();
    first.close();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), [1, 2], 'written is not delivered');
    assert.equal(outbox.stats.messages, 6);

    const second = connectPinging();
    await microtasks();
    assert.deepEqual(second.written, range(3, 6), 'resent on the next connection');
    // A late PINGRESP of the closed connection confirms nothing.
    first.pong();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), [1, 2]);
    second.pong();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), range(1, 8));
    assert.equal(outbox.stats.delivered, 8);
  });

  it('a keep-alive PINGREQ written before the messages confirms nothing; one written after them does', async (t) => {
    const { buffer, sender, appendQos0, connectPinging, flushTimers } = qos0Setup(t, { inFlight: 10 });
    const link = connectPinging();
    // mqtt.js's own ping, out before the messages are written.
    link.ping();
    appendQos0(3);
    await microtasks();
    assert.deepEqual(link.written, range(1, 3));
    assert.equal(link.pings, 2, "the checkpoint's own ping follows the messages");
    link.pong(); // answers the keep-alive ping
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), [], 'the PINGRESP to the older PINGREQ proves nothing about them');
    assert.equal(sender.stats.inFlight, 3);
    link.pong();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), range(1, 3));

    // Messages written while the checkpoint's ping is out wait for it, then get the next one; a
    // keep-alive ping written after them confirms them as well as ours would.
    appendQos0(2, 4);
    await microtasks();
    assert.equal(link.pings, 3);
    appendQos0(2, 6);
    await microtasks();
    assert.equal(link.pings, 3, 'one ping of ours out at a time');
    link.ping(); // keep-alive, after 6 and 7
    link.pong();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), range(1, 5), '4 and 5 by our ping');
    link.pong();
    await flushTimers();
    assert.deepEqual(buffer.acknowledged(), range(1, 7), '6 and 7 by the keep-alive ping');
    await microtasks();
    assert.equal(link.pings, 4, 'no ping needed after that');
  });
});
