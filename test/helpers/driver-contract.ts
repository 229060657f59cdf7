// The driver contract: what the core (src/pipeline/device-runner.ts, the command path) relies on
// from every driver, as one suite run against every driver and transport with a real peer each
// (test/driver-contract.test.ts). A new driver gets a target there and must pass it unchanged.
//
// The recovery loop below is what the DeviceRunner does: after a DriverError with
// `connectionLost` (or `connected` turning false) it closes the driver and connects again.
// Timings are asserted only with generous bounds: the suite runs on busy two-core machines.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  DriverError,
  type Driver,
  type DriverErrorCode,
  type DriverTag,
  type ReadPlan,
  type TagReading,
  type TagValue,
} from '../../src/pipeline/driver.js';

export interface ContractPeer<Tag extends DriverTag> {
  /** A new driver for this peer; `timeout` (ms) is its request timeout. */
  driver(options: { timeout: number }): Driver<Tag>;
  /** Tags that read good. */
  good: readonly Tag[];
  /** Checks the values of `good` as read (optional). */
  checkGood?(readings: readonly TagReading[]): void;
  /** A tag at an address or node the peer does not have, and the codes its bad reading may carry. */
  unknown: { tag: Tag; code: RegExp };
  /** A writable tag and a value it reads back as. */
  write: { tag: Tag; value: TagValue };
  /** The peer stops answering, nothing closed (a pulled cable, a device switched off) / answers again. */
  silence(): void;
  resume(): void;
  /** Garbled replies the driver must refuse (with `code`), until stopped; absent where the transport cannot produce one. */
  badReplies?: { start(): void; stop(): void; code: RegExp };
  /** A driver configured towards nothing (a free port, a missing serial device), and what its error must name. */
  nowhere(): { driver: Driver<Tag>; names: string };
  stop(): Promise<void>;
}

export interface ContractTarget<Tag extends DriverTag> {
  /** "modbus tcp vs pymodbus". */
  name: string;
  start(): Promise<ContractPeer<Tag>>;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** How a read ended, and when (ms since the epoch). */
type Outcome = { readings: TagReading[]; at: number } | { error: unknown; at: number };

/** A read's outcome, whichever way it settles; fails the test after `limitMs`. */
async function settle(read: Promise<TagReading[]>, limitMs: number, what: string): Promise<Outcome> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not settled within ${limitMs} ms`)), limitMs);
  });
  try {
    return await Promise.race([
      read.then(
        (readings) => ({ readings, at: Date.now() }),
        (error: unknown) => ({ error, at: Date.now() }),
      ),
      limit,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The failure code of an outcome: the DriverError's, or the one code of all its bad readings. */
function failureCode(outcome: Outcome): DriverErrorCode | string {
  if ('error' in outcome) {
    assert.ok(outcome.error instanceof DriverError, `expected a DriverError, got ${String(outcome.error)}`);
    assert.ok(outcome.error.message.length > 0);
    return outcome.error.code;
  }
  const codes = new Set(outcome.readings.map((reading) => (reading.quality === 'bad' ? (reading.code ?? 'no code') : 'good')));
  for (const reading of outcome.readings)
    if (reading.quality === 'bad') assert.ok(reading.reason, `bad reading of ${reading.tag} without a reason`);
  assert.equal(codes.size, 1, `one failure for the whole read: ${JSON.stringify(outcome.readings)}`);
  return [...codes][0]!;
}

function show(readings: readonly TagReading[]): string {
  return readings.map((r) => (r.quality === 'good' ? `${r.tag}=${String(r.value)}` : `${r.tag}: ${r.code} ${r.reason}`)).join(', ');
}

function assertGood(readings: readonly TagReading[], tags: readonly DriverTag[]): void {
  assert.deepEqual(
    readings.map((reading) => reading.tag),
    tags.map((tag) => tag.name),
    "one reading per tag, in the plan's order",
  );
  assert.ok(
    readings.every((reading) => reading.quality === 'good' && reading.value !== undefined),
    show(readings),
  );
}

/** What the DeviceRunner does until a read is all good again; fails after `limitMs`. */
async function recover<Tag extends DriverTag>(driver: Driver<Tag>, plan: ReadPlan, tags: readonly Tag[], limitMs: number): Promise<void> {
  const deadline = Date.now() + limitMs;
  let last = 'nothing tried';
  while (Date.now() < deadline) {
    try {
      if (!driver.connected) {
        await driver.close();
        await driver.connect();
      }
      const readings = await driver.read(plan);
      if (readings.every((reading) => reading.quality === 'good')) {
        assertGood(readings, tags);
        return;
      }
      last = show(readings);
    } catch (error) {
      last = String(error);
      if (error instanceof DriverError && error.connectionLost) await driver.close();
    }
    await sleep(200);
  }
  assert.fail(`not good again within ${limitMs} ms; last: ${last}`);
}

/** Defines the contract suite for one target. */
export function driverContract<Tag extends DriverTag>(target: ContractTarget<Tag>): void {
  describe(`driver contract: ${target.name}`, () => {
    let peer: ContractPeer<Tag>;
    const drivers: Driver<Tag>[] = [];
    const driver = (timeout = 1000): Driver<Tag> => {
      const made = peer.driver({ timeout });
      drivers.push(made);
      return made;
    };
    before(async () => {
      peer = await target.start();
    });
    after(async () => {
      for (const made of drivers) await made.close();
      await peer?.stop();
    });

    it('connect, read, write and read back, close', async () => {
      const d = driver();
      assert.equal(d.connected, false, 'not connected before connect()');
      await d.connect();
      assert.equal(d.connected, true);
      const plan = d.plan(peer.good);
      assert.ok(plan.describe().length > 0, 'a plan describes itself');
      const readings = await d.read(plan);
      assertGood(readings, peer.good);
      peer.checkGood?.(readings);

      await d.write(peer.write.tag, peer.write.value);
      const [back] = await d.read(d.plan([peer.write.tag]));
      assert.equal(back?.quality, 'good', back?.reason);
      assert.deepEqual(back.value, peer.write.value);

      await d.close();
      assert.equal(d.connected, false);
      await d.close(); // twice is fine
    });

    it('an unknown address reads bad with a code and a reason; the other tags of the plan stay good', async () => {
      const d = driver();
      await d.connect();
      const readings = await d.read(d.plan([...peer.good, peer.unknown.tag]));
      const unknown = readings.find((reading) => reading.tag === peer.unknown.tag.name);
      assert.equal(unknown?.quality, 'bad', show(readings));
      assert.match(unknown.code ?? '', peer.unknown.code);
      assert.ok(unknown.reason && unknown.reason.length > 0);
      assertGood(
        readings.filter((reading) => reading !== unknown),
        peer.good,
      );
      // The next read says the same: the tag stays bad, the others good.
      const again = await d.read(d.plan([...peer.good, peer.unknown.tag]));
      assert.equal(again.find((reading) => reading.tag === peer.unknown.tag.name)?.quality, 'bad');
      await d.close();
    });

    it('a peer that stops answering gives timeout; the device reads good again once it answers', async () => {
      const d = driver(500);
      await d.connect();
      const plan = d.plan(peer.good);
      assertGood(await d.read(plan), peer.good);
      peer.silence();
      try {
        const outcome = await settle(d.read(plan), 15_000, 'the read of a silent peer');
        assert.equal(failureCode(outcome), 'timeout');
      } finally {
        peer.resume();
      }
      await recover(d, plan, peer.good, 20_000);
      await d.close();
    });

    it("a garbled reply fails the read with the transport's code (Modbus: bad-reply), never as data; the device reads good again after", async (t) => {
      const bad = peer.badReplies;
      if (!bad) {
        t.skip('this transport cannot produce a reply the driver could tell from a good one');
        return;
      }
      const d = driver(500);
      await d.connect();
      const plan = d.plan(peer.good);
      assertGood(await d.read(plan), peer.good);
      bad.start();
      try {
        const outcome = await settle(d.read(plan), 15_000, 'the read of a garbled reply');
        assert.match(String(failureCode(outcome)), bad.code);
      } finally {
        bad.stop();
      }
      await recover(d, plan, peer.good, 20_000);
      await d.close();
    });

    it('close() during a read settles the read promptly and never rejects', async () => {
      // A long timeout: the read must end because of close(), not because it timed out.
      const d = driver(8000);
      await d.connect();
      const plan = d.plan(peer.good);
      peer.silence();
      try {
        const read = settle(d.read(plan), 30_000, 'the read closed under');
        await sleep(200);
        const closed = Date.now();
        const closing = d.close();
        const outcome = await read;
        assert.ok(outcome.at - closed < 4000, `the read settled ${outcome.at - closed} ms after close()`);
        await assert.doesNotReject(closing);
        if ('error' in outcome) assert.ok(outcome.error instanceof DriverError, String(outcome.error));
        else
          assert.ok(
            outcome.readings.every((reading) => reading.quality === 'bad'),
            show(outcome.readings),
          );
        assert.equal(d.connected, false);
      } finally {
        peer.resume();
      }
    });

    it('read and write before connect or after close fail with a DriverError', async () => {
      const d = driver();
      const plan = d.plan(peer.good);
      await assert.rejects(d.read(plan), DriverError, 'read before connect');
      await d.connect();
      assertGood(await d.read(plan), peer.good);
      await d.close();
      await assert.rejects(d.read(plan), (error: unknown) => error instanceof DriverError && error.message.length > 0, 'read after close');
      await assert.rejects(d.write(peer.write.tag, peer.write.value), DriverError, 'write after close');
    });

    it('connect to nothing fails with a readable error naming the endpoint', async () => {
      const { driver: d, names } = peer.nowhere();
      drivers.push(d);
      const started = Date.now();
      await assert.rejects(d.connect(), (error: unknown) => {
        assert.ok(error instanceof DriverError, String(error));
        assert.equal(error.code, 'connect-failed');
        assert.ok(error.message.includes(names), `"${error.message}" names ${names}`);
        assert.ok(!error.message.includes('\n') && error.message.length < 400, `one readable line: ${error.message}`);
        return true;
      });
      assert.ok(Date.now() - started < 15_000);
      assert.equal(d.connected, false);
      await assert.doesNotReject(d.close());
    });
  });
}
