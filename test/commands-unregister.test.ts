// The command handler forgets only what a device registered: a late unregister of a device (after
// one of the same name registered again) leaves the new one's topics and direct writes, and routes
// none of the old one's topics to it.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pino from 'pino';
import { CommandHandler, type CommandAnswer, type CommandDevice } from '../src/commands/command-handler.js';
import type { TagConfig } from '../src/config/schema.js';

function deviceOf(label: string, tags: TagConfig[], writes: string[]): CommandDevice {
  return {
    name: 'd',
    tag: (name) => tags.find((tag) => tag.name === name),
    previous: () => undefined,
    write: async (tag) => void writes.push(`${label}:${tag.name}`),
    readBack: () => Promise.reject(new Error('no read-back')),
  };
}

describe('CommandHandler.unregister after a re-register of the same name', () => {
  it('the device registered since keeps its topics and direct writes; the old one keeps none', async () => {
    const answers: CommandAnswer[] = [];
    const handler = new CommandHandler({
      suffix: '/set',
      tagTopicFilters: ['p/+/+'],
      limits: { maxAge: 60_000, maxWaiting: 10, waitTimeout: 10_000 },
      log: pino({ level: 'silent' }),
      answer: (_topic, answer) => answers.push(answer),
    });
    const a = { name: 'a', address: 0, writable: true } as unknown as TagConfig;
    const b = { name: 'b', address: 1, writable: true } as unknown as TagConfig;
    const writes: string[] = [];
    const old = deviceOf('old', [a, b], writes);
    handler.register(old, [
      ['p/d/a', a],
      ['p/d/b', b],
    ]);
    handler.register(deviceOf('new', [a], writes), [['p/d/a', a]]);
    handler.unregister(old, ['p/d/a', 'p/d/b']); // the old device's (late) unregister
    const origin = { source: 'mqtt' } as never;
    await handler.handle('p/d/a/set', Buffer.from('1'), false, origin);
    await handler.handle('p/d/b/set', Buffer.from('1'), false, origin);
    const direct = await handler.write('d', 'a', 1, origin);
    assert.deepEqual(
      { writes, b: answers[1]?.ok, direct: direct.ok },
      { writes: ['new:a', 'new:a'], b: false, direct: true },
      JSON.stringify(answers.map((x) => x.error ?? 'ok')),
    );
  });
});
