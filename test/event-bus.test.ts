// The event bus on its own: typed listeners, unsubscribe, and a listener that throws (or rejects)
// is logged and isolated: the emitter and the other listeners go on.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EventBus } from '../src/app/event-bus.js';
import { CapturedLog } from './helpers/broker-harness.js';

interface TestEvents {
  tick: { n: number };
  other: { text: string };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe('EventBus', () => {
  it('delivers each event to the listeners of its type, in order of subscription', () => {
    const bus = new EventBus<TestEvents>();
    const seen: string[] = [];
    bus.on('tick', (event) => seen.push(`a${event.n}`));
    bus.on('tick', (event) => seen.push(`b${event.n}`));
    bus.on('other', (event) => seen.push(event.text));
    bus.emit('tick', { n: 1 });
    bus.emit('other', { text: 'x' });
    assert.deepEqual(seen, ['a1', 'b1', 'x']);
  });

  it('has() tells whether anyone listens, so frequent events are built only then', () => {
    const bus = new EventBus<TestEvents>();
    assert.equal(bus.has('tick'), false);
    const off = bus.on('tick', () => undefined);
    assert.equal(bus.has('tick'), true);
    assert.equal(bus.has('other'), false);
    off();
    assert.equal(bus.has('tick'), false);
  });

  it('unsubscribe removes one subscription, once, even of a function subscribed twice', () => {
    const bus = new EventBus<TestEvents>();
    let count = 0;
    const listener = () => void count++;
    const first = bus.on('tick', listener);
    bus.on('tick', listener);
    first();
    first();
    bus.emit('tick', { n: 1 });
    assert.equal(count, 1);
  });

  it('an emit goes to the listeners it started with: one added or removed meanwhile counts from the next', () => {
    const bus = new EventBus<TestEvents>();
    const seen: string[] = [];
    let offB: () => void = () => undefined;
    bus.on('tick', (event) => {
      seen.push(`a${event.n}`);
      if (event.n === 1) {
        bus.on('tick', (later) => seen.push(`c${later.n}`));
        offB();
      }
    });
    offB = bus.on('tick', (event) => seen.push(`b${event.n}`));
    bus.emit('tick', { n: 1 });
    bus.emit('tick', { n: 2 });
    assert.deepEqual(seen, ['a1', 'b1', 'a2', 'c2']);
  });

  it('a listener that throws is logged (first time, not every time) and the others still get the event', async () => {
    const logs = new CapturedLog();
    const bus = new EventBus<TestEvents>(logs.log);
    const seen: number[] = [];
    bus.on('tick', () => {
      throw new Error('listener bug');
    });
    bus.on('tick', async () => {
      await Promise.resolve();
      throw new Error('async listener bug');
    });
    bus.on('tick', (event) => seen.push(event.n));
    for (let n = 1; n <= 100; n++) assert.doesNotThrow(() => bus.emit('tick', { n }));
    await flush();
    assert.equal(seen.length, 100);
    const failures = logs.withMessage('an event listener failed; the event went on to the others');
    assert.deepEqual(
      failures.map((record) => [record.event, record.error, record.failures]),
      [
        ['tick', 'listener bug', 1],
        ['tick', 'async listener bug', 1],
      ],
    );
  });
});
