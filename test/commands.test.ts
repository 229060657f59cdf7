// Command payloads: what a /set message may carry and how it becomes a value (table-driven); and
// the handler's own limits (queue per tag, wait timeout, rate limit) against a target whose
// writes finish when the test says so.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { CommandHandler, parseCommand, type CommandAnswer, type CommandDevice, type WriteLimits } from '../src/commands/command-handler.js';
import type { TagConfig } from '../src/config/schema.js';
import { DriverError, type TagValue } from '../src/pipeline/driver.js';

describe('command payloads', () => {
  const accepted: Array<[string, TagValue]> = [
    ['42', 42],
    [' -1.5 ', -1.5],
    ['true', true],
    ['{"value": false}', false],
    ['{"value": 7, "comment": "extra fields are ignored"}', 7],
    ['"quoted text"', 'quoted text'],
    ['plain text', 'plain text'],
    ['[1, 2, 3]', [1, 2, 3]],
    ['{"value": [true, false]}', [true, false]],
    // Beyond 2^53 a JSON number would be rounded: 64-bit integers stay exact.
    ['9007199254740993', 9007199254740993n],
    ['-9223372036854775808', -9223372036854775808n],
    ['{"value": 18446744073709551615}', 18446744073709551615n],
    ['{"value": "18446744073709551615"}', '18446744073709551615'],
  ];
  for (const [payload, value] of accepted) {
    it(`accepts ${payload.trim()}`, () => assert.deepEqual(parseCommand(Buffer.from(payload)).value, value));
  }

  const refused: Array<[string, RegExp]> = [
    ['', /empty payload/],
    ['{"value": 1', /malformed JSON/],
    ['[1, 2', /malformed JSON/],
    ['{"val": 1}', /needs a "value" field/],
    ['{"value": {"nested": 1}}', /unsupported value/],
    ['null', /unsupported value null/],
    ['{"value": [1, null]}', /unsupported value null/],
    ['x'.repeat(70_000), /too long for a command/],
  ];
  for (const [payload, reason] of refused) {
    it(`refuses ${payload.length > 40 ? `${payload.length} bytes` : JSON.stringify(payload)}`, () =>
      assert.throws(() => parseCommand(Buffer.from(payload)), reason));
  }
});

describe('CommandHandler: queueing and rate limit', () => {
  const log = pino({ level: 'silent' });
  const tag = (write?: Record<string, unknown>): TagConfig =>
    ({ name: 'sp', area: 'holding', address: 0, type: 'int16', writable: true, ...(write ? { write } : {}) }) as unknown as TagConfig;

  /** A target whose writes finish when the test says so, and a handler around it. */
  function setup(limits: Partial<WriteLimits>, write?: Record<string, unknown>) {
    const answers: CommandAnswer[] = [];
    const releases: Array<() => void> = [];
    const written: TagValue[] = [];
    let failNext: Error | undefined;
    const handler = new CommandHandler({
      suffix: '/set',
      tagTopicFilters: ['p/+/+'],
      limits: { maxAge: 60_000, maxWaiting: 10, waitTimeout: 10_000, ...limits },
      log,
      answer: (_topic, answer) => answers.push(answer),
    });
    const config = tag(write);
    const device: CommandDevice = {
      name: 'd',
      tag: (name) => (name === config.name ? config : undefined),
      previous: () => undefined,
      write: (_tag, raw) => {
        if (failNext) {
          const error = failNext;
          failNext = undefined;
          return Promise.reject(error);
        }
        written.push(raw);
        return new Promise<void>((resolve) => releases.push(resolve));
      },
      readBack: () => Promise.reject(new Error('not used')),
    };
    handler.register(device, [['p/d/sp', config]]);
    const send = (value: string) => handler.handle('p/d/sp/set', Buffer.from(value), false, { source: 'local', clientId: 'test' });
    return { handler, answers, releases, written, send, failWith: (error: Error) => (failNext = error) };
  }

  it('beyond writes.maxWaiting commands behind a slow write are refused at once', async () => {
    const { answers, releases, written, send } = setup({ maxWaiting: 2 });
    const runs = [send('1'), send('2'), send('3')];
    const refused = send('4');
    await refused;
    assert.deepEqual([answers.length, answers[0]!.ok], [1, false]);
    assert.match(answers[0]!.error ?? '', /2 writes to this tag are already waiting/);
    while (answers.length < 4) {
      await new Promise((resolve) => setImmediate(resolve));
      releases.shift()?.();
    }
    await Promise.all(runs);
    assert.deepEqual(written, [1, 2, 3]);
  });

  it('a command that waited longer than writes.waitTimeout is refused, not written late', async () => {
    const { answers, releases, written, send } = setup({ waitTimeout: 50 });
    const first = send('1');
    const late = send('2');
    await new Promise((resolve) => setTimeout(resolve, 120));
    releases.shift()!();
    await Promise.all([first, late]);
    assert.deepEqual(written, [1]);
    assert.match(answers[1]!.error ?? '', /waited \d+ ms behind earlier writes to this tag \(writes.waitTimeout\): not written/);
  });

  it('a write the driver refused does not use up the rate limit', async () => {
    const { answers, releases, written, send, failWith } = setup({}, { minInterval: 3_600_000 });
    failWith(new DriverError('cannot write "sp": 40000 is out of range for int16', { code: 'invalid-value' }));
    await send('40000');
    assert.match(answers[0]!.error ?? '', /out of range/);
    const second = send('5');
    await new Promise((resolve) => setImmediate(resolve));
    releases.shift()!();
    await second;
    assert.equal(answers[1]!.ok, true, answers[1]!.error ?? '');
    assert.deepEqual(written, [5]);
    await send('6');
    assert.match(answers[2]!.error ?? '', /rate limited/);
  });

  it('a direct write (Sparkplug DCMD, the console) takes the same queue, checks and rate limit as a command, and returns its answer', async () => {
    const { handler, answers, releases, written, send } = setup({}, { min: 0, max: 100, minInterval: 3_600_000 });
    const origin = { source: 'sparkplug', clientId: 'cloud:edge' } as const;
    // Behind a command in progress: waits for it, then is refused by the rate limit that command used.
    const command = send('5');
    const direct = handler.write('d', 'sp', 7, origin);
    await new Promise((resolve) => setImmediate(resolve));
    releases.shift()!();
    await command;
    const queued = await direct;
    assert.equal(answers[0]!.ok, true);
    assert.equal(queued.ok, false);
    assert.match(queued.error ?? '', /rate limited/);
    assert.deepEqual(written, [5]);
    // The tag's checks, and unknown tags, answered the same way; nothing reaches the device.
    assert.match((await handler.write('d', 'sp', 500, origin)).error ?? '', /above the tag's maximum 100/);
    assert.match((await handler.write('d', 'nope', 1, origin)).error ?? '', /unknown tag: no tag "nope" in device "d"/);
    assert.deepEqual(written, [5]);
    // Direct answers do not go to a result topic.
    assert.equal(answers.length, 1);
  });
});
